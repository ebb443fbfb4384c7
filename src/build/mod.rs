//! One image: a [`BuildSpec`] (plain data, from the CLI or from a project target) becomes a
//! `Solve` request for the Dockerfile frontend plus the session that serves its directories,
//! secrets and client-side outputs; the Status stream is forwarded to [`crate::progress`].
//! With [`BuildSpec::call`] the frontend answers a subrequest instead (`--call check`), over
//! the gateway API (`gateway`); a context may also be a URL or an upload ([`ContextInput`]).
//!
//! This module knows BuildKit's frontend attributes and exporters. It does not know about
//! project files, graphs, or how progress is drawn.

pub mod attest;
mod context;
mod gateway;
mod load;
mod request;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::digest::Digest;
use crate::options::{
    AddHost, AttestSpec, CacheSpec, MetadataProvenance, NamedContext, Network, OutputSpec,
    SecretSpec, SshSpec,
};
use crate::progress::Progress;
use crate::proto::control::{control_client::ControlClient, StatusRequest};
use crate::session::oci_layout::Descriptor;
use crate::session::{self, filesync::DirSyncReport, Session};
use crate::transport::Daemon;

pub use context::{is_archive, ContextInput, ARCHIVE_PEEK};
pub use load::{settle_canceled_loads, settling_loads, CanceledLoad};
pub use request::{local_name, plan_request, CacheIndexUpdate, PlannedRequest};

/// Everything needed to build one image, as plain data.
#[derive(Debug, Clone, Default)]
pub struct BuildSpec {
    /// Shown as the progress prefix in multi-target runs and as the session name.
    pub name: String,
    /// The build context directory (unless `context_input` says otherwise).
    pub context: PathBuf,
    /// Where the context comes from when not from the directory `context`: a URL the
    /// daemon fetches, or an archive from standard input.
    pub context_input: ContextInput,
    /// The Dockerfile (default `<context>/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub platforms: Vec<String>,
    pub no_cache: bool,
    pub pull: bool,
    pub contexts: Vec<NamedContext>,
    pub add_hosts: Vec<AddHost>,
    pub network: Network,
    /// Size of `/dev/shm` in RUN steps, in bytes (`None`: the daemon's default).
    pub shm_size: Option<u64>,
    /// Resource limits of RUN steps.
    pub ulimits: Vec<crate::options::Ulimit>,
    /// Entitlements to ask for besides the ones `network` implies (`security.insecure`, …).
    pub entitlements: Vec<String>,
    /// Stages to build without cache (`no_cache` means all of them).
    pub no_cache_filter: Vec<String>,
    /// The parent cgroup of RUN steps (`--cgroup-parent`; `None`: the daemon's default).
    pub cgroup_parent: Option<String>,
    /// Image annotations, given to every exporter; a later one with the same exporter
    /// attribute replaces an earlier one (buildx keeps them in a map).
    pub annotations: Vec<crate::options::Annotation>,
    /// Attestations asked for (`--attest`, `--provenance`, `--sbom`, bake's `attest`); the first
    /// entry of a type decides, a `disabled` one asks for none of its type (see
    /// [`attest::frontend_attrs`]).
    pub attests: Vec<AttestSpec>,
    /// Attach buildx's default provenance ([`attest::DEFAULT_PROVENANCE`]) unless `attests` has
    /// a provenance entry; `false` with `BUILDX_NO_DEFAULT_ATTESTATIONS`. Dropped on a daemon
    /// that cannot attach attestations, as buildx does.
    pub default_provenance: bool,
    /// For a metadata file: how much of the build's provenance to read back from the daemon
    /// into [`BuildResult::provenance`] (`Disabled`: nothing is read).
    pub metadata_provenance: MetadataProvenance,
    pub tags: Vec<String>,
    pub push: bool,
    pub load: bool,
    pub outputs: Vec<OutputSpec>,
    pub cache_from: Vec<CacheSpec>,
    pub cache_to: Vec<CacheSpec>,
    pub secrets: Vec<SecretSpec>,
    pub ssh: Vec<SshSpec>,
    /// Directories never sent to the daemon even when inside a context (bake's state dir).
    pub never_send: Vec<PathBuf>,
    /// Where `load` (and `-o type=docker` without `dest`) puts the image when the daemon does
    /// not load it itself: the Docker Engine at this address, through its API (`docker load`).
    /// `None` with a Docker Engine daemon, whose `moby` exporter loads directly; required with
    /// any other daemon kind for those outputs.
    pub load_into: Option<crate::transport::DockerHost>,
    /// Evaluate this frontend subrequest instead of building (`lint`, `outline`, `targets`:
    /// buildx's `--call`): nothing is built or exported, and the answer arrives in the
    /// result's `result.json`, `result.txt`, `result.statuscode` and `version`.
    pub call: Option<String>,
}

