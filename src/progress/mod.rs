//! Rendering the Status stream (owner: progress helper; in progress).
