//! Faults found by using bk-build the way people do (issue "Every fault found trying
//! bk-build…"): closed pipes, full disks, signals, file modes, hostile state directories and
//! project files, and the build args buildx gives special meaning. Real daemon and registry.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A one-target project (`app`, loaded) in a temp dir.
fn project(dockerfile: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("p");
    let repo = format!("localhost:5000/{}", unique("robust"));
    write(
        &root.join("bk-build.toml"),
        format!("[target.app]\ncontext = \"app\"\ntags = [\"{repo}/app:dev\"]\npush = true\n"),
    );
    write(&root.join("app/Dockerfile"), dockerfile);
    write(&root.join("app/a.txt"), unique("a"));
    (tmp, root)
}

/// Runs `cmd` with its standard output a pipe whose reader is already gone, so the first
/// write fails with EPIPE, as under `| head -1` once head has exited.
fn with_closed_stdout(cmd: &mut Command) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn no_panic(o: &std::process::Output) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert_ne!(o.status.code(), Some(101), "panic exit: {err}");
    assert!(
        o.status.code().is_some(),
        "killed by a signal: {:?}",
        o.status
    );
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let o = with_closed_stdout(bk().arg("info"));
    no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let (_t, root) = project(&format!("FROM {}\nCOPY a.txt /\n", base_image()));
    for format in ["json", "text"] {
        let o = with_closed_stdout(bk().current_dir(&root).args(["plan", "--format", format]));
        no_panic(&o);
        assert_eq!(o.status.code(), Some(0), "{format}: {}", stderr(&o));
    }
}

/// `-o -` (the export as a tar on standard output) into a reader that stops early ends the
/// way every other command's output does: quietly, exit 0, no broken-pipe error.
#[test]
fn a_tar_export_into_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    // The tar of busybox is far larger than a pipe's buffer: the reader leaves mid-export.
    write(
        &ctx.join("Dockerfile"),
        format!("FROM {}\nCOPY a.txt /\n", base_image()),
    );
    write(&ctx.join("a.txt"), unique("tar-to-pipe"));
    let args = ["build", "--progress", "plain", "-o", "-", "ctx"];
    let quiet = |o: &std::process::Output, how: &str| {
        no_panic(o);
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(0), "{how}: {err}");
        for noise in ["roken pipe", "ERROR", "error"] {
            assert!(!err.contains(noise), "{how}: {noise:?} in:\n{err}");
        }
        // The build itself ran to its end.
        assert!(err.contains("exporting to client tarball"), "{how}: {err}");
    };

    // The reader is gone before the first byte.
    let o = with_closed_stdout(bk().current_dir(tmp.path()).args(args));
    quiet(&o, "closed before");

    // `| head -c 100`: the reader takes 100 bytes, then exits.
    let mut child = bk()
        .current_dir(tmp.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut head = [0u8; 100];
    std::io::Read::read_exact(&mut out, &mut head).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_ne!(head, [0u8; 100], "the export started");
    quiet(&o, "head -c 100");
}

/// An image tarball on standard output (`-o type=oci,dest=-`) is all that goes there: the
/// digest bk-build prints otherwise would land after the end of the archive.
#[test]
fn an_export_to_stdout_is_not_followed_by_the_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    write(&ctx.join("a.txt"), unique("oci-to-stdout"));
    for kind in ["oci", "docker"] {
        let out = format!("type={kind},dest=-");
        let o = run_ok(bk().current_dir(tmp.path()).args([
            "build",
            "--progress",
            "quiet",
            "-o",
            &out,
            "ctx",
        ]));
        let tar = &o.stdout;
        // A tar ends with two zero blocks, and its length is a whole number of blocks.
        assert!(
            tar.len() >= 1024 && tar.len().is_multiple_of(512),
            "{kind}: {} bytes",
            tar.len()
        );
        assert!(
            tar[tar.len() - 1024..].iter().all(|&b| b == 0),
            "{kind}: something follows the archive: {:?}",
            String::from_utf8_lossy(&tar[tar.len() - 100..])
        );
    }
}

#[test]
fn a_full_disk_is_an_error_not_a_panic() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = bk()
        .arg("info")
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cannot write to standard output"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

