//! FileSend `DiffCopy` receiver: how client-side exports reach us. The method is declared with
//! `BytesMessage`, and the `tar`/`oci`/`docker` exporters do send that (a tar stream), but the
//! `local` exporter sends fsutil `Packet`s on it. So the service is served by hand with a raw
//! bytes codec and each stream is decoded according to the exporter it belongs to.
//!
//! Owns writing exported results to disk safely (temp file + rename; no path escapes the
//! destination). Knows nothing about how the build was requested.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
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

use crate::fs::{MODE_DIR, MODE_SYMLINK};
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

/// The sending end of an [`ExportTarget::Stream`]: used by the first export stream that
/// arrives, then dropped, so the receiver sees the end as soon as the export ends.
#[derive(Clone)]
pub struct StreamSink(Arc<Mutex<Option<mpsc::Sender<Bytes>>>>);

impl StreamSink {
    /// A sink and the receiver its chunks arrive on; `depth` chunks (≤ 3 MiB each) may wait
    /// unread before the export waits for the reader.
    pub fn new(depth: usize) -> (StreamSink, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        (StreamSink(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    fn take(&self) -> Option<mpsc::Sender<Bytes>> {
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
/// success) or to stdout.
async fn receive_tar(dest: Option<&Path>, mut stream: Streaming<Bytes>) -> Result<(), String> {
    let (file, mut out): (Option<tempfile::NamedTempFile>, Box<dyn Write + Send>) = match dest {
        Some(p) => {
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
        None => (None, Box::new(std::io::stdout())),
    };
    while let Some(msg) = stream.next().await {
        let raw = msg.map_err(|s| format!("export stream failed: {}", s.message()))?;
        let m = crate::proto::moby::filesync::v1::BytesMessage::decode(raw)
            .map_err(|e| format!("export stream: bad message: {e}"))?;
        // Blocking write of one ≤3 MiB chunk: acceptable on the session task.
        out.write_all(&m.data)
            .map_err(|e| format!("writing export: {e}"))?;
    }
    out.flush().map_err(|e| format!("writing export: {e}"))?;
    drop(out);
    if let (Some(tmp), Some(p)) = (file, dest) {
        tmp.persist(p)
            .map_err(|e| format!("cannot move export into {}: {}", p.display(), e.error))?;
    }
    Ok(())
}

/// Hands the tar stream on to `out`, chunk by chunk; dropping `out` at the end ends it.
async fn receive_stream(
    mut stream: Streaming<Bytes>,
    out: mpsc::Sender<Bytes>,
) -> Result<(), String> {
    while let Some(msg) = stream.next().await {
        let raw = msg.map_err(|s| format!("export stream failed: {}", s.message()))?;
        let m = crate::proto::moby::filesync::v1::BytesMessage::decode(raw)
            .map_err(|e| format!("export stream: bad message: {e}"))?;
        out.send(Bytes::from(m.data))
            .await
            .map_err(|_| "the export's reader stopped reading (see its error)".to_string())?;
    }
    Ok(())
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

struct PendingFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    mode: u32,
    mtime: i64,
}

/// Receives a `local` export: STATs (we create dirs/links/files), REQ for every regular file,
/// DATA until an empty chunk per file, then FIN both ways.
async fn receive_dir(
    root: &Path,
    mut stream: Streaming<Bytes>,
    tx: &mpsc::Sender<Result<Bytes, Status>>,
) -> Result<(), String> {
    std::fs::create_dir_all(root)
        .map_err(|e| format!("cannot create output directory {}: {e}", root.display()))?;
    let send = |p: Packet| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(Bytes::from(p.encode_to_vec())))
                .await
                .map_err(|_| "export stream closed".to_string())
        }
    };
    let mut id: u32 = 0;
    let mut pending: HashMap<u32, PendingFile> = HashMap::new();
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    let mut by_path: HashMap<String, PathBuf> = HashMap::new();
    let mut stats_done = false;
    let mut fin_sent = false;
    while let Some(msg) = stream.next().await {
        let raw = msg.map_err(|s| format!("export stream failed: {}", s.message()))?;
        let p = Packet::decode(raw).map_err(|e| format!("export stream: bad packet: {e}"))?;
        match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketStat) => {
                let Some(st) = p.stat else {
                    stats_done = true;
                    maybe_finish(stats_done, &pending, &mut fin_sent, &dirs, &send).await?;
                    continue;
                };
                let this_id = id;
                id += 1;
                let target = safe_join(root, &st.path)?;
                let io = |e: std::io::Error| format!("writing {}: {e}", target.display());
                if st.mode & MODE_DIR != 0 {
                    if let Ok(md) = std::fs::symlink_metadata(&target) {
                        if !md.is_dir() {
                            std::fs::remove_file(&target).map_err(io)?;
                        }
                    }
                    std::fs::create_dir_all(&target).map_err(io)?;
                    std::fs::set_permissions(
                        &target,
                        std::fs::Permissions::from_mode(unix_perm(st.mode)),
                    )
                    .map_err(io)?;
                    dirs.push((target, st.mod_time));
                } else if st.mode & MODE_SYMLINK != 0 {
                    remove_existing(&target).map_err(io)?;
                    std::os::unix::fs::symlink(&st.linkname, &target).map_err(io)?;
                    set_mtime(&target, st.mod_time, false);
                } else if crate::fs::is_regular(st.mode) {
                    remove_existing(&target).map_err(io)?;
                    if !st.linkname.is_empty() {
                        // Hard link to an earlier entry of this stream.
                        let src = by_path.get(&st.linkname).cloned().ok_or_else(|| {
                            format!("hard link {} to unknown {}", st.path, st.linkname)
                        })?;
                        std::fs::hard_link(&src, &target).map_err(io)?;
                    } else {
                        let f = std::fs::File::create(&target).map_err(io)?;
                        pending.insert(
                            this_id,
                            PendingFile {
                                path: target.clone(),
                                file: Some(f),
                                mode: st.mode,
                                mtime: st.mod_time,
                            },
                        );
                        send(Packet {
                            r#type: PacketType::PacketReq as i32,
                            id: this_id,
                            ..Default::default()
                        })
                        .await?;
                    }
                    by_path.insert(st.path.clone(), target);
                }
                // Devices, pipes and sockets are not recreated in a local export.
            }
            Ok(PacketType::PacketData) => {
                let done = {
                    let f = pending
                        .get_mut(&p.id)
                        .ok_or_else(|| format!("data for unknown file id {}", p.id))?;
                    if p.data.is_empty() {
                        true
                    } else {
                        if let Some(file) = f.file.as_mut() {
                            file.write_all(&p.data)
                                .map_err(|e| format!("writing {}: {e}", f.path.display()))?;
                        }
                        false
                    }
                };
                if done {
                    if let Some(mut f) = pending.remove(&p.id) {
                        drop(f.file.take());
                        std::fs::set_permissions(
                            &f.path,
                            std::fs::Permissions::from_mode(unix_perm(f.mode)),
                        )
                        .map_err(|e| format!("writing {}: {e}", f.path.display()))?;
                        set_mtime(&f.path, f.mtime, true);
                    }
                    maybe_finish(stats_done, &pending, &mut fin_sent, &dirs, &send).await?;
                }
            }
            Ok(PacketType::PacketFin) => break,
            Ok(PacketType::PacketErr) => {
                return Err(format!(
                    "error from sender: {}",
                    String::from_utf8_lossy(&p.data)
                ))
            }
            _ => {}
        }
    }
    if !fin_sent {
        return Err("export stream ended before all files arrived".into());
    }
    Ok(())
}

/// Once every STAT arrived and every requested file is written: fix directory mtimes and
/// tell the sender we are done (FIN), exactly once.
async fn maybe_finish<F, Fut>(
    stats_done: bool,
    pending: &HashMap<u32, PendingFile>,
    fin_sent: &mut bool,
    dirs: &[(PathBuf, i64)],
    send: &F,
) -> Result<(), String>
where
    F: Fn(Packet) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    if stats_done && pending.is_empty() && !*fin_sent {
        finish_dirs(dirs);
        send(Packet {
            r#type: PacketType::PacketFin as i32,
            ..Default::default()
        })
        .await?;
        *fin_sent = true;
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

/// Directory mtimes last, deepest first, since creating children changes them.
fn finish_dirs(dirs: &[(PathBuf, i64)]) {
    for (d, t) in dirs.iter().rev() {
        set_mtime(d, *t, true);
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
}
