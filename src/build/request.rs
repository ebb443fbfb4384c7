//! BuildSpec → SolveRequest (frontend attributes, exporters, cache options) and the session
//! contents it needs. Pure translation plus input validation; no network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::options::{CacheSpec, ContextSource, Network, OutputDest, OutputKind};
use crate::proto::control::{CacheOptions, CacheOptionsEntry, Exporter, SolveRequest};
use crate::session::StreamSink;
use crate::session::{ExportTarget, SessionSpec, SyncDir};
use crate::transport::{DaemonKind, DockerHost};

use super::{BuildError, BuildSpec};

/// A request ready to send, and the session that must serve it.
pub struct PlannedRequest {
    pub request: SolveRequest,
    pub session: SessionSpec,
    /// Image loads through the Engine API: the engine, and the export's tar stream for it.
    pub engine_loads: Vec<(DockerHost, tokio::sync::mpsc::Receiver<bytes::Bytes>)>,
}

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
    }
}

/// Translates a spec for the given daemon. Validates local paths so that mistakes are
/// reported before anything is sent.
pub fn plan_request(
    spec: &BuildSpec,
    daemon: &DaemonKind,
    node_id: &str,
) -> Result<PlannedRequest, BuildError> {
    let context = &spec.context;
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
    let dockerfile = spec
        .dockerfile
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
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

    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    let mut dirs: BTreeMap<String, SyncDir> = BTreeMap::new();
    dirs.insert("context".into(), sync_dir(context, &spec.never_send));
    dirs.insert(
        "dockerfile".into(),
        sync_dir(&dockerfile_dir, &spec.never_send),
    );
    attrs.insert("filename".into(), filename);
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
    if spec.no_cache {
        // An empty value means "all stages"; "true" would name a stage.
        attrs.insert("no-cache".into(), String::new());
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
            ContextSource::OciLayout(_) => {
                return Err(invalid(format!(
                    "--build-context {}: oci-layout:// contexts are not supported yet; push the layout to a registry and use docker-image://",
                    nc.name
                )))
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
    if !spec.cache_from.is_empty() {
        // BuildKit's client passes imports both ways: the frontend reads this attribute.
        let v: Vec<serde_json::Value> = spec
            .cache_from
            .iter()
            .map(|c| serde_json::json!({"Type": c.kind, "Attrs": c.attrs}))
            .collect();
        attrs.insert(
            "cache-imports".into(),
            serde_json::Value::Array(v).to_string(),
        );
    }

    // Exporters.
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
        if let Some(dest) = &o.dest {
            let target = match (o.kind, dest) {
                (OutputKind::Local, OutputDest::Path(p)) => ExportTarget::LocalDir(p.clone()),
                (OutputKind::Local, OutputDest::Stdout) => {
                    return Err(invalid("-o type=local needs dest=DIR, not -"))
                }
                (_, OutputDest::Stdout) => ExportTarget::Stdout,
                (_, OutputDest::Path(p)) => {
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
    } else if spec.push || spec.load {
        return Err(invalid(
            "--push/--load cannot be combined with -o/--output; add push=true to the image output instead",
        ));
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
            exports: cache_exports(spec).iter().map(cache_entry).collect(),
            imports: spec.cache_from.iter().map(cache_entry).collect(),
        }),
        entitlements,
        ..Default::default()
    };
    let session = SessionSpec {
        name: spec.name.clone(),
        shared_key: crate::session::shared_key(context, node_id),
        dirs,
        exports,
        auth: Some(crate::session::auth::AuthProvider::from_env()),
        secrets,
        ssh,
    };
    Ok(PlannedRequest {
        request,
        session,
        engine_loads,
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
        });
    }
    out
}
