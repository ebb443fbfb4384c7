#!/usr/bin/env python3
"""bench.py - bk-build against the tools its users would pick instead, on one daemon, in one run.

Owns: generating the workloads (with the generator in ../shared/bench), driving every tool the
way its users drive it, measuring wall time / context bytes / client peak RSS, taking medians and
ratios, printing the tables and rewriting BENCHMARKS.md. Must not know bk-build's internals: it
only runs the binary and reads its --metadata-file.

Run through bench/run.sh (which starts the test daemon and builds the binaries); stdlib only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the bk-build checkout
GEN = Path(os.environ.get("BKBENCH_GEN", ROOT.parent / "shared" / "bench"))
WORK = Path(os.environ.get("BKBENCH_DIR", "/tmp/bkbench"))
BK = ROOT / "target" / "release" / "bk-build"
FLOOR = ROOT / "bench" / "floor" / "target" / "release" / "bkbench-floor"
TIME = "/usr/bin/time"
REGISTRY = os.environ.get("BKENV_REGISTRY", "127.0.0.1:5000").replace("127.0.0.1", "localhost")
BASE_IMAGE = os.environ.get("BKENV_BASE_IMAGE", f"{REGISTRY}/busybox:latest")
REPO = f"{REGISTRY}/bench"
TAG = "dev"

# Every competitor writes the same thing bk-build writes: no provenance attestation (buildx adds
# one by default; bk-build does not), so the exports compared are the same images.
TOOL_ENV = {"BUILDX_NO_DEFAULT_ATTESTATIONS": "1"}


class BenchError(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measuring

def run_quiet(cmd, cwd=None, check=True, **kw):
    """Untimed helper command (setup, reset, version queries)."""
    p = subprocess.run(cmd, cwd=cwd, shell=isinstance(cmd, str), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"command failed ({p.returncode}): {cmd}\n{p.stdout[-3000:]}")
    return p.stdout


def measure(cmd, cwd, logfile, env=None):
    """Run one timed command under GNU time. Returns (wall_s, peak_rss_bytes, output).

    Wall time is taken here (monotonic clock around the whole process). Peak RSS is GNU time's
    "Maximum resident set size": the kernel's ru_maxrss of the child, i.e. the largest single
    process of the tree it started (docker CLI or its buildx plugin, make or one of its
    recipes, bk-build), not a sum over concurrent processes."""
    tfile = str(logfile) + ".time"
    argv = [TIME, "-v", "-o", tfile] + (["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd))
    env = dict(os.environ, **TOOL_ENV, **(env or {}))
    with open(logfile, "w") as out:
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - t0
    text = Path(logfile).read_text(errors="replace")
    if p.returncode != 0:
        raise BenchError(f"{cmd if isinstance(cmd, str) else shlex.join(cmd)} failed "
                         f"(exit {p.returncode}) in {cwd}; log: {logfile}\n{text[-2500:]}")
    rss, cpu = time_report(tfile)
    _last_cpu[0] = cpu
    return wall, rss, text


_last_cpu = [None]  # CPU seconds of the last measure(), picked up by run_cases()


def time_report(tfile):
    """(peak RSS bytes, user+sys CPU seconds) from a GNU `time -v` report. The CPU time covers
    the whole process tree (children are reaped), so it separates client work from waiting on
    the daemon."""
    t = Path(tfile).read_text()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", t)
    u = re.search(r"User time \(seconds\): ([\d.]+)", t)
    k = re.search(r"System time \(seconds\): ([\d.]+)", t)
    cpu = float(u.group(1)) + float(k.group(1)) if u and k else None
    return (int(m.group(1)) * 1024 if m else None), cpu


_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "KiB": 1024, "MB": 1e6, "MiB": 1024 ** 2,
          "GB": 1e9, "GiB": 1024 ** 3}
_XFER = re.compile(r"^(.*?)#(\d+) transferring ([^:\s]+):\s*([\d.]+)\s*([kKMG]i?B|B)\b", re.M)


def progress_bytes(text):
    """Context bytes as the daemon reports them: the last value of every `transferring NAME:`
    status, summed. BuildKit's file-sync receiver counts every byte it reads, file data and
    per-file metadata alike, so this is the same measure for every session-based client
    (buildx, bake, `docker build DIR`, bk-build); it includes the Dockerfile and .dockerignore
    loads. Reads both `--progress=rawjson` lines (exact byte counts; used for the buildx
    family) and `--progress=plain` lines (`#N transferring context: 12.3MB`, used for bk-build,
    whose plain printer writes a final line per status). Text before the JSON or the `#N`
    (a per-target prefix) is part of the key."""
    last = {}
    for line in text.splitlines():
        j = line.find('{"')
        if j >= 0:
            try:
                doc = json.loads(line[j:])
            except ValueError:
                continue
            for st in doc.get("statuses") or []:
                if str(st.get("id", "")).startswith("transferring "):
                    key = (line[:j].strip(), st.get("vertex"), st["id"])
                    last[key] = max(last.get(key, 0), int(st.get("current") or 0))
            continue
        m = _XFER.match(line)
        if m:
            last[(m.group(1).strip(), m.group(2), m.group(3))] = \
                float(m.group(4)) * _UNITS[m.group(5)]
    return int(sum(last.values())) if last else None


def bk_bytes(metadata_path):
    """Sum of `bytes_sent` under every `bk-build.sync` key of bk-build's --metadata-file (one
    per build; bake nests them per target)."""
    try:
        doc = json.loads(Path(metadata_path).read_text())
    except (OSError, ValueError):
        return None
    total, found = 0, False

    def visit(v):
        nonlocal total, found
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "bk-build.sync" and isinstance(x, dict):
                    found = True
                    for d in x.values():
                        if isinstance(d, dict):
                            total += int(d.get("bytes_sent", 0))
                else:
                    visit(x)
        elif isinstance(v, list):
            for x in v:
                visit(x)

    visit(doc)
    return total if found else None


def tar_size(cmd, cwd):
    """Size of a tar stream, measured in a separate untimed run so no `tee` sits in the timed
    pipeline (the stream is deterministic for a given tree)."""
    return int(run_quiet(f"{cmd} 2>/dev/null | wc -c", cwd=cwd).strip())


# ----------------------------------------------------------------------------- daemon state

def docker(*args, check=True):
    return run_quiet(["docker", *args], check=check)


def _daemon_pids():
    bk = Path(os.environ.get("BKENV", "/tmp/bkenv"))
    pids = []
    for f in (bk / "dockerd.pid", bk / "exec" / "containerd" / "containerd.pid"):
        try:
            pids.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


def _quiet_sample(pids):
    """(daemon CPU ticks, sectors written on whole disks) right now."""
    ticks = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(f[11]) + int(f[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    disks = set(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else set()
    sectors = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if len(f) > 9 and f[2] in disks and not f[2].startswith(("loop", "ram")):
            sectors += int(f[9])
    return ticks, sectors


def settle(max_wait):
    """Wait until the daemon has finished what the previous run left behind: a prune returns
    before containerd has deleted the snapshots' files, and that deletion (tens of thousands of
    files) otherwise lands in the next measurement — cold runs measured 3 s, 14 s, 25 s, 34 s in
    a row without this. Quiet = dockerd + containerd under 10% of a core and under 4 MB/s written
    to disk, for two 0.5 s windows in a row. Returns the seconds waited."""
    pids = _daemon_pids()
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    prev, quiet = _quiet_sample(pids), 0
    while time.monotonic() - t0 < max_wait:
        time.sleep(0.5)
        cur = _quiet_sample(pids)
        cpu = (cur[0] - prev[0]) / hz / 0.5
        wmb = (cur[1] - prev[1]) * 512 / 1e6 / 0.5
        prev = cur
        quiet = quiet + 1 if cpu < 0.10 and wmb < 4 else 0
        if quiet >= 2:
            break
    else:
        log(f"daemon still busy after {max_wait:.0f} s (other work on this machine?); measuring anyway")
    return time.monotonic() - t0


def prune_build_cache():
    docker("buildx", "prune", "-af")


def remove_bench_images(prefix):
    ids = docker("images", "--format", "{{.Repository}}:{{.Tag}}",
                 "--filter", f"reference={prefix}/*").split()
    if ids:
        docker("image", "rm", "-f", *ids, check=False)


# ----------------------------------------------------------------------------- bk-build availability

def bk_status():
    """(build_ok, bake_ok, note): the binary may lag behind (bake is being written)."""
    if os.environ.get("BKBENCH_NO_BK"):
        return False, False, os.environ["BKBENCH_NO_BK"]
    if not BK.exists():
        return False, False, f"{BK} missing (cargo build --release failed?)"
    b = subprocess.run([str(BK), "build", "--help"], capture_output=True).returncode == 0
    k = subprocess.run([str(BK), "bake", "--help"], capture_output=True).returncode == 0
    return b, k, ""


# ----------------------------------------------------------------------------- workloads

def read_images(mono):
    imgs = []
    for line in (mono / "images.txt").read_text().split("\n"):
        if not line.strip():
            continue
        name, ctx, dep, named = line.split()
        imgs.append({"name": name, "ctx": ctx, "dep": None if dep == "-" else dep,
                     "named": None if named == "-" else named.split("=", 1)})
    return imgs


def gen_monorepo(path, scale):
    stamp = path / ".bkbench-params"
    want = f"10 {BASE_IMAGE} {scale}"
    if stamp.exists() and stamp.read_text() == want:
        return
    if path.exists():
        shutil.rmtree(path)
    log(f"generating monorepo in {path} (scale {scale})")
    run_quiet(["bash", str(GEN / "gen-monorepo.sh"), str(path), "10", BASE_IMAGE, str(scale)])
    stamp.write_text(want)


def gen_ctx(path, nfiles, mb):
    stamp = path / ".bkbench-params"
    want = f"{nfiles} {mb}"
    if stamp.exists() and stamp.read_text() == want:
        return
    if path.exists():
        shutil.rmtree(path)
    log(f"generating flat context in {path} ({nfiles} files, {mb} MB)")
    run_quiet(["bash", str(GEN / "gen-ctx.sh"), str(path), str(nfiles), str(mb)])
    stamp.write_text(want)
    # the stamp is not build input: keep it out of every context
    with open(path / ".dockerignore", "a") as f:
        f.write(".bkbench-params\n")


def write_bake_file(mono, imgs, repo=REPO):
    """docker-bake.hcl: one target per image; pybase reached through `target:pybase` the way
    bake's documentation recommends, shared folders as named contexts."""
    out = [f'variable "REPO" {{ default = "{repo}" }}', f'variable "TAG" {{ default = "{TAG}" }}',
           'group "default" {',
           "  targets = [" + ", ".join(f'"{i["name"]}"' for i in imgs) + "]", "}"]
    for i in imgs:
        out.append(f'target "{i["name"]}" {{')
        out.append(f'  context = "{i["ctx"]}"')
        out.append(f'  tags = ["${{REPO}}/{i["name"]}:${{TAG}}"]')
        ctxs = []
        if i["named"]:
            ctxs.append(f'{i["named"][0]} = "{i["named"][1]}"')
        if i["dep"]:
            out.append("  args = { REPO = REPO, TAG = TAG }")
            ctxs.append(f'"${{REPO}}/{i["dep"]}:${{TAG}}" = "target:{i["dep"]}"')
        if ctxs:
            out.append("  contexts = { " + ", ".join(ctxs) + " }")
        out.append("}")
    (mono / "docker-bake.hcl").write_text("\n".join(out) + "\n")


