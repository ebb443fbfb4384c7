//! Asking a registry about images over the OCI distribution API: does a reference exist and
//! what is its manifest digest (for skips and cache-from fallback), and re-tagging an existing
//! manifest (so a fresh CI runner can reuse a build instead of repeating it), also into
//! another repository of the same registry, whose blobs it then mounts or streams across.
//!
//! It owns reference parsing (Docker's normalization: `busybox` → `docker.io/library/busybox`),
//! the plain-http rule for local registries, the bearer-token dance (one token may cover
//! several repositories), what an image manifest or index names, and moving blobs between
//! repositories without holding one in memory. It must not know about builds, targets or
//! BuildKit; credentials come from [`crate::session::auth`].
//!
//! Transport: HTTP/1.1 via hyper; https (rustls, bundled web PKI roots), except plain http for
//! `localhost`, `*.localhost`, `*.local`, loopback IPs, and hosts listed in
//! `BK_BUILD_INSECURE_REGISTRIES` (comma-separated `host[:port]`), mirroring Docker's
//! "insecure registry" rule.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
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

    #[error("blob transfer {url} made no progress for {seconds} s (is the registry or its storage stuck?)")]
    Stalled { url: String, seconds: u64 },

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
                if !valid_digest(digest) {
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

/// A manifest as a registry served it — exact bytes, media type and digest — kept so that
/// putting it under another tag needs no second fetch (see [`put_manifest_as`]).
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Where it was read: registry and repository matter, the tag does not.
    source: Reference,
    manifest: Manifest,
    /// `sha256:…`, from the registry's `Docker-Content-Digest`.
    pub digest: String,
}

/// The manifest `reference` names, with its bytes, or `None` if the registry has no such
/// manifest. One `GET`: as cheap as asking for the digest alone, and [`put_manifest_as`] can
/// then re-tag it with a single `PUT`.
///
/// Errors: as [`manifest_digest`]; a registry that sends no `Docker-Content-Digest` is a
/// [`RegistryError::Protocol`] (use [`manifest_digest`] there).
pub async fn get_manifest(reference: &str) -> Result<Option<StoredManifest>, RegistryError> {
    let r = Reference::parse(reference)?;
    let mut s = Session::new(&r)?;
    let manifest =
        match fetch_manifest(&mut s, &r.repository, r.manifest_ref(), None, reference).await {
            Ok(m) => m,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
    let digest = manifest
        .digest
        .clone()
        .or(r.digest.clone())
        .ok_or_else(|| RegistryError::Protocol {
            host: r.registry.clone(),
            message: format!("no Docker-Content-Digest header for {reference}"),
        })?;
    Ok(Some(StoredManifest {
        source: r,
        manifest,
        digest,
    }))
}

/// Puts, under the tag `reference` names, an OCI image index with no manifests that carries
/// only `annotations` (OCI image-spec "Image Index": `manifests` may be empty; annotations on
/// an index are free-form). No blob is needed, so it is one `PUT`: small facts kept beside a
/// repository's images, e.g. which daemon built a target last (`bake` with a pool of daemons).
///
/// Errors: as [`tag_existing`] for the `PUT` ([`RegistryError::Unauthorized`] without push
/// access).
pub async fn put_annotations(
    reference: &str,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<(), RegistryError> {
    let r = Reference::parse(reference)?;
    let tag = r.tag.clone().ok_or_else(|| RegistryError::Retag {
        from: String::new(),
        to: reference.to_string(),
        reason: "a tag is needed".into(),
    })?;
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
        "annotations": annotations,
    });
    let m = Manifest {
        media_type: OCI_INDEX.to_string(),
        body: Bytes::from(body.to_string()),
        digest: None,
    };
    let mut s = Session::new(&r)?;
    put_manifest(&mut s, &r.repository, &tag, &m).await?;
    Ok(())
}

