//! Running a project: decide per target whether to build or skip (graph + fingerprints +
//! recorded state), then build what changed with bounded parallelism, each dependent on the
//! exact image its base produced, recording every success as soon as it happens.
//!
//! This is the orchestration layer: it joins [`crate::project`], [`crate::graph`],
//! [`crate::fingerprint`], [`crate::build`] and [`crate::progress`], and owns the skip rule.
//! It does not parse files, walk directories or speak the protocol itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::build::{BuildResult, BuildSpec};
use crate::fingerprint::{self, Fingerprint, FingerprintInput, StateStore, TargetRecord};
use crate::graph::{self, Outcome, Via};
use crate::options::{self, ContextSource, NamedContext, OutputDest};
use crate::progress::{Progress, SummaryRow, TargetOutcome};
use crate::project::{Project, Target};
use crate::transport::{Daemon, DaemonKind};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    #[error(transparent)]
    Fingerprint(#[from] fingerprint::FingerprintError),
    #[error(transparent)]
    State(#[from] fingerprint::StateError),
    #[error("target `{target}`: {message}")]
    Target { target: String, message: String },
}

fn terr(target: &str, message: impl Into<String>) -> BakeError {
    BakeError::Target {
        target: target.to_string(),
        message: message.into(),
    }
}

/// What a run will do with one target, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetPlan {
    pub name: String,
    /// `build` or `skip`.
    pub action: Action,
    pub reasons: Vec<String>,
    pub fingerprint: String,
    /// The digest a skipped target still has (from the last build).
    pub digest: Option<String>,
    #[serde(skip)]
    fp: Option<Fingerprint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Build,
    Skip,
}

/// The decisions for one run, in build order.
#[derive(Debug, Clone)]
pub struct BakePlan {
    pub graph: graph::Plan,
    pub targets: BTreeMap<String, TargetPlan>,
}

impl BakePlan {
    pub fn ordered(&self) -> impl Iterator<Item = &TargetPlan> {
        self.graph.order.iter().filter_map(|n| self.targets.get(n))
    }
}

/// External image references a target reads, resolved to digests where a registry answers;
/// a base built by this project contributes its fingerprint instead.
async fn resolve_external(refs: BTreeSet<String>) -> BTreeMap<String, String> {
    let lookups = refs.into_iter().map(|r| async move {
        let d = match crate::registry::manifest_digest(&r).await {
            Ok(Some(d)) => d,
            Ok(None) => "missing".to_string(),
            Err(_) => "unresolved".to_string(),
        };
        (r, d)
    });
    futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .collect()
}

fn scan(t: &Target) -> Result<graph::DockerfileScan, BakeError> {
    let text = std::fs::read_to_string(&t.dockerfile).map_err(|e| {
        terr(
            &t.name,
            format!("cannot read Dockerfile {}: {e}", t.dockerfile.display()),
        )
    })?;
    let named: BTreeSet<String> = t.contexts.keys().cloned().collect();
    Ok(graph::scan_dockerfile(
        &text,
        &graph::ScanOptions {
            args: &t.args,
            target: t.target.as_deref(),
            named_contexts: &named,
        },
    ))
}

/// Everything that decides a target's result besides files, as sorted key/value pairs.
fn extra_inputs(t: &Target) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (k, v) in &t.labels {
        m.insert(format!("label:{k}"), v.clone());
    }
    m.insert("tags".into(), t.tags.join(","));
    m.insert("outputs".into(), t.outputs.join("\n"));
    m.insert("push".into(), t.push.to_string());
    m.insert("load".into(), t.load.to_string());
    m.insert("no_cache".into(), t.no_cache.to_string());
    for (k, v) in &t.contexts {
        if !matches!(v, ContextSource::Local(_)) {
            m.insert(
                format!("context:{k}"),
                crate::project::context_source_string(v),
            );
        }
    }
    m
}

