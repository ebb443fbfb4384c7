//! Running a project: decide per target whether to build, re-tag or skip it (graph +
//! fingerprints + what the local state and the registry already hold), then do it with
//! bounded parallelism, each dependent on the exact image its base produced, recording every
//! success as soon as it happens.
//!
//! The decision ("the skip rule") lives here. A target's key covers its content inputs only
//! (files, Dockerfile, visible args, bases by digest, …; see [`crate::fingerprint`]). A result
//! for that key is known from the local state or from the **registry ledger**: after a push,
//! the image is also tagged `<repository>:bk-build-<key>` ([`fingerprint::ledger_tag`]), so a
//! fresh CI runner can find it by content. With a known result, the wanted tags and outputs
//! are checked: all present → `skip`; only tags missing → `retag` (a manifest copy, no layer
//! upload, no daemon); anything else → `build`. Whatever is uncertain leads to `build`.
//!
//! This is the orchestration layer: it joins [`crate::project`], [`crate::graph`],
//! [`crate::fingerprint`], [`crate::build`], [`crate::registry`] and [`crate::progress`]. It
//! does not parse files, walk directories or speak the protocol itself.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::build::{BuildResult, BuildSpec};
use crate::fingerprint::{
    self, ContextRead, DaemonRead, Fingerprint, FingerprintInput, StateStore, TargetRecord,
};
use crate::graph::{self, Outcome, Via};
use crate::options::{self, ContextSource, NamedContext, OutputDest, OutputKind};
use crate::progress::{Progress, SummaryRow, TargetOutcome};
use crate::project::{Project, Target};
use crate::transport::{Daemon, DaemonKind, DockerHost};
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

/// How a run decides.
#[derive(Debug, Clone, Default)]
pub struct BakeOptions {
    /// Build these targets whatever their state (`bake --force`), and record the result.
    pub force: BTreeSet<String>,
    /// Look results up in, and record them to, the registry ledger (default on).
    pub ledger: bool,
    /// The Docker Engine that builds (if the builder is one): a `FROM` without `pull` uses
    /// the image of that name in its store when there is one, so that image's ID is an input.
    pub engine_images: Option<DockerHost>,
}

/// What a run will do with one target, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetPlan {
    pub name: String,
    pub action: Action,
    pub reasons: Vec<String>,
    /// The key of the target's inputs; `None` while a base it builds on must be built first
    /// (the base's new digest is one of the inputs).
    pub fingerprint: Option<String>,
    /// The image digest a skipped or re-tagged target has.
    pub digest: Option<String>,
    /// Tags a `retag` adds (registry tags, then Docker Engine tags).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retag: Vec<String>,
    #[serde(skip)]
    retag_registry: Vec<String>,
    #[serde(skip)]
    retag_engine: Vec<String>,
    /// A registry reference holding `digest`, to copy re-tagged manifests from.
    #[serde(skip)]
    retag_from: Option<String>,
    /// The result is already in the registry ledger (no need to write it again).
    #[serde(skip)]
    in_ledger: bool,
    /// Content fingerprint without the digests of project bases (added once known).
    #[serde(skip)]
    content: Option<Fingerprint>,
    /// What `content` was computed from, to check it again after a build.
    #[serde(skip)]
    input: Option<FingerprintInput>,
    /// External bases the building engine has its own image of: reference → image ID.
    #[serde(skip)]
    local_bases: BTreeMap<String, String>,
    /// The whole fingerprint, when every base's digest is known at planning time.
    #[serde(skip)]
    full: Option<Fingerprint>,
    /// Project targets whose images this one builds on (they pin it by digest).
    #[serde(skip)]
    image_deps: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Build,
    Retag,
    Skip,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Build => "build",
            Action::Retag => "retag",
            Action::Skip => "skip",
        }
    }
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

/// The platform an unset `platforms` means in keys: this machine's, in BuildKit's spelling.
/// A daemon that builds for another one is noticed after the build, and its result is not
/// reused (see [`execute`]).
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Exporter attributes that shape the produced artifact (compression, media types, …); the
/// destination, image names and push flag only say where it goes.
fn artifact_outputs(t: &Target) -> Vec<String> {
    t.outputs
        .iter()
        .map(|o| match options::parse_output(o) {
            Ok(spec) => {
                let mut parts = vec![format!("type={}", spec.kind.as_str())];
                for (k, v) in &spec.attrs {
                    if !matches!(k.as_str(), "name" | "push" | "dest") {
                        parts.push(format!("{k}={v}"));
                    }
                }
                parts.join(",")
            }
            Err(_) => o.clone(),
        })
        .collect()
}

/// Everything that decides a target's result besides files, args and bases.
fn extra_inputs(t: &Target, scan: &graph::DockerfileScan) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    // Which named contexts the build reads, by what they are rather than by the name the
    // Dockerfile gives them (`"${REPO}/base:${TAG}" = "target:base"` keeps its meaning when
    // TAG changes).
    let mut used: Vec<String> = t
        .contexts
        .iter()
        .filter(|(k, _)| scan.used_contexts.contains(&graph::familiar(k)))
        .map(|(k, v)| match v {
            ContextSource::Local(_) => format!("local {k}"),
            other => crate::project::context_source_string(other),
        })
        .collect();
    used.sort();
    if !used.is_empty() {
        m.insert("contexts used".into(), used.join(", "));
    }
    for (k, v) in &t.labels {
        m.insert(format!("label:{k}"), v.clone());
    }
    for (i, o) in artifact_outputs(t).into_iter().enumerate() {
        m.insert(format!("output:{i}"), o);
    }
    for (k, v) in &t.contexts {
        match v {
            // Hashed as files, or added as the base's digest.
            ContextSource::Local(_) | ContextSource::Target(_) => {}
            other => {
                m.insert(
                    format!("context:{k}"),
                    crate::project::context_source_string(other),
                );
            }
        }
    }
    m
}