#[test]
fn sigterm_cancels_the_build_and_says_so() {
    // The marker tells this RUN apart from any other `sleep` on the machine (after the
    // sleep, so that the shell that names it lives as long as the step).
    let marker = unique("slow");
    let (_t, root) = project(&format!(
        "FROM {}\nRUN sleep 60 && echo {marker}\n",
        base_image(),
    ));
    let mut child = bk()
        .current_dir(&root)
        .args(["bake", "--progress", "plain"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let _ = err.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    // Wait until the RUN step runs. Its progress is held back until the target is done
    // (plain output keeps each target's lines together), so look for its process.
    let started = Instant::now();
    while !Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(status.code(), Some(143), "{seen}");
    assert!(seen.contains("terminated"), "{seen}");
    // What the target printed so far is not lost with the interrupted run.
    assert!(
        seen.contains("[app] #") && seen.contains(&format!("RUN sleep 60 && echo {marker}")),
        "the held progress of the interrupted target was not written: {seen}"
    );
    assert!(seen.find(&marker) < seen.find("terminated"), "{seen}");
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "the build ran on"
    );
}

/// Whether the primary engine has an image tagged `tag`.
fn engine_has(tag: &str) -> bool {
    docker()
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// SIGTERM while `--load` goes through the Engine API (`docker load`, what a buildkitd daemon
/// uses; `BK_BUILD_LOAD_VIA_API=1` takes that path on an engine too), right after the daemon
/// sent the whole image: what bk-build says must be what happened in the engine. The layer
/// (60,000 empty files) is small to send and slow to unpack, so the signal lands while the
/// engine is still loading.
#[test]
fn sigterm_during_an_image_load_reports_what_the_engine_did() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN mkdir /m && cd /m && seq 1 60000 | xargs touch && echo {} > /id\n",
            base_image(),
            unique("load-term")
        ),
    );
    let tag = format!("{}:1", unique("load-term"));
    let mut child = bk()
        .current_dir(tmp.path())
        .env("BK_BUILD_LOAD_VIA_API", "1")
        .args(["build", "--progress", "plain", "--load", "-t", &tag, "ctx"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        // The daemon has sent the whole tarball.
        let sent = line.contains("sending tarball") && line.ends_with("done");
        seen.push(line);
        if sent {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            break;
        }
    }
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let err = seen.join("\n");
    assert_eq!(status.code(), Some(143), "{err}");
    let said_loaded = err.contains("the image was loaded into the Docker Engine");
    if said_loaded {
        assert!(engine_has(&tag), "said loaded, but it is not there:\n{err}");
        assert!(err.contains(&tag), "names the image:\n{err}");
        assert!(!err.contains("build canceled"), "{err}");
    } else {
        assert!(err.contains("build canceled"), "{err}");
        // An engine that had the whole image finishes loading it after the client is gone:
        // give it the time to show a load that was said to be canceled.
        let mut appeared = false;
        for _ in 0..40 {
            appeared = engine_has(&tag);
            if appeared {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = docker().args(["rmi", "-f", &tag]).output();
        assert!(
            !appeared,
            "said canceled, but the engine loaded {tag}:\n{err}"
        );
    }
    let _ = docker().args(["rmi", "-f", &tag]).output();
}

/// The network to the daemon stalls for 40 s in the middle of a `local` export, longer than
/// the daemon's session health check allows (30 s): the daemon drops the session (until
/// BuildKit v0.30 without ending its stream, so its export and bk-build's receiver waited on
/// each other for ever). Once the network moves again, bk-build must see that the daemon no
/// longer checks the session and fail the build saying so, not hang. The export starts within
/// the daemon's first check interval, so this also covers a session whose only check the
/// daemon sent was cancelled in the stall and never reached bk-build (it hung 1 run in 3:
/// silence was counted only from a first check).
#[test]
fn a_session_the_daemon_dropped_mid_export_fails_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY big.bin /\n");
    // 64 MiB that do not compress, the same in every run (the daemon keeps one copy): the
    // export takes seconds, so the stall lands in the middle of it.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..(64usize << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    write(&ctx.join("big.bin"), &big);
    drop(big);
    let socket = PathBuf::from(env()["DOCKER_HOST"].trim_start_matches("unix://"));
    let (port, frozen) = stalling_proxy(&socket);
    let out = tmp.path().join("out");
    let mut child = bk()
        .current_dir(tmp.path())
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .args(["--addr", "docker://", "build", "--progress", "plain", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg("ctx")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv() {
        let exporting = line.contains("copying files");
        seen.push(line);
        if exporting {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("copying files")),
        "the export never started:\n{}",
        seen.join("\n")
    );
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(40));
    frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    // Before, the build never ended: give it far more than the detection needs.
    let thawed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if thawed.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            seen.extend(rx.try_iter());
            panic!("the build hung after the stall:\n{}", seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    seen.extend(rx.iter());
    let err = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    for n in [
        "session with the daemon was lost",
        "stopped checking the session's health",
        "run the build again",
    ] {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
}

/// Mode bits of a file bk-build wrote with umask `mask`.
fn mode_with_umask(mask: u32, args: &[&str], file: &Path, dir: &Path) -> u32 {
    let _ = std::fs::remove_file(file);
    let mut cmd = bk();
    cmd.current_dir(dir).args(args);
    // SAFETY: umask(2) is async-signal-safe; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::metadata(file).unwrap().permissions().mode() & 0o777
}

#[test]
fn written_files_honour_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    write(&ctx.join("a.txt"), unique("umask"));
    let tar = tmp.path().join("out.tar");
    let md = tmp.path().join("md.json");
    for (mask, want) in [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)] {
        let tar_arg = format!("type=tar,dest={}", tar.display());
        let md_arg = md.display().to_string();
        let args = [
            "build",
            "--progress",
            "quiet",
            "-o",
            &tar_arg,
            "--metadata-file",
            &md_arg,
            "ctx",
        ];
        assert_eq!(
            mode_with_umask(mask, &args, &tar, tmp.path()),
            want,
            "tar, umask {mask:o}"
        );
        assert_eq!(
            std::fs::metadata(&md).unwrap().permissions().mode() & 0o777,
            want,
            "metadata file, umask {mask:o}"
        );
        let oci = tmp.path().join("out.oci.tar");
        let oci_arg = format!("type=oci,dest={}", oci.display());
        let args = ["build", "--progress", "quiet", "-o", &oci_arg, "ctx"];
        assert_eq!(
            mode_with_umask(mask, &args, &oci, tmp.path()),
            want,
            "oci, umask {mask:o}"
        );
    }
}

/// Modes of what a build created under `root`, by path (blob names folded into `<blob>`;
/// below a `local` export's destination only the destination itself, whose contents have
/// the image's modes).
fn created_modes(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mut rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if let Some(i) = rel.find("blobs/sha256/") {
                rel.replace_range(i + "blobs/sha256/".len().., "<blob>");
            }
            let kind = if md.is_dir() { "dir" } else { "file" };
            out.insert(rel, format!("{kind} {:o}", md.mode() & 0o7777));
            if md.is_dir() && !p.ends_with("local/out") {
                stack.push(p);
            }
        }
    }
    out
}

