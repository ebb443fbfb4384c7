//! The daemon's copies of our directories, and when one cannot be trusted.
//!
//! BuildKit keeps what it synced of a directory, per shared key, and syncs the next request
//! into that copy: it asks only for files whose size or mtime (newer fsutil: also mode, owner,
//! link target) differ from the copy's, and a directory's changed mode is not applied there
//! (observed with Docker 28's BuildKit). An edit that keeps size and mtime — `cp -p`, `tar x`,
//! `touch -r`, a write in the same timestamp tick — is invisible to it: the daemon builds
//! from its old bytes while we, having hashed the new ones, would record the result as theirs.
//! A key can have several copies (one in use is not reused; BuildKit makes another,
//! `source/local/source.go`), so any file state ever sent under a key may still be in one.
//!
//! This module owns, per session key (named after a build's context directory) and machine,
//! the list of every state sent under the key's current *generation*, a number that is part
//! of the key. BuildKit keys the copy of every directory a session syncs (the Dockerfile's
//! directory and named contexts too) with the session's key, so one record holds them all,
//! by absolute path. A state is a pair: what the daemon compares (size and mtime, or "a
//! directory") and a *witness* that changes whenever the content may have changed while that
//! stays equal (the ctime, which no write leaves alone, with the inode, device and mode).
//! Before a build, each recorded path is lstat'ed; when a file shows a compared part that was
//! sent with another witness, or one recorded as untrusted, the key gets a new generation, so
//! the daemon syncs into new, empty copies: a full transfer, only then. A key without a record
//! (a new machine, a lost state directory, a record that cannot be read) also starts a new
//! generation, and one whose sends may not all have been recorded (a run killed during a
//! sync) too.
//!
//! A witness tells later changes only once the file's ctime is older than its racy window
//! ([`crate::fs::stat::racy_window`]): a write in the same timestamp tick leaves it as it was.
//! So a sync reads a file for the daemon only after that moment (waiting, at most one window:
//! a build started right after an edit), and when it ends, checks each path it sent within
//! such a window again, once the window has passed: the same state, symlink target and xattrs
//! make the state trusted; anything else, or a ctime in the future, records it as untrusted.
//!
//! Records live in `$XDG_STATE_HOME/bk-build/copies/` (else `~/.local/state/...`), beside the
//! node ID, since the copies belong to this machine's paths, not to a project. Without a
//! writable state directory every build gets a one-off generation: always a full transfer,
//! never a stale one.
//!
//! Memory stays flat however large the directory: a sync writes what it sends to an unlinked
//! temporary file, and records are kept in walk order, so checking one reads it once and
//! adding a build's sends to it is a merge of sorted streams.
//!
//! What it must not know: what is built, fingerprints, or which daemon a build runs on (the
//! record is the union of what every daemon was sent, which can only make it more careful).

use std::cmp::Ordering;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fs::stat::{
    ctime_ns, go_file_mode, mtime_ns, racy_window, MODE_DIR, MODE_SOCKET, MODE_SYMLINK,
};
use crate::fs::Entry;

const MAGIC: &[u8; 4] = b"BKCP";
const VERSION: u32 = 2;
/// The witness of a state sent while its file may still have been changing: it matches
/// nothing, so the next build starts a new generation if the file still shows that state.
const RACY: u64 = u64::MAX;
/// A record keeps every state ever sent; past this many per recorded path (plus a margin),
/// a new generation starts over rather than let the record and its checks grow.
const MAX_STATES_PER_PATH: usize = 2;
const STATES_MARGIN: usize = 1024;
/// Records of directories not built from for this long are deleted.
const PRUNE_AFTER: Duration = Duration::from_secs(30 * 86_400);

/// One state of one path as it was sent: (compared part, witness).
type State = (u64, u64);

/// The moment (Unix ns) from which an entry's state tells every later change: any change to a
/// file sets its ctime to the current time, so a change after this gets another ctime. (The
/// mtime can be set to anything, a future time included, so only the ctime counts here.)
fn trusted_from(e: &Entry) -> i64 {
    e.ctime_ns
        .saturating_add(racy_window(e.mtime_ns, e.ctime_ns).as_nanos() as i64)
}

/// The state a sync whose walk began at `started_ns` (Unix ns) records for an entry when it
/// does not get to check it again ([`settle`]): one changed within the racy window before
/// gets the [`RACY`] witness. Tests send with it.
#[cfg(test)]
fn sent_state(e: &Entry, started_ns: i64) -> State {
    let (compared, witness) = entry_state(e);
    if e.mode & MODE_DIR == 0 && trusted_from(e) > started_ns {
        return (compared, RACY);
    }
    (compared, witness)
}

fn entry_state(e: &Entry) -> State {
    state(e.mode, e.size, e.mtime_ns, e.ctime_ns, e.ino, e.dev)
}

/// What a sent header carries that can change without the witness changing when the change
/// comes in the same timestamp tick: a symlink's target and the xattrs.
fn meta_digest(link: &[u8], xattrs: &[(String, Vec<u8>)]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&(link.len() as u64).to_le_bytes());
    h.update(link);
    for (k, v) in xattrs {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or_default())
}

/// The state of a path now, from its lstat, computed as [`entry_state`] computes it from a walk.
fn current_state(md: &std::fs::Metadata) -> State {
    use std::os::unix::fs::MetadataExt;
    let mode = go_file_mode(md) & !MODE_SOCKET;
    let size = if md.is_dir() { 0 } else { md.size() as i64 };
    state(mode, size, mtime_ns(md), ctime_ns(md), md.ino(), md.dev())
}

/// (compared, witness). A directory's compared part is only "a directory" and its witness
/// its mode: its ctime moves with every file added or removed, which the daemon does see.
fn state(mode: u32, size: i64, mtime_ns: i64, ctime_ns: i64, ino: u64, dev: u64) -> State {
    if mode & MODE_DIR != 0 {
        (mix(&[1]), mix(&[u64::from(mode)]))
    } else {
        (
            mix(&[0, size as u64, mtime_ns as u64]),
            mix(&[u64::from(mode), ctime_ns as u64, ino, dev]),
        )
    }
}

