//! Docker Engine reached the ways the docker CLI reaches it — `DOCKER_HOST=tcp://` with
//! `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`, a docker context, `DOCKER_HOST=ssh://` — against
//! the test environment's second engine (mutual TLS on 127.0.0.1, also behind the local
//! sshd), with the docker CLI as the oracle of what landed where. And the errors of each way
//! when it is set up wrong, or when the daemon dies during a build.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::*;

/// A context whose image is unique to this test (a RUN step too, so BuildKit runs a
/// container on the engine). Without a network: what is tested is the way to the engine, and
/// the engine's bridge setup for a RUN once raced on a loaded CI machine (`error running
/// hook: bind-mount /proc/PID/ns/net -> .../netns/...: no such file or directory`).
fn context(dir: &Path, marker: &str) {
    write(
        &dir.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY f /f\nRUN --network=none cat /f\n",
            base_image()
        ),
    );
    write(&dir.join("f"), marker);
}

/// The image ID `tag` has in the engine `docker` talks to, `None` if it has no such image.
fn engine_image(docker: &mut Command, tag: &str) -> Option<String> {
    let o = run(docker.args(["image", "inspect", "--format", "{{.Id}}", tag]));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `bk-build build --push`, then `--load`, through `aim` (which points bk-build at the TLS
/// engine): the registry and the TLS engine hold the image, the primary engine does not.
/// (Two builds: `--push --load` together makes two exporters name the same image.)
fn build_push_load(aim: &dyn Fn(&mut Command) -> &mut Command) {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let name = unique("dockerhost");
    context(&ctx, &name);
    let build = |flag: &str, tag: &str| {
        let md = tmp.path().join("md.json");
        run_ok(
            aim(&mut bk())
                .args(["build", "--progress", "plain", flag, "-t", tag])
                .arg("--metadata-file")
                .arg(&md)
                .arg(&ctx),
        );
        json(&md)["containerimage.digest"]
            .as_str()
            .expect("digest in metadata")
            .to_string()
    };
    let pushed = build("--push", &format!("localhost:5000/{name}/app:1"));
    assert_eq!(
        manifest_digest(&format!("{name}/app"), "1").as_deref(),
        Some(pushed.as_str()),
        "pushed to the registry"
    );
    let tag = format!("localhost:5000/{name}/loaded:1");
    let loaded = build("--load", &tag);
    assert_eq!(
        engine_image(&mut docker_tls(), &tag).as_deref(),
        Some(loaded.as_str()),
        "loaded into the TLS engine"
    );
    assert_eq!(
        engine_image(&mut docker(), &tag),
        None,
        "not in the primary engine"
    );
}

/// A project with one `load` target, baked through `aim`: built and loaded, then skipped
/// (the engine's image checked over the same way), then re-tagged in the engine for a new
/// TAG (the Engine API's tag call over the same way).
fn bake_load_flow(aim: &dyn Fn(&mut Command) -> &mut Command) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proj");
    let name = unique("dockerhost-bake");
    context(&root.join("app"), &name);
    write(
        &root.join("bk-build.toml"),
        format!(
            "[vars]\nTAG = \"v1\"\n\n[target.app]\ncontext = \"app\"\ntags = [\"localhost:5000/{name}/app:${{TAG}}\"]\nload = true\npush = false\n"
        ),
    );
    let md = root.join("md.json");
    let bake = |tag: &str| {
        let out = run_ok(
            aim(&mut bk())
                .current_dir(&root)
                .env("TAG", tag)
                .args(["bake", "--progress", "plain", "--metadata-file"])
                .arg(&md),
        );
        (stderr(&out), json(&md))
    };
    let plan = |tag: &str| {
        let out = run_ok(
            aim(&mut bk())
                .current_dir(&root)
                .env("TAG", tag)
                .args(["plan", "--format", "json"]),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["action"].as_str().unwrap().to_string()
    };
    let (_, meta) = bake("v1");
    let digest = meta["app"]["containerimage.digest"]
        .as_str()
        .expect("built")
        .to_string();
    let v1 = format!("localhost:5000/{name}/app:v1");
    assert_eq!(
        engine_image(&mut docker_tls(), &v1).as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(engine_image(&mut docker(), &v1), None, "not the primary");
    assert_eq!(plan("v1"), "skip", "the engine's image was found");
    assert_eq!(plan("v2"), "retag");
    let (err, _) = bake("v2");
    assert!(err.contains("retagged"), "{err}");
    assert_eq!(
        engine_image(&mut docker_tls(), &format!("localhost:5000/{name}/app:v2")).as_deref(),
        Some(digest.as_str()),
        "tagged in the TLS engine"
    );
}

/// Gives a closure the signature the flows take (the compiler does not infer it for a
/// closure stored in a variable).
fn aim<F: Fn(&mut Command) -> &mut Command>(f: F) -> F {
    f
}

fn tls_env(c: &mut Command) -> &mut Command {
    let t = tls_engine();
    with_docker_tls(c, &t.host, &t.certs)
}

#[test]
fn docker_tls_verify_and_cert_path_build_push_load_and_bake() {
    build_push_load(&tls_env);
    bake_load_flow(&tls_env);
    let out = run_ok(tls_env(&mut bk()).arg("info"));
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains(&format!("docker ({})", tls_engine().host)),
        "{info}"
    );
}

#[test]
fn tls_flags_reach_a_docker_engine_on_tcp() {
    let t = tls_engine();
    let out = run_ok(
        bk().args(["--addr", &format!("docker://{}", t.host)])
            .arg("--tlscacert")
            .arg(t.certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(t.certs.join("cert.pem"))
            .arg("--tlskey")
            .arg(t.certs.join("key.pem"))
            .arg("info"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Docker Engine"));
}

/// A docker config directory of the test's own, with context `name` made by the docker CLI.
fn docker_config_with_context(name: &str, docker_arg: &str) -> tempfile::TempDir {
    let cfg = tempfile::tempdir().unwrap();
    run_ok(
        docker()
            .env("DOCKER_CONFIG", cfg.path())
            .args(["context", "create", name, "--docker", docker_arg]),
    );
    cfg
}

fn tls_context_arg() -> String {
    let t = tls_engine();
    format!(
        "host={},ca={},cert={},key={}",
        t.host,
        t.certs.join("ca.pem").display(),
        t.certs.join("cert.pem").display(),
        t.certs.join("key.pem").display()
    )
}

#[test]
fn a_docker_context_reaches_the_tls_engine_and_docker_host_wins_over_it() {
    let name = unique("tlsctx");
    let cfg = docker_config_with_context(&name, &tls_context_arg());
    let cfg_path = cfg.path().to_path_buf();
    let by_env = aim(move |c| {
        c.env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", &cfg_path)
            .env("DOCKER_CONTEXT", &name)
    });
    build_push_load(&by_env);
    bake_load_flow(&by_env);

    // `docker context use` (currentContext in config.json) without DOCKER_CONTEXT.
    let name = unique("tlsctx-current");
    let cfg = docker_config_with_context(&name, &tls_context_arg());
    run_ok(
        docker()
            .env("DOCKER_CONFIG", cfg.path())
            .args(["context", "use", &name]),
    );
    let current = aim(|c| {
        c.env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", cfg.path())
    });
    let out = run_ok(current(&mut bk()).arg("info"));
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains(&format!("docker context {name:?}")) && info.contains(&tls_engine().host),
        "{info}"
    );
    build_push_load(&current);

    // DOCKER_HOST wins over the context, as in the docker CLI.
    let primary = env_var("DOCKER_HOST");
    let out = run_ok(
        current(&mut bk())
            .env("DOCKER_HOST", &primary)
            .env("DOCKER_CONTEXT", &name)
            .arg("info"),
    );
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains(&format!("docker ({primary})")), "{info}");
}

/// bk-build with `DOCKER_HOST=ssh://…` and the environment's ssh client configuration.
fn ssh_host(host: String) -> impl Fn(&mut Command) -> &mut Command {
    let path = format!(
        "{}:{}",
        env_var("BKENV_SSH_BIN"),
        env().get("PATH").cloned().unwrap_or_default()
    );
    move |c: &mut Command| c.env("DOCKER_HOST", &host).env("PATH", &path)
}

#[test]
fn ssh_docker_host_builds_pushes_loads_and_bakes() {
    // The test sshd's sessions have DOCKER_HOST set to the TLS engine's socket.
    let host = env_var("BKENV_SSH_HOST");
    build_push_load(&ssh_host(host.clone()));
    bake_load_flow(&ssh_host(host.clone()));
    // A socket path in the URL: `docker --host=unix://PATH system dial-stdio` remotely.
    let socket = tls_engine().socket;
    let with_path = format!("{host}{}", socket.trim_start_matches("unix://"));
    build_push_load(&ssh_host(with_path));
    // A docker context whose endpoint is the ssh host.
    let name = unique("sshctx");
    let cfg = docker_config_with_context(&name, &format!("host={host}"));
    let ssh = ssh_host(host.clone());
    let out = run_ok(
        ssh(&mut bk())
            .env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", cfg.path())
            .env("DOCKER_CONTEXT", &name)
            .arg("info"),
    );
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains(&format!("docker ({host}, docker context {name:?})")),
        "{info}"
    );
}

/// `--timeout` for the TLS failure cases: a rejected certificate is answered at once, but a
/// machine busy with the rest of the suite once took over the default 5 s to say so.
const SLOW_MACHINE: &str = "60";

/// Runs `cmd`, which must fail, with each of `needles` in its stderr and none of the
/// messages that say nothing.
fn fails_saying(cmd: &mut Command, needles: &[&str]) -> String {
    let out = run(cmd);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected a failure: {err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    for vague in [
        "Unknown error: transport error",
        "failed to solve: transport error",
        "panicked",
    ] {
        assert!(!err.contains(vague), "vague or crashing error:\n{err}");
    }
    err
}

/// A one-step build context, for commands that must fail before building.
fn any_context() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("Dockerfile"), "FROM scratch\n");
    d
}

#[test]
fn plain_tcp_to_the_tls_engine_says_to_turn_tls_on() {
    let t = tls_engine();
    let ctx = any_context();
    fails_saying(
        bk().env("DOCKER_HOST", &t.host)
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .args(["--timeout", SLOW_MACHINE, "build", "--progress", "plain"])
            .arg(ctx.path()),
        &["expects TLS", "DOCKER_TLS_VERIFY=1", "DOCKER_CERT_PATH"],
    );
    // A context without TLS files: the fix is in the context.
    let name = unique("plainctx");
    let cfg = docker_config_with_context(&name, &format!("host={}", t.host));
    fails_saying(
        bk().env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", cfg.path())
            .env("DOCKER_CONTEXT", &name)
            .args(["--timeout", SLOW_MACHINE, "info"]),
        &["expects TLS", &format!("docker context update {name}")],
    );
    // The buildkitd form of the address: the fix is the --tls* flags.
    fails_saying(
        bk().args(["--addr", &t.host, "--timeout", SLOW_MACHINE, "info"]),
        &["--tlscacert", "--tlscert", "--tlskey"],
    );
}

/// A DOCKER_CERT_PATH of the test's own, with `ca.pem`, `cert.pem`, `key.pem` copied from
/// where the caller says (`None`: left out).
fn cert_dir(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, from) in [("ca.pem", ca), ("cert.pem", cert), ("key.pem", key)] {
        if let Some(f) = from {
            std::fs::copy(f, d.path().join(name)).unwrap();
        }
    }
    d
}

