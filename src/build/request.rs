//! BuildSpec → SolveRequest (frontend attributes, exporters, cache options) and the session
//! contents it needs. Pure translation plus input validation; no network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::options::{
    CacheSpec, ContextSource, LocalCacheDir, Network, OciLayoutRef, OutputDest, OutputKind,
};
use crate::proto::control::{CacheOptions, CacheOptionsEntry, Exporter, SolveRequest};
use crate::session::content::{local_cache_key, local_store_id, oci_store_id};
use crate::session::oci_layout::OciLayout;
use crate::session::upload::Upload;
use crate::session::StreamSink;
use crate::session::{ContentStores, ExportTarget, SessionSpec, StoreSpec, SyncDir};
use crate::transport::{DaemonKind, DockerHost};

use super::{BuildError, BuildSpec, ContextInput};

/// A request ready to send, and the session that must serve it.
pub struct PlannedRequest {
    pub request: SolveRequest,
    pub session: SessionSpec,
    /// Image loads through the Engine API: the engine, and the export's tar stream for it.
    pub engine_loads: Vec<(
        DockerHost,
        tokio::sync::mpsc::Receiver<crate::session::StreamChunk>,
    )>,
    /// Warnings to show before the build starts (e.g. a local cache import that is skipped),
    /// without the `warning:` that [`crate::progress::Progress::warning`] puts before them.
    pub warnings: Vec<String>,
    /// Local cache exports whose `index.json` the client updates after the build.
    pub cache_indexes: Vec<CacheIndexUpdate>,
    /// `-o type=oci|docker,tar=false` outputs: the layout directory whose `index.json` the
    /// client updates after the build, and the session store the daemon writes it through.
    pub image_layout: Option<(String, PathBuf)>,
}

/// After a `--cache-to type=local` export: tag the cache manifest the daemon wrote in the
/// directory's `index.json` (BuildKit's client does the same; the daemon only writes blobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheIndexUpdate {
    /// The session content store the daemon wrote to.
    pub store_id: String,
    pub dir: PathBuf,
    pub tag: String,
    /// `reset=true`: afterwards remove the blobs the index no longer references.
    pub reset: bool,
}

/// The session store an `oci`/`docker` exporter with `tar=false` writes to (BuildKit
/// `exporter/oci`).
const EXPORT_STORE_ID: &str = "export";

fn invalid(msg: impl Into<String>) -> BuildError {
    BuildError::Invalid(msg.into())
}

/// The local name a named context is served under (buildx's rule: never shadow the two
/// built-in local names).
pub fn local_name(name: &str) -> String {
    match name {
        "context" | "dockerfile" => format!("_{name}"),
        n => n.to_string(),
    }
}

/// A client-side path as the daemon-facing key and the store sees it: absolute, and with
/// symlinks resolved when it exists, so two spellings of one directory are one store.
fn client_dir(p: &Path) -> Result<PathBuf, BuildError> {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .map_err(|e| invalid(format!("{}: {e}", p.display())))
}

/// The cache manifest a `--cache-from type=local` entry imports: `digest=`, or the one its
/// tag names in `index.json` (BuildKit `client/solve.go`). `Err` says why the import is
/// skipped; like BuildKit's client, a cache that is not there yet is not an error.
fn local_cache_import(dir: &Path, l: &LocalCacheDir) -> Result<Digest, String> {
    let layout = OciLayout::new(dir);
    let digest = match &l.digest {
        Some(d) => d.clone(),
        None => {
            let index = layout
                .read_index()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "it has no index.json (nothing exported there yet?)".to_string())?;
            index
                .find(&l.tag)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "its index.json has no entry tagged {:?} (it has: {})",
                        l.tag,
                        names_or_none(&index.names())
                    )
                })?
                .digest
        }
    };
    match layout.blob_metadata(&digest) {
        Ok(Some(_)) => Ok(digest),
        Ok(None) => Err(format!("it does not hold the cache manifest {digest}")),
        Err(e) => Err(e.to_string()),
    }
}

fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "no named entries".into()
    } else {
        names.join(", ")
    }
}