/// Multiply-rotate over words, then MurmurHash3's fmix64. Stable across versions: persisted.
fn mix(words: &[u64]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for w in words {
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    // RACY is reserved.
    if h == RACY {
        h - 1
    } else {
        h
    }
}

/// What the syncs of one build sent from one directory, collected by [`SentLog::start`]: one
/// run of entries in walk order per sync, each in an unlinked temporary file.
#[derive(Default, Debug)]
pub struct SentLog {
    inner: Mutex<LogInner>,
    /// The record the runs go to; `None` in tests of the log alone.
    target: Option<Target>,
}

/// A session key's record under one generation (named after the key's first directory).
#[derive(Debug, Clone)]
struct Target {
    root: PathBuf,
    stem: String,
    dir: PathBuf,
    generation: u64,
}

impl Target {
    /// Adds `runs` to the record, under its lock; nothing when the record has another
    /// generation by now (a run that left this one behind: no one's concern).
    fn add(&self, runs: Vec<File>) -> io::Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let _lock = lock(&self.root.join(format!("{}.lock", self.stem)), true)?;
        let path = self.root.join(format!("{}.rec", self.stem));
        let Some(mut rec) = RecordReader::open(&path)? else {
            return Ok(());
        };
        if rec.generation != self.generation || rec.dir != self.dir {
            return Ok(());
        }
        merge(&mut rec, runs, &path)
    }
}

#[derive(Default, Debug)]
struct LogInner {
    runs: Vec<File>,
    /// Syncs started and not yet added: when the build ends with any, some sends may be
    /// missing, and the next build under the key starts a new generation.
    unfinished: u32,
    /// A run could not be written down: the same.
    lost: bool,
}

