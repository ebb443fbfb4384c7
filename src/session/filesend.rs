//! FileSend `DiffCopy` receiver: how client-side exports reach us. The method is declared with
//! `BytesMessage`, and the `tar`/`oci`/`docker` exporters do send that (a tar stream), but the
//! `local` exporter sends fsutil `Packet`s on it. So the service is served by hand with a raw
//! bytes codec and each stream is decoded according to the exporter it belongs to.
//!
//! Owns writing exported results to disk safely (temp file + rename; no path escapes the
//! destination). Knows nothing about how the build was requested.

use std::collections::{BTreeMap, HashMap};
use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status, Streaming};

use super::filetable::FileTable;
use crate::fs::{MODE_DIR, MODE_SYMLINK, MODE_TYPE};
use crate::proto::{Packet, PacketType};

/// Where a client-side exporter's result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    /// A tar stream (`tar`, `oci`, `docker` exporters) written atomically to this file.
    TarFile(PathBuf),
    /// A tar stream to our standard output.
    Stdout,
    /// A directory tree (`local` exporter), merged into this directory.
    LocalDir(PathBuf),
    /// A tar stream handed on chunk by chunk to whoever holds the receiving end (e.g. an
    /// image load into a Docker Engine), which sees the end of the stream as the end.
    Stream(StreamSink),
}

/// One message on an [`ExportTarget::Stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChunk {
    /// The next bytes of the export (≤ 3 MiB).
    Data(Bytes),
    /// The export ended complete; nothing follows. A channel that closes without it carried
    /// an export that broke off (the daemon failed it, the session ended), which a reader must
    /// treat as a failure, never as a short but whole export.
    End,
}

/// The sending end of an [`ExportTarget::Stream`]: used by the first export stream that
/// arrives, then dropped, so the receiver sees the end as soon as the export ends.
#[derive(Clone)]
pub struct StreamSink(Arc<Mutex<Option<mpsc::Sender<StreamChunk>>>>);

impl StreamSink {
    /// A sink and the receiver its chunks arrive on; `depth` chunks (≤ 3 MiB each) may wait
    /// unread before the export waits for the reader.
    pub fn new(depth: usize) -> (StreamSink, mpsc::Receiver<StreamChunk>) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        (StreamSink(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    fn take(&self) -> Option<mpsc::Sender<StreamChunk>> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSink")
    }
}

impl PartialEq for StreamSink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StreamSink {}

/// Raw message bytes in and out: decoding depends on the exporter, decided per stream.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[derive(Clone)]
pub struct FileSendService {
    inner: Arc<Inner>,
}

struct Inner {
    targets: BTreeMap<usize, ExportTarget>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl FileSendService {
    pub fn new(targets: BTreeMap<usize, ExportTarget>, errors: Arc<Mutex<Vec<String>>>) -> Self {
        FileSendService {
            inner: Arc::new(Inner { targets, errors }),
        }
    }
}

impl tonic::server::NamedService for FileSendService {
    const NAME: &'static str = "moby.filesync.v1.FileSend";
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<B> tower::Service<http::Request<B>> for FileSendService
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            if req.uri().path() != "/moby.filesync.v1.FileSend/DiffCopy" {
                let mut r = http::Response::new(tonic::body::Body::default());
                r.headers_mut().insert(
                    "grpc-status",
                    http::HeaderValue::from(tonic::Code::Unimplemented as i32),
                );
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                return Ok(r);
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(super::MAX_DECODE), Some(super::MAX_ENCODE));
            Ok(grpc.streaming(DiffCopy(inner), req).await)
        })
    }
}

struct DiffCopy(Arc<Inner>);

