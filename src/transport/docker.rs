//! Docker Engine's embedded BuildKit, and the few Engine API calls bk-build makes (`/_ping`,
//! `/info`, image history, tag). Engines with API ≥ 1.53 serve gRPC natively on the API
//! socket (HTTP/2 prior knowledge); older ones (19.03+) need `POST /grpc` with `Upgrade:
//! h2c`, after which the hijacked socket carries a fresh h2c connection that *we* start with
//! the client preface. Every reconnect performs a new upgrade.
//!
//! The engine is reached the ways the docker CLI reaches it ([`super::docker_env`] decides
//! which): a unix socket, `tcp://` (plain, or TLS with mutual authentication), or `ssh://`
//! through the local ssh client ([`super::ssh`]). Every call here goes through [`dial`], so
//! each works over each of them.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Uri};

use super::explain::{self, Peer};
use super::ssh::{self, SshTarget};
use super::tls::TlsFiles;
use super::{endpoint, split_host_port, TransportError};

/// Where a Docker Engine's API is: the address part of `DOCKER_HOST` or a context, with the
/// TLS files for `tcp://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `tcp://HOST:PORT`; TLS when `tls` is set.
    Tcp {
        host: String,
        port: u16,
        tls: Option<TlsFiles>,
    },
    /// `ssh://[USER@]HOST[:PORT][/SOCKET]`.
    Ssh(SshTarget),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { host, port, .. } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port, .. } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Ssh(t) => t.fmt(f),
        }
    }
}

/// First API version whose socket routes HTTP/2 gRPC natively.
const NATIVE_GRPC_API: (u32, u32) = (1, 53);

/// Default port of `tcp://HOST` without one (the docker CLI's `opts.ParseTCPAddr`).
const DEFAULT_TCP_PORT: u16 = 2375;

impl Endpoint {
    /// Parses `unix:///path`, `/path`, `tcp://HOST[:PORT]` or `ssh://[USER@]HOST[:PORT][/SOCKET]`
    /// (TLS is added by the caller, from the environment, a context or flags).
    pub fn parse(s: &str) -> Result<Endpoint, TransportError> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(bad(s, "the socket path is empty"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = match split_host_port(rest) {
                Some(hp) => hp,
                None if !rest.is_empty() && !rest.contains("://") && !rest.ends_with(':') => {
                    // `tcp://HOST`: the docker CLI's default port.
                    let h = rest.trim_start_matches('[').trim_end_matches(']');
                    (h.to_string(), DEFAULT_TCP_PORT)
                }
                None => return Err(bad(s, "expected tcp://HOST:PORT")),
            };
            return Ok(Endpoint::Tcp {
                host,
                port,
                tls: None,
            });
        }
        if let Some(rest) = s.strip_prefix("ssh://") {
            return SshTarget::parse(rest)
                .map(Endpoint::Ssh)
                .map_err(|why| bad(s, &why));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        Err(bad(
            s,
            "a Docker host is unix:///path/to/docker.sock, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]",
        ))
    }
}

/// Where a [`DockerHost`] came from: errors name the setting to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--addr docker://…` (or `$BUILDKIT_HOST`).
    Address,
    /// `$DOCKER_HOST`.
    DockerHostEnv,
    /// A docker context (`$DOCKER_CONTEXT` or `currentContext` in the docker config).
    Context(String),
    /// No setting: the docker CLI's default.
    Default,
}

impl Origin {
    /// The setting, for messages ("check …").
    pub(crate) fn setting(&self) -> String {
        match self {
            Origin::Address => "--addr (or BUILDKIT_HOST)".into(),
            Origin::DockerHostEnv => "DOCKER_HOST".into(),
            Origin::Context(n) => format!("docker context {n:?} (`docker context inspect {n}`)"),
            Origin::Default => {
                "the default Docker socket (set DOCKER_HOST or a docker context)".into()
            }
        }
    }
}

/// A Docker Engine API endpoint and where it was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerHost {
    pub endpoint: Endpoint,
    pub origin: Origin,
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.endpoint.fmt(f)
    }
}

