#!/usr/bin/env python3
"""workload.py - the benchmark's input trees, generated on the spot, the same on every machine.

Three workloads (see bench/README.md for their layout and why they look the way they do):

* `monorepo(out, services, base_image, scale)`: 14 images at the defaults (pybase, services built
  `FROM` it, openresty needing the shared `src/luamods`, gateway/scheduler sharing `src/common`),
  ~20k included files / ~120 MB per unit of `scale`, plus junk every `.dockerignore` excludes.
* `flat_context(out, nfiles, total_mb)`: `FROM scratch` + `COPY . /app` over `nfiles` random files.
* `touch_one(tree, which)`: change the content of exactly one monorepo file (`luamods`: only
  openresty is affected; `base`: pybase and every image built `FROM` it).

Determinism: the same arguments give the same tree, byte for byte (names, contents, modes: files
0644, directories 0755, whatever the umask; mtimes are "now"). Every file's bytes come from its
own `random.Random` seeded with a string naming the file (and, in the monorepo, the scale), so a
file depends on nothing else; seeding `Random` from a `str` is stable across runs, platforms and
`PYTHONHASHSEED`. Needs python3 >= 3.9 (`Random.randbytes`), stdlib only.

Also a command line: `python3 bench/workload.py monorepo|ctx|touch ...` (`--help`).
"""

import argparse
import os
import random
import sys
import time

KB, MB = 1024, 1024 * 1024
DEFAULT_BASE_IMAGE = "localhost:5000/busybox:latest"
FILE_MODE, DIR_MODE = 0o644, 0o755


class WorkloadError(Exception):
    """Refused arguments or an output directory that cannot be used."""


# Random bytes mapped through this table look like source text: mostly letters (ordered by
# English frequency, so common ones dominate), spaces, some newlines, digits, punctuation and
# capitals. gzip shrinks it by about 30%, like real code, so compression neither wins nor
# loses unrealistically.
_LETTERS = "etaoinshrdlucmfwypvbgkjqxz"
TEXT_TABLE = (_LETTERS * 6 + " " * 44 + "\n" * 9 + "0123456789" + "_(),.:=#\"'[]{}+-*/<>"
              + _LETTERS.upper()[:17]).encode("ascii")
assert len(TEXT_TABLE) == 256

# Every image context carries the same ignore file, and junk that it must exclude.
DOCKERIGNORE = b"""# benchmark junk: must never reach the build daemon
**/node_modules
**/__pycache__
**/*.pyc
**/.git
build
.cache
"""

# Share of the included text files (at scale 1: 20,000) per part of the monorepo; the services
# split what is left (68%).
TEXT_FILES = 20000
SHARE_BASE, SHARE_LUAMODS, SHARE_COMMON, SHARE_OPENRESTY, SHARE_COMPONENT = .10, .10, .05, .03, .02
SHARE_SERVICES = .68
FILES_PER_DIR = 40

# The one file `touch_one` changes, and its comment marker.
TOUCH_TARGETS = {
    "luamods": ("src/luamods/pkg00/mod000/f0000.lua", "--"),
    "base": ("src/py/base/lib/pkg00/mod000/f0000.py", "#"),
}