impl BuildSpec {
    /// Whether the image goes into a Docker Engine's image store (`load`, or `-o type=docker`
    /// without `dest`; on a Docker Engine also plain tags with nowhere else to go, which its
    /// own exporter handles): see [`BuildSpec::load_into`].
    pub fn needs_load(&self) -> bool {
        self.load
            || self
                .outputs
                .iter()
                .any(|o| o.kind == crate::options::OutputKind::Docker && o.dest.is_none())
    }
}

/// How long a failed build waits for an engine that already received the whole image to say
/// whether it loaded it (a large image takes a while to unpack).
const LOAD_ANSWER_WAIT: Duration = Duration::from_secs(60);

/// The name of the Dockerfile frontend's step that resolves a base image (`FROM`, `COPY
/// --from`), followed by the reference (BuildKit `dockerfile2llb`).
const LOAD_METADATA: &str = "[internal] load metadata for ";

/// What a finished build produced.
#[derive(Debug, Clone, Default)]
pub struct BuildResult {
    /// The daemon's `ExporterResponse` (`containerimage.digest`, `image.name`, …).
    pub exporter_response: BTreeMap<String, String>,
    /// What the file-sync session sent, per local directory name.
    pub sync: BTreeMap<String, DirSyncReport>,
    pub duration: Duration,
    /// The Solve ref (`buildx.build.ref` in metadata files).
    pub build_ref: String,
    /// Images the Dockerfile frontend resolved as bases (its `[internal] load metadata for
    /// REF` steps), as it wrote them, sorted: what the build really started from. `None` when
    /// the status stream did not come to its end.
    pub loaded_images: Option<Vec<String>>,
    /// The build's provenance for the metadata file: `buildx.build.provenance[/PLATFORM]` →
    /// the SLSA predicate (see [`BuildSpec::metadata_provenance`]).
    pub provenance: Vec<(String, serde_json::Value)>,
}

impl BuildResult {
    pub fn image_digest(&self) -> Option<&str> {
        self.exporter_response
            .get("containerimage.digest")
            .map(String::as_str)
    }
    /// The image ID as buildx reports it (`--iidfile`, `--quiet`): the image config's digest
    /// (`containerimage.config.digest`), else the image's (a multi-platform index, for which
    /// the daemon reports no config digest); `None` when nothing was exported as an image.
    pub fn image_id(&self) -> Option<&str> {
        self.exporter_response
            .get("containerimage.config.digest")
            .map(String::as_str)
            .or_else(|| self.image_digest())
    }
    pub fn bytes_sent(&self) -> u64 {
        self.sync.values().map(|r| r.bytes_sent).sum()
    }

