//! Reusing results instead of building: re-tags on a new commit, the registry ledger on a fresh
//! runner with no daemon, moved base tags, and the inputs that must force a build — against
//! the real daemon and registry.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::*;

/// `bk-build plan --format json` in `dir` with `env`: target → (action, reasons joined, digest).
fn plan_in(dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> BTreeMap<String, (String, String)> {
    let mut cmd = bk();
    cmd.current_dir(dir)
        .args(["plan", "--format", "json"])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_ok(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let reasons: Vec<&str> = t["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            (
                t["name"].as_str().unwrap().to_string(),
                (
                    t["action"].as_str().unwrap().to_string(),
                    reasons.join("; "),
                ),
            )
        })
        .collect()
}

fn bake_in(
    dir: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let md = dir.join("bake-md.json");
    let _ = std::fs::remove_file(&md);
    let mut cmd = bk();
    cmd.current_dir(dir)
        .args(["bake", "--progress", "plain", "--metadata-file"])
        .arg(&md)
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let meta = std::fs::read(&md)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, meta)
}

/// A copy of the example monorepo's files, as a fresh `git clone` has them (no `.bk-build/`).
fn fresh_clone_of_example(into: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monorepo");
    let dst = into.join("monorepo");
    copy_tree(&src, &dst);
    assert!(!dst.join(".bk-build").exists());
    dst
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == ".bk-build" {
            continue;
        }
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&e.path(), &dst.join(&name));
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), dst.join(&name))
                .unwrap();
        } else {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
}

/// Environment that makes every daemon unreachable.
const NO_DAEMON: [(&str, &str); 2] = [
    ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
    ("BUILDKIT_HOST", "unix:///nonexistent/buildkitd.sock"),
];

const EXAMPLE_TARGETS: [&str; 4] = ["openresty", "pybase", "service_1", "service_2"];

