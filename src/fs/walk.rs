//! The ordered, filtered, lazy walk of a build context (fsutil `filterFS.Walk` semantics).
//!
//! Order: depth-first pre-order, each directory's entries sorted by raw name bytes, so the
//! global order is fsutil's (`a`, `a/x`, `a-b`, `a.txt`); the receiver rejects anything else
//! with "changes out of order".
//!
//! Filtering (include patterns, exclude patterns, followpaths) follows fsutil exactly:
//! - each entry is matched with the parent directory's per-pattern results
//!   (patternmatcher `MatchesUsingParentResults`);
//! - an entry is sent if it is included (when include patterns exist) and not excluded;
//! - a directory that is filtered out is still entered when something inside might be sent;
//!   when something is, the directory's own entry (its real lstat) is emitted first, lazily,
//!   exactly once — the receiver needs every parent before a child;
//! - a filtered-out directory inside which nothing can match is not even listed. fsutil only
//!   proves that for literal patterns; we also prove it for globs (see
//!   [`PatternMatcher::may_reinclude_inside`]), which changes speed, never the result.
//!
//! Stat data: `lstat` only (symlinks, including symlinks to directories, are sent as links and
//! never followed). FIFOs and block/char devices are entries like any other (type bits and
//! device numbers). A unix socket is what fsutil makes of it: its socket bit cleared, i.e. an
//! empty regular file with the socket's permissions ([`Entry::socket`] says so; its content is
//! never read). Nothing that would be sent is ever left out silently:
//! - a name or symlink target that is not valid UTF-8 ends the walk with
//!   [`FsError::NotUtf8`] when the entry would be sent (protobuf strings cannot carry it;
//!   `docker buildx build` fails too), and only then: an excluded one is no error. Such names
//!   take part in pattern matching the way Go sees them (each invalid byte one U+FFFD);
//! - hard links are sent as independent regular files (fsutil may send later links as
//!   "hardlink to the first path"; the copied bytes are the same);
//! - a file that vanishes between listing and lstat is skipped instead of ending its directory
//!   (it is gone: there is nothing left to send).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{DirEntry, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::follow::{dedupe_paths, follow_links};
use super::pattern::PatternMatcher;
use super::stat::{dev_major_minor, go_file_mode, unix_nanos, XattrReader, MODE_SOCKET};
use super::FsError;

/// What the walk reports for one entry (plain data; the file-sync layer turns it into a wire
/// `Stat`, fingerprinting hashes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `/`-separated, relative, clean; never empty (the root itself is never emitted).
    pub rel_path: String,
    pub abs_path: PathBuf,
    /// Go `os.FileMode` bits.
    pub mode: u32,
    /// lstat size for non-directories (a symlink's is its target's length), 0 for directories.
    pub size: i64,
    /// Modification time in Unix nanoseconds.
    pub mtime_ns: i64,
    /// `readlink` text for symlinks, else empty.
    pub linkname: String,
    /// Device numbers, only for block/char devices (fsutil's encoding).
    pub devmajor: i64,
    pub devminor: i64,
    /// Extended attributes except `com.apple.*`, not following links, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Emitted only because something inside it is sent: the directory itself is filtered out
    /// (fsutil sends such parents so the receiver can place their children). Not on the wire.
    pub parent_only: bool,
    /// A unix socket on disk. `mode` has no socket bit (fsutil clears it), so the daemon gets
    /// an empty regular file; readers must not open it (the daemon's request for its content
    /// is answered with the empty file). Not on the wire.
    pub socket: bool,
    /// For stat caches (git-index-like change detection); not sent on the wire.
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i64,
}

/// A digest of what a walk saw of each entry: path, type and permissions, size, mtime, ctime,
/// inode, device, link target and device numbers. Two walks of the same request give the same
/// digest exactly when no entry was added, removed, replaced or written in between (a write
/// always moves the ctime), so comparing the digest file sync computed while sending with
/// one computed later tells whether the daemon got what is on disk now.
#[derive(Default)]
pub struct StatDigest {
    hash: blake3::Hasher,
    entries: u64,
}

impl StatDigest {
    pub fn add(&mut self, e: &Entry) {
        let h = &mut self.hash;
        h.update(&(e.rel_path.len() as u64).to_le_bytes());
        h.update(e.rel_path.as_bytes());
        for n in [
            e.mode as i64,
            e.size,
            e.mtime_ns,
            e.ctime_ns,
            e.devmajor,
            e.devminor,
        ] {
            h.update(&n.to_le_bytes());
        }
        h.update(&e.ino.to_le_bytes());
        h.update(&e.dev.to_le_bytes());
        h.update(&(e.linkname.len() as u64).to_le_bytes());
        h.update(e.linkname.as_bytes());
        self.entries += 1;
    }

    /// `<entries>:<hex>`.
    pub fn finish(&self) -> String {
        format!("{}:{}", self.entries, self.hash.finalize().to_hex())
    }
}

/// The filters the daemon asks for (DiffCopy metadata), all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkOptions {
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub follow_paths: Vec<String>,
}

