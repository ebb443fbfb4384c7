//! The floor a no-op run is measured against: how long it takes just to lstat every input file,
//! and to blake3 every input byte, of a tree (BENCHMARKS.md, the no-op and fresh-runner rows).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::FingerprintError;
use crate::fs::{is_regular, parse_dockerignore, WalkOptions, Walker};

/// Timings of [`bench_floor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorTimes {
    /// One `lstat` per input entry (files, directories, links), single-threaded.
    pub lstat_all: Duration,
    /// Reading and blake3-hashing every input regular file, single-threaded.
    pub hash_all: Duration,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Measures the floor for the input files under `root`. The inputs are what builds could
/// receive: every directory holding a `.dockerignore` is treated as a context with those
/// excludes (so a monorepo's junk is not counted), and `root` itself is one too when it has a
/// `.dockerignore` or no directory below it does. Listing happens before timing starts; the
/// page cache is left as the caller prepared it.
pub fn bench_floor(root: &Path) -> Result<FloorTimes, FingerprintError> {
    let walk_err = |source| FingerprintError::Walk {
        target: "bench-floor".into(),
        source,
    };
    let mut contexts = Vec::new();
    find_contexts(root, &mut contexts);
    if root.join(".dockerignore").exists() || contexts.is_empty() {
        contexts.insert(0, root.to_path_buf());
    }

    let mut seen = HashSet::new();
    let mut entries: Vec<(PathBuf, bool)> = Vec::new();
    for ctx in &contexts {
        let excludes = std::fs::read(ctx.join(".dockerignore"))
            .map(|b| parse_dockerignore(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        let opts = WalkOptions {
            exclude_patterns: excludes,
            ..Default::default()
        };
        for e in Walker::new(ctx, &opts)
            .map_err(walk_err)?
            .with_xattrs(false)
        {
            let e = e.map_err(walk_err)?;
            if seen.insert(e.abs_path.clone()) {
                entries.push((e.abs_path, is_regular(e.mode) && !e.socket));
            }
        }
    }
    drop(seen);

    let started = Instant::now();
    for (p, _) in &entries {
        // The result is irrelevant, only the syscall's cost; black_box keeps it from being
        // optimized away.
        std::hint::black_box(std::fs::symlink_metadata(p).ok());
    }
    let lstat_all = started.elapsed();

    let mut files = 0;
    let mut bytes = 0;
    let started = Instant::now();
    for (p, regular) in &entries {
        if !regular {
            continue;
        }
        let file = File::open(p).map_err(|source| FingerprintError::Read {
            target: "bench-floor".into(),
            path: p.clone(),
            source,
        })?;
        let mut h = blake3::Hasher::new();
        h.update_reader(&file)
            .map_err(|source| FingerprintError::Read {
                target: "bench-floor".into(),
                path: p.clone(),
                source,
            })?;
        std::hint::black_box(h.finalize());
        files += 1;
        bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
    }
    let hash_all = started.elapsed();
    Ok(FloorTimes {
        lstat_all,
        hash_all,
        entries: entries.len() as u64,
        files,
        bytes,
    })
}

/// Directories strictly below `dir` that contain a `.dockerignore` (not descending into
/// `.git`, which is never a build context).
fn find_contexts(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut subdirs: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter(|e| e.file_name() != ".git")
        .map(|e| e.path())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        if sub.join(".dockerignore").is_file() {
            out.push(sub.clone());
        }
        find_contexts(&sub, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_what_each_context_would_send() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        for d in ["svc/app", "svc/node_modules", "lib"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        std::fs::write(p.join("svc/.dockerignore"), "node_modules\n").unwrap();
        std::fs::write(p.join("svc/app/a.py"), "12345").unwrap();
        std::fs::write(p.join("svc/node_modules/junk.js"), "x".repeat(1000)).unwrap();
        std::fs::write(p.join("lib/.dockerignore"), "").unwrap();
        std::fs::write(p.join("lib/l.lua"), "abc").unwrap();
        std::fs::write(p.join("top-level-not-an-input"), "zzz").unwrap();

        let f = bench_floor(p).unwrap();
        // svc: .dockerignore, app/, app/a.py; lib: .dockerignore, l.lua
        assert_eq!(f.entries, 5);
        assert_eq!(f.files, 4);
        assert_eq!(f.bytes, "node_modules\n".len() as u64 + 5 + 3);
    }

    #[test]
    fn a_plain_tree_is_one_context() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), "1234").unwrap();
        let f = bench_floor(t.path()).unwrap();
        assert_eq!((f.entries, f.files, f.bytes), (2, 1, 4));
    }
}