impl SentLog {
    /// Starts one sync's log of `root`, the directory synced (entries are recorded by
    /// absolute path); what it collects joins this log when it is dropped, however the sync
    /// ends (an aborted one included), unless [`Sending::record_now`] recorded it first.
    pub fn start(self: &Arc<Self>, root: &Path) -> Sending {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        // A root that is no UTF-8 cannot be written down: such syncs are never trusted.
        let prefix = root.to_str().map(|r| r.trim_end_matches('/').to_string());
        let out = tempfile::tempfile().map(BufWriter::new);
        let mut inner = self.lock();
        inner.unfinished += 1;
        inner.lost |= out.is_err() || prefix.is_none();
        drop(inner);
        Sending {
            log: self.clone(),
            out: out.ok().filter(|_| prefix.is_some()),
            pending: None,
            prefix: prefix.unwrap_or_default(),
            started_ns: now_ns(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One sync in progress; see [`SentLog::start`].
pub struct Sending {
    log: Arc<SentLog>,
    /// `None` once writing failed (the log is then marked lost).
    out: Option<BufWriter<File>>,
    /// Entries sent within the racy window of their last change, in walk order, each with
    /// what [`settle`] needs to check it again; created at the first such entry.
    pending: Option<BufWriter<File>>,
    /// The synced directory's absolute path, which entries are recorded under.
    prefix: String,
    started_ns: i64,
}

/// The longest a sync waits for a racy state to become one it can trust: a file's own racy
/// window. A ctime further ahead lies in the future (the clock was stepped back); such a state
/// is recorded [`RACY`].
fn wait_for(trusted_from_ns: i64, window: Duration) -> Option<Duration> {
    let left = trusted_from_ns.saturating_sub(now_ns());
    if left <= 0 {
        Some(Duration::ZERO)
    } else if left as u128 <= window.as_nanos() {
        Some(Duration::from_nanos(left as u64))
    } else {
        None
    }
}

/// Before a file's content is read for the daemon, waits until its stat tells every later
/// change (see [`trusted_from`]), so that the bytes sent are the file's for as long as its
/// stat stays what the record says. `md` is the open file's. False when that could not be
/// waited for (a ctime in the future): the sync's racy states must then not be trusted.
pub fn wait_until_trusted(md: &std::fs::Metadata) -> bool {
    let (mtime, ctime) = (mtime_ns(md), ctime_ns(md));
    let window = racy_window(mtime, ctime);
    match wait_for(ctime.saturating_add(window.as_nanos() as i64), window) {
        Some(d) => {
            if !d.is_zero() {
                std::thread::sleep(d);
            }
            true
        }
        None => false,
    }
}

impl Sending {
    /// Adds this sync's entries to the directory's record now (blocking file I/O; may wait up
    /// to a racy window, see [`settle`]). Called before the sync's end is
    /// acknowledged: the daemon finishes a sync only after that, so it cannot hand its copy
    /// to another build (of another process, say) before the record shows what the copy
    /// holds. `reads_waited`: every file read for the daemon was read only once its stat
    /// could be trusted ([`wait_until_trusted`]).
    pub fn record_now(&mut self, reads_waited: bool) {
        let Some(target) = self.log.target.clone() else {
            return;
        };
        let Some(w) = self.out.take() else {
            return;
        };
        let pending = self.pending.take();
        let added = w.into_inner().map_err(|e| e.into_error()).and_then(|main| {
            let mut runs = vec![main];
            if let Some(p) = pending {
                runs.push(settle(p, reads_waited)?);
            }
            target.add(runs)
        });
        if added.is_err() {
            self.log.lock().lost = true;
        }
    }

    /// Notes an entry about to be sent.
    pub fn push(&mut self, e: &Entry) {
        let st = entry_state(e);
        let from = trusted_from(e);
        if e.mode & MODE_DIR != 0 || from <= self.started_ns {
            self.push_state(&e.rel_path, st);
            return;
        }
        let link: &[u8] = if e.mode & MODE_SYMLINK != 0 {
            e.linkname.as_bytes()
        } else {
            b""
        };
        let meta = meta_digest(link, &e.xattrs);
        if self.pending.is_none() && self.out.is_some() {
            match tempfile::tempfile() {
                Ok(f) => self.pending = Some(BufWriter::new(f)),
                Err(_) => self.lose(),
            }
        }
        if let Some(p) = self.pending.as_mut() {
            let path = format!("{}/{}", self.prefix, e.rel_path);
            let window = racy_window(e.mtime_ns, e.ctime_ns).as_nanos() as u64;
            let written = write_entry(p, &path, st)
                .and_then(|()| p.write_all(&from.to_le_bytes()))
                .and_then(|()| p.write_all(&window.to_le_bytes()))
                .and_then(|()| p.write_all(&meta.to_le_bytes()));
            if written.is_err() {
                self.lose();
            }
        }
    }

    /// `rel`: relative to the synced directory.
    fn push_state(&mut self, rel: &str, st: State) {
        if let Some(out) = self.out.as_mut() {
            if write_entry(out, &format!("{}/{rel}", self.prefix), st).is_err() {
                self.lose();
            }
        }
    }

    fn lose(&mut self) {
        self.out = None;
        self.pending = None;
        self.log.lock().lost = true;
    }
}

/// Turns the pending entries of a sync (see [`Sending::push`]) into a run: each state whose
/// path, once the state can be trusted, still shows it with the same link target and xattrs,
/// is recorded with its witness; any other with [`RACY`]. Only when `check` (the sync ended
/// and its reads waited, see [`wait_until_trusted`]); otherwise all are [`RACY`]. Waits at
/// most one racy window in all, entries coming in walk order and their times close together.
fn settle(pending: BufWriter<File>, check: bool) -> io::Result<File> {
    let mut f = pending.into_inner().map_err(|e| e.into_error())?;
    f.rewind()?;
    let mut r = BufReader::with_capacity(64 * 1024, f);
    let mut out = BufWriter::new(tempfile::tempfile()?);
    let mut xattrs = crate::fs::stat::XattrReader::default();
    while let Some((path, (c, w))) = read_entry(&mut r)? {
        let mut tail = [0u8; 24];
        r.read_exact(&mut tail)?;
        let word = |i: usize| -> io::Result<[u8; 8]> {
            tail[i * 8..i * 8 + 8].try_into().map_err(|_| bad())
        };
        let from = i64::from_le_bytes(word(0)?);
        let window = Duration::from_nanos(u64::from_le_bytes(word(1)?));
        let meta = u64::from_le_bytes(word(2)?);
        let trusted = check
            && wait_for(from, window).is_some_and(|d| {
                std::thread::sleep(d);
                still_as_sent(&path, (c, w), meta, &mut xattrs)
            });
        write_entry(&mut out, &path, (c, if trusted { w } else { RACY }))?;
    }
    out.into_inner().map_err(|e| e.into_error())
}

/// Whether `path` shows the state `st` and header `meta` now (see [`meta_digest`]).
fn still_as_sent(
    path: &str,
    st: State,
    meta: u64,
    xattrs: &mut crate::fs::stat::XattrReader,
) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(path);
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return false;
    };
    if current_state(&md) != st {
        return false;
    }
    let link = if md.file_type().is_symlink() {
        match std::fs::read_link(p) {
            Ok(t) => t.as_os_str().as_bytes().to_vec(),
            Err(_) => return false,
        }
    } else {
        Vec::new()
    };
    meta_digest(&link, &xattrs.read(p)) == meta
}

impl Drop for Sending {
    fn drop(&mut self) {
        let run = self
            .out
            .take()
            .map(|w| w.into_inner().map_err(|e| e.into_error()));
        // A sync that ended without `record_now`: its racy states are not checked again.
        let pending = self.pending.take().map(|p| settle(p, false));
        let mut log = self.log.lock();
        for r in [run, pending].into_iter().flatten() {
            match r {
                Ok(f) => log.runs.push(f),
                Err(_) => log.lost = true,
            }
        }
        log.unfinished = log.unfinished.saturating_sub(1);
    }
}

fn write_entry(w: &mut impl Write, path: &str, (c, wt): State) -> io::Result<()> {
    w.write_all(&(path.len() as u32).to_le_bytes())?;
    w.write_all(path.as_bytes())?;
    w.write_all(&c.to_le_bytes())?;
    w.write_all(&wt.to_le_bytes())
}

/// Reads the next entry of a run or record body; `Ok(None)` at its end.
fn read_entry(r: &mut impl BufRead) -> io::Result<Option<(String, State)>> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut n = [0u8; 4];
    r.read_exact(&mut n)?;
    let mut p = vec![0u8; u32::from_le_bytes(n) as usize];
    r.read_exact(&mut p)?;
    let mut st = [0u8; 16];
    r.read_exact(&mut st)?;
    let path = String::from_utf8(p).map_err(|_| bad())?;
    let c = u64::from_le_bytes(st[..8].try_into().map_err(|_| bad())?);
    let w = u64::from_le_bytes(st[8..].try_into().map_err(|_| bad())?);
    Ok(Some((path, (c, w))))
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "not a valid copy record")
}

/// The order of a walk ([`crate::fs::walk`]): by path component, each compared as bytes, a
/// directory before what is inside it (`a`, `a/x`, `a-b`).
fn walk_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

fn entry_order(a: &(String, State), b: &(String, State)) -> Ordering {
    walk_order(&a.0, &b.0).then(a.1.cmp(&b.1))
}

/// Where records are kept.
pub struct CopyRecords {
    /// `None`: no usable state directory.
    root: Option<PathBuf>,
    pruned: std::sync::Once,
    /// Why records could not be used, until told ([`CopyRecords::take_warning`]).
    unusable: Mutex<Option<String>>,
    warned: std::sync::Once,
}

/// The generation one build uses for one directory, and what it sends from it. Dropping it
/// adds what was sent to the directory's record.
pub struct Prepared {
    pub generation: u64,
    recorded: Option<Recorded>,
}

struct Recorded {
    log: Arc<SentLog>,
    /// Locked while this build may send; a marker whose lock is free was left by a process
    /// that died before adding its sends.
    marker: (PathBuf, File),
}

impl Prepared {
    /// The log the directory's syncs write to; `None` when nothing is recorded.
    pub fn log(&self) -> Option<Arc<SentLog>> {
        self.recorded.as_ref().map(|r| r.log.clone())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(r) = self.recorded.take() {
            r.finish();
        }
    }
}

