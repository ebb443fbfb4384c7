//! Differential test of `bk-build bake`'s skip decisions, with `docker buildx build` on the same
//! daemon as the oracle.
//!
//! For each Dockerfile form, one project (a `bk-build.toml`; in `scripted_bake_file_project` a
//! `docker-bake.hcl`, in `scripted_compose_project` a `compose.yaml` whose service builds on
//! another service) is built once, then edited step by step (edits
//! accumulate). After every edit buildx builds the project into a fresh directory and its tree
//! is compared with buildx's previous tree; `bk-build plan` must say `build` whenever that tree
//! changed (and `bake` must then export exactly buildx's tree), and must say `skip` after an
//! mtime-only touch or an edit of a `.dockerignore`d file that left the tree unchanged.
//! Building although buildx's output did not change is allowed (over-building) and only listed
//! in the summary each test prints (`cargo test --test differential -- --nocapture`).
//!
//! The scripted tests apply every edit kind to every form; `random_edits_*` apply seeded random
//! edits (the seed is printed; `BK_DIFF_SEED=<n>` replays one). Every failure of a test is
//! collected (a test does not stop at the first one) and reported together at its end.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use support::*;

type Tree = BTreeMap<String, String>;

// ---------------------------------------------------------------------------------------------
// Dockerfile forms

/// One Dockerfile form and the paths (relative to the project root) its scripted edits hit.
#[derive(Clone, Copy)]
struct Form {
    name: &'static str,
    /// The Dockerfile; `{BASE}` is replaced by the base image.
    dockerfile: &'static str,
    /// The Dockerfile lives in `df/` (outside the context) with a `df/Dockerfile.dockerignore`.
    outside: bool,
    /// The target has the named local context `lib` = `lib/`.
    lib: bool,
    /// A copied file: content edit and `chmod +x`.
    file: &'static str,
    /// A new file.
    add: &'static str,
    /// A file to delete.
    delete: &'static str,
    /// A new empty directory.
    empty_dir: &'static str,
    /// A pattern appended to the form's ignore file (sends fewer files).
    fewer: &'static str,
    /// Context-relative paths random edits must neither delete nor ignore: the Dockerfile names
    /// them, so the build would fail without them.
    keep: &'static [&'static str],
}

impl Form {
    /// The ignore file (relative to the project root) that governs the form's focus paths.
    fn ignore_file(&self) -> &'static str {
        if self.lib {
            "lib/.dockerignore"
        } else if self.outside {
            "df/Dockerfile.dockerignore"
        } else {
            "ctx/.dockerignore"
        }
    }

    fn dockerfile_path(&self) -> &'static str {
        if self.outside {
            "df/Dockerfile"
        } else {
            "ctx/Dockerfile"
        }
    }
}

/// The whole context copied: edits anywhere in it matter.
const WHOLE: Form = Form {
    name: "COPY . /app",
    dockerfile: "FROM scratch\nCOPY . /app\n",
    outside: false,
    lib: false,
    file: "ctx/a.txt",
    add: "ctx/new.txt",
    delete: "ctx/b.txt",
    empty_dir: "ctx/emptydir",
    fewer: "app",
    keep: &[],
};

/// Like [`WHOLE`] but only `app/` is copied.
const NARROW: Form = Form {
    name: "COPY app/ /app/",
    dockerfile: "FROM scratch\nCOPY app/ /app/\n",
    file: "ctx/app/main.py",
    add: "ctx/app/sub/new.py",
    delete: "ctx/app/util.py",
    empty_dir: "ctx/app/empty",
    fewer: "app/sub",
    keep: &["app"],
    ..WHOLE
};

