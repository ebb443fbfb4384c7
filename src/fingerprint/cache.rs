//! The stat cache: like git's index, it remembers a hash of each regular file's data together
//! with the lstat fields that change whenever the data can have changed, so an unchanged tree is
//! verified with the walk's lstat alone and no file is opened.
//!
//! What it must not know: which target a file belongs to or how hashes are combined into a key.

use std::collections::HashMap;
use std::fs::{Metadata, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::atomic::write_atomic;
use super::codec::{prefix16, put_bytes, put_len, put_str, Hash16, Reader};
use super::git::{GitIndexes, Oid};
use crate::fs::stat::{go_file_mode, XattrReader};
use crate::fs::Entry;

/// The lstat fields that decide whether a cached hash is still valid. mtime alone is not
/// enough (tools restore old mtimes); ctime catches that, and inode/device catch a file
/// replaced by another one (`mv new old`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub size: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    /// Go `os.FileMode` bits, as the walk reports them.
    pub mode: u32,
}

impl FileStat {
    /// A 64-bit digest of all fields; equal stats give equal digests, and a change of any
    /// field passing unnoticed has a 2^-64 chance.
    fn digest(&self) -> u64 {
        mix64(&[
            self.size as u64,
            self.mtime_ns as u64,
            self.ctime_ns as u64,
            self.ino,
            self.dev,
            u64::from(self.mode),
        ])
    }

    pub(crate) fn from_entry(e: &Entry) -> Self {
        FileStat {
            size: e.size,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.ctime_ns,
            ino: e.ino,
            dev: e.dev,
            mode: e.mode,
        }
    }

    pub(crate) fn from_metadata(md: &Metadata) -> Self {
        FileStat {
            size: md.size() as i64,
            mtime_ns: crate::fs::stat::mtime_ns(md),
            ctime_ns: crate::fs::stat::ctime_ns(md),
            ino: md.ino(),
            dev: md.dev(),
            mode: go_file_mode(md),
        }
    }
}

/// How a regular file's content is hashed into its data record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentHash {
    /// blake3 of the bytes: files outside a repository whose index is used.
    Blake3,
    /// The git blob id of the bytes (SHA-1 of `blob LEN\0` + bytes): every file of a
    /// repository whose index is used, so a file read gets the record a file [`GitIndexes`]
    /// vouches for gets, whether git tracks it or not.
    GitBlob,
}

/// Bytes read from a file at a time when hashing it.
const READ_BUFFER: usize = 64 << 10;

/// A hash to remember, from [`StatCache::hash_file_deferred`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    key: u64,
    slot: Slot,
    stamp: Stamp,
}

/// One remembered file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// [`FileStat::digest`] of the stat the data was read under. Eight bytes instead of 44:
    /// at 200k files that is the difference between 9 and 15 MB of cache.
    stat: u64,
    /// Days since the Unix epoch this entry was last used; entries unused for
    /// [`PRUNE_AFTER_DAYS`] are dropped so deleted files do not accumulate forever.
    day: u32,
    data: Hash16,
    /// How the data was obtained; decides whether this run may use it (see [`Slot::usable`]).
    kind: SlotKind,
}

/// Where a slot's data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    /// blake3 of the bytes, the index not turned off.
    Blake3 = 0,
    /// blake3 of the bytes read with the index turned off (`--no-git-index`).
    Blake3IndexOff = 1,
    /// The git blob id of the bytes read.
    GitRead = 2,
    /// The git blob id git's index vouched for: the file was not read.
    GitIndex = 3,
}

/// [`Slot::kind`] on disk: the top two bits of the day, which days since 1970 never reach.
const KIND_SHIFT: u32 = 30;

impl Slot {
    /// With the index turned off, nothing it vouched for (or that was hashed to match it) is
    /// used, so `--no-git-index` reads those files; with it on, what such a run read is read
    /// again, so the key goes back to the one a fresh clone computes.
    fn usable(&self, index_off: bool) -> bool {
        match self.kind {
            SlotKind::Blake3 => true,
            SlotKind::Blake3IndexOff => index_off,
            SlotKind::GitRead | SlotKind::GitIndex => !index_off,
        }
    }
}

// A file whose mtime or ctime is too close to the moment we started reading it may change
// again within the same timestamp tick without its stat changing ("racy git"): its hash is
// used for this run but not remembered (the window: `crate::fs::stat::racy_window`).
#[cfg(test)]
use crate::fs::stat::{RACY_WINDOW_COARSE, RACY_WINDOW_FINE};
const PRUNE_AFTER_DAYS: u32 = 30;

const MAGIC: &[u8; 4] = b"BKSC";
const FILE_VERSION: u32 = 3;
/// key (8) + stat digest (8) + day (4) + data (16).
const RECORD_LEN: usize = 36;
const RECORDS_PER_BLOCK: usize = 1820;

type Index = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

