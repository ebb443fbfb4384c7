//! The state directory `.bk-build/` next to the project file: one record per successfully built
//! target and the stat cache, each written atomically, all guarded by an exclusive lock.
//!
//! Layout:
//! ```text
//! .bk-build/lock                   flock'ed while a run has the store open; holds its pid
//! .bk-build/state/stat-cache       see StatCache
//! .bk-build/state/targets/<t>.rec  record header + manifest of target <t>'s last success
//! .bk-build/links/<t>/             OCI layout: the image of untagged target <t> for the
//!                                  targets that use it through `target:` (link_layout_dir)
//! ```
//!
//! Concurrency policy: a second run *waits* for the lock, announcing once who holds it, and
//! fails with [`StateError::Locked`] after a timeout ([`DEFAULT_LOCK_WAIT`] for
//! [`StateStore::open`]). Interrupted runs are harmless: a record is written only when its
//! target succeeded, each replaces the previous file atomically, and leftover temp files are
//! deleted by the next run.
//!
//! What it must not know: how keys are computed or what a build is.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::atomic::{open_regular, write_atomic, TEMP_MARKER};
use super::cache::StatCache;
use super::manifest::Manifest;

/// Name of the state directory created next to the project file.
pub const STATE_DIR_NAME: &str = ".bk-build";
/// How long [`StateStore::open`] waits for another run to finish.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10 * 60);

const RECORD_MAGIC: &[u8; 4] = b"BKTR";
const RECORD_VERSION: u32 = 1;
/// A record header is a few hundred bytes; anything claiming more is corrupt.
const MAX_HEADER_LEN: u32 = 1 << 20;

/// The exclude pattern that keeps bk-build's own state directory (`<project>/.bk-build`) out
/// of a context that contains it, or `None` when it is outside. Its files change on every run;
/// left in, they would change every such target's fingerprint and be sent to the daemon. File
/// sync must use the same pattern so the fingerprint keeps matching what is sent.
pub fn state_dir_exclude(context_dir: &Path, project_dir: &Path) -> Option<String> {
    if project_dir.as_os_str().is_empty() {
        return None;
    }
    let context = std::fs::canonicalize(context_dir).ok()?;
    let state = std::fs::canonicalize(project_dir)
        .ok()?
        .join(STATE_DIR_NAME);
    let rel = state.strip_prefix(&context).ok()?.to_str()?;
    Some(crate::fs::literal_pattern(rel))
}

/// The OCI image layout through which a target without tags hands its image to the targets
/// that use it as a `target:` context (`<project>/.bk-build/links/<target>/`). Written by that
/// target's builds and read by its dependents' only while a run holds the state lock.
pub fn link_layout_dir(project_dir: &Path, target: &str) -> PathBuf {
    project_dir
        .join(STATE_DIR_NAME)
        .join("links")
        .join(file_name_for(target))
}

/// What the last successful build of a target produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// The fingerprint key of the inputs that build used.
    pub key: String,
    /// Manifest digest of the built image, when there was one.
    pub image_digest: Option<String>,
    pub tags: Vec<String>,
    /// Export destinations (`type=local,dest=out`, …) whose existence a skip must check.
    pub outputs: Vec<String>,
    /// For each output with a destination on disk, its [`output_witness`] right after it was
    /// written.
    ///
    /// [`output_witness`]: crate::fs::output_witness
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub output_witness: std::collections::BTreeMap<String, String>,
    /// When the build finished, in Unix seconds.
    pub finished_unix: u64,
    /// Inputs the build read that its fingerprint did not cover (see
    /// [`Fingerprint::uncovered`](super::Fingerprint::uncovered)); such a record is never
    /// reused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncovered: Vec<String>,
    /// The file-sync requests the daemon made in that build, per directory: what the
    /// fingerprint was checked against (kept for `plan --format json` and bug reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemon_reads: Vec<super::DaemonRead>,
    /// The daemon once read more of this target's context than its Dockerfile shows (e.g. an
    /// `ONBUILD COPY` in a base image), so the whole context counts from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole_context: bool,
    /// External bases the building Docker Engine had its own image of, and that image's ID:
    /// the engine builds from those, so a changed one means another result.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub local_bases: std::collections::BTreeMap<String, String>,
    /// The BuildKit worker ID of the daemon that built it: where its cache most likely is,
    /// so a pool builds it there again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// That daemon's address as given (for `plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_address: Option<String>,
}