/// One listed child of a directory.
struct Item {
    /// The name as patterns see it: the real one, or for a name that is not UTF-8 Go's view of
    /// it (each invalid byte one U+FFFD), which is what fsutil's patterns are matched against.
    name: String,
    /// The name on disk when it is not UTF-8 (it can then only error if it is to be sent).
    raw: Option<OsString>,
    /// From the directory listing's file type (no extra syscall); decides matching as in fsutil.
    is_dir: bool,
    /// Kept to lstat relative to the open directory (cheaper than a full path lookup).
    dent: Option<DirEntry>,
}

/// One directory on the current depth-first path.
struct Frame {
    /// Remaining children, sorted descending so `pop` yields them in ascending byte order.
    items: Vec<Item>,
    /// Length of this directory's `path/` prefix in [`Walker::path`] (0 for the root).
    prefix_len: usize,
    /// Number of `/` in a child's relative path.
    depth: usize,
    /// This directory's per-pattern results, inherited by its children (empty for the root).
    incl: Vec<bool>,
    excl: Vec<bool>,
    /// Whether this directory's own entry has been emitted (the root counts as emitted).
    emitted: bool,
    /// This directory's absolute path (listed and lstat'ed through it: names on disk may not
    /// be UTF-8, so it is not rebuilt from the relative path).
    abs: PathBuf,
    /// Its relative path has a name that is not UTF-8: it, and anything in it, cannot be sent.
    not_utf8: bool,
}

/// Directories deeper than this do not keep their listing's directory handle open (each
/// open listing costs a file descriptor); their entries are lstat'ed by full path instead.
const MAX_OPEN_LISTINGS: usize = 64;

/// Lazy depth-first walk of a build context; see the module documentation for the rules.
///
/// Memory holds one sorted listing per directory level on the current path, never the tree.
pub struct Walker {
    root: PathBuf,
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    stack: Vec<Frame>,
    /// Relative path of the entry being visited; frames share its prefix.
    path: String,
    out: VecDeque<Entry>,
    pending_err: Option<FsError>,
    /// Names (and link targets) that are not UTF-8 are errors; see [`Walker::lossy_names`].
    strict_names: bool,
    xattrs: Option<XattrReader>,
    #[cfg(test)]
    listed_dirs: Vec<String>,
}

impl Walker {
    /// Prepares a walk of `root` (symlinks in `root` itself are resolved, as fsutil does),
    /// compiling the patterns and resolving followpaths. Only the root is listed here.
    pub fn new(root: &Path, opts: &WalkOptions) -> Result<Walker, FsError> {
        let canonical = std::fs::canonicalize(root).map_err(|source| FsError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        let md = std::fs::metadata(&canonical).map_err(|source| FsError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if !md.is_dir() {
            return Err(FsError::NotADirectory {
                path: root.to_path_buf(),
            });
        }

        // fsutil: user include patterns, plus followpath targets (then deduplicated); an empty
        // result means "no include filter".
        let mut includes: Option<Vec<String>> =
            (!opts.include_patterns.is_empty()).then(|| opts.include_patterns.clone());
        if !opts.follow_paths.is_empty() {
            if let Some(targets) = follow_links(&canonical, &opts.follow_paths)? {
                let mut all = includes.unwrap_or_default();
                all.extend(targets);
                includes = dedupe_paths(&all);
            }
        }
        // A non-empty include list whose entries are all blank still includes nothing (fsutil
        // builds a matcher with no patterns), so keep even an empty matcher here.
        let include = match includes {
            Some(list) if !list.is_empty() => Some(PatternMatcher::new(&list)?),
            _ => None,
        };
        let exclude = if opts.exclude_patterns.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&opts.exclude_patterns)?).filter(|m| !m.is_empty())
        };

