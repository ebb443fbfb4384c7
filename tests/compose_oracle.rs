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
//! `$HOME`, as buildx checks SSH sockets), `bk_default_group`, `requests` (lists of names to
//! ask both for besides none: each prints only what it names, with the services those use
//! through `service:` contexts).

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

/// Whether a printed target is used by another one through a `target:` context.
fn linked(targets: &serde_json::Map<String, Value>, name: &str) -> bool {
    targets.values().any(|t| {
        t["contexts"].as_object().is_some_and(|c| {
            c.values()
                .any(|v| v.as_str() == Some(&format!("target:{name}")))
        })
    })
}

/// Compares one `--print` of each tool: the same targets (for no names with a
/// `bk_default_group`, those services and what they use through `target:`), each field (but
/// for the documented differences), and the same groups.
fn compare(
    label: &str,
    dir: &Path,
    ours: &Value,
    theirs: &Value,
    spec: &Value,
    bk_default: Option<Vec<String>>,
    failures: &mut Vec<String>,
) {
    let bk_expect = spec.get("bk_expect").cloned().unwrap_or(Value::Null);
    let their_targets = theirs["target"].as_object().cloned().unwrap_or_default();
    let our_targets = ours["target"].as_object().cloned().unwrap_or_default();
    let on: BTreeSet<String> = our_targets.keys().cloned().collect();
    let want: BTreeSet<String> = match &bk_default {
        // The spec's default (active profiles only), with the targets those use.
        Some(d) => {
            let mut want: BTreeSet<String> = d.iter().cloned().collect();
            let mut todo: Vec<String> = want.iter().cloned().collect();
            while let Some(t) = todo.pop() {
                let contexts = their_targets
                    .get(&t)
                    .and_then(|x| x["contexts"].as_object().cloned());
                for v in contexts.into_iter().flat_map(|c| c.into_values()) {
                    if let Some(dep) = v.as_str().and_then(|v| v.strip_prefix("target:")) {
                        if want.insert(dep.to_string()) {
                            todo.push(dep.to_string());
                        }
                    }
                }
            }
            want
        }
        None => their_targets.keys().cloned().collect(),
    };
    if want != on {
        failures.push(format!(
            "{label}: targets differ: expected {want:?} (buildx {:?}), bk-build {on:?}",
            their_targets.keys().collect::<Vec<_>>()
        ));
        return;
    }
    for t in &on {
        let tv = &their_targets[t];
        let theirs_t = canon_buildx(tv, dir);
        let ours_t = canon_bk(&our_targets[t]);
        for (field, tval) in &theirs_t {
            let oval = ours_t.get(field).cloned().unwrap_or(Value::Null);
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
                        "{label}: {key}: documented difference, expected bk-build {want}, got {got}"
                    ));
                }
                continue;
            }
            // A service only used through `service:` (`target:`): buildx builds it inside
            // the dependent (cacheonly); bk-build builds and delivers it as itself.
            if field == "outputs"
                && tv["output"] == serde_json::json!([{"type": "cacheonly"}])
                && linked(&our_targets, t)
            {
                continue;
            }
            if field == "tags" {
                let theirs_tags = strings(tval);
                let ours_tags = strings(&oval);
                if theirs_tags.is_empty() {
                    // SPEC_WINS[0]: compose's default image name, from the service's name
                    // (a target's `_` may be the service's `.`).
                    let ok =
                        ours_tags.len() == 1 && ours_tags[0] == ours_tags[0].to_lowercase() && {
                            let (tag, want) = (&ours_tags[0], t.to_lowercase());
                            let cut = tag.len().checked_sub(want.len() + 1);
                            cut.and_then(|c| tag.get(c..)).is_some_and(|tail| {
                                tail.starts_with('-') && tail[1..].replace('.', "_") == want
                            })
                        };
                    if !ok {
                        failures.push(format!("{label}: {key}: expected compose's default name PROJECT-{}, got {ours_tags:?}", t.to_lowercase()));
                    }
                    continue;
                }
                // SPEC_WINS[1]: bk-build also keeps `image:` before build.tags.
                if !theirs_tags.iter().all(|x| ours_tags.contains(x)) {
                    failures.push(format!(
                        "{label}: {key}: buildx {theirs_tags:?} not all in bk-build {ours_tags:?}"
                    ));
                }
                continue;
            }
            let same = match (tval, &oval) {
                (Value::Null, Value::Null) => true,
                (Value::Null, Value::Array(a)) | (Value::Array(a), Value::Null) => a.is_empty(),
                (Value::Object(a), Value::Null) | (Value::Null, Value::Object(a)) => a.is_empty(),
                (a, b) => a == b,
            };
            if !same {
                failures.push(format!("{label}: {key}: buildx {tval}, bk-build {oval}"));
            }
        }
    }
    // Groups as sets; the default group is the names asked for, or for no names the
    // default services (SPEC_WINS[2]: only the active profiles').
    let groups = |v: &Value| -> BTreeMap<String, BTreeSet<String>> {
        v["group"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(g, m)| (g.clone(), strings(&m["targets"]).into_iter().collect()))
            .collect()
    };
    let mut want_groups = groups(theirs);
    if let Some(d) = bk_default {
        want_groups.insert("default".into(), d.into_iter().collect());
    }
    let our_groups = groups(ours);
    if our_groups != want_groups {
        failures.push(format!(
            "{label}: groups: expected {want_groups:?}, bk-build {our_groups:?}"
        ));
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
        if let Some(d) = case.spec.get("differences").and_then(Value::as_object) {
            for (what, why) in d {
                documented.push(format!(
                    "{name}: {what}: {}",
                    why.as_str().unwrap_or_default()
                ));
            }
        }
        // No names (the default), then each of the case's `requests`.
        let requests: Vec<Vec<String>> = std::iter::once(Vec::new())
            .chain(
                case.spec
                    .get("requests")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(strings),
            )
            .collect();
        for names in requests {
            let label = if names.is_empty() {
                name.clone()
            } else {
                format!("{name} {names:?}")
            };
            let mut bk = support::bk();
            bk.args(["bake", "--print"]).args(&names);
            let ours = case.run(bk, "bk_env", &bk_files, home.path());
            let mut bx = support::docker();
            bx.args(["buildx", "bake", "--print"]).args(&names);
            let theirs = case.run(bx, "buildx_env", &files, home.path());
            // The default group's difference (profiles) is only in what no names means.
            let bk_default = case
                .spec
                .get("bk_default_group")
                .filter(|_| names.is_empty())
                .map(strings);
            compare(
                &label,
                &dir,
                &ours,
                &theirs,
                &case.spec,
                bk_default,
                &mut failures,
            );
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

/// Plain build-arg values that YAML types as numbers or booleans: seeded random spellings
/// (signs, `_` separators, leading zeros, hex/octal/binary prefixes, fractions, exponents,
/// out-of-range integers) must come out of `bk-build bake --print` as buildx prints them
/// (compose-go types them with go-yaml, then Go's `fmt.Sprint`).
#[test]
fn plain_yaml_numbers_in_args_agree_with_buildx() {
    let mut seed: u64 = 0x5eed_0042;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let digits = |next: &mut dyn FnMut(u64) -> u64, max: u64, set: &[u8]| {
        let len = 1 + next(max);
        (0..len)
            .map(|_| set[next(set.len() as u64) as usize] as char)
            .collect::<String>()
    };
    let dec = b"0123456789";
    let mut values = Vec::new();
    for _ in 0..120 {
        let sign = ["", "", "-", "+"][next(4) as usize];
        let body = match next(8) {
            0 => digits(&mut next, 25, dec),
            1 => format!("0{}", digits(&mut next, 4, b"01234567_89")),
            2 => format!("0x{}", digits(&mut next, 17, b"0123456789abcdefABCDEF_")),
            3 => format!("0o{}", digits(&mut next, 8, b"012345678")),
            4 => format!("0b{}", digits(&mut next, 20, b"01_")),
            5 => format!(
                "{}.{}",
                digits(&mut next, 8, dec),
                digits(&mut next, 8, dec)
            ),
            6 => format!(
                "{}e{}{}",
                digits(&mut next, 6, dec),
                ["", "-", "+"][next(3) as usize],
                digits(&mut next, 2, dec)
            ),
            _ => format!(".{}E-{}", digits(&mut next, 5, dec), 1 + next(30)),
        };
        values.push(format!("{sign}{body}"));
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("app")).unwrap();
    std::fs::write(d.path().join("app/Dockerfile"), "FROM scratch\n").unwrap();
    let mut compose =
        String::from("services:\n  t:\n    build:\n      context: app\n      args:\n");
    for (i, v) in values.iter().enumerate() {
        compose.push_str(&format!("        A{i}: {v}\n"));
    }
    std::fs::write(d.path().join("compose.yaml"), &compose).unwrap();
    let args = |mut cmd: Command| -> BTreeMap<String, String> {
        let out = cmd
            .current_dir(d.path())
            .args(["bake", "--print", "-f", "compose.yaml", "t"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{compose}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["target"]["t"]["args"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect()
    };
    let ours = args(support::bk());
    let mut bx = support::docker();
    bx.arg("buildx");
    let theirs = args(bx);
    let differ: Vec<String> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let k = format!("A{i}");
            (ours.get(&k) != theirs.get(&k)).then(|| {
                format!(
                    "{v}: bk-build {:?}, buildx {:?}",
                    ours.get(&k),
                    theirs.get(&k)
                )
            })
        })
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert_eq!(ours.len(), values.len());
}
