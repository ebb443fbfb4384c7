//! `bk-build bake`'s buildx flags on the real daemon: `--set` (patterns, args, platform,
//! output) changes what is built and what `plan` says; `--push` pushes, `--load` loads into the
//! engine, `--no-cache` rebuilds a cached step, attestations are attached like buildx's, `--allow`
//! grants what a target asks for; `--call` and `--check` evaluate every target as buildx does;
//! `--list` and every flag's `--print` effect are compared with `docker buildx bake` on the
//! same compose file.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::bake_print::{canon_bk, canon_buildx};
use support::*;

/// A compose project buildx and bk-build both read: `app` (a build arg), `stamp` (a step whose
/// result differs on every run), `multi` (no RUN step, so any platform builds), `pushed`
/// (pushes by itself), `hostnet` (asks for the host network), `app-worker` (matched by `app*`).
fn project(dir: &Path) {
    let base = base_image();
    write(
        &dir.join("compose.yaml"),
        r#"
services:
  app:
    image: ${REG}/${NS}/app:1
    build:
      context: app
      args: {GREETING: hello}
  app-worker:
    image: ${REG}/${NS}/app-worker:1
    build:
      context: app
  stamp:
    image: ${REG}/${NS}/stamp:1
    build:
      context: stamp
  multi:
    image: ${REG}/${NS}/multi:1
    build:
      context: multi
  pushed:
    image: ${REG}/${NS}/pushed:1
    build:
      context: multi
      x-bake:
        output: ["type=registry"]
  hostnet:
    image: ${REG}/${NS}/hostnet:1
    build:
      context: app
      network: host
"#,
    );
    write(
        &dir.join("app/Dockerfile"),
        format!("FROM {base}\nARG GREETING=none\nRUN echo \"$GREETING\" > /greeting.txt\n"),
    );
    write(
        &dir.join("app/Dockerfile.alt"),
        format!("FROM {base}\nRUN echo alt > /alt.txt\n"),
    );
    write(
        &dir.join("stamp/Dockerfile"),
        format!("FROM {base}\nRUN cat /proc/sys/kernel/random/uuid > /stamp.txt\n"),
    );
    write(
        &dir.join("multi/Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    );
    write(&dir.join("multi/hello.txt"), "hello\n");
    write(&dir.join("other/Dockerfile"), format!("FROM {base}\n"));
    write(&dir.join("npmrc"), "token\n");
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    ns: String,
}

impl Env {
    fn new(prefix: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        project(&dir);
        Env {
            _tmp: tmp,
            dir,
            ns: unique(prefix),
        }
    }

    fn cmd(&self, mut cmd: std::process::Command, args: &[&str]) -> Output {
        cmd.current_dir(&self.dir)
            .args(args)
            .env("REG", registry())
            .env("NS", &self.ns)
            .env_remove("SOURCE_DATE_EPOCH");
        for (k, _) in std::env::vars() {
            if k.starts_with("COMPOSE_") {
                cmd.env_remove(k);
            }
        }
        run(&mut cmd)
    }

    fn bk(&self, args: &[&str]) -> Output {
        self.cmd(bk(), args)
    }

    fn bake(&self, args: &[&str]) -> Output {
        let mut all = vec!["bake", "--progress", "plain"];
        all.extend_from_slice(args);
        let out = self.bk(&all);
        assert!(
            out.status.success(),
            "bake {args:?} failed:\n{}",
            stderr(&out)
        );
        out
    }

    /// `plan ARGS`: the action and reasons of `target`.
    fn plan(&self, target: &str, args: &[&str]) -> String {
        let mut all = vec!["plan", target];
        all.extend_from_slice(args);
        let out = self.bk(&all);
        assert!(
            out.status.success(),
            "plan {args:?} failed:\n{}",
            stderr(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(target))
            .unwrap_or_else(|| panic!("no plan line for {target}:\n{text}"))
            .to_string()
    }

    fn read(&self, rel: &str) -> String {
        let p = self.dir.join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.ns)
    }

    fn tag(&self, name: &str) -> String {
        format!("{}/{}/{name}:1", registry(), self.ns)
    }
}

impl Drop for Env {
    /// Removes the images this test's builds left in the engine (a pushed image stays there
    /// too on a Docker Engine with the containerd image store).
    fn drop(&mut self) {
        let out = run(docker().args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]));
        let mine: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("/{}/", self.ns)))
            .map(str::to_string)
            .collect();
        if !mine.is_empty() {
            run(docker().args(["image", "rm"]).args(&mine));
        }
    }
}

