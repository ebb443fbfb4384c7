//! Planning: each target's inputs and fingerprint, then the decision (build, re-tag or skip)
//! from what the local state and the registry ledger know, in dependency order.

use std::collections::{BTreeMap, BTreeSet};

use super::deliver::{check_delivery, home_repository, pushed_tag_digests, Delivery};
use super::link::link_layout_missing;
use super::{host_platform, terr, Action, BakeError, BakeOptions, BakePlan, TargetPlan};
use crate::fingerprint::{
    self, ContextRead, Fingerprint, FingerprintInput, StateStore, TargetRecord,
};
use crate::graph::{self, Via};
use crate::options::{self, ContextSource, OutputKind};
use crate::project::{Project, Target};
use crate::transport::{Daemon, DaemonKind, DockerHost};

fn scan(t: &Target) -> Result<graph::DockerfileScan, BakeError> {
    let text = std::fs::read_to_string(&t.dockerfile).map_err(|e| {
        terr(
            &t.name,
            format!("cannot read Dockerfile {}: {e}", t.dockerfile.display()),
        )
    })?;
    let named: BTreeSet<String> = t.contexts.keys().cloned().collect();
    let platform = options::single_platform(&t.platforms);
    Ok(graph::scan_dockerfile(
        &text,
        &graph::ScanOptions {
            args: &t.args,
            target: t.target.as_deref(),
            named_contexts: &named,
            platform: platform.as_deref(),
        },
    ))
}

/// Exporter attributes that shape the produced artifact (compression, media types, …); the
/// destination and push flag only say where it goes. Image names say where it goes too (a
/// pushed or loaded image is re-tagged instead of rebuilt), except in a `type=docker` or
/// `type=oci` archive or layout written to a file or directory: there the names are inside
/// the artifact (`RepoTags` in `manifest.json`, `org.opencontainers.image.ref.name` and
/// `io.containerd.image.name` in `index.json`), and nothing re-tags a file.
fn artifact_outputs(t: &Target) -> Vec<String> {
    t.outputs
        .iter()
        .map(|o| {
            let spec = o.value();
            let mut parts = vec![format!("type={}", spec.kind.as_str())];
            for (k, v) in &spec.attrs {
                if !matches!(k.as_str(), "name" | "push" | "dest") {
                    parts.push(format!("{k}={v}"));
                }
            }
            let names_in_file = match spec.kind {
                OutputKind::Oci => true,
                OutputKind::Docker => spec.dest.is_some(),
                _ => false,
            };
            if names_in_file {
                // The names the exporter writes: its own `name`, else the target's tags
                // (`build::request` fills it the same way).
                let names = match spec.attrs.get("name") {
                    Some(n) => n.clone(),
                    None => t.tags.join(","),
                };
                parts.push(format!("name={names}"));
            }
            parts.join(",")
        })
        .collect()
}

