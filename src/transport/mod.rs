//! Transport: how bytes reach the daemon. Turns an address (`unix://`, `tcp://` with optional
//! mutual TLS, `docker://` / `docker-unix://` for Docker Engine's embedded BuildKit) into a tonic
//! [`Channel`] that speaks HTTP/2 to BuildKit's gRPC server.
//!
//! Everything above this module (Control calls, the session tunnel) is the same for every
//! daemon; only this module knows sockets, TLS files and Docker's `/grpc` upgrade. It must not
//! know about builds, sessions or Dockerfiles.

mod docker;
mod engine_store;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

pub(crate) use docker::api_version as docker_api_version;
pub use docker::{
    engine_cpus as docker_engine_cpus, load_image as docker_load_image,
    tag_image as docker_tag_image, DockerHost,
};
pub use engine_store::image_id as docker_image_id;

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
            Address::Docker(h) => write!(f, "docker ({h})"),
        }
    }
}

impl Address {
    /// Parses `unix:///path`, `tcp://host:port`, `docker://`, `docker://unix:///path`,
    /// `docker-unix:///path` (and `docker://tcp://host:port`).
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
            return Ok(Address::Docker(DockerHost::Unix(PathBuf::from(rest))));
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

/// TLS material for `tcp://` daemons (`--tlscacert/--tlscert/--tlskey/--tlsservername/--tlsdir`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub dir: Option<PathBuf>,
}

impl TlsOptions {
    fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.cert.is_none() && self.key.is_none() && self.dir.is_none()
    }

    /// Resolves `--tlsdir` into file paths: `ca.pem,cert.pem,key.pem` or `ca.crt,tls.crt,tls.key`.
    fn resolved(&self) -> Result<(PathBuf, Option<(PathBuf, PathBuf)>), TransportError> {
        let mut ca = self.ca_cert.clone();
        let mut cert = self.cert.clone();
        let mut key = self.key.clone();
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
                    "--tlsdir {}: no ca.pem or ca.crt in it; put the daemon's CA certificate there or pass --tlscacert",
                    dir.display()
                )));
            }
        }
        let ca = ca.ok_or_else(|| {
            TransportError::Tls(
                "TLS client certificate given without a CA: pass --tlscacert FILE (or --tlsdir DIR)"
                    .into(),
            )
        })?;
        let pair = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TransportError::Tls(
                    "--tlscert given without --tlskey: pass both (or neither)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(TransportError::Tls(
                    "--tlskey given without --tlscert: pass both (or neither)".into(),
                ))
            }
        };
        Ok((ca, pair))
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
    #[error("cannot read {path}: {source} (check the --tls* flags)")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to BuildKit at {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("{0}")]
    NoDaemon(String),
}

