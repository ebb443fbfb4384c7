//! Transport: how bytes reach the daemon. Turns an address (`unix://`, `tcp://` with optional
//! mutual TLS, `docker://` / `docker-unix://` for Docker Engine's embedded BuildKit) into a tonic
//! [`Channel`] that speaks HTTP/2 to BuildKit's gRPC server.
//!
//! A Docker Engine is found the way the docker CLI finds it (`DOCKER_HOST` with
//! `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`, else the current docker context; see
//! [`docker_env`]) and reached over a unix socket, TCP (plain or mutual TLS) or `ssh://`.
//! TLS is one implementation for buildkitd and Docker ([`tls`]); failures are explained with
//! the setting to change ([`explain`]).
//!
//! Everything above this module (Control calls, the session tunnel) is the same for every
//! daemon; only this module knows sockets, TLS files, ssh and Docker's `/grpc` upgrade. It
//! must not know about builds, sessions or Dockerfiles.

mod docker;
pub mod docker_env;
mod engine_store;
mod explain;
mod ssh;
mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub(crate) use docker::api_version as docker_api_version;
pub use docker::{
    engine_cpus as docker_engine_cpus, load_image as docker_load_image,
    tag_image as docker_tag_image, DockerHost, Endpoint as DockerEndpoint, Origin as DockerOrigin,
};
pub use engine_store::image_id as docker_image_id;
pub use ssh::SshTarget;
pub use tls::{TlsFiles, TlsSource};

/// Default time allowed to set up a connection (buildctl's `--timeout` default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// Standalone buildkitd on a unix socket (rootful or rootless).
    Unix(PathBuf),
    /// buildkitd on TCP (`tcp://host:port`), TLS when a CA is given.
    Tcp { host: String, port: u16 },
    /// Docker Engine's embedded BuildKit, reached through the Docker API socket.
    Docker(DockerHost),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Address::Docker(h) => match &h.origin {
                DockerOrigin::Context(n) => write!(f, "docker ({h}, docker context {n:?})"),
                _ => write!(f, "docker ({h})"),
            },
        }
    }
}

