//! FileSync `DiffCopy` sender: the daemon asks for one of our local directories; we stream one
//! STAT per entry (in the order [`crate::fs::Walker`] produces), then answer its REQs with the
//! file bytes in bounded chunks. The daemon diffs our STATs against the directory it kept from
//! the last build with the same shared key, so unchanged files are never requested.
//!
//! Owns the packet protocol; the walk order and pattern semantics belong to [`crate::fs`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::filetable::FileTable;
use crate::fs::{Entry, WalkOptions, Walker};
use crate::proto::moby::filesync::v1::file_sync_server::FileSync;
use crate::proto::{Packet, PacketType, Stat};

/// File data chunk size. fsutil uses 32 KiB; slightly larger chunks cut per-message overhead
/// while staying far below every message limit.
const DATA_CHUNK: usize = 64 << 10;
/// Files read concurrently per DiffCopy stream.
const PARALLEL_READS: usize = 4;

/// A local directory offered to the daemon under a local name.
#[derive(Debug, Clone)]
pub struct SyncDir {
    pub path: PathBuf,
    /// Patterns excluded on top of what the daemon asks (e.g. bk-build's own state directory),
    /// appended last so no `!` exception of the daemon's can bring them back.
    pub extra_excludes: Vec<String>,
    /// Where what is sent is noted, for the daemon's copies to be checked against later
    /// ([`super::copies`]); `None`: not noted.
    pub sent: Option<Arc<super::copies::SentLog>>,
}

/// What moved during a session, per local name (sums over repeated syncs of one name).
#[derive(Debug, Default)]
pub struct SyncStats {
    inner: Mutex<BTreeMap<String, DirSyncReport>>,
    total_bytes: AtomicU64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirSyncReport {
    /// STAT packets sent (entries after filtering).
    pub entries: u64,
    /// Files the daemon asked for (changed or new since its last copy).
    pub files_requested: u64,
    /// File bytes sent.
    pub bytes_sent: u64,
    /// Number of DiffCopy calls for this name.
    pub syncs: u64,
    /// The filters the daemon asked for, one per DiffCopy call, in arrival order. The
    /// fingerprint is checked against these after a build (it must cover every file they
    /// select), so they are kept exactly as received, before our own extra excludes.
    pub requests: Vec<SyncRequest>,
}

/// The `include-patterns`, `exclude-patterns` and `followpaths` of one DiffCopy call
/// (BuildKit `session/filesync/filesync.go`, `FSSync`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_paths: Vec<String>,
    /// [`StatDigest`](crate::fs::StatDigest) of every entry sent, once all were sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_digest: Option<String>,
}

impl SyncStats {
    pub fn snapshot(&self) -> BTreeMap<String, DirSyncReport> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }
    fn add(&self, name: &str, r: DirSyncReport) {
        if let Ok(mut m) = self.inner.lock() {
            let e = m.entry(name.to_string()).or_default();
            e.entries += r.entries;
            e.files_requested += r.files_requested;
            e.bytes_sent += r.bytes_sent;
            e.syncs += 1;
            e.requests.extend(r.requests);
        }
    }
}

pub struct FileSyncService {
    dirs: Arc<BTreeMap<String, SyncDir>>,
    stats: Arc<SyncStats>,
}

impl FileSyncService {
    pub fn new(dirs: BTreeMap<String, SyncDir>, stats: Arc<SyncStats>) -> Self {
        FileSyncService {
            dirs: Arc::new(dirs),
            stats,
        }
    }
}

/// Reads all values of a metadata key, undoing the query-escaping the daemon applies to every
/// value when any of them had non-ASCII characters (`<key>-encoded: 1`).
fn metadata_values(md: &tonic::metadata::MetadataMap, key: &str) -> Vec<String> {
    let encoded = md.get(format!("{key}-encoded")).is_some();
    md.get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            if encoded {
                form_urlencoded::parse(format!("x={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            } else {
                v.to_string()
            }
        })
        .collect()
}

type PacketStream = ReceiverStream<Result<Packet, Status>>;

#[tonic::async_trait]
impl FileSync for FileSyncService {
    type DiffCopyStream = PacketStream;
    type TarStreamStream = PacketStream;

