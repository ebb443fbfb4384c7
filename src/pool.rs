//! The daemons one run builds on, and which of them builds each target.
//!
//! A pool is the connected members of the daemons the user gave (`--addr` repeated, a comma
//! list in `$BUILDKIT_HOST`, or a project's `[builders.NAME]`), each with its worker ID (BuildKit's persistent ID of the
//! worker, i.e. of the cache store that makes a rebuild cheap), its native platforms and its
//! number of build slots. [`choose`] is the placement rule as a pure function of plain data,
//! so the runtime ([`Pool::acquire`]) and the simulation in `bench/` run the same code.
//!
//! This module must not know about Dockerfiles, fingerprints or sessions: callers say which
//! members a target prefers and which it may use.

use std::sync::Mutex;

use crate::transport::{Daemon, DaemonKind};

/// How a target's daemon is chosen among those it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The default: a target waits for the daemon that built it last (a rebuild there runs
    /// only the changed steps) unless [`QUEUE_PER_SLOT`] targets per slot already wait there;
    /// otherwise a daemon that built one of its bases when it has a free slot, else the least
    /// loaded one. Chosen from the simulation in BENCHMARKS.md: it keeps the cache hits of a
    /// rebuild, the cold makespan of `least-loaded`, and spreads a project whose results were
    /// all built on one daemon.
    Cache,
    /// The first preferred member whenever it has a free slot, else the least loaded member
    /// with a free slot.
    Spill,
    /// The first preferred member even when it is busy (the target waits for its slot); the
    /// least loaded one only when nothing is preferred.
    Affinity,
    /// The least loaded member with a free slot, ignoring where the cache is.
    LeastLoaded,
}

impl Policy {
    /// Every policy, for the simulation.
    pub const ALL: [Policy; 4] = [
        Policy::Cache,
        Policy::Spill,
        Policy::Affinity,
        Policy::LeastLoaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Cache => "cache",
            Policy::Spill => "spill",
            Policy::Affinity => "affinity",
            Policy::LeastLoaded => "least-loaded",
        }
    }
}

/// Where a target's cache most likely is: the member that built it last, then those that
/// built its bases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preference {
    pub last: Option<usize>,
    pub bases: Vec<usize>,
}

impl Preference {
    /// `last`, then `bases`, each once.
    fn ordered(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.last.into_iter().collect();
        for b in &self.bases {
            if !v.contains(b) {
                v.push(*b);
            }
        }
        v
    }
}

/// One member's load as [`choose`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Builds running there now.
    pub running: usize,
    /// Builds it may run at once (its `-j`).
    pub slots: usize,
    /// Still answering; a member that lost a build's connection is left out from then on.
    pub alive: bool,
    /// Targets waiting for a slot here because it built them last ([`Policy::Cache`]).
    pub queued: usize,
}

/// How many targets per slot may queue for the daemon that built them last before the next
/// one goes elsewhere ([`Policy::Cache`]): a rebuild where the cache is costs about a fifth of
/// one elsewhere (BENCHMARKS.md), so waiting behind up to four rebuilds per slot still wins.
pub const QUEUE_PER_SLOT: usize = 4;

impl Load {
    fn free(&self) -> bool {
        self.alive && self.running < self.slots
    }
}

/// The member to run a target on now, or `None` to wait for a slot (or, when no allowed
/// member is alive, for nothing: the caller checks [`any_alive`] first).
///
/// `allowed[i]` says whether the target may run on member `i` at all (native platforms, an
/// image only that member has). Ties in load go to the lower index, so the choice is
/// deterministic.
pub fn choose(
    policy: Policy,
    pref: &Preference,
    allowed: &[bool],
    loads: &[Load],
) -> Option<usize> {
    let ok = |i: usize| allowed.get(i).copied().unwrap_or(false) && loads[i].alive;
    let least_loaded = || {
        (0..loads.len())
            .filter(|&i| ok(i) && loads[i].free())
            // running/slots compared without division: a/b < c/d ⇔ a·d < c·b.
            .min_by(|&a, &b| {
                (loads[a].running * loads[b].slots.max(1))
                    .cmp(&(loads[b].running * loads[a].slots.max(1)))
                    .then(a.cmp(&b))
            })
    };
    let preferred = pref.ordered();
    let spill = |from: &[usize]| {
        from.iter()
            .copied()
            .find(|&i| ok(i) && loads[i].free())
            .or_else(least_loaded)
    };
    match policy {
        Policy::LeastLoaded => least_loaded(),
        Policy::Affinity => match preferred.iter().copied().find(|&i| ok(i)) {
            Some(i) => loads[i].free().then_some(i),
            None => least_loaded(),
        },
        Policy::Spill => spill(&preferred),
        Policy::Cache => match pref.last.filter(|&i| ok(i)) {
            Some(i) if loads[i].free() => Some(i),
            // Wait there while the queue is short; past that, a daemon idles behind it.
            Some(i) if loads[i].queued < QUEUE_PER_SLOT * loads[i].slots.max(1) => None,
            _ => spill(&pref.bases),
        },
    }
}