/// Everything that decides a target's result besides files, args and bases.
/// `default_provenance`: whether builds get buildx's default provenance.
fn extra_inputs(
    t: &Target,
    scan: &graph::DockerfileScan,
    default_provenance: bool,
) -> BTreeMap<String, String> {
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
    // What RUN steps see: their network, hosts file, /dev/shm, limits and privileges.
    if let Some(n) = t.network.filter(|n| *n != options::Network::Default) {
        m.insert("network".into(), n.to_string());
    }
    if !t.extra_hosts.is_empty() {
        let mut h: Vec<String> = t.extra_hosts.iter().map(ToString::to_string).collect();
        h.sort();
        m.insert("extra_hosts".into(), h.join(","));
    }
    if let Some(s) = t.shm_size {
        m.insert("shm_size".into(), s.to_string());
    }
    if !t.ulimits.is_empty() {
        let u: Vec<String> = t.ulimits.iter().map(ToString::to_string).collect();
        m.insert("ulimits".into(), u.join(","));
    }
    if !t.entitlements.is_empty() {
        let mut e = t.entitlements.clone();
        e.sort();
        m.insert("entitlements".into(), e.join(","));
    }
    // An inline cache export writes the cache records into the image config
    // (`moby.buildkit.cache.v0`), so it changes the image; other cache exports only write
    // elsewhere (a cache-only run does not re-export them: README, "Build, re-tag or skip").
    if t.cache_to
        .iter()
        .flat_map(|c| c.value())
        .any(|c| c.kind == "inline")
    {
        m.insert("cache-to".into(), "inline".into());
    }
    // Annotations are written into the image's manifests and index.
    for a in crate::project::annotations(t) {
        m.insert(a.exporter_attr(), a.value);
    }
    // Attestations are part of the pushed image (its index gains attestation manifests),
    // the default provenance too. Whether the daemon can attach them is not known here: a
    // daemon that cannot gets the same request and makes a bare image.
    for (kind, value) in crate::build::attest::frontend_attrs(&t.attest, default_provenance) {
        m.insert(format!("attest:{kind}"), value);
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
    if !t.no_cache_filter.is_empty() {
        return Some(format!(
            "no-cache-filter is set ({})",
            t.no_cache_filter.join(", ")
        ));
    }
    if !scan.certain {
        return Some(format!(
            "{} has a FROM line whose stage could not be read with certainty (a heredoc or continuation?); it is always built",
            t.dockerfile.display()
        ));
    }
    if let Some(url) = scan.remote_sources.first() {
        return Some(format!(
            "ADD {url} may be fetched by the daemon (a URL or a git repository); without --checksum its content is not known before building"
        ));
    }
    for (k, v) in &t.contexts {
        match v {
            ContextSource::Remote(u) => {
                return Some(format!(
                    "context {k} ({u}) is fetched by the daemon; its content is not known before building"
                ))
            }
            ContextSource::OciLayout(r) => {
                return Some(format!("context {k} ({r}) is not fingerprinted"))
            }
            _ => {}
        }
    }
    None
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
            // Only a FROM (or COPY --from) uses the engine's own images; a docker-image://
            // context is resolved in the registry.
            to_find_locally.extend(external.iter().filter(|r| s.base_refs.contains(r)).cloned());
        }
        facts.insert(name.clone(), Facts { scan: s, external });
    }
    crate::timing::mark("dockerfiles scanned");
    let owners = match opts.shard {
        Some(shard) => super::shard::owners(&gplan, shard.count(), |n| {
            let t = &project.targets[n];
            opts.ledger
                && home_repository(t).is_some()
                && always_build(t, opts.force.contains(n), &facts[n].scan).is_none()
        }),
        None => BTreeMap::new(),
    };

    // What other processes must answer runs while the files are walked: the registry digests
    // of pulled bases, and whether each recorded result is still delivered. Checking a target
    // whose inputs turn out to have changed wastes a cheap request; waiting for the walk
    // first would add the registry's answer time to every no-op run.
    let resolving = tokio::spawn(resolve_digests(to_resolve));
    let finding = tokio::spawn(local_images(opts.engine_images.clone(), to_find_locally));
    let engine = opts.engine_images.clone();
    let prechecks: Vec<_> = gplan
        .order
        .iter()
        .filter_map(|name| {
            let prev = state.get(name).filter(|r| r.uncovered.is_empty())?;
            let (t, engine) = (project.targets[name].clone(), engine.clone());
            let (name, root) = (name.clone(), project.root.clone());
            Some(async move {
                let d = check_delivery(
                    &t,
                    &root,
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
        .map(|name| fingerprint_input(project, &gplan, &facts, state, name, opts))
        .collect();
    let ctx = DecideCtx {
        project,
        gplan: &gplan,
        state,
        engine: engine.as_ref(),
        opts,
        facts: &facts,
        owners: &owners,
        registry_digests: RegistryDigests::default(),
    };
    let lookups = Lookups {
        resolving,
        finding,
        prechecking,
    };
    // Each target is decided as soon as its own files are walked and its bases are decided,
    // while other directories are still walked: on a fresh runner the registry's answers
    // for the first targets then come back during the walk instead of after it. The walk
    // runs on threads of its own; the decisions on this thread's share of the runtime.
    let (walked_tx, walked_rx) = tokio::sync::mpsc::unbounded_channel();
    let early = super::EarlyRetags::default();
    let runtime = tokio::runtime::Handle::current();
    let targets = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let inputs = &inputs;
            scope.spawn(move || {
                fingerprint::compute_each(inputs, state.stat_cache(), |i, fp| {
                    // The receiver only goes away when planning already failed.
                    let _ = walked_tx.send((i, fp));
                });
            });
            runtime.block_on(decide_as_walked(&ctx, inputs, lookups, walked_rx, &early))
        })
    });
    let targets = match targets {
        Ok(t) => t,
        // Re-tags already started are let finish and named, so the error says what changed.
        Err(e) => return Err(early.settle(e).await),
    };
    crate::timing::mark("decided");
    state.save_stat_cache();
    crate::timing::mark("stat cache saved");
    let mut targets = targets;
    predict_daemons(project, &gplan, &mut targets, state, &opts.pool);
    Ok(BakePlan {
        graph: gplan,
        targets,
        early,
    })
}

