//! `bk-build build`'s buildx flags beyond the basics, each on the real daemon and, where the
//! outcome can be compared, against `docker buildx build` run the same way: `--ulimit`,
//! `--shm-size`, `--cgroup-parent` (what RUN steps see), `--no-cache-filter` (a stage runs
//! again), `--allow` (entitlements reach the daemon), `--iidfile`, `-q/--quiet` and
//! `--progress none` (what is written and printed), `--annotation` (read back from the
//! registry), and `--ssh ID=KEYFILE` (a RUN step lists and signs with the key through the
//! forwarded agent).
//!
//! `BUILDX_NO_DEFAULT_ATTESTATIONS=1` is set for both tools where images are compared: buildx
//! attaches a provenance attestation by default, which makes an index of every image.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

/// `cmd` run in `dir`, without default attestations (see the module docs).
fn in_dir<'a>(cmd: &'a mut Command, dir: &Path) -> &'a mut Command {
    cmd.current_dir(dir)
        .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")
        .env_remove("BUILDKIT_PROGRESS")
        .env_remove("SOURCE_DATE_EPOCH")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Removes the cgroup `name` the daemon made for RUN steps under `--cgroup-parent` (in every
/// v1 hierarchy, or the v2 tree), deepest first; what is still in use stays.
fn remove_cgroup(name: &str) {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup").join(name)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path().join(name)));
    }
    fn dirs(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs(&e.path(), out);
                }
            }
        }
        out.push(p.to_path_buf());
    }
    for root in roots.into_iter().filter(|r| r.is_dir()) {
        let mut all = Vec::new();
        dirs(&root, &mut all);
        for d in all {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The cgroup paths of `/proc/self/cgroup` lines, each cut after `parent`: what the build
/// container's own (random) cgroup name does not change.
fn cgroup_parents(text: &str, parent: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or_default();
            match path.find(&format!("/{parent}/")) {
                Some(i) => path[..i + parent.len() + 1].to_string(),
                None => path.to_string(),
            }
        })
        .collect()
}

#[test]
fn run_steps_get_the_ulimit_shm_size_and_cgroup_parent_given() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let id = unique("limits");
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN mkdir /out && echo {id} && ulimit -n > /out/nofile && ulimit -Hn > /out/nofile-hard \
             && ulimit -u > /out/nproc && grep ' /dev/shm ' /proc/mounts | grep -o 'size=[0-9]*k' > /out/shm \
             && cat /proc/self/cgroup > /out/cgroup\nFROM scratch\nCOPY --from=0 /out /\n",
            base_image()
        ),
    );
    let cgroup = unique("bkflags-cg");
    let flags = [
        "--ulimit",
        "nofile=1000:2000",
        "--ulimit",
        "nproc=300",
        "--ulimit",
        // The later limit of one name wins, as in buildx.
        "nofile=1024:2048",
        "--shm-size",
        "96m",
        "--cgroup-parent",
        &cgroup,
    ];
    let out = |tool: &str| tmp.path().join(tool);
    let bk_out = run(in_dir(&mut bk(), tmp.path())
        .args(["build", "--progress", "plain"])
        .args(flags)
        .arg("-o")
        .arg(out("bk"))
        .arg("ctx"));
    let bx_out = run(in_dir(&mut docker(), tmp.path())
        .args(["buildx", "build", "--progress", "plain"])
        .args(flags)
        .arg("-o")
        .arg(out("bx"))
        .arg("ctx"));
    remove_cgroup(&cgroup);
    assert!(bk_out.status.success(), "bk-build failed");
    assert!(bx_out.status.success(), "buildx failed");
    for tool in ["bk", "bx"] {
        let o = out(tool);
        assert_eq!(read(&o.join("nofile")), "1024\n", "{tool}");
        assert_eq!(read(&o.join("nofile-hard")), "2048\n", "{tool}");
        assert_eq!(read(&o.join("nproc")), "300\n", "{tool}");
        assert_eq!(
            read(&o.join("shm")),
            format!("size={}k\n", 96 * 1024),
            "{tool}"
        );
    }
    let mine = read(&out("bk").join("cgroup"));
    let theirs = read(&out("bx").join("cgroup"));
    assert!(mine.contains(&format!("/{cgroup}/")), "{mine}");
    assert_eq!(
        cgroup_parents(&mine, &cgroup),
        cgroup_parents(&theirs, &cgroup)
    );
}