    async fn diff_copy(
        &self,
        req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let md = req.metadata();
        let name = metadata_values(md, "dir-name")
            .into_iter()
            .next()
            .unwrap_or_default();
        let dir = self
            .dirs
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("no access allowed to dir {name:?}")))?
            .clone();
        let asked = SyncRequest {
            include_patterns: metadata_values(md, "include-patterns"),
            exclude_patterns: metadata_values(md, "exclude-patterns"),
            follow_paths: metadata_values(md, "followpaths"),
            stat_digest: None,
        };
        let mut exclude_patterns = asked.exclude_patterns.clone();
        exclude_patterns.extend(dir.extra_excludes.iter().cloned());
        let opts = WalkOptions {
            include_patterns: asked.include_patterns.clone(),
            exclude_patterns,
            follow_paths: asked.follow_paths.clone(),
        };
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let mut report = DirSyncReport {
                requests: vec![asked],
                ..Default::default()
            };
            if let Err(msg) = send_dir(dir, opts, inbound, tx.clone(), &mut report).await {
                let _ = tx
                    .send(Ok(Packet {
                        r#type: PacketType::PacketErr as i32,
                        data: msg.into_bytes(),
                        ..Default::default()
                    }))
                    .await;
            }
            stats
                .total_bytes
                .fetch_add(report.bytes_sent, Ordering::Relaxed);
            stats.add(&name, report);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tar_stream(
        &self,
        _req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented(
            "bk-build only serves the diffcopy protocol",
        ))
    }
}

fn to_stat(e: &Entry) -> Stat {
    Stat {
        path: e.rel_path.clone(),
        mode: e.mode,
        // BuildKit's own client forces 0/0: stable across machines, and COPY defaults to root.
        uid: 0,
        gid: 0,
        size: e.size,
        mod_time: e.mtime_ns,
        linkname: e.linkname.clone(),
        devmajor: e.devmajor,
        devminor: e.devminor,
        xattrs: e.xattrs.iter().cloned().collect(),
    }
}

fn stat_packet(stat: Option<Stat>) -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        stat,
        ..Default::default()
    }
}

