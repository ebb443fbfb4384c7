//! `bk-build build` against the real daemon, with `docker buildx build` as the oracle.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use support::*;

/// A context that exercises every .dockerignore and walk rule we know of.
fn tricky_context(root: &Path) {
    write(&root.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(
        &root.join(".dockerignore"),
        "# comment\n\
         **/*.log\n\
         !keep/**/*.log\n\
         /top-only.txt\n\
         build\n\
         !build/artifact.bin\n\
         node_modules\n\
         docs/*.md\n\
         !docs/README.md\n\
         temp?\n\
         */secret*\n\
         ./dotslash.txt\n",
    );
    write(&root.join("a/x"), "ax");
    write(&root.join("a-b"), "a-b");
    write(&root.join("a.txt"), "a.txt");
    write(&root.join("top-only.txt"), "excluded at top");
    write(&root.join("sub/top-only.txt"), "kept in sub");
    write(&root.join("dotslash.txt"), "excluded");
    write(&root.join("app.log"), "excluded log");
    write(&root.join("deep/n/e/s/t/x.log"), "excluded deep log");
    write(&root.join("keep/a/b/c.log"), "re-included log");
    write(&root.join("build/junk.o"), "junk");
    write(&root.join("build/artifact.bin"), "artifact");
    write(&root.join("node_modules/m/index.js"), "junk");
    write(&root.join("docs/guide.md"), "excluded");
    write(&root.join("docs/README.md"), "kept");
    write(&root.join("temp1"), "excluded");
    write(&root.join("temp12"), "kept: ? is one char");
    write(&root.join("x/secret.key"), "excluded");
    write(&root.join("x/y/secret.key"), "kept: * is one segment");
    write(&root.join("name with spaces.txt"), "spaces");
    write(&root.join("ünïcødé/файл.txt"), "unicode");
    write(&root.join("#hash&amp;+plus=eq"), "odd chars");
    write(&root.join("empty-file"), "");
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("nested-empty/a/b")).unwrap();
    write(&root.join("bin/run.sh"), "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        root.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write(&root.join("modes/setuid"), "s");
    std::fs::set_permissions(
        root.join("modes/setuid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    write(&root.join("modes/ro"), "r");
    std::fs::set_permissions(
        root.join("modes/ro"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("modes/sticky")).unwrap();
    std::fs::set_permissions(
        root.join("modes/sticky"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    symlink("a.txt", root.join("link-to-file")).unwrap();
    symlink("a", root.join("link-to-dir")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    // 50 MB of non-repeating bytes: streaming and chunking, not a toy.
    let mut big = Vec::with_capacity(50 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while big.len() < 50 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    write(&root.join("big/blob.bin"), &big);
}

#[test]
fn local_output_matches_buildx_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    tricky_context(&ctx);
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");

    run_ok(
        bk().args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", ours.display()))
            .arg(&ctx),
    );
    run_ok(
        docker()
            .args(["buildx", "build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", theirs.display()))
            .arg(&ctx),
    );

    assert_same_tree(&ours, &theirs);
    // The rules really applied (guards against both sides sending nothing).
    let t = tree(&ours);
    for kept in [
        "a/x",
        "a-b",
        "keep/a/b/c.log",
        "build/artifact.bin",
        "docs/README.md",
        "temp12",
        "x/y/secret.key",
        "sub/top-only.txt",
        "big/blob.bin",
        "link-to-dir",
        "empty-dir",
        "ünïcødé/файл.txt",
    ] {
        assert!(t.contains_key(kept), "{kept} missing from output");
    }
    for gone in [
        "app.log",
        "deep/n/e/s/t/x.log",
        "top-only.txt",
        "build/junk.o",
        "node_modules",
        "docs/guide.md",
        "temp1",
        "x/secret.key",
        "dotslash.txt",
    ] {
        assert!(!t.contains_key(gone), "{gone} should have been excluded");
    }
}

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn second_build_sends_only_the_changed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY . /app\nRUN cat /app/f0 /app/changing > /dev/null\n",
            base_image()
        ),
    );
    for i in 0..200 {
        write(
            &ctx.join(format!("d{}/f{i}", i % 7)),
            format!("file {i} ").repeat(100),
        );
    }
    write(&ctx.join("f0"), "zero");
    write(&ctx.join("changing"), "version 1");
    let md = tmp.path().join("md.json");
    let build = || {
        run_ok(
            bk().args(["build", "--progress", "plain", "--metadata-file"])
                .arg(&md)
                .arg(&ctx),
        );
        metadata(&md)
    };
    let first = build();
    let first_ctx = &first["bk-build.sync"]["context"];
    assert!(
        first_ctx["files_requested"].as_u64().unwrap() >= 1,
        "{first}"
    );

    // Unchanged: nothing requested at all.
    let again = build();
    assert_eq!(
        again["bk-build.sync"]["context"]["files_requested"], 0,
        "{again}"
    );

    // One file changed (same size, new content and mtime): exactly that file moves.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&ctx.join("changing"), "version 2");
    let third = build();
    let c = &third["bk-build.sync"]["context"];
    assert_eq!(c["files_requested"], 1, "{third}");
    assert_eq!(c["bytes_sent"], "version 2".len() as u64, "{third}");
}

/// Enough files that the sender's id → path table spills blocks to its temporary file
/// (64 KiB of records); every file must still arrive intact, first sync and after a change.
#[test]
fn a_context_larger_than_the_in_memory_file_table_arrives_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    let long = "a-rather-long-directory-name-to-fill-blocks";
    for i in 0..4000 {
        write(
            &ctx.join(format!("{long}-{}/file-{i:05}.txt", i / 250)),
            format!("{i}\n"),
        );
    }
    let md = tmp.path().join("md.json");
    let export = |out: &Path| {
        run_ok(
            bk().args(["build", "--progress", "plain", "--metadata-file"])
                .arg(&md)
                .arg("-o")
                .arg(format!("type=local,dest={}", out.display()))
                .arg(&ctx),
        );
        metadata(&md)
    };
    let first = tmp.path().join("out1");
    let m = export(&first);
    assert!(
        m["bk-build.sync"]["context"]["files_requested"]
            .as_u64()
            .unwrap()
            >= 4000,
        "{m}"
    );
    assert_same_tree(&ctx, &first);

    // A change near the end: the request lands in a block read back from disk.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&ctx.join(format!("{long}-15/file-03999.txt")), "changed\n");
    write(
        &ctx.join(format!("{long}-0/file-00001.txt")),
        "changed too\n",
    );
    let second = tmp.path().join("out2");
    let m = export(&second);
    assert_eq!(m["bk-build.sync"]["context"]["files_requested"], 2, "{m}");
    assert_same_tree(&ctx, &second);
}

#[test]
fn push_digest_matches_registry_and_metadata_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let repo = unique("push");
    write(
        &ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo {repo} > /id\n", base_image()),
    );
    let md = tmp.path().join("md.json");
    let tag = format!("localhost:5000/{repo}/img:v1");
    run_ok(
        bk().args([
            "build",
            "--progress",
            "plain",
            "--push",
            "-t",
            &tag,
            "--metadata-file",
        ])
        .arg(&md)
        .arg(&ctx),
    );
    let m = metadata(&md);
    let digest = m["containerimage.digest"]
        .as_str()
        .expect("digest in metadata")
        .to_string();
    assert!(digest.starts_with("sha256:"), "{m}");
    assert_eq!(m["image.name"].as_str().unwrap(), tag);
    let served = manifest_digest(&format!("{repo}/img"), "v1").expect("pushed manifest");
    assert_eq!(served, digest);
}

#[test]
fn registry_cache_is_exported_and_hit_from_a_fresh_builder_state() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let repo = unique("cache");
    // The RUN output is unique per execution: equal stamps prove the step came from cache.
    // The marker names this test's records, so only they are forgotten below (other tests
    // share the daemon and its cache).
    let marker = unique("bkcachetest");
    write(&ctx.join("Dockerfile"), format!("FROM {} AS b\nRUN echo {marker} >/dev/null && cat /proc/sys/kernel/random/uuid > /stamp\nFROM scratch\nCOPY --from=b /stamp /stamp\n", base_image()));
    let cache = format!("localhost:5000/{repo}/cache:buildcache");
    let out1 = tmp.path().join("out1");
    run_ok(
        bk().args(["build", "--progress", "plain", "--cache-to"])
            .arg(format!("type=registry,ref={cache},mode=max"))
            .arg("-o")
            .arg(format!("type=local,dest={}", out1.display()))
            .arg(&ctx),
    );
    assert!(
        manifest_digest(&format!("{repo}/cache"), "buildcache").is_some(),
        "cache manifest pushed"
    );

    // Fresh builder state for this build: its own cache records gone.
    assert!(
        forget(&marker) > 0,
        "the RUN step's records were found and forgotten"
    );
    let out2 = tmp.path().join("out2");
    let o = run_ok(
        bk().args(["build", "--progress", "plain", "--cache-from"])
            .arg(format!("type=registry,ref={cache}"))
            .arg("-o")
            .arg(format!("type=local,dest={}", out2.display()))
            .arg(&ctx),
    );
    let a = std::fs::read_to_string(out1.join("stamp")).unwrap();
    let b = std::fs::read_to_string(out2.join("stamp")).unwrap();
    assert_eq!(
        a, b,
        "RUN step was re-executed instead of imported from the registry cache"
    );
    assert!(
        stderr(&o).contains("CACHED"),
        "plain progress should show CACHED steps"
    );
}

#[test]
fn secret_is_available_to_run_and_not_in_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    // Secrets are not part of BuildKit's cache keys: a marker in the step and in the file the
    // COPY reads keeps another run's results (with another secret) from being reused here.
    let marker = unique("secret");
    write(&ctx.join("Dockerfile"), format!("FROM {} AS b\nRUN --mount=type=secret,id=tok echo {marker} > /marker && cat /run/secrets/tok | rev > /seen && test ! -e /run/secrets/tok.copy\nFROM scratch\nCOPY --from=b /seen /marker /\n", base_image()));
    let secret = tmp.path().join("tok.txt");
    write(&secret, "s3cr3t-value");
    let out = tmp.path().join("out");
    run_ok(
        bk().args(["build", "--progress", "plain", "--secret"])
            .arg(format!("id=tok,src={}", secret.display()))
            .arg("-o")
            .arg(format!("type=local,dest={}", out.display()))
            .arg(&ctx),
    );
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap().trim(),
        "eulav-t3rc3s"
    );

    // From an environment variable too.
    let out = tmp.path().join("out-env");
    run_ok(
        bk().env("MY_TOKEN", "from-env")
            .args([
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--secret",
                "id=tok,env=MY_TOKEN",
                "-o",
            ])
            .arg(format!("type=local,dest={}", out.display()))
            .arg(&ctx),
    );
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap().trim(),
        "vne-morf"
    );
}

