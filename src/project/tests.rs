use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn write(dir: &Path, rel: &str, content: &str) -> PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    p
}

/// A monorepo skeleton: contexts with Dockerfiles, and a shared dir outside them.
fn skeleton(dir: &Path) {
    for ctx in ["src/py/base", "src/py/service_1", "components/openresty"] {
        write(dir, &format!("{ctx}/Dockerfile"), "FROM scratch\n");
    }
    fs::create_dir_all(dir.join("src/luamods")).unwrap();
}

fn load_env(files: &[PathBuf], env: &[(&str, &str)]) -> Result<Project, ProjectError> {
    let map: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load(files, &move |k: &str| map.get(k).cloned())
}

const SPEC_EXAMPLE: &str = r#"
[vars]
REPO = "localhost:5000/acme"
TAG  = "dev"
[defaults]
tags = ["${REPO}/{name}:${TAG}"]
cache_from = ["type=registry,ref=${REPO}/{name}:cache"]
cache_to   = ["type=registry,ref=${REPO}/{name}:cache,mode=max"]
push = true
[target.pybase]
context = "src/py/base"
[target.service_1]
context = "src/py/service_1"
args = { BASE = "${REPO}/pybase:${TAG}" }
[target.openresty]
context = "components/openresty"
contexts = { luamods = "src/luamods" }
[group.default]
targets = ["pybase", "service_1", "openresty"]
"#;

#[test]
fn spec_example_resolves() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(d.path(), "bk-build.toml", SPEC_EXAMPLE);
    let p = load_env(std::slice::from_ref(&f), &[]).unwrap();
    assert_eq!(p.root, d.path());
    assert_eq!(p.files, vec![f]);
    assert_eq!(
        p.targets.keys().collect::<Vec<_>>(),
        ["openresty", "pybase", "service_1"]
    );
    let s1 = &p.targets["service_1"];
    assert_eq!(s1.context, d.path().join("src/py/service_1"));
    assert_eq!(s1.dockerfile, d.path().join("src/py/service_1/Dockerfile"));
    assert_eq!(s1.tags, ["localhost:5000/acme/service_1:dev"]);
    assert_eq!(
        s1.cache_to,
        ["type=registry,ref=localhost:5000/acme/service_1:cache,mode=max"]
    );
    assert_eq!(s1.args["BASE"], "localhost:5000/acme/pybase:dev");
    assert!(s1.push && !s1.load && !s1.no_cache);
    assert_eq!(
        p.targets["openresty"].contexts["luamods"],
        ContextSource::Local(d.path().join("src/luamods"))
    );
    assert_eq!(p.groups["default"], ["pybase", "service_1", "openresty"]);
}

#[test]
fn environment_overrides_vars_and_defaults_apply() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(
        d.path(),
        "bk-build.toml",
        r#"
[vars]
TAG = "${TAG:-dev}"
REPO = "r"
FULL = "${REPO}/x:${TAG}"
[target.pybase]
context = "src/py/base"
tags = ["${FULL}", "${MISSING:-fallback}/{name}", "${EMPTY:-e}", "$${LITERAL}"]
args = { PORT = 8080, DEBUG = true }
"#,
    );
    let p = load_env(
        std::slice::from_ref(&f),
        &[("REPO", "env-repo"), ("EMPTY", "")],
    )
    .unwrap();
    assert_eq!(
        p.targets["pybase"].tags,
        ["env-repo/x:dev", "fallback/pybase", "e", "${LITERAL}"]
    );
    assert_eq!(p.targets["pybase"].args["PORT"], "8080");
    assert_eq!(p.targets["pybase"].args["DEBUG"], "true");
    let p = load_env(&[f], &[("TAG", "ci")]).unwrap();
    assert_eq!(p.targets["pybase"].tags[0], "r/x:ci");
}

#[test]
fn later_file_wins_and_paths_follow_the_naming_file() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    write(d.path(), "ci/alt/Dockerfile", "FROM scratch\n");
    fs::create_dir_all(d.path().join("ci/shared")).unwrap();
    let base = write(d.path(), "bk-build.toml", SPEC_EXAMPLE);
    let over = write(
        d.path(),
        "ci/ci.toml",
        r#"
[vars]
TAG = "ci"
[defaults]
push = false
tags = ["only/{name}"]
[target.service_1]
args = { EXTRA = "1" }
platforms = ["linux/amd64"]
[target.openresty]
context = "alt"
contexts = { shared = "shared" }
"#,
    );
    let p = load_env(&[base, over], &[]).unwrap();
    let s1 = &p.targets["service_1"];
    // Scalars and lists are replaced, maps merged entry by entry.
    assert!(!s1.push);
    assert_eq!(s1.tags, ["only/service_1"]);
    assert_eq!(s1.args["BASE"], "localhost:5000/acme/pybase:ci");
    assert_eq!(s1.args["EXTRA"], "1");
    assert_eq!(s1.platforms, ["linux/amd64"]);
    // The context set in ci/ci.toml is relative to ci/, the one from the first file to the root.
    assert_eq!(s1.context, d.path().join("src/py/service_1"));
    let o = &p.targets["openresty"];
    assert_eq!(o.context, d.path().join("ci/alt"));
    assert_eq!(
        o.contexts["luamods"],
        ContextSource::Local(d.path().join("src/luamods"))
    );
    assert_eq!(
        o.contexts["shared"],
        ContextSource::Local(d.path().join("ci/shared"))
    );
    assert_eq!(p.root, d.path());
}

