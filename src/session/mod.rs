//! The session: a `Control.Session` call that carries an HTTP/2 connection in the opposite
//! direction, on which *we* are the gRPC server and the daemon calls back for files (FileSync),
//! exported results (FileSend), client-side OCI layouts (Content: local caches, `oci-layout://`
//! contexts), registry credentials (Auth), secrets, SSH agents and uploads (a tar context on
//! standard input).
//!
//! This module owns the tunnel, the session headers and the assembly of services. It knows
//! which directories and outputs it serves, but not what is being built or why.

pub mod auth;
pub mod content;
pub mod copies;
pub mod filesend;
pub mod filesync;
mod filetable;
pub mod oci_layout;
pub mod secrets;
mod server;
pub mod ssh;
pub mod ssh_keys;
pub mod upload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::proto::control::{control_client::ControlClient, BytesMessage};
use crate::proto::moby::buildkit::secrets::v1::secrets_server::SecretsServer;
use crate::proto::moby::filesync::v1::auth_server::AuthServer;
use crate::proto::moby::filesync::v1::file_sync_server::FileSyncServer;
use crate::proto::moby::sshforward::v1::ssh_server::SshServer;

pub use content::{ContentStores, StoreSpec};
pub use filesend::{ExportTarget, FileSendService, StreamChunk, StreamSink};
pub use filesync::{SyncDir, SyncRequest, SyncStats};

/// gRPC limits: the daemon may send large messages; requests stay under old daemons' 4 MiB.
pub(crate) const MAX_DECODE: usize = 64 << 20;
pub(crate) const MAX_ENCODE: usize = 16 << 20;
/// Tunnel chunk size: BuildKit reads 32 KiB at a time; old daemons refuse messages > 4 MiB.
const TUNNEL_CHUNK: usize = 32 << 10;

/// Everything one session serves: plain data, assembled by the build layer.
#[derive(Default)]
pub struct SessionSpec {
    /// A name shown in daemon logs (informational).
    pub name: String,
    /// Stable key for incremental context sync; see [`shared_key`].
    pub shared_key: String,
    /// Local directories the daemon may sync, by local name (`context`, `dockerfile`, named).
    pub dirs: BTreeMap<String, SyncDir>,
    /// Client-side exporter outputs, by exporter index in the SolveRequest.
    pub exports: BTreeMap<usize, ExportTarget>,
    /// OCI layouts the daemon may read or write, by store ID.
    pub content: ContentStores,
    pub auth: Option<auth::AuthProvider>,
    pub secrets: Option<secrets::SecretStore>,
    pub ssh: Option<ssh::SshForwarder>,
    /// Streams the daemon pulls through the upload service, by ID (a tar context on
    /// standard input).
    pub uploads: BTreeMap<String, upload::Upload>,
}

/// A running session. Dropping it without [`Session::close`] aborts the tunnel.
pub struct Session {
    pub id: String,
    pub stats: Arc<SyncStats>,
    close_tx: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// Watches the daemon's health checks; stopped by [`Session::close`].
    watchdog: JoinHandle<()>,
    /// Why the daemon no longer serves this session, once it does not (see [`Session::lost`]).
    lost: tokio::sync::watch::Receiver<Option<String>>,
    export_errors: Arc<std::sync::Mutex<Vec<String>>>,
}

/// How often BuildKit checks a session's health while it holds it (`session/grpc.go`
/// `monitorHealth`): every 5 s, each check allowed 30 s (15 s, and two failures, in later
/// versions). When checks fail it drops the session, and until BuildKit v0.30 it did so
/// without ending the session's stream, leaving calls in flight on it (an export) waiting for
/// ever. The checks stopping is then the only sign.
const DAEMON_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// The silence after which the daemon is taken to have dropped the session: a daemon that
/// still holds it checks at least every [`DAEMON_HEALTH_INTERVAL`] plus one check's timeout,
/// so well within this.
const HEALTH_SILENCE: Duration = Duration::from_secs(60);