/// With umask 000, what bk-build creates for client-side outputs gets buildx's modes: OCI
/// layouts (`--cache-to type=local`, `-o type=oci,tar=false`) and their parents 0755,
/// `index.json` and `oci-layout` 0644, blobs 0444, `ingest/` 0777 (containerd's), a `local`
/// export's destination 0700. Differential with `docker buildx build` on the same daemon.
#[test]
fn created_directories_have_buildxs_modes_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo {} > /x\n", base_image(), unique("modes")),
    );
    let run_umask_0 = |mut cmd: Command| {
        // SAFETY: umask(2) is async-signal-safe; it runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        run_ok(cmd.current_dir(tmp.path()));
    };
    let build = |tool: &dyn Fn() -> Command, root: &Path| {
        let dest = |what: &str| root.join(what).join("out").display().to_string();
        let mut cmd = tool();
        cmd.arg("--cache-to")
            .arg(format!("type=local,dest={}", dest("cache")))
            .arg("-o")
            .arg(format!("type=oci,tar=false,dest={}", dest("oci")))
            .arg("ctx");
        run_umask_0(cmd);
        let mut cmd = tool();
        cmd.arg("-o")
            .arg(format!("type=local,dest={}", dest("local")))
            .arg("ctx");
        run_umask_0(cmd);
    };
    let mine = tmp.path().join("bk");
    let theirs = tmp.path().join("bx");
    build(
        &|| {
            let mut c = bk();
            c.args(["build", "--progress", "quiet"]);
            c
        },
        &mine,
    );
    build(
        &|| {
            let mut c = docker();
            c.args(["buildx", "build", "--quiet", "--provenance=false"]);
            c
        },
        &theirs,
    );
    let want = created_modes(&theirs);
    assert!(want.contains_key("oci/out/index.json"), "{want:?}");
    assert_eq!(created_modes(&mine), want);
}

/// Runs `bk-build ARGS` in `dir`, killing it if it has not finished within two minutes
/// (a hang is the fault under test).
fn run_bounded(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut child = bk()
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("bk-build {args:?} hung: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        p.display()
    );
}

