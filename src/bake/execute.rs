//! Doing what a plan says: every skip and re-tag at once (registry and engine only), then the
//! builds in dependency order, each pinned to the exact images its bases have; every result
//! checked against its fingerprint and recorded (locally, and in the registry ledger) as soon as
//! it is done.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use super::deliver::{home_repository, state_excludes};
use super::link::{add_link_output, finish_link_layout, link_context};
use super::plan::{engine_of, with_image_deps};
use super::{
    host_platform, terr, Action, BakeError, BakeOptions, BakePlan, RetagOutcome, TargetPlan,
    TargetResult,
};
use crate::build::{BuildResult, BuildSpec};
use crate::fingerprint::{self, ContextRead, DaemonRead, StateStore, TargetRecord};
use crate::graph::{self, Outcome, Via};
use crate::options::{ContextSource, NamedContext, OutputDest};
use crate::pool::Pool;
use crate::progress::{Progress, TargetOutcome};
use crate::project::{Project, Target};
use crate::transport::DockerHost;

/// How a target's spec names the project targets it builds on.
#[derive(Clone, Copy)]
pub(super) enum Bases<'a> {
    /// By the exact image each produced (in this run, or a reused result): `TAG@DIGEST`, or
    /// a tagless one's link layout by digest.
    Pinned(&'a BTreeMap<String, String>),
    /// By tag only, as `docker buildx bake` names them: whatever the tag holds now. For
    /// `--call`, which evaluates targets without building their bases first.
    Tagged,
}

/// Turns a project target into a build spec, naming the bases it builds on as `bases` says.
pub(super) fn build_spec(
    project: &Project,
    plan: &BakePlan,
    name: &str,
    bases: Bases<'_>,
    opts: &BakeOptions,
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
        shm_size: t.shm_size,
        entitlements: t.entitlements.clone(),
        no_cache_filter: t.no_cache_filter.clone(),
        attests: t.attest.clone(),
        default_provenance: opts.default_provenance,
        metadata_provenance: opts.metadata_provenance,
        ..Default::default()
    };
    if let Some(u) = &t.unavailable {
        return Err(e(u.clone()));
    }
    spec.network = t.network.unwrap_or_default();
    spec.add_hosts.clone_from(&t.extra_hosts);
    spec.ulimits.clone_from(&t.ulimits);
    spec.annotations = crate::project::annotations(t);
    let pinned = |dep: &str| -> Result<String, BakeError> {
        let dt = &project.targets[dep];
        let tag = dt.tags.first().ok_or_else(|| {
            e(format!(
                "depends on `{dep}` as an image, but `{dep}` has no tags; give it tags and push = true (or load = true)"
            ))
        })?;
        let Bases::Pinned(digests) = bases else {
            return Ok(tag.clone());
        };
        let digest = digests
            .get(dep)
            .ok_or_else(|| e(format!("no image digest recorded for `{dep}`")))?;
        Ok(format!("{tag}@{digest}"))
    };
    for (k, v) in &t.contexts {
        let linked = |dep: &str| match bases {
            Bases::Pinned(digests) => link_context(project, dep, digests),
            Bases::Tagged => None,
        };
        let source = match v {
            ContextSource::Target(dep) => match linked(dep) {
                Some(linked) => linked.map_err(e)?,
                None => ContextSource::DockerImage(pinned(dep)?),
            },
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
    spec.outputs = t.outputs.iter().map(|o| o.value().clone()).collect();
    add_link_output(project, name, &mut spec).map_err(e)?;
    spec.cache_from = t
        .cache_from
        .iter()
        .flat_map(|c| c.value().clone())
        .collect();
    spec.cache_to = t.cache_to.iter().flat_map(|c| c.value().clone()).collect();
    spec.secrets = t.secrets.iter().map(|s| s.value().clone()).collect();
    spec.ssh = t.ssh.iter().map(|s| s.value().clone()).collect();
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

/// What a build whose image its dependents can use early ([`build_placed`]) does once the
/// daemon has stored that image and only pushes it: dependents are released and pinned to the
/// stored digest, and the build gives back its daemon slot (a push takes no build slot).
struct OnStored<'a> {
    name: &'a str,
    digests: &'a Mutex<BTreeMap<String, String>>,
    built_on: &'a Mutex<BTreeMap<String, usize>>,
    early: &'a Mutex<BTreeMap<String, String>>,
    release: &'a graph::Release,
    progress: &'a Progress,
}

/// Waits until every target of `names` (released early) has ended. Errors with the name of
/// one that failed.
async fn wait_ended(
    ended: &tokio::sync::watch::Receiver<BTreeMap<String, Option<String>>>,
    names: &[String],
) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let mut rx = ended.clone();
    let Ok(all) = rx
        .wait_for(|m| names.iter().all(|n| m.contains_key(n)))
        .await
        .map(|m| m.clone())
    else {
        // The sender lives as long as the run: not reached.
        return Err(names[0].clone());
    };
    match names
        .iter()
        .find(|n| all.get(*n).is_some_and(Option::is_none))
    {
        Some(n) => Err(n.clone()),
        None => Ok(()),
    }
}

