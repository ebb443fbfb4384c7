#!/usr/bin/env bash
# first-run.sh - what a newcomer waits for: clone → first build of the example monorepo
# (`bash scripts/run-example.sh`), then → the whole test suite green (`bash scripts/test.sh`),
# each from a fresh clone with an empty target directory. Prints one line per step and a JSON
# summary; BENCHMARKS.md's "First run" section is written from it by hand.
#
# usage: bash bench/first-run.sh [--example-only]
# The cargo registry cache (~/.cargo/registry) is used as it is: downloads are not what this
# measures. The daemon is started first (scripts/bkenv/up.sh) so its one-time image download is
# not counted either. Run it on a quiet machine: other work on the cores inflates every figure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = -h ] || [ "${1:-}" = --help ] && { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

bash scripts/bkenv/up.sh >/dev/null
dir=$(mktemp -d /tmp/bk-first-run.XXXXXX)
trap 'rm -rf "$dir"' EXIT
git clone -q "$PWD" "$dir/bk-build"
cd "$dir/bk-build"
unset CARGO_TARGET_DIR

now() { date +%s.%N; }
t0=$(now)
bash scripts/run-example.sh --progress quiet >"$dir/example.log" 2>&1 ||
  { tail -20 "$dir/example.log" >&2; exit 1; }
t1=$(now)
first_build=$(python3 -c "print(round($t1 - $t0, 1))")
echo "[first-run] clone → first build: ${first_build} s" >&2
tests=null
if [ "${1:-}" != --example-only ]; then
  bash scripts/test.sh >"$dir/test.log" 2>&1 || { tail -30 "$dir/test.log" >&2; exit 1; }
  t2=$(now)
  tests=$(python3 -c "print(round($t2 - $t1, 1))")
  echo "[first-run] then → tests green: ${tests} s" >&2
fi
bin=$(stat -c %s target/release/bk-build)
echo "{\"commit\":\"$(git rev-parse --short HEAD)\",\"cpus\":$(nproc),\"first_build_s\":$first_build,\"tests_after_s\":$tests,\"release_binary_bytes\":$bin}"