/// With a pool of daemons (`pool`, more than one address), where each build most likely
/// goes: the first address for an image that goes into the engine or a base only its engine
/// has (the requirements of `execute`'s placement), else the daemon that built it last, else
/// the one its base goes to, else the least loaded one (as [`crate::pool::choose`] decides at
/// run time, when loads are known).
fn predict_daemons(
    project: &Project,
    gplan: &graph::Plan,
    targets: &mut BTreeMap<String, TargetPlan>,
    state: &StateStore,
    pool: &[String],
) {
    if pool.len() < 2 {
        return;
    }
    let mut on: BTreeMap<&str, String> = BTreeMap::new();
    for name in &gplan.order {
        let t = &project.targets[name];
        let pinned = super::deliver::loads(t)
            || t.outputs.iter().any(|o| {
                o.value().kind == crate::options::OutputKind::Docker && o.value().dest.is_none()
            })
            || targets
                .get(name)
                .is_some_and(|tp| !tp.local_bases.is_empty());
        if pinned {
            on.insert(name, pool[0].clone());
            continue;
        }
        let last = state
            .get(name)
            .and_then(|r| r.daemon_address)
            .filter(|a| pool.contains(a));
        let base = gplan.deps[name]
            .iter()
            .filter(|e| !matches!(e.via, Via::DependsOn))
            .find_map(|e| on.get(e.dep.as_str()).cloned());
        if let Some(d) = last.or(base) {
            on.insert(name, d);
        }
    }
    for (name, tp) in targets.iter_mut() {
        if tp.action == Action::Build {
            tp.daemon = Some(
                on.get(name.as_str())
                    .cloned()
                    .unwrap_or_else(|| super::DAEMON_AT_RUN_TIME.to_string()),
            );
        }
    }
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
            // An image named only by an output's `name=`: not a tag, so not linked either.
            for name in output_image_names(t) {
                let Ok(nr) = Reference::parse(&name) else {
                    continue;
                };
                if key(&nr) == key(&er) {
                    return Some(format!(
                        "its base {e} is target {dep}'s output image {name}, which is not one of {dep}'s tags, so it is not known to be built on {dep}; list it in {dep}'s tags (or set pull = true)"
                    ));
                }
            }
        }
    }
    None
}

/// Image names given by `name=` in a target's outputs.
fn output_image_names(t: &Target) -> Vec<String> {
    t.outputs.iter().flat_map(|o| o.value().names()).collect()
}