/// When the daemon last checked this session's health, or when the session started if it
/// has not checked yet.
///
/// The clock starts with the session, not with the first check: a daemon attaches a session
/// and checks it from then on (BuildKit `session/grpc.go`, `grpcClientConn` starts
/// `monitorHealth` with the connection), so no check for [`HEALTH_SILENCE`] since the start is
/// as sure a sign of a dropped session as a gap after a check. A build whose export starts
/// within the first interval, with the network stalling right then, would otherwise never be
/// judged: the one check the daemon sent may be cancelled before it reaches us.
struct HealthWatch {
    last: std::sync::Mutex<Instant>,
}

impl HealthWatch {
    /// A watch whose clock starts at `start` (the session's start).
    fn since(start: Instant) -> Self {
        HealthWatch {
            last: std::sync::Mutex::new(start),
        }
    }

    fn checked(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }

    /// How long the daemon has not checked (counted from the session's start until the
    /// first check), once that is longer than [`HEALTH_SILENCE`].
    fn silence(&self) -> Option<Duration> {
        let silent = self.last.lock().ok()?.elapsed();
        (silent > HEALTH_SILENCE).then_some(silent)
    }
}

/// The `grpc.health.v1.Health` service, noting every check in a [`HealthWatch`].
#[derive(Clone)]
struct WatchedHealth<S> {
    inner: S,
    watch: Arc<HealthWatch>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for WatchedHealth<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for WatchedHealth<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.watch.checked();
        self.inner.call(req)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot open a session with the daemon: {0}")]
    Open(String),
}

/// Random 25-character base-36 ID, the shape BuildKit uses for session IDs and build refs.
pub fn random_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..25)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A session shared key stable for one directory on one machine, so the daemon syncs into
/// the directory it kept from the previous build and only changed files move.
pub fn shared_key(dir: &std::path::Path, node_id: &str) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let h = blake3::hash(abs.as_os_str().as_encoded_bytes());
    let base = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{base}-{}:{node_id}", &h.to_hex()[..16])
}

/// bk-build's per-user state directory: `$XDG_STATE_HOME/bk-build`, else
/// `~/.local/state/bk-build`; `None` when neither variable is set. A relative
/// `XDG_STATE_HOME` is ignored, as the XDG Base Directory specification says (it would name
/// another directory from every working directory).
pub(crate) fn state_home() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|v| v.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("bk-build"))
}

/// This machine's node ID (16 hex chars), persisted so shared keys survive across runs.
/// Stored in `$XDG_STATE_HOME/bk-build/node-id` (or `~/.local/state/...`); falls back to a
/// hash of the hostname when the state directory is not writable.
pub fn node_id() -> String {
    if let Some(dir) = state_home() {
        let file = dir.join("node-id");
        if let Ok(s) = std::fs::read_to_string(&file) {
            let s = s.trim();
            if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return s.to_string();
            }
        }
        let id = format!("{:016x}", rand::random::<u64>());
        if std::fs::create_dir_all(&dir).is_ok() {
            if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&dir) {
                use std::io::Write;
                if tmp.write_all(id.as_bytes()).is_ok() && tmp.persist_noclobber(&file).is_ok() {
                    return id;
                }
                // Lost a race with another process: use what it wrote.
                if let Ok(s) = std::fs::read_to_string(&file) {
                    return s.trim().to_string();
                }
            }
        }
    }
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    blake3::hash(host.trim().as_bytes()).to_hex()[..16].to_string()
}

