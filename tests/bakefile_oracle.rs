//! Oracle: `bk-build bake --print` against `docker buildx bake --print` on the same bake files
//! (`tests/data/bake/*`), in the same directory, with the same environment, field by field.
//!
//! Both outputs are brought to one shape before comparing; these are the documented places
//! where they are *written* differently but mean the same, and where bk-build *does* differ:
//!
//! - Paths: bk-build prints them absolute; buildx as written, relative to the current
//!   directory (and `dockerfile` relative to the context). Both are resolved here.
//! - buildx escapes `${` and `%{` in printed `args` and `labels` (`$${`, `%%{`) so its output
//!   reads back as a bake file; bk-build prints the values.
//! - Option strings: bk-build keeps `secret`, `ssh`, `cache-*` and `output` entries as CSV
//!   strings; buildx prints them parsed. Both are parsed here.
//! - Outputs that only push (`type=registry`, `type=image,push=true`) or only load
//!   (`type=docker`) are bk-build's `push`/`load` (so the registry ledger applies to them).
//! - Cache entries are compared as sets: buildx's de-duplication reorders them.
//! - A matrix block's group lists its targets in an order that depends on Go's map iteration
//!   in buildx; groups are compared as sets.
//! - bk-build prints every target and group; buildx only the requested ones, so buildx is
//!   asked for all of them by name (and once more for the default group).
//! - Keys bk-build cannot honour yet (`annotations`) are not in its target: each must be
//!   reported in a warning naming the target and key.
//! - An inline Dockerfile is written to a file bk-build names; buildx prints the default
//!   `dockerfile`. Only the text is compared.
//! - Differences not exercised here because bk-build refuses them: an `inherits` cycle (buildx
//!   silently drops the repeated target), `call` other than `build` (that target cannot be
//!   built), a name that is both a group and a target.
//!
//! Each error case must fail in both tools, and bk-build must name a line: the attribute at
//! fault, within two lines of the one buildx names (buildx often names the block's label).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Map, Value};

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

/// docker's `MemBytes`: a number with an optional `b`, `k`, `m`, `g`, `t` (powers of 1024).
fn mem_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<f64>().ok().map(|n| (n * mult as f64) as u64)
}

fn sorted_strings(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

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

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn abs(cwd: &Path, p: &str) -> String {
    let p = p.strip_prefix("cwd://").unwrap_or(p);
    normalize(&cwd.join(p)).to_string_lossy().into_owned()
}

/// One CSV record of `key=value` fields (quotes as buildx's csvvalue reads them).
fn csv_map(s: &str) -> BTreeMap<String, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
        .into_iter()
        .filter_map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_lowercase(), v.to_string()))
        })
        .collect()
}

fn str_map(v: Option<&Value>) -> Value {
    str_map_with(v, |s| s.to_string())
}

fn str_map_with(v: Option<&Value>, f: impl Fn(&str) -> String) -> Value {
    let mut m = Map::new();
    if let Some(Value::Object(o)) = v {
        for (k, v) in o {
            if let Value::String(s) = v {
                m.insert(k.clone(), Value::String(f(s)));
            }
        }
    }
    Value::Object(m)
}

