//! buildx-style option strings (owner: session-services helper; in progress).