#[test]
fn tls_without_a_client_certificate_says_which_files_to_add() {
    let t = tls_engine();
    let dir = cert_dir(Some(&t.certs.join("ca.pem")), None, None);
    let ctx = any_context();
    fails_saying(
        with_docker_tls(&mut bk(), &t.host, dir.path())
            .args(["--timeout", SLOW_MACHINE, "build", "--progress", "plain"])
            .arg(ctx.path()),
        &[
            "requires a client certificate",
            &dir.path().join("cert.pem").display().to_string(),
            &dir.path().join("key.pem").display().to_string(),
        ],
    );
}

#[test]
fn certificates_from_another_ca_are_named_with_the_fix() {
    let t = tls_engine();
    let foreign = tempfile::tempdir().unwrap();
    foreign_certs(foreign.path());
    let ctx = any_context();
    // Our client certificate, signed by a CA the engine does not trust.
    let dir = cert_dir(
        Some(&t.certs.join("ca.pem")),
        Some(&foreign.path().join("cert.pem")),
        Some(&foreign.path().join("key.pem")),
    );
    fails_saying(
        with_docker_tls(&mut bk(), &t.host, dir.path())
            .args(["--timeout", SLOW_MACHINE, "build", "--progress", "plain"])
            .arg(ctx.path()),
        &[
            "refused the client certificate",
            &dir.path().join("cert.pem").display().to_string(),
            "not signed by a CA the daemon trusts",
        ],
    );
    // The engine's certificate checked against another CA.
    let dir = cert_dir(
        Some(&foreign.path().join("ca.pem")),
        Some(&t.certs.join("cert.pem")),
        Some(&t.certs.join("key.pem")),
    );
    fails_saying(
        with_docker_tls(&mut bk(), &t.host, dir.path())
            .args(["--timeout", SLOW_MACHINE, "build", "--progress", "plain"])
            .arg(ctx.path()),
        &[
            "did not sign",
            &dir.path().join("ca.pem").display().to_string(),
        ],
    );
}