impl Address {
    /// Parses `unix:///path`, `tcp://host:port`, `docker://` (the Docker Engine the docker
    /// CLI would use), `docker://unix:///path`, `docker-unix:///path`,
    /// `docker://tcp://host:port` and `docker://ssh://[user@]host[:port]`.
    pub fn parse(s: &str) -> Result<Address, TransportError> {
        let bad = |why: &str| TransportError::BadAddress {
            addr: s.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = s.strip_prefix("unix://") {
            if rest.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(Address::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("docker-unix://") {
            if rest.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(Address::Docker(DockerHost {
                endpoint: DockerEndpoint::Unix(PathBuf::from(rest)),
                origin: DockerOrigin::Address,
            }));
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            if rest.is_empty() {
                return Ok(Address::Docker(DockerHost::from_env()?));
            }
            return Ok(Address::Docker(DockerHost::parse(rest)?));
        }
        if s == "docker" {
            return Ok(Address::Docker(DockerHost::from_env()?));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) =
                split_host_port(rest).ok_or_else(|| bad("expected tcp://HOST:PORT"))?;
            return Ok(Address::Tcp { host, port });
        }
        if s.starts_with("ssh://") {
            return Err(bad(
                "ssh:// reaches a Docker Engine: write docker://ssh://[USER@]HOST[:PORT] (or set DOCKER_HOST and use docker://)",
            ));
        }
        Err(bad(
            "unknown scheme; use unix:///run/buildkit/buildkitd.sock, tcp://HOST:PORT, or docker://",
        ))
    }
}

pub(crate) fn split_host_port(s: &str) -> Option<(String, u16)> {
    let s = s.trim_end_matches('/');
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// TLS material for `tcp://` daemons (`--tlscacert/--tlscert/--tlskey/--tlsservername/--tlsdir`,
/// or the same-named keys of a `[builders.NAME]` table).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub dir: Option<PathBuf>,
    /// `Some(where)` when these settings are keys of a table rather than flags, e.g.
    /// `[builders.ci] in /repo/bk-build.toml`: messages then name the keys and the table.
    pub keys_of: Option<String>,
}

impl TlsOptions {
    fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.cert.is_none() && self.key.is_none() && self.dir.is_none()
    }

    /// How a message names setting `name` (`tlscacert`…): the flag, or the key.
    fn setting(&self, name: &str) -> String {
        match &self.keys_of {
            Some(_) => format!("the {name} key"),
            None => format!("--{name}"),
        }
    }

    /// The error for TLS settings given for a unix socket.
    fn only_for_tcp(&self) -> TransportError {
        TransportError::Tls(match &self.keys_of {
            None => "TLS flags only apply to tcp:// addresses".into(),
            Some(of) => format!("the tls* keys of {of} only apply to tcp:// addresses"),
        })
    }

    fn source(&self) -> TlsSource {
        match &self.keys_of {
            Some(of) => TlsSource::Keys { of: of.clone() },
            None => TlsSource::Flags,
        }
    }

    /// Resolves `--tlsdir` into file paths (`ca.pem,cert.pem,key.pem` or
    /// `ca.crt,tls.crt,tls.key`, explicit flags win) and checks that they go together.
    fn resolved(&self) -> Result<TlsFiles, TransportError> {
        let mut ca = self.ca_cert.clone();
        let mut cert = self.cert.clone();
        let mut key = self.key.clone();
        // Callers put the builder's name in front of these (its table is `keys_of`).
        let n = |k: &str| self.setting(k);
        if let Some(dir) = &self.dir {
            let pick = |a: &str, b: &str| {
                let pa = dir.join(a);
                if pa.exists() {
                    Some(pa)
                } else {
                    let pb = dir.join(b);
                    pb.exists().then_some(pb)
                }
            };
            ca = ca.or_else(|| pick("ca.pem", "ca.crt"));
            cert = cert.or_else(|| pick("cert.pem", "tls.crt"));
            key = key.or_else(|| pick("key.pem", "tls.key"));
            if ca.is_none() {
                return Err(TransportError::Tls(format!(
                    "{} {}: no ca.pem or ca.crt in it; put the daemon's CA certificate there or give {}",
                    n("tlsdir"),
                    dir.display(),
                    n("tlscacert"),
                )));
            }
        }
        let ca = ca.ok_or_else(|| {
            TransportError::Tls(format!(
                "TLS client certificate given without a CA: give {} FILE (or {} DIR)",
                n("tlscacert"),
                n("tlsdir"),
            ))
        })?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TransportError::Tls(format!(
                    "{} given without {}: give both (or neither)",
                    n("tlscert"),
                    n("tlskey"),
                )))
            }
            (None, Some(_)) => {
                return Err(TransportError::Tls(format!(
                    "{} given without {}: give both (or neither)",
                    n("tlskey"),
                    n("tlscert"),
                )))
            }
        };
        Ok(TlsFiles {
            ca: Some(ca),
            identity,
            server_name: self.server_name.clone(),
            source: self.source(),
        })
    }
}

/// What kind of daemon answered; decides e.g. whether `--load` is possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonKind {
    Buildkitd,
    DockerEngine { api_version: String },
}

/// A connected daemon.
#[derive(Clone, Debug)]
pub struct Daemon {
    pub channel: Channel,
    pub kind: DaemonKind,
    pub address: Address,
    /// The TLS files of a `tcp://` buildkitd (a Docker Engine's are in its address).
    tls: Option<TlsFiles>,
    /// [`TlsOptions::keys_of`] of the settings it was reached with.
    keys_of: Option<String>,
}

impl Daemon {
    fn peer(&self) -> explain::Peer<'_> {
        peer_of(&self.address, self.tls.as_ref(), self.keys_of.as_deref())
    }
}

fn peer_of<'a>(
    address: &'a Address,
    tls: Option<&'a TlsFiles>,
    keys_of: Option<&'a str>,
) -> explain::Peer<'a> {
    let peer = match address {
        Address::Docker(h) => h.peer(),
        Address::Tcp { .. } => explain::Peer::buildkitd(address.to_string(), true, tls),
        Address::Unix(_) => explain::Peer::buildkitd(address.to_string(), false, None),
    };
    peer.with_keys_of(keys_of)
}

