//! Asking a registry about images over the OCI distribution API: does a reference exist and
//! what is its manifest digest (for skips and cache-from fallback), and re-tagging an existing
//! manifest (so a fresh CI runner can reuse a build instead of repeating it).
//!
//! It owns reference parsing (Docker's normalization: `busybox` → `docker.io/library/busybox`),
//! the plain-http rule for local registries and the bearer-token dance. It must not know about
//! builds, targets or BuildKit; credentials come from [`crate::session::auth`].
//!
//! Transport: HTTP/1.1 via hyper; https (rustls, bundled web PKI roots), except plain http for
//! `localhost`, `*.localhost`, `*.local`, loopback IPs, and hosts listed in
//! `BK_BUILD_INSECURE_REGISTRIES` (comma-separated `host[:port]`), mirroring Docker's
//! "insecure registry" rule.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::session::auth::{lookup_credentials, AuthError, RegistryCredentials};

/// Every manifest media type we can re-tag or report, most specific first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// The distribution spec caps manifests at 4 MiB; token responses are tiny.
const MAX_BODY: usize = 4 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Where `docker.io` references are served from.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const INSECURE_ENV: &str = "BK_BUILD_INSECURE_REGISTRIES";

/// What can go wrong talking to a registry. Each message says where and what to do.
#[derive(thiserror::Error, Debug)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("cannot reach registry at {url}: {message} (is the registry running and the address right?)")]
    Connect { url: String, message: String },

    #[error("registry request {url} timed out after {} s (is the registry overloaded or unreachable?)", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },

    #[error("registry {host} denied access to {repository}: {message} (run `docker login {host}` with an account allowed to {action} it)")]
    Unauthorized {
        host: String,
        repository: String,
        action: &'static str,
        message: String,
    },

    #[error("registry answered {status} to {method} {url}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },

    #[error("registry {host} sent an unusable answer: {message}")]
    Protocol { host: String, message: String },

    #[error("cannot look up credentials for {host}: {source}")]
    Credentials {
        host: String,
        #[source]
        source: AuthError,
    },

    #[error("{reference} does not exist in the registry")]
    NotFound { reference: String },

    #[error("cannot re-tag {from} as {to}: {reason}")]
    Retag {
        from: String,
        to: String,
        reason: String,
    },
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// As users write it: `docker.io`, `localhost:5000`, `ghcr.io`.
    pub registry: String,
    /// `library/busybox`, `acme/pybase`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:…`, when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `[registry/]repo[:tag][@digest]` with Docker's defaults (docker.io, `library/`).
    pub fn parse(reference: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                let Some((algo, hex)) = digest.split_once(':') else {
                    return Err(bad("the digest must look like sha256:<hex>"));
                };
                let ok_algo = !algo.is_empty()
                    && algo.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)
                    });
                let ok_hex = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok_algo || !ok_hex {
                    return Err(bad("the digest must look like sha256:<hex>"));
                }
                (name, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                let ok = !tag.is_empty()
                    && tag.len() <= 128
                    && !tag.starts_with(['.', '-'])
                    && tag
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    return Err(bad(
                        "a tag is 1-128 letters, digits, '_', '.' or '-' and starts with a letter, digit or '_'",
                    ));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        // Docker's rule: the first component is a registry if it has a '.' or ':', is
        // `localhost`, or has upper-case letters (repository names cannot).
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let ok_repo = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
                    && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
            });
        if !ok_repo {
            return Err(bad(
                "repository names are lower-case letters, digits and single '.', '_' or '-' separators",
            ));
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the API is served from (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What goes after `/manifests/`: the digest if pinned, else the tag (default `latest`).
    fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The manifest digest `reference` resolves to, or `None` if the registry has no such
/// manifest. For a multi-platform image this is the index digest.
pub async fn manifest_digest(reference: &str) -> Result<Option<String>, RegistryError> {
    let r = Reference::parse(reference)?;
    let mut s = Session::new(&r)?;
    let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_ref());
    let accept = [(header::ACCEPT, MANIFEST_ACCEPT)];
    let resp = s
        .request(Method::HEAD, &path, &accept, Bytes::new(), "pull")
        .await?;
    match resp.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        _ => return Err(s.status_error(Method::HEAD, &path, &resp)),
    }
    if let Some(d) = content_digest(&resp.headers) {
        return Ok(Some(d));
    }
    // Some registries omit the header on HEAD; GET always carries it.
    let resp = s
        .request(Method::GET, &path, &accept, Bytes::new(), "pull")
        .await?;
    match resp.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        _ => return Err(s.status_error(Method::GET, &path, &resp)),
    }
    match content_digest(&resp.headers).or(r.digest) {
        Some(d) => Ok(Some(d)),
        None => Err(RegistryError::Protocol {
            host: r.registry,
            message: format!("no Docker-Content-Digest header for {reference}"),
        }),
    }
}