#[test]
fn fifos_in_the_state_directory_never_hang_a_run() {
    let (_t, root) = project(&format!("FROM {}\nCOPY a.txt /\n", base_image()));
    let o = run_bounded(&root, &["bake", "--progress", "plain"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let state = root.join(".bk-build");
    let records: Vec<PathBuf> = std::fs::read_dir(state.join("state/targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");

    // A record or the stat cache that is a FIFO: unreadable state, so the target is planned
    // from scratch (here: found unchanged in the registry ledger), with a warning.
    for victim in [records[0].clone(), state.join("state/stat-cache")] {
        mkfifo(&victim);
        let o = run_bounded(&root, &["plan"]);
        assert!(o.status.success(), "{}: {}", victim.display(), stderr(&o));
        let o = run_bounded(&root, &["bake", "--progress", "plain"]);
        assert!(o.status.success(), "{}: {}", victim.display(), stderr(&o));
        let kind = std::fs::symlink_metadata(&victim).unwrap().file_type();
        assert!(
            kind.is_file(),
            "{} was replaced by a good file",
            victim.display()
        );
    }

    // The lock file: a clear error, not a wait without end.
    mkfifo(&state.join("lock"));
    let o = run_bounded(&root, &["plan"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
}

#[test]
fn deeply_nested_variables_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    for depth in [15_000usize, 40] {
        let mut v = String::new();
        for _ in 0..depth {
            v.push_str("${A:-");
        }
        v.push('x');
        for _ in 0..depth {
            v.push('}');
        }
        write(
            &tmp.path().join("bk-build.toml"),
            format!("[target.app]\ncontext = \".\"\nargs = {{ X = \"{v}\" }}\n"),
        );
        write(&tmp.path().join("Dockerfile"), "FROM scratch\n");
        let o = run_bounded(tmp.path(), &["plan"]);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(1), "depth {depth}");
        let err = stderr(&o);
        assert!(err.contains("nested more than"), "depth {depth}: {err}");
        assert!(err.contains("bk-build.toml"), "names the file: {err}");
        assert!(
            err.len() < 2000,
            "the value is not echoed in full: {} bytes",
            err.len()
        );
    }
    // Within the bound it still works.
    let mut v = String::new();
    for _ in 0..10 {
        v.push_str("${A:-");
    }
    v.push('x');
    v.push_str(&"}".repeat(10));
    write(
        &tmp.path().join("bk-build.toml"),
        format!("[target.app]\ncontext = \".\"\nargs = {{ X = \"{v}\" }}\ntags = [\"a:1\"]\n"),
    );
    let o = run_bounded(tmp.path(), &["bake", "--print"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"X\": \"x\""));
}

/// A project file that defines no targets (empty, only variables, only `image:` services) is
/// an error naming the file and saying how to add a target, never a run that silently plans
/// and builds nothing (buildx: "couldn't find a bake definition").
#[test]
fn a_project_without_targets_is_an_error_with_the_fix() {
    let cases = [
        ("bk-build.toml", "", "[target.app]"),
        ("bk-build.toml", "[vars]\nTAG = \"1\"\n", "[target.app]"),
        ("docker-bake.hcl", "", "target \"app\""),
        (
            "compose.yaml",
            "services:\n  web:\n    image: nginx\n",
            "build: section",
        ),
    ];
    for (file, text, fix) in cases {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join(file), text);
        for args in [&["plan"][..], &["bake"], &["bake", "--print"]] {
            let o = run_bounded(tmp.path(), args);
            no_panic(&o);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{file} {args:?}: {err}");
            assert!(err.contains("no targets"), "{file} {args:?}: {err}");
            assert!(err.contains(file), "names the file: {err}");
            assert!(err.contains(fix), "{file} {args:?}: says how: {err}");
        }
    }
}

#[test]
fn long_values_are_not_echoed_back_in_full() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = "y".repeat(100_000);
    let o = run(bk()
        .current_dir(tmp.path())
        .args(["build", "-o", &format!("type=bogus,{huge}")]));
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).len() < 2000,
        "{} bytes of error",
        stderr(&o).len()
    );
}

/// The image config of `repo:tag` in the test registry, as JSON.
fn image_config(repo: &str, tag: &str) -> serde_json::Value {
    let (status, _, body) = registry_request("GET", &format!("/v2/{repo}/manifests/{tag}"));
    assert_eq!(status, 200);
    let mut m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    if let Some(list) = m["manifests"].as_array() {
        // An index (a provenance attestation beside the image, by default): the image is the
        // entry that is not an attestation.
        let image = list
            .iter()
            .find(|d| d["platform"]["os"] != "unknown")
            .expect("an image in the index");
        let digest = image["digest"].as_str().unwrap();
        let (status, _, body) = registry_request("GET", &format!("/v2/{repo}/manifests/{digest}"));
        assert_eq!(status, 200);
        m = serde_json::from_slice(&body).unwrap();
    }
    let digest = m["config"]["digest"].as_str().expect("an image manifest");
    let (status, _, body) = registry_request("GET", &format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn buildkit_inline_cache_arg_writes_an_inline_cache_like_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo {} > /x\n",
            base_image(),
            unique("inline")
        ),
    );
    let repo = unique("inline");
    let mine = format!("localhost:5000/{repo}:bk");
    let theirs = format!("localhost:5000/{repo}:buildx");
    run_ok(bk().current_dir(tmp.path()).args([
        "build",
        "--progress",
        "quiet",
        "--build-arg",
        "BUILDKIT_INLINE_CACHE=1",
        "--push",
        "-t",
        &mine,
        "ctx",
    ]));
    run_ok(docker().current_dir(tmp.path()).args([
        "buildx",
        "build",
        "--quiet",
        "--build-arg",
        "BUILDKIT_INLINE_CACHE=1",
        "--push",
        "-t",
        &theirs,
        "ctx",
    ]));
    const KEY: &str = "moby.buildkit.cache.v0";
    assert!(
        image_config(&repo, "buildx").get(KEY).is_some(),
        "the oracle embeds it"
    );
    assert!(
        image_config(&repo, "bk").get(KEY).is_some(),
        "bk-build embeds it too"
    );

    // Without the arg, no inline cache (the arg is what asks for it).
    run_ok(bk().current_dir(tmp.path()).args([
        "build",
        "--progress",
        "quiet",
        "--push",
        "-t",
        &mine,
        "ctx",
    ]));
    assert!(image_config(&repo, "bk").get(KEY).is_none());
}

