//! Git's index as a source of content hashes, so that a fresh clone is fingerprinted without
//! reading every file.
//!
//! `git clone` (and `git checkout`, `git add`, `git status`) records in `.git/index`, for each
//! tracked file, its blob id together with the lstat fields of the file it wrote or read. While
//! a file's lstat still equals the recorded one, its content is that blob: the same rule git's
//! own `git status` relies on (Documentation/technical/racy-git.txt), applied more strictly here
//! (every recorded field, nanoseconds included, and no change later than the index's own write
//! minus the stat cache's racy window).
//!
//! An index is read whole, once per run, and only when some file misses the stat cache; its
//! entries are held about as compactly as git holds them itself (~60 bytes plus the path each).
//!
//! What this module owns: finding the repository that holds a directory, reading its index
//! (format versions 2 to 4, Documentation/gitformat-index.txt), deciding whether the checkout
//! can differ from the blobs, and for one file whether an entry vouches for it. What it must
//! not know: fingerprint keys, targets, the stat cache's file format.
//!
//! The blob id names the *converted* content: with end-of-line conversion, `ident`,
//! `working-tree-encoding` or a clean/smudge filter (LFS), the file on disk is not the blob.
//! So a repository is used only when nothing can convert: the `git` on PATH reports no
//! `core.autocrlf`, `core.eol`, `core.attributesFile` or `attr.tree` from any config file it
//! reads; no attribute that converts is set in any attributes file it reads (the tracked
//! `.gitattributes`, untracked ones above and inside each walked directory, `info/attributes`,
//! its global and system files, the system config of a git elsewhere); a tracked attributes
//! file is the very blob the index holds; no `git replace` refs exist; and no `GIT_*` variable
//! redirects git. Anything unusual (split or sparse index, an unknown required extension,
//! SHA-256 repositories, a bad checksum, no `git` to ask) means "not used": every file is then read, as without git. What cannot be
//! seen is a conversion that applied when a file was written and whose setting is gone now
//! (`git -c core.autocrlf=true clone`, a `git add` under an attribute removed since): `git
//! status` misses it too, and `--no-git-index` turns this source off, stat cache included.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::cache::{is_racy, racy_window_for, FileStat};

/// A 20-byte SHA-1 object id.
pub(crate) type Oid = [u8; 20];

/// An index bigger than this is not read (git's own for a million files is ~100 MB).
const MAX_INDEX_BYTES: u64 = 1 << 30;

/// The repositories met in one run, each read at most once and only when a file misses the
/// stat cache (a no-op run never opens an index).
#[derive(Default)]
pub(crate) struct GitIndexes {
    off: bool,
    /// By git directory; `None` = looked at and not usable.
    repos: Mutex<HashMap<PathBuf, Option<Arc<Repo>>>>,
}

impl std::fmt::Debug for GitIndexes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitIndexes")
            .field("off", &self.off)
            .finish()
    }
}

/// One walked directory's view of its repository's index.
pub(crate) struct DirView {
    repo: Arc<Repo>,
    /// The directory relative to the work tree, `/`-terminated, or empty at the top.
    prefix: Vec<u8>,
}

struct Repo {
    /// The modification time of the index file: nothing changed later than this (minus the
    /// racy window) can be vouched for.
    index_mtime_ns: i64,
    entries: Vec<IndexEntry>,
    /// All paths, back to back; entries point into it.
    paths: Vec<u8>,
}

#[derive(Clone, Copy)]
struct IndexEntry {
    path: (u32, u32),
    ctime: (u32, u32),
    mtime: (u32, u32),
    dev: u32,
    ino: u32,
    size: u32,
    oid: Oid,
    /// Stage 0, a regular file, and none of assume-valid, skip-worktree, intent-to-add.
    regular_clean: bool,
}

impl GitIndexes {
    /// Turns the index source off (`--no-git-index`): every file is read.
    pub(crate) fn set_off(&mut self, off: bool) {
        self.off = off;
    }

    pub(crate) fn is_off(&self) -> bool {
        self.off
    }