/// Why a target must be built whatever its inputs look like, if it must.
fn always_build(t: &Target, forced: bool, scan: &graph::DockerfileScan) -> Option<String> {
    if forced {
        return Some("forced (--force)".into());
    }
    if t.no_cache {
        return Some("no_cache is set".into());
    }
    if !scan.certain {
        return Some(format!(
            "{} has a FROM line whose stage could not be read with certainty (a heredoc or continuation?); it is always built",
            t.dockerfile.display()
        ));
    }
    if let Some(url) = scan.remote_sources.first() {
        return Some(format!(
            "ADD {url} is fetched by the daemon; without --checksum its content is not known before building"
        ));
    }
    for (k, v) in &t.contexts {
        match v {
            ContextSource::Remote(u) => {
                return Some(format!(
                    "context {k} ({u}) is fetched by the daemon; its content is not known before building"
                ))
            }
            ContextSource::OciLayout(p) => {
                return Some(format!(
                    "context {k} (oci-layout://{p}) is not fingerprinted"
                ))
            }
            _ => {}
        }
    }
    None
}

/// The registry repository a pushed target lives in (its first tag's), where its ledger
/// entries go.
fn home_repository(t: &Target) -> Option<String> {
    if !t.push {
        return None;
    }
    let r = crate::registry::Reference::parse(t.tags.first()?).ok()?;
    Some(format!("{}/{}", r.registry, r.repository))
}

/// Whether plain `tags` are loaded into the Docker Engine (`load`, or tags with nowhere else
/// to go, as with `docker buildx build -t`).
fn loads(t: &Target) -> bool {
    t.load || (!t.push && t.outputs.is_empty() && !t.tags.is_empty())
}

/// Where a target's result must be, checked against a known image digest.
#[derive(Debug, Clone, Default)]
struct Delivery {
    /// Pushed tags that do not point at the digest (yet).
    registry_missing: Vec<String>,
    /// Pushed tags that already point at it.
    registry_present: Vec<String>,
    /// Engine tags that are not that image.
    engine_missing: Vec<String>,
    /// What makes anything short of a build impossible.
    blockers: Vec<String>,
}

/// What each pushed tag of `t` names in the registry now (errors as text).
type TagDigests = Vec<(String, Result<Option<String>, String>)>;

async fn pushed_tag_digests(t: &Target) -> TagDigests {
    if !t.push {
        return Vec::new();
    }
    let checks = t.tags.iter().map(|tag| async move {
        let got = crate::registry::manifest_digest(tag)
            .await
            .map_err(|e| e.to_string());
        (tag.clone(), got)
    });
    futures_util::future::join_all(checks).await
}