#[test]
fn defaults_maps_merge_and_target_values_win() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(
        d.path(),
        "bk-build.toml",
        r#"
[defaults]
args = { A = "default-a", B = "default-b" }
labels = { team = "core" }
no_cache = true
[target.pybase]
context = "src/py/base"
args = { B = "own-b" }
no_cache = false
"#,
    );
    let t = &load_env(&[f], &[]).unwrap().targets["pybase"];
    assert_eq!(t.args["A"], "default-a");
    assert_eq!(t.args["B"], "own-b");
    assert_eq!(t.labels["team"], "core");
    assert!(!t.no_cache);
}

#[test]
fn option_strings_are_checked_and_their_paths_made_absolute() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(
        d.path(),
        "bk-build.toml",
        r#"
[target.pybase]
context = "src/py/base"
secrets = ["id=npmrc,src=secrets/npmrc", "id=tok,env=TOKEN"]
outputs = ["type=local,dest=out/pybase"]
ssh = ["default"]
"#,
    );
    let t = &load_env(&[f], &[]).unwrap().targets["pybase"];
    let root = d.path().display();
    assert_eq!(
        t.secrets,
        [
            format!("id=npmrc,src={root}/secrets/npmrc"),
            "id=tok,env=TOKEN".to_string()
        ]
    );
    assert_eq!(t.outputs, [format!("type=local,dest={root}/out/pybase")]);
    assert_eq!(t.ssh, ["default"]);
}

/// Loads `toml` (after the skeleton) and returns the error message.
fn error_of(toml: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(d.path(), "bk-build.toml", toml);
    let e = load_env(&[f], &[]).unwrap_err();
    e.to_string()
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} should mention {p:?}");
    }
}

#[test]
fn unknown_key_names_file_line_key_and_suggestion() {
    let msg = error_of("[target.pybase]\ncontext = \"src/py/base\"\ntagz = [\"x\"]\n");
    assert_mentions(
        &msg,
        &[
            "bk-build.toml:3",
            "target.pybase.tagz",
            "unknown key",
            "did you mean `tags`",
        ],
    );
    let msg = error_of("[targets.pybase]\ncontext = \".\"\n");
    assert_mentions(&msg, &["bk-build.toml", "targets", "did you mean [target]"]);
}

#[test]
fn unknown_targets_are_reported_where_they_are_named() {
    let msg = error_of(
        "[target.pybase]\ncontext = \"src/py/base\"\n[group.default]\ntargets = [\"pybase\", \"pybse2\"]\n",
    );
    assert_mentions(
        &msg,
        &[
            "bk-build.toml:4",
            "group.default.targets[1]",
            "`pybse2` is not a target",
            "define [target.pybse2]",
        ],
    );
    let msg = error_of(
        "[target.a]\ncontext = \"src/py/base\"\ndepends_on = [\"pybse\"]\n[target.pybase]\ncontext = \"src/py/base\"\n",
    );
    assert_mentions(&msg, &["target.a.depends_on[0]", "did you mean `pybase`"]);
    let msg =
        error_of("[target.a]\ncontext = \"src/py/base\"\ncontexts = { base = \"target:nope\" }\n");
    assert_mentions(
        &msg,
        &[
            "bk-build.toml:3",
            "target.a.contexts.base",
            "`nope` is not a target",
        ],
    );
}

#[test]
fn bad_types_name_the_expected_form() {
    let msg = error_of("[target.pybase]\ncontext = \"src/py/base\"\npush = \"yes\"\n");
    assert_mentions(
        &msg,
        &[
            "bk-build.toml:3",
            "target.pybase.push",
            "expected true or false",
            "push = true",
        ],
    );
    let msg = error_of("[target.pybase]\ncontext = \"src/py/base\"\ntags = \"x\"\n");
    assert_mentions(
        &msg,
        &[
            "target.pybase.tags",
            "expected an array of strings",
            "tags = [\"...\"]",
        ],
    );
    let msg = error_of("[target.pybase]\ncontext = \"src/py/base\"\ncache_to = [\"type=nope\"]\n");
    assert_mentions(
        &msg,
        &["target.pybase.cache_to[0]", "--cache-to", "write it like"],
    );
}

#[test]
fn missing_directories_explain_relative_paths() {
    let msg = error_of("[target.pybase]\ncontext = \"src/py/nope\"\n");
    assert_mentions(
        &msg,
        &[
            "bk-build.toml:2",
            "target.pybase.context",
            "does not exist",
            "relative to the file",
        ],
    );
    let msg = error_of("[target.pybase]\ncontext = \"src/py/base\"\ndockerfile = \"Dockerfile\"\n");
    assert_mentions(
        &msg,
        &[
            "target.pybase.dockerfile",
            "write dockerfile = \"src/py/base/Dockerfile\"",
        ],
    );
    let msg = error_of(
        "[target.o]\ncontext = \"src/py/base\"\ncontexts = { luamods = \"../src/luamods\" }\n",
    );
    assert_mentions(
        &msg,
        &[
            "target.o.contexts.luamods",
            "does not exist",
            "relative to the file",
        ],
    );
}

#[test]
fn undefined_variable_names_the_key_and_the_ways_to_define_it() {
    let msg = error_of(
        "[target.service_1]\ncontext = \"src/py/service_1\"\nargs = { BASE = \"${REPO}/pybase\" }\n",
    );
    assert_mentions(
        &msg,
        &[
            "bk-build.toml:3",
            "target.service_1.args.BASE",
            "${REPO} is not defined",
            "[vars]",
            "${REPO:-value}",
        ],
    );
    let msg = error_of("[vars]\nA = \"${B}\"\nB = \"${A}\"\n");
    assert_mentions(&msg, &["vars.", "A -> B -> A"]);
}