#[test]
fn failing_run_step_exits_nonzero_with_the_error_and_dockerfile_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo about-to-fail\nRUN echo boom-output && exit 3\n",
            base_image()
        ),
    );
    let o = run(bk()
        .args(["build", "--progress", "plain", "--no-cache"])
        .arg(&ctx));
    assert!(!o.status.success());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("boom-output"),
        "the failing command's output is shown"
    );
    assert!(e.contains("exit code: 3"), "the exit code is shown");
    assert!(
        e.contains("RUN echo boom-output && exit 3"),
        "the Dockerfile line is shown"
    );
    assert!(!e.contains("panicked"));
}

fn assert_clean_error(o: &std::process::Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure");
    assert!(!e.contains("panicked"), "panic: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr should mention {n:?}: {e}");
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\n");
    let missing = tmp.path().join("nope");
    assert_clean_error(
        &run(bk().arg("build").arg(&missing)),
        &["does not exist", "nope"],
    );
    assert_clean_error(
        &run(bk()
            .arg("build")
            .arg("-f")
            .arg(ctx.join("Other.Dockerfile"))
            .arg(&ctx)),
        &["Other.Dockerfile", "-f"],
    );
    assert_clean_error(
        &run(bk().args(["build", "--build-arg", "=novalue"]).arg(&ctx)),
        &["--build-arg", "=novalue"],
    );
    assert_clean_error(
        &run(bk().args(["build", "-o", "type=bogus,dest=x"]).arg(&ctx)),
        &["--output", "bogus"],
    );
    assert_clean_error(
        &run(bk().args(["build", "-o", "type=local"]).arg(&ctx)),
        &["--output", "dest"],
    );
    // Attestations: a type is required, shorthands are named as typed, and the environment's
    // switch must be a boolean.
    assert_clean_error(
        &run(bk().args(["build", "--attest", "mode=max"]).arg(&ctx)),
        &["--attest", "mode=max", "type=provenance"],
    );
    assert_clean_error(
        &run(bk().args(["build", "--provenance=mode"]).arg(&ctx)),
        &["--provenance", "\"mode\"", "mode=max"],
    );
    assert_clean_error(
        &run(bk()
            .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "yes")
            .arg("build")
            .arg(&ctx)),
        &["BUILDX_NO_DEFAULT_ATTESTATIONS=\"yes\"", "set it to 1"],
    );
    // A socket that is not there: said so, with how to start a daemon there or where else
    // to point.
    assert_clean_error(
        &run(bk()
            .args(["--addr", "unix:///nonexistent/buildkitd.sock", "build"])
            .arg(&ctx)),
        &[
            "no socket at /nonexistent/buildkitd.sock",
            "directory /nonexistent does not exist",
            "buildkitd --addr unix:///nonexistent/buildkitd.sock",
            "point --addr (or BUILDKIT_HOST) at a running daemon",
            "docker://",
        ],
    );
    let sock = format!("unix://{}", tmp.path().join("missing.sock").display());
    assert_clean_error(
        &run(bk().args(["--addr", &format!("docker://{sock}"), "info"])),
        &[
            "the Docker Engine",
            "no socket at",
            &format!("dockerd -H {sock}"),
        ],
    );
    assert_clean_error(
        &run(bk()
            .env("DOCKER_HOST", &sock)
            .args(["--addr", "docker://", "info"])),
        &["no socket at", "point DOCKER_HOST at"],
    );
    assert_clean_error(
        &run(bk().args(["--addr", "tcp://127.0.0.1:9", "info"])),
        &["tcp://127.0.0.1:9"],
    );
    let notpem = tmp.path().join("ca.pem");
    write(&notpem, "not a certificate");
    assert_clean_error(
        &run(bk()
            .args(["--addr", "tcp://127.0.0.1:9", "--tlscacert"])
            .arg(&notpem)
            .arg("info")),
        &["ca.pem", "PEM"],
    );
    assert_clean_error(
        &run(bk()
            .args(["--addr", "tcp://127.0.0.1:9", "--tlscacert"])
            .arg(tmp.path().join("missing-ca.pem"))
            .arg("info")),
        &["missing-ca.pem"],
    );
    assert_clean_error(
        &run(bk().args(["--addr", "ftp://x", "info"])),
        &["ftp://x", "unix://"],
    );
}