impl DockerHost {
    /// The engine the docker CLI would use here: `$DOCKER_HOST` (+ `DOCKER_TLS_VERIFY`,
    /// `DOCKER_CERT_PATH`), else the current docker context, else the default socket. See
    /// [`super::docker_env`] for the rules.
    pub fn from_env() -> Result<DockerHost, TransportError> {
        super::docker_env::resolve(&super::docker_env::process_env)
    }

    /// An engine named on the command line (`docker://HOST`), with TLS from the environment
    /// like `docker -H HOST` would use.
    pub fn parse(s: &str) -> Result<DockerHost, TransportError> {
        let endpoint =
            super::docker_env::with_env_tls(Endpoint::parse(s)?, &super::docker_env::process_env)?;
        Ok(DockerHost {
            endpoint,
            origin: Origin::Address,
        })
    }

    /// The unix socket, when the engine is reached through one.
    pub fn unix_socket(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Unix(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn peer(&self) -> Peer<'_> {
        Peer::docker(self)
    }
}

fn bad(addr: &str, why: &str) -> TransportError {
    TransportError::BadAddress {
        addr: addr.to_string(),
        why: why.to_string(),
    }
}

/// A raw connection to the Docker API.
enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Ssh(Box<ssh::SshStream>),
}

/// How to open connections to one engine: the TLS configuration is read once.
#[derive(Clone)]
pub(crate) struct Dialer {
    host: DockerHost,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Dialer {
    pub(crate) fn new(host: &DockerHost) -> Result<Dialer, TransportError> {
        let tls = match &host.endpoint {
            Endpoint::Tcp {
                host: h,
                tls: Some(files),
                ..
            } => Some((files.client_config(&[b"http/1.1"])?, files.server_name(h)?)),
            _ => None,
        };
        Ok(Dialer {
            host: host.clone(),
            tls,
        })
    }

    async fn dial(&self) -> std::io::Result<Stream> {
        match &self.host.endpoint {
            Endpoint::Unix(p) => Ok(Stream::Unix(tokio::net::UnixStream::connect(p).await?)),
            Endpoint::Tcp { host, port, .. } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                match &self.tls {
                    None => Ok(Stream::Tcp(s)),
                    Some((cfg, name)) => Ok(Stream::Tls(Box::new(
                        super::tls::handshake(s, cfg.clone(), name.clone()).await?,
                    ))),
                }
            }
            Endpoint::Ssh(t) => Ok(Stream::Ssh(Box::new(ssh::dial(t).await?))),
        }
    }
}

macro_rules! each_stream {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Unix($s) => $e,
            Stream::Tcp($s) => $e,
            Stream::Tls($s) => $e,
            Stream::Ssh($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// One HTTP/1.1 connection to the engine, kept open between requests.
struct Http1Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    /// Drives the connection; its error says why a request failed when the request itself
    /// only learns "canceled".
    driver: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Http1Conn {
    async fn open(dialer: &Dialer) -> std::io::Result<Http1Conn> {
        let stream = dialer.dial().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let driver = tokio::spawn(conn.with_upgrades());
        Ok(Http1Conn { sender, driver })
    }

    /// Sends `req`: the response head with its body still to read (and the connection
    /// upgradable when the daemon answered 101). Errors keep their cause (TLS alerts, ssh's
    /// stderr, refused connections) for [`explain`].
    async fn send(
        &mut self,
        req: http::Request<Empty<Bytes>>,
    ) -> std::io::Result<http::Response<hyper::body::Incoming>> {
        match self.sender.send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                // When the connection fails first (a TLS alert after the handshake, ssh
                // exiting), the request only learns "canceled"; the connection's own error
                // says why.
                let why = tokio::time::timeout(Duration::from_secs(2), &mut self.driver).await;
                match why {
                    Ok(Ok(Err(conn_err))) => Err(std::io::Error::other(conn_err)),
                    _ => Err(std::io::Error::other(e)),
                }
            }
        }
    }
}

/// Sends `req` on a fresh connection (see [`Http1Conn::send`]).
async fn send(
    dialer: &Dialer,
    req: http::Request<Empty<Bytes>>,
) -> std::io::Result<http::Response<hyper::body::Incoming>> {
    Http1Conn::open(dialer).await?.send(req).await
}