    /// The `--metadata-file` document, shaped like buildx's: exporter response keys as
    /// strings, with `containerimage.descriptor` decoded to JSON.
    pub fn metadata_json(&self) -> serde_json::Value {
        use base64::Engine;
        let mut m = serde_json::Map::new();
        for (k, v) in &self.exporter_response {
            let val = match k.as_str() {
                "containerimage.descriptor" | "cache.manifest" => {
                    base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .or_else(|| serde_json::from_str(v).ok())
                        .unwrap_or_else(|| serde_json::Value::String(v.clone()))
                }
                // A subrequest's answer (`--call`), which buildx writes as the object it is.
                "result.json" => {
                    serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone()))
                }
                _ => serde_json::Value::String(v.clone()),
            };
            m.insert(k.clone(), val);
        }
        // Our own addition: what the file-sync session sent, per local directory.
        if let Ok(sync) = serde_json::to_value(&self.sync) {
            m.insert("bk-build.sync".into(), sync);
        }
        m.insert(
            "buildx.build.ref".into(),
            serde_json::Value::String(self.build_ref.clone()),
        );
        for (k, v) in &self.provenance {
            m.insert(k.clone(), v.clone());
        }
        serde_json::Value::Object(m)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Session(#[from] session::SessionError),
    /// The daemon rejected or failed the build; the message is already readable.
    #[error("{message}")]
    Failed { message: String },
    /// The connection to the daemon broke during the build (not the daemon's answer): the
    /// same build may succeed on another daemon. `gone`: the daemon no longer answers.
    #[error("{message}")]
    ConnectionLost { message: String, gone: bool },
    #[error("cannot write the {what}: {why}")]
    Export { what: String, why: String },
}

/// Finds, in the progress of BuildKit's image exporter (`exporter/containerimage`), the digest
/// of the image it stored before pushing it. In one vertex, the exporter reports `exporting
/// manifest sha256:…` per platform, `exporting manifest list sha256:…` when it makes an index
/// (attestation manifests are `exporting attestation manifest …`), `naming to …` as it stores
/// the image, and `pushing layers` once storing is done and the push begins. The image is the
/// index, else the one manifest; anything else (several manifests without an index) is not
/// known, and nothing is found.
#[derive(Debug, Default)]
pub struct StoredWatch {
    /// Per vertex digest: the manifests and the index seen so far.
    vertices: BTreeMap<String, (std::collections::BTreeSet<String>, Option<String>)>,
}

impl StoredWatch {
    /// Takes in one status (its vertex and ID); returns the stored image's digest when this is
    /// the status that says the push begins.
    pub fn see(&mut self, vertex: &str, id: &str) -> Option<String> {
        let digest_in = |rest: &str| {
            let d = rest.split_whitespace().next()?;
            let hex = d.strip_prefix("sha256:")?;
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| d.to_string())
        };
        let (manifests, index) = self.vertices.entry(vertex.to_string()).or_default();
        if let Some(rest) = id.strip_prefix("exporting manifest list ") {
            *index = digest_in(rest);
        } else if let Some(rest) = id.strip_prefix("exporting manifest ") {
            manifests.extend(digest_in(rest));
        } else if id.starts_with("pushing layers") {
            return match (index.clone(), manifests.len()) {
                (Some(i), _) => Some(i),
                (None, 1) => manifests.iter().next().cloned(),
                _ => None,
            };
        }
        None
    }
}

/// Once per process: without a state directory, the daemon's copies of local directories
/// cannot be checked, so every build transfers them whole.
fn warn_no_copy_records(progress: &Progress, prefix: Option<&str>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        progress.warning(
            prefix,
            "neither HOME nor an absolute XDG_STATE_HOME is set: local directories are sent whole on every build (set HOME, or XDG_STATE_HOME to the absolute path of a writable directory, to sync only changes)",
        );
    });
}

/// How long a build whose session was lost still waits for the daemon's answer to Solve.
const SOLVE_ANSWER_GRACE: Duration = Duration::from_secs(2);

/// Runs one build on `daemon`, streaming progress to `progress` (prefixed with `prefix` when
/// several builds share the display). Dropping the returned future cancels the build on the
/// daemon (the Solve call is reset, and the session closes).
pub async fn build(
    daemon: &Daemon,
    spec: &BuildSpec,
    progress: &Progress,
    prefix: Option<&str>,
) -> Result<BuildResult, BuildError> {
    build_observed(daemon, spec, progress, prefix, None).await
}