/// Whether some allowed member still answers.
pub fn any_alive(allowed: &[bool], loads: &[Load]) -> bool {
    loads.iter().zip(allowed).any(|(l, &a)| a && l.alive)
}

/// An address as given, with its `[builders]` name when it has one: `ADDR ([builders.NAME])`.
fn label(address: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{address} ([builders.{n}])"),
        None => address.to_string(),
    }
}

/// A connected daemon of the pool.
#[derive(Debug, Clone)]
pub struct Member {
    pub daemon: Daemon,
    /// The address as the user wrote it (for messages and `plan`).
    pub address: String,
    /// Its name in a project's `[builders.NAME]`; `None` for `--addr` and `$BUILDKIT_HOST`.
    pub name: Option<String>,
    /// BuildKit's worker ID: the same for as long as the daemon keeps its state, which is
    /// what "the daemon that holds this target's cache" means. `None` when the daemon did
    /// not list a worker.
    pub worker_id: Option<String>,
    /// Platforms the daemon builds natively (`os/arch[/variant]`): declared in `[builders]`,
    /// else those its workers report.
    pub platforms: Vec<String>,
    /// The platform it builds for when a build names none: its first worker's first reported
    /// platform (never a declared one).
    pub default_platform: Option<String>,
    /// Builds it runs at once.
    pub slots: usize,
}

impl Member {
    /// Its address as given, with its `[builders]` name when it has one: for messages.
    pub fn label(&self) -> String {
        label(&self.address, self.name.as_deref())
    }

    /// Whether the member is a Docker Engine (whose own image store a `FROM` without pull
    /// uses).
    pub fn is_docker_engine(&self) -> bool {
        matches!(self.daemon.kind, DaemonKind::DockerEngine { .. })
    }
}

/// The members and their live load; [`Pool::acquire`] hands out slots.
#[derive(Debug)]
pub struct Pool {
    members: Vec<Member>,
    policy: Policy,
    loads: Mutex<Vec<Load>>,
    freed: tokio::sync::Notify,
}

/// A slot on one member, given back when dropped.
#[derive(Debug)]
pub struct Lease<'a> {
    pool: &'a Pool,
    pub index: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Ok(mut l) = self.pool.loads.lock() {
            l[self.index].running = l[self.index].running.saturating_sub(1);
        }
        self.pool.freed.notify_waiters();
    }
}

/// A target counted in a member's [`Load::queued`] while it waits in [`Pool::acquire`].
struct Queued<'a> {
    pool: &'a Pool,
    at: Option<usize>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let (Some(q), Ok(mut l)) = (self.at.take(), self.pool.loads.lock()) {
            l[q].queued = l[q].queued.saturating_sub(1);
        }
    }
}