/// The digest of `repo:tag`'s image manifest: the tag's own, or in an index the entry that is
/// not an attestation.
fn image_manifest_digest(repo: &str, tag: &str) -> String {
    let (status, headers, body) = registry_request("GET", &format!("/v2/{repo}/manifests/{tag}"));
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    match m["manifests"].as_array() {
        Some(list) => list
            .iter()
            .find(|d| d["platform"]["os"] != "unknown")
            .and_then(|d| d["digest"].as_str())
            .expect("an image in the index")
            .to_string(),
        None => headers["docker-content-digest"].clone(),
    }
}

/// The records of the inline cache embedded in `repo:tag`'s image config.
fn inline_cache_records(repo: &str, tag: &str) -> Vec<serde_json::Value> {
    use base64::Engine;
    let config = image_config(repo, tag);
    let encoded = config["moby.buildkit.cache.v0"]
        .as_str()
        .unwrap_or_else(|| panic!("{repo}:{tag} has no inline cache: {config}"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// Differential: with `--build-arg BUILDKIT_INLINE_CACHE=1 --push`, bk-build and buildx push
/// the same image for the same context on the same daemon: the same image manifest digest, so
/// the same config and inline cache records, in an index of the same shape.
///
/// Two things differ that do not come from the client, and the test controls both:
/// - Both tools attach a provenance attestation by default, which records its build's ID and
///   times: the indexes differ, so the image manifests inside them are compared.
/// - The inline cache of the build that *runs* a step on top of the base image holds one root
///   record more (a record with neither layers nor links) than that of a build finding every
///   step cached; buildx's own two builds of one context differ the same way. Which tool sees
///   it depends on which builds first, so a warm-up build runs every step before the two
///   builds compared.
#[test]
fn inline_cache_images_are_the_ones_buildx_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo {} > /x\nWORKDIR /app\nCOPY . .\nRUN ls -la > /list\n",
            base_image(),
            unique("inline-diff")
        ),
    );
    write(&ctx.join("a.txt"), unique("a"));
    write(&ctx.join("ignored.txt"), "not sent");
    write(&ctx.join(".dockerignore"), "ignored.txt\n");
    let repo = unique("inline-diff");
    let push = |tool: &str, tag: &str| {
        let image = format!("localhost:5000/{repo}:{tag}");
        let args = [
            "--build-arg",
            "BUILDKIT_INLINE_CACHE=1",
            "--push",
            "-t",
            &image,
            "ctx",
        ];
        if tool == "buildx" {
            run_ok(
                docker()
                    .current_dir(tmp.path())
                    .args(["buildx", "build", "--quiet"])
                    .args(args),
            );
        } else {
            run_ok(
                bk().current_dir(tmp.path())
                    .args(["build", "--progress", "quiet"])
                    .args(args),
            );
        }
        image_manifest_digest(&repo, tag)
    };
    push("bk-build", "warm-up");
    let theirs = push("buildx", "buildx");
    let mine = push("bk-build", "bk");
    assert_eq!(
        inline_cache_records(&repo, "bk"),
        inline_cache_records(&repo, "buildx"),
        "inline cache records"
    );
    assert_eq!(image_config(&repo, "bk"), image_config(&repo, "buildx"));
    assert_eq!(mine, theirs, "image manifest digest");
    assert_eq!(
        support::attest::attested(&repo, "bk"),
        support::attest::attested(&repo, "buildx")
    );
    // The records carry the layers (it is a cache, not just the key).
    assert!(
        inline_cache_records(&repo, "bk")
            .iter()
            .any(|r| r.get("layers").is_some()),
        "{:?}",
        inline_cache_records(&repo, "bk")
    );
}

