#!/usr/bin/env bash
# run.sh - the one command behind BENCHMARKS.md: start the test daemon, build bk-build and the
# floor tool, then run every scenario (bench/bench.py; workloads from bench/workload.py) and
# rewrite BENCHMARKS.md.
#
# usage: bash bench/run.sh [--quick] [--runs N] [--only mono,ctx,scale,fresh,floor]
#                          [--tools bk,bkj,bake,seed,buildx,tar] [--merge] [--md FILE]
#   --quick  smaller trees and 2 runs per case (smoke test; writes $BKBENCH_DIR/quick/BENCHMARKS.md)
# Environment: BKBENCH_DIR (generated trees, logs, raw results; default /tmp/bkbench).
# Full run: ~45 min on 2 cores. Needs root (the test daemon), GNU time, make, tar, python3 >= 3.9.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = -h ] || [ "${1:-}" = --help ] && { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

if [ ! -x /usr/bin/time ]; then
  echo "[bench] installing GNU time (peak RSS)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
fi
for t in make tar python3 cargo; do
  command -v "$t" >/dev/null || { echo "[bench] $t is required" >&2; exit 1; }
done

# Only the primary engine: the TLS engine and sshd the tests use would only add noise.
BKENV_NO_TLS=1 bash scripts/bkenv/up.sh >/dev/null
# shellcheck disable=SC1091
source "${BKENV:-/tmp/bkenv}/env.sh"

echo "[bench] cargo build --release (bk-build)" >&2
if ! cargo build --release --quiet; then
  # The benchmark still measures the competitors; bk-build's rows then say why they are missing.
  echo "[bench] WARNING: cargo build --release failed; bk-build scenarios will be skipped" >&2
  export BKBENCH_NO_BK="cargo build --release failed"
fi
echo "[bench] cargo build --release (bench/floor)" >&2
(cd bench/floor && cargo build --release --quiet)

exec python3 bench/bench.py --command "bash bench/run.sh${*:+ $*}" "$@"