/// Targets whose output directory or file another target writes too: which one's result is
/// there depends on which ran last, so such targets are always built.
fn shared_outputs(project: &Project, order: &[String]) -> BTreeMap<String, String> {
    let mut writers: BTreeMap<std::path::PathBuf, Vec<&str>> = BTreeMap::new();
    for name in order {
        for o in &project.targets[name].outputs {
            if let Some(options::OutputDest::Path(p)) = &o.value().dest {
                writers.entry(p.clone()).or_default().push(name);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (dest, names) in writers.iter().filter(|(_, n)| n.len() > 1) {
        for n in names {
            let others: Vec<&str> = names.iter().filter(|o| *o != n).copied().collect();
            out.insert(
                n.to_string(),
                format!(
                    "its output {} is also written by {}, so what is there depends on which ran last; give each target its own dest",
                    dest.display(),
                    others.join(", ")
                ),
            );
        }
    }
    out
}

/// The Docker Engine behind `daemon`, whose image store `load` writes to, if that is it.
pub(super) fn engine_of(daemon: &Daemon) -> Option<DockerHost> {
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
    opts: &BakeOptions,
) -> FingerprintInput {
    let t = &project.targets[name];
    let scan = &facts[name].scan;
    // A base with ONBUILD triggers runs instructions this scan cannot see.
    let onbuild_base = image_deps(gplan, name)
        .iter()
        .any(|d| facts.get(d).is_some_and(|f| f.scan.has_onbuild));
    // A maximal provenance records every arg, declared or not, in the image's attestation.
    let every_arg = onbuild_base
        || crate::build::attest::records_build_args(&crate::build::attest::frontend_attrs(
            &t.attest,
            opts.default_provenance,
        ));
    let args = t
        .args
        .iter()
        .filter(|(k, _)| every_arg || !scan.hidden_args.contains(*k))
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
        extra: extra_inputs(t, scan, opts.default_provenance),
    }
}

/// Adds the digests of the project targets `name` builds on; `None` if one is not known
/// (it is built in this run, or produced no image).
pub(super) fn with_image_deps(
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
    facts: &'a BTreeMap<String, Facts>,
    /// The shard acting on each target (empty when the run is not sharded).
    owners: &'a BTreeMap<String, usize>,
    /// Registry digests of the engine's own bases, asked once per run whatever the number of
    /// targets built on them (a hundred services on one base: one request, not a hundred).
    registry_digests: RegistryDigests,
}

/// Reference → its registry digest (`None`: absent or unreadable), each looked up once.
#[derive(Default)]
struct RegistryDigests(
    std::sync::Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::OnceCell<Option<String>>>>>,
);

impl RegistryDigests {
    async fn get(&self, reference: &str) -> Option<String> {
        let cell = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(reference.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            crate::registry::manifest_digest(reference)
                .await
                .ok()
                .flatten()
        })
        .await
        .clone()
    }
}

/// A target's recorded image digest and whether that result is still delivered.
type Prechecked = (Option<String>, Delivery);

/// The registry and engine lookups [`plan`] starts before the walk.
struct Lookups {
    /// Pulled external bases (and `# syntax=` frontends) → their registry digests.
    resolving: tokio::task::JoinHandle<BTreeMap<String, String>>,
    /// External bases (without pull) → the building engine's image IDs.
    finding: tokio::task::JoinHandle<BTreeMap<String, String>>,
    /// Target → (recorded digest, whether it is still delivered).
    prechecking: tokio::task::JoinHandle<Vec<(String, Prechecked)>>,
}

/// What a decided target tells the targets that build on it.
#[derive(Debug, Clone)]
struct DepResult {
    action: Action,
    digest: Option<String>,
}

/// A walked target's content fingerprint with its external bases, and what decides it
/// besides: an input that could not be known (`unsure`: it is built) and the engine's own
/// images of its external bases.
struct Walked {
    content: Fingerprint,
    unsure: Option<String>,
    local_bases: BTreeMap<String, String>,
}

/// Adds the external bases to target `name`'s walked fingerprint: registry digests for
/// pulled ones (a pulled base or frontend with no digest makes the target `unsure`), the
/// reference otherwise, with the engine's own image IDs beside it.
fn walked(
    ctx: &DecideCtx<'_>,
    name: &str,
    fp: Fingerprint,
    resolved: &BTreeMap<String, String>,
    local: &BTreeMap<String, String>,
    mut unsure: Option<String>,
) -> Walked {
    let t = &ctx.project.targets[name];
    let facts = &ctx.facts[name];
    let bases: Vec<(String, String)> = facts
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
        unsure = Some(format!(
            "pull = true, and the registry gave no digest for {r}"
        ));
    }
    if !t.pull && unsure.is_none() {
        unsure = alias_of_a_target(ctx.project, &facts.external);
    }
    let mut content = fp.with_bases(bases);
    if let (true, Some(syntax)) = (t.pull, &facts.scan.syntax) {
        match resolved.get(syntax).filter(|d| d.starts_with("sha256:")) {
            Some(d) => content = content.with_bases([("syntax".to_string(), d.clone())]),
            None => {
                unsure.get_or_insert_with(|| {
                    format!(
                        "pull = true, and the registry gave no digest for the frontend {syntax}"
                    )
                });
            }
        }
    }
    let local_bases = if t.pull {
        BTreeMap::new()
    } else {
        facts
            .external
            .iter()
            .filter_map(|r| local.get(r).map(|id| (r.clone(), id.clone())))
            .collect()
    };
    Walked {
        content,
        unsure,
        local_bases,
    }
}