        let mut walker = Walker {
            root: canonical,
            include,
            exclude,
            stack: Vec::new(),
            path: String::new(),
            out: VecDeque::new(),
            pending_err: None,
            strict_names: true,
            xattrs: Some(XattrReader::default()),
            #[cfg(test)]
            listed_dirs: Vec::new(),
        };
        let root_path = walker.root.clone();
        let items = walker
            .list_dir(&root_path, true)
            .map_err(|source| FsError::ReadDir {
                path: root_path,
                source,
            })?;
        walker.stack.push(Frame {
            items,
            prefix_len: 0,
            depth: 0,
            incl: Vec::new(),
            excl: Vec::new(),
            emitted: true,
            abs: walker.root.clone(),
            not_utf8: false,
        });
        Ok(walker)
    }

    /// Whether to read extended attributes (default: yes, as BuildKit sends them). Turning it
    /// off saves one syscall per entry for callers that do not need them.
    pub fn with_xattrs(mut self, read: bool) -> Self {
        self.xattrs = read.then(XattrReader::default);
        self
    }

    /// For walks whose entries never go on the wire (a digest of an output directory, say):
    /// a name or symlink target that is not UTF-8 is reported in Go's view of it (each invalid
    /// byte one U+FFFD) instead of ending the walk with [`FsError::NotUtf8`].
    pub fn lossy_names(mut self) -> Self {
        self.strict_names = false;
        self
    }

    /// The resolved context root every `abs_path` starts with.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lists a directory, sorted descending by name bytes (consumed with `pop`).
    fn list_dir(&mut self, abs: &Path, keep_handles: bool) -> io::Result<Vec<Item>> {
        #[cfg(test)]
        self.listed_dirs.push(
            abs.strip_prefix(&self.root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let mut items = Vec::new();
        for dent in std::fs::read_dir(abs)? {
            let dent = dent?;
            let (name, raw) = match dent.file_name().into_string() {
                Ok(name) => (name, None),
                Err(raw) => (go_lossy(raw.as_encoded_bytes()), Some(raw)),
            };
            let is_dir = match dent.file_type() {
                Ok(t) => t.is_dir(),
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e),
            };
            items.push(Item {
                name,
                raw,
                is_dir,
                dent: keep_handles.then_some(dent),
            });
        }
        items.sort_unstable_by(|a, b| b.disk_name().cmp(a.disk_name()));
        Ok(items)
    }

    /// Decides one listed child of the top frame and queues what it produces.
    fn visit(&mut self, item: Item) -> Result<(), FsError> {
        let top = self.stack.len() - 1;
        let (prefix_len, depth) = (self.stack[top].prefix_len, self.stack[top].depth);
        self.path.truncate(prefix_len);
        self.path.push_str(&item.name);

        let mut filtered_out = false;
        let mut incl_rec = Vec::new();
        let mut excl_rec = Vec::new();
        if let Some(m) = &self.include {
            let parent = (top > 0).then(|| self.stack[top].incl.as_slice());
            let rec = item.is_dir.then_some(&mut incl_rec);
            if !m.eval(&self.path, depth, parent, rec) {
                if item.is_dir && !m.may_match_inside(&self.path) {
                    return Ok(());
                }
                filtered_out = true;
            }
        }
        if let Some(m) = &self.exclude {
            let parent = (top > 0).then(|| self.stack[top].excl.as_slice());
            let rec = item.is_dir.then_some(&mut excl_rec);
            if m.eval(&self.path, depth, parent, rec) {
                if item.is_dir && !m.may_reinclude_inside(&self.path) {
                    return Ok(());
                }
                filtered_out = true;
            }
        }
        let keep_handles = self.stack.len() < MAX_OPEN_LISTINGS;
        let abs = match &item.raw {
            Some(raw) => self.stack[top].abs.join(raw),
            None => self.stack[top].abs.join(&item.name),
        };
        let not_utf8 = self.strict_names && (self.stack[top].not_utf8 || item.raw.is_some());

        if filtered_out {
            if !item.is_dir {
                return Ok(());
            }
            // Look inside for re-included entries, without emitting the directory unless
            // one turns up.
            match self.list_dir(&abs, keep_handles) {
                Ok(items) => {
                    let frame = (abs, not_utf8, false);
                    self.push_frame(items, depth, incl_rec, excl_rec, frame)
                }
                // fsutil ignores unreadable directories it was not going to send.
                Err(e) if vanished(&e) || e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(source) => return Err(FsError::ReadDir { path: abs, source }),
            }
            return Ok(());
        }
        if not_utf8 {
            // It would be sent. Any directory above it that is not UTF-8 is named first.
            self.emit_pending_parents()?;
            return Err(FsError::NotUtf8 {
                path: abs,
                what: "name",
            });
        }

        let md = match &item.dent {
            Some(d) => d.metadata(),
            None => std::fs::symlink_metadata(&abs),
        };
        let md = match md {
            Ok(md) => md,
            Err(e) if vanished(&e) => return Ok(()),
            Err(source) => return Err(FsError::Stat { path: abs, source }),
        };
        drop(item);
        let rel = self.path.clone();
        let Some(entry) = self.make_entry(rel, abs, &md)? else {
            return Ok(());
        };
        self.emit_pending_parents()?;
        if !md.is_dir() {
            self.out.push_back(entry);
            return Ok(());
        }
        let listing = self.list_dir(&entry.abs_path, keep_handles);
        let abs = entry.abs_path.clone();
        self.out.push_back(entry);
        match listing {
            Ok(items) => self.push_frame(items, depth, incl_rec, excl_rec, (abs, false, true)),
            Err(e) if vanished(&e) => {}
            Err(source) => return Err(FsError::ReadDir { path: abs, source }),
        }
        Ok(())
    }

    /// Enters the directory just visited; `dir` is its absolute path, whether its relative
    /// path is not UTF-8, and whether its own entry was emitted.
    fn push_frame(
        &mut self,
        items: Vec<Item>,
        parent_depth: usize,
        incl: Vec<bool>,
        excl: Vec<bool>,
        dir: (PathBuf, bool, bool),
    ) {
        let (abs, not_utf8, emitted) = dir;
        self.path.push('/');
        self.stack.push(Frame {
            items,
            prefix_len: self.path.len(),
            depth: parent_depth + 1,
            incl,
            excl,
            emitted,
            abs,
            not_utf8,
        });
    }

    /// Emits, outermost first, the directories on the current path that were entered without
    /// being emitted, with their real lstat. A directory whose name is not UTF-8 cannot be:
    /// that is the error.
    fn emit_pending_parents(&mut self) -> Result<(), FsError> {
        for i in 1..self.stack.len() {
            if self.stack[i].emitted {
                continue;
            }
            let abs = self.stack[i].abs.clone();
            if self.stack[i].not_utf8 {
                return Err(FsError::NotUtf8 {
                    path: abs,
                    what: "name",
                });
            }
            let rel = self.path[..self.stack[i].prefix_len - 1].to_owned();
            let md = std::fs::symlink_metadata(&abs).map_err(|source| FsError::Stat {
                path: abs.clone(),
                source,
            })?;
            if let Some(mut entry) = self.make_entry(rel, abs, &md)? {
                entry.parent_only = true;
                self.out.push_back(entry);
            }
            self.stack[i].emitted = true;
        }
        Ok(())
    }

    /// Builds the entry from lstat data; `None` when it cannot be represented on the wire.
    fn make_entry(
        &mut self,
        rel_path: String,
        abs_path: PathBuf,
        md: &Metadata,
    ) -> Result<Option<Entry>, FsError> {
        let ft = md.file_type();
        let mut linkname = String::new();
        if ft.is_symlink() {
            let target = match std::fs::read_link(&abs_path) {
                Ok(t) => t,
                Err(e) if vanished(&e) => return Ok(None),
                Err(source) => {
                    return Err(FsError::ReadLink {
                        path: abs_path,
                        source,
                    })
                }
            };
            match target.into_os_string().into_string() {
                Ok(t) => linkname = t,
                Err(raw) if !self.strict_names => linkname = go_lossy(raw.as_encoded_bytes()),
                Err(_) => {
                    return Err(FsError::NotUtf8 {
                        path: abs_path,
                        what: "symlink target",
                    })
                }
            }
        }
        let (devmajor, devminor) = if ft.is_block_device() || ft.is_char_device() {
            dev_major_minor(md.rdev())
        } else {
            (0, 0)
        };
        let xattrs = match &mut self.xattrs {
            Some(reader) => reader.read(&abs_path),
            None => Vec::new(),
        };
        // fsutil clears the socket bit: the daemon gets an empty regular file.
        let socket = ft.is_socket();
        let mode = go_file_mode(md) & !MODE_SOCKET;
        Ok(Some(Entry {
            rel_path,
            abs_path,
            mode,
            size: if ft.is_dir() { 0 } else { md.size() as i64 },
            mtime_ns: unix_nanos(md.mtime(), md.mtime_nsec()),
            linkname,
            devmajor,
            devminor,
            xattrs,
            parent_only: false,
            socket,
            dev: md.dev(),
            ino: md.ino(),
            ctime_ns: unix_nanos(md.ctime(), md.ctime_nsec()),
        }))
    }

    /// Number of listed children currently held in memory (for the laziness test).
    #[cfg(test)]
    fn held_items(&self) -> usize {
        self.stack.iter().map(|f| f.items.len()).sum::<usize>() + self.out.len()
    }
}