def write_bk_toml(mono, imgs):
    """bk-build.toml in the format of issue 3, equivalent to the bake file (same tags, same
    named contexts, same `target:` mapping of the pybase reference); results loaded into the
    engine like bake's and the seed flow's."""
    out = ["[vars]", f'REPO = "{REPO}"', f'TAG = "{TAG}"', "", "[defaults]",
           'tags = ["${REPO}/{name}:${TAG}"]', "load = true", ""]
    for i in imgs:
        out.append(f'[target.{i["name"]}]')
        out.append(f'context = "{i["ctx"]}"')
        ctxs = []
        if i["named"]:
            ctxs.append(f'{i["named"][0]} = "{i["named"][1]}"')
        if i["dep"]:
            out.append('args = { REPO = "${REPO}", TAG = "${TAG}" }')
            ctxs.append(f'"{REPO}/{i["dep"]}:{TAG}" = "target:{i["dep"]}"')
        if ctxs:
            out.append("contexts = { " + ", ".join(ctxs) + " }")
        out.append("")
    out += ["[group.default]", "targets = [" + ", ".join(f'"{i["name"]}"' for i in imgs) + "]"]
    (mono / "bk-build.toml").write_text("\n".join(out) + "\n")


def write_fresh_toml(mono, imgs, repo):
    """bk-build.toml for the CI flow: every image pushed as `${REPO}/NAME:${TAG}` (TAG = the commit
    in CI), pybase reached by its tag, which follows TAG (so a new commit is a new tag)."""
    out = ["[vars]", f'REPO = "{repo}"', f'TAG = "{TAG}"', "", "[defaults]",
           'tags = ["${REPO}/{name}:${TAG}"]', "push = true", ""]
    for i in imgs:
        out.append(f'[target.{i["name"]}]')
        out.append(f'context = "{i["ctx"]}"')
        if i["named"]:
            out.append(f'contexts = {{ {i["named"][0]} = "{i["named"][1]}" }}')
        if i["dep"]:
            out.append('args = { REPO = "${REPO}", TAG = "${TAG}" }')
        out.append("")
    (mono / "bk-build.toml").write_text("\n".join(out) + "\n")


SEED_TAR = {  # image -> the blog's tar command, run in the image's folder
    "openresty": "tar -c . ../../src/luamods",
    "gateway": "tar -c . ../../src/common",
    "scheduler": "tar -c . ../../src/common",
}