#[test]
fn defaults_reject_per_target_keys_and_syntax_errors_have_lines() {
    let msg = error_of("[defaults]\ncontext = \".\"\n");
    assert_mentions(
        &msg,
        &["defaults.context", "cannot be a default", "[target.NAME]"],
    );
    let msg = error_of("[target.a]\ncontext = src\n");
    assert_mentions(&msg, &["bk-build.toml:2", "not valid TOML"]);
}

#[test]
fn default_context_is_the_files_directory() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "Dockerfile", "FROM scratch\n");
    let f = write(d.path(), "bk-build.toml", "[target.app]\n");
    let p = load_env(&[f], &[]).unwrap();
    assert_eq!(p.targets["app"].context, d.path());
    assert!(p.groups.is_empty());
}

fn git(dir: &Path, args: &[&str]) -> bool {
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn git_variables_come_from_the_project_root() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(
        d.path(),
        "bk-build.toml",
        "[target.pybase]\ncontext = \"src/py/base\"\ntags = [\"r/{name}:${GIT_SHORT_SHA}\", \"r/{name}:${GIT_BRANCH_SLUG}\", \"${GIT_SHA}\"]\n",
    );
    // Outside a repository the error says which key needed git and how to avoid it.
    let msg = load_env(std::slice::from_ref(&f), &[])
        .unwrap_err()
        .to_string();
    assert_mentions(
        &msg,
        &["target.pybase.tags[0]", "GIT_SHORT_SHA", "git checkout"],
    );

    if !git(d.path(), &["init", "-q", "-b", "Feature/X"]) {
        return; // no usable git here; the error path above was still checked
    }
    assert!(git(d.path(), &["add", "."]));
    assert!(git(d.path(), &["commit", "-q", "-m", "init"]));
    let p = load_env(&[f], &[]).unwrap();
    let tags = &p.targets["pybase"].tags;
    assert!(
        tags[0].starts_with("r/pybase:") && tags[0].len() >= "r/pybase:".len() + 7,
        "{tags:?}"
    );
    assert_eq!(tags[1], "r/pybase:feature-x");
    assert_eq!(tags[2].len(), 40);
    assert!(tags[2].starts_with(&tags[0]["r/pybase:".len()..]));
}

#[test]
fn discover_prefers_bk_build_toml_then_compose_names() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        discover(d.path()),
        Err(ProjectError::NotFound { .. })
    ));
    let msg = discover(d.path()).unwrap_err().to_string();
    assert_mentions(&msg, &["bk-build.toml", "docker-compose.yml", "-f"]);
    write(d.path(), "docker-compose.yml", "services: {}\n");
    assert_eq!(
        discover(d.path()).unwrap(),
        [d.path().join("docker-compose.yml")]
    );
    write(d.path(), "compose.yaml", "services: {}\n");
    assert_eq!(discover(d.path()).unwrap(), [d.path().join("compose.yaml")]);
    write(d.path(), "compose.override.yml", "services: {}\n");
    assert_eq!(
        discover(d.path()).unwrap(),
        [
            d.path().join("compose.yaml"),
            d.path().join("compose.override.yml")
        ]
    );
    write(d.path(), "bk-build.toml", "");
    assert_eq!(
        discover(d.path()).unwrap(),
        [d.path().join("bk-build.toml")]
    );
}

#[test]
fn mixing_formats_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "bk-build.toml", "");
    let b = write(d.path(), "compose.yml", "services: {}\n");
    let msg = load_env(&[a, b], &[]).unwrap_err().to_string();
    assert_mentions(
        &msg,
        &[
            "compose.yml",
            "cannot merge",
            "only bk-build.toml files, or only compose and bake files",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// compose
// ---------------------------------------------------------------------------------------------

const COMPOSE_BASE: &str = r#"
name: Mono
services:
  pybase:
    image: ${REPO:?set REPO}/pybase:${TAG-latest}
    build:
      context: src/py/base
      args:
        BASE_IMAGE: ${BASE_IMAGE:-localhost:5000/busybox:latest}
      labels:
        - team=core
        - tier=base
  service_1:
    image: $REPO/service_1:${TAG-latest}
    build:
      context: src/py/service_1
      args:
        - REPO=${REPO}
        - TAG=${TAG-latest}
        - FROM_ENV
      tags: ["extra/service_1"]
      cache_from: ["type=registry,ref=${REPO}/service_1:cache"]
    depends_on: [pybase]
  openresty:
    build:
      context: components/openresty
      dockerfile: Dockerfile
      additional_contexts:
        luamods: src/luamods
        base: service:pybase
  db:
    image: postgres
"#;

const COMPOSE_CI: &str = r#"
services:
  pybase:
    build:
      labels:
        tier: ci
      x-bk-build:
        push: true
  service_1:
    image: $REPO/service_1:ci
    build:
      args:
        TAG: ci
      cache_from:
        - type=registry,ref=$${literal}/x
      target: final
"#;

#[test]
fn compose_two_files_merge_the_compose_way() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    write(
        d.path(),
        ".env",
        "# comment\nREPO=localhost:5000/acme\nexport TAG=\"dev\" \n",
    );
    let a = write(d.path(), "docker-compose.yml", COMPOSE_BASE);
    let b = write(d.path(), "ci/docker-compose.ci.yml", COMPOSE_CI);
    let p = load_env(&[a, b], &[("FROM_ENV", "yes")]).unwrap();
    assert_eq!(p.root, d.path());
    assert_eq!(
        p.targets.keys().collect::<Vec<_>>(),
        ["openresty", "pybase", "service_1"]
    );

    let base = &p.targets["pybase"];
    assert_eq!(base.tags, ["localhost:5000/acme/pybase:dev"]);
    assert_eq!(base.args["BASE_IMAGE"], "localhost:5000/busybox:latest");
    // Maps merge key by key: `team` stays, `tier` is overridden.
    assert_eq!(base.labels["team"], "core");
    assert_eq!(base.labels["tier"], "ci");
    assert!(base.push);

    let s1 = &p.targets["service_1"];
    // Scalars are replaced; the paths in the second file are still relative to the first.
    assert_eq!(
        s1.tags,
        ["localhost:5000/acme/service_1:ci", "extra/service_1"]
    );
    assert_eq!(s1.context, d.path().join("src/py/service_1"));
    assert_eq!(s1.target.as_deref(), Some("final"));
    assert_eq!(s1.args["REPO"], "localhost:5000/acme");
    assert_eq!(s1.args["TAG"], "ci");
    assert_eq!(s1.args["FROM_ENV"], "yes");
    // Lists are appended.
    assert_eq!(
        s1.cache_from,
        [
            "type=registry,ref=localhost:5000/acme/service_1:cache",
            "type=registry,ref=${literal}/x"
        ]
    );
    // compose's depends_on is about containers, not builds.
    assert!(s1.depends_on.is_empty());

    let o = &p.targets["openresty"];
    assert_eq!(o.tags, ["mono-openresty"]);
    assert_eq!(
        o.contexts["luamods"],
        ContextSource::Local(d.path().join("src/luamods"))
    );
    assert_eq!(o.contexts["base"], ContextSource::Target("pybase".into()));
}

#[test]
fn compose_environment_beats_dotenv_and_required_vars_fail() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    write(d.path(), ".env", "REPO=from-dotenv\nTAG='single $quoted'\n");
    let a = write(d.path(), "compose.yaml", COMPOSE_BASE);
    let p = load_env(std::slice::from_ref(&a), &[("REPO", "from-env")]).unwrap();
    assert_eq!(p.targets["pybase"].tags, ["from-env/pybase:single $quoted"]);

    fs::remove_file(d.path().join(".env")).unwrap();
    let msg = load_env(&[a], &[]).unwrap_err().to_string();
    assert_mentions(
        &msg,
        &["compose.yaml", "services.pybase.image", "set REPO", ".env"],
    );
}