/// The error of a target that waited for `base`, which failed, before starting.
fn not_started(base: String) -> String {
    format!("not started: {base} failed")
}

/// Why [`build_placed`] built nothing.
enum Unbuilt {
    /// The build failed, or no daemon may build it: the target's error.
    Failed(String),
    /// The daemon went away during the build (`what` says so), and no other it may be built on
    /// is left: `message` is the target's error, unless a wider choice exists (bases pushed
    /// since).
    NoDaemonLeft { what: String, message: String },
}

impl Unbuilt {
    fn message(self) -> String {
        match self {
            Unbuilt::Failed(m) | Unbuilt::NoDaemonLeft { message: m, .. } => m,
        }
    }
}

/// Builds `spec` on a member `placed` allows, once more elsewhere when that daemon goes away
/// (during the build, or before it while idle) rather than failing the build itself. With
/// `observe`, releases the target's dependents as [`OnStored`] says once its image is stored.
/// `first`: a slot already taken for the first attempt. Returns the result and the member's
/// index; records that index in `on_stored.built_on`.
async fn build_placed(
    pool: &Pool,
    spec: &mut BuildSpec,
    placed: &Placed,
    tp: &TargetPlan,
    on_stored: &OnStored<'_>,
    observe: bool,
    first: Option<crate::pool::Lease<'_>>,
) -> Result<(BuildResult, usize), Unbuilt> {
    let (name, progress) = (on_stored.name, on_stored.progress);
    let mut allowed = placed.allowed.clone();
    let mut retried = false;
    // Released once: a second attempt (elsewhere) is checked by its dependents when it ends.
    let mut observe = observe;
    let mut first = first;
    loop {
        let lease = match first.take() {
            Some(l) => Some(l),
            None => pool.acquire(&placed.preferred, &allowed).await,
        };
        let why = || {
            placed
                .why
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        };
        let Some(lease) = lease else {
            return Err(Unbuilt::Failed(format!(
                "no daemon that can build it answers any more{}",
                why()
            )));
        };
        let index = lease.index;
        let member = pool.member(index);
        if spec.needs_load() {
            spec.load_into = member
                .daemon
                .load_target()
                .map_err(|e| Unbuilt::Failed(e.to_string()))?;
        }
        if pool.members().len() > 1 {
            progress.note(
                Some(name),
                &format!("building on {}: {}", member.address, tp.reasons.join("; ")),
            );
        } else {
            progress.note(Some(name), &format!("building: {}", tp.reasons.join("; ")));
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel::<String>();
        let build = crate::build::build_observed(
            &member.daemon,
            spec,
            progress,
            Some(name),
            observe.then_some(tx),
        );
        tokio::pin!(build);
        let mut lease = Some(lease);
        let mut watching = observe;
        let built = loop {
            tokio::select! {
                r = &mut build => break r,
                d = &mut rx, if watching => {
                    watching = false;
                    if let Ok(d) = d {
                        observe = false;
                        if let Ok(mut m) = on_stored.digests.lock() {
                            m.insert(name.to_string(), d.clone());
                        }
                        if let Ok(mut b) = on_stored.built_on.lock() {
                            b.insert(name.to_string(), index);
                        }
                        if let Ok(mut e) = on_stored.early.lock() {
                            e.insert(name.to_string(), d.clone());
                        }
                        lease = None;
                        on_stored.release.now();
                        progress.note(
                            Some(name),
                            &format!("stored on the daemon as {d}: what builds on it starts now, while it is pushed"),
                        );
                    }
                }
            }
        };
        drop(lease);
        match built {
            Ok(r) => {
                if let Ok(mut b) = on_stored.built_on.lock() {
                    b.insert(name.to_string(), index);
                }
                return Ok((r, index));
            }
            Err(e) if !retried && pool.members().len() > 1 => {
                let (gone, what) = match &e {
                    crate::build::BuildError::ConnectionLost { gone, .. } => (
                        *gone,
                        if *gone {
                            format!("{} stopped answering during this build", member.address)
                        } else {
                            format!(
                                "the connection to {} broke during this build",
                                member.address
                            )
                        },
                    ),
                    _ if !crate::transport::answers(&member.daemon).await => {
                        (true, format!("{} does not answer any more", member.address))
                    }
                    _ => return Err(Unbuilt::Failed(e.to_string())),
                };
                if gone {
                    pool.mark_down(index);
                }
                allowed[index] = false;
                if !pool.any_alive(&allowed) {
                    return Err(Unbuilt::NoDaemonLeft {
                        what,
                        message: format!("{e}\nNo other daemon of the pool may build it{}.", why()),
                    });
                }
                retried = true;
                progress.warning(
                    Some(name),
                    &format!("{what}: building it again on another daemon of the pool"),
                );
            }
            Err(e) => return Err(Unbuilt::Failed(e.to_string())),
        }
    }
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
    /// Built (the result, inputs it read that the key did not cover, the daemon's address).
    Built(Box<BuildResult>, Vec<String>, String),
    /// Delivered the image of the target it is the same build as ([`graph::Plan::same_as`]).
    SameAs,
}

/// Does what the plan says, at most `jobs` targets at a time: skips, re-tags (registry only,
/// no daemon needed) and builds (`daemon` required). Skipped and re-tagged targets provide
/// their digest to dependents. Each success is recorded in `state` (and, for pushed images,
/// in the registry ledger) immediately.
pub async fn execute(
    pool: Option<&Pool>,
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
    let engine = pool
        .and_then(|p| engine_of(&p.member(0).daemon))
        .or(opts.engine_images.clone());
    // The member each target was built on in this run.
    let built_on: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let engine_ids: EngineIds = Arc::default();

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
                        tokio::task::block_in_place(|| record(state, progress, &name, tp, t));
                    }
                    Ok(Reused::Skipped)
                } else {
                    let (done, result) = match plan.early.take(&name) {
                        Some(task) => task
                            .await
                            .unwrap_or_else(|e| (Vec::new(), Err(format!("internal error: {e}")))),
                        None => retag(tp, engine.as_ref()).await,
                    };
                    for line in done {
                        progress.note(Some(&name), &line);
                    }
                    match result {
                        Ok(()) => {
                            tokio::task::block_in_place(|| record(state, progress, &name, tp, t));
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

    // Targets whose dependents were released before they ended (their image stored on the
    // daemon, its push still running): name → the digest stored. And how each of those ended:
    // name → its image digest (`None`: it failed).
    let early: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let (ended_tx, ended_rx) =
        tokio::sync::watch::channel(BTreeMap::<String, Option<String>>::new());
    let ended_tx = Arc::new(ended_tx);
    // One export at a time into an output directory that several targets write (the plan
    // already says what is left there depends on which ran last): two at once race on the files.
    let dest_locks: DestLocks = Arc::default();

    let outcomes = graph::run(&plan.graph, jobs, |name: String, release: graph::Release| {
        let digests = digests.clone();
        let built_on = built_on.clone();
        let engine_ids = engine_ids.clone();
        let early = early.clone();
        let released = early.clone();
        let ended_rx = ended_rx.clone();
        let ended_tx = ended_tx.clone();
        let dest_locks = dest_locks.clone();
        let first_phase = &first_phase;
        let done_name = name.clone();
        let work = async move {
            let tp = &plan.targets[&name];
            let t = &project.targets[&name];
            match first_phase.get(&name) {
                Some(Ok(Reused::Skipped)) => return Ok::<_, String>(Done::Skipped),
                Some(Ok(Reused::Retagged)) => return Ok(Done::Retagged),
                Some(Err(e)) => return Err(e.clone()),
                None => {}
            }
            // Bases released before they ended. Only an image pinned by digest can be used
            // while it is pushed; for anything else, wait for them to end.
            let mut pending: Vec<String> = {
                let early = early.lock().map(|e| e.clone()).unwrap_or_default();
                let ended = ended_rx.borrow().clone();
                plan.graph.deps[&name]
                    .iter()
                    .map(|e| e.dep.clone())
                    .filter(|d| early.contains_key(d) && !ended.contains_key(d))
                    .collect()
            };
            let by_digest_only = plan.graph.deps[&name].iter().all(|e| {
                !pending.contains(&e.dep)
                    || matches!(e.via, Via::BaseImage { .. } | Via::NamedContext { .. })
                        && project.targets[&e.dep].push
                        && link_context(project, &e.dep, &BTreeMap::new()).is_none()
            });
            if !by_digest_only || plan.graph.same_as.contains_key(&name) {
                wait_ended(&ended_rx, &pending).await.map_err(not_started)?;
                pending.clear();
            }
            if let Some(first) = plan.graph.same_as.get(&name) {
                return Ok(adopt(state, progress, &name, first, tp, &digests));
            }
            let Some(pool) = pool else {
                return Err("no BuildKit daemon is reachable, and this target must be built".to_string());
            };
            let _exporting = lock_dests(&dest_locks, t).await;
            // Output directories as they were: what changes in them is what the export wrote.
            let before: BTreeMap<std::path::PathBuf, BTreeMap<String, (u64, i64)>> =
                output_dests(t)
                    .into_iter()
                    .filter(|(_, p)| p.is_dir())
                    .map(|(_, p)| {
                        let stamps = crate::fs::top_level_stamps(&p);
                        (p, stamps)
                    })
                    .collect();
            // Dependents that can start from this image while it is pushed.
            let observe = t.push
                && plan.graph.deps.values().flatten().any(|e| {
                    e.dep == name && matches!(e.via, Via::BaseImage { .. } | Via::NamedContext { .. })
                });
            let on_stored = OnStored {
                name: &name,
                digests: &digests,
                built_on: &built_on,
                early: &early,
                release: &release,
                progress,
            };
            let (r, member, snapshot, spec) = loop {
                let snapshot = digests.lock().map(|d| d.clone()).unwrap_or_default();
                let mut spec = build_spec(project, plan, &name, Bases::Pinned(&snapshot), opts)
                    .map_err(|e| e.to_string())?;
                let homes: Vec<usize> = {
                    let b = built_on.lock().map(|b| b.clone()).unwrap_or_default();
                    pending.iter().filter_map(|d| b.get(d).copied()).collect()
                };
                let placed = match placement(pool, project, plan, state, &name, &snapshot, &built_on, &engine_ids, opts, spec.needs_load(), &homes).await {
                    Ok(p) => p,
                    // Its stored bases are where it may not be built: build from their pushes.
                    Err(_) if !pending.is_empty() => {
                        wait_ended(&ended_rx, &pending).await.map_err(not_started)?;
                        pending.clear();
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                existing_cache_imports(&mut spec).await;
                // From stored bases only while their daemon has room before they end: otherwise
                // from their pushes, placed like any other build.
                let first = if pending.is_empty() {
                    None
                } else {
                    tokio::select! {
                        biased;
                        ended = wait_ended(&ended_rx, &pending) => {
                            ended.map_err(not_started)?;
                            pending.clear();
                            continue;
                        }
                        lease = pool.acquire(&placed.preferred, &placed.allowed) => lease,
                    }
                };
                let built = build_placed(pool, &mut spec, &placed, tp, &on_stored, observe, first).await;
                if pending.is_empty() {
                    let (r, index) = built.map_err(Unbuilt::message)?;
                    break (r, pool.member(index), snapshot, spec);
                }
                // Built from bases still being pushed: each must have ended as the very image it
                // was stored as, or this build is not the one the key describes.
                if let Err(base) = wait_ended(&ended_rx, &pending).await {
                    let e = format!(
                        "`{base}` failed after this target started from its stored image; the result is not recorded"
                    );
                    // Its own push did not wait for its bases' (buildx bake's dependents do not
                    // either): say which tags now hold an image on a base the registry lacks.
                    return Err(match (&built, t.push) {
                        (Ok(_), true) => format!(
                            "{e}. Its own image was pushed before that: {} now hold an image built on a base the registry does not have; the next run builds it again",
                            spec.tags.join(", ")
                        ),
                        _ => e,
                    });
                }
                let ended = ended_rx.borrow().clone();
                let moved: Vec<&String> = pending
                    .iter()
                    .filter(|d| ended.get(*d).cloned().flatten() != snapshot.get(*d).cloned())
                    .collect();
                let used_stored = |e: &Unbuilt| match e {
                    Unbuilt::Failed(e) => pending.iter().any(|d| snapshot.get(d).is_some_and(|g| e.contains(g.as_str()))),
                    Unbuilt::NoDaemonLeft { .. } => false,
                };
                match built {
                    Ok((r, index)) if moved.is_empty() => break (r, pool.member(index), snapshot, spec),
                    Ok(_) => progress.warning(
                        Some(&name),
                        &format!(
                            "{} ended as another image than the one stored on the daemon when this build started from it: building it again from the pushed image",
                            moved.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    Err(_) if !moved.is_empty() => progress.warning(
                        Some(&name),
                        &format!(
                            "{} ended as another image than the one stored on the daemon when this build started from it: building it again from the pushed image",
                            moved.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    Err(e) if used_stored(&e) => progress.note(
                        Some(&name),
                        "the daemon could not start from its base's image before the base was pushed: building it again now that it is",
                    ),
                    // The daemon that had its stored bases went away: their pushes are
                    // everywhere.
                    Err(Unbuilt::NoDaemonLeft { what, .. }) => progress.warning(
                        Some(&name),
                        &format!("{what}: building it again on another daemon of the pool, from its pushed bases"),
                    ),
                    Err(e) => return Err(e.message()),
                }
                pending.clear();
            };
            let digest = r.image_digest().map(str::to_string);
            let linked = tokio::task::block_in_place(|| {
                finish_link_layout(project, &name, digest.as_deref())
            })?;
            if let Some(w) = linked {
                progress.note(Some(&name), &w);
            }
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
                progress.warning(Some(&name), "not recorded (a base's digest is unknown)");
                return Ok(Done::Built(Box::new(r), Vec::new(), member.address.clone()));
            };
            let dockerfile = spec.dockerfile.clone().unwrap_or_else(|| spec.context.join("Dockerfile"));
            let reads = daemon_reads(&spec, &r);
            let mut uncovered = fp.uncovered(&reads, &dockerfile);
            let read_more = !uncovered.is_empty();
            uncovered.extend(unseen_bases(&tp.base_refs, r.loaded_images.as_deref()));
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
                let built_for = member.default_platform.as_ref();
                if let Some(p) = built_for.filter(|p| !same_platform(p, &host_platform())) {
                    // The key says "this machine's platform"; the image is another one.
                    uncovered.push(format!(
                        "the daemon builds for {p}, not {} (set platforms = [\"{p}\"] to reuse results)",
                        host_platform()
                    ));
                }
            }
            // What each written output looks like now, so that a later change to it (a
            // `rm -rf dist/*`, an edited file) is noticed: in a directory, only the entries
            // the export wrote (others there are not the build's, as for buildx).
            let output_witness = output_dests(t)
                .into_iter()
                .filter_map(|(o, p)| {
                    let written: Vec<String> = crate::fs::top_level_stamps(&p)
                        .into_iter()
                        .filter(|(n, stamp)| before.get(&p).and_then(|b| b.get(n)) != Some(stamp))
                        .map(|(n, _)| n)
                        .collect();
                    let only = before.get(&p).map(|_| written.as_slice());
                    let w = crate::fs::output_witness(&p, &state_excludes(&p, &project.root), only);
                    Some((o, w.ok()??))
                })
                .collect();
            let rec = TargetRecord {
                key: fp.key.clone(),
                image_digest: digest.clone(),
                tags: spec.tags.clone(),
                outputs: t.outputs.iter().map(ToString::to_string).collect(),
                output_witness,
                finished_unix: now_unix(),
                uncovered: uncovered.clone(),
                daemon_reads: reads,
                whole_context: read_more
                    || tp.input.as_ref().is_some_and(|i| i.context_read == ContextRead::Whole),
                local_bases: tp.local_bases.clone(),
                daemon: member.worker_id.clone(),
                daemon_address: Some(member.address.clone()),
            };
            if let Err(e) = state.record(&name, &rec, &fp.manifest) {
                progress.warning(Some(&name), &format!("could not record state: {e}"));
            }
            if uncovered.is_empty() && opts.ledger {
                write_ledger(t, Some(&fp.key), digest.as_deref(), progress, &name).await;
            }
            if let (Some(r), Some(worker)) = (placement_hint_ref(t, opts), &member.worker_id) {
                let a = BTreeMap::from([
                    (HINT_WORKER.to_string(), worker.clone()),
                    ("dev.bk-build.address".to_string(), member.address.clone()),
                    (HINT_TARGET.to_string(), name.clone()),
                ]);
                if let Err(e) = crate::registry::put_annotations(&r, &a).await {
                    progress.note(
                        Some(&name),
                        &format!("could not record in the registry which daemon built it ({r}): {e}"),
                    );
                }
            }
            Ok(Done::Built(Box::new(r), uncovered, member.address.clone()))
        };
        async move {
            let r = work.await;
            // Dependents started from its stored image wait for this.
            let was_released = released.lock().map(|e| e.contains_key(&done_name)).unwrap_or(false);
            if was_released {
                let digest = match &r {
                    Ok(Done::Built(b, ..)) => b.image_digest().map(str::to_string),
                    _ => None,
                };
                ended_tx.send_modify(|m| {
                    m.insert(done_name.clone(), digest);
                });
            }
            // Nothing more is sent for this target: plain output writes its block now.
            let (outcome, error) = match &r {
                Ok(Done::Skipped) => (TargetOutcome::Skipped, None),
                Ok(Done::Retagged) => (TargetOutcome::Retagged, None),
                Ok(Done::Built(..) | Done::SameAs) => (TargetOutcome::Built, None),
                Err(e) => (TargetOutcome::Failed, Some(e.as_str())),
            };
            progress.target_done(&done_name, outcome, error);
            r
        }
    })
    .await;

    let mut results: Vec<TargetResult> = plan
        .graph
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
                Some(Outcome::Succeeded(Done::Built(r, uncovered, on))) => {
                    let mut metadata = r.metadata_json();
                    if let Some(m) = metadata.as_object_mut() {
                        m.insert("bk-build.daemon".into(), serde_json::json!(on));
                    }
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
                                "this result will not be reused, and the next run builds it again: {}. (A file edited during the build, or an ONBUILD in a base image, explains this; if neither does, please report it as a bk-build bug.)",
                                uncovered.join("; ")
                            )]
                        },
                    }
                }
                Some(Outcome::Succeeded(Done::Skipped)) => reused(tp, TargetOutcome::Skipped),
                Some(Outcome::Succeeded(Done::Retagged)) => reused(tp, TargetOutcome::Retagged),
                // Filled in below, from the first target's result.
                Some(Outcome::Succeeded(Done::SameAs)) => none(TargetOutcome::NotStarted, None),
                Some(Outcome::Failed(e)) => none(TargetOutcome::Failed, Some(e.clone())),
                Some(Outcome::NotStarted { because }) => none(
                    TargetOutcome::NotStarted,
                    Some(format!("not started: {because} failed")),
                ),
                None => none(TargetOutcome::NotStarted, Some("not started".into())),
            }
        })
        .collect();
    // A target that delivered another's image reports that target's result (the same image,
    // the same metadata), under its own name.
    for (dup, first) in &plan.graph.same_as {
        let Some(Outcome::Succeeded(Done::SameAs)) = outcomes.get(dup) else {
            continue;
        };
        let Some(theirs) = results.iter().find(|r| r.name == *first).cloned() else {
            continue;
        };
        if let Some(mine) = results.iter_mut().find(|r| r.name == *dup) {
            let mut metadata = theirs.metadata;
            if let Some(m) = metadata.as_mut().and_then(|m| m.as_object_mut()) {
                m.insert("bk-build.same_as".into(), serde_json::json!(first));
            }
            *mine = TargetResult {
                name: dup.clone(),
                duration: None,
                bytes_sent: Some(0),
                metadata,
                warnings: Vec::new(),
                ..theirs
            };
        }
    }
    results
}