    /// The index view for `dir` (a walked context directory), if it lies in a usable
    /// repository. Never an error: anything unexpected means "read the files".
    pub(crate) fn view(&self, dir: &Path) -> Option<DirView> {
        if self.off || redirected_by_env() {
            return None;
        }
        let dir = fs::canonicalize(dir).ok()?;
        let (work_tree, git_dir) = find_repository(&dir)?;
        let repo = {
            let mut repos = self
                .repos
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            repos
                .entry(git_dir.clone())
                .or_insert_with(|| load_repo(&work_tree, &git_dir).map(Arc::new))
                .clone()?
        };
        // Attributes files between the top of the work tree and this directory apply to its
        // files whether tracked or not.
        let rel = dir.strip_prefix(&work_tree).ok()?;
        let mut at = work_tree.clone();
        if !attributes_file_is_harmless(&at.join(".gitattributes"), true) {
            return None;
        }
        for part in rel.components() {
            at.push(part);
            if !attributes_file_is_harmless(&at.join(".gitattributes"), true) {
                return None;
            }
        }
        let mut prefix = rel.as_os_str().as_bytes().to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        Some(DirView { repo, prefix })
    }
}

impl DirView {
    /// The blob id the index vouches for as the content of the file at `rel_path` (relative
    /// to the walked directory) whose lstat is `stat`: tracked at stage 0 as a regular file,
    /// none of assume-valid, skip-worktree or intent-to-add, every recorded lstat field equal,
    /// and not changed shortly before the index was written. `None` means "read it".
    pub(crate) fn vouched_blob(&self, rel_path: &str, stat: &FileStat) -> Option<Oid> {
        let repo = &*self.repo;
        let e = repo.find(&self.prefix, rel_path.as_bytes())?;
        (e.regular_clean && vouches(e, stat, repo.index_mtime_ns)).then_some(e.oid)
    }
}

impl Repo {
    fn path(&self, e: &IndexEntry) -> &[u8] {
        &self.paths[e.path.0 as usize..(e.path.0 + e.path.1) as usize]
    }

    /// The stage-0 entry at `prefix` + `rel` (entries are sorted by path, then stage).
    fn find(&self, prefix: &[u8], rel: &[u8]) -> Option<&IndexEntry> {
        let want = |p: &[u8]| -> std::cmp::Ordering {
            let (head, tail) = p.split_at(p.len().min(prefix.len()));
            head.cmp(prefix).then_with(|| {
                if head.len() < prefix.len() {
                    std::cmp::Ordering::Less
                } else {
                    tail.cmp(rel)
                }
            })
        };
        let i = self.entries.partition_point(|e| want(self.path(e)).is_lt());
        let e = self.entries.get(i)?;
        want(self.path(e)).is_eq().then_some(e)
    }
}

/// Every recorded field equal, and the file's last change clearly before the index was
/// written (git's racy case, widened to the stat cache's window).
fn vouches(e: &IndexEntry, st: &FileStat, index_mtime_ns: i64) -> bool {
    let split = |ns: i64| -> Option<(u32, u32)> {
        let s = u32::try_from(ns.div_euclid(1_000_000_000)).ok()?;
        Some((s, ns.rem_euclid(1_000_000_000) as u32))
    };
    u32::try_from(st.size).is_ok_and(|s| s == e.size)
        && split(st.mtime_ns) == Some(e.mtime)
        && split(st.ctime_ns) == Some(e.ctime)
        && st.ino as u32 == e.ino
        && st.dev as u32 == e.dev
        && !is_racy(st, index_mtime_ns, racy_window_for(st))
        // git "smudges" an entry it found racily clean by recording size 0: an empty file
        // matches it, yet only the empty blob is known to be empty.
        && (e.size != 0 || e.oid == EMPTY_BLOB)
}

/// The id of the empty blob (`git hash-object /dev/null`).
const EMPTY_BLOB: Oid = [
    0xe6, 0x9d, 0xe2, 0x9b, 0xb2, 0xd1, 0xd6, 0x43, 0x4b, 0x8b, 0x29, 0xae, 0x77, 0x5a, 0xd8, 0xc2,
    0xe4, 0x8c, 0x53, 0x91,
];