#[test]
fn tls_to_a_plain_text_daemon_says_to_turn_tls_off() {
    // The primary engine, on plain TCP.
    let socket = PathBuf::from(env_var("DOCKER_HOST").trim_start_matches("unix://"));
    let port = tcp_to_unix_proxy(&socket);
    let host = format!("tcp://127.0.0.1:{port}");
    // Without TLS it is a working daemon …
    run_ok(bk().env("DOCKER_HOST", &host).arg("info"));
    // … that does not speak TLS.
    let t = tls_engine();
    let ctx = any_context();
    fails_saying(
        with_docker_tls(&mut bk(), &host, &t.certs)
            .args(["build", "--progress", "plain"])
            .arg(ctx.path()),
        &[
            "does not speak TLS",
            // What turns TLS on is named, not where its files are.
            "but DOCKER_TLS_VERIFY asks for TLS",
            "unset DOCKER_TLS_VERIFY",
        ],
    );
}

#[test]
fn a_daemon_that_is_not_there_says_so() {
    let t = tls_engine();
    let ctx = any_context();
    let host = format!("tcp://127.0.0.1:{}", free_port());
    fails_saying(
        with_docker_tls(&mut bk(), &host, &t.certs)
            .args(["build", "--progress", "plain"])
            .arg(ctx.path()),
        &["connection refused", "dockerd", "DOCKER_HOST"],
    );
    // Over ssh: ssh's own words.
    let ssh = ssh_host(format!("ssh://root@127.0.0.1:{}", free_port()));
    fails_saying(
        ssh(&mut bk())
            .args(["build", "--progress", "plain"])
            .arg(ctx.path()),
        &["ssh to ssh://root@127.0.0.1", "Connection refused"],
    );
    // A context that does not exist.
    let cfg = tempfile::tempdir().unwrap();
    fails_saying(
        bk().env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", cfg.path())
            .env("DOCKER_CONTEXT", "no-such-context")
            .arg("info"),
        &["\"no-such-context\"", "not found", "docker context ls"],
    );
}

