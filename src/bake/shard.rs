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
use crate::transport::Daemon;

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
/// ledger entry, not built on every run). Targets joined by an edge to a target that is not
/// portable, and targets that deliver another's build ([`graph::Plan::same_as`]), form one
/// group; groups are dealt out round-robin, by dependency depth then name, so that each
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
    for (i, name) in order.iter().enumerate() {
        for dep in gplan.dependencies(name) {
            let Some(&d) = index.get(dep) else { continue };
            depth[i] = depth[i].max(depth[d] + 1);
            if !portable(dep) {
                join(&mut parent, i, d);
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
    daemon: Option<&Daemon>,
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
    let deadline = Instant::now() + wait;
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut results: Vec<TargetResult> = Vec::new();
    let mut acted: BTreeMap<String, TargetPlan> = BTreeMap::new();
    let mut announced: BTreeSet<String> = BTreeSet::new();
    loop {
        let mine = |n: &str| plan.targets.get(n).and_then(|t| t.shard) == Some(me);
        let foreign_build =
            |n: &str| !mine(n) && plan.targets.get(n).map(|t| t.action) == Some(Action::Build);
        let mut blocked: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        let mut ready: BTreeSet<String> = BTreeSet::new();
        for n in plan
            .graph
            .order
            .iter()
            .filter(|n| mine(n) && !done.contains(*n))
        {
            let bases = ancestors(&plan.graph, n, foreign_build);
            if bases.is_empty() {
                ready.insert(n.clone());
            } else {
                blocked.insert(n.clone(), bases);
            }
        }
        if !ready.is_empty() {
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
        blocked.retain(|n, _| {
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
        if blocked.is_empty() {
            break;
        }
        // The ledger entries that would let a waiting target go on: those of its bases
        // built elsewhere whose key is known (a base further up may still be missing; its
        // entry comes first).
        let mut entries: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for bases in blocked.values() {
            for b in bases {
                let tp = &plan.targets[*b];
                let home = home_repository(&project.targets[*b]);
                if let (Some(home), Some(key)) = (home, tp.fingerprint.as_deref()) {
                    let entry = format!("{home}:{}", fingerprint::ledger_tag(key));
                    entries.insert(b.to_string(), (entry, tp.shard.unwrap_or(0)));
                }
            }
        }
        for (b, (entry, owner)) in &entries {
            if announced.insert(format!("{b} {entry}")) {
                for (n, _) in blocked.iter().filter(|(_, bs)| bs.contains(b.as_str())) {
                    progress.note(
                        Some(n),
                        &format!(
                            "waiting for base {b}, which shard {owner}/{} builds (its ledger entry {entry})",
                            shard.count()
                        ),
                    );
                }
            }
        }
        let appeared = if entries.is_empty() {
            false
        } else {
            wait_for_any(entries.values().map(|(e, _)| e.as_str()), deadline).await
        };
        if !appeared {
            for (n, bases) in &blocked {
                let list: Vec<String> = bases
                    .iter()
                    .map(|b| {
                        let owner = plan.targets[*b].shard.unwrap_or(0);
                        format!("{b} (shard {owner}/{})", shard.count())
                    })
                    .collect();
                let why = if entries.is_empty() {
                    "no base it waits for has a known key yet".to_string()
                } else {
                    format!("waited {} s", wait.as_secs())
                };
                let error = format!(
                    "not started: its bases {} were not in the registry ledger ({why}). Did that shard fail? Its bases must be pushed by it first; raise --shard-wait to wait longer",
                    list.join(", ")
                );
                progress.target_done(n, TargetOutcome::NotStarted, Some(&error));
                results.push(not_done(n, error));
            }
            break;
        }
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

/// Asks the registry for `entries` every [`POLL`] until one of them exists (`true`) or
/// `deadline` passes (`false`). A registry error counts as "not yet".
async fn wait_for_any<'a>(entries: impl Iterator<Item = &'a str>, deadline: Instant) -> bool {
    let entries: Vec<&str> = entries.collect();
    loop {
        let asks = entries.iter().map(|e| crate::registry::manifest_digest(e));
        let found = futures_util::future::join_all(asks).await;
        if found.into_iter().any(|r| matches!(r, Ok(Some(_)))) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
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

    fn plan(deps: &[(&str, &[&str])]) -> graph::Plan {
        graph::Plan::from_deps(deps.iter().map(|(n, d)| (*n, d.iter().copied()))).unwrap()
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