/// Whether a failed call's status was made here, from a broken connection, rather than sent
/// by the daemon: tonic keeps the cause of its own statuses as their source.
pub fn is_connection_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Explains a failed call on `daemon`: the daemon's own message, or for a broken connection
/// what broke and what to change.
pub fn explain_status(daemon: &Daemon, status: &tonic::Status) -> String {
    if is_connection_failure(status) {
        explain::explain(&daemon.peer(), status)
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

/// A call whose connection broke (rather than one the daemon answered with an error).
#[derive(Debug, Clone)]
pub struct LostConnection {
    /// What broke and what to do, for the user.
    pub message: String,
    /// The daemon reset the request itself (it failed on this build's input): running the
    /// build again anywhere fails the same way.
    pub reset_by_daemon: bool,
    /// The daemon did not answer a probe right after: it stopped or is unreachable.
    pub gone: bool,
}

/// For a call on `daemon` that failed because the connection broke (`None` when the daemon
/// itself answered with `status`): says so, and whether the daemon answers again now, so a
/// daemon that died mid-build reads as that rather than as "transport error".
pub async fn explain_lost_connection(
    daemon: &Daemon,
    status: &tonic::Status,
) -> Option<LostConnection> {
    if !is_connection_failure(status) {
        return None;
    }
    let cause = explain::cause(status);
    let peer = daemon.peer();
    // The channel reconnects on the next call, through the same connector and TLS setup.
    // HTTP/2 tells a reset of one request (`stream error received`, the daemon's RST_STREAM)
    // from a broken connection; the daemon resets a request when it fails on it internally
    // (grpc-go after a handler panic: what buildx shows as "stream terminated by RST_STREAM
    // with error code: INTERNAL_ERROR"), which running the build again does not change.
    let reset_by_daemon = cause.contains("stream error received");
    let probed = probe(&daemon.channel, DEFAULT_CONNECT_TIMEOUT).await;
    let gone = probed.is_err();
    let message = match probed {
        Ok(()) if reset_by_daemon => format!(
            "{} aborted the build with an internal error ({cause}) and still answers: BuildKit failed on this build's input rather than the connection breaking. Check the Dockerfile and build options (bytes that are not UTF-8 in the Dockerfile cause this), and the daemon's log for the failure",
            peer.what
        ),
        Ok(()) => format!(
            "the connection to {} broke during the build ({cause}); the daemon answers again now, so it was restarted or the network dropped: run the build again",
            peer.what
        ),
        Err(now) => {
            let now = match now {
                ProbeFailure::Status(s) if is_connection_failure(&s) => explain::explain(&peer, &s),
                other => other.to_string(),
            };
            let now = now.trim_end_matches('.');
            format!(
                "lost the connection to {} during the build ({cause}), and it does not answer any more ({now}). The daemon stopped or became unreachable: start it again (check {}), then rerun the build.",
                peer.what,
                peer.setting()
            )
        }
    };
    Some(LostConnection {
        message,
        reset_by_daemon,
        gone,
    })
}

impl Daemon {
    /// Where an image built on this daemon is loaded (`--load`), when the daemon does not load
    /// it itself: `None` for a Docker Engine, whose `moby` exporter writes into its own image
    /// store; the Docker Engine at `DOCKER_HOST` (the Engine API's `docker load`) for any
    /// other daemon, as buildx does for its non-docker drivers.
    ///
    /// `BK_BUILD_LOAD_VIA_API=1` takes the Engine API path (to `DOCKER_HOST`) on a Docker
    /// Engine daemon too: the same bytes a buildkitd run would send, to test that path where
    /// only an engine runs.
    ///
    /// Errors: a `DOCKER_HOST` that cannot be parsed.
    pub fn load_target(&self) -> Result<Option<DockerHost>, TransportError> {
        let via_api =
            std::env::var_os("BK_BUILD_LOAD_VIA_API").is_some_and(|v| !v.is_empty() && v != "0");
        match (&self.kind, &self.address) {
            (DaemonKind::DockerEngine { .. }, _) if !via_api => Ok(None),
            _ => DockerHost::from_env().map(Some),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid BuildKit address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to BuildKit at {addr}: {why}")]
    Connect { addr: String, why: String },
    /// The docker CLI configuration (config.json, contexts) names an engine that cannot be used.
    #[error("{0}")]
    DockerConfig(String),
    #[error("{0}")]
    NoDaemon(String),
    /// A failure already explained in full (what happened, what to change).
    #[error("{0}")]
    Failed(String),
}

/// Connects to the daemon named by `addr` (already chosen by the caller), or discovers one.
///
/// Discovery order when `addr` is `None`: `$BUILDKIT_HOST`, `$XDG_RUNTIME_DIR/buildkit/buildkitd.sock`,
/// `/run/buildkit/buildkitd.sock`, then the Docker Engine the docker CLI would use
/// (`$DOCKER_HOST`, the current docker context, `/var/run/docker.sock`).
pub async fn connect(
    addr: Option<&str>,
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<Daemon, TransportError> {
    if let Some(a) = addr {
        let address = Address::parse(a)?;
        return connect_address(address, tls, timeout).await;
    }
    if let Some(a) = buildkit_host() {
        let address = Address::parse(&a)?;
        return connect_address(address, tls, timeout).await;
    }
    let mut tried = Vec::new();
    for candidate in default_candidates() {
        // A Docker configuration that cannot be used (a context that does not exist, TLS
        // files missing) is the user's setting, not one more socket that was not there.
        let address = candidate?;
        // A configured Docker Engine (DOCKER_HOST or a context) is the user's choice: its
        // error is the answer, not one line among the tried sockets.
        let chosen = matches!(&address, Address::Docker(h) if h.origin != DockerOrigin::Default);
        match connect_one(address.clone(), tls, timeout, chosen).await {
            Ok(d) => return Ok(d),
            Err(e) if chosen => return Err(e),
            Err(e) => tried.push(format!("  {address}: {e}")),
        }
    }
    Err(TransportError::NoDaemon(format!(
        "no BuildKit daemon answered. Tried:\n{}\nStart one, then retry:\n  \
         - standalone: `buildkitd` (root) or `rootlesskit buildkitd` (rootless), or pass --addr unix:///path/to/buildkitd.sock\n  \
         - Docker Engine: start dockerd, or set DOCKER_HOST (tcp:// with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, ssh://) or a docker context, and pass --addr docker://\n  \
         - this project's test daemon: `bash scripts/bkenv/up.sh` then `source /tmp/bkenv/env.sh`",
        tried.join("\n")
    )))
}

/// The Docker Engine [`connect`] would build with, without connecting: `Some` when the
/// daemon chosen by the same order (`addr`, `$BUILDKIT_HOST`, an existing buildkitd socket,
/// then Docker) is a Docker Engine. Its image store is what a `FROM` without `--pull` uses.
pub fn docker_engine_builder(addr: Option<&str>, tls: &TlsOptions) -> Option<DockerHost> {
    let chosen = match addr {
        Some(a) => Address::parse(a).ok()?,
        None => match buildkit_host() {
            Some(a) => Address::parse(&a).ok()?,
            None => default_candidates()
                .into_iter()
                .filter_map(Result::ok)
                .find(|a| !matches!(a, Address::Unix(p) if !p.exists()))?,
        },
    };
    match chosen {
        Address::Docker(h) => with_tls_flags(h, tls).ok(),
        _ => None,
    }
}

/// The first address of `$BUILDKIT_HOST` (a comma list for a pool; spaces and empty items
/// ignored), if any.
fn buildkit_host() -> Option<String> {
    let v = std::env::var("BUILDKIT_HOST").ok()?;
    v.split(',')
        .map(str::trim)
        .find(|a| !a.is_empty())
        .map(str::to_string)
}

fn default_candidates() -> Vec<Result<Address, TransportError>> {
    let mut v = Vec::new();
    if let Ok(x) = std::env::var("XDG_RUNTIME_DIR") {
        if !x.is_empty() {
            v.push(Ok(Address::Unix(
                Path::new(&x).join("buildkit/buildkitd.sock"),
            )));
        }
    }
    v.push(Ok(Address::Unix(PathBuf::from(
        "/run/buildkit/buildkitd.sock",
    ))));
    v.push(DockerHost::from_env().map(Address::Docker));
    v
}

/// A Docker Engine on `tcp://` takes the `--tls*` flags like the docker CLI takes its own
/// `--tlscacert/--tlscert/--tlskey`; they replace TLS settings from the environment or a
/// context. Sockets and ssh have no TLS.
fn with_tls_flags(mut host: DockerHost, tls: &TlsOptions) -> Result<DockerHost, TransportError> {
    if tls.is_empty() {
        return Ok(host);
    }
    match &mut host.endpoint {
        DockerEndpoint::Tcp { tls: t, .. } => {
            *t = Some(tls.resolved()?);
            Ok(host)
        }
        other => Err(TransportError::Tls(match &tls.keys_of {
            None => format!(
                "the --tls* flags apply to tcp:// daemons, and the Docker Engine at {other} is reached without TLS (drop the flags)"
            ),
            Some(of) => format!(
                "the tls* keys apply to tcp:// daemons, and the Docker Engine at {other} is reached without TLS (remove them from {of})"
            ),
        })),
    }
}

/// What [`connect_address`] would refuse before reaching any daemon: an address that does not
/// parse, TLS settings where they do not apply, TLS files missing, unreadable or not going
/// together. Reads the TLS files (and, for `docker://`, the docker CLI's environment and
/// context); opens no connection. Lets `plan`, which needs no daemon, report a wrong builder
/// setting as `bake` would.
pub fn check_settings(addr: &str, tls: &TlsOptions) -> Result<(), TransportError> {
    match Address::parse(addr)? {
        Address::Unix(_) if !tls.is_empty() => Err(tls.only_for_tcp()),
        Address::Unix(_) => Ok(()),
        Address::Tcp { host, .. } if !tls.is_empty() => {
            let files = tls.resolved()?;
            files.client_config(&[b"h2"])?;
            files.server_name(&host)?;
            Ok(())
        }
        Address::Tcp { .. } => Ok(()),
        Address::Docker(host) => docker::Dialer::new(&with_tls_flags(host, tls)?).map(drop),
    }
}

/// Connects to one address and checks that a BuildKit Control service answers there.
pub async fn connect_address(
    address: Address,
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<Daemon, TransportError> {
    connect_one(address, tls, timeout, true).await
}

/// [`connect_address`]; `chosen` when the user named the address (flag, environment, docker
/// context), so that a missing socket is explained with the fix rather than listed as one of
/// the places discovery looked.
async fn connect_one(
    address: Address,
    tls: &TlsOptions,
    timeout: Duration,
    chosen: bool,
) -> Result<Daemon, TransportError> {
    let conn_err = |why: String| TransportError::Connect {
        addr: address.to_string(),
        why,
    };
    let (channel, kind, address, tls_files) = match address.clone() {
        Address::Unix(path) => {
            if !tls.is_empty() {
                return Err(tls.only_for_tcp());
            }
            if !path.exists() {
                if chosen {
                    let peer = peer_of(&address, None, tls.keys_of.as_deref());
                    return Err(TransportError::Failed(explain::missing_socket(
                        &peer, &path,
                    )));
                }
                return Err(conn_err(format!("{} does not exist", path.display())));
            }
            let ch = unix_channel(path.clone(), timeout)
                .await
                .map_err(|e| conn_err(error_chain(&e)))?;
            (ch, DaemonKind::Buildkitd, address, None)
        }
        Address::Tcp { host, port } => {
            let files = if tls.is_empty() {
                None
            } else {
                Some(tls.resolved()?)
            };
            let ch = tcp_channel(&host, port, files.as_ref(), tls, timeout).await?;
            (ch, DaemonKind::Buildkitd, address, files)
        }
        Address::Docker(host) => {
            let host = with_tls_flags(host, tls)?;
            let (ch, api_version) = docker::channel(&host, timeout).await?;
            (
                ch,
                DaemonKind::DockerEngine { api_version },
                Address::Docker(host),
                None,
            )
        }
    };
    let peer = peer_of(&address, tls_files.as_ref(), tls.keys_of.as_deref());
    probe(&channel, timeout).await.map_err(|f| match f {
        ProbeFailure::Status(s) if is_connection_failure(&s) => {
            TransportError::Failed(explain::explain(&peer, &s))
        }
        // A TLS-only daemon may never answer plain text at all: name the fix here too.
        f => TransportError::Connect {
            addr: address.to_string(),
            why: match (&f, peer.tcp && peer.tls.is_none()) {
                (ProbeFailure::Timeout(_), true) => format!(
                    "no BuildKit Control service answered: {f}. If it expects TLS, {}",
                    peer.enable_tls_fix()
                ),
                _ => format!("no BuildKit Control service answered: {f}"),
            },
        },
    })?;
    Ok(Daemon {
        channel,
        kind,
        address,
        tls: tls_files,
        keys_of: tls.keys_of.clone(),
    })
}

/// Standard HTTP/2 settings for every channel: big windows for context upload, no keepalive
/// pings (grpc-go servers answer frequent pings with GOAWAY `too_many_pings`).
fn endpoint(uri: &'static str, timeout: Duration) -> Endpoint {
    Endpoint::from_static(uri)
        .connect_timeout(timeout)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .tcp_nodelay(true)
}

async fn unix_channel(
    path: PathBuf,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    endpoint("http://buildkitd.local", timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
}

/// buildkitd on TCP: h2c, or HTTP/2 inside TLS (ALPN `h2`, which buildkitd requires since
/// v0.17) with the same TLS code as Docker Engine's.
async fn tcp_channel(
    host: &str,
    port: u16,
    tls: Option<&TlsFiles>,
    settings: &TlsOptions,
    timeout: Duration,
) -> Result<Channel, TransportError> {
    let addr = format!("tcp://{host}:{port}");
    let peer =
        explain::Peer::buildkitd(addr.clone(), true, tls).with_keys_of(settings.keys_of.as_deref());
    let host = host.to_string();
    let ch = match tls {
        None => {
            endpoint("http://buildkitd.local", timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let host = host.clone();
                    async move {
                        let s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                        s.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await
        }
        Some(files) => {
            let config = files.client_config(&[b"h2"])?;
            let name = files.server_name(&host)?;
            endpoint("http://buildkitd.local", timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let (host, config, name) = (host.clone(), config.clone(), name.clone());
                    async move {
                        let s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                        s.set_nodelay(true)?;
                        let t = tls::handshake_h2(s, config, name).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(t))
                    }
                }))
                .await
        }
    };
    ch.map_err(|e| TransportError::Failed(explain::explain(&peer, &e)))
}

/// Why [`probe`] found no Control service.
enum ProbeFailure {
    Timeout(Duration),
    Status(tonic::Status),
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeFailure::Timeout(t) => write!(f, "no answer within {}s", t.as_secs()),
            ProbeFailure::Status(s) => write!(f, "{:?}: {}", s.code(), s.message()),
        }
    }
}

/// Calls `Control.Info`; `Unimplemented` (daemons older than v0.11) still proves a Control
/// server.
/// Whether `daemon` answers a cheap Control call within [`DEFAULT_CONNECT_TIMEOUT`]: after a
/// failed build, tells a daemon that went away (or froze) from one that failed the build.
pub async fn answers(daemon: &Daemon) -> bool {
    probe(&daemon.channel, DEFAULT_CONNECT_TIMEOUT)
        .await
        .is_ok()
}

async fn probe(channel: &Channel, timeout: Duration) -> Result<(), ProbeFailure> {
    let mut c = crate::proto::control::control_client::ControlClient::new(channel.clone());
    match tokio::time::timeout(timeout, c.info(crate::proto::control::InfoRequest {})).await {
        Err(_) => Err(ProbeFailure::Timeout(timeout)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) if is_old_buildkit(&s) => Ok(()),
        Ok(Err(s)) => Err(ProbeFailure::Status(s)),
    }
}

/// Whether `Control.Info`'s failure still shows a BuildKit daemon: one older than v0.11 has
/// the Control service without that method (grpc-go: "unknown method Info for service …").
/// Not so a gRPC server without the service (containerd's socket: "unknown service
/// moby.buildkit.v1.Control"), nor an HTTP/2 server that is not gRPC at all (its 404, which
/// tonic maps to `Unimplemented` with "grpc-status header missing, mapped from HTTP status
/// code 404").
fn is_old_buildkit(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unimplemented
        && !s.message().starts_with("unknown service")
        && !s.message().starts_with("grpc-status header missing")
}

/// Flattens an error and its sources into one line (tonic's errors hide the useful part).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    // tonic's Display of a status is its debug form; its message is the sentence.
    let mut s = match e.downcast_ref::<tonic::Status>() {
        Some(status) => status.message().to_string(),
        None => e.to_string(),
    };
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_control_service_without_info_is_an_old_buildkit() {
        use tonic::{Code, Status};
        let old = Status::new(
            Code::Unimplemented,
            "unknown method Info for service moby.buildkit.v1.Control",
        );
        assert!(super::is_old_buildkit(&old));
        for not in [
            Status::new(
                Code::Unimplemented,
                "unknown service moby.buildkit.v1.Control",
            ),
            Status::new(
                Code::Unimplemented,
                "grpc-status header missing, mapped from HTTP status code 404",
            ),
            Status::new(Code::Unavailable, "unknown method Info"),
        ] {
            assert!(!super::is_old_buildkit(&not), "{not:?}");
        }
    }

    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Address::parse("unix:///run/buildkit/buildkitd.sock").unwrap(),
            Address::Unix("/run/buildkit/buildkitd.sock".into())
        );
        assert_eq!(
            Address::parse("tcp://10.0.0.1:1234").unwrap(),
            Address::Tcp {
                host: "10.0.0.1".into(),
                port: 1234
            }
        );
        let unix = |p: &str| {
            Address::Docker(DockerHost {
                endpoint: DockerEndpoint::Unix(p.into()),
                origin: DockerOrigin::Address,
            })
        };
        assert_eq!(
            Address::parse("docker-unix:///tmp/d.sock").unwrap(),
            unix("/tmp/d.sock")
        );
        assert_eq!(
            Address::parse("docker://unix:///tmp/d.sock").unwrap(),
            unix("/tmp/d.sock")
        );
        let Address::Docker(h) = Address::parse("docker://tcp://h:2375").unwrap() else {
            panic!()
        };
        assert!(
            matches!(h.endpoint, DockerEndpoint::Tcp { ref host, port: 2375, .. } if host == "h")
        );
        let Address::Docker(h) = Address::parse("docker://ssh://me@h:22").unwrap() else {
            panic!()
        };
        assert_eq!(h.to_string(), "ssh://me@h:22");
        let e = Address::parse("ssh://me@h").unwrap_err().to_string();
        assert!(e.contains("docker://ssh://"), "{e}");
        for bad in ["http://x", "tcp://nohost", "unix://", "tcp://:12"] {
            let e = Address::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn tls_requires_ca_and_pairs() {
        let t = TlsOptions {
            cert: Some("c".into()),
            ..Default::default()
        };
        assert!(t
            .resolved()
            .unwrap_err()
            .to_string()
            .contains("--tlscacert"));
        let t = TlsOptions {
            ca_cert: Some("a".into()),
            cert: Some("c".into()),
            ..Default::default()
        };
        assert!(t.resolved().unwrap_err().to_string().contains("--tlskey"));
    }

    /// Settings from a `[builders.NAME]` table: every message names its keys and the table,
    /// never a flag the user did not pass.
    #[test]
    fn tls_keys_of_a_table_are_named_as_keys() {
        let of = "[builders.ci] in /p/bk-build.toml";
        let keys = |t: TlsOptions| TlsOptions {
            keys_of: Some(of.into()),
            ..t
        };
        let no_flags = |e: String| {
            assert!(!e.contains("--tls"), "{e}");
            e
        };
        // The error of resolving `t` given as the table's keys.
        let refused = |t: TlsOptions| no_flags(keys(t).resolved().unwrap_err().to_string());
        let e = refused(TlsOptions {
            cert: Some("c".into()),
            ..Default::default()
        });
        assert!(e.contains("the tlscacert key"), "{e}");
        let e = refused(TlsOptions {
            ca_cert: Some("a".into()),
            key: Some("k".into()),
            ..Default::default()
        });
        assert!(
            e.contains("the tlskey key given without the tlscert key"),
            "{e}"
        );
        let e = refused(TlsOptions {
            dir: Some("/nonexistent-bk".into()),
            ..Default::default()
        });
        assert!(e.contains("the tlsdir key"), "{e}");
        let e = no_flags(
            check_settings(
                "unix:///x.sock",
                &keys(TlsOptions {
                    ca_cert: Some("a".into()),
                    ..Default::default()
                }),
            )
            .unwrap_err()
            .to_string(),
        );
        assert!(e.contains(of), "{e}");
        // The files' own fixes, and the hint for a plain connection to a TLS port.
        let files = keys(TlsOptions {
            ca_cert: Some("a".into()),
            ..Default::default()
        })
        .resolved()
        .unwrap();
        for m in [
            files.ca_fix(),
            files.identity_fix(),
            files.disable_fix(),
            files.requested_by(),
            files.origin(),
        ] {
            assert!(m.contains(of), "{m}");
            no_flags(m);
        }
        let a = Address::parse("tcp://h:1").unwrap();
        let fix = no_flags(peer_of(&a, None, Some(of)).enable_tls_fix());
        assert!(fix.contains("set tlscacert") && fix.contains(of), "{fix}");
        assert!(peer_of(&a, None, None)
            .enable_tls_fix()
            .contains("--tlscacert"));
    }
}