#[test]
fn a_fresh_runner_with_a_new_tag_retags_everything_without_a_daemon() {
    let repo = format!("localhost:5000/{}", unique("fresh"));
    let path_repo = repo.trim_start_matches("localhost:5000/").to_string();

    // The first pipeline: builds and pushes everything with TAG=c1.
    let t1 = tempfile::tempdir().unwrap();
    let first = fresh_clone_of_example(t1.path());
    let env1 = [("REPO", repo.as_str()), ("TAG", "c1")];
    let (out, meta) = bake_in(&first, &env1, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut digests = BTreeMap::new();
    for t in EXAMPLE_TARGETS {
        let d = meta[t]["containerimage.digest"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            manifest_digest(&format!("{path_repo}/{t}"), "c1").as_deref(),
            Some(d.as_str())
        );
        digests.insert(t, d);
    }

    // The next pipeline: a new runner, a new commit (TAG=c2), no state, no daemon at all.
    let t2 = tempfile::tempdir().unwrap();
    let second = fresh_clone_of_example(t2.path());
    let env2: Vec<(&str, &str)> = [("REPO", repo.as_str()), ("TAG", "c2")]
        .into_iter()
        .chain(NO_DAEMON)
        .collect();
    let p = plan_in(&second, &env2, &[]);
    for t in EXAMPLE_TARGETS {
        let (action, why) = &p[t];
        assert_eq!(action, "retag", "{t}: {why}");
        assert!(why.contains("found in registry as"), "{t}: {why}");
        assert!(why.contains(&format!("{repo}/{t}:c2")), "{t}: {why}");
    }
    let (out, meta) = bake_in(&second, &env2, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        !err.contains("load build definition"),
        "nothing may be built:\n{err}"
    );
    for t in EXAMPLE_TARGETS {
        assert_eq!(meta[t]["bk-build.action"], "retag", "{t}: {meta}");
        assert_eq!(
            manifest_digest(&format!("{path_repo}/{t}"), "c2").as_deref(),
            Some(digests[t].as_str()),
            "{t}: the new tag must name the image built for c1"
        );
    }
    // Recorded locally: the same runner decides the next run without asking the ledger.
    for (t, (action, why)) in plan_in(&second, &env2, &["--no-ledger"]) {
        assert_eq!(action, "skip", "{t}: {why}");
    }

    // A third runner on the same commit: everything is already there.
    let t3 = tempfile::tempdir().unwrap();
    let third = fresh_clone_of_example(t3.path());
    for (t, (action, why)) in plan_in(&third, &env2, &[]) {
        assert_eq!(action, "skip", "{t}: {why}");
        assert!(why.contains("found in registry as"), "{t}: {why}");
    }

    // Opting out of the ledger: a fresh runner has nothing to go on.
    let t4 = tempfile::tempdir().unwrap();
    let fourth = fresh_clone_of_example(t4.path());
    for (t, (action, why)) in plan_in(&fourth, &env2, &["--no-ledger"]) {
        assert_eq!(action, "build", "{t}: {why}");
    }

    // A real change on a fresh runner: only what it affects needs the daemon.
    let t5 = tempfile::tempdir().unwrap();
    let fifth = fresh_clone_of_example(t5.path());
    let lua = fifth.join("src/luamods/init.lua");
    let mut text = std::fs::read_to_string(&lua).unwrap();
    text.push_str("-- changed on a branch\n");
    std::fs::write(&lua, text).unwrap();
    let p = plan_in(&fifth, &env2, &[]);
    assert_eq!(p["openresty"].0, "build", "{:?}", p["openresty"]);
    for t in ["pybase", "service_1", "service_2"] {
        assert_eq!(p[t].0, "skip", "{t}: {:?}", p[t]);
    }
    let (out, _) = bake_in(&fifth, &env2, &[]);
    assert!(!out.status.success(), "building without a daemon must fail");
    assert!(
        stderr(&out).contains("cannot connect to BuildKit"),
        "{}",
        stderr(&out)
    );
}

/// A one-target project: `FROM <base>` + `COPY app.txt`, pushed to `repo`.
fn single(dir: &Path, repo: &str, from: &str, extra: &str) {
    write(
        &dir.join("bk-build.toml"),
        format!(
            "[target.app]\ncontext = \"ctx\"\ntags = [\"{repo}/app:${{TAG:-v1}}\"]\npush = true\n{extra}\n"
        ),
    );
    write(
        &dir.join("ctx/Dockerfile"),
        format!("FROM {from}\nCOPY app.txt /app.txt\n"),
    );
    write(&dir.join("ctx/app.txt"), "app v1\n");
}

/// Pushes a tiny image whose content is `content` to `reference` with buildx; returns its digest.
fn push_image(reference: &str, content: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n");
    write(&d.path().join("f"), content);
    run_ok(
        docker()
            .args([
                "buildx",
                "build",
                "--progress",
                "quiet",
                "--provenance=false",
                "--push",
                "-t",
                reference,
            ])
            .arg(d.path()),
    );
    let (repo, tag) = reference
        .trim_start_matches("localhost:5000/")
        .rsplit_once(':')
        .unwrap();
    manifest_digest(repo, tag).expect("pushed")
}

#[test]
fn a_moved_base_tag_rebuilds_with_pull_and_not_without() {
    let repo = format!("localhost:5000/{}", unique("moved"));
    let base = format!("{repo}/ext:1");
    let first = push_image(&base, "ext v1\n");

    let pulled = tempfile::tempdir().unwrap();
    single(pulled.path(), &format!("{repo}/p"), &base, "pull = true");
    let cached = tempfile::tempdir().unwrap();
    single(cached.path(), &format!("{repo}/c"), &base, "");
    for d in [pulled.path(), cached.path()] {
        let (out, _) = bake_in(d, &[], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(plan_in(d, &[], &[])["app"].0, "skip");
    }

    let second = push_image(&base, "ext v2\n");
    assert_ne!(first, second);
    let (action, why) = plan_in(pulled.path(), &[], &[])["app"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains(&format!("base {base} changed")), "{why}");
    let (action, why) = plan_in(cached.path(), &[], &[])["app"].clone();
    assert_eq!(
        action, "skip",
        "without pull the base tag is not asked again: {why}"
    );

    // The pulled target really builds on the new base.
    let (out, _) = bake_in(pulled.path(), &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = tempfile::tempdir().unwrap();
    let probe = pulled.path().join("probe");
    write(&probe.join("Dockerfile"), format!("FROM {repo}/p/app:v1\n"));
    run_ok(
        bk().args(["build", "--progress", "quiet", "--pull", "-o"])
            .arg(format!("type=local,dest={}", o.path().display()))
            .arg(&probe),
    );
    assert_eq!(
        std::fs::read_to_string(o.path().join("f")).unwrap(),
        "ext v2\n"
    );
    assert_eq!(plan_in(pulled.path(), &[], &[])["app"].0, "skip");
}

#[test]
fn a_dockerfile_outside_its_context_counts() {
    let repo = format!("localhost:5000/{}", unique("outside"));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[target.app]\ncontext = \"ctx\"\ndockerfile = \"docker/app.Dockerfile\"\ntags = [\"{repo}/app:v1\"]\npush = true\n"
        ),
    );
    write(
        &p.join("docker/app.Dockerfile"),
        format!("FROM {}\nCOPY app.txt /app.txt\n", base_image()),
    );
    write(&p.join("docker/app.Dockerfile.dockerignore"), "*.log\n");
    write(&p.join("ctx/app.txt"), "app v1\n");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(plan_in(p, &[], &[])["app"].0, "skip");

    write(
        &p.join("docker/app.Dockerfile"),
        format!("FROM {}\nCOPY app.txt /moved.txt\n", base_image()),
    );
    let (action, why) = plan_in(p, &[], &[])["app"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("Dockerfile changed"), "{why}");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Its ignore file too: once it is gone, the context's own `.dockerignore` applies.
    write(&p.join("ctx/.dockerignore"), "app.txt\n");
    assert_eq!(
        plan_in(p, &[], &[])["app"].0,
        "skip",
        "overridden by the Dockerfile's ignore file"
    );
    std::fs::remove_file(p.join("docker/app.Dockerfile.dockerignore")).unwrap();
    let (action, why) = plan_in(p, &[], &[])["app"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("ignore rules"), "{why}");
}

#[test]
fn an_image_deleted_from_the_registry_is_rebuilt() {
    let repo = format!("localhost:5000/{}", unique("deleted"));
    let d = tempfile::tempdir().unwrap();
    single(d.path(), &repo, &base_image(), "");
    let (out, meta) = bake_in(d.path(), &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = meta["app"]["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(plan_in(d.path(), &[], &[])["app"].0, "skip");

    // Deleting the manifest removes every tag on it, the ledger's included.
    let path = format!(
        "/v2/{}/app/manifests/{digest}",
        repo.trim_start_matches("localhost:5000/")
    );
    let (status, _, _) = registry_request("DELETE", &path);
    assert_eq!(status, 202, "registry delete");
    let (action, why) = plan_in(d.path(), &[], &[])["app"].clone();
    assert_eq!(action, "build", "{why}");
    let (out, meta) = bake_in(d.path(), &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(meta["app"].get("bk-build.skipped"), None, "{meta}");
    let again = meta["app"]["containerimage.digest"].as_str().unwrap();
    assert_eq!(
        manifest_digest(
            &format!("{}/app", repo.trim_start_matches("localhost:5000/")),
            "v1"
        )
        .as_deref(),
        Some(again)
    );
    assert_eq!(plan_in(d.path(), &[], &[])["app"].0, "skip");
}

#[test]
fn tags_are_not_inputs_even_across_repositories_and_force_rebuilds() {
    let repo = format!("localhost:5000/{}", unique("tags"));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[target.app]\ncontext = \"ctx\"\ntags = [\"{repo}/a/app:${{TAG}}\", \"{repo}/b/app:${{TAG}}\"]\npush = true\nargs = {{ TAG = \"${{TAG}}\", UNUSED = \"${{TAG}}\" }}\n"
        ),
    );
    // TAG is declared globally and unused; UNUSED is declared nowhere: neither is an input.
    write(
        &p.join("ctx/Dockerfile"),
        format!("ARG TAG\nFROM {}\nCOPY app.txt /app.txt\n", base_image()),
    );
    write(&p.join("ctx/app.txt"), "app v1\n");
    let (out, meta) = bake_in(p, &[("TAG", "t1")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = meta["app"]["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_string();

    let (action, why) = plan_in(p, &[("TAG", "t2")], &[])["app"].clone();
    assert_eq!(action, "retag", "{why}");
    let (out, meta) = bake_in(p, &[("TAG", "t2")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(meta["app"]["bk-build.action"], "retag");
    let short = repo.trim_start_matches("localhost:5000/");
    for r in ["a", "b"] {
        assert_eq!(
            manifest_digest(&format!("{short}/{r}/app"), "t2").as_deref(),
            Some(digest.as_str()),
            "{r}"
        );
    }

    // An arg the Dockerfile does use is an input.
    write(
        &p.join("ctx/Dockerfile"),
        format!("FROM {}\nARG TAG\nRUN echo $TAG > /tag\n", base_image()),
    );
    let (out, _) = bake_in(p, &[("TAG", "t2")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (action, why) = plan_in(p, &[("TAG", "t3")], &[])["app"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("arg TAG changed"), "{why}");

    // --force builds what is unchanged, and records it.
    assert_eq!(plan_in(p, &[("TAG", "t2")], &[])["app"].0, "skip");
    let (action, why) = plan_in(p, &[("TAG", "t2")], &["--force"])["app"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("--force"), "{why}");
    let (out, meta) = bake_in(p, &[("TAG", "t2")], &["--force", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(meta["app"].get("bk-build.skipped"), None, "{meta}");
    assert_eq!(plan_in(p, &[("TAG", "t2")], &[])["app"].0, "skip");
}

#[test]
fn a_base_named_by_a_tagged_context_key_is_retagged_with_its_dependent() {
    // The pattern buildx's documentation recommends: the FROM reference mapped to the base
    // target by a named context whose name follows the tag.
    let repo = format!("localhost:5000/{}", unique("ctxkey"));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            r#"[vars]
REPO = "{repo}"

[defaults]
tags = ["${{REPO}}/{{name}}:${{TAG}}"]
push = true

[target.base]
context = "base"

[target.app]
context = "app"
args = {{ REPO = "${{REPO}}", TAG = "${{TAG}}" }}
contexts = {{ "${{REPO}}/base:${{TAG}}" = "target:base" }}
"#
        ),
    );
    write(
        &p.join("base/Dockerfile"),
        format!("FROM {}\nCOPY b.txt /b.txt\n", base_image()),
    );
    write(&p.join("base/b.txt"), "base v1\n");
    write(
        &p.join("app/Dockerfile"),
        "ARG REPO\nARG TAG\nFROM ${REPO}/base:${TAG}\nCOPY a.txt /a.txt\n",
    );
    write(&p.join("app/a.txt"), "app v1\n");
    let (out, _) = bake_in(p, &[("TAG", "t1")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = plan_in(p, &[("TAG", "t2")], &[]);
    for t in ["base", "app"] {
        assert_eq!(plan[t].0, "retag", "{t}: {}", plan[t].1);
    }
    // The base changes: the app is rebuilt on it, whatever the context is called.
    write(&p.join("base/b.txt"), "base v2\n");
    let plan = plan_in(p, &[("TAG", "t2")], &[]);
    assert_eq!(plan["base"].0, "build", "{}", plan["base"].1);
    assert_eq!(plan["app"].0, "build", "{}", plan["app"].1);
    assert!(
        plan["app"].1.contains("base base rebuilt"),
        "{}",
        plan["app"].1
    );
}
