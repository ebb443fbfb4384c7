//! Oracle test for the compose front end: for every project under `tests/data/compose/`,
//! `bk-build bake --print` must agree field by field with `docker buildx bake --print` on the
//! same files and environment, except where the compose specification and buildx disagree and
//! bk-build follows the specification. Those places are listed per case in its `case.json`
//! (`differences`: what and why; `bk_expect`: bk-build's value there) and in [`SPEC_WINS`], and
//! are documented in the README ("Coming from buildx bake / compose").
//!
//! `case.json` keys: `files` (the `-f` files for buildx, and for bk-build unless `bk_files` is
//! given; an empty `bk_files` means "discover"), `env`, `bk_env`, `buildx_env`, `stdin` (a
//! file fed to both on standard input), `home_socket` (a Unix socket created in a temporary
//! `$HOME`, as buildx checks SSH sockets), `bk_default_group`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::bake_print::{canon_bk, canon_buildx, strings};

/// Differences every case may show, and why bk-build does what it does.
const SPEC_WINS: &[(&str, &str)] = &[
    (
        "tags without image",
        "compose names an image without `image:` PROJECT-SERVICE (lower case); buildx bake gives it no tag",
    ),
    (
        "tags with image and build.tags",
        "the spec: build.tags are in addition to image; buildx bake drops image when build.tags is set",
    ),
    (
        "group default",
        "the spec: services of inactive profiles are not built by default (naming them still builds them); buildx bake builds all",
    ),
];

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compose")
}

struct Case {
    dir: PathBuf,
    spec: Value,
}