impl Pool {
    /// A pool of `members` (at least one, in the order the user gave them).
    pub fn new(members: Vec<Member>, policy: Policy) -> Pool {
        let loads = members
            .iter()
            .map(|m| Load {
                running: 0,
                slots: m.slots.max(1),
                alive: true,
                queued: 0,
            })
            .collect();
        Pool {
            members,
            policy,
            loads: Mutex::new(loads),
            freed: tokio::sync::Notify::new(),
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// The member whose worker ID is `id`.
    pub fn by_worker(&self, id: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.worker_id.as_deref() == Some(id))
    }

    /// Slots over all members: how many builds the run starts at once.
    pub fn total_slots(&self) -> usize {
        self.members.iter().map(|m| m.slots.max(1)).sum()
    }

    /// Leaves member `i` out from now on (it stopped answering).
    pub fn mark_down(&self, i: usize) {
        if let Ok(mut l) = self.loads.lock() {
            l[i].alive = false;
        }
        self.freed.notify_waiters();
    }

    /// Whether some member `allowed` marks is still alive.
    pub fn any_alive(&self, allowed: &[bool]) -> bool {
        self.loads
            .lock()
            .map(|l| any_alive(allowed, &l))
            .unwrap_or(false)
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.loads.lock().map(|l| l[i].alive).unwrap_or(false)
    }

    /// Waits for a slot on the member [`choose`] picks; `None` when no allowed member is
    /// alive any more.
    pub async fn acquire(&self, pref: &Preference, allowed: &[bool]) -> Option<Lease<'_>> {
        // The member this target is counted as queued at, while it waits there (given back
        // if the wait is dropped too).
        let mut queued_at = Queued {
            pool: self,
            at: None,
        };
        loop {
            // Registered before looking, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut loads = self.loads.lock().ok()?;
                if let Some(q) = queued_at.at.take() {
                    loads[q].queued -= 1;
                }
                if !any_alive(allowed, &loads) {
                    return None;
                }
                if let Some(i) = choose(self.policy, pref, allowed, &loads) {
                    loads[i].running += 1;
                    return Some(Lease {
                        pool: self,
                        index: i,
                    });
                }
                if let Some(i) = pref.last.filter(|&i| loads[i].alive) {
                    loads[i].queued += 1;
                    queued_at.at = Some(i);
                }
            }
            // Another target queued there may take a slot elsewhere now: look again then too.
            freed.await;
        }
    }
}

/// One daemon to connect to, as the user gave it: `--addr` (with the `--tls*` flags), a
/// `$BUILDKIT_HOST` item, or a project's `[builders.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub addr: String,
    pub tls: crate::transport::TlsOptions,
    /// Its slots; `None`: `-j`, else [`default_jobs`].
    pub jobs: Option<usize>,
    /// Its native platforms; empty: those its workers report.
    pub platforms: Vec<String>,
    /// Its name in a project's `[builders.NAME]`; `None` for `--addr` and `$BUILDKIT_HOST`.
    pub name: Option<String>,
    /// Where it was given, for its errors (`[builders.NAME] in FILE`); `None` for `--addr`
    /// and `$BUILDKIT_HOST`.
    pub origin: Option<String>,
}

/// A daemon's settings are wrong (an address that does not parse, TLS files missing or not
/// going together): the user's mistake, never a daemon that is merely down, so it stops the
/// run instead of shrinking the pool.
fn is_setting_error(e: &crate::transport::TransportError) -> bool {
    use crate::transport::TransportError as T;
    matches!(e, T::BadAddress { .. } | T::Tls(_) | T::TlsFile { .. })
}

