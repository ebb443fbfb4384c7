//! Reusing results instead of building: re-tags on a new commit, the registry ledger on a fresh
//! runner with no daemon, moved base tags, and the inputs that must force a build — against
//! the real daemon and registry.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// A fresh `git clone` of the example monorepo (no `.bk-build/`): its files committed to a
/// repository of their own under `into`, then cloned.
fn fresh_clone_of_example(into: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monorepo");
    let origin = into.join("origin");
    copy_tree(&src, &origin);
    git(&origin, &["init", "-q"]);
    git(&origin, &["add", "-A"]);
    git(&origin, &["commit", "-qm", "example"]);
    git(into, &["clone", "-q", "origin", "monorepo"]);
    let dst = into.join("monorepo");
    assert!(!dst.join(".bk-build").exists());
    dst
}

fn git(dir: &Path, args: &[&str]) {
    let mut cmd = std::process::Command::new("git");
    cmd.current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args);
    run_ok(&mut cmd);
}

/// Has git write the clone's index again once its files are older than the racy window, as
/// the index of a clone of a large tree is for all but the last moment's files.
fn settle_index(repo: &Path) {
    std::thread::sleep(std::time::Duration::from_millis(250));
    std::fs::remove_file(repo.join(".git/index")).unwrap();
    git(repo, &["reset", "-q"]);
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
    // Its files are not read: git's index vouches for every one (the first pipeline's clone
    // was too new for that, so it read them: both must give the same fingerprints).
    settle_index(&second);
    let mut cmd = bk();
    cmd.current_dir(&second)
        .args(["plan", "--no-ledger"])
        .env("BK_BUILD_TIMINGS", "1");
    for (k, v) in &env2 {
        cmd.env(k, v);
    }
    let timed = stderr(&run_ok(&mut cmd));
    assert!(
        timed.contains("fingerprints: 0 files read (0 bytes)"),
        "a settled clone reads nothing:\n{timed}"
    );
    assert!(!timed.contains(", 0 vouched for"), "{timed}");
    std::fs::remove_dir_all(second.join(".bk-build")).unwrap();
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
        stderr(&out).contains("no daemon listens there"),
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

/// A one-target project exporting `type=local` to `out/` (and a tar to `out.tar`).
fn local_project(dir: &Path, dockerfile: &str, args: &str) {
    write(
        &dir.join("bk-build.toml"),
        format!(
            "[target.t]\ncontext = \"ctx\"\nargs = {{ {args} }}\noutputs = [\"type=local,dest={}\", \"type=tar,dest={}\"]\n",
            dir.join("out").display(),
            dir.join("out.tar").display()
        ),
    );
    write(&dir.join("ctx/Dockerfile"), dockerfile);
}

#[test]
fn an_arg_after_a_heredoc_buildkit_reads_differently_still_counts() {
    // BuildKit ends this heredoc at `END-OF-CONFIG`; an earlier reading took `END` as the
    // terminator and missed the ARG below it.
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    local_project(
        p,
        &format!(
            "FROM {} AS b\nCOPY <<END-OF-CONFIG /etc/app.conf\nlisten=8080\nEND-OF-CONFIG\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\nFROM scratch\nCOPY --from=b /greeting /\n",
            base_image()
        ),
        "GREETING = \"${GREETING}\"",
    );
    let (out, _) = bake_in(p, &[("GREETING", "hello")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (action, why) = plan_in(p, &[("GREETING", "bye")], &[])["t"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("arg GREETING changed"), "{why}");
    let (out, _) = bake_in(p, &[("GREETING", "bye")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.join("out/greeting")).unwrap(),
        "bye\n"
    );
}

#[test]
fn local_and_tar_outputs_are_rebuilt_when_changed_not_only_when_gone() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    local_project(p, "FROM scratch\nCOPY a.txt /a.txt\n", "");
    write(&p.join("ctx/a.txt"), "a v1\n");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(plan_in(p, &[], &[])["t"].0, "skip");

    // `rm -rf out/*`: the directory is there, its content is not.
    std::fs::remove_file(p.join("out/a.txt")).unwrap();
    let (action, why) = plan_in(p, &[], &[])["t"].clone();
    assert_eq!(action, "build", "{why}");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.join("out/a.txt")).unwrap(),
        "a v1\n"
    );
    assert_eq!(plan_in(p, &[], &[])["t"].0, "skip");

    // An exported file edited by hand.
    write(&p.join("out/a.txt"), "edited\n");
    assert_eq!(plan_in(p, &[], &[])["t"].0, "build");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.join("out/a.txt")).unwrap(),
        "a v1\n"
    );

    // A tar output overwritten.
    write(&p.join("out.tar"), "junk");
    let (action, why) = plan_in(p, &[], &[])["t"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("out.tar"), "{why}");
}