/// The remembered files, in the order they were last used. Paths are kept only as 64-bit keys
/// (~80 bytes per file instead of ~200).
///
/// A no-op run looks files up in walk order, which is the order the table was saved in, so
/// the next lookup is almost always at the position after the previous hit: checking that
/// position first turns a cache-missing hash-table probe per file into a sequential scan, and
/// the key index is only built when a guess fails. Each walk guesses with its own [`Cursor`],
/// so walks running side by side do not break each other's sequences.
#[derive(Default)]
struct Table {
    keys: Vec<u64>,
    slots: Vec<Slot>,
    /// The [`Stamp`] of each slot's last use in this process (0 = not yet); decides the saved
    /// order: walk by walk, each in its own order.
    used: Vec<u64>,
    /// Walks started so far (numbers the cursors).
    walks: u32,
    /// For callers without a cursor of their own (tests).
    #[cfg(test)]
    cursor: Cursor,
    index: Option<Index>,
    hits: u64,
    mispredicted: u64,
}

/// One walk's position in the table: where its next lookup is guessed to be, and the stamps
/// its uses get. Made by [`StatCache::cursor`], one per walk.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    walk: u32,
    step: u32,
    next: usize,
}

/// When a slot was used: (walk number, step within that walk), ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

impl Cursor {
    /// The next stamp of this walk; also what a file handed to another thread for hashing
    /// carries, so it is saved in walk order too.
    pub(crate) fn stamp(&mut self) -> Stamp {
        self.step = self.step.saturating_add(1);
        Stamp((u64::from(self.walk) << 32) | u64::from(self.step))
    }
}

impl Table {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn push(&mut self, key: u64, slot: Slot) {
        if let Some(index) = &mut self.index {
            index.insert(key, self.keys.len() as u32);
        }
        self.keys.push(key);
        self.slots.push(slot);
        self.used.push(0);
    }

    fn position(&mut self, key: u64, guess: usize) -> Option<usize> {
        if self.keys.get(guess) == Some(&key) {
            return Some(guess);
        }
        if self.index.is_none() {
            let mut index = Index::with_capacity_and_hasher(self.keys.len(), Default::default());
            for (i, k) in self.keys.iter().enumerate() {
                index.insert(*k, i as u32);
            }
            self.index = Some(index);
        }
        let i = *self.index.as_ref()?.get(&key)? as usize;
        self.mispredicted += 1;
        Some(i)
    }

    fn find(&mut self, cursor: &mut Cursor, key: u64) -> Option<usize> {
        let i = self.position(key, cursor.next)?;
        self.hits += 1;
        self.used[i] = cursor.stamp().0;
        cursor.next = i + 1;
        Some(i)
    }

    #[cfg(test)]
    fn get_mut(&mut self, key: u64) -> Option<&mut Slot> {
        let mut cursor = std::mem::take(&mut self.cursor);
        let i = self.find(&mut cursor, key);
        self.cursor = cursor;
        Some(&mut self.slots[i?])
    }

    fn upsert(&mut self, key: u64, slot: Slot, stamp: Stamp) {
        let i = match self.position(key, usize::MAX) {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.push(key, slot);
                self.keys.len() - 1
            }
        };
        self.used[i] = stamp.0;
    }

    /// True when this run's lookups mostly missed their guessed position: saving would put
    /// the table in walk order again.
    fn out_of_order(&self) -> bool {
        self.mispredicted > 64 && self.mispredicted * 8 > self.hits
    }

    /// Slot positions in save order: by last use, unused ones last in their old order.
    fn save_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.keys.len() as u32).collect();
        order.sort_by_key(|&i| match self.used[i as usize] {
            0 => u64::MAX,
            t => t,
        });
        order
    }
}

/// Keys are already uniformly distributed hashes; hashing them again would be wasted work.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A fast, stable 64-bit hash of the absolute path. Not cryptographic and it need not be: a
/// colliding key is only trusted when the stat digest (inode and device included) matches
/// too, i.e. when it is the very same file, whose content is the same whatever its name.
fn path_key(path: &Path) -> u64 {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut m = Mixer::default();
    m.word(bytes.len() as u64);
    for chunk in bytes.chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        m.word(u64::from_le_bytes(b));
    }
    m.finish()
}

fn mix64(words: &[u64]) -> u64 {
    let mut m = Mixer::default();
    for w in words {
        m.word(*w);
    }
    m.finish()
}

/// Word-wise multiply-rotate, then MurmurHash3's fmix64 so every input bit reaches every
/// output bit. Stable across versions and platforms: its results are persisted.
#[derive(Default)]
struct Mixer(u64);

impl Mixer {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Absolute path → (lstat fields, hash of content and xattrs). Shareable between threads:
/// targets can be fingerprinted concurrently against one cache.
pub struct StatCache {
    table: Mutex<Table>,
    dirty: std::sync::atomic::AtomicBool,
    hashes: AtomicU64,
    bytes_hashed: AtomicU64,
    vouched: AtomicU64,
    today: u32,
    /// Overrides the adaptive racy window (tests).
    racy_window: Option<Duration>,
    /// Blob ids from git's index, for files this cache has not seen (a fresh clone).
    git: GitIndexes,
}

impl Default for StatCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StatCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatCache")
            .field("entries", &self.len())
            .field("hashes_performed", &self.hashes_performed())
            .finish()
    }
}

