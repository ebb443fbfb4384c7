//! Docker Engine's embedded BuildKit. Engines with API ≥ 1.53 serve gRPC natively on the API
//! socket (HTTP/2 prior knowledge); older ones (19.03+) need `POST /grpc` with `Upgrade: h2c`,
//! after which the hijacked socket carries a fresh h2c connection that *we* start with the
//! client preface. Every reconnect performs a new upgrade.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Uri};

use super::{endpoint, error_chain, split_host_port, TransportError};

/// The Docker API endpoint (`DOCKER_HOST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    Unix(PathBuf),
    Tcp(String, u16),
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DockerHost::Unix(p) => write!(f, "unix://{}", p.display()),
            DockerHost::Tcp(h, p) => write!(f, "tcp://{h}:{p}"),
        }
    }
}

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// First API version whose socket routes HTTP/2 gRPC natively.
const NATIVE_GRPC_API: (u32, u32) = (1, 53);

impl DockerHost {
    /// `$DOCKER_HOST`, else the default socket.
    pub fn from_env() -> Result<DockerHost, TransportError> {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => DockerHost::parse(&h),
            _ => Ok(DockerHost::Unix(PathBuf::from(DEFAULT_SOCKET))),
        }
    }

    pub fn parse(s: &str) -> Result<DockerHost, TransportError> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(bad(s, "the socket path is empty"));
            }
            return Ok(DockerHost::Unix(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (h, p) = split_host_port(rest).ok_or_else(|| bad(s, "expected tcp://HOST:PORT"))?;
            return Ok(DockerHost::Tcp(h, p));
        }
        if s.starts_with('/') {
            return Ok(DockerHost::Unix(PathBuf::from(s)));
        }
        Err(bad(
            s,
            "Docker host must be unix:///path/to/docker.sock or tcp://HOST:PORT (TLS Docker hosts are not supported)",
        ))
    }
}

fn bad(addr: &str, why: &str) -> TransportError {
    TransportError::BadAddress {
        addr: addr.to_string(),
        why: why.to_string(),
    }
}

/// A raw connection to the Docker API socket.
enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn dial(host: &DockerHost) -> std::io::Result<Stream> {
    match host {
        DockerHost::Unix(p) => Ok(Stream::Unix(tokio::net::UnixStream::connect(p).await?)),
        DockerHost::Tcp(h, p) => {
            let s = tokio::net::TcpStream::connect((h.as_str(), *p)).await?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the response head and the connection
/// (upgraded when the daemon answered 101).
async fn http1_request(
    host: &DockerHost,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let stream = dial(host).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        // Errors here surface on the request future; the task only drives the connection.
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.map_err(|e| error_chain(&e))
}

/// `GET /_ping` → the engine's API version (`Api-Version` header).
pub(crate) async fn api_version(host: &DockerHost) -> Result<String, String> {
    let req = http::Request::get("/_ping")
        .header(http::header::HOST, "api.moby.localhost")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = http1_request(host, req).await?;
    let v = resp
        .headers()
        .get("api-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{} answered /_ping without an Api-Version header: is it a Docker Engine?",
                host
            )
        })?;
    // Drain so the connection closes cleanly.
    let _ = resp.into_body().collect().await;
    Ok(v)
}

/// `GET path` on the engine: its status and whole (small) body.
async fn get(host: &DockerHost, path: &str) -> Result<(http::StatusCode, Bytes), String> {
    let req = http::Request::get(path)
        .header(http::header::HOST, "api.moby.localhost")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = http1_request(host, req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading {host}'s answer to GET {path}: {e}"))?
        .to_bytes();
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
/// from `chunks` with chunked transfer encoding, never held whole. Ends when `chunks` ends.
/// Returns the engine's "Loaded image…" lines.
///
/// Errors (messages name the engine): it cannot be reached; it refused the request; its
/// progress stream reported an error (`errorDetail`, e.g. a truncated tarball).
pub async fn load_image(
    host: &DockerHost,
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
) -> Result<Vec<String>, String> {
    use futures_util::StreamExt;
    let body = http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(chunks)
            .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
    );
    let req = http::Request::post("/images/load?quiet=1")
        .header(http::header::HOST, "api.moby.localhost")
        .header(http::header::CONTENT_TYPE, "application/x-tar")
        .body(body)
        .map_err(|e| e.to_string())?;
    let stream = dial(host)
        .await
        .map_err(|e| format!("cannot reach the Docker Engine at {host} to load the image: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("loading the image into {host}: {}", error_chain(&e)))?;
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading {host}'s answer to the image load: {e}"))?
        .to_bytes();
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
    let req = http::Request::post(path)
        .header(http::header::HOST, "api.moby.localhost")
        .header(http::header::CONTENT_LENGTH, "0")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = http1_request(host, req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading {host}'s answer to POST {path}: {e}"))?
        .to_bytes();
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
async fn upgrade_grpc(host: DockerHost) -> Result<hyper::upgrade::Upgraded, std::io::Error> {
    let io_err = |m: String| std::io::Error::other(m);
    let req = http::Request::post("/grpc")
        .header(http::header::HOST, "api.moby.localhost")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "h2c")
        .header(http::header::CONTENT_LENGTH, "0")
        .body(Empty::new())
        .map_err(|e| io_err(e.to_string()))?;
    let resp = http1_request(&host, req).await.map_err(io_err)?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(io_err(format!(
            "POST /grpc on {host} answered {} instead of 101 Switching Protocols (Docker 19.03+ is needed)",
            resp.status()
        )));
    }
    hyper::upgrade::on(resp)
        .await
        .map_err(|e| io_err(error_chain(&e)))
}

/// Builds a channel to the engine's BuildKit, choosing native gRPC or the `/grpc` upgrade.
pub(crate) async fn channel(
    host: &DockerHost,
    timeout: Duration,
) -> Result<(Channel, String), TransportError> {
    let conn_err = |why: String| TransportError::Connect {
        addr: host.to_string(),
        why,
    };
    if let DockerHost::Unix(p) = host {
        if !p.exists() {
            return Err(conn_err(format!("{} does not exist", p.display())));
        }
    }
    let version = tokio::time::timeout(timeout, api_version(host))
        .await
        .map_err(|_| conn_err(format!("no answer to /_ping within {}s", timeout.as_secs())))?
        .map_err(conn_err)?;
    let native = parse_api_version(&version).is_some_and(|v| v >= NATIVE_GRPC_API);
    let ep = endpoint("http://api.moby.localhost", timeout);
    if native {
        let h = host.clone();
        let ch = ep
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let h = h.clone();
                async move { dial(&h).await.map(TokioIo::new) }
            }))
            .await;
        if let Ok(ch) = ch {
            return Ok((ch, version));
        }
    }
    let h = host.clone();
    let ch = ep
        .connect_with_connector(tower::service_fn(move |_: Uri| upgrade_grpc(h.clone())))
        .await
        .map_err(|e| conn_err(error_chain(&e)))?;
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
            DockerHost::parse("unix:///var/run/docker.sock").unwrap(),
            DockerHost::Unix("/var/run/docker.sock".into())
        );
        assert!(DockerHost::parse("ssh://x").is_err());
    }
}