/// The names inside a `type=docker` archive (`RepoTags`).
fn docker_archive_tags(tar: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(tar)
            .arg("manifest.json"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tags: Vec<String> = v[0]["RepoTags"]
        .as_array()
        .unwrap_or_else(|| panic!("no RepoTags in {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    tags
}

/// The `io.containerd.image.name` of each entry of an OCI layout's `index.json`.
fn oci_layout_names(layout: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut names: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["io.containerd.image.name"].as_str())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Tags are not inputs where they are destinations (re-tagged in a registry or the engine),
/// but a `type=docker` archive or an OCI layout on disk carries its names inside: a new tag
/// there rebuilds, and the file then holds the names buildx writes for the same tags.
#[test]
fn new_tags_rebuild_docker_archives_and_oci_layouts_which_carry_names() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let name = unique("bk-names");
    write(
        &p.join("ctx/Dockerfile"),
        "FROM scratch\nCOPY a.txt /a.txt\n",
    );
    write(&p.join("ctx/a.txt"), "a\n");
    let project = |tag: &str| {
        format!(
            "[target.arch]\ncontext = \"ctx\"\ntags = [\"{name}/arch:{tag}\"]\n\
             outputs = [\"type=docker,dest=img.tar\"]\n\n\
             [target.layout]\ncontext = \"ctx\"\ntags = [\"{name}/layout:{tag}\"]\n\
             outputs = [\"type=oci,dest=layout,tar=false\"]\n\n\
             [target.named]\ncontext = \"ctx\"\ntags = [\"{name}/named:{tag}\"]\n\
             outputs = [\"type=oci,dest=named.tar,name={name}/fixed:1\"]\n"
        )
    };
    write(&p.join("bk-build.toml"), project("a"));
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let named_before = std::fs::read(p.join("named.tar")).unwrap();
    // The oracle writes into the same layout as it was: a layout keeps the entries of other
    // names (buildx's as bk-build's).
    let bx = p.join("bx");
    copy_tree(&p.join("layout"), &bx.join("layout"));

    write(&p.join("bk-build.toml"), project("b"));
    let plan = plan_in(p, &[], &[]);
    for t in ["arch", "layout"] {
        assert_eq!(plan[t].0, "build", "{t}: {}", plan[t].1);
    }
    // An explicit `name=` decides the names written, whatever the tags.
    assert_eq!(plan["named"].0, "skip", "{}", plan["named"].1);
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(p.join("named.tar")).unwrap(), named_before);

    // The oracle: buildx with the new tags.
    let buildx = |tag: String, output: String| {
        run_ok(
            docker()
                .args([
                    "buildx",
                    "build",
                    "--progress",
                    "quiet",
                    "--provenance=false",
                ])
                .args(["-t", &tag, "-o", &output])
                .arg(p.join("ctx")),
        )
    };
    buildx(
        format!("{name}/arch:b"),
        format!("type=docker,dest={}", bx.join("img.tar").display()),
    );
    buildx(
        format!("{name}/layout:b"),
        format!("type=oci,dest={},tar=false", bx.join("layout").display()),
    );
    assert_eq!(
        docker_archive_tags(&p.join("img.tar")),
        docker_archive_tags(&bx.join("img.tar"))
    );
    assert_eq!(
        docker_archive_tags(&p.join("img.tar")),
        vec![format!("{name}/arch:b")]
    );
    assert_eq!(
        oci_layout_names(&p.join("layout")),
        oci_layout_names(&bx.join("layout"))
    );
    assert!(
        oci_layout_names(&p.join("layout"))
            .iter()
            .any(|n| n.ends_with("/layout:b")),
        "{:?}",
        oci_layout_names(&p.join("layout"))
    );
    assert_eq!(plan_in(p, &[], &[])["arch"].0, "skip");
}

#[test]
fn a_file_edited_while_the_run_builds_is_not_recorded_as_what_was_built() {
    // `a_slow` (built first) keeps the single build slot busy; `b_fast`'s files are fingerprinted at the start
    // but sent only after `slow` is done. An edit in between reaches the daemon.
    let repo = format!("localhost:5000/{}", unique("race"));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[defaults]\ntags = [\"{repo}/{{name}}:${{TAG}}\"]\npush = true\n\n[target.a_slow]\ncontext = \"slow\"\n\n[target.b_fast]\ncontext = \"fast\"\n"
        ),
    );
    write(
        &p.join("slow/Dockerfile"),
        format!("FROM {}\nCOPY s /s\nRUN sleep 4\n", base_image()),
    );
    write(&p.join("slow/s"), unique("slow"));
    write(&p.join("fast/Dockerfile"), "FROM scratch\nCOPY f /f\n");
    write(&p.join("fast/f"), "ORIGINAL\n");
    let child = bk()
        .current_dir(p)
        .env("TAG", "t1")
        .args(["bake", "-j", "1", "--progress", "quiet", "a_slow", "b_fast"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    write(&p.join("fast/f"), "EDITED-DURING-BAKE\n");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("changed while it was being built"), "{err}");
    write(&p.join("fast/f"), "ORIGINAL\n");
    let (action, why) = plan_in(p, &[("TAG", "t1")], &[])["b_fast"].clone();
    assert_eq!(
        action, "build",
        "the image holds the edit, the files do not: {why}"
    );
    // Nor does a fresh checkout of the original files find it in the ledger.
    let fresh = tempfile::tempdir().unwrap();
    copy_tree(p, fresh.path());
    let (action, why) = plan_in(fresh.path(), &[("TAG", "t2")], &[])["b_fast"].clone();
    assert_eq!(action, "build", "{why}");
}

#[test]
fn add_of_a_url_is_always_built() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    local_project(
        p,
        "FROM scratch\nADD http://127.0.0.1:9/nothing.txt /n.txt\n",
        "",
    );
    let (action, why) = plan_in(p, &[], &[])["t"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("ADD http://127.0.0.1:9/nothing.txt"), "{why}");
    // Pinned by a checksum: an input like any other.
    local_project(
        p,
        "FROM scratch\nADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d http://127.0.0.1:9/x /x\n",
        "",
    );
    let (_, why) = plan_in(p, &[], &[])["t"].clone();
    assert!(!why.contains("ADD"), "{why}");
}