#[test]
fn compose_provenance_and_sbom_are_attestations_as_buildx_reads_them() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let a = write(
        d.path(),
        "compose.yaml",
        "services:\n  pybase:\n    build:\n      context: src/py/base\n      provenance: mode=max\n      sbom: true\n  off:\n    build:\n      context: src/py/base\n      provenance: false\n",
    );
    let p = load_env(&[a], &[]).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        spelled(&p.targets["pybase"].attest),
        ["type=sbom", "type=provenance,mode=max"]
    );
    assert_eq!(
        spelled(&p.targets["off"].attest),
        ["type=provenance,disabled=true"]
    );
    let b = write(
        d.path(),
        "bad.yaml",
        "services:\n  pybase:\n    build:\n      context: src/py/base\n      provenance: mode\n",
    );
    let msg = load_env(&[b], &[]).unwrap_err().to_string();
    assert_mentions(
        &msg,
        &["bad.yaml:5", "services.pybase.build.provenance", "mode"],
    );
}

#[test]
fn compose_unset_variables_warn_and_unknown_keys_fail() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let a = write(
        d.path(),
        "compose.yaml",
        "services:\n  pybase:\n    image: r/pybase:${NOPE}\n    build:\n      context: src/py/base\n      isolation: hyperv\n",
    );
    let p = load_env(&[a], &[]).unwrap();
    assert_eq!(p.targets["pybase"].tags, ["r/pybase:"]);
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("NOPE") && w.contains("services.pybase.image")));
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("services.pybase.build.isolation")));

    let b = write(
        d.path(),
        "other.yaml",
        "services:\n  pybase:\n    build:\n      context: src/py/base\n      dockerfil: X\n",
    );
    let msg = load_env(&[b], &[]).unwrap_err().to_string();
    assert_mentions(
        &msg,
        &[
            "other.yaml",
            "services.pybase.build.dockerfil",
            "did you mean `dockerfile`",
        ],
    );
}

#[test]
fn compose_errors_name_the_file_that_set_the_key() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let a = write(
        d.path(),
        "compose.yaml",
        "services:\n  pybase:\n    build: src/py/base\n",
    );
    let b = write(
        d.path(),
        "override.yaml",
        "services:\n  pybase:\n    build:\n      context: src/py/gone\n",
    );
    // A missing context only makes that target unbuildable; the message says where it was set.
    let p = load_env(&[a, b], &[]).unwrap();
    let msg = p.targets["pybase"].unavailable.clone().unwrap();
    assert_mentions(
        &msg,
        &[
            "override.yaml:4",
            "services.pybase.build.context",
            "does not exist",
            "project directory",
        ],
    );
}

#[test]
fn compose_secrets_and_ssh_become_option_strings() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let a = write(
        d.path(),
        "compose.yaml",
        r#"
services:
  pybase:
    build:
      context: src/py/base
      secrets: [npmrc, {source: token, target: tok}]
      ssh: {default: keys/id}
secrets:
  npmrc: {file: ./npmrc}
  token: {environment: TOKEN}
"#,
    );
    let t = &load_env(&[a], &[]).unwrap().targets["pybase"];
    let root = d.path().display();
    assert_eq!(
        t.secrets,
        [
            format!("id=npmrc,src={root}/npmrc"),
            "id=tok,env=TOKEN".to_string()
        ]
    );
    assert_eq!(t.ssh, [format!("default={root}/keys/id")]);
}