const COPY_DOT: Form = WHOLE;
const COPY_DOT_SLASH: Form = Form {
    name: "COPY ./ /app/",
    dockerfile: "FROM scratch\nCOPY ./ /app/\n",
    ..WHOLE
};
const ADD_DOT: Form = Form {
    name: "ADD . /app",
    dockerfile: "FROM scratch\nADD . /app\n",
    ..WHOLE
};
const COPY_JSON: Form = Form {
    name: "COPY [\".\", \"/app\"]",
    dockerfile: "FROM scratch\nCOPY [\".\", \"/app\"]\n",
    ..WHOLE
};
const COPY_CHOWN: Form = Form {
    name: "COPY --chown=1:1 . /app",
    dockerfile: "FROM scratch\nCOPY --chown=1:1 . /app\n",
    ..WHOLE
};
const COPY_MULTI_SRC: Form = Form {
    name: "COPY a.txt . /x/",
    dockerfile: "FROM scratch\nCOPY a.txt . /x/\n",
    keep: &["a.txt"],
    ..WHOLE
};
const WORKDIR: Form = Form {
    name: "WORKDIR /w + COPY ./ ./",
    dockerfile: "FROM scratch\nWORKDIR /w\nCOPY ./ ./\n",
    ..WHOLE
};
/// `--exclude` works with this daemon's built-in Dockerfile frontend without a `# syntax` line.
const COPY_EXCLUDE: Form = Form {
    name: "COPY --exclude=*.log --exclude=app/sub . /app",
    dockerfile: "FROM scratch\nCOPY --exclude=*.log --exclude=app/sub . /app\n",
    ..WHOLE
};
const RUN_BIND: Form = Form {
    name: "RUN --mount=type=bind,target=/src cp -a /src /app",
    dockerfile: "FROM {BASE} AS b\nRUN --mount=type=bind,target=/src cp -a /src /app\n\
                 FROM scratch\nCOPY --from=b /app /app\n",
    ..WHOLE
};
const SYMLINK_DIR: Form = Form {
    name: "COPY sub/a /opt/a (sub -> real)",
    dockerfile: "FROM scratch\nCOPY sub/a /opt/a\n",
    file: "ctx/real/a",
    add: "ctx/real/new",
    delete: "ctx/real/b",
    empty_dir: "ctx/real/emptydir",
    fewer: "real/new",
    ..WHOLE
};
const SYMLINK_FILE: Form = Form {
    name: "COPY link.txt /opt/ (link.txt -> real.txt)",
    dockerfile: "FROM scratch\nCOPY link.txt /opt/\n",
    file: "ctx/real.txt",
    fewer: "a.txt",
    ..WHOLE
};
const GLOB_TXT: Form = Form {
    name: "COPY *.txt /app/",
    dockerfile: "FROM scratch\nCOPY *.txt /app/\n",
    empty_dir: "ctx/dir.txt",
    fewer: "new.txt",
    keep: &["a.txt"],
    ..WHOLE
};
const GLOB_PY: Form = Form {
    name: "COPY app/*.py /py/",
    dockerfile: "FROM scratch\nCOPY app/*.py /py/\n",
    add: "ctx/app/new.py",
    fewer: "app/new.py",
    keep: &["app/main.py"],
    ..NARROW
};
const NAMED_LIB: Form = Form {
    name: "COPY --from=lib . /lib (named local context)",
    dockerfile: "FROM scratch\nCOPY --from=lib . /lib\nCOPY a.txt /a.txt\n",
    lib: true,
    file: "lib/lib.txt",
    add: "lib/new2.txt",
    delete: "lib/sub/mod.txt",
    empty_dir: "lib/empty",
    fewer: "extra.txt",
    keep: &["a.txt"],
    ..WHOLE
};
const HEREDOC_COPY: Form = Form {
    name: "COPY <<EOF /etc/x + COPY app/ /app/",
    dockerfile: "FROM scratch\nCOPY <<EOF /etc/x\nhello\nEOF\nCOPY app/ /app/\n",
    ..NARROW
};
const HEREDOC_RUN: Form = Form {
    name: "COPY a.txt + RUN <<EOF",
    dockerfile: "FROM {BASE} AS b\nCOPY a.txt /in/a.txt\nRUN <<EOF\nmkdir -p /out\n\
                 cat /in/a.txt /in/a.txt > /out/double\nstat -c %a /in/a.txt > /out/mode\nEOF\n\
                 FROM scratch\nCOPY --from=b /out /out\n",
    keep: &["a.txt"],
    ..WHOLE
};
const ARG_SRC: Form = Form {
    name: "ARG SRC + COPY ${SRC} /app (SRC=app)",
    dockerfile: "FROM scratch\nARG SRC\nCOPY ${SRC} /app\n",
    keep: &["app", "src"],
    ..NARROW
};
const MULTI_STAGE: Form = Form {
    name: "multi-stage (COPY src + RUN, COPY --from=build)",
    dockerfile: "FROM {BASE} AS build\nCOPY src /src\n\
                 RUN mkdir /out && cat /src/*.c > /out/all.c \
                 && (cd /src && find . | sort) > /out/list \
                 && (cd /src && find . -type f -perm -100 | sort) > /out/exec\n\
                 FROM scratch\nCOPY --from=build /out /out\n",
    file: "ctx/src/main.c",
    add: "ctx/src/new.c",
    delete: "ctx/src/lib.c",
    empty_dir: "ctx/src/empty",
    fewer: "src/extra.h",
    keep: &["src/main.c"],
    ..WHOLE
};
const OUTSIDE: Form = Form {
    name: "Dockerfile outside the context (df/Dockerfile + df/Dockerfile.dockerignore)",
    dockerfile: "FROM scratch\nCOPY . /app\n",
    outside: true,
    delete: "ctx/src/lib.c",
    ..WHOLE
};
/// The same, copying only `app/`: the ignore-file edits are not masked by the whole-context
/// copy (`df/Dockerfile.dockerignore` ignores `app/sub/x.py`, the context's does not).
const OUTSIDE_NARROW: Form = Form {
    name: "Dockerfile outside the context + COPY app/ /app/",
    dockerfile: "FROM scratch\nCOPY app/ /app/\n",
    outside: true,
    ..NARROW
};

/// Paths (context-relative) no random edit deletes or ignores: symlinks and their targets, the
/// Dockerfile and the ignore files.
const KEEP_ALWAYS: &[&str] = &[
    "Dockerfile",
    ".dockerignore",
    "Dockerfile.dockerignore",
    "link.txt",
    "real.txt",
    "other.txt",
    "sub",
    "real",
    "real2",
    "real/a",
    "real2/a",
];

/// The `<Dockerfile>.dockerignore` the "add Dockerfile.dockerignore" edit writes: different
/// from the context's `.dockerignore` (sends `notes.md`, not `app/util.py`), still ignores
/// `*.log`.
const ADDED_DF_IGNORE: &str = "*.log\ndrafts\napp/util.py\n";

// ---------------------------------------------------------------------------------------------
// Edits

#[derive(Clone, Debug)]
enum Edit {
    /// Every file rewritten with the same bytes, every entry given a new mtime.
    Touch,
    /// Content edit of a `.dockerignore`d file (root-relative path).
    Ignored(String),
    Content(String),
    /// `chmod +x` (true) or `chmod -x` (false).
    Chmod(String, bool),
    Add(String),
    Delete(String),
    EmptyDir(String),
    /// Ignore file, line removed (sends more).
    IgnoreDrop(String, String),
    /// Ignore file, line appended: a pattern sends fewer, a `!exception` sends more.
    IgnoreAdd(String, String),
    /// Symlink, new target.
    Retarget(String, String),
    /// Content edit that keeps the size and the mtime (`cp -p`, `tar x`, `touch -r`): the
    /// daemon's copy of the directory cannot see it.
    SameStat(String),
    /// A directory's mode toggled between 0755 and 0700.
    ChmodDir(String),
    RemoveDfIgnore,
    AddDfIgnore,
    DockerfileComment,
    DockerfileInstr,
    /// New value of the build arg `SRC` (in bk-build.toml and for buildx).
    Arg(String),
}

impl Edit {
    /// Edits after which an unchanged buildx tree means bk-build must skip.
    fn must_skip(&self) -> bool {
        matches!(self, Edit::Touch | Edit::Ignored(_))
    }

    fn describe(&self) -> String {
        match self {
            Edit::Touch => "mtime-only touch of every file".into(),
            Edit::Ignored(p) => format!("edit of .dockerignore'd file {p}"),
            Edit::Content(p) => format!("content edit of {p}"),
            Edit::Chmod(p, true) => format!("chmod +x {p}"),
            Edit::Chmod(p, false) => format!("chmod -x {p}"),
            Edit::Add(p) => format!("add file {p}"),
            Edit::Delete(p) => format!("delete file {p}"),
            Edit::EmptyDir(p) => format!("add empty dir {p}"),
            Edit::IgnoreDrop(f, l) => format!("{f} sends more: remove line `{l}`"),
            Edit::IgnoreAdd(f, l) if l.starts_with('!') => {
                format!("{f} sends more: add exception `{l}`")
            }
            Edit::IgnoreAdd(f, l) => format!("{f} sends fewer: add `{l}`"),
            Edit::Retarget(l, t) => format!("symlink retarget {l} -> {t}"),
            Edit::SameStat(p) => format!("same-size edit of {p}, mtime kept"),
            Edit::ChmodDir(p) => format!("chmod of directory {p}"),
            Edit::RemoveDfIgnore => "remove <Dockerfile>.dockerignore".into(),
            Edit::AddDfIgnore => "add/replace <Dockerfile>.dockerignore".into(),
            Edit::DockerfileComment => "Dockerfile edit: comment appended".into(),
            Edit::DockerfileInstr => "Dockerfile edit: instruction appended".into(),
            Edit::Arg(v) => format!("build arg change SRC={v}"),
        }
    }
}