/// Makes `new_reference` (same registry and repository, with a tag) point at the manifest
/// `existing` resolves to, byte for byte, without pulling or pushing any layer. Returns the
/// manifest digest.
pub async fn tag_existing(existing: &str, new_reference: &str) -> Result<String, RegistryError> {
    let from = Reference::parse(existing)?;
    let to = Reference::parse(new_reference)?;
    let retag_err = |reason: &str| RegistryError::Retag {
        from: existing.to_string(),
        to: new_reference.to_string(),
        reason: reason.to_string(),
    };
    if from.registry != to.registry || from.repository != to.repository {
        // Another repository would first need every blob mounted into it.
        return Err(retag_err(
            "both must be in the same registry and repository (push or build into the other one instead)",
        ));
    }
    let (Some(tag), None) = (&to.tag, &to.digest) else {
        return Err(retag_err("the new reference needs a tag and no digest"));
    };

    let mut s = Session::new(&from)?;
    let get_path = format!("/v2/{}/manifests/{}", from.repository, from.manifest_ref());
    let accept = [(header::ACCEPT, MANIFEST_ACCEPT)];
    let got = s
        .request(Method::GET, &get_path, &accept, Bytes::new(), "pull")
        .await?;
    match got.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(RegistryError::NotFound {
                reference: existing.to_string(),
            })
        }
        _ => return Err(s.status_error(Method::GET, &get_path, &got)),
    }
    let media_type = got
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RegistryError::Protocol {
            host: from.registry.clone(),
            message: format!("no Content-Type for the manifest of {existing}"),
        })?;
    let source_digest = content_digest(&got.headers).or(from.digest.clone());

    let put_path = format!("/v2/{}/manifests/{tag}", to.repository);
    let content_type = [(header::CONTENT_TYPE, media_type.as_str())];
    let put = s
        .request(Method::PUT, &put_path, &content_type, got.body, "push")
        .await?;
    if put.status != StatusCode::CREATED && put.status != StatusCode::OK {
        return Err(s.status_error(Method::PUT, &put_path, &put));
    }
    content_digest(&put.headers)
        .or(source_digest)
        .ok_or_else(|| RegistryError::Protocol {
            host: to.registry.clone(),
            message: format!("no Docker-Content-Digest after tagging {new_reference}"),
        })
}

fn content_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// True for hosts Docker treats as insecure by default (loopback) plus mDNS names and the
/// user's explicit list.
fn is_plain_http(host: &str) -> bool {
    let listed = std::env::var(INSECURE_ENV).unwrap_or_default();
    if listed
        .split(',')
        .map(str::trim)
        .any(|h| !h.is_empty() && h.eq_ignore_ascii_case(host))
    {
        return true;
    }
    let name = strip_port(host).to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") || name.ends_with(".local") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// `host:port` → `host`, `[::1]:5000` → `[::1]`, leaving a bare IPv6 literal alone.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A bearer or basic challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="…",service="…",scope="repository:a/b:pull,push"` (values may be
/// quoted, with commas inside quotes).
fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.trim().is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    _ => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_string(), val.trim().to_string()));
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for http (local/insecure registries) and https (everything else, verified
/// against the bundled Mozilla roots so it works the same on every machine).
fn client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Client::builder(TokioExecutor::new()).build(https)
    })
}

