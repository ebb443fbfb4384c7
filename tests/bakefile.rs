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

/// `base` has no tags and `app` builds on it through `contexts = { base = "target:base" }`:
/// buildx builds `base` inside `app`'s build; bk-build builds it first and hands `app` the
/// exact image, by digest, through an OCI layout in its state directory. `app`'s files must be
/// buildx's, `app` must be rebuilt when `base` changes, and nothing when nothing changed.
#[test]
fn an_untagged_target_context_is_handed_over_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proj");
    write(
        &root.join("docker-bake.hcl"),
        r#"variable "BASE_IMAGE" {}

group "default" {
  targets = ["app"]
}

target "base" {
  context = "base"
  args    = { BASE_IMAGE = BASE_IMAGE }
}

target "app" {
  context  = "app"
  contexts = { base = "target:base" }
  output   = ["type=local,dest=out"]
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
        "FROM base\nCOPY app.txt /app.txt\nRUN cat /base.txt /app.txt > /both.txt\n",
    );
    write(&root.join("app/app.txt"), "app v1\n");
    let env = [("BASE_IMAGE", base_image())];
    let plan = || -> std::collections::BTreeMap<String, String> {
        let out = run_ok(
            bk().current_dir(&root)
                .args(["plan", "--format", "json"])
                .envs(env.clone()),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let reasons = t["reasons"].to_string();
                let name = t["name"].as_str().unwrap().to_string();
                (name, format!("{} {reasons}", t["action"].as_str().unwrap()))
            })
            .collect()
    };
    let md = root.join("md.json");
    let bake = || {
        let o = run(bk()
            .current_dir(&root)
            .args(["bake", "--progress", "plain", "--metadata-file"])
            .arg(&md)
            .envs(env.clone()));
        assert!(o.status.success(), "bake failed:\n{}", stderr(&o));
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&md).unwrap()).unwrap();
        (stderr(&o), meta)
    };
    // buildx's files for the same bake file, in a fresh directory (inside the project: buildx
    // asks for an entitlement to write outside it).
    let oracle = |step: &str| {
        let dest = root.join(format!("buildx-{step}"));
        run_ok(
            docker()
                .current_dir(&root)
                .args(["buildx", "bake", "--progress", "quiet", "--set"])
                .arg(format!("app.output=type=local,dest={}", dest.display()))
                .envs(env.clone()),
        );
        assert_same_tree(&dest, &root.join("out"));
    };

    let (log, meta) = bake();
    assert_eq!(read(&root.join("out/both.txt")), "base v1\napp v1\n");
    assert!(
        root.join("out/bin/busybox").exists(),
        "base's own base is under app"
    );
    oracle("1");
    // app was given exactly the image base's build reported.
    let base_digest = meta["base"]["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("base recorded no digest: {meta}"))
        .to_string();
    assert!(
        log.lines()
            .any(|l| l.starts_with("[app]") && l.contains(&format!("@{base_digest}"))),
        "app's build did not load base by its digest {base_digest}:\n{log}"
    );

    // Nothing changed: both skip.
    let p = plan();
    assert!(p.values().all(|a| a.starts_with("skip")), "{p:?}");

    // A change only app reads: base is reused from its layout, app rebuilt on it.
    write(&root.join("app/app.txt"), "app v2\n");
    let p = plan();
    assert!(p["base"].starts_with("skip"), "{p:?}");
    assert!(p["app"].starts_with("build"), "{p:?}");
    bake();
    assert_eq!(read(&root.join("out/both.txt")), "base v1\napp v2\n");
    oracle("2");

    // A change of base's input rebuilds base and app.
    write(&root.join("base/base.txt"), "base v2\n");
    let p = plan();
    assert!(p.values().all(|a| a.starts_with("build")), "{p:?}");
    let (_, meta) = bake();
    assert_eq!(read(&root.join("out/both.txt")), "base v2\napp v2\n");
    assert_ne!(meta["base"]["containerimage.digest"], base_digest.as_str());
    oracle("3");
    let p = plan();
    assert!(p.values().all(|a| a.starts_with("skip")), "{p:?}");

    // The layout is where app's base comes from: without it, base is built again.
    std::fs::remove_dir_all(root.join(".bk-build/links/base")).unwrap();
    let p = plan();
    assert!(
        p["base"].starts_with("build") && p["base"].contains("links/base"),
        "{p:?}"
    );
    bake();
    assert_eq!(read(&root.join("out/both.txt")), "base v2\napp v2\n");
    let p = plan();
    assert!(p.values().all(|a| a.starts_with("skip")), "{p:?}");
}