/// The annotations of the manifest `reference` names (see [`put_annotations`]), or `None`
/// when there is no such manifest. One `GET`.
///
/// Errors: as [`get_manifest`]; a body that is not JSON is a [`RegistryError::Protocol`].
pub async fn get_annotations(
    reference: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, RegistryError> {
    let Some(m) = get_manifest(reference).await? else {
        return Ok(None);
    };
    #[derive(serde::Deserialize)]
    struct Annotated {
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    let a: Annotated =
        serde_json::from_slice(&m.manifest.body).map_err(|e| RegistryError::Protocol {
            host: m.source.registry.clone(),
            message: format!("{reference}: the manifest is not JSON with annotations: {e}"),
        })?;
    Ok(Some(a.annotations))
}

/// Makes `new_reference` point at `m`: within `m`'s repository one `PUT` of the bytes already
/// held; elsewhere as [`tag_existing`] from `m`'s repository by digest. Returns the digest the
/// registry stored. Errors: as [`tag_existing`].
pub async fn put_manifest_as(
    m: &StoredManifest,
    new_reference: &str,
) -> Result<String, RegistryError> {
    let to = Reference::parse(new_reference)?;
    let source = format!("{}/{}@{}", m.source.registry, m.source.repository, m.digest);
    let (Some(tag), None, true) = (
        &to.tag,
        &to.digest,
        to.registry == m.source.registry && to.repository == m.source.repository,
    ) else {
        return tag_existing(&source, new_reference).await;
    };
    let mut s = Session::new(&to)?;
    match put_manifest(&mut s, &to.repository, tag, &m.manifest).await? {
        Some(stored) if stored != m.digest => Err(RegistryError::Retag {
            from: source,
            to: new_reference.to_string(),
            reason: format!(
                "the registry stored the manifest as {stored}, not {}: it changed the bytes",
                m.digest
            ),
        }),
        _ => Ok(m.digest.clone()),
    }
}

/// Makes `new_reference` (a tag in the same registry) point at the manifest `existing`
/// resolves to, byte for byte and with the same media type, so its digest does not change;
/// returns that digest. Nothing is rebuilt, and within one repository nothing but the manifest
/// moves.
///
/// * Same repository: one manifest `GET`, one `PUT` under the new tag (OCI distribution-spec,
///   "Pushing Manifests").
/// * Another repository of the same registry: first every blob the manifest names (config and
///   layers of an image manifest; for an index, each child manifest's blobs, then the child
///   itself by digest) is made to exist in the target repository: left alone when `HEAD`
///   finds it there ("Checking if content exists in the registry"), else mounted from the
///   source ("Mounting a blob from another repository", `201 Created`), else, when the
///   registry opens an upload session instead (`202 Accepted`), streamed from the source into
///   that session ("Pushing a blob monolithically", the `PUT` of POST-then-PUT) chunk by
///   chunk, never held whole in memory. Up to [`BLOB_CONCURRENCY`] blobs of one manifest move
///   at once. Layers with a non-distributable (foreign) media type that carry `urls` are not
///   copied: by definition they live elsewhere. The token asked for covers `pull` on the source
///   and `pull,push` on the target repository.
/// * Another registry: [`RegistryError::Retag`]; copying between registries is out of scope.
///
/// Errors: [`RegistryError::NotFound`] when `existing` (or a manifest its index names) does not
/// exist; [`RegistryError::Retag`] for a target without a tag, another registry, a manifest type
/// whose blobs cannot be known (only OCI and Docker v2 image manifests and indexes can be copied
/// across repositories), a blob missing from the source, a failed blob stream, or a registry
/// that stored a different digest; [`RegistryError::Unauthorized`] names the repository and the
/// access that was missing; [`RegistryError::Stalled`] when a blob stream stops moving.
pub async fn tag_existing(existing: &str, new_reference: &str) -> Result<String, RegistryError> {
    let from = Reference::parse(existing)?;
    let to = Reference::parse(new_reference)?;
    let retag_err = |reason: &str| RegistryError::Retag {
        from: existing.to_string(),
        to: new_reference.to_string(),
        reason: reason.to_string(),
    };
    if from.registry != to.registry {
        return Err(retag_err(&format!(
            "they are in different registries ({} and {}) and copying images between registries \
             is not supported (build or push into {} instead, or copy with `docker buildx \
             imagetools create --tag {new_reference} {existing}`)",
            from.registry, to.registry, to.registry
        )));
    }
    let (Some(tag), None) = (&to.tag, &to.digest) else {
        return Err(retag_err("the new reference needs a tag and no digest"));
    };

    let mut s = Session::new(&from)?;
    let copy = (from.repository != to.repository).then(|| RepoCopy {
        from: &from.repository,
        to: &to.repository,
        existing,
        new_reference,
    });
    if copy.is_some() {
        // Everything the copy will need, asked for with the first token so one token serves
        // the manifest GET, every mount and stream, and the final PUT.
        s.scopes = vec![Access::pull(&from.repository), Access::push(&to.repository)];
    }
    let source = fetch_manifest(
        &mut s,
        &from.repository,
        from.manifest_ref(),
        None,
        existing,
    )
    .await?;
    let source_digest = source.digest.clone().or(from.digest.clone());
    if let Some(c) = &copy {
        copy_contents(&mut s, c, &source, &mut HashSet::new(), 0).await?;
    }
    let stored = put_manifest(&mut s, &to.repository, tag, &source).await?;
    match (stored, source_digest) {
        (Some(stored), Some(source)) if stored != source => Err(retag_err(&format!(
            "the registry stored the manifest as {stored}, not {source}: it changed the bytes"
        ))),
        (Some(d), _) | (None, Some(d)) => Ok(d),
        (None, None) => Err(RegistryError::Protocol {
            host: to.registry.clone(),
            message: format!("no Docker-Content-Digest after tagging {new_reference}"),
        }),
    }
}

/// How many blobs of one manifest are checked, mounted or streamed at once.
pub const BLOB_CONCURRENCY: usize = 4;
/// Indexes nest (an index of indexes); content addressing rules out cycles, this rules out
/// absurd depth.
const MAX_INDEX_DEPTH: usize = 4;
/// Registries hand out blob storage (S3, CDN) by redirect.
const MAX_REDIRECTS: usize = 5;
/// A blob transfer fails when no byte moved for this long…
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// …or, once every byte is sent, when the registry takes this long to commit it (storage
/// backends may copy a large blob server-side before answering).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(300);

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image-spec "Non-distributable layers" (`…nondistributable.v1.tar`, `+gzip`, `+zstd`).
const OCI_NONDISTRIBUTABLE_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";
/// Docker image manifest v2 schema 2 foreign layers (Windows base layers).
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// A manifest as the registry served it: the exact bytes and media type, so putting it
/// elsewhere keeps its digest.
#[derive(Debug, Clone)]
struct Manifest {
    media_type: String,
    body: Bytes,
    /// `Docker-Content-Digest`, when the registry sent it.
    digest: Option<String>,
}

/// The two manifest shapes whose contents we know (OCI image-spec "Image Manifest" and "Image
/// Index", and their Docker v2 schema 2 counterparts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManifestKind {
    /// Names a config blob and layer blobs.
    Image,
    /// Names other manifests (one per platform, attestations).
    Index,
}

impl ManifestKind {
    fn of(media_type: &str) -> Option<ManifestKind> {
        match media_type {
            OCI_MANIFEST | DOCKER_MANIFEST => Some(ManifestKind::Image),
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
            _ => None,
        }
    }
}

/// An OCI content descriptor (image-spec "Descriptors"): the fields a copy needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    urls: Vec<String>,
}

/// What a manifest names that must exist in a repository before the manifest can be put there.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Contents {
    /// An image manifest's config, then its layers (foreign layers with `urls` left out).
    Blobs(Vec<Descriptor>),
    /// An index's child manifests.
    Manifests(Vec<Descriptor>),
}