fn fingerprint_input(
    project: &Project,
    name: &str,
    scan: &graph::DockerfileScan,
) -> FingerprintInput {
    let t = &project.targets[name];
    FingerprintInput {
        target: name.to_string(),
        project_dir: project.root.clone(),
        context_dir: t.context.clone(),
        dockerfile: t.dockerfile.clone(),
        include_patterns: scan.copy_sources.clone(),
        named_contexts: t
            .contexts
            .iter()
            .filter_map(|(k, v)| match v {
                ContextSource::Local(p) => Some((k.clone(), p.clone())),
                _ => None,
            })
            .collect(),
        args: t.args.clone(),
        target_stage: t.target.clone(),
        platforms: t.platforms.clone(),
        // Added once known (`Fingerprint::with_bases`), so walks need not wait for them.
        bases: Vec::new(),
        extra: extra_inputs(t),
    }
}

/// Computes fingerprints and build/skip decisions for `names` (empty: the default group).
pub async fn plan(
    project: &Project,
    names: &[String],
    state: &StateStore,
    daemon: Option<&Daemon>,
) -> Result<BakePlan, BakeError> {
    let gplan = graph::plan(project, names)?;
    let mut scans = BTreeMap::new();
    let mut external = BTreeSet::new();
    for name in &gplan.order {
        let s = scan(&project.targets[name])?;
        let built_here: BTreeSet<&str> = gplan.deps[name]
            .iter()
            .filter_map(|e| match &e.via {
                Via::BaseImage { reference, .. } => Some(reference.as_str()),
                _ => None,
            })
            .collect();
        for r in &s.base_refs {
            if !built_here.contains(r.as_str()) {
                external.insert(r.clone());
            }
        }
        scans.insert(name.clone(), s);
    }
    crate::timing::mark("dockerfiles scanned");

    // What other processes must answer runs while the files are walked: the registry digests
    // of external bases, and whether each recorded output still exists. Checking a target
    // whose inputs turn out to have changed wastes a cheap request; waiting for the walk
    // first would add the daemon's answer time to every no-op run.
    let resolving = tokio::spawn(resolve_external(external));
    let engine = daemon.and_then(|d| match (&d.kind, &d.address) {
        (DaemonKind::DockerEngine { .. }, crate::transport::Address::Docker(host)) => {
            Some(host.clone())
        }
        _ => None,
    });
    let checks: Vec<_> = gplan
        .order
        .iter()
        .filter_map(|name| {
            let prev = state.get(name)?;
            let (t, engine) = (project.targets[name].clone(), engine.clone());
            let name = name.clone();
            Some(async move {
                let missing = output_missing(&t, &prev, engine.as_ref()).await;
                (name, missing)
            })
        })
        .collect();
    let checking = tokio::spawn(futures_util::future::join_all(checks));

    let inputs: Vec<FingerprintInput> = gplan
        .order
        .iter()
        .map(|name| fingerprint_input(project, name, &scans[name]))
        .collect();
    let walked =
        tokio::task::block_in_place(|| fingerprint::compute_many(&inputs, state.stat_cache()));
    crate::timing::mark("files walked");
    // A lookup task only fails by panicking; treat its answers as unknown rather than fail.
    let external = resolving.await.unwrap_or_default();

    let mut targets: BTreeMap<String, TargetPlan> = BTreeMap::new();
    for (name, fp) in gplan.order.iter().zip(walked) {
        let s = &scans[name];
        let mut bases: Vec<(String, String)> = Vec::new();
        for e in &gplan.deps[name] {
            bases.push((e.dep.clone(), targets[&e.dep].fingerprint.clone()));
        }
        for r in &s.base_refs {
            if let Some(d) = external.get(r) {
                bases.push((r.clone(), d.clone()));
            }
        }
        let fp = fp?.with_bases(bases);
        let (action, reasons, digest) = decide(state, &gplan, &targets, name, &fp);
        targets.insert(
            name.clone(),
            TargetPlan {
                name: name.clone(),
                action,
                reasons,
                fingerprint: fp.key.clone(),
                digest,
                fp: Some(fp),
            },
        );
    }
    crate::timing::mark("fingerprints computed");

    let checked = checking.await.map_err(|e| BakeError::Target {
        target: gplan.order.join(", "),
        message: format!("checking the previous outputs failed: {e}"),
    })?;
    for (name, missing) in checked {
        match (missing, targets.get_mut(&name)) {
            (Some(why), Some(tp)) if tp.action == Action::Skip => {
                tp.action = Action::Build;
                tp.reasons = vec![why];
                tp.digest = None;
            }
            _ => {}
        }
    }
    crate::timing::mark("outputs checked");
    state.save_stat_cache()?;
    crate::timing::mark("stat cache saved");
    Ok(BakePlan {
        graph: gplan,
        targets,
    })
}

