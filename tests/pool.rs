//! A pool of daemons (issue 12): `--addr` repeated puts targets on several Docker Engines that
//! share only the registry; each target goes back to the daemon that holds its cache; a daemon
//! that dies mid-build has its targets built on the others; one that is down at the start is
//! left out. All against real engines: the primary, the TLS one (through its socket) and, for
//! the kill, a throwaway third one started here.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The primary engine's and the TLS engine's addresses.
fn two_engines() -> [String; 2] {
    [
        "docker://".to_string(),
        format!("docker://{}", tls_engine().socket),
    ]
}

fn addr_args(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| ["--addr".to_string(), a.clone()])
        .collect()
}

/// Starts `bake` in `dir` with `args`, writing its metadata to `dir/bake-md.json`; output
/// piped.
fn spawn_bake(dir: &Path, args: &[String]) -> std::process::Child {
    let md = dir.join("bake-md.json");
    let _ = std::fs::remove_file(&md);
    bk().current_dir(dir)
        .args(["bake", "--progress", "plain", "--metadata-file"])
        .arg(&md)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The metadata the last [`spawn_bake`] in `dir` wrote (`null` when none).
fn metadata(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join("bake-md.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Runs `bake` in `dir` with `args`; returns (success, stderr, metadata).
fn bake(dir: &Path, args: &[String]) -> (bool, String, serde_json::Value) {
    let out = spawn_bake(dir, args).wait_with_output().unwrap();
    let err = stderr(&out);
    eprintln!("$ bk-build bake {args:?} in {}\n{err}", dir.display());
    (out.status.success(), err, metadata(dir))
}

/// Target → the daemon that built it (`bk-build.daemon`), for the targets built.
fn built_on(meta: &serde_json::Value) -> BTreeMap<String, String> {
    meta.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(n, t)| Some((n.clone(), t["bk-build.daemon"].as_str()?.to_string())))
        .collect()
}

/// A project of `base` (pushed) and `services` built FROM it, each running a step whose
/// output is random (so a layer equal to an earlier build's proves the daemon reused its own
/// cache) before copying a file of its own.
fn project(dir: &Path, repo: &str, services: &[&str], run: &str) {
    let mut toml = format!(
        "[vars]\nREPO = \"{repo}\"\nTAG = \"p1\"\n\n[defaults]\ntags = [\"${{REPO}}/{{name}}:${{TAG}}\"]\npush = true\n\n\
         [target.base]\ncontext = \"base\"\n"
    );
    write(
        &dir.join("base/Dockerfile"),
        format!("FROM {}\nCOPY b.txt /b.txt\n", base_image()),
    );
    // Contents unique to the run: BuildKit's cache keys are by content, so a step built by
    // an earlier run (with its own file times) would otherwise come back from the cache.
    write(&dir.join("base/b.txt"), format!("base {repo}\n"));
    for s in services {
        toml.push_str(&format!(
            "\n[target.{s}]\ncontext = \"{s}\"\nargs = {{ REPO = \"${{REPO}}\", TAG = \"${{TAG}}\" }}\n"
        ));
        write(
            &dir.join(s).join("Dockerfile"),
            format!(
                "ARG REPO\nARG TAG\nFROM ${{REPO}}/base:${{TAG}}\nRUN --network=none {run}\nCOPY f.txt /{s}.txt\n"
            ),
        );
        write(&dir.join(s).join("f.txt"), format!("{s} {repo}\n"));
    }
    write(&dir.join("bk-build.toml"), toml);
}

/// Copies project `dir` to `to` with the files' times kept (COPY keeps them) and no state,
/// pushing to `localhost:5000/{name}` instead of `repo`; returns `to`.
fn copy_to_repo(dir: &Path, to: &Path, repo: &str, name: &str) -> std::path::PathBuf {
    let cp = Command::new("cp")
        .arg("-a")
        .arg(dir)
        .arg(to)
        .status()
        .unwrap();
    assert!(cp.success());
    let _ = std::fs::remove_dir_all(to.join(".bk-build"));
    let toml = std::fs::read_to_string(to.join("bk-build.toml")).unwrap();
    write(
        &to.join("bk-build.toml"),
        toml.replace(repo, &format!("localhost:5000/{name}")),
    );
    to.to_path_buf()
}

/// Spread over two engines, the same layers as on one; a second run after a one-file change
/// builds each changed target on the daemon that built it, which still has the cache (its
/// random step's layer comes back unchanged), and `plan` says where each build goes.
#[test]
fn a_pool_spreads_builds_and_brings_each_target_back_to_its_cache() {
    let engines = two_engines();
    let pool = addr_args(&engines);
    let name = unique("pool");
    let repo = format!("localhost:5000/{name}");
    let services = ["svc1", "svc2", "svc3", "svc4"];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let random = format!("echo {name} > /run.txt && head -c 32 /dev/urandom | od -x > /random");
    let random = random.as_str();
    project(&dir, &repo, &services, random);

    // One build slot per daemon: four services cannot all go to the base's daemon.
    let mut first = pool.clone();
    first.extend(["-j".to_string(), "1".to_string()]);
    let (ok, err, meta) = bake(&dir, &first);
    assert!(ok, "{err}");
    let on = built_on(&meta);
    assert_eq!(on.len(), 5, "every target is built once: {on:?}\n{err}");
    for e in &engines {
        assert!(
            services.iter().any(|s| on[*s] == *e),
            "no service was built on {e}: {on:?}"
        );
    }
    // Each service is built on exactly the base image pushed, wherever it ran.
    let base = diff_ids(&format!("{name}/base"), "p1");
    let layers: BTreeMap<&str, Vec<String>> = services
        .iter()
        .map(|s| (*s, diff_ids(&format!("{name}/{s}"), "p1")))
        .collect();
    for (s, l) in &layers {
        assert_eq!(l.len(), base.len() + 2, "{s}: {l:?}");
        assert_eq!(
            l[..base.len()],
            base[..],
            "{s} is not built on the pushed base"
        );
    }

    // The same project on one daemon gives the same layers (all but the random step's):
    // a copy with the files' times kept (COPY keeps them), pushed to another repository.
    let one_name = unique("pool-one");
    let one = copy_to_repo(&dir, &tmp.path().join("one"), &repo, &one_name);
    let (ok, err, _) = bake(&one, &[]);
    assert!(ok, "{err}");
    assert_eq!(diff_ids(&format!("{one_name}/base"), "p1"), base);
    for (s, l) in &layers {
        let single = diff_ids(&format!("{one_name}/{s}"), "p1");
        assert_eq!(single.len(), l.len(), "{s}");
        assert_eq!(single[..base.len()], l[..base.len()], "{s}");
        assert_eq!(single.last(), l.last(), "{s}: the COPY layer differs");
    }

    // One file changed in a service of each daemon: each goes back where its cache is.
    let changed: Vec<&str> = engines
        .iter()
        .map(|e| *services.iter().find(|s| on[**s] == *e).unwrap())
        .collect();
    for s in &changed {
        write(&dir.join(s).join("f.txt"), format!("{s} changed\n"));
    }
    let plan = run_ok(bk().current_dir(&dir).arg("plan").args(&pool));
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    for s in &changed {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{s} ")))
            .unwrap_or_else(|| panic!("{s} missing from the plan:\n{text}"));
        assert!(
            line.contains("build") && line.ends_with(&format!("(on {})", on[*s])),
            "plan does not place {s} on {}:\n{text}",
            on[*s]
        );
    }
    let (ok, err, meta) = bake(&dir, &pool);
    assert!(ok, "{err}");
    let again = built_on(&meta);
    assert_eq!(
        again.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut c = changed.clone();
            c.sort();
            c
        },
        "only the changed services are built: {again:?}"
    );
    for s in &changed {
        assert_eq!(again[*s], on[*s], "{s} was built away from its cache");
        let now = diff_ids(&format!("{name}/{s}"), "p1");
        let before = &layers[*s];
        // The daemon's own cache: the random step was not run again.
        assert_eq!(
            now[base.len()],
            before[base.len()],
            "{s}: the daemon that built it ran its random step again (no cache)"
        );
        assert_ne!(
            now.last(),
            before.last(),
            "{s}: the changed file is not in it"
        );
    }

    // The registry says where each was built (a tag beside the images, annotations only).
    for s in &changed {
        let repo = format!("{name}/{s}");
        let tags = registry_json(&format!("/v2/{repo}/tags/list"));
        let hint = tags["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
            .find(|t| t.starts_with("bk-build-daemon-"))
            .unwrap_or_else(|| panic!("no placement hint in {repo}: {tags}"))
            .to_string();
        let m = registry_json(&format!("/v2/{repo}/manifests/{hint}"));
        assert_eq!(
            m["annotations"]["dev.bk-build.address"],
            on[*s].as_str(),
            "{m}"
        );
    }
    // A fresh runner (a new clone: no `.bk-build/`) learns from the registry where each was
    // built, and goes back there too.
    let fresh = tmp.path().join("fresh");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&dir)
        .arg(&fresh)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::remove_dir_all(fresh.join(".bk-build")).unwrap();
    for s in &changed {
        write(&fresh.join(s).join("f.txt"), format!("{s} changed again\n"));
    }
    // One slot each, and the daemons in the order that sends the first target to start to
    // the other daemon when nothing says where it was built (ties go to the first address).
    let mut order = engines.to_vec();
    if changed[0] < changed[1] {
        order.reverse();
    }
    let mut args = addr_args(&order);
    args.extend(["-j".to_string(), "1".to_string()]);
    let (ok, err, meta) = bake(&fresh, &args);
    assert!(ok, "{err}");
    let third = built_on(&meta);
    for s in &changed {
        assert_eq!(
            third.get(*s),
            Some(&on[*s]),
            "a fresh runner built {s} away from its cache: {third:?}"
        );
        let now = diff_ids(&format!("{name}/{s}"), "p1");
        assert_eq!(
            now[base.len()],
            layers[*s][base.len()],
            "{s}: the fresh runner's daemon ran its random step again (no cache)"
        );
    }
}

/// Whether some process's command line contains `needle` (what `pgrep -f` does).
fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| {
            let c: Vec<u8> = c
                .into_iter()
                .map(|b| if b == 0 { b' ' } else { b })
                .collect();
            String::from_utf8_lossy(&c).contains(needle)
        })
}