impl Case {
    fn env(&self, which: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for key in ["env", which] {
            if let Some(o) = self.spec.get(key).and_then(Value::as_object) {
                for (k, v) in o {
                    m.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
        }
        m
    }

    fn run(&self, mut cmd: Command, which: &str, files: &[String], home: &Path) -> Value {
        cmd.current_dir(&self.dir).env("HOME", home);
        for (k, _) in std::env::vars() {
            if k.starts_with("COMPOSE_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in self.env(which) {
            cmd.env(k, v);
        }
        for f in files {
            cmd.args(["-f", f]);
        }
        let stdin = self.spec.get("stdin").and_then(Value::as_str);
        match stdin {
            Some(f) => cmd.stdin(std::fs::File::open(self.dir.join(f)).unwrap()),
            None => cmd.stdin(Stdio::null()),
        };
        let out = support::run(&mut cmd);
        assert!(
            out.status.success(),
            "{}: {which} failed:\n{}",
            self.dir.display(),
            support::stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: {which} printed no JSON ({e}):\n{}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

#[test]
fn bake_print_agrees_with_buildx_on_every_compose_case() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "the corpus is missing: {cases:?}");
    let mut failures = Vec::new();
    let mut documented = Vec::new();
    for dir in cases {
        let spec: Value =
            serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
        let case = Case {
            dir: dir.clone(),
            spec,
        };
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let home = tempfile::tempdir().unwrap();
        let _listener = case
            .spec
            .get("home_socket")
            .and_then(Value::as_str)
            .map(|s| std::os::unix::net::UnixListener::bind(home.path().join(s)).unwrap());
        let files = strings(&case.spec["files"]);
        let bk_files = match case.spec.get("bk_files") {
            Some(v) => strings(v),
            None => files.clone(),
        };
        let mut bk = support::bk();
        bk.args(["bake", "--print"]);
        let ours = case.run(bk, "bk_env", &bk_files, home.path());
        let mut bx = support::docker();
        bx.args(["buildx", "bake", "--print"]);
        let theirs = case.run(bx, "buildx_env", &files, home.path());
        if let Some(d) = case.spec.get("differences").and_then(Value::as_object) {
            for (what, why) in d {
                documented.push(format!(
                    "{name}: {what}: {}",
                    why.as_str().unwrap_or_default()
                ));
            }
        }
        let bk_expect = case.spec.get("bk_expect").cloned().unwrap_or(Value::Null);

        let their_targets = theirs["target"].as_object().cloned().unwrap_or_default();
        let our_targets = ours["target"].as_object().cloned().unwrap_or_default();
        let tn: BTreeSet<&String> = their_targets.keys().collect();
        let on: BTreeSet<&String> = our_targets.keys().collect();
        if tn != on {
            failures.push(format!(
                "{name}: targets differ: buildx {tn:?}, bk-build {on:?}"
            ));
            continue;
        }
        for (t, tv) in &their_targets {
            let theirs = canon_buildx(tv, &dir);
            let ours = canon_bk(&our_targets[t]);
            for (field, tval) in &theirs {
                let oval = ours.get(field).cloned().unwrap_or(Value::Null);
                let key = format!("{t}.{field}");
                if let Some(expected) = bk_expect.get(&key) {
                    let got = if expected.is_array() {
                        serde_json::to_value(strings(&oval).into_iter().collect::<BTreeSet<_>>())
                            .unwrap()
                    } else {
                        oval.clone()
                    };
                    let want = if expected.is_array() {
                        serde_json::to_value(strings(expected).into_iter().collect::<BTreeSet<_>>())
                            .unwrap()
                    } else {
                        expected.clone()
                    };
                    if got != want {
                        failures.push(format!(
                            "{name}: {key}: documented difference, expected bk-build {want}, got {got}"
                        ));
                    }
                    continue;
                }
                if field == "tags" {
                    let theirs_t = strings(tval);
                    let ours_t = strings(&oval);
                    if theirs_t.is_empty() {
                        // SPEC_WINS[0]: compose's default image name.
                        let ok = ours_t.len() == 1
                            && ours_t[0].ends_with(&format!("-{}", t.to_lowercase()))
                            && ours_t[0] == ours_t[0].to_lowercase();
                        if !ok {
                            failures.push(format!("{name}: {key}: expected compose's default name PROJECT-{}, got {ours_t:?}", t.to_lowercase()));
                        }
                        continue;
                    }
                    // SPEC_WINS[1]: bk-build also keeps `image:` before build.tags.
                    if !theirs_t.iter().all(|x| ours_t.contains(x)) {
                        failures.push(format!(
                            "{name}: {key}: buildx {theirs_t:?} not all in bk-build {ours_t:?}"
                        ));
                    }
                    continue;
                }
                let same = match (tval, &oval) {
                    (Value::Null, Value::Null) => true,
                    (Value::Null, Value::Array(a)) | (Value::Array(a), Value::Null) => a.is_empty(),
                    (Value::Object(a), Value::Null) | (Value::Null, Value::Object(a)) => {
                        a.is_empty()
                    }
                    (a, b) => a == b,
                };
                if !same {
                    failures.push(format!("{name}: {key}: buildx {tval}, bk-build {oval}"));
                }
            }
        }
        // Groups: buildx's default is every target; bk-build's only the active profiles'.
        let their_default: BTreeSet<String> = strings(&theirs["group"]["default"]["targets"])
            .into_iter()
            .collect();
        let our_default: BTreeSet<String> = strings(&ours["group"]["default"]["targets"])
            .into_iter()
            .collect();
        let want_default = match case.spec.get("bk_default_group") {
            Some(v) => strings(v).into_iter().collect(),
            None => their_default,
        };
        if our_default != want_default {
            failures.push(format!(
                "{name}: group default: expected {want_default:?}, bk-build {our_default:?}"
            ));
        }
    }
    eprintln!("documented differences (the compose spec wins):");
    for (what, why) in SPEC_WINS {
        eprintln!("  all cases: {what}: {why}");
    }
    for d in &documented {
        eprintln!("  {d}");
    }
    assert!(
        failures.is_empty(),
        "bk-build and buildx disagree:\n{}",
        failures.join("\n")
    );
}
