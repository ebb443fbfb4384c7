//! Walking a directory the way BuildKit expects it (owner: fs helper; in progress).