/// The image config of `repo:tag` in the registry (the image manifest's, for an index the
/// first one that is not an attestation).
fn image_config(repo: &str, tag: &str) -> Value {
    let mut m = registry_json(&format!("/v2/{repo}/manifests/{tag}"));
    if let Some(list) = m["manifests"].as_array() {
        let d = list
            .iter()
            .find(|d| d["annotations"]["vnd.docker.reference.type"].is_null())
            .expect("an image manifest in the index")["digest"]
            .as_str()
            .unwrap()
            .to_string();
        m = registry_json(&format!("/v2/{repo}/manifests/{d}"));
    }
    let config = m["config"]["digest"].as_str().expect("config digest");
    registry_json(&format!("/v2/{repo}/blobs/{config}"))
}

#[test]
fn set_args_and_platform_change_what_is_built_and_what_plan_says() {
    let e = Env::new("bakecli-set");
    let out = "--set=app.output=type=local,dest=out/app";
    e.bake(&["app", out]);
    assert_eq!(e.read("out/app/greeting.txt"), "hello\n");

    // The override is an input: plan says build, and why.
    let bye = "--set=app.args.GREETING=bye";
    let line = e.plan("app", &[out, bye]);
    assert!(
        line.contains("build") && line.contains("arg GREETING changed"),
        "{line}"
    );
    e.bake(&["app", out, bye]);
    assert_eq!(e.read("out/app/greeting.txt"), "bye\n");
    // The same overrides again: nothing to do.
    assert!(e.plan("app", &[out, bye]).contains("skip"));

    // `*.platform` on a pushed image: the registry gets an arm64 image.
    e.bake(&["multi", "--push"]);
    assert_eq!(image_config(&e.repo("multi"), "1")["architecture"], "amd64");
    let arm = "--set=*.platform=linux/arm64";
    let line = e.plan("multi", &["--push", arm]);
    assert!(
        line.contains("build") && line.contains("platforms changed"),
        "{line}"
    );
    e.bake(&["multi", "--push", arm]);
    assert_eq!(image_config(&e.repo("multi"), "1")["architecture"], "arm64");
}

/// An inline cache export writes the cache records into the image config, so adding or
/// removing it changes the pushed image: it must never be skipped as unchanged.
#[test]
fn an_inline_cache_export_is_an_input() {
    let e = Env::new("bakecli-inline");
    let cache_key = "moby.buildkit.cache.v0";
    e.bake(&["multi", "--push"]);
    assert!(image_config(&e.repo("multi"), "1").get(cache_key).is_none());

    let inline = "--set=multi.cache-to=type=inline";
    let line = e.plan("multi", &["--push", inline]);
    assert!(line.contains("build"), "{line}");
    e.bake(&["multi", "--push", inline]);
    assert!(
        image_config(&e.repo("multi"), "1")[cache_key].is_string(),
        "no inline cache in the pushed image config"
    );
    assert!(e.plan("multi", &["--push", inline]).contains("skip"));
    // Taking it away changes the image again.
    assert!(e.plan("multi", &["--push"]).contains("build"));
}

#[test]
fn push_pushes_to_the_registry_and_load_loads_into_the_engine() {
    let e = Env::new("bakecli-push");
    assert_eq!(manifest_digest(&e.repo("multi"), "1"), None);
    // `pushed` pushes by itself; --load adds the engine. `multi` only loads by default;
    // --push adds the registry.
    e.bake(&["pushed", "multi", "--push", "--load"]);
    for name in ["pushed", "multi"] {
        let digest = manifest_digest(&e.repo(name), "1");
        assert!(digest.is_some(), "{name} was not pushed");
        let inspect = run(docker().args(["image", "inspect", &e.tag(name)]));
        assert!(
            inspect.status.success(),
            "{name} is not in the engine:\n{}",
            stderr(&inspect)
        );
    }
}

