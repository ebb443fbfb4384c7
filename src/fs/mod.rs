//! The build context as BuildKit sees it: `.dockerignore` patterns, the ordered filtered walk,
//! and the Go `os.FileMode` bits that go on the wire.
//!
//! This module owns every per-file disk access that decides *which* files a build receives and
//! in *what order*. The file-sync sender turns each [`Entry`] into a wire `Stat` packet, and
//! fingerprinting hashes exactly the same entries, so both always agree with each other and with
//! what `docker buildx build` (tonistiigi/fsutil + moby/patternmatcher) would transfer.
//!
//! It must not know about gRPC, sessions, tokio or the network: it is plain blocking code over
//! `std::fs` returning plain data.
//!
//! - [`pattern`]: [`PatternMatcher`], moby/patternmatcher semantics (last match wins, `!`
//!   exceptions, `**`, parent-directory matching) plus the "could anything below this directory
//!   match?" questions the walk uses to skip whole subtrees.
//! - [`dockerignore`]: [`parse_dockerignore`], the `.dockerignore` text → pattern list step.
//! - [`walk`]: [`Walker`], the lazy depth-first walk with include/exclude/followpaths filtering
//!   and lazily emitted parent directories.
//! - [`stat`]: Go `FileMode` constants and conversions, xattr reading.

pub mod dockerignore;
mod follow;
pub mod pattern;
pub mod stat;
pub mod walk;

use std::path::{Path, PathBuf};

pub use dockerignore::parse_dockerignore;
pub use follow::resolve_in_root;
pub use pattern::{literal_pattern, PatternMatcher};
pub use stat::{
    go_file_mode, go_file_mode_from_unix, is_regular, MODE_APPEND, MODE_CHAR_DEVICE, MODE_DEVICE,
    MODE_DIR, MODE_EXCLUSIVE, MODE_IRREGULAR, MODE_NAMED_PIPE, MODE_PERM, MODE_SETGID, MODE_SETUID,
    MODE_SOCKET, MODE_STICKY, MODE_SYMLINK, MODE_TEMPORARY, MODE_TYPE,
};
pub use walk::{Entry, StatDigest, WalkOptions, Walker};

/// Everything that can go wrong while reading a build context from disk.
#[derive(thiserror::Error, Debug)]
pub enum FsError {
    /// The context root itself is unusable.
    #[error("cannot use {path} as a build context: {source} (check that the directory exists and is readable)")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The context root exists but is not a directory.
    #[error("build context {path} is not a directory (pass the directory that contains the files to send)")]
    NotADirectory { path: PathBuf },

    /// A directory inside the context could not be listed.
    #[error("cannot read directory {path}: {source} (fix its permissions, or exclude it in .dockerignore)")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file inside the context could not be lstat'ed.
    #[error("cannot stat {path}: {source} (fix its permissions, or exclude it in .dockerignore)")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A symlink inside the context could not be read.
    #[error("cannot read symlink {path}: {source} (fix it, or exclude it in .dockerignore)")]
    ReadLink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An entry that would be sent has a name (or a symlink target) that is not valid UTF-8:
    /// the wire `Stat` carries paths as protobuf strings, which cannot hold it. `path` is shown
    /// with the invalid bytes escaped.
    #[error("cannot send {path:?}: its {what} is not valid UTF-8, which BuildKit's file sync cannot carry (rename it, or exclude it in .dockerignore)")]
    NotUtf8 { path: PathBuf, what: &'static str },

    /// An include/exclude pattern is malformed.
    #[error("invalid pattern {pattern:?}: {reason} (fix or remove this line in .dockerignore, or the include/exclude pattern)")]
    BadPattern { pattern: String, reason: String },

    /// Resolving a `followpaths` entry failed.
    #[error("cannot resolve followpath {path:?}: {reason} (check the symlinks along this path inside the context)")]
    FollowPath { path: String, reason: String },
}

/// The include patterns a walk with these `followpaths` (and no other include patterns) uses:
/// the paths plus every symlink target met along them, inside `root` (fsutil `FollowLinks` +
/// `dedupePaths`). `None` when one of them is the root itself, i.e. nothing is filtered.
pub fn follow_paths_includes(
    root: &Path,
    paths: &[String],
) -> Result<Option<Vec<String>>, FsError> {
    follow::follow_links(root, paths)
}

/// A summary of what is at `path` now, to notice later whether anything there changed: for a
/// directory (also through a symlink, as exporters write through one), the [`StatDigest`] of
/// a walk of the top-level entries `only` names (all when `None`) minus `excludes`; for
/// anything else, its type, size, mtime, ctime and inode. `None` when nothing is there. The
/// result records `only`, so [`output_witness_again`] can check the same entries later.
pub fn output_witness(
    path: &Path,
    excludes: &[String],
    only: Option<&[String]>,
) -> Result<Option<String>, FsError> {
    use std::os::unix::fs::MetadataExt;
    let stat_err = |source| FsError::Stat {
        path: path.to_path_buf(),
        source,
    };
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling link is as good as nothing; anything else lstat can see is a file.
            match std::fs::symlink_metadata(path) {
                Ok(md) if !md.file_type().is_symlink() => md,
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(stat_err(e)),
            }
        }
        Err(e) => return Err(stat_err(e)),
    };
    if !md.is_dir() {
        return Ok(Some(format!(
            "file:{}:{}:{}.{}:{}.{}:{}",
            stat::go_file_mode(&md),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            md.ino()
        )));
    }
    let opts = WalkOptions {
        include_patterns: only
            .map(|names| names.iter().map(|n| literal_pattern(n)).collect())
            .unwrap_or_default(),
        exclude_patterns: excludes.to_vec(),
        ..Default::default()
    };
    let mut digest = StatDigest::default();
    if only.is_none_or(|n| !n.is_empty()) {
        for entry in Walker::new(path, &opts)?.with_xattrs(false).lossy_names() {
            digest.add(&entry?);
        }
    }
    let names = only.map(|n| n.join("/")).unwrap_or_else(|| "*".into());
    Ok(Some(format!("dir\n{names}\n{}", digest.finish())))
}