#[test]
fn dotenv_syntax() {
    let env = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
    let vars = compose_dotenv(
        "A=1\n  # c\nBARE\nexport B = two words # comment\nH: colon style\nC=\"x\\ny ${A}\"\nD='${A}'\nE=\"multi\nline\"\nF=$HOME/x\nG=\n",
        &env,
    );
    assert_eq!(vars["A"], "1");
    assert_eq!(vars["B"], "two words");
    assert_eq!(vars["C"], "x\ny 1");
    assert_eq!(vars["D"], "${A}");
    assert_eq!(vars["E"], "multi\nline");
    assert_eq!(vars["F"], "/home/u/x");
    assert_eq!(vars["G"], "");
    assert_eq!(vars["H"], "colon style");
}

fn compose_dotenv(text: &str, env: &dyn Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    write(d.path(), ".env", text);
    let mut keys = String::new();
    for k in ["A", "B", "C", "D", "E", "F", "G", "H"] {
        keys.push_str(&format!("        {k}: ${{{k}}}\n"));
    }
    let f = write(
        d.path(),
        "compose.yaml",
        &format!(
            "services:\n  pybase:\n    build:\n      context: src/py/base\n      labels:\n{keys}"
        ),
    );
    load(&[f], env).unwrap().targets["pybase"].labels.clone()
}

#[test]
fn json_has_bake_print_shape() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(d.path(), "bk-build.toml", SPEC_EXAMPLE);
    let p = load_env(&[f], &[]).unwrap();
    let j = to_json(&p);
    assert_eq!(j["group"]["default"]["targets"][1], "service_1");
    let s1 = &j["target"]["service_1"];
    assert_eq!(s1["tags"][0], "localhost:5000/acme/service_1:dev");
    assert_eq!(s1["args"]["BASE"], "localhost:5000/acme/pybase:dev");
    assert_eq!(s1["push"], true);
    assert_eq!(s1["target"], serde_json::Value::Null);
    assert_eq!(
        j["target"]["openresty"]["contexts"]["luamods"],
        d.path().join("src/luamods").to_string_lossy().as_ref()
    );
}

// ---------------------------------------------------------------------------------------------
// examples/monorepo
// ---------------------------------------------------------------------------------------------

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/monorepo")
        .join(file)
}

#[test]
fn example_toml_and_compose_describe_the_same_images() {
    let toml = load_env(&[example("bk-build.toml")], &[]).unwrap();
    let compose = load_env(
        &[
            example("docker-compose.yml"),
            example("docker-compose.ci.yml"),
        ],
        &[],
    )
    .unwrap();
    assert!(compose.warnings.is_empty(), "{:?}", compose.warnings);
    assert_eq!(
        toml.targets.keys().collect::<Vec<_>>(),
        ["openresty", "pybase", "service_1", "service_2"]
    );
    assert_eq!(toml.targets, compose.targets);
    let o = &toml.targets["openresty"];
    assert_eq!(o.tags, ["localhost:5000/acme/openresty:dev"]);
    assert_eq!(
        o.contexts["luamods"],
        ContextSource::Local(example("src/luamods"))
    );
    // The environment retargets both the same way.
    let env = [("REPO", "localhost:5000/t1"), ("TAG", "ci")];
    let toml = load_env(&[example("bk-build.toml")], &env).unwrap();
    let compose = load_env(
        &[
            example("docker-compose.yml"),
            example("docker-compose.ci.yml"),
        ],
        &env,
    )
    .unwrap();
    assert_eq!(toml.targets, compose.targets);
    assert_eq!(
        toml.targets["service_2"].tags,
        ["localhost:5000/t1/service_2:ci"]
    );
}

// ---------------------------------------------------------------------------------------------
// compose as the compose spec says
// ---------------------------------------------------------------------------------------------

/// A compose project in a temporary directory: `(path, text)` files, Dockerfiles for `ctxs`.
fn compose_project(files: &[(&str, &str)], ctxs: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (p, text) in files {
        write(d.path(), p, text);
    }
    for c in ctxs {
        write(d.path(), &format!("{c}/Dockerfile"), "FROM scratch\n");
    }
    d
}

fn load_in(d: &Path, files: &[&str], env: &[(&str, &str)]) -> Result<Project, ProjectError> {
    let files: Vec<PathBuf> = files.iter().map(|f| d.join(f)).collect();
    load_env(&files, env)
}

#[test]
fn compose_merge_keys_merge_at_every_level() {
    let d = compose_project(
        &[(
            "compose.yaml",
            "x-a: &a {build: {context: app}}\nx-b: &b {<<: *a, image: reg/x}\nservices: {s: {<<: *b}}\n",
        )],
        &["app"],
    );
    let p = load_in(d.path(), &["compose.yaml"], &[]).unwrap();
    let s = &p.targets["s"];
    assert_eq!(s.context, d.path().join("app"));
    assert_eq!(s.tags, ["reg/x"]);
}