/// The annotations of the multi-platform image at `repo:tag`: the index's, and each
/// descriptor's and manifest's by platform.
fn pushed_annotations(
    repo: &str,
    tag: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let get = |path: String| -> serde_json::Value {
        let (status, _, body) = registry_request("GET", &path);
        assert_eq!(status, 200, "GET {path}");
        serde_json::from_slice(&body).unwrap()
    };
    let index = get(format!("/v2/{repo}/manifests/{tag}"));
    let mut out = std::collections::BTreeMap::new();
    out.insert("index".to_string(), index["annotations"].clone());
    for d in index["manifests"].as_array().expect("an image index") {
        let arch = d["platform"]["architecture"].as_str().unwrap_or_default();
        out.insert(format!("descriptor {arch}"), d["annotations"].clone());
        let m = get(format!(
            "/v2/{repo}/manifests/{}",
            d["digest"].as_str().unwrap()
        ));
        out.insert(format!("manifest {arch}"), m["annotations"].clone());
    }
    out
}

/// A bake file's `annotations` reach the pushed index and manifests as with `docker buildx
/// bake`, are part of the fingerprint, and `--progress none` prints nothing.
#[test]
fn annotations_reach_the_pushed_image_as_with_buildx_bake() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proj");
    let repo = unique("bakefile-annotations");
    write(
        &root.join("docker-bake.hcl"),
        r#"variable "REPO" {}
variable "TAG" {
  default = "bk"
}

group "default" {
  targets = ["img"]
}

target "img" {
  context     = "img"
  platforms   = ["linux/amd64", "linux/arm64"]
  tags        = ["${REPO}:${TAG}"]
  annotations = ["index,manifest:org.example.k=v", "manifest[linux/arm64]:org.example.arm=a"]
  output      = ["type=registry"]
}
"#,
    );
    write(&root.join("img/Dockerfile"), "FROM scratch\nCOPY a /a\n");
    write(&root.join("img/a"), &repo);
    let env = [
        ("REPO", format!("localhost:5000/{repo}")),
        ("BUILDX_NO_DEFAULT_ATTESTATIONS", "1".to_string()),
    ];
    let o = run(bk()
        .current_dir(&root)
        .args(["bake", "--progress", "none"])
        .envs(env.clone()));
    assert!(o.status.success(), "bake failed:\n{}", stderr(&o));
    assert!(
        o.stderr.is_empty() && o.stdout.is_empty(),
        "--progress none printed something"
    );
    run_ok(
        docker()
            .current_dir(&root)
            .args(["buildx", "bake", "--progress", "quiet"])
            .envs(env.clone())
            .env("TAG", "bx"),
    );
    let mine = pushed_annotations(&repo, "bk");
    assert_eq!(mine["index"]["org.example.k"], "v", "{mine:?}");
    assert_eq!(mine["manifest arm64"]["org.example.arm"], "a", "{mine:?}");
    assert_eq!(mine, pushed_annotations(&repo, "bx"));

    // Another annotation is another image: the target is built again.
    let out = run_ok(
        bk().current_dir(&root)
            .args(["plan", "--set", "img.annotations=org.example.new=1"])
            .envs(env.clone()),
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        line.contains("build") && line.contains("annotation.org.example.new"),
        "{line}"
    );
}