#[test]
fn no_cache_rebuilds_a_step_the_build_cache_holds() {
    let e = Env::new("bakecli-nocache");
    let out = "--set=stamp.output=type=local,dest=out/stamp";
    e.bake(&["stamp", out]);
    let first = e.read("out/stamp/stamp.txt");
    // Built again from BuildKit's cache: the step is cached.
    e.bake(&["stamp", out, "--force"]);
    assert_eq!(e.read("out/stamp/stamp.txt"), first);
    let line = e.plan("stamp", &[out, "--no-cache"]);
    assert!(
        line.contains("build") && line.contains("no_cache"),
        "{line}"
    );
    e.bake(&["stamp", out, "--no-cache"]);
    assert_ne!(
        e.read("out/stamp/stamp.txt"),
        first,
        "the step came from the cache"
    );
}

/// Differential with `docker buildx bake --push` on the same compose file: the images have the
/// same shape (attestation manifests and their predicate types), with the default provenance
/// and with an SBOM; the metadata file has the build's provenance; and what is attached is an
/// input: asking for other attestations builds again, asking for the same ones (however
/// spelled) does not.
#[test]
fn attestations_are_attached_like_buildx_and_are_an_input() {
    use support::attest::*;
    let e = Env::new("bakecli-attest");
    let slsa = "https://slsa.dev/provenance/";
    // buildx's image and metadata file, pushed under the test's namespace (so that `Env`
    // removes it from the engine too).
    let runs = std::cell::Cell::new(0);
    let buildx = |args: &[&str]| {
        runs.set(runs.get() + 1);
        let ns = format!("{}/buildx{}", e.ns, runs.get());
        let md = e.dir.join(format!("buildx{}.json", runs.get()));
        let mut cmd = docker();
        cmd.current_dir(&e.dir)
            .args(["buildx", "bake", "--progress", "quiet", "--metadata-file"])
            .arg(&md)
            .args(args)
            .env("REG", registry())
            .env("NS", &ns)
            .env_remove("SOURCE_DATE_EPOCH");
        run_ok(&mut cmd);
        let meta: Value = serde_json::from_slice(&std::fs::read(&md).unwrap()).unwrap();
        (attested(&format!("{ns}/multi"), "1"), meta)
    };
    let types = |a: &Attested| -> Vec<String> {
        a.predicate_types()
            .iter()
            .map(|t| {
                if t.starts_with(slsa) {
                    slsa.to_string()
                } else {
                    t.clone()
                }
            })
            .collect()
    };

    // By default: a minimal provenance, as buildx attaches it.
    let md = e.dir.join("md.json");
    let md_arg = md.to_str().unwrap();
    e.bake(&["multi", "--push", "--metadata-file", md_arg]);
    let mine = attested(&e.repo("multi"), "1");
    let (theirs, their_meta) = buildx(&["multi", "--push"]);
    assert_eq!(mine, theirs);
    assert_eq!(types(&mine), [slsa], "{mine:?}");
    let meta: Value = serde_json::from_slice(&std::fs::read(&md).unwrap()).unwrap();
    let key = "buildx.build.provenance";
    assert!(meta["multi"][key]["invocation"].is_object(), "{meta}");
    assert_eq!(meta["multi"][key], their_meta["multi"][key]);

    // Attestations are an input: turning provenance off builds again, by the flag or by the
    // environment, and both ask for the same image.
    let plan_env = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = bk();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut all = vec!["plan", "multi"];
        all.extend_from_slice(args);
        let out = e.cmd(cmd, &all);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(plan_env(&[], &["--push"]).contains("skip"));
    let line = e.plan("multi", &["--push", "--provenance=false"]);
    assert!(line.contains("build") && line.contains("attest"), "{line}");
    let off = [("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")];
    assert!(plan_env(&off, &["--push"]).contains("build"));
    e.bake(&["multi", "--push", "--provenance=false"]);
    let bare = attested(&e.repo("multi"), "1");
    assert!(bare.attestations.is_empty(), "{bare:?}");
    assert!(plan_env(&off, &["--push"]).contains("skip"));
    let line = e.plan("multi", &["--push", "--provenance=mode=max"]);
    assert!(line.contains("build") && line.contains("attest"), "{line}");

    // An SBOM from a generator image, beside the default provenance.
    let sbom = format!("--sbom=generator={}", sbom_generator());
    e.bake(&["multi", "--push", &sbom]);
    let mine = attested(&e.repo("multi"), "1");
    assert_eq!(mine, buildx(&["multi", "--push", &sbom]).0);
    assert_eq!(types(&mine), [slsa, SPDX], "{mine:?}");
    let scan = statements(&e.repo("multi"), "1", SPDX);
    assert!(
        scan[0]["predicate"]["files"]
            .to_string()
            .contains("hello.txt"),
        "{scan:?}"
    );
}

