//! `bk-build bake` / `plan` on a small monorepo against the real daemon and registry.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::*;

/// A project: `base` (FROM the busybox base image), `svc1` and `svc2` FROM base (svc2 also
/// reads the shared folder `shared/` through a named context), and `lone` (independent).
struct Repo {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: String,
}

fn project(extra_toml: &str) -> Repo {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mono");
    let repo = format!("localhost:5000/{}", unique("bake"));
    let base = base_image();
    write(
        &root.join("bk-build.toml"),
        format!(
            r#"[vars]
REPO = "{repo}"
TAG = "dev"

[defaults]
tags = ["${{REPO}}/{{name}}:${{TAG}}"]
push = true

[target.base]
context = "base"
args = {{ BASE_IMAGE = "{base}" }}

[target.svc1]
context = "svc1"
args = {{ REPO = "${{REPO}}", TAG = "${{TAG}}" }}

[target.svc2]
context = "svc2"
args = {{ REPO = "${{REPO}}", TAG = "${{TAG}}" }}
contexts = {{ shared = "shared" }}

[target.lone]
context = "lone"

{extra_toml}
"#
        ),
    );
    write(
        &root.join("base/Dockerfile"),
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY base.txt /base.txt\n",
    );
    write(&root.join("base/base.txt"), "base v1\n");
    for svc in ["svc1", "svc2"] {
        let extra = if svc == "svc2" {
            "FROM scratch AS shared\nFROM ${REPO}/base:${TAG}\nCOPY --from=shared / /shared/\n"
        } else {
            "FROM ${REPO}/base:${TAG}\n"
        };
        write(&root.join(format!("{svc}/Dockerfile")), format!("ARG REPO\nARG TAG\n{extra}COPY app.txt /app.txt\nRUN cat /base.txt /app.txt > /combined\n"));
        write(&root.join(format!("{svc}/app.txt")), format!("{svc} v1\n"));
        write(&root.join(format!("{svc}/.dockerignore")), "ignored.txt\n");
        write(&root.join(format!("{svc}/ignored.txt")), "junk v1\n");
    }
    write(&root.join("shared/lib.txt"), "shared v1\n");
    write(
        &root.join("lone/Dockerfile"),
        format!("FROM {base}\nCOPY x.txt /x.txt\n"),
    );
    write(&root.join("lone/x.txt"), "lone v1\n");
    Repo {
        _tmp: tmp,
        root,
        repo,
    }
}

fn bake(r: &Repo, args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let md = r.root.join("bake-md.json");
    let _ = std::fs::remove_file(&md);
    let out = run(bk()
        .current_dir(&r.root)
        .args(["bake", "--progress", "plain", "--metadata-file"])
        .arg(&md)
        .args(args));
    let meta = std::fs::read(&md)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, meta)
}

