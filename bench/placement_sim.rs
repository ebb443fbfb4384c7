//! Placement simulation (issue 12): 300 images over 1, 2, 4 and 8 daemons, scheduled with the
//! real placement rule (`bk_build::pool::choose`) in dependency order, for each policy.
//!
//! Run: `cargo run --release --example placement-sim [SEED]`. Prints one Markdown table.
//!
//! Model (stated so the numbers can be judged):
//! - a project of 300 images: 6 bases, 30 mid-level images each `FROM` a base, 264 leaves each
//!   `FROM` a base or a mid-level image (seeded);
//! - a cold build takes a time drawn from a log-normal with median 2.2 s and σ = 0.6 (the
//!   per-target cold times measured on this machine's example monorepo, 2.1–2.5 s, with the
//!   spread of the 104-image scale run); a rebuild on the daemon that built the image last
//!   (a cache hit: only the changed steps run) takes 20 % of that, elsewhere the full time;
//! - each daemon has 4 slots (`-j 4`), and at most as many targets as `bake` starts at once
//!   (slots × 5 per daemon in a pool: room for the queues) run or wait; run 1 is cold (nothing recorded), run 2 rebuilds a
//!   seeded 40 % of the leaves after a one-file change each, with run 1's placement recorded.
//!
//! Makespan is simulated seconds; the hit rate is the share of run 2's builds placed on the
//! daemon that built them in run 1. The last two columns start run 2 from a run 1 on a single
//! daemon (a pool that grew): every result's cache is on daemon 0.

use std::collections::BTreeMap;

use bk_build::pool::{choose, Load, Policy, Preference, QUEUE_PER_SLOT};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

struct Image {
    base: Option<usize>,
    cold: f64,
}

fn project(rng: &mut Rng) -> Vec<Image> {
    // (how many, bases drawn from the first N images: none for the 6 bases, the 6 bases for
    // the 30 mid-level images, any of those 36 for the leaves)
    let mut v = Vec::new();
    for (count, from) in [(6, 0), (30, 6), (264, 36)] {
        for _ in 0..count {
            let base = (from > 0).then(|| rng.below(from));
            let cold = 2.2 * (0.6 * rng.normal()).exp();
            v.push(Image { base, cold });
        }
    }
    v
}

/// One run of the images in `todo` (indices, in dependency order), with `last` the daemon
/// that built each image before. Returns (makespan, hits, builds) and updates `last`.
fn run(
    images: &[Image],
    todo: &[usize],
    daemons: usize,
    slots: usize,
    policy: Policy,
    last: &mut BTreeMap<usize, usize>,
) -> (f64, usize, usize) {
    let in_run: std::collections::BTreeSet<usize> = todo.iter().copied().collect();
    let mut done_at: BTreeMap<usize, f64> = BTreeMap::new();
    let mut placed_on: BTreeMap<usize, usize> = BTreeMap::new();
    let mut loads = vec![
        Load {
            running: 0,
            slots,
            alive: true,
            queued: 0,
        };
        daemons
    ];
    // Running builds: (finish time, image, daemon).
    let mut running: Vec<(f64, usize, usize)> = Vec::new();
    let mut waiting: Vec<usize> = todo.to_vec();
    let mut now = 0.0f64;
    let (mut hits, mut builds) = (0, 0);
    let allowed = vec![true; daemons];
    while !waiting.is_empty() || !running.is_empty() {
        // Start every ready image that gets a slot, in order (as graph::run does); those
        // left waiting for the daemon that built them last count in its queue.
        for l in loads.iter_mut() {
            l.queued = 0;
        }
        // As `bake` runs them: at most this many targets at once, running or queued.
        let cap = if daemons > 1 {
            daemons * slots * (1 + QUEUE_PER_SLOT)
        } else {
            slots
        };
        let mut in_flight = running.len();
        let mut i = 0;
        while i < waiting.len() && in_flight < cap {
            let img = waiting[i];
            let ready = images[img]
                .base
                .is_none_or(|b| !in_run.contains(&b) || done_at.contains_key(&b));
            if !ready {
                i += 1;
                continue;
            }
            let preferred = Preference {
                last: last.get(&img).copied(),
                bases: images[img]
                    .base
                    .and_then(|b| placed_on.get(&b).or(last.get(&b)).copied())
                    .into_iter()
                    .collect(),
            };
            in_flight += 1;
            let Some(d) = choose(policy, &preferred, &allowed, &loads) else {
                if let Some(l) = preferred.last {
                    loads[l].queued += 1;
                }
                i += 1;
                continue;
            };
            let hit = last.get(&img) == Some(&d);
            let t = if hit {
                images[img].cold * 0.2
            } else {
                images[img].cold
            };
            hits += usize::from(hit);
            builds += 1;
            loads[d].running += 1;
            running.push((now + t, img, d));
            placed_on.insert(img, d);
            waiting.remove(i);
        }
        // Advance to the next finish.
        let Some(k) = (0..running.len()).min_by(|&a, &b| running[a].0.total_cmp(&running[b].0))
        else {
            break;
        };
        let (t, img, d) = running.swap_remove(k);
        now = t;
        loads[d].running -= 1;
        done_at.insert(img, t);
    }
    for (img, d) in placed_on {
        last.insert(img, d);
    }
    (now, hits, builds)
}

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let images = project(&mut rng);
    let all: Vec<usize> = (0..images.len()).collect();
    let changed: Vec<usize> = (36..images.len()).filter(|_| rng.unit() < 0.4).collect();
    println!(
        "300 images (seed {seed}), 4 slots per daemon; run 2 rebuilds {} leaves after a one-file change each",
        changed.len()
    );
    println!();
    println!("| daemons | policy | cold makespan | run 2 makespan | run 2 cache hits | run 2 after run 1 on one daemon | its hits |");
    println!("|---|---|---|---|---|---|---|");
    let pct = |h: usize, b: usize| format!("{:.0} % ({h}/{b})", 100.0 * h as f64 / b.max(1) as f64);
    for daemons in [1, 2, 4, 8] {
        for policy in Policy::ALL {
            let mut last = BTreeMap::new();
            let (cold, _, _) = run(&images, &all, daemons, 4, policy, &mut last);
            let (warm, hits, builds) = run(&images, &changed, daemons, 4, policy, &mut last);
            // A pool that grew: every result was built on daemon 0 last time.
            let mut grown = BTreeMap::new();
            run(&images, &all, 1, 4, policy, &mut grown);
            let (g, gh, gb) = run(&images, &changed, daemons, 4, policy, &mut grown);
            println!(
                "| {daemons} | {} | {cold:.1} s | {warm:.1} s | {} | {g:.1} s | {} |",
                policy.as_str(),
                pct(hits, builds),
                pct(gh, gb)
            );
        }
    }
}