/// Connects to every daemon at once. One that does not answer is left out with a warning
/// (returned), as long as another does; with a single one (or none: discovery) its error is
/// the answer, as before pools existed. `jobs` (`-j`) is each member's slot count when given;
/// else the spec's, else [`default_jobs`].
///
/// Errors: no daemon answered (every one's error).
pub async fn connect(
    specs: &[Spec],
    discovery_tls: &crate::transport::TlsOptions,
    timeout: std::time::Duration,
    jobs: Option<usize>,
) -> Result<Connected, crate::transport::TransportError> {
    use crate::transport::{self, TransportError};
    if specs.len() <= 1 {
        let (addr, tls) = match specs.first() {
            Some(s) => (Some(s.addr.as_str()), &s.tls),
            None => (None, discovery_tls),
        };
        let d = match transport::connect(addr, tls, timeout).await {
            Ok(d) => d,
            Err(e) => match specs.first().and_then(|s| s.origin.as_ref()) {
                // Only a wrong setting is the keys' fault; a daemon that is down is not.
                Some(o) if is_setting_error(&e) => {
                    return Err(TransportError::Failed(format!(
                        "{o} (its addr and tls* keys): {e}"
                    )))
                }
                Some(o) => return Err(TransportError::Failed(format!("{o}: {e}"))),
                None => return Err(e),
            },
        };
        let address = addr.map_or_else(|| d.address.to_string(), str::to_string);
        let spec = specs.first().cloned().unwrap_or_default();
        let m = member(d, address, &spec, jobs).await;
        return Ok(Connected {
            pool: Pool::new(vec![m], Policy::Cache),
            warnings: Vec::new(),
            left_out: Vec::new(),
        });
    }
    let tries = specs.iter().map(|s| async move {
        let r = async {
            let address = transport::Address::parse(&s.addr)?;
            transport::connect_address(address, &s.tls, timeout).await
        }
        .await;
        (s, r)
    });
    let answers = futures_util::future::join_all(tries).await;
    let mut members: Vec<Member> = Vec::new();
    let mut warnings = Vec::new();
    let mut left_out = Vec::new();
    let mut errors = Vec::new();
    for (spec, r) in answers {
        let a = &spec.addr;
        match r {
            Ok(d) => {
                let m = member(d, a.clone(), spec, jobs).await;
                // The same daemon under two addresses (a socket and `docker://`): one member,
                // or it would get twice the builds.
                if let Some(same) = members
                    .iter()
                    .find(|o| o.worker_id.is_some() && o.worker_id == m.worker_id)
                {
                    warnings.push(format!(
                        "{} is the same daemon as {} (BuildKit worker {}): used once, with the settings (jobs, platforms) of {}",
                        m.label(),
                        same.label(),
                        m.worker_id.as_deref().unwrap_or_default(),
                        same.label()
                    ));
                    continue;
                }
                members.push(m);
            }
            Err(e) if is_setting_error(&e) => {
                let o = spec
                    .origin
                    .as_ref()
                    .map_or_else(|| a.clone(), |o| format!("{o} (its addr and tls* keys)"));
                return Err(TransportError::Failed(format!(
                    "{o}: {e}\nFix the setting (a daemon that is down is left out of the pool; a wrong setting is not)."
                )));
            }
            Err(e) => {
                let a = label(a, spec.name.as_deref());
                warnings.push(format!("{a} left out of this run: {e}"));
                left_out.push(a.clone());
                errors.push(format!("  {a}: {e}"));
            }
        }
    }
    if members.is_empty() {
        return Err(TransportError::NoDaemon(format!(
            "none of the {} BuildKit daemons answered:\n{}",
            specs.len(),
            errors.join("\n")
        )));
    }
    Ok(Connected {
        pool: Pool::new(members, Policy::Cache),
        warnings,
        left_out,
    })
}

/// What [`connect`] made of the specs.
#[derive(Debug)]
pub struct Connected {
    pub pool: Pool,
    /// For the user: daemons left out, or used once under two addresses.
    pub warnings: Vec<String>,
    /// The daemons that did not answer (their address, and `[builders]` name if any).
    pub left_out: Vec<String>,
}

/// The member `daemon` makes, given as `spec`; `jobs` (`-j`) wins over the spec's.
async fn member(daemon: Daemon, address: String, spec: &Spec, jobs: Option<usize>) -> Member {
    let workers = crate::client::workers(&daemon).await.unwrap_or_default();
    let first = workers.into_iter().next();
    let platforms = spec.platforms.clone();
    let slots = match jobs.or(spec.jobs) {
        Some(j) => j.max(1),
        None => default_jobs(&daemon).await,
    };
    Member {
        address,
        name: spec.name.clone(),
        worker_id: first.as_ref().map(|w| w.id.clone()),
        default_platform: first.as_ref().and_then(|w| w.platforms.first().cloned()),
        platforms: if platforms.is_empty() {
            first.map(|w| w.platforms).unwrap_or_default()
        } else {
            platforms
        },
        slots,
        daemon,
    }
}

/// Builds in flight per CPU of a daemon by default. Measured (`python3 bench/jobs.py`,
/// BENCHMARKS.md "How many builds at once"): on the 14-image monorepo, 2 CPUs, `-j` of 1× the
/// CPUs was 1.03–1.10× `docker buildx bake` (cold) and 1.02–1.06× (a base file changed), 2×
/// was 0.97× / 0.96×, 4× 1.01× / 0.86×, and every target at once 0.97× / 0.86×, while the
/// client's memory grows with builds in flight (34 → 65 MiB). BuildKit schedules the steps
/// itself; what `-j` bounds is how many builds wait on latency (context sync, image resolution,
/// export) at once, so it pays to keep more of them in flight than there are CPUs.
pub const JOBS_PER_CPU: usize = 4;

/// The default `-j` of a daemon: [`JOBS_PER_CPU`] × [`cpus`].
pub async fn default_jobs(d: &Daemon) -> usize {
    JOBS_PER_CPU * cpus(d).await
}