/// Build or skip from the fingerprint alone; a skip is provisional until the output check.
fn decide(
    state: &StateStore,
    gplan: &graph::Plan,
    decided: &BTreeMap<String, TargetPlan>,
    name: &str,
    fp: &Fingerprint,
) -> (Action, Vec<String>, Option<String>) {
    let dep_rebuilt: Vec<&str> = gplan
        .dependencies(name)
        .into_iter()
        .filter(|d| decided[*d].action == Action::Build)
        .collect();
    match state.get(name) {
        None => (Action::Build, vec!["no previous build".to_string()], None),
        Some(prev) if prev.key != fp.key => {
            let mut r: Vec<String> = dep_rebuilt
                .iter()
                .map(|d| format!("base {d} rebuilt"))
                .collect();
            match state.manifest(name) {
                // "base X changed" says the same as "base X rebuilt" above.
                Some(old) => r.extend(fingerprint::explain(&old, &fp.manifest).into_iter().filter(
                    |l| {
                        !dep_rebuilt
                            .iter()
                            .any(|d| *l == format!("base {d} changed"))
                    },
                )),
                None => r.push("inputs changed".into()),
            }
            if r.is_empty() {
                r.push("inputs changed".into());
            }
            (Action::Build, r, None)
        }
        Some(prev) => (
            Action::Skip,
            vec!["unchanged".to_string()],
            prev.image_digest.clone(),
        ),
    }
}

/// `Some(reason)` when the last build's output is gone (so the target must be rebuilt).
/// `engine` is the Docker Engine whose image store `load` writes to, if that is the daemon.
async fn output_missing(
    t: &Target,
    prev: &TargetRecord,
    engine: Option<&crate::transport::DockerHost>,
) -> Option<String> {
    if t.push {
        for tag in &t.tags {
            match crate::registry::manifest_digest(tag).await {
                Ok(Some(d)) if prev.image_digest.as_deref() == Some(d.as_str()) => {}
                Ok(Some(_)) => return Some(format!("{tag} in the registry is another image")),
                Ok(None) => return Some(format!("{tag} is not in the registry")),
                Err(e) => return Some(format!("cannot check {tag} in the registry: {e}")),
            }
        }
    }
    let loads = t.load || (!t.push && t.outputs.is_empty() && !t.tags.is_empty());
    if let (true, Some(host)) = (loads, engine) {
        for tag in &t.tags {
            match crate::transport::docker_image_id(host, tag).await {
                Ok(Some(id)) => {
                    if let Some(want) = prev.image_digest.as_deref() {
                        if id != want {
                            return Some(format!(
                                "image {tag} in the Docker Engine is another image"
                            ));
                        }
                    }
                }
                Ok(None) => return Some(format!("image {tag} is not in the Docker Engine")),
                Err(e) => return Some(format!("cannot check image {tag}: {e}")),
            }
        }
    }
    for o in &t.outputs {
        if let Ok(spec) = options::parse_output(o) {
            if let Some(OutputDest::Path(p)) = &spec.dest {
                if !p.exists() {
                    return Some(format!("output {} is missing", p.display()));
                }
            }
        }
    }
    None
}

/// The result of one target in a run.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub name: String,
    pub outcome: TargetOutcome,
    pub duration: Option<Duration>,
    pub bytes_sent: Option<u64>,
    pub digest: Option<String>,
    pub error: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// Turns a project target into a build spec, pinning bases built in this run by digest.