/// One Engine API request with no body: status, headers and the whole (small) answer.
/// Errors are sentences that say what went wrong and what to change.
async fn request(
    host: &DockerHost,
    method: http::Method,
    path: &str,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    let dialer = Dialer::new(host).map_err(|e| e.to_string())?;
    let mut conn = Http1Conn::open(&dialer)
        .await
        .map_err(|e| explain::explain(&host.peer(), &e))?;
    request_on(&mut conn, host, method, path).await
}

/// [`request`] on an open connection, which stays usable for another request.
async fn request_on(
    conn: &mut Http1Conn,
    host: &DockerHost,
    method: http::Method,
    path: &str,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, "api.moby.localhost");
    if method == http::Method::POST {
        req = req.header(http::header::CONTENT_LENGTH, "0");
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = conn
        .send(req)
        .await
        .map_err(|e| explain::explain(&host.peer(), &e))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| {
            format!(
                "reading the answer to {method} {path}: {}",
                explain::explain(&host.peer(), &e)
            )
        })?
        .to_bytes();
    if explain::is_https_refusal(parts.status, &body) {
        if let Endpoint::Tcp { tls: None, .. } = host.endpoint {
            return Err(explain::plain_to_tls(&host.peer()));
        }
    }
    Ok((parts.status, parts.headers, body))
}

/// `GET /_ping` → the engine's API version (`Api-Version` header).
pub(crate) async fn api_version(host: &DockerHost) -> Result<String, String> {
    let dialer = Dialer::new(host).map_err(|e| e.to_string())?;
    let mut conn = Http1Conn::open(&dialer)
        .await
        .map_err(|e| explain::explain(&host.peer(), &e))?;
    ping_on(&mut conn, host).await
}

/// `GET /_ping` on an open connection → the engine's API version (`Api-Version` header).
async fn ping_on(conn: &mut Http1Conn, host: &DockerHost) -> Result<String, String> {
    let (status, headers, _) = request_on(conn, host, http::Method::GET, "/_ping").await?;
    headers
        .get("api-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{host} answered /_ping with {status} and no Api-Version header: it is not a Docker Engine API (check {})",
                host.origin.setting()
            )
        })
}

/// `GET path` on the engine: its status and whole (small) body.
async fn get(host: &DockerHost, path: &str) -> Result<(http::StatusCode, Bytes), String> {
    let (status, _, body) = request(host, http::Method::GET, path).await?;
    Ok((status, body))
}

/// How many CPUs the engine's host has (`GET /info`, `NCPU`).
pub async fn engine_cpus(host: &DockerHost) -> Result<usize, String> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "NCPU")]
        ncpu: usize,
    }
    let (status, body) = get(host, "/info").await?;
    if status != http::StatusCode::OK {
        return Err(format!("{host} answered {status} for /info"));
    }
    let info: Info = serde_json::from_slice(&body)
        .map_err(|e| format!("{host} answered /info without NCPU: {e}"))?;
    Ok(info.ncpu.max(1))
}

/// `GET /info`, read for where the engine keeps its images: containerd's socket when it uses
/// the containerd image store (`None` otherwise) and the namespace of its images.
pub(super) async fn containerd_store(
    host: &DockerHost,
) -> Result<(Option<PathBuf>, String), String> {
    let (status, body) = get(host, "/info").await?;
    if status != http::StatusCode::OK {
        return Err(format!("{host} answered {status} for /info"));
    }
    let info: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{host} answered /info with unexpected JSON: {e}"))?;
    Ok(super::engine_store::containerd_from_info(&info))
}

