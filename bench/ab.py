#!/usr/bin/env python3
"""ab.py - one bk-build row against its floor, interleaved run by run.

  python3 bench/ab.py fresh [N]  fresh-runner `bk-build bake` (a new `git clone`, untimed, so no
                                 .bk-build/; a new TAG; every image already in the registry: all
                                 re-tagged) against the floor's read + blake3 of the same inputs
                                 (default N = 7)
  python3 bench/ab.py noop [N]   no-op `bk-build bake` in the built monorepo against the floor's
                                 readdir + lstat walk (default N = 15)

Each pair runs bk-build, then `bkbench-floor --threads 2` over the same input directories, so
the ratio holds while the machine's speed drifts (on the shared 2-core benchmark machine the
floor alone moved 3x within a day). Prints both series, the medians, their ratio, and the
phases (BK_BUILD_TIMINGS) of one more bk-build run. Set the trees up first with
`bash bench/run.sh --only fresh` / `--only mono`, and run with the test daemon's environment
(`source $BKENV/env.sh`). Environment: BKBENCH_DIR (default /tmp/bkbench), BK (default
target/release/bk-build).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("BKBENCH_DIR", "/tmp/bkbench"))
BK = os.environ.get("BK", str(HERE.parent / "target/release/bk-build"))
FLOOR = str(HERE / "floor/target/release/bkbench-floor")


def roots(tree):
    out = set()
    for line in (tree / "images.txt").read_text().splitlines():
        if line.strip():
            _, ctx, _, named = line.split()
            out.add(ctx)
            if named != "-":
                out.add(named.split("=", 1)[1])
    return sorted(out)


def bake(tree, env, check=True):
    r = subprocess.run([BK, "bake", "--progress", "quiet"], cwd=tree, env=env,
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"bk-build bake failed:\n{r.stderr[-3000:]}")
    return r


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("fresh", "noop"):
        sys.exit(__doc__)
    kind = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else (7 if kind == "fresh" else 15)
    tree = WORK / ("fresh" if kind == "fresh" else "mono")
    floor_key = "hash_s" if kind == "fresh" else "walk_s"

    def env():
        if kind == "noop":
            return dict(os.environ)
        # A fresh runner: a new clone (no client state) and a new tag (a new commit).
        origin = WORK / "fresh-origin"
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "clone", "-q", str(origin), str(tree)], check=True)
        return dict(os.environ, BUILDX_NO_DEFAULT_ATTESTATIONS="1",
                    TAG=f"ab{time.time_ns()}")

    if kind == "noop":
        bake(tree, env())  # settle: the runs that follow are no-ops
    bk, floor = [], []
    for _ in range(n):
        e = env()
        t = time.perf_counter()
        bake(tree, e)
        bk.append(time.perf_counter() - t)
        r = subprocess.run([FLOOR, "--threads", "2", "--repeat", "1", *roots(tree)], cwd=tree,
                           capture_output=True, text=True, check=True)
        floor.append(json.loads(r.stdout.strip().splitlines()[-1])[floor_key][0])
    ms = lambda xs: " ".join(f"{x * 1e3:.0f}" for x in xs)
    print(f"bk-build {kind} (ms): {ms(bk)}")
    print(f"floor {floor_key} (ms): {ms(floor)}")
    print(f"min {min(bk) * 1e3:.1f} vs {min(floor) * 1e3:.1f} ms: {min(bk) / min(floor):.2f}x; "
          f"median {statistics.median(bk) * 1e3:.1f} vs {statistics.median(floor) * 1e3:.1f} ms: "
          f"{statistics.median(bk) / statistics.median(floor):.2f}x")
    r = bake(tree, dict(env(), BK_BUILD_TIMINGS="1"))
    print("phases: " + " | ".join(l.split("]", 1)[1].strip()
                                  for l in r.stderr.splitlines() if "[timing]" in l))


if __name__ == "__main__":
    main()
