//! Running a [`Plan`] with at most `jobs` nodes at once.
//!
//! A node starts when all its dependencies succeeded, or released it earlier: a running node
//! may call [`Release::now`] to let its dependents start before it ends (bake: a base whose
//! image is stored on the daemon and now only being pushed). A released node no longer counts
//! against `jobs`. When a node fails, everything that depends on it (directly or not) and has
//! not started is reported as not started, naming the failed node, while independent nodes keep
//! going; dependents already started after a release run on and must themselves check how
//! their dependency ended. The scheduler knows nothing about what a node does: it calls
//! `f(name, release)` and looks at `Ok`/`Err`.
//!
//! The futures are polled together on the caller's task (no `spawn`), so `f` needs neither
//! `Send` nor `'static`; CPU-heavy work inside `f` should use `spawn_blocking`. Dropping the
//! future returned by [`run`] (e.g. on Ctrl-C) drops every running node's future.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::Plan;

/// What happened to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T, E> {
    Succeeded(T),
    Failed(E),
    /// Not started because the node named here (a dependency, direct or indirect) failed.
    NotStarted {
        because: String,
    },
}

impl<T, E> Outcome<T, E> {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded(_))
    }
}

/// Lets a running node's dependents start before the node ends (see the module doc).
#[derive(Clone)]
pub struct Release {
    name: String,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Release {
    /// Releases the node's dependents now; later calls do nothing.
    pub fn now(&self) {
        // The scheduler holds a receiver as long as any node runs.
        let _ = self.tx.send(self.name.clone());
    }
}

/// Runs every node of `plan`, at most `jobs` (at least 1) unreleased nodes at a time,
/// dependencies first. Returns one outcome per node of `plan.order`.
pub async fn run<T, E, F, Fut>(plan: &Plan, jobs: usize, f: F) -> BTreeMap<String, Outcome<T, E>>
where
    F: Fn(String, Release) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let jobs = jobs.max(1);
    let position: BTreeMap<&str, usize> = plan
        .order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in &plan.order {
        let deps: BTreeSet<&str> = plan
            .dependencies(n)
            .into_iter()
            .filter(|d| position.contains_key(d))
            .collect();
        waiting.insert(n, deps.len());
        for d in deps {
            dependents.entry(d).or_default().push(n);
        }
    }
    // Ready nodes by plan position, so bases start before leaves when both are ready.
    let mut ready: BTreeSet<usize> = waiting
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(n, _)| position[n])
        .collect();
    let mut results: BTreeMap<String, Outcome<T, E>> = BTreeMap::new();
    let mut running = FuturesUnordered::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // Nodes started, and those of them released (running or ended).
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut released: BTreeSet<String> = BTreeSet::new();
    loop {
        while running.len()
            - released
                .iter()
                .filter(|r| !results.contains_key(r.as_str()))
                .count()
            < jobs
        {
            let Some(i) = ready.pop_first() else { break };
            let name = plan.order[i].clone();
            started.insert(name.clone());
            let release = Release {
                name: name.clone(),
                tx: tx.clone(),
            };
            let fut = f(name.clone(), release);
            running.push(async move { (name, fut.await) });
        }
        if running.is_empty() {
            break;
        }
        let (name, result) = tokio::select! {
            Some(done) = running.next() => done,
            Some(r) = rx.recv() => {
                if started.contains(&r) && !results.contains_key(&r) && released.insert(r.clone()) {
                    satisfy(dependents.get(r.as_str()), &position, &mut waiting, &mut ready, &results);
                }
                continue;
            }
        };
        match result {
            Ok(v) => {
                if !released.contains(&name) {
                    satisfy(
                        dependents.get(name.as_str()),
                        &position,
                        &mut waiting,
                        &mut ready,
                        &results,
                    );
                }
                results.insert(name, Outcome::Succeeded(v));
            }
            Err(e) => {
                let mut todo: Vec<&str> =
                    dependents.get(name.as_str()).cloned().unwrap_or_default();
                while let Some(d) = todo.pop() {
                    // Started after a release: it runs on and answers for itself.
                    if results.contains_key(d) || started.contains(d) {
                        continue;
                    }
                    ready.remove(&position[d]);
                    results.insert(
                        d.to_string(),
                        Outcome::NotStarted {
                            because: name.clone(),
                        },
                    );
                    todo.extend(dependents.get(d).into_iter().flatten());
                }
                results.insert(name, Outcome::Failed(e));
            }
        }
    }
    results
}