#[test]
fn no_cache_filter_runs_only_the_named_stage_again() {
    let tmp = tempfile::tempdir().unwrap();
    let id = unique("nocachefilter");
    write(
        &tmp.path().join("Dockerfile"),
        format!(
            "FROM {b} AS a\nRUN echo {id} && cat /proc/sys/kernel/random/uuid > /a\n\
             FROM {b} AS b\nRUN echo {id} && cat /proc/sys/kernel/random/uuid > /b\n\
             FROM scratch\nCOPY --from=a /a /\nCOPY --from=b /b /\n",
            b = base_image()
        ),
    );
    let build = |dest: &str, extra: &[&str]| {
        run_ok(
            in_dir(&mut bk(), tmp.path())
                .args(["build", "--progress", "plain", "-o", dest])
                .args(extra)
                .arg("."),
        );
    };
    build("one", &[]);
    build("two", &["--no-cache-filter", "a"]);
    let one = |f: &str| read(&tmp.path().join("one").join(f));
    let two = |f: &str| read(&tmp.path().join("two").join(f));
    assert_ne!(one("a"), two("a"), "stage a came from the cache");
    assert_eq!(one("b"), two("b"), "stage b ran again");

    // As buildx: not together with --no-cache.
    let o = run(in_dir(&mut bk(), tmp.path()).args([
        "build",
        "--no-cache",
        "--no-cache-filter",
        "a",
        ".",
    ]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--no-cache and --no-cache-filter cannot be used together"),
        "{}",
        stderr(&o)
    );
}

/// The interface names of a `/proc/net/dev` text.
fn interfaces(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn allow_grants_entitlements_as_buildx_does() {
    let tmp = tempfile::tempdir().unwrap();
    let id = unique("allow");
    write(
        &tmp.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN --network=host echo {id} && cat /proc/net/dev > /net\nFROM scratch\nCOPY --from=0 /net /\n",
            base_image()
        ),
    );
    // Without the entitlement the daemon refuses the host network, as it does for buildx.
    let refused = run(in_dir(&mut bk(), tmp.path()).args(["build", "."]));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("network.host is not allowed"),
        "{}",
        stderr(&refused)
    );
    let build = |mut cmd: Command, dest: &str| {
        run_ok(in_dir(&mut cmd, tmp.path()).args([
            "--progress",
            "plain",
            "--allow",
            "network.host",
            "-o",
            dest,
            ".",
        ]));
    };
    let mut c = bk();
    c.arg("build");
    build(c, "bk");
    let mut c = docker();
    c.args(["buildx", "build"]);
    build(c, "bx");
    let mine = interfaces(&read(&tmp.path().join("bk/net")));
    assert_eq!(mine, interfaces(&read(&tmp.path().join("bx/net"))));
    assert!(mine.len() > 2, "not the host's interfaces: {mine:?}");

    // security.insecure reaches the daemon, which (not configured for it) says no, in the
    // same words as to buildx.
    for cmd in [bk(), docker()] {
        let mut cmd = cmd;
        if cmd.get_program() == "docker" {
            cmd.args(["buildx", "build"]);
        } else {
            cmd.arg("build");
        }
        let o = run(in_dir(&mut cmd, tmp.path()).args(["--allow", "security.insecure", "."]));
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("granting entitlement security.insecure is not allowed"),
            "{}",
            stderr(&o)
        );
    }
    let o = run(in_dir(&mut bk(), tmp.path()).args(["build", "--allow", "ssh", "."]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid --allow \"ssh\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn iidfile_and_quiet_give_buildx_image_id() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = unique("iid");
    write(
        &tmp.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo {repo} > /id\n", base_image()),
    );
    let tag = format!("localhost:5000/{repo}:1");
    let iid = tmp.path().join("iid");
    // A stale ID from an earlier build is not left behind when this one fails.
    write(&iid, "stale");
    let o = run(in_dir(&mut bk(), tmp.path())
        .args(["build", "--iidfile"])
        .arg(&iid)
        .args(["-f", "missing.Dockerfile", "."]));
    assert!(!o.status.success());
    assert!(!iid.exists(), "the old --iidfile is still there");

    let o = run_ok(
        in_dir(&mut bk(), tmp.path())
            .args(["build", "-q", "--push", "-t", &tag, "--iidfile"])
            .arg(&iid)
            .arg("."),
    );
    let id = read(&iid);
    // The image ID is the config's digest, as buildx writes it: here that of the pushed image.
    let manifest = registry_json(&format!("/v2/{repo}/manifests/1"));
    assert_eq!(manifest["config"]["digest"].as_str(), Some(id.as_str()));
    // --quiet prints it, and shows no progress.
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{id}\n"));
    assert!(!stderr(&o).contains("#1 "), "{}", stderr(&o));

    // buildx writes the same file for the same image (SOURCE_DATE_EPOCH makes the config
    // reproducible), to an OCI tarball as to the registry.
    let ids = |mut cmd: Command, name: &str| -> (String, String) {
        let file = tmp.path().join(name);
        let o = run_ok(
            in_dir(&mut cmd, tmp.path())
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["-q", "-o"])
                .arg(format!("type=oci,dest={name}.tar"))
                .arg("--iidfile")
                .arg(&file)
                .arg("."),
        );
        (read(&file), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let mut c = bk();
    c.arg("build");
    let (mine, printed) = ids(c, "bk-oci");
    let mut c = docker();
    c.args(["buildx", "build"]);
    let (theirs, their_print) = ids(c, "bx-oci");
    assert!(mine.starts_with("sha256:"), "{mine}");
    assert_eq!(mine, theirs);
    assert_eq!(printed, their_print);

    // --progress none: nothing at all; --quiet with another progress mode: refused.
    let o = run_ok(in_dir(&mut bk(), tmp.path()).args([
        "build",
        "--progress",
        "none",
        "-t",
        &tag,
        "--push",
        ".",
    ]));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "printed something"
    );
    let o = run(in_dir(&mut bk(), tmp.path()).args(["build", "-q", "--progress", "plain", "."]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--progress plain and --quiet cannot be used together"),
        "{}",
        stderr(&o)
    );
}

/// The annotations of a pushed multi-platform image: the index's, each index descriptor's and
/// each manifest's, by platform.
fn pushed_annotations(repo: &str, tag: &str) -> BTreeMap<String, Value> {
    let index = registry_json(&format!("/v2/{repo}/manifests/{tag}"));
    let mut out = BTreeMap::new();
    out.insert("index".to_string(), index["annotations"].clone());
    for d in index["manifests"].as_array().expect("an image index") {
        let p = format!(
            "{}/{}",
            d["platform"]["os"].as_str().unwrap_or_default(),
            d["platform"]["architecture"].as_str().unwrap_or_default()
        );
        out.insert(format!("descriptor {p}"), d["annotations"].clone());
        let digest = d["digest"].as_str().unwrap();
        let m = registry_json(&format!("/v2/{repo}/manifests/{digest}"));
        out.insert(format!("manifest {p}"), m["annotations"].clone());
    }
    out
}

#[test]
fn annotations_reach_the_pushed_index_and_manifests_as_with_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = unique("annotations");
    write(&tmp.path().join("Dockerfile"), "FROM scratch\nCOPY a /a\n");
    write(&tmp.path().join("a"), &repo);
    let flags = [
        "--platform",
        "linux/amd64,linux/arm64",
        "--annotation",
        "index:org.example.index=i",
        "--annotation",
        "org.example.all=first",
        "--annotation",
        // The later value of one key wins.
        "org.example.all=every manifest",
        "--annotation",
        "manifest[linux/aarch64]:org.example.arm=arm only",
        "--annotation",
        "manifest-descriptor,index-descriptor:org.example.desc=d",
    ];
    for (mut cmd, tag) in [(bk(), "bk"), (docker(), "bx")] {
        if tag == "bx" {
            cmd.args(["buildx", "build"]);
        } else {
            cmd.arg("build");
        }
        run_ok(
            in_dir(&mut cmd, tmp.path())
                .args(["--progress", "plain", "--push", "-t"])
                .arg(format!("localhost:5000/{repo}:{tag}"))
                .args(flags)
                .arg("."),
        );
    }
    let mine = pushed_annotations(&repo, "bk");
    assert_eq!(
        mine["index"]["org.example.index"], "i",
        "index annotations: {mine:?}"
    );
    assert_eq!(mine["manifest linux/arm64"]["org.example.arm"], "arm only");
    assert!(mine["manifest linux/amd64"]["org.example.arm"].is_null());
    assert_eq!(
        mine["manifest linux/amd64"]["org.example.all"],
        "every manifest"
    );
    assert_eq!(mine["descriptor linux/amd64"]["org.example.desc"], "d");
    assert_eq!(mine, pushed_annotations(&repo, "bx"));

    // A key the daemon would not take for an annotation is an error, not a silent drop.
    let o = run(in_dir(&mut bk(), tmp.path()).args(["build", "--annotation", "a b=c", "."]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid --annotation"),
        "{}",
        stderr(&o)
    );
}

/// `ssh-add` and `ssh-keygen` of this machine with the shared libraries they load and the
/// dynamic loader, copied to `dir`: the base image has no SSH tools, and these run there as
/// `dir/LOADER --library-path dir dir/TOOL`. Returns the loader's file name.
fn ssh_tools(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let tools = ["/usr/bin/ssh-add", "/usr/bin/ssh-keygen"];
    let ldd = run_ok(Command::new("ldd").args(tools));
    let mut loader = None;
    let mut files: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') && !word.ends_with(':') {
            if word.contains("/ld-") {
                loader = Some(word.rsplit('/').next().unwrap().to_string());
            }
            files.push(word.to_string());
        }
    }
    for f in files {
        let name = Path::new(&f).file_name().unwrap();
        std::fs::copy(&f, dir.join(name)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    loader.expect("ldd names the dynamic loader")
}

fn keygen(path: &Path, args: &[&str]) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-f"])
            .arg(path)
            .args(args),
    );
}