def write_makefile(mono, imgs):
    """The seed flow: one sentinel file per image whose prerequisites are every file of its
    folder(s) (`$(shell find ...)`, as in the blog post) plus the base's sentinel; images that
    need a folder outside their own are sent as `tar -c . ../../DIR | docker build -`, the rest
    as `docker build DIR`. Each recipe's output goes to .seed/logs/NAME.log."""
    out = ["# generated by bench/bench.py: the seed flow (sentinel files + tar | docker build -)",
           f"REPO ?= {REPO}", f"TAG ?= {TAG}", "S := .seed", "LOG := .seed/logs", "",
           "all: " + " ".join(f"$(S)/{i['name']}" for i in imgs), ""]
    for i in imgs:
        n, ctx = i["name"], i["ctx"]
        dirs = ctx + (" " + i["named"][1] if i["named"] else "")
        pre = (f"$(S)/{i['dep']} " if i["dep"] else "") + f"$(shell find {dirs} -type f)"
        args = "--build-arg REPO=$(REPO) --build-arg TAG=$(TAG) " if i["dep"] else ""
        out.append(f"$(S)/{n}: {pre}")
        out.append("\t@mkdir -p $(S) $(LOG)")
        if n in SEED_TAR:
            up = "/".join([".."] * len(Path(ctx).parts))
            out.append(f"\tcd {ctx} && {SEED_TAR[n]} | docker build --progress=rawjson {args}"
                       f"-t $(REPO)/{n}:$(TAG) - > {up}/$(LOG)/{n}.log 2>&1")
        else:
            out.append(f"\tdocker build --progress=rawjson {args}-t $(REPO)/{n}:$(TAG) {ctx} "
                       f"> $(LOG)/{n}.log 2>&1")
        out.append("\t@touch $@")
        out.append("")
    (mono / "Makefile").write_text("\n".join(out))


# ----------------------------------------------------------------------------- tools

class Tool:
    """One way of building a workload. `reset_cold` makes the next run start from nothing for
    this tool; `run` performs one timed build and returns a sample dict."""
    key = name = ""

    def available(self):
        return True, ""

    def reset_cold(self):
        prune_build_cache()


class MonoTool(Tool):
    def __init__(self, mono, logs):
        self.mono, self.logs = mono, logs

    def reset_cold(self):
        # Cold = no build cache (so every context is sent again and every step runs), none of the
        # benchmark's images in the engine, and no client-side state (sentinels, .bk-build/).
        prune_build_cache()
        remove_bench_images(REPO)


class Bake(MonoTool):
    key, name = "bake", "docker buildx bake"

    def run(self, tag):
        lf = self.logs / f"bake-{tag}.log"
        wall, rss, text = measure(["docker", "buildx", "bake", "--progress=rawjson", "-f",
                                   "docker-bake.hcl"], self.mono, lf)
        return {"wall": wall, "rss": rss, "bytes": progress_bytes(text)}


class Seed(MonoTool):
    key, name = "seed", "seed flow (make -j2)"

    def reset_cold(self):
        super().reset_cold()
        shutil.rmtree(self.mono / ".seed", ignore_errors=True)

    def run(self, tag):
        logdir = self.mono / ".seed" / "logs"
        shutil.rmtree(logdir, ignore_errors=True)
        lf = self.logs / f"seed-{tag}.log"
        wall, rss, _ = measure(["make", "-j2"], self.mono, lf)
        total = 0
        for f in (sorted(logdir.glob("*.log")) if logdir.exists() else []):
            n = f.stem
            if n in SEED_TAR:
                ctx = next(i["ctx"] for i in read_images(self.mono) if i["name"] == n)
                total += tar_size(SEED_TAR[n], self.mono / ctx)
            else:
                total += progress_bytes(f.read_text(errors="replace")) or 0
            shutil.copy(f, self.logs / f"seed-{tag}-{n}.log")
        return {"wall": wall, "rss": rss, "bytes": total}


class BkBake(MonoTool):
    key, name = "bk", "bk-build bake"

    def available(self):
        _, ok, note = bk_status()
        return ok, note or "not available yet (`bk-build bake --help` fails)"

    def reset_cold(self):
        super().reset_cold()
        shutil.rmtree(self.mono / ".bk-build", ignore_errors=True)

    extra = []

    def run(self, tag):
        lf = self.logs / f"{self.key}-bake-{tag}.log"
        md = self.logs / f"{self.key}-bake-{tag}.json"
        md.unlink(missing_ok=True)
        wall, rss, text = measure([str(BK), "bake", "--progress", "plain", *self.extra,
                                   "--metadata-file", str(md)], self.mono, lf)
        return bk_sample(wall, rss, text, md)


class BkBakeAll(BkBake):
    """bk-build with every target allowed to build at once (`-j` = number of targets), which is
    what bake does; cold only. Shows how much of the cold gap is the `-j` default (the daemon's
    cores, per issue 3) rather than the work bk-build does."""
    key = "bkj"
    cases_only = ("cold",)

    def __init__(self, mono, logs, jobs):
        super().__init__(mono, logs)
        self.extra = ["-j", str(jobs)]
        self.name = f"bk-build bake -j {jobs}"


class FreshTool(Tool):
    """A fresh CI runner: a checkout with no client state, every image already in the registry
    from an earlier pipeline, a new commit = a new tag. Nothing is reset on the daemon (a CI
    runner's remote BuildKit keeps its cache): only the client starts from nothing."""

    def __init__(self, tree, logs):
        self.tree, self.logs = tree, logs

    def reset_cold(self):
        pass

    @staticmethod
    def new_tag():
        return f"c{time.time_ns():x}"


class BkFresh(FreshTool):
    key, name = "bk", "bk-build bake"

    def available(self):
        _, ok, note = bk_status()
        return ok, note or "not available yet (`bk-build bake --help` fails)"

    def run(self, tag):
        shutil.rmtree(self.tree / ".bk-build", ignore_errors=True)
        lf = self.logs / f"bk-fresh-{tag}.log"
        md = self.logs / f"bk-fresh-{tag}.json"
        md.unlink(missing_ok=True)
        wall, rss, text = measure([str(BK), "bake", "--progress", "plain", "--metadata-file",
                                   str(md)], self.tree, lf, {"TAG": self.new_tag()})
        actions = {k: v.get("bk-build.action", "build")
                   for k, v in json.loads(md.read_text()).items()}
        if set(actions.values()) != {"retag"}:
            raise BenchError(f"fresh runner: expected every target re-tagged, got {actions} ({lf})")
        return bk_sample(wall, rss, text, md)


class BakeFresh(FreshTool):
    key, name = "bake", "docker buildx bake --push"

    def run(self, tag):
        lf = self.logs / f"bake-fresh-{tag}.log"
        # A new runner has no buildx state either: a new build node id, so bake's contexts are
        # not diffed against what an earlier runner sent.
        with tempfile.TemporaryDirectory() as cfgdir:
            wall, rss, text = measure(["docker", "buildx", "bake", "--push", "--progress=rawjson",
                                       "-f", "docker-bake.hcl"], self.tree, lf,
                                      {"TAG": self.new_tag(), "BUILDX_CONFIG": cfgdir})
        return {"wall": wall, "rss": rss, "bytes": progress_bytes(text)}