/// The image ID `reference` names in the engine's image store, `None` if it has no such image.
///
/// Asks `GET /images/{name}/history`, whose newest entry carries the image ID: on the
/// containerd image store `/images/{name}/json` also sums the size of every layer's snapshot,
/// which made a check cost ~20 ms of engine time against ~5 ms for the history.
pub async fn image_id(host: &DockerHost, reference: &str) -> Result<Option<String>, String> {
    #[derive(serde::Deserialize)]
    struct HistoryEntry {
        #[serde(rename = "Id")]
        id: String,
    }
    // The name is a path segment: escape what would end it early.
    let name: String = form_urlencoded::byte_serialize(reference.as_bytes()).collect();
    let (status, body) = get(host, &format!("/images/{name}/history")).await?;
    match status {
        http::StatusCode::OK => {
            let entries: Vec<HistoryEntry> = serde_json::from_slice(&body).map_err(|e| {
                format!("{host} answered image {reference}'s history with unexpected JSON: {e}")
            })?;
            entries
                .into_iter()
                .next()
                .map(|e| Some(e.id))
                .ok_or_else(|| format!("{host} answered an empty history for image {reference}"))
        }
        http::StatusCode::NOT_FOUND => Ok(None),
        s => Err(format!("{host} answered {s} for image {reference}")),
    }
}