/// The blobs or child manifests a manifest of `media_type` names. Every digest is checked to
/// look like one, as it goes into URL paths. The error is a reason for [`RegistryError::Retag`].
fn contents(media_type: &str, body: &[u8]) -> Result<Contents, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let Some(kind) = ManifestKind::of(media_type) else {
        return Err(format!(
            "its manifest is a {media_type}, and only OCI or Docker v2 image manifests and \
             indexes can be copied to another repository (tag it within its own repository, or \
             push it again)"
        ));
    };
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| format!("its {media_type} manifest does not parse: {e}"))?;
    let (contents, named) = match kind {
        ManifestKind::Image => {
            let Some(config) = raw.config else {
                return Err(format!("its {media_type} manifest has no config"));
            };
            let blobs: Vec<Descriptor> = std::iter::once(config)
                .chain(raw.layers.into_iter().filter(|l| !is_foreign(l)))
                .collect();
            (Contents::Blobs(blobs.clone()), blobs)
        }
        ManifestKind::Index => (Contents::Manifests(raw.manifests.clone()), raw.manifests),
    };
    if let Some(bad) = named.iter().find(|d| !valid_digest(&d.digest)) {
        return Err(format!(
            "its manifest names {:?}, which is not a digest",
            bad.digest
        ));
    }
    Ok(contents)
}

/// A layer stored outside the registry (image-spec "Non-distributable layers"): its `urls`
/// say where; registries need not hold it, so it is not copied.
fn is_foreign(d: &Descriptor) -> bool {
    !d.urls.is_empty()
        && (d.media_type.starts_with(OCI_NONDISTRIBUTABLE_PREFIX)
            || d.media_type == DOCKER_FOREIGN_LAYER)
}

/// `algorithm:hex` (image-spec "Digests"), with nothing that could change a URL path.
fn valid_digest(digest: &str) -> bool {
    let Some((algo, hex)) = digest.split_once(':') else {
        return false;
    };
    let ok_algo = !algo.is_empty()
        && algo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
    ok_algo && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A copy between two repositories of one registry, and the names its errors give.
struct RepoCopy<'a> {
    from: &'a str,
    to: &'a str,
    existing: &'a str,
    new_reference: &'a str,
}

impl RepoCopy<'_> {
    fn err(&self, reason: String) -> RegistryError {
        RegistryError::Retag {
            from: self.existing.to_string(),
            to: self.new_reference.to_string(),
            reason,
        }
    }
}

/// Makes everything `m` names exist in `c.to`: for an image manifest its blobs; for an index
/// each child manifest (skipped when the target has it already, as a registry accepts a
/// manifest only once what it names is there), its contents first, then the child by digest.
/// `seen` holds digests already handled by this copy (platforms often share layers).
fn copy_contents<'a>(
    s: &'a mut Session,
    c: &'a RepoCopy<'a>,
    m: &'a Manifest,
    seen: &'a mut HashSet<String>,
    depth: usize,
) -> BoxFuture<'a, Result<(), RegistryError>> {
    Box::pin(async move {
        match contents(&m.media_type, &m.body).map_err(|r| c.err(r))? {
            Contents::Blobs(blobs) => copy_blobs(s, c, blobs, seen).await,
            Contents::Manifests(children) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(c.err(format!(
                        "its indexes nest deeper than {MAX_INDEX_DEPTH} levels"
                    )));
                }
                for child in children {
                    if !seen.insert(child.digest.clone()) {
                        continue;
                    }
                    if manifest_exists(s, c.to, &child.digest).await? {
                        continue;
                    }
                    let name = format!("{}@{}", c.existing, child.digest);
                    let got =
                        fetch_manifest(s, c.from, &child.digest, Some(&child.media_type), &name)
                            .await?;
                    if let Some(d) = got.digest.as_ref().filter(|d| **d != child.digest) {
                        return Err(c.err(format!(
                            "the registry served {d} when asked for child manifest {}",
                            child.digest
                        )));
                    }
                    copy_contents(s, c, &got, seen, depth + 1).await?;
                    let stored = put_manifest(s, c.to, &child.digest, &got).await?;
                    if let Some(d) = stored.filter(|d| *d != child.digest) {
                        return Err(c.err(format!(
                            "the registry stored child manifest {} as {d}",
                            child.digest
                        )));
                    }
                }
                Ok(())
            }
        }
    })
}

