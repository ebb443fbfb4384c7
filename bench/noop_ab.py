#!/usr/bin/env python3
"""noop_ab.py - the no-op monorepo row against the lstat floor, interleaved.

Alternates, N times (default 15): one no-op `bk-build bake --progress quiet` in the generated
monorepo (every target already built and unchanged) and one readdir + lstat walk of the floor
tool over the same input directories (2 threads); then one more run with BK_BUILD_TIMINGS for
the phases. Interleaving keeps the ratio meaningful while the machine's speed drifts.

usage: python3 bench/noop_ab.py [N]   (after `bash bench/run.sh --only mono` built the tree,
with the test daemon's environment: `source $BKENV/env.sh`)
Environment: BKBENCH_DIR (default /tmp/bkbench), BK (default target/release/bk-build).
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("BKBENCH_DIR", "/tmp/bkbench"))
BK = os.environ.get("BK", str(HERE.parent / "target/release/bk-build"))
FLOOR = str(HERE / "floor/target/release/bkbench-floor")
TREE = WORK / "mono"


def roots():
    out = set()
    for line in (TREE / "images.txt").read_text().splitlines():
        if line.strip():
            _, ctx, _, named = line.split()
            out.add(ctx)
            if named != "-":
                out.add(named.split("=", 1)[1])
    return sorted(out)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    subprocess.run([BK, "bake", "--progress", "quiet"], cwd=TREE, check=True)  # settle
    bk, floor = [], []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([BK, "bake", "--progress", "quiet"], cwd=TREE, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bk.append(time.perf_counter() - t)
        r = subprocess.run([FLOOR, "--threads", "2", "--repeat", "1", *roots()], cwd=TREE,
                           capture_output=True, text=True, check=True)
        floor.append(json.loads(r.stdout.strip().splitlines()[-1])["walk_s"][0])
    print(f"bk-build no-op: min {min(bk) * 1e3:.1f} ms, median {statistics.median(bk) * 1e3:.1f} ms")
    print(f"floor walk:     min {min(floor) * 1e3:.1f} ms, median {statistics.median(floor) * 1e3:.1f} ms")
    print(f"ratio: {min(bk) / min(floor):.2f}x (min), "
          f"{statistics.median(bk) / statistics.median(floor):.2f}x (median)")
    r = subprocess.run([BK, "bake", "--progress", "quiet"], cwd=TREE, capture_output=True,
                       text=True, env=dict(os.environ, BK_BUILD_TIMINGS="1"))
    print("phases: " + " | ".join(l.split("]", 1)[1].strip()
                                  for l in r.stderr.splitlines() if "[timing]" in l))


if __name__ == "__main__":
    main()