#[test]
fn a_base_image_rebuilt_in_the_engine_rebuilds_what_is_built_on_it() {
    // The local workflow: a base built into the engine (not pushed), an app FROM it.
    let base = format!("{}:dev", unique("localbase"));
    let b = tempfile::tempdir().unwrap();
    write(&b.path().join("Dockerfile"), "FROM scratch\nCOPY v /v\n");
    write(&b.path().join("v"), "v1\n");
    run_ok(
        docker()
            .args([
                "buildx",
                "build",
                "--load",
                "--progress",
                "quiet",
                "-t",
                &base,
            ])
            .arg(b.path()),
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    local_project(p, &format!("FROM {base}\nCOPY a.txt /a.txt\n"), "");
    write(&p.join("ctx/a.txt"), "a\n");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(plan_in(p, &[], &[])["t"].0, "skip");

    write(&b.path().join("v"), "v2\n");
    run_ok(
        docker()
            .args([
                "buildx",
                "build",
                "--load",
                "--progress",
                "quiet",
                "-t",
                &base,
            ])
            .arg(b.path()),
    );
    let (action, why) = plan_in(p, &[], &[])["t"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(
        why.contains("in the Docker Engine is another image"),
        "{why}"
    );
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(p.join("out/v")).unwrap(), "v2\n");
    let _ = run(docker().args(["image", "rm", &base]));
}

#[test]
fn a_new_repository_reuses_the_image_from_the_old_one() {
    let old = format!("localhost:5000/{}", unique("oldrepo"));
    let new = format!("localhost:5000/{}", unique("newrepo"));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    single(p, "${REPO}", &base_image(), "");
    let (out, meta) = bake_in(p, &[("REPO", &old)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = meta["app"]["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (action, why) = plan_in(p, &[("REPO", &new)], &[])["app"].clone();
    assert_eq!(action, "retag", "{why}");
    let (out, _) = bake_in(p, &[("REPO", &new)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let short = new.trim_start_matches("localhost:5000/");
    assert_eq!(
        manifest_digest(&format!("{short}/app"), "v1").as_deref(),
        Some(digest.as_str())
    );
    // The whole index came along: the image and its provenance attestation, with every blob
    // (`attested` checks the attestation's layers are in the new repository).
    let copied = support::attest::attested(&format!("{short}/app"), "v1");
    let old_short = old.trim_start_matches("localhost:5000/");
    assert_eq!(
        copied,
        support::attest::attested(&format!("{old_short}/app"), "v1")
    );
    assert_eq!(copied.attestations.len(), 1, "{copied:?}");
}

#[test]
fn onbuild_in_a_base_target_counts_the_whole_context_of_what_builds_on_it() {
    let repo = format!("localhost:5000/{}", unique("onbuild"));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[defaults]\ntags = [\"{repo}/{{name}}:v1\"]\npush = true\n\n[target.base]\ncontext = \"base\"\n\n[target.child]\ncontext = \"child\"\npush = false\ntags = []\noutputs = [\"type=local,dest={}\"]\n",
            p.join("out").display()
        ),
    );
    write(
        &p.join("base/Dockerfile"),
        format!("FROM {}\nONBUILD COPY onb.txt /onb.txt\n", base_image()),
    );
    write(
        &p.join("child/Dockerfile"),
        format!("FROM {repo}/base:v1\nCOPY app.txt /app.txt\n"),
    );
    write(&p.join("child/app.txt"), "app\n");
    write(&p.join("child/onb.txt"), "onb v1\n");
    let (out, meta) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(meta["child"].get("bk-build.uncovered"), None, "{meta}");
    assert_eq!(plan_in(p, &[], &[])["child"].0, "skip");
    // The file only the base's ONBUILD copies.
    write(&p.join("child/onb.txt"), "onb v2\n");
    let (action, why) = plan_in(p, &[], &[])["child"].clone();
    assert_eq!(action, "build", "{why}");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.join("out/onb.txt")).unwrap(),
        "onb v2\n"
    );
}

#[test]
fn a_base_named_by_another_spelling_of_a_target_tag_is_always_built() {
    // 127.0.0.1:5000 and localhost:5000 are one registry here, two names to Docker: the app
    // is not linked to the base target, so a change of the base would go unnoticed.
    let repo = unique("alias");
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[target.base]\ncontext = \"base\"\ntags = [\"localhost:5000/{repo}/base:v1\"]\npush = true\n\n[target.app]\ncontext = \"app\"\ntags = [\"localhost:5000/{repo}/app:v1\"]\npush = true\ndepends_on = [\"base\"]\n"
        ),
    );
    write(
        &p.join("base/Dockerfile"),
        format!("FROM {}\nCOPY b.txt /b.txt\n", base_image()),
    );
    write(&p.join("base/b.txt"), "b\n");
    write(
        &p.join("app/Dockerfile"),
        format!("FROM 127.0.0.1:5000/{repo}/base:v1\nCOPY a.txt /a.txt\n"),
    );
    write(&p.join("app/a.txt"), "a\n");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = plan_in(p, &[], &[]);
    assert_eq!(plan["base"].0, "skip", "{}", plan["base"].1);
    assert_eq!(plan["app"].0, "build", "{}", plan["app"].1);
    assert!(
        plan["app"].1.contains("under another registry name"),
        "{}",
        plan["app"].1
    );
}

#[test]
fn a_global_arg_that_feeds_another_counts() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    local_project(
        p,
        &format!(
            "ARG VERSION=1.0\nARG IMAGE_VERSION=v${{VERSION}}\nFROM {} AS b\nARG IMAGE_VERSION\nRUN echo \"$IMAGE_VERSION\" > /version\nFROM scratch\nCOPY --from=b /version /version\n",
            base_image()
        ),
        "VERSION = \"${VERSION}\"",
    );
    let (out, _) = bake_in(p, &[("VERSION", "1.0")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (action, why) = plan_in(p, &[("VERSION", "2.0")], &[])["t"].clone();
    assert_eq!(action, "build", "{why}");
    let (out, _) = bake_in(p, &[("VERSION", "2.0")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.join("out/version")).unwrap(),
        "v2.0\n"
    );
}

#[test]
fn a_stage_picked_by_target_arch_follows_its_base_target() {
    // The per-architecture stage pattern: which stage is built depends on TARGETARCH.
    let repo = format!("localhost:5000/{}", unique("arch"));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[target.base]\ncontext = \"base\"\ntags = [\"{repo}/base:dev\"]\npush = true\n\n[target.app]\ncontext = \"app\"\noutputs = [\"type=local,dest={}\"]\n",
            p.join("out").display()
        ),
    );
    write(
        &p.join("base/Dockerfile"),
        format!("FROM {}\nCOPY v /v\n", base_image()),
    );
    write(&p.join("base/v"), "v1\n");
    write(
        &p.join("app/Dockerfile"),
        format!(
            "FROM {repo}/base:dev AS build-amd64\nRUN cp /v /v2\nFROM {repo}/base:dev AS build-arm64\nRUN cp /v /v2\nFROM build-${{TARGETARCH}}\n"
        ),
    );
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(plan_in(p, &[], &[])["app"].0, "skip");
    write(&p.join("base/v"), "v3\n");
    let plan = plan_in(p, &[], &[]);
    assert_eq!(plan["app"].0, "build", "{}", plan["app"].1);
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(p.join("out/v2")).unwrap(), "v3\n");

    // A FROM that cannot be worked out at all: always built.
    write(
        &p.join("app/Dockerfile"),
        format!("ARG TAG=dev-x\nFROM {repo}/base:${{TAG%-x}}\nRUN cp /v /v2\n"),
    );
    let (action, why) = plan_in(p, &[], &[])["app"].clone();
    assert_eq!(action, "build", "{why}");
    assert!(why.contains("could not be read with certainty"), "{why}");
}

