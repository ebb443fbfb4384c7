//! Opt-in phase timings for profiling: with `BK_BUILD_TIMINGS=1`, [`mark`] prints the time
//! since start-up and a label to stderr. Off by default, costs one atomic load per mark.
//! This module knows nothing about what the phases are; callers name them.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Option<Instant>> = OnceLock::new();

/// Starts the clock (call first thing in `main`); a no-op unless `BK_BUILD_TIMINGS` is set.
pub fn start() {
    START.get_or_init(|| {
        std::env::var_os("BK_BUILD_TIMINGS")
            .filter(|v| !v.is_empty() && v != "0")
            .map(|_| Instant::now())
    });
}

/// Whether timings are on (for marks whose label costs something to build).
pub fn on() -> bool {
    matches!(START.get(), Some(Some(_)))
}

/// Prints `label` with the milliseconds since [`start`], if timings are on.
pub fn mark(label: &str) {
    if let Some(Some(t0)) = START.get() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "[timing] {:8.2} ms  {label}",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}