impl tonic::server::StreamingService<Bytes> for DiffCopy {
    type Response = Bytes;
    type ResponseStream = ReceiverStream<Result<Bytes, Status>>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let md = req.metadata();
            let id = md
                .get("buildkit-attachable-exporter-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let target = match id {
                Some(i) => inner.targets.get(&i).cloned(),
                // Daemons before exporter IDs existed only had one exporter.
                None if inner.targets.len() == 1 => inner.targets.values().next().cloned(),
                None => None,
            }
            .ok_or_else(|| Status::not_found("no client-side output for this exporter"))?;
            let stream = req.into_inner();
            let (tx, rx) = mpsc::channel(16);
            let errors = inner.errors.clone();
            tokio::spawn(async move {
                let res = match &target {
                    ExportTarget::LocalDir(dir) => receive_dir(dir, stream, &tx).await,
                    ExportTarget::TarFile(p) => receive_tar(Some(p), stream).await,
                    ExportTarget::Stdout => receive_tar(None, stream).await,
                    ExportTarget::Stream(sink) => match sink.take() {
                        Some(out) => receive_stream(stream, out).await,
                        None => Err("the export was sent twice".to_string()),
                    },
                };
                if let Err(e) = res {
                    if let Ok(mut v) = errors.lock() {
                        v.push(e.clone());
                    }
                    let _ = tx.send(Err(Status::internal(e))).await;
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Writes the tar stream to `dest` (atomically: temp file in the same directory, renamed on
/// success) or to stdout; stdout closed by its reader ends the output quietly (see [`discard`]).
async fn receive_tar(dest: Option<&Path>, mut stream: Streaming<Bytes>) -> Result<(), String> {
    let target = dest
        .map(crate::fs::OutputFile::at)
        .transpose()
        .map_err(|e| format!("cannot write the export: {e}"))?;
    let (file, mut out): (Option<tempfile::NamedTempFile>, Box<dyn Write + Send>) = match &target {
        Some(crate::fs::OutputFile::Replace(p)) => {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = crate::fs::new_temp_file_in(dir)
                .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
            let w = tmp
                .reopen()
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            (Some(tmp), Box::new(std::io::BufWriter::new(w)))
        }
        Some(crate::fs::OutputFile::WriteInto(p)) => {
            let w = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            (None, Box::new(std::io::BufWriter::new(w)))
        }
        None => (None, Box::new(std::io::stdout())),
    };
    let to_stdout = target.is_none();
    while let Some(msg) = stream.next().await {
        let raw = msg.map_err(|s| format!("export stream failed: {}", s.message()))?;
        let m = crate::proto::moby::filesync::v1::BytesMessage::decode(raw)
            .map_err(|e| format!("export stream: bad message: {e}"))?;
        // Blocking write of one ≤3 MiB chunk: acceptable on the session task.
        match out.write_all(&m.data) {
            Ok(()) => {}
            Err(e) if to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe => {
                discard(stream).await;
                return Ok(());
            }
            Err(e) => return Err(format!("writing export: {e}")),
        }
    }
    match out.flush() {
        Err(e) if to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.map_err(|e| format!("writing export: {e}"))?,
    }
    drop(out);
    if let (Some(tmp), Some(crate::fs::OutputFile::Replace(p))) = (file, &target) {
        tmp.persist(p)
            .map_err(|e| format!("cannot move export into {}: {}", p.display(), e.error))?;
    }
    Ok(())
}

/// The rest of an export whose reader is gone: standard output was closed by its reader
/// (`bk-build build -o - | head -c 100`). As for every other command's output, that ends the
/// output quietly rather than failing the build: the export is read to its end and dropped,
/// so the daemon finishes the build and its other outputs (`--push`, `--metadata-file`), and
/// nothing reports a broken pipe.
async fn discard(mut stream: Streaming<Bytes>) {
    while let Some(Ok(_)) = stream.next().await {}
}

/// Hands the tar stream on to `out`, chunk by chunk, then [`StreamChunk::End`] when it ended
/// complete; on a failure `out` is dropped without it.
async fn receive_stream(
    mut stream: Streaming<Bytes>,
    out: mpsc::Sender<StreamChunk>,
) -> Result<(), String> {
    let stopped = |_| "the export's reader stopped reading (see its error)".to_string();
    while let Some(msg) = stream.next().await {
        let raw = msg.map_err(|s| format!("export stream failed: {}", s.message()))?;
        let m = crate::proto::moby::filesync::v1::BytesMessage::decode(raw)
            .map_err(|e| format!("export stream: bad message: {e}"))?;
        out.send(StreamChunk::Data(Bytes::from(m.data)))
            .await
            .map_err(stopped)?;
    }
    out.send(StreamChunk::End).await.map_err(stopped)
}

/// Resolves a daemon-supplied relative path under `root`, refusing anything that escapes it.
fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("refusing unsafe path {rel:?} from the daemon"));
    }
    Ok(root.join(p))
}

fn set_mtime(path: &Path, ns: i64, follow: bool) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let ts = libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [ts, ts];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: c is a valid NUL-terminated path and times points at two timespecs.
    unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags);
    }
}