/// The annotation of a placement hint that holds the BuildKit worker ID.
const HINT_WORKER: &str = "dev.bk-build.worker";
/// The annotation of a placement hint that names the target.
const HINT_TARGET: &str = "dev.bk-build.target";

/// Where the registry keeps which daemon of a pool built a target last: a tag of the target's
/// home repository, `bk-build-daemon-<16 hex of blake3(target name)>`, naming an empty OCI
/// index whose annotations say it ([`crate::registry::put_annotations`]). Written after each
/// build in a pool, read by runners whose state does not know: a hint for placement only,
/// never an input of a result. `None` without a pushed home repository or with `--no-ledger`.
fn placement_hint_ref(t: &Target, opts: &BakeOptions) -> Option<String> {
    if !t.push || !opts.ledger || opts.pool.len() < 2 {
        return None;
    }
    let home = home_repository(t)?;
    let h = blake3::hash(t.name.as_bytes()).to_hex();
    Some(format!("{home}:bk-build-daemon-{}", &h[..16]))
}

/// The engine image ID (`None`: no such image) each pool member has for a reference, asked
/// once per run.
type EngineIds = Arc<tokio::sync::Mutex<BTreeMap<(usize, String), Option<String>>>>;

/// Where a target may be built and where it would rather be.
struct Placed {
    /// The member that built it last, and those that built its bases (in this run, else
    /// last).
    preferred: crate::pool::Preference,
    /// Members it may be built on at all.
    allowed: Vec<bool>,
    /// Why it is restricted, for the error when none of those is left.
    why: Option<String>,
}