/// [`ensure_blob`] for each blob not yet in `seen`, [`BLOB_CONCURRENCY`] at a time, each on a
/// clone of the session (which already holds the copy's token); the first error cancels the
/// rest.
async fn copy_blobs(
    s: &Session,
    c: &RepoCopy<'_>,
    blobs: Vec<Descriptor>,
    seen: &mut HashSet<String>,
) -> Result<(), RegistryError> {
    let todo: Vec<Descriptor> = blobs
        .into_iter()
        .filter(|d| seen.insert(d.digest.clone()))
        .collect();
    futures_util::stream::iter(todo)
        .map(|d| {
            let mut s = s.clone();
            async move { ensure_blob(&mut s, c, &d).await }
        })
        .buffer_unordered(BLOB_CONCURRENCY)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Makes blob `d` exist in `c.to`: there already (`HEAD` 200), else mounted from `c.from`
/// (`POST …/blobs/uploads/?mount=<digest>&from=<repo>` answered `201 Created`), else streamed
/// into the upload session the registry opened instead (`202 Accepted` with a `Location`).
/// OCI distribution-spec "Mounting a blob from another repository".
async fn ensure_blob(
    s: &mut Session,
    c: &RepoCopy<'_>,
    d: &Descriptor,
) -> Result<(), RegistryError> {
    let path = format!("/v2/{}/blobs/{}", c.to, d.digest);
    let head = s
        .request_with(
            Method::HEAD,
            &path,
            &[],
            Bytes::new(),
            &[Access::pull(c.to)],
        )
        .await?;
    match head.status {
        StatusCode::OK => return Ok(()),
        StatusCode::NOT_FOUND => {}
        _ => return Err(s.status_error(Method::HEAD, &path, &head)),
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("mount", &d.digest)
        .append_pair("from", c.from)
        .finish();
    let path = format!("/v2/{}/blobs/uploads/?{query}", c.to);
    let needs = [Access::push(c.to), Access::pull(c.from)];
    let resp = s
        .request_with(Method::POST, &path, &[], Bytes::new(), &needs)
        .await?;
    match resp.status {
        StatusCode::CREATED => Ok(()),
        StatusCode::ACCEPTED => {
            let location = resp
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| RegistryError::Protocol {
                    host: s.registry.clone(),
                    message: format!("no Location for the upload session opened by POST {path}"),
                })?;
            stream_blob(s, c, d, location).await
        }
        _ => Err(s.status_error(Method::POST, &path, &resp)),
    }
}

/// Streams blob `d` from `c.from` into the upload session at `location` with one `PUT
/// …?digest=<digest>` (OCI distribution-spec "Pushing a blob monolithically"): the source's
/// response body is the request body, so memory stays flat whatever the blob's size, and the
/// registry checks the digest. Fails with [`RegistryError::Stalled`] when nothing moves.
async fn stream_blob(
    s: &mut Session,
    c: &RepoCopy<'_>,
    d: &Descriptor,
    location: &str,
) -> Result<(), RegistryError> {
    let upload = absolute_url(&s.url("/"), location).ok_or_else(|| RegistryError::Protocol {
        host: s.registry.clone(),
        message: format!("the upload Location {location:?} is neither a URL nor an absolute path"),
    })?;
    // Our token goes only where it came from; a storage URL elsewhere carries its own.
    let same_origin = s.same_origin(&upload);
    let upload = with_digest(&upload, &d.digest);
    let shown = upload.split('?').next().unwrap_or(&upload).to_string();

    let (src, src_url) = s.open_blob(c.from, &d.digest).await?;
    match src.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(c.err(format!(
                "blob {} named by the manifest is missing from {}",
                d.digest, c.from
            )))
        }
        status => {
            let resp = read_small(src, &src_url, false).await?;
            return Err(RegistryError::Status {
                method: "GET".into(),
                url: src_url,
                status: status.as_u16(),
                message: error_message(&resp.body),
            });
        }
    }
    if let Some(len) = content_length(src.headers()).filter(|len| *len != d.size) {
        return Err(RegistryError::Protocol {
            host: s.registry.clone(),
            message: format!(
                "{src_url} is {len} bytes but the manifest says blob {} is {}",
                d.digest, d.size
            ),
        });
    }

    let moved = Arc::new(AtomicU64::new(0));
    let counter = moved.clone();
    let body: Body = src
        .into_body()
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        })
        .map_err(|e| Box::new(e) as BoxError)
        .boxed();
    let size = d.size.to_string();
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::CONTENT_LENGTH, size.as_str()),
    ];
    let req = s.build(Method::PUT, &upload, &headers, body, same_origin)?;
    let put = unless_stalled(&shown, &moved, d.size, client().request(req))
        .await?
        .map_err(|e| {
            c.err(format!(
                "streaming blob {} from {} into {} failed: {}",
                d.digest,
                c.from,
                c.to,
                error_chain(&e)
            ))
        })?;
    let put = read_small(put, &shown, false).await?;
    match put.status {
        StatusCode::CREATED => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(s.unauthorized(&[Access::push(c.to)], &error_message(&put.body)))
        }
        status => Err(RegistryError::Status {
            method: "PUT".into(),
            url: shown,
            status: status.as_u16(),
            message: error_message(&put.body),
        }),
    }
}

/// Runs `fut` (a transfer of `total` bytes whose progress `moved` counts) until done; fails
/// when no byte moved for [`STALL_TIMEOUT`], or, once all were sent, when the answer takes
/// longer than [`COMMIT_TIMEOUT`]. A long transfer is fine, a stuck one is not.
async fn unless_stalled<T>(
    url: &str,
    moved: &AtomicU64,
    total: u64,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, RegistryError> {
    const TICK: Duration = Duration::from_secs(1);
    tokio::pin!(fut);
    let mut last = moved.load(Ordering::Relaxed);
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep(TICK) => {
                let now = moved.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, tokio::time::Instant::now());
                    continue;
                }
                let limit = if now >= total { COMMIT_TIMEOUT } else { STALL_TIMEOUT };
                if since.elapsed() >= limit {
                    return Err(RegistryError::Stalled {
                        url: url.to_string(),
                        seconds: limit.as_secs(),
                    });
                }
            }
        }
    }
}

/// `GET /v2/<repo>/manifests/<reference>` (a tag or digest); `media_type`, if named by an
/// index, is accepted besides ours. 404 is [`RegistryError::NotFound`] naming `name`.
async fn fetch_manifest(
    s: &mut Session,
    repo: &str,
    reference: &str,
    media_type: Option<&str>,
    name: &str,
) -> Result<Manifest, RegistryError> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let accept = match media_type {
        Some(t) if !t.is_empty() && !MANIFEST_ACCEPT.contains(t) => {
            format!("{t}, {MANIFEST_ACCEPT}")
        }
        _ => MANIFEST_ACCEPT.to_string(),
    };
    let got = s
        .request_with(
            Method::GET,
            &path,
            &[(header::ACCEPT, accept.as_str())],
            Bytes::new(),
            &[Access::pull(repo)],
        )
        .await?;
    match got.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(RegistryError::NotFound {
                reference: name.to_string(),
            })
        }
        _ => return Err(s.status_error(Method::GET, &path, &got)),
    }
    let media_type = got
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RegistryError::Protocol {
            host: s.registry.clone(),
            message: format!("no Content-Type for the manifest of {name}"),
        })?;
    Ok(Manifest {
        media_type,
        digest: content_digest(&got.headers),
        body: got.body,
    })
}

/// `PUT /v2/<repo>/manifests/<reference>` with `m`'s bytes and media type; the digest the
/// registry says it stored, if it said.
async fn put_manifest(
    s: &mut Session,
    repo: &str,
    reference: &str,
    m: &Manifest,
) -> Result<Option<String>, RegistryError> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let put = s
        .request_with(
            Method::PUT,
            &path,
            &[(header::CONTENT_TYPE, m.media_type.as_str())],
            m.body.clone(),
            &[Access::push(repo)],
        )
        .await?;
    if put.status != StatusCode::CREATED && put.status != StatusCode::OK {
        return Err(s.status_error(Method::PUT, &path, &put));
    }
    Ok(content_digest(&put.headers))
}