/// Loads a `docker` exporter tarball into the engine's image store as it arrives, like
/// `docker load`: `POST /images/load?quiet=1` (Engine API "Import images"), the body streamed
/// from `body` with chunked transfer encoding, never held whole. The body ends when `body`
/// does; an error from `body` breaks the request off (the engine then loads nothing), so a
/// tarball that was cut short is never loaded as if it were whole. Returns the engine's
/// "Loaded image…" lines. Dropping the future drops the connection with it.
///
/// Errors (messages name the engine): it cannot be reached; it refused the request; its
/// progress stream reported an error (`errorDetail`, e.g. a truncated tarball).
pub async fn load_image<S>(host: &DockerHost, body: S) -> Result<Vec<String>, String>
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    use futures_util::StreamExt;
    let body = http_body_util::StreamBody::new(body.map(|b| b.map(hyper::body::Frame::data)));
    let req = http::Request::post("/images/load?quiet=1")
        .header(http::header::HOST, "api.moby.localhost")
        .header(http::header::CONTENT_TYPE, "application/x-tar")
        .body(body)
        .map_err(|e| e.to_string())?;
    let explained = |e: &(dyn std::error::Error + 'static)| explain::explain(&host.peer(), e);
    let dialer = Dialer::new(host).map_err(|e| e.to_string())?;
    let stream = dialer
        .dial()
        .await
        .map_err(|e| format!("cannot load the image: {}", explained(&e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot load the image: {}", explained(&e)))?;
    // The connection is driven here, not in a task of its own, so that dropping this future
    // (a build that is canceled) also ends the request.
    let mut conn = std::pin::pin!(conn);
    let exchange = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, text))
    };
    let mut exchange = std::pin::pin!(exchange);
    let answered = tokio::select! {
        r = &mut exchange => r,
        c = &mut conn => match c {
            Err(e) => Err(e),
            // The engine closed the connection: what it answered before is still to be read.
            Ok(()) => exchange.await,
        },
    };
    let (status, text) = match answered {
        Ok(a) => a,
        Err(e) => {
            // The connection's own error says more than the request's "canceled".
            let why = match tokio::time::timeout(Duration::from_secs(2), &mut conn).await {
                Ok(Err(conn_err)) => explained(&conn_err),
                _ => explained(&e),
            };
            return Err(format!("loading the image into {host}: {why}"));
        }
    };
    let text = String::from_utf8_lossy(&text);
    if !status.is_success() {
        return Err(format!(
            "{host} refused to load the image ({status}): {}",
            text.trim()
        ));
    }
    // A JSON message stream: {"stream":"Loaded image: …\n"} or {"errorDetail":{…},"error":…}.
    let mut loaded = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if let Some(e) = v["errorDetail"]["message"].as_str().or(v["error"].as_str()) {
            return Err(format!("{host} could not load the image: {e}"));
        }
        if let Some(s) = v["stream"].as_str() {
            loaded.extend(
                s.lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    Ok(loaded)
}

/// `POST path` with no body on the engine: its status and whole (small) body.
async fn post(host: &DockerHost, path: &str) -> Result<(http::StatusCode, Bytes), String> {
    let (status, _, body) = request(host, http::Method::POST, path).await?;
    Ok((status, body))
}

/// Splits a tag reference into the engine's `repo` and `tag` query values:
/// `localhost:5000/a/b:1` → (`localhost:5000/a/b`, `1`), `app` → (`app`, `latest`). A colon
/// before the last `/` is a registry port, not a tag. Digests are refused: a tag is what gets
/// made.
fn split_tag_reference(target: &str) -> Result<(&str, &str), String> {
    if target.contains('@') {
        return Err(format!(
            "cannot tag an image as {target}: the new name must be a tag (repo[:tag]), not a digest"
        ));
    }
    let last_slash = target.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match target[last_slash..].rfind(':') {
        Some(i) => (&target[..last_slash + i], &target[last_slash + i + 1..]),
        None => (target, "latest"),
    };
    if repo.is_empty() || repo.ends_with('/') || tag.is_empty() {
        return Err(format!(
            "cannot tag an image as {target:?}: expected [registry/]repository[:tag]"
        ));
    }
    Ok((repo, tag))
}

/// Gives image `source` (an image ID `sha256:…`, or a reference the engine knows) the name
/// `target` (`[registry/]repository[:tag]`, `latest` when untagged) in the engine's image
/// store, like `docker tag`: `POST /images/{source}/tag?repo=…&tag=…` (Engine API "Tag an
/// image"), answered 201. Nothing is pulled or pushed; an existing `target` is moved.
///
/// Errors (messages name the engine): `target` with a digest or without a repository; the
/// engine lacking `source` (404: build it with `--load` or pull it first); any other refusal,
/// with the engine's own message (e.g. an invalid name).
pub async fn tag_image(host: &DockerHost, source: &str, target: &str) -> Result<(), String> {
    let (repo, tag) = split_tag_reference(target)?;
    // The source is a path segment: escape what would end it early.
    let name: String = form_urlencoded::byte_serialize(source.as_bytes()).collect();
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("repo", repo)
        .append_pair("tag", tag)
        .finish();
    let (status, body) = post(host, &format!("/images/{name}/tag?{query}")).await?;
    match status {
        http::StatusCode::CREATED | http::StatusCode::OK => Ok(()),
        http::StatusCode::NOT_FOUND => Err(format!(
            "image {source} is not in {host}'s image store, so it cannot be tagged {target} \
             (build it with --load, or pull it, first)"
        )),
        s => {
            #[derive(serde::Deserialize)]
            struct EngineError {
                message: String,
            }
            let why = serde_json::from_slice::<EngineError>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
            Err(format!(
                "{host} answered {s} when tagging image {source} as {target}: {why}"
            ))
        }
    }
}

fn parse_api_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `POST /grpc` + `Upgrade: h2c`; the returned IO is a blank socket ready for the h2 preface.
/// hyper's upgrade keeps any bytes the daemon sent after the 101 head (its SETTINGS frame may
/// arrive in the same read).
/// `spare` is a connection that answered `/_ping` a moment ago: reusing it saves a TLS
/// handshake or an ssh login; if it has gone meanwhile, a fresh one is used.
async fn upgrade_grpc(
    dialer: Dialer,
    spare: Option<Http1Conn>,
) -> Result<hyper::upgrade::Upgraded, std::io::Error> {
    let req = || {
        http::Request::post("/grpc")
            .header(http::header::HOST, "api.moby.localhost")
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "h2c")
            .header(http::header::CONTENT_LENGTH, "0")
            .body(Empty::new())
            .map_err(std::io::Error::other)
    };
    let reused = match spare {
        Some(mut c) if c.sender.is_ready() => c.send(req()?).await.ok(),
        _ => None,
    };
    let resp = match reused {
        Some(r) => r,
        None => send(&dialer, req()?).await?,
    };
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(std::io::Error::other(format!(
            "POST /grpc on {} answered {} instead of 101 Switching Protocols (Docker 19.03+ is needed)",
            dialer.host,
            resp.status()
        )));
    }
    hyper::upgrade::on(resp)
        .await
        .map_err(std::io::Error::other)
}

