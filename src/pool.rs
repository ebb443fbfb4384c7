//! The daemons one run builds on, and which of them builds each target.
//!
//! A pool is the connected members of the addresses the user gave (`--addr` repeated, a
//! comma list in `$BUILDKIT_HOST`), each with its worker ID (BuildKit's persistent ID of the
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
    /// The first preferred member (the one that built the target last, else one that built a
    /// base) whenever it has a free slot; else the least loaded member with a free slot. The
    /// default: it keeps cache hits while no member idles behind a busy one.
    Spill,
    /// The first preferred member even when it is busy (the target waits for its slot); the
    /// least loaded one only when nothing is preferred.
    Affinity,
    /// The least loaded member with a free slot, ignoring where the cache is.
    LeastLoaded,
}

impl Policy {
    /// Every policy, for the simulation.
    pub const ALL: [Policy; 3] = [Policy::Spill, Policy::Affinity, Policy::LeastLoaded];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Spill => "spill",
            Policy::Affinity => "affinity",
            Policy::LeastLoaded => "least-loaded",
        }
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
}

impl Load {
    fn free(&self) -> bool {
        self.alive && self.running < self.slots
    }
}

/// The member to run a target on now, or `None` to wait for a slot (or, when no allowed
/// member is alive, for nothing: the caller checks [`any_alive`] first).
///
/// `preferred` lists members in order of preference (where the cache most likely is);
/// `allowed[i]` says whether the target may run on member `i` at all (native platforms, an
/// image only that member has). Ties in load go to the lower index, so the choice is
/// deterministic.
pub fn choose(
    policy: Policy,
    preferred: &[usize],
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
    let first_preferred = preferred.iter().copied().find(|&i| ok(i));
    match policy {
        Policy::LeastLoaded => least_loaded(),
        Policy::Affinity => match first_preferred {
            Some(i) => loads[i].free().then_some(i),
            None => least_loaded(),
        },
        Policy::Spill => preferred
            .iter()
            .copied()
            .find(|&i| ok(i) && loads[i].free())
            .or_else(least_loaded),
    }
}

/// Whether some allowed member still answers.
pub fn any_alive(allowed: &[bool], loads: &[Load]) -> bool {
    loads.iter().zip(allowed).any(|(l, &a)| a && l.alive)
}

/// A connected daemon of the pool.
#[derive(Debug, Clone)]
pub struct Member {
    pub daemon: Daemon,
    /// The address as the user wrote it (for messages and `plan`).
    pub address: String,
    /// BuildKit's worker ID: the same for as long as the daemon keeps its state, which is
    /// what "the daemon that holds this target's cache" means. `None` when the daemon did
    /// not list a worker.
    pub worker_id: Option<String>,
    /// Platforms the daemon builds natively (`os/arch[/variant]`, its first is its default).
    pub platforms: Vec<String>,
    /// Builds it runs at once.
    pub slots: usize,
}