/// Whether `repo` has manifest `digest` (`HEAD`).
async fn manifest_exists(s: &mut Session, repo: &str, digest: &str) -> Result<bool, RegistryError> {
    let path = format!("/v2/{repo}/manifests/{digest}");
    let head = s
        .request_with(
            Method::HEAD,
            &path,
            &[(header::ACCEPT, MANIFEST_ACCEPT)],
            Bytes::new(),
            &[Access::pull(repo)],
        )
        .await?;
    match head.status {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(s.status_error(Method::HEAD, &path, &head)),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Resolves a `Location` against `base` (a URL we requested): absolute URLs as they are,
/// `//host/…` with `base`'s scheme, `/path` on `base`'s origin. Relative paths without a
/// leading `/` are not used by registries and give `None`.
fn absolute_url(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Some(location.to_string());
    }
    let (scheme, rest) = base.split_once("://")?;
    if location.starts_with("//") {
        return Some(format!("{scheme}:{location}"));
    }
    if location.starts_with('/') {
        let authority = rest.split(['/', '?', '#']).next()?;
        return Some(format!("{scheme}://{authority}{location}"));
    }
    None
}

/// `url` with the `digest` query parameter that completes an upload.
fn with_digest(url: &str, digest: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("digest", digest)
        .finish();
    let sep = if url.ends_with(['?', '&']) {
        ""
    } else if url.contains('?') {
        "&"
    } else {
        "?"
    };
    format!("{url}{sep}{query}")
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

/// A whole (small) answer: manifests, token responses, error bodies.
struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body: whole (manifests, token forms) or streamed (a blob on its way from one
/// repository to another).
type Body = BoxBody<Bytes, BoxError>;
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// One client for http (local/insecure registries) and https (everything else, verified
/// against the bundled Mozilla roots so it works the same on every machine).
///
/// One per tokio runtime: a pooled connection is driven by a task spawned on the runtime
/// that opened it, so a connection kept past that runtime's end fails its next request
/// with "dispatch task is gone". A caller that runs registry calls on a second runtime
/// (a library user, a test) gets a fresh client and pool; the common case, one runtime
/// per process, builds the client once.
fn client() -> HttpClient {
    static CLIENT: Mutex<Option<(tokio::runtime::Id, HttpClient)>> = Mutex::new(None);
    let runtime = tokio::runtime::Handle::current().id();
    let mut slot = CLIENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((id, client)) = slot.as_ref() {
        if *id == runtime {
            return client.clone();
        }
    }
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(https);
    *slot = Some((runtime, client.clone()));
    client
}

/// Access a request needs to one repository; as a token scope `repository:<name>:pull` or,
/// for `push`, `repository:<name>:pull,push` (distribution token spec, "Token Scope and
/// Access").
#[derive(Debug, Clone, PartialEq, Eq)]
struct Access {
    repository: String,
    /// `pull` or `push`; also what [`RegistryError::Unauthorized`] tells the user to get.
    action: &'static str,
}

impl Access {
    fn pull(repository: &str) -> Access {
        Access {
            repository: repository.to_string(),
            action: "pull",
        }
    }

    fn push(repository: &str) -> Access {
        Access {
            repository: repository.to_string(),
            action: "push",
        }
    }
}

/// The space-separated scopes to ask a token for: the challenge's, then each wanted access,
/// merged per resource (`repository:a:pull` + `repository:a:pull,push` →
/// `repository:a:pull,push`). Token services take each as its own `scope` parameter
/// (distribution token spec, "Requesting a Token": `scope` may be given multiple times), so
/// one token can read one repository and write another, as a cross-repository mount needs.
fn token_scope(challenge: Option<&str>, wanted: &[Access]) -> String {
    fn add(merged: &mut Vec<(String, Vec<String>)>, resource: &str, actions: &str) {
        let i = match merged.iter().position(|(r, _)| r == resource) {
            Some(i) => i,
            None => {
                merged.push((resource.to_string(), Vec::new()));
                merged.len() - 1
            }
        };
        for a in actions.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            if !merged[i].1.iter().any(|have| have == a) {
                merged[i].1.push(a.to_string());
            }
        }
    }
    let mut merged = Vec::new();
    for word in challenge.unwrap_or("").split(' ').filter(|w| !w.is_empty()) {
        match word.rsplit_once(':') {
            Some((resource, actions)) => add(&mut merged, resource, actions),
            None => add(&mut merged, word, ""),
        }
    }
    for w in wanted {
        let actions = if w.action == "push" {
            "pull,push"
        } else {
            "pull"
        };
        add(
            &mut merged,
            &format!("repository:{}", w.repository),
            actions,
        );
    }
    merged
        .into_iter()
        .map(|(r, a)| {
            if a.is_empty() {
                r
            } else {
                format!("{r}:{}", a.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One registry conversation: remembers the authorization it earned so a GET followed by a
/// PUT does the token dance at most once per needed scope. Cloned, it carries that
/// authorization to concurrent blob copies.
#[derive(Clone)]
struct Session {
    scheme: &'static str,
    host: String,
    registry: String,
    /// The repository [`Session::request`] addresses.
    repository: String,
    authorization: Option<HeaderValue>,
    credentials: Option<Option<RegistryCredentials>>,
    /// Every access asked for so far; each new token asks for all of them, so a token earned
    /// for one repository is not traded for one that lacks it.
    scopes: Vec<Access>,
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
            scopes: Vec::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.host, path)
    }

    /// Whether `url` is on this session's registry (same scheme and host), where our
    /// authorization may go.
    fn same_origin(&self, url: &str) -> bool {
        let origin = format!("{}://{}", self.scheme, self.host);
        url.len() >= origin.len()
            && url.is_char_boundary(origin.len())
            && url[..origin.len()].eq_ignore_ascii_case(&origin)
            && matches!(url.as_bytes().get(origin.len()), None | Some(b'/' | b'?'))
    }

    /// [`Session::request_with`] needing `action` on the session's repository.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        action: &'static str,
    ) -> Result<Response, RegistryError> {
        let need = [Access {
            repository: self.repository.clone(),
            action,
        }];
        self.request_with(method, path, headers, body, &need).await
    }

    /// Sends, and on a 401 authorizes for `needs` (the first is the one named when access
    /// is denied) and sends once more; reads the whole (small) answer.
    async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        needs: &[Access],
    ) -> Result<Response, RegistryError> {
        let head = method == Method::HEAD;
        let resp = self.open(method, path, headers, body, needs).await?;
        read_small(resp, &self.url(path), head).await
    }

    /// [`Session::request_with`] without reading the answer's body, which may be a blob.
    async fn open(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        needs: &[Access],
    ) -> Result<http::Response<Incoming>, RegistryError> {
        let url = self.url(path);
        let head = method == Method::HEAD;
        let first = self
            .send(method.clone(), &url, headers, body.clone(), true)
            .await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        // Read the (small) 401 body so the connection goes back to the pool.
        let _ = read_small(first, &url, head).await;
        let Some(challenge) = challenge else {
            return Err(self.unauthorized(needs, "no usable WWW-Authenticate challenge"));
        };
        self.authorize(&challenge, needs).await?;
        let second = self.send(method, &url, headers, body, true).await?;
        if second.status() == StatusCode::UNAUTHORIZED || second.status() == StatusCode::FORBIDDEN {
            let resp = read_small(second, &url, head).await?;
            return Err(self.unauthorized(needs, &error_message(&resp.body)));
        }
        Ok(second)
    }

    /// `GET` blob `digest` of `repo` without reading it, following the redirects registries
    /// use to hand out storage URLs (our authorization goes along only to our own origin).
    /// Returns the answer and the URL that gave it.
    async fn open_blob(
        &mut self,
        repo: &str,
        digest: &str,
    ) -> Result<(http::Response<Incoming>, String), RegistryError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut url = self.url(&path);
        let mut resp = self
            .open(Method::GET, &path, &[], Bytes::new(), &[Access::pull(repo)])
            .await?;
        for _ in 0..MAX_REDIRECTS {
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                break;
            }
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| absolute_url(&url, l))
                .ok_or_else(|| RegistryError::Protocol {
                    host: self.registry.clone(),
                    message: format!("{url} redirected without a usable Location"),
                })?;
            let _ = read_small(resp, &url, false).await;
            let ours = self.same_origin(&next);
            resp = self
                .send(Method::GET, &next, &[], Bytes::new(), ours)
                .await?;
            url = next;
        }
        Ok((resp, url))
    }

    /// One request, waiting at most [`REQUEST_TIMEOUT`] for the answer's head.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        with_auth: bool,
    ) -> Result<http::Response<Incoming>, RegistryError> {
        let req = self.build(method, url, headers, full(body), with_auth)?;
        within(url, http_open(req, url)).await
    }

    fn build(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Body,
        with_auth: bool,
    ) -> Result<Request<Body>, RegistryError> {
        let uri: Uri = url.parse().map_err(|e| RegistryError::Protocol {
            host: self.host.clone(),
            message: format!("bad URL {url}: {e}"),
        })?;
        let mut builder = Request::builder().method(method).uri(uri).header(
            header::USER_AGENT,
            concat!("bk-build/", env!("CARGO_PKG_VERSION")),
        );
        for (k, v) in headers {
            builder = builder.header(k, *v);
        }
        if let Some(auth) = self.authorization.as_ref().filter(|_| with_auth) {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        builder.body(body).map_err(|e| RegistryError::Protocol {
            host: self.host.clone(),
            message: e.to_string(),
        })
    }

    async fn authorize(
        &mut self,
        challenge: &Challenge,
        needs: &[Access],
    ) -> Result<(), RegistryError> {
        let creds = self.credentials().await?;
        if challenge.scheme.eq_ignore_ascii_case("basic") {
            let Some(c) = creds else {
                return Err(self.unauthorized(needs, "the registry requires a login"));
            };
            self.authorization = Some(basic_auth(&c)?);
            return Ok(());
        }
        if !challenge.scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.unauthorized(
                needs,
                &format!("unsupported authentication scheme {}", challenge.scheme),
            ));
        }
        let realm = challenge
            .param("realm")
            .ok_or_else(|| self.unauthorized(needs, "bearer challenge without realm"))?;
        // Ask for what the challenge names, what this request needs and what earlier requests
        // needed (some registries omit the scope on the first 401, and a token replaces the
        // one before it).
        for n in needs {
            if !self.scopes.contains(n) {
                self.scopes.push(n.clone());
            }
        }
        let scope = token_scope(challenge.param("scope"), &self.scopes);
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
                    .body(full(Bytes::from(form.finish())))
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
                    .body(full(Bytes::new()))
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
            return Err(self.unauthorized(needs, &msg));
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

    /// Access denied for `needs`: names the first (the target of a write), and the others as
    /// a hint.
    fn unauthorized(&self, needs: &[Access], message: &str) -> RegistryError {
        use std::fmt::Write as _;
        let (repository, action) = needs.first().map_or_else(
            || (self.repository.clone(), "pull"),
            |a| (a.repository.clone(), a.action),
        );
        let mut message = message.to_string();
        for also in needs.iter().skip(1) {
            let _ = write!(
                message,
                "; the request also needs {} access to {}",
                also.action, also.repository
            );
        }
        RegistryError::Unauthorized {
            host: self.registry.clone(),
            repository,
            action,
            message,
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

/// One request, answered or failed; no timeout (callers choose one).
async fn http_open(
    req: Request<Body>,
    url: &str,
) -> Result<http::Response<Incoming>, RegistryError> {
    client()
        .request(req)
        .await
        .map_err(|e| RegistryError::Connect {
            url: url.to_string(),
            message: error_chain(&e),
        })
}

/// `fut`, or [`RegistryError::Timeout`] after [`REQUEST_TIMEOUT`].
async fn within<T>(
    url: &str,
    fut: impl std::future::Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| RegistryError::Timeout {
            url: url.to_string(),
        })?
}

/// Reads a whole answer of at most [`MAX_BODY`] bytes (none for `HEAD`).
async fn read_small(
    resp: http::Response<Incoming>,
    url: &str,
    head: bool,
) -> Result<Response, RegistryError> {
    let (parts, body) = resp.into_parts();
    let body = if head {
        Bytes::new()
    } else {
        within(url, async {
            Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| RegistryError::Connect {
                    url: url.to_string(),
                    message: format!("reading the response: {e}"),
                })
        })
        .await?
    };
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// One request and its whole (small) answer, within [`REQUEST_TIMEOUT`] for each.
async fn http_call(req: Request<Body>, url: &str, head: bool) -> Result<Response, RegistryError> {
    let resp = within(url, http_open(req, url)).await?;
    read_small(resp, url, head).await
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
    async fn retag_refuses_other_registries_and_digest_targets() {
        let err = tag_existing("localhost:5000/a:1", "ghcr.io/o/a:1")
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Retag { .. }), "{err}");
        assert!(err.to_string().contains("different registries"), "{err}");
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
        pub const IMAGE_DIGEST: &str =
            "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        pub const CONFIG: &str =
            "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
        pub const LAYER: &str =
            "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        pub const FOREIGN: &str =
            "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

        /// Larger than the 4 MiB a buffered answer may be: it can only pass as a stream.
        pub fn big_blob() -> String {
            "0123456789abcdef".repeat(5 << 16)
        }

        pub fn image_manifest() -> String {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{CONFIG}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{LAYER}","size":{}}},{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{FOREIGN}","size":9,"urls":["https://example.com/f"]}}]}}"#,
                big_blob().len()
            )
        }

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
            let writes = method == "PUT" || method == "POST";
            let needed = if writes { "push-token" } else { "pull-token" };
            let granted = auth == Some(&format!("Bearer {needed}"))
                || (needed == "pull-token" && auth == Some("Bearer push-token"));
            if !granted {
                let actions = if writes { "pull,push" } else { "pull" };
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
            let upload = "/v2/acme/copy/blobs/uploads/u1?_state=s1";
            match (method, path) {
                // A cross-repository copy into acme/copy: the config mounts, the layer is
                // refused (202) and must be streamed into the upload session.
                ("HEAD" | "GET", "/v2/acme/app/manifests/img") => (
                    "200 OK",
                    vec![
                        ("Docker-Content-Digest", IMAGE_DIGEST.to_string()),
                        ("Content-Type", manifest_type.to_string()),
                    ],
                    image_manifest(),
                ),
                ("HEAD", p) if p.starts_with("/v2/acme/copy/blobs/") => {
                    ("404 Not Found", vec![], String::new())
                }
                ("POST", p) if p.starts_with("/v2/acme/copy/blobs/uploads/?") => {
                    if p.contains(&CONFIG.replace(':', "%3A")) {
                        ("201 Created", vec![], String::new())
                    } else {
                        (
                            "202 Accepted",
                            vec![("Location", format!("http://{addr}{upload}"))],
                            String::new(),
                        )
                    }
                }
                ("GET", p) if p == format!("/v2/acme/app/blobs/{LAYER}") => {
                    ("200 OK", vec![], big_blob())
                }
                ("PUT", p) if p.starts_with(upload) => {
                    if form == big_blob() {
                        ("201 Created", vec![], String::new())
                    } else {
                        ("400 Bad Request", vec![], "wrong bytes".to_string())
                    }
                }
                ("PUT", "/v2/acme/copy/manifests/v3") => (
                    "201 Created",
                    vec![("Docker-Content-Digest", IMAGE_DIGEST.to_string())],
                    String::new(),
                ),
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
    async fn retag_into_another_repository_mounts_or_streams_each_blob_with_one_token() {
        let (addr, seen) = fake::start().await;
        let d = tag_existing(
            &format!("{addr}/acme/app:img"),
            &format!("{addr}/acme/copy:v3"),
        )
        .await
        .unwrap();
        assert_eq!(d, fake::IMAGE_DIGEST);
        let log = seen.lock().unwrap().clone();
        let calls: Vec<String> = log
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();

        // One token, asked for reading the source and writing the target.
        let tokens: Vec<&fake::Seen> = log
            .iter()
            .filter(|s| s.path.starts_with("/token"))
            .collect();
        assert_eq!(tokens.len(), 1, "{calls:#?}");
        assert!(
            tokens[0]
                .path
                .contains("scope=repository%3Aacme%2Fapp%3Apull&")
                && tokens[0]
                    .path
                    .contains("scope=repository%3Aacme%2Fcopy%3Apull%2Cpush"),
            "{}",
            tokens[0].path
        );
        // Both blobs were offered for mounting from acme/app; the foreign layer never.
        let mounts: Vec<&String> = calls.iter().filter(|c| c.contains("mount=")).collect();
        assert_eq!(mounts.len(), 2, "{calls:#?}");
        assert!(
            mounts.iter().all(|m| m.contains("from=acme%2Fapp")),
            "{mounts:?}"
        );
        assert!(
            !calls.iter().any(|c| c.contains(&fake::FOREIGN[7..])),
            "{calls:#?}"
        );
        // The refused layer went into the upload session, whole and with its digest.
        let put = log
            .iter()
            .find(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/u1"))
            .expect("a blob PUT");
        assert!(
            put.path
                .ends_with(&format!("&digest={}", fake::LAYER.replace(':', "%3A"))),
            "{}",
            put.path
        );
        assert_eq!(put.body, fake::big_blob().as_bytes());
        assert_eq!(put.authorization.as_deref(), Some("Bearer push-token"));
        // The manifest last, byte for byte.
        let last = log.last().expect("requests");
        assert_eq!(
            (last.method.as_str(), last.path.as_str()),
            ("PUT", "/v2/acme/copy/manifests/v3")
        );
        assert_eq!(last.body, fake::image_manifest().as_bytes());
    }

    #[test]
    fn manifest_kinds_by_media_type() {
        for (t, kind) in [
            (OCI_MANIFEST, Some(ManifestKind::Image)),
            (DOCKER_MANIFEST, Some(ManifestKind::Image)),
            (OCI_INDEX, Some(ManifestKind::Index)),
            (DOCKER_MANIFEST_LIST, Some(ManifestKind::Index)),
            (
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                None,
            ),
            ("application/json", None),
        ] {
            assert_eq!(ManifestKind::of(t), kind, "{t}");
        }
    }

    fn desc(media_type: &str, digest: &str, urls: &[&str]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size: 7,
            urls: urls.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn an_image_manifest_names_its_config_and_layers_but_not_foreign_ones() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
              "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":7}},
              "layers":[
                {{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":7}},
                {{"mediaType":"{DOCKER_FOREIGN_LAYER}","digest":"{}","size":7,"urls":["https://mcr.microsoft.com/l"]}},
                {{"mediaType":"{DOCKER_FOREIGN_LAYER}","digest":"{}","size":7}},
                {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd","digest":"{}","size":7,"urls":["https://x/y"]}}
              ]}}"#,
            d('c'),
            d('1'),
            d('2'),
            d('3'),
            d('4')
        );
        let got = contents(DOCKER_MANIFEST, body.as_bytes()).unwrap();
        assert_eq!(
            got,
            Contents::Blobs(vec![
                desc(
                    "application/vnd.docker.container.image.v1+json",
                    &d('c'),
                    &[]
                ),
                desc(
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    &d('1'),
                    &[]
                ),
                // Foreign but without URLs: only the registry has it, so it is copied.
                desc(DOCKER_FOREIGN_LAYER, &d('3'), &[]),
            ])
        );
        // The Content-Type decides, not the body's mediaType.
        assert!(matches!(
            contents(OCI_MANIFEST, body.as_bytes()),
            Ok(Contents::Blobs(b)) if b.len() == 3
        ));
    }

    #[test]
    fn an_index_names_its_child_manifests() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
                {{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}},
                {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":7,"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}
            ]}}"#,
            "e".repeat(64)
        );
        let want = Contents::Manifests(vec![
            desc(OCI_MANIFEST, D, &[]),
            desc(OCI_MANIFEST, &format!("sha256:{}", "e".repeat(64)), &[]),
        ]);
        assert_eq!(contents(OCI_INDEX, body.as_bytes()).unwrap(), want);
        assert_eq!(
            contents(DOCKER_MANIFEST_LIST, body.as_bytes()).unwrap(),
            want
        );
        assert_eq!(
            contents(OCI_INDEX, br#"{"schemaVersion":2}"#).unwrap(),
            Contents::Manifests(vec![])
        );
    }

    #[test]
    fn unusable_manifests_are_reasons_not_panics() {
        let schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws";
        assert!(contents(schema1, b"{}")
            .unwrap_err()
            .contains("only OCI or Docker v2"));
        assert!(contents(OCI_MANIFEST, b"not json")
            .unwrap_err()
            .contains("does not parse"));
        let no_config = br#"{"schemaVersion":2,"layers":[]}"#;
        assert!(contents(OCI_MANIFEST, no_config)
            .unwrap_err()
            .contains("no config"));
        // A digest goes into a URL path: anything else is refused.
        let sneaky = format!(
            r#"{{"config":{{"digest":"{D}","size":1}},"layers":[{{"digest":"../../x?y=1","size":1}}]}}"#
        );
        assert!(contents(OCI_MANIFEST, sneaky.as_bytes())
            .unwrap_err()
            .contains("not a digest"));
    }

    #[test]
    fn token_scope_merges_the_challenge_with_every_needed_access() {
        let a = Access::pull("acme/a");
        let b = Access::push("acme/b");
        assert_eq!(
            token_scope(None, std::slice::from_ref(&a)),
            "repository:acme/a:pull"
        );
        assert_eq!(
            token_scope(Some("repository:acme/b:pull"), &[a.clone(), b.clone()]),
            "repository:acme/b:pull,push repository:acme/a:pull"
        );
        assert_eq!(
            token_scope(
                Some("repository:acme/b:push,pull repository:acme/a:pull"),
                &[b, a]
            ),
            "repository:acme/b:push,pull repository:acme/a:pull"
        );
        assert_eq!(
            token_scope(Some("registry:catalog:*"), &[]),
            "registry:catalog:*"
        );
    }

    #[test]
    fn upload_locations_resolve_and_get_their_digest() {
        let base = "http://127.0.0.1:5000/v2/a/blobs/uploads/?mount=x";
        assert_eq!(
            absolute_url(base, "/v2/a/blobs/uploads/u?_state=s").as_deref(),
            Some("http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=s")
        );
        assert_eq!(
            absolute_url(base, "https://s3.example/b?sig=1").as_deref(),
            Some("https://s3.example/b?sig=1")
        );
        assert_eq!(
            absolute_url("https://r.io/v2/x", "//cdn.r.io/b").as_deref(),
            Some("https://cdn.r.io/b")
        );
        assert_eq!(absolute_url(base, "relative/u"), None);

        let digest = format!("sha256:{}", "a".repeat(64));
        let enc = format!("sha256%3A{}", "a".repeat(64));
        assert_eq!(
            with_digest("http://r/u", &digest),
            format!("http://r/u?digest={enc}")
        );
        assert_eq!(
            with_digest("http://r/u?_state=s", &digest),
            format!("http://r/u?_state=s&digest={enc}")
        );
        assert_eq!(
            with_digest("http://r/u?", &digest),
            format!("http://r/u?digest={enc}")
        );

        let s = Session::new(&parse("localhost:5000/a/b")).unwrap();
        assert!(s.same_origin("http://localhost:5000/v2/a/b/blobs/uploads/u"));
        assert!(s.same_origin("http://LOCALHOST:5000?x"));
        assert!(!s.same_origin("http://localhost:50001/v2"));
        assert!(!s.same_origin("https://localhost:5000/v2"));
        assert!(!s.same_origin("http://s3.example/b"));
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