fn build_spec(
    project: &Project,
    plan: &BakePlan,
    name: &str,
    digests: &BTreeMap<String, String>,
) -> Result<BuildSpec, BakeError> {
    let t = &project.targets[name];
    let e = |m: String| terr(name, m);
    let mut spec = BuildSpec {
        name: name.to_string(),
        context: t.context.clone(),
        dockerfile: Some(t.dockerfile.clone()),
        target: t.target.clone(),
        build_args: t.args.clone(),
        labels: t.labels.clone(),
        platforms: t.platforms.clone(),
        no_cache: t.no_cache,
        tags: t.tags.clone(),
        push: t.push,
        load: t.load,
        // The fingerprint never includes bk-build's state; the daemon must not get it either.
        never_send: vec![project.root.join(fingerprint::STATE_DIR_NAME)],
        ..Default::default()
    };
    let pinned = |dep: &str| -> Result<String, BakeError> {
        let dt = &project.targets[dep];
        let tag = dt.tags.first().ok_or_else(|| {
            e(format!(
                "depends on `{dep}` as an image, but `{dep}` has no tags; give it tags and push = true (or load = true)"
            ))
        })?;
        let digest = digests
            .get(dep)
            .ok_or_else(|| e(format!("no image digest recorded for `{dep}`")))?;
        Ok(format!("{tag}@{digest}"))
    };
    for (k, v) in &t.contexts {
        let source = match v {
            ContextSource::Target(dep) => ContextSource::DockerImage(pinned(dep)?),
            other => other.clone(),
        };
        // BuildKit looks named contexts up by the familiar form of the name.
        spec.contexts.push(NamedContext {
            name: graph::familiar(k),
            source,
        });
    }
    for edge in &plan.graph.deps[name] {
        if let Via::BaseImage { context_key, .. } = &edge.via {
            if !t
                .contexts
                .keys()
                .any(|k| graph::familiar(k) == *context_key)
            {
                spec.contexts.push(NamedContext {
                    name: context_key.clone(),
                    source: ContextSource::DockerImage(pinned(&edge.dep)?),
                });
            }
        }
    }
    for s in &t.outputs {
        spec.outputs
            .push(options::parse_output(s).map_err(|x| e(x.to_string()))?);
    }
    for s in &t.cache_from {
        spec.cache_from
            .extend(options::parse_cache_from(s).map_err(|x| e(x.to_string()))?);
    }
    for s in &t.cache_to {
        spec.cache_to
            .extend(options::parse_cache_to(s).map_err(|x| e(x.to_string()))?);
    }
    for s in &t.secrets {
        spec.secrets
            .push(options::parse_secret(s).map_err(|x| e(x.to_string()))?);
    }
    for s in &t.ssh {
        spec.ssh
            .push(options::parse_ssh(s).map_err(|x| e(x.to_string()))?);
    }
    Ok(spec)
}

/// Drops registry cache imports whose ref does not exist, so a list like "this commit,
/// this branch, main" works without warnings (the seed flow's `docker manifest inspect`).
async fn existing_cache_imports(spec: &mut BuildSpec) {
    let mut kept = Vec::new();
    for c in std::mem::take(&mut spec.cache_from) {
        if c.kind == "registry" {
            if let Some(r) = c.attrs.get("ref") {
                if let Ok(None) = crate::registry::manifest_digest(r).await {
                    continue;
                }
            }
        }
        kept.push(c);
    }
    spec.cache_from = kept;
}

