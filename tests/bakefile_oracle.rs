//! Oracle: `bk-build bake --print` against `docker buildx bake --print` on the same bake files
//! (`tests/data/bake/*`), in the same directory, with the same environment, field by field.
//!
//! Both outputs are brought to one shape before comparing ([`support::bake_print`] lists the
//! places where they are *written* differently but mean the same: paths, escapes, option
//! strings, push/load as outputs, sets). Beyond those, the documented places where bk-build
//! *does* differ or the comparison needs care:
//!
//! - Outputs that only push (`type=registry`, `type=image,push=true`) or only load
//!   (`type=docker`) are bk-build's `push`/`load` (so the registry ledger applies to them);
//!   the shape counts both as outputs.
//! - A matrix block's group lists its targets in an order that depends on Go's map iteration
//!   in buildx; groups are compared as sets.
//! - Both print only what is asked for (compared for no names, `*`, and each case's
//!   `requests`). A target printed only because another uses it through `target:` has
//!   `output = [cacheonly]` in buildx, which builds it inside the dependent; bk-build builds
//!   and delivers it with its own outputs.
//! - Differences not exercised here because bk-build refuses them: an `inherits` cycle (buildx
//!   silently drops the repeated target), `call` other than `build` (that target cannot be
//!   built), a name that is both a group and a target.
//!
//! Each error case must fail in both tools, and bk-build must name a line: the attribute at
//! fault, within two lines of the one buildx names (buildx often names the block's label).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use support::bake_print::{canon_bk, canon_buildx, strings};
use support::*;