/// Go FileMode → Unix permission bits (incl. setuid/setgid/sticky).
fn unix_perm(go_mode: u32) -> u32 {
    let mut m = go_mode & 0o777;
    if go_mode & crate::fs::MODE_SETUID != 0 {
        m |= 0o4000;
    }
    if go_mode & crate::fs::MODE_SETGID != 0 {
        m |= 0o2000;
    }
    if go_mode & crate::fs::MODE_STICKY != 0 {
        m |= 0o1000;
    }
    m
}

/// Sets extended attributes without following links, as fsutil's receiver does: best effort,
/// since buildx ignores the ones it cannot set (e.g. `security.*` without privileges).
fn set_xattrs(path: &Path, xattrs: &[(String, Vec<u8>)]) {
    for (name, value) in xattrs {
        let _ = xattr::set(path, name, value);
    }
}

/// Receives a `local` export into `root` (merged into what is there, as buildx does). The
/// fsutil exchange: STATs (we create each entry), a REQ for every regular file, its DATA until
/// an empty chunk, then FIN both ways. Any entry that cannot be created as sent ends the export
/// with an error naming it (and an ERR packet to the daemon): nothing is dropped silently.
///
/// Disk work runs on a blocking thread, never on the runtime's workers, so the session's
/// connection keeps moving while files are written.
async fn receive_dir(
    root: &Path,
    stream: Streaming<Bytes>,
    tx: &mpsc::Sender<Result<Bytes, Status>>,
) -> Result<(), String> {
    let root = root.to_path_buf();
    let sender = tx.clone();
    let rt = tokio::runtime::Handle::current();
    let res =
        tokio::task::spawn_blocking(move || DirReceiver::new(root)?.run(stream, &sender, &rt))
            .await
            .unwrap_or_else(|e| Err(format!("the export receiver stopped: {e}")));
    if let Err(msg) = &res {
        // The fsutil way to fail the transfer: the daemon reports "error from receiver: …".
        let err = Packet {
            r#type: PacketType::PacketErr as i32,
            data: msg.clone().into_bytes(),
            ..Default::default()
        };
        let _ = tx.send(Ok(Bytes::from(err.encode_to_vec()))).await;
    }
    res
}

/// The state of one `local` export while its packets arrive.
struct DirReceiver {
    root: PathBuf,
    /// STAT index of the next entry (the id the daemon's DATA refers to).
    next_id: u32,
    /// Each requested file's [`FileRecord`], by id; spilled to disk past a few thousand, so
    /// memory stays flat however many files the export has.
    requested: FileTable,
    requested_count: u64,
    /// Which requested ids were received completely (one bit per STAT).
    done: Vec<u64>,
    done_count: u64,
    /// Files whose data is arriving now (the daemon interleaves a few at a time).
    open: HashMap<u32, std::fs::File>,
    /// Directories with their final permissions and mtime, applied last, deepest first: until
    /// then they stay writable (a read-only directory of the image must still be filled) and
    /// creating their children would move their mtimes.
    dirs: Vec<(PathBuf, u32, i64)>,
    /// The directories (relative paths) on the walk's current depth-first path: every entry's
    /// parent must be one, i.e. a directory this export created or checked, so no path can
    /// lead through a symlink out of the destination (fsutil's receiver checks the same).
    open_dirs: Vec<String>,
    stats_done: bool,
    fin_sent: bool,
}