/// The tag and digest an `oci-layout://` context uses, resolved from the layout's
/// `index.json` as buildx does (`build/opt.go`): the digest when given; else the entry tagged
/// TAG (`latest` by default); else, when no tag was given, the layout's only entry. Unlike
/// buildx, a tag that was given but is not there is an error rather than the only entry.
fn oci_layout_image(dir: &Path, r: &OciLayoutRef) -> Result<(Option<String>, Digest), String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} {}; give the directory of an OCI image layout (e.g. made with -o type=oci,tar=false,dest=DIR)",
            dir.display(),
            if dir.exists() { "is not a directory" } else { "does not exist" }
        ));
    }
    let layout = OciLayout::new(dir);
    let (tag, digest) = match &r.digest {
        Some(d) => (r.tag.clone(), d.clone()),
        None => {
            let tag = r.tag.clone().unwrap_or_else(|| "latest".to_string());
            let index = layout
                .read_index()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "{} has no index.json; is it an OCI image layout?",
                        dir.display()
                    )
                })?;
            let found = match index.find(&tag).map_err(|e| e.to_string())? {
                Some(d) => Some(d),
                None if r.tag.is_none() => index.single().map_err(|e| e.to_string())?,
                None => None,
            };
            let d = found.ok_or_else(|| {
                format!(
                    "no image tagged {tag:?} in {}/index.json (it has: {}); add :TAG or @sha256:DIGEST",
                    dir.display(),
                    names_or_none(&index.names())
                )
            })?;
            (Some(tag), d.digest)
        }
    };
    match layout.blob_metadata(&digest) {
        Ok(Some(_)) => Ok((tag, digest)),
        Ok(None) => Err(format!("{} does not hold {digest}", dir.display())),
        Err(e) => Err(e.to_string()),
    }
}

fn cache_entry(c: &CacheSpec) -> CacheOptionsEntry {
    CacheOptionsEntry {
        r#type: c.kind.clone(),
        attrs: c.attrs.clone().into_iter().collect(),
    }
}

/// A directory to serve, minus the `never_send` directories that lie inside it.
fn sync_dir(dir: &Path, never_send: &[PathBuf]) -> SyncDir {
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let extra_excludes = never_send
        .iter()
        .filter_map(|n| {
            let n = std::fs::canonicalize(n).ok()?;
            let rel = n.strip_prefix(&root).ok()?.to_str()?;
            (!rel.is_empty()).then(|| crate::fs::literal_pattern(rel))
        })
        .collect();
    SyncDir {
        path: dir.to_path_buf(),
        extra_excludes,
        sent: None,
    }
}