/// buildx's `--print` writes `${` and `%{` in args and labels as `$${` and `%%{`, so its
/// output reads back as a bake file; the values themselves have single ones.
fn unescape(s: &str) -> String {
    s.replace("$${", "${").replace("%%{", "%{")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

fn secret_canon(id: &str, src: &str, env: &str) -> String {
    format!("id={id}|src={src}|env={env}")
}

/// Cache or output entry maps with local paths made absolute.
fn entry_canon(cwd: &Path, mut m: BTreeMap<String, String>) -> Value {
    let local = matches!(
        m.get("type").map(String::as_str),
        Some("local" | "tar" | "oci" | "docker")
    );
    if local {
        for k in ["src", "dest"] {
            if let Some(v) = m.get_mut(k) {
                if v != "-" {
                    *v = abs(cwd, v);
                }
            }
        }
    }
    json!(m)
}

fn sorted(mut v: Vec<Value>) -> Value {
    v.sort_by_key(|x| x.to_string());
    Value::Array(v)
}

/// Outputs as (push, load, other outputs): plain push and load forms fold into the flags.
fn outputs_canon(entries: Vec<BTreeMap<String, String>>, cwd: &Path) -> (bool, bool, Value) {
    let plain = |m: &BTreeMap<String, String>| -> Option<bool> {
        let t = m.get("type").map(String::as_str);
        match (t, m.len()) {
            (Some("registry"), 1) => Some(true),
            (Some("image"), 2) if m.get("push").map(String::as_str) == Some("true") => Some(true),
            (Some("docker"), 1) => Some(false),
            _ => None,
        }
    };
    if !entries.is_empty() && entries.iter().all(|m| plain(m).is_some()) {
        let push = entries.iter().any(|m| plain(m) == Some(true));
        let load = entries.iter().any(|m| plain(m) == Some(false));
        return (push, load, json!([]));
    }
    let list = entries
        .into_iter()
        .map(|mut m| {
            if m.get("type").map(String::as_str) == Some("registry") {
                m.insert("type".into(), "image".into());
                m.insert("push".into(), "true".into());
            }
            entry_canon(cwd, m)
        })
        .collect();
    (false, false, Value::Array(list))
}

/// A buildx `--print` target in the common shape.
fn canon_buildx(t: &Value, cwd: &Path) -> Value {
    let o = t.as_object().expect("target object");
    let get = |k: &str| o.get(k);
    let context = abs(cwd, get("context").and_then(Value::as_str).unwrap_or("."));
    let df = get("dockerfile")
        .and_then(Value::as_str)
        .unwrap_or("Dockerfile");
    let dockerfile = match df.strip_prefix("cwd://") {
        Some(p) => abs(cwd, p),
        None if Path::new(df).is_absolute() => df.to_string(),
        None => abs(Path::new(&context), df),
    };
    let mut contexts = Map::new();
    if let Some(Value::Object(m)) = get("contexts") {
        for (k, v) in m {
            let v = v.as_str().unwrap_or_default();
            let local = !v.contains("://") && !v.starts_with("target:") || v.starts_with("cwd://");
            contexts.insert(
                k.clone(),
                Value::String(if local { abs(cwd, v) } else { v.to_string() }),
            );
        }
    }
    let secrets: Vec<String> = match get("secret") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                let f = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
                let src = if f("src").is_empty() {
                    String::new()
                } else {
                    abs(cwd, f("src"))
                };
                secret_canon(f("id"), &src, f("env"))
            })
            .collect(),
        _ => Vec::new(),
    };
    let ssh: Vec<String> = match get("ssh") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                let id = s.get("id").and_then(Value::as_str).unwrap_or_default();
                let paths: Vec<String> = strings(s.get("paths"))
                    .iter()
                    .map(|p| abs(cwd, p))
                    .collect();
                if paths.is_empty() {
                    id.to_string()
                } else {
                    format!("{id}={}", paths.join(","))
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let entries = |k: &str| -> Vec<BTreeMap<String, String>> {
        match get(k) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|e| {
                    e.as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| {
                                    // `disabled: true` and other non-strings as CSV has them.
                                    let v = v.as_str().map_or_else(|| v.to_string(), String::from);
                                    (k.clone(), v)
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let cache = |k: &str| {
        sorted(
            entries(k)
                .into_iter()
                .map(|m| entry_canon(cwd, m))
                .collect(),
        )
    };
    let (push, load, outputs) = outputs_canon(entries("output"), cwd);
    let attest = sorted(entries("attest").into_iter().map(|m| json!(m)).collect());
    let inline = get("dockerfile-inline")
        .and_then(Value::as_str)
        .map(unescape);
    let mut hosts = Vec::new();
    if let Some(Value::Object(m)) = get("extra-hosts") {
        for (h, ips) in m {
            for ip in ips.as_str().unwrap_or_default().split(',') {
                hosts.push(format!("{h}={ip}"));
            }
        }
    }
    json!({
        "context": context,
        // An inline Dockerfile is written where bk-build chooses; buildx prints the default.
        "dockerfile": if inline.is_some() { Value::Null } else { json!(dockerfile) },
        "dockerfile_inline": inline,
        "network": get("network").and_then(Value::as_str).filter(|n| !n.is_empty()),
        "extra_hosts": sorted_strings(hosts),
        "shm_size": get("shm-size").and_then(Value::as_str).and_then(mem_bytes).filter(|n| *n > 0),
        "ulimits": sorted_strings(strings(get("ulimits"))),
        "entitlements": sorted_strings(strings(get("entitlements"))),
        "no_cache_filter": sorted_strings(strings(get("no-cache-filter"))),
        "target": get("target").and_then(Value::as_str).filter(|s| !s.is_empty()),
        "args": str_map_with(get("args"), unescape),
        "labels": str_map_with(get("labels"), unescape),
        "contexts": contexts,
        "tags": strings(get("tags")),
        "platforms": strings(get("platforms")),
        "secrets": secrets,
        "ssh": ssh,
        "cache_from": cache("cache-from"),
        "cache_to": cache("cache-to"),
        "outputs": outputs,
        "attest": attest,
        "push": push,
        "load": load,
        "pull": get("pull").and_then(Value::as_bool).unwrap_or(false),
        "no_cache": get("no-cache").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// A `bk-build bake --print` target in the common shape.
fn canon_bk(t: &Value, cwd: &Path) -> Value {
    let get = |k: &str| t.get(k);
    let secrets: Vec<String> = strings(get("secrets"))
        .iter()
        .map(|s| {
            let m = csv_map(s);
            let f = |k: &str| m.get(k).cloned().unwrap_or_default();
            let mut src = if f("src").is_empty() {
                f("source")
            } else {
                f("src")
            };
            let mut env = f("env");
            if f("type") == "env" && env.is_empty() {
                env = std::mem::take(&mut src);
            }
            secret_canon(&f("id"), &src, &env)
        })
        .collect();
    let cache = |k: &str| {
        sorted(
            strings(get(k))
                .iter()
                .map(|s| {
                    let m = if s.contains('=') {
                        csv_map(s)
                    } else {
                        [
                            ("type".to_string(), "registry".to_string()),
                            ("ref".to_string(), s.clone()),
                        ]
                        .into_iter()
                        .collect()
                    };
                    entry_canon(cwd, m)
                })
                .collect(),
        )
    };
    let outputs: Vec<BTreeMap<String, String>> = strings(get("outputs"))
        .iter()
        .map(|s| {
            if s == "-" {
                [
                    ("type".to_string(), "tar".to_string()),
                    ("dest".to_string(), "-".to_string()),
                ]
                .into()
            } else if !s.contains('=') {
                [
                    ("type".to_string(), "local".to_string()),
                    ("dest".to_string(), s.clone()),
                ]
                .into()
            } else {
                csv_map(s)
            }
        })
        .collect();
    let (_, _, outputs) = outputs_canon(outputs, cwd);
    let attest = sorted(
        strings(get("attest"))
            .iter()
            .map(|s| json!(csv_map(s)))
            .collect(),
    );
    let inline = get("dockerfile_inline").and_then(Value::as_str);
    json!({
        "context": get("context").cloned().unwrap_or(Value::Null),
        "dockerfile": if inline.is_some() { Value::Null } else { get("dockerfile").cloned().unwrap_or(Value::Null) },
        "dockerfile_inline": inline,
        "network": get("network").and_then(Value::as_str),
        "extra_hosts": sorted_strings(strings(get("extra_hosts"))),
        "shm_size": get("shm_size").and_then(Value::as_u64),
        "ulimits": sorted_strings(strings(get("ulimits"))),
        "entitlements": sorted_strings(strings(get("entitlements"))),
        "no_cache_filter": sorted_strings(strings(get("no_cache_filter"))),
        "target": get("target").and_then(Value::as_str).filter(|s| !s.is_empty()),
        "args": str_map(get("args")),
        "labels": str_map(get("labels")),
        "contexts": str_map(get("contexts")),
        "tags": strings(get("tags")),
        "platforms": strings(get("platforms")),
        "secrets": secrets,
        "ssh": strings(get("ssh")),
        "cache_from": cache("cache_from"),
        "cache_to": cache("cache_to"),
        "outputs": outputs,
        "attest": attest,
        "push": get("push").and_then(Value::as_bool).unwrap_or(false),
        "load": get("load").and_then(Value::as_bool).unwrap_or(false),
        "pull": get("pull").and_then(Value::as_bool).unwrap_or(false),
        "no_cache": get("no_cache").and_then(Value::as_bool).unwrap_or(false),
    })
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
            for m in strings(Some(members)) {
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
        let (cb, cx) = (canon_bk(b, cwd), canon_buildx(x, cwd));
        for (field, want) in cx.as_object().unwrap() {
            let got = &cb[field];
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
            let mine: BTreeSet<String> = strings(members.get("targets")).into_iter().collect();
            let theirs: BTreeSet<String> = strings(bx["group"][g.as_str()].get("targets"))
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