class CtxTool(Tool):
    """`out` is the output flags every tool of the scenario gets: ["-o", "type=cacheonly"]
    (build, export nothing) or ["-t", REF] (store the image in the engine)."""

    def __init__(self, ctx, logs, label, out):
        self.ctx, self.logs, self.label, self.out = ctx, logs, label, out

    def reset_cold(self):
        prune_build_cache()
        remove_bench_images(REPO)


class Buildx(CtxTool):
    key, name = "buildx", "docker buildx build"

    def run(self, tag):
        lf = self.logs / f"{self.label}-buildx-{tag}.log"
        wall, rss, text = measure(["docker", "buildx", "build", "--progress=rawjson", *self.out,
                                   str(self.ctx)], self.ctx, lf)
        return {"wall": wall, "rss": rss, "bytes": progress_bytes(text)}


class TarBuild(CtxTool):
    key, name = "tar", "tar | docker build -"

    def run(self, tag):
        lf = self.logs / f"{self.label}-tar-{tag}.log"
        wall, rss, _ = measure("tar -c . | docker build --progress=rawjson "
                               f"{shlex.join(self.out)} -", self.ctx, lf)
        return {"wall": wall, "rss": rss, "bytes": tar_size("tar -c .", self.ctx)}


class BkBuild(CtxTool):
    key, name = "bk", "bk-build build"

    def available(self):
        ok, _, note = bk_status()
        return ok, note or "`bk-build build --help` fails"

    def run(self, tag):
        lf = self.logs / f"{self.label}-bk-{tag}.log"
        md = self.logs / f"{self.label}-bk-{tag}.json"
        md.unlink(missing_ok=True)
        wall, rss, text = measure([str(BK), "build", "--progress", "plain", "--metadata-file",
                                   str(md), *self.out, str(self.ctx)], self.ctx, lf)
        return bk_sample(wall, rss, text, md)


def bk_sample(wall, rss, text, md):
    """bk-build's sample: `bytes` from the daemon's progress (comparable with buildx),
    `file_bytes` = file content bytes bk-build itself counted (--metadata-file)."""
    fb = bk_bytes(md)
    b = progress_bytes(text)
    if b is None and not fb:
        b = 0  # nothing transferred at all (e.g. every target skipped)
    return {"wall": wall, "rss": rss, "bytes": b, "file_bytes": fb}


def ctx_output_flags(ref):
    """cacheonly isolates the context sync from image export; use it only if every tool of the
    scenario accepts it (bk-build may not yet), else all tools store a tagged image."""
    ok, _, _ = bk_status()
    if not ok:
        return ["-o", "type=cacheonly"]
    probe = WORK / "probe-ctx"
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    (probe / "a").write_text("probe\n")
    p = subprocess.run([str(BK), "build", "--progress", "quiet", "-o", "type=cacheonly",
                        str(probe)], capture_output=True, text=True)
    if p.returncode == 0:
        return ["-o", "type=cacheonly"]
    log("bk-build does not accept -o type=cacheonly yet "
        f"({(p.stderr.strip().splitlines() or ['?'])[-1]}); every tool stores a tagged image instead")
    return ["-t", ref]


# ----------------------------------------------------------------------------- scenarios

def run_cases(tools, cases, runs, results, scenario, cold_runs=None):
    """Cold builds first, interleaved across the tools (run 1 of every tool, then run 2, ...), so
    drift in the daemon's state (cache GC, disk writeback) lands on every tool alike instead of on
    whichever ran last. Then, tool by tool: one untimed warm-up build (so the engine holds this
    tool's own images again), then `runs` builds of every other case, its `prep` applied before
    each. A tool with `cases_only` runs just those cases."""
    ready = []
    for tool in tools:
        ok, why = tool.available()
        slot = results.setdefault(scenario, {}).setdefault(tool.key, {"name": tool.name})
        slot["name"] = tool.name
        if not ok:
            slot["pending"] = why
            log(f"{scenario}/{tool.name}: {why}")
            continue
        slot.pop("pending", None)
        slot["cases"] = {}
        ready.append((tool, slot))
    wants = lambda tool, case: case in getattr(tool, "cases_only", (case,))

    def sample(tool, slot, case, r, settle_max):
        # Flush what earlier runs left dirty and let the daemon finish its deletions, so that
        # neither lands in this measurement.
        os.sync()
        waited = settle(settle_max)
        s = tool.run(f"{case}-{r}")
        s["settle_s"] = round(waited, 1)
        s.setdefault("cpu", _last_cpu[0])
        slot["cases"].setdefault(case, []).append(s)
        log(f"{scenario}/{tool.key}/{case} #{r + 1}: {s['wall']:.2f}s cpu={fmt_s(s['cpu'])} "
            f"rss={fmt_mb(s['rss'])} bytes={fmt_bytes(s['bytes'])}")

    if any(case == "cold" for case, _ in cases):
        for r in range(cold_runs or runs):
            for tool, slot in ready:
                if wants(tool, "cold"):
                    tool.reset_cold()
                    sample(tool, slot, "cold", r, 120)
    for tool, slot in ready:
        rest = [(c, prep) for c, prep in cases if c != "cold" and wants(tool, c)]
        if not rest:
            continue
        os.sync()
        settle(10)
        tool.run("warmup")
        for case, prep in rest:
            for r in range(runs):
                if prep:
                    prep()
                sample(tool, slot, case, r, 10)


def scenario_mono(cfg, results):
    mono = WORK / "mono"
    gen_monorepo(mono, cfg.mono_scale)
    imgs = read_images(mono)
    write_bake_file(mono, imgs)
    write_bk_toml(mono, imgs)
    write_makefile(mono, imgs)
    logs = WORK / "logs" / "mono"
    logs.mkdir(parents=True, exist_ok=True)
    touch = lambda which: lambda: run_quiet(["bash", str(GEN / "touch-one.sh"), which, str(mono)])
    cases = [("cold", None), ("noop", None), ("luamods", touch("luamods")), ("base", touch("base"))]
    tools = [BkBake(mono, logs), BkBakeAll(mono, logs, len(imgs)), Bake(mono, logs),
             Seed(mono, logs)]
    run_cases([t for t in tools if t.key in cfg.tools], cases, cfg.runs, results, "mono")
    results["mono_meta"] = {"scale": cfg.mono_scale, "images": len(imgs), "tree": str(mono)}