/// What a requested file needs once its data is complete, stored in the [`FileTable`].
struct FileRecord {
    mode: u32,
    mtime: i64,
    path: String,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl FileRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.path.len());
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        let mut field = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        field(self.path.as_bytes());
        for (name, value) in &self.xattrs {
            field(name.as_bytes());
            field(value);
        }
        out
    }

    fn decode(mut b: &[u8]) -> Option<FileRecord> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (b.get(..n)?, b.get(n..)?);
            *b = rest;
            Some(head)
        }
        fn field<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
            let len = u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize;
            take(b, len)
        }
        let mode = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
        let mtime = i64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
        let path = String::from_utf8(field(&mut b)?.to_vec()).ok()?;
        let mut xattrs = Vec::new();
        while !b.is_empty() {
            let name = String::from_utf8(field(&mut b)?.to_vec()).ok()?;
            xattrs.push((name, field(&mut b)?.to_vec()));
        }
        Some(FileRecord {
            mode,
            mtime,
            path,
            xattrs,
        })
    }
}

impl DirReceiver {
    fn new(root: PathBuf) -> Result<DirReceiver, String> {
        // A new output directory is private to its owner, as buildx creates it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| format!("cannot create output directory {}: {e}", root.display()))?;
        Ok(DirReceiver {
            root,
            next_id: 0,
            requested: FileTable::default(),
            requested_count: 0,
            done: Vec::new(),
            done_count: 0,
            open: HashMap::new(),
            dirs: Vec::new(),
            open_dirs: Vec::new(),
            stats_done: false,
            fin_sent: false,
        })
    }

    fn run(
        &mut self,
        mut stream: Streaming<Bytes>,
        tx: &mpsc::Sender<Result<Bytes, Status>>,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), String> {
        let send = |p: Packet| {
            tx.blocking_send(Ok(Bytes::from(p.encode_to_vec())))
                .map_err(|_| "export stream closed".to_string())
        };
        while let Some(msg) = rt.block_on(stream.next()) {
            let raw = msg.map_err(|s| format!("export stream failed: {}", s.message()))?;
            let p = Packet::decode(raw).map_err(|e| {
                format!("export stream: a packet from the daemon cannot be read: {e}")
            })?;
            match PacketType::try_from(p.r#type) {
                Ok(PacketType::PacketStat) => match p.stat {
                    None => self.stats_done = true,
                    Some(st) => {
                        let id = self.next_id;
                        self.next_id =
                            id.checked_add(1).ok_or("export stream: too many entries")?;
                        if self.create(id, st)? {
                            send(Packet {
                                r#type: PacketType::PacketReq as i32,
                                id,
                                ..Default::default()
                            })?;
                        }
                    }
                },
                Ok(PacketType::PacketData) => self.data(p.id, &p.data)?,
                Ok(PacketType::PacketFin) => break,
                Ok(PacketType::PacketErr) => {
                    return Err(format!(
                        "error from sender: {}",
                        String::from_utf8_lossy(&p.data)
                    ))
                }
                Ok(PacketType::PacketReq) | Err(_) => {
                    return Err(format!(
                        "export stream: unexpected packet type {} from the daemon",
                        p.r#type
                    ))
                }
            }
            if self.stats_done && self.done_count == self.requested_count && !self.fin_sent {
                self.finish_dirs();
                send(Packet {
                    r#type: PacketType::PacketFin as i32,
                    ..Default::default()
                })?;
                self.fin_sent = true;
            }
        }
        if !self.fin_sent {
            return Err("export stream ended before all files arrived".into());
        }
        Ok(())
    }