/// Decides [`Placed`] for target `name` in `pool`. Requirements keep results correct and
/// are never dropped: a base that is not pushed is only on the member that built (or loaded)
/// it; the engine's own images of bases it does not pull must be the ones the plan saw (the
/// key counts those); a loaded image goes into the engine the plan checks. When no member
/// meets them all, the target fails here, saying why. Native platforms are a preference
/// (another daemon emulates them), as are the members where its cache most likely is.
#[allow(clippy::too_many_arguments)]
async fn placement(
    pool: &Pool,
    project: &Project,
    plan: &BakePlan,
    state: &StateStore,
    name: &str,
    digests: &BTreeMap<String, String>,
    built_on: &Mutex<BTreeMap<String, usize>>,
    engine_ids: &EngineIds,
    opts: &BakeOptions,
    needs_load: bool,
    stored_on: &[usize],
) -> Result<Placed, String> {
    let n = pool.members().len();
    let mut allowed = vec![true; n];
    // One address: the daemon is the one the plan checked, as before pools. (One member left
    // of several is not: the plan may have looked at an address that is down.)
    if opts.pool.len() <= 1 && n == 1 {
        return Ok(Placed {
            preferred: crate::pool::Preference {
                last: Some(0),
                bases: Vec::new(),
            },
            allowed,
            why: None,
        });
    }
    let t = &project.targets[name];
    let tp = &plan.targets[name];
    let recorded = |target: &str| {
        state
            .get(target)
            .and_then(|r| r.daemon)
            .and_then(|id| pool.by_worker(&id))
    };
    let built = built_on.lock().map(|b| b.clone()).unwrap_or_default();
    // A fresh runner has no state: the registry's placement hint says where it was built.
    let last = match recorded(name) {
        Some(i) => Some(i),
        None => match placement_hint_ref(t, opts) {
            Some(r) => crate::registry::get_annotations(&r)
                .await
                .ok()
                .flatten()
                // Another project's target of the same name in this repository is not it.
                .filter(|a| a.get(HINT_TARGET).is_some_and(|n| n == name))
                .and_then(|a| a.get(HINT_WORKER).cloned())
                .and_then(|id| pool.by_worker(&id)),
            None => None,
        },
    };
    let mut preferred = crate::pool::Preference {
        last,
        bases: Vec::new(),
    };
    let mut reasons: Vec<String> = Vec::new();
    let mut require = |allowed: &mut Vec<bool>, keep: &dyn Fn(usize) -> bool, reason: String| {
        for (i, a) in allowed.iter_mut().enumerate() {
            *a &= keep(i);
        }
        reasons.push(reason);
    };
    for edge in &plan.graph.deps[name] {
        let uses_image = matches!(edge.via, Via::BaseImage { .. } | Via::NamedContext { .. });
        if !uses_image {
            continue;
        }
        let dep = &edge.dep;
        let on = built.get(dep).copied().or_else(|| recorded(dep));
        if let Some(i) = on.filter(|i| !preferred.bases.contains(i)) {
            preferred.bases.push(i);
        }
        let travels = project.targets[dep].push || link_context(project, dep, digests).is_some();
        if !travels {
            // Not in a registry: only where it was built (or, not known, the first daemon,
            // where a one-daemon run would have built it).
            let only = on.unwrap_or(0);
            require(
                &mut allowed,
                &|i| i == only,
                format!(
                    "it builds on `{dep}`, which is not pushed, so only {} has it",
                    pool.member(only).address
                ),
            );
        }
    }
    // A base still being pushed is only on the member that stored it.
    if let Some(&home) = stored_on.first() {
        require(
            &mut allowed,
            &|i| stored_on.iter().all(|h| *h == i),
            format!(
                "it starts from a base image that {} has stored and still pushes",
                pool.member(home).address
            ),
        );
    }
    // An image for the engine (`load`, `type=docker`, or tags with nowhere else to go) goes
    // into the building Docker Engine itself (a buildkitd's goes to DOCKER_HOST): only the
    // engine the plan checks delivers it where the user and the next run look.
    if super::deliver::loads(t) || needs_load {
        let plan_engine = opts.engine_images.as_ref();
        require(
            &mut allowed,
            &|i| {
                let m = pool.member(i);
                !m.is_docker_engine()
                    || engine_of(&m.daemon)
                        .zip(plan_engine)
                        .is_some_and(|(a, b)| a.endpoint == b.endpoint)
            },
            format!(
                "its image goes into the Docker Engine that builds it (load, type=docker, or tags without push), and only {} is the one this run checks",
                plan_engine.map_or_else(|| "none".to_string(), |h| h.to_string())
            ),
        );
    }
    // Without pull, a Docker Engine builds FROM its own image of a tag: the key counted the
    // image the plan saw (or none), so only a member with that same one may build it.
    if !t.pull {
        let from_targets: Vec<&str> = plan.graph.deps[name]
            .iter()
            .filter_map(|e| match &e.via {
                Via::BaseImage { reference, .. } => Some(reference.as_str()),
                _ => None,
            })
            .collect();
        let external: Vec<&String> = tp
            .base_refs
            .iter()
            .filter(|r| !from_targets.contains(&r.as_str()))
            .collect();
        let mut same = vec![true; n];
        for (i, m) in pool.members().iter().enumerate() {
            for r in &external {
                let have = if m.is_docker_engine() {
                    let mut ids = engine_ids.lock().await;
                    match ids.get(&(i, (*r).clone())) {
                        Some(v) => v.clone(),
                        None => {
                            let v = match engine_of(&m.daemon) {
                                Some(h) => match crate::transport::docker_image_id(&h, r).await {
                                    Ok(v) => v,
                                    // Unknown: never the same as anything.
                                    Err(_) => Some("?".into()),
                                },
                                None => None,
                            };
                            ids.insert((i, (*r).clone()), v.clone());
                            v
                        }
                    }
                } else {
                    None
                };
                if have.as_ref() != tp.local_bases.get(*r) {
                    same[i] = false;
                }
            }
        }
        if same.iter().any(|s| !s) {
            require(
                &mut allowed,
                &|i| same[i],
                format!(
                    "without pull, a Docker Engine builds FROM its own image of {} if it has one, and only some daemons have the one the plan counted (set pull = true to build from the registry's anywhere)",
                    external.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    if !allowed.iter().any(|a| *a) {
        return Err(format!(
            "no daemon of the pool can build it correctly: {}",
            reasons.join("; and ")
        ));
    }
    // Natively, where some allowed member can: a target with no platforms is built for this
    // machine's.
    let wanted: Vec<String> = if t.platforms.is_empty() {
        vec![host_platform()]
    } else {
        t.platforms.clone()
    };
    let native: Vec<bool> = pool
        .members()
        .iter()
        .map(|m| {
            wanted
                .iter()
                .all(|p| m.platforms.iter().any(|q| same_platform(q, p)))
        })
        .collect();
    if (0..n).any(|i| allowed[i] && native[i]) {
        for (a, nat) in allowed.iter_mut().zip(native) {
            *a &= nat;
        }
    }
    Ok(Placed {
        preferred,
        allowed,
        why: (!reasons.is_empty()).then(|| reasons.join("; ")),
    })
}

/// A target whose build is exactly `first`'s ([`graph::Plan::same_as`]), which has finished:
/// its image is this target's result (the same tags and outputs, already delivered), recorded
/// under this target's name rather than built a second time.
fn adopt(
    state: &StateStore,
    progress: &Progress,
    name: &str,
    first: &str,
    tp: &TargetPlan,
    digests: &Mutex<BTreeMap<String, String>>,
) -> Done {
    let snapshot = digests.lock().map(|d| d.clone()).unwrap_or_default();
    let Some(digest) = snapshot.get(first).cloned() else {
        progress.note(
            Some(name),
            &format!("the same build as {first}, which made no image"),
        );
        return Done::SameAs;
    };
    if let Ok(mut m) = digests.lock() {
        m.insert(name.to_string(), digest.clone());
    }
    let fp = tp
        .content
        .as_ref()
        .and_then(|c| with_image_deps(c, &tp.image_deps, |d| snapshot.get(d).cloned()));
    let theirs = tokio::task::block_in_place(|| state.get(first));
    match (fp, theirs) {
        (Some(fp), Some(rec))
            if rec.key == fp.key && rec.image_digest.as_deref() == Some(digest.as_str()) =>
        {
            if let Err(e) = tokio::task::block_in_place(|| state.record(name, &rec, &fp.manifest)) {
                progress.warning(Some(name), &format!("could not record state: {e}"));
            }
        }
        _ => progress.warning(
            Some(name),
            &format!("not recorded ({first}'s result was not recorded for these inputs)"),
        ),
    }
    progress.note(
        Some(name),
        &format!("the same build as {first}: delivered with its image {digest}"),
    );
    Done::SameAs
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

/// A target's outputs written to a path on disk: (output as written, path).
/// A lock per output directory path, taken by the targets that write it.
type DestLocks = Arc<Mutex<BTreeMap<std::path::PathBuf, Arc<tokio::sync::Mutex<()>>>>>;

/// Takes the locks of `t`'s output directories, in path order (so two targets never wait for
/// each other's), held until the returned guards are dropped.
async fn lock_dests(locks: &DestLocks, t: &Target) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
    let mut paths: Vec<std::path::PathBuf> = output_dests(t).into_iter().map(|(_, p)| p).collect();
    paths.sort();
    paths.dedup();
    let mut guards = Vec::new();
    for p in paths {
        let lock = match locks.lock() {
            Ok(mut m) => m.entry(p).or_default().clone(),
            Err(_) => continue,
        };
        guards.push(lock.lock_owned().await);
    }
    guards
}

fn output_dests(t: &Target) -> Vec<(String, std::path::PathBuf)> {
    t.outputs
        .iter()
        .filter_map(|o| match &o.value().dest {
            Some(OutputDest::Path(p)) => Some((o.to_string(), p.clone())),
            _ => None,
        })
        .collect()
}

/// Base images the build started from that the Dockerfile scan did not name (the daemon
/// checking the scan, as file sync does for files): such a result is not reused.
fn unseen_bases(expected: &[String], loaded: Option<&[String]>) -> Vec<String> {
    let Some(loaded) = loaded else {
        return vec!["which base images it used is unknown (no build status)".into()];
    };
    let canonical = |r: &str| match crate::registry::Reference::parse(r) {
        Ok(p) => {
            let tag = match (&p.tag, &p.digest) {
                (None, None) => ":latest".to_string(),
                (Some(t), _) => format!(":{t}"),
                (None, Some(_)) => String::new(),
            };
            let digest = p.digest.map(|d| format!("@{d}")).unwrap_or_default();
            format!("{}/{}{tag}{digest}", p.registry, p.repository)
        }
        Err(_) => r.to_string(),
    };
    let known: std::collections::BTreeSet<String> = expected.iter().map(|r| canonical(r)).collect();
    loaded
        .iter()
        .filter(|l| !known.contains(&canonical(l)))
        .map(|l| format!("it started from {l}, which the Dockerfile scan did not see"))
        .collect()
}

/// Copies the image to the tags the plan says are missing: a line per tag set, then how it
/// ended (the first failure stops it).
pub(super) async fn retag(tp: &TargetPlan, engine: Option<&DockerHost>) -> RetagOutcome {
    let mut done = Vec::new();
    let result = async {
        for tag in &tp.retag_registry {
            let from = tp
                .retag_from
                .as_deref()
                .ok_or_else(|| "nothing to copy the image from".to_string())?;
            match &tp.retag_manifest {
                Some(m) => crate::registry::put_manifest_as(m, tag).await,
                None => crate::registry::tag_existing(from, tag).await,
            }
            .map_err(|e| e.to_string())?;
            done.push(format!("tagged {tag} (from {from})"));
        }
        if !tp.retag_engine.is_empty() {
            let (Some(host), Some(digest)) = (engine, tp.digest.as_deref()) else {
                return Err("the Docker Engine is not reachable to tag the image in".to_string());
            };
            for tag in &tp.retag_engine {
                crate::transport::docker_tag_image(host, digest, tag).await?;
                done.push(format!("tagged {tag} in the Docker Engine"));
            }
        }
        Ok(())
    }
    .await;
    (done, result)
}

/// Records a reused result in the local state, so the next run decides without the registry.
fn record(state: &StateStore, progress: &Progress, name: &str, tp: &TargetPlan, t: &Target) {
    let Some(full) = &tp.full else {
        return;
    };
    let last = state.get(name);
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
        // Reused, not built: the cache is still where the last build was.
        daemon: last.as_ref().and_then(|r| r.daemon.clone()),
        daemon_address: last.and_then(|r| r.daemon_address),
    };
    if let Err(e) = state.record(name, &rec, &full.manifest) {
        progress.warning(Some(name), &format!("could not record state: {e}"));
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
        progress.warning(
            Some(name),
            &format!("could not record the result in the registry ledger ({entry}): {e}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_the_scan_did_not_see_are_named() {
        let expected = ["busybox".to_string(), "localhost:5000/x:1".to_string()];
        let seen = |loaded: &[&str]| {
            let loaded: Vec<String> = loaded.iter().map(|s| s.to_string()).collect();
            unseen_bases(&expected, Some(&loaded))
        };
        assert!(seen(&["docker.io/library/busybox:latest", "localhost:5000/x:1"]).is_empty());
        let got = seen(&["docker.io/library/alpine:3"]);
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("alpine"), "{got:?}");
        assert!(!unseen_bases(&expected, None).is_empty());
    }
}