/// As [`build`], and sends on `stored` the digest of the image (`sha256:…`, its index when
/// there is one) as soon as the daemon's image exporter has stored it and starts pushing it
/// (see [`StoredWatch`]): from then on, another build on the same daemon can start from
/// `TAG@DIGEST` while the push runs. Nothing is sent for a build that pushes nothing; the
/// digest is the exporter's own, and [`BuildResult::image_digest`] must be compared with it
/// when the build ends.
pub async fn build_observed(
    daemon: &Daemon,
    spec: &BuildSpec,
    progress: &Progress,
    prefix: Option<&str>,
    stored: Option<tokio::sync::oneshot::Sender<String>>,
) -> Result<BuildResult, BuildError> {
    let started = Instant::now();
    // A subrequest builds nothing, so there is nothing to export, push, load or cache.
    let call_spec;
    let spec = match &spec.call {
        Some(_) => {
            call_spec = BuildSpec {
                outputs: Vec::new(),
                push: false,
                load: false,
                tags: Vec::new(),
                cache_to: Vec::new(),
                load_into: None,
                ..spec.clone()
            };
            &call_spec
        }
        None => spec,
    };
    // A subrequest makes no image to attest (buildx reads no provenance for it either).
    let attests = match spec.call {
        Some(_) => BTreeMap::new(),
        None => attest::frontend_attrs(&spec.attests, spec.default_provenance),
    };
    let attests = attest::for_daemon(daemon, attests, &spec.attests)
        .await
        .map_err(BuildError::Invalid)?;
    let copies = session::copies::CopyRecords::global();
    if !copies.keeps_records() {
        warn_no_copy_records(progress, prefix);
    }
    // `keys` is held to the end: dropping it records what this build sent.
    let node_id = session::node_id();
    let mut keys = session::copies::BuildKeys::new(copies, node_id.clone());
    let mut planned = plan_request(
        spec,
        &daemon.kind,
        &node_id,
        &mut |d| keys.session_key(d),
        &attests,
    )?;
    keys.attach(&mut planned.session.dirs);
    if let Some(why) = copies.take_warning() {
        progress.warning(prefix, &why);
    }
    if spec.call.is_some() {
        // `BUILDKIT_INLINE_CACHE` would still ask for an inline cache export.
        if let Some(c) = planned.request.cache.as_mut() {
            c.exports.clear();
        }
    }
    let build_ref = session::random_id();

    // Image loads through the Engine API: the engine must be there before anything is built,
    // and reads the export while the daemon writes it.
    for (host, _) in &planned.engine_loads {
        crate::transport::docker_api_version(host)
            .await
            .map_err(|e| {
                BuildError::Invalid(format!(
                    "cannot load the image: no Docker Engine answered at {host} ({e}); set DOCKER_HOST to the engine to load into, or use --push or -o type=docker,dest=image.tar"
                ))
            })?;
    }
    let mut loads = load::EngineLoads::new();
    for (host, chunks) in planned.engine_loads {
        loads.start(host, chunks);
    }

    for warning in &planned.warnings {
        progress.warning(prefix, warning);
    }
    let session_spec = planned.session;
    let content = session_spec.content.clone();
    let session = Session::start(daemon.channel.clone(), session_spec).await?;
    let mut req = planned.request;
    req.r#ref = build_ref.clone();
    req.session = session.id.clone();

    let mut control = ControlClient::new(daemon.channel.clone())
        .max_decoding_message_size(session::MAX_DECODE)
        .max_encoding_message_size(session::MAX_ENCODE);
    let mut status_client = control.clone();

    let status_ref = build_ref.clone();
    let progress2 = progress.clone();
    let prefix2 = prefix.map(str::to_string);
    let status_task = tokio::spawn(async move {
        let mut loaded = std::collections::BTreeSet::new();
        let mut stored = stored.map(|tx| (StoredWatch::default(), tx));
        // The daemon waits a few seconds for the job to appear, so starting first is fine.
        let Ok(resp) = status_client
            .status(StatusRequest { r#ref: status_ref })
            .await
        else {
            return None;
        };
        let mut stream = resp.into_inner();
        while let Some(Ok(msg)) = stream.next().await {
            for v in &msg.vertexes {
                if let Some(r) = v.name.strip_prefix(LOAD_METADATA) {
                    loaded.insert(r.trim().to_string());
                }
            }
            if let Some((watch, _)) = stored.as_mut() {
                let found = msg
                    .statuses
                    .iter()
                    .find_map(|st| watch.see(&st.vertex, &st.id));
                if let Some(digest) = found {
                    if let Some((_, tx)) = stored.take() {
                        let _ = tx.send(digest);
                    }
                }
            }
            progress2.status(prefix2.as_deref(), msg);
        }
        Some(loaded)
    });

    // The daemon's answer, unless the session is lost first: then the build cannot finish
    // (what the daemon still needs from this client would never come), so the Solve call is
    // dropped, which cancels the build on the daemon, rather than waited for without end.
    let channel = daemon.channel.clone();
    let solve = async {
        match spec.call.as_deref() {
            Some(name) => gateway::call(channel, req, name).await,
            None => control
                .solve(req)
                .await
                .map(|r| r.into_inner().exporter_response.into_iter().collect()),
        }
    };
    tokio::pin!(solve);
    let solved = tokio::select! {
        biased;
        r = &mut solve => Ok(r),
        why = session.lost() => {
            // The answer may already be on its way (a daemon that lets go of the session as
            // the build ends): a finished build is never reported as lost.
            match tokio::time::timeout(SOLVE_ANSWER_GRACE, &mut solve).await {
                Ok(r) => Ok(r),
                Err(_) => Err(why),
            }
        }
    };
    // Status ends by itself after the job completes; don't wait on a stuck stream forever.
    let loaded = match tokio::time::timeout(Duration::from_secs(5), status_task).await {
        Ok(Ok(Some(l))) => Some(l.into_iter().collect()),
        _ => None,
    };
    let stats = session.stats.clone();
    let export_errors = session.close().await;

    // Whether the connection broke (`Some(gone)`), rather than the daemon failing the build.
    let mut lost: Option<bool> = None;
    let answered = match solved {
        Ok(Ok(resp)) => Ok(resp),
        // A broken connection is not the daemon's answer: say what broke, and whether the
        // daemon is still there, instead of "failed to solve: transport error".
        Ok(Err(s)) => Err(
            match crate::transport::explain_lost_connection(daemon, &s).await {
                Some(l) => {
                    if !l.reset_by_daemon {
                        lost = Some(l.gone);
                    }
                    format!("ERROR: build did not finish: {}", l.message)
                }
                None => crate::progress::describe_build_error(&s),
            },
        ),
        Err(why) => Err({
            // A daemon that froze or went away loses the session too: another may build it.
            lost = Some(!crate::transport::answers(daemon).await);
            format!(
            "ERROR: build did not finish: the session with the daemon was lost during the build: {why}. The daemon could no longer ask this client for anything the build needs (files, outputs, credentials), so the build was canceled. A daemon drops a session whose health checks fail, e.g. when the connection stalled for half a minute or more: check the network to the daemon, then run the build again."
        )
        }),
    };
    let resp = match answered {
        Ok(resp) => resp,
        Err(mut message) => {
            // The export may have reached the engine before the build failed.
            for loaded in loads.after_failure(LOAD_ANSWER_WAIT).await {
                message.push_str(&format!("\nnote: {loaded}"));
            }
            return Err(match lost {
                Some(gone) => BuildError::ConnectionLost { message, gone },
                None => BuildError::Failed { message },
            });
        }
    };
    let engines = loads.engines();
    if !engines.is_empty() {
        progress.note(
            prefix,
            &format!(
                "loading the image into the Docker Engine at {}",
                engines.join(", ")
            ),
        );
    }
    loads.finish().await.map_err(|why| BuildError::Export {
        what: "image into the Docker Engine".into(),
        why,
    })?;
    if let Some(e) = export_errors.into_iter().next() {
        return Err(BuildError::Export {
            what: "build output".into(),
            why: e,
        });
    }
    let exporter_response: BTreeMap<String, String> = resp;
    let reported = exporter_response
        .get("cache.manifest")
        .map(String::as_str)
        .and_then(cache_manifest_descriptor);
    for update in planned.cache_indexes {
        let content = content.clone();
        let reported = reported.clone();
        let dir = update.dir.clone();
        let notes = tokio::task::spawn_blocking(move || {
            record_cache_export(&content, &update, reported.as_ref())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|why| BuildError::Export {
            what: format!("cache index {}", dir.join("index.json").display()),
            why,
        })?;
        for n in notes {
            match n {
                Notice::Note(text) => progress.note(prefix, &text),
                Notice::Warning(text) => progress.warning(prefix, &text),
            }
        }
    }
    if let Some((store_id, dir)) = planned.image_layout {
        let content = content.clone();
        let response = exporter_response.clone();
        let index = dir.join("index.json");
        tokio::task::spawn_blocking(move || record_image_layout(&content, &store_id, &response))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|why| BuildError::Export {
                what: format!("image index {}", index.display()),
                why,
            })?;
    }
    let detail = match spec.call {
        Some(_) => MetadataProvenance::Disabled,
        None => spec.metadata_provenance,
    };
    let provenance = attest::record_provenance(daemon, &build_ref, detail)
        .await
        .map_err(|why| BuildError::Export {
            what: "provenance for the metadata file".into(),
            why,
        })?;
    Ok(BuildResult {
        exporter_response,
        sync: stats.snapshot(),
        duration: started.elapsed(),
        build_ref,
        loaded_images: loaded,
        provenance,
    })
}

/// The `cache.manifest` exporter response: the JSON descriptor of the last cache export's
/// manifest (BuildKit `cache/remotecache/export.go`; base64 in some daemons' responses).
fn cache_manifest_descriptor(v: &str) -> Option<Descriptor> {
    use base64::Engine;
    let doc: serde_json::Value = serde_json::from_str(v).ok().or_else(|| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
        serde_json::from_slice(&bytes).ok()
    })?;
    Some(Descriptor {
        media_type: doc.get("mediaType")?.as_str()?.to_string(),
        digest: Digest::parse(doc.get("digest")?.as_str()?).ok()?,
        size: doc.get("size")?.as_u64()?,
    })
}

/// Something to tell the user after the build, shown by [`Progress`].
enum Notice {
    Note(String),
    /// Shown in every progress mode, also `quiet`.
    Warning(String),
}

/// Tags the cache manifest the daemon wrote to one local cache directory, then applies
/// `reset=true`. The daemon reports only the last cache export's manifest, so with several
/// exports the others are found among the blobs each directory received. Returns notices for
/// the user; `Err` when the export cannot be recorded.
fn record_cache_export(
    content: &session::ContentStores,
    update: &CacheIndexUpdate,
    reported: Option<&Descriptor>,
) -> Result<Vec<Notice>, String> {
    let dir = update.dir.display();
    let received = content.received(&update.store_id);
    let layout = content
        .layout(&update.store_id)
        .ok_or_else(|| format!("no session store for {dir}"))?;
    if received.is_empty() {
        // BuildKit skips a cache export with no layers ("skipping cache export for empty
        // result"); the directory keeps what it had.
        return Ok(vec![Notice::Note(format!(
            "cache export to {dir}: the daemon exported nothing (no layers to cache); index.json unchanged"
        ))]);
    }
    let manifest = match reported.filter(|d| received.contains(&d.digest)) {
        Some(d) => d.clone(),
        None => {
            let mut found = None;
            for d in received.iter().rev() {
                if let Some(root) = layout.cache_root(d).map_err(|e| e.to_string())? {
                    found = Some(root);
                    break;
                }
            }
            found.ok_or_else(|| {
                format!("the daemon wrote {} blobs to {dir} but no cache manifest; index.json was not updated", received.len())
            })?
        }
    };
    layout
        .tag(&manifest, &update.tag)
        .map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    if update.reset {
        match layout.remove_unreferenced() {
            Ok((0, _)) => {}
            Ok((n, bytes)) => notes.push(Notice::Note(format!(
                "cache export to {dir}: reset removed {n} unreferenced blobs ({})",
                crate::progress::format_bytes(bytes as i64)
            ))),
            // BuildKit's client only warns: the export itself succeeded.
            Err(e) => notes.push(Notice::Warning(format!(
                "cache export to {dir}: reset failed: {e}"
            ))),
        }
    }
    Ok(notes)
}

/// Names the image an `oci`/`docker` exporter with `tar=false` wrote into its layout, as
/// BuildKit's client does: the descriptor from `containerimage.descriptor`, under each name of
/// `image.name`, or the tag `latest` when it has none.
fn record_image_layout(
    content: &session::ContentStores,
    store_id: &str,
    response: &BTreeMap<String, String>,
) -> Result<(), String> {
    use base64::Engine;
    use session::oci_layout::IndexName;
    let layout = content
        .layout(store_id)
        .ok_or_else(|| "no session store for the layout".to_string())?;
    let raw = response
        .get("containerimage.descriptor")
        .ok_or("the daemon reported no image descriptor; index.json was not updated")?;
    let desc: serde_json::Value = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the daemon's image descriptor is not base64 JSON; index.json was not updated")?;
    let names: Vec<IndexName> = match response.get("image.name") {
        Some(n) if !n.is_empty() => n
            .split(',')
            .map(|n| IndexName::Name(n.trim().to_string()))
            .collect(),
        _ => vec![IndexName::Tag("latest".into())],
    };
    layout.put(&desc, &names).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::StoredWatch;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// The statuses of one exporter vertex as BuildKit sends them (each ID repeated as it
    /// progresses); the push begins after the image is named.
    #[test]
    fn the_stored_image_is_the_index_else_the_one_manifest() {
        let mut w = StoredWatch::default();
        let v = "sha256:vertex";
        for id in [
            "exporting layers".to_string(),
            format!("exporting manifest {}", d('a')),
            format!("exporting config {}", d('b')),
            format!("exporting attestation manifest {}", d('c')),
            format!("exporting manifest list {}", d('e')),
            format!("exporting manifest list {}", d('e')),
            "naming to localhost:5000/base:1".to_string(),
        ] {
            assert_eq!(w.see(v, &id), None, "{id}");
        }
        // Another vertex's statuses do not mix in.
        assert_eq!(
            w.see("other", &format!("exporting manifest {}", d('f'))),
            None
        );
        assert_eq!(w.see(v, "pushing layers"), Some(d('e')));

        let mut w = StoredWatch::default();
        w.see(v, &format!("exporting manifest {}", d('a')));
        w.see(v, &format!("exporting config {}", d('b')));
        assert_eq!(w.see(v, "pushing layers"), Some(d('a')));

        // Two platforms without an index, or a push with no manifest seen: not known.
        let mut w = StoredWatch::default();
        w.see(v, &format!("exporting manifest {}", d('a')));
        w.see(v, &format!("exporting manifest {}", d('b')));
        assert_eq!(w.see(v, "pushing layers"), None);
        assert_eq!(StoredWatch::default().see(v, "pushing layers"), None);
        // Not a digest.
        let mut w = StoredWatch::default();
        w.see(v, "exporting manifest sha256:abc");
        assert_eq!(w.see(v, "pushing layers"), None);
    }
}