#[test]
fn source_date_epoch_from_the_environment_reaches_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nARG SOURCE_DATE_EPOCH\nRUN echo \"epoch=$SOURCE_DATE_EPOCH {}\" > /epoch\n",
            base_image(),
            unique("sde")
        ),
    );
    let epoch = "1234567890";
    let read = |dir: &Path| std::fs::read_to_string(dir.join("epoch")).unwrap();
    let mine = tmp.path().join("bk");
    let theirs = tmp.path().join("buildx");
    run_ok(
        bk().current_dir(tmp.path())
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["build", "--progress", "quiet", "-o"])
            .arg(format!("type=local,dest={}", mine.display()))
            .arg("ctx"),
    );
    run_ok(
        docker()
            .current_dir(tmp.path())
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["buildx", "build", "--quiet", "-o"])
            .arg(format!("type=local,dest={}", theirs.display()))
            .arg("ctx"),
    );
    assert!(
        read(&mine).starts_with("epoch=1234567890 "),
        "{}",
        read(&mine)
    );
    assert_eq!(read(&mine), read(&theirs));

    // An explicit --build-arg wins, as in buildx.
    run_ok(
        bk().current_dir(tmp.path())
            .env("SOURCE_DATE_EPOCH", epoch)
            .args([
                "build",
                "--progress",
                "quiet",
                "--build-arg",
                "SOURCE_DATE_EPOCH=7",
                "-o",
            ])
            .arg(format!("type=local,dest={}", mine.display()))
            .arg("ctx"),
    );
    assert!(read(&mine).starts_with("epoch=7 "), "{}", read(&mine));

    // bake: the same, and a new epoch is a new input.
    write(
        &tmp.path().join("bk-build.toml"),
        format!(
            "[target.t]\ncontext = \"ctx\"\noutputs = [\"type=local,dest={}\"]\n",
            mine.display()
        ),
    );
    let bake = |e: &str| {
        run_ok(
            bk().current_dir(tmp.path())
                .env("SOURCE_DATE_EPOCH", e)
                .args(["bake", "--progress", "quiet"]),
        )
    };
    bake(epoch);
    assert!(read(&mine).starts_with("epoch=1234567890 "));
    bake("1700000000");
    assert!(
        read(&mine).starts_with("epoch=1700000000 "),
        "{}",
        read(&mine)
    );
}

#[test]
fn prune_all_help_says_what_buildkit_does() {
    let o = run_ok(bk().args(["prune", "--help"]));
    let help = String::from_utf8_lossy(&o.stdout);
    let all = help
        .lines()
        .skip_while(|l| !l.contains("--all"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    // BuildKit's PruneRequest.all includes internal and frontend records, which a plain prune
    // keeps (buildctl: "Include internal/frontend references").
    assert!(all.contains("internal"), "{all}");
    assert!(!all.contains("not only unused and internal"), "{all}");
}

/// A `.dockerignore` that is a symlink reaching outside the context: the daemon reads it
/// inside its synced copy, where the link leads nowhere, so nothing is ignored. bk-build's
/// fingerprint must see the same files (an edit of the "ignored" file changes the image).
#[test]
fn a_dockerignore_linked_outside_the_context_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside-ignore");
    write(&outside, "secret.txt\n");
    let root = tmp.path().join("p");
    let repo = format!("localhost:5000/{}", unique("ignlink"));
    let out_bk = tmp.path().join("out-bk");
    let out_bx = tmp.path().join("out-buildx");
    write(
        &root.join("bk-build.toml"),
        format!(
            "[target.app]\ncontext = \"app\"\ntags = [\"{repo}/app:dev\"]\noutputs = [\"type=local,dest={}\"]\n",
            out_bk.display()
        ),
    );
    write(&root.join("app/Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(&root.join("app/a.txt"), "a\n");
    write(&root.join("app/secret.txt"), "v1\n");
    let links = [
        outside.display().to_string(),
        "../../outside-ignore".to_string(),
    ];
    for link in links {
        let _ = std::fs::remove_file(root.join("app/.dockerignore"));
        std::os::unix::fs::symlink(&link, root.join("app/.dockerignore")).unwrap();
        for v in ["v2", "v3"] {
            write(&root.join("app/secret.txt"), format!("{v} {link}\n"));
            let o = run(bk()
                .current_dir(&root)
                .args(["bake", "--progress", "plain"]));
            assert!(o.status.success(), "{}", stderr(&o));
            let _ = std::fs::remove_dir_all(&out_bx);
            run_ok(
                docker()
                    .current_dir(&root)
                    .args(["buildx", "build", "--quiet", "-o"])
                    .arg(format!("type=local,dest={}", out_bx.display()))
                    .arg("app"),
            );
            assert!(out_bx.join("secret.txt").is_file(), "the daemon sends it");
            assert_same_tree(&out_bk, &out_bx);
        }
    }
    let _ = std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644));
}

fn engine_layers(image: &str) -> Option<String> {
    let o = run(docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        image,
    ]));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// `--load` as a standalone buildkitd run does it: the `docker` exporter's tarball streamed into