impl StatCache {
    /// An empty cache (every file is read once).
    pub fn new() -> Self {
        Self::with_table(Table::default())
    }

    fn with_table(table: Table) -> Self {
        StatCache {
            table: Mutex::new(table),
            dirty: false.into(),
            hashes: AtomicU64::new(0),
            bytes_hashed: AtomicU64::new(0),
            vouched: AtomicU64::new(0),
            today: today(),
            racy_window: None,
            git: GitIndexes::default(),
        }
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Files whose content was read since this cache was created or loaded.
    pub fn hashes_performed(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// Files whose record came from git's index instead of being read.
    pub fn files_vouched(&self) -> u64 {
        self.vouched.load(Ordering::Relaxed)
    }

    /// Bytes of file content read since this cache was created or loaded.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed.load(Ordering::Relaxed)
    }

    /// Whether files git's index vouches for are taken from it instead of being read (on
    /// unless turned off here; see [`super::git`]).
    pub fn use_git_index(&mut self, on: bool) {
        self.git.set_off(!on);
    }

    pub(crate) fn git(&self) -> &GitIndexes {
        &self.git
    }

    /// Counts files whose records came from git's index (for [`files_vouched`](Self::files_vouched)).
    pub(crate) fn count_vouched(&self, files: usize) {
        self.vouched.fetch_add(files as u64, Ordering::Relaxed);
    }

    /// What to remember for a file git's index vouched for, as if it had been read now.
    pub(crate) fn vouched(
        &self,
        abs_path: &Path,
        stat: &FileStat,
        stamp: Stamp,
        data: Hash16,
    ) -> Pending {
        Pending {
            key: path_key(abs_path),
            slot: Slot {
                stat: stat.digest(),
                day: self.today,
                data,
                kind: SlotKind::GitIndex,
            },
            stamp,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_racy_window(&mut self, window: Duration) {
        self.racy_window = Some(window);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave a half-updated slot (slots are Copy and
        // written whole), so a poisoned table is still valid.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A cursor for one walk's lookups (see [`Table`]).
    pub(crate) fn cursor(&self) -> Cursor {
        let mut table = self.lock();
        table.walks = table.walks.saturating_add(1);
        Cursor {
            walk: table.walks,
            ..Cursor::default()
        }
    }

    /// The remembered data hash of `abs_path`, if its stat is unchanged.
    pub(crate) fn lookup(
        &self,
        cursor: &mut Cursor,
        abs_path: &Path,
        stat: &FileStat,
    ) -> Option<Hash16> {
        let key = path_key(abs_path);
        let mut table = self.lock();
        let i = table.find(cursor, key)?;
        let slot = &mut table.slots[i];
        if slot.stat != stat.digest() || !slot.usable(self.git.is_off()) {
            return None;
        }
        // Refreshing the day at most once a day keeps a no-op run from rewriting the file.
        if slot.day != self.today {
            slot.day = self.today;
            self.dirty.store(true, Ordering::Relaxed);
        }
        Some(slot.data)
    }

    /// Reads and hashes a regular file's content and xattrs, remembering the result when the
    /// file was stable while being read and not racily recent. `expected` is the walk's lstat,
    /// `stamp` where in its walk the file came.
    #[cfg(test)]
    pub(crate) fn hash_file(
        &self,
        abs_path: &Path,
        expected: &FileStat,
        stamp: Stamp,
        xattrs: &mut XattrReader,
    ) -> io::Result<Hash16> {
        let (data, pending) = self.hash_file_deferred(
            abs_path,
            expected,
            stamp,
            ContentHash::Blake3,
            xattrs,
            &mut Vec::new(),
        )?;
        self.remember(pending);
        Ok(data)
    }

    /// [`hash_file`](Self::hash_file) without taking the table's lock: what is to be
    /// remembered comes back, for [`remember`](Self::remember) to store with others at once
    /// (one lock per batch of files instead of per file).
    pub(crate) fn hash_file_deferred(
        &self,
        abs_path: &Path,
        expected: &FileStat,
        stamp: Stamp,
        how: ContentHash,
        xattrs: &mut XattrReader,
        buf: &mut Vec<u8>,
    ) -> io::Result<(Hash16, Option<Pending>)> {
        let started = SystemTime::now();
        // O_NOFOLLOW: the walk saw a regular file; if a symlink replaced it since, fail rather
        // than hash whatever it points to. O_NONBLOCK: same for a FIFO, which would hang.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(abs_path)?;
        let mut content = Content::new(how, expected.size);
        // One buffer per hashing thread: `Hasher::update_reader` zeroes a fresh 64 KiB buffer
        // per call, which on 20k small files cost more than reading them.
        if buf.is_empty() {
            buf.resize(READ_BUFFER, 0);
        }
        let mut count = 0u64;
        // Up to the size the walk saw, then the file's stat: when that still shows this size,
        // the end was reached without the extra read(2) that returns 0 (one syscall per file
        // on a cold walk); when it does not, read on to the real end.
        let mut to_eof = false;
        let after = loop {
            let want = if to_eof {
                buf.len()
            } else {
                (expected.size as u64)
                    .saturating_sub(count)
                    .min(buf.len() as u64) as usize
            };
            if want == 0 {
                let now = FileStat::from_metadata(&file.metadata()?);
                if to_eof || now.size as u64 == count {
                    break now;
                }
                to_eof = true;
                continue;
            }
            match (&file).read(&mut buf[..want]) {
                Ok(0) if to_eof => break FileStat::from_metadata(&file.metadata()?),
                // Shorter than the walk saw: it shrank; the stat tells the rest.
                Ok(0) => break FileStat::from_metadata(&file.metadata()?),
                Ok(n) => {
                    content.update(&buf[..n]);
                    count += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        #[cfg(target_os = "linux")]
        let attrs = {
            use std::os::fd::AsRawFd;
            xattrs.read_fd(file.as_raw_fd())
        };
        #[cfg(not(target_os = "linux"))]
        let attrs = xattrs.read(abs_path);
        drop(file);

        let data = content.finish(count, &attrs);

        self.hashes.fetch_add(1, Ordering::Relaxed);
        self.bytes_hashed.fetch_add(count, Ordering::Relaxed);

        let stable = after == *expected && count == expected.size as u64;
        let pending = (stable && !self.is_racy(expected, started)).then(|| Pending {
            key: path_key(abs_path),
            slot: Slot {
                stat: expected.digest(),
                day: self.today,
                data,
                kind: match (how, self.git.is_off()) {
                    (ContentHash::GitBlob, _) => SlotKind::GitRead,
                    (ContentHash::Blake3, false) => SlotKind::Blake3,
                    (ContentHash::Blake3, true) => SlotKind::Blake3IndexOff,
                },
            },
            stamp,
        });
        Ok((data, pending))
    }

    /// The data record of a unix socket: the daemon receives it as an empty regular file with
    /// the socket's xattrs (fsutil's sender clears the socket bit; opening it fails, so the
    /// requested content is empty). Never cached: there is nothing to read.
    pub(crate) fn socket_data(abs_path: &Path, xattrs: &mut XattrReader) -> Hash16 {
        // By path: a socket cannot be opened to read them through a descriptor.
        file_data(&blake3::hash(b""), &xattrs.read(abs_path))
    }

    /// Stores hashes [`hash_file_deferred`](Self::hash_file_deferred) computed.
    pub(crate) fn remember(&self, pending: impl IntoIterator<Item = Pending>) {
        let mut pending = pending.into_iter().peekable();
        if pending.peek().is_none() {
            return;
        }
        let mut table = self.lock();
        for p in pending {
            table.upsert(p.key, p.slot, p.stamp);
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    fn is_racy(&self, stat: &FileStat, read_started: SystemTime) -> bool {
        let window = self.racy_window.unwrap_or_else(|| racy_window_for(stat));
        let started_ns = read_started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        is_racy(stat, started_ns, window)
    }

    /// Loads a cache file. A missing file is an empty cache; an unreadable, corrupt or
    /// other-version file is an empty cache plus a warning (the cost is one full re-hash).
    pub(crate) fn load(path: &Path) -> (StatCache, Option<String>) {
        match load_table(path) {
            Ok(table) => (Self::with_table(table), None),
            Err(LoadError::Missing) => (Self::new(), None),
            Err(LoadError::Invalid(why)) => (
                Self::new(),
                Some(format!(
                    "ignoring stat cache {}: {why}; every file will be re-read once",
                    path.display()
                )),
            ),
        }
    }

    /// Writes the cache atomically if anything changed since it was loaded; returns whether
    /// it wrote. Entries unused for a month are dropped here.
    pub(crate) fn save(&self, path: &Path) -> io::Result<bool> {
        let table = self.lock();
        if !self.dirty.load(Ordering::Relaxed) && !table.out_of_order() {
            return Ok(false);
        }
        let oldest = self.today.saturating_sub(PRUNE_AFTER_DAYS);
        let order = table.save_order();
        let live = order
            .iter()
            .filter(|&&i| table.slots[i as usize].day >= oldest)
            .count();
        write_atomic(path, |w| {
            let mut sum = blake3::Hasher::new();
            let mut header = Vec::with_capacity(16);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&FILE_VERSION.to_le_bytes());
            header.extend_from_slice(&(live as u64).to_le_bytes());
            sum.update(&header);
            w.write_all(&header)?;
            let mut block = Vec::with_capacity(RECORDS_PER_BLOCK * RECORD_LEN);
            let mut rec = [0u8; RECORD_LEN];
            for &i in &order {
                let slot = &table.slots[i as usize];
                if slot.day < oldest {
                    continue;
                }
                encode_record(table.keys[i as usize], slot, &mut rec);
                block.extend_from_slice(&rec);
                if block.len() == block.capacity() {
                    sum.update(&block);
                    w.write_all(&block)?;
                    block.clear();
                }
            }
            sum.update(&block);
            w.write_all(&block)?;
            w.write_all(sum.finalize().as_bytes())
        })?;
        self.dirty.store(false, Ordering::Relaxed);
        Ok(true)
    }
}

pub(crate) fn racy_window_for(stat: &FileStat) -> Duration {
    crate::fs::stat::racy_window(stat.mtime_ns, stat.ctime_ns)
}

/// True when the file's last change is not clearly older than the moment its content was
/// read (or lies in the future, e.g. clock skew): a later write could keep the same stat.
pub(crate) fn is_racy(stat: &FileStat, read_started_ns: i64, window: Duration) -> bool {
    crate::fs::stat::changed_within(stat.mtime_ns, stat.ctime_ns, read_started_ns, window)
}

fn today() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as u32)
        .unwrap_or(0)
}

fn encode_record(key: u64, slot: &Slot, out: &mut [u8; RECORD_LEN]) {
    out[0..8].copy_from_slice(&key.to_le_bytes());
    out[8..16].copy_from_slice(&slot.stat.to_le_bytes());
    let day = slot.day | ((slot.kind as u32) << KIND_SHIFT);
    out[16..20].copy_from_slice(&day.to_le_bytes());
    out[20..36].copy_from_slice(&slot.data);
}

fn decode_record(rec: &[u8]) -> Result<(u64, Slot), super::codec::DecodeError> {
    let mut r = Reader::new(rec);
    let key = r.u64()?;
    let stat = r.u64()?;
    let day = r.u32()?;
    let data = r.array()?;
    Ok((
        key,
        Slot {
            stat,
            day: day & ((1 << KIND_SHIFT) - 1),
            data,
            kind: match day >> KIND_SHIFT {
                0 => SlotKind::Blake3,
                1 => SlotKind::Blake3IndexOff,
                2 => SlotKind::GitRead,
                _ => SlotKind::GitIndex,
            },
        },
    ))
}

enum LoadError {
    Missing,
    Invalid(String),
}

/// Streams the file through a small buffer (no second copy of a 14 MB file at 200k entries)
/// and verifies the trailing checksum before trusting any of it.
fn load_table(path: &Path) -> Result<Table, LoadError> {
    let file = match super::atomic::open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(LoadError::Invalid(format!("cannot read it: {e}"))),
    };
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let invalid = |why: &str| LoadError::Invalid(why.to_string());
    let io_err = |e: io::Error| LoadError::Invalid(format!("cannot read it: {e}"));
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut sum = blake3::Hasher::new();

    let mut header = [0u8; 16];
    r.read_exact(&mut header)
        .map_err(|_| invalid("file is truncated"))?;
    sum.update(&header);
    if &header[..4] != MAGIC {
        return Err(invalid("not a bk-build stat cache"));
    }
    let mut hr = Reader::new(&header[4..]);
    let version = hr.u32().map_err(|_| invalid("file is truncated"))?;
    if version != FILE_VERSION {
        return Err(LoadError::Invalid(format!(
            "written by another bk-build version (format {version}, expected {FILE_VERSION})"
        )));
    }
    let count = hr.u64().map_err(|_| invalid("file is truncated"))?;
    let expected_len = (count as u128) * RECORD_LEN as u128 + 16 + 32;
    if expected_len != u128::from(file_len) {
        return Err(invalid("file is truncated or has trailing data"));
    }

    let mut table = Table::default();
    table.keys.reserve(count as usize);
    table.slots.reserve(count as usize);
    table.used.reserve(count as usize);
    // Whole blocks of records: hashing and copying 64 KiB at a time is several times faster
    // than record by record, and memory stays one block however big the cache is.
    let mut block = vec![0u8; RECORDS_PER_BLOCK * RECORD_LEN];
    let mut left = count as usize;
    while left > 0 {
        let n = left.min(RECORDS_PER_BLOCK);
        let buf = &mut block[..n * RECORD_LEN];
        r.read_exact(buf).map_err(io_err)?;
        sum.update(buf);
        for rec in buf.chunks_exact(RECORD_LEN) {
            let (key, slot) = decode_record(rec).map_err(|e| invalid(e.0))?;
            table.push(key, slot);
        }
        left -= n;
    }
    let mut trailer = [0u8; 32];
    r.read_exact(&mut trailer).map_err(io_err)?;
    if sum.finalize().as_bytes() != &trailer {
        return Err(invalid("checksum mismatch (the file is corrupt)"));
    }
    Ok(table)
}

/// A content hash in progress, by [`ContentHash`]. One lives on a hashing thread's stack per
/// file: its size does not matter, a heap allocation per file would.
#[allow(clippy::large_enum_variant)]
enum Content {
    Blake3(blake3::Hasher),
    GitBlob(ring::digest::Context, u64),
}

impl Content {
    fn new(how: ContentHash, expected_size: i64) -> Content {
        match how {
            ContentHash::Blake3 => Content::Blake3(blake3::Hasher::new()),
            ContentHash::GitBlob => {
                // The header needs the length before the bytes: the walk's. If the file turns
                // out to have another length, `finish` gives a record no blob can have.
                let size = expected_size.max(0) as u64;
                Content::GitBlob(super::git::blob_hasher(size), size)
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Content::Blake3(h) => {
                h.update(bytes);
            }
            Content::GitBlob(ctx, _) => ctx.update(bytes),
        }
    }

    fn finish(self, count: u64, attrs: &[(String, Vec<u8>)]) -> Hash16 {
        match self {
            Content::Blake3(h) => file_data(&h.finalize(), attrs),
            Content::GitBlob(ctx, size) => {
                let digest = ctx.finish();
                let mut oid: Oid = [0; 20];
                oid.copy_from_slice(digest.as_ref());
                if count != size {
                    // Torn read: the header gave the walk's length, not this one. Keyed apart,
                    // so it is never the record of a real blob, and still depends on the bytes.
                    let mut torn = blake3::Hasher::new_derive_key("bk-build 2026-12 torn git blob");
                    torn.update(&oid);
                    torn.update(&count.to_le_bytes());
                    return prefix16(&torn.finalize());
                }
                git_blob_data(&oid, attrs)
            }
        }
    }
}

/// A tracked file's data record: its git blob id, then its xattrs, in a hash keyed apart from
/// [`file_data`]'s, so the two kinds of record never coincide.
pub(crate) fn git_blob_data(oid: &Oid, attrs: &[(String, Vec<u8>)]) -> Hash16 {
    let mut data = blake3::Hasher::new_derive_key("bk-build 2026-12 git blob file record");
    data.update(oid);
    put_len(&mut data, attrs.len() as u64);
    for (name, value) in attrs {
        put_str(&mut data, name);
        put_bytes(&mut data, value);
    }
    prefix16(&data.finalize())
}

/// A regular file's data record: its content hash, then its xattrs. The content hash, not
/// the content, goes first, so the two parts can never be confused with each other.
fn file_data(content: &blake3::Hash, attrs: &[(String, Vec<u8>)]) -> Hash16 {
    let mut data = blake3::Hasher::new();
    data.update(content.as_bytes());
    put_len(&mut data, attrs.len() as u64);
    for (name, value) in attrs {
        put_str(&mut data, name);
        put_bytes(&mut data, value);
    }
    prefix16(&data.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl StatCache {
        /// A lookup as the first of its own walk.
        fn lookup1(&self, p: &Path, st: &FileStat) -> Option<Hash16> {
            self.lookup(&mut self.cursor(), p, st)
        }
        fn hash1(&self, p: &Path, st: &FileStat, xr: &mut XattrReader) -> io::Result<Hash16> {
            self.hash_file(p, st, Stamp(1), xr)
        }
    }

    fn stat_of(p: &Path) -> FileStat {
        FileStat::from_metadata(&std::fs::symlink_metadata(p).unwrap())
    }

    fn settled_cache() -> StatCache {
        let mut c = StatCache::new();
        c.set_racy_window(Duration::ZERO);
        c
    }

    #[test]
    fn hit_skips_reading_and_any_stat_change_misses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let cache = settled_cache();
        let mut xr = XattrReader::default();
        let st = stat_of(&p);

        let h = cache.hash1(&p, &st, &mut xr).unwrap();
        assert_eq!(cache.hashes_performed(), 1);
        assert_eq!(cache.bytes_hashed(), 5);
        assert_eq!(cache.lookup1(&p, &st), Some(h));

        // Each field on its own invalidates the entry.
        for change in [
            |s: &mut FileStat| s.size += 1,
            |s: &mut FileStat| s.mtime_ns += 1,
            |s: &mut FileStat| s.ctime_ns += 1,
            |s: &mut FileStat| s.ino += 1,
            |s: &mut FileStat| s.dev += 1,
            |s: &mut FileStat| s.mode ^= 0o100,
        ] {
            let mut other = st;
            change(&mut other);
            assert_eq!(cache.lookup1(&p, &other), None);
        }
        // Another path with the same stat is not a hit either.
        assert_eq!(cache.lookup1(&dir.path().join("g"), &st), None);
    }

    #[test]
    fn recently_modified_file_is_hashed_but_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"fresh").unwrap();
        let mut cache = StatCache::new();
        cache.set_racy_window(Duration::from_secs(3600));
        let st = stat_of(&p);
        cache.hash1(&p, &st, &mut XattrReader::default()).unwrap();
        assert!(cache.is_empty());
        assert_eq!(cache.lookup1(&p, &st), None);
    }

    #[test]
    fn racy_rule_uses_the_later_of_mtime_and_ctime() {
        let w = Duration::from_millis(100);
        let st = |mtime_ns, ctime_ns| FileStat {
            size: 0,
            mtime_ns,
            ctime_ns,
            ino: 0,
            dev: 0,
            mode: 0o644,
        };
        let read_at = 10_000_000_000;
        assert!(!is_racy(&st(1_000_000_000, 1_000_000_000), read_at, w));
        assert!(is_racy(&st(read_at - 50_000_000, 0), read_at, w));
        // An old mtime restored by a tool a moment ago: ctime is what counts.
        assert!(is_racy(&st(0, read_at - 1), read_at, w));
        // A future timestamp (clock skew) is never trusted.
        assert!(is_racy(&st(read_at + 5_000_000_000, 0), read_at, w));
        // Whole-second timestamps get the wide window.
        assert_eq!(
            racy_window_for(&st(5_000_000_000, 6_000_000_000)),
            RACY_WINDOW_COARSE
        );
        assert_eq!(
            racy_window_for(&st(5_000_000_001, 6_000_000_000)),
            RACY_WINDOW_FINE
        );
    }

    #[test]
    fn file_changed_while_reading_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let cache = settled_cache();
        let mut stale = stat_of(&p);
        stale.size = 2; // as if the walk had seen an older version
        cache
            .hash1(&p, &stale, &mut XattrReader::default())
            .unwrap();
        assert!(cache.is_empty());
    }

    #[test]
    fn symlink_swapped_in_after_the_walk_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let st = stat_of(&target);
        let cache = settled_cache();
        assert!(cache
            .hash1(&link, &st, &mut XattrReader::default())
            .is_err());
    }

    #[test]
    fn xattrs_are_part_of_the_data_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"same").unwrap();
        let cache = settled_cache();
        let mut xr = XattrReader::default();
        let before = cache.hash1(&p, &stat_of(&p), &mut xr).unwrap();
        if xattr::set(&p, "user.bk", b"1").is_err() {
            return; // filesystem without user xattrs (tmpfs on old kernels)
        }
        let after = cache.hash1(&p, &stat_of(&p), &mut xr).unwrap();
        assert_ne!(before, after);
    }

    #[test]
    fn save_load_round_trip_and_only_when_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let cache_file = dir.path().join("stat-cache");
        let cache = settled_cache();
        let mut xr = XattrReader::default();
        let mut expected = Vec::new();
        for i in 0..50 {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, format!("content {i}")).unwrap();
            let st = stat_of(&p);
            expected.push((p.clone(), st, cache.hash1(&p, &st, &mut xr).unwrap()));
        }
        assert!(cache.save(&cache_file).unwrap());
        assert!(!cache.save(&cache_file).unwrap(), "nothing changed");