/// Decides every target of `ctx.gplan.order` as the walk hands over its fingerprints
/// (`walked`: index into the order, result), each once its bases are decided. A failed
/// fingerprint fails the plan with the error of the first such target in build order.
async fn decide_as_walked(
    ctx: &DecideCtx<'_>,
    inputs: &[FingerprintInput],
    lookups: Lookups,
    mut walked_rx: tokio::sync::mpsc::UnboundedReceiver<(
        usize,
        Result<Fingerprint, fingerprint::FingerprintError>,
    )>,
    early: &super::EarlyRetags,
) -> Result<BTreeMap<String, TargetPlan>, BakeError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let order = &ctx.gplan.order;
    let n = order.len();
    // A lookup task only fails by panicking; treat its answers as unknown rather than fail.
    let resolved = lookups.resolving.await.unwrap_or_default();
    let local = lookups.finding.await.unwrap_or_default();
    let mut prechecked: BTreeMap<String, (Option<String>, Delivery)> = lookups
        .prechecking
        .await
        .map(|v| v.into_iter().collect())
        .unwrap_or_default();
    // Pulled bases the registry could not name a digest for: such a target is built, since
    // what it would build on is unknown.
    let mut unsure: BTreeMap<String, String> = shared_outputs(ctx.project, order);

    let mut waiting: BTreeMap<usize, Walked> = BTreeMap::new();
    let mut failed: BTreeMap<usize, fingerprint::FingerprintError> = BTreeMap::new();
    let mut received = 0;
    let mut decided: BTreeMap<String, DepResult> = BTreeMap::new();
    let mut targets: BTreeMap<String, TargetPlan> = BTreeMap::new();
    let mut running = FuturesUnordered::new();
    loop {
        let startable: Vec<usize> = waiting
            .keys()
            .copied()
            .filter(|i| {
                ctx.gplan
                    .dependencies(&order[*i])
                    .iter()
                    .all(|d| decided.contains_key(*d))
            })
            .collect();
        for i in startable {
            let Some(w) = waiting.remove(&i) else {
                continue;
            };
            let name = order[i].as_str();
            let deps: BTreeMap<String, DepResult> = ctx
                .gplan
                .dependencies(name)
                .into_iter()
                .filter_map(|d| decided.get(d).map(|r| (d.to_string(), r.clone())))
                .collect();
            let pre = prechecked.remove(name);
            let input = inputs[i].clone();
            running.push(async move { ctx.decide(name, w, input, pre, &deps).await });
        }
        if received == n && running.is_empty() {
            break;
        }
        tokio::select! {
            got = walked_rx.recv(), if received < n => {
                let Some((i, fp)) = got else {
                    return Err(terr(
                        &order.join(", "),
                        "internal error: the file walk stopped early",
                    ));
                };
                received += 1;
                if received == n {
                    crate::timing::mark("files walked");
                }
                match fp {
                    Ok(fp) => {
                        let why = unsure.remove(&order[i]);
                        waiting.insert(i, walked(ctx, &order[i], fp, &resolved, &local, why));
                    }
                    Err(e) => {
                        failed.insert(i, e);
                    }
                }
            }
            Some(tp) = running.next(), if !running.is_empty() => {
                if ctx.opts.retag_early && tp.action == Action::Retag {
                    // A re-tag points wanted tags at the image these very inputs built, so it
                    // is right whatever the rest of the plan says: its registry round trips
                    // overlap the walk of other directories instead of following it. Should
                    // planning still fail, the tags it set are right ones.
                    let (tp, engine) = (tp.clone(), ctx.engine.cloned());
                    let name = tp.name.clone();
                    early.insert(
                        &name,
                        tokio::spawn(
                            async move { super::execute::retag(&tp, engine.as_ref()).await },
                        ),
                    );
                }
                let r = DepResult {
                    action: tp.action,
                    digest: tp.digest.clone(),
                };
                decided.insert(tp.name.clone(), r);
                targets.insert(tp.name.clone(), tp);
            }
            else => break,
        }
    }
    if let Some((_, e)) = failed.into_iter().next() {
        return Err(e.into());
    }
    if targets.len() < n {
        let rest: Vec<&str> = order
            .iter()
            .filter(|n| !targets.contains_key(*n))
            .map(String::as_str)
            .collect();
        return Err(terr(&rest.join(", "), "internal error: undecidable order"));
    }
    Ok(targets)
}