/// Variables that make git use another repository, index, work tree or configuration than
/// the one found on disk: what the checkout used is then unknown.
fn redirected_by_env() -> bool {
    const VARS: &[&str] = &[
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_CONFIG",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_ATTR_SOURCE",
    ];
    VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// The work tree and git directory holding `dir` (canonical): the nearest ancestor with a
/// `.git` directory, or a `.git` file naming one (`gitdir: PATH`, linked work trees and
/// submodules).
fn find_repository(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    for at in dir.ancestors() {
        let dot_git = at.join(".git");
        // Following a symlink: git accepts a `.git` that links to the git directory.
        let Ok(md) = fs::metadata(&dot_git) else {
            continue;
        };
        if md.is_dir() {
            return Some((at.to_path_buf(), fs::canonicalize(&dot_git).ok()?));
        }
        if md.is_file() {
            let text = fs::read_to_string(&dot_git).ok()?;
            let target = text.strip_prefix("gitdir:")?.trim();
            let git_dir = fs::canonicalize(at.join(target)).ok()?;
            return Some((at.to_path_buf(), git_dir));
        }
        return None;
    }
    None
}

/// Reads the index and checks that nothing can make the checkout differ from its blobs.
fn load_repo(work_tree: &Path, git_dir: &Path) -> Option<Repo> {
    // Linked work trees keep config and info/ in the common directory.
    let common = match read_small_file(&git_dir.join("commondir"), false).ok()? {
        Some(rel) => {
            let rel = String::from_utf8(rel).ok()?;
            fs::canonicalize(git_dir.join(rel.trim())).ok()?
        }
        None => git_dir.to_path_buf(),
    };
    // A checkout may come from another git than the one on PATH, with its own system config.
    let other_system_configs = ["/etc/gitconfig", "/usr/local/etc/gitconfig"];
    if !other_system_configs
        .iter()
        .all(|c| config_file_is_plain(Path::new(c)))
    {
        return None;
    }
    // Replaced objects are checked out with the replacement's content under the original id.
    if has_replace_refs(&common) {
        return None;
    }
    let git = GitSettings::ask(work_tree, git_dir)?;
    let mut attributes = vec![
        // Where distribution packages keep it, whatever git says (a checkout may come from
        // another git than the one on PATH).
        PathBuf::from("/etc/gitattributes"),
        common.join("info/attributes"),
    ];
    attributes.extend(git.attribute_files);
    if !attributes
        .iter()
        .all(|a| attributes_file_is_harmless(a, false))
    {
        return None;
    }

    let index_path = git_dir.join("index");
    let md = fs::metadata(&index_path).ok()?;
    if !md.is_file() || md.len() > MAX_INDEX_BYTES {
        return None;
    }
    let bytes = fs::read(&index_path).ok()?;
    // The file read must be the one whose time is used: a concurrent `git add` renames a new
    // index into place.
    let after = fs::metadata(&index_path).ok()?;
    if after.ino() != md.ino()
        || after.mtime() != md.mtime()
        || after.mtime_nsec() != md.mtime_nsec()
    {
        return None;
    }
    let repo = parse_index(&bytes, crate::fs::stat::mtime_ns(&md))?;
    // Every tracked attributes file must be on disk, harmless, and the very blob the index
    // holds: when checking files out, git reads the index's copy first.
    for e in &repo.entries {
        let p = repo.path(e);
        if p == b".gitattributes" || p.ends_with(b"/.gitattributes") {
            let on_disk = work_tree.join(std::ffi::OsStr::from_bytes(p));
            let bytes = read_small_file(&on_disk, true).ok()??;
            if blob_id(&bytes) != e.oid || !attributes_file_is_harmless(&on_disk, true) {
                return None;
            }
        }
    }
    Some(repo)
}

/// A git blob id in progress for `len` bytes of content: SHA-1 of `blob LEN\0` + the bytes.
pub(crate) fn blob_hasher(len: u64) -> ring::digest::Context {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(format!("blob {len}\0").as_bytes());
    ctx
}

/// The git blob id of `bytes`.
fn blob_id(bytes: &[u8]) -> Oid {
    let mut ctx = blob_hasher(bytes.len() as u64);
    ctx.update(bytes);
    let mut oid = [0; 20];
    oid.copy_from_slice(ctx.finish().as_ref());
    oid
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses an index file (Documentation/gitformat-index.txt, versions 2, 3 and 4, SHA-1).
/// `None` for anything not understood or not verified.
fn parse_index(bytes: &[u8], index_mtime_ns: i64) -> Option<Repo> {
    const HASH: usize = 20;
    if bytes.len() < 12 + HASH || &bytes[..4] != b"DIRC" {
        return None;
    }
    let (body, trailer) = bytes.split_at(bytes.len() - HASH);
    // An all-zero trailer is git's `index.skipHash` (set by `feature.manyFiles`): git itself
    // then trusts the file unverified, and so do we; a damaged one still has to parse exactly.
    if trailer.iter().any(|&b| b != 0) {
        let sum = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body);
        if sum.as_ref() != trailer {
            return None;
        }
    }
    let version = be32(body, 4)?;
    if !(2..=4).contains(&version) {
        return None;
    }
    let count = be32(body, 8)? as usize;
    let mut entries = Vec::with_capacity(count.min(body.len() / 62));
    let mut paths: Vec<u8> = Vec::new();
    let mut prev: Vec<u8> = Vec::new();
    let mut at = 12usize;
    for _ in 0..count {
        let start = at;
        let f = |i: usize| be32(body, start + 4 * i);
        let (ctime, mtime) = ((f(0)?, f(1)?), (f(2)?, f(3)?));
        let (dev, ino, mode, size) = (f(4)?, f(5)?, f(6)?, f(9)?);
        let oid: Oid = body.get(start + 40..start + 60)?.try_into().ok()?;
        let flags = be16(body, start + 60)?;
        at = start + 62;
        let mut extended = 0u16;
        if flags & 0x4000 != 0 {
            if version < 3 {
                return None;
            }
            extended = be16(body, at)?;
            at += 2;
        }
        let path: Vec<u8> = if version == 4 {
            // Prefix compression: drop N bytes of the previous path, then a NUL-terminated tail.
            let mut c = *body.get(at)?;
            at += 1;
            let mut strip = u64::from(c & 0x7f);
            while c & 0x80 != 0 {
                c = *body.get(at)?;
                at += 1;
                strip = strip.checked_add(1)?.checked_mul(128)? | u64::from(c & 0x7f);
            }
            let keep = prev.len().checked_sub(usize::try_from(strip).ok()?)?;
            let nul = body.get(at..)?.iter().position(|&b| b == 0)?;
            let mut p = prev[..keep].to_vec();
            p.extend_from_slice(&body[at..at + nul]);
            at += nul + 1;
            p
        } else {
            let nul = body.get(at..)?.iter().position(|&b| b == 0)?;
            let p = body[at..at + nul].to_vec();
            // Padded with 1 to 8 NULs to a multiple of 8 bytes from the entry's start.
            at = start + ((at + nul - start + 8) & !7);
            p
        };
        if at > body.len() || path.is_empty() {
            return None;
        }
        let stage = (flags >> 12) & 3;
        let assume_valid = flags & 0x8000 != 0;
        let skip_or_intent = extended & 0x6000 != 0;
        let regular = mode == 0o100644 || mode == 0o100755;
        // Sorted by path then stage: anything else is not an index this code understands.
        if !entries.is_empty() && path.as_slice() < prev.as_slice() {
            return None;
        }
        let off = u32::try_from(paths.len()).ok()?;
        let len = u32::try_from(path.len()).ok()?;
        paths.extend_from_slice(&path);
        entries.push(IndexEntry {
            path: (off, len),
            ctime,
            mtime,
            dev,
            ino,
            size,
            oid,
            regular_clean: stage == 0 && regular && !assume_valid && !skip_or_intent,
        });
        prev = path;
    }
    // Extensions: an upper-case first letter marks one that may be ignored; any other
    // (`link` = split index, `sdir` = sparse index) changes what the entries mean.
    while at < body.len() {
        let sig = body.get(at..at + 4)?;
        let len = be32(body, at + 4)? as usize;
        if !sig[0].is_ascii_uppercase() {
            return None;
        }
        at = at.checked_add(8)?.checked_add(len)?;
    }
    if at != body.len() {
        return None;
    }
    // Conflicted paths repeat with stages 1-3; keep one entry per path (the stage-0 one if
    // any, which sorts first).
    entries.dedup_by(|later, earlier| {
        paths[later.path.0 as usize..(later.path.0 + later.path.1) as usize]
            == paths[earlier.path.0 as usize..(earlier.path.0 + earlier.path.1) as usize]
    });
    Some(Repo {
        index_mtime_ns,
        entries,
        paths,
    })
}

/// A config file that mentions none of the settings that can convert on checkout or bring in
/// another file (a word search, deliberately cruder than git's parser: a false alarm only
/// means reading the files). Used for system files another git than the one on PATH reads.
fn config_file_is_plain(path: &Path) -> bool {
    match read_small_file(path, false) {
        Ok(None) => true,
        Ok(Some(bytes)) => {
            let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
            ![
                "autocrlf",
                "eol",
                "attributesfile",
                "tree",
                "include",
                "objectformat",
            ]
            .iter()
            .any(|w| text.contains(w))
        }
        Err(()) => false,
    }
}

/// Whether the repository has `refs/replace/` refs (loose or packed), or keeps its refs where
/// this code does not look (the reftable backend).
fn has_replace_refs(common: &Path) -> bool {
    use std::io::BufRead as _;
    if common.join("reftable").exists() {
        return true;
    }
    if fs::read_dir(common.join("refs/replace")).is_ok_and(|mut d| d.next().is_some()) {
        return true;
    }
    // Streamed: a repository with many tags has a packed-refs file of many megabytes.
    let file = match open_regular(&common.join("packed-refs"), false) {
        Ok(Some(f)) => f,
        Ok(None) => return false,
        Err(()) => return true,
    };
    let mut lines = io::BufReader::new(file).split(b'\n');
    !lines.all(|l| l.is_ok_and(|l| !l.windows(13).any(|w| w == b"refs/replace/")))
}

/// The config keys that can make a checkout differ from its blobs, or make the index found on
/// disk not the one git uses (git-config(1)): `git config --get-regexp` prints them from every
/// file git reads (system, global, repository, work tree, includes, `GIT_CONFIG_*`).
const RISKY_KEYS: &str =
    "^(core\\.(autocrlf|eol|attributesfile|worktree|bare)|attr\\.tree|extensions\\.objectformat)$";

/// What the `git` on PATH says about the settings that apply to a work tree.
struct GitSettings {
    /// The system and global attributes files it reads.
    attribute_files: Vec<PathBuf>,
}

impl GitSettings {
    /// `None` when a setting can convert files, or when git cannot be asked: then nothing is
    /// known and the index is not used. Four short git processes, run side by side, once per
    /// repository and run, and only when some file missed the stat cache.
    fn ask(work_tree: &Path, git_dir: &Path) -> Option<GitSettings> {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(work_tree)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()
        };
        let config = git(&["config", "--get-regexp", RISKY_KEYS])?;
        // git leaves out a repository's own config, silently, when it does not open that
        // repository (another owner, an extension it does not know): it must name ours.
        let opened = git(&["rev-parse", "--absolute-git-dir"]);
        // `git var` knows these since git 2.42; older ones keep them where the fallbacks say.
        let system = git(&["var", "GIT_ATTR_SYSTEM"]);
        let global = git(&["var", "GIT_ATTR_GLOBAL"]);
        let answer = |child: Option<std::process::Child>| -> Option<(Option<i32>, String)> {
            let out = child?.wait_with_output().ok()?;
            Some((out.status.code(), String::from_utf8(out.stdout).ok()?))
        };
        let config = answer(Some(config))?;
        match answer(opened) {
            Some((Some(0), dir)) if fs::canonicalize(dir.trim()).ok()? == git_dir => {}
            _ => return None,
        }
        let path_from = |a: Option<(Option<i32>, String)>| match a {
            Some((Some(0), text)) if !text.trim().is_empty() => Some(PathBuf::from(text.trim())),
            _ => None,
        };
        let system = path_from(answer(system)).or_else(|| system_attributes_fallback(work_tree));
        let global = path_from(answer(global)).or_else(global_attributes_fallback);
        match config {
            (Some(0), text) if text.lines().all(|l| !config_line_is_risky(l)) => {}
            // Exit 1 with nothing printed: none of the keys is set anywhere.
            (Some(1), text) if text.is_empty() => {}
            _ => return None,
        }
        // No global file (no HOME, no XDG_CONFIG_HOME) is one git does not read either.
        Some(GitSettings {
            attribute_files: [Some(system?), global].into_iter().flatten().collect(),
        })
    }
}