/// the Engine API (`docker load`), checked against `docker buildx build --load` on the same
/// daemon. `BK_BUILD_LOAD_VIA_API` takes that path although the daemon here is an engine.
#[test]
fn load_through_the_engine_api_gives_the_same_image_as_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /data/\n");
    for i in 0..50 {
        write(
            &ctx.join(format!("f{i}.txt")),
            format!("{} {i}\n", unique("load")),
        );
    }
    // A file larger than one export chunk, so the stream really streams.
    write(&ctx.join("big.bin"), vec![7u8; 9 << 20]);
    let name = unique("apiload");
    let mine = format!("localhost:5000/{name}:bk");
    let theirs = format!("localhost:5000/{name}:buildx");
    let plain = format!("localhost:5000/{name}:plain");
    run_ok(
        docker()
            .current_dir(tmp.path())
            .args(["buildx", "build", "--quiet", "--load", "-t", &theirs, "ctx"]),
    );
    let o = run(bk()
        .current_dir(tmp.path())
        .env("BK_BUILD_LOAD_VIA_API", "1")
        .args(["build", "--progress", "plain", "--load", "-t", &mine, "ctx"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exporting to docker image format")
            || stderr(&o).contains("sending tarball"),
        "the docker exporter ran, not the engine's own: {}",
        stderr(&o)
    );
    let want = engine_layers(&theirs).expect("buildx loaded its image");
    assert_eq!(engine_layers(&mine).as_deref(), Some(want.as_str()));

    // `-o type=docker` without dest means the same.
    let out = format!("type=docker,name={plain}");
    let o = run(bk()
        .current_dir(tmp.path())
        .env("BK_BUILD_LOAD_VIA_API", "1")
        .args(["build", "--progress", "plain", "-o", &out, "ctx"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(engine_layers(&plain).as_deref(), Some(want.as_str()));

    // No engine where DOCKER_HOST points: a clear error before anything is built, nothing
    // loaded anywhere.
    let addr = format!("docker://{}", env()["DOCKER_HOST"]);
    let gone = format!("localhost:5000/{name}:gone");
    let o = run(bk()
        .current_dir(tmp.path())
        .env("BK_BUILD_LOAD_VIA_API", "1")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args([
            "--addr",
            &addr,
            "build",
            "--progress",
            "plain",
            "--load",
            "-t",
            &gone,
            "ctx",
        ]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no Docker Engine answered at unix:///nonexistent/docker.sock"),
        "{err}"
    );
    assert!(err.contains("DOCKER_HOST"), "says how to fix it: {err}");
    assert!(engine_layers(&gone).is_none());
}

/// `dest=` and `--metadata-file` write *through* the path, as buildx does: a symlink's target
/// is written and the link stays; a device or FIFO is written into, never replaced by a
/// regular file; a directory is refused before anything is built.
#[test]
fn outputs_are_written_through_links_and_into_special_files() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write(&t.join("ctx/Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    write(&t.join("ctx/a.txt"), unique("through"));
    let build = |extra: &[&str]| {
        run(bk()
            .current_dir(t)
            .args(["build", "--progress", "quiet"])
            .args(extra)
            .arg("ctx"))
    };

    // A symlink to a file elsewhere: the target gets the tarball, the link stays a link.
    write(&t.join("real/target.tar"), "old");
    std::os::unix::fs::symlink(t.join("real/target.tar"), t.join("link.tar")).unwrap();
    std::os::unix::fs::symlink(t.join("real/md.json"), t.join("md-link.json")).unwrap();
    let dest = format!("type=tar,dest={}", t.join("link.tar").display());
    let md = t.join("md-link.json").display().to_string();
    let o = build(&["-o", &dest, "--metadata-file", &md]);
    assert!(o.status.success(), "{}", stderr(&o));
    let link = std::fs::symlink_metadata(t.join("link.tar")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let tar = std::fs::read(t.join("real/target.tar")).unwrap();
    assert!(
        tar.len() > 512 && &tar[257..262] == b"ustar",
        "the target holds the tarball"
    );
    assert!(std::fs::symlink_metadata(t.join("md-link.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("real/md.json")).unwrap()).unwrap();
    assert!(meta.get("buildx.build.ref").is_some(), "{meta}");

    // A device like /dev/full: the write fails as writing to it does, and it stays a device.
    let full = t.join("full");
    let c = std::ffi::CString::new(full.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; makedev(1, 7) is /dev/full's device number.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 7)) };
    assert_eq!(made, 0, "mknod (the tests run as root)");
    let dest = format!("type=tar,dest={}", full.display());
    let o = build(&["-o", &dest]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("No space left on device"),
        "{}",
        stderr(&o)
    );
    let md = full.display().to_string();
    let o = build(&["--metadata-file", &md]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let ft = std::fs::symlink_metadata(&full).unwrap().file_type();
    assert!(
        ft.is_char_device(),
        "the device was replaced by a regular file"
    );

    // A FIFO: its reader gets the tarball.
    let fifo = t.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap().len())
    };
    let dest = format!("type=tar,dest={}", fifo.display());
    let o = build(&["-o", &dest]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(reader.join().unwrap() > 512, "the reader got the tarball");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    // A directory: refused up front, naming it.
    std::fs::create_dir(t.join("adir")).unwrap();
    let dest = format!("type=tar,dest={}", t.join("adir").display());
    let o = build(&["-o", &dest]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
}

/// A request the daemon aborts (here: a Dockerfile with bytes that are not UTF-8, on which
/// BuildKit's frontend fails internally and resets the stream) is said to be that, not a
/// broken connection that a rerun would fix; buildx fails on the same input.
#[test]
fn a_build_the_daemon_aborts_is_not_blamed_on_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dockerfile = format!("FROM {}\nBAD", base_image()).into_bytes();
    dockerfile.extend_from_slice(b"\xe9 x\n");
    write(&tmp.path().join("Dockerfile"), &dockerfile);
    let o = run(bk()
        .current_dir(tmp.path())
        .args(["build", "--progress", "plain", "."]));
    no_panic(&o);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("aborted the build with an internal error"),
        "{err}"
    );
    assert!(!err.contains("run the build again"), "{err}");
    let theirs =
        run(docker()
            .current_dir(tmp.path())
            .args(["buildx", "build", "--progress", "plain", "."]));
    assert!(!theirs.status.success(), "buildx fails on it too");
}

/// SIGTERM while planning waits on a registry that never answers (planning holds the thread
/// that answers signals): the run still stops promptly and says so, where it used to wait
/// for the registry's timeout, or die without a word when the signal came first.
#[test]
fn sigterm_while_planning_stops_the_run_and_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and never answers.
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let (_t, root) = project(&format!(
        "FROM 127.0.0.1:{port}/never/answers:1\nCOPY a.txt /\n"
    ));
    let toml = root.join("bk-build.toml");
    let text = std::fs::read_to_string(&toml).unwrap() + "pull = true\n";
    write(&toml, text);
    let child = bk()
        .current_dir(&root)
        .args(["bake", "--progress", "plain"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // The state is opened (and its lock taken) just before planning starts.
    while !root.join(".bk-build/lock").exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    let seen = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{seen}");
    assert!(seen.contains("terminated"), "{seen}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "the run waited for the registry's timeout: {seen}"
    );
    drop(held);
}

/// A file dated after 2262 (its time in nanoseconds does not fit 64 bits): what is built
/// matches buildx, the next build sends none of the other files, and `plan` works. It used
/// to panic in the thread reading the file for the daemon, which then waited for it forever.
/// (The daemon cannot keep that time in its copy, so it asks for the file on every build,
/// from buildx too.)
#[test]
fn a_file_dated_after_2262_is_built_like_buildx_and_the_rest_sent_once() {
    let (t, root) = project(&format!("FROM {}\nCOPY . /\n", base_image()));
    let app = root.join("app");
    for i in 0..5 {
        write(&app.join(format!("other{i}")), format!("{i}"));
    }
    let year_2300 = std::time::UNIX_EPOCH + Duration::from_secs(10_413_792_000);
    set_mtime(&app.join("a.txt"), year_2300);
    let build = |n: u32| {
        let md = t.path().join(format!("md{n}.json"));
        let dest = t.path().join(format!("ours{n}"));
        let o = run_bounded(
            &root,
            &[
                "build",
                "--progress",
                "plain",
                "--metadata-file",
                md.to_str().unwrap(),
                "-o",
                &format!("type=local,dest={}", dest.display()),
                "app",
            ],
        );
        no_panic(&o);
        assert!(o.status.success(), "{}", stderr(&o));
        let md: serde_json::Value = serde_json::from_slice(&std::fs::read(&md).unwrap()).unwrap();
        (
            dest,
            md["bk-build.sync"]["context"]["files_requested"].clone(),
        )
    };
    let (ours, first) = build(1);
    assert!(first.as_u64().unwrap() >= 7, "{first}");
    let theirs = t.path().join("theirs");
    run_ok(
        docker()
            .args(["buildx", "build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", theirs.display()))
            .arg(&app),
    );
    assert_same_tree(&ours, &theirs);
    let (_, second) = build(2);
    assert!(second.as_u64().unwrap() <= 1, "{second}");
    let o = run_bounded(&root, &["plan"]);
    no_panic(&o);
    assert!(o.status.success(), "{}", stderr(&o));
}