/// One registry conversation: remembers the authorization it earned so a GET followed by a
/// PUT does the token dance at most once per needed scope.
struct Session {
    scheme: &'static str,
    host: String,
    registry: String,
    repository: String,
    authorization: Option<HeaderValue>,
    credentials: Option<Option<RegistryCredentials>>,
}

impl Session {
    fn new(r: &Reference) -> Result<Session, RegistryError> {
        let host = r.api_host().to_string();
        Ok(Session {
            scheme: if is_plain_http(&host) {
                "http"
            } else {
                "https"
            },
            host,
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            authorization: None,
            credentials: None,
        })
    }

    /// Sends, and on a 401 authorizes per the challenge and sends once more.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        action: &'static str,
    ) -> Result<Response, RegistryError> {
        let url = format!("{}://{}{}", self.scheme, self.host, path);
        let first = self
            .send(method.clone(), &url, headers, body.clone())
            .await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let Some(challenge) = challenge else {
            return Err(self.unauthorized(action, "no usable WWW-Authenticate challenge"));
        };
        self.authorize(&challenge, action).await?;
        let second = self.send(method, &url, headers, body).await?;
        if second.status == StatusCode::UNAUTHORIZED || second.status == StatusCode::FORBIDDEN {
            let msg = error_message(&second.body);
            return Err(self.unauthorized(action, &msg));
        }
        Ok(second)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
    ) -> Result<Response, RegistryError> {
        let uri: Uri = url.parse().map_err(|e| RegistryError::Protocol {
            host: self.host.clone(),
            message: format!("bad URL {url}: {e}"),
        })?;
        let mut builder = Request::builder().method(method.clone()).uri(uri).header(
            header::USER_AGENT,
            concat!("bk-build/", env!("CARGO_PKG_VERSION")),
        );
        for (k, v) in headers {
            builder = builder.header(k, *v);
        }
        if let Some(auth) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| RegistryError::Protocol {
                host: self.host.clone(),
                message: e.to_string(),
            })?;
        http_call(req, url, method == Method::HEAD).await
    }

    async fn authorize(
        &mut self,
        challenge: &Challenge,
        action: &'static str,
    ) -> Result<(), RegistryError> {
        let creds = self.credentials().await?;
        if challenge.scheme.eq_ignore_ascii_case("basic") {
            let Some(c) = creds else {
                return Err(self.unauthorized(action, "the registry requires a login"));
            };
            self.authorization = Some(basic_auth(&c)?);
            return Ok(());
        }
        if !challenge.scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.unauthorized(
                action,
                &format!("unsupported authentication scheme {}", challenge.scheme),
            ));
        }
        let realm = challenge
            .param("realm")
            .ok_or_else(|| self.unauthorized(action, "bearer challenge without realm"))?;
        // Ask for what this request needs even if the challenge named less (some registries
        // omit the scope on the first 401).
        let scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| {
                let actions = if action == "push" {
                    "pull,push"
                } else {
                    "pull"
                };
                format!("repository:{}:{actions}", self.repository)
            });
        let url = url_with_query(realm, challenge.param("service"), &scope);
        let protocol = |e: String| RegistryError::Protocol {
            host: self.host.clone(),
            message: e,
        };
        let (req, url) = match &creds {
            // An identity token (empty user name) is an OAuth2 refresh token, which token
            // services only accept as a POST form.
            Some(c) if c.username.is_empty() => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token");
                form.append_pair("refresh_token", &c.secret);
                form.append_pair("client_id", "bk-build");
                if let Some(service) = challenge.param("service") {
                    form.append_pair("service", service);
                }
                form.append_pair("scope", &scope);
                let uri: Uri = realm
                    .parse()
                    .map_err(|e| protocol(format!("bad token realm {realm}: {e}")))?;
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(uri)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(form.finish())))
                    .map_err(|e| protocol(e.to_string()))?;
                (req, realm.to_string())
            }
            _ => {
                let uri: Uri = url
                    .parse()
                    .map_err(|e| protocol(format!("bad token realm {realm}: {e}")))?;
                let mut req = Request::builder().method(Method::GET).uri(uri);
                if let Some(c) = &creds {
                    req = req.header(header::AUTHORIZATION, basic_auth(c)?);
                }
                let req = req
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| protocol(e.to_string()))?;
                (req, url)
            }
        };
        let resp = http_call(req, &url, false).await?;
        if resp.status != StatusCode::OK {
            let msg = format!(
                "token service answered {}: {}",
                resp.status.as_u16(),
                error_message(&resp.body)
            );
            return Err(self.unauthorized(action, &msg));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&resp.body).map_err(|e| RegistryError::Protocol {
                host: self.host.clone(),
                message: format!("token response is not JSON: {e}"),
            })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Protocol {
                host: self.host.clone(),
                message: "token response holds no token".into(),
            })?;
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            RegistryError::Protocol {
                host: self.host.clone(),
                message: "token contains characters not allowed in a header".into(),
            }
        })?;
        self.authorization = Some(value);
        Ok(())
    }

    async fn credentials(&mut self) -> Result<Option<RegistryCredentials>, RegistryError> {
        if let Some(c) = &self.credentials {
            return Ok(c.clone());
        }
        let c =
            lookup_credentials(&self.host)
                .await
                .map_err(|source| RegistryError::Credentials {
                    host: self.host.clone(),
                    source,
                })?;
        self.credentials = Some(c.clone());
        Ok(c)
    }

    fn unauthorized(&self, action: &'static str, message: &str) -> RegistryError {
        RegistryError::Unauthorized {
            host: self.registry.clone(),
            repository: self.repository.clone(),
            action,
            message: message.to_string(),
        }
    }

    fn status_error(&self, method: Method, path: &str, resp: &Response) -> RegistryError {
        RegistryError::Status {
            method: method.to_string(),
            url: format!("{}://{}{}", self.scheme, self.host, path),
            status: resp.status.as_u16(),
            message: error_message(&resp.body),
        }
    }
}