#[test]
fn outputs_through_a_symlink_into_the_project_or_shared_are_handled() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // Through a symlink: the witness is of what the link leads to.
    std::fs::create_dir_all(p.join("realout")).unwrap();
    std::os::unix::fs::symlink("realout", p.join("outlink")).unwrap();
    write(
        &p.join("bk-build.toml"),
        "[target.t]\ncontext = \"ctx\"\noutputs = [\"type=local,dest=outlink\"]\n",
    );
    write(&p.join("ctx/Dockerfile"), "FROM scratch\nCOPY f /f\n");
    write(&p.join("ctx/f"), "f\n");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(plan_in(p, &[], &[])["t"].0, "skip");
    write(&p.join("realout/f"), "tampered\n");
    assert_eq!(plan_in(p, &[], &[])["t"].0, "build");

    // Into the project itself (`dest=.`): bk-build's own state there does not count.
    let d2 = tempfile::tempdir().unwrap();
    let p2 = d2.path();
    write(
        &p2.join("bk-build.toml"),
        "[target.t]\ncontext = \"ctx\"\noutputs = [\"type=local,dest=.\"]\n",
    );
    write(
        &p2.join("ctx/Dockerfile"),
        "FROM scratch\nCOPY f /generated.txt\n",
    );
    write(&p2.join("ctx/f"), "f\n");
    let (out, _) = bake_in(p2, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (action, why) = plan_in(p2, &[], &[])["t"].clone();
    assert_eq!(action, "skip", "{why}");

    // Two targets writing one directory: always built, with the reason.
    let d3 = tempfile::tempdir().unwrap();
    let p3 = d3.path();
    write(
        &p3.join("bk-build.toml"),
        "[target.a]\ncontext = \"a\"\noutputs = [\"type=local,dest=out\"]\n\n[target.b]\ncontext = \"b\"\noutputs = [\"type=local,dest=out\"]\n",
    );
    for t in ["a", "b"] {
        write(
            &p3.join(format!("{t}/Dockerfile")),
            "FROM scratch\nCOPY f /f\n",
        );
        write(&p3.join(format!("{t}/f")), t);
    }
    let (out, _) = bake_in(p3, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = plan_in(p3, &[], &[]);
    for t in ["a", "b"] {
        assert_eq!(plan[t].0, "build", "{}", plan[t].1);
        assert!(plan[t].1.contains("also written by"), "{}", plan[t].1);
    }
}

#[test]
fn sql_in_a_heredoc_does_not_make_a_target_build_forever() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    local_project(
        p,
        "FROM scratch\nCOPY <<EOF /init.sql\nSELECT id, name\nFROM users\nWHERE id = 1;\nEOF\n",
        "",
    );
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (action, why) = plan_in(p, &[], &[])["t"].clone();
    assert_eq!(action, "skip", "{why}");
}

/// The compose front end feeds the same fingerprints: a file read by a service of an included
/// project, by a service extended from another file, an inline Dockerfile and a variable from
/// the included project's `.env` each rebuild exactly the service that reads them.
#[test]
fn a_compose_service_rebuilds_when_a_file_or_value_it_reads_changes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let base = base_image();
    let out = |name: &str| format!("x-bk-build: {{outputs: [\"type=local,dest={name}\"]}}");
    write(
        &dir.join("compose.yaml"),
        format!(
            "include: [lib/compose.yaml]\nservices:\n  far:\n    extends: {{file: common/base.yaml, service: common}}\n    build:\n      {}\n  inline:\n    build:\n      context: app\n      dockerfile_inline: |\n        FROM {base}\n        COPY data.txt /\n      {}\n  plain:\n    build:\n      context: app\n      {}\n",
            out("../out/far"),
            out("out/inline"),
            out("out/plain")
        ),
    );
    write(
        &dir.join("app/Dockerfile"),
        format!("FROM {base}\nCOPY data.txt /\n"),
    );
    write(&dir.join("app/data.txt"), "app\n");
    write(
        &dir.join("common/base.yaml"),
        "services:\n  common:\n    build:\n      context: ctx\n",
    );
    write(
        &dir.join("common/ctx/Dockerfile"),
        format!("FROM {base}\nCOPY data.txt /\n"),
    );
    write(&dir.join("common/ctx/data.txt"), "far\n");
    write(
        &dir.join("lib/compose.yaml"),
        "services:\n  lib:\n    build:\n      context: .\n      args: {V: \"${LIBVAR}\"}\n      x-bk-build: {outputs: [\"type=local,dest=../out/lib\"]}\n",
    );
    write(&dir.join("lib/.env"), "LIBVAR=one\n");
    write(
        &dir.join("lib/Dockerfile"),
        format!("FROM {base}\nARG V\nCOPY data.txt /\nRUN echo \"$V\" > /v.txt\n"),
    );
    write(&dir.join("lib/data.txt"), "lib\n");

    let (o, _) = bake_in(dir, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all_skip = |p: &BTreeMap<String, (String, String)>, except: &str| {
        for (t, (action, why)) in p {
            let want = if t == except { "build" } else { "skip" };
            assert_eq!(action, want, "{t}: {why} (changed: {except})");
        }
    };
    all_skip(&plan_in(dir, &[], &[]), "");

    let steps: [(&str, &str, &str); 5] = [
        ("lib", "lib/data.txt", "lib changed\n"),
        ("far", "common/ctx/data.txt", "far changed\n"),
        ("plain", "app/data.txt", "app changed\n"),
        ("lib", "lib/.env", "LIBVAR=two\n"),
        ("inline", "compose.yaml", ""),
    ];
    for (target, file, content) in steps {
        let path = dir.join(file);
        if content.is_empty() {
            // An edit of the inline Dockerfile's text.
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(
                &path,
                text.replace(
                    "COPY data.txt /\n      x-bk",
                    "COPY data.txt /copied.txt\n      x-bk",
                ),
            )
            .unwrap();
        } else {
            std::fs::write(&path, content).unwrap();
        }
        let p = plan_in(dir, &[], &[]);
        // `plain` and `inline` share app/data.txt: a change there rebuilds both.
        if target == "plain" {
            assert_eq!(p["plain"].0, "build", "{p:?}");
            assert_eq!(p["inline"].0, "build", "{p:?}");
            assert_eq!(p["lib"].0, "skip", "{p:?}");
            assert_eq!(p["far"].0, "skip", "{p:?}");
        } else {
            all_skip(&p, target);
        }
        let (o, _) = bake_in(dir, &[], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        all_skip(&plan_in(dir, &[], &[]), "");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("out/lib/v.txt")).unwrap(),
        "two\n"
    );
    assert!(dir.join("out/inline/copied.txt").is_file());
}