        let (loaded, warning) = StatCache::load(&cache_file);
        assert_eq!(warning, None);
        assert_eq!(loaded.len(), 50);
        for (p, st, h) in &expected {
            assert_eq!(loaded.lookup1(p, st), Some(*h));
        }
        assert_eq!(loaded.hashes_performed(), 0);
    }

    #[test]
    fn corrupt_truncated_or_foreign_files_load_empty_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stat-cache");
        let cache = settled_cache();
        let p = dir.path().join("data");
        std::fs::write(&p, b"x").unwrap();
        cache
            .hash1(&p, &stat_of(&p), &mut XattrReader::default())
            .unwrap();
        cache.save(&f).unwrap();
        let good = std::fs::read(&f).unwrap();

        let mut flipped = good.clone();
        flipped[30] ^= 1;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("checksum", flipped),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("not a bk-build", b"{\"json\": true}".repeat(4)),
            ("another bk-build version", {
                let mut v = good.clone();
                v[4] = 99;
                v
            }),
        ];
        for (why, bytes) in cases {
            std::fs::write(&f, bytes).unwrap();
            let (loaded, warning) = StatCache::load(&f);
            assert!(loaded.is_empty());
            let warning = warning.expect("a warning");
            assert!(warning.contains(why), "{why}: {warning}");
        }
        let (loaded, warning) = StatCache::load(&dir.path().join("absent"));
        assert!(loaded.is_empty() && warning.is_none());
    }

    #[test]
    fn path_keys_of_similar_paths_do_not_collide() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let p = format!(
                "/work/mono/src/py/service_{}/app/pkg{:02}/f{i:05}.py",
                i % 10,
                i % 97
            );
            assert!(seen.insert(path_key(Path::new(&p))), "{p}");
        }
        assert_ne!(path_key(Path::new("/a")), path_key(Path::new("/a\0")));
        assert_ne!(path_key(Path::new("")), path_key(Path::new("\0")));
    }

    #[test]
    fn multi_block_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stat-cache");
        let cache = settled_cache();
        let n = RECORDS_PER_BLOCK * 2 + 17;
        {
            let mut map = cache.lock();
            for i in 0..n as u64 {
                let stat = FileStat {
                    size: i as i64,
                    mtime_ns: -(i as i64),
                    ctime_ns: 7,
                    ino: i * 3,
                    dev: 9,
                    mode: 0o644,
                };
                let mut data = [0u8; 16];
                data[..8].copy_from_slice(&i.to_le_bytes());
                map.upsert(
                    path_key(Path::new(&format!("/p/{i}"))),
                    Slot {
                        stat: stat.digest(),
                        day: cache.today,
                        data,
                        kind: [
                            SlotKind::Blake3,
                            SlotKind::Blake3IndexOff,
                            SlotKind::GitRead,
                            SlotKind::GitIndex,
                        ][i as usize % 4],
                    },
                    Stamp(i + 1),
                );
            }
        }
        cache.dirty.store(true, Ordering::Relaxed);
        cache.save(&f).unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().len() as usize,
            16 + n * RECORD_LEN + 32
        );
        let (loaded, warning) = StatCache::load(&f);
        assert_eq!(warning, None);
        let (a, b) = (loaded.lock(), cache.lock());
        assert_eq!((&a.keys, &a.slots), (&b.keys, &b.slots));
    }

    #[test]
    fn old_unused_entries_are_pruned_on_save() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stat-cache");
        let cache = settled_cache();
        let stat = FileStat {
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
            dev: 1,
            mode: 0o644,
        };
        {
            let mut map = cache.lock();
            map.upsert(
                1,
                Slot {
                    stat: stat.digest(),
                    day: cache.today - PRUNE_AFTER_DAYS - 1,
                    data: [1; 16],
                    kind: SlotKind::GitIndex,
                },
                Stamp(1),
            );
            map.upsert(
                2,
                Slot {
                    stat: stat.digest(),
                    day: cache.today,
                    data: [2; 16],
                    kind: SlotKind::GitIndex,
                },
                Stamp(2),
            );
        }
        cache.dirty.store(true, Ordering::Relaxed);
        cache.save(&f).unwrap();
        let (loaded, _) = StatCache::load(&f);
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.lock().get_mut(2).map(|s| s.data), Some([2; 16]));
    }

    fn slot(n: u8) -> Slot {
        Slot {
            stat: FileStat {
                size: n.into(),
                mtime_ns: 1,
                ctime_ns: 1,
                ino: n.into(),
                dev: 1,
                mode: 0o644,
            }
            .digest(),
            day: today(),
            data: [n; 16],
            kind: SlotKind::Blake3,
        }
    }

    #[test]
    fn lookups_in_saved_order_need_no_index_and_save_follows_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stat-cache");
        let cache = settled_cache();
        for k in 1..=300u64 {
            cache.lock().upsert(k, slot(k as u8), Stamp(k));
        }
        cache.dirty.store(true, Ordering::Relaxed);
        cache.save(&f).unwrap();

        // A no-op run in the same order: every guess is right, no index is ever built, and
        // nothing needs saving.
        let (loaded, _) = StatCache::load(&f);
        for k in 1..=300u64 {
            assert!(loaded.lock().get_mut(k).is_some());
        }
        {
            let t = loaded.lock();
            assert!(t.index.is_none());
            assert_eq!((t.hits, t.mispredicted), (300, 0));
        }
        assert!(!loaded.save(&f).unwrap());

        // A run in another order mispredicts, which alone is reason to save, in the new order.
        let (loaded, _) = StatCache::load(&f);
        for k in (1..=300u64).rev() {
            assert!(loaded.lock().get_mut(k).is_some());
        }
        assert!(loaded.lock().get_mut(999).is_none());
        assert!(loaded.save(&f).unwrap());
        let (reordered, _) = StatCache::load(&f);
        let keys = reordered.lock().keys.clone();
        assert_eq!(keys, (1..=300u64).rev().collect::<Vec<_>>());
    }

    #[test]
    fn unused_entries_keep_their_order_after_used_ones() {
        let cache = settled_cache();
        let mut t = cache.lock();
        for k in 1..=5u64 {
            t.push(k, slot(k as u8));
        }
        t.get_mut(4);
        t.get_mut(2);
        let order: Vec<u64> = t.save_order().iter().map(|&i| t.keys[i as usize]).collect();
        assert_eq!(order, vec![4, 2, 1, 3, 5]);
        // Updating an existing key replaces it in place.
        t.upsert(3, slot(33), Stamp(99));
        assert_eq!(t.len(), 5);
        assert_eq!(t.get_mut(3).map(|s| s.data), Some([33; 16]));
    }

    #[test]
    fn walks_side_by_side_keep_their_guesses_and_need_no_save() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stat-cache");
        let cache = settled_cache();
        // Two walks of 200 files each, saved walk by walk.
        for k in 1..=400u64 {
            cache.lock().upsert(k, slot(k as u8), Stamp(k));
        }
        cache.dirty.store(true, Ordering::Relaxed);
        cache.save(&f).unwrap();

        // The same two walks, their lookups interleaved one by one (two threads): each
        // cursor's guesses stay right after its first lookup, so the table is still in order.
        let (loaded, _) = StatCache::load(&f);
        let (mut a, mut b) = (loaded.cursor(), loaded.cursor());
        for k in 1..=200u64 {
            for (cursor, key) in [(&mut a, k), (&mut b, 200 + k)] {
                let mut t = loaded.lock();
                assert!(t.find(cursor, key).is_some(), "key {key}");
            }
        }
        {
            let t = loaded.lock();
            assert_eq!(
                (t.hits, t.mispredicted),
                (400, 1),
                "only b's first guess misses"
            );
        }
        assert!(
            !loaded.save(&f).unwrap(),
            "nothing changed, nothing to save"
        );
    }
}