def scenario_ctx(cfg, results, scenario, nfiles, mb):
    ctx = WORK / f"ctx{nfiles}"
    gen_ctx(ctx, nfiles, mb)
    logs = WORK / "logs" / scenario
    logs.mkdir(parents=True, exist_ok=True)
    victim = ctx / "d000" / "f00000.dat"

    def change_one():
        with open(victim, "ab") as f:
            f.write(b"changed %d\n" % time.time_ns())

    out = ctx_output_flags(f"{REPO}/{scenario}:{TAG}")
    if results.get(scenario + "_output", " ".join(out)) != " ".join(out):
        results.pop(scenario, None)  # merged samples must all share one output
    results[scenario + "_output"] = " ".join(out)
    cases = [("cold", None), ("unchanged", None), ("onefile", change_one)]
    cold_runs = None
    if scenario == "scale":
        # At 200k files a cold build is minutes of daemon disk I/O, the same for every tool, and
        # what this scenario is about (client RSS) barely varies: fewer cold runs, no onefile
        # case (it adds nothing the 20k scenario does not show), so the full run stays bounded.
        cases = cases[:2]
        cold_runs = min(cfg.runs, cfg.scale_cold_runs)
    tools = [BkBuild(ctx, logs, scenario, out), Buildx(ctx, logs, scenario, out),
             TarBuild(ctx, logs, scenario, out)]
    run_cases([t for t in tools if t.key in cfg.tools], cases, cfg.runs, results, scenario,
              cold_runs)
    results[scenario + "_meta"] = {"files": nfiles, "mb": mb, "tree": str(ctx)}


def scenario_fresh(cfg, results):
    """The CI flow of issue 8: the monorepo pushed once (untimed), then each run is a fresh
    runner on a new commit: no `.bk-build/`, every image in the registry, a new TAG."""
    tree = WORK / "fresh"
    gen_monorepo(tree, cfg.mono_scale)
    imgs = read_images(tree)
    repo = f"{REGISTRY}/benchfresh"
    write_fresh_toml(tree, imgs, repo)
    write_bake_file(tree, imgs, repo)
    logs = WORK / "logs" / "fresh"
    logs.mkdir(parents=True, exist_ok=True)
    log("fresh: the first pipeline (untimed): build and push every image")
    shutil.rmtree(tree / ".bk-build", ignore_errors=True)
    run_quiet([str(BK), "bake", "--progress", "quiet"], cwd=tree, env=dict(os.environ, TAG="seed"))
    tools = [BkFresh(tree, logs), BakeFresh(tree, logs)]
    run_cases([t for t in tools if t.key in cfg.tools], [("fresh", None)], cfg.runs, results,
              "fresh")
    results["fresh_meta"] = {"scale": cfg.mono_scale, "images": len(imgs), "tree": str(tree)}


def scenario_floor(cfg, results):
    mono = WORK / "mono"
    gen_monorepo(mono, cfg.mono_scale)
    imgs = read_images(mono)
    roots = sorted({i["ctx"] for i in imgs} | {i["named"][1] for i in imgs if i["named"]})
    out = {}
    for threads in (os.cpu_count() or 1, 1):
        text = run_quiet([str(FLOOR), "--threads", str(threads), "--repeat", str(max(cfg.runs, 5)),
                          *roots], cwd=mono)
        out[str(threads)] = json.loads(text.strip().splitlines()[-1])
    results["floor"] = out
    f = out[str(os.cpu_count() or 1)]
    log(f"floor: {f['files']} files, {fmt_bytes(f['bytes'])}: walk {med(f['walk_s']) * 1e3:.0f} ms, "
        f"lstat {med(f['lstat_s']) * 1e3:.0f} ms, blake3 {med(f['hash_s']) * 1e3:.0f} ms")


# ----------------------------------------------------------------------------- reporting

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_s(x):
    if x is None:
        return "–"
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_bytes(x):
    if x is None:
        return "–"
    for u, d in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= d:
            return f"{x / d:.1f} {u}"
    return f"{x:.0f} B"


def fmt_mb(x):
    return "–" if x is None else f"{x / 2 ** 20:.0f} MiB"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def stat(results, scenario, tool, case, field):
    slot = results.get(scenario, {}).get(tool, {})
    samples = slot.get("cases", {}).get(case)
    return med([s[field] for s in samples]) if samples else None


def spread(results, scenario, tool, case):
    samples = results.get(scenario, {}).get(tool, {}).get("cases", {}).get(case)
    if not samples:
        return ""
    ws = [s["wall"] for s in samples]
    return f"{min(ws):.2f}–{max(ws):.2f} (n={len(ws)})"


def table(headers, rows):
    cell = lambda c: str(c).replace("|", "\\|")  # tool names contain pipes
    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def tool_cell(results, scenario, tool, case, field, fmt):
    slot = results.get(scenario, {}).get(tool)
    if slot is None:
        return "not run"
    if "pending" in slot:
        return "pending"
    return fmt(stat(results, scenario, tool, case, field))


CASE_LABEL = {"cold": "cold (cache pruned)", "noop": "no-op rebuild",
              "fresh": "fresh runner, new tag",
              "luamods": "1 file changed in src/luamods", "base": "1 file changed in pybase",
              "unchanged": "unchanged", "onefile": "1 file changed"}


def scenario_tables(results, scenario, tools, cases):
    """Wall, bytes and RSS tables for one scenario; ratios are bk-build ÷ competitor."""
    if scenario not in results:
        return "_not run_\n"
    names = {t: results[scenario].get(t, {}).get("name", t) for t in tools}
    comps = [t for t in tools if t != "bk"]
    parts = []
    for field, title, fmt in (("wall", "Wall time (median)", fmt_s),
                              ("cpu", "Client CPU time, user + sys of the whole process tree "
                                      "(median; much less than wall = mostly waiting for the daemon)", fmt_s),
                              ("bytes", "Context bytes sent (median)", fmt_bytes),
                              ("rss", "Client peak RSS (median)", fmt_mb)):
        hdr = ["case"] + [names[t] for t in tools] + [f"bk-build ÷ {names[c]}" for c in comps]
        rows = []
        for c in cases:
            row = [CASE_LABEL.get(c, c)]
            row += [tool_cell(results, scenario, t, c, field, fmt) for t in tools]
            bk = stat(results, scenario, "bk", c, field)
            row += [fmt_ratio(bk, stat(results, scenario, t, c, field)) for t in comps]
            rows.append(row)
        parts.append(f"**{title}**\n\n" + table(hdr, rows))
    hdr = ["case"] + [names[t] for t in tools]
    rows = [[CASE_LABEL.get(c, c)] + [spread(results, scenario, t, c) or "–" for t in tools]
            for c in cases]
    parts.append("**Wall time min–max over the runs (s), number of runs**\n\n" + table(hdr, rows))
    pend = [f"{names[t]}: {results[scenario][t]['pending']}" for t in tools
            if "pending" in results[scenario].get(t, {})]
    if pend:
        parts.append("Pending: " + "; ".join(pend) + ".")
    return "\n\n".join(parts) + "\n"


def floor_table(results):
    fl = results.get("floor")
    if not fl:
        return "_not run_\n"
    rows = []
    for th, f in sorted(fl.items(), key=lambda kv: -int(kv[0])):
        rows.append([th, f["files"], fmt_bytes(f["bytes"]), fmt_s(med(f["walk_s"])),
                     fmt_s(med(f["lstat_s"])), fmt_s(med(f["hash_s"]))])
    return table(["threads", "files", "bytes", "readdir + lstat (walk)", "lstat (known list)",
                  "read + blake3"], rows) + "\n"


