//! `bake --shard I/N`: which targets each of N processes (CI runners, usually with no daemon
//! in common) acts on, and how a shard waits for the bases another one builds.
//!
//! Every shard plans the whole run, so that keys (which contain the digests of bases) are
//! the same everywhere, and acts only on its own share. The share is a function of the
//! project alone (targets, their dependencies, which results can travel through the
//! registry), never of what a plan decided: shards that plan at different moments, one
//! before and one after a base was pushed, still agree on who owns what, so no target is
//! built twice or left out.
//!
//! A result travels between runners only through the registry ledger: a pushed target with a
//! ledger entry (see [`crate::fingerprint::ledger_tag`]). A target whose result cannot travel
//! (not pushed, `--no-ledger`, or built on every run) shares a shard with every target that
//! builds on it. A shard whose target needs a base another shard builds waits until the
//! base's ledger entry appears, then plans again and builds on exactly that image.
//!
//! This module decides ownership and runs the rounds (act on what is ready, wait for a
//! ledger entry, plan again); planning and building are [`super::plan()`]'s and
//! [`super::execute`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::deliver::home_repository;
use super::{Action, BakeError, BakeOptions, BakePlan, TargetPlan, TargetResult};
use crate::fingerprint::{self, StateStore};
use crate::graph;
use crate::progress::{Progress, TargetOutcome};
use crate::project::Project;

/// Shard `index` of `count` (`I/N` on the command line, 1 ≤ I ≤ N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Shard {
    /// This shard's number, 1-based.
    pub fn index(self) -> usize {
        self.index
    }

    /// How many shards there are.
    pub fn count(self) -> usize {
        self.count
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why an `I/N` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("--shard {value:?}: {why}; write I/N with 1 ≤ I ≤ N, e.g. --shard 1/3 … --shard 3/3")]
pub struct ShardParseError {
    value: String,
    why: &'static str,
}

impl FromStr for Shard {
    type Err = ShardParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ShardParseError {
            value: s.to_string(),
            why,
        };
        let (i, n) = s.split_once('/').ok_or_else(|| err("no `/`"))?;
        let index: usize = i.trim().parse().map_err(|_| err("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| err("N is not a number"))?;
        if count == 0 {
            return Err(err("N must be at least 1"));
        }
        if index == 0 || index > count {
            return Err(err("I must be between 1 and N"));
        }
        Ok(Shard { index, count })
    }
}

/// The shard (1-based) that acts on each target of `gplan.order`.
///
/// `portable(name)` says whether the target's result reaches other runners (pushed, with a
/// ledger entry, not built on every run). A target that is not portable forms one group with
/// everything that builds on it, directly or not (their keys hold its digest, which only its
/// own runner learns); so does a `depends_on` dependent, with its dependency (it is built
/// again whenever that is, under the same key). Targets that deliver another's build
/// ([`graph::Plan::same_as`]) join that target's group; groups are dealt out round-robin, by dependency depth then name, so that each
/// layer of the graph is spread over the shards.
pub fn owners(
    gplan: &graph::Plan,
    count: usize,
    portable: impl Fn(&str) -> bool,
) -> BTreeMap<String, usize> {
    let order = &gplan.order;
    let index: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    // Union-find over positions in `order`, iterative (no recursion on deep graphs).
    let mut parent: Vec<usize> = (0..order.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let join = |parent: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (root(parent, a), root(parent, b));
        if ra != rb {
            // The earlier one (in build order) stays the root: deterministic.
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            parent[hi] = lo;
        }
    };
    let mut depth = vec![0usize; order.len()];
    // A target whose key other runners cannot know: its result does not travel, or it builds
    // on such a target (its key holds that target's digest, known only where it was built).
    let mut local = vec![false; order.len()];
    for (i, name) in order.iter().enumerate() {
        local[i] = !portable(name);
        for edge in gplan.deps.get(name).into_iter().flatten() {
            let Some(&d) = index.get(edge.dep.as_str()) else {
                continue;
            };
            depth[i] = depth[i].max(depth[d] + 1);
            // A `depends_on` dependent is built again whenever its dependency is, with the
            // same key (the dependency's digest is not one of its inputs): its image can
            // change under an unchanged key, which only its own runner sees.
            let ordering_only = matches!(edge.via, graph::Via::DependsOn);
            if local[d] || ordering_only {
                join(&mut parent, i, d);
                local[i] = true;
            }
        }
        if let Some(&f) = gplan.same_as.get(name).and_then(|f| index.get(f.as_str())) {
            join(&mut parent, i, f);
        }
    }
    // A group sorts by its shallowest member, then its first name.
    let mut groups: BTreeMap<usize, (usize, &str)> = BTreeMap::new();
    for (i, name) in order.iter().enumerate() {
        let r = root(&mut parent, i);
        let key = groups.entry(r).or_insert((depth[i], name.as_str()));
        *key = (key.0.min(depth[i]), key.1.min(name.as_str()));
    }
    let mut sorted: Vec<(usize, &str, usize)> =
        groups.into_iter().map(|(r, (d, n))| (d, n, r)).collect();
    sorted.sort();
    let shard_of_root: BTreeMap<usize, usize> = sorted
        .iter()
        .enumerate()
        .map(|(k, (_, _, r))| (*r, k % count.max(1) + 1))
        .collect();
    order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), shard_of_root[&root(&mut parent, i)]))
        .collect()
}