/// `TYPE BASE64` of each line of an `ssh-add -L` / `.pub` text (comments differ: buildx's
/// keyring lists none).
fn public_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn ssh_key_files_are_listed_and_sign_in_run_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let loader = ssh_tools(&ctx.join("tools"));
    let ed = tmp.path().join("id_ed25519");
    let rsa = tmp.path().join("id_rsa");
    keygen(&ed, &["-t", "ed25519", "-N", "", "-C", "ed-key"]);
    keygen(
        &rsa,
        &["-t", "rsa", "-b", "2048", "-N", "", "-C", "rsa-key"],
    );
    std::fs::copy(rsa.with_extension("pub"), ctx.join("signer.pub")).unwrap();
    let id = unique("ssh");
    write(&ctx.join("data.txt"), &id);
    // The default ID's agent lists both keys and signs `data.txt` with the RSA key (ssh-keygen
    // asks the agent when given only the public key).
    write(
        &ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY . /in\nRUN --mount=type=ssh mkdir /out && cd /in/tools \
             && ./{loader} --library-path . ./ssh-add -L > /out/keys \
             && cp /in/data.txt /out/ \
             && ./{loader} --library-path . ./ssh-keygen -Y sign -n bk-test -f /in/signer.pub /out/data.txt\n\
             FROM scratch\nCOPY --from=0 /out /\n",
            base_image()
        ),
    );
    let keys = format!("default={},{}", ed.display(), rsa.display());
    for (mut cmd, dest) in [(bk(), "bk"), (docker(), "bx")] {
        if dest == "bx" {
            cmd.args(["buildx", "build"]);
        } else {
            cmd.arg("build");
        }
        run_ok(
            in_dir(&mut cmd, tmp.path())
                .env_remove("SSH_AUTH_SOCK")
                .args(["--progress", "plain", "--ssh", &keys, "-o", dest, "ctx"]),
        );
    }
    let out = tmp.path().join("bk");
    let listed = read(&out.join("keys"));
    let want = format!(
        "{}{}",
        read(&ed.with_extension("pub")),
        read(&rsa.with_extension("pub"))
    );
    assert_eq!(public_keys(&listed), public_keys(&want));
    assert_eq!(
        public_keys(&listed),
        public_keys(&read(&tmp.path().join("bx/keys")))
    );
    // The signature made in the build verifies with the RSA public key.
    let allowed = tmp.path().join("allowed_signers");
    write(
        &allowed,
        format!("signer {}", read(&rsa.with_extension("pub"))),
    );
    let verify = run(Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "bk-test", "-I", "signer", "-f"])
        .arg(&allowed)
        .arg("-s")
        .arg(out.join("data.txt.sig"))
        .stdin(std::fs::File::open(out.join("data.txt")).unwrap()));
    assert!(
        verify.status.success(),
        "the signature does not verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // A key with a passphrase is refused before anything is built, saying what to do.
    let locked = tmp.path().join("locked");
    keygen(&locked, &["-t", "ed25519", "-N", "secret"]);
    let o = run(in_dir(&mut bk(), tmp.path())
        .args(["build", "--ssh"])
        .arg(format!("default={}", locked.display()))
        .arg("ctx"));
    assert!(!o.status.success());
    let msg = stderr(&o);
    assert!(
        msg.contains("passphrase") && msg.contains("ssh-add") && !msg.contains("#1 "),
        "{msg}"
    );
}