#[test]
fn ctrl_c_cancels_the_build_on_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let marker = unique("sleep").replace('-', "");
    let secs = 31337;
    write(
        &ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo {marker} && sleep {secs}\n", base_image()),
    );
    let mut child = bk()
        .args(["build", "--progress", "plain", "--no-cache"])
        .arg(&ctx)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the RUN step's process exists on this host.
    let running = || {
        std::process::Command::new("pgrep")
            .args(["-f", &format!("sleep {secs}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let start = std::time::Instant::now();
    while !running() {
        assert!(start.elapsed().as_secs() < 60, "RUN step never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let start = std::time::Instant::now();
    while running() {
        assert!(
            start.elapsed().as_secs() < 20,
            "the daemon kept running the canceled step"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn cacheonly_output_builds_and_exports_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo cache-only\n", base_image()),
    );
    let md = tmp.path().join("md.json");
    run_ok(
        bk().args([
            "build",
            "--progress",
            "plain",
            "-o",
            "type=cacheonly",
            "--metadata-file",
        ])
        .arg(&md)
        .arg(&ctx),
    );
    let m = metadata(&md);
    assert!(m.get("containerimage.digest").is_none(), "{m}");
    assert!(m["buildx.build.ref"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
}

/// With no tag and no output, a Docker Engine keeps the image as buildx's docker driver does
/// (untagged, loaded), so `docker run $(bk-build build -q .)` works: the ID printed is the one
/// the engine knows and, for a reproducible build, the one `docker buildx build -q` prints.
#[test]
fn quiet_build_without_outputs_prints_the_id_docker_buildx_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let marker = unique("quiet-id");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY f.txt /f.txt\n");
    write(&ctx.join("f.txt"), format!("{marker}\n"));
    let reproducible = |c: &mut std::process::Command| {
        c.env("SOURCE_DATE_EPOCH", "0")
            .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1");
    };
    let mut ours = bk();
    reproducible(&mut ours);
    let out = run_ok(ours.args(["build", "-q"]).arg(&ctx));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sha256:"), "no image ID printed: {id:?}");
    let mut theirs = docker();
    reproducible(&mut theirs);
    let out = run_ok(theirs.args(["buildx", "build", "-q"]).arg(&ctx));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    // With the default provenance the image is an index, whose digest both print: the engine
    // knows the image by it. (Without attestations both print the config digest, which an
    // engine with the containerd image store does not resolve: buildx's choice, kept.)
    let out = run_ok(bk().args(["build", "-q"]).arg(&ctx));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = run_ok(docker().args(["image", "inspect", "--format", "{{.Id}}", &id]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    run(docker().args(["image", "rm", &id]));
}

// ---------------------------------------------------------------------------------------------
// --call, --check

/// Dockerfiles for the `--call` tests: `warn` has lint warnings (`as` casing, an undefined
/// variable, MAINTAINER, shell-form CMD), `clean` none (and build args, a secret and ssh for
/// `outline`), `broken` an unknown instruction the check cannot get past.
fn lint_project(root: &Path) {
    let base = base_image();
    write(
        &root.join("warn/Dockerfile"),
        format!(
            "FROM {base} as base\nARG USED=1\nENV A=$UNDEFINED\nFROM base AS two\nMAINTAINER me\nCMD echo hi\n"
        ),
    );
    write(
        &root.join("clean/Dockerfile"),
        format!(
            "ARG BASE={base}\nFROM $BASE AS build\n# The version to stamp.\nARG VERSION=1.0\nRUN --mount=type=secret,id=tok,required=true true\nRUN --mount=type=ssh true\nFROM build AS final\nARG COLOR\n"
        ),
    );
    write(
        &root.join("broken/Dockerfile"),
        format!("FROM {base}\nBOGUS x\n"),
    );
}

/// Runs `cmd ARGS` in `dir`: (standard output, exit status, standard error).
fn call_in(dir: &Path, mut cmd: std::process::Command, args: &[&str]) -> (String, i32, String) {
    let out = run(cmd.current_dir(dir).args(args));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
        stderr(&out),
    )
}

/// From the line that starts with `ERROR:` to the end: the part of standard error that is
/// the check's error rather than progress.
fn error_part(stderr: &str) -> &str {
    stderr.find("ERROR:").map_or("", |i| &stderr[i..])
}

/// `--call check` and `--check` lint as `docker buildx build --call check` does on the same
/// daemon: the same report on standard output (warnings in buildx's order, with excerpts
/// under the Dockerfile's name as the user gave it), exit status 1 with warnings and 0 with
/// `ignorestatus=true` or none, and a Dockerfile the check cannot get past fails with buildx's
/// error text and excerpt.
#[test]
fn call_check_reports_what_buildx_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    lint_project(dir);
    let cases: &[&[&str]] = &[
        &["--call", "check", "warn"],
        &["--check", "warn"],
        &["--call=check,ignorestatus=true", "warn"],
        &["--call", "check", "-f", "warn/Dockerfile", "."],
        &["--check", "clean"],
        &["--check", "broken"],
    ];
    for args in cases {
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        let ours = call_in(dir, bk(), &all);
        let mut all = vec!["buildx", "build", "--progress", "plain"];
        all.extend_from_slice(args);
        let theirs = call_in(dir, docker(), &all);
        assert_eq!(ours.0, theirs.0, "{args:?}: standard output differs");
        assert_eq!(ours.1, theirs.1, "{args:?}: exit status differs");
        assert_eq!(
            error_part(&ours.2),
            error_part(&theirs.2),
            "{args:?}: the error differs"
        );
    }
    // The comparison saw real reports.
    let warned = call_in(dir, bk(), &["build", "--check", "warn"]);
    for rule in [
        "FromAsCasing",
        "UndefinedVar",
        "MaintainerDeprecated",
        "JSONArgsRecommended",
    ] {
        assert!(
            warned.0.contains(&format!("WARNING: {rule} - ")),
            "{}",
            warned.0
        );
    }
    assert!(warned
        .0
        .starts_with("Check complete, 4 warnings have been found!\n"));
    assert!(warned.0.contains("\nwarn/Dockerfile:1\n"), "{}", warned.0);
    assert_eq!(warned.1, 1);
    let broken = call_in(dir, bk(), &["build", "--check", "broken"]);
    assert!(
        error_part(&broken.2)
            .starts_with("ERROR: dockerfile parse error on line 2: unknown instruction: BOGUS\nbroken/Dockerfile:2\n"),
        "{}",
        broken.2
    );
    // A check builds nothing, so asking to deliver its result is refused up front.
    let refused = call_in(
        dir,
        bk(),
        &["build", "--check", "--push", "-t", "x", "clean"],
    );
    assert_eq!(refused.1, 1);
    assert!(
        refused.2.contains("nothing for --push to deliver"),
        "{}",
        refused.2
    );
}

/// The answer's JSON without what differs from run to run: the LLB definition inside each
/// source holds the session's random ID.
fn stable_json(text: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
    if let Some(sources) = v.get_mut("sources").and_then(|s| s.as_array_mut()) {
        for s in sources {
            if let Some(o) = s.as_object_mut() {
                o.remove("definition");
            }
        }
    }
    v
}

/// `--call outline` and `--call targets`, as text and as `format=json`, and check's JSON,
/// print what `docker buildx build` prints for the same Dockerfile.
#[test]
fn call_outline_targets_and_json_match_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    lint_project(dir);
    let cases: &[&[&str]] = &[
        &["--call", "outline", "clean"],
        &["--call", "outline", "--target", "build", "clean"],
        &["--call", "targets", "clean"],
        &["--call", "outline,format=json", "clean"],
        &["--call", "targets,format=json", "warn"],
        &["--call", "check,format=json", "warn"],
    ];
    for args in cases {
        let mut all = vec!["build", "--progress", "quiet"];
        all.extend_from_slice(args);
        let ours = call_in(dir, bk(), &all);
        let mut all = vec!["buildx", "build", "--progress", "plain"];
        all.extend_from_slice(args);
        let theirs = call_in(dir, docker(), &all);
        assert_eq!(ours.1, theirs.1, "{args:?}: exit status differs");
        if args.iter().any(|a| a.ends_with("format=json")) {
            assert_eq!(stable_json(&ours.0), stable_json(&theirs.0), "{args:?}");
        } else {
            assert_eq!(ours.0, theirs.0, "{args:?}: standard output differs");
        }
    }
    let outline = call_in(dir, bk(), &["build", "--call", "outline", "clean"]);
    assert!(
        outline.0.contains("VERSION") && outline.0.contains("tok      true"),
        "{}",
        outline.0
    );
}

// ---------------------------------------------------------------------------------------------
// Contexts from standard input and from Git

/// Runs `cmd` with `input` on its standard input.
fn run_with_stdin(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A command that fails early stops reading: not this helper's failure.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    eprintln!(
        "$ {cmd:?} < (standard input)\n-- exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// `tar ARGS -C dir .` as bytes (what a user pipes into `build -`).
fn tar_of(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .args(args)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "tar failed: {}", stderr(&out));
    out.stdout
}

/// A context of `-` reads standard input as `docker buildx build -` does: a tar archive
/// (plain or gzip) is the context, with `-f` a path inside it; anything else is a Dockerfile
/// with an empty context; and `-f -` reads the Dockerfile beside a local context. Each export
/// is the tree buildx exports from the same bytes.
#[test]
fn stdin_contexts_export_what_buildx_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_image();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(
        &ctx.join("alt/Other.dockerfile"),
        "FROM scratch\nCOPY sub /from-alt/\n",
    );
    write(&ctx.join("sub/a.txt"), "a\n");
    write(&ctx.join(".dockerignore"), "ignored.txt\n");
    write(&ctx.join("ignored.txt"), "never sent\n");
    std::fs::set_permissions(
        ctx.join("sub/a.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    symlink("sub/a.txt", ctx.join("link")).unwrap();
    let plain = tar_of(&ctx, &["-c"]);
    let gzip = tar_of(&ctx, &["-cz"]);
    let dockerfile =
        format!("FROM {base} AS b\nRUN echo from-stdin > /out.txt\nFROM scratch\nCOPY --from=b /out.txt /\n");
    let beside = "FROM scratch\nCOPY sub /beside/\n";

    let cases: Vec<(&str, Vec<&str>, &[u8], &str)> = vec![
        ("tar", vec!["-"], &plain, "link"),
        ("gzip", vec!["-"], &gzip, "sub/a.txt"),
        (
            "tar-f",
            vec!["-f", "alt/Other.dockerfile", "-"],
            &plain,
            "from-alt/a.txt",
        ),
        ("dockerfile", vec!["-"], dockerfile.as_bytes(), "out.txt"),
        (
            "f-stdin",
            vec!["-f", "-", "ctx"],
            beside.as_bytes(),
            "beside/a.txt",
        ),
    ];
    for (name, args, input, expect) in cases {
        let ours = tmp.path().join(format!("ours-{name}"));
        let theirs = tmp.path().join(format!("theirs-{name}"));
        let out = run_with_stdin(
            bk().current_dir(tmp.path())
                .args(["build", "--progress", "plain", "-o"])
                .arg(format!("type=local,dest={}", ours.display()))
                .args(&args),
            input,
        );
        assert!(out.status.success(), "{name}: bk-build failed");
        let out = run_with_stdin(
            docker()
                .current_dir(tmp.path())
                .args(["buildx", "build", "--progress", "plain", "-o"])
                .arg(format!("type=local,dest={}", theirs.display()))
                .args(&args),
            input,
        );
        assert!(out.status.success(), "{name}: buildx failed");
        assert_same_tree(&ours, &theirs);
        assert!(
            tree(&ours).contains_key(expect),
            "{name}: {expect} missing: {:?}",
            tree(&ours)
        );
    }

    // Mistakes buildx also refuses, before anything is sent.
    for (args, input, needle) in [
        (
            vec!["-f", "-", "-"],
            dockerfile.as_bytes(),
            "both the build context",
        ),
        (
            vec!["-f", "ctx/Dockerfile", "-"],
            dockerfile.as_bytes(),
            "-f names another",
        ),
        (vec!["-"], &b""[..], "standard input is empty"),
    ] {
        let out = run_with_stdin(bk().current_dir(tmp.path()).arg("build").args(&args), input);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

/// A tar archive on standard input is streamed to the daemon as it pulls it, never held
/// whole: bk-build's peak memory while sending a 160 MiB archive stays far below its size.
#[test]
// The child is reaped with wait4 (which also gives its peak memory), not Child::wait.
#[allow(clippy::zombie_processes)]
fn a_large_stdin_archive_streams_in_flat_memory() {
    use std::io::Write;
    use std::process::Stdio;
    const SIZE: u64 = 160 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let mut child = bk()
        .args(["build", "--progress", "plain", "-o"])
        .arg(format!("type=local,dest={}", dest.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut archive = tar::Builder::new(&mut stdin);
        for (name, data) in [
            ("Dockerfile", &b"FROM scratch\nCOPY small.txt /\n"[..]),
            ("small.txt", b"small\n"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            archive.append_data(&mut h, name, data)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(SIZE);
        h.set_mode(0o644);
        h.set_cksum();
        archive.append_data(
            &mut h,
            "big.bin",
            std::io::Read::take(std::io::repeat(7), SIZE),
        )?;
        archive.finish()?;
        drop(archive);
        stdin.flush()
    });
    // The child's own peak resident size, from the kernel, when it has exited.
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    writer
        .join()
        .unwrap()
        .expect("the archive was not read to its end");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "bk-build failed:\n{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("small.txt")).unwrap(),
        "small\n"
    );
    let peak = usage.ru_maxrss as u64 * 1024;
    eprintln!("bk-build's peak resident size: {} MiB", peak >> 20);
    assert!(
        peak < SIZE / 2,
        "bk-build peaked at {} MiB while sending a {} MiB archive",
        peak >> 20,
        SIZE >> 20
    );
}

/// A static file server for a directory (HTTP/1.1 GET, one connection per request): enough
/// for git's dumb HTTP protocol. Returns its port; it runs until the test process ends.
fn serve_dir(root: &Path) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&conn);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" || line == "\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                let file = root.join(path.trim_start_matches('/'));
                let body = (!path.contains(".."))
                    .then(|| std::fs::read(&file).ok())
                    .flatten();
                let mut conn = &conn;
                let _ = match body {
                    Some(b) => conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                b.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| conn.write_all(&b)),
                    None => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            });
        }
    });
    port
}

fn git(dir: &Path, args: &[&str]) {
    run_ok(
        std::process::Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args),
    );
}

/// A Git URL context is passed to the daemon, which fetches it itself, as buildx passes it:
/// `http://HOST/repo.git#REF:SUBDIR` builds that directory of that branch, and `-f` names a
/// Dockerfile inside the repository. Each export matches `docker buildx build` of the same
/// URL. The repository is served over git's dumb HTTP protocol from this machine, on
/// 127.0.0.1, which dockerd's BuildKit reaches (it fetches from the host's network).
#[test]
fn git_url_context_exports_what_buildx_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    write(&work.join("app/Dockerfile"), "FROM scratch\nCOPY . /ctx/\n");
    write(&work.join("app/a.txt"), "on main\n");
    write(&work.join("top.txt"), "top\n");
    write(
        &work.join("docker/Release.dockerfile"),
        "FROM scratch\nCOPY app/a.txt top.txt /release/\n",
    );
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "main"]);
    git(&work, &["checkout", "-q", "-b", "feature"]);
    write(&work.join("app/a.txt"), "on feature\n");
    git(&work, &["commit", "-qam", "feature"]);
    git(&work, &["checkout", "-q", "main"]);
    let served = tmp.path().join("srv");
    std::fs::create_dir_all(&served).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "work", "srv/repo.git"],
    );
    git(&served.join("repo.git"), &["update-server-info"]);
    let url = format!("http://127.0.0.1:{}/repo.git", serve_dir(&served));

    let cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
        (
            "subdir",
            vec![format!("{url}#main:app")],
            "ctx/a.txt",
            "on main\n",
        ),
        (
            "branch",
            vec![format!("{url}#feature:app")],
            "ctx/a.txt",
            "on feature\n",
        ),
        (
            "file",
            vec!["-f".into(), "docker/Release.dockerfile".into(), url.clone()],
            "release/top.txt",
            "top\n",
        ),
    ];
    for (name, args, file, content) in cases {
        let ours = tmp.path().join(format!("ours-{name}"));
        let theirs = tmp.path().join(format!("theirs-{name}"));
        run_ok(
            bk().args(["build", "--progress", "plain", "-o"])
                .arg(format!("type=local,dest={}", ours.display()))
                .args(&args),
        );
        run_ok(
            docker()
                .args(["buildx", "build", "--progress", "plain", "-o"])
                .arg(format!("type=local,dest={}", theirs.display()))
                .args(&args),
        );
        assert_same_tree(&ours, &theirs);
        assert_eq!(
            std::fs::read_to_string(ours.join(file)).unwrap(),
            content,
            "{name}"
        );
    }
}
fn stdout_json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