def targets(results):
    """The targets of issue 4: (text, measured, verdict)."""
    out = []

    def check(text, value, limit, shown):
        if value is None or limit is None:
            out.append((text, shown or "–", "pending"))
        else:
            out.append((text, shown, "met" if value <= limit else "**missed**"))

    bk = lambda sc, c, f: stat(results, sc, "bk", c, f)
    comp = lambda sc, t, c, f: stat(results, sc, t, c, f)
    fl = results.get("floor", {}).get(str(os.cpu_count() or 1))
    walk = med(fl["walk_s"]) if fl else None
    a, b = bk("mono", "noop", "wall"), comp("mono", "bake", "noop", "wall")
    check("no-op monorepo ≤ 1/20 of bake's wall", a, b / 20 if b else None,
          f"{fmt_s(a)} vs bake {fmt_s(b)} ({fmt_ratio(a, b)})")
    check("no-op monorepo ≤ 2× the lstat floor", a, 2 * walk if walk else None,
          f"{fmt_s(a)} vs floor {fmt_s(walk)} ({fmt_ratio(a, walk)})")
    a, b = bk("mono", "luamods", "wall"), comp("mono", "bake", "luamods", "wall")
    check("one shared-file change ≤ 0.5× bake", a, b * 0.5 if b else None,
          f"{fmt_s(a)} vs {fmt_s(b)} ({fmt_ratio(a, b)})")
    a, b = bk("mono", "cold", "wall"), comp("mono", "bake", "cold", "wall")
    check("cold monorepo ≤ 1.05× bake", a, b * 1.05 if b else None,
          f"{fmt_s(a)} vs {fmt_s(b)} ({fmt_ratio(a, b)})")
    a, b = bk("ctx", "cold", "wall"), comp("ctx", "buildx", "cold", "wall")
    check("context sync cold ≤ buildx's wall", a, b, f"{fmt_s(a)} vs {fmt_s(b)} ({fmt_ratio(a, b)})")
    a, b = bk("ctx", "unchanged", "bytes"), comp("ctx", "buildx", "unchanged", "bytes")
    check("context sync unchanged: bytes sent ≤ buildx's", a, b, f"{fmt_bytes(a)} vs {fmt_bytes(b)}")
    a, b = bk("fresh", "fresh", "wall"), comp("fresh", "bake", "fresh", "wall")
    check("fresh runner (no .bk-build/, all in registry, new tag) ≤ 0.1× bake --push", a,
          b * 0.1 if b else None, f"{fmt_s(a)} vs {fmt_s(b)} ({fmt_ratio(a, b)})")
    blake = med(fl["hash_s"]) if fl else None
    check("fresh runner ≤ 2× the blake3-all-bytes floor", a, 2 * blake if blake else None,
          f"{fmt_s(a)} vs floor {fmt_s(blake)} ({fmt_ratio(a, blake)})")
    worst = lambda sc: max((x for x in (bk(sc, c, "rss") for c in ("cold", "unchanged"))
                            if x is not None), default=None)
    rss20, rss200 = worst("ctx"), worst("scale")
    check("client peak RSS ≤ 40 MB (38.1 MiB) at 20k files (worst median of cold, unchanged)", rss20,
          40e6 if rss20 is not None else None, fmt_mb(rss20))
    check("client peak RSS at 200k files within +10% of 20k (same measure)", rss200,
          rss20 * 1.1 if rss20 else None,
          f"{fmt_mb(rss200)} vs {fmt_mb(rss20)} ({fmt_ratio(rss200, rss20)})")
    return out


def bk_binary_id():
    """Which bk-build produced a scenario's figures: the binary changes under a shared target
    dir while others work, and merged results may come from several runs."""
    if not BK.exists():
        return "not built"
    head = run_quiet(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).strip()
    dirty = run_quiet(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], check=False)
    built = datetime.datetime.fromtimestamp(BK.stat().st_mtime, datetime.timezone.utc)
    return f"commit {head}{'+dirty' if dirty.strip() else ''}, binary built {built:%Y-%m-%d %H:%M} UTC"


def section_meta(results, sc):
    parts = []
    if sc in results.get("dates", {}):
        parts.append(f"measured {results['dates'][sc]}")
    if sc in results.get("durations", {}):
        d = results["durations"][sc]
        parts.append(f"took {d / 60:.0f} min" if d >= 60 else f"took {d} s")
    if sc in results.get("bk_binary", {}):
        parts.append(f"bk-build {results['bk_binary'][sc]}")
    return ("_" + "; ".join(parts) + "._\n") if parts else ""


def environment():
    def q(cmd):
        try:
            return run_quiet(cmd, check=False).strip()
        except OSError:
            return "?"
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    bkinfo = q([str(BK), "info"]) if BK.exists() else "bk-build not built"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {int(mem) / 2 ** 20:.1f} GiB RAM, "
                   f"Linux {platform.release()}",
        "dockerd": q(["docker", "version", "--format",
                      "{{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}}"]),
        "buildx": q(["docker", "buildx", "version"]),
        "bk_version": q([str(BK), "--version"]) if BK.exists() else "not built",
        "bk_info": bkinfo,
        "commit": q(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) +
                  (" (+ uncommitted changes)" if q(["git", "-C", str(ROOT), "status",
                                                    "--porcelain", "--", "src"]) else ""),
        "make": q(["make", "--version"]).split("\n")[0],
        "tar": q(["tar", "--version"]).split("\n")[0],
    }


NOTES_BEGIN, NOTES_END = "<!-- notes:begin -->", "<!-- notes:end -->"


def kept_notes(md_path):
    """The hand-written analysis between the notes markers of the previous report, so that
    explanations of misses (daemon time vs our time, profiles) survive a rerun."""
    try:
        old = Path(md_path).read_text()
    except OSError:
        return None
    i, j = old.find(NOTES_BEGIN), old.find(NOTES_END)
    if i < 0 or j < i:
        return None
    return old[i + len(NOTES_BEGIN):j].strip("\n")