/// [`output_witness`] of the same entries a recorded witness covered.
pub fn output_witness_again(
    path: &Path,
    excludes: &[String],
    recorded: &str,
) -> Result<Option<String>, FsError> {
    let mut parts = recorded.split('\n');
    let only: Option<Vec<String>> = match (parts.next(), parts.next()) {
        (Some("dir"), Some("*")) | (Some("dir"), None) => None,
        (Some("dir"), Some("")) => Some(Vec::new()),
        (Some("dir"), Some(names)) => Some(names.split('/').map(str::to_string).collect()),
        _ => None,
    };
    output_witness(path, excludes, only.as_deref())
}

/// The entries directly in directory `path` with their inode and ctime (empty when it is not
/// a directory): taken before and after an export, the names whose values changed are what
/// the export wrote.
pub fn top_level_stamps(path: &Path) -> std::collections::BTreeMap<String, (u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(list) = std::fs::read_dir(path) else {
        return Default::default();
    };
    list.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().into_string().ok()?;
        let md = e.metadata().ok()?;
        Some((name, (md.ino(), stat::ctime_ns(&md))))
    })
    .collect()
}

/// A temp file in `dir` for a result that is renamed into place when complete (tar exports,
/// `--metadata-file`). Created with mode 0666 less the umask, like any file a tool writes:
/// `tempfile`'s default 0600 would leave the final file unreadable to the group and others.
pub fn new_temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(".bk-build-")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// How a result file named by the user (`dest=` of a tar export, `--metadata-file`) is written,
/// decided from what the path names now. As buildx does, a path is written *through*: a
/// symlink's target is written (the link stays), and a device, FIFO or socket is opened and
/// written in place (never replaced by a regular file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFile {
    /// A regular file, or nothing yet: written to a temp file beside it, renamed over it when
    /// complete, so an interrupted run leaves the previous file.
    Replace(PathBuf),
    /// Not a regular file (`/dev/stdout`, a FIFO, a device): opened for writing as it is.
    WriteInto(PathBuf),
}

impl OutputFile {
    /// Looks at `path` (following symlinks, also dangling ones: their target is created).
    ///
    /// Errors: `path` is a directory (`IsADirectory`); a symlink chain that cannot be resolved
    /// (a loop); any other failure to stat it.
    pub fn at(path: &Path) -> std::io::Result<OutputFile> {
        // What the kernel opens, first: `/dev/stdout` on a pipe is a link to `pipe:[N]`, a
        // name that only the kernel's own resolution of `/proc/self/fd/1` can follow.
        if let Ok(md) = std::fs::metadata(path) {
            let ft = md.file_type();
            if !ft.is_file() && !ft.is_dir() {
                return Ok(OutputFile::WriteInto(path.to_path_buf()));
            }
        }
        let mut p = path.to_path_buf();
        // Follow links one at a time so a dangling one still names the file to create.
        for _ in 0..40 {
            let md = match std::fs::symlink_metadata(&p) {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(OutputFile::Replace(p))
                }
                Err(e) => return Err(e),
            };
            let ft = md.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
                continue;
            }
            if ft.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    format!("{} is a directory; name a file", path.display()),
                ));
            }
            return Ok(if ft.is_file() {
                OutputFile::Replace(p)
            } else {
                OutputFile::WriteInto(p)
            });
        }
        Err(std::io::Error::other(format!(
            "{}: too many levels of symbolic links",
            path.display()
        )))
    }
}