/// Why the state directory could not be used.
#[derive(thiserror::Error, Debug)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source} (make the project directory writable, or run from a writable checkout)")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path}: {source} (check that the file system supports flock and the file is writable)")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another bk-build run{holder} is still using {path}; gave up after {} s (wait for it to finish, or stop it)", waited.as_secs())]
    Locked {
        path: PathBuf,
        /// " (pid N)" when known, else empty.
        holder: String,
        waited: Duration,
    },
    #[error("cannot write {path}: {source} (check free disk space and permissions)")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open, locked state directory. `Sync`: targets finishing concurrently may record
/// themselves from several threads.
pub struct StateStore {
    state_dir: PathBuf,
    targets_dir: PathBuf,
    /// Held for the store's lifetime; closing the file releases the lock, even on a crash.
    _lock: File,
    stat_cache: StatCache,
    warnings: Mutex<Vec<String>>,
    /// Record warnings already given: a record is read several times per run (precheck,
    /// decision, execution), and the user needs to hear about it once.
    warned: Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (creating if needed) `<project_dir>/.bk-build`, waiting up to
    /// [`DEFAULT_LOCK_WAIT`] for another run and saying so once on stderr.
    pub fn open(project_dir: &Path) -> Result<StateStore, StateError> {
        Self::open_with(project_dir, DEFAULT_LOCK_WAIT, &mut |msg| {
            use std::io::Write as _;
            // Never panic over a closed stderr.
            let _ = writeln!(std::io::stderr(), "{msg}");
        })
    }

    /// Like [`open`](Self::open) with an explicit wait (zero = fail at once) and a callback
    /// that receives the "waiting for …" message once if the lock is busy.
    pub fn open_with(
        project_dir: &Path,
        wait: Duration,
        on_wait: &mut dyn FnMut(&str),
    ) -> Result<StateStore, StateError> {
        let root = project_dir.join(STATE_DIR_NAME);
        let state_dir = root.join("state");
        let targets_dir = state_dir.join("targets");
        std::fs::create_dir_all(&targets_dir).map_err(|source| StateError::CreateDir {
            path: targets_dir.clone(),
            source,
        })?;
        // Keep the state out of version control without asking the user to edit .gitignore.
        let gitignore = root.join(".gitignore");
        if !gitignore.exists() {
            let _ = std::fs::write(&gitignore, "*\n");
        }
        let lock = acquire_lock(&root.join("lock"), wait, on_wait)?;

        let mut warnings = Vec::new();
        remove_stale_temps(&state_dir, &mut warnings);
        remove_stale_temps(&targets_dir, &mut warnings);
        let (stat_cache, warning) = StatCache::load(&state_dir.join("stat-cache"));
        warnings.extend(warning);
        Ok(StateStore {
            state_dir,
            targets_dir,
            _lock: lock,
            stat_cache,
            warnings: Mutex::new(warnings),
            warned: Mutex::new(Default::default()),
        })
    }

