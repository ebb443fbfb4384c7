//! The target graph (owner: project helper; in progress).