class _Tree:
    """Writes files under `root`, creating directories (DIR_MODE) as needed."""

    def __init__(self, root):
        root = os.fspath(root)
        if os.path.lexists(root):
            if not os.path.isdir(root) or os.listdir(root):
                raise WorkloadError(f"refusing to generate into {root}: it exists and is not an "
                                    "empty directory (remove it or choose another path)")
        else:
            os.makedirs(root)
            os.chmod(root, DIR_MODE)
        self.root = root
        self._dirs = {""}

    def _ensure_dir(self, rel):
        if rel in self._dirs:
            return
        self._ensure_dir(os.path.dirname(rel))
        path = os.path.join(self.root, rel)
        os.mkdir(path)
        os.chmod(path, DIR_MODE)
        self._dirs.add(rel)

    def write(self, rel, data):
        self._ensure_dir(os.path.dirname(rel))
        # O_EXCL: a fresh tree never holds the name yet, so a clash is a generator bug.
        fd = os.open(os.path.join(self.root, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # the umask must not change the tree
            f.write(data)


def _scale_text(scale):
    """The scale as it enters the seeds: an integral scale without a fraction ("1"), otherwise
    Python's shortest form ("0.25")."""
    scale = float(scale)
    return str(int(scale)) if scale.is_integer() else repr(scale)


class _Monorepo(_Tree):
    def __init__(self, root, scale):
        super().__init__(root)
        self.scale = float(scale)
        self.scale_text = _scale_text(scale)

    def rng(self, key):
        return random.Random(f"bkbench:{key}:{self.scale_text}")

    def count(self, n):
        """n scaled, at least 1."""
        return max(1, int(round(n * self.scale)))

    def text(self, rel, header=b"", size=None):
        """A source-like file of `size` bytes (default: 1-8 KiB, skewed small, mean ~4.3 KiB)
        starting with `header`."""
        r = self.rng(rel)
        if size is None:
            size = 1 * KB + int(7 * KB * (r.random() ** 1.1))
        body = r.randbytes(max(0, size - len(header))).translate(TEXT_TABLE)
        self.write(rel, header + body)

    def blob(self, rel, lo=1 * MB, hi=5 * MB):
        """Incompressible bytes, lo..hi in size (shrunk with a scale below 1)."""
        r = self.rng(rel)
        size = r.randint(lo, hi)
        if self.scale < 1:
            size = int(size * self.scale)
        self.write(rel, r.randbytes(size))

    def random_file(self, rel, seed_key, size):
        self.write(rel, self.rng(seed_key).randbytes(size))

    def package_tree(self, prefix, nfiles, exts, comment):
        """`nfiles` text files in two levels of package dirs (FILES_PER_DIR per dir), each
        starting with a comment naming itself; extensions cycle through `exts`."""
        for i in range(nfiles):
            d = i // FILES_PER_DIR
            rel = f"{prefix}/pkg{d // 10:02d}/mod{d % 10:03d}/f{i:04d}{exts[i % len(exts)]}"
            self.text(rel, header=f"{comment} {rel}\n".encode())

    def junk(self, prefix, build_bytes):
        """What a real checkout carries and every context's .dockerignore excludes: node_modules,
        __pycache__/*.pyc, .git objects, and (if build_bytes > 0) 4 build outputs of
        build_bytes in total."""
        for i in range(self.count(200)):
            self.text(f"{prefix}/node_modules/pkg{i:03d}/index.js", b"// junk\n",
                      size=1 * KB + (i * 37) % (3 * KB))
        for i in range(self.count(50)):
            self.random_file(f"{prefix}/__pycache__/m{i:03d}.cpython-311.pyc",
                             f"{prefix}/__pycache__/m{i:03d}", 2 * KB + i * 13)
        for i in range(self.count(100)):
            self.random_file(f"{prefix}/.git/objects/{i % 256:02x}/{i:038x}",
                             f"{prefix}/.git/objects/{i:02x}", 1 * KB + i * 7)
        self.write(prefix + "/.git/HEAD", b"ref: refs/heads/main\n")
        if build_bytes > 0:
            for i in range(4):
                self.random_file(f"{prefix}/build/out{i}.bin", f"{prefix}/build/out{i}",
                                 build_bytes // 4)


PYBASE_DOCKERFILE = """\
# syntax is plain Dockerfile (no frontend image needed)
ARG BASE_IMAGE={base}
FROM ${{BASE_IMAGE}} AS build
WORKDIR /opt/pybase
COPY requirements.txt ./
RUN wc -l requirements.txt > /opt/pybase.reqs
COPY lib/ ./lib/
COPY vendor/ ./vendor/
RUN find /opt/pybase -type f | wc -l > /opt/pybase.count && du -s /opt/pybase > /opt/pybase.du

FROM ${{BASE_IMAGE}}
COPY --from=build /opt /opt
ENV PYTHONPATH=/opt/pybase/lib
RUN mkdir -p /app && cat /opt/pybase.count
"""

SERVICE_DOCKERFILE = """\
ARG REPO=localhost:5000
ARG TAG=latest
FROM ${REPO}/pybase:${TAG}
WORKDIR /app
COPY requirements.txt ./
RUN wc -l requirements.txt > /app/.reqs
COPY . /app
RUN find /app -type f | wc -l > /count
CMD ["sh", "-c", "cat /count"]
"""

# Every third service: deps / assets / final stages.
SERVICE_MULTISTAGE_DOCKERFILE = """\
ARG REPO=localhost:5000
ARG TAG=latest
FROM ${REPO}/pybase:${TAG} AS deps
WORKDIR /app
COPY requirements.txt ./
RUN wc -l requirements.txt > /app/.reqs

FROM deps AS assets
COPY assets/ /app/assets/
RUN find /app/assets -type f | wc -l > /assets.count

FROM deps
COPY --from=assets /app/assets /app/assets
COPY app/ /app/app/
RUN find /app -type f | wc -l > /count
CMD ["sh", "-c", "cat /count"]
"""

# The first stage is named like the shared folder, so the same Dockerfile works with a tar of
# `. ../../src/luamods` piped to `docker build -` (tar drops the leading ../../) and with a
# named context `luamods`, which replaces that stage.
OPENRESTY_DOCKERFILE = """\
ARG BASE_IMAGE={base}
FROM scratch AS luamods
COPY src/luamods/ /

FROM ${{BASE_IMAGE}}
COPY conf/ /usr/local/openresty/nginx/conf/
COPY --from=luamods / /usr/local/openresty/lualib/
COPY html/ /usr/local/openresty/nginx/html/
RUN find /usr/local/openresty -type f | wc -l > /count
CMD ["sh", "-c", "cat /count"]
"""

# gateway and scheduler: the same two ways for `src/common`.
COMPONENT_DOCKERFILE = """\
ARG REPO=localhost:5000
ARG TAG=latest
FROM scratch AS common
COPY src/common/ /

FROM ${{REPO}}/pybase:${{TAG}}
WORKDIR /app
COPY --from=common / /opt/common/
COPY {name}/ /app/{name}/
RUN find /app /opt/common -type f | wc -l > /count
CMD ["sh", "-c", "cat /count"]
"""

# The first line names the generator this workload was first published with; it is kept so that
# trees stay byte-identical to those (the file is in no image's context).
README_BENCH = """\
bkbench monorepo (generated by gen-monorepo.sh)
services={services} base={base} scale={scale}
images: pybase (src/py/base), service_1..service_{services} (src/py/service_K, FROM ${{REPO}}/pybase:${{TAG}}),
        openresty (components/openresty, needs src/luamods), gateway + scheduler
        (components/*, need src/common, FROM pybase)
"""


def monorepo(out, services=10, base_image=DEFAULT_BASE_IMAGE, scale=1):
    """Generate the multi-image monorepo in `out` (absent or empty). `scale` (> 0) multiplies
    file counts and junk sizes; `services` (>= 1) splits the services' share of the files.
    `images.txt` lists the images: NAME CONTEXT_DIR DEPENDS_ON NAMED_CONTEXT ("-" for none)."""
    if not isinstance(services, int) or services < 1:
        raise WorkloadError(f"services must be an integer >= 1, not {services!r}")
    if not float(scale) > 0:
        raise WorkloadError(f"scale must be a number > 0, not {scale!r}")
    t = _Monorepo(out, scale)
    n_base, n_lua, n_common, n_resty, n_component = (
        int(TEXT_FILES * share * t.scale)
        for share in (SHARE_BASE, SHARE_LUAMODS, SHARE_COMMON, SHARE_OPENRESTY, SHARE_COMPONENT))
    n_service = max(1, int(TEXT_FILES * SHARE_SERVICES * t.scale) // services)
    build_bytes_per_service = int(200 * MB * t.scale) // services

    t.write("README.bench", README_BENCH.format(services=services, base=base_image,
                                                scale=t.scale_text).encode())
    images = ["pybase src/py/base - -"]
    images += [f"service_{k} src/py/service_{k} pybase -" for k in range(1, services + 1)]
    images += ["openresty components/openresty - luamods=src/luamods",
               "gateway components/gateway pybase common=src/common",
               "scheduler components/scheduler pybase common=src/common"]
    t.write("images.txt", "".join(line + "\n" for line in images).encode())

    # pybase
    p = "src/py/base"
    t.write(p + "/.dockerignore", DOCKERIGNORE)
    t.write(p + "/Dockerfile", PYBASE_DOCKERFILE.format(base=base_image).encode())
    t.text(p + "/requirements.txt", size=2 * KB)
    t.package_tree(p + "/lib", n_base, [".py", ".py", ".py", ".pyi", ".txt"], "#")
    for i in range(3):
        t.blob(f"{p}/vendor/wheel{i}.whl")
    t.junk(p, 0)

    # services, FROM pybase
    for k in range(1, services + 1):
        p = f"src/py/service_{k}"
        t.write(p + "/.dockerignore", DOCKERIGNORE)
        df = SERVICE_MULTISTAGE_DOCKERFILE if k % 3 == 0 else SERVICE_DOCKERFILE
        t.write(p + "/Dockerfile", df.encode())
        t.text(p + "/requirements.txt", size=1 * KB)
        t.package_tree(p + "/app", n_service, [".py", ".py", ".py", ".json", ".html", ".sql"], "#")
        t.blob(p + "/assets/model.bin")
        t.junk(p, build_bytes_per_service)

    # src/luamods: shared, outside openresty's folder
    t.write("src/luamods/.dockerignore", DOCKERIGNORE)
    t.package_tree("src/luamods", n_lua, [".lua"], "--")
    t.random_file("src/luamods/.cache/rocks.tar", "src/luamods/.cache/rocks.tar",
                  int(5 * MB * t.scale))

    # openresty
    p = "components/openresty"
    t.write(p + "/.dockerignore", DOCKERIGNORE)
    t.write(p + "/Dockerfile", OPENRESTY_DOCKERFILE.format(base=base_image).encode())
    t.package_tree(p + "/conf", n_resty // 2, [".conf"], "#")
    t.package_tree(p + "/html", n_resty - n_resty // 2, [".html", ".css", ".js"], "<!--")
    t.blob(p + "/html/static/bundle.bin")
    t.junk(p, 0)

    # src/common and the two images sharing it
    t.write("src/common/.dockerignore", DOCKERIGNORE)
    t.package_tree("src/common", n_common, [".py"], "#")
    for name in ("gateway", "scheduler"):
        p = "components/" + name
        t.write(p + "/.dockerignore", DOCKERIGNORE)
        t.write(p + "/Dockerfile", COMPONENT_DOCKERFILE.format(name=name).encode())
        t.package_tree(f"{p}/{name}", n_component, [".py"], "#")
        t.junk(p, 0)


def flat_context(out, nfiles=20000, total_mb=100):
    """Generate a flat build context in `out` (absent or empty): a Dockerfile `FROM scratch` +
    `COPY . /app`, an empty .dockerignore and `nfiles` files of random bytes, 100 per directory,
    sized uniformly within ±50% of total_mb (10^6 bytes) / nfiles."""
    if not isinstance(nfiles, int) or nfiles < 1:
        raise WorkloadError(f"nfiles must be an integer >= 1, not {nfiles!r}")
    if not float(total_mb) > 0:
        raise WorkloadError(f"total_mb must be a number > 0, not {total_mb!r}")
    t = _Tree(out)
    avg = int(float(total_mb) * 1e6 / nfiles)
    t.write("Dockerfile", b"FROM scratch\nCOPY . /app\n")
    t.write(".dockerignore", b"")
    for i in range(nfiles):
        rel = f"d{i // 100:03d}/f{i:05d}.dat"
        r = random.Random("bkctx:" + rel)
        t.write(rel, r.randbytes(r.randint(avg // 2, avg * 3 // 2)))


def touch_one(tree, which):
    """Append a line to the one file `which` names in the monorepo `tree` (see TOUCH_TARGETS)
    and return its path. The line carries the time in nanoseconds, so every call is a real
    content change."""
    if which not in TOUCH_TARGETS:
        raise WorkloadError(f"which must be one of {', '.join(TOUCH_TARGETS)}, not {which!r}")
    rel, comment = TOUCH_TARGETS[which]
    path = os.path.join(os.fspath(tree), rel)
    if not os.path.isfile(path):
        raise WorkloadError(f"{path} not found: is {tree} a monorepo from `workload.py monorepo`?")
    with open(path, "ab") as f:
        f.write(f"{comment} touched {time.time_ns()}\n".encode())
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("monorepo", help="the multi-image monorepo")
    m.add_argument("out", help="output directory (absent or empty)")
    m.add_argument("--services", type=int, default=10)
    m.add_argument("--base-image", default=DEFAULT_BASE_IMAGE,
                   help="image with a shell (busybox) that pybase and openresty start from")
    m.add_argument("--scale", type=float, default=1,
                   help="multiplies file counts and junk sizes (1: ~20k included files)")
    c = sub.add_parser("ctx", help="a flat COPY . /app context")
    c.add_argument("out", help="output directory (absent or empty)")
    c.add_argument("--files", type=int, default=20000)
    c.add_argument("--mb", type=float, default=100, help="total size in MB (10^6 bytes)")
    t = sub.add_parser("touch", help="change one monorepo file (prints its path)")
    t.add_argument("tree", help="a generated monorepo")
    t.add_argument("which", choices=sorted(TOUCH_TARGETS))
    a = ap.parse_args(argv)
    try:
        if a.cmd == "monorepo":
            monorepo(a.out, a.services, a.base_image, a.scale)
        elif a.cmd == "ctx":
            flat_context(a.out, a.files, a.mb)
        else:
            print(touch_one(a.tree, a.which))
    except (WorkloadError, OSError) as e:
        print(f"workload: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
