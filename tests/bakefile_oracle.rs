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
//! - bk-build prints every target and group; buildx only the requested ones, so buildx is
//!   asked for all of them by name (and once more for the default group).
//! - Keys bk-build cannot honour yet (`annotations`) are not in its target: each must be
//!   reported in a warning naming the target and key.
//! - Differences not exercised here because bk-build refuses them: an `inherits` cycle (buildx
//!   silently drops the repeated target), `call` other than `build` (that target cannot be
//!   built), a name that is both a group and a target.
//!
//! Each error case must fail in both tools, and bk-build must name a line: the attribute at
//! fault, within two lines of the one buildx names (buildx often names the block's label).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use support::bake_print::{canon_bk, canon_buildx, strings};
use support::*;

struct Case {
    dir: &'static str,
    /// `-f` arguments; empty: each tool finds the files itself.
    files: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        dir: "variables",
        files: &[],
        env: &[],
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
    },
    Case {
        dir: "inherits",
        files: &[],
        env: &[],
    },
    Case {
        dir: "matrix",
        files: &[],
        env: &[],
    },
    Case {
        dir: "matrix",
        files: &[],
        env: &[("VERSIONS", "3.13")],
    },
    Case {
        dir: "functions",
        files: &[],
        env: &[],
    },
    Case {
        dir: "functions",
        files: &[],
        env: &[("BRANCH", "release/2.0_final"), ("VERSION", "10.20.30")],
    },
    Case {
        dir: "contexts",
        files: &["build/docker-bake.hcl"],
        env: &[],
    },
    Case {
        dir: "json",
        files: &[],
        env: &[],
    },
    Case {
        dir: "json",
        files: &["docker-bake.json"],
        env: &[("TAG", "1.0"), ("PLATFORMS", "linux/riscv64")],
    },
    Case {
        dir: "override",
        files: &[],
        env: &[],
    },
    Case {
        dir: "override",
        files: &["docker-bake.hcl", "docker-bake.override.json"],
        env: &[("TAG", "from-env")],
    },
    Case {
        dir: "outputs",
        files: &[],
        env: &[],
    },
    Case {
        dir: "compose_mix",
        files: &[],
        env: &[],
    },
    Case {
        dir: "compose_mix",
        files: &["docker-bake.hcl", "compose.yaml"],
        env: &[],
    },
    Case {
        dir: "expressions",
        files: &[],
        env: &[],
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
    },
    Case {
        dir: "build-keys",
        files: &[],
        env: &[],
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

/// Keys of a buildx target that bk-build's target has no place for.
const IGNORED_KEYS: &[&str] = &["annotations"];

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

fn buildx_print(cwd: &Path, case: &Case, names: &[String]) -> Value {
    let o = run(docker()
        .current_dir(cwd)
        .args(["buildx", "bake", "--print"])
        .args(case.files.iter().flat_map(|f| ["-f", f]))
        .args(names)
        .envs(case.env.iter().copied()));
    stdout_json(&o, "docker buildx bake --print")
}

/// The targets a group name stands for, in bk-build's printed project.
fn expand(
    groups: &Map<String, Value>,
    name: &str,
    seen: &mut BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    match groups.get(name).and_then(|g| g.get("targets")) {
        Some(members) if seen.insert(name.to_string()) => {
            for m in strings(members) {
                expand(groups, &m, seen, out);
            }
        }
        Some(_) => {}
        None => {
            out.insert(name.to_string());
        }
    }
}

fn compare_targets(
    label: &str,
    cwd: &Path,
    bk: &Map<String, Value>,
    bx: &Map<String, Value>,
    names: &BTreeSet<String>,
    warnings: &str,
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
        // Checked below: bk-build warns about these instead.
        for k in IGNORED_KEYS {
            cb.remove(*k);
            cx.remove(*k);
        }
        for (field, want) in &cx {
            let got = cb.get(field).unwrap_or(&Value::Null);
            if got != want {
                diffs.push(format!(
                    "{label}: target {name}: {field}:\n      bk-build: {got}\n      buildx:   {want}"
                ));
            }
        }
        for k in IGNORED_KEYS {
            if x.get(*k).is_some() && !warnings.contains(&format!("target.{name}.{k}")) {
                diffs.push(format!(
                    "{label}: target {name}: buildx has `{k}`, and bk-build dropped it without a warning"
                ));
            }
        }
    }
}

#[test]
fn bake_print_agrees_with_buildx() {
    let mut diffs = Vec::new();
    let mut compared = 0;
    for case in CASES {
        let label = format!("{} {:?} {:?}", case.dir, case.files, case.env);
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path().join(case.dir);
        copy_dir(&data(case.dir), &cwd);
        // An agent socket for `ssh` entries: buildx checks it exists when printing.
        let _agent = std::os::unix::net::UnixListener::bind(cwd.join("agent.sock")).unwrap();

        let o = run(bk()
            .current_dir(&cwd)
            .args(["bake", "--print"])
            .args(case.files.iter().flat_map(|f| ["-f", f]))
            .envs(case.env.iter().copied()));
        let bk_json = stdout_json(&o, "bk-build bake --print");
        let warnings = stderr(&o);
        let bk_targets = bk_json["target"].as_object().cloned().unwrap_or_default();
        let bk_groups = bk_json["group"].as_object().cloned().unwrap_or_default();

        // Everything by name.
        let mut names: Vec<String> = bk_targets.keys().cloned().collect();
        names.extend(bk_groups.keys().filter(|g| *g != "default").cloned());
        let bx = buildx_print(&cwd, case, &names);
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
            &bk_names,
            &warnings,
            &mut diffs,
        );
        for (g, members) in &bk_groups {
            if g == "default" {
                continue;
            }
            let mine: BTreeSet<String> = strings(&members["targets"]).into_iter().collect();
            let theirs: BTreeSet<String> = strings(&bx["group"][g.as_str()]["targets"])
                .into_iter()
                .collect();
            if mine != theirs {
                diffs.push(format!(
                    "{label}: group {g}: bk-build {mine:?}, buildx {theirs:?}"
                ));
            }
        }

        // The default: what each builds with no target named.
        if bk_groups.contains_key("default") || bk_targets.contains_key("default") {
            let bx = buildx_print(&cwd, case, &[]);
            let theirs: BTreeSet<String> = bx["target"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let mut mine = BTreeSet::new();
            expand(&bk_groups, "default", &mut BTreeSet::new(), &mut mine);
            // buildx also prints targets that requested ones use through `target:`
            // contexts; bk-build builds those too, as dependencies.
            let linked: BTreeSet<String> = theirs.difference(&mine).cloned().collect();
            for l in &linked {
                let used = mine.iter().any(|m| {
                    bk_targets[m]["contexts"].as_object().is_some_and(|c| {
                        c.values()
                            .any(|v| v.as_str() == Some(&format!("target:{l}")))
                    })
                });
                if !used {
                    diffs.push(format!(
                        "{label}: default: buildx builds {l}, bk-build does not"
                    ));
                }
            }
            if !mine.is_subset(&theirs) {
                diffs.push(format!(
                    "{label}: default: bk-build {mine:?}, buildx {theirs:?}"
                ));
            }
        }
        compared += bk_names.len();
    }
    assert!(compared > 30, "too few targets compared: {compared}");
    assert!(
        diffs.is_empty(),
        "bk-build and buildx disagree:\n  {}",
        diffs.join("\n  ")
    );
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