impl Recorded {
    /// Adds what syncs left unrecorded (ended without [`Sending::record_now`]) and, when
    /// every sync was recorded, lets the marker go. Otherwise it stays, unlocked once this
    /// file closes, and the next build of the directory starts a new generation.
    fn finish(self) {
        let (runs, complete) = {
            let mut log = self.log.lock();
            (
                std::mem::take(&mut log.runs),
                log.unfinished == 0 && !log.lost,
            )
        };
        let added = match &self.log.target {
            Some(t) => t.add(runs),
            None => Ok(()),
        };
        if complete && added.is_ok() {
            let _ = std::fs::remove_file(&self.marker.0);
        }
    }
}

/// A recorded or sent entry: (relative path, state).
type Sent = (String, State);

/// One sync's entries, read back in the order written, which must be walk order.
struct Run {
    r: BufReader<File>,
    last: Option<Sent>,
}

impl Run {
    fn next(&mut self) -> io::Result<Option<Sent>> {
        let e = read_entry(&mut self.r)?;
        if let (Some(l), Some(e)) = (&self.last, &e) {
            if entry_order(l, e) == Ordering::Greater {
                return Err(io::Error::other("a sync's entries were not in walk order"));
            }
        }
        self.last.clone_from(&e);
        Ok(e)
    }
}

/// Writes the union of `rec` and `runs` (each in walk order) to `path`, in walk order and
/// without repeats, unless it would be the same as `rec`. A run out of order is an error.
fn merge(rec: &mut RecordReader, runs: Vec<File>, path: &Path) -> io::Result<()> {
    let mut sources: Vec<Run> = Vec::new();
    let mut heads: Vec<Option<Sent>> = Vec::new();
    for mut f in runs {
        f.rewind()?;
        let mut run = Run {
            r: BufReader::with_capacity(64 * 1024, f),
            last: None,
        };
        heads.push(run.next()?);
        sources.push(run);
    }
    let mut w = RecordWriter::create(path, rec.generation, &rec.dir)?;
    let mut kept = rec.next()?;
    let mut last: Option<(String, State)> = None;
    let mut new_states = false;
    loop {
        // The smallest head among the runs.
        let mut min: Option<usize> = None;
        for (i, h) in heads.iter().enumerate() {
            if let Some(h) = h {
                if min.is_none_or(|m| heads[m].as_ref().is_some_and(|x| entry_order(h, x).is_lt()))
                {
                    min = Some(i);
                }
            }
        }
        let take_kept = match (&kept, min) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(k), Some(m)) => heads[m]
                .as_ref()
                .is_some_and(|h| entry_order(k, h) != Ordering::Greater),
        };
        let e = if take_kept {
            let e = kept.take();
            kept = rec.next()?;
            e
        } else {
            let m = min.ok_or_else(bad)?;
            let e = heads[m].take();
            heads[m] = sources[m].next()?;
            e
        };
        let Some(e) = e else { break };
        if last.as_ref() == Some(&e) {
            continue;
        }
        if !take_kept {
            new_states = true;
        }
        w.push(&e)?;
        last = Some(e);
    }
    rec.verify()?;
    // An unchanged tree sends only states the record has: nothing to write.
    if new_states {
        w.finish(path)?;
    }
    Ok(())
}

impl CopyRecords {
    /// The records of this machine's user (see the module documentation), shared by the
    /// whole process.
    pub fn global() -> &'static CopyRecords {
        static GLOBAL: OnceLock<CopyRecords> = OnceLock::new();
        GLOBAL.get_or_init(|| CopyRecords::at(super::state_home().map(|d| d.join("copies"))))
    }

    /// Records kept in `root` (`None`: none are kept).
    pub fn at(root: Option<PathBuf>) -> CopyRecords {
        CopyRecords {
            root,
            pruned: std::sync::Once::new(),
            unusable: Mutex::new(None),
            warned: std::sync::Once::new(),
        }
    }

    /// Once per process: why records could not be used (every build then transfers its
    /// directories whole), if they could not.
    pub fn take_warning(&self) -> Option<String> {
        let mut out = None;
        let mut u = self.unusable.lock().unwrap_or_else(|e| e.into_inner());
        if u.is_some() {
            self.warned.call_once(|| out = u.take());
        }
        out
    }

    /// Whether records can be kept; without them every build transfers everything.
    pub fn keeps_records(&self) -> bool {
        self.root.is_some()
    }

    /// The generation for a build that syncs `dir`: the directory's current one, or a new one
    /// when its record says a copy of it may be stale (see the module documentation). Never
    /// fails: when the record cannot be used, the build gets a generation of its own.
    pub fn prepare(&self, dir: &Path) -> Prepared {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !dir.is_dir() {
            // Nothing is synced from it (the build fails before); keep the key stable.
            return Prepared {
                generation: 0,
                recorded: None,
            };
        }
        let Some(root) = &self.root else {
            return one_off();
        };
        match self.try_prepare(root, &dir) {
            Ok(p) => p,
            Err(e) => {
                let mut u = self.unusable.lock().unwrap_or_else(|e| e.into_inner());
                u.get_or_insert_with(|| {
                    format!(
                        "cannot keep a record of what is sent to the daemon in {}: {e}; local directories are sent whole on every build until it is writable",
                        root.display()
                    )
                });
                one_off()
            }
        }
    }

    fn try_prepare(&self, root: &Path, dir: &Path) -> io::Result<Prepared> {
        std::fs::create_dir_all(root)?;
        self.pruned.call_once(|| prune(root));
        let stem = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex()[..16].to_string();
        let _lock = lock(&root.join(format!("{stem}.lock")), true)?;
        let path = root.join(format!("{stem}.rec"));
        let abandoned = take_abandoned_markers(root, &stem)?;
        let record = match RecordReader::open(&path) {
            Ok(Some(r)) if r.dir == dir && !abandoned => Some(r),
            _ => None,
        };
        // Checked for every build, not once per run: a target's own output written into a
        // directory another target then reads (same size and mtime, as an exporter keeps
        // them) must count too. The check costs one lstat per recorded path, as the sync's
        // own walk does.
        let kept = record.and_then(|mut r| r.still_valid().then_some(r.generation));
        let generation = match kept {
            Some(g) => g,
            None => {
                let generation = rand::random::<u64>();
                RecordWriter::create(&path, generation, dir)?.finish(&path)?;
                generation
            }
        };
        let marker_path = root.join(format!("{stem}.{:016x}.pending", rand::random::<u64>()));
        let marker = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker_path)?;
        flock(&marker, false)?;
        Ok(Prepared {
            generation,
            recorded: Some(Recorded {
                log: Arc::new(SentLog {
                    inner: Mutex::default(),
                    target: Some(Target {
                        root: root.to_path_buf(),
                        stem,
                        dir: dir.to_path_buf(),
                        generation,
                    }),
                }),
                marker: (marker_path, marker),
            }),
        })
    }
}