/// Runs one DiffCopy exchange. Returns an error message to send as ERR.
async fn send_dir(
    dir: SyncDir,
    opts: WalkOptions,
    mut inbound: Streaming<Packet>,
    tx: mpsc::Sender<Result<Packet, Status>>,
    report: &mut DirSyncReport,
) -> Result<(), String> {
    // The walk is blocking filesystem work: run it on its own thread, feeding a bounded
    // channel so memory stays flat however large the tree is.
    let (etx, mut erx) = mpsc::channel::<Result<Entry, String>>(256);
    let root = dir.path.clone();
    let walker = tokio::task::spawn_blocking(move || {
        let walker = match Walker::new(&root, &opts) {
            Ok(w) => w,
            Err(e) => {
                let _ = etx.blocking_send(Err(e.to_string()));
                return;
            }
        };
        for item in walker {
            if etx.blocking_send(item.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });

    let mut files = FileTable::default();
    let mut sent = crate::fs::StatDigest::default();
    // Started before the walk, so a file changed while it runs counts as racy.
    let mut noted = dir.sent.as_ref().map(|log| log.start(&dir.path));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    // Cleared when a file could not be read late enough for its stat to be trusted.
    let reads_waited = Arc::new(AtomicBool::new(true));
    let mut readers: Option<Readers> = None;
    let mut next_id: u32 = 0;
    let mut walking = true;
    let result = loop {
        tokio::select! {
            entry = erx.recv(), if walking => match entry {
                Some(Ok(e)) => {
                    if crate::fs::is_regular(e.mode) && e.linkname.is_empty() {
                        files.push(next_id, &e.rel_path);
                    }
                    next_id += 1;
                    report.entries += 1;
                    sent.add(&e);
                    if let Some(n) = noted.as_mut() {
                        n.push(&e);
                    }
                    if tx.send(Ok(stat_packet(Some(to_stat(&e))))).await.is_err() {
                        break Ok(());
                    }
                }
                Some(Err(msg)) => break Err(msg),
                None => {
                    walking = false;
                    if let Some(r) = report.requests.first_mut() {
                        r.stat_digest = Some(sent.finish());
                    }
                    // End of STATs: a STAT packet without a stat.
                    if tx.send(Ok(stat_packet(None))).await.is_err() {
                        break Ok(());
                    }
                }
            },
            pkt = inbound.next() => match pkt {
                None => break Ok(()),
                Some(Err(s)) => break Err(format!("receive error: {}", s.message())),
                Some(Ok(p)) => match PacketType::try_from(p.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let path = match files.get(p.id) {
                            Ok(Some(rel)) => dir.path.join(rel),
                            Ok(None) => break Err(format!("invalid file id {}", p.id)),
                            Err(e) => break Err(format!("looking up file id {}: {e}", p.id)),
                        };
                        report.files_requested += 1;
                        let r = readers.get_or_insert_with(|| {
                            Readers::start(&tx, &bytes_sent, noted.is_some().then(|| reads_waited.clone()))
                        });
                        if r.queue.send((p.id, path)).await.is_err() {
                            break Err("file readers stopped".into());
                        }
                    }
                    Ok(PacketType::PacketFin) => {
                        // All data arrived (so no reader should remain); answer FIN, end our side.
                        if let Some(r) = readers.take() {
                            r.finish().await;
                        }
                        // The daemon completes the sync only after our FIN: record first.
                        if let Some(mut n) = noted.take() {
                            let waited = reads_waited.load(Ordering::Relaxed);
                            let _ = tokio::task::spawn_blocking(move || n.record_now(waited)).await;
                        }
                        let _ = tx.send(Ok(Packet { r#type: PacketType::PacketFin as i32, ..Default::default() })).await;
                        break Ok(());
                    }
                    Ok(PacketType::PacketErr) => {
                        break Err(format!("error from receiver: {}", String::from_utf8_lossy(&p.data)));
                    }
                    _ => {}
                }
            }
        }
    };
    report.bytes_sent = bytes_sent.load(Ordering::Relaxed);
    walker.abort();
    result
}

/// A fixed set of reader threads for one DiffCopy, fed through a bounded queue. A thread per
/// request (`spawn_blocking` for each file) let the blocking pool grow to ~40 threads on a
/// 200k-file sync, and client memory with it; a full queue also stops us reading further
/// requests, so the daemon's flow control, not our memory, absorbs the backlog (the session's
/// HTTP/2 server tolerates any number of unread tiny REQ frames; see `session::server`).
struct Readers {
    queue: mpsc::Sender<(u32, PathBuf)>,
    threads: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    /// `waited`: when what is sent is recorded ([`super::copies`]), each file is read only
    /// once its stat can be trusted, and this is cleared if one could not be.
    fn start(
        tx: &mpsc::Sender<Result<Packet, Status>>,
        counter: &Arc<AtomicU64>,
        waited: Option<Arc<AtomicBool>>,
    ) -> Readers {
        let (queue, rx) = mpsc::channel::<(u32, PathBuf)>(PARALLEL_READS * 4);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..PARALLEL_READS)
            .map(|_| {
                let (rx, tx, counter) = (rx.clone(), tx.clone(), counter.clone());
                let waited = waited.clone();
                tokio::task::spawn_blocking(move || loop {
                    let next = rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .blocking_recv();
                    let Some((id, path)) = next else { break };
                    // A panic here would leave the daemon waiting for this file forever: it
                    // ends the transfer with an error instead.
                    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        send_file(id, &path, &tx, &counter, waited.as_deref())
                    }));
                    if sent.is_err() {
                        let _ = tx.blocking_send(Ok(Packet {
                            r#type: PacketType::PacketErr as i32,
                            data: format!("internal error while sending {}", path.display())
                                .into_bytes(),
                            ..Default::default()
                        }));
                    }
                })
            })
            .collect();
        Readers { queue, threads }
    }

    /// Closes the queue and waits until every queued file was sent.
    async fn finish(self) {
        drop(self.queue);
        for t in self.threads {
            let _ = t.await;
        }
    }
}

/// Streams one file as DATA packets, then an empty DATA (EOF). A unix socket (which the walk
/// sent as an empty regular file, as fsutil does) is answered with just the EOF. A file that
/// cannot be read completely is an ERR for the whole transfer, never a silently short file
/// (fsutil would send it empty); a read that stops because the daemon went away is not.
fn send_file(
    id: u32,
    path: &std::path::Path,
    tx: &mpsc::Sender<Result<Packet, Status>>,
    counter: &AtomicU64,
    waited: Option<&AtomicBool>,
) {
    let data = |data: Vec<u8>| Packet {
        r#type: PacketType::PacketData as i32,
        id,
        data,
        ..Default::default()
    };
    let packet = match stream_file(path, tx, counter, waited, &data) {
        Ok(true) => data(Vec::new()),
        Ok(false) => return,
        Err(msg) => Packet {
            r#type: PacketType::PacketErr as i32,
            data: msg.into_bytes(),
            ..Default::default()
        },
    };
    let _ = tx.blocking_send(Ok(packet));
}