/// One `KEY VALUE` line of `git config --get-regexp` (a key alone is a boolean `true`).
fn config_line_is_risky(line: &str) -> bool {
    let (key, value) = line.split_once(' ').unwrap_or((line, "true"));
    let value = value.trim().to_ascii_lowercase();
    let falsy = matches!(value.as_str(), "false" | "no" | "off" | "0" | "");
    match key.to_ascii_lowercase().as_str() {
        "core.autocrlf" | "core.bare" => !falsy,
        "extensions.objectformat" => value != "sha1",
        // core.eol, core.attributesfile, core.worktree, attr.tree, and anything unexpected.
        _ => true,
    }
}

/// The system attributes file of a git older than 2.42: `$(prefix)/etc/gitattributes`, or
/// `/etc/gitattributes` for prefix `/usr`, with the prefix read off `git --exec-path`.
fn system_attributes_fallback(work_tree: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(work_tree)
        .arg("--exec-path")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let exec = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let prefix = exec
        .strip_prefix("/")
        .ok()
        .and_then(|_| {
            ["libexec/git-core", "lib/git-core"]
                .iter()
                .find_map(|tail| exec.to_str()?.strip_suffix(&format!("/{tail}")))
        })
        .map(PathBuf::from)?;
    Some(match prefix.as_os_str() == "/usr" {
        true => PathBuf::from("/etc/gitattributes"),
        false => prefix.join("etc/gitattributes"),
    })
}