fn basic_auth(c: &RegistryCredentials) -> Result<HeaderValue, RegistryError> {
    let raw = format!("{}:{}", c.username, c.secret);
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
        RegistryError::Protocol {
            host: String::new(),
            message: "credentials cannot be sent in a header".into(),
        }
    })?;
    v.set_sensitive(true);
    Ok(v)
}

async fn http_call(
    req: Request<Full<Bytes>>,
    url: &str,
    head: bool,
) -> Result<Response, RegistryError> {
    let call = async {
        let resp = client()
            .request(req)
            .await
            .map_err(|e| RegistryError::Connect {
                url: url.to_string(),
                message: error_chain(&e),
            })?;
        let (parts, body) = resp.into_parts();
        let body = if head {
            Bytes::new()
        } else {
            Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| RegistryError::Connect {
                    url: url.to_string(),
                    message: format!("reading the response: {e}"),
                })?
                .to_bytes()
        };
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| RegistryError::Timeout {
            url: url.to_string(),
        })?
}

/// hyper's top-level error says only "client error (Connect)"; the cause is in the chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The first message of a distribution-spec error body, else the body's start.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        if let Some(first) = e.errors.into_iter().next() {
            return match (first.code, first.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (c, m) => c.or(m).unwrap_or_default(),
            };
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(no details)".to_string()
    } else {
        text.chars().take(200).collect()
    }
}