/// The session key of one build and the record behind it. Dropping it adds what the build
/// sent to that record.
///
/// BuildKit keys its copy of every directory a session syncs with the session's key (plus
/// the local name): one record per session key, named after its first directory (the
/// context), holds what was sent from all of them, by absolute path. A named context's
/// `sharedkey:localdir:` hint is not applied by every BuildKit (Docker 28's copy of a named
/// context kept its key when only the hint changed), so the generation goes into the
/// session key, which every copy's key contains.
pub struct BuildKeys<'a> {
    records: &'a CopyRecords,
    node_id: String,
    prepared: Option<Prepared>,
}

impl<'a> BuildKeys<'a> {
    pub fn new(records: &'a CopyRecords, node_id: String) -> BuildKeys<'a> {
        BuildKeys {
            records,
            node_id,
            prepared: None,
        }
    }

    /// The session key for syncing `dirs`: [`super::shared_key`] of the first, followed by
    /// the generation of its record. Called once per build.
    pub fn session_key(&mut self, dirs: &[&Path]) -> String {
        let Some(first) = dirs.first() else {
            return String::new();
        };
        let p = self.records.prepare(first);
        let key = format!(
            "{}:{:016x}",
            super::shared_key(first, &self.node_id),
            p.generation
        );
        self.prepared = Some(p);
        key
    }

    /// Gives each synced directory the log its sends are recorded in: the session's.
    pub fn attach(&mut self, dirs: &mut std::collections::BTreeMap<String, super::SyncDir>) {
        let log = self.prepared.as_ref().and_then(Prepared::log);
        for sd in dirs.values_mut() {
            sd.sent = log.clone();
        }
    }
}

fn one_off() -> Prepared {
    Prepared {
        generation: rand::random::<u64>(),
        recorded: None,
    }
}

/// Deletes the pending markers of `stem` that no live process holds; true if there were any
/// (their sends may be missing from the record).
fn take_abandoned_markers(root: &Path, stem: &str) -> io::Result<bool> {
    let prefix = format!("{stem}.");
    let mut any = false;
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(&prefix) && name.ends_with(".pending")) {
            continue;
        }
        let Ok(f) = OpenOptions::new().write(true).open(e.path()) else {
            continue;
        };
        if flock(&f, true).is_ok() {
            any = true;
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(any)
}

/// Deletes records (and their lock files) not used for [`PRUNE_AFTER`].
fn prune(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > PRUNE_AFTER);
        let name = e.file_name();
        let name = name.to_string_lossy();
        if old && (name.ends_with(".rec") || name.ends_with(".lock")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Opens (creating) and flocks `path`; the lock goes with the returned file.
fn lock(path: &Path, wait: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    flock(&f, !wait)?;
    Ok(f)
}

fn flock(f: &File, nonblocking: bool) -> io::Result<()> {
    let op = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Reads a directory's record: a header (magic, version, generation, directory), then every
/// state sent under the generation as (path, compared, witness) entries in walk order, then
/// a blake3 of all that. Read as a stream; the checksum is verified at the end
/// ([`RecordReader::verify`]), and what was read counts only if it holds.
struct RecordReader {
    generation: u64,
    dir: PathBuf,
    r: io::Take<BufReader<File>>,
    sum: blake3::Hasher,
    trailer_at_end: bool,
    file: Option<File>,
}

impl RecordReader {
    /// `Ok(None)`: missing; `Err`: unreadable or not a record of this version (both mean
    /// "start a new generation" to the caller).
    fn open(path: &Path) -> io::Result<Option<RecordReader>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let trailer = f.try_clone()?;
        let mut r = BufReader::with_capacity(64 * 1024, f);
        let mut sum = blake3::Hasher::new();
        let mut head = [0u8; 20];
        r.read_exact(&mut head).map_err(|_| bad())?;
        if &head[..4] != MAGIC || head[4..8] != VERSION.to_le_bytes() {
            return Err(bad());
        }
        let generation = u64::from_le_bytes(head[8..16].try_into().map_err(|_| bad())?);
        let n = u32::from_le_bytes(head[16..20].try_into().map_err(|_| bad())?) as usize;
        let mut d = vec![0u8; n];
        r.read_exact(&mut d).map_err(|_| bad())?;
        sum.update(&head);
        sum.update(&d);
        let body = len.checked_sub(20 + n as u64 + 32).ok_or_else(bad)?;
        use std::os::unix::ffi::OsStrExt;
        Ok(Some(RecordReader {
            generation,
            dir: PathBuf::from(std::ffi::OsStr::from_bytes(&d)),
            r: r.take(body),
            sum,
            trailer_at_end: false,
            file: Some(trailer),
        }))
    }

    /// The next entry, `Ok(None)` after the last.
    fn next(&mut self) -> io::Result<Option<(String, State)>> {
        let e = read_entry(&mut self.r).map_err(|_| bad())?;
        if let Some((p, (c, w))) = &e {
            self.sum.update(&(p.len() as u32).to_le_bytes());
            self.sum.update(p.as_bytes());
            self.sum.update(&c.to_le_bytes());
            self.sum.update(&w.to_le_bytes());
        } else {
            self.trailer_at_end = true;
        }
        Ok(e)
    }

    /// After the last entry: whether the file ends in the checksum of what was read.
    fn verify(&mut self) -> io::Result<()> {
        if !self.trailer_at_end {
            return Err(bad());
        }
        let mut trailer = [0u8; 32];
        let mut f = self.file.take().ok_or_else(bad)?;
        f.seek(io::SeekFrom::End(-32))?;
        f.read_exact(&mut trailer)?;
        if *self.sum.finalize().as_bytes() != trailer {
            return Err(bad());
        }
        Ok(())
    }

    /// True when no copy made under this generation can hold a state of a file that differs
    /// from the file now (see the module documentation), the record is intact, and not
    /// overgrown while files changed. Reads the record to its end.
    ///
    /// A record only grows (any state ever sent may be in some copy), so past
    /// [`MAX_STATES_PER_PATH`] per path a new generation starts, but only at a build where a
    /// recorded file shows a state not sent before: that build sends those files anyway, and a
    /// build of an unchanged tree adds nothing to the record, so it never pays for it.
    fn still_valid(&mut self) -> bool {
        let (mut paths, mut states) = (0usize, 0usize);
        // (path, its state now, whether the record has that compared part for it)
        let mut group: Option<(String, Option<State>, bool)> = None;
        let mut ok = true;
        let mut changed = false;
        loop {
            let e = match self.next() {
                Ok(e) => e,
                Err(_) => return false,
            };
            let Some((p, (c, w))) = e else { break };
            states += 1;
            if group.as_ref().is_none_or(|(g, _, _)| *g != p) {
                if let Some((_, _, seen)) = &group {
                    changed |= !seen;
                }
                paths += 1;
                let now = match std::fs::symlink_metadata(&p) {
                    Ok(md) => Some(current_state(&md)),
                    // Gone (or its parent is a file now): the daemon deletes it from the
                    // copy it syncs.
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            || e.raw_os_error() == Some(libc::ENOTDIR) =>
                    {
                        None
                    }
                    // Cannot tell (permissions, say).
                    Err(_) => {
                        ok = false;
                        None
                    }
                };
                group = Some((p, now, false));
            }
            if let Some((_, Some((nc, nw)), seen)) = group.as_mut() {
                if c == *nc {
                    *seen = true;
                    if w != *nw {
                        ok = false;
                    }
                }
            }
        }
        if let Some((_, _, seen)) = &group {
            changed |= !seen;
        }
        let overgrown = states > MAX_STATES_PER_PATH * paths + STATES_MARGIN;
        ok && self.verify().is_ok() && !(overgrown && changed)
    }
}

/// Writes a record ([`RecordReader`] has the layout) to a temporary file beside its place.
struct RecordWriter {
    w: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
}

impl RecordWriter {
    fn create(path: &Path, generation: u64, dir: &Path) -> io::Result<RecordWriter> {
        let parent = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-copies-")
            .tempfile_in(parent)?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(64 * 1024, tmp),
            sum: blake3::Hasher::new(),
        };
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&generation.to_le_bytes())?;
        let d = dir.as_os_str().as_encoded_bytes();
        w.write_all(&(d.len() as u32).to_le_bytes())?;
        w.write_all(d)?;
        Ok(RecordWriter { w })
    }