struct Case {
    dir: &'static str,
    /// `-f` arguments; empty: each tool finds the files itself.
    files: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// Names to ask both for, besides none (the default) and `*` (everything).
    requests: &'static [&'static [&'static str]],
}

const CASES: &[Case] = &[
    Case {
        dir: "variables",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "variables",
        files: &[],
        env: &[
            ("TAG", "v2"),
            ("RELEASE", "true"),
            ("BUILD_NUMBER", "41"),
            ("UNSET", "now-set"),
            ("PLATFORMS", "linux/amd64,linux/arm64"),
            ("EXTRA_LABELS", "team:infra,tier:gold"),
            ("FEATURES_JSON", r#"["z","y","z"]"#),
            ("CHANNEL", "beta"),
            ("IMAGE", "ignored: attributes are not variables"),
            ("REGISTRY", "reg.local:5000/x"),
        ],
        requests: &[],
    },
    Case {
        dir: "inherits",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "matrix",
        files: &[],
        env: &[],
        requests: &[&["tools"], &["app-slim-py311"], &["app"]],
    },
    Case {
        dir: "matrix",
        files: &[],
        env: &[("VERSIONS", "3.13")],
        requests: &[],
    },
    Case {
        dir: "functions",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "functions",
        files: &[],
        env: &[("BRANCH", "release/2.0_final"), ("VERSION", "10.20.30")],
        requests: &[],
    },
    Case {
        dir: "contexts",
        files: &["build/docker-bake.hcl"],
        env: &[],
        requests: &[&["base"], &["web"]],
    },
    Case {
        dir: "json",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "json",
        files: &["docker-bake.json"],
        env: &[("TAG", "1.0"), ("PLATFORMS", "linux/riscv64")],
        requests: &[],
    },
    Case {
        dir: "override",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "override",
        files: &["docker-bake.hcl", "docker-bake.override.json"],
        env: &[("TAG", "from-env")],
        requests: &[],
    },
    Case {
        dir: "outputs",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "compose_mix",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "compose_mix",
        files: &["docker-bake.hcl", "compose.yaml"],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "expressions",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "expressions",
        files: &[],
        env: &[
            ("N", "7"),
            ("FLAG", "false"),
            ("MAP", "x:1,y:2"),
            ("NUMS", "10,20,30"),
            ("REGISTRY", "reg.local"),
        ],
        requests: &[],
    },
    Case {
        dir: "build-keys",
        files: &[],
        env: &[],
        requests: &[],
    },
    Case {
        dir: "select",
        files: &[],
        env: &[],
        requests: &[
            &["app"],
            &["web"],
            &["images"],
            &["release"],
            &["app", "web"],
            &["release", "app"],
            &["default", "tool"],
            &["default", "release"],
            &["all"],
            &["tool", "all"],
            &["app", "app", "images"],
            &["w*"],
            &["[at]*"],
            &["_common"],
        ],
    },
    Case {
        dir: "select",
        files: &["no-default.hcl"],
        env: &[],
        requests: &[&["app"], &["tool", "app"], &["a*"]],
    },
];

const ERROR_CASES: &[&str] = &[
    "unknown-variable.hcl",
    "missing-parent.hcl",
    "duplicate-names.hcl",
    "bad-type.hcl",
    "validation.hcl",
    "bad-syntax.hcl",
];

fn data(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bake")
        .join(dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

fn stdout_json(o: &std::process::Output, what: &str) -> Value {
    assert!(o.status.success(), "{what} failed:\n{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// Whether `name` is only in `printed` because another printed target uses it through a
/// `target:` context (buildx then prints it with `output = [cacheonly]`).
fn linked(printed: &Map<String, Value>, name: &str) -> bool {
    printed.values().any(|t| {
        t["contexts"].as_object().is_some_and(|c| {
            c.values()
                .any(|v| v.as_str() == Some(&format!("target:{name}")))
        })
    })
}

fn compare_targets(
    label: &str,
    cwd: &Path,
    bk: &Map<String, Value>,
    bx: &Map<String, Value>,
    names: &BTreeSet<String>,
    diffs: &mut Vec<String>,
) {
    for name in names {
        let (Some(b), Some(x)) = (bk.get(name), bx.get(name)) else {
            diffs.push(format!(
                "{label}: target {name}: bk-build has it: {}, buildx has it: {}",
                bk.contains_key(name),
                bx.contains_key(name)
            ));
            continue;
        };
        let (mut cb, mut cx) = (canon_bk(b), canon_buildx(x, cwd));
        // A target only used through `target:`: buildx builds it as part of the dependent
        // (cacheonly); bk-build builds and delivers it with its own outputs.
        if x["output"] == json!([{"type": "cacheonly"}]) && linked(bk, name) {
            cb.remove("outputs");
            cx.remove("outputs");
        }
        for (field, want) in &cx {
            let got = cb.get(field).unwrap_or(&Value::Null);
            if got != want {
                diffs.push(format!(
                    "{label}: target {name}: {field}:\n      bk-build: {got}\n      buildx:   {want}"
                ));
            }
        }
    }
}

/// Group → members, as a set (a matrix block's group lists its targets in an order that
/// depends on Go's map iteration in buildx).
fn group_sets(print: &Value) -> BTreeMap<String, BTreeSet<String>> {
    print["group"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(g, v)| (g.clone(), strings(&v["targets"]).into_iter().collect()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bake_print_agrees_with_buildx() {
    let mut diffs = Vec::new();
    let mut compared = 0;
    let mut requests_run = 0;
    for case in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path().join(case.dir);
        copy_dir(&data(case.dir), &cwd);
        // An agent socket for `ssh` entries: buildx checks it exists when printing.
        let _agent = std::os::unix::net::UnixListener::bind(cwd.join("agent.sock")).unwrap();

        // What each prints for no names (the default), for everything (`*`), and for the
        // case's own requests: the same targets, the same groups, the same fields.
        let everything: &[&str] = &["*"];
        let requests = [&[][..], everything]
            .into_iter()
            .chain(case.requests.iter().copied());
        for names in requests {
            let label = format!("{} {:?} {:?} {names:?}", case.dir, case.files, case.env);
            let o = run(bk()
                .current_dir(&cwd)
                .args(["bake", "--print"])
                .args(case.files.iter().flat_map(|f| ["-f", f]))
                .args(names)
                .envs(case.env.iter().copied()));
            let bx = run(docker()
                .current_dir(&cwd)
                .args(["buildx", "bake", "--print"])
                .args(case.files.iter().flat_map(|f| ["-f", f]))
                .args(names)
                .envs(case.env.iter().copied()));
            requests_run += 1;
            // A request buildx refuses (no default group) must be refused, and only that.
            match (o.status.success(), bx.status.success()) {
                (true, true) => {}
                (false, false) => continue,
                (mine, theirs) => {
                    diffs.push(format!(
                        "{label}: bk-build succeeded: {mine}, buildx succeeded: {theirs}:\n{}\n{}",
                        stderr(&o),
                        stderr(&bx)
                    ));
                    continue;
                }
            }
            let bk_json = stdout_json(&o, "bk-build bake --print");
            let bk_targets = bk_json["target"].as_object().cloned().unwrap_or_default();
            let bx = stdout_json(&bx, "docker buildx bake --print");
            let bx_targets = bx["target"].as_object().cloned().unwrap_or_default();
            let bx_names: BTreeSet<String> = bx_targets.keys().cloned().collect();
            let bk_names: BTreeSet<String> = bk_targets.keys().cloned().collect();
            if bx_names != bk_names {
                diffs.push(format!(
                    "{label}: targets: bk-build {bk_names:?}, buildx {bx_names:?}"
                ));
            }
            compare_targets(
                &label,
                &cwd,
                &bk_targets,
                &bx_targets,
                &bk_names.intersection(&bx_names).cloned().collect(),
                &mut diffs,
            );
            let (mine, theirs) = (group_sets(&bk_json), group_sets(&bx));
            if mine != theirs {
                diffs.push(format!(
                    "{label}: groups:\n      bk-build: {mine:?}\n      buildx:   {theirs:?}"
                ));
            }
            compared += bk_names.len();
        }
    }
    assert!(compared > 60, "too few targets compared: {compared}");
    assert!(requests_run > 40, "too few requests: {requests_run}");
    assert!(
        diffs.is_empty(),
        "bk-build and buildx disagree:\n  {}",
        diffs.join("\n  ")
    );
}

/// Naming no target needs a `default` group or target: without one, both fail, and both
/// print (and bk-build builds) what is named.
#[test]
fn without_a_default_group_targets_must_be_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("select");
    copy_dir(&data("select"), &cwd);
    let file = ["-f", "no-default.hcl"];
    let bk_out = run(bk().current_dir(&cwd).args(["bake", "--print"]).args(file));
    let bx_out = run(docker()
        .current_dir(&cwd)
        .args(["buildx", "bake", "--print"])
        .args(file));
    assert!(!bx_out.status.success(), "buildx printed a default");
    assert_eq!(
        bk_out.status.code(),
        Some(1),
        "bk-build must fail as buildx does:\n{}",
        String::from_utf8_lossy(&bk_out.stdout)
    );
    let err = stderr(&bk_out);
    assert!(
        err.contains("no `default` group") && err.contains("one of: app, tool"),
        "the error says what is missing and what could be named: {err}"
    );
    // `plan` (what `bake` builds) refuses the same way.
    let plan = run(bk().current_dir(&cwd).args(["plan"]).args(file));
    assert_eq!(plan.status.code(), Some(1), "{}", stderr(&plan));
    assert!(
        stderr(&plan).contains("no `default` group"),
        "{}",
        stderr(&plan)
    );

    let named = run(bk()
        .current_dir(&cwd)
        .args(["bake", "--print"])
        .args(file)
        .arg("tool"));
    let got = stdout_json(&named, "bk-build bake --print tool");
    let targets: Vec<&String> = got["target"].as_object().unwrap().keys().collect();
    assert_eq!(targets, ["tool"]);
}

/// The line an error message names for `file` (`file:LINE`), if any.
fn line_in(msg: &str, file: &str) -> Option<usize> {
    let i = msg.find(&format!("{file}:"))?;
    let rest = &msg[i + file.len() + 1..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn bad_bake_files_fail_in_both_and_name_the_line() {
    let mut diffs = Vec::new();
    for name in ERROR_CASES {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path().join("errors");
        copy_dir(&data("errors"), &cwd);
        let bk_out = run(bk().current_dir(&cwd).args(["bake", "--print", "-f", name]));
        let bx_out = run(docker()
            .current_dir(&cwd)
            .args(["buildx", "bake", "--print", "-f", name]));
        let (bk_err, bx_err) = (stderr(&bk_out), stderr(&bx_out));
        if bk_out.status.success() || bx_out.status.success() {
            diffs.push(format!(
                "{name}: bk-build exit {:?}, buildx exit {:?}: both must fail",
                bk_out.status.code(),
                bx_out.status.code()
            ));
            continue;
        }
        let Some(bk_line) = line_in(&bk_err, name) else {
            diffs.push(format!("{name}: bk-build's error names no line: {bk_err}"));
            continue;
        };
        // buildx prints `ERROR: file:LINE,COL-COL: ...` where it knows the place.
        let bx_line = bx_err
            .lines()
            .filter(|l| l.starts_with("ERROR:"))
            .find_map(|l| line_in(l, name));
        // bk-build names the attribute at fault where buildx often names the block's first
        // line (or the end of the file for a syntax error): the same statement, not always
        // the same line.
        if let Some(bx_line) = bx_line {
            if bk_line.abs_diff(bx_line) > 2 {
                diffs.push(format!(
                    "{name}: bk-build names line {bk_line}, buildx line {bx_line}:\n{bk_err}"
                ));
            }
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