#[test]
fn compose_extends_in_the_same_file_and_from_another() {
    let d = compose_project(
        &[
            (
                "compose.yaml",
                "services:\n  base:\n    build:\n      context: app\n      args: {A: '1', B: base}\n  child:\n    extends: base\n    build:\n      args: {B: child}\n  only:\n    extends: {service: base}\n  far:\n    extends: {file: sub/base.yaml, service: common}\n",
            ),
            (
                "sub/base.yaml",
                "services:\n  root:\n    build: {context: ctx, args: {R: root}}\n  common:\n    extends: root\n    build: {args: {C: common}}\n",
            ),
        ],
        &["app", "sub/ctx"],
    );
    let p = load_in(d.path(), &["compose.yaml"], &[]).unwrap();
    let child = &p.targets["child"];
    assert_eq!(child.context, d.path().join("app"));
    assert_eq!(child.args["A"], "1");
    assert_eq!(child.args["B"], "child");
    assert_eq!(p.targets["only"].args["B"], "base");
    let far = &p.targets["far"];
    assert_eq!(far.context, d.path().join("sub/ctx"));
    assert_eq!(
        (far.args["R"].as_str(), far.args["C"].as_str()),
        ("root", "common")
    );

    let d = compose_project(
        &[(
            "compose.yaml",
            "services:\n  a: {extends: b, build: app}\n  b: {extends: a}\n",
        )],
        &["app"],
    );
    let msg = load_in(d.path(), &["compose.yaml"], &[])
        .unwrap_err()
        .to_string();
    assert_mentions(&msg, &["compose.yaml", "extends cycle"]);

    // A missing extends file: the error names where it is named (file, line, key), not the
    // missing file alone.
    let d = compose_project(
        &[(
            "compose.yaml",
            "services:\n  a:\n    build: app\n    extends: {file: nope.yaml, service: b}\n",
        )],
        &["app"],
    );
    let msg = load_in(d.path(), &["compose.yaml"], &[])
        .unwrap_err()
        .to_string();
    let first = msg.lines().next().unwrap_or_default();
    assert_mentions(
        first,
        &["compose.yaml:4", "services.a.extends.file", "nope.yaml"],
    );
}

#[test]
fn compose_reset_and_override_tags_in_a_later_file() {
    let d = compose_project(
        &[
            (
                "compose.yaml",
                "services:\n  app:\n    build:\n      context: app\n      args: {KEEP: '1', DROP: '2'}\n      labels: {a: '1'}\n      cache_from: [type=registry,ref=r/c]\n",
            ),
            (
                "compose.override.yaml",
                "services:\n  app:\n    build:\n      args:\n        DROP: !reset null\n      labels: !override {b: '2'}\n      cache_from: !reset []\n",
            ),
        ],
        &["app"],
    );
    let files = discover(d.path()).unwrap();
    assert_eq!(files.len(), 2);
    let p = load_env(&files, &[]).unwrap();
    let t = &p.targets["app"];
    assert_eq!(t.args.keys().collect::<Vec<_>>(), ["KEEP"]);
    assert_eq!(t.labels.keys().collect::<Vec<_>>(), ["b"]);
    assert!(t.cache_from.is_empty());
}

#[test]
fn compose_project_name_default_names_and_paths_from_home() {
    let d = compose_project(
        &[(
            "compose.yaml",
            "name: MyProj\nservices:\n  WebApp:\n    platform: ${DOCKER_PLATFORM:-}\n    build:\n      context: app\n      args: {P: $COMPOSE_PROJECT_NAME}\n      ssh: [id=~/agent.sock]\n",
        )],
        &["app"],
    );
    let p = load_in(d.path(), &["compose.yaml"], &[("HOME", "/home/u")]).unwrap();
    let t = &p.targets["WebApp"];
    assert_eq!(t.tags, ["myproj-webapp"]);
    assert_eq!(t.args["P"], "myproj");
    assert_eq!(t.ssh, ["id=/home/u/agent.sock"]);
    assert!(t.platforms.is_empty());
    // COMPOSE_PROJECT_NAME from .env wins over `name:`.
    write(d.path(), ".env", "COMPOSE_PROJECT_NAME=FromDotenv\n");
    let p = load_in(d.path(), &["compose.yaml"], &[]).unwrap();
    assert_eq!(p.targets["WebApp"].tags, ["fromdotenv-webapp"]);
    assert_eq!(p.targets["WebApp"].args["P"], "FromDotenv");
}

#[test]
fn compose_file_env_files_and_profiles_come_from_compose_variables() {
    let d = compose_project(
        &[
            ("base.yml", "services:\n  a: {build: app}\n  b: {build: app, profiles: [debug]}\n  c: {build: app, profiles: [tools]}\n"),
            ("extra", "services:\n  a: {build: {args: {V: $V}}}\n"),
            ("one.env", "V=one\nCOMPOSE_PROFILES=tools\n"),
        ],
        &["app"],
    );
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    // COMPOSE_FILE: any file name, the path separator list, relative to the directory.
    let files = discover_with_env(d.path(), &env(&[("COMPOSE_FILE", "base.yml:extra")])).unwrap();
    assert_eq!(files, [d.path().join("base.yml"), d.path().join("extra")]);
    write(
        d.path(),
        ".env",
        "COMPOSE_FILE=base.yml;extra\nCOMPOSE_PATH_SEPARATOR=;\nV=dotenv\nCOMPOSE_PROFILES=debug\n",
    );
    assert_eq!(discover_with_env(d.path(), &env(&[])).unwrap(), files);

    let p = load_env(&files, &[]).unwrap();
    assert_eq!(p.targets["a"].args["V"], "dotenv");
    assert_eq!(p.targets.len(), 3, "every service that builds is a target");
    assert_eq!(p.groups["default"], ["a", "b"]);
    let p = load_env(&files, &[("COMPOSE_PROFILES", "*")]).unwrap();
    assert_eq!(p.groups["default"], ["a", "b", "c"]);

    // COMPOSE_ENV_FILES replaces .env (relative to the current directory).
    let one = d.path().join("one.env");
    let p = load_env(&files, &[("COMPOSE_ENV_FILES", one.to_str().unwrap())]).unwrap();
    assert_eq!(p.targets["a"].args["V"], "one");
    assert_eq!(p.groups["default"], ["a", "c"]);
}