    /// The last successful record of `target`; `None` if there is none or it is unreadable
    /// (the latter also leaves a warning, see [`take_warnings`](Self::take_warnings)).
    pub fn get(&self, target: &str) -> Option<TargetRecord> {
        let path = self.record_path(target);
        let mut file = match open_regular(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.warn(&path, &format!("cannot read it: {e}"));
                return None;
            }
        };
        match read_header(&mut file, target) {
            Ok(rec) => Some(rec),
            Err(why) => {
                self.warn(&path, &why);
                None
            }
        }
    }

    /// The manifest stored with `target`'s record, for [`explain`](super::explain). Read
    /// lazily: a no-op run only needs [`get`](Self::get).
    pub fn manifest(&self, target: &str) -> Option<Manifest> {
        let path = self.record_path(target);
        let mut file = open_regular(&path).ok()?;
        let result = read_header(&mut file, target).and_then(|rec| {
            let manifest = read_manifest(&mut file)?;
            if manifest.key() != rec.key {
                return Err("its manifest does not match its key".to_string());
            }
            Ok(manifest)
        });
        match result {
            Ok(m) => Some(m),
            Err(why) => {
                self.warn(&path, &why);
                None
            }
        }
    }

    /// Replaces `target`'s record (whole, never torn; checksummed rather than fsynced, see
    /// `atomic.rs`) before returning. Call it as soon as the target succeeded so an
    /// interrupted run keeps what it finished.
    pub fn record(
        &self,
        target: &str,
        record: &TargetRecord,
        manifest: &Manifest,
    ) -> Result<(), StateError> {
        let path = self.record_path(target);
        let header = serde_json::to_vec(&RecordFile {
            target: target.to_string(),
            record: record.clone(),
        })
        .map_err(|e| StateError::Write {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let body_len = manifest.encoded_len();
        write_atomic(&path, |w| {
            w.write_all(RECORD_MAGIC)?;
            w.write_all(&RECORD_VERSION.to_le_bytes())?;
            w.write_all(&(header.len() as u32).to_le_bytes())?;
            w.write_all(&header)?;
            w.write_all(blake3::hash(&header).as_bytes())?;
            w.write_all(&body_len.to_le_bytes())?;
            let sum = manifest.write_to(w)?;
            w.write_all(sum.as_bytes())
        })
        .map_err(|source| StateError::Write { path, source })
    }

    /// Deletes `target`'s record (e.g. its output was removed), so the next run rebuilds it.
    pub fn forget(&self, target: &str) -> Result<(), StateError> {
        let path = self.record_path(target);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Write { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// The stat cache loaded at open; pass it to [`compute`](super::compute).
    /// See [`StatCache::use_git_index`].
    pub fn use_git_index(&mut self, on: bool) {
        self.stat_cache.use_git_index(on);
    }

    pub fn stat_cache(&self) -> &StatCache {
        &self.stat_cache
    }

    /// Writes the stat cache if it changed. It only saves work, so a write that fails (a full
    /// disk, a directory in its place) is a warning ([`take_warnings`](Self::take_warnings)),
    /// not a failed run: the next run hashes those files again.
    pub fn save_stat_cache(&self) {
        let path = self.state_dir.join("stat-cache");
        if let Err(e) = self.stat_cache.save(&path) {
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!(
                    "could not save the stat cache {}: {e} (only a cache: the next run reads those files again)",
                    path.display()
                ));
        }
    }

    /// Problems found so far that were survived (corrupt or old-format files treated as
    /// absent); each is returned once.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn warn(&self, path: &Path, why: &str) {
        let w = format!("ignoring build record {}: {why}", path.display());
        let new = self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(w.clone());
        if new {
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(w);
        }
    }

    fn record_path(&self, target: &str) -> PathBuf {
        self.targets_dir
            .join(format!("{}.rec", file_name_for(target)))
    }
}

#[derive(Serialize, Deserialize)]
struct RecordFile {
    /// The unescaped name, so two names that escape alike can never read each other's record.
    target: String,
    record: TargetRecord,
}

/// Reads and verifies the magic, version and header; leaves `file` at the manifest.
fn read_header(file: &mut File, target: &str) -> Result<TargetRecord, String> {
    let mut fixed = [0u8; 12];
    file.read_exact(&mut fixed)
        .map_err(|_| "file is truncated".to_string())?;
    if &fixed[..4] != RECORD_MAGIC {
        return Err("not a bk-build record".into());
    }
    let version = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    if version != RECORD_VERSION {
        return Err(format!(
            "written by another bk-build version (format {version}, expected {RECORD_VERSION})"
        ));
    }
    let len = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if len > MAX_HEADER_LEN {
        return Err("file is corrupt (header length)".into());
    }
    let mut header = vec![0u8; len as usize + 32];
    file.read_exact(&mut header)
        .map_err(|_| "file is truncated".to_string())?;
    let (json, sum) = header.split_at(len as usize);
    if blake3::hash(json).as_bytes() != sum {
        return Err("checksum mismatch (the file is corrupt)".into());
    }
    let rf: RecordFile =
        serde_json::from_slice(json).map_err(|e| format!("file is corrupt ({e})"))?;
    if rf.target != target {
        return Err(format!("it belongs to target {:?}", rf.target));
    }
    Ok(rf.record)
}

fn read_manifest(file: &mut File) -> Result<Manifest, String> {
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "file is truncated".to_string())?;
    let len = u64::from_le_bytes(len);
    let pos = file.stream_position().map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    if pos.checked_add(len).and_then(|n| n.checked_add(32)) != Some(file_len) {
        return Err("file is truncated or has trailing data".into());
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact(&mut body)
        .map_err(|_| "file is truncated".to_string())?;
    let mut sum = [0u8; 32];
    file.read_exact(&mut sum)
        .map_err(|_| "file is truncated".to_string())?;
    if blake3::hash(&body).as_bytes() != &sum {
        return Err("checksum mismatch (the file is corrupt)".into());
    }
    Manifest::decode(&body).map_err(|e| format!("manifest is unreadable ({e})"))
}

/// Target names become file names: keep the readable characters, escape the rest (`/`, a
/// leading `.`) so a name can never point outside the directory or collide with temp files.
fn file_name_for(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for (i, b) in target.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

fn acquire_lock(
    path: &Path,
    wait: Duration,
    on_wait: &mut dyn FnMut(&str),
) -> Result<File, StateError> {
    let lock_err = |source| StateError::Lock {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        // A FIFO planted here must not block the open (see `open_regular`).
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(lock_err)?;
    super::atomic::ensure_regular(&file, path).map_err(lock_err)?;
    let started = Instant::now();
    let mut announced = false;
    let mut pause = Duration::from_millis(20);
    loop {
        match try_flock(&file) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(lock_err(e)),
        }
        let holder = read_holder(&mut file);
        let waited = started.elapsed();
        if waited >= wait {
            return Err(StateError::Locked {
                path: path.to_path_buf(),
                holder,
                waited,
            });
        }
        if !announced {
            on_wait(&format!(
                "waiting for another bk-build run{holder} to finish with {} (up to {} s)",
                path.parent().unwrap_or(path).display(),
                wait.as_secs()
            ));
            announced = true;
        }
        std::thread::sleep(pause.min(wait - waited));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    // Who holds the lock, for the message a waiting run prints. Best effort.
    let _ = file
        .set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "pid {}", std::process::id()));
    Ok(file)
}

/// flock, not fcntl locks: two opens in one process (threads, tests) exclude each other, and
/// the kernel drops the lock when the descriptor closes, however the process ends.
fn try_flock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: a valid open descriptor owned by `file` for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let ok =
        file.seek(SeekFrom::Start(0)).is_ok() && file.take(64).read_to_string(&mut text).is_ok();
    match text.trim().strip_prefix("pid ") {
        Some(pid) if ok && pid.chars().all(|c| c.is_ascii_digit()) && !pid.is_empty() => {
            format!(" (pid {pid})")
        }
        _ => String::new(),
    }
}