#[test]
fn privileges_need_allow_and_unsupported_overrides_are_refused() {
    let e = Env::new("bakecli-allow");
    let refused = e.bk(&["bake", "hostnet", "--progress", "plain"]);
    assert!(!refused.status.success());
    let msg = stderr(&refused);
    assert!(
        msg.contains("target `hostnet` asks for network.host")
            && msg.contains("--allow=network.host"),
        "{msg}"
    );
    assert!(!msg.contains("RESULT"), "something ran:\n{msg}");
    e.bake(&["hostnet", "--allow=network.host"]);

    // A target's own `call` is not supported; `--call` on the command line is.
    let out = e.bk(&["bake", "app", "--set", "app.call=targets"]);
    assert!(!out.status.success(), "--set app.call=targets was accepted");
    assert!(
        stderr(&out).contains("not supported yet"),
        "{}",
        stderr(&out)
    );
}

/// `--list` prints what buildx prints for the same compose file, byte for byte.
#[test]
fn list_prints_what_buildx_prints() {
    let e = Env::new("bakecli-list");
    for list in [
        "targets",
        "type=targets,format=json",
        "variables",
        "type=variables,format=json",
    ] {
        let ours = e.bk(&["bake", "--list", list]);
        let theirs = e.cmd(docker(), &["buildx", "bake", "--list", list]);
        assert!(ours.status.success() && theirs.status.success());
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "--list {list}"
        );
    }
}

/// Variables of a bake file: value in effect, declared type (`list of string`) and
/// description, in buildx's table and JSON.
#[test]
fn list_variables_of_a_bake_file_match_buildx() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("docker-bake.hcl"),
        r#"
variable "FLAVORS" {
  type        = list(string)
  default     = ["min", "full"]
  description = "image flavors"
}
variable "N" {
  type    = number
  default = 2
}
variable "PUSH" { default = false }
variable "TAG" { description = "the tag" }
variable "RAW" {}
target "default" {
  context = "."
}
"#,
    );
    write(&d.path().join("Dockerfile"), "FROM scratch\n");
    for list in ["variables", "type=variables,format=json"] {
        let go = |mut c: std::process::Command| {
            c.current_dir(d.path())
                .env("N", "3")
                .env_remove("TAG")
                .args(["bake", "--list", list]);
            run(&mut c)
        };
        let ours = go(bk());
        let mut buildx = docker();
        buildx.arg("buildx");
        let theirs = go(buildx);
        assert!(ours.status.success(), "{}", stderr(&ours));
        assert!(theirs.status.success(), "{}", stderr(&theirs));
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "--list {list}"
        );
    }
}

/// bk-build.toml has no buildx counterpart: its groups and `[vars]` (with an
/// environment override) in buildx's shapes.
#[test]
fn list_shows_toml_groups_and_vars() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("bk-build.toml"),
        r#"
[vars]
REPO = "localhost:5000/acme"
TAG = "dev"

[target.api]
context = "app"
[target.web-frontend]
context = "app"