    /// Creates the entry of one STAT; true when it is a regular file whose data to request.
    fn create(&mut self, id: u32, st: crate::proto::Stat) -> Result<bool, String> {
        let words = id as usize / 64 + 1;
        if self.done.len() < words {
            self.done.resize(words, 0);
        }
        use crate::fs::{MODE_CHAR_DEVICE, MODE_DEVICE, MODE_NAMED_PIPE, MODE_SOCKET};
        let target = safe_join(&self.root, &st.path)?;
        let parent = st.path.rsplit_once('/').map_or("", |(p, _)| p);
        while self.open_dirs.last().is_some_and(|d| d != parent) {
            self.open_dirs.pop();
        }
        if !parent.is_empty() && self.open_dirs.is_empty() {
            return Err(format!(
                "export stream: {:?} arrived without its directory before it",
                st.path
            ));
        }
        let io = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", target.display());
        let xattrs: Vec<(String, Vec<u8>)> = st.xattrs.into_iter().collect();
        let perm = unix_perm(st.mode);
        if st.mode & MODE_DIR != 0 {
            match std::fs::symlink_metadata(&target) {
                // Merged into an existing directory; writable until the end (see `dirs`).
                Ok(md) if md.is_dir() => {
                    std::fs::set_permissions(&target, Permissions::from_mode(0o700 | perm))
                        .map_err(|e| io("update directory", e))?;
                }
                Ok(_) => {
                    std::fs::remove_file(&target).map_err(|e| io("replace", e))?;
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(|e| io("create directory", e))?;
                }
                Err(_) => std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&target)
                    .map_err(|e| io("create directory", e))?,
            }
            set_xattrs(&target, &xattrs);
            self.dirs.push((target, perm, st.mod_time));
            self.open_dirs.push(st.path);
            return Ok(false);
        }
        remove_existing(&target).map_err(|e| io("replace", e))?;
        if st.mode & MODE_SYMLINK != 0 {
            std::os::unix::fs::symlink(&st.linkname, &target)
                .map_err(|e| io("create symlink", e))?;
            set_xattrs(&target, &xattrs);
            set_mtime(&target, st.mod_time, false);
            return Ok(false);
        }
        if st.mode & (MODE_NAMED_PIPE | MODE_DEVICE) != 0 {
            let (kind, what) = if st.mode & MODE_NAMED_PIPE != 0 {
                (libc::S_IFIFO, "FIFO")
            } else if st.mode & MODE_CHAR_DEVICE != 0 {
                (libc::S_IFCHR, "character device")
            } else {
                (libc::S_IFBLK, "block device")
            };
            mknod(&target, kind | perm, st.devmajor, st.devminor).map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    " (creating device nodes needs root, i.e. CAP_MKNOD, as with docker buildx; \
                     export to a tar file with -o type=tar,dest=FILE instead)"
                } else {
                    ""
                };
                format!("cannot create {what} {}: {e}{hint}", target.display())
            })?;
            self.finish_entry(&target, perm, st.mod_time, &xattrs)?;
            return Ok(false);
        }
        if st.mode & MODE_TYPE & !MODE_SOCKET != 0 {
            return Err(format!(
                "cannot create {}: the daemon sent a file type bk-build does not know (Go file mode {:#x})",
                target.display(),
                st.mode
            ));
        }
        if st.mode & MODE_SOCKET != 0 {
            // fsutil senders clear this bit; should one not, a socket is what fsutil makes of
            // it anyway: an empty regular file (there is no content to request).
            std::fs::File::create(&target).map_err(|e| io("create", e))?;
            self.finish_entry(&target, perm, st.mod_time, &xattrs)?;
            return Ok(false);
        }
        if !st.linkname.is_empty() {
            // A hard link to an earlier regular file of this export (never to anything else:
            // the path may not lead through a symlink).
            let src = safe_join(&self.root, &st.linkname)?;
            let inside = src
                .parent()
                .and_then(|p| p.canonicalize().ok())
                .zip(self.root.canonicalize().ok())
                .is_some_and(|(p, r)| p.starts_with(r));
            let regular = std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file());
            if !inside || !regular {
                return Err(format!(
                    "export stream: {:?} is a hard link to {:?}, which is not a file of this export",
                    st.path, st.linkname
                ));
            }
            std::fs::hard_link(&src, &target).map_err(|e| {
                format!(
                    "cannot create {} as a hard link to {}: {e}",
                    target.display(),
                    src.display()
                )
            })?;
            self.finish_entry(&target, perm, st.mod_time, &xattrs)?;
            return Ok(false);
        }
        // Created now (its place in the tree is taken in order); filled when its data comes.
        std::fs::File::create(&target).map_err(|e| io("create", e))?;
        let rec = FileRecord {
            mode: st.mode,
            mtime: st.mod_time,
            path: st.path,
            xattrs,
        };
        self.requested.push_record(id, &rec.encode());
        self.requested_count += 1;
        Ok(true)
    }

    /// Permissions (mknod and create are subject to the umask), xattrs, then the mtime.
    fn finish_entry(
        &self,
        target: &Path,
        perm: u32,
        mtime: i64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), String> {
        std::fs::set_permissions(target, Permissions::from_mode(perm))
            .map_err(|e| format!("cannot set the mode of {}: {e}", target.display()))?;
        // After the content and the mode: writing a file drops its `security.capability`.
        set_xattrs(target, xattrs);
        set_mtime(target, mtime, true);
        Ok(())
    }

    /// One DATA packet: a chunk of file `id`, or (empty) the end of it.
    fn data(&mut self, id: u32, chunk: &[u8]) -> Result<(), String> {
        let word = (id / 64) as usize;
        let bit = 1u64 << (id % 64);
        if self.done.get(word).is_none_or(|w| w & bit != 0) {
            return Err(format!("export stream: data for unknown file id {id}"));
        }
        let rec = match self.requested.get_record(id) {
            Ok(Some(bytes)) => FileRecord::decode(bytes)
                .ok_or_else(|| format!("export stream: bad record for file id {id}"))?,
            Ok(None) => return Err(format!("export stream: data for unknown file id {id}")),
            Err(e) => return Err(format!("export stream: looking up file id {id}: {e}")),
        };
        let target = self.root.join(&rec.path);
        if !chunk.is_empty() {
            let file = match self.open.entry(id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&target)
                        .map_err(|e| format!("cannot write {}: {e}", target.display()))?,
                ),
            };
            return file
                .write_all(chunk)
                .map_err(|e| format!("cannot write {}: {e}", target.display()));
        }
        self.open.remove(&id);
        self.finish_entry(&target, unix_perm(rec.mode), rec.mtime, &rec.xattrs)?;
        self.done[word] |= bit;
        self.done_count += 1;
        Ok(())
    }

    /// Directory permissions and mtimes last, deepest first, since creating children changes
    /// the mtimes and a read-only directory could not have been filled.
    fn finish_dirs(&self) {
        for (d, perm, t) in self.dirs.iter().rev() {
            let _ = std::fs::set_permissions(d, Permissions::from_mode(*perm));
            set_mtime(d, *t, true);
        }
    }
}

