#!/usr/bin/env python3
"""racy_edit.py - a build started right after an edit, against buildx on the same daemon.

  python3 bench/racy_edit.py [N]   (default N = 8)

A context of 200 small files (`FROM scratch`, `COPY . /app`, output `type=cacheonly`). Each
run, for each tool: edit one file, build at once ("immediate"); edit it again, wait 0.5 s,
build ("after 0.5 s"); then build once more with nothing changed. Prints the median wall time
of each case per tool and, for bk-build, the files the unchanged build asked for (from its
`--metadata-file`): a file changed less than the racy window (0.1 s) before its transfer is
read only once that window has passed, so that the next build can trust the daemon's copy
(src/session/copies.rs). The cases are interleaved run by run, so drift hits both tools.

Run with the test daemon's environment (`source $BKENV/env.sh`). Environment: BKBENCH_DIR
(default /tmp/bkbench), BK (default target/release/bk-build).
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
WORK = Path(os.environ.get("BKBENCH_DIR", "/tmp/bkbench")) / "racy-edit"
BK = os.environ.get("BK", str(HERE.parent / "target/release/bk-build"))


def run(cmd, env=None):
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return took


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    shutil.rmtree(WORK, ignore_errors=True)
    ctx = WORK / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    for i in range(200):
        (ctx / f"f{i:03d}").write_text(f"file {i}\n" * 20)
    victim = ctx / "f000"
    env = dict(os.environ, XDG_STATE_HOME=str(WORK / "state"))
    md = WORK / "md.json"
    tools = {
        "bk-build": [BK, "build", "--progress", "quiet", "-o", "type=cacheonly",
                     "--metadata-file", str(md), str(ctx)],
        "buildx": ["docker", "buildx", "build", "--progress", "quiet", "-o", "type=cacheonly",
                   str(ctx)],
    }
    times = {(t, c): [] for t in tools for c in ("immediate", "after 0.5 s")}
    requested = []
    for tool, cmd in tools.items():
        run(cmd, env)  # warm: the daemon's copy exists
    for _ in range(n):
        for tool, cmd in tools.items():
            with open(victim, "a") as f:
                f.write(f"edit {time.time_ns()}\n")
            times[(tool, "immediate")].append(run(cmd, env))
            if tool == "bk-build":
                run(cmd, env)
                requested.append(
                    json.loads(md.read_text())["bk-build.sync"]["context"]["files_requested"])
            with open(victim, "a") as f:
                f.write(f"edit {time.time_ns()}\n")
            time.sleep(0.5)
            times[(tool, "after 0.5 s")].append(run(cmd, env))
    print(f"{n} runs, median (min-max) wall seconds:")
    for (tool, case), xs in times.items():
        print(f"  {tool:9} {case:12} {statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})")
    print(f"bk-build, files the unchanged build after an immediate one asked for: {requested}")


if __name__ == "__main__":
    main()