/// A daemon's CPU count where it says (a Docker Engine, through its API); BuildKit does not,
/// so for buildkitd (usually on this machine or one like it) this machine's stands in.
pub async fn cpus(d: &Daemon) -> usize {
    let local = || {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    };
    match (&d.kind, &d.address) {
        (DaemonKind::DockerEngine { .. }, crate::transport::Address::Docker(host)) => {
            crate::transport::docker_engine_cpus(host)
                .await
                .unwrap_or_else(|_| local())
        }
        _ => local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(v: &[(usize, usize)]) -> Vec<Load> {
        v.iter()
            .map(|&(running, slots)| Load {
                running,
                slots,
                alive: true,
                queued: 0,
            })
            .collect()
    }

    #[test]
    fn spill_keeps_the_cache_while_its_member_has_room() {
        let p = Preference {
            last: Some(1),
            bases: vec![],
        };
        let l = loads(&[(0, 2), (1, 2)]);
        assert_eq!(choose(Policy::Spill, &p, &[true, true], &l), Some(1));
        let full = loads(&[(0, 2), (2, 2)]);
        assert_eq!(choose(Policy::Spill, &p, &[true, true], &full), Some(0));
        // Nothing free anywhere: wait.
        let busy = loads(&[(2, 2), (2, 2)]);
        assert_eq!(choose(Policy::Spill, &p, &[true, true], &busy), None);
    }

    #[test]
    fn cache_stops_waiting_behind_a_long_queue() {
        let p = Preference {
            last: Some(1),
            bases: vec![],
        };
        let mut l = loads(&[(0, 2), (2, 2)]);
        l[1].queued = QUEUE_PER_SLOT * 2 - 1;
        assert_eq!(choose(Policy::Cache, &p, &[true, true], &l), None);
        l[1].queued += 1;
        assert_eq!(choose(Policy::Cache, &p, &[true, true], &l), Some(0));
    }

    #[test]
    fn affinity_waits_for_the_preferred_member() {
        let full = loads(&[(0, 2), (2, 2)]);
        let p = Preference {
            last: None,
            bases: vec![1],
        };
        assert_eq!(choose(Policy::Affinity, &p, &[true, true], &full), None);
        assert_eq!(
            choose(
                Policy::Affinity,
                &Preference::default(),
                &[true, true],
                &full
            ),
            Some(0)
        );
    }

    #[test]
    fn cache_waits_for_the_last_builder_but_not_for_a_base_s() {
        let full = loads(&[(0, 2), (2, 2)]);
        let last = Preference {
            last: Some(1),
            bases: vec![],
        };
        assert_eq!(choose(Policy::Cache, &last, &[true, true], &full), None);
        let base = Preference {
            last: None,
            bases: vec![1],
        };
        assert_eq!(choose(Policy::Cache, &base, &[true, true], &full), Some(0));
        // The last builder is down or not allowed: the base's rule applies.
        let both = Preference {
            last: Some(1),
            bases: vec![0],
        };
        assert_eq!(choose(Policy::Cache, &both, &[true, false], &full), Some(0));
    }

    #[test]
    fn least_loaded_compares_shares_of_slots_and_breaks_ties_by_order() {
        // 1 of 4 is less loaded than 1 of 2.
        let l = loads(&[(1, 2), (1, 4)]);
        let p = Preference {
            last: Some(0),
            bases: vec![],
        };
        assert_eq!(choose(Policy::LeastLoaded, &p, &[true, true], &l), Some(1));
        let even = loads(&[(0, 2), (0, 2)]);
        assert_eq!(
            choose(
                Policy::LeastLoaded,
                &Preference::default(),
                &[true, true],
                &even
            ),
            Some(0)
        );
    }

    #[test]
    fn members_not_allowed_or_down_are_never_chosen() {
        let mut l = loads(&[(0, 2), (0, 2), (0, 2)]);
        let p0 = Preference {
            last: Some(0),
            bases: vec![],
        };
        let p1 = Preference {
            last: Some(1),
            bases: vec![],
        };
        assert_eq!(
            choose(Policy::Spill, &p0, &[false, true, true], &l),
            Some(1)
        );
        l[1].alive = false;
        for policy in Policy::ALL {
            assert_eq!(
                choose(policy, &p1, &[false, true, true], &l),
                Some(2),
                "{policy:?}"
            );
        }
        assert!(!any_alive(&[false, true, false], &l));
    }
}