/// Every edit kind, aimed at the paths relevant to `f` where the kind takes a path.
fn scripted(f: &Form) -> Vec<Edit> {
    let s = |x: &str| x.to_string();
    let ign = s(f.ignore_file());
    vec![
        Edit::Touch,
        Edit::Ignored(s("ctx/debug.log")),
        Edit::Ignored(s("lib/cache.tmp")),
        Edit::Content(s(f.file)),
        Edit::Chmod(s(f.file), true),
        Edit::SameStat(s(f.file)),
        Edit::ChmodDir(parent_dir(f.file)),
        Edit::Add(s(f.add)),
        Edit::Delete(s(f.delete)),
        Edit::EmptyDir(s(f.empty_dir)),
        Edit::IgnoreDrop(ign.clone(), s("notes.md")),
        Edit::IgnoreAdd(ign.clone(), s("!drafts/keep.txt")),
        Edit::IgnoreAdd(ign.clone(), s(f.fewer)),
        // Docker re-includes a file under an excluded directory (gitignore would not).
        Edit::IgnoreAdd(ign, s("!app/sub/x.py")),
        // Docker's `*.log` matches at the context root only (gitignore's at any depth).
        Edit::Add(s("ctx/app/nested.log")),
        Edit::Content(s("ctx/real.txt")),
        Edit::Content(s("ctx/real/a")),
        Edit::Retarget(s("ctx/link.txt"), s("other.txt")),
        Edit::Content(s("ctx/other.txt")),
        Edit::Retarget(s("ctx/sub"), s("real2")),
        Edit::Content(s("ctx/real2/a")),
        Edit::Content(s("lib/lib.txt")),
        Edit::Add(s("lib/new.txt")),
        Edit::RemoveDfIgnore,
        Edit::AddDfIgnore,
        Edit::DockerfileComment,
        Edit::DockerfileInstr,
        Edit::Arg(s("src")),
        Edit::Touch,
        Edit::Ignored(s("ctx/debug.log")),
    ]
}

/// The directory holding `file` (root-relative), or the one below the root for a file at a
/// context's top (the context directory itself is never sent, so its mode cannot matter).
fn parent_dir(file: &str) -> String {
    match file.rsplit_once('/') {
        Some((dir, _)) if dir.contains('/') => dir.to_string(),
        _ => "ctx/app".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny seeded PRNG (xorshift64*)

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that close seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `BK_DIFF_SEED`, or one derived from the time (printed, so a failure can be replayed); one
/// per test process, so every random test of a run replays with the same value.
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("BK_DIFF_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("BK_DIFF_SEED={s:?} is not a number")),
        Err(_) => {
            let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            (d.as_nanos() as u64) % 1_000_000_000_000
        }
    })
}

// ---------------------------------------------------------------------------------------------
// A project under test

/// How the project under test is written: the same target in either file format.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProjectFile {
    Toml,
    /// `docker-bake.hcl`, read as buildx reads it (paths relative to the current directory,
    /// `dockerfile` relative to the context).
    BakeHcl,
    /// `compose.yaml`: service `t` with a `build:` block (args, additional contexts, the
    /// output in `x-bake`) built on a second service `base` through `service:base`, whose
    /// files the form's Dockerfile copies (`COPY --from=base`). buildx bake on the same file
    /// is the oracle, and the base's own edits are added to the script.
    Compose,
}

/// The Dockerfile of the compose project's `base` service, and what `t` appends to use it.
const BASE_DOCKERFILE: &str = "FROM scratch\nCOPY . /base/\n";
const USE_BASE: &str = "COPY --from=base /base /base\n";

/// Edits of the compose project's `base` service: every one but the touch and the ignored
/// file changes `t`'s files (through the base), so `t` must be rebuilt on the new base.
fn base_edits() -> Vec<Edit> {
    vec![
        Edit::Content("base/base.txt".into()),
        Edit::Touch,
        Edit::Ignored("base/ignored.log".into()),
        Edit::Add("base/new.txt".into()),
        Edit::Chmod("base/base.txt".into(), true),
        Edit::Delete("base/new.txt".into()),
    ]
}

struct Project {
    tmp: tempfile::TempDir,
    root: PathBuf,
    file: ProjectFile,
    /// A name no other test uses (the compose project's name).
    name: String,
    /// bake's `type=local` dest (outside the project).
    out: PathBuf,
    form: Form,
    seed: Option<u64>,
    src_arg: String,
    step: usize,
    /// buildx's tree after the last edit it built successfully.
    baseline: Tree,
    /// bk-build's recorded state matches the inputs (no failed build since).
    in_sync: bool,
    /// An edit the daemon's copy of a directory cannot see was made: buildx, which would
    /// build from its stale copy, then builds with a node ID of its own each time.
    oracle_fresh: bool,
    failures: Vec<String>,
    overbuilds: Vec<String>,
    notes: Vec<String>,
    log: Vec<String>,
    builds: usize,
}

fn quiet(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn tail(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n    ")
}

/// Differences from `old` to `new`: `- path` only in old, `+ path` only in new, `~` changed.
fn tree_diff(old: &Tree, new: &Tree) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in old {
        match new.get(k) {
            None => d.push(format!("- {k} ({v})")),
            Some(w) if w != v => d.push(format!("~ {k}: {v} -> {w}")),
            _ => {}
        }
    }
    for (k, v) in new {
        if !old.contains_key(k) {
            d.push(format!("+ {k} ({v})"));
        }
    }
    d
}

fn show_diff(d: &[String]) -> String {
    const MAX: usize = 15;
    let mut s: String = d.iter().take(MAX).map(|l| format!("\n    {l}")).collect();
    if d.len() > MAX {
        s.push_str(&format!("\n    … {} more", d.len() - MAX));
    }
    s
}