/// Builds a channel to the engine's BuildKit, choosing native gRPC or the `/grpc` upgrade.
/// The engine must answer `/_ping` first: that is where a wrong address, TLS setting or
/// ssh login shows, with the fix.
pub(crate) async fn channel(
    host: &DockerHost,
    timeout: Duration,
) -> Result<(Channel, String), TransportError> {
    let conn_err = |why: String| TransportError::Connect {
        addr: format!("docker ({host})"),
        why,
    };
    if let Endpoint::Unix(p) = &host.endpoint {
        if !p.exists() && host.origin != Origin::Default {
            return Err(TransportError::Failed(explain::missing_socket(
                &host.peer(),
                p,
            )));
        }
        if !p.exists() {
            return Err(conn_err(format!(
                "{} does not exist: is dockerd running? (check {})",
                p.display(),
                host.origin.setting()
            )));
        }
    }
    let dialer = Dialer::new(host)?;
    let pinged = async {
        let mut conn = Http1Conn::open(&dialer)
            .await
            .map_err(|e| explain::explain(&host.peer(), &e))?;
        let version = ping_on(&mut conn, host).await?;
        Ok::<_, String>((version, conn))
    };
    let (version, conn) = tokio::time::timeout(timeout, pinged)
        .await
        .map_err(|_| {
            conn_err(format!(
                "no answer to /_ping within {}s (raise --timeout for a slow link; check {})",
                timeout.as_secs(),
                host.origin.setting()
            ))
        })?
        .map_err(TransportError::Failed)?;
    // Native gRPC needs HTTP/2 from the first byte; over TLS that would take ALPN, which the
    // engine's TLS listener does not offer, so TLS always upgrades.
    let tls = matches!(host.endpoint, Endpoint::Tcp { tls: Some(_), .. });
    let native = !tls && parse_api_version(&version).is_some_and(|v| v >= NATIVE_GRPC_API);
    let ep = endpoint("http://api.moby.localhost", timeout);
    if native {
        let d = dialer.clone();
        let ch = ep
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let d = d.clone();
                async move { d.dial().await.map(TokioIo::new) }
            }))
            .await;
        if let Ok(ch) = ch {
            return Ok((ch, version));
        }
    }
    // The first upgrade reuses the pinged connection; reconnects dial afresh.
    let spare = Arc::new(std::sync::Mutex::new(Some(conn)));
    let d = dialer.clone();
    let ch = ep
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let spare = spare.lock().ok().and_then(|mut s| s.take());
            upgrade_grpc(d.clone(), spare)
        }))
        .await
        .map_err(|e| TransportError::Failed(explain::explain(&host.peer(), &e)))?;
    Ok((ch, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compare() {
        assert!(parse_api_version("1.53").unwrap() >= NATIVE_GRPC_API);
        assert!(parse_api_version("1.51").unwrap() < NATIVE_GRPC_API);
        assert!(parse_api_version("2.0").unwrap() >= NATIVE_GRPC_API);
        assert!(parse_api_version("x").is_none());
    }

    #[test]
    fn tag_references_split_into_repo_and_tag() {
        for (target, want) in [
            ("localhost:5000/a/b:1", ("localhost:5000/a/b", "1")),
            ("localhost:5000/a/b", ("localhost:5000/a/b", "latest")),
            ("app", ("app", "latest")),
            ("app:v1.2", ("app", "v1.2")),
            (
                "docker.io/library/busybox:musl",
                ("docker.io/library/busybox", "musl"),
            ),
        ] {
            assert_eq!(split_tag_reference(target).unwrap(), want, "{target}");
        }
        let digest = "app@sha256:b62db74c6c27d77a9eb6514cfb68f6fa1e524de457443bbec0768941462b5cd3";
        assert!(split_tag_reference(digest)
            .unwrap_err()
            .contains("not a digest"));
        for bad in ["", ":1", "app:", "a/"] {
            assert!(split_tag_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn docker_host_parse() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock").unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.1.2.3").unwrap(),
            Endpoint::Tcp {
                host: "10.1.2.3".into(),
                port: 2375,
                tls: None
            }
        );
        assert!(matches!(
            Endpoint::parse("ssh://me@x").unwrap(),
            Endpoint::Ssh(SshTarget { ref host, .. }) if host == "x"
        ));
        for bad in ["ssh://me:pw@x", "http://x", "tcp://", "ssh://"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