/// target → "build" | "skip", from `bk-build plan --format json`.
fn plan(r: &Repo) -> BTreeMap<String, String> {
    let out = run_ok(bk().current_dir(&r.root).args(["plan", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn built(meta: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = meta
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, x)| x.get("bk-build.skipped").is_none())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn expect(plan: &BTreeMap<String, String>, build: &[&str]) {
    for (name, action) in plan {
        let want = if build.contains(&name.as_str()) {
            "build"
        } else {
            "skip"
        };
        assert_eq!(
            action, want,
            "target {name}: plan says {action}, expected {want} ({plan:?})"
        );
    }
}

#[test]
fn bake_builds_in_order_then_skips_what_did_not_change() {
    let r = project("");
    expect(&plan(&r), &["base", "svc1", "svc2", "lone"]);
    let (out, meta) = bake(&r, &[]);
    assert!(out.status.success());
    assert_eq!(built(&meta), vec!["base", "lone", "svc1", "svc2"]);
    // Dependency order: base finished before its dependents started.
    let err = stderr(&out);
    let base_done = err.find("[base] #").expect("base progress");
    let svc_start = err.find("[svc1] #").expect("svc1 progress");
    assert!(base_done < svc_start, "svc1 started before base");
    // Every pushed tag is in the registry with the recorded digest.
    for t in ["base", "svc1", "svc2", "lone"] {
        let repo = format!("{}/{t}", r.repo.trim_start_matches("localhost:5000/"));
        assert_eq!(
            manifest_digest(&repo, "dev").as_deref(),
            meta[t]["containerimage.digest"].as_str(),
            "{t}"
        );
    }
    // svc2 is built on exactly this run's base, with the shared folder.
    let o = tempfile::tempdir().unwrap();
    run_ok(
        bk().args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", o.path().display()))
            .arg(write_probe(&r, "svc2")),
    );
    assert_eq!(
        std::fs::read_to_string(o.path().join("combined")).unwrap(),
        "base v1\nsvc2 v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(o.path().join("shared/lib.txt")).unwrap(),
        "shared v1\n"
    );

    // No change: nothing is built and the daemon is not asked to solve anything.
    expect(&plan(&r), &[]);
    let (out, meta) = bake(&r, &[]);
    assert!(out.status.success());
    assert!(built(&meta).is_empty(), "{meta}");
    assert!(
        !stderr(&out).contains("load build definition"),
        "a Solve ran on a no-op bake"
    );
}

/// A context that extracts a built image's files: `FROM image` + `-o type=local`.
fn write_probe(r: &Repo, target: &str) -> PathBuf {
    let dir = r.root.join(format!("probe-{target}"));
    write(
        &dir.join("Dockerfile"),
        format!("FROM {}/{target}:dev\n", r.repo),
    );
    dir
}

fn touch_same_content(dir: &Path) {
    // What `git checkout` does to unchanged files: same bytes, new mtime.
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let b = std::fs::read(&p).unwrap();
            std::fs::remove_file(&p).unwrap();
            std::fs::write(&p, b).unwrap();
        }
    }
}

#[test]
fn only_affected_targets_rebuild() {
    let r = project("");
    let (out, _) = bake(&r, &[]);
    assert!(out.status.success());

    // New mtimes, same content: nothing to do.
    std::thread::sleep(std::time::Duration::from_millis(50));
    for d in ["base", "svc1", "svc2", "shared", "lone"] {
        touch_same_content(&r.root.join(d));
    }
    expect(&plan(&r), &[]);

    // A file excluded by .dockerignore: nothing to do.
    write(&r.root.join("svc1/ignored.txt"), "junk v2\n");
    expect(&plan(&r), &[]);

    // The shared folder: only its user.
    write(&r.root.join("shared/lib.txt"), "shared v2\n");
    let p = plan(&r);
    expect(&p, &["svc2"]);
    let (out, meta) = bake(&r, &[]);
    assert!(out.status.success());
    assert_eq!(built(&meta), vec!["svc2"]);

    // The base: it and everything built on it; not the independent image.
    write(&r.root.join("base/base.txt"), "base v2\n");
    expect(&plan(&r), &["base", "svc1", "svc2"]);
    let (out, meta) = bake(&r, &[]);
    assert!(out.status.success());
    assert_eq!(built(&meta), vec!["base", "svc1", "svc2"]);
    let o = tempfile::tempdir().unwrap();
    run_ok(
        bk().args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", o.path().display()))
            .arg(write_probe(&r, "svc1")),
    );
    assert_eq!(
        std::fs::read_to_string(o.path().join("combined")).unwrap(),
        "base v2\nsvc1 v1\n",
        "svc1 must build on the new base"
    );
    expect(&plan(&r), &[]);
}

#[test]
fn a_failing_target_stops_its_dependents_not_its_siblings() {
    let r = project("");
    write(
        &r.root.join("base/Dockerfile"),
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo base-is-broken && exit 7\n",
    );
    let (out, meta) = bake(&r, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("base-is-broken"));
    assert_eq!(
        built(&meta),
        vec!["lone"],
        "the independent target still builds"
    );
    assert!(
        err.contains("not started"),
        "dependents are reported as not started: {err}"
    );
    // Nothing of the failed part was recorded: the plan still wants to build it.
    let p = plan(&r);
    expect(&p, &["base", "svc1", "svc2"]);
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let r = project("");
    let toml = std::fs::read_to_string(r.root.join("bk-build.toml")).unwrap();
    let toml = toml
        .replace(
            "[target.lone]\ncontext = \"lone\"",
            "[target.lone]\ncontext = \"lone\"\ndepends_on = [\"svc1\"]",
        )
        .replace(
            "[target.base]\ncontext = \"base\"",
            "[target.base]\ncontext = \"base\"\ndepends_on = [\"lone\"]",
        );
    write(&r.root.join("bk-build.toml"), toml);
    let o = run(bk().current_dir(&r.root).args(["plan"]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cycle"), "{e}");
    for hop in ["base", "lone", "svc1"] {
        assert!(e.contains(hop), "{e}");
    }
    assert!(e.contains(" -> "), "the path is shown: {e}");
}

#[test]
fn compose_files_build_the_same_images_as_the_toml() {
    let r = project("");
    let base = base_image();
    write(
        &r.root.join("docker-compose.yml"),
        format!(
            r#"services:
  base:
    image: ${{REPO}}/base:${{TAG:-dev}}
    build:
      context: base
      args:
        BASE_IMAGE: {base}
  svc1:
    image: ${{REPO}}/svc1:${{TAG:-dev}}
    build:
      context: svc1
      args:
        REPO: ${{REPO}}
        TAG: wrong
  svc2:
    image: ${{REPO}}/svc2:${{TAG:-dev}}
    build:
      context: svc2
      args:
        REPO: ${{REPO}}
        TAG: dev
      additional_contexts:
        shared: ./shared
  lone:
    image: ${{REPO}}/lone:${{TAG:-dev}}
    build: lone
"#
        ),
    );
    // The override fixes svc1's TAG the way compose merges maps.
    write(
        &r.root.join("docker-compose.ci.yml"),
        "services:\n  svc1:\n    build:\n      args:\n        TAG: dev\n",
    );
    let print = |args: &[&str]| -> serde_json::Value {
        let o = run_ok(
            bk().current_dir(&r.root)
                .env("REPO", &r.repo)
                .args(["bake", "--print"])
                .args(args),
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let from_toml = print(&[]);
    let from_compose = print(&["-f", "docker-compose.yml", "-f", "docker-compose.ci.yml"]);
    for t in ["base", "svc1", "svc2", "lone"] {
        for key in ["context", "dockerfile", "args", "tags", "contexts"] {
            assert_eq!(
                from_toml["target"][t][key], from_compose["target"][t][key],
                "target {t} key {key}"
            );
        }
    }
    // And it really builds, in dependency order, pushing with --push semantics of images.
    let md = r.root.join("compose-md.json");
    run_ok(
        bk().current_dir(&r.root)
            .env("REPO", &r.repo)
            .args([
                "bake",
                "--progress",
                "plain",
                "-f",
                "docker-compose.yml",
                "-f",
                "docker-compose.ci.yml",
                "--metadata-file",
            ])
            .arg(&md),
    );
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&md).unwrap()).unwrap();
    assert_eq!(built(&meta), vec!["base", "lone", "svc1", "svc2"]);
}

#[test]
fn killing_a_run_keeps_finished_targets_and_rebuilds_the_rest() {
    let r = project("");
    // svc1 takes long enough to be killed while it runs; the marker tells its RUN apart from
    // any other `sleep` on the machine.
    let marker = unique("killme");
    write(&r.root.join("svc1/Dockerfile"), format!("ARG REPO\nARG TAG\nFROM ${{REPO}}/base:${{TAG}}\nCOPY app.txt /app.txt\nRUN sleep 20 && echo {marker} && cat /base.txt /app.txt > /combined\n"));
    let mut child = bk()
        .current_dir(&r.root)
        .args(["bake", "--progress", "plain", "-j", "1", "base", "svc1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until svc1's RUN is executing and base is recorded: svc1 may start while base's
    // push still runs (dependents do not wait for it), and base is recorded once pushed.
    let start = std::time::Instant::now();
    let base_record = r.root.join(".bk-build/state/targets/base.rec");
    while !base_record.exists()
        || !std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    {
        assert!(start.elapsed().as_secs() < 90, "svc1 never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let p = plan(&r);
    assert_eq!(p["base"], "skip", "base finished and was recorded: {p:?}");
    assert_eq!(p["svc1"], "build", "svc1 did not finish: {p:?}");
}

#[test]
fn the_state_directory_is_neither_sent_nor_fingerprinted() {
    let r = project(
        "[target.whole]\ncontext = \".\"\ndockerfile = \"whole.Dockerfile\"\ntags = [\"${REPO}/whole:dev\"]\n",
    );
    write(
        &r.root.join("whole.Dockerfile"),
        "FROM scratch\nCOPY . /all/\n",
    );
    write(&r.root.join(".dockerignore"), "bake-md.json\nprobe-*\n");
    let (out, meta) = bake(&r, &["whole"]);
    assert!(out.status.success());
    assert_eq!(built(&meta), vec!["whole"]);
    assert!(r.root.join(".bk-build").is_dir(), "state was written");
    // The state changed during that run, yet the target is unchanged.
    let p = plan(&r);
    assert_eq!(p["whole"], "skip", "{p:?}");
    let o = tempfile::tempdir().unwrap();
    run_ok(
        bk().args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", o.path().display()))
            .arg(write_probe(&r, "whole")),
    );
    assert!(
        o.path().join("all/bk-build.toml").is_file(),
        "the context was sent"
    );
    assert!(
        !o.path().join("all/.bk-build").exists(),
        "the state directory was sent"
    );
}

/// (action, reasons) of one target, from `bk-build plan --format json`.
fn plan_of(r: &Repo, target: &str) -> (String, String) {
    let out = run_ok(bk().current_dir(&r.root).args(["plan", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == target)
        .unwrap_or_else(|| panic!("{target} not in the plan: {v}"));
    (
        t["action"].as_str().unwrap().to_string(),
        t["reasons"].to_string(),
    )
}

#[test]
fn a_loaded_image_that_was_removed_or_retagged_is_rebuilt() {
    let r = project("[target.loaded]\ncontext = \"lone\"\npush = false\nload = true\n");
    let tag = format!("{}/loaded:dev", r.repo);
    let (out, meta) = bake(&r, &["loaded"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(built(&meta), vec!["loaded"]);
    let id = String::from_utf8(
        run_ok(docker().args(["image", "inspect", "--format", "{{.Id}}", &tag])).stdout,
    )
    .unwrap();
    assert_eq!(
        Some(id.trim()),
        meta["loaded"]["containerimage.digest"].as_str(),
        "the engine holds the recorded image"
    );
    assert_eq!(plan_of(&r, "loaded").0, "skip");

    let engine_id = |tag: &str| {
        let o = run(docker().args(["image", "inspect", "--format", "{{.Id}}", tag]));
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // What the engine holds after a run must be what the run recorded. A rebuild is a new
    // image, even from the build cache: its provenance attestation names the new build.
    let delivered = |meta: &serde_json::Value| {
        let d = meta["loaded"]["containerimage.digest"]
            .as_str()
            .map(str::to_string);
        assert!(d.is_some(), "{meta}");
        d
    };

    // Untagged: re-tagged if the engine still has the image, else rebuilt — never skipped.
    run_ok(docker().args(["image", "rm", &tag]));
    let (action, why) = plan_of(&r, "loaded");
    assert_ne!(action, "skip", "{why}");
    let (out, meta) = bake(&r, &["loaded"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(engine_id(&tag), delivered(&meta));
    assert_eq!(plan_of(&r, "loaded").0, "skip");

    // Same tag, another image: what a `docker pull` or a build by hand would leave.
    run_ok(docker().args(["tag", &base_image(), &tag]));
    let foreign = engine_id(&tag);
    let (action, why) = plan_of(&r, "loaded");
    assert_ne!(action, "skip", "{why}");
    let (out, meta) = bake(&r, &["loaded"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(engine_id(&tag), delivered(&meta));
    assert_ne!(engine_id(&tag), foreign);

    // Gone entirely (no other tag holds it): rebuilt.
    let mut toml = std::fs::read_to_string(r.root.join("bk-build.toml")).unwrap();
    toml.push_str("\n[target.alone]\ncontext = \"alone\"\npush = false\nload = true\n");
    write(&r.root.join("bk-build.toml"), toml);
    write(
        &r.root.join("alone/Dockerfile"),
        format!("FROM {}\nCOPY y /y\n", base_image()),
    );
    write(&r.root.join("alone/y"), unique("alone"));
    let alone = format!("{}/alone:dev", r.repo);
    let (out, meta) = bake(&r, &["alone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(built(&meta), vec!["alone"]);
    run_ok(docker().args(["image", "rm", &alone]));
    let (action, why) = plan_of(&r, "alone");
    assert_eq!(action, "build");
    assert!(why.contains("that image is no longer there"), "{why}");
    let (out, meta) = bake(&r, &["alone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(built(&meta), vec!["alone"]);
    assert_eq!(plan_of(&r, "alone").0, "skip");
    assert_eq!(plan_of(&r, "loaded").0, "skip");
}

/// The engine's tags are read from its containerd image store when it has one (see
/// `transport/engine_store.rs`); the answers must be the Engine API's, and cached facts about
/// the engine that turn out wrong must never turn into a skip.
#[test]
fn engine_checks_through_containerd_stay_right_when_the_cached_facts_are_wrong() {
    let mut extra = String::new();
    for i in 1..=4 {
        extra.push_str(&format!(
            "[target.l{i}]\ncontext = \"l{i}\"\npush = false\nload = true\n\n"
        ));
    }
    let r = project(&extra);
    for i in 1..=4 {
        write(
            &r.root.join(format!("l{i}/Dockerfile")),
            format!("FROM {}\nCOPY f /f\n", base_image()),
        );
        write(&r.root.join(format!("l{i}/f")), unique("loaded"));
    }
    let cache = tempfile::tempdir().unwrap();
    let cache_file = cache.path().join("bk-build/engines.json");
    let names = ["l1", "l2", "l3", "l4"];
    let plan_loaded = || -> BTreeMap<String, String> {
        let out = run_ok(
            bk().current_dir(&r.root)
                .env("XDG_CACHE_HOME", cache.path())
                .args(["plan", "--format", "json", "l1", "l2", "l3", "l4"]),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let bake_loaded = || {
        let out = run(bk()
            .current_dir(&r.root)
            .env("XDG_CACHE_HOME", cache.path())
            .args(["bake", "--progress", "plain"])
            .args(names));
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let all = |action: &str| -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), action.to_string()))
            .collect()
    };
    bake_loaded();
    assert_eq!(plan_loaded(), all("skip"));
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache_file).expect("engine facts cached")).unwrap();
    assert!(
        facts[0]["containerd"].is_string(),
        "the test engine uses the containerd image store, so the fast path must be on: {facts}"
    );

    // A passed comparison is kept for as long as the same dockerd process listens on the
    // socket (the test engine is started directly, not by socket activation).
    let pid: u32 = std::fs::read_to_string(bkenv().join("dockerd.pid"))
        .expect("the test engine's pid file")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        facts[0]["verified"]["listener"][0], pid,
        "the comparison is kept under the engine's process: {facts}"
    );
    // A record under another process is not trusted: compared again, and kept anew.
    let mut stale = facts.clone();
    stale[0]["verified"]["listener"] = serde_json::json!([1, 0]);
    stale[0]["namespace"] = "bk-build-test-elsewhere".into();
    write(&cache_file, serde_json::to_string(&stale).unwrap());
    assert_eq!(plan_loaded(), all("skip"));
    let now: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache_file).unwrap()).unwrap();
    assert_eq!(now, serde_json::json!([]), "stale record with wrong facts");
    stale[0]["namespace"] = facts[0]["namespace"].clone();
    write(&cache_file, serde_json::to_string(&stale).unwrap());
    assert_eq!(plan_loaded(), all("skip"));
    let now: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache_file).unwrap()).unwrap();
    assert_eq!(now[0]["verified"], facts[0]["verified"], "{now}");

    // Tags moved or removed behind bk-build's back: every one is seen, whichever path answers.
    let tag = |n: &str| format!("{}/{n}:dev", r.repo);
    run_ok(docker().args(["tag", &base_image(), &tag("l2")]));
    run_ok(docker().args(["tag", &base_image(), &tag("l3")]));
    run_ok(docker().args(["image", "rm", &tag("l4")]));
    let p = plan_loaded();
    assert_eq!(p["l1"], "skip");
    for n in ["l2", "l3", "l4"] {
        assert_ne!(p[n], "skip", "{n}: {p:?}");
    }
    bake_loaded();
    assert_eq!(plan_loaded(), all("skip"));

    // Wrong facts with the engine's identity and a passed comparison on record (a cache
    // edited behind bk-build's back): another namespace (a store without these images), then
    // a socket that is not containerd at all. Nothing is skipped that should not be, and
    // facts that disagree with the engine are dropped.
    for wrong in ["namespace", "address"] {
        let mut f = facts.clone();
        match wrong {
            "namespace" => f[0]["namespace"] = "bk-build-test-elsewhere".into(),
            _ => f[0]["containerd"] = f[0]["socket"].clone(),
        }
        write(&cache_file, serde_json::to_string(&f).unwrap());
        assert_eq!(plan_loaded(), all("skip"), "{wrong}");
        let now: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cache_file).unwrap()).unwrap();
        assert_eq!(
            now,
            serde_json::json!([]),
            "{wrong}: wrong facts are forgotten"
        );

        write(&cache_file, serde_json::to_string(&f).unwrap());
        run_ok(docker().args(["tag", &base_image(), &tag("l1")]));
        let p = plan_loaded();
        assert_ne!(p["l1"], "skip", "{wrong}: {p:?}");
        assert_eq!(p["l2"], "skip", "{wrong}: {p:?}");
        bake_loaded();
    }
}

/// Three independent targets whose RUN steps print a line every 0.2 s, so their output
/// interleaves when they build at once: `a` and `b` push, `bad` fails after its lines.
fn ci_project() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ci");
    let repo = format!("localhost:5000/{}", unique("ciout"));
    write(
        &root.join("bk-build.toml"),
        format!(
            "[defaults]\ntags = [\"{repo}/{{name}}:dev\"]\npush = true\n\n\
             [target.a]\ncontext = \"a\"\n[target.b]\ncontext = \"b\"\n[target.bad]\ncontext = \"bad\"\n"
        ),
    );
    let base = base_image();
    for (t, tail) in [("a", ""), ("b", ""), ("bad", "; exit 3")] {
        write(
            &root.join(t).join("Dockerfile"),
            format!(
                "FROM {base}\nRUN for i in 1 2 3 4; do echo {t}-line-$i-{repo}; sleep 0.2; done{tail}\n"
            ),
        );
    }
    (tmp, root)
}

/// The lines of each section of a CI log (before the run's table), checking on the way
/// that sections neither nest nor stay open, and that every line of target `t` is inside
/// the one section titled `t: …`. Returns target → (title, lines).
fn sections(
    log: &str,
    mut open: impl FnMut(&str) -> Option<String>,
    mut close: impl FnMut(&str) -> bool,
) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in log.lines().take_while(|l| !l.starts_with("TARGET ")) {
        if let Some(title) = open(line) {
            assert!(
                current.is_none(),
                "a section opens inside another: {line:?}\n{log}"
            );
            let target = title.split(':').next().unwrap().to_string();
            assert!(
                out.insert(target.clone(), (title, Vec::new())).is_none(),
                "target {target} has two sections: its lines are not together\n{log}"
            );
            current = Some(target);
        } else if close(line) {
            assert!(
                current.take().is_some(),
                "a section ends that never opened\n{log}"
            );
        } else if let Some(t) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
            .filter(|(t, _)| *t != "+")
        {
            assert_eq!(
                current.as_deref(),
                Some(t.0),
                "line of {} outside its section: {line:?}\n{log}",
                t.0
            );
            out.get_mut(t.0).unwrap().1.push(line.to_string());
        }
    }
    assert!(current.is_none(), "a section is never closed\n{log}");
    out
}

/// The Markdown table rows of a step summary, by target: [action, result, digest].
fn summary_rows(md: &str) -> BTreeMap<String, Vec<String>> {
    md.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Target") && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            (cells[0].clone(), cells[1..4].to_vec())
        })
        .collect()
}

#[test]
fn ci_logs_keep_each_targets_lines_in_its_own_section_and_summarize_the_run() {
    let (_tmp, root) = ci_project();
    let summary = root.join("step-summary.md");
    write(&summary, "earlier step\n");
    let md = root.join("md.json");
    let ci_bake = |var: &str| {
        run(bk()
            .current_dir(&root)
            .env(var, "true")
            .env("GITHUB_STEP_SUMMARY", &summary)
            .args(["bake", "--progress", "plain", "-j", "3", "--metadata-file"])
            .arg(&md))
    };

    // GitHub Actions: one `::group::` per target, in one piece, with its failure inside.
    let out = ci_bake("GITHUB_ACTIONS");
    assert!(!out.status.success());
    let log = stderr(&out);
    let groups = sections(
        &log,
        |l| l.strip_prefix("::group::").map(str::to_string),
        |l| l == "::endgroup::",
    );
    let titles: Vec<&str> = groups.values().map(|(t, _)| t.as_str()).collect();
    assert_eq!(titles, ["a: built", "b: built", "bad: failed"], "{log}");
    for (t, (_, lines)) in &groups {
        let body = lines.join("\n");
        for i in 1..=4 {
            assert!(body.contains(&format!("{t}-line-{i}")), "{t}: {body}");
        }
        // A step every target shares (BuildKit runs it once) is shown in each block.
        assert!(body.contains("FROM localhost:5000/busybox"), "{t}: {body}");
    }
    let bad = groups["bad"].1.join("\n");
    for needle in [
        "bad-line-3",
        "exit code: 3",
        "ERROR: failed to solve",
        "Dockerfile:2",
    ] {
        assert!(
            bad.contains(needle),
            "bad's section lacks {needle:?}: {bad}"
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&md).unwrap()).unwrap();
    let digest = |t: &str| {
        meta[t]["containerimage.digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = std::fs::read_to_string(&summary).unwrap();
    assert!(
        first.starts_with("earlier step\n### bk-build bake\n"),
        "{first}"
    );
    let rows = summary_rows(&first);
    assert_eq!(rows.len(), 3, "{first}");
    assert_eq!(rows["a"], ["build", "built", &digest("a")]);
    assert_eq!(rows["b"], ["build", "built", &digest("b")]);
    assert_eq!(rows["bad"], ["build", "failed", "-"]);
    assert!(
        first.contains("<details><summary>bad: failed</summary>"),
        "{first}"
    );

    // GitLab, after `b` changed: `a` is skipped, `b` built, `bad` fails again. Sections are
    // timed, named from the safe character set, and folded unless they failed.
    let a_digest = digest("a");
    let b_file = root.join("b/Dockerfile");
    let changed = std::fs::read_to_string(&b_file)
        .unwrap()
        .replace("b-line", "b2-line");
    write(&b_file, changed);
    let out = ci_bake("GITLAB_CI");
    assert!(!out.status.success());
    let log = stderr(&out);
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    let mut starts: BTreeMap<String, (u64, bool)> = BTreeMap::new();
    let parsed = sections(
        &log,
        |l| {
            let rest = l.strip_prefix("\x1b[0Ksection_start:")?;
            let (ts, rest) = rest.split_once(':')?;
            let (name, title) = rest.split_once("\r\x1b[0K")?;
            let (name, folded) = match name.strip_suffix("[collapsed=true]") {
                Some(n) => (n, true),
                None => (name, false),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
                "section name {name:?}"
            );
            starts.insert(name.to_string(), (ts.parse().unwrap(), folded));
            Some(title.to_string())
        },
        |l| {
            let Some(rest) = l.strip_prefix("\x1b[0Ksection_end:") else {
                return false;
            };
            let (ts, name) = rest.split_once(':').unwrap();
            let name = name.strip_suffix("\r\x1b[0K").expect("end marker");
            ends.insert(name.to_string(), ts.parse().unwrap());
            true
        },
    );
    let titles: Vec<&str> = parsed.values().map(|(t, _)| t.as_str()).collect();
    assert_eq!(titles, ["a: skipped", "b: built", "bad: failed"], "{log}");
    assert_eq!(
        starts.keys().collect::<Vec<_>>(),
        ends.keys().collect::<Vec<_>>()
    );
    for (name, (start, folded)) in &starts {
        assert!(ends[name] >= *start, "{name} ends before it starts");
        assert_eq!(*folded, !name.ends_with("bad"), "{name}");
    }
    let b = parsed["b"].1.join("\n");
    assert!(b.contains("b2-line-4"), "{b}");
    assert!(parsed["bad"].1.join("\n").contains("exit code: 3"));
    let both = std::fs::read_to_string(&summary).unwrap();
    assert!(
        both.starts_with(&first),
        "the summary file was not appended to"
    );
    let rows = summary_rows(&both[first.len()..]);
    assert_eq!(rows["a"], ["skip", "skipped", &a_digest]);
    assert_eq!(rows["b"][..2], ["build", "built"]);
    assert_eq!(rows["bad"], ["build", "failed", "-"]);

    // `--progress quiet`, as `docker buildx bake`: no table, but the error is still said.
    let out = run(bk()
        .current_dir(&root)
        .args(["bake", "--progress", "quiet"]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains("TARGET"), "quiet printed the table: {err}");
    assert!(!err.contains("b2-line"), "quiet printed progress: {err}");
    assert!(err.contains("exit code: 3"), "{err}");
}

/// The stat cache only saves work: when it cannot be written (here a directory stands in its
/// place; a full disk is the same) the run still succeeds and delivers, with a warning.
#[test]
fn a_stat_cache_that_cannot_be_written_is_a_warning_not_a_failed_run() {
    let r = project("");
    let cache = r.root.join(".bk-build/state/stat-cache");
    let _ = std::fs::remove_file(&cache);
    std::fs::create_dir_all(cache.join("in-the-way")).unwrap();
    let (out, meta) = bake(&r, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not save the stat cache"),
        "{}",
        stderr(&out)
    );
    assert!(meta.as_object().is_some_and(|m| !m.is_empty()), "{meta}");
    let out = run(bk().current_dir(&r.root).args(["plan"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("could not save the stat cache"));
}

/// A base, a service `FROM` it and a target that `depends_on` it, all pushed to
/// `127.0.0.1:{port}/{prefix}/…` (a [`gated_registry`]); the base's layer is unique to the run.
fn early_project(dir: &Path, port: u16, prefix: &str) {
    write(
        &dir.join("bk-build.toml"),
        format!(
            "[vars]\nREPO = \"127.0.0.1:{port}/{prefix}\"\nTAG = \"t1\"\n\n[defaults]\ntags = [\"${{REPO}}/{{name}}:${{TAG}}\"]\npush = true\n\n\
             [target.base]\ncontext = \"base\"\n\n\
             [target.svc]\ncontext = \"svc\"\nargs = {{ REPO = \"${{REPO}}\", TAG = \"${{TAG}}\" }}\n\n\
             [target.after]\ncontext = \"after\"\ndepends_on = [\"base\"]\n"
        ),
    );
    // Ordered after base without using its image: it waits for base's push to end.
    write(
        &dir.join("after/Dockerfile"),
        format!("FROM {}\nCOPY a.txt /a.txt\n", base_image()),
    );
    write(&dir.join("after/a.txt"), format!("after {prefix}\n"));
    write(
        &dir.join("base/Dockerfile"),
        format!("FROM {}\nCOPY b.txt /b.txt\n", base_image()),
    );
    write(&dir.join("base/b.txt"), format!("base {prefix}\n"));
    write(
        &dir.join("svc/Dockerfile"),
        "ARG REPO\nARG TAG\nFROM ${REPO}/base:${TAG}\nRUN --network=none cat /b.txt > /copy.txt\nCOPY s.txt /s.txt\n",
    );
    write(&dir.join("svc/s.txt"), format!("svc {prefix}\n"));
}

/// A dependent starts as soon as its base's image is stored on the daemon, without waiting
/// for the base's push, and is pinned to exactly that image: the registry holds the base's
/// manifest push until the service's own push begins (which can only happen if the service
/// was built while its base was still being pushed; before, the hold ran into its timeout).
/// The service's image is built on the base's pushed layers, and both results are recorded:
/// the next run skips them.
#[test]
fn a_dependent_starts_while_its_base_is_pushed() {
    let prefix = unique("early");
    let gate = gated_registry(
        &format!("{prefix}/base"),
        &format!("{prefix}/svc"),
        std::time::Duration::from_secs(120),
        false,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    early_project(dir, gate.port, &prefix);
    let out = run_ok(bk().current_dir(dir).args([
        "bake",
        "--progress",
        "plain",
        "--metadata-file",
        "md.json",
    ]));
    let err = stderr(&out);
    assert!(gate.held.load(std::sync::atomic::Ordering::SeqCst), "{err}");
    assert!(
        !gate.timed_out.load(std::sync::atomic::Ordering::SeqCst),
        "the service did not start before its base's push ended:\n{err}"
    );
    let md: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("md.json")).unwrap()).unwrap();
    let base_digest = md["base"]["containerimage.digest"].as_str().unwrap();
    assert!(
        err.contains(&format!("stored on the daemon as {base_digest}")),
        "{err}"
    );
    assert_eq!(
        manifest_digest(&format!("{prefix}/base"), "t1").as_deref(),
        Some(base_digest)
    );
    let base = diff_ids(&format!("{prefix}/base"), "t1");
    let svc = diff_ids(&format!("{prefix}/svc"), "t1");
    assert_eq!(
        svc[..base.len()],
        base[..],
        "svc is not built on base's layers"
    );
    assert_eq!(svc.len(), base.len() + 2);

    let again = run_ok(bk().current_dir(dir).args(["bake", "--progress", "plain"]));
    let err = stderr(&again);
    for t in ["base", "svc", "after"] {
        assert!(
            err.contains(&format!("[{t}] skipped")),
            "{t} not skipped:\n{err}"
        );
    }
}

/// A fresh runner asks the registry for the digest of an external base the engine holds once,
/// however many targets build on it (it was asked once per target). Each target is then
/// re-tagged from the registry ledger.
#[test]
fn a_fresh_runner_asks_the_registry_once_per_base_not_per_target() {
    let prefix = unique("onebase");
    // A proxy that holds nothing: it only records the requests.
    let gate = gated_registry("-", "-", std::time::Duration::from_secs(1), false);
    let base = format!("127.0.0.1:{}/busybox:latest", gate.port);
    run_ok(docker().args(["pull", "-q", &base]));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut toml = format!(
        "[defaults]\ntags = [\"127.0.0.1:{}/{prefix}/{{name}}:${{TAG}}\"]\npush = true\n\n[vars]\nTAG = \"t1\"\n",
        gate.port
    );
    for t in ["a", "b", "c"] {
        toml.push_str(&format!("\n[target.{t}]\ncontext = \"{t}\"\n"));
        write(
            &dir.join(t).join("Dockerfile"),
            format!("FROM {base}\nCOPY f.txt /f.txt\n"),
        );
        write(&dir.join(t).join("f.txt"), format!("{t} {prefix}\n"));
    }
    write(&dir.join("bk-build.toml"), toml);
    run_ok(bk().current_dir(dir).args(["bake", "--progress", "plain"]));
    std::fs::remove_dir_all(dir.join(".bk-build")).unwrap();
    gate.seen.lock().unwrap().clear();
    let out = run_ok(bk().current_dir(dir).env("TAG", "t2").arg("plan"));
    let text = String::from_utf8_lossy(&out.stdout);
    for t in ["a", "b", "c"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(t) && l.contains("retag") && l.contains(":t2")),
            "{t} is not re-tagged:\n{text}"
        );
    }
    let seen = gate.seen.lock().unwrap().clone();
    let asked = seen
        .iter()
        .filter(|r| r.contains("/v2/busybox/manifests/"))
        .count();
    assert_eq!(asked, 1, "{seen:#?}");
    run(docker().args(["rmi", &base]));
}

/// A base whose push fails after its dependent started from its stored image: the dependent
/// is reported failed and not recorded (its base's image was never pushed), naming the tags its
/// own push moved, and the next run builds both again.
#[test]
fn a_base_whose_push_fails_after_its_dependent_started_fails_it_too() {
    let prefix = unique("earlyfail");
    let gate = gated_registry(
        &format!("{prefix}/base"),
        &format!("{prefix}/svc"),
        std::time::Duration::from_secs(120),
        true,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    early_project(dir, gate.port, &prefix);
    let out = run(bk().current_dir(dir).args(["bake", "--progress", "plain"]));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        !gate.timed_out.load(std::sync::atomic::Ordering::SeqCst),
        "{err}"
    );
    assert!(
        err.contains("`base` failed after this target started from its stored image"),
        "{err}"
    );
    // Its own push went ahead (as buildx bake's dependents' do): the message says which tag.
    assert!(
        err.contains(&format!(
            "127.0.0.1:{}/{prefix}/svc:t1 now hold an image built on a base the registry does not have",
            gate.port
        )),
        "{err}"
    );
    // Ordered after base only: it waited for base's push and did not start.
    assert!(err.contains("[after] not started: base failed"), "{err}");
    let plan = run_ok(bk().current_dir(dir).args(["plan"]));
    let text = String::from_utf8_lossy(&plan.stdout);
    let actions: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    for t in ["base", "svc", "after"] {
        assert_eq!(
            actions.get(t),
            Some(&"build"),
            "{t} must build again:\n{text}"
        );
    }
}