/// The global attributes file of a git older than 2.42: `$XDG_CONFIG_HOME/git/attributes`,
/// else `~/.config/git/attributes` (gitattributes(5)).
fn global_attributes_fallback() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(xdg.join("git/attributes"))
}

/// Attributes and config files bigger than this are not read (and the index is not used).
const MAX_SETTINGS_FILE: u64 = 1 << 20;

/// A regular file opened for reading; `Ok(None)` when there is none. Never blocks on a FIFO;
/// with `no_follow`, a symlink is an error.
fn open_regular(path: &Path, no_follow: bool) -> Result<Option<fs::File>, ()> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | if no_follow { libc::O_NOFOLLOW } else { 0 };
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(_) => return Err(()),
    };
    match file.metadata() {
        Ok(md) if md.is_file() => Ok(Some(file)),
        _ => Err(()),
    }
}

/// The bytes of a small regular file; `Ok(None)` when there is none. Never blocks on a FIFO
/// or reads a device; with `no_follow`, a symlink is an error.
fn read_small_file(path: &Path, no_follow: bool) -> Result<Option<Vec<u8>>, ()> {
    use std::io::Read as _;
    let Some(file) = open_regular(path, no_follow)? else {
        return Ok(None);
    };
    let md = file.metadata().map_err(|_| ())?;
    if md.len() > MAX_SETTINGS_FILE {
        return Err(());
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(MAX_SETTINGS_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| ())?;
    if bytes.len() as u64 > MAX_SETTINGS_FILE {
        return Err(());
    }
    Ok(Some(bytes))
}

/// An attributes file that sets no attribute that converts content between the blob and the
/// work tree (`text`, `eol`, `filter`, `ident`, `working-tree-encoding`, macros), or that does
/// not exist. Conservative: only known-harmless attributes are allowed. `in_tree`: inside the
/// work tree, where git does not follow a symlinked attributes file (and neither is it ours to
/// follow: it could name a FIFO or /dev/zero); such a link makes the repository unusable.
pub(crate) fn attributes_file_is_harmless(path: &Path, in_tree: bool) -> bool {
    let text = match read_small_file(path, in_tree) {
        Ok(Some(t)) => t,
        Ok(None) => return true,
        Err(()) => return false,
    };
    let Ok(text) = String::from_utf8(text) else {
        return false;
    };
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        // Quoted patterns and macro definitions are not worth understanding here.
        if l.starts_with('"') || l.starts_with("[attr]") {
            return false;
        }
        for attr in l.split_whitespace().skip(1) {
            let ok = match attr {
                "binary" | "-text" => true,
                _ => {
                    let name = attr.trim_start_matches(['-', '!']);
                    let name = name.split('=').next().unwrap_or(name);
                    matches!(
                        name,
                        "diff"
                            | "merge"
                            | "whitespace"
                            | "export-ignore"
                            | "export-subst"
                            | "delta"
                            | "lockable"
                    ) || name.starts_with("linguist-")
                }
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests;