fn append(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

/// Every entry under `dir` (not following symlinks), as paths relative to `dir`, skipping
/// `.bk-build`.
fn walk(dir: &Path) -> Vec<(String, std::fs::FileType)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel == ".bk-build" {
                continue;
            }
            let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_dir() {
                stack.push(p.clone());
            }
            out.push((rel, ft));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl Project {
    fn new(form: Form, seed: Option<u64>) -> Project {
        Project::with_file(form, seed, ProjectFile::Toml)
    }

    fn with_file(form: Form, seed: Option<u64>, file: ProjectFile) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("proj");
        let out = tmp.path().join("bake-out");
        let mut p = Project {
            tmp,
            root,
            file,
            name: unique("diff"),
            out,
            form,
            seed,
            src_arg: "app".into(),
            step: 0,
            baseline: Tree::new(),
            in_sync: true,
            oracle_fresh: false,
            failures: Vec::new(),
            overbuilds: Vec::new(),
            notes: Vec::new(),
            log: Vec::new(),
            builds: 0,
        };
        p.populate();
        p.write_toml();
        p.baseline = p.oracle().unwrap_or_else(|e| {
            panic!(
                "[{}] initial buildx build failed (test setup): {e}",
                form.name
            )
        });
        assert!(
            !p.baseline.is_empty(),
            "[{}] initial buildx build exported nothing",
            form.name
        );
        let (action, reasons) = p
            .plan()
            .unwrap_or_else(|e| panic!("[{}] initial bk-build plan failed: {e}", form.name));
        assert_eq!(
            action, "build",
            "[{}] initial plan must build ({reasons})",
            form.name
        );
        let baked = p
            .bake()
            .unwrap_or_else(|e| panic!("[{}] initial bk-build bake failed: {e}", form.name));
        let d = tree_diff(&p.baseline, &baked);
        if !d.is_empty() {
            let msg = format!(
                "[{}] initial build ({}): `bk-build bake` exported a different tree from \
                 buildx's (buildx -> bake):{}",
                form.name,
                p.seed_text(),
                show_diff(&d)
            );
            p.failures.push(msg);
        }
        p
    }

    fn seed_text(&self) -> String {
        match self.seed {
            Some(s) => format!("seed {s}, BK_DIFF_SEED={s}"),
            None => "seed: none (scripted edits)".into(),
        }
    }

    fn populate(&self) {
        let c = self.root.join("ctx");
        write(&c.join(".dockerignore"), "*.log\nnotes.md\ndrafts\n");
        for (p, s) in [
            ("a.txt", "a v1\n"),
            ("b.txt", "b v1\n"),
            ("other.txt", "other v1\n"),
            ("real.txt", "real v1\n"),
            ("real/a", "real/a v1\n"),
            ("real/b", "real/b v1\n"),
            ("real2/a", "real2/a v1\n"),
            ("app/main.py", "print('main')\n"),
            ("app/util.py", "def util(): pass\n"),
            ("app/sub/x.py", "X = 1\n"),
            ("src/main.c", "int main(void) { return 0; }\n"),
            ("src/lib.c", "int lib(void) { return 1; }\n"),
            ("src/extra.h", "#define EXTRA 1\n"),
            ("drafts/keep.txt", "keep v1\n"),
            ("drafts/tmp.txt", "tmp v1\n"),
            ("notes.md", "# notes\n"),
            ("debug.log", "log v1\n"),
        ] {
            write(&c.join(p), s);
        }
        std::os::unix::fs::symlink("real.txt", c.join("link.txt")).unwrap();
        std::os::unix::fs::symlink("real", c.join("sub")).unwrap();

        let l = self.root.join("lib");
        write(&l.join(".dockerignore"), "*.tmp\nnotes.md\ndrafts\n");
        for (p, s) in [
            ("lib.txt", "lib v1\n"),
            ("extra.txt", "extra v1\n"),
            ("sub/mod.txt", "mod v1\n"),
            ("notes.md", "# lib notes\n"),
            ("cache.tmp", "cache v1\n"),
            ("drafts/keep.txt", "lib keep v1\n"),
        ] {
            write(&l.join(p), s);
        }

        let mut dockerfile = self.form.dockerfile.replace("{BASE}", &base_image());
        if self.file == ProjectFile::Compose {
            dockerfile.push_str(USE_BASE);
            let b = self.root.join("base");
            write(&b.join("Dockerfile"), BASE_DOCKERFILE);
            write(&b.join(".dockerignore"), "*.log\n");
            write(&b.join("base.txt"), "base v1\n");
            write(&b.join("ignored.log"), "log v1\n");
        }
        write(&self.root.join(self.form.dockerfile_path()), dockerfile);
        if self.form.outside {
            write(
                &self.root.join("df/Dockerfile.dockerignore"),
                "*.log\nnotes.md\ndrafts\nb.txt\napp/sub/x.py\n",
            );
        }
    }

    fn write_toml(&self) {
        if self.file == ProjectFile::Compose {
            // A project name of its own: the default image names (`NAME-base`) go into the
            // shared Docker Engine.
            let mut c = format!(
                "name: {}\nservices:\n  base:\n    build: base\n  t:\n    build:\n      context: ctx\n",
                self.name
            );
            if self.form.outside {
                c.push_str("      dockerfile: ../df/Dockerfile\n");
            }
            c.push_str(&format!("      args:\n        SRC: {}\n", self.src_arg));
            c.push_str("      additional_contexts:\n        base: service:base\n");
            if self.form.lib {
                c.push_str("        lib: ./lib\n");
            }
            c.push_str(&format!(
                "      x-bake:\n        output:\n          - type=local,dest={}\n",
                self.out.display()
            ));
            write(&self.root.join("compose.yaml"), c);
            return;
        }
        if self.file == ProjectFile::BakeHcl {
            // buildx builds the `default` group when no target is named.
            let mut t = String::from(
                "group \"default\" {\n  targets = [\"t\"]\n}\n\ntarget \"t\" {\n  context = \"ctx\"\n",
            );
            if self.form.outside {
                t.push_str("  dockerfile = \"../df/Dockerfile\"\n");
            }
            t.push_str(&format!("  args = {{ SRC = \"{}\" }}\n", self.src_arg));
            if self.form.lib {
                t.push_str("  contexts = { lib = \"lib\" }\n");
            }
            t.push_str(&format!(
                "  output = [\"type=local,dest={}\"]\n}}\n",
                self.out.display()
            ));
            write(&self.root.join("docker-bake.hcl"), t);
            return;
        }
        let mut t = String::from("[target.t]\ncontext = \"ctx\"\n");
        if self.form.outside {
            t.push_str("dockerfile = \"df/Dockerfile\"\n");
        }
        t.push_str(&format!("args = {{ SRC = \"{}\" }}\n", self.src_arg));
        if self.form.lib {
            t.push_str("contexts = { lib = \"lib\" }\n");
        }
        t.push_str(&format!(
            "outputs = [\"type=local,dest={}\"]\n",
            self.out.display()
        ));
        write(&self.root.join("bk-build.toml"), t);
    }

    /// `docker buildx build` of the current project into a fresh directory (for a compose
    /// project, `docker buildx bake` of its compose file, which builds `base` inside `t`).
    fn oracle(&self) -> Result<Tree, String> {
        self.oracle_into(&format!("buildx-{}", self.step))
    }

    /// [`oracle`](Self::oracle), exporting to `tmp/<name>`.
    fn oracle_into(&self, name: &str) -> Result<Tree, String> {
        let dest = self.tmp.path().join(name);
        let mut c = docker();
        if self.oracle_fresh {
            c.env(
                "BUILDX_CONFIG",
                self.tmp.path().join(format!("{name}-config")),
            );
        }
        if self.file == ProjectFile::Compose {
            c.current_dir(&self.root)
                // Writing outside the current directory needs an entitlement in bake.
                .env("BUILDX_BAKE_ENTITLEMENTS_FS", "0")
                .args([
                    "buildx",
                    "bake",
                    "--progress",
                    "quiet",
                    "-f",
                    "compose.yaml",
                ])
                .arg("--set")
                .arg(format!("t.output=type=local,dest={}", dest.display()))
                .arg("t");
        } else {
            c.args(["buildx", "build", "--progress", "quiet", "-f"])
                .arg(self.root.join(self.form.dockerfile_path()))
                .arg("--build-arg")
                .arg(format!("SRC={}", self.src_arg));
            if self.form.lib {
                c.arg("--build-context")
                    .arg(format!("lib={}", self.root.join("lib").display()));
            }
            c.arg("-o")
                .arg(format!("type=local,dest={}", dest.display()))
                .arg(self.root.join("ctx"));
        }
        let o = quiet(&mut c);
        let t = if !o.status.success() {
            Err(format!(
                "buildx failed (exit {:?}):\n    {}",
                o.status.code(),
                tail(&o.stderr, 8)
            ))
        } else if dest.exists() {
            Ok(tree(&dest))
        } else {
            Ok(Tree::new())
        };
        let _ = std::fs::remove_dir_all(&dest);
        t
    }

    /// `bk-build plan --format json`: (action, reasons) of target `t`.
    fn plan(&self) -> Result<(String, String), String> {
        let o = quiet(
            bk().current_dir(&self.root)
                .args(["plan", "--format", "json"]),
        );
        if !o.status.success() {
            return Err(format!(
                "bk-build plan failed (exit {:?}):\n    {}",
                o.status.code(),
                tail(&o.stderr, 8)
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|e| {
            format!(
                "bk-build plan printed no JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })?;
        let t = v
            .as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == "t"))
            .ok_or_else(|| format!("target t missing from the plan: {v}"))?;
        let action = t["action"].as_str().unwrap_or("?").to_string();
        let reasons = t["reasons"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|x| x.as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        Ok((action, reasons))
    }

    /// `bk-build bake` into a cleared dest (buildx keeps stale files in a reused local dest,
    /// and the oracle always builds into a fresh one), then the exported tree.
    fn bake(&mut self) -> Result<Tree, String> {
        let _ = std::fs::remove_dir_all(&self.out);
        self.builds += 1;
        let md = self.root.join("bake-metadata.json");
        let o = quiet(
            bk().current_dir(&self.root)
                .args(["bake", "--progress", "quiet", "--metadata-file"])
                .arg(&md),
        );
        if !o.status.success() {
            return Err(format!(
                "bk-build bake failed (exit {:?}):\n    {}",
                o.status.code(),
                tail(&o.stderr, 8)
            ));
        }
        // The daemon checks the scan: every file-sync request it made must have selected
        // only files the fingerprint hashed.
        let meta: serde_json::Value = std::fs::read(&md)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for (name, m) in meta.as_object().into_iter().flatten() {
            if let Some(u) = m.get("bk-build.uncovered") {
                return Err(format!(
                    "the daemon read inputs the fingerprint of {name} did not cover: {u}\n    requests: {}",
                    m["bk-build.sync"]
                ));
            }
        }
        if !self.out.exists() {
            return Err(format!(
                "bk-build bake succeeded but wrote nothing to {}",
                self.out.display()
            ));
        }
        Ok(tree(&self.out))
    }

    fn dockerfile_ignore(&self) -> PathBuf {
        let df = self.root.join(self.form.dockerfile_path());
        df.with_file_name("Dockerfile.dockerignore")
    }

    fn apply(&mut self, e: &Edit) {
        let n = self.step;
        let r = |p: &str| self.root.join(p);
        match e {
            Edit::Touch => self.touch_all(),
            Edit::Ignored(p) | Edit::Content(p) => append(&r(p), &format!("edit {n}\n")),
            Edit::Chmod(p, x) => {
                let p = r(p);
                let mut perm = std::fs::metadata(&p).unwrap().permissions();
                let m = if *x {
                    perm.mode() | 0o111
                } else {
                    perm.mode() & !0o111
                };
                perm.set_mode(m);
                std::fs::set_permissions(&p, perm).unwrap();
            }
            Edit::Add(p) => write(&r(p), format!("added at step {n}\n")),
            Edit::Delete(p) => {
                let _ = std::fs::remove_file(r(p));
            }
            Edit::EmptyDir(p) => std::fs::create_dir_all(r(p)).unwrap(),
            Edit::IgnoreDrop(f, line) => {
                if let Ok(t) = std::fs::read_to_string(r(f)) {
                    let kept: String = t
                        .lines()
                        .filter(|l| l.trim() != line)
                        .map(|l| format!("{l}\n"))
                        .collect();
                    write(&r(f), kept);
                }
            }
            Edit::IgnoreAdd(f, line) => {
                let mut t = std::fs::read_to_string(r(f)).unwrap_or_default();
                if !t.is_empty() && !t.ends_with('\n') {
                    t.push('\n');
                }
                t.push_str(line);
                t.push('\n');
                write(&r(f), t);
            }
            Edit::Retarget(l, t) => {
                let _ = std::fs::remove_file(r(l));
                std::os::unix::fs::symlink(t, r(l)).unwrap();
            }
            Edit::SameStat(p) => {
                let p = r(p);
                let md = std::fs::metadata(&p).unwrap();
                let mut b = std::fs::read(&p).unwrap();
                if let Some(c) = b.first_mut() {
                    *c = if *c == b'#' { b'%' } else { b'#' };
                }
                std::fs::write(&p, b).unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(md.modified().unwrap())
                    .unwrap();
                self.oracle_fresh = true;
            }
            Edit::ChmodDir(p) => {
                let p = r(p);
                std::fs::create_dir_all(&p).unwrap();
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                let m = if mode == 0o700 { 0o755 } else { 0o700 };
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
                self.oracle_fresh = true;
            }
            Edit::RemoveDfIgnore => {
                let _ = std::fs::remove_file(self.dockerfile_ignore());
            }
            Edit::AddDfIgnore => write(&self.dockerfile_ignore(), ADDED_DF_IGNORE),
            Edit::DockerfileComment => {
                append(&r(self.form.dockerfile_path()), &format!("# comment {n}\n"))
            }
            Edit::DockerfileInstr => append(
                &r(self.form.dockerfile_path()),
                &format!("COPY <<EOF /edit-{n}.txt\nedit {n}\nEOF\n"),
            ),
            Edit::Arg(v) => {
                self.src_arg = v.clone();
                self.write_toml();
            }
        }
    }

    /// What `git checkout` does to unchanged files: same bytes rewritten, new mtimes (on every
    /// file, directory and symlink of the project except bk-build's state).
    fn touch_all(&self) {
        let entries = walk(&self.root);
        for (rel, ft) in &entries {
            if ft.is_file() {
                let p = self.root.join(rel);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, b).unwrap();
            }
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut c = Command::new("touch");
        c.arg("-h")
            .arg("-d")
            .arg(format!("@{}.{:09}", now.as_secs(), now.subsec_nanos()))
            .arg(&self.root);
        for (rel, _) in &entries {
            c.arg(self.root.join(rel));
        }
        let o = quiet(&mut c);
        assert!(o.status.success(), "touch: {}", tail(&o.stderr, 5));
    }

    /// Applies `e`, then checks bk-build's decision against buildx.
    fn step(&mut self, e: Edit) {
        self.step += 1;
        self.apply(&e);
        let was_in_sync = self.in_sync;
        let oracle = self.oracle();
        let head = format!(
            "[{}] edit #{} `{}` ({})",
            self.form.name,
            self.step,
            e.describe(),
            self.seed_text()
        );
        let (action, reasons) = match self.plan() {
            Ok(x) => x,
            Err(err) => {
                self.failures.push(format!("{head}: {err}"));
                self.log
                    .push(format!("#{} {}: plan failed", self.step, e.describe()));
                self.in_sync = false;
                if let Ok(t) = oracle {
                    self.baseline = t;
                }
                return;
            }
        };
        let build = action == "build";
        match oracle {
            Ok(new) => {
                let d = tree_diff(&self.baseline, &new);
                let changed = !d.is_empty();
                self.log.push(format!(
                    "#{} {}: buildx {} -> plan {action} ({reasons})",
                    self.step,
                    e.describe(),
                    if changed {
                        format!("changed ({} entries)", d.len())
                    } else {
                        "unchanged".into()
                    }
                ));
                if changed && !build {
                    self.failures.push(format!(
                        "{head}: buildx's output changed but `bk-build plan` says {action} \
                         (reasons: {reasons}); buildx tree diff (before -> after):{}",
                        show_diff(&d)
                    ));
                } else if !changed && e.must_skip() && was_in_sync && action != "skip" {
                    self.failures.push(format!(
                        "{head}: buildx's output is unchanged after this edit, so bk-build must \
                         skip, but `bk-build plan` says {action} (reasons: {reasons})"
                    ));
                } else if !changed && build {
                    self.overbuilds
                        .push(format!("{head}: plan build ({reasons})"));
                }
                let mut new = new;
                if build {
                    match self.bake() {
                        Ok(baked) => {
                            let mut bd = tree_diff(&new, &baked);
                            if !bd.is_empty() {
                                // The oracle is asked again before bk-build is blamed: buildx has
                                // been seen (once, in CI) to export a file of the context empty
                                // that it exported whole before and after, for the same inputs.
                                if let Ok(again) =
                                    self.oracle_into(&format!("buildx-{}-again", self.step))
                                {
                                    if tree_diff(&again, &baked).is_empty() {
                                        self.notes.push(format!(
                                            "{head}: buildx exported two different trees for the \
                                             same inputs; its second equals bk-build's:{}",
                                            show_diff(&bd)
                                        ));
                                        bd.clear();
                                        new = again;
                                    }
                                }
                            }
                            if !bd.is_empty() {
                                self.failures.push(format!(
                                    "{head}: `bk-build bake` exported a different tree from \
                                     buildx's (buildx -> bake):{}",
                                    show_diff(&bd)
                                ));
                            }
                            self.in_sync = true;
                        }
                        Err(err) => {
                            self.failures
                                .push(format!("{head}: buildx succeeded but {err}"));
                            self.in_sync = false;
                        }
                    }
                } else {
                    // bk-build considers its record up to date with these inputs.
                    self.in_sync = true;
                }
                self.baseline = new;
            }
            Err(err) => {
                // The edit broke the build (the generator tries not to). bk-build must not
                // report a stale success: it has to build, and that build has to fail.
                self.notes
                    .push(format!("{head}: buildx build failed: {err}"));
                self.log.push(format!(
                    "#{} {}: buildx FAILED -> plan {action} ({reasons})",
                    self.step,
                    e.describe()
                ));
                if !build {
                    self.failures.push(format!(
                        "{head}: buildx now fails but `bk-build plan` says {action} \
                         (reasons: {reasons}): {err}"
                    ));
                } else if let Ok(baked) = self.bake() {
                    self.failures.push(format!(
                        "{head}: `bk-build bake` succeeded ({} entries) where buildx fails: {err}",
                        baked.len()
                    ));
                }
                self.in_sync = false;
            }
        }
    }

    // -- random edits ---------------------------------------------------------------------

    fn keep(&self, pool: &str) -> Vec<&'static str> {
        if pool == "lib" {
            vec![".dockerignore"]
        } else {
            KEEP_ALWAYS
                .iter()
                .chain(self.form.keep.iter())
                .copied()
                .collect()
        }
    }

    /// The ignore file in effect for `pool` (root-relative).
    fn effective_ignore(&self, pool: &str) -> String {
        if pool == "lib" {
            return "lib/.dockerignore".into();
        }
        let df = self.dockerfile_ignore();
        if df.exists() {
            df.strip_prefix(&self.root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else {
            "ctx/.dockerignore".into()
        }
    }

    fn random_edit(&self, rng: &mut Rng) -> Edit {
        let n = self.step + 1;
        let pool = if self.form.lib && rng.below(2) == 0 {
            "lib"
        } else {
            "ctx"
        };
        // Root-level files with this extension are always ignored in the pool (`*.log`, `*.tmp`
        // stay in every ignore file; docker's patterns are anchored, so only at the root).
        let ignored_ext = if pool == "lib" { ".tmp" } else { ".log" };
        let entries = walk(&self.root.join(pool));
        let keep = self.keep(pool);
        let special = |rel: &str| {
            matches!(
                rel,
                "Dockerfile" | ".dockerignore" | "Dockerfile.dockerignore"
            ) || (!rel.contains('/') && rel.ends_with(ignored_ext))
        };
        let files: Vec<&String> = entries
            .iter()
            .filter(|(rel, ft)| ft.is_file() && !special(rel))
            .map(|(rel, _)| rel)
            .collect();
        let mut dirs: Vec<String> = vec![String::new()];
        dirs.extend(
            entries
                .iter()
                .filter(|(_, ft)| ft.is_dir())
                .map(|(r, _)| format!("{r}/")),
        );
        // Half the time, only paths under the directory of the form's focus file.
        let focus = match self.form.file.strip_prefix(&format!("{pool}/")) {
            Some(f) => f.rfind('/').map(|i| &f[..=i]).unwrap_or(""),
            None => "",
        };
        let (files, dirs) = if !focus.is_empty() && rng.below(2) == 0 {
            let f: Vec<&String> = files
                .iter()
                .copied()
                .filter(|p| p.starts_with(focus))
                .collect();
            let d: Vec<String> = dirs
                .iter()
                .filter(|p| p.starts_with(focus))
                .cloned()
                .collect();
            if f.is_empty() || d.is_empty() {
                (files, dirs)
            } else {
                (f, d)
            }
        } else {
            (files, dirs)
        };
        let at = |rel: &str| format!("{pool}/{rel}");
        // Ignoring or deleting `rel` must not remove a kept path (or one of its ancestors).
        let removable = |rel: &str| {
            !keep
                .iter()
                .any(|k| *k == rel || k.starts_with(&format!("{rel}/")))
        };
        loop {
            match rng.below(18) {
                0..=2 if !files.is_empty() => return Edit::Content(at(rng.pick(&files).as_str())),
                3 | 4 => {
                    let ext = *rng.pick(&["txt", "py", "c", "md", "log", "tmp"]);
                    let dir = rng.pick(&dirs).clone();
                    let ext = if dir.is_empty() && format!(".{ext}") == ignored_ext {
                        "txt"
                    } else {
                        ext
                    };
                    return Edit::Add(at(&format!("{dir}n{n}.{ext}")));
                }
                5 => {
                    let c: Vec<&&String> = files.iter().filter(|f| removable(f)).collect();
                    if !c.is_empty() {
                        return Edit::Delete(at(rng.pick(&c).as_str()));
                    }
                }
                6 if !files.is_empty() => {
                    let f = rng.pick(&files);
                    let p = self.root.join(at(f));
                    let exec = std::fs::metadata(&p)
                        .map(|m| m.permissions().mode() & 0o100 != 0)
                        .unwrap_or(false);
                    return Edit::Chmod(at(f), !exec);
                }
                7 => {
                    let ctx = self.root.join("ctx");
                    return if rng.below(2) == 0 {
                        let cur = std::fs::read_link(ctx.join("link.txt")).unwrap_or_default();
                        let t = if cur == Path::new("real.txt") {
                            "other.txt"
                        } else {
                            "real.txt"
                        };
                        Edit::Retarget("ctx/link.txt".into(), t.into())
                    } else {
                        let cur = std::fs::read_link(ctx.join("sub")).unwrap_or_default();
                        let t = if cur == Path::new("real") {
                            "real2"
                        } else {
                            "real"
                        };
                        Edit::Retarget("ctx/sub".into(), t.into())
                    };
                }
                8 => return Edit::EmptyDir(at(&format!("{}e{n}", rng.pick(&dirs)))),
                9 => {
                    // Sends more: drop a line (never the always-ignored extension), or add an
                    // exception for some file.
                    let f = self.effective_ignore(pool);
                    let text = std::fs::read_to_string(self.root.join(&f)).unwrap_or_default();
                    let lines: Vec<String> = text
                        .lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty() && *l != format!("*{ignored_ext}"))
                        .collect();
                    if !lines.is_empty() && rng.below(2) == 0 {
                        return Edit::IgnoreDrop(f, rng.pick(&lines).clone());
                    }
                    let c: Vec<&&String> = files
                        .iter()
                        .filter(|f| !f.ends_with(".log") && !f.ends_with(".tmp"))
                        .collect();
                    if !c.is_empty() {
                        return Edit::IgnoreAdd(f, format!("!{}", rng.pick(&c)));
                    }
                }
                10 => {
                    // Sends fewer: ignore a file or directory that nothing needs.
                    let c: Vec<&String> = entries
                        .iter()
                        .map(|(r, _)| r)
                        .filter(|r| removable(r) && !special(r))
                        .collect();
                    if !c.is_empty() {
                        let f = self.effective_ignore(pool);
                        return Edit::IgnoreAdd(f, rng.pick(&c).to_string());
                    }
                }
                11 => return Edit::Touch,
                12 => {
                    let name = if rng.below(2) == 0 {
                        if pool == "lib" {
                            "cache.tmp".to_string()
                        } else {
                            "debug.log".to_string()
                        }
                    } else {
                        format!("n{n}{ignored_ext}")
                    };
                    return Edit::Ignored(at(&name));
                }
                13 => {
                    return if self.dockerfile_ignore().exists() {
                        Edit::RemoveDfIgnore
                    } else {
                        Edit::AddDfIgnore
                    };
                }
                14 => {
                    return if rng.below(2) == 0 {
                        Edit::DockerfileComment
                    } else {
                        Edit::DockerfileInstr
                    };
                }
                16 if !files.is_empty() => return Edit::SameStat(at(rng.pick(&files).as_str())),
                17 => {
                    let d: Vec<&String> = dirs.iter().filter(|d| !d.is_empty()).collect();
                    if !d.is_empty() {
                        return Edit::ChmodDir(at(d[rng.below(d.len())].trim_end_matches('/')));
                    }
                }
                15 => {
                    let v = if self.src_arg == "app" { "src" } else { "app" };
                    return Edit::Arg(v.into());
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running and reporting

struct Report {
    group: String,
    started: Instant,
    steps: usize,
    builds: usize,
    failures: Vec<String>,
    overbuilds: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    fn new(group: &str) -> Report {
        Report {
            group: group.into(),
            started: Instant::now(),
            steps: 0,
            builds: 0,
            failures: Vec::new(),
            overbuilds: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn add(&mut self, p: Project) {
        eprintln!(
            "--- [{}] {} ({} steps):\n  {}",
            p.form.name,
            p.seed_text(),
            p.step,
            p.log.join("\n  ")
        );
        self.steps += p.step;
        self.builds += p.builds;
        self.failures.extend(p.failures);
        self.overbuilds.extend(p.overbuilds);
        self.notes.extend(p.notes);
        // p.tmp dropped here: the project, buildx's and bake's outputs are removed.
    }

    fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64();
        let mut s = format!(
            "=== differential {}: {} edits, {} bakes, {:.0}s; {} failures, {} over-builds ===",
            self.group,
            self.steps,
            self.builds,
            secs,
            self.failures.len(),
            self.overbuilds.len()
        );
        if !self.overbuilds.is_empty() {
            s.push_str("\nover-building (plan says build, buildx's output unchanged; allowed):");
            for o in &self.overbuilds {
                s.push_str(&format!("\n  {o}"));
            }
        }
        if !self.notes.is_empty() {
            s.push_str("\nedits that made buildx fail (the generator should avoid them):");
            for o in &self.notes {
                s.push_str(&format!("\n  {o}"));
            }
        }
        eprintln!("{s}");
        if !self.failures.is_empty() {
            panic!(
                "{} wrong decision(s) in {}:\n\n{}\n",
                self.failures.len(),
                self.group,
                self.failures.join("\n\n")
            );
        }
    }
}

fn scripted_group(group: &str, forms: &[Form]) {
    scripted_group_in(group, forms, ProjectFile::Toml);
}

fn scripted_group_in(group: &str, forms: &[Form], file: ProjectFile) {
    let mut report = Report::new(group);
    for f in forms {
        let mut p = Project::with_file(*f, None, file);
        let mut edits = scripted(f);
        if file == ProjectFile::Compose {
            edits.extend(base_edits());
        }
        for e in edits {
            p.step(e);
        }
        report.add(p);
    }
    report.finish();
}

const RANDOM_EDITS: usize = 8;

fn random_group(group: &str, forms: &[Form]) {
    let seed = seed();
    eprintln!("differential {group}: BK_DIFF_SEED={seed}");
    let mut report = Report::new(&format!("{group} (BK_DIFF_SEED={seed})"));
    for f in forms {
        let mut p = Project::new(*f, Some(seed));
        let mut rng = Rng::new(seed ^ fnv1a(f.name));
        for _ in 0..RANDOM_EDITS {
            let e = p.random_edit(&mut rng);
            p.step(e);
        }
        report.add(p);
    }
    report.finish();
}

// ---------------------------------------------------------------------------------------------
// Tests (two at a time: `cargo test --test differential -- --test-threads=2`)

#[test]
fn scripted_whole_context_copies() {
    scripted_group(
        "scripted_whole_context_copies",
        &[COPY_DOT, COPY_DOT_SLASH, ADD_DOT, COPY_JSON],
    );
}

#[test]
fn scripted_copy_flags_and_workdir() {
    scripted_group(
        "scripted_copy_flags_and_workdir",
        &[COPY_CHOWN, COPY_MULTI_SRC, WORKDIR, COPY_EXCLUDE],
    );
}

#[test]
fn scripted_symlinks_and_globs() {
    scripted_group(
        "scripted_symlinks_and_globs",
        &[SYMLINK_DIR, SYMLINK_FILE, GLOB_TXT, GLOB_PY],
    );
}

#[test]
fn scripted_narrow_heredoc_arg_named_context() {
    scripted_group(
        "scripted_narrow_heredoc_arg_named_context",
        &[NARROW, HEREDOC_COPY, ARG_SRC, NAMED_LIB, OUTSIDE_NARROW],
    );
}

#[test]
fn scripted_run_multistage_outside_dockerfile() {
    scripted_group(
        "scripted_run_multistage_outside_dockerfile",
        &[RUN_BIND, HEREDOC_RUN, MULTI_STAGE, OUTSIDE],
    );
}

/// The same decisions when the project is a bake file: an edit to a file the target reads
/// (its context, a named context, an outside Dockerfile and its ignore file) must rebuild.
#[test]
fn scripted_bake_file_project() {
    scripted_group_in(
        "scripted_bake_file_project",
        &[NAMED_LIB, OUTSIDE_NARROW, ARG_SRC],
        ProjectFile::BakeHcl,
    );
}

/// The same for a compose project whose service builds on another service's image
/// (`additional_contexts: {base: "service:base"}`): an edit of either service's inputs must
/// rebuild `t`, and a touch or an ignored file must not.
#[test]
fn scripted_compose_project() {
    scripted_group_in(
        "scripted_compose_project",
        &[NAMED_LIB, OUTSIDE_NARROW, ARG_SRC],
        ProjectFile::Compose,
    );
}

#[test]
fn random_edits_a() {
    random_group(
        "random_edits_a",
        &[
            COPY_DOT,
            COPY_EXCLUDE,
            NARROW,
            GLOB_TXT,
            SYMLINK_DIR,
            ARG_SRC,
            OUTSIDE_NARROW,
        ],
    );
}

#[test]
fn random_edits_b() {
    random_group(
        "random_edits_b",
        &[
            COPY_MULTI_SRC,
            GLOB_PY,
            SYMLINK_FILE,
            NAMED_LIB,
            OUTSIDE,
            MULTI_STAGE,
        ],
    );
}