/// Translates a spec for the given daemon. Validates local paths so that mistakes are
/// reported before anything is sent. `attests` are the `attest:TYPE` attributes to send, by type (see
/// [`super::attest::frontend_attrs`]). `session_key` gives the session's shared key for the
/// directories it syncs ([`crate::session::copies::BuildKeys::session_key`]).
pub fn plan_request(
    spec: &BuildSpec,
    daemon: &DaemonKind,
    node_id: &str,
    session_key: &mut dyn FnMut(&[&Path]) -> String,
    attests: &BTreeMap<String, String>,
) -> Result<PlannedRequest, BuildError> {
    let context = &spec.context;
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    let mut dirs: BTreeMap<String, SyncDir> = BTreeMap::new();
    let mut uploads = BTreeMap::new();
    // A context the daemon fetches (a URL, or an upload from this client) is the frontend's
    // `context` attribute; the Dockerfile then comes from inside it unless a local one is
    // given, which `dockerfilekey` makes the frontend prefer (buildx `build/opt.go`).
    let (fetched, in_context_file) = match &spec.context_input {
        ContextInput::Dir => (None, None),
        ContextInput::Url { url, filename } => (Some(url.clone()), filename.clone()),
        ContextInput::Upload { upload, filename } => {
            let id = crate::session::random_id();
            uploads.insert(id.clone(), upload.clone());
            (Some(Upload::url(&id)), filename.clone())
        }
    };
    let local_dockerfile = match (&fetched, &spec.dockerfile) {
        (None, given) => {
            if !context.is_dir() {
                return Err(invalid(format!(
                    "build context {} {}; pass an existing directory as CONTEXT",
                    context.display(),
                    if context.exists() {
                        "is not a directory"
                    } else {
                        "does not exist"
                    }
                )));
            }
            dirs.insert("context".into(), sync_dir(context, &spec.never_send));
            Some(given.clone().unwrap_or_else(|| context.join("Dockerfile")))
        }
        (Some(_), Some(local)) => {
            attrs.insert("dockerfilekey".into(), "dockerfile".into());
            Some(local.clone())
        }
        (Some(_), None) => None,
    };
    if let Some(ctx) = fetched {
        attrs.insert("context".into(), ctx);
    }
    match local_dockerfile {
        Some(dockerfile) => {
            if !dockerfile.is_file() {
                return Err(invalid(format!(
                    "Dockerfile {} not found; create it or pass its path with -f/--file",
                    dockerfile.display()
                )));
            }
            let dockerfile_dir = dockerfile
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            let filename = dockerfile
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| invalid(format!("-f {}: not a file name", dockerfile.display())))?;
            dirs.insert(
                "dockerfile".into(),
                sync_dir(&dockerfile_dir, &spec.never_send),
            );
            attrs.insert("filename".into(), filename);
        }
        None => {
            attrs.insert(
                "filename".into(),
                in_context_file.unwrap_or_else(|| "Dockerfile".into()),
            );
        }
    }
    if let Some(t) = &spec.target {
        attrs.insert("target".into(), t.clone());
    }
    for (k, v) in &spec.build_args {
        attrs.insert(format!("build-arg:{k}"), v.clone());
    }
    for (k, v) in &spec.labels {
        attrs.insert(format!("label:{k}"), v.clone());
    }
    if !spec.platforms.is_empty() {
        attrs.insert("platform".into(), spec.platforms.join(","));
    }
    for (kind, value) in attests {
        // BuildKit generates the attestation itself (llbsolver), whatever the frontend.
        attrs.insert(format!("attest:{kind}"), value.clone());
    }
    if spec.no_cache {
        // An empty value means "all stages"; "true" would name a stage.
        attrs.insert("no-cache".into(), String::new());
    } else if !spec.no_cache_filter.is_empty() {
        attrs.insert("no-cache".into(), spec.no_cache_filter.join(","));
    }
    let resolve_mode = if spec.pull {
        "pull"
    } else if matches!(daemon, DaemonKind::DockerEngine { .. }) {
        // Like buildx on the docker driver: prefer images already in the engine's store.
        "local"
    } else {
        "default"
    };
    attrs.insert("image-resolve-mode".into(), resolve_mode.into());
    if !spec.add_hosts.is_empty() {
        let v: Vec<String> = spec
            .add_hosts
            .iter()
            .map(|h| format!("{}={}", h.host, h.ip))
            .collect();
        attrs.insert("add-hosts".into(), v.join(","));
    }
    if let Some(bytes) = spec.shm_size.filter(|b| *b > 0) {
        attrs.insert("shm-size".into(), bytes.to_string());
    }
    if !spec.ulimits.is_empty() {
        let v: Vec<String> = spec.ulimits.iter().map(ToString::to_string).collect();
        attrs.insert("ulimit".into(), v.join(","));
    }
    if let Some(c) = spec.cgroup_parent.as_ref().filter(|c| !c.is_empty()) {
        attrs.insert("cgroup-parent".into(), c.clone());
    }
    let mut entitlements = Vec::new();
    match spec.network {
        Network::Default => {}
        Network::None => {
            attrs.insert("force-network-mode".into(), "none".into());
        }
        Network::Host => {
            attrs.insert("force-network-mode".into(), "host".into());
            entitlements.push("network.host".to_string());
        }
    }
    for e in &spec.entitlements {
        if !entitlements.contains(e) {
            entitlements.push(e.clone());
        }
    }
    // Session content stores, by store ID; cache exports first, so that a directory that is
    // both imported from and exported to is one writable store.
    let mut stores: BTreeMap<String, StoreSpec> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut cache_indexes = Vec::new();
    let mut cache_to = Vec::new();
    for mut c in cache_exports(spec) {
        if let Some(l) = &c.local {
            let dir = client_dir(&l.dir)?;
            if dir.exists() && !dir.is_dir() {
                return Err(invalid(format!(
                    "--cache-to type=local,dest={}: not a directory; dest= names the directory to export the cache to",
                    l.dir.display()
                )));
            }
            let key = local_cache_key(&dir);
            let id = local_store_id(&key);
            if stores.contains_key(&id) {
                return Err(invalid(format!(
                    "--cache-to type=local,dest={} is given twice; export each cache to its own directory",
                    l.dir.display()
                )));
            }
            stores.insert(
                id.clone(),
                StoreSpec {
                    dir: dir.clone(),
                    writable: true,
                },
            );
            c.attrs.insert("dest".into(), key);
            cache_indexes.push(CacheIndexUpdate {
                store_id: id,
                dir,
                tag: l.tag.clone(),
                reset: l.reset,
            });
        }
        cache_to.push(c);
    }
    let mut cache_from = Vec::new();
    for c in &spec.cache_from {
        let mut c = c.clone();
        if let Some(l) = &c.local {
            let dir = client_dir(&l.dir)?;
            match local_cache_import(&dir, l) {
                Ok(digest) => {
                    let key = local_cache_key(&dir);
                    stores.entry(local_store_id(&key)).or_insert(StoreSpec {
                        dir,
                        writable: false,
                    });
                    c.attrs.insert("src".into(), key);
                    c.attrs.insert("digest".into(), digest.to_string());
                }
                Err(why) => {
                    warnings.push(format!(
                        "--cache-from type=local,src={} skipped: {why}",
                        l.dir.display()
                    ));
                    continue;
                }
            }
        }
        cache_from.push(c);
    }

    for nc in &spec.contexts {
        let value = match &nc.source {
            ContextSource::Local(dir) => {
                if !dir.is_dir() {
                    return Err(invalid(format!(
                        "--build-context {}={}: not a directory; pass an existing directory",
                        nc.name,
                        dir.display()
                    )));
                }
                let ln = local_name(&nc.name);
                attrs.insert(
                    format!("sharedkey:localdir:{ln}"),
                    crate::session::shared_key(dir, node_id),
                );
                dirs.insert(ln.clone(), sync_dir(dir, &spec.never_send));
                format!("local:{ln}")
            }
            ContextSource::DockerImage(r) => format!("docker-image://{r}"),
            ContextSource::OciLayout(r) => {
                let dir = client_dir(&r.path)?;
                let (tag, digest) = oci_layout_image(&dir, r)
                    .map_err(|why| invalid(format!("--build-context {}={r}: {why}", nc.name)))?;
                // The daemon finds the layout by this name in the session (buildx: a random
                // ID); the frontend parses the value as a reference, so it must be one.
                let name = crate::session::random_id();
                stores.insert(
                    oci_store_id(&name),
                    StoreSpec {
                        dir,
                        writable: false,
                    },
                );
                match tag {
                    Some(t) => format!("oci-layout://{name}:{t}@{digest}"),
                    None => format!("oci-layout://{name}@{digest}"),
                }
            }
            ContextSource::Remote(u) => u.clone(),
            ContextSource::Target(t) => {
                return Err(invalid(format!(
                    "--build-context {}=target:{t}: target: contexts only work in `bk-build bake`",
                    nc.name
                )))
            }
        };
        attrs.insert(format!("context:{}", nc.name), value);
    }
    if !spec.contexts.is_empty() {
        attrs.insert(
            "frontend.caps".into(),
            "moby.buildkit.frontend.contexts+forward".into(),
        );
    }
    if !cache_from.is_empty() {
        // BuildKit's client passes imports both ways: the frontend reads this attribute.
        let v: Vec<serde_json::Value> = cache_from
            .iter()
            .map(|c| serde_json::json!({"Type": c.kind, "Attrs": c.attrs}))
            .collect();
        attrs.insert(
            "cache-imports".into(),
            serde_json::Value::Array(v).to_string(),
        );
    }

    // Exporters.
    let mut image_layout = None;
    let mut exporters = Vec::new();
    let mut exports = BTreeMap::new();
    let is_docker = matches!(daemon, DaemonKind::DockerEngine { .. });
    let mut engine_loads = Vec::new();
    // A `docker` exporter whose tarball streams into the Engine API of `host`.
    let mut api_load =
        |host: &DockerHost, exports: &mut BTreeMap<usize, ExportTarget>, at: usize| {
            // 8 chunks: the engine reads as fast as it unpacks; the daemon waits beyond that.
            let (sink, chunks) = StreamSink::new(8);
            exports.insert(at, ExportTarget::Stream(sink));
            engine_loads.push((host.clone(), chunks));
        };
    for o in &spec.outputs {
        if o.kind == OutputKind::CacheOnly {
            // Like buildx: "keep the result in the build cache only" is the absence of an
            // exporter (Docker Engine's BuildKit has no exporter of that name).
            continue;
        }
        let mut a = o.attrs.clone();
        let kind =
            match (o.kind, &o.dest) {
                // `type=docker` without a file: load into the engine.
                (OutputKind::Docker, None) => match &spec.load_into {
                    Some(host) => {
                        api_load(host, &mut exports, exporters.len());
                        "docker"
                    }
                    None if is_docker => "moby",
                    None => return Err(invalid(
                        "-o type=docker without dest= loads into a Docker Engine, and none is known; set DOCKER_HOST, or add dest=image.tar",
                    )),
                },
                (k, _) => k.as_str(),
            };
        if let Some(dir) = o.layout_dir() {
            // The daemon writes the blobs through the session store BuildKit calls "export"
            // (one per build); the client names the image in index.json afterwards.
            let dir = client_dir(dir)?;
            if dir.exists() && !dir.is_dir() {
                return Err(invalid(format!(
                    "-o type={},tar=false,dest={}: not a directory; tar=false writes an OCI layout directory",
                    o.kind,
                    dir.display()
                )));
            }
            if image_layout.is_some() {
                return Err(invalid(
                    "only one -o type=oci|docker,tar=false output per build (BuildKit writes it through a single session store)",
                ));
            }
            stores.insert(
                EXPORT_STORE_ID.to_string(),
                StoreSpec {
                    dir: dir.clone(),
                    writable: true,
                },
            );
            image_layout = Some((EXPORT_STORE_ID.to_string(), dir));
        } else if let Some(dest) = &o.dest {
            let target = match (o.kind, dest) {
                (OutputKind::Local, OutputDest::Path(p)) => ExportTarget::LocalDir(p.clone()),
                (OutputKind::Local, OutputDest::Stdout) => {
                    return Err(invalid("-o type=local needs dest=DIR, not -"))
                }
                (_, OutputDest::Stdout) => ExportTarget::Stdout,
                (_, OutputDest::Path(p)) => {
                    if p.is_dir() {
                        return Err(invalid(format!(
                            "-o dest={}: that is a directory; name a file (or use type=local for a directory tree)",
                            p.display()
                        )));
                    }
                    if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                        if !parent.is_dir() {
                            return Err(invalid(format!(
                                "-o dest={}: directory {} does not exist; create it first",
                                p.display(),
                                parent.display()
                            )));
                        }
                    }
                    ExportTarget::TarFile(p.clone())
                }
            };
            exports.insert(exporters.len(), target);
        }
        if matches!(
            o.kind,
            OutputKind::Image | OutputKind::Docker | OutputKind::Oci
        ) && !a.contains_key("name")
            && !spec.tags.is_empty()
        {
            a.insert("name".into(), spec.tags.join(","));
        }
        exporters.push(Exporter {
            r#type: kind.to_string(),
            attrs: a.into_iter().collect(),
        });
    }
    if spec.outputs.is_empty() {
        let names = spec.tags.join(",");
        if spec.push && spec.load && is_docker && spec.load_into.is_none() {
            // A Docker Engine's own exporter keeps the image and pushes it in one step, as
            // buildx does on its docker driver: an `image` exporter beside it naming the same
            // image fails with "already exists" in the engine's containerd image store.
            if spec.tags.is_empty() {
                return Err(invalid("--push needs at least one -t/--tag"));
            }
            exporters.push(Exporter {
                r#type: "moby".into(),
                attrs: [
                    ("name".to_string(), names),
                    ("push".to_string(), "true".to_string()),
                ]
                .into_iter()
                .collect(),
            });
        } else {
            if spec.push {
                if spec.tags.is_empty() {
                    return Err(invalid("--push needs at least one -t/--tag"));
                }
                exporters.push(Exporter {
                    r#type: "image".into(),
                    attrs: [
                        ("name".to_string(), names.clone()),
                        ("push".to_string(), "true".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                });
            }
            if spec.load || (is_docker && !spec.push && !spec.tags.is_empty()) {
                let mut a: std::collections::HashMap<String, String> = Default::default();
                if !names.is_empty() {
                    a.insert("name".into(), names.clone());
                }
                let kind = match &spec.load_into {
                    Some(host) => {
                        api_load(host, &mut exports, exporters.len());
                        "docker"
                    }
                    None if is_docker => "moby",
                    None => {
                        return Err(invalid(
                            "--load loads into a Docker Engine, and none is known; set DOCKER_HOST (or use --push, or -o type=docker,dest=image.tar)",
                        ))
                    }
                };
                exporters.push(Exporter {
                    r#type: kind.into(),
                    attrs: a,
                });
            } else if !spec.push && !spec.tags.is_empty() {
                // buildkitd: keep the image in the daemon's image store under these names.
                exporters.push(Exporter {
                    r#type: "image".into(),
                    attrs: [("name".to_string(), names)].into_iter().collect(),
                });
            }
        }
    } else if spec.push || spec.load {
        return Err(invalid(
            "--push/--load cannot be combined with -o/--output; add push=true to the image output instead",
        ));
    }

    // As buildx: every exporter gets the annotations; the image ones write them, the others
    // ignore them.
    for e in &mut exporters {
        for a in &spec.annotations {
            e.attrs.insert(a.exporter_attr(), a.value.clone());
        }
    }

    let (exporter_deprecated, exporter_attrs_deprecated) = exporters
        .first()
        .map(|e| (e.r#type.clone(), e.attrs.clone()))
        .unwrap_or_default();

    let secrets = if spec.secrets.is_empty() {
        None
    } else {
        Some(
            crate::session::secrets::SecretStore::new(&spec.secrets)
                .map_err(|e| invalid(e.to_string()))?,
        )
    };
    let ssh = if spec.ssh.is_empty() {
        None
    } else {
        Some(
            crate::session::ssh::SshForwarder::new(&spec.ssh)
                .map_err(|e| invalid(e.to_string()))?,
        )
    };

    let request = SolveRequest {
        frontend: "dockerfile.v0".into(),
        frontend_attrs: attrs.into_iter().collect(),
        exporter_deprecated,
        exporter_attrs_deprecated,
        exporters,
        cache: Some(CacheOptions {
            exports: cache_to.iter().map(cache_entry).collect(),
            imports: cache_from.iter().map(cache_entry).collect(),
        }),
        entitlements,
        ..Default::default()
    };
    let session = SessionSpec {
        name: spec.name.clone(),
        // Every local directory's copy on the daemon is keyed with this (see `BuildKeys`).
        shared_key: {
            let mut synced: Vec<&Path> = ["context", "dockerfile"]
                .iter()
                .filter_map(|n| dirs.get(*n).map(|d| d.path.as_path()))
                .collect();
            synced.extend(
                dirs.iter()
                    .filter(|(n, _)| !matches!(n.as_str(), "context" | "dockerfile"))
                    .map(|(_, d)| d.path.as_path()),
            );
            let key = if synced.is_empty() {
                session_key(&[context.as_path()])
            } else {
                session_key(&synced)
            };
            // The daemon's copy of a named context is keyed by its local name, not by its
            // directory: two targets naming different directories `lib` on one context would
            // sync into one copy, and a file of the same size and mtime would be taken from
            // the other directory. Which directory each name is goes into the key. (The
            // Dockerfile's local is always sent whole, BuildKit `dockerui`: `DiffNone`.)
            let named: Vec<String> = dirs
                .iter()
                .filter(|(n, _)| !matches!(n.as_str(), "context" | "dockerfile"))
                .map(|(n, d)| {
                    let canon = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
                    format!("{n}\0{}", canon.display())
                })
                .collect();
            if named.is_empty() {
                key
            } else {
                let h = blake3::hash(named.join("\0").as_bytes());
                format!("{key}:{}", &h.to_hex()[..16])
            }
        },
        dirs,
        exports,
        content: ContentStores::new(stores),
        auth: Some(crate::session::auth::AuthProvider::from_env()),
        secrets,
        ssh,
        uploads,
    };
    Ok(PlannedRequest {
        request,
        session,
        engine_loads,
        warnings,
        cache_indexes,
        image_layout,
    })
}

/// The cache exports of `spec`: its `--cache-to`, plus an inline cache when the build arg
/// `BUILDKIT_INLINE_CACHE` is true (Go `strconv.ParseBool`), as buildx does for that arg
/// (buildx `build/build.go`); the Dockerfile frontend alone would not embed the cache.
fn cache_exports(spec: &BuildSpec) -> Vec<CacheSpec> {
    let mut out = spec.cache_to.clone();
    let inline_wanted = spec
        .build_args
        .get("BUILDKIT_INLINE_CACHE")
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
    if inline_wanted && !out.iter().any(|c| c.kind == "inline") {
        out.push(CacheSpec {
            kind: "inline".into(),
            attrs: Default::default(),
            local: None,
        });
    }
    out
}