/// Counts one dependency of each of `dependents` as done (once per node: when it is released
/// or, not released, when it ends), making ready those that wait for nothing more.
fn satisfy<'p, X>(
    dependents: Option<&Vec<&'p str>>,
    position: &BTreeMap<&str, usize>,
    waiting: &mut BTreeMap<&'p str, usize>,
    ready: &mut BTreeSet<usize>,
    results: &BTreeMap<String, X>,
) {
    for d in dependents.into_iter().flatten() {
        if let Some(c) = waiting.get_mut(d) {
            *c -= 1;
            if *c == 0 && !results.contains_key(*d) {
                ready.insert(position[d]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    fn plan(edges: &[(&str, &[&str])]) -> Plan {
        Plan::from_deps(edges.iter().map(|(n, ds)| (*n, ds.iter().copied()))).unwrap()
    }

    #[tokio::test]
    async fn failure_stops_dependents_not_siblings() {
        // base <- svc1 <- app ; base <- svc2 ; other independent ; bad <- needs_bad
        let p = plan(&[
            ("base", &[]),
            ("svc1", &["base"]),
            ("svc2", &["base"]),
            ("app", &["svc1"]),
            ("other", &[]),
            ("bad", &[]),
            ("needs_bad", &["bad", "base"]),
            ("after_needs_bad", &["needs_bad"]),
        ]);
        let started = std::cell::RefCell::new(Vec::new());
        let out = run(&p, 2, |n: String, _| {
            started.borrow_mut().push(n.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if n == "bad" {
                    Err(format!("{n} broke"))
                } else {
                    Ok(n.len())
                }
            }
        })
        .await;
        assert_eq!(out.len(), 8);
        assert_eq!(out["bad"], Outcome::Failed("bad broke".to_string()));
        assert_eq!(
            out["needs_bad"],
            Outcome::NotStarted {
                because: "bad".into()
            }
        );
        assert_eq!(
            out["after_needs_bad"],
            Outcome::NotStarted {
                because: "bad".into()
            }
        );
        for ok in ["base", "svc1", "svc2", "app", "other"] {
            assert!(out[ok].is_success(), "{ok}: {:?}", out[ok]);
        }
        let started = started.into_inner();
        assert!(!started.contains(&"needs_bad".to_string()));
        let pos = |n: &str| started.iter().position(|s| s == n).unwrap();
        assert!(pos("base") < pos("svc1") && pos("svc1") < pos("app"));
    }

    #[tokio::test]
    async fn never_more_than_jobs_at_once() {
        let names: Vec<String> = (0..9).map(|i| format!("n{i}")).collect();
        let p = Plan::from_deps(names.iter().map(|n| (n.clone(), Vec::<String>::new()))).unwrap();
        for jobs in [1, 3] {
            let current = Cell::new(0usize);
            let peak = Cell::new(0usize);
            let out = run(&p, jobs, |_n, _| {
                let (current, peak) = (&current, &peak);
                async move {
                    current.set(current.get() + 1);
                    peak.set(peak.get().max(current.get()));
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    current.set(current.get() - 1);
                    Ok::<_, ()>(())
                }
            })
            .await;
            assert_eq!(out.len(), 9);
            assert_eq!(peak.get(), jobs, "jobs={jobs}");
        }
    }

    /// A released node's dependents start while it still runs, and it no longer takes one of
    /// the `jobs`: with one job, `base` releases, then `svc` runs to its end before `base` is
    /// allowed to end.
    #[tokio::test]
    async fn a_release_starts_dependents_early_and_frees_the_job() {
        let p = plan(&[("base", &[]), ("svc", &["base"]), ("app", &["svc"])]);
        let log = std::cell::RefCell::new(Vec::new());
        let svc_done = tokio::sync::Notify::new();
        let out = run(&p, 1, |n: String, release| {
            let (log, svc_done) = (&log, &svc_done);
            async move {
                log.borrow_mut().push(format!("start {n}"));
                if n == "base" {
                    release.now();
                    release.now();
                    svc_done.notified().await;
                } else if n == "svc" {
                    svc_done.notify_one();
                }
                log.borrow_mut().push(format!("end {n}"));
                Ok::<_, ()>(())
            }
        })
        .await;
        assert!(out.values().all(Outcome::is_success), "{out:?}");
        assert_eq!(
            log.into_inner(),
            [
                "start base",
                "start svc",
                "end svc",
                "end base",
                "start app",
                "end app"
            ]
        );
    }

    /// A node that fails after releasing: dependents already started answer for themselves,
    /// those not started (here `late`, which also waits for `slow`) are not started.
    #[tokio::test]
    async fn a_failure_after_a_release_stops_only_what_did_not_start() {
        let p = plan(&[
            ("base", &[]),
            ("slow", &[]),
            ("early", &["base"]),
            ("late", &["base", "slow"]),
        ]);
        let early_started = tokio::sync::Notify::new();
        let out = run(&p, 4, |n: String, release| {
            let early_started = &early_started;
            async move {
                match n.as_str() {
                    "base" => {
                        release.now();
                        early_started.notified().await;
                        Err(format!("{n} broke"))
                    }
                    "early" => {
                        early_started.notify_one();
                        Ok(())
                    }
                    "slow" => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(out["base"], Outcome::Failed("base broke".into()));
        assert_eq!(out["early"], Outcome::Succeeded(()));
        assert!(out["slow"].is_success());
        assert_eq!(
            out["late"],
            Outcome::NotStarted {
                because: "base".into()
            }
        );
    }

    #[tokio::test]
    async fn zero_jobs_means_one_and_empty_plans_finish() {
        let out = run(&Plan::default(), 0, |_n, _| async { Ok::<(), ()>(()) }).await;
        assert!(out.is_empty());
        let p = plan(&[("a", &[]), ("b", &["a"])]);
        let out = run(&p, 0, |n, _| async move { Ok::<_, ()>(n) }).await;
        assert_eq!(out["b"], Outcome::Succeeded("b".to_string()));
    }
}