[group.default]
targets = ["web-frontend", "api"]
"#,
    );
    write(&d.path().join("app/Dockerfile"), "FROM scratch\n");
    let list = |args: &[&str]| {
        let out = run_ok(bk().current_dir(d.path()).args(args).env("TAG", "v2"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        list(&["bake", "--list", "targets"]),
        "TARGET\t\tDESCRIPTION\napi\t\t\ndefault\t\tapi, web-frontend\nweb-frontend\t\n"
    );
    assert_eq!(
        list(&["bake", "--list", "variables"]),
        "VARIABLE\tTYPE\tVALUE\t\t\tDESCRIPTION\nREPO\t\t\tlocalhost:5000/acme\t\nTAG\t\t\tv2\t\t\t\n"
    );
    let json: Value =
        serde_json::from_str(&list(&["bake", "--list", "type=variables,format=json"])).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"name": "REPO", "value": "localhost:5000/acme"},
            {"name": "TAG", "value": "v2"}
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// --print against `docker buildx bake --print`
// ---------------------------------------------------------------------------------------------

/// A field where bk-build differs from buildx on purpose: (target, field, bk-build's value, why).
type Difference = (&'static str, &'static str, Value, &'static str);

#[test]
fn print_shows_each_flag_as_buildx_does() {
    let e = Env::new("bakecli-print");
    let targets = ["app", "app-worker", "pushed", "multi"];
    // (flags, fields where bk-build differs on purpose: field → (bk-build's value, why)).
    let cases: Vec<(Vec<&str>, Vec<Difference>)> = vec![
        (vec!["--set", "*.platform=linux/arm64"], vec![]),
        (vec!["--set", "app*.platform=linux/amd64,linux/arm64"], vec![]),
        (vec!["--set", "app*.args.FOO=bar", "--set", "app.args.FROM_ENV"], vec![]),
        (vec!["--set", "app.tags=r/x:1", "--set", "app.tags=r/x:2"], vec![]),
        (vec!["--set", "app.tags+=r/x:3"], vec![]),
        (vec!["--set", "a?p.labels.team=core", "--set", "multi.target=final"], vec![]),
        (vec!["--push"], vec![]),
        (vec!["--load"], vec![]),
        (vec!["--push", "--load"], vec![]),
        (vec!["--set", "pushed.push=false"], vec![]),
        (vec!["--set", "app.output=type=local,dest=out", "--push", "--load"], vec![]),
        (vec!["--set", "app.output=type=image,compression=zstd", "--push"], vec![]),
        (vec!["--set", "multi.output+=type=tar,dest=out.tar"], vec![]),
        (vec!["--no-cache", "--pull"], vec![]),
        (vec!["--no-cache=false"], vec![]),
        (
            vec![
                "--set", "*.cache-from=type=registry,ref=r/cache",
                "--set", "app.cache-to=type=local,dest=cache",
            ],
            vec![],
        ),
        (vec!["--set", "app.secrets=id=npm,src=npmrc", "--set", "app.ssh=default"], vec![]),
        (vec!["--provenance=mode=max", "--sbom=true"], vec![]),
        (vec!["--set", "app.attest=type=sbom,generator=g", "--sbom=false"], vec![]),
        (
            vec!["--set", "app.context=other", "--set", "app-worker.dockerfile=Dockerfile.alt"],
            vec![],
        ),
        (vec!["--set", "app.contexts.base=docker-image://alpine:3"], vec![]),
        (
            vec![
                "--set", "app.annotations=index,manifest[linux/amd64]:org.example.a=1",
                "--set", "app.annotations=org.example.b=2",
            ],
            vec![],
        ),
        (
            vec![
                "--set", "app.extra-hosts.db=10.0.0.1",
                "--set", "app.shm-size=1048576",
                "--set", "app.ulimits=nofile=1024:2048",
                "--set", "app.no-cache-filter=stage",
                "--set", "app.entitlements=security.insecure",
            ],
            vec![
                (
                    "app",
                    "ulimits",
                    Value::from(vec!["nofile=1024:2048"]),
                    "buildx v0.29 does not list ulimits with the list keys and loses the value",
                ),
                (
                    "app",
                    "no_cache_filter",
                    Value::from(vec!["stage"]),
                    "buildx v0.29 does not list no-cache-filter with the list keys and loses the value",
                ),
            ],
        ),
        (
            vec!["--set", "app.network=host"],
            vec![
                (
                    "app",
                    "network",
                    Value::from("host"),
                    "buildx v0.29 reads `network` as a list key and loses the value",
                ),
                (
                    "app",
                    "entitlements",
                    Value::from(vec!["network.host"]),
                    "the host network asks for network.host, as compose's network: host does",
                ),
            ],
        ),
    ];
    // buildx checks that the SSH agent socket is there.
    let agent = e.dir.join("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let mut failures = Vec::new();
    for (flags, differences) in &cases {
        let mut bk_args = vec!["bake", "--print"];
        bk_args.extend(targets);
        bk_args.extend(flags.iter().copied());
        let mut ours = bk();
        ours.env("FROM_ENV", "from-the-environment")
            .env("SSH_AUTH_SOCK", &agent);
        let ours = e.cmd(ours, &bk_args);
        let mut bx_args = vec!["buildx", "bake", "--print"];
        bx_args.extend(targets);
        bx_args.extend(flags.iter().copied());
        let ask_buildx = || {
            let mut bx = docker();
            bx.env("FROM_ENV", "from-the-environment")
                .env("SSH_AUTH_SOCK", &agent);
            let theirs = e.cmd(bx, &bx_args);
            assert!(
                theirs.status.success(),
                "buildx refused {flags:?}:\n{}",
                stderr(&theirs)
            );
            serde_json::from_slice::<Value>(&theirs.stdout).unwrap()
        };
        assert!(
            ours.status.success(),
            "bk-build refused {flags:?}:\n{}",
            stderr(&ours)
        );
        let ours: Value = serde_json::from_slice(&ours.stdout).unwrap();
        let compare = |theirs: &Value| {
            let mut out = Vec::new();
            for t in targets {
                let b = canon_buildx(&theirs["target"][t], &e.dir);
                let o = canon_bk(&ours["target"][t]);
                for (field, want) in &b {
                    let got = o.get(field).unwrap_or(&Value::Null);
                    if let Some((_, _, expected, _)) = differences
                        .iter()
                        .find(|(dt, df, _, _)| *dt == t && *df == field.as_str())
                    {
                        if got != expected {
                            out.push(format!(
                                "{flags:?}: {t}.{field}: documented difference, expected {expected}, got {got}"
                            ));
                        }
                        continue;
                    }
                    let same = match (want, got) {
                        (Value::Null, Value::Array(a)) | (Value::Array(a), Value::Null) => {
                            a.is_empty()
                        }
                        (a, b) => a == b,
                    };
                    if !same {
                        out.push(format!(
                            "{flags:?}: {t}.{field}: buildx {want}, bk-build {got}"
                        ));
                    }
                }
            }
            out
        };
        let first = ask_buildx();
        let disagreements = compare(&first);
        if disagreements.is_empty() {
            continue;
        }
        // buildx applies `--set` and `--push`/`--load` overrides in Go map order, so
        // `output=…` + `--push` sometimes keeps and sometimes loses `push=true` (seen in CI:
        // 1 run in 3 on the same inputs). Before blaming bk-build, ask buildx again: when one
        // of its answers equals bk-build's, the difference is buildx's nondeterminism.
        let mut seen = vec![first];
        let agreed = (0..8).any(|_| {
            let again = ask_buildx();
            let ok = compare(&again).is_empty();
            seen.push(again);
            ok
        });
        if agreed {
            let distinct: std::collections::BTreeSet<String> =
                seen.iter().map(|v| v.to_string()).collect();
            eprintln!(
                "note: buildx answered {flags:?} in {} different ways over {} runs; \
                 bk-build's answer is one of them:\n{}",
                distinct.len(),
                seen.len(),
                disagreements.join("\n")
            );
        } else {
            failures.extend(disagreements);
        }
    }
    assert!(
        failures.is_empty(),
        "bk-build and buildx disagree:\n{}",
        failures.join("\n")
    );
}

/// A bake file whose targets the frontend evaluates: `lint` has lint warnings, `clean` none
/// (and build args for `outline`).
fn call_project(dir: &Path) {
    let base = base_image();
    write(
        &dir.join("docker-bake.hcl"),
        r#"
group "default" {
  targets = ["lint", "clean"]
}
target "lint" {
  context = "lint"
}
target "clean" {
  context = "clean"
  args = { COLOR = "blue" }
}
"#,
    );
    write(
        &dir.join("lint/Dockerfile"),
        format!("FROM {base} as base\nENV A=$UNDEFINED\nFROM base\nCMD echo hi\n"),
    );
    write(
        &dir.join("clean/Dockerfile"),
        format!("FROM {base}\nARG COLOR=red\nARG SIZE\nRUN true\n"),
    );
}

/// The part of a `--call …,format=json` document that is the same from run to run and
/// between the two tools: per target, the answer (without the LLB definitions inside the
/// lint sources, which hold the session's random ID). The `build` definitions are `--print`'s,
/// compared elsewhere.
fn answers(doc: &str, method: &str) -> BTreeMap<String, Value> {
    let v: Value = serde_json::from_str(doc).unwrap_or_else(|e| panic!("not JSON ({e}):\n{doc}"));
    let mut out = BTreeMap::new();
    for (name, t) in v["target"].as_object().expect("a target object") {
        let mut answer = t[method].clone();
        if let Some(sources) = answer.get_mut("sources").and_then(|s| s.as_array_mut()) {
            for s in sources {
                if let Some(o) = s.as_object_mut() {
                    o.remove("definition");
                }
            }
        }
        out.insert(name.clone(), answer);
    }
    out
}

/// `bake --call check|outline|targets` and `--check` evaluate every requested target without
/// building it: the text report, grouped per target as buildx groups it, and the exit status
/// (1 when a check found warnings, 0 with `ignorestatus=true`) are `docker buildx bake`'s on
/// the same bake file, and the JSON form carries buildx's answers per target.
#[test]
fn call_evaluates_every_target_as_buildx_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    call_project(dir);
    let in_dir = |mut cmd: std::process::Command, args: &[&str]| {
        let out = run(cmd.current_dir(dir).args(args));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    };
    for args in [
        &["--call", "check"][..],
        &["--check", "lint"],
        &["--call", "check,ignorestatus=true"],
        &["--call", "outline"],
        &["--call", "targets", "clean"],
    ] {
        let mut all = vec!["bake", "--progress", "plain"];
        all.extend_from_slice(args);
        let ours = in_dir(bk(), &all);
        let mut all = vec!["buildx", "bake", "--progress", "plain"];
        all.extend_from_slice(args);
        let theirs = in_dir(docker(), &all);
        assert_eq!(ours, theirs, "{args:?}: output or exit status differs");
    }
    for (call, method) in [
        ("check,format=json", "check"),
        ("outline,format=json", "outline"),
    ] {
        let ours = in_dir(bk(), &["bake", "--progress", "plain", "--call", call]);
        let theirs = in_dir(
            docker(),
            &["buildx", "bake", "--progress", "plain", "--call", call],
        );
        assert_eq!(ours.1, theirs.1, "{call}: exit status differs");
        assert_eq!(
            answers(&ours.0, method),
            answers(&theirs.0, method),
            "{call}"
        );
    }
    // The comparison saw real answers, and nothing was built.
    let (text, status) = in_dir(bk(), &["bake", "--progress", "plain", "--check"]);
    assert_eq!(status, Some(1));
    assert!(
        text.starts_with("clean\n\nCheck complete, no warnings found.\n\nlint\n\nCheck complete, 3 warnings have been found!\n"),
        "{text}"
    );
    let out = run(bk()
        .current_dir(dir)
        .args(["bake", "--progress", "plain", "--check"]));
    assert!(
        !stderr(&out).contains("RESULT"),
        "a summary of builds:\n{}",
        stderr(&out)
    );
    // Asking to deliver what a check does not build fails, as buildx's bake fails with it.
    for flag in ["--push", "--load"] {
        let out = run(bk()
            .current_dir(dir)
            .args(["bake", "--progress", "plain", "--check", flag]));
        assert_eq!(out.status.code(), Some(1), "{flag}");
        assert!(
            stderr(&out).contains(&format!("nothing for {flag} to deliver")),
            "{}",
            stderr(&out)
        );
        assert!(
            out.stdout.is_empty(),
            "no check ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let theirs = run(docker().current_dir(dir).args([
        "buildx",
        "bake",
        "--progress",
        "plain",
        "--check",
        "--push",
    ]));
    assert!(
        !theirs.status.success(),
        "buildx refuses --push with --check too"
    );
}