impl Member {
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

impl Pool {
    /// A pool of `members` (at least one, in the order the user gave them).
    pub fn new(members: Vec<Member>, policy: Policy) -> Pool {
        let loads = members
            .iter()
            .map(|m| Load {
                running: 0,
                slots: m.slots.max(1),
                alive: true,
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
    pub async fn acquire(&self, preferred: &[usize], allowed: &[bool]) -> Option<Lease<'_>> {
        loop {
            // Registered before looking, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut loads = self.loads.lock().ok()?;
                if !any_alive(allowed, &loads) {
                    return None;
                }
                if let Some(i) = choose(self.policy, preferred, allowed, &loads) {
                    loads[i].running += 1;
                    return Some(Lease {
                        pool: self,
                        index: i,
                    });
                }
            }
            freed.await;
        }
    }
}

/// Connects to every address at once. One that does not answer is left out with a warning
/// (returned), as long as another does; with a single address its error is the answer, as
/// before pools existed. `jobs` (`-j`) is each member's slot count when given; else a Docker
/// Engine's CPU count (Engine API), else this machine's (buildkitd does not report its own).
///
/// Errors: no address answered (the first one's error, with the others').
pub async fn connect(
    addrs: &[String],
    tls: &crate::transport::TlsOptions,
    timeout: std::time::Duration,
    jobs: Option<usize>,
) -> Result<(Pool, Vec<String>), crate::transport::TransportError> {
    use crate::transport::{self, TransportError};
    if addrs.len() <= 1 {
        let d = transport::connect(addrs.first().map(String::as_str), tls, timeout).await?;
        let address = addrs
            .first()
            .cloned()
            .unwrap_or_else(|| d.address.to_string());
        let m = member(d, address, jobs).await;
        return Ok((Pool::new(vec![m], Policy::Spill), Vec::new()));
    }
    let none = &transport::TlsOptions::default();
    let tries = addrs.iter().map(|a| async move {
        // The --tls* flags are for the pool's tcp:// members; a socket takes none.
        let t = if a.starts_with("tcp://") || a.starts_with("docker://tcp://") {
            tls
        } else {
            none
        };
        let r = async {
            let address = transport::Address::parse(a)?;
            transport::connect_address(address, t, timeout).await
        }
        .await;
        (a.clone(), r)
    });
    let answers = futures_util::future::join_all(tries).await;
    let mut members = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for (a, r) in answers {
        match r {
            Ok(d) => members.push(member(d, a, jobs).await),
            Err(e) => {
                warnings.push(format!("{a} left out of this run: {e}"));
                errors.push(format!("  {a}: {e}"));
            }
        }
    }
    if members.is_empty() {
        return Err(TransportError::NoDaemon(format!(
            "none of the {} BuildKit daemons answered:\n{}",
            addrs.len(),
            errors.join("\n")
        )));
    }
    Ok((Pool::new(members, Policy::Spill), warnings))
}

async fn member(daemon: Daemon, address: String, jobs: Option<usize>) -> Member {
    let workers = crate::client::workers(&daemon).await.unwrap_or_default();
    let first = workers.into_iter().next();
    let slots = match jobs {
        Some(j) => j.max(1),
        None => cpus(&daemon).await,
    };
    Member {
        address,
        worker_id: first.as_ref().map(|w| w.id.clone()),
        platforms: first.map(|w| w.platforms).unwrap_or_default(),
        slots,
        daemon,
    }
}

/// The daemon's CPU count where it says (a Docker Engine, through its API), else this
/// machine's.
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
            })
            .collect()
    }

    #[test]
    fn spill_keeps_the_cache_while_its_member_has_room() {
        let l = loads(&[(0, 2), (1, 2)]);
        assert_eq!(choose(Policy::Spill, &[1], &[true, true], &l), Some(1));
        let full = loads(&[(0, 2), (2, 2)]);
        assert_eq!(choose(Policy::Spill, &[1], &[true, true], &full), Some(0));
        // Nothing free anywhere: wait.
        let busy = loads(&[(2, 2), (2, 2)]);
        assert_eq!(choose(Policy::Spill, &[1], &[true, true], &busy), None);
    }

    #[test]
    fn affinity_waits_for_the_preferred_member() {
        let full = loads(&[(0, 2), (2, 2)]);
        assert_eq!(choose(Policy::Affinity, &[1], &[true, true], &full), None);
        assert_eq!(choose(Policy::Affinity, &[], &[true, true], &full), Some(0));
    }

    #[test]
    fn least_loaded_compares_shares_of_slots_and_breaks_ties_by_order() {
        // 1 of 4 is less loaded than 1 of 2.
        let l = loads(&[(1, 2), (1, 4)]);
        assert_eq!(
            choose(Policy::LeastLoaded, &[0], &[true, true], &l),
            Some(1)
        );
        let even = loads(&[(0, 2), (0, 2)]);
        assert_eq!(
            choose(Policy::LeastLoaded, &[], &[true, true], &even),
            Some(0)
        );
    }

    #[test]
    fn members_not_allowed_or_down_are_never_chosen() {
        let mut l = loads(&[(0, 2), (0, 2), (0, 2)]);
        assert_eq!(
            choose(Policy::Spill, &[0], &[false, true, true], &l),
            Some(1)
        );
        l[1].alive = false;
        assert_eq!(
            choose(Policy::Spill, &[1], &[false, true, true], &l),
            Some(2)
        );
        assert_eq!(
            choose(Policy::Affinity, &[1], &[false, true, true], &l),
            Some(2)
        );
        assert!(!any_alive(&[false, true, false], &l));
    }
}
