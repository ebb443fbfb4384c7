#!/usr/bin/env python3
"""cold_cpu.py - where a cold monorepo build's time goes: `bk-build bake` against
`docker buildx bake`, with the CPU the daemon and the whole machine spent during each run.

Owns: running bench.py's monorepo (14 images, `load = true`) cold, interleaved run by run with
bake, and reporting per tool the medians of wall time, how busy the machine's CPUs were, the
CPU-seconds they spent in all, and those of dockerd + containerd (BuildKit runs inside
dockerd). When the machine is busy nearly all the time and the daemon spends the same
CPU-seconds for both tools, no scheduling on the client can make one much faster than the
other: the wall time is the daemon's work divided by the cores. Must not know bk-build's
internals: it only runs the binaries.

Usage (after `bash bench/run.sh --only mono`, or with the daemon up and
`cargo build --release` done):

    python3 bench/cold_cpu.py [--runs 3]
"""

import argparse
import os
import statistics
import time

import bench


def machine():
    """(all CPU ticks, idle + iowait ticks) of the whole machine so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + v[4]


def daemon_ticks(pids):
    """CPU ticks dockerd + containerd (and their reaped children) spent so far."""
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read().rsplit(")", 1)[1].split()
            t += sum(int(x) for x in s[11:15])  # utime, stime, cutime, cstime
        except (OSError, IndexError, ValueError):
            pass
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    cfg = ap.parse_args()
    mono = bench.WORK / "mono"
    bench.gen_monorepo(mono, 1)
    imgs = bench.read_images(mono)
    bench.write_bake_file(mono, imgs, bench.REPO)
    bench.write_bk_toml(mono, imgs)
    logs = bench.WORK / "logs" / "cold-cpu"
    logs.mkdir(parents=True, exist_ok=True)
    tools = [bench.BkBake(mono, logs), bench.Bake(mono, logs)]
    hz = os.sysconf("SC_CLK_TCK")
    rows = {t.name: [] for t in tools}
    for r in range(cfg.runs):
        for t in tools:
            t.reset_cold()
            bench.settle(120)
            pids = bench._daemon_pids()
            (a, ai), da = machine(), daemon_ticks(pids)
            w = time.perf_counter()
            t.run(f"cpu{r}")
            w = time.perf_counter() - w
            (b, bi), db = machine(), daemon_ticks(pids)
            busy = (b - a) - (bi - ai)
            sample = {"wall": w, "busy": busy / (b - a), "core_s": busy / hz,
                      "daemon_s": (db - da) / hz}
            rows[t.name].append(sample)
            bench.log(f"{t.name} run {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in sample.items()))
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    print("| tool | wall | CPUs busy | CPU-seconds (machine) | CPU-seconds (dockerd + containerd) |")
    print("|---|---|---|---|---|")
    for name, xs in rows.items():
        print(f"| {name} | {med(xs, 'wall'):.2f} s | {100 * med(xs, 'busy'):.0f} % | "
              f"{med(xs, 'core_s'):.1f} | {med(xs, 'daemon_s'):.1f} |")
    print(f"\n(median of {cfg.runs}; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