def render_md(results, cfg, env, notes=None):
    cmds = results.get("commands") or [results.get("command", "bash bench/run.sh")]
    runs = results.get("runs", cfg.runs)
    meta_m = results.get("mono_meta", {})
    meta_c = results.get("ctx_meta", {})
    meta_s = results.get("scale_meta", {})
    L = []
    L.append("# Benchmarks\n")
    L.append("bk-build against what its users would use instead, on the same daemon, in one run "
             "(issue 4). Generated by `bench/bench.py` (see `bench/README.md`); do not edit by hand "
             "except between the notes markers. Produced by:\n")
    L.append("```sh\n" + "\n".join(cmds) + "\n```\n")
    if results.get("quick"):
        L.append("> **Quick mode** (smoke test): smaller trees and fewer runs; "
                 "not representative.\n")
    L.append(table(["", ""], [
        ["date", env["date"]], ["machine", env["machine"]], ["daemon", "dockerd " + env["dockerd"]],
        ["BuildKit (bk-build info)", "<br>".join(env["bk_info"].splitlines()) or "–"],
        ["buildx", env["buildx"]], ["bk-build", f"{env['bk_version']}, commit {env['commit']}"],
        ["seed flow", f"{env['make']}, {env['tar']}"],
        ["runs per case", f"{runs} (median reported; see n= below)"],
        ["duration", ", ".join(f"{k} {v / 60:.1f} min" for k, v in
                               results.get("durations", {}).items()) or "–"]]) + "\n")
    if len(set(results.get("bk_binary", {}).values())) > 1:
        L.append("> The scenarios below were measured with different bk-build builds (merged "
                 "runs, see each section); compare bk-build rows within a section.\n")
    L.append("## Targets (issue 4)\n")
    L.append(table(["target", "measured", "verdict"], targets(results)) + "\n")
    L.append("A miss is a finding to fix, not a failure of the benchmark.\n")
    L.append("## Findings and analysis\n")
    L.append("Hand-written; kept across reruns (edit only between the markers).\n")
    L.append(NOTES_BEGIN)
    L.append(notes if notes else "_none yet_")
    L.append(NOTES_END + "\n")
    L.append(f"## 1. Monorepo ({meta_m.get('images', 14)} images, generator scale "
             f"{meta_m.get('scale', 1)})\n")
    L.append(section_meta(results, "mono"))
    L.append(scenario_tables(results, "mono", ["bk", "bkj", "bake", "seed"],
                             ["cold", "noop", "luamods", "base"]))
    L.append(f"## 2. Context sync (`COPY . /app`, {meta_c.get('files', 20000):,} files / "
             f"{meta_c.get('mb', 100)} MB)\n")
    L.append(section_meta(results, "ctx"))
    L.append(f"Output for all tools: `{results.get('ctx_output', '?')}`.\n")
    L.append(scenario_tables(results, "ctx", ["bk", "buildx", "tar"],
                             ["cold", "unchanged", "onefile"]))
    L.append(f"## 3. Scale ({meta_s.get('files', 200000):,} files / {meta_s.get('mb', 100)} MB)\n")
    L.append(section_meta(results, "scale"))
    L.append(f"Output for all tools: `{results.get('scale_output', '?')}`. Cold builds at this size "
             "are minutes of daemon disk I/O, the same for every tool, so they run fewer times "
             "(`--scale-cold-runs`, default 3) and the one-file case is left to scenario 2.\n")
    L.append(scenario_tables(results, "scale", ["bk", "buildx", "tar"], ["cold", "unchanged"]))
    meta_f = results.get("fresh_meta", {})
    L.append(f"## 4. Fresh CI runner ({meta_f.get('images', 14)} images, everything already in the "
             "registry, no `.bk-build/`, a new tag)\n")
    L.append(section_meta(results, "fresh"))
    L.append("Each run: a new `TAG` (a new commit), no client state (bk-build: no `.bk-build/`; "
             "buildx: a fresh `BUILDX_CONFIG`), the daemon's build cache kept as a CI runner's "
             "remote BuildKit keeps it. bk-build must re-tag every image (the run fails "
             "otherwise); bake rebuilds from cache and pushes.\n")
    L.append(scenario_tables(results, "fresh", ["bk", "bake"], ["fresh"]))
    L.append("## 5. The floor (monorepo inputs after .dockerignore, warm page cache)\n")
    L.append(section_meta(results, "floor"))
    L.append(floor_table(results))
    L.append(METHOD)
    L.append("<details><summary>Raw samples (seconds / bytes / RSS bytes)</summary>\n\n```json\n"
             + json.dumps({k: v for k, v in results.items()
                         if k in ("mono", "ctx", "scale", "fresh", "floor")},
                          indent=None, sort_keys=True)[:60000] + "\n```\n</details>\n")
    return "\n".join(L)


METHOD = """
## How it is measured

* **One daemon**: the private dockerd of the test set-up (`scripts/bkenv/up.sh`), its embedded
  BuildKit, containerd image store, local registry on `localhost:5000`. Every tool talks to it.
  Other work on the same machine adds noise: hence medians, and min–max shown.
* **Same output for everyone.** Monorepo: every image is built with its tag
  `localhost:5000/bench/NAME:dev` and stored in the engine's image store (bake and `docker build`
  with the docker driver load by default; bk-build with `load = true`); nothing is pushed.
  Context sync/scale: `-o type=cacheonly` for all three tools (the build runs, nothing is
  exported). buildx's default provenance attestation is turned off
  (`BUILDX_NO_DEFAULT_ATTESTATIONS=1`) because bk-build does not produce one.
* **Cold** = `docker buildx prune -af` (all build cache, including the daemon's copies of earlier
  contexts, so everything is sent and every step runs) + the benchmark's images removed from the
  engine + the tool's own client state removed (`.seed/` sentinels; `.bk-build/`). The busybox base
  image stays in the local registry, the page cache stays warm: only what each tool controls is
  reset. Each cold run is preceded by its own reset. Cold runs are interleaved across the tools
  (run 1 of each tool, then run 2, ...), so slow drift of the daemon hits every tool alike.
* **`bk-build bake -j N`** (N = number of images; cold only) lets every target build at once, as
  bake does; bk-build's default `-j` is the daemon's core count (issue 3). It shows how much of
  the cold figure is that bound rather than bk-build's own work.
* **No-op / unchanged**: after the cold runs, each tool does one untimed warm-up build (so the
  engine holds that tool's own images again), then the build is repeated without any change.
  **One file changed**: before each run, `touch-one.sh luamods|base` (monorepo; appends a line, so
  the content really changes) or one file of the flat context gets a line appended.
* **Fresh runner**: the same monorepo, pushed to `localhost:5000/benchfresh` once (untimed). Each
  run gets a new `TAG` and no client state: bk-build without `.bk-build/` (it must find every
  image through the registry ledger and re-tag it; the harness fails the run otherwise), bake
  with a new empty `BUILDX_CONFIG` (so a new build node: its contexts are sent whole). The
  daemon's build cache is kept, as a CI runner's remote BuildKit keeps it. Targets: ≤ 0.1× bake's
  wall, and ≤ 2× the read + blake3 floor (all cores) of the same files.
* **Between runs** (untimed) the harness calls `sync(2)` and waits until dockerd + containerd
  are quiet (under 10% of a core and 4 MB/s of disk writes for 1 s; at most 120 s after a cold
  reset, 10 s otherwise): a prune returns before containerd has deleted the snapshots' files, and
  without the wait that deletion landed in the next cold run (20k-file cold syncs measured 3 s,
  14 s, 25 s, 34 s in a row). The wait is kept per sample as `settle_s`.
* **Wall time**: monotonic clock around the whole client command (including make's own
  `$(shell find ...)` prerequisite scan, buildx's plugin start-up, bk-build's fingerprinting).
* **Context bytes**: what the daemon reports in its `transferring NAME:` progress statuses (its
  file-sync receiver counts file data and per-file metadata alike), last value per status, summed
  over the run (Dockerfile and .dockerignore loads included) — the same measure for every
  session-based client. The buildx family (bake, `docker buildx build`, `docker build`) runs with
  `--progress=rawjson`, which prints every status message with exact byte counts: its plain printer
  drops some lines when many transfers run at once (bake cold totals varied 109–120 MB for the
  same work). bk-build runs with `--progress plain` (its printer writes a final line per status;
  the totals agree with its `--metadata-file` `bk-build.sync` counters, kept as `file_bytes` in
  the raw samples). Tar flows: the byte size of the tar stream (`tar ... | wc -c`, measured in a
  separate untimed run; the stream is deterministic). Seed flow: the sum over the images make
  actually rebuilt in that run.
* **Client peak RSS**: GNU `time -v` "Maximum resident set size", i.e. the kernel's `ru_maxrss` for
  the command: the peak of the *largest single process* of its tree (the buildx plugin for bake and
  buildx; for the seed flow the largest of make and the docker/tar processes of its recipes —
  `make -j2` runs up to two `docker build` clients at once, so the sum over the tree can be up to
  about twice that).
* **Competitors, as their users drive them**: `docker buildx bake -f docker-bake.hcl` with a
  generated bake file (named contexts `luamods`/`common`, the pybase reference mapped to
  `target:pybase`); the seed flow: a generated Makefile with one sentinel file per image whose
  prerequisites are `$(shell find DIR -type f)` of its folders, `make -j2`, images needing a folder
  outside their own sent as the generator's `tar -c . ../../src/luamods | docker build -` (verbatim:
  the stream carries the junk that .dockerignore later drops), the others as `docker build DIR`;
  `docker buildx build CTX`; `tar -c . | docker build -`. `docker build` is buildx's alias, so
  every competitor runs the same buildx client.
* **The floor**: `bench/floor` (a standalone Rust program, std + blake3) walks the same input
  roots as the images use, applying each root's `.dockerignore`, after a warm-up: readdir + lstat
  of every included entry (the floor for a no-op check that must also notice new files; the
  target "≤ 2× the lstat floor" is taken against this, all cores), lstat of a known file list,
  and read + blake3 of every included byte.
"""


