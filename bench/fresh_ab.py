#!/usr/bin/env python3
"""fresh_ab.py - the fresh-runner row against its floor, interleaved.

Alternates, N times: one fresh-runner `bk-build bake` (no .bk-build/, a new TAG, everything
already in the registry, so every target is re-tagged) and one read + blake3 pass of the floor
tool over the same input directories (2 threads). Interleaving makes the ratio hold when the
machine's speed drifts during a run (on the shared 2-core benchmark machine the floor alone
moved between 80 and 360 ms within a day). Prints both series, the medians and their ratio,
and bk-build's phase times (BK_BUILD_TIMINGS) of the median run.

usage: python3 bench/fresh_ab.py [N]   (after `bash bench/run.sh --only fresh` set the tree up)
Environment: BKBENCH_DIR (default /tmp/bkbench), BK (default target/release/bk-build).
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
TREE = WORK / "fresh"


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
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    bk, floor, phases = [], [], []
    for i in range(n):
        shutil.rmtree(TREE / ".bk-build", ignore_errors=True)
        env = dict(os.environ, BUILDX_NO_DEFAULT_ATTESTATIONS="1", BK_BUILD_TIMINGS="1",
                   TAG=f"ab{int(time.time())}{i}")
        t = time.perf_counter()
        r = subprocess.run([BK, "bake", "--progress", "quiet"], cwd=TREE, env=env,
                           capture_output=True, text=True)
        bk.append(time.perf_counter() - t)
        if r.returncode != 0:
            sys.exit(f"bk-build bake failed:\n{r.stderr[-3000:]}")
        phases.append(" | ".join(l.split("]", 1)[1].strip()
                                 for l in r.stderr.splitlines() if "[timing]" in l))
        r = subprocess.run([FLOOR, "--threads", "2", "--repeat", "1", *roots()], cwd=TREE,
                           capture_output=True, text=True, check=True)
        floor.append(json.loads(r.stdout.strip().splitlines()[-1])["hash_s"][0])
    ms = lambda xs: " ".join(f"{x * 1e3:.0f}" for x in xs)
    print(f"bk-build fresh runner (ms): {ms(bk)}")
    print(f"floor read+blake3 (ms):     {ms(floor)}")
    mb, mf = statistics.median(bk), statistics.median(floor)
    pair = statistics.median(a / b for a, b in zip(bk, floor))
    print(f"median {mb * 1e3:.0f} ms vs {mf * 1e3:.0f} ms: {mb / mf:.2f}x (median of pairs {pair:.2f}x)")
    order = sorted(range(n), key=lambda i: bk[i])
    print(f"phases of the median run: {phases[order[n // 2]]}")


if __name__ == "__main__":
    main()
