//! Input fingerprints and the state store (in progress).