/// The targets `of` builds on, directly or not, that satisfy `pick`.
pub(super) fn ancestors<'a>(
    gplan: &'a graph::Plan,
    of: &str,
    pick: impl Fn(&str) -> bool,
) -> BTreeSet<&'a str> {
    let mut seen: BTreeSet<&'a str> = BTreeSet::new();
    let mut stack: Vec<&'a str> = gplan
        .order
        .iter()
        .find(|n| *n == of)
        .map(|n| gplan.dependencies(n))
        .unwrap_or_default();
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(gplan.dependencies(n));
        }
    }
    seen.into_iter().filter(|n| pick(n)).collect()
}

/// How often a waiting shard asks the registry for the ledger entries it waits for.
const POLL: Duration = Duration::from_secs(2);

/// Does this shard's share of `plan` (made with `opts.shard` set): every own target whose
/// bases are at hand, then, while own targets wait for bases that other shards build, waits
/// for one of those bases' ledger entries (at most `wait` in all), plans again and goes on.
///
/// Returns the results of this shard's targets (in the order they were done) and the plan
/// each was done with. A target still waiting after `wait` fails, naming the base and the
/// shard that builds it.
///
/// # Errors
/// Planning again failed (an input became unreadable, …); what was done before is recorded.
#[allow(clippy::too_many_arguments)]
pub async fn execute_shard(
    daemon: Option<&crate::pool::Pool>,
    project: &Project,
    names: &[String],
    mut plan: BakePlan,
    state: &StateStore,
    jobs: usize,
    progress: &Progress,
    opts: &BakeOptions,
    wait: Duration,
) -> Result<(Vec<TargetResult>, BakePlan), BakeError> {
    let Some(shard) = opts.shard else {
        let results = super::execute(daemon, project, &plan, state, jobs, progress, opts).await;
        return Ok((results, plan));
    };
    let me = shard.index();
    // A wait that cannot be represented is no deadline at all.
    let deadline = Instant::now().checked_add(wait);
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut results: Vec<TargetResult> = Vec::new();
    let mut acted: BTreeMap<String, TargetPlan> = BTreeMap::new();
    let mut announced: BTreeSet<String> = BTreeSet::new();
    // Ledger entries already seen in the registry: waking up for them again would spin.
    let mut present: BTreeSet<String> = BTreeSet::new();
    loop {
        let mine = |n: &str| plan.targets.get(n).and_then(|t| t.shard) == Some(me);
        let foreign_build =
            |n: &str| !mine(n) && plan.targets.get(n).map(|t| t.action) == Some(Action::Build);
        // What each own target waits for: the bases other shards still have to build that it
        // builds on directly, or through own targets that wait themselves. (A base another
        // shard already delivered is at hand, whatever that base was built from.)
        let mut waits: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut ready: BTreeSet<String> = BTreeSet::new();
        for n in plan
            .graph
            .order
            .iter()
            .filter(|n| mine(n) && !done.contains(*n))
        {
            let mut on: BTreeSet<String> = BTreeSet::new();
            for d in plan.graph.dependencies(n) {
                if foreign_build(d) {
                    on.insert(d.to_string());
                } else if let Some(theirs) = waits.get(d) {
                    on.extend(theirs.iter().cloned());
                }
            }
            if on.is_empty() {
                ready.insert(n.clone());
            } else {
                waits.insert(n.clone(), on);
            }
        }
        let progressed = !ready.is_empty();
        if progressed {
            let round = plan.restricted(&ready);
            let r = super::execute(daemon, project, &round, state, jobs, progress, opts).await;
            for res in &r {
                if matches!(
                    res.outcome,
                    TargetOutcome::Failed | TargetOutcome::NotStarted
                ) {
                    failed.insert(res.name.clone());
                }
            }
            results.extend(r);
            for n in &ready {
                if let Some(tp) = plan.targets.get(n) {
                    acted.insert(n.clone(), tp.clone());
                }
            }
            done.extend(ready);
        }
        // A target whose own base failed here will not be built, whatever other shards do.
        let mut gave_up = Vec::new();
        waits.retain(|n, _| {
            let own_failed = ancestors(&plan.graph, n, |a| failed.contains(a));
            match own_failed.first() {
                Some(f) => {
                    gave_up.push((n.clone(), format!("not started: {f} failed")));
                    false
                }
                None => true,
            }
        });
        for (n, error) in gave_up {
            progress.target_done(&n, TargetOutcome::NotStarted, Some(&error));
            results.push(not_done(&n, error));
            failed.insert(n.clone());
            done.insert(n);
        }
        if waits.is_empty() {
            break;
        }
        if progressed {
            // What was just built may be what other shards' targets needed for their keys.
            plan = super::plan(project, names, state, opts).await?;
            continue;
        }
        // Nothing to do until another shard delivers: the ledger entries to look for are
        // those of the awaited bases whose key is known here, else of the bases further up
        // that they wait for themselves.
        let mut entries: BTreeMap<String, String> = BTreeMap::new();
        // An entry seen before while its target still waits: the plan that followed may
        // have missed it (a registry hiccup); plan again now and then, until the deadline.
        let mut seen_before = false;
        for b in waits.values().flatten() {
            let mut stack = vec![b.as_str()];
            let mut seen = BTreeSet::new();
            while let Some(x) = stack.pop() {
                if !seen.insert(x) {
                    continue;
                }
                let home = home_repository(&project.targets[x]);
                match (home, plan.targets[x].fingerprint.as_deref()) {
                    (Some(home), Some(key)) => {
                        let entry = format!("{home}:{}", fingerprint::ledger_tag(key));
                        if present.contains(&entry) {
                            seen_before = true;
                        } else {
                            entries.insert(x.to_string(), entry);
                        }
                    }
                    _ => stack.extend(
                        plan.graph
                            .dependencies(x)
                            .into_iter()
                            .filter(|d| foreign_build(d)),
                    ),
                }
            }
        }
        let count = shard.count();
        let owner_of = |b: &str| plan.targets[b].shard.unwrap_or(0);
        for (b, entry) in &entries {
            if announced.insert(entry.clone()) {
                progress.note(
                    None,
                    &format!(
                        "waiting for {b}, which shard {}/{count} builds (its ledger entry {entry})",
                        owner_of(b)
                    ),
                );
            }
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if entries.is_empty() && seen_before && !expired {
            tokio::time::sleep(POLL).await;
            plan = super::plan(project, names, state, opts).await?;
            continue;
        }
        let appeared = match deadline {
            _ if entries.is_empty() => BTreeSet::new(),
            Some(d) if Instant::now() >= d => BTreeSet::new(),
            _ => wait_for_any(entries.values().map(String::as_str), deadline).await,
        };
        if appeared.is_empty() {
            for (n, bases) in &waits {
                let list: Vec<String> = bases
                    .iter()
                    .map(|b| format!("{b} (shard {}/{count})", owner_of(b)))
                    .collect();
                let error = if entries.is_empty() && !seen_before {
                    format!(
                        "not started: it builds on {}, and this shard cannot tell which result of it to wait for (its key depends on a result built only on its shard, or it is built on every run). Put them on one shard: push that result, or run without --shard",
                        list.join(", ")
                    )
                } else {
                    let looked: Vec<String> = entries
                        .keys()
                        .map(|b| format!("{b} (shard {}/{count})", owner_of(b)))
                        .collect();
                    format!(
                        "not started: it builds on {}, and {} did not reach the registry ledger within --shard-wait ({} s). Did that shard fail? Raise --shard-wait to wait longer",
                        list.join(", "),
                        looked.join(", "),
                        wait.as_secs()
                    )
                };
                progress.target_done(n, TargetOutcome::NotStarted, Some(&error));
                results.push(not_done(n, error));
            }
            break;
        }
        present.extend(appeared);
        plan = super::plan(project, names, state, opts).await?;
    }
    let mut targets = plan.targets.clone();
    targets.extend(acted);
    Ok((
        results,
        BakePlan {
            graph: plan.graph.clone(),
            targets,
            early: plan.early.clone(),
        },
    ))
}

fn not_done(name: &str, error: String) -> TargetResult {
    TargetResult {
        name: name.to_string(),
        outcome: TargetOutcome::NotStarted,
        duration: None,
        bytes_sent: None,
        digest: None,
        error: Some(error),
        metadata: None,
        warnings: Vec::new(),
    }
}

/// Asks the registry for `entries` every [`POLL`] until some of them exist (returned) or
/// `deadline` passes (empty). A registry error counts as "not yet".
async fn wait_for_any<'a>(
    entries: impl Iterator<Item = &'a str>,
    deadline: Option<Instant>,
) -> BTreeSet<String> {
    let entries: Vec<&str> = entries.collect();
    loop {
        let asks = entries
            .iter()
            .map(|e| async move { (*e, crate::registry::manifest_digest(e).await) });
        let found: BTreeSet<String> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter(|(_, r)| matches!(r, Ok(Some(_))))
            .map(|(e, _)| e.to_string())
            .collect();
        if !found.is_empty() {
            return found;
        }
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => POLL,
        };
        if left.is_zero() {
            return found;
        }
        tokio::time::sleep(POLL.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_values_parse_or_say_how_to_write_them() {
        let s: Shard = "2/3".parse().unwrap();
        assert_eq!((s.index(), s.count()), (2, 3));
        assert_eq!(s.to_string(), "2/3");
        for bad in ["", "2", "0/2", "3/2", "1/0", "a/2", "1/b", "-1/2"] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("I/N"), "{bad}: {e}");
        }
    }

    /// A plan whose edges are `FROM` lines (targets built on their dependencies' images).
    fn plan(deps: &[(&str, &[&str])]) -> graph::Plan {
        let mut p =
            graph::Plan::from_deps(deps.iter().map(|(n, d)| (*n, d.iter().copied()))).unwrap();
        for edges in p.deps.values_mut() {
            for e in edges.iter_mut() {
                e.via = graph::Via::BaseImage {
                    reference: format!("r/{}:1", e.dep),
                    tag: format!("r/{}:1", e.dep),
                    context_key: format!("r/{}:1", e.dep),
                };
            }
        }
        p
    }

    #[test]
    fn a_depends_on_chain_stays_on_one_shard() {
        // `mid` lists `base` in depends_on; `leaf` builds FROM `mid`.
        let mut p = plan(&[
            ("base", &[]),
            ("mid", &["base"]),
            ("leaf", &["mid"]),
            ("x", &[]),
        ]);
        p.deps.get_mut("mid").unwrap()[0].via = graph::Via::DependsOn;
        for count in 2..5 {
            let o = owners(&p, count, |_| true);
            assert_eq!(o["mid"], o["base"], "{count}: {o:?}");
            assert_eq!(o["leaf"], o["base"], "{count}: {o:?}");
        }
    }

    #[test]
    fn every_layer_is_spread_and_every_target_has_one_owner() {
        let p = plan(&[
            ("base", &[]),
            ("a", &["base"]),
            ("b", &["base"]),
            ("c", &["base"]),
            ("d", &["base"]),
        ]);
        let o = owners(&p, 2, |_| true);
        assert_eq!(o.len(), 5);
        assert_eq!(o["base"], 1);
        let layer1: Vec<usize> = ["a", "b", "c", "d"].iter().map(|n| o[*n]).collect();
        assert_eq!(layer1, vec![2, 1, 2, 1]);
        // The same answer however often it is asked (shards compute it independently).
        assert_eq!(o, owners(&p, 2, |_| true));
    }

    #[test]
    fn what_cannot_travel_stays_with_what_builds_on_it() {
        let p = plan(&[
            ("base", &[]),
            ("local", &[]),
            ("a", &["base", "local"]),
            ("b", &["local"]),
            ("c", &["base"]),
        ]);
        let o = owners(&p, 3, |n| n != "local");
        assert_eq!(o["a"], o["local"]);
        assert_eq!(o["b"], o["local"]);
        // `base` travels: its dependents may be anywhere.
        let shards: BTreeSet<usize> = o.values().copied().collect();
        assert!(shards.len() > 1, "{o:?}");
    }

    #[test]
    fn what_builds_on_a_result_that_cannot_travel_stays_with_it_at_every_depth() {
        let p = plan(&[
            ("base", &[]),
            ("mid", &["base"]),
            ("leaf", &["mid"]),
            ("x", &[]),
            ("y", &[]),
        ]);
        for count in 2..5 {
            let o = owners(&p, count, |n| n != "base");
            assert_eq!(o["mid"], o["base"], "{count}: {o:?}");
            assert_eq!(o["leaf"], o["base"], "{count}: {o:?}");
        }
    }

    #[test]
    fn one_shard_owns_everything() {
        let p = plan(&[("x", &[]), ("y", &["x"])]);
        assert!(owners(&p, 1, |_| true).values().all(|s| *s == 1));
    }

    #[test]
    fn ancestors_are_found_through_every_level() {
        let p = plan(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]);
        let all = ancestors(&p, "c", |_| true);
        assert_eq!(all.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert!(ancestors(&p, "d", |_| true).is_empty());
        assert_eq!(
            ancestors(&p, "c", |n| n == "a")
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["a"]
        );
    }
}
