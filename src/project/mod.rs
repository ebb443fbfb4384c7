//! Loading bk-build.toml / compose projects (owner: project helper; in progress).