#[test]
fn compose_include_short_and_long_form() {
    let d = compose_project(
        &[
            (
                "compose.yaml",
                "include:\n  - lib/compose.yaml\n  - path: [svc/compose.yaml]\n    project_directory: svc\n    env_file: svc/custom.env\nservices:\n  app: {build: app}\n  lib: {build: {args: {MINE: '1'}}}\n",
            ),
            ("lib/compose.yaml", "services:\n  lib:\n    build:\n      args: {L: \"${LIBVAR:-none}\"}\n"),
            ("lib/.env", "LIBVAR=lib\n"),
            ("svc/compose.yaml", "services:\n  svc: {build: {context: src, args: {S: $SVCVAR}}}\n"),
            ("svc/custom.env", "SVCVAR=custom\n"),
        ],
        &["app", "lib", "svc/src"],
    );
    let p = load_in(d.path(), &["compose.yaml"], &[]).unwrap();
    let lib = &p.targets["lib"];
    // The included project's default context is its own directory; the including file's
    // definition of the same service is merged over it.
    assert_eq!(lib.context, d.path().join("lib"));
    assert_eq!(lib.args["L"], "lib");
    assert_eq!(lib.args["MINE"], "1");
    assert_eq!(p.targets["svc"].context, d.path().join("svc/src"));
    assert_eq!(p.targets["svc"].args["S"], "custom");

    write(d.path(), "lib/compose.yaml", "include: [../compose.yaml]\n");
    let msg = load_in(d.path(), &["compose.yaml"], &[])
        .unwrap_err()
        .to_string();
    assert_mentions(&msg, &["include cycle"]);
}

#[test]
fn compose_missing_context_inline_dockerfile_and_build_keys() {
    let d = compose_project(
        &[(
            "compose",
            r#"services:
  sub:
    build: vendor/missing
  inline:
    build:
      context: app
      dockerfile_inline: "FROM scratch\n"
  keys:
    build:
      context: app
      network: host
      extra_hosts: {db: 10.0.0.5, multi: [10.0.0.7, "::1"]}
      shm_size: 64m
      ulimits: {nofile: {soft: 10, hard: 20}, nproc: 5}
      privileged: true
      x-bake:
        tags: "reg/a reg/b"
        no-cache-filter: [final]
  custom_net:
    build:
      context: app
      network: mynet
"#,
        )],
        &["app"],
    );
    let p = load_in(d.path(), &["compose"], &[]).unwrap();
    let sub = p.targets["sub"].unavailable.clone().unwrap();
    assert_mentions(
        &sub,
        &["compose:3", "services.sub.build.context", "does not exist"],
    );
    assert!(p.targets["inline"].unavailable.is_none());
    assert!(p.targets["custom_net"]
        .unavailable
        .clone()
        .unwrap()
        .contains("mynet"));

    let inline = &p.targets["inline"];
    assert!(inline
        .dockerfile
        .starts_with(d.path().join(".bk-build/inline")));
    assert!(!inline.dockerfile.exists(), "loading writes nothing");
    materialize(&p).unwrap();
    assert_eq!(
        fs::read_to_string(&inline.dockerfile).unwrap(),
        "FROM scratch\n"
    );

    let k = &p.targets["keys"];
    assert_eq!(k.network, Some(crate::options::Network::Host));
    assert_eq!(
        crate::project::spelled(&k.extra_hosts),
        ["db=10.0.0.5", "multi=10.0.0.7", "multi=::1"]
    );
    assert_eq!(k.shm_size, Some(64 << 20));
    assert_eq!(
        crate::project::spelled(&k.ulimits),
        ["nofile=10:20", "nproc=5:5"]
    );
    assert_eq!(k.entitlements, ["security.insecure", "network.host"]);
    assert_eq!(k.tags, ["reg/a", "reg/b"]);
    assert_eq!(k.no_cache_filter, ["final"]);

    write(
        d.path(),
        "bad.yaml",
        "services:\n  a:\n    build:\n      context: app\n      ulimits: {nofile: x}\n",
    );
    let msg = load_in(d.path(), &["bad.yaml"], &[])
        .unwrap_err()
        .to_string();
    assert_mentions(&msg, &["bad.yaml:5", "services.a.build.ulimits.nofile"]);
}

/// Every option string is parsed at load, by every front end: a bad one fails there, naming
/// the file, the line and the key (never later, when the target is built), and a good one is
/// a typed value whose client-side paths are absolute.
#[test]
fn option_strings_are_parsed_at_load_by_every_front_end() {
    // (key in bk-build.toml, in compose `build:`, in a bake target, a bad value)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "outputs",
            "x-bk-build: {outputs: [BAD]}",
            "output",
            "type=nope",
        ),
        ("cache_from", "cache_from: [BAD]", "cache-from", "type=nope"),
        (
            "cache_to",
            "cache_to: [BAD]",
            "cache-to",
            "type=registry,mode=bogus",
        ),
        ("secrets", "x-bake: {secret: [BAD]}", "secret", "src=only"),
        ("ssh", "x-bake: {ssh: [BAD]}", "ssh", "a b=c"),
        ("platforms", "platforms: [BAD]", "platforms", "linux"),
    ];
    for (toml_key, compose_line, bake_key, bad) in cases {
        let d = tempfile::tempdir().unwrap();
        skeleton(d.path());
        let toml = write(
            d.path(),
            "bk-build.toml",
            &format!("[target.a]\ncontext = \"src/py/base\"\n{toml_key} = [\"{bad}\"]\n"),
        );
        let compose = write(
            d.path(),
            "compose.yaml",
            &format!(
                "services:\n  a:\n    build:\n      context: src/py/base\n      {}\n",
                compose_line.replace("BAD", &format!("\"{bad}\""))
            ),
        );
        let bake = write(
            d.path(),
            "docker-bake.hcl",
            &format!(
                "target \"a\" {{\n  context = \"src/py/base\"\n  {bake_key} = [\"{bad}\"]\n}}\n"
            ),
        );
        for (file, line) in [(&toml, 3), (&compose, 5), (&bake, 3)] {
            let e = load_env(std::slice::from_ref(file), &[])
                .unwrap_err()
                .to_string();
            let name = file.file_name().unwrap().to_string_lossy();
            assert!(
                e.contains(&format!("{name}:{line}")) && e.contains("is not a valid"),
                "{name}, {toml_key}={bad}: {e}"
            );
        }
    }

    // Good values are typed, with paths made absolute against the naming file.
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let bake = write(
        d.path(),
        "docker-bake.hcl",
        "target \"a\" {\n  context = \"src/py/base\"\n  output = [\"type=tar,dest=out.tar\"]\n  cache-to = [\"type=local,dest=cache\"]\n  secret = [\"id=s,src=s.txt\"]\n  network = \"none\"\n  ulimits = [\"nofile=1:2\"]\n}\n",
    );
    let p = load_env(&[bake], &[]).unwrap();
    let t = &p.targets["a"];
    let out = t.outputs[0].value();
    assert_eq!(out.kind, crate::options::OutputKind::Tar);
    assert!(
        matches!(&out.dest, Some(crate::options::OutputDest::Path(p)) if p.is_absolute()),
        "{out:?}"
    );
    let cache = &t.cache_to[0].value()[0];
    assert!(
        cache.local.as_ref().is_some_and(|l| l.dir.is_absolute()),
        "{cache:?}"
    );
    assert!(
        matches!(&t.secrets[0].value().source, crate::options::SecretSource::File(p) if p.is_absolute())
    );
    assert_eq!(t.network, Some(crate::options::Network::None));
    assert_eq!(t.ulimits[0].soft, 1);
}