/// Sends the content of `path`: Ok(true) when it was all sent, Ok(false) when the stream
/// closed, Err with the message for the daemon when it cannot be read.
fn stream_file(
    path: &std::path::Path,
    tx: &mpsc::Sender<Result<Packet, Status>>,
    counter: &AtomicU64,
    waited: Option<&AtomicBool>,
    data: &dyn Fn(Vec<u8>) -> Packet,
) -> Result<bool, String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fail = |what: &str, e: std::io::Error| {
        let why = if matches!(e.kind(), std::io::ErrorKind::NotFound)
            || e.raw_os_error() == Some(libc::ENOTDIR)
        {
            // Sent empty, as fsutil does, the image would hold a file that never had that
            // content: the build stops instead.
            "it was removed during the transfer; build again once files there stop changing, or exclude them in .dockerignore"
        } else {
            "it changed or became unreadable during the transfer; fix it and build again"
        };
        format!("cannot {what} {}: {e} ({why})", path.display())
    };
    // O_NONBLOCK: a FIFO put in the file's place since the walk must not hang the transfer
    // (no effect on regular files). O_NOFOLLOW: nor may a symlink put there be followed.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let mut f = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            // A socket cannot be opened: what the daemon gets is the empty file it announced.
            return match std::fs::symlink_metadata(path) {
                Ok(md) if md.file_type().is_socket() => Ok(true),
                _ => Err(fail("read", e)),
            };
        }
        Err(e) => return Err(fail("read", e)),
    };
    match f.metadata() {
        Ok(md) if md.is_file() => {
            if let Some(w) = waited {
                if !super::copies::wait_until_trusted(&md) {
                    w.store(false, Ordering::Relaxed);
                }
            }
        }
        Ok(_) => {
            return Err(fail(
                "read",
                std::io::Error::other("it is no longer a regular file"),
            ))
        }
        Err(e) => return Err(fail("read", e)),
    }
    // One reusable read buffer; each packet gets an exact-size copy, so small files do not
    // pin a full chunk each while queued.
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if tx.blocking_send(Ok(data(buf[..n].to_vec()))).is_err() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail("read", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `send_file` puts on the stream for `path`.
    fn sent(path: &std::path::Path) -> Vec<Packet> {
        let (tx, mut rx) = mpsc::channel(64);
        send_file(7, path, &tx, &AtomicU64::new(0), None);
        drop(tx);
        std::iter::from_fn(|| rx.try_recv().ok().map(Result::unwrap)).collect()
    }

    #[test]
    fn a_file_is_sent_whole_a_socket_empty_and_anything_unreadable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, vec![1u8; DATA_CHUNK + 5]).unwrap();
        let got = sent(&f);
        let sizes: Vec<usize> = got.iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, [DATA_CHUNK, 5, 0]);
        assert!(got
            .iter()
            .all(|p| p.id == 7 && p.r#type == PacketType::PacketData as i32));

        // The walk sent a socket as an empty regular file: its content is empty.
        let sock = dir.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let got = sent(&sock);
        assert_eq!(got.len(), 1);
        assert!(got[0].data.is_empty() && got[0].r#type == PacketType::PacketData as i32);

        // Gone, or replaced by a FIFO since the walk: an ERR naming it, not a short file.
        let fifo = dir.path().join("p");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        for p in [dir.path().join("missing"), fifo] {
            let got = sent(&p);
            assert_eq!(got.len(), 1, "{p:?}");
            assert_eq!(got[0].r#type, PacketType::PacketErr as i32);
            let msg = String::from_utf8_lossy(&got[0].data);
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            // A file removed since the walk is named as such, with what to do.
            let removed = p.ends_with("missing");
            assert_eq!(
                msg.contains("removed during the transfer"),
                removed,
                "{msg}"
            );
            assert_eq!(msg.contains(".dockerignore"), removed, "{msg}");
        }
    }

    #[test]
    fn decodes_encoded_metadata() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.append("exclude-patterns", "caf%C3%A9".parse().unwrap());
        md.append("exclude-patterns", "a+b".parse().unwrap());
        md.append("exclude-patterns-encoded", "1".parse().unwrap());
        assert_eq!(
            metadata_values(&md, "exclude-patterns"),
            vec!["café", "a b"]
        );
        let mut md = tonic::metadata::MetadataMap::new();
        md.append("followpaths", "a+b".parse().unwrap());
        assert_eq!(metadata_values(&md, "followpaths"), vec!["a+b"]);
    }
}