impl Session {
    /// Opens `Control.Session` on `channel` and serves `spec` inside it until [`Session::close`].
    pub async fn start(channel: Channel, spec: SessionSpec) -> Result<Session, SessionError> {
        let id = random_id();
        let stats = Arc::new(SyncStats::default());
        let export_errors = Arc::new(std::sync::Mutex::new(Vec::new()));

        let (health_reporter, health) = tonic_health::server::health_reporter();
        // The daemon checks service "" every 5 s and drops the session after two failures.
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;

        let mut methods: Vec<&'static str> = vec!["/grpc.health.v1.Health/Check"];
        let health_watch = Arc::new(HealthWatch::since(Instant::now()));
        let health = WatchedHealth {
            inner: health,
            watch: health_watch.clone(),
        };
        // Served by our own HTTP/2 server (see `server`), which sets the windows and limits.
        let mut router = tonic::service::Routes::new(health);

        let filesync = filesync::FileSyncService::new(spec.dirs, stats.clone());
        methods.push("/moby.filesync.v1.FileSync/DiffCopy");
        methods.push("/moby.filesync.v1.FileSync/TarStream");
        router = router.add_service(
            FileSyncServer::new(filesync)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        );
        if !spec.exports.is_empty() {
            methods.push("/moby.filesync.v1.FileSend/DiffCopy");
            router = router.add_service(FileSendService::new(spec.exports, export_errors.clone()));
        }
        if !spec.content.is_empty() {
            methods.extend(content::METHODS);
            router = router.add_service(spec.content.service());
        }
        if let Some(a) = spec.auth {
            methods.extend([
                "/moby.filesync.v1.Auth/Credentials",
                "/moby.filesync.v1.Auth/FetchToken",
                "/moby.filesync.v1.Auth/GetTokenAuthority",
                "/moby.filesync.v1.Auth/VerifyTokenAuthority",
            ]);
            router = router.add_service(AuthServer::new(a).max_decoding_message_size(MAX_DECODE));
        }
        if let Some(s) = spec.secrets {
            methods.push("/moby.buildkit.secrets.v1.Secrets/GetSecret");
            router =
                router.add_service(SecretsServer::new(s).max_decoding_message_size(MAX_DECODE));
        }
        if !spec.uploads.is_empty() {
            methods.push("/moby.upload.v1.Upload/Pull");
            router = router.add_service(upload::UploadService::new(spec.uploads).into_server());
        }
        if let Some(s) = spec.ssh {
            methods.push("/moby.sshforward.v1.SSH/CheckAgent");
            methods.push("/moby.sshforward.v1.SSH/ForwardAgent");
            router = router.add_service(SshServer::new(s).max_decoding_message_size(MAX_DECODE));
        }

        // Our end of the tunnel: an in-memory pipe whose other half the gRPC server owns.
        let (tunnel, server_io) = tokio::io::duplex(256 << 10);
        let server_task = tokio::spawn(async move {
            // Ends when the daemon closes the connection; errors then are expected noise.
            let _ = server::serve(server_io, router).await;
        });

        let (mut tunnel_rd, mut tunnel_wr) = tokio::io::split(tunnel);
        let (close_tx, mut close_rx) = tokio::sync::oneshot::channel::<()>();

        // Bytes our gRPC server writes → request stream of Control.Session. The stream ends
        // (half-close) on close(): the daemon then drops the session.
        let outbound = async_stream_from(move |tx| async move {
            let mut buf = vec![0u8; TUNNEL_CHUNK];
            loop {
                tokio::select! {
                    _ = &mut close_rx => break,
                    r = tunnel_rd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let msg = BytesMessage { data: buf[..n].to_vec() };
                            if tx.send(msg).await.is_err() { break; }
                        }
                    }
                }
            }
        });

        let mut req = tonic::Request::new(outbound);
        let md = req.metadata_mut();
        let ins = |md: &mut tonic::metadata::MetadataMap, k: &'static str, v: &str| {
            tonic::metadata::MetadataValue::try_from(v)
                .map(|v| {
                    md.append(k, v);
                })
                .map_err(|_| SessionError::Open(format!("invalid header value for {k}: {v:?}")))
        };
        ins(md, "x-docker-expose-session-uuid", &id)?;
        ins(md, "x-docker-expose-session-name", &spec.name)?;
        ins(md, "x-docker-expose-session-sharedkey", &spec.shared_key)?;
        for m in &methods {
            // One entry per method: the daemon does not split comma-joined values.
            ins(md, "x-docker-expose-session-grpc-method", m)?;
        }

        let mut client = ControlClient::new(channel)
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_ENCODE);
        let resp = client
            .session(req)
            .await
            .map_err(|s| SessionError::Open(format!("{}: {}", s.code(), s.message())))?;
        let mut inbound = resp.into_inner();
        let (lost_tx, lost) = tokio::sync::watch::channel(None::<String>);
        let lost_tx = Arc::new(lost_tx);
        // The first reason is kept: later ones follow from it.
        let report_lost = |tx: &tokio::sync::watch::Sender<Option<String>>, why: String| {
            tx.send_if_modified(|v| {
                let first = v.is_none();
                if first {
                    *v = Some(why);
                }
                first
            });
        };
        // Daemon bytes → our gRPC server. Until close(), the daemon never ends the stream: if
        // it does, it dropped the session.
        let lost_in = lost_tx.clone();
        let pump_in = tokio::spawn(async move {
            let why = loop {
                match inbound.next().await {
                    Some(Ok(msg)) => {
                        if tunnel_wr.write_all(&msg.data).await.is_err() {
                            break "the session's tunnel inside bk-build closed".to_string();
                        }
                    }
                    Some(Err(status)) => {
                        break format!(
                            "the session's stream from the daemon failed ({}: {})",
                            status.code(),
                            status.message()
                        )
                    }
                    None => break "the daemon ended the session".to_string(),
                }
            };
            report_lost(&lost_in, why);
            let _ = tunnel_wr.shutdown().await;
        });
        let watchdog = tokio::spawn(async move {
            loop {
                tokio::time::sleep(DAEMON_HEALTH_INTERVAL).await;
                if let Some(silent) = health_watch.silence() {
                    report_lost(
                        &lost_tx,
                        format!(
                            "the daemon stopped checking the session's health: no check for {} s (it checks every {} s while it holds a session, and stops when it drops it)",
                            silent.as_secs(),
                            DAEMON_HEALTH_INTERVAL.as_secs()
                        ),
                    );
                    break;
                }
            }
        });

        Ok(Session {
            id,
            stats,
            close_tx: Some(close_tx),
            tasks: vec![server_task, pump_in],
            watchdog,
            lost,
            export_errors,
        })
    }

    /// Resolves, with the reason, when the daemon no longer serves this session before
    /// [`Session::close`]: it ended the session's stream, or it stopped checking the session's
    /// health (it dropped the session without ending the stream). The build it belongs to
    /// cannot finish then: whatever the daemon still needs from this client (an export's
    /// files, credentials) would never come, and calls in flight would wait for ever.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|w| w.clone());
        match why {
            Some(why) => why,
            // Every watcher ended without a reason: nothing more will be reported.
            None => std::future::pending().await,
        }
    }

    /// Half-closes the tunnel (the daemon removes the session) and waits briefly for it to end.
    /// Returns errors from client-side exports (e.g. a local output that could not be written).
    pub async fn close(mut self) -> Vec<String> {
        self.watchdog.abort();
        if let Some(tx) = self.close_tx.take() {
            let _ = tx.send(());
        }
        let tasks = std::mem::take(&mut self.tasks);
        let all = futures_util::future::join_all(tasks);
        // If the daemon does not close its side in time, Drop aborts ours.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), all).await;
        self.export_errors
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watchdog.abort();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A stream fed by a producer task through a small bounded channel.
pub(crate) fn async_stream_from<T, F, Fut>(producer: F) -> tokio_stream::wrappers::ReceiverStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(d: Duration) -> Instant {
        Instant::now()
            .checked_sub(d)
            .expect("the monotonic clock is far enough from its origin")
    }

    #[test]
    fn a_session_never_checked_is_judged_from_its_start() {
        let long = HEALTH_SILENCE + Duration::from_secs(1);
        assert!(HealthWatch::since(ago(long)).silence().is_some());
        assert!(HealthWatch::since(Instant::now()).silence().is_none());
    }

    #[test]
    fn a_check_restarts_the_clock() {
        let watch = HealthWatch::since(ago(HEALTH_SILENCE + Duration::from_secs(1)));
        watch.checked();
        assert!(watch.silence().is_none());
    }
}