/// Entitlements are checked before anything is done: a bake refused for one target's ungranted
/// privilege must not have re-tagged the others (re-tags start while the run is planned).
#[test]
fn a_run_refused_for_privileges_tags_nothing() {
    let repo = format!("localhost:5000/{}", unique("refused"));
    let path_repo = repo.trim_start_matches("localhost:5000/").to_string();
    let tmp = tempfile::tempdir().unwrap();
    let make = |dir: &Path| {
        write(
            &dir.join("docker-bake.hcl"),
            format!(
                "variable \"TAG\" {{ default = \"dev\" }}\n\
                 group \"default\" {{ targets = [\"plain\", \"hostnet\"] }}\n\
                 target \"plain\" {{\n  context = \"plain\"\n  tags = [\"{repo}/plain:${{TAG}}\"]\n}}\n\
                 target \"hostnet\" {{\n  context = \"hostnet\"\n  tags = [\"{repo}/hostnet:${{TAG}}\"]\n  entitlements = [\"network.host\"]\n}}\n"
            ),
        );
        for t in ["plain", "hostnet"] {
            write(
                &dir.join(t).join("Dockerfile"),
                format!("FROM {}\nCOPY f /f\n", base_image()),
            );
            write(&dir.join(t).join("f"), format!("{t} {repo}"));
        }
    };
    let first = tmp.path().join("first");
    make(&first);
    let (out, _) = bake_in(
        &first,
        &[("TAG", "c1")],
        &["--push", "--allow=network.host"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A fresh runner, a new commit: `plain` would be re-tagged, `hostnet` asks for a grant.
    let second = tmp.path().join("second");
    make(&second);
    let env: Vec<(&str, &str)> = [("TAG", "c2")].into_iter().chain(NO_DAEMON).collect();
    let p = plan_in(&second, &env, &["--push"]);
    assert_eq!(p["plain"].0, "retag", "{p:?}");
    let (out, _) = bake_in(&second, &env, &["--push"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--allow=network.host"),
        "{}",
        stderr(&out)
    );
    for t in ["plain", "hostnet"] {
        assert_eq!(
            manifest_digest(&format!("{path_repo}/{t}"), "c2"),
            None,
            "{t}: a refused run must not tag"
        );
    }
    let (out, meta) = bake_in(&second, &env, &["--push", "--allow=network.host"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for t in ["plain", "hostnet"] {
        assert_eq!(meta[t]["bk-build.action"], "retag", "{t}: {meta}");
        assert!(manifest_digest(&format!("{path_repo}/{t}"), "c2").is_some());
    }
}

/// Re-tags start while the run is still planned; when planning then fails (here another
/// target's context holds a name that cannot be sent), the error says what was re-tagged.
#[test]
fn a_plan_that_fails_after_retags_started_names_them() {
    use std::os::unix::ffi::OsStrExt;
    let repo = format!("localhost:5000/{}", unique("halfway"));
    let path_repo = repo.trim_start_matches("localhost:5000/").to_string();
    let tmp = tempfile::tempdir().unwrap();
    let make = |dir: &Path| {
        let mut toml = format!("[defaults]\ntags = [\"{repo}/{{name}}:${{TAG}}\"]\npush = true\n");
        for t in ["plain", "other"] {
            toml.push_str(&format!("\n[target.{t}]\ncontext = \"{t}\"\n"));
            write(
                &dir.join(t).join("Dockerfile"),
                format!("FROM {}\nCOPY . /x\n", base_image()),
            );
            write(&dir.join(t).join("f"), format!("{t} {repo}"));
        }
        write(&dir.join("bk-build.toml"), toml);
    };
    let first = tmp.path().join("first");
    make(&first);
    let (out, _) = bake_in(&first, &[("TAG", "c1")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let second = tmp.path().join("second");
    make(&second);
    let bad = second
        .join("other")
        .join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff"));
    std::fs::write(bad, "x").unwrap();
    let env: Vec<(&str, &str)> = [("TAG", "c2")].into_iter().chain(NO_DAEMON).collect();
    let (out, _) = bake_in(&second, &env, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let plain_c2 = manifest_digest(&format!("{path_repo}/plain"), "c2");
    assert!(
        plain_c2.is_some(),
        "plain is re-tagged while planning:\n{err}"
    );
    assert!(
        err.contains("re-tagged before this error") && err.contains(&format!("{repo}/plain:c2")),
        "the error must name the tag set:\n{err}"
    );
    assert_eq!(manifest_digest(&format!("{path_repo}/other"), "c2"), None);
}

/// `plan --format matrix` (issue 12, sharding across runners): the targets that must be
/// built, in dependency layers. Built as a CI pipeline would — each target of a layer on its
/// own fresh runner (`bake TARGET`), layer after layer — nothing is built twice: a base built
/// by another runner is found in the registry ledger.
#[test]
fn a_matrix_of_layers_builds_each_target_once_across_runners() {
    let repo = format!("localhost:5000/{}", unique("matrix"));
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(
        &src.join("bk-build.toml"),
        format!(
            "[vars]\nREPO = \"{repo}\"\nTAG = \"m1\"\n\n[defaults]\ntags = [\"${{REPO}}/{{name}}:${{TAG}}\"]\npush = true\n\n\
             [target.base]\ncontext = \"base\"\n\n\
             [target.svc1]\ncontext = \"svc1\"\nargs = {{ REPO = \"${{REPO}}\", TAG = \"${{TAG}}\" }}\n\n\
             [target.svc2]\ncontext = \"svc2\"\nargs = {{ REPO = \"${{REPO}}\", TAG = \"${{TAG}}\" }}\n\n\
             [target.lone]\ncontext = \"lone\"\n"
        ),
    );
    write(
        &src.join("base/Dockerfile"),
        format!("FROM {}\nCOPY b.txt /b.txt\n", base_image()),
    );
    write(&src.join("base/b.txt"), format!("base {repo}\n"));
    for svc in ["svc1", "svc2"] {
        write(
            &src.join(svc).join("Dockerfile"),
            "ARG REPO\nARG TAG\nFROM ${REPO}/base:${TAG}\nCOPY s.txt /s.txt\n",
        );
        write(&src.join(svc).join("s.txt"), format!("{svc}\n"));
    }
    write(
        &src.join("lone/Dockerfile"),
        format!("FROM {}\nCOPY l.txt /l.txt\n", base_image()),
    );
    write(&src.join("lone/l.txt"), "lone\n");

    let matrix = |dir: &Path| -> serde_json::Value {
        let out = run_ok(bk().current_dir(dir).args(["plan", "--format", "matrix"]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let layers = |m: &serde_json::Value| -> Vec<Vec<String>> {
        serde_json::from_value(m["layers"].clone()).unwrap()
    };
    let m = matrix(&src);
    assert_eq!(
        layers(&m),
        vec![vec!["base", "lone"], vec!["svc1", "svc2"]],
        "{m}"
    );
    assert_eq!(
        m["include"][0],
        serde_json::json!({"layer": 0, "target": "base"})
    );
    assert_eq!(m["include"].as_array().unwrap().len(), 4, "{m}");

    // One fresh runner per matrix entry, layer by layer.
    let mut n = 0;
    for entry in m["include"].as_array().unwrap() {
        let target = entry["target"].as_str().unwrap();
        n += 1;
        let runner = tmp.path().join(format!("runner{n}"));
        copy_tree(&src, &runner);
        let (out, meta) = bake_in(&runner, &[], &[target]);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        for (name, t) in meta.as_object().unwrap() {
            let action = t["bk-build.action"].as_str().unwrap_or("build");
            if name == target {
                assert_eq!(action, "build", "{target}: {meta}");
            } else {
                assert_ne!(
                    action, "build",
                    "{target}'s runner rebuilt {name}, which an earlier layer built: {meta}"
                );
            }
        }
    }
    // Everything is delivered now: nothing left to build.
    let fresh = tmp.path().join("after");
    copy_tree(&src, &fresh);
    assert_eq!(
        matrix(&fresh),
        serde_json::json!({"layers": [], "include": []})
    );

    // A change to the base: it, then what builds on it; `lone` is untouched.
    write(&fresh.join("base/b.txt"), "base v2\n");
    assert_eq!(
        layers(&matrix(&fresh)),
        vec![vec!["base"], vec!["svc1", "svc2"]]
    );
}

/// `bake --shard I/N` (issue 12): two shards on two runners with two engines (the primary and
/// the TLS one) and only the registry in common build every target exactly once between
/// them; a dependent whose base the other shard builds waits for it and builds on exactly
/// the image that shard pushed; a shard left waiting for a base that never comes fails
/// that dependent, naming the base and its shard, and still does the rest of its share.
#[test]
fn two_shards_on_two_engines_build_every_target_once() {
    let repo = format!("localhost:5000/{}", unique("shard"));
    let path = repo.trim_start_matches("localhost:5000/").to_string();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut toml = format!(
        "[vars]\nREPO = \"{repo}\"\nTAG = \"s1\"\n\n[defaults]\ntags = [\"${{REPO}}/{{name}}:${{TAG}}\"]\npush = true\n\n\
         [target.base]\ncontext = \"base\"\n\n[target.lone]\ncontext = \"lone\"\n"
    );
    write(
        &src.join("base/Dockerfile"),
        format!("FROM {}\nCOPY b.txt /b.txt\n", base_image()),
    );
    write(&src.join("base/b.txt"), format!("base {repo}\n"));
    write(
        &src.join("lone/Dockerfile"),
        format!("FROM {}\nCOPY l.txt /l.txt\n", base_image()),
    );
    write(&src.join("lone/l.txt"), format!("lone {repo}\n"));
    // A target built FROM another target's image, with a file of its own.
    let mut built_on = |name: &str, base: &str| {
        toml.push_str(&format!(
            "\n[target.{name}]\ncontext = \"{name}\"\nargs = {{ REPO = \"${{REPO}}\", TAG = \"${{TAG}}\" }}\n"
        ));
        write(
            &src.join(name).join("Dockerfile"),
            format!("ARG REPO\nARG TAG\nFROM ${{REPO}}/{base}:${{TAG}}\nCOPY f.txt /{name}.txt\n"),
        );
        write(&src.join(name).join("f.txt"), format!("{name}\n"));
    };
    for svc in ["svc1", "svc2", "svc3"] {
        built_on(svc, "base");
    }
    // Two builds on svc2: with two shards, one of them is on base's shard while svc2 is not,
    // so that shard builds base, waits for svc2 from the other, then builds on it.
    for top in ["top1", "top2"] {
        built_on(top, "svc2");
    }
    write(&src.join("bk-build.toml"), toml);

    // The shares are fixed by the project: each target has one shard, shown by `plan`.
    let shards = |dir: &Path, shard: &str| -> BTreeMap<String, u64> {
        let out = run_ok(
            bk().current_dir(dir)
                .args(["plan", "--format", "json", "--shard", shard]),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["shard"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let owner = shards(&src, "1/2");
    assert_eq!(
        owner,
        shards(&src, "2/2"),
        "the shards disagree on who owns what"
    );
    assert_eq!(owner.len(), 7, "{owner:?}");
    // There and back: base → svc2 on the other shard → a top on base's shard again.
    assert_ne!(owner["svc2"], owner["base"], "{owner:?}");
    assert!(
        ["top1", "top2"].iter().any(|t| owner[*t] == owner["base"]),
        "{owner:?}"
    );
    // Some service must wait for a base on the other shard, or this test shows nothing.
    let waiting = "svc2";
    let (base_shard, other) = (owner["base"], 3 - owner["base"]);

    let bake_shard = |dir: &Path, shard: u64, engine_tls: bool, wait: &str| {
        let md = dir.join("bake-md.json");
        let _ = std::fs::remove_file(&md);
        let mut cmd = if engine_tls { bk_tls() } else { bk() };
        cmd.current_dir(dir)
            .args(["bake", "--progress", "plain", "--metadata-file"])
            .arg(&md)
            .args(["--shard", &format!("{shard}/2"), "--shard-wait", wait]);
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child, md)
    };
    let meta = |md: &Path| -> serde_json::Value {
        std::fs::read(md)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let built = |m: &serde_json::Value| -> Vec<String> {
        m.as_object()
            .into_iter()
            .flatten()
            .filter(|(_, t)| t["bk-build.action"].as_str().unwrap_or("build") == "build")
            .map(|(n, _)| n.clone())
            .collect()
    };
    let mut builds: BTreeMap<String, usize> = BTreeMap::new();

    // The base's shard has not run: the other shard does its own share, then gives up on
    // what waits for the base, saying which shard builds it.
    let alone = tmp.path().join("alone");
    copy_tree(&src, &alone);
    let (child, md) = bake_shard(&alone, other, true, "4");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("shard {base_shard}/2")) && err.contains("--shard-wait"),
        "{err}"
    );
    let m = meta(&md);
    assert_eq!(
        m[waiting]["bk-build.action"],
        serde_json::Value::Null,
        "{m}"
    );
    for n in built(&m) {
        *builds.entry(n).or_default() += 1;
    }
    assert!(manifest_digest(&format!("{path}/{waiting}"), "s1").is_none());

    // Both shards at once, on two fresh runners with two engines.
    let (r1, r2) = (tmp.path().join("runner1"), tmp.path().join("runner2"));
    copy_tree(&src, &r1);
    copy_tree(&src, &r2);
    let (c_other, md_other) = bake_shard(&r2, other, true, "600");
    let (c_base, md_base) = bake_shard(&r1, base_shard, false, "600");
    let (o_base, o_other) = (
        c_base.wait_with_output().unwrap(),
        c_other.wait_with_output().unwrap(),
    );
    assert!(
        o_base.status.success(),
        "shard {base_shard}: {}",
        stderr(&o_base)
    );
    assert!(
        o_other.status.success(),
        "shard {other}: {}",
        stderr(&o_other)
    );
    assert!(
        stderr(&o_other).contains(&format!(
            "waiting for base, which shard {base_shard}/2 builds"
        )),
        "{}",
        stderr(&o_other)
    );
    for m in [meta(&md_base), meta(&md_other)] {
        for n in built(&m) {
            *builds.entry(n).or_default() += 1;
        }
        // Each shard reports only its own targets.
        for n in m.as_object().unwrap().keys() {
            let want = if m == meta(&md_base) {
                base_shard
            } else {
                other
            };
            assert_eq!(owner[n], want, "{n} reported by the wrong shard: {m}");
        }
    }
    let all: BTreeMap<String, usize> = owner.keys().map(|n| (n.clone(), 1)).collect();
    assert_eq!(
        builds, all,
        "every target must be built exactly once between the shards"
    );

    // The waiting service is built on exactly the base image the other shard pushed.
    let base_layers = diff_ids(&format!("{path}/base"), "s1");
    let svc_layers = diff_ids(&format!("{path}/{waiting}"), "s1");
    assert_eq!(
        &svc_layers[..base_layers.len()],
        &base_layers[..],
        "{waiting} is not built on the pushed base"
    );
    // What the shards left is what one run would have: a fresh runner has nothing to build.
    let after = tmp.path().join("after");
    copy_tree(&src, &after);
    for (n, (action, why)) in plan_in(&after, &[], &[]) {
        assert_eq!(action, "skip", "{n}: {why}");
    }
    // The longest wait there is means no deadline, not a crash.
    let (child, _) = bake_shard(&after, 1, false, &u64::MAX.to_string());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The `fingerprints: …` line of `BK_BUILD_TIMINGS`: (files read, files git's index vouched for).
fn fingerprint_counts(dir: &Path, env: &[(&str, &str)]) -> (u64, u64) {
    let _ = std::fs::remove_dir_all(dir.join(".bk-build"));
    let mut cmd = bk();
    cmd.current_dir(dir)
        .args(["plan", "--no-ledger"])
        .env("BK_BUILD_TIMINGS", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let err = stderr(&run_ok(&mut cmd));
    let line = err
        .lines()
        .find(|l| l.contains("fingerprints: "))
        .unwrap_or_else(|| panic!("no fingerprint counts in:\n{err}"));
    let num = |before: &str| -> u64 {
        let head = &line[..line.find(before).unwrap()];
        head.rsplit(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (num(" files read"), num(" vouched for"))
}

#[test]
fn git_settings_from_outside_the_repository_turn_the_index_off() {
    let t = tempfile::tempdir().unwrap();
    let clone = fresh_clone_of_example(t.path());
    settle_index(&clone);
    let home = t.path().join("home");
    let xdg = t.path().join("xdg");
    std::fs::create_dir_all(xdg.join("git")).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let env = |home: &Path, xdg: &Path| -> Vec<(String, String)> {
        NO_DAEMON
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([
                ("HOME".into(), home.display().to_string()),
                ("XDG_CONFIG_HOME".into(), xdg.display().to_string()),
                ("REPO".into(), "localhost:5000/gitsettings".into()),
            ])
            .collect()
    };
    let counts = |home: &Path, xdg: &Path| {
        let e = env(home, xdg);
        let refs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        fingerprint_counts(&clone, &refs)
    };
    let (read, vouched) = counts(&home, &xdg);
    assert_eq!(read, 0, "a settled clone with plain settings reads nothing");
    assert!(vouched > 0);

    // The user's global config converts line endings on checkout.
    std::fs::write(home.join(".gitconfig"), "[core]\n\tautocrlf = true\n").unwrap();
    let (read, vouched) = counts(&home, &xdg);
    assert_eq!(vouched, 0, "global core.autocrlf");
    assert!(read > 0);
    std::fs::remove_file(home.join(".gitconfig")).unwrap();

    // The user's global attributes file sets `text`.
    std::fs::write(xdg.join("git/attributes"), "*.lua text eol=crlf\n").unwrap();
    let (_, vouched) = counts(&home, &xdg);
    assert_eq!(vouched, 0, "global attributes");
    std::fs::remove_file(xdg.join("git/attributes")).unwrap();

    // Harmless global settings leave it on.
    std::fs::write(
        home.join(".gitconfig"),
        "[filter \"lfs\"]\n\tclean = git-lfs clean -- %f\n[core]\n\tautocrlf = false\n",
    )
    .unwrap();
    let (read, vouched) = counts(&home, &xdg);
    assert_eq!((read, vouched > 0), (0, true));
}

/// Writes `text` to `path` and puts its mtime back: the edit a daemon's copy cannot see when
/// the size stays the same (`cp -p`, `tar x`, `touch -r`).
fn write_keeping_mtime(path: &Path, text: &str) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    write(path, text);
    set_mtime(path, mtime);
}

/// BuildKit syncs a directory into its copy from the previous sync and asks only for files
/// whose size or mtime (or mode…) differ there; a directory's new mode is not applied to it.
/// An edit that keeps size and mtime, or a directory's chmod, must still reach the build —
/// in the context and in a Dockerfile kept in a directory of its own — and the result is
/// then what is recorded (a stale one would be skipped and, with push, published).
#[test]
fn edits_the_daemons_copy_cannot_see_are_built_from_the_new_files() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[target.t]\ncontext = \"ctx\"\ndockerfile = \"df/Dockerfile\"\noutputs = [\"type=local,dest={}\"]\n",
            p.join("out").display()
        ),
    );
    write(&p.join("df/Dockerfile"), "FROM scratch\nCOPY . /1/\n");
    write(&p.join("ctx/a.txt"), "hello\n");
    write(&p.join("ctx/d/f"), "x\n");
    // Old enough that a send of them is not racy (then any later write is seen).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = |p: &Path| {
        (
            std::fs::read_to_string(p.join("a.txt")).ok(),
            std::fs::metadata(p.join("d"))
                .map(|m| m.permissions().mode() & 0o777)
                .ok(),
        )
    };
    assert_eq!(got(&p.join("out/1")), (Some("hello\n".into()), Some(0o755)));

    write_keeping_mtime(&p.join("ctx/a.txt"), "HELLO\n");
    std::fs::set_permissions(p.join("ctx/d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(plan_in(p, &[], &[])["t"].0, "build");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        got(&p.join("out/1")),
        (Some("HELLO\n".into()), Some(0o700)),
        "built from the daemon's stale copy"
    );
    assert_eq!(plan_in(p, &[], &[])["t"].0, "skip");

    // The Dockerfile, same size and mtime: a different destination.
    std::thread::sleep(std::time::Duration::from_millis(300));
    write_keeping_mtime(&p.join("df/Dockerfile"), "FROM scratch\nCOPY . /2/\n");
    assert_eq!(plan_in(p, &[], &[])["t"].0, "build");
    let (out, _) = bake_in(p, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        got(&p.join("out/2")),
        (Some("HELLO\n".into()), Some(0o700)),
        "built from the daemon's stale copy of the Dockerfile"
    );
    assert_eq!(plan_in(p, &[], &[])["t"].0, "skip");
}

/// BuildKit keys its copy of a named context by the local name under the session: two
/// targets on one context that name different directories `lib`, whose files have the same
/// size and mtime, must each get their own directory's bytes (not the other's, recorded).
#[test]
fn one_context_name_for_two_directories_is_two_copies() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        &p.join("bk-build.toml"),
        format!(
            "[target.t1]\ncontext = \"ctx\"\ncontexts = {{ lib = \"libA\" }}\noutputs = [\"type=local,dest={}\"]\n\n[target.t2]\ncontext = \"ctx\"\ncontexts = {{ lib = \"libB\" }}\noutputs = [\"type=local,dest={}\"]\n",
            p.join("out1").display(),
            p.join("out2").display()
        ),
    );
    write(
        &p.join("ctx/Dockerfile"),
        "FROM scratch\nCOPY --from=lib / /lib/\n",
    );
    write(&p.join("libA/a.txt"), "AAAAAAAA\n");
    write(&p.join("libB/a.txt"), "BBBBBBBB\n");
    set_mtime(
        &p.join("libB/a.txt"),
        std::fs::metadata(p.join("libA/a.txt"))
            .unwrap()
            .modified()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    for t in ["t1", "t2"] {
        let (out, _) = bake_in(p, &[], &[t]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let read = |o: &str| std::fs::read_to_string(p.join(o).join("lib/a.txt")).unwrap();
    assert_eq!(
        (read("out1"), read("out2")),
        ("AAAAAAAA\n".to_string(), "BBBBBBBB\n".to_string())
    );
}

/// A provenance attestation in `mode=max` records every build arg, declared by the Dockerfile
/// or not (the default minimal one records none): there an arg the Dockerfile never declares
/// changes what is exported, so it counts.
#[test]
fn an_undeclared_arg_counts_where_provenance_records_it() {
    let d = tempfile::tempdir().unwrap();
    // The files of a local output that mention the arg (the provenance the daemon wrote).
    let recorded = |dir: &Path| -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if let Ok(text) = std::fs::read_to_string(&path) {
                if text.contains("build-arg:UNUSED") {
                    found.push(text);
                }
            }
        }
        found
    };
    for (mode, flags) in [("min", &[][..]), ("max", &["--provenance", "mode=max"][..])] {
        let p = d.path().join(mode);
        write(
            &p.join("ctx/Dockerfile"),
            "FROM scratch\nCOPY a.txt /a.txt\n",
        );
        write(&p.join("ctx/a.txt"), "a\n");
        let project = |v: &str| {
            format!(
                "[target.t]\ncontext = \"ctx\"\nargs = {{ UNUSED = \"{v}\" }}\n\
                 outputs = [\"type=local,dest=out\"]\n"
            )
        };
        write(&p.join("bk-build.toml"), project("one"));
        let (out, _) = bake_in(&p, &[], flags);
        assert!(out.status.success(), "{}", stderr(&out));
        let before = recorded(&p.join("out"));
        write(&p.join("bk-build.toml"), project("two"));
        let plan = plan_in(&p, &[], flags);
        if mode == "min" {
            assert!(before.is_empty(), "{before:?}");
            assert_eq!(plan["t"].0, "skip", "{}", plan["t"].1);
            continue;
        }
        assert!(
            before.len() == 1 && before[0].contains("\"one\""),
            "no provenance recording the arg: {before:?}"
        );
        assert_eq!(plan["t"].0, "build", "{}", plan["t"].1);
        assert!(plan["t"].1.contains("UNUSED"), "{}", plan["t"].1);
        let (out, _) = bake_in(&p, &[], flags);
        assert!(out.status.success(), "{}", stderr(&out));
        let after = recorded(&p.join("out"));
        assert!(
            after.len() == 1 && after[0].contains("\"two\""),
            "provenance not rebuilt: {after:?}"
        );
    }
}

/// `ADD` of a git repository over ssh in its scp-like forms (`user@host:path`, `host:path`),
/// the old `github.com/…` form, or a source spelled with a variable the base image's `ENV` may
/// set is fetched (or may be) by the daemon: new commits there are invisible to a fingerprint,
/// so the target is always built, and `plan` says why.
#[test]
fn add_of_a_git_repository_in_any_spelling_is_always_built() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sources = [
        "root@127.0.0.1:/srv/repo.git",
        "build-host:repo.git#main",
        "github.com/example/repo",
        "${SRC}",
    ];
    let mut project = String::new();
    for (i, src) in sources.iter().enumerate() {
        write(
            &p.join(format!("c{i}/Dockerfile")),
            format!("FROM {}\nARG SRC=x\nADD {src} /src\n", base_image()),
        );
        project.push_str(&format!("[target.t{i}]\ncontext = \"c{i}\"\n\n"));
    }
    write(&p.join("bk-build.toml"), project);
    let plan = plan_in(p, &[], &[]);
    for (i, src) in sources.iter().enumerate() {
        let (action, why) = &plan[&format!("t{i}")];
        assert_eq!(action, "build", "{src}: {why}");
        assert!(why.contains("fetched by the daemon"), "{src}: {why}");
    }
}