/// Builds what the plan says, at most `jobs` at a time. Skipped targets still provide their
/// recorded digest to dependents. Each success is recorded in `state` immediately.
pub async fn execute(
    daemon: &Daemon,
    project: &Project,
    plan: &BakePlan,
    state: &StateStore,
    jobs: usize,
    progress: &Progress,
) -> Vec<TargetResult> {
    let digests: Arc<Mutex<BTreeMap<String, String>>> = Arc::new(Mutex::new(
        plan.targets
            .values()
            .filter_map(|t| t.digest.clone().map(|d| (t.name.clone(), d)))
            .collect(),
    ));
    let outcomes = graph::run(&plan.graph, jobs, |name: String| {
        let digests = digests.clone();
        async move {
            let tp = &plan.targets[&name];
            if tp.action == Action::Skip {
                progress.note(Some(&name), "skipped: inputs unchanged");
                return Ok::<_, String>(None);
            }
            let snapshot = digests.lock().map(|d| d.clone()).unwrap_or_default();
            let mut spec =
                build_spec(project, plan, &name, &snapshot).map_err(|e| e.to_string())?;
            existing_cache_imports(&mut spec).await;
            progress.note(Some(&name), &format!("building: {}", tp.reasons.join("; ")));
            let r: BuildResult = crate::build::build(daemon, &spec, progress, Some(&name))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(d) = r.image_digest() {
                if let Ok(mut m) = digests.lock() {
                    m.insert(name.clone(), d.to_string());
                }
            }
            if let Some(fp) = &tp.fp {
                let rec = TargetRecord {
                    key: fp.key.clone(),
                    image_digest: r.image_digest().map(str::to_string),
                    tags: spec.tags.clone(),
                    outputs: project.targets[&name].outputs.clone(),
                    finished_unix: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                };
                if let Err(e) = state.record(&name, &rec, &fp.manifest) {
                    progress.note(
                        Some(&name),
                        &format!("warning: could not record state: {e}"),
                    );
                }
            }
            Ok(Some(r))
        }
    })
    .await;

    plan.graph
        .order
        .iter()
        .map(|name| {
            let tp = &plan.targets[name];
            match outcomes.get(name) {
                Some(Outcome::Succeeded(Some(r))) => TargetResult {
                    name: name.clone(),
                    outcome: TargetOutcome::Built,
                    duration: Some(r.duration),
                    bytes_sent: Some(r.bytes_sent()),
                    digest: r.image_digest().map(str::to_string),
                    error: None,
                    metadata: Some(r.metadata_json()),
                },
                Some(Outcome::Succeeded(None)) => TargetResult {
                    name: name.clone(),
                    outcome: TargetOutcome::Skipped,
                    duration: None,
                    bytes_sent: Some(0),
                    digest: tp.digest.clone(),
                    error: None,
                    metadata: tp.digest.as_ref().map(|d| {
                        serde_json::json!({ "containerimage.digest": d, "bk-build.skipped": true })
                    }),
                },
                Some(Outcome::Failed(e)) => TargetResult {
                    name: name.clone(),
                    outcome: TargetOutcome::Failed,
                    duration: None,
                    bytes_sent: None,
                    digest: None,
                    error: Some(e.clone()),
                    metadata: None,
                },
                Some(Outcome::NotStarted { because }) => TargetResult {
                    name: name.clone(),
                    outcome: TargetOutcome::NotStarted,
                    duration: None,
                    bytes_sent: None,
                    digest: None,
                    error: Some(format!("not started: {because} failed")),
                    metadata: None,
                },
                None => TargetResult {
                    name: name.clone(),
                    outcome: TargetOutcome::NotStarted,
                    duration: None,
                    bytes_sent: None,
                    digest: None,
                    error: Some("not started".into()),
                    metadata: None,
                },
            }
        })
        .collect()
}

/// Results for a plan whose every target is skipped (no daemon contacted).
pub fn skipped_results(plan: &BakePlan) -> Vec<TargetResult> {
    plan.ordered()
        .map(|tp| TargetResult {
            name: tp.name.clone(),
            outcome: TargetOutcome::Skipped,
            duration: None,
            bytes_sent: Some(0),
            digest: tp.digest.clone(),
            error: None,
            metadata: tp.digest.as_ref().map(
                |d| serde_json::json!({ "containerimage.digest": d, "bk-build.skipped": true }),
            ),
        })
        .collect()
}

/// Rows for the end-of-run table.
pub fn summary_rows(results: &[TargetResult]) -> Vec<SummaryRow> {
    results
        .iter()
        .map(|r| SummaryRow {
            target: r.name.clone(),
            outcome: r.outcome,
            duration: r.duration,
            bytes_sent: r.bytes_sent,
            digest: r.digest.clone(),
        })
        .collect()
}

/// `--metadata-file` for a bake run: one object per target, like `docker buildx bake`.
pub fn metadata_json(results: &[TargetResult]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for r in results {
        if let Some(v) = &r.metadata {
            m.insert(r.name.clone(), v.clone());
        }
    }
    serde_json::Value::Object(m)
}