    fn push(&mut self, (p, st): &(String, State)) -> io::Result<()> {
        write_entry(&mut self.w, p, *st)
    }

    /// Puts the checksum last and renames the file over `path`.
    fn finish(self, path: &Path) -> io::Result<()> {
        let HashingWriter { mut inner, sum } = self.w;
        inner.write_all(sum.finalize().as_bytes())?;
        let tmp = inner.into_inner().map_err(|e| e.into_error())?;
        // The path in the error: the fix is to delete what is there (a directory, say).
        tmp.persist(path).map_err(|e| {
            io::Error::new(
                e.error.kind(),
                format!("{}: {} (delete it)", path.display(), e.error),
            )
        })?;
        Ok(())
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    sum: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<Entry> {
        crate::fs::Walker::new(dir, &crate::fs::WalkOptions::default())
            .unwrap()
            .map(|e| e.unwrap())
            .collect()
    }

    /// Prepares `dir`, "sends" all of it as a sync would (long after its files changed), and
    /// ends the build; returns the generation used.
    fn build(records: &CopyRecords, dir: &Path) -> u64 {
        let p = records.prepare(dir);
        let log = p.log().unwrap();
        let mut s = log.start(dir);
        for e in entries(dir) {
            s.push_state(&e.rel_path, sent_state(&e, now_ns() + 10_000_000_000));
        }
        drop(s);
        p.generation
    }

    fn fresh_process(state: &Path) -> CopyRecords {
        CopyRecords::at(Some(state.to_path_buf()))
    }

    /// Rewrites `path` with `text` and puts its mtime back (an edit the daemon cannot see
    /// when the size stays the same).
    fn same_stat_write(path: &Path, text: &str) {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, text).unwrap();
        set_mtime(path, mtime);
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn only_edits_the_daemon_cannot_see_start_a_new_generation() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a.txt");
        std::fs::write(&a, "hello\n").unwrap();
        std::fs::create_dir(ctx.path().join("d")).unwrap();
        std::fs::write(ctx.path().join("d/f"), "x\n").unwrap();

        let g1 = build(&fresh_process(state.path()), ctx.path());
        // Nothing changed, an ordinary edit, a new file: same generation.
        assert_eq!(build(&fresh_process(state.path()), ctx.path()), g1);
        std::fs::write(ctx.path().join("d/f"), "longer\n").unwrap();
        std::fs::write(ctx.path().join("new"), "n").unwrap();
        assert_eq!(build(&fresh_process(state.path()), ctx.path()), g1);

        // Same size, mtime put back: a new generation.
        same_stat_write(&a, "HELLO\n");
        let g2 = build(&fresh_process(state.path()), ctx.path());
        assert_ne!(g2, g1);
        assert_eq!(build(&fresh_process(state.path()), ctx.path()), g2);

        // A directory's mode: a new generation.
        std::fs::set_permissions(ctx.path().join("d"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let g3 = build(&fresh_process(state.path()), ctx.path());
        assert_ne!(g3, g2);
        assert_eq!(build(&fresh_process(state.path()), ctx.path()), g3);

        // A lost record: a new generation.
        for e in std::fs::read_dir(state.path()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        assert_ne!(build(&fresh_process(state.path()), ctx.path()), g3);
    }

    #[test]
    fn a_racy_send_or_a_send_that_was_not_recorded_starts_a_new_generation() {
        within_the_window(|| {
            let state = tempfile::tempdir().unwrap();
            let ctx = tempfile::tempdir().unwrap();
            std::fs::write(ctx.path().join("a"), "1").unwrap();

            // Sent right after it was written, and the sync not recorded as ended: it may
            // change again unseen.
            let g1 = racy_build(&fresh_process(state.path()), ctx.path(), &["a"], |_| {})?;
            let g2 = build(&fresh_process(state.path()), ctx.path());
            assert_ne!(g2, g1);
            assert_eq!(build(&fresh_process(state.path()), ctx.path()), g2);

            // A sync still running when the build ended (its process died, say).
            let p = fresh_process(state.path()).prepare(ctx.path());
            let log = p.log().unwrap();
            let unfinished = log.start(ctx.path());
            drop(p);
            std::mem::forget(unfinished);
            assert_ne!(build(&fresh_process(state.path()), ctx.path()), g2);
            Some(())
        });
    }

    /// Runs `attempt` until it gives `Some`. An attempt that needs its files sent within
    /// their racy window of being written gives `None` when this machine, loaded, took longer
    /// than that between the write and the send; twenty such attempts fail the test.
    fn within_the_window<T>(mut attempt: impl FnMut() -> Option<T>) -> T {
        for _ in 0..20 {
            if let Some(t) = attempt() {
                return t;
            }
        }
        panic!("in 20 attempts, no sync sent its files within the racy window of their writes");
    }

    /// Prepares `dir` and sends all of it now, as a build started right after an edit does
    /// (what was just written is racy); `end` ends the sync (or not) before the build ends.
    /// `None` when one of the files named in `racy` (relative paths) was no longer racy
    /// when it was sent (see [`within_the_window`]).
    fn racy_build(
        records: &CopyRecords,
        dir: &Path,
        racy: &[&str],
        end: impl FnOnce(&mut Sending),
    ) -> Option<u64> {
        let p = records.prepare(dir);
        let mut s = p.log().unwrap().start(dir);
        let mut in_time = 0;
        for e in entries(dir) {
            if racy.contains(&e.rel_path.as_str()) && trusted_from(&e) > s.started_ns {
                in_time += 1;
            }
            s.push(&e);
        }
        if in_time < racy.len() {
            return None;
        }
        end(&mut s);
        drop(s);
        Some(p.generation)
    }

    #[test]
    fn a_racy_send_is_trusted_once_its_window_has_passed_and_nothing_changed() {
        within_the_window(|| {
            let state = tempfile::tempdir().unwrap();
            let ctx = tempfile::tempdir().unwrap();
            std::fs::create_dir(ctx.path().join("d")).unwrap();
            std::fs::write(ctx.path().join("d/a"), "1").unwrap();
            std::os::unix::fs::symlink("d/a", ctx.path().join("l")).unwrap();

            let started = std::time::Instant::now();
            let g1 = racy_build(
                &fresh_process(state.path()),
                ctx.path(),
                &["d/a", "l"],
                |s| s.record_now(true),
            )?;
            // The sync waited for the window (and not much longer).
            let ended = now_ns();
            for e in entries(ctx.path()) {
                assert!(
                    e.mode & MODE_DIR != 0 || ended >= trusted_from(&e),
                    "{}",
                    e.rel_path
                );
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            assert_eq!(build(&fresh_process(state.path()), ctx.path()), g1);

            // An xattr set after the send, within the window: the daemon's copy lacks it,
            // and the check at the sync's end sees it (by the ctime, or in the same tick, by
            // the xattrs themselves).
            let a = ctx.path().join("d/a");
            std::fs::write(&a, "2").unwrap();
            let g2 = racy_build(&fresh_process(state.path()), ctx.path(), &["d/a"], |s| {
                set_xattr(&a, "user.bk-build-test", b"1");
                s.record_now(true)
            })?;
            assert_eq!(g2, g1);
            assert_ne!(build(&fresh_process(state.path()), ctx.path()), g2);
            Some(())
        });
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: NUL-terminated strings and a live buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn a_racy_send_stays_untrusted_when_a_read_came_too_early_or_the_sync_did_not_end() {
        within_the_window(|| {
            let state = tempfile::tempdir().unwrap();
            let ctx = tempfile::tempdir().unwrap();
            std::fs::write(ctx.path().join("a"), "1").unwrap();
            let g1 = racy_build(&fresh_process(state.path()), ctx.path(), &["a"], |s| {
                s.record_now(false)
            })?;
            let g2 = build(&fresh_process(state.path()), ctx.path());
            assert_ne!(g2, g1);
            assert_eq!(build(&fresh_process(state.path()), ctx.path()), g2);

            std::fs::write(ctx.path().join("a"), "2").unwrap();
            let g3 = racy_build(&fresh_process(state.path()), ctx.path(), &["a"], |_| {})?;
            assert_eq!(g3, g2);
            assert_ne!(build(&fresh_process(state.path()), ctx.path()), g3);
            Some(())
        });
    }

    #[test]
    fn a_read_waits_until_the_files_stat_can_be_trusted() {
        within_the_window(|| {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("f");
            std::fs::write(&f, "x").unwrap();
            let md = std::fs::metadata(&f).unwrap();
            let window = racy_window(mtime_ns(&md), ctime_ns(&md));
            let from = ctime_ns(&md) + window.as_nanos() as i64;
            if now_ns() >= from {
                return None;
            }
            let started = std::time::Instant::now();
            assert!(wait_until_trusted(&md));
            assert!(now_ns() >= from, "returned before the window had passed");
            let waited = started.elapsed();
            assert!(waited <= crate::fs::stat::RACY_WINDOW_COARSE, "{waited:?}");
            // Trusted now: no more waiting.
            assert_eq!(wait_for(from, window), Some(Duration::ZERO));
            Some(())
        });
    }

    #[test]
    fn each_build_is_checked_and_other_generations_are_not_merged() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a");
        std::fs::write(&a, "1").unwrap();
        let records = fresh_process(state.path());
        let g1 = build(&records, ctx.path());
        assert_eq!(build(&records, ctx.path()), g1);
        // Between two builds of one run (another target's export, say).
        same_stat_write(&a, "2");
        let g2 = build(&records, ctx.path());
        assert_ne!(g2, g1);
        // A build of an older generation ends after another process started a new one: its
        // sends are not added to the new generation's record.
        let old = records.prepare(ctx.path());
        let mut s = old.log().unwrap().start(ctx.path());
        s.push_state("a", (7, 7));
        drop(s);
        std::fs::remove_file(state.path().join(format!(
            "{}.rec",
            &blake3::hash(
                std::fs::canonicalize(ctx.path())
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes()
            )
            .to_hex()[..16]
        )))
        .unwrap();
        let g3 = build(&fresh_process(state.path()), ctx.path());
        assert_ne!(g3, g2);
        drop(old);
        assert_eq!(build(&fresh_process(state.path()), ctx.path()), g3);
    }

    fn record_len(state: &Path) -> u64 {
        std::fs::read_dir(state)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rec"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }

    #[test]
    fn a_record_holds_each_state_once_in_walk_order() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        for f in ["a/x", "a-b", "a.txt", "b/c/d"] {
            let p = ctx.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        let g = build(&fresh_process(state.path()), ctx.path());
        let len = record_len(state.path());
        // Unchanged: the same states again add nothing.
        assert_eq!(build(&fresh_process(state.path()), ctx.path()), g);
        assert_eq!(record_len(state.path()), len);
        // An ordinary edit adds one state, kept in walk order with the others.
        std::fs::write(ctx.path().join("a/x"), "longer").unwrap();
        assert_eq!(build(&fresh_process(state.path()), ctx.path()), g);
        assert!(record_len(state.path()) > len);
        let path = std::fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "rec"))
            .unwrap();
        let mut r = RecordReader::open(&path).unwrap().unwrap();
        let mut all = Vec::new();
        while let Some(e) = r.next().unwrap() {
            all.push(e);
        }
        r.verify().unwrap();
        let root = format!("{}/", std::fs::canonicalize(ctx.path()).unwrap().display());
        let paths: Vec<&str> = all
            .iter()
            .map(|(p, _)| p.strip_prefix(root.as_str()).unwrap())
            .collect();
        assert_eq!(
            paths,
            ["a", "a/x", "a/x", "a-b", "a.txt", "b", "b/c", "b/c/d"]
        );
        assert!(all.windows(2).all(|w| entry_order(&w[0], &w[1]).is_lt()));
    }

    #[test]
    fn an_overgrown_record_restarts_only_at_a_build_that_changed_files() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..10).map(|i| ctx.path().join(format!("f{i}"))).collect();
        let mut g = 0;
        let mut restarts = 0;
        for round in 0..120u64 {
            for f in &files {
                std::fs::write(f, format!("round {round}")).unwrap();
                set_mtime(f, UNIX_EPOCH + Duration::from_secs(1_000_000 + round));
            }
            let changed = build(&fresh_process(state.path()), ctx.path());
            if round > 0 && changed != g {
                restarts += 1;
            }
            g = changed;
            // Nothing changed since: the same generation, however large the record.
            assert_eq!(
                build(&fresh_process(state.path()), ctx.path()),
                g,
                "{round}"
            );
        }
        // 11 paths, 10 new states each round: past 2 per path and the margin, once.
        assert_eq!(restarts, 1);
        assert!(record_len(state.path()) < 200_000);
    }

    #[test]
    fn a_sync_out_of_walk_order_is_not_trusted() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("a"), "1").unwrap();
        std::fs::write(ctx.path().join("b"), "2").unwrap();
        let g = build(&fresh_process(state.path()), ctx.path());
        let p = fresh_process(state.path()).prepare(ctx.path());
        let mut s = p.log().unwrap().start(ctx.path());
        let mut es = entries(ctx.path());
        es.reverse();
        for e in es {
            s.push_state(&e.rel_path, (1, 1));
        }
        drop(s);
        drop(p);
        assert_ne!(build(&fresh_process(state.path()), ctx.path()), g);
    }

    #[test]
    fn a_sync_is_recorded_before_its_end_is_acknowledged() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a");
        std::fs::write(&a, "0").unwrap();
        build(&fresh_process(state.path()), ctx.path());
        same_stat_write(&a, "1");
        // One process syncs the new state; its build has not ended yet.
        let first = fresh_process(state.path()).prepare(ctx.path());
        let mut s = first.log().unwrap().start(ctx.path());
        for e in entries(ctx.path()) {
            s.push_state(&e.rel_path, sent_state(&e, now_ns() + 10_000_000_000));
        }
        s.record_now(true);
        drop(s);
        // Another process, meanwhile, after one more such edit: the daemon may hand it the
        // copy that holds "1".
        same_stat_write(&a, "2");
        let second = fresh_process(state.path()).prepare(ctx.path());
        assert_ne!(second.generation, first.generation);
    }

    #[test]
    fn an_unusable_state_directory_is_said_once() {
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let records = CopyRecords::at(Some(file.join("copies")));
        let a = records.prepare(ctx.path());
        let b = records.prepare(ctx.path());
        assert_ne!(a.generation, b.generation);
        let w = records.take_warning().unwrap();
        assert!(w.contains("not-a-dir") && w.contains("sent whole"), "{w}");
        assert_eq!(records.take_warning(), None);
    }

    #[test]
    fn without_a_state_directory_every_build_has_its_own_generation() {
        let ctx = tempfile::tempdir().unwrap();
        let records = CopyRecords::at(None);
        let a = records.prepare(ctx.path());
        let b = records.prepare(ctx.path());
        assert!(a.log().is_none());
        assert_ne!(a.generation, b.generation);
    }

    #[test]
    fn a_damaged_record_starts_a_new_generation() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("a"), "1").unwrap();
        let g1 = build(&fresh_process(state.path()), ctx.path());
        for e in std::fs::read_dir(state.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rec") {
                let mut b = std::fs::read(&p).unwrap();
                let last = b.len() - 1;
                b[last] ^= 1;
                std::fs::write(&p, b).unwrap();
            }
        }
        assert_ne!(build(&fresh_process(state.path()), ctx.path()), g1);
    }
}