/// `info`, `workers` and `du` with `--format json` speak BuildKit's field names, and say what
/// `docker buildx` says about the same daemon.
#[test]
fn info_workers_and_du_print_json_that_agrees_with_buildx() {
    let node =
        stdout_json(&run(docker().args(["buildx", "ls", "--format", "json"])))["Nodes"][0].clone();

    let info = stdout_json(&run(bk().args(["info", "--format", "json"])));
    assert!(
        info["address"].as_str().unwrap().starts_with("docker://"),
        "{info}"
    );
    assert!(
        !info["dockerApiVersion"].as_str().unwrap().is_empty(),
        "{info}"
    );
    assert_eq!(
        info["buildkitVersion"]["package"],
        "github.com/moby/buildkit"
    );
    assert_eq!(
        info["buildkitVersion"]["version"], node["Version"],
        "{info}"
    );

    let workers = stdout_json(&run(bk().args(["workers", "--format", "json"])));
    let w = &workers[0];
    assert_eq!(w["id"], node["IDs"][0], "{w}");
    assert_eq!(w["labels"], node["Labels"]);
    assert_eq!(w["gcPolicy"], node["GCPolicy"], "same names, same units");
    let platforms: Vec<String> = w["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s.push('/');
                s.push_str(v);
            }
            s
        })
        .collect();
    assert_eq!(serde_json::json!(platforms), node["Platforms"]);

    // Cache records: those of one build of our own (a filter keeps the daemon's work small
    // and the answer independent of other tests) are the same ones, said the same way.
    let marker = unique("du-probe");
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo {marker} > /marker\n", base_image()),
    );
    run_ok(bk().args(["build", "--progress", "quiet"]).arg(tmp.path()));
    let filter = format!("description~={marker}");
    let ours = stdout_json(&run(
        bk().args(["du", "--format", "json", "--filter", &filter])
    ));
    let theirs = run_ok(docker().args(["buildx", "du", "--format", "json", "--filter", &filter]));
    let theirs: BTreeMap<String, serde_json::Value> = String::from_utf8_lossy(&theirs.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| (r["ID"].as_str().unwrap().to_string(), r))
        .collect();
    let ours = ours.as_array().unwrap();
    assert!(!ours.is_empty(), "the build left no cache record");
    let ids: Vec<&str> = ours.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, theirs.keys().map(String::as_str).collect::<Vec<_>>());
    for r in ours {
        let t = &theirs[r["id"].as_str().unwrap()];
        assert!(r["size"].as_i64().is_some(), "size in bytes: {r}");
        assert!(r["createdAt"].as_str().unwrap().ends_with('Z'), "{r}");
        assert!(r["description"].as_str().unwrap().contains(&marker), "{r}");
        assert_eq!(r["description"], t["Description"], "{r} {t}");
        assert_eq!(r["recordType"], t["Type"], "{r} {t}");
        assert_eq!(r["shared"], t["Shared"], "{r} {t}");
        assert_eq!(r["mutable"], t["Mutable"], "{r} {t}");
        assert_eq!(r["parents"], t["Parents"], "{r} {t}");
        assert_eq!(r["usageCount"], t["UsageCount"], "{r} {t}");
    }

    let bad = run(bk().args(["du", "--format", "yaml"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("possible values: text, json"),
        "{}",
        stderr(&bad)
    );
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `completion` scripts parse in their shells and complete a subcommand's flags; `man` pages
/// render.
#[test]
fn completion_scripts_work_and_man_pages_render() {
    let tmp = tempfile::tempdir().unwrap();
    let script = |shell: &str| {
        let o = run_ok(bk().args(["completion", shell]));
        let path = tmp.path().join(format!("bk-build.{shell}"));
        std::fs::write(&path, &o.stdout).unwrap();
        (String::from_utf8(o.stdout).unwrap(), path)
    };
    // bash: parses, and `bk-build bake --pro<TAB>` offers bake's flags.
    let (text, bash) = script("bash");
    assert!(text.contains("--metadata-file") && text.contains("completion"));
    run_ok(std::process::Command::new("bash").arg("-n").arg(&bash));
    let probe = format!(
        "source {}\nfn=$(complete -p bk-build | sed 's/.*-F \\([^ ]*\\).*/\\1/')\n\
         COMP_WORDS=(bk-build bake --pro); COMP_CWORD=2\n$fn bk-build --pro bake\n\
         echo \"${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(bk-build du --format ''); COMP_CWORD=3\n$fn bk-build '' --format\n\
         echo \"${{COMPREPLY[*]}}\"\n",
        bash.display()
    );
    let o = run_ok(std::process::Command::new("bash").args(["-c", &probe]));
    let replies = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = replies.lines().collect();
    assert!(lines[0].split(' ').any(|w| w == "--progress"), "{replies}");
    assert!(
        lines[0].split(' ').any(|w| w == "--provenance"),
        "{replies}"
    );
    assert_eq!(lines[1], "text json", "{replies}");
    if on_path("zsh") {
        let (text, zsh) = script("zsh");
        assert!(text.contains("#compdef bk-build") && text.contains("metadata-file"));
        run_ok(std::process::Command::new("zsh").arg("-n").arg(&zsh));
    }
    if on_path("fish") {
        let (_, fish) = script("fish");
        run_ok(std::process::Command::new("fish").arg("-n").arg(&fish));
        let o = run_ok(std::process::Command::new("fish").arg("-c").arg(format!(
            "source {}; complete -C 'bk-build bake --pro'",
            fish.display()
        )));
        assert!(String::from_utf8_lossy(&o.stdout).contains("--progress"));
    }
    for shell in ["elvish", "powershell"] {
        assert!(script(shell).0.contains("metadata-file"), "{shell}");
    }

    // Manual pages: bk-build(1) and one per command, roff that man renders without warnings.
    for (args, name, needles) in [
        (
            vec!["man"],
            "bk-build",
            vec!["SYNOPSIS", "bake", "completion", "BUILDKIT_HOST"],
        ),
        (
            vec!["man", "bake"],
            "bk-build-bake",
            vec!["SYNOPSIS", "--progress", "--set"],
        ),
    ] {
        let o = run_ok(bk().args(&args));
        let roff = String::from_utf8(o.stdout).unwrap();
        assert!(roff.contains(&format!(".TH {name} 1")), "{roff}");
        assert!(
            roff.contains(".SH NAME") && roff.contains(".SH OPTIONS"),
            "{roff}"
        );
        if on_path("man") {
            let page = tmp.path().join(format!("{name}.1"));
            std::fs::write(&page, &roff).unwrap();
            let o = run_ok(
                std::process::Command::new("man")
                    .env("MANPAGER", "cat")
                    .env("MANWIDTH", "100")
                    .args(["--warnings", "-l"])
                    .arg(&page),
            );
            let shown = String::from_utf8_lossy(&o.stdout);
            assert!(stderr(&o).trim().is_empty(), "man warns: {}", stderr(&o));
            for n in &needles {
                assert!(shown.contains(n), "{name}: no {n} in\n{shown}");
            }
        }
    }
    let o = run(bk().args(["man", "bench-floor"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no command \"bench-floor\""),
        "{}",
        stderr(&o)
    );
}

/// A context whose image holds a file named after the test, so an SBOM can be checked for it.
fn marked_context(dir: &Path, marker: &str) {
    write(
        &dir.join("Dockerfile"),
        format!("FROM {}\nRUN echo {marker} > /{marker}\n", base_image()),
    );
}

/// Differential: for each way of asking for attestations, `bk-build build --push` and `docker
/// buildx build --push` of the same context on the same daemon push images of the same shape
/// (index or single manifest, attestation manifests and their predicate types). Digests are
/// not compared: a provenance records when and under which build ID it was made.
#[test]
fn attestations_have_the_shape_buildx_gives_them() {
    use support::attest::*;
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let repo = unique("attest-shape");
    let _cleanup = EngineImages(repo.clone());
    marked_context(&ctx, &repo);
    let generator = sbom_generator();
    let sbom = format!("--sbom=generator={generator}");
    let slsa = "https://slsa.dev/provenance/";
    type Case<'a> = (&'a str, Vec<&'a str>, Option<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        // name, flags, BUILDX_NO_DEFAULT_ATTESTATIONS, expected predicate types (prefixes)
        ("default", vec![], None, vec![slsa]),
        ("max", vec!["--provenance=mode=max"], None, vec![slsa]),
        ("off", vec!["--provenance=false"], None, vec![]),
        ("env-off", vec![], Some("1"), vec![]),
        ("env-on", vec![], Some("false"), vec![slsa]),
        ("sbom", vec![sbom.as_str()], None, vec![slsa, SPDX]),
        // Every --attest comes before --provenance, and the first of a type counts.
        (
            "first",
            vec!["--provenance=false", "--attest", "type=provenance,mode=max"],
            None,
            vec![slsa],
        ),
    ];
    for (name, flags, no_default, expected) in &cases {
        let push = |mut cmd: std::process::Command, tag: &str| {
            if let Some(v) = no_default {
                cmd.env("BUILDX_NO_DEFAULT_ATTESTATIONS", v);
            }
            let image = format!("localhost:5000/{repo}:{tag}");
            run_ok(cmd.args(flags).args(["--push", "-t", &image]).arg(&ctx));
            attested(&repo, tag)
        };
        let mut bx = docker();
        bx.args(["buildx", "build", "--quiet"]);
        let theirs = push(bx, &format!("bx-{name}"));
        let mut b = bk();
        b.args(["build", "--progress", "quiet"]);
        let mine = push(b, &format!("bk-{name}"));
        assert_eq!(mine, theirs, "{name}: bk-build {mine:?}, buildx {theirs:?}");
        let types = mine.predicate_types();
        assert_eq!(types.len(), expected.len(), "{name}: {types:?}");
        for (t, want) in types.iter().zip(expected) {
            assert!(t.starts_with(want), "{name}: {types:?}");
        }
    }

    // What the predicates say: mode=min leaves out the build's definition, mode=max has it.
    let provenance = |tag: &str| {
        let s = statements(&repo, tag, slsa);
        assert_eq!(s.len(), 1, "{tag}: {s:?}");
        s[0]["predicate"].clone()
    };
    let min = provenance("bk-default");
    let max = provenance("bk-max");
    let definition = |p: &serde_json::Value| {
        // SLSA v0.2 has it at the top, v1 among the internal parameters.
        !p["buildConfig"].is_null()
            || !p["buildDefinition"]["internalParameters"]["buildConfig"].is_null()
    };
    assert!(!definition(&min), "{min}");
    assert!(definition(&max), "{max}");
    // The SBOM generator scanned the built image.
    let sboms = statements(&repo, "bk-sbom", SPDX);
    assert_eq!(sboms.len(), 1, "{sboms:?}");
    let files = sboms[0]["predicate"]["files"].to_string();
    assert!(files.contains(&repo), "{files}");
}

/// `--metadata-file` gains `buildx.build.provenance`: the same predicate buildx writes for
/// the same build (minimal by default), the whole one with `BUILDX_METADATA_PROVENANCE=max`,
/// none with `disabled`; also when the image carries no provenance, since it comes from the
/// daemon's record of the build.
#[test]
fn metadata_file_has_the_build_provenance_like_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let repo = unique("attest-meta");
    let _cleanup = support::attest::EngineImages(repo.clone());
    marked_context(&ctx, &repo);
    let metadata_of = |mut cmd: std::process::Command, mode: Option<&str>, name: &str| {
        let md = tmp.path().join(format!("{name}.json"));
        if let Some(m) = mode {
            cmd.env("BUILDX_METADATA_PROVENANCE", m);
        }
        let image = format!("localhost:5000/{repo}:{name}");
        run_ok(
            cmd.args([
                "--provenance=false",
                "--push",
                "-t",
                &image,
                "--metadata-file",
            ])
            .arg(&md)
            .arg(&ctx),
        );
        metadata(&md)
    };
    let buildx = || {
        let mut c = docker();
        c.args(["buildx", "build", "--quiet"]);
        c
    };
    let bk_build = || {
        let mut c = bk();
        c.args(["build", "--progress", "quiet"]);
        c
    };
    let key = "buildx.build.provenance";
    let theirs = metadata_of(buildx(), None, "bx-min");
    let mine = metadata_of(bk_build(), None, "bk-min");
    assert!(theirs[key].is_object(), "{theirs}");
    assert_eq!(mine[key], theirs[key], "minimal provenance");
    assert!(
        mine[key]["materials"].to_string().contains("busybox"),
        "{mine}"
    );

    let theirs = metadata_of(buildx(), Some("max"), "bx-max");
    let mine = metadata_of(bk_build(), Some("max"), "bk-max");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(&mine[key]), keys(&theirs[key]), "{mine}");
    assert_eq!(keys(&mine[key]["metadata"]), keys(&theirs[key]["metadata"]));
    assert!(mine[key]["buildConfig"].is_object(), "{mine}");
    assert_eq!(mine[key]["materials"], theirs[key]["materials"]);
    assert_eq!(mine[key]["invocation"], theirs[key]["invocation"]);

    let mine = metadata_of(bk_build(), Some("disabled"), "bk-off");
    assert!(mine.get(key).is_none(), "{mine}");
    assert!(mine["containerimage.digest"].is_string(), "{mine}");
}