/// Checks `t`'s tags and outputs against the image `digest`. `pushed` are the registry
/// answers for its pushed tags when already fetched (see [`pushed_tag_digests`]).
async fn check_delivery(
    t: &Target,
    digest: Option<&str>,
    written: &BTreeMap<String, String>,
    engine: Option<&DockerHost>,
    pushed: Option<TagDigests>,
) -> Delivery {
    let mut d = Delivery::default();
    if t.push {
        match digest {
            None => d
                .blockers
                .push("the last build recorded no image digest".into()),
            Some(want) => {
                let pushed = match pushed {
                    Some(p) => p,
                    None => pushed_tag_digests(t).await,
                };
                for (tag, got) in pushed {
                    match got {
                        Ok(Some(g)) if g == want => d.registry_present.push(tag),
                        Ok(_) => d.registry_missing.push(tag),
                        Err(e) => d.blockers.push(format!("cannot check {tag}: {e}")),
                    }
                }
            }
        }
    }
    if loads(t) {
        match (engine, digest) {
            (Some(host), Some(want)) => {
                for tag in &t.tags {
                    match crate::transport::docker_image_id(host, tag).await {
                        Ok(Some(id)) if id == want => {}
                        Ok(_) => d.engine_missing.push(tag.clone()),
                        Err(e) => d.blockers.push(format!("cannot check image {tag}: {e}")),
                    }
                }
            }
            (None, _) => d
                .blockers
                .push("the Docker Engine its images load into is not reachable".into()),
            (_, None) => d
                .blockers
                .push("the last build recorded no image digest".into()),
        }
    }
    for o in &t.outputs {
        let Ok(spec) = options::parse_output(o) else {
            d.blockers.push(format!("output {o} cannot be checked"));
            continue;
        };
        if let Some(OutputDest::Path(p)) = &spec.dest {
            match (written.get(o), crate::fs::output_witness(p)) {
                (None, _) => d.blockers.push(format!(
                    "output {} was not written by that build",
                    p.display()
                )),
                (Some(_), Ok(None)) => d
                    .blockers
                    .push(format!("output {} is missing", p.display())),
                (Some(w), Ok(Some(now))) if *w != now => d.blockers.push(format!(
                    "output {} changed since it was written",
                    p.display()
                )),
                (Some(_), Ok(Some(_))) => {}
                (Some(_), Err(e)) => d
                    .blockers
                    .push(format!("cannot check output {}: {e}", p.display())),
            }
            continue;
        }
        let names: Vec<&str> = spec
            .attrs
            .get("name")
            .map(|n| {
                n.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        match spec.kind {
            OutputKind::CacheOnly => {}
            OutputKind::Image if spec.attrs.get("push").is_some_and(|v| v == "true") => {
                for name in names {
                    match (digest, crate::registry::manifest_digest(name).await) {
                        (Some(want), Ok(Some(got))) if got == want => {}
                        _ => d
                            .blockers
                            .push(format!("{name} is not in the registry as that image")),
                    }
                }
            }
            OutputKind::Image | OutputKind::Docker if !names.is_empty() => {
                for name in names {
                    let ok = match (engine, digest) {
                        (Some(host), Some(want)) => {
                            matches!(crate::transport::docker_image_id(host, name).await, Ok(Some(id)) if id == want)
                        }
                        _ => false,
                    };
                    if !ok {
                        d.blockers
                            .push(format!("image {name} is not in the Docker Engine"));
                    }
                }
            }
            _ => d.blockers.push(format!("output {o} cannot be checked")),
        }
    }
    d
}

/// Per-target facts gathered before deciding.
struct Facts {
    scan: graph::DockerfileScan,
    /// External images (not project targets) this build reads, as referenced.
    external: Vec<String>,
}

/// Computes fingerprints and build/retag/skip decisions for `names` (empty: the default
/// group). `daemon` is only used to check images loaded into a Docker Engine.
pub async fn plan(
    project: &Project,
    names: &[String],
    state: &StateStore,
    daemon: Option<&Daemon>,
    opts: &BakeOptions,
) -> Result<BakePlan, BakeError> {
    let gplan = graph::plan(project, names)?;
    let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
    let mut to_resolve = BTreeSet::new();
    let mut to_find_locally = BTreeSet::new();
    for name in &gplan.order {
        let t = &project.targets[name];
        let s = scan(t)?;
        let built_here: BTreeSet<&str> = gplan.deps[name]
            .iter()
            .filter_map(|e| match &e.via {
                Via::BaseImage { reference, .. } => Some(reference.as_str()),
                _ => None,
            })
            .collect();
        let mut external: Vec<String> = s
            .base_refs
            .iter()
            .filter(|r| !built_here.contains(r.as_str()))
            .cloned()
            .collect();
        for v in t.contexts.values() {
            if let ContextSource::DockerImage(r) = v {
                external.push(r.clone());
            }
        }
        if t.pull {
            to_resolve.extend(external.iter().cloned());
            if let Some(syntax) = &s.syntax {
                to_resolve.insert(syntax.clone());
            }
        } else {
            to_find_locally.extend(external.iter().cloned());
        }
        facts.insert(name.clone(), Facts { scan: s, external });
    }
    crate::timing::mark("dockerfiles scanned");

    // What other processes must answer runs while the files are walked: the registry digests
    // of pulled bases, and whether each recorded result is still delivered. Checking a target
    // whose inputs turn out to have changed wastes a cheap request; waiting for the walk
    // first would add the registry's answer time to every no-op run.
    let resolving = tokio::spawn(resolve_digests(to_resolve));
    let finding = tokio::spawn(local_images(opts.engine_images.clone(), to_find_locally));
    let engine = daemon.and_then(engine_of);
    let prechecks: Vec<_> = gplan
        .order
        .iter()
        .filter_map(|name| {
            let prev = state.get(name).filter(|r| r.uncovered.is_empty())?;
            let (t, engine) = (project.targets[name].clone(), engine.clone());
            let name = name.clone();
            Some(async move {
                let d = check_delivery(
                    &t,
                    prev.image_digest.as_deref(),
                    &prev.output_witness,
                    engine.as_ref(),
                    None,
                )
                .await;
                (name, (prev.image_digest, d))
            })
        })
        .collect();
    let prechecking = tokio::spawn(futures_util::future::join_all(prechecks));

    let inputs: Vec<FingerprintInput> = gplan
        .order
        .iter()
        .map(|name| fingerprint_input(project, &gplan, &facts, state, name))
        .collect();
    let walked =
        tokio::task::block_in_place(|| fingerprint::compute_many(&inputs, state.stat_cache()));
    let mut inputs: BTreeMap<String, FingerprintInput> =
        gplan.order.iter().cloned().zip(inputs).collect();
    crate::timing::mark("files walked");
    // A lookup task only fails by panicking; treat its answers as unknown rather than fail.
    let resolved = resolving.await.unwrap_or_default();
    let local = finding.await.unwrap_or_default();
    let prechecked: BTreeMap<String, (Option<String>, Delivery)> = prechecking
        .await
        .map(|v| v.into_iter().collect())
        .unwrap_or_default();

    let mut content: BTreeMap<String, Fingerprint> = BTreeMap::new();
    // Pulled bases the registry could not name a digest for: such a target is built, since
    // what it would build on is unknown.
    let mut unsure: BTreeMap<String, String> = BTreeMap::new();
    // External bases (without pull) the building engine has images of: the engine builds
    // from those, so a result is reused only if it was built from the same ones.
    let mut local_bases: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (name, fp) in gplan.order.iter().zip(walked) {
        let t = &project.targets[name];
        let bases: Vec<(String, String)> = facts[name]
            .external
            .iter()
            .map(|r| {
                // Without pull the reference counts (see `local_bases` for the engine's own
                // images): keys stay the same on every machine, so the ledger works.
                let pinned = if t.pull {
                    resolved.get(r).cloned().unwrap_or_default()
                } else {
                    String::new()
                };
                (r.clone(), pinned)
            })
            .collect();
        if let Some((r, _)) = bases
            .iter()
            .find(|(_, d)| t.pull && !d.starts_with("sha256:"))
        {
            unsure.insert(
                name.clone(),
                format!("pull = true, and the registry gave no digest for {r}"),
            );
        }
        if !t.pull {
            if let Some(why) = alias_of_a_target(project, &facts[name].external) {
                unsure.entry(name.clone()).or_insert(why);
            }
        }
        let mut fp = fp?.with_bases(bases);
        if let (true, Some(syntax)) = (t.pull, &facts[name].scan.syntax) {
            match resolved.get(syntax).filter(|d| d.starts_with("sha256:")) {
                Some(d) => fp = fp.with_bases([("syntax".to_string(), d.clone())]),
                None => {
                    unsure.entry(name.clone()).or_insert_with(|| {
                        format!("pull = true, and the registry gave no digest for the frontend {syntax}")
                    });
                }
            }
        }
        content.insert(name.clone(), fp);
        if !t.pull {
            let mine: BTreeMap<String, String> = facts[name]
                .external
                .iter()
                .filter_map(|r| local.get(r).map(|id| (r.clone(), id.clone())))
                .collect();
            if !mine.is_empty() {
                local_bases.insert(name.clone(), mine);
            }
        }
    }
    crate::timing::mark("fingerprints computed");

    // Decide in dependency waves: a target's key needs its bases' digests.
    let ctx = DecideCtx {
        project,
        gplan: &gplan,
        state,
        engine: engine.as_ref(),
        opts,
        unsure,
        scans: facts.into_iter().map(|(k, f)| (k, f.scan)).collect(),
        local_bases,
    };
    let mut targets: BTreeMap<String, TargetPlan> = BTreeMap::new();
    let mut pending: Vec<String> = gplan.order.clone();
    let mut prechecked = prechecked;
    while !pending.is_empty() {
        let (ready, rest): (Vec<String>, Vec<String>) = pending.into_iter().partition(|n| {
            gplan
                .dependencies(n)
                .iter()
                .all(|d| targets.contains_key(*d))
        });
        if ready.is_empty() {
            return Err(terr(&rest.join(", "), "internal error: undecidable order"));
        }
        let decisions = ready.into_iter().map(|name| {
            let fp = content.remove(&name);
            let input = inputs.remove(&name);
            let pre = prechecked.remove(&name);
            let ctx = &ctx;
            let decided = &targets;
            async move { ctx.decide(&name, fp, input, pre, decided).await }
        });
        let done = futures_util::future::join_all(decisions).await;
        for tp in done {
            targets.insert(tp.name.clone(), tp);
        }
        pending = rest;
    }
    crate::timing::mark("decided");
    state.save_stat_cache()?;
    crate::timing::mark("stat cache saved");
    Ok(BakePlan {
        graph: gplan,
        targets,
    })
}

/// An external base that names a project target's tag under another registry name
/// (`127.0.0.1:5000/x:1` for `localhost:5000/x:1`): not linked to that target, so a change to
/// the target would go unnoticed. Such a target is built until the names agree.
fn alias_of_a_target(project: &Project, external: &[String]) -> Option<String> {
    use crate::registry::Reference;
    let key = |r: &Reference| (r.repository.clone(), r.tag.clone());
    for e in external {
        let Ok(er) = Reference::parse(e) else {
            continue;
        };
        for (dep, t) in &project.targets {
            for tag in &t.tags {
                let Ok(tr) = Reference::parse(tag) else {
                    continue;
                };
                if key(&tr) == key(&er) && tr.registry != er.registry {
                    return Some(format!(
                        "its base {e} looks like target {dep}'s tag {tag} under another registry name, so it is not known to be built on {dep}; write the same name in both (or set pull = true)"
                    ));
                }
            }
        }
    }
    None
}

/// The Docker Engine behind `daemon`, whose image store `load` writes to, if that is it.
fn engine_of(daemon: &Daemon) -> Option<DockerHost> {
    match (&daemon.kind, &daemon.address) {
        (DaemonKind::DockerEngine { .. }, crate::transport::Address::Docker(host)) => {
            Some(host.clone())
        }
        _ => None,
    }
}

/// The image IDs the engine's store has for `refs`; absent ones are left out (BuildKit then
/// resolves them in the registry). One the engine could not answer for is `?`, which matches
/// nothing, so the target is built; an engine that answers none at all is taken as absent (no
/// daemon this run: nothing is built from its store either).
async fn local_images(
    engine: Option<DockerHost>,
    refs: BTreeSet<String>,
) -> BTreeMap<String, String> {
    let Some(engine) = engine else {
        return BTreeMap::new();
    };
    let engine = &engine;
    let lookups = refs.into_iter().map(|r| async move {
        (
            r.clone(),
            crate::transport::docker_image_id(engine, &r).await,
        )
    });
    let answers = futures_util::future::join_all(lookups).await;
    if answers.iter().all(|(_, a)| a.is_err()) {
        return BTreeMap::new();
    }
    answers
        .into_iter()
        .filter_map(|(r, a)| match a {
            Ok(Some(id)) => Some((r, id)),
            Ok(None) => None,
            Err(_) => Some((r, "?".to_string())),
        })
        .collect()
}

async fn resolve_digests(refs: BTreeSet<String>) -> BTreeMap<String, String> {
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

/// Project targets whose images `name` builds on (not mere `depends_on` ordering).
fn image_deps(gplan: &graph::Plan, name: &str) -> Vec<String> {
    let set: BTreeSet<String> = gplan.deps[name]
        .iter()
        .filter(|e| !matches!(e.via, Via::DependsOn))
        .map(|e| e.dep.clone())
        .collect();
    set.into_iter().collect()
}

fn fingerprint_input(
    project: &Project,
    gplan: &graph::Plan,
    facts: &BTreeMap<String, Facts>,
    state: &StateStore,
    name: &str,
) -> FingerprintInput {
    let t = &project.targets[name];
    let scan = &facts[name].scan;
    // A base with ONBUILD triggers runs instructions this scan cannot see.
    let onbuild_base = image_deps(gplan, name)
        .iter()
        .any(|d| facts.get(d).is_some_and(|f| f.scan.has_onbuild));
    let args = t
        .args
        .iter()
        .filter(|(k, _)| onbuild_base || !scan.hidden_args.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    FingerprintInput {
        target: name.to_string(),
        project_dir: project.root.clone(),
        context_dir: t.context.clone(),
        dockerfile: t.dockerfile.clone(),
        // A base's ONBUILD instructions, or what the daemon read last time, can reach past
        // the paths this Dockerfile names.
        context_read: if onbuild_base || state.get(name).is_some_and(|r| r.whole_context) {
            ContextRead::Whole
        } else {
            ContextRead::from_sources(scan.copy_sources.as_deref())
        },
        named_contexts: t
            .contexts
            .iter()
            .filter_map(|(k, v)| match v {
                ContextSource::Local(p) => Some((k.clone(), p.clone())),
                _ => None,
            })
            .collect(),
        args,
        target_stage: t.target.clone(),
        platforms: if t.platforms.is_empty() {
            vec![host_platform()]
        } else {
            t.platforms.clone()
        },
        // Added once known, so walks need not wait for them.
        bases: Vec::new(),
        extra: extra_inputs(t, scan),
    }
}

/// Adds the digests of the project targets `name` builds on; `None` if one is not known
/// (it is built in this run, or produced no image).
fn with_image_deps(
    content: &Fingerprint,
    deps: &[String],
    digest_of: impl Fn(&str) -> Option<String>,
) -> Option<Fingerprint> {
    let mut bases = Vec::with_capacity(deps.len());
    for d in deps {
        bases.push((format!("target:{d}"), digest_of(d)?));
    }
    Some(content.clone().with_bases(bases))
}

struct DecideCtx<'a> {
    project: &'a Project,
    gplan: &'a graph::Plan,
    state: &'a StateStore,
    engine: Option<&'a DockerHost>,
    opts: &'a BakeOptions,
    /// Targets that are built because an input could not be known, and why.
    unsure: BTreeMap<String, String>,
    scans: BTreeMap<String, graph::DockerfileScan>,
    /// Per target: external base → the building engine's image ID for it.
    local_bases: BTreeMap<String, BTreeMap<String, String>>,
}

impl DecideCtx<'_> {
    async fn decide(
        &self,
        name: &str,
        content: Option<Fingerprint>,
        input: Option<FingerprintInput>,
        prechecked: Option<(Option<String>, Delivery)>,
        decided: &BTreeMap<String, TargetPlan>,
    ) -> TargetPlan {
        let t = &self.project.targets[name];
        let deps = image_deps(self.gplan, name);
        let mut tp = TargetPlan {
            name: name.to_string(),
            action: Action::Build,
            reasons: Vec::new(),
            fingerprint: None,
            digest: None,
            retag: Vec::new(),
            retag_registry: Vec::new(),
            retag_engine: Vec::new(),
            retag_from: None,
            in_ledger: false,
            content,
            input,
            local_bases: self.local_bases.get(name).cloned().unwrap_or_default(),
            full: None,
            image_deps: deps.clone(),
        };
        let Some(content) = tp.content.clone() else {
            tp.reasons.push("internal error: no fingerprint".into());
            return tp;
        };
        let rebuilt: Vec<&str> = self
            .gplan
            .dependencies(name)
            .into_iter()
            .filter(|d| decided[*d].action == Action::Build)
            .collect();
        let fp = with_image_deps(&content, &deps, |d| decided[d].digest.clone());
        tp.fingerprint = fp.as_ref().map(|f| f.key.clone());
        tp.full = fp.clone();
        if let Some(why) = always_build(t, self.opts.force.contains(name), &self.scans[name])
            .or_else(|| self.unsure.get(name).cloned())
        {
            tp.reasons.push(why);
            return tp;
        }
        if !rebuilt.is_empty() {
            tp.reasons = rebuilt
                .iter()
                .map(|d| format!("base {d} rebuilt"))
                .collect();
            return tp;
        }
        let Some(fp) = fp else {
            tp.reasons
                .push("a base it builds on has no recorded image digest".into());
            return tp;
        };

        // A known result for these inputs: the local record, else the registry ledger.
        let prev = self.state.get(name);
        let mut known: Option<(Option<String>, Delivery, String)> = None;
        let engine_base_moved = prev.as_ref().and_then(|p| {
            tp.local_bases
                .iter()
                .find(|(r, id)| p.local_bases.get(*r) != Some(*id))
                .map(|(r, _)| format!("base {r} in the Docker Engine is another image"))
        });
        let mut ledger_said = None;
        if let Some(p) = prev
            .as_ref()
            .filter(|p| p.key == fp.key && engine_base_moved.is_none())
        {
            if p.uncovered.is_empty() {
                let delivery = match prechecked {
                    Some((d, delivery)) if d == p.image_digest => delivery,
                    _ => {
                        check_delivery(
                            t,
                            p.image_digest.as_deref(),
                            &p.output_witness,
                            self.engine,
                            None,
                        )
                        .await
                    }
                };
                known = Some((p.image_digest.clone(), delivery, "unchanged".into()));
            }
        }
        // A ledger entry was built from the registry's images (CI builds on fresh engines);
        // an engine whose own copy of a base is another image would build something else.
        let mut engine_differs = None;
        for (r, id) in &tp.local_bases {
            if crate::registry::manifest_digest(r)
                .await
                .ok()
                .flatten()
                .as_ref()
                != Some(id)
            {
                engine_differs = Some(format!(
                    "the Docker Engine's own {r} is not the registry's, so results built elsewhere do not apply"
                ));
                break;
            }
        }
        let unknown = known
            .as_ref()
            .is_none_or(|(_, d, _)| !d.blockers.is_empty());
        if unknown && self.opts.ledger && engine_differs.is_none() {
            if let Some(home) = home_repository(t) {
                let entry = format!("{home}:{}", fingerprint::ledger_tag(&fp.key));
                // The wanted tags are asked at the same time: one round trip, not two.
                let (found, pushed) = tokio::join!(
                    crate::registry::manifest_digest(&entry),
                    pushed_tag_digests(t)
                );
                match found {
                    Ok(Some(d)) => {
                        let delivery = check_delivery(
                            t,
                            Some(&d),
                            &BTreeMap::new(),
                            self.engine,
                            Some(pushed),
                        )
                        .await;
                        tp.in_ledger = true;
                        tp.retag_from = Some(entry.clone());
                        let shown = format!("{home}:{}…", &fingerprint::ledger_tag(&fp.key)[..25]);
                        known = Some((Some(d), delivery, format!("found in registry as {shown}")));
                    }
                    Ok(None) => ledger_said = Some("not in the registry ledger".to_string()),
                    Err(e) => {
                        ledger_said = Some(format!("the registry ledger could not be read: {e}"))
                    }
                }
            }
        }
        let Some((digest, delivery, found)) = known else {
            tp.reasons = match (
                &engine_base_moved,
                prev.as_ref().filter(|p| p.key == fp.key),
            ) {
                (Some(why), Some(_)) => vec![why.clone()],
                _ => self.why_build(name, prev.as_ref(), &fp),
            };
            tp.reasons.extend(engine_differs.or(ledger_said));
            return tp;
        };
        if !delivery.blockers.is_empty() {
            tp.reasons = delivery.blockers;
            return tp;
        }
        // Tags to add: registry copies need a reference that holds the digest — a wanted tag
        // that has it, else where it was pushed before (the old repository, when the
        // repository changed), else the target's repository by digest.
        if !delivery.registry_missing.is_empty() && tp.retag_from.is_none() {
            tp.retag_from = delivery.registry_present.first().cloned();
            if let (None, Some(d)) = (&tp.retag_from, &digest) {
                // Manifests are copied within one registry only.
                let registry = t
                    .tags
                    .first()
                    .and_then(|tag| crate::registry::Reference::parse(tag).ok())
                    .map(|r| r.registry);
                let recorded = prev
                    .iter()
                    .filter(|p| p.image_digest.as_ref() == Some(d) && t.push)
                    .flat_map(|p| p.tags.iter())
                    .filter_map(|tag| crate::registry::Reference::parse(tag).ok())
                    .filter(|r| Some(&r.registry) == registry.as_ref())
                    .map(|r| format!("{}/{}@{d}", r.registry, r.repository));
                let mut candidates: Vec<String> = home_repository(t)
                    .map(|home| format!("{home}@{d}"))
                    .into_iter()
                    .chain(recorded)
                    .collect();
                candidates.dedup();
                for c in candidates {
                    if let Ok(Some(_)) = crate::registry::manifest_digest(&c).await {
                        tp.retag_from = Some(c);
                        break;
                    }
                }
            }
            if tp.retag_from.is_none() {
                tp.reasons.push(format!(
                    "image {} is no longer in the registry",
                    digest.as_deref().unwrap_or("(unknown)")
                ));
                return tp;
            }
        }
        if !delivery.engine_missing.is_empty() {
            // Tagging inside the engine needs the image there; without it, build.
            let present = match (self.engine, digest.as_deref()) {
                (Some(host), Some(d)) => matches!(
                    crate::transport::docker_image_id(host, d).await,
                    Ok(Some(id)) if id == d
                ),
                _ => false,
            };
            if !present {
                tp.reasons.push(format!(
                    "image {} is not in the Docker Engine",
                    delivery.engine_missing.join(", ")
                ));
                return tp;
            }
        }
        tp.digest = digest;
        tp.retag_registry = delivery.registry_missing;
        tp.retag_engine = delivery.engine_missing;
        tp.retag = tp
            .retag_registry
            .iter()
            .chain(&tp.retag_engine)
            .cloned()
            .collect();
        tp.action = if tp.retag.is_empty() {
            Action::Skip
        } else {
            Action::Retag
        };
        tp.reasons.push(found);
        if tp.action == Action::Retag {
            tp.reasons.push(format!("adds {}", tp.retag.join(", ")));
        }
        tp
    }

    /// Why a target with no known result for its key must be built.
    fn why_build(&self, name: &str, prev: Option<&TargetRecord>, fp: &Fingerprint) -> Vec<String> {
        let mut r = Vec::new();
        match prev {
            None => r.push(fingerprint::NO_PREVIOUS_BUILD.to_string()),
            Some(p) if !p.uncovered.is_empty() => r.push(format!(
                "its last build read files its fingerprint did not cover ({})",
                p.uncovered.join(", ")
            )),
            Some(p) if p.key == fp.key => {}
            Some(_) => match self.state.manifest(name) {
                Some(old) => r.extend(fingerprint::explain(&old, &fp.manifest)),
                None => r.push("inputs changed".into()),
            },
        }
        if r.is_empty() {
            r.push("inputs changed".into());
        }
        r
    }
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
    /// Things the user must see whatever the progress mode (a result that will not be
    /// reused, and why).
    pub warnings: Vec<String>,
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
        pull: t.pull,
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

/// A target that needed no build, after [`execute`]'s first phase.
enum Reused {
    Skipped,
    Retagged,
}

/// What happened to one target in [`execute`].
enum Done {
    Skipped,
    Retagged,
    Built(Box<BuildResult>, Vec<String>),
}

/// Does what the plan says, at most `jobs` targets at a time: skips, re-tags (registry only,
/// no daemon needed) and builds (`daemon` required). Skipped and re-tagged targets provide
/// their digest to dependents. Each success is recorded in `state` (and, for pushed images,
/// in the registry ledger) immediately.
pub async fn execute(
    daemon: Option<&Daemon>,
    project: &Project,
    plan: &BakePlan,
    state: &StateStore,
    jobs: usize,
    progress: &Progress,
    opts: &BakeOptions,
) -> Vec<TargetResult> {
    let digests: Arc<Mutex<BTreeMap<String, String>>> = Arc::new(Mutex::new(
        plan.targets
            .values()
            .filter_map(|t| t.digest.clone().map(|d| (t.name.clone(), d)))
            .collect(),
    ));
    let daemon_platform = tokio::sync::OnceCell::new();
    let engine = daemon.and_then(engine_of);

    // Skips and re-tags first, all at once: none of them waits for anything built in this
    // run (a target whose base is rebuilt is always built itself), so dependency order only
    // matters for builds.
    let reuse = plan
        .ordered()
        .filter(|tp| tp.action != Action::Build)
        .map(|tp| {
            let engine = engine.clone();
            async move {
                let name = tp.name.clone();
                let t = &project.targets[&name];
                let r = if tp.action == Action::Skip {
                    progress.note(Some(&name), &format!("skipped: {}", tp.reasons.join("; ")));
                    if tp.in_ledger {
                        // Found by content on this machine for the first time: remember it.
                        record(state, progress, &name, tp, t);
                    }
                    Ok(Reused::Skipped)
                } else {
                    match retag(tp, engine.as_ref(), progress, &name).await {
                        Ok(()) => {
                            record(state, progress, &name, tp, t);
                            if !tp.in_ledger && opts.ledger {
                                let (key, digest) =
                                    (tp.fingerprint.as_deref(), tp.digest.as_deref());
                                write_ledger(t, key, digest, progress, &name).await;
                            }
                            Ok(Reused::Retagged)
                        }
                        Err(e) => Err(format!("re-tagging failed: {e}")),
                    }
                };
                (name, r)
            }
        });
    let first_phase: BTreeMap<String, Result<Reused, String>> = futures_util::stream::iter(reuse)
        .buffer_unordered(jobs.max(16))
        .collect()
        .await;

    let outcomes = graph::run(&plan.graph, jobs, |name: String| {
        let digests = digests.clone();
        let daemon_platform = &daemon_platform;
        let first_phase = &first_phase;
        async move {
            let tp = &plan.targets[&name];
            let t = &project.targets[&name];
            match first_phase.get(&name) {
                Some(Ok(Reused::Skipped)) => return Ok::<_, String>(Done::Skipped),
                Some(Ok(Reused::Retagged)) => return Ok(Done::Retagged),
                Some(Err(e)) => return Err(e.clone()),
                None => {}
            }
            let Some(daemon) = daemon else {
                return Err("no BuildKit daemon is reachable, and this target must be built".to_string());
            };
            let snapshot = digests.lock().map(|d| d.clone()).unwrap_or_default();
            let mut spec =
                build_spec(project, plan, &name, &snapshot).map_err(|e| e.to_string())?;
            existing_cache_imports(&mut spec).await;
            progress.note(Some(&name), &format!("building: {}", tp.reasons.join("; ")));
            let r: BuildResult = crate::build::build(daemon, &spec, progress, Some(&name))
                .await
                .map_err(|e| e.to_string())?;
            let digest = r.image_digest().map(str::to_string);
            if let Some(d) = &digest {
                if let Ok(mut m) = digests.lock() {
                    m.insert(name.clone(), d.clone());
                }
            }
            // The key of what was actually built: the bases exactly as pinned above.
            let fp = tp.content.as_ref().and_then(|c| {
                with_image_deps(c, &tp.image_deps, |d| snapshot.get(d).cloned())
            });
            let Some(fp) = fp else {
                progress.note(Some(&name), "warning: not recorded (a base's digest is unknown)");
                return Ok(Done::Built(Box::new(r), Vec::new()));
            };
            let dockerfile = spec.dockerfile.clone().unwrap_or_else(|| spec.context.join("Dockerfile"));
            let reads = daemon_reads(&spec, &r);
            let mut uncovered = fp.uncovered(&reads, &dockerfile);
            let read_more = !uncovered.is_empty();
            // The files as they are now must still be the ones planned with: an edit during
            // the build may have reached the daemon.
            if let (Some(input), Some(content)) = (&tp.input, &tp.content) {
                match tokio::task::block_in_place(|| {
                    fingerprint::recheck(input, content, state.stat_cache())
                }) {
                    Ok(why) if why.is_empty() => {}
                    Ok(why) => uncovered.push(format!(
                        "its inputs changed while it was being built ({})",
                        why.join("; ")
                    )),
                    Err(e) => uncovered.push(format!("cannot read its inputs again: {e}")),
                }
            }
            if t.platforms.is_empty() {
                let built_for = daemon_platform
                    .get_or_init(|| async {
                        crate::client::workers(daemon)
                            .await
                            .ok()
                            .and_then(|w| w.into_iter().next())
                            .and_then(|w| w.platforms.into_iter().next())
                    })
                    .await;
                if let Some(p) = built_for.as_deref().filter(|p| !same_platform(p, &host_platform())) {
                    // The key says "this machine's platform"; the image is another one.
                    uncovered.push(format!(
                        "the daemon builds for {p}, not {} (set platforms = [\"{p}\"] to reuse results)",
                        host_platform()
                    ));
                }
            }
            // What each written output looks like now, so that a later change to it (a
            // `rm -rf dist/*`, an edited file) is noticed.
            let output_witness = t
                .outputs
                .iter()
                .filter_map(|o| {
                    let spec = options::parse_output(o).ok()?;
                    let Some(OutputDest::Path(p)) = spec.dest else {
                        return None;
                    };
                    Some((o.clone(), crate::fs::output_witness(&p).ok()??))
                })
                .collect();
            let rec = TargetRecord {
                key: fp.key.clone(),
                image_digest: digest.clone(),
                tags: spec.tags.clone(),
                outputs: t.outputs.clone(),
                output_witness,
                finished_unix: now_unix(),
                uncovered: uncovered.clone(),
                daemon_reads: reads,
                whole_context: read_more
                    || tp.input.as_ref().is_some_and(|i| i.context_read == ContextRead::Whole),
                local_bases: tp.local_bases.clone(),
            };
            if let Err(e) = state.record(&name, &rec, &fp.manifest) {
                progress.note(Some(&name), &format!("warning: could not record state: {e}"));
            }
            if uncovered.is_empty() && opts.ledger {
                write_ledger(t, Some(&fp.key), digest.as_deref(), progress, &name).await;
            }
            Ok(Done::Built(Box::new(r), uncovered))
        }
    })
    .await;

    plan.graph
        .order
        .iter()
        .map(|name| {
            let tp = &plan.targets[name];
            let none = |outcome, error: Option<String>| TargetResult {
                name: name.clone(),
                outcome,
                duration: None,
                bytes_sent: None,
                digest: None,
                error,
                metadata: None,
                warnings: Vec::new(),
            };
            match outcomes.get(name) {
                Some(Outcome::Succeeded(Done::Built(r, uncovered))) => {
                    let mut metadata = r.metadata_json();
                    if let (Some(m), false) = (metadata.as_object_mut(), uncovered.is_empty()) {
                        m.insert("bk-build.uncovered".into(), serde_json::json!(uncovered));
                    }
                    TargetResult {
                        name: name.clone(),
                        outcome: TargetOutcome::Built,
                        duration: Some(r.duration),
                        bytes_sent: Some(r.bytes_sent()),
                        digest: r.image_digest().map(str::to_string),
                        error: None,
                        metadata: Some(metadata),
                        warnings: if uncovered.is_empty() {
                            Vec::new()
                        } else {
                            vec![format!(
                                "this result will not be reused, and the next run builds it again: {}. (If no file was edited during the build, this is a bk-build bug: please report it.)",
                                uncovered.join("; ")
                            )]
                        },
                    }
                }
                Some(Outcome::Succeeded(Done::Skipped)) => reused(tp, TargetOutcome::Skipped),
                Some(Outcome::Succeeded(Done::Retagged)) => reused(tp, TargetOutcome::Retagged),
                Some(Outcome::Failed(e)) => none(TargetOutcome::Failed, Some(e.clone())),
                Some(Outcome::NotStarted { because }) => none(
                    TargetOutcome::NotStarted,
                    Some(format!("not started: {because} failed")),
                ),
                None => none(TargetOutcome::NotStarted, Some("not started".into())),
            }
        })
        .collect()
}

/// A skipped or re-tagged target's row: the digest it already had.
fn reused(tp: &TargetPlan, outcome: TargetOutcome) -> TargetResult {
    TargetResult {
        name: tp.name.clone(),
        outcome,
        duration: None,
        bytes_sent: Some(0),
        digest: tp.digest.clone(),
        error: None,
        metadata: Some(serde_json::json!({
            "containerimage.digest": tp.digest,
            "bk-build.action": tp.action.as_str(),
            "bk-build.skipped": true,
        })),
        warnings: Vec::new(),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `linux/arm64` and `linux/arm64/v8` name the same platform.
fn same_platform(a: &str, b: &str) -> bool {
    let norm = |p: &str| p.trim_end_matches("/v8").to_string();
    norm(a) == norm(b)
}

/// The file-sync requests of a finished build, by the fingerprint section they concern.
fn daemon_reads(spec: &BuildSpec, r: &BuildResult) -> Vec<DaemonRead> {
    let mut by_local: BTreeMap<String, Option<String>> = BTreeMap::new();
    by_local.insert("context".into(), Some(String::new()));
    by_local.insert("dockerfile".into(), None);
    for nc in &spec.contexts {
        if matches!(nc.source, ContextSource::Local(_)) {
            by_local.insert(crate::build::local_name(&nc.name), Some(nc.name.clone()));
        }
    }
    let mut out = Vec::new();
    for (local, report) in &r.sync {
        for req in &report.requests {
            out.push(DaemonRead {
                local_name: local.clone(),
                section: by_local.get(local).cloned().unwrap_or(Some(local.clone())),
                include_patterns: req.include_patterns.clone(),
                exclude_patterns: req.exclude_patterns.clone(),
                follow_paths: req.follow_paths.clone(),
                stat_digest: req.stat_digest.clone(),
            });
        }
    }
    out
}

/// Copies the image to the tags the plan says are missing.
async fn retag(
    tp: &TargetPlan,
    engine: Option<&DockerHost>,
    progress: &Progress,
    name: &str,
) -> Result<(), String> {
    for tag in &tp.retag_registry {
        let from = tp
            .retag_from
            .as_deref()
            .ok_or_else(|| "nothing to copy the image from".to_string())?;
        crate::registry::tag_existing(from, tag)
            .await
            .map_err(|e| e.to_string())?;
        progress.note(Some(name), &format!("tagged {tag} (from {from})"));
    }
    if !tp.retag_engine.is_empty() {
        let (Some(host), Some(digest)) = (engine, tp.digest.as_deref()) else {
            return Err("the Docker Engine is not reachable to tag the image in".into());
        };
        for tag in &tp.retag_engine {
            crate::transport::docker_tag_image(host, digest, tag).await?;
            progress.note(Some(name), &format!("tagged {tag} in the Docker Engine"));
        }
    }
    Ok(())
}

/// Records a reused result in the local state, so the next run decides without the registry.
fn record(state: &StateStore, progress: &Progress, name: &str, tp: &TargetPlan, t: &Target) {
    let Some(full) = &tp.full else {
        return;
    };
    let rec = TargetRecord {
        key: full.key.clone(),
        image_digest: tp.digest.clone(),
        tags: t.tags.clone(),
        // Outputs are only reused when recorded by a build that wrote them.
        outputs: Vec::new(),
        output_witness: BTreeMap::new(),
        finished_unix: now_unix(),
        uncovered: Vec::new(),
        daemon_reads: Vec::new(),
        whole_context: tp
            .input
            .as_ref()
            .is_some_and(|i| i.context_read == ContextRead::Whole),
        local_bases: tp.local_bases.clone(),
    };
    if let Err(e) = state.record(name, &rec, &full.manifest) {
        progress.note(Some(name), &format!("warning: could not record state: {e}"));
    }
}

/// Writes the ledger entry `<repository>:bk-build-<key>` → the pushed image. Failures only
/// warn: a missing entry means a later fresh runner builds instead of re-tagging.
async fn write_ledger(
    t: &Target,
    key: Option<&str>,
    digest: Option<&str>,
    progress: &Progress,
    name: &str,
) {
    let (Some(home), Some(key), Some(digest)) = (home_repository(t), key, digest) else {
        return;
    };
    let entry = format!("{home}:{}", fingerprint::ledger_tag(key));
    if let Err(e) = crate::registry::tag_existing(&format!("{home}@{digest}"), &entry).await {
        progress.note(
            Some(name),
            &format!("warning: could not record the result in the registry ledger ({entry}): {e}"),
        );
    }
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