#[test]
fn builders_are_read_with_paths_from_their_file_and_checked() {
    let d = tempfile::tempdir().unwrap();
    skeleton(d.path());
    let f = write(
        d.path(),
        "bk-build.toml",
        "[vars]\nHOST = \"bk-0.build\"\n\n[target.pybase]\ncontext = \"src/py/base\"\n\n\
         [builders.b0]\naddr = \"tcp://${HOST}:1234\"\ntlsdir = \"certs\"\njobs = 3\n\n\
         [builders.arm]\naddr = \" unix:///run/arm.sock \"\nplatforms = [\"linux/arm64\"]\n",
    );
    let p = load_env(&[f], &[]).unwrap();
    // In the order written (the first is where engine-bound images go), not by name.
    let names: Vec<&str> = p.builders.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["b0", "arm"]);
    let b0 = &p.builders[0];
    assert_eq!(b0.addr, "tcp://bk-0.build:1234");
    assert_eq!(b0.tlsdir.as_deref(), Some(d.path().join("certs").as_path()));
    assert_eq!(b0.jobs, Some(3));
    assert!(b0.file.ends_with("bk-build.toml") && b0.file.is_absolute());
    assert_eq!(p.builders[1].addr, "unix:///run/arm.sock");
    assert_eq!(p.builders[1].platforms, ["linux/arm64"]);

    let msg = error_of("[builders.x]\njobs = 2\n");
    assert_mentions(&msg, &["builders.x", "no `addr`", "addr = "]);
    let msg = error_of("[builders.x]\naddr = \"tcp://h:1\"\njobs = 0\n");
    assert_mentions(&msg, &["builders.x.jobs", "at least 1"]);
    let msg = error_of("[builders.x]\naddr = \"tcp://h:1\"\nplatforms = [\"arm64\"]\n");
    assert_mentions(
        &msg,
        &["builders.x.platforms[0]", "not a platform", "linux/arm64"],
    );
    let msg = error_of("[builders.x]\naddr = \"tcp://h:1\"\nplatforms = [\"linux/arm/v7/x\"]\n");
    assert_mentions(&msg, &["builders.x.platforms[0]", "not a platform"]);
    let msg = error_of("[builders.x]\naddr = \"tcp://h:1\"\nweight = 2\n");
    assert_mentions(&msg, &["builders.x.weight", "unknown key"]);
}

#[test]
fn builders_alone_are_read_past_a_broken_target_but_not_past_their_own_mistakes() {
    let d = tempfile::tempdir().unwrap();
    let env = |k: &str| (k == "PORT").then(|| "1234".to_string());
    let f = write(
        d.path(),
        "bk-build.toml",
        "[vars]\nHOST = \"bk-0.build\"\n\n[target.gone]\ncontext = \"no-such-dir\"\n\n\
         [group.default]\ntargets = [\"nope\"]\n\n\
         [builders.b0]\naddr = \"tcp://${HOST}:${PORT}\"\n",
    );
    assert!(load(std::slice::from_ref(&f), &env).is_err());
    let p = load_builders(std::slice::from_ref(&f), &env).unwrap();
    assert!(p.targets.is_empty() && p.groups.is_empty());
    assert_eq!(p.files, std::slice::from_ref(&f));
    assert_eq!(p.builders.len(), 1);
    assert_eq!(p.builders[0].addr, "tcp://bk-0.build:1234");
    // Its own section, its variables and the file's shape are still checked.
    for (text, mentions) in [
        ("[builders.x]\njobs = 2\n", &["builders.x", "no `addr`"][..]),
        (
            "[vars]\n1X = \"a\"\n",
            &["1X", "not a valid variable name"][..],
        ),
        (
            "[bulders.x]\naddr = \"tcp://h:1\"\n",
            &["did you mean [builders]"][..],
        ),
    ] {
        let f = write(d.path(), "bk-build.toml", text);
        let msg = load_builders(&[f], &env).unwrap_err().to_string();
        assert_mentions(&msg, mentions);
    }
}