/// Temp files can only be left by a run that died mid-write; we hold the lock, so none is live.
fn remove_stale_temps(dir: &Path, warnings: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().contains(TEMP_MARKER) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                warnings.push(format!(
                    "cannot remove leftover temp file {}: {e}",
                    entry.path().display()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{compute, FingerprintInput};

    fn sample_manifest(dir: &Path) -> Manifest {
        std::fs::create_dir_all(dir.join("ctx")).unwrap();
        std::fs::write(dir.join("ctx/Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(dir.join("ctx/a.txt"), "a").unwrap();
        let input = FingerprintInput {
            target: "t".into(),
            project_dir: dir.to_path_buf(),
            context_dir: dir.join("ctx"),
            dockerfile: dir.join("ctx/Dockerfile"),
            ..Default::default()
        };
        compute(&input, &StatCache::new()).unwrap().manifest
    }

    fn record_for(m: &Manifest) -> TargetRecord {
        TargetRecord {
            key: m.key(),
            image_digest: Some("sha256:abc".into()),
            tags: vec!["localhost:5000/acme/t:dev".into()],
            outputs: vec![],
            output_witness: Default::default(),
            finished_unix: 1_700_000_000,
            uncovered: vec![],
            daemon_reads: vec![],
            whole_context: false,
            local_bases: Default::default(),
            daemon: None,
            daemon_address: None,
        }
    }

    /// How long a test's open waits for a lock its own earlier store released: another
    /// test's thread may have forked a child (git, say) while that store was open, and the
    /// child shares the lock until it execs.
    const UNLOCK_WAIT: Duration = Duration::from_secs(10);

    fn quiet_open(dir: &Path, wait: Duration) -> Result<StateStore, StateError> {
        StateStore::open_with(dir, wait, &mut |_| {})
    }

    #[test]
    fn record_then_get_and_manifest_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample_manifest(dir.path());
        let rec = record_for(&m);
        {
            let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
            assert_eq!(store.get("t"), None);
            store.record("t", &rec, &m).unwrap();
            assert_eq!(store.get("t"), Some(rec.clone()));
        }
        let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
        assert_eq!(store.get("t"), Some(rec));
        assert_eq!(store.manifest("t"), Some(m));
        assert!(store.take_warnings().is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".bk-build/.gitignore")).unwrap(),
            "*\n"
        );
    }

    #[test]
    fn second_open_waits_then_fails_clearly_and_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
        let path = dir.path().to_path_buf();
        let (messages, err) = std::thread::spawn(move || {
            let mut messages = Vec::new();
            let err = StateStore::open_with(&path, Duration::from_millis(300), &mut |m| {
                messages.push(m.to_string())
            })
            .unwrap_err();
            (messages, err)
        })
        .join()
        .unwrap();
        assert_eq!(messages.len(), 1, "{messages:?}");
        let pid = format!("(pid {})", std::process::id());
        assert!(messages[0].contains(&pid), "{}", messages[0]);
        let text = err.to_string();
        assert!(matches!(err, StateError::Locked { .. }), "{text}");
        assert!(text.contains(&pid) && text.contains(".bk-build"), "{text}");

        // A waiting run gets the lock as soon as the first one ends.
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || quiet_open(&path, Duration::from_secs(20)).is_ok());
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn stray_temp_files_from_a_crash_are_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample_manifest(dir.path());
        let rec = record_for(&m);
        {
            let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
            store.record("t", &rec, &m).unwrap();
        }
        // A run that died while replacing t's record and the stat cache.
        let targets = dir.path().join(".bk-build/state/targets");
        let stray = targets.join(format!(".t.rec{TEMP_MARKER}999-0"));
        std::fs::write(&stray, b"BKTR half-written").unwrap();
        let stray_cache = dir
            .path()
            .join(format!(".bk-build/state/.stat-cache{TEMP_MARKER}999-1"));
        std::fs::write(&stray_cache, b"junk").unwrap();

        let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
        assert_eq!(store.get("t"), Some(rec));
        assert!(!stray.exists() && !stray_cache.exists());
        assert!(store.take_warnings().is_empty());
    }

    #[test]
    fn corrupt_or_foreign_records_are_absent_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample_manifest(dir.path());
        let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
        store.record("t", &record_for(&m), &m).unwrap();
        let path = store.record_path("t");
        let good = std::fs::read(&path).unwrap();

        let mut flipped_header = good.clone();
        flipped_header[20] ^= 0x20;
        let mut flipped_body = good.clone();
        let n = flipped_body.len();
        flipped_body[n - 40] ^= 1;
        let mut other_version = good.clone();
        other_version[4] = 7;
        let cases: Vec<(Vec<u8>, &str, bool)> = vec![
            (flipped_header, "checksum", true),
            (good[..10].to_vec(), "truncated", true),
            (b"{}".to_vec(), "truncated", true),
            (other_version, "another bk-build version", true),
            (
                b"garbage that is long enough".to_vec(),
                "not a bk-build record",
                true,
            ),
            // The header is fine, only the manifest is damaged: get works, manifest does not.
            (flipped_body, "checksum", false),
        ];
        drop(store);
        for (bytes, why, header_broken) in cases {
            std::fs::write(&path, &bytes).unwrap();
            // A new run each time: one run says a thing once.
            let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
            assert_eq!(store.get("t").is_none(), header_broken, "{why}");
            assert_eq!(store.manifest("t"), None, "{why}");
            let warnings = store.take_warnings();
            assert!(
                !warnings.is_empty() && warnings.iter().all(|w| w.contains(why)),
                "{why}: {warnings:?}"
            );
            // Read again in the same run (as a plan and its execution do): said once.
            let _ = (store.get("t"), store.manifest("t"));
            assert_eq!(store.take_warnings(), Vec::<String>::new(), "{why}");
        }
    }

    #[test]
    fn corrupt_stat_cache_is_a_warning_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(quiet_open(dir.path(), UNLOCK_WAIT).unwrap());
        std::fs::write(dir.path().join(".bk-build/state/stat-cache"), b"nonsense").unwrap();
        let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
        assert!(store.stat_cache().is_empty());
        let w = store.take_warnings();
        assert!(w.len() == 1 && w[0].contains("stat cache"), "{w:?}");
    }

    #[test]
    fn stat_cache_persists_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        let f = File::options()
            .write(true)
            .open(ctx.join("Dockerfile"))
            .unwrap();
        f.set_modified(old).unwrap();
        // ctime is "now"; wait past the racy window so the file can be remembered.
        std::thread::sleep(Duration::from_millis(150));
        let input = FingerprintInput {
            target: "t".into(),
            context_dir: ctx.clone(),
            dockerfile: ctx.join("Dockerfile"),
            ..Default::default()
        };
        {
            let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
            compute(&input, store.stat_cache()).unwrap();
            assert_eq!(store.stat_cache().hashes_performed(), 1);
            store.save_stat_cache();
        }
        let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
        compute(&input, store.stat_cache()).unwrap();
        assert_eq!(store.stat_cache().hashes_performed(), 0);
    }

    #[test]
    fn records_of_different_targets_are_independent_and_names_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample_manifest(dir.path());
        let store = quiet_open(dir.path(), UNLOCK_WAIT).unwrap();
        let names = ["a", "../evil", ".hidden", "x/y", "x%2Fy", "ünï"];
        for (i, n) in names.iter().enumerate() {
            let mut r = record_for(&m);
            r.finished_unix = i as u64;
            store.record(n, &r, &m).unwrap();
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(store.get(n).map(|r| r.finished_unix), Some(i as u64), "{n}");
        }
        for entry in std::fs::read_dir(dir.path().join(".bk-build/state/targets")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with('.') && !name.contains('/'), "{name}");
        }
        store.forget("a").unwrap();
        store.forget("a").unwrap();
        assert_eq!(store.get("a"), None);
    }

    #[test]
    fn state_dir_is_excluded_only_from_contexts_that_contain_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("proj/svc")).unwrap();
        std::fs::create_dir_all(p.join("weird[1]*")).unwrap();
        let proj = p.join("proj");
        assert_eq!(
            state_dir_exclude(&proj, &proj).as_deref(),
            Some(".bk-build")
        );
        assert_eq!(
            state_dir_exclude(p, &proj).as_deref(),
            Some("proj/.bk-build")
        );
        assert_eq!(state_dir_exclude(&proj.join("svc"), &proj), None);
        assert_eq!(state_dir_exclude(&proj, Path::new("")), None);
        assert_eq!(
            state_dir_exclude(p, &p.join("weird[1]*")).as_deref(),
            Some("weird\\[1\\]\\*/.bk-build")
        );
    }
}