/// `realm` with `service` and each `scope` word as query parameters. A function of its own
/// because the serializer is not `Sync`: built and dropped here, it never lives across an
/// await, so the token request's future can move between threads.
fn url_with_query(realm: &str, service: Option<&str>, scope: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(service) = service {
        query.append_pair("service", service);
    }
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        query.append_pair("scope", s);
    }
    let sep = if realm.contains('?') { '&' } else { '?' };
    format!("{realm}{sep}{}", query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const D: &str = "sha256:b62db74c6c27d77a9eb6514cfb68f6fa1e524de457443bbec0768941462b5cd3";

    #[test]
    fn parses_and_normalizes_like_docker() {
        let r = parse("localhost:5000/acme/pybase:dev");
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.tag.as_deref(),
                r.digest.as_deref()
            ),
            ("localhost:5000", "acme/pybase", Some("dev"), None)
        );
        let r = parse("docker.io/library/busybox");
        assert_eq!(
            (r.api_host(), r.repository.as_str()),
            (DOCKER_HUB_API, "library/busybox")
        );
        assert_eq!(r.manifest_ref(), "latest");
        let r = parse("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        let r = parse("index.docker.io/acme/app:1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "acme/app")
        );
        let r = parse("acme/app");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "acme/app")
        );
        let r = parse(&format!("127.0.0.1:5000/busybox:latest@{D}"));
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.manifest_ref(), D, "a digest wins over the tag");
        let r = parse(&format!("localhost/x@{D}"));
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("localhost", None));
        let r = parse("ghcr.io/o/r/deep/path:v1.2-rc_3");
        assert_eq!(r.repository, "o/r/deep/path");
        assert_eq!(r.to_string(), "ghcr.io/o/r/deep/path:v1.2-rc_3");
        // A port-like suffix on a registry is not a tag.
        let r = parse("localhost:5000/app");
        assert_eq!((r.registry.as_str(), r.tag), ("localhost:5000", None));
    }

    #[test]
    fn rejects_malformed_references_with_reasons() {
        for (s, why) in [
            ("", "empty"),
            ("Busybox", "lower-case"),
            ("localhost:5000/acme//x", "lower-case"),
            ("app:", "tag"),
            ("app:-x", "tag"),
            ("app@sha256:xyz", "digest"),
            ("app@sha256", "digest"),
            ("localhost:5000/", "lower-case"),
        ] {
            let err = Reference::parse(s).unwrap_err().to_string();
            assert!(err.contains(why), "{s:?}: {err}");
        }
    }

    #[test]
    fn plain_http_only_for_local_registries() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "registry.local:80",
            "reg.localhost",
        ] {
            assert!(is_plain_http(h), "{h}");
        }
        for h in [
            "registry-1.docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
        ] {
            assert!(!is_plain_http(h), "{h}");
        }
        assert_eq!(Session::new(&parse("ghcr.io/o/r")).unwrap().scheme, "https");
        assert_eq!(
            Session::new(&parse("localhost:5000/o/r")).unwrap().scheme,
            "http"
        );
    }

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:5001/auth",service="Docker registry",scope="repository:acme/x:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:5001/auth"));
        assert_eq!(c.param("service"), Some("Docker registry"));
        assert_eq!(c.param("SCOPE"), Some("repository:acme/x:pull,push"));
        let c = parse_challenge(r#"Basic realm="Registry \"R\"""#).unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.param("realm")),
            ("Basic", Some("Registry \"R\""))
        );
        let c = parse_challenge("Bearer realm=http://a/t, service=svc").unwrap();
        assert_eq!(
            (c.param("realm"), c.param("service")),
            (Some("http://a/t"), Some("svc"))
        );
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn error_bodies_are_summarized() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_message(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(error_message(b""), "(no details)");
        assert_eq!(error_message(b"plain text"), "plain text");
    }

    #[tokio::test]
    async fn retag_refuses_other_repositories_and_digest_targets() {
        let err = tag_existing("localhost:5000/a:1", "localhost:5000/b:1")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("same registry and repository"),
            "{err}"
        );
        let err = tag_existing("localhost:5000/a:1", &format!("localhost:5000/a@{D}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("needs a tag"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_registry_is_a_connect_error_naming_the_url() {
        // Port 9 (discard) on loopback: nothing listens in the test environment.
        let err = manifest_digest("127.0.0.1:9/none/x:1").await.unwrap_err();
        assert!(matches!(err, RegistryError::Connect { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("http://127.0.0.1:9/v2/none/x/manifests/1"),
            "{err}"
        );
    }

    /// A registry that demands a bearer token from its own token service, enough to
    /// exercise the 401 → token → retry dance without a real auth server.
    mod fake {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        pub const DIGEST: &str =
            "sha256:1111111111111111111111111111111111111111111111111111111111111111";

        #[derive(Debug, Clone)]
        pub struct Seen {
            pub method: String,
            pub path: String,
            pub authorization: Option<String>,
            pub content_type: Option<String>,
            pub body: Vec<u8>,
        }

        pub async fn start() -> (String, Arc<Mutex<Vec<Seen>>>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (a, log) = (addr.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let (addr, log) = (a.clone(), log.clone());
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        let head_end = loop {
                            let n = sock.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let mut lines = head.lines();
                        let mut first = lines.next().unwrap_or("").split(' ');
                        let method = first.next().unwrap_or("").to_string();
                        let path = first.next().unwrap_or("").to_string();
                        let header = |name: &str| {
                            head.lines().find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                        };
                        let len: usize = header("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            let n = sock.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let body = buf[head_end..].to_vec();
                        let auth = header("authorization");
                        let form = String::from_utf8_lossy(&body).into_owned();
                        log.lock().unwrap().push(Seen {
                            method: method.clone(),
                            path: path.clone(),
                            authorization: auth.clone(),
                            content_type: header("content-type"),
                            body,
                        });
                        let (status, headers, body) =
                            respond(&addr, &method, &path, &form, auth.as_deref());
                        let mut out = format!(
                            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        let mut bytes = out.into_bytes();
                        if method != "HEAD" {
                            bytes.extend_from_slice(body.as_bytes());
                        }
                        let _ = sock.write_all(&bytes).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            (addr, seen)
        }

        fn respond(
            addr: &str,
            method: &str,
            path: &str,
            form: &str,
            auth: Option<&str>,
        ) -> (&'static str, Vec<(&'static str, String)>, String) {
            if method == "POST" && path == "/token" {
                let field = |name: &str| {
                    form_urlencoded::parse(form.as_bytes())
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                };
                if field("grant_type").as_deref() != Some("refresh_token")
                    || field("refresh_token").as_deref() != Some("idtok")
                {
                    return ("401 Unauthorized", vec![], String::new());
                }
                return (
                    "200 OK",
                    vec![],
                    r#"{"access_token":"pull-token"}"#.to_string(),
                );
            }
            if let Some(q) = path.strip_prefix("/token?") {
                let scopes: Vec<String> = form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.into_owned())
                    .collect();
                let token = if scopes.iter().any(|s| s.ends_with("pull,push")) {
                    "push-token"
                } else {
                    "pull-token"
                };
                return ("200 OK", vec![], format!("{{\"token\":\"{token}\"}}"));
            }
            let needed = if method == "PUT" {
                "push-token"
            } else {
                "pull-token"
            };
            let granted = auth == Some(&format!("Bearer {needed}"))
                || (needed == "pull-token" && auth == Some("Bearer push-token"));
            if !granted {
                let actions = if method == "PUT" { "pull,push" } else { "pull" };
                let challenge = format!(
                    "Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:acme/app:{actions}\""
                );
                let body =
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                return (
                    "401 Unauthorized",
                    vec![("WWW-Authenticate", challenge)],
                    body.to_string(),
                );
            }
            let manifest_type = "application/vnd.oci.image.manifest.v1+json";
            match (method, path) {
                ("HEAD" | "GET", "/v2/acme/app/manifests/v1") => (
                    "200 OK",
                    vec![
                        ("Docker-Content-Digest", DIGEST.to_string()),
                        ("Content-Type", manifest_type.to_string()),
                    ],
                    "{\"schemaVersion\":2}".to_string(),
                ),
                ("PUT", "/v2/acme/app/manifests/v2") => (
                    "201 Created",
                    vec![("Docker-Content-Digest", DIGEST.to_string())],
                    String::new(),
                ),
                _ => (
                    "404 Not Found",
                    vec![],
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                        .to_string(),
                ),
            }
        }
    }

    #[tokio::test]
    async fn bearer_token_dance_then_digest_and_missing_tag() {
        let (addr, seen) = fake::start().await;
        let digest = manifest_digest(&format!("{addr}/acme/app:v1"))
            .await
            .unwrap();
        assert_eq!(digest.as_deref(), Some(fake::DIGEST));
        {
            let log = seen.lock().unwrap();
            let calls: Vec<(String, String, Option<String>)> = log
                .iter()
                .map(|s| (s.method.clone(), s.path.clone(), s.authorization.clone()))
                .collect();
            assert_eq!(calls.len(), 3, "{calls:?}");
            assert_eq!((calls[0].0.as_str(), calls[0].2.as_deref()), ("HEAD", None));
            assert!(calls[1].1.starts_with("/token?"), "{calls:?}");
            assert!(
                calls[1].1.contains("scope=repository%3Aacme%2Fapp%3Apull"),
                "{calls:?}"
            );
            assert!(calls[1].1.contains("service=fake"), "{calls:?}");
            assert_eq!(calls[2].2.as_deref(), Some("Bearer pull-token"));
        }
        assert_eq!(
            manifest_digest(&format!("{addr}/acme/app:nope"))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn retag_gets_then_puts_the_same_bytes_with_a_push_token() {
        let (addr, seen) = fake::start().await;
        let d = tag_existing(
            &format!("{addr}/acme/app:v1"),
            &format!("{addr}/acme/app:v2"),
        )
        .await
        .unwrap();
        assert_eq!(d, fake::DIGEST);
        let put = seen
            .lock()
            .unwrap()
            .iter()
            .rfind(|s| s.method == "PUT")
            .cloned()
            .expect("a PUT");
        assert_eq!(put.path, "/v2/acme/app/manifests/v2");
        assert_eq!(put.authorization.as_deref(), Some("Bearer push-token"));
        assert_eq!(
            put.content_type.as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(put.body, b"{\"schemaVersion\":2}");

        let err = tag_existing(
            &format!("{addr}/acme/app:gone"),
            &format!("{addr}/acme/app:v2"),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn identity_token_is_exchanged_with_an_oauth_post() {
        let (addr, seen) = fake::start().await;
        let r = Reference::parse(&format!("{addr}/acme/app:v1")).unwrap();
        let mut s = Session::new(&r).unwrap();
        s.credentials = Some(Some(RegistryCredentials {
            username: String::new(),
            secret: "idtok".into(),
        }));
        let accept = [(header::ACCEPT, MANIFEST_ACCEPT)];
        let resp = s
            .request(
                Method::HEAD,
                "/v2/acme/app/manifests/v1",
                &accept,
                Bytes::new(),
                "pull",
            )
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        let post = seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.method == "POST")
            .cloned()
            .expect("a token POST");
        assert_eq!(post.path, "/token");
        let form = String::from_utf8(post.body).unwrap();
        for part in [
            "grant_type=refresh_token",
            "refresh_token=idtok",
            "service=fake",
            "scope=repository%3Aacme%2Fapp%3Apull",
        ] {
            assert!(form.contains(part), "{form}");
        }
    }
}