/// Output files that cannot be written fail the run before anything is built, naming the
/// flag; `--iidfile` with an export that makes no image is refused, as buildx refuses it; and
/// `--metadata-file /dev/stdout` writes into standard output when that is a pipe.
#[test]
fn output_files_are_checked_before_building() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let marker = unique("outfiles");
    write(
        &ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo {marker} > /m\n", base_image()),
    );
    let repo = unique("outfiles");
    let tag = format!("localhost:5000/{repo}:1");

    // A directory that takes no new file (procfs), for build and for bake.
    let o = run(in_dir(&mut bk(), &ctx).args([
        "build",
        "--push",
        "-t",
        &tag,
        "--metadata-file",
        "/proc/bk-build-md.json",
        ".",
    ]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--metadata-file /proc/bk-build-md.json"),
        "{err}"
    );
    assert_eq!(
        manifest_digest(&repo, "1"),
        None,
        "nothing was built or pushed"
    );

    write(
        &ctx.join("bk-build.toml"),
        format!("[target.app]\ncontext = \".\"\ntags = [\"{tag}\"]\npush = true\n"),
    );
    let o =
        run(in_dir(&mut bk(), &ctx).args(["bake", "--metadata-file", "/proc/bk-build-md.json"]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--metadata-file /proc/bk-build-md.json"),
        "{err}"
    );
    assert_eq!(
        manifest_digest(&repo, "1"),
        None,
        "nothing was built or pushed"
    );

    // --iidfile with local and tar exports: both tools refuse, and no file appears.
    for kind in ["local", "tar"] {
        let out = tmp.path().join(format!("out-{kind}"));
        let iid = tmp.path().join(format!("iid-{kind}"));
        let output = format!("type={kind},dest={}", out.display());
        let args = [
            "--iidfile",
            iid.to_str().unwrap(),
            "-o",
            output.as_str(),
            ".",
        ];
        let o = run(in_dir(&mut bk(), &ctx).arg("build").args(args));
        assert!(!o.status.success(), "{kind}");
        assert!(stderr(&o).contains("--iidfile"), "{}", stderr(&o));
        assert!(!iid.exists() && !out.exists(), "{kind}: nothing written");
        let b = run(in_dir(&mut docker(), &ctx)
            .args(["buildx", "build"])
            .args(args));
        assert!(!b.status.success(), "buildx refuses {kind} too");
    }

    // /dev/stdout on a pipe (how the test captures it): the metadata arrives there.
    let o = run_ok(in_dir(&mut bk(), &ctx).args([
        "build",
        "--progress",
        "none",
        "--metadata-file",
        "/dev/stdout",
        "-o",
        "type=cacheonly",
        ".",
    ]));
    let text = String::from_utf8_lossy(&o.stdout);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    let doc: Value =
        serde_json::from_str(text[start..].trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(doc.is_object(), "{doc}");
}

/// A stream on standard input that is neither a tar archive nor a Dockerfile-sized text is
/// refused once it passes the limit, instead of being copied to disk without end.
#[test]
fn an_endless_stdin_dockerfile_is_cut_off() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = bk()
        .args(["build", "-"])
        .env("TMPDIR", tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let line = b"RUN true\n".repeat(1 << 10);
        // Up to 64 MiB; the reader stops far earlier and the pipe breaks.
        for _ in 0..(64 << 20) / line.len() {
            if stdin.write_all(&line).is_err() {
                return true;
            }
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    let cut_off = writer.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("16 MiB"), "{err}");
    assert!(cut_off, "bk-build stopped reading before the end");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The `architecture` of the (first) image in an OCI layout directory.
fn oci_layout_architecture(dir: &Path) -> String {
    let blob = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut m = blob(index["manifests"][0]["digest"].as_str().unwrap());
    while m.get("manifests").is_some() {
        m = blob(m["manifests"][0]["digest"].as_str().unwrap());
    }
    let config = blob(m["config"]["digest"].as_str().unwrap());
    config["architecture"].as_str().unwrap().to_string()
}

/// `DOCKER_DEFAULT_PLATFORM` is the default `--platform` of `docker buildx build`: both tools
/// build for it when no flag is given, and a flag still wins.
#[test]
fn docker_default_platform_is_the_default_platform_as_with_buildx() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("Dockerfile"), "FROM scratch\nCOPY a /a\n");
    write(&tmp.path().join("a"), "a\n");
    let build = |mut cmd: Command, sub: &[&str], out: &str, flags: &[&str]| {
        let dest = tmp.path().join(out);
        run_ok(
            in_dir(&mut cmd, tmp.path())
                .env("DOCKER_DEFAULT_PLATFORM", "linux/arm64")
                .args(sub)
                .args(["--progress", "plain", "--provenance=false", "-o"])
                .arg(format!("type=oci,dest={},tar=false", dest.display()))
                .args(flags)
                .arg("."),
        );
        oci_layout_architecture(&dest)
    };
    assert_eq!(build(bk(), &["build"], "bk", &[]), "arm64");
    assert_eq!(build(docker(), &["buildx", "build"], "bx", &[]), "arm64");
    let flag = ["--platform", "linux/amd64"];
    assert_eq!(build(bk(), &["build"], "bk-flag", &flag), "amd64");
    assert_eq!(
        build(docker(), &["buildx", "build"], "bx-flag", &flag),
        "amd64"
    );
}
