//! Build secrets (owner: session-services helper; in progress).
