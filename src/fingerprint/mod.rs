//! Input fingerprints: deciding, without contacting BuildKit, whether a target's inputs are
//! exactly those of its last successful build.
//!
//! This module owns the key (a blake3 hash of everything the daemon would receive for a
//! target: its filtered context files, named contexts, Dockerfile, args, stage, platforms,
//! bases and [`FORMAT_VERSION`]), the git-index-like [`StatCache`] that lets an unchanged tree
//! be verified from `lstat` alone, the [`Manifest`] that explains a changed key, and the
//! locked, atomically written state directory ([`StateStore`]).
//!
//! It must not know about BuildKit, gRPC or the project file format: callers pass plain
//! [`FingerprintInput`] data and decide what a matching key means. The directory walk is
//! [`crate::fs`]'s, shared with file sync, so both always see the same files.
//!
//! A regular file's record is the blake3 of its bytes, or, for a file git tracks, its git blob
//! id: on a fresh clone [`git`]'s reading of `.git/index` then vouches for most files without
//! opening them. The two kinds of record are keyed apart, so they never coincide.
//!
//! Deliberately left out of the key, because COPY results do not depend on them: mtimes,
//! owners, inode numbers, absolute paths. xattrs of regular files are included; those of
//! directories and symlinks are not (reading them would cost a syscall per entry on every
//! no-op run, and they are practically never set).

mod atomic;
mod bench;
mod cache;
mod codec;
mod compute;
mod coverage;
mod git;
mod manifest;
mod state;

use std::path::PathBuf;

pub use bench::{bench_floor, FloorTimes};
pub use cache::StatCache;
pub use compute::{
    compute, compute_each, compute_many, recheck, ContextRead, Fingerprint, FingerprintInput,
};
pub use coverage::DaemonRead;
pub use manifest::{explain, Manifest, FORMAT_VERSION, NO_PREVIOUS_BUILD};
pub use state::{
    link_layout_dir, state_dir_exclude, StateError, StateStore, TargetRecord, DEFAULT_LOCK_WAIT,
    STATE_DIR_NAME,
};

/// The tag that records, in a pushed target's own repository, which image was built from the
/// inputs with fingerprint `key`: `bk-build-<key>` (73 characters, a valid tag). The registry
/// is the ledger: a runner that has never built the project computes the key from its
/// checkout and asks for this tag. It points at the same manifest as the target's tags, so it
/// costs no storage.
pub fn ledger_tag(key: &str) -> String {
    format!("bk-build-{key}")
}

/// Why a fingerprint could not be computed. Each names the target and the file to fix.
#[derive(thiserror::Error, Debug)]
pub enum FingerprintError {
    #[error("target {target}: cannot read Dockerfile {path}: {source} (check the target's `dockerfile` and `context` settings)")]
    Dockerfile {
        target: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("target {target}: cannot read ignore file {path}: {source} (fix its permissions or remove it)")]
    Dockerignore {
        target: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("target {target}: {source}")]
    Walk {
        target: String,
        #[source]
        source: crate::fs::FsError,
    },

    #[error("target {target}: cannot read {path} to fingerprint it: {source} (fix its permissions, exclude it in .dockerignore, or retry if it was being changed)")]
    Read {
        target: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A directory several targets read could not be read; the first of them has the full
    /// error, the others this copy of its message.
    #[error("target {target}: {message}")]
    Shared { target: String, message: String },

    #[error("internal error while fingerprinting: {0}")]
    Internal(&'static str),
}
