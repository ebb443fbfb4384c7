//! Loading bake files: evaluation, merging, inheritance, paths and errors. The agreement with
//! `docker buildx bake --print` itself is checked by `tests/bakefile_oracle.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::project::{load_in, ContextSource, Project, ProjectError};

fn write(dir: &Path, rel: &str, content: &str) -> PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    p
}

/// A directory with `Dockerfile`, `app/Dockerfile` and `base/Dockerfile`.
fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for ctx in [".", "app", "base"] {
        write(d.path(), &format!("{ctx}/Dockerfile"), "FROM scratch\n");
    }
    d
}

fn load_with(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> Result<Project, ProjectError> {
    let map: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let files: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    load_in(&files, &move |k: &str| map.get(k).cloned(), dir)
}

fn one(text: &str, env: &[(&str, &str)]) -> Result<(tempfile::TempDir, Project), ProjectError> {
    let d = tree();
    write(d.path(), "docker-bake.hcl", text);
    let p = load_with(d.path(), &["docker-bake.hcl"], env)?;
    Ok((d, p))
}

fn err(text: &str, env: &[(&str, &str)]) -> String {
    match one(text, env) {
        Ok((_, p)) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn variables_default_and_take_the_environment() {
    let text = r#"
variable "TAG" { default = "dev" }
variable "PUSH" { default = false }
variable "N" { default = 2 }
variable "EMPTY" {}
variable "TAGS" {
  type = list(string)
  default = ["a"]
}
REPO = "reg.example/${TAG}"
target "app" {
  context = "app"
  tags = concat([for t in TAGS : "${REPO}:${t}"], ["n${N + 1}", "e${EMPTY}x"])
  pull = PUSH
}
"#;
    let (_, p) = one(text, &[]).unwrap();
    assert_eq!(p.targets["app"].tags, ["reg.example/dev:a", "n3", "ex"]);
    assert!(!p.targets["app"].pull);
    let (_, p) = one(
        text,
        &[
            ("TAG", "v1"),
            ("PUSH", "true"),
            ("N", "10"),
            ("TAGS", "x,y"),
            ("REPO", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(
        p.targets["app"].tags,
        ["reg.example/v1:x", "reg.example/v1:y", "n11", "ex"]
    );
    assert!(p.targets["app"].pull);
    // Typed variables prefer NAME_JSON.
    let (_, p) = one(text, &[("TAGS", "x"), ("TAGS_JSON", r#"["j1","j2"]"#)]).unwrap();
    assert_eq!(
        p.targets["app"].tags[..2],
        ["reg.example/dev:j1", "reg.example/dev:j2"]
    );
    // An override that does not fit the type names the variable and the environment.
    let e = err(text, &[("N", "many")]);
    assert!(
        e.contains("N=\"many\"") && e.contains("not a number"),
        "{e}"
    );
    assert!(e.contains("docker-bake.hcl:4"), "{e}");
    // As strictly as buildx: no spaces around a number, no empty list (an unset CI
    // variable passed as "" must not make a one-item list of "").
    let e = err(text, &[("N", " 4")]);
    assert!(e.contains("not a number"), "{e}");
    let e = err(text, &[("TAGS", "")]);
    assert!(e.contains("TAGS=\"\"") && e.contains("empty value"), "{e}");
}

#[test]
fn untyped_list_variables_cannot_be_overridden_from_the_environment() {
    let e = err(
        "variable \"L\" { default = [\"a\"] }\ntarget \"default\" {}\n",
        &[("L", "b")],
    );
    assert!(e.contains("give the variable a type"), "{e}");
}

#[test]
fn variable_validation_runs() {
    let text = r#"
variable "TAG" {
  default = "dev"
  validation {
    condition = TAG != "latest"
    error_message = "do not use latest"
  }
}
target "default" { tags = ["x:${TAG}"] }
"#;
    assert!(one(text, &[]).is_ok());
    let e = err(text, &[("TAG", "latest")]);
    assert!(e.contains("do not use latest") && e.contains(":5"), "{e}");
}

#[test]
fn functions_user_defined_and_standard() {
    let text = r#"
function "tag" {
  params = [name, version]
  result = "${lower(name)}:${version}"
}
function "all" {
  params = [first]
  variadic_params = rest
  result = join(",", concat([first], rest))
}
target "default" {
  tags = [tag("App", "1"), all("a", "b", "c"), format("%03d", 7), notequal("", "x") ? "yes" : "no"]
}
"#;
    let (_, p) = one(text, &[]).unwrap();
    assert_eq!(p.targets["default"].tags, ["app:1", "a,b,c", "007", "yes"]);
    let e = err(
        "function \"f\" {\n  params = [x]\n  result = y\n}\ntarget \"default\" {}\n",
        &[],
    );
    assert!(
        e.contains("docker-bake.hcl:3") && e.contains("\"y\""),
        "{e}"
    );
    let e = err("target \"default\" {\n  tags = [md5(\"x\")]\n}\n", &[]);
    assert!(
        e.contains("not supported by bk-build") && e.contains(":2"),
        "{e}"
    );
}

#[test]
fn inherits_chains_multiple_parents_in_order() {
    let text = r#"
target "_common" {
  args = { A = "common", B = "common" }
  labels = { l = "1" }
  tags = ["common"]
  platforms = ["linux/amd64"]
}
target "_ci" {
  inherits = ["_common"]
  args = { B = "ci" }
  cache-from = ["type=registry,ref=r/c:1"]
}
target "_extra" {
  args = { C = "extra", A = "extra" }
  cache-from = ["type=registry,ref=r/c:2"]
  secret = ["id=s,env=HOME"]
}
target "app" {
  inherits = ["_ci", "_extra"]
  context = "app"
  args = { D = "own" }
  secret = ["id=s,env=USER"]
}
"#;
    let (_, p) = one(text, &[]).unwrap();
    let t = &p.targets["app"];
    let args: Vec<(&str, &str)> = t
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        args,
        [("A", "extra"), ("B", "ci"), ("C", "extra"), ("D", "own")]
    );
    assert_eq!(t.tags, ["common"]);
    assert_eq!(t.platforms, ["linux/amd64"]);
    assert_eq!(
        t.cache_from,
        ["type=registry,ref=r/c:1", "type=registry,ref=r/c:2"]
    );
    assert_eq!(t.secrets, ["id=s,env=USER"]);
    assert!(t.context.ends_with("app"));
    let e = err(
        "target \"a\" {\n  inherits = [\"b\"]\n}\ntarget \"b\" {\n  inherits = [\"a\"]\n}\n",
        &[],
    );
    assert!(e.contains("inherits cycle"), "{e}");
    let e = err(
        "target \"a\" {\n  inherits = [\"bse\"]\n}\ntarget \"base\" {}\n",
        &[],
    );
    assert!(e.contains(":2") && e.contains("did you mean `base`"), "{e}");
}

#[test]
fn matrix_forks_targets_and_groups_them() {
    let text = r#"
target "app" {
  name = "app-${tgt}-${replace(v, ".", "-")}"
  matrix = {
    tgt = ["a", "b"]
    v = ["1.0", "2.0"]
  }
  context = "app"
  args = { V = v }
  tags = ["r/app:${tgt}-${v}"]
}
group "default" { targets = ["app"] }
"#;
    let (_, p) = one(text, &[]).unwrap();
    assert_eq!(
        p.targets.keys().collect::<Vec<_>>(),
        ["app-a-1-0", "app-a-2-0", "app-b-1-0", "app-b-2-0"]
    );
    assert_eq!(p.targets["app-b-2-0"].args["V"], "2.0");
    assert_eq!(p.groups["app"].len(), 4);
    let e = err(
        "target \"x\" {\n  matrix = { v = [\"a\", \"b\"] }\n}\n",
        &[],
    );
    assert!(e.contains("duplicate name"), "{e}");
    let e = err("target \"x\" {\n  name = \"y\"\n}\n", &[]);
    assert!(e.contains("name requires matrix"), "{e}");
}

#[test]
fn contexts_and_paths_are_relative_to_the_current_directory() {
    let d = tree();
    write(
        d.path(),
        "build/docker-bake.hcl",
        r#"
target "base" { context = "base" }
target "app" {
  context = "app"
  dockerfile = "Dockerfile"
  contexts = {
    base = "target:base"
    src = "base"
    img = "docker-image://alpine:3"
  }
  secret = ["id=tok,src=app/Dockerfile"]
  output = ["type=local,dest=out"]
}
"#,
    );
    let p = load_with(d.path(), &["build/docker-bake.hcl"], &[]).unwrap();
    let t = &p.targets["app"];
    assert_eq!(t.context, d.path().join("app"));
    assert_eq!(t.dockerfile, d.path().join("app/Dockerfile"));
    assert_eq!(t.contexts["base"], ContextSource::Target("base".into()));
    assert_eq!(
        t.contexts["src"],
        ContextSource::Local(d.path().join("base"))
    );
    assert_eq!(
        t.secrets,
        [format!(
            "id=tok,src={}",
            d.path().join("app/Dockerfile").display()
        )]
    );
    assert_eq!(
        t.outputs,
        [format!(
            "type=local,dest={}",
            d.path().join("out").display()
        )]
    );
    // The state directory still goes next to the first file.
    assert_eq!(p.root, d.path().join("build"));

    let e = err(
        "target \"a\" {\n  contexts = { b = \"target:nope\" }\n}\n",
        &[],
    );
    assert!(e.contains(":2") && e.contains("target.a.contexts.b"), "{e}");
    // Targets that only exist to be inherited from have no context of their own: a missing
    // directory is an error when the target is built, not when the file is read.
    let (d, p) = one("target \"_abstract\" {\n  context = \"missing\"\n}\n", &[]).unwrap();
    let t = &p.targets["_abstract"];
    assert_eq!(t.context, d.path().join("missing"));
    let why = t.unavailable.as_deref().unwrap_or_default();
    assert!(
        why.contains("docker-bake.hcl:2: target._abstract.context")
            && why.contains("current directory"),
        "{why}"
    );
}

#[test]
fn plain_push_and_load_outputs_are_push_and_load() {
    let (_, p) = one(
        "target \"a\" {\n  tags = [\"r/a\"]\n  output = [\"type=registry\"]\n}\ntarget \"b\" {\n  output = [\"type=docker\"]\n}\ntarget \"c\" {\n  output = [{ type = \"image\", push = \"true\", compression = \"zstd\" }]\n}\n",
        &[],
    )
    .unwrap();
    assert!(p.targets["a"].push && p.targets["a"].outputs.is_empty());
    assert!(p.targets["b"].load);
    assert_eq!(
        p.targets["c"].outputs,
        ["type=image,compression=zstd,push=true"]
    );
}

#[test]
fn override_files_merge_targets_and_replace_variables() {
    let d = tree();
    write(
        d.path(),
        "docker-bake.hcl",
        "variable \"TAG\" { default = \"a\" }\ntarget \"app\" {\n  tags = [\"x:${TAG}\"]\n  args = { A = \"1\" }\n  platforms = [\"linux/amd64\"]\n}\ngroup \"default\" { targets = [\"app\"] }\n",
    );
    write(
        d.path(),
        "docker-bake.override.json",
        r#"{"variable": {"TAG": {"default": "b"}}, "target": {"app": {"args": {"B": "2"}, "tags": ["y:${TAG}"]}, "other": {"context": "app"}}, "group": {"default": {"targets": ["app", "other"]}}}"#,
    );
    let files = crate::project::discover(d.path()).unwrap();
    assert_eq!(
        files,
        [
            d.path().join("docker-bake.hcl"),
            d.path().join("docker-bake.override.json")
        ]
    );
    let p = load_with(
        d.path(),
        &["docker-bake.hcl", "docker-bake.override.json"],
        &[],
    )
    .unwrap();
    let t = &p.targets["app"];
    assert_eq!(t.tags, ["y:b"]);
    assert_eq!(t.args.len(), 2);
    assert_eq!(t.platforms, ["linux/amd64"]);
    assert_eq!(p.groups["default"], ["app", "other"]);
}

#[test]
fn compose_services_and_bake_targets_combine() {
    let d = tree();
    write(
        d.path(),
        "compose.yaml",
        "services:\n  web:\n    image: r/web\n    build:\n      context: app\n      shm_size: 64m\n      network: host\n      args:\n        A: compose\n  inline:\n    build:\n      dockerfile_inline: \"FROM scratch\\n\"\n",
    );
    write(
        d.path(),
        "docker-bake.hcl",
        "target \"web\" {\n  args = { B = \"bake\" }\n  tags = [\"r/web:bake\"]\n}\ntarget \"extra\" { context = \"base\" }\n",
    );
    let p = load_with(d.path(), &["docker-bake.hcl", "compose.yaml"], &[]).unwrap();
    let t = &p.targets["web"];
    assert_eq!(t.context, d.path().join("app"));
    assert_eq!(t.tags, ["r/web:bake"]);
    assert_eq!(t.args.len(), 2);
    // What compose set and the bake file did not touch stays.
    assert_eq!(t.shm_size, Some(64 << 20));
    assert_eq!(t.network, Some(crate::options::Network::Host));
    assert_eq!(
        p.targets["inline"].dockerfile_inline.as_deref(),
        Some("FROM scratch\n")
    );
    // buildx's compose loader makes the default group: the services only.
    assert_eq!(p.groups["default"], ["web", "inline"]);
    assert!(p.targets.contains_key("extra"));
}

#[test]
fn run_step_keys_and_inline_dockerfiles() {
    let (d, p) = one(
        "target \"a\" {\n  shm-size = \"1g\"\n  network = \"host\"\n  ulimits = [\"nofile=1024:2048\"]\n  extra-hosts = { db = \"10.0.0.2\" }\n  no-cache-filter = [\"deps\"]\n  dockerfile-inline = \"FROM scratch\\n\"\n}\n",
        &[],
    )
    .unwrap();
    let t = &p.targets["a"];
    assert_eq!(t.shm_size, Some(1 << 30));
    assert_eq!(t.network, Some(crate::options::Network::Host));
    assert_eq!(t.entitlements, ["network.host"]);
    assert_eq!(crate::project::spelled(&t.ulimits), ["nofile=1024:2048"]);
    assert_eq!(crate::project::spelled(&t.extra_hosts), ["db=10.0.0.2"]);
    assert_eq!(t.no_cache_filter, ["deps"]);
    assert_eq!(t.dockerfile_inline.as_deref(), Some("FROM scratch\n"));
    assert!(
        t.dockerfile.starts_with(d.path().join(".bk-build")),
        "{:?}",
        t.dockerfile
    );
    assert!(t.unavailable.is_none(), "{:?}", t.unavailable);
    let (_, p) = one(
        "target \"a\" {\n  network = \"mynet\"\n  call = \"check\"\n}\n",
        &[],
    )
    .unwrap();
    let why = p.targets["a"].unavailable.clone().unwrap_or_default();
    assert!(why.contains("docker-bake.hcl:3: target.a.call"), "{why}");
}

#[test]
fn annotations_and_attestations_are_read_and_unknown_keys_fail() {
    let (_, p) = one(
        "target \"a\" {\n  annotations = [\"k=v\", \"index:i=1\"]\n  description = \"d\"\n  attest = [\"type=sbom\", \"type=provenance,mode=min\", \"type=sbom,generator=g\"]\n}\n",
        &[],
    )
    .unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        crate::project::spelled(&p.targets["a"].annotations),
        ["k=v", "index:i=1"]
    );
    let e = err("target \"a\" {\n  annotations = [\"k\"]\n}\n", &[]);
    assert!(e.contains("docker-bake.hcl:2: target.a.annotations"), "{e}");
    // Attestations are read, one per type, the later entry of a type winning.
    assert_eq!(
        crate::project::spelled(&p.targets["a"].attest),
        ["type=sbom,generator=g", "type=provenance,mode=min"]
    );
    let e = err("target \"a\" {\n  attest = [\"mode=max\"]\n}\n", &[]);
    assert!(e.contains("docker-bake.hcl:2: target.a.attest"), "{e}");
    let e = err("target \"a\" {\n  tag = [\"x\"]\n}\n", &[]);
    assert!(e.contains(":2") && e.contains("did you mean `tags`"), "{e}");
    let e = err("target \"a\" {\n  tags = [\"${NOPE}\"]\n}\n", &[]);
    assert!(
        e.contains("docker-bake.hcl:2: target.a.tags") && e.contains("NOPE"),
        "{e}"
    );
    let e = err("target \"a\" {\n  tags = [\n", &[]);
    assert!(e.contains("not valid HCL"), "{e}");
    let e = err("target \"a.b\" {}\n", &[]);
    assert!(e.contains("not a valid target"), "{e}");
}

#[test]
fn block_references_read_other_targets() {
    let (_, p) = one(
        "target \"base\" {\n  tags = [\"r/base\"]\n}\ntarget \"app\" {\n  args = { BASE = target.base.tags[0] }\n}\n",
        &[],
    )
    .unwrap();
    assert_eq!(p.targets["app"].args["BASE"], "r/base");
}

#[test]
fn json_files_use_templates_in_strings() {
    let d = tree();
    write(
        d.path(),
        "docker-bake.json",
        r#"{
  "variable": {"TAG": {"default": "1"}, "L": {"type": "list(string)", "default": ["a"]}},
  "function": {"twice": {"params": ["x"], "result": "${x}${x}"}},
  "target": {"app": {"context": "app", "tags": ["r/app:${twice(TAG)}", "${L[0]}"], "no-cache": true}},
  "group": {"default": {"targets": ["app"]}}
}"#,
    );
    let p = load_with(d.path(), &["docker-bake.json"], &[("L", "z")]).unwrap();
    assert_eq!(p.targets["app"].tags, ["r/app:11", "z"]);
    assert!(p.targets["app"].no_cache);
    write(
        d.path(),
        "bad.json",
        "{\n  \"target\": {\n    \"a\": {\"tags\": [\"x\",]}\n  }\n}\n",
    );
    let e = load_with(d.path(), &["bad.json"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.json:3") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn buildx_bake_file_names_the_files() {
    use crate::project::files_from_env;
    let env = |vars: Vec<(&'static str, String)>| {
        move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    };
    assert!(files_from_env(&env(vec![])).unwrap().is_none());
    let d = tree();
    let a = write(d.path(), "a.hcl", "");
    let b = write(d.path(), "b.hcl", "");
    let files = files_from_env(&env(vec![
        (
            "BUILDX_BAKE_FILE",
            format!("{};{}", a.display(), b.display()),
        ),
        ("BUILDX_BAKE_FILE_SEPARATOR", ";".into()),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(files, [a, b]);
    let e = files_from_env(&env(vec![(
        "BUILDX_BAKE_FILE",
        "/nonexistent/x.hcl".into(),
    )]))
    .unwrap_err()
    .to_string();
    assert!(e.contains("BUILDX_BAKE_FILE"), "{e}");
}

#[test]
fn an_attribute_set_twice_is_an_error() {
    let e = err(
        "target \"a\" {\n  tags = [\"x\"]\n  tags = [\"y\"]\n}\n",
        &[],
    );
    assert!(e.contains(":3") && e.contains("redefined"), "{e}");
    let e = err("A = 1\nA = 2\ntarget \"a\" {}\n", &[]);
    assert!(e.contains(":2") && e.contains("redefined"), "{e}");
}

/// A group naming a target that is not there (a matrix variable set to other values) fails
/// only when that group is asked for, as in buildx; the error still names file, line and key.
#[test]
fn a_group_with_a_missing_member_fails_only_when_named() {
    let text = "variable \"FLAVORS\" {\n  type = list(string)\n  default = [\"min\"]\n}\ngroup \"default\" {\n  targets = [\"a\"]\n}\ntarget \"a\" {}\ntarget \"api\" {\n  name = \"api-${f}\"\n  matrix = { f = FLAVORS }\n}\ngroup \"apis\" {\n  targets = [\"api-min\"]\n}\n";
    let (_d, p) = one(text, &[("FLAVORS", "x,y")]).unwrap();
    assert_eq!(crate::graph::select(&p, &[]).unwrap(), ["a"]);
    assert!(crate::graph::select(&p, &["api-x".into()]).is_ok());
    let e = crate::graph::select(&p, &["apis".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("docker-bake.hcl:14: group.apis.targets") && e.contains("api-min"),
        "{e}"
    );
    let e = crate::graph::printed(&p, &["apis".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("group.apis.targets"), "{e}");
    // With the default list the group is whole again.
    let (_d, p) = one(text, &[]).unwrap();
    assert_eq!(
        crate::graph::select(&p, &["apis".into()]).unwrap(),
        ["api-min"]
    );
}