def print_summary(results):
    for sc, tools, cases in (("mono", ["bk", "bkj", "bake", "seed"], ["cold", "noop", "luamods", "base"]),
                             ("ctx", ["bk", "buildx", "tar"], ["cold", "unchanged", "onefile"]),
                             ("scale", ["bk", "buildx", "tar"], ["cold", "unchanged"]),
                             ("fresh", ["bk", "bake"], ["fresh"])):
        if sc in results:
            print(f"\n== {sc}\n")
            print(scenario_tables(results, sc, tools, cases))
    if "floor" in results:
        print("\n== floor\n")
        print(floor_table(results))
    print("\n== targets\n")
    print(table(["target", "measured", "verdict"], targets(results)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller trees, 2 runs: a smoke test")
    ap.add_argument("--runs", type=int, help="runs per case (default 5, quick 2)")
    ap.add_argument("--only", default="mono,ctx,scale,fresh,floor",
                    help="comma list of scenarios: mono, ctx, scale, fresh, floor")
    ap.add_argument("--scale-cold-runs", type=int, default=3,
                    help="cold runs in the 200k-file scenario (default 3; each is minutes of disk I/O)")
    ap.add_argument("--tools", default="bk,bkj,bake,seed,buildx,tar",
                    help="comma list of tools: bk, bkj (bk-build bake -j <targets>, cold only), "
                         "bake, seed, buildx, tar")
    ap.add_argument("--merge", action="store_true",
                    help="keep earlier results for scenarios/tools not run now (results.json)")
    ap.add_argument("--md", default=None,
                    help="markdown file to rewrite (default: BENCHMARKS.md; with --quick: "
                         "$BKBENCH_DIR/quick/BENCHMARKS.md, so a smoke test never replaces real figures)")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: re-render the report from the saved results.json")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    cfg = ap.parse_args()
    cfg.runs = cfg.runs or (2 if cfg.quick else 5)
    cfg.tools = set(cfg.tools.split(","))
    only = [] if cfg.render else cfg.only.split(",")
    cfg.merge = cfg.merge or cfg.render
    cfg.mono_scale = 0.25 if cfg.quick else 1
    ctx_files, scale_files, ctx_mb = (2000, 20000, 10) if cfg.quick else (20000, 200000, 100)

    global WORK
    if cfg.quick:
        WORK = WORK / "quick"  # its smaller trees must not replace the full-size ones
    WORK.mkdir(parents=True, exist_ok=True)
    rfile = WORK / "results.json"
    results = {}
    if cfg.merge and rfile.exists():
        results = json.loads(rfile.read_text())
    if cfg.render:
        if not results:
            raise BenchError(f"--render: no saved results in {rfile}; run the benchmark first")
    else:
        cmd = cfg.command or "python3 bench/bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        cmds = results.get("commands", []) if cfg.merge else []
        results["commands"] = [c for c in cmds if c != cmd] + [cmd]
        results["runs"] = cfg.runs
        results["quick"] = cfg.quick
    for sc in only:
        if sc in results and not cfg.merge:
            del results[sc]

    b, k, note = bk_status()
    log(f"bk-build: build {'ok' if b else 'unavailable'}, bake {'ok' if k else 'not available yet'}"
        + (f" ({note})" if note else ""))
    t0 = time.time()
    try:
        for sc in only:
            log(f"scenario {sc}")
            t_sc = time.time()
            if sc == "mono":
                scenario_mono(cfg, results)
            elif sc == "ctx":
                scenario_ctx(cfg, results, "ctx", ctx_files, ctx_mb)
            elif sc == "scale":
                scenario_ctx(cfg, results, "scale", scale_files, ctx_mb)
            elif sc == "fresh":
                scenario_fresh(cfg, results)
            elif sc == "floor":
                scenario_floor(cfg, results)
            else:
                raise BenchError(f"unknown scenario {sc!r} (mono, ctx, scale, fresh, floor)")
            results.setdefault("durations", {})[sc] = round(time.time() - t_sc)
            results.setdefault("bk_binary", {})[sc] = bk_binary_id()
            results.setdefault("dates", {})[sc] = datetime.datetime.now(
                datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            rfile.write_text(json.dumps(results, indent=1))
    finally:
        rfile.write_text(json.dumps(results, indent=1))
        log(f"raw results: {rfile} ({time.time() - t0:.0f} s)")
    print_summary(results)
    md = Path(cfg.md) if cfg.md else (WORK / "BENCHMARKS.md" if cfg.quick
                                      else ROOT / "BENCHMARKS.md")
    md.write_text(render_md(results, cfg, environment(), kept_notes(md)))
    log(f"wrote {md}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