impl Iterator for Walker {
    type Item = Result<Entry, FsError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.out.pop_front() {
                return Some(Ok(entry));
            }
            if let Some(err) = self.pending_err.take() {
                // An error ends the walk.
                self.stack.clear();
                return Some(Err(err));
            }
            let frame = self.stack.last_mut()?;
            let Some(item) = frame.items.pop() else {
                self.stack.pop();
                continue;
            };
            if let Err(e) = self.visit(item) {
                // Entries queued before the error (e.g. the directory that could not be
                // listed) go out first, as with fsutil.
                self.pending_err = Some(e);
            }
        }
    }
}

impl Item {
    /// The name's bytes on disk (the sort key: fsutil orders by raw name bytes).
    fn disk_name(&self) -> &[u8] {
        match &self.raw {
            Some(raw) => raw.as_encoded_bytes(),
            None => self.name.as_bytes(),
        }
    }
}

/// A name that is not UTF-8 as a Go string sees it when matched: every byte that is not part
/// of a valid UTF-8 sequence decodes to its own U+FFFD (Go's `utf8.DecodeRune` width 1).
fn go_lossy(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        s.push_str(chunk.valid());
        for _ in chunk.invalid() {
            s.push(char::REPLACEMENT_CHARACTER);
        }
    }
    s
}

