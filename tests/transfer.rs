//! Session file transfer against the real daemon, with `docker buildx build` on the same daemon
//! as the oracle: many small files both ways, special files (FIFOs, device nodes, sockets),
//! and names the protocol cannot carry — nothing may be lost silently.

mod support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::*;

fn bk_export(ctx: &Path, out: &Path) -> Output {
    run(bk()
        .args(["build", "--progress", "plain", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(ctx))
}

fn buildx_export(ctx: &Path, out: &Path) -> Output {
    run(docker()
        .args(["buildx", "build", "--progress", "plain", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(ctx))
}

/// `mknod(2)`; false when not permitted (not root).
fn mknod(path: &Path, kind: libc::mode_t, perm: libc::mode_t, major: u32, minor: u32) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let ok = unsafe { libc::mknod(c.as_ptr(), kind | perm, libc::makedev(major, minor)) } == 0;
    if ok {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm)).unwrap();
    }
    ok
}

/// The session's HTTP/2 server used to close the connection (GOAWAY ENHANCE_YOUR_CALM
/// "too_many_data_frames", or just "failed to solve: EOF") once it fell a few thousand tiny
/// DATA frames behind: fsutil sends one frame per STAT, per data chunk and per end of file,
/// and a context upload one per requested file. With 20,000 files that was most runs.
#[test]
fn twenty_thousand_small_files_go_up_and_come_back_every_time_like_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    for i in 0..20_000 {
        write(
            &ctx.join(format!("d{:02}/f{i:05}.txt", i / 500)),
            format!("{i}\n"),
        );
    }
    let theirs = tmp.path().join("theirs");
    let o = buildx_export(&ctx, &theirs);
    assert!(o.status.success(), "the oracle failed: {}", stderr(&o));
    assert_eq!(tree(&theirs).len(), 20_000 + 40 + 1);

    let mut failures = Vec::new();
    for run in 0..4 {
        let ours = tmp.path().join(format!("ours-{run}"));
        let o = bk_export(&ctx, &ours);
        if !o.status.success() {
            failures.push(format!("run {run}: {}", stderr(&o)));
            continue;
        }
        assert_same_tree(&ours, &theirs);
        std::fs::remove_dir_all(&ours).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of 4 exports failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The daemon names every file a build reads from the context in the DiffCopy call's headers
/// (`followpaths`). Our HTTP/2 server allowed 16 KiB of headers (hyper's default), so a
/// Dockerfile with a few hundred COPY sources failed with "header list size to send violates
/// the maximum size (16384 bytes) set by server"; buildx's session server allows grpc-go's
/// 16 MiB.
#[test]
fn hundreds_of_copy_sources_build_like_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let mut dockerfile = String::from("FROM scratch\n");
    for i in 0..400 {
        let name = format!("a-fairly-long-directory-name-number-{i:04}/and-a-file-inside-it.txt");
        write(&ctx.join(&name), format!("{i}\n"));
        dockerfile.push_str(&format!("COPY {name} /{name}\n"));
    }
    write(&ctx.join("Dockerfile"), dockerfile);
    let theirs = tmp.path().join("theirs");
    let o = buildx_export(&ctx, &theirs);
    assert!(o.status.success(), "the oracle failed: {}", stderr(&o));
    let ours = tmp.path().join("ours");
    let o = bk_export(&ctx, &ours);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&ours, &theirs);
    assert_eq!(tree(&ours).len(), 800);
}

