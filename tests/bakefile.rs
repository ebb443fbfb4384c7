//! `bk-build bake` on a `docker-bake.hcl` project against the real daemon: a matrix target
//! whose forks build on another target through a `target:` context, variables from the
//! environment, the result on disk and in the registry, and what an edit rebuilds.

mod support;

use std::path::{Path, PathBuf};

use support::*;

struct Repo {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// `localhost:5000/<unique>`: where `base` is pushed.
    repo: String,
}

/// `base` (pushed) and `app` forked by a matrix into `app-alpine` and `app-debian`, each
/// `FROM base` through the named context `base = "target:base"`, exported to `out/<flavor>`.
fn project() -> Repo {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proj");
    let repo = format!("localhost:5000/{}", unique("bakefile"));
    write(
        &root.join("docker-bake.hcl"),
        r#"variable "REPO" {}
variable "TAG" {
  default = "dev"
}
variable "FLAVORS" {
  type    = list(string)
  default = ["alpine", "debian"]
}
variable "BASE_IMAGE" {}

function "out" {
  params = [flavor]
  result = "type=local,dest=out/${flavor}"
}

group "default" {
  targets = ["app"]
}

target "base" {
  context = "base"
  args    = { BASE_IMAGE = BASE_IMAGE }
  tags    = ["${REPO}/base:${TAG}"]
  output  = ["type=registry"]
}

target "app" {
  name     = "app-${flavor}"
  matrix   = { flavor = FLAVORS }
  context  = "app"
  contexts = { base = "target:base" }
  args     = { FLAVOR = flavor }
  output   = [out(flavor)]
}
"#,
    );
    write(
        &root.join("base/Dockerfile"),
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY base.txt /base.txt\n",
    );
    write(&root.join("base/base.txt"), "base v1\n");
    write(
        &root.join("app/Dockerfile"),
        "FROM base\nARG FLAVOR\nCOPY ${FLAVOR}.txt /flavor.txt\nRUN echo \"$FLAVOR\" > /built-for\n",
    );
    write(&root.join("app/alpine.txt"), "alpine v1\n");
    write(&root.join("app/debian.txt"), "debian v1\n");
    Repo {
        _tmp: tmp,
        root,
        repo,
    }
}

fn env_of(r: &Repo) -> [(&'static str, String); 2] {
    [("REPO", r.repo.clone()), ("BASE_IMAGE", base_image())]
}

fn bake(r: &Repo) -> std::process::Output {
    run(bk()
        .current_dir(&r.root)
        .args(["bake", "--progress", "plain"])
        .envs(env_of(r)))
}

/// target → action from `bk-build plan --format json`.
fn plan(r: &Repo) -> std::collections::BTreeMap<String, String> {
    let out = run_ok(
        bk().current_dir(&r.root)
            .args(["plan", "--format", "json"])
            .envs(env_of(r)),
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
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn matrix_targets_build_on_a_target_context_and_rebuild_on_edits() {
    let r = project();
    let o = bake(&r);
    assert!(o.status.success(), "first bake failed:\n{}", stderr(&o));

    // Each fork has its own file, the arg the matrix gave it, and the base it built on.
    for flavor in ["alpine", "debian"] {
        let out = r.root.join("out").join(flavor);
        assert_eq!(read(&out.join("flavor.txt")), format!("{flavor} v1\n"));
        assert_eq!(read(&out.join("built-for")), format!("{flavor}\n"));
        assert_eq!(read(&out.join("base.txt")), "base v1\n");
        assert!(
            out.join("bin/busybox").exists(),
            "the base image is under {flavor}'s files"
        );
    }
    let repo_path = r.repo.trim_start_matches("localhost:5000/");
    assert!(
        manifest_digest(&format!("{repo_path}/base"), "dev").is_some(),
        "base (output type=registry) was not pushed"
    );

    // Nothing changed: nothing to build.
    let p = plan(&r);
    assert_eq!(
        p.values().collect::<Vec<_>>(),
        ["skip", "skip", "skip"],
        "{p:?}"
    );

    // An edit only one fork reads rebuilds that fork.
    write(&r.root.join("app/alpine.txt"), "alpine v2\n");
    let p = plan(&r);
    assert_eq!(p["app-alpine"], "build", "{p:?}");
    assert_eq!(p["base"], "skip", "{p:?}");
    let o = bake(&r);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&r.root.join("out/alpine/flavor.txt")), "alpine v2\n");

    // An edit of the base rebuilds it and every fork on it.
    write(&r.root.join("base/base.txt"), "base v2\n");
    let p = plan(&r);
    assert!(p.values().all(|a| a == "build"), "{p:?}");
    let o = bake(&r);
    assert!(o.status.success(), "{}", stderr(&o));
    for flavor in ["alpine", "debian"] {
        assert_eq!(
            read(&r.root.join("out").join(flavor).join("base.txt")),
            "base v2\n"
        );
    }

    // A variable from the environment changes what is built: a third fork appears.
    write(&r.root.join("app/extra.txt"), "extra v1\n");
    let o = run(bk()
        .current_dir(&r.root)
        .args(["bake", "--progress", "plain"])
        .envs(env_of(&r))
        .env("FLAVORS", "alpine,debian,extra"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&r.root.join("out/extra/flavor.txt")), "extra v1\n");
}