impl DecideCtx<'_> {
    /// Decides target `name` from its walked fingerprint, the precheck of its recorded
    /// result, and `decided`: its dependencies' decisions.
    async fn decide(
        &self,
        name: &str,
        walked: Walked,
        input: FingerprintInput,
        prechecked: Option<(Option<String>, Delivery)>,
        decided: &BTreeMap<String, DepResult>,
    ) -> TargetPlan {
        let Walked {
            content,
            unsure,
            local_bases,
        } = walked;
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
            retag_manifest: None,
            in_ledger: false,
            content: Some(content),
            input: Some(input),
            local_bases,
            shard: self.owners.get(name).copied(),
            daemon: None,
            base_refs: self.facts[name].scan.base_refs.clone(),
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
        if let Some(why) =
            always_build(t, self.opts.force.contains(name), &self.facts[name].scan).or(unsure)
        {
            tp.reasons.push(why);
            return tp;
        }
        if let Some(first) = self.gplan.same_as.get(name) {
            if decided[first].action == Action::Build {
                tp.reasons.push(format!(
                    "the same build as {first}, which is built: it gets {first}'s image"
                ));
                return tp;
            }
        }
        if !rebuilt.is_empty() {
            tp.reasons = rebuilt
                .iter()
                .map(|d| match self.elsewhere(d) {
                    Some(s) => format!("base {d} rebuilt (by shard {s})"),
                    None => format!("base {d} rebuilt"),
                })
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
        // The engine's own copy of a base must be the one the recorded result was built from;
        // a copy it did not have then must be the registry's image, which the build then used.
        let mut engine_base_moved = None;
        if let Some(p) = prev.as_ref() {
            for (r, id) in &tp.local_bases {
                let same = match p.local_bases.get(r) {
                    Some(then) => then == id,
                    None => self.registry_digests.get(r).await.as_ref() == Some(id),
                };
                if !same {
                    engine_base_moved =
                        Some(format!("base {r} in the Docker Engine is another image"));
                    break;
                }
            }
        }
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
                            &self.project.root,
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
        let unknown = known
            .as_ref()
            .is_none_or(|(_, d, _)| !d.blockers.is_empty());
        let mut engine_differs = None;
        if unknown && self.opts.ledger {
            // A ledger entry was built from the registry's images (CI builds on fresh
            // engines); an engine whose own copy of a base is another image would build
            // something else.
            for (r, id) in &tp.local_bases {
                let registry = self.registry_digests.get(r).await;
                if registry.as_ref() != Some(id) {
                    engine_differs = Some(format!(
                        "the Docker Engine's own {r} is not the registry's, so results built elsewhere do not apply"
                    ));
                    break;
                }
            }
        }
        if unknown && self.opts.ledger && engine_differs.is_none() {
            if let Some(home) = home_repository(t) {
                let entry = format!("{home}:{}", fingerprint::ledger_tag(&fp.key));
                // The wanted tags are asked at the same time: one round trip, not two.
                let (found, pushed) =
                    tokio::join!(crate::registry::get_manifest(&entry), pushed_tag_digests(t));
                match found {
                    Ok(Some(m)) => {
                        let d = m.digest.clone();
                        tp.retag_manifest = Some(m);
                        let delivery = check_delivery(
                            t,
                            &self.project.root,
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
            if let Some(s) = self.elsewhere(name) {
                tp.reasons.push(format!("shard {s} builds it"));
            }
            return tp;
        };
        if let Some(s) = self.elsewhere(name) {
            // Another shard delivers it; this one needs only the image it has.
            tp.digest = digest;
            tp.action = Action::Skip;
            tp.reasons = vec![format!(
                "shard {s}'s (that shard adds any tags it lacks; here only its image is used): {found}"
            )];
            return tp;
        }
        if !delivery.blockers.is_empty() {
            tp.reasons = delivery.blockers;
            return tp;
        }
        if let Some(why) = link_layout_missing(self.project, name, digest.as_deref()) {
            tp.reasons.push(why);
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
                    "{} in the Docker Engine does not name the image built last ({}), and that image is no longer there",
                    delivery.engine_missing.join(", "),
                    digest.as_deref().unwrap_or("unknown")
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
            let mut adds: Vec<String> = tp.retag_registry.clone();
            adds.extend(
                tp.retag_engine
                    .iter()
                    .map(|t| format!("{t} (Docker Engine)")),
            );
            tp.reasons.push(format!("adds {}", adds.join(", ")));
        }
        tp
    }

    /// The shard (`I/N`) acting on `name`, when that is not this process.
    fn elsewhere(&self, name: &str) -> Option<String> {
        let shard = self.opts.shard?;
        let owner = *self.owners.get(name)?;
        (owner != shard.index()).then(|| format!("{owner}/{}", shard.count()))
    }

    /// Why a target with no known result for its key must be built.
    fn why_build(&self, name: &str, prev: Option<&TargetRecord>, fp: &Fingerprint) -> Vec<String> {
        let mut r = Vec::new();
        match prev {
            None => r.push(fingerprint::NO_PREVIOUS_BUILD.to_string()),
            Some(p) if !p.uncovered.is_empty() => r.push(format!(
                "its last build is not reusable ({})",
                p.uncovered.join("; ")
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