/// FIFOs and device nodes are created in a local export as buildx creates them (they used to
/// vanish), and a unix socket in the context arrives as the empty regular file buildx sends.
#[test]
fn fifos_devices_and_sockets_export_like_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(&ctx.join("plain.txt"), "plain\n");
    std::fs::create_dir_all(ctx.join("dev/sub")).unwrap();
    let fifo = |p: &Path, perm| {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), perm) }, 0);
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(perm)).unwrap();
    };
    fifo(&ctx.join("pipe"), 0o640);
    fifo(&ctx.join("dev/sub/pipe2"), 0o600);
    let devices = mknod(&ctx.join("dev/null"), libc::S_IFCHR, 0o666, 1, 3)
        && mknod(&ctx.join("dev/loop9"), libc::S_IFBLK, 0o660, 7, 9)
        && mknod(&ctx.join("dev/big-minor"), libc::S_IFCHR, 0o620, 4, 0x12345);
    // A socket lives as long as its listener; both builds run while it does.
    let _sock = std::os::unix::net::UnixListener::bind(ctx.join("agent.sock")).unwrap();
    std::fs::set_permissions(
        ctx.join("agent.sock"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();

    let theirs = tmp.path().join("theirs");
    let o = buildx_export(&ctx, &theirs);
    assert!(o.status.success(), "the oracle failed: {}", stderr(&o));
    let ours = tmp.path().join("ours");
    run_ok(
        bk().args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", ours.display()))
            .arg(&ctx),
    );
    assert_same_tree(&ours, &theirs);

    // What both wrote (guards against both sides losing the same entries).
    let t = tree(&ours);
    assert_eq!(t["pipe"], "fifo 640");
    assert_eq!(t["dev/sub/pipe2"], "fifo 600");
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(t["agent.sock"], format!("file 751 0 {empty}"));
    if devices {
        assert_eq!(t["dev/null"], "char 666 1:3");
        // The daemon's COPY makes a block device a character device (buildx gets the same,
        // compared above); the numbers survive.
        assert!(t["dev/loop9"].ends_with(" 660 7:9"), "{}", t["dev/loop9"]);
        assert_eq!(t["dev/big-minor"], "char 620 4:74565");
    } else {
        eprintln!("not root: device nodes not tested");
    }

    // Exported again into the same directory (merged, as buildx does): same result.
    run_ok(
        bk().args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", ours.display()))
            .arg(&ctx),
    );
    assert_same_tree(&ours, &theirs);
}

/// A file name that is not UTF-8 cannot travel in fsutil's protobuf `Stat`: buildx fails, and
/// so must we — naming the file — instead of building without it. Excluded, it is no error.
#[test]
fn a_context_name_that_is_not_utf8_fails_clearly_unless_excluded() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(&ctx.join("ok.txt"), "ok\n");
    let bad = ctx.join(OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&bad, "latin-1 name\n").unwrap();

    let theirs = tmp.path().join("theirs");
    let o = buildx_export(&ctx, &theirs);
    assert!(!o.status.success(), "the oracle accepted a non-UTF-8 name");
    let ours = tmp.path().join("ours");
    let o = bk_export(&ctx, &ours);
    let err = stderr(&o);
    assert!(!o.status.success(), "built without the file: {err}");
    assert!(
        err.contains(r"caf\xE9.txt"),
        "the error must name the file: {err}"
    );
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Excluded: both build, the same tree.
    write(&ctx.join(".dockerignore"), "caf*\n");
    let theirs = tmp.path().join("theirs2");
    run_ok(
        docker()
            .args(["buildx", "build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", theirs.display()))
            .arg(&ctx),
    );
    let ours = tmp.path().join("ours2");
    run_ok(
        bk().args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", ours.display()))
            .arg(&ctx),
    );
    assert_same_tree(&ours, &theirs);
}

/// A bake project with one target whose context is `ctx`, exporting to `out`.
fn project(root: &Path) -> (PathBuf, PathBuf) {
    let ctx = root.join("ctx");
    let out = root.join("out");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    write(&ctx.join("ok.txt"), "ok\n");
    write(
        &root.join("bk-build.toml"),
        format!(
            "[target.t]\ncontext = \"ctx\"\noutputs = [\"type=local,dest={}\"]\n",
            out.display()
        ),
    );
    (ctx, out)
}

fn plan_action(root: &Path) -> String {
    let o = run_ok(bk().current_dir(root).args(["plan", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v[0]["action"].as_str().unwrap().to_string()
}

/// Planning sees a name that is not UTF-8 the way the transfer does: the same clear error,
/// not a fingerprint that silently leaves the file out.
#[test]
fn plan_fails_on_a_context_name_that_is_not_utf8_like_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, _) = project(tmp.path());
    std::fs::create_dir(ctx.join(OsStr::from_bytes(b"dir\xff"))).unwrap();
    let o = run(bk().current_dir(tmp.path()).args(["plan"]));
    let err = stderr(&o);
    assert!(!o.status.success(), "planned without the directory: {err}");
    assert!(err.contains(r"dir\xFF"), "the error must name it: {err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
    let o = run(bk().current_dir(tmp.path()).args(["bake"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains(r"dir\xFF"), "{}", stderr(&o));
}

/// A socket in a bake context is fingerprinted as what the daemon receives (an empty regular
/// file with its permissions), so it is built into the output, and swapping it for exactly
/// such a file changes nothing, while giving that file content does.
#[test]
fn a_socket_in_a_bake_context_is_fingerprinted_as_the_empty_file_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, out) = project(tmp.path());
    let sock = ctx.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o640)).unwrap();
    run_ok(
        bk().current_dir(tmp.path())
            .args(["bake", "--progress", "plain"]),
    );
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(tree(&out)["agent.sock"], format!("file 640 0 {empty}"));
    assert_eq!(plan_action(tmp.path()), "skip");

    drop(listener);
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, "").unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        plan_action(tmp.path()),
        "skip",
        "the daemon would get the same file"
    );

    std::fs::write(&sock, "now with content").unwrap();
    assert_eq!(plan_action(tmp.path()), "build");
}