/// Connects to the daemon named by `addr` (already chosen by the caller), or discovers one.
///
/// Discovery order when `addr` is `None`: `$BUILDKIT_HOST`, `$XDG_RUNTIME_DIR/buildkit/buildkitd.sock`,
/// `/run/buildkit/buildkitd.sock`, then the Docker socket (`$DOCKER_HOST` or `/var/run/docker.sock`).
pub async fn connect(
    addr: Option<&str>,
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<Daemon, TransportError> {
    if let Some(a) = addr {
        let address = Address::parse(a)?;
        return connect_address(address, tls, timeout).await;
    }
    if let Ok(a) = std::env::var("BUILDKIT_HOST") {
        if !a.is_empty() {
            let address = Address::parse(&a)?;
            return connect_address(address, tls, timeout).await;
        }
    }
    let mut tried = Vec::new();
    for address in default_candidates() {
        match connect_address(address.clone(), tls, timeout).await {
            Ok(d) => return Ok(d),
            Err(e) => tried.push(format!("  {address}: {e}")),
        }
    }
    Err(TransportError::NoDaemon(format!(
        "no BuildKit daemon answered. Tried:\n{}\nStart one, then retry:\n  \
         - standalone: `buildkitd` (root) or `rootlesskit buildkitd` (rootless), or pass --addr unix:///path/to/buildkitd.sock\n  \
         - Docker Engine: start dockerd (or set DOCKER_HOST) and pass --addr docker://\n  \
         - this project's test daemon: `bash scripts/bkenv/up.sh` then `source /tmp/bkenv/env.sh`",
        tried.join("\n")
    )))
}

/// The Docker Engine [`connect`] would build with, without connecting: `Some` when the
/// daemon chosen by the same order (`addr`, `$BUILDKIT_HOST`, an existing buildkitd socket,
/// then Docker) is a Docker Engine. Its image store is what a `FROM` without `--pull` uses.
pub fn docker_engine_builder(addr: Option<&str>) -> Option<DockerHost> {
    let chosen = match addr {
        Some(a) => Address::parse(a).ok()?,
        None => match std::env::var("BUILDKIT_HOST")
            .ok()
            .filter(|a| !a.is_empty())
        {
            Some(a) => Address::parse(&a).ok()?,
            None => default_candidates()
                .into_iter()
                .find(|a| !matches!(a, Address::Unix(p) if !p.exists()))?,
        },
    };
    match chosen {
        Address::Docker(h) => Some(h),
        _ => None,
    }
}

fn default_candidates() -> Vec<Address> {
    let mut v = Vec::new();
    if let Ok(x) = std::env::var("XDG_RUNTIME_DIR") {
        if !x.is_empty() {
            v.push(Address::Unix(Path::new(&x).join("buildkit/buildkitd.sock")));
        }
    }
    v.push(Address::Unix(PathBuf::from("/run/buildkit/buildkitd.sock")));
    if let Ok(h) = DockerHost::from_env() {
        v.push(Address::Docker(h));
    }
    v
}

/// Connects to one address and checks that a BuildKit Control service answers there.
pub async fn connect_address(
    address: Address,
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<Daemon, TransportError> {
    let conn_err = |why: String| TransportError::Connect {
        addr: address.to_string(),
        why,
    };
    let (channel, kind) = match &address {
        Address::Unix(path) => {
            if !tls.is_empty() {
                return Err(TransportError::Tls(
                    "TLS flags only apply to tcp:// addresses".into(),
                ));
            }
            if !path.exists() {
                return Err(conn_err(format!("{} does not exist", path.display())));
            }
            let ch = unix_channel(path.clone(), timeout)
                .await
                .map_err(|e| conn_err(error_chain(&e)))?;
            (ch, DaemonKind::Buildkitd)
        }
        Address::Tcp { host, port } => {
            let ch = tcp_channel(host, *port, tls, timeout).await?;
            (ch, DaemonKind::Buildkitd)
        }
        Address::Docker(host) => {
            if !tls.is_empty() {
                return Err(TransportError::Tls(
                    "TLS flags are for buildkitd on tcp://; for Docker Engine use its own socket"
                        .into(),
                ));
            }
            let (ch, api_version) = docker::channel(host, timeout).await?;
            (ch, DaemonKind::DockerEngine { api_version })
        }
    };
    probe(&channel, timeout)
        .await
        .map_err(|why| conn_err(format!("no BuildKit Control service answered: {why}")))?;
    Ok(Daemon {
        channel,
        kind,
        address,
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

async fn tcp_channel(
    host: &str,
    port: u16,
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<Channel, TransportError> {
    let addr = format!("tcp://{host}:{port}");
    let conn_err = |why: String| TransportError::Connect {
        addr: addr.clone(),
        why,
    };
    if tls.is_empty() {
        let ep = Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(|e| conn_err(e.to_string()))?
            .connect_timeout(timeout)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true);
        return ep.connect().await.map_err(|e| conn_err(error_chain(&e)));
    }
    let (ca, pair) = tls.resolved()?;
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| TransportError::TlsFile {
            path: p.clone(),
            source,
        })
    };
    let ca_pem = read(&ca)?;
    if !looks_like_pem(&ca_pem) {
        return Err(TransportError::Tls(format!(
            "{} is not a PEM certificate (expected \"-----BEGIN CERTIFICATE-----\"); pass the daemon's CA with --tlscacert",
            ca.display()
        )));
    }
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(tls.server_name.clone().unwrap_or_else(|| host.to_string()))
        // buildkitd only advertises ALPN h2 since v0.17.
        .assume_http2(true);
    if let Some((cert, key)) = pair {
        let c = read(&cert)?;
        let k = read(&key)?;
        if !looks_like_pem(&c) {
            return Err(TransportError::Tls(format!(
                "{} is not a PEM certificate; pass the client certificate with --tlscert",
                cert.display()
            )));
        }
        if !looks_like_pem(&k) {
            return Err(TransportError::Tls(format!(
                "{} is not a PEM private key; pass the client key with --tlskey",
                key.display()
            )));
        }
        cfg = cfg.identity(Identity::from_pem(c, k));
    }
    let ep = Endpoint::from_shared(format!("https://{host}:{port}"))
        .map_err(|e| conn_err(e.to_string()))?
        .connect_timeout(timeout)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .tls_config(cfg)
        .map_err(|e| TransportError::Tls(error_chain(&e)))?;
    ep.connect().await.map_err(|e| conn_err(error_chain(&e)))
}

fn looks_like_pem(b: &[u8]) -> bool {
    String::from_utf8_lossy(b).contains("-----BEGIN ")
}

/// Calls `Control.Info`; `Unimplemented` (daemons older than v0.11) still proves a Control server.
async fn probe(channel: &Channel, timeout: Duration) -> Result<(), String> {
    let mut c = crate::proto::control::control_client::ControlClient::new(channel.clone());
    match tokio::time::timeout(timeout, c.info(crate::proto::control::InfoRequest {})).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Ok(()),
        Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
    }
}

/// Flattens an error and its sources into one line (tonic's errors hide the useful part).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
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
        assert_eq!(
            Address::parse("docker-unix:///tmp/d.sock").unwrap(),
            Address::Docker(DockerHost::Unix("/tmp/d.sock".into()))
        );
        assert_eq!(
            Address::parse("docker://unix:///tmp/d.sock").unwrap(),
            Address::Docker(DockerHost::Unix("/tmp/d.sock".into()))
        );
        assert_eq!(
            Address::parse("docker://tcp://h:2375").unwrap(),
            Address::Docker(DockerHost::Tcp("h".into(), 2375))
        );
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
}
