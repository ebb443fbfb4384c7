#!/usr/bin/env python3
"""jobs.py - how many builds at once: `bk-build bake -j N` on the monorepo, for several N, on one
daemon, in one run (the measurement behind the default `-j`).

Owns: running bench.py's monorepo (14 images) cold and with one pybase file changed, for each N
interleaved run by run (run 1 of every N, then run 2, ...), and printing medians as a markdown
table, with `docker buildx bake` (every target at once) as the reference. Must not know bk-build's
internals: it only runs the binary.

Usage (after `bash bench/run.sh --only mono` has built the binaries and the workload, or with
the daemon up and `cargo build --release` done):

    python3 bench/jobs.py [--jobs 1,2,4,8,14] [--runs 3] [--push]

(`--jobs ''`: the default `-j` and the reference only.)

`--push` writes the monorepo's bk-build.toml with `push = true` (bases reached by tag through
the registry, as the CI flow does) instead of bench.py's `load = true`, and compares with
`docker buildx bake --push`.
"""

import argparse
import json
import statistics

import bench


class Jobs(bench.BkBake):
    """`bk-build bake -j N`, or with no `-j` (the default) when `jobs` is None."""

    def __init__(self, mono, logs, jobs, push):
        super().__init__(mono, logs)
        self.key = f"j{jobs}" if jobs else "default"
        self.name = f"bk-build bake -j {jobs}" if jobs else "bk-build bake (default -j)"
        self.extra = ["-j", str(jobs)] if jobs else []
        # Every run builds: the registry ledger of an earlier run would re-tag instead.
        if push:
            self.extra.append("--no-ledger")


class BakePush(bench.Bake):
    def run(self, tag):
        lf = self.logs / f"bake-push-{tag}.log"
        wall, rss, text = bench.measure(["docker", "buildx", "bake", "--push", "--progress=rawjson",
                                         "-f", "docker-bake.hcl"], self.mono, lf)
        return {"wall": wall, "rss": rss, "bytes": bench.progress_bytes(text)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", default="1,2,3,4,6,8,14")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--push", action="store_true")
    cfg = ap.parse_args()
    mono = bench.WORK / "mono"
    bench.gen_monorepo(mono, 1)
    imgs = bench.read_images(mono)
    repo = bench.REPO + ("-push" if cfg.push else "")
    bench.write_bake_file(mono, imgs, repo)
    if cfg.push:
        bench.write_fresh_toml(mono, imgs, repo)
    else:
        bench.write_bk_toml(mono, imgs)
    logs = bench.WORK / "logs" / ("jobs-push" if cfg.push else "jobs")
    logs.mkdir(parents=True, exist_ok=True)
    tools = [Jobs(mono, logs, int(j), cfg.push) for j in cfg.jobs.split(",") if j]
    tools.append(Jobs(mono, logs, None, cfg.push))
    tools.append(BakePush(mono, logs) if cfg.push else bench.Bake(mono, logs))
    results = {}
    touch = lambda: bench.workload.touch_one(mono, "base")
    bench.run_cases(tools, [("cold", None), ("base", touch)], cfg.runs, results, "jobs")
    rows = []
    for t in tools:
        cases = results["jobs"][t.key].get("cases", {})
        med = {c: statistics.median(s["wall"] for s in v) for c, v in cases.items()}
        rows.append((t.name, med.get("cold"), med.get("base")))
    ref = rows[-1]
    out = bench.WORK / ("jobs-push.json" if cfg.push else "jobs.json")
    out.write_text(json.dumps(results, indent=1))
    print(f"| tool | cold | ÷ bake | 1 pybase file changed | ÷ bake |\n|---|---|---|---|---|")
    for name, cold, base in rows:
        print(f"| {name} | {bench.fmt_s(cold)} | {bench.fmt_ratio(cold, ref[1])} | "
              f"{bench.fmt_s(base)} | {bench.fmt_ratio(base, ref[2])} |")
    print(f"\n(median of {cfg.runs}; raw samples in {out})")


if __name__ == "__main__":
    main()