/// The entry disappeared (or its parent stopped being a directory) while we walked.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::stat::{MODE_DIR, MODE_SETUID, MODE_STICKY, MODE_SYMLINK};
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Creates files (`name`) and directories (`name/`) under `root`.
    fn make_tree(root: &Path, paths: &[&str]) {
        for p in paths {
            let full = root.join(p.trim_end_matches('/'));
            if p.ends_with('/') {
                std::fs::create_dir_all(&full).unwrap();
            } else {
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, p.as_bytes()).unwrap();
            }
        }
    }

    fn walk(root: &Path, opts: &WalkOptions) -> Vec<String> {
        Walker::new(root, opts)
            .unwrap()
            .map(|e| e.unwrap().rel_path)
            .collect()
    }

    fn excludes(p: &[&str]) -> WalkOptions {
        WalkOptions {
            exclude_patterns: s(p),
            ..Default::default()
        }
    }

    fn includes(p: &[&str]) -> WalkOptions {
        WalkOptions {
            include_patterns: s(p),
            ..Default::default()
        }
    }

    #[test]
    fn order_is_per_directory_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        make_tree(
            dir.path(),
            &["a/x", "a-b", "a.txt", "B", "a/y/z", "a/y.txt", "é", "_"],
        );
        assert_eq!(
            walk(dir.path(), &WalkOptions::default()),
            s(&["B", "_", "a", "a/x", "a/y", "a/y/z", "a/y.txt", "a-b", "a.txt", "é"])
        );
    }

    #[test]
    fn entries_carry_lstat_data() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["d/", "f", "big"]);
        std::fs::set_permissions(r.join("d"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(r.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(r.join("big"), vec![7u8; 100_000]).unwrap();
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        std::fs::File::options()
            .write(true)
            .open(r.join("f"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        symlink("d", r.join("l")).unwrap();
        let got: Vec<Entry> = Walker::new(r, &WalkOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let by = |p: &str| got.iter().find(|e| e.rel_path == p).unwrap().clone();
        let d = by("d");
        assert_eq!(d.mode, 0x8000_01ED);
        assert_eq!(d.size, 0);
        let f = by("f");
        assert_eq!(f.mode, 0x1A4);
        assert_eq!(f.size, 1);
        assert_eq!(f.mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(
            unix_nanos(32_503_680_000, 5),
            32_503_680_000i64.wrapping_mul(1_000_000_000) + 5
        );
        assert_eq!(f.abs_path, std::fs::canonicalize(r).unwrap().join("f"));
        assert_eq!(by("big").size, 100_000);
        let l = by("l");
        assert_eq!(l.mode, 0x0800_01FF);
        assert_eq!(l.linkname, "d");
        assert_eq!(l.size, 1, "a symlink's size is its target's length");
        let md = std::fs::symlink_metadata(r.join("f")).unwrap();
        assert_eq!((f.dev, f.ino), (md.dev(), md.ino()));
    }

    #[test]
    fn special_mode_bits() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["suid", "tmp/", "exec"]);
        std::fs::set_permissions(r.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::set_permissions(r.join("exec"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let got: Vec<Entry> = Walker::new(r, &WalkOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mode = |p: &str| got.iter().find(|e| e.rel_path == p).unwrap().mode;
        assert_eq!(mode("suid"), MODE_SETUID | 0o755);
        assert_eq!(mode("tmp"), MODE_DIR | MODE_STICKY | 0o777);
        assert_eq!(mode("exec"), 0o700);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["real/inner.txt"]);
        symlink("real", r.join("link")).unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        symlink("missing", r.join("dangling")).unwrap();
        let got: Vec<Entry> = Walker::new(r, &WalkOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let paths: Vec<&str> = got.iter().map(|e| e.rel_path.as_str()).collect();
        assert_eq!(paths, ["abs", "dangling", "link", "real", "real/inner.txt"]);
        for e in &got[..3] {
            assert_eq!(e.mode & MODE_SYMLINK, MODE_SYMLINK, "{}", e.rel_path);
        }
        assert_eq!(got[0].linkname, "/etc");
    }

    #[test]
    fn excluded_dir_with_reincluded_file_emits_parents_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(
            r,
            &[
                "dir/sub/keep.txt",
                "dir/sub/other.txt",
                "dir/top.txt",
                "dir/z/",
                "x",
            ],
        );
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 42);
        std::fs::File::open(r.join("dir/sub"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let got: Vec<Entry> = Walker::new(r, &excludes(&["dir", "!dir/sub/keep.txt"]))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let paths: Vec<&str> = got.iter().map(|e| e.rel_path.as_str()).collect();
        assert_eq!(paths, ["dir", "dir/sub", "dir/sub/keep.txt", "x"]);
        // The lazily emitted parent carries its real lstat, not a made-up directory.
        assert_eq!(got[1].mode & MODE_DIR, MODE_DIR);
        assert_eq!(got[1].mtime_ns, 1_600_000_000_000_000_042);
    }

    #[test]
    fn excluded_dirs_without_possible_exceptions_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(
            r,
            &[
                "node_modules/a/b/c.js",
                "keep/node_modules/x",
                "dir/sub/deep/f",
                "dir/keep.txt",
                "dir/drop.txt",
                "src/m.rs",
                "top.txt",
            ],
        );
        let mut w = Walker::new(
            r,
            &excludes(&["node_modules", "dir", "!dir/keep.txt", "top.txt"]),
        )
        .unwrap();
        let paths: Vec<String> = w.by_ref().map(|e| e.unwrap().rel_path).collect();
        assert_eq!(
            paths,
            s(&[
                "dir",
                "dir/keep.txt",
                "keep",
                "keep/node_modules",
                "keep/node_modules/x",
                "src",
                "src/m.rs"
            ])
        );
        // `dir` must be listed (an exception lives there) but `dir/sub` cannot hold one.
        assert_eq!(
            w.listed_dirs,
            s(&["", "dir", "keep", "keep/node_modules", "src"])
        );

        // A glob exception forces listing excluded directories where it could match, only.
        let mut w = Walker::new(r, &excludes(&["*", "!src/*.rs"])).unwrap();
        let paths: Vec<String> = w.by_ref().map(|e| e.unwrap().rel_path).collect();
        assert_eq!(paths, s(&["src", "src/m.rs"]));
        assert_eq!(w.listed_dirs, s(&["", "src"]));
    }

    #[test]
    fn walker_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Walker>();
        assert_send::<PatternMatcher>();
    }

    #[test]
    fn include_patterns_with_lazy_parents() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(
            r,
            &[
                "src/lib/a.rs",
                "src/lib/b/c.rs",
                "src/main.rs",
                "other/x",
                "srcx",
            ],
        );
        let mut w = Walker::new(r, &includes(&["src/lib"])).unwrap();
        let paths: Vec<String> = w.by_ref().map(|e| e.unwrap().rel_path).collect();
        assert_eq!(
            paths,
            s(&[
                "src",
                "src/lib",
                "src/lib/a.rs",
                "src/lib/b",
                "src/lib/b/c.rs"
            ])
        );
        assert!(!w.listed_dirs.contains(&"other".to_owned()));

        // Include and exclude together: excluded wins inside the included tree.
        let opts = WalkOptions {
            include_patterns: s(&["src"]),
            exclude_patterns: s(&["**/b"]),
            ..Default::default()
        };
        assert_eq!(
            walk(r, &opts),
            s(&["src", "src/lib", "src/lib/a.rs", "src/main.rs"])
        );
        // Include patterns that are all blank include nothing (as with fsutil).
        assert!(walk(r, &includes(&[" "])).is_empty());
    }

    #[test]
    fn followpaths_add_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["build/Dockerfile.real", "build/other", "src/x"]);
        symlink("build/Dockerfile.real", r.join("Dockerfile")).unwrap();
        let opts = WalkOptions {
            follow_paths: s(&["Dockerfile", "Dockerfile.dockerignore"]),
            ..Default::default()
        };
        assert_eq!(
            walk(r, &opts),
            s(&["Dockerfile", "build", "build/Dockerfile.real"])
        );
        // A followpath of the root means no filtering at all.
        let opts = WalkOptions {
            follow_paths: s(&["."]),
            ..Default::default()
        };
        assert_eq!(walk(r, &opts).len(), 6);
    }

    #[test]
    fn documented_dockerignore_examples_through_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(
            r,
            &[
                "somedir/temporary.txt",
                "somedir/temp/x",
                "somedir/subdir/temporary.txt",
                "tempa",
                "temp",
                "README.md",
                "README-secret.md",
                "CHANGELOG.md",
                "pkg/main.go",
                "pkg/doc.txt",
            ],
        );
        let list = crate::fs::parse_dockerignore(
            "# comment\n*/temp*\n*/*/temp*\ntemp?\n**/*.go\n*.md\n!README*.md\nREADME-secret.md\n",
        );
        assert_eq!(
            walk(
                r,
                &excludes(&list.iter().map(String::as_str).collect::<Vec<_>>())
            ),
            s(&[
                "README.md",
                "pkg",
                "pkg/doc.txt",
                "somedir",
                "somedir/subdir",
                "temp"
            ])
        );
    }

    #[test]
    fn unusual_names_and_empty_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(
            r,
            &[
                "with space/f",
                "ünï/f",
                "new\nline",
                "#hash",
                "empty/",
                "-dash",
                "x/.hidden",
            ],
        );
        assert_eq!(
            walk(r, &excludes(&["#hash"])),
            s(&[
                "-dash",
                "empty",
                "new\nline",
                "with space",
                "with space/f",
                "x",
                "x/.hidden",
                "ünï",
                "ünï/f"
            ])
        );
    }

    #[test]
    fn a_socket_is_an_empty_regular_file_like_fsutil_sends() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["a"]);
        let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
        std::fs::set_permissions(r.join("sock"), std::fs::Permissions::from_mode(0o751)).unwrap();
        let got: Vec<Entry> = Walker::new(r, &WalkOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 2);
        let sock = &got[1];
        assert_eq!(sock.rel_path, "sock");
        assert_eq!(sock.mode, 0o751, "no type bits: a regular file on the wire");
        assert!(crate::fs::is_regular(sock.mode));
        assert!(sock.socket);
        assert_eq!(sock.size, 0);
        assert!(!got[0].socket);
    }

    #[test]
    fn fifos_and_devices_are_sent_with_their_type() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let c = std::ffi::CString::new(r.join("fifo").into_os_string().into_encoded_bytes());
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.unwrap().as_ptr(), 0o640) }, 0);
        let got: Vec<Entry> = Walker::new(r, &WalkOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].mode, crate::fs::MODE_NAMED_PIPE | 0o640);
        // Device nodes need CAP_MKNOD; check what can be checked.
        let null = std::ffi::CString::new(r.join("null").into_os_string().into_encoded_bytes());
        // SAFETY: a NUL-terminated path.
        let made = unsafe {
            libc::mknod(
                null.unwrap().as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3),
            )
        } == 0;
        if made {
            let got: Vec<Entry> = Walker::new(r, &WalkOptions::default())
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let null = got.iter().find(|e| e.rel_path == "null").unwrap();
            assert_eq!(
                null.mode & !0o777,
                crate::fs::MODE_DEVICE | crate::fs::MODE_CHAR_DEVICE
            );
            assert_eq!((null.devmajor, null.devminor), (1, 3));
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_an_error_naming_it_when_it_would_be_sent() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["a", "z/"]);
        let bad = r.join(std::ffi::OsStr::from_bytes(b"z/bad\xfe"));
        std::fs::write(&bad, "x").unwrap();
        let got: Vec<Result<Entry, FsError>> =
            Walker::new(r, &WalkOptions::default()).unwrap().collect();
        // What comes before it is sent; then the error, naming the path, ends the walk.
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[1].as_ref().unwrap().rel_path, "z");
        let err = got[2].as_ref().unwrap_err();
        assert!(
            matches!(err, FsError::NotUtf8 { path, .. } if *path == std::fs::canonicalize(r).unwrap().join("z").join(std::ffi::OsStr::from_bytes(b"bad\xfe"))),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(r"z/bad\xFE"), "{text}");
        assert!(text.contains("not valid UTF-8"), "{text}");

        // Excluded, it is no error (Go matches the name with U+FFFD for the bad byte).
        for pattern in ["z/bad*", "z/bad?", "**/bad\u{fffd}"] {
            assert_eq!(walk(r, &excludes(&[pattern])), s(&["a", "z"]), "{pattern}");
        }
        assert_eq!(walk(r, &excludes(&["z"])), s(&["a"]));
        // Not included, neither.
        assert_eq!(walk(r, &includes(&["a"])), s(&["a"]));
    }

    #[test]
    fn a_directory_that_is_not_utf8_is_entered_for_exceptions_and_named_if_one_matches() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["a"]);
        let bad = r.join(std::ffi::OsStr::from_bytes(b"d\xff"));
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("keep.go"), "x").unwrap();
        std::fs::write(bad.join("other.txt"), "x").unwrap();
        // Excluded with nothing re-included inside: fine.
        assert_eq!(walk(r, &excludes(&["d*", "!**/*.rs"])), s(&["a"]));
        // An exception matches inside: the directory would have to be sent.
        let err = Walker::new(r, &excludes(&["d*", "!**/*.go"]))
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        assert!(
            matches!(&err, FsError::NotUtf8 { path, .. } if path.ends_with(std::ffi::OsStr::from_bytes(b"d\xff"))),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_target_that_is_not_utf8_is_an_error() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        symlink(std::ffi::OsStr::from_bytes(b"t\xff"), r.join("l")).unwrap();
        let err = Walker::new(r, &WalkOptions::default())
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        assert!(err.to_string().contains("symlink target"), "{err}");
        assert_eq!(walk(r, &excludes(&["l"])), Vec::<String>::new());
    }

    #[test]
    fn go_sees_each_invalid_byte_as_one_replacement_character() {
        assert_eq!(go_lossy(b"ok"), "ok");
        assert_eq!(go_lossy(b"a\xffb"), "a\u{fffd}b");
        // A truncated 3-byte sequence is two invalid bytes to Go, not one.
        assert_eq!(go_lossy(b"\xe2\x82x"), "\u{fffd}\u{fffd}x");
        assert_eq!(go_lossy("é\u{fffd}".as_bytes()), "é\u{fffd}");
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = Walker::new(&missing, &WalkOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let err = Walker::new(&dir.path().join("file"), &WalkOptions::default())
            .err()
            .unwrap();
        assert!(matches!(err, FsError::NotADirectory { .. }), "{err}");
        let err = Walker::new(dir.path(), &excludes(&["a", "["]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("\"[\""), "{err}");
    }

    #[test]
    fn unreadable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        make_tree(r, &["locked/f", "skipme/f"]);
        std::fs::set_permissions(r.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(r.join("skipme"), std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root can read anything: nothing to test there.
        if std::fs::read_dir(r.join("locked")).is_ok() {
            return;
        }
        let results: Vec<_> = Walker::new(r, &excludes(&["skipme/x", "!skipme/y"]))
            .unwrap()
            .collect();
        let err = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(err.to_string().contains("locked"), "{err}");
        // The excluded-but-listed directory's permission error is ignored, like fsutil.
        let ok: Vec<_> = Walker::new(r, &excludes(&["locked", "skipme", "!skipme/f"]))
            .unwrap()
            .collect();
        assert!(ok.iter().all(Result::is_ok));
    }

    #[test]
    fn walk_is_lazy_on_large_trees() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in 0..200 {
            let sub = r.join(format!("d{d:03}"));
            std::fs::create_dir(&sub).unwrap();
            for f in 0..100 {
                std::fs::write(sub.join(format!("f{f:03}")), b"").unwrap();
            }
        }
        let mut w = Walker::new(r, &WalkOptions::default()).unwrap();
        let first = w.next().unwrap().unwrap();
        assert_eq!(first.rel_path, "d000");
        let second = w.next().unwrap().unwrap();
        assert_eq!(second.rel_path, "d000/f000");
        // Only the root listing and one subdirectory's listing are held, not 20k entries.
        assert!(w.held_items() <= 200 + 100, "held {}", w.held_items());
        assert_eq!(w.count() + 2, 200 + 200 * 100);
    }

    /// fsutil's algorithm taken literally: list every directory, match with parent results,
    /// emit pending parents before an emitted child; never skip a subtree.
    fn reference(
        root: &Path,
        include: Option<&PatternMatcher>,
        exclude: Option<&PatternMatcher>,
    ) -> Vec<String> {
        struct Ctx<'a> {
            include: Option<&'a PatternMatcher>,
            exclude: Option<&'a PatternMatcher>,
            out: Vec<String>,
            pending: Vec<(String, bool)>,
        }
        fn rec(
            c: &mut Ctx,
            root: &Path,
            rel: &str,
            depth: usize,
            pi: Option<Vec<bool>>,
            pe: Option<Vec<bool>>,
        ) {
            let abs = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(rel)
            };
            let mut names: Vec<(String, bool)> = std::fs::read_dir(abs)
                .unwrap()
                .map(|d| {
                    let d = d.unwrap();
                    (
                        d.file_name().into_string().unwrap(),
                        d.file_type().unwrap().is_dir(),
                    )
                })
                .collect();
            names.sort();
            for (name, is_dir) in names {
                let path = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let mut skip = false;
                let (mut ri, mut re) = (Vec::new(), Vec::new());
                if let Some(m) = c.include {
                    if !m.eval(&path, depth, pi.as_deref(), Some(&mut ri)) {
                        skip = true;
                    }
                }
                if let Some(m) = c.exclude {
                    if m.eval(&path, depth, pe.as_deref(), Some(&mut re)) {
                        skip = true;
                    }
                }
                if !skip {
                    for (p, emitted) in c.pending.iter_mut() {
                        if !*emitted {
                            c.out.push(p.clone());
                            *emitted = true;
                        }
                    }
                    c.out.push(path.clone());
                }
                if is_dir {
                    c.pending.push((path.clone(), !skip));
                    rec(c, root, &path, depth + 1, Some(ri), Some(re));
                    c.pending.pop();
                }
            }
        }
        let mut c = Ctx {
            include,
            exclude,
            out: Vec::new(),
            pending: Vec::new(),
        };
        rec(&mut c, root, "", 0, None, None);
        c.out
    }

    #[test]
    fn subtree_skipping_never_changes_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let names = ["a", "b", "ab", "keep", "x.go", "y.md", "n_m"];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        // A random tree, up to 4 levels deep.
        for _ in 0..120 {
            let depth = 1 + next(4);
            let parts: Vec<&str> = (0..depth).map(|_| names[next(names.len())]).collect();
            let p = r.join(parts.join("/"));
            if std::fs::create_dir_all(p.parent().unwrap()).is_ok() && !p.is_dir() {
                let _ = std::fs::write(&p, "x");
            }
        }
        let pool = [
            "a",
            "!a/keep",
            "**/keep",
            "!**/keep",
            "*.go",
            "!*/*.go",
            "b/**",
            "!b/ab",
            "ab*",
            "!ab/*/x.go",
            "**/*.md",
            "!**/y.md",
            "n_m",
            "*/a",
            "!*/a/b",
            "a/b",
            "?b",
            "!a/b/**",
            "**/a/**",
            "[ab]",
            "![ab]/keep",
            "a**b",
            "!a/[k]eep",
        ];
        for round in 0..300 {
            let pick = |n: usize, next: &mut dyn FnMut(usize) -> usize| -> Vec<String> {
                (0..n).map(|_| pool[next(pool.len())].to_owned()).collect()
            };
            let excl = pick(1 + next(5), &mut next);
            let incl = if round % 3 == 0 {
                pick(1 + next(3), &mut next)
            } else {
                Vec::new()
            };
            let opts = WalkOptions {
                include_patterns: incl.clone(),
                exclude_patterns: excl.clone(),
                ..Default::default()
            };
            let got = walk(r, &opts);
            let im = (!incl.is_empty()).then(|| PatternMatcher::new(&incl).unwrap());
            let em = PatternMatcher::new(&excl).unwrap();
            let want = reference(r, im.as_ref(), Some(&em));
            assert_eq!(got, want, "include {incl:?} exclude {excl:?}");
        }
    }
}