/// `mknod(2)` with fsutil's device number encoding (`unix.Mkdev`).
fn mknod(path: &Path, mode: u32, major: i64, minor: i64) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let dev = libc::makedev(major as u32, minor as u32);
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn remove_existing(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes() {
        let r = Path::new("/out");
        assert_eq!(safe_join(r, "a/b").unwrap(), PathBuf::from("/out/a/b"));
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "./a"] {
            assert!(safe_join(r, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn perm_bits() {
        assert_eq!(unix_perm(0o755), 0o755);
        assert_eq!(unix_perm(crate::fs::MODE_SETUID | 0o755), 0o4755);
        assert_eq!(unix_perm(crate::fs::MODE_STICKY | 0o777), 0o1777);
    }

    #[test]
    fn file_records_round_trip() {
        let rec = FileRecord {
            mode: crate::fs::MODE_SETUID | 0o755,
            mtime: -5,
            path: "a/ünï b".into(),
            xattrs: vec![
                ("user.a".into(), vec![]),
                ("security.capability".into(), vec![1, 0, 2]),
            ],
        };
        let bytes = rec.encode();
        assert!(FileRecord::decode(&bytes[..9]).is_none());
        let back = FileRecord::decode(&bytes).unwrap();
        assert_eq!(
            (back.mode, back.mtime, back.path, back.xattrs),
            (rec.mode, rec.mtime, rec.path, rec.xattrs)
        );
    }

    fn stat(path: &str, mode: u32) -> crate::proto::Stat {
        crate::proto::Stat {
            path: path.into(),
            mode,
            mod_time: 1_600_000_000_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn entries_are_created_with_their_type_or_the_export_fails() {
        use crate::fs::{MODE_IRREGULAR, MODE_NAMED_PIPE, MODE_SOCKET};
        use std::os::unix::fs::FileTypeExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out");
        let mut r = DirReceiver::new(root.clone()).unwrap();
        let md = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();

        assert!(!r.create(0, stat("d", MODE_DIR | 0o555)).unwrap());
        assert!(!r
            .create(1, stat("d/pipe", MODE_NAMED_PIPE | 0o640))
            .unwrap());
        assert!(md("d/pipe").file_type().is_fifo());
        assert_eq!(md("d/pipe").permissions().mode() & 0o7777, 0o640);
        // A socket bit some sender did not clear: the empty file fsutil makes of it.
        assert!(!r.create(2, stat("d/sock", MODE_SOCKET | 0o600)).unwrap());
        assert!(md("d/sock").is_file());
        assert_eq!(md("d/sock").len(), 0);
        // A regular file is requested; the read-only directory is still writable until the end.
        assert!(r.create(3, stat("d/f", 0o400)).unwrap());
        r.data(3, b"hello").unwrap();
        r.data(3, b"").unwrap();
        assert_eq!(std::fs::read(root.join("d/f")).unwrap(), b"hello");
        assert_eq!(md("d/f").permissions().mode() & 0o7777, 0o400);
        assert!(
            r.data(3, b"again").is_err(),
            "a finished file takes no more data"
        );
        assert!(r.data(1, b"x").is_err(), "a FIFO has no data");
        r.finish_dirs();
        assert_eq!(md("d").permissions().mode() & 0o7777, 0o555);

        let err = r
            .create(4, stat("weird", MODE_IRREGULAR | 0o644))
            .unwrap_err();
        assert!(err.contains("weird") && err.contains("file type"), "{err}");
        let err = r.create(5, stat("nowhere/x", 0o644)).unwrap_err();
        assert!(err.contains("without its directory"), "{err}");
    }

    #[test]
    fn nothing_is_written_through_a_symlink_out_of_the_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        let mut r = DirReceiver::new(root.clone()).unwrap();
        r.create(0, {
            let mut s = stat("l", MODE_SYMLINK | 0o777);
            s.linkname = outside.display().to_string();
            s
        })
        .unwrap();
        let err = r.create(1, stat("l/x", 0o644)).unwrap_err();
        assert!(err.contains("without its directory"), "{err}");
        let err = r
            .create(2, {
                let mut s = stat("h", 0o644);
                s.linkname = "l/secret".into();
                s
            })
            .unwrap_err();
        assert!(err.contains("hard link"), "{err}");
        assert!(!outside.join("x").exists());
    }

    #[test]
    fn device_nodes_are_made_or_the_export_fails_naming_them() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out");
        let mut r = DirReceiver::new(root.clone()).unwrap();
        let char_device = crate::fs::MODE_DEVICE | crate::fs::MODE_CHAR_DEVICE;
        let mut st = stat("null", char_device | 0o666);
        st.devmajor = 1;
        st.devminor = 3;
        match r.create(0, st) {
            Ok(requested) => {
                assert!(!requested);
                let md = std::fs::symlink_metadata(root.join("null")).unwrap();
                assert!(md.file_type().is_char_device());
                assert_eq!(md.rdev(), libc::makedev(1, 3));
                assert_eq!(md.permissions().mode() & 0o7777, 0o666);
            }
            // Without CAP_MKNOD: an error that names the node and says why.
            Err(e) => {
                assert!(e.contains("null") && e.contains("needs root"), "{e}");
                return;
            }
        }
        let mut st = stat("loop9", crate::fs::MODE_DEVICE | 0o660);
        (st.devmajor, st.devminor) = (7, 0x12345);
        assert!(!r.create(1, st).unwrap());
        let md = std::fs::symlink_metadata(root.join("loop9")).unwrap();
        assert!(md.file_type().is_block_device());
        assert_eq!(md.rdev(), libc::makedev(7, 0x12345));
    }
}