/// A third Docker Engine, only this test's: TLS on a port of its own with the test
/// environment's server certificate, no bridge (RUN steps use `--network=none`). Dropping
/// it stops everything it started and removes its directory.
struct ThrowawayEngine {
    dir: PathBuf,
    dockerd: std::process::Child,
    host: String,
}

impl ThrowawayEngine {
    fn start() -> ThrowawayEngine {
        let t = tls_engine();
        let dir = PathBuf::from(format!("/tmp/bkx-{}", unique("engine")));
        std::fs::create_dir_all(&dir).unwrap();
        write(
            &dir.join("daemon.json"),
            r#"{"features": {"containerd-snapshotter": true}, "bridge": "none", "iptables": false, "ip6tables": false, "ip-forward": false, "ip-masq": false}"#,
        );
        let port = free_port();
        let host = format!("tcp://127.0.0.1:{port}");
        let root = PathBuf::from(env_var("BKENV")).join("root");
        let mut cmd = Command::new(root.join("usr/sbin/dockerd"));
        for (k, v) in env() {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let p = |n: &str| dir.join(n);
        let dockerd = cmd
            .arg("--config-file")
            .arg(p("daemon.json"))
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("--pidfile")
            .arg(p("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p("docker.sock").display()))
            .args(["-H", &host, "--tlsverify"])
            .arg("--tlscacert")
            .arg(t.server_certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(t.server_certs.join("cert.pem"))
            .arg("--tlskey")
            .arg(t.server_certs.join("key.pem"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut e = ThrowawayEngine { dir, dockerd, host };
        // Up when the docker CLI gets an answer over TLS; a dockerd that exits fails here.
        loop {
            let ok = with_docker_tls(&mut docker(), &e.host, &t.certs)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            if let Ok(Some(status)) = e.dockerd.try_wait() {
                let log = std::fs::read_to_string(e.dir.join("dockerd.log")).unwrap_or_default();
                panic!("the throwaway dockerd exited ({status}):\n{log}");
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        e
    }
}

impl Drop for ThrowawayEngine {
    fn drop(&mut self) {
        let _ = self.dockerd.kill();
        let _ = self.dockerd.wait();
        // What the engine started is identified by its directory: containerd and shims by
        // their command line, RUN containers (left running by a killed dockerd) by a mount
        // namespace of their own whose mounts come from it.
        let dir = self.dir.to_string_lossy().into_owned();
        let our_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap_or_default();
        for _ in 0..3 {
            let mut killed = 0;
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if pid == std::process::id() {
                    continue;
                }
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let own_ns =
                    std::fs::read_link(entry.path().join("ns/mnt")).is_ok_and(|ns| ns != our_ns);
                let in_container = own_ns
                    && std::fs::read_to_string(entry.path().join("mountinfo"))
                        .is_ok_and(|m| m.contains(&dir));
                if String::from_utf8_lossy(&cmdline).contains(&dir) || in_container {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    killed += 1;
                }
            }
            if killed == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_daemon_that_dies_mid_build_is_reported_as_gone() {
    let e = ThrowawayEngine::start();
    let t = tls_engine();
    let ctx = tempfile::tempdir().unwrap();
    // The output line has the computed number; the step's own name shows the expression.
    write(
        &ctx.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN --network=none echo \"step-started-$((40+2))\" && sleep 120\n",
            base_image()
        ),
    );
    let mut child = with_docker_tls(&mut bk(), &e.host, &t.certs)
        .args(["build", "--progress", "plain"])
        .arg(ctx.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.contains("step-started-42");
        seen.push(line);
        if started {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("step-started-42")),
        "the build never reached its RUN step:\n{}",
        seen.join("\n")
    );
    let mut e = e;
    e.dockerd.kill().unwrap();
    e.dockerd.wait().unwrap();
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let err = seen.join("\n");
    eprintln!("{err}");
    assert!(!status.success());
    for n in [
        "lost the connection to the Docker Engine at",
        &e.host,
        "does not answer any more",
        "start it again",
    ] {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    assert!(!err.contains("failed to solve: transport error"), "{err}");
}

/// `--load` through the Engine API's image load (what a buildkitd daemon uses;
/// `BK_BUILD_LOAD_VIA_API=1` takes that path on an engine too), over TLS and over ssh: the
/// exported tarball streams into the engine the docker CLI would use.
#[test]
fn load_through_the_engine_api_over_tls_and_ssh() {
    let via_ssh = ssh_host(env_var("BKENV_SSH_HOST"));
    for (how, aim) in [
        ("tls", &tls_env as &dyn Fn(&mut Command) -> &mut Command),
        ("ssh", &via_ssh),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = tmp.path().join("ctx");
        let name = unique(&format!("apiload-{how}"));
        context(&ctx, &name);
        let tag = format!("localhost:5000/{name}/app:1");
        let out = run_ok(
            aim(&mut bk())
                .env("BK_BUILD_LOAD_VIA_API", "1")
                .args(["build", "--progress", "plain", "--load", "-t", &tag])
                .arg(&ctx),
        );
        assert!(
            engine_image(&mut docker_tls(), &tag).is_some(),
            "{how}: not loaded into the TLS engine: {}",
            stderr(&out)
        );
        assert_eq!(engine_image(&mut docker(), &tag), None, "{how}");
    }
}