/// A private Docker Engine started for one test and killed with it: its own data, exec root,
/// socket and pidfile under a short temporary directory, no bridge (the builds here run with
/// `RUN --network=none`).
struct ThrowawayEngine {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl ThrowawayEngine {
    fn start() -> ThrowawayEngine {
        let dir = tempfile::Builder::new()
            .prefix("bkp")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        write(
            &d.join("daemon.json"),
            r#"{"features": {"containerd-snapshotter": true}, "bridge": "none", "iptables": false, "ip6tables": false, "ip-forward": false, "ip-masq": false}"#,
        );
        let dockerd: PathBuf = bkenv().join("root/usr/sbin/dockerd");
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let mut cmd = Command::new(&dockerd);
        for (k, v) in env() {
            cmd.env(k, v);
        }
        use std::os::unix::process::CommandExt;
        cmd.arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so that killing it takes its containerd along.
            .process_group(0);
        let child = cmd.spawn().expect("start dockerd");
        let e = ThrowawayEngine { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = docker()
                .env("DOCKER_HOST", e.socket())
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the throwaway dockerd did not come up: {}",
                std::fs::read_to_string(e.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        e
    }

    fn socket(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn address(&self) -> String {
        format!("docker://{}", self.socket())
    }

    /// SIGKILL to the engine's whole process group: a daemon that dies, not one that stops.
    fn kill(&mut self) {
        // Quiet: after the first kill, the group is gone.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ThrowawayEngine {
    fn drop(&mut self) {
        self.kill();
        // Its mounts, if the kill left any, before the directory goes.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

/// A daemon killed while it builds: its targets are built once more on the other daemon and
/// the run succeeds, with every result recorded; the next run, with that daemon still down,
/// leaves it out with a warning and builds on the rest.
#[test]
fn a_daemon_killed_mid_build_has_its_targets_built_on_the_others() {
    let mut third = ThrowawayEngine::start();
    let name = unique("pool-kill");
    let repo = format!("localhost:5000/{name}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    // Long enough to be killed in the middle of it.
    project(&dir, &repo, &["slow1", "slow2"], "sleep 12 && date > /when");
    // The throwaway engine first: with one slot each, the base goes there (ties go to the
    // first daemon), and so does a service.
    let pool = addr_args(&[third.address(), "docker://".to_string()]);
    let mut args = pool.clone();
    args.extend(["-j".to_string(), "1".to_string()]);
    let mut child = spawn_bake(&dir, &args);
    // Kill it while a service's slow step runs there. With one slot per daemon, the base is
    // built there (ties go to the first daemon), then one service there and the other on the
    // primary engine at the same time: a slow step running means both have started.
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut all);
        (child, all)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let slow_step = "sleep 12 && date";
    loop {
        if process_running(slow_step) {
            break;
        }
        assert!(Instant::now() < deadline, "the slow step never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    third.kill();
    let answers = docker()
        .env("DOCKER_HOST", third.socket())
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        !answers,
        "the throwaway engine still answers after the kill"
    );
    let (mut child, err) = reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the run failed with a daemon left:\n{err}"
    );
    assert!(
        err.contains(&format!("{} stopped answering during this build: building it again on another daemon of the pool", third.address()))
            || err.contains(&format!("{} does not answer any more: building it again on another daemon of the pool", third.address())),
        "no retry was reported:\n{err}"
    );
    let meta = metadata(&dir);
    let on = built_on(&meta);
    assert_eq!(on.len(), 3, "{on:?}\n{err}");
    // The base finished there before the kill; the services, killed or not, did not.
    for t in ["slow1", "slow2"] {
        assert_eq!(
            on[t], "docker://",
            "{t} is not reported built on the live daemon"
        );
    }
    // Each result is in the registry, on the pushed base, and recorded: a plan skips all.
    let base = diff_ids(&format!("{name}/base"), "p1");
    for s in ["slow1", "slow2"] {
        let l = diff_ids(&format!("{name}/{s}"), "p1");
        assert_eq!(l[..base.len()], base[..], "{s}");
    }
    let plan = run_ok(bk().current_dir(&dir).arg("plan").args(&pool));
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(
        text.lines().all(|l| l.contains(" skip ")),
        "after the run, the plan is not all skips:\n{text}"
    );

    // Still down at the start: left out with a warning; the run builds on the other one.
    write(&dir.join("slow1/f.txt"), "slow1 changed\n");
    let (ok, err, meta) = bake(&dir, &pool);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("{} left out of this run", third.address())),
        "{err}"
    );
    assert_eq!(
        built_on(&meta).get("slow1").map(String::as_str),
        Some("docker://")
    );
}

/// The project of the idle-death and load tests: independent targets `FROM` the busybox base
/// with `pull = true` (so any daemon may build them), each with its own slow step.
fn independent(dir: &Path, repo: &str, targets: &[(&str, &str, &str)]) {
    let mut toml =
        format!("[defaults]\ntags = [\"{repo}/{{name}}:p1\"]\npush = true\npull = true\n");
    for (name, extra, run) in targets {
        toml.push_str(&format!("\n[target.{name}]\ncontext = \"{name}\"\n{extra}"));
        write(
            &dir.join(name).join("Dockerfile"),
            format!(
                // Unique to the run, so no step comes from an earlier run's cache.
                "FROM {}\nRUN --network=none echo {repo} > /run.txt && {run}\nCOPY f.txt /{name}.txt\n",
                base_image()
            ),
        );
        write(&dir.join(name).join("f.txt"), format!("{name} {repo}\n"));
    }
    write(&dir.join("bk-build.toml"), toml);
}

/// A daemon that dies between builds (no build's connection breaks) is found out when the
/// next build placed there cannot start: that target is built on another daemon.
#[test]
fn a_daemon_that_died_while_idle_is_routed_around() {
    // Which of two targets started together gets the free tie is up to the run; the scenario
    // needs the quick one on the throwaway engine, so it is tried again until it is (every
    // attempt must still succeed). On freshly started daemons the primary engine won the tie
    // in 6 of 7 attempts (2026-12-02), so 4 attempts were not enough.
    const ATTEMPTS: usize = 10;
    for attempt in 1..=ATTEMPTS {
        if idle_death_attempt() {
            return;
        }
        eprintln!("attempt {attempt}: the quick target went to the primary engine; again");
    }
    panic!("in {ATTEMPTS} attempts the quick target never went to the throwaway engine");
}

/// One try of [`a_daemon_that_died_while_idle_is_routed_around`]: `false` when the layout it
/// needs did not happen (the run must have succeeded anyway).
fn idle_death_attempt() -> bool {
    let mut third = ThrowawayEngine::start();
    let name = unique("pool-idle");
    let repo = format!("localhost:5000/{name}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    // `a` is quick and (usually) goes to the throwaway engine; `b` is slow on the other one;
    // `c` builds on `a` (so it prefers a's daemon) after `b`.
    independent(&dir, &repo, &[("a", "", "true"), ("b", "", "sleep 10")]);
    let mut toml = std::fs::read_to_string(dir.join("bk-build.toml")).unwrap();
    toml.push_str("\n[target.c]\ncontext = \"c\"\ndepends_on = [\"b\"]\n");
    write(&dir.join("bk-build.toml"), toml);
    write(
        &dir.join("c/Dockerfile"),
        format!("FROM {repo}/a:p1\nCOPY f.txt /c.txt\n"),
    );
    write(&dir.join("c/f.txt"), "c\n");
    let args = addr_args(&[third.address(), "docker://".to_string()]);
    let mut all = args.clone();
    all.extend(["-j".to_string(), "1".to_string()]);
    let child = spawn_bake(&dir, &all);
    // Once `b`'s slow step runs, `a` (quick, started with it) is done: kill the engine.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !process_running("sleep 10") {
        assert!(Instant::now() < deadline, "b's slow step never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    third.kill();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let meta = metadata(&dir);
    let on = built_on(&meta);
    if on.get("a") != Some(&third.address()) {
        return false;
    }
    assert_eq!(
        on.get("c").map(String::as_str),
        Some("docker://"),
        "{on:?}\n{err}"
    );
    let again = ": building it again on another daemon of the pool";
    assert!(
        err.contains(&format!(
            "{} does not answer any more{again}",
            third.address()
        )) || err.contains(&format!(
            "{} stopped answering during this build{again}",
            third.address()
        )),
        "{err}"
    );
    true
}

/// An image for the engine (`load = true`, an `outputs = ["type=docker"]`, or tags with no
/// push and no other output) goes into the Docker Engine that builds it: a pool builds such a
/// target only on the engine the run checks (the first address), even when another daemon is
/// free, so the user's engine has it and the next run finds it there and skips it.
#[test]
fn a_loaded_target_is_built_on_the_engine_the_run_checks() {
    let name = unique("pool-load");
    let repo = format!("localhost:5000/{name}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    // `a1` starts first and keeps the primary engine busy; the others are then ready while
    // only the TLS engine has a free slot.
    independent(
        &dir,
        &repo,
        &[
            ("a1", "", "sleep 4"),
            ("zx", "push = false\n", "true"),
            ("zy", "push = false\noutputs = [\"type=docker\"]\n", "true"),
            ("zz", "push = false\nload = true\n", "true"),
        ],
    );
    let engines = two_engines();
    let mut args = addr_args(&engines);
    args.extend(["-j".to_string(), "1".to_string()]);
    let (ok, err, meta) = bake(&dir, &args);
    assert!(ok, "{err}");
    let on = built_on(&meta);
    for t in ["zx", "zy", "zz"] {
        assert_eq!(on.get(t), Some(&engines[0]), "{t}: {on:?}\n{err}");
    }
    let plan = run_ok(bk().current_dir(&dir).arg("plan").args(addr_args(&engines)));
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    // `type=docker` cannot be checked, so it is always built; the rest are found.
    for l in text.lines().filter(|l| !l.starts_with("zy ")) {
        assert!(
            l.contains(" skip "),
            "not found where the run looks:\n{text}"
        );
    }
}

/// Without pull, a Docker Engine builds `FROM` its own image of a tag when it has one; the
/// key counts the image the plan saw. When no daemon of the pool has that one (here: the plan
/// looked at an address that is down, and the only daemon left has a local image of another
/// content), the target fails rather than being built, pushed and recorded from the wrong base.
#[test]
fn without_pull_a_base_only_another_engine_has_locally_is_never_used() {
    let name = unique("pool-local");
    let ext = format!("localhost:5000/{name}/ext:v1");
    let tmp = tempfile::tempdir().unwrap();
    // The registry's image of the tag, then a different one under the same tag, loaded into
    // the TLS engine only.
    let mk = |sub: &str, content: &str, extra: &[&str]| {
        let d = tmp.path().join(sub);
        write(
            &d.join("Dockerfile"),
            format!("FROM {}\nCOPY ext.txt /ext.txt\n", base_image()),
        );
        write(&d.join("ext.txt"), content);
        let mut c = bk();
        c.current_dir(&d)
            .args(["build", "-q", "-t", &ext])
            .args(extra)
            .arg(".");
        run_ok(&mut c);
    };
    mk("ext-registry", "registry\n", &["--push"]);
    let tls = format!("docker://{}", tls_engine().socket);
    mk(
        "ext-local",
        "local to the TLS engine\n",
        &["--load", "--addr", &tls],
    );

    let dir = tmp.path().join("p");
    write(
        &dir.join("bk-build.toml"),
        format!("[target.e1]\ncontext = \"e1\"\ntags = [\"localhost:5000/{name}/e1:p1\"]\npush = true\n"),
    );
    write(
        &dir.join("e1/Dockerfile"),
        format!("FROM {ext}\nCOPY f.txt /f.txt\n"),
    );
    write(&dir.join("e1/f.txt"), "e1\n");
    let dead = "docker://unix:///nonexistent/bk-build-pool.sock".to_string();
    let (ok, err, _) = bake(&dir, &addr_args(&[dead, tls]));
    assert!(
        !ok,
        "built from a base image the plan did not count:\n{err}"
    );
    assert!(
        err.contains("no daemon of the pool can build it correctly"),
        "{err}"
    );
    assert!(
        manifest_digest(&format!("{name}/e1"), "p1").is_none(),
        "a result was pushed"
    );
}

/// `BUILDKIT_HOST` as a list is read as written by hand: spaces around items, empty items and
/// repeats do not add daemons or warnings; the same daemon under two addresses is one member.
#[test]
fn a_buildkit_host_list_is_read_as_written_by_hand() {
    let out = run_ok(
        bk().env("BUILDKIT_HOST", " docker:// , ,docker://,")
            .args(["workers", "--format", "json"]),
    );
    let err = stderr(&out);
    assert!(!err.contains("WARNING"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // One address left: the one-daemon shape.
    assert!(
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a[0].get("address").is_none()),
        "{v}"
    );

    // The primary engine by its socket and as `docker://`: one member, with a warning.
    let sock = format!("docker://{}", env_var("DOCKER_HOST"));
    let out = run_ok(
        bk().env("BUILDKIT_HOST", format!("docker://,{sock}"))
            .args(["workers", "--format", "json"]),
    );
    let err = stderr(&out);
    assert!(err.contains("is the same daemon as docker://"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["address"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["docker://"], "{v}");
}

/// A project's `[builders]` are its pool when no `--addr` or `BUILDKIT_HOST` is given: one that
/// does not answer is left out; declared native platforms route targets (an `linux/arm64`
/// target to the daemon that says it builds arm64, a target for this machine away from it).
#[test]
fn a_project_s_builders_are_its_pool() {
    let name = unique("pool-builders");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let tls = format!("docker://{}", tls_engine().socket);
    write(
        &dir.join("bk-build.toml"),
        format!(
            "[defaults]\ntags = [\"localhost:5000/{name}/{{name}}:p1\"]\npush = true\n\n\
             [target.arm]\ncontext = \"arm\"\nplatforms = [\"linux/arm64\"]\n\n\
             [target.host]\ncontext = \"host\"\n\n\
             [builders.a]\naddr = \"docker://\"\njobs = 1\n\n\
             [builders.off]\naddr = \"unix:///nonexistent/bk-build-builders.sock\"\n\n\
             [builders.t]\naddr = \"{tls}\"\nplatforms = [\"linux/arm64\"]\n"
        ),
    );
    for t in ["arm", "host"] {
        // FROM scratch: no base image to pull, so either daemon can build either platform.
        write(
            &dir.join(t).join("Dockerfile"),
            "FROM scratch\nCOPY f.txt /f.txt\n",
        );
        write(&dir.join(t).join("f.txt"), format!("{t} {name}\n"));
    }
    let (ok, err, meta) = bake(&dir, &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "unix:///nonexistent/bk-build-builders.sock ([builders.off]) left out of this run"
        ),
        "{err}"
    );
    let on = built_on(&meta);
    assert_eq!(on.get("arm"), Some(&tls), "{on:?}\n{err}");
    assert_eq!(
        on.get("host").map(String::as_str),
        Some("docker://"),
        "{on:?}\n{err}"
    );
    // `workers` and `info` in the project's directory show the same pool.
    let out = run_ok(bk().current_dir(&dir).args(["workers", "--format", "json"]));
    let err = stderr(&out);
    assert!(
        err.contains("unix:///nonexistent/bk-build-builders.sock ([builders.off]) left out"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["address"].as_str().unwrap())
        .collect();
    listed.dedup();
    assert_eq!(listed, ["docker://", tls.as_str()], "{v}");
    let out = run_ok(bk().current_dir(&dir).arg("info"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.matches("Address:").count() == 2 && text.contains(&tls_engine().socket),
        "{text}"
    );
    // So do `du` and `prune` (pruning nothing here: a filter no record matches, so the
    // other tests' caches stay).
    let out = run_ok(bk().current_dir(&dir).args(["du", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut on: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    on.sort();
    on.dedup();
    assert_eq!(on.len(), 2, "du did not list both daemons' records: {on:?}");
    // ([builders.off] is down: the others are pruned, and the exit status says one was not.)
    let out = bk()
        .current_dir(&dir)
        .args(["prune", "--filter", &format!("description~=none-{name}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not pruned"), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(": removed 0 records"))
            .count(),
        2,
        "{text}"
    );
    // `--addr` replaces the project's pool.
    write(&dir.join("host/f.txt"), format!("host changed {name}\n"));
    let (ok, err, meta) = bake(&dir, &addr_args(std::slice::from_ref(&tls)));
    assert!(ok, "{err}");
    assert!(!err.contains("left out"), "{err}");
    assert_eq!(built_on(&meta).get("host"), Some(&tls));
}

/// `info`, `workers`, `du` and `prune` read only a project's `[vars]` and `[builders]`, so a
/// mistake in a target does not hide the pool; `-f` names another project file; a member that
/// answers gRPC but is not BuildKit (the engine's own containerd socket) is left out with a
/// warning rather than failing the command; every pool output spells a member's address as it
/// was given and names its builder.
#[test]
fn inspecting_a_pool_reads_only_its_builders_and_leaves_out_what_is_not_buildkit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let tls = format!("docker://{}", tls_engine().socket);
    let containerd = format!(
        "unix://{}",
        bkenv().join("exec/containerd/containerd.sock").display()
    );
    // The target's context does not exist: `bake` would stop on it, these commands must not.
    write(
        &dir.join("bk-build.toml"),
        format!(
            "[vars]\nTLS = \"{tls}\"\n\n\
             [target.broken]\ncontext = \"no-such-folder\"\n\n\
             [builders.main]\naddr = \"docker://\"\njobs = 3\n\n\
             [builders.secure]\naddr = \"${{TLS}}\"\nplatforms = [\"linux/arm64\"]\n\n\
             [builders.notbk]\naddr = \"{containerd}\"\n"
        ),
    );
    let out = run_ok(bk().current_dir(&dir).args(["workers", "--format", "json"]));
    let err = stderr(&out);
    assert!(!err.contains("could not be read"), "{err}");
    assert!(
        err.contains(&containerd) && err.contains("[builders.notbk]") && err.contains("left out"),
        "the containerd socket was not left out with a warning naming it:\n{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut members: Vec<(String, String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["builder"].as_str().unwrap().to_string(),
                w["address"].as_str().unwrap().to_string(),
                w["jobs"].as_u64().unwrap(),
            )
        })
        .collect();
    members.dedup();
    assert_eq!(members.len(), 2, "{v}");
    assert_eq!(
        (members[0].0.as_str(), members[0].1.as_str(), members[0].2),
        ("main", "docker://", 3),
        "{v}"
    );
    assert_eq!(
        (members[1].0.as_str(), members[1].1.as_str()),
        ("secure", tls.as_str()),
        "{v}"
    );
    let out = run_ok(bk().current_dir(&dir).arg("workers"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Builder:   secure") && text.contains("Declared:  linux/arm64"),
        "{text}"
    );
    // `info`'s pool entries: the address as given (as in `workers`, `du` and `plan`), the
    // endpoint it resolved to beside it.
    let out = run_ok(bk().current_dir(&dir).args(["info", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pool = v["pool"].as_array().unwrap();
    assert_eq!(pool.len(), 2, "{v}");
    assert_eq!(pool[0]["address"], "docker://", "{v}");
    assert_eq!(pool[1]["address"], tls.as_str(), "{v}");
    assert_eq!(pool[1]["builder"], "secure", "{v}");
    assert!(
        pool[0]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("docker://unix://"),
        "{v}"
    );

    // -f: another file's builders, from any directory.
    let other = tmp.path().join("other.toml");
    write(&other, format!("[builders.only]\naddr = \"{tls}\"\n"));
    let out = run_ok(bk().current_dir(tmp.path()).args([
        "du",
        "--format",
        "json",
        "-f",
        other.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut on: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["builder"].as_str().unwrap())
        .collect();
    on.dedup();
    assert_eq!(on, ["only"], "{v}");
    // A file named with -f that cannot be read is an error, not a silent default daemon.
    let out = bk()
        .current_dir(tmp.path())
        .args(["workers", "-f", "missing.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    // The order written, not the names' order: the first builder is where `load` images go.
    write(
        &other,
        format!(
            "[builders.zlocal]\naddr = \"docker://\"\n\n[builders.aremote]\naddr = \"{tls}\"\n"
        ),
    );
    let out = run_ok(bk().args(["workers", "--format", "json", "-f", other.to_str().unwrap()]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut order: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["builder"].as_str().unwrap())
        .collect();
    order.dedup();
    assert_eq!(order, ["zlocal", "aremote"], "{v}");
    // A closed standard output is not a daemon that failed to prune.
    let mut child = bk()
        .args(["prune", "--filter", "description~=none-inspect-zz", "-f"])
        .arg(&other)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A filter every daemon refuses: one error, not a daemon "left out" per member.
    let out = bk()
        .args(["du", "--filter", "bogus!!", "-f", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("every daemon of the pool failed")
            && !stderr(&out).contains("WARNING"),
        "{}",
        stderr(&out)
    );
    // `prune` with a builder that is down: the others are pruned, and the run says it failed.
    write(
        &other,
        "[builders.main]\naddr = \"docker://\"\n\n[builders.down]\naddr = \"unix:///nonexistent/bk-build-inspect.sock\"\n",
    );
    let out = bk()
        .args([
            "prune",
            "--filter",
            "description~=none-inspect-zz",
            "-f",
            other.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a prune that skipped a daemon exited 0"
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("docker:// ([builders.main]): removed 0 records"));
    assert!(
        stderr(&out).contains("not pruned") && stderr(&out).contains("[builders.down]"),
        "{}",
        stderr(&out)
    );
    // A [builders] mistake in the current directory's file stops `prune` (and the others)
    // instead of acting on the default daemon.
    write(
        &dir.join("bk-build.toml"),
        "[builders.remote]\nadr = \"docker://\"\n",
    );
    let out = bk()
        .current_dir(&dir)
        .args(["prune", "--filter", "description~=none-inspect-zz"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("adr"), "{}", stderr(&out));
    // -f with a compose file: it names no daemons, which is said, not silently defaulted.
    let compose = tmp.path().join("compose.yaml");
    write(&compose, "services:\n  a:\n    image: busybox\n");
    let out = bk()
        .args(["info", "-f", compose.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("declares no [builders"),
        "{}",
        stderr(&out)
    );
    // Nor does a bk-build.toml named with -f that has no builders.
    let plain = tmp.path().join("plain.toml");
    write(&plain, "[vars]\nX = \"1\"\n");
    let out = bk()
        .args(["prune", "--filter", "description~=none-inspect-zz", "-f"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("declares no [builders"),
        "{}",
        stderr(&out)
    );
    // Only the non-BuildKit member: nothing answered, so the command fails, naming it.
    let out = bk()
        .args(["workers", "--addr", &containerd])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown service moby.buildkit.v1.Control"),
        "{}",
        stderr(&out)
    );
}

/// Targets wait for the daemon that built them last only while the queue there is short:
/// with everything built on one daemon before, a pool that gained a second one spreads the
/// rebuilds instead of running them one after another where the cache is.
#[test]
fn a_long_queue_for_the_cache_spills_to_a_free_daemon() {
    let name = unique("pool-queue");
    let repo = format!("localhost:5000/{name}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let targets: Vec<(String, &str, &str)> =
        (1..=7).map(|i| (format!("t{i}"), "", "sleep 2")).collect();
    let refs: Vec<(&str, &str, &str)> = targets
        .iter()
        .map(|(n, e, r)| (n.as_str(), *e, *r))
        .collect();
    independent(&dir, &repo, &refs);
    // All built on the primary engine alone.
    let (ok, err, _) = bake(&dir, &addr_args(&["docker://".to_string()]));
    assert!(ok, "{err}");
    for (t, _, _) in &targets {
        write(&dir.join(t).join("f.txt"), format!("{t} changed {repo}\n"));
    }
    let engines = two_engines();
    let mut args = addr_args(&engines);
    args.extend(["-j".to_string(), "1".to_string()]);
    let (ok, err, meta) = bake(&dir, &args);
    assert!(ok, "{err}");
    let on = built_on(&meta);
    assert_eq!(on.len(), 7, "{on:?}");
    let elsewhere = on.values().filter(|d| **d == engines[1]).count();
    assert!(
        elsewhere >= 1,
        "every rebuild queued for the daemon with the cache while the other idled: {on:?}"
    );
    assert!(
        on.values().filter(|d| **d == engines[0]).count() >= 5,
        "the rebuilds did not stay where the cache is while the queue was short: {on:?}"
    );
}

/// A builder's declared platforms only route targets: what the daemon builds when a target
/// names none is what it reports, so such a target is recorded and skipped next time. Wrong
/// builder settings stop the run, naming the builder; `--tls*` flags do not silently apply to
/// the project's builders.
#[test]
fn builders_settings_route_and_fail_where_they_should() {
    let name = unique("pool-bset");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let head = format!(
        "[target.host]\ncontext = \"host\"\ntags = [\"localhost:5000/{name}/host:p1\"]\npush = true\n\n"
    );
    write(
        &dir.join("host/Dockerfile"),
        "FROM scratch\nCOPY f.txt /f.txt\n",
    );
    write(&dir.join("host/f.txt"), format!("host {name}\n"));
    write(
        &dir.join("bk-build.toml"),
        format!(
            "{head}[builders.a]\naddr = \"docker://\"\nplatforms = [\"linux/arm64\", \"linux/amd64\"]\n\n\
             [builders.off]\naddr = \"unix:///nonexistent/bk-build-bset.sock\"\n"
        ),
    );
    let (ok, err, _) = bake(&dir, &[]);
    assert!(ok, "{err}");
    assert!(!err.contains("will not be reused"), "{err}");
    let plan = run_ok(bk().current_dir(&dir).arg("plan"));
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(
        text.contains(" skip "),
        "not reused after a build for this machine:\n{text}"
    );

    // A TLS directory that does not exist: an error naming the builder, nothing built.
    write(&dir.join("host/f.txt"), format!("host changed {name}\n"));
    write(
        &dir.join("bk-build.toml"),
        format!(
            "{head}[builders.a]\naddr = \"docker://\"\n\n\
             [builders.bad]\naddr = \"docker://tcp://127.0.0.1:2376\"\ntlsdir = \"nope\"\n"
        ),
    );
    let (ok, err, _) = bake(&dir, &[]);
    assert!(
        !ok,
        "a builder with missing TLS files was left out instead:\n{err}"
    );
    assert!(err.contains("[builders.bad]"), "{err}");
    // `plan` needs no daemon, but says the same before planning anything.
    let out = bk().current_dir(&dir).arg("plan").output().unwrap();
    assert!(
        !out.status.success(),
        "plan accepted a builder with missing TLS files:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(&out).contains("[builders.bad]") && stderr(&out).contains("tls* keys"),
        "{}",
        stderr(&out)
    );
    // The fix names the table's keys, not the command line's flags.
    assert!(
        stderr(&out).contains("the tlscacert key") && !stderr(&out).contains("--tls"),
        "{}",
        stderr(&out)
    );
    // A lone builder that is down: its settings are not blamed, the daemon is.
    write(
        &dir.join("bk-build.toml"),
        format!("{head}[builders.down]\naddr = \"unix:///nonexistent/bk-build-bset.sock\"\n"),
    );
    let (ok, err, _) = bake(&dir, &[]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("[builders.down]") && err.contains("no daemon listens there"),
        "{err}"
    );
    assert!(!err.contains("tls* keys"), "{err}");
    write(
        &dir.join("bk-build.toml"),
        format!(
            "{head}[builders.a]\naddr = \"docker://\"\n\n\
             [builders.bad]\naddr = \"docker://tcp://127.0.0.1:2376\"\ntlsdir = \"nope\"\n"
        ),
    );
    // The --tls* flags with the project's builders: refused, not ignored.
    let (ok, err, _) = bake(&dir, &["--tlsdir".to_string(), "certs".to_string()]);
    assert!(!ok, "{err}");
    assert!(err.contains("the --tls* flags apply to --addr"), "{err}");
}

/// A monorepo of 14 targets, all pushed under `repo`, every layer reproducible: two bases
/// `pybase` and `nodebase` on the busybox base; `svc01`…`svc10` on one of them (odd: pybase,
/// even: nodebase) through the `ARG REPO`/`ARG TAG` FROM of the other projects here, each with
/// a one-second step; `web` on nodebase with the folder `shared/` from outside its own
/// directory (a named context); `edge` on svc01. Returns each dependent's base target.
///
/// A layer is the same on any daemon when its files are: COPY keeps the files' times, and each
/// RUN writes only a file it dates to the epoch. The busybox base has no `/dev`, `/proc` and
/// `/sys`, which the first RUN on it would create with the time of the build, so the bases
/// bring them (empty directories, times kept) in their COPY.
fn monorepo(dir: &Path, repo: &str) -> BTreeMap<String, String> {
    // The project files' contents are unique to the run, so that no step comes from the
    // cache of an earlier run (the one-daemon build must build what the pool did not).
    let run = |what: &str| {
        format!("RUN --network=none echo {what} {repo} > /{what}.run && touch -d @0 /{what}.run\n")
    };
    // `pull = true`: any daemon may build the bases, also one without a busybox image of its own.
    let mut toml = format!(
        "[vars]\nREPO = \"{repo}\"\nTAG = \"p1\"\n\n[defaults]\ntags = [\"${{REPO}}/{{name}}:${{TAG}}\"]\n\
         args = {{ REPO = \"${{REPO}}\", TAG = \"${{TAG}}\" }}\npush = true\npull = true\n"
    );
    let mut bases = BTreeMap::new();
    for b in ["pybase", "nodebase"] {
        toml.push_str(&format!("\n[target.{b}]\ncontext = \"{b}\"\n"));
        write(
            &dir.join(b).join("Dockerfile"),
            format!("FROM {}\nCOPY root/ /\n{}", base_image(), run(b)),
        );
        for d in ["dev", "proc", "sys"] {
            std::fs::create_dir_all(dir.join(b).join("root").join(d)).unwrap();
        }
        write(&dir.join(b).join("root/base.txt"), format!("{b} {repo}\n"));
    }
    let mut service = |s: &str, from: &str, extra: &str, dockerfile_extra: &str| {
        toml.push_str(&format!("\n[target.{s}]\ncontext = \"{s}\"\n{extra}"));
        write(
            &dir.join(s).join("Dockerfile"),
            format!(
                "ARG REPO\nARG TAG\nFROM ${{REPO}}/{from}:${{TAG}}\n{}{dockerfile_extra}COPY f.txt /{s}.txt\n",
                run(s)
            ),
        );
        write(&dir.join(s).join("f.txt"), format!("{s} {repo}\n"));
        bases.insert(s.to_string(), from.to_string());
    };
    for i in 1..=10 {
        let base = if i % 2 == 1 { "pybase" } else { "nodebase" };
        // Work enough that the services do not all fit on their base's daemon.
        service(
            &format!("svc{i:02}"),
            base,
            "",
            "RUN --network=none sleep 1\n",
        );
    }
    service(
        "web",
        "nodebase",
        "contexts = { shared = \"shared\" }\n",
        "COPY --from=shared common.txt /web-common.txt\n",
    );
    service("edge", "svc01", "", "");
    write(&dir.join("shared/common.txt"), format!("shared {repo}\n"));
    write(&dir.join("bk-build.toml"), toml);
    bases
}

/// Issue 12's monorepo on three private Docker Engines that share only the registry (the
/// primary, the TLS one and a throwaway third): the 14 targets are spread over all three, with
/// services built on another daemon than their base (which each gets from the registry), and
/// every image has exactly the layers a one-daemon build of the same project gives: where a
/// target is built does not change what is built.
#[test]
fn a_monorepo_spread_over_three_engines_has_the_layers_of_a_one_daemon_build() {
    let third = ThrowawayEngine::start();
    let [primary, tls] = two_engines();
    let engines = [primary, tls, third.address()];
    let name = unique("pool-mono");
    let repo = format!("localhost:5000/{name}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let bases = monorepo(&dir, &repo);
    let targets: Vec<String> = ["pybase", "nodebase"]
        .into_iter()
        .map(String::from)
        .chain(bases.keys().cloned())
        .collect();
    assert_eq!(targets.len(), 14);

    // One build slot per daemon: the bases go to two daemons, and their services cannot all
    // wait for them.
    let mut args = addr_args(&engines);
    args.extend(["-j".to_string(), "1".to_string()]);
    let (ok, err, meta) = bake(&dir, &args);
    assert!(ok, "{err}");
    let on = built_on(&meta);
    let mut all = targets.clone();
    all.sort();
    assert_eq!(
        on.keys().cloned().collect::<Vec<_>>(),
        all,
        "every target is built once: {on:?}\n{err}"
    );
    for e in &engines {
        assert!(
            on.values().any(|d| d == e),
            "nothing was built on {e}: {on:?}"
        );
    }
    assert!(
        bases
            .iter()
            .any(|(s, b)| s.starts_with("svc") && on[s] != on[b]),
        "every service was built on its base's daemon: {on:?}"
    );
    let layers: BTreeMap<&str, Vec<String>> = targets
        .iter()
        .map(|t| (t.as_str(), diff_ids(&format!("{name}/{t}"), "p1")))
        .collect();
    // Each dependent is built on exactly the image its base pushed, wherever each ran.
    for (s, b) in &bases {
        let (l, base) = (&layers[s.as_str()], &layers[b.as_str()]);
        assert!(
            l.len() > base.len() && l[..base.len()] == base[..],
            "{s} is not built on the pushed {b}: {l:?} {base:?}"
        );
    }

    // The same project on one daemon: a copy with the files' times kept (COPY keeps them),
    // pushed to another repository, so nothing is found in the registry and all is built.
    let one_name = unique("pool-mono-one");
    let one = copy_to_repo(&dir, &tmp.path().join("one"), &repo, &one_name);
    let (ok, err, meta) = bake(&one, &addr_args(&engines[..1]));
    assert!(ok, "{err}");
    assert_eq!(
        built_on(&meta).len(),
        targets.len(),
        "the one-daemon build did not build every target: {meta}\n{err}"
    );
    for t in &targets {
        assert_eq!(
            diff_ids(&format!("{one_name}/{t}"), "p1"),
            layers[t.as_str()],
            "{t}: built on {} in the pool, its layers differ from the one-daemon build's",
            on[t]
        );
    }
}
