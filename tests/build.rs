//! `bk-build build` against the real daemon, with `docker buildx build` as the oracle.

mod support;

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
