//! Real-daemon test harness: finds the environment started by `scripts/bkenv/up.sh`
//! (a private dockerd with embedded BuildKit and a registry on 127.0.0.1:5000), runs
//! `bk-build` and the `docker buildx` oracle against it, and reads the registry.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub mod attest;
pub mod bake_print;

/// The test environment's directory (`$BKENV`, default `/tmp/bkenv`).
pub fn bkenv() -> PathBuf {
    std::env::var_os("BKENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/bkenv".into())
}

/// Environment variables from `$BKENV/env.sh` (DOCKER_HOST, DOCKER_CONFIG, PATH, …).
pub fn env() -> BTreeMap<String, String> {
    let file = bkenv().join("env.sh");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Start the test daemon first: `bash scripts/bkenv/up.sh` (or run scripts/test.sh)",
            file.display()
        )
    });
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("export ") else {
            continue;
        };
        let Some((k, v)) = rest.split_once('=') else {
            continue;
        };
        let v = v.replace("$PATH", &std::env::var("PATH").unwrap_or_default());
        m.insert(k.to_string(), v);
    }
    m
}

pub fn registry() -> String {
    env()
        .get("BKENV_REGISTRY")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:5000".into())
}

pub fn base_image() -> String {
    env()
        .get("BKENV_BASE_IMAGE")
        .cloned()
        .unwrap_or_else(|| "localhost:5000/busybox:latest".into())
}

/// A unique lowercase name for registry repositories and tags of one test.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}-{}", n & 0xffff_ffff_ffff, std::process::id())
}

fn with_env(cmd: &mut Command) -> &mut Command {
    for (k, v) in env() {
        cmd.env(k, v);
    }
    // The docker daemon under test, never a user's BUILDKIT_HOST.
    cmd.env_remove("BUILDKIT_HOST");
    // Attestations as both tools make them by default; tests that change this say so.
    cmd.env_remove("BUILDX_NO_DEFAULT_ATTESTATIONS");
    cmd.env_remove("BUILDX_METADATA_PROVENANCE");
    // The same output whether the suite runs in GitHub Actions, GitLab CI or elsewhere.
    for ci in ["GITHUB_ACTIONS", "GITLAB_CI", "GITHUB_STEP_SUMMARY"] {
        cmd.env_remove(ci);
    }
    cmd
}

pub fn bk() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bk-build"));
    with_env(&mut c);
    c.env("XDG_STATE_HOME", state_home());
    c
}

/// One node-id dir for all tests of a run so shared keys are stable between builds of a test.
fn state_home() -> PathBuf {
    let p = std::env::temp_dir().join("bk-build-test-state");
    let _ = std::fs::create_dir_all(&p);
    p
}

pub fn docker() -> Command {
    let mut c = Command::new("docker");
    with_env(&mut c);
    c.env("BUILDX_CONFIG", buildx_config());
    c
}

/// A buildx state directory of the running test's own (libtest names each test's thread).
///
/// buildx keys the daemon's copy of a build context by the context directory's *base name*
/// and a node ID kept in its state directory, so two tests whose contexts are both called
/// `ctx` sync into one copy on the daemon; a file written in the same clock tick with the same
/// size in both is then not sent again, and the oracle exports the other test's bytes (seen in
/// CI: `differential::random_edits_a` got `edit 8` of a sibling project at step 6). A node ID
/// per test keeps every test's contexts apart and a test's own builds incremental.
fn buildx_config() -> PathBuf {
    let name: String = std::thread::current()
        .name()
        .unwrap_or("main")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let p = std::env::temp_dir()
        .join("bk-build-test-buildx")
        .join(format!("{}-{name}", env!("CARGO_CRATE_NAME")));
    let _ = std::fs::create_dir_all(&p);
    p
}

/// Runs and returns the output, printing it for failing-test diagnosis.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "$ {:?}\n-- exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 60)
    );
    out
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "command failed: {cmd:?}");
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sets `path`'s mtime to `t`.
pub fn set_mtime(path: &Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, contents).unwrap();
}

/// A plain HTTP/1.0 request to the local registry; returns (status, headers, body).
pub fn registry_request(method: &str, path: &str) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let reg = registry();
    let mut s = std::net::TcpStream::connect(&reg).expect("registry reachable");
    let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {reg}\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

/// The registry's JSON answer to `GET path` (e.g. `/v2/REPO/manifests/TAG`); panics unless
/// it is 200 with JSON.
pub fn registry_json(path: &str) -> serde_json::Value {
    let (status, _, body) = registry_request("GET", path);
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The `rootfs.diff_ids` of `repo:tag` in the registry (the image of this platform when it is an index).
pub fn diff_ids(repo: &str, tag: &str) -> Vec<String> {
    let mut m = registry_json(&format!("/v2/{repo}/manifests/{tag}"));
    if let Some(list) = m["manifests"].as_array() {
        let image = list
            .iter()
            .find(|d| d["platform"]["os"] != "unknown")
            .unwrap_or_else(|| panic!("{repo}:{tag}: no image in {m}"));
        let digest = image["digest"].as_str().unwrap().to_string();
        m = registry_json(&format!("/v2/{repo}/manifests/{digest}"));
    }
    let config = m["config"]["digest"].as_str().unwrap();
    let c = registry_json(&format!("/v2/{repo}/blobs/{config}"));
    serde_json::from_value(c["rootfs"]["diff_ids"].clone()).unwrap()
}

/// The manifest digest the registry serves for `repo:tag` (None if absent).
pub fn manifest_digest(repo: &str, tag: &str) -> Option<String> {
    let (status, headers, _) = registry_request("HEAD", &format!("/v2/{repo}/manifests/{tag}"));
    (status == 200)
        .then(|| headers.get("docker-content-digest").cloned())
        .flatten()
}

/// Every entry under `root` as (relative path → description): type, mode, size and a content
/// hash for files, target for symlinks, device numbers for devices; FIFOs and sockets are
/// described, never opened. Two trees are equal iff these maps are.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            let ft = md.file_type();
            let dev = || {
                let rdev = md.rdev();
                // Linux's encoding of major:minor in st_rdev.
                let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
                let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
                format!("{major}:{minor}")
            };
            let desc = if ft.is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_fifo() {
                format!("fifo {mode:o}")
            } else if ft.is_socket() {
                format!("socket {mode:o}")
            } else if ft.is_char_device() {
                format!("char {mode:o} {}", dev())
            } else if ft.is_block_device() {
                format!("block {mode:o} {}", dev())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else {
                let mut h = Sha256::new();
                let mut f = std::fs::File::open(&p).unwrap();
                std::io::copy(&mut f, &mut h).unwrap();
                format!("file {mode:o} {} {:x}", md.len(), h.finalize())
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// Asserts two trees are equal, listing the differences.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ta = tree(a);
    let tb = tree(b);
    let mut diffs = Vec::new();
    for (k, v) in &ta {
        match tb.get(k) {
            None => diffs.push(format!("only in {}: {k} ({v})", a.display())),
            Some(w) if w != v => diffs.push(format!("{k}: {v} != {w}")),
            _ => {}
        }
    }
    for (k, v) in &tb {
        if !ta.contains_key(k) {
            diffs.push(format!("only in {}: {k} ({v})", b.display()));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    assert!(!ta.is_empty(), "both trees are empty: nothing was compared");
}

/// A value `scripts/bkenv/up.sh` exports in env.sh; panics saying how to get it.
pub fn env_var(key: &str) -> String {
    env().get(key).cloned().unwrap_or_else(|| {
        panic!(
            "{key} is not in $BKENV/env.sh: rerun `bash scripts/bkenv/up.sh` without BKENV_NO_TLS/BKENV_NO_SSH (it starts the TLS engine and the sshd these tests use)"
        )
    })
}

/// The second engine of the test environment: mutual TLS on `host`, client files in
/// `certs` (ca.pem, cert.pem, key.pem), also on a unix socket for the oracle.
pub struct TlsEngine {
    pub host: String,
    pub certs: PathBuf,
    pub ca_dir: PathBuf,
    pub server_certs: PathBuf,
    pub socket: String,
}

pub fn tls_engine() -> TlsEngine {
    TlsEngine {
        host: env_var("BKENV_TLS_HOST"),
        certs: env_var("BKENV_TLS_CERTS").into(),
        ca_dir: env_var("BKENV_TLS_CA").into(),
        server_certs: env_var("BKENV_TLS_SERVER_CERTS").into(),
        socket: env_var("BKENV_TLS_SOCKET"),
    }
}

/// Sets the docker CLI's TLS variables on `cmd`: `DOCKER_HOST=host`, `DOCKER_TLS_VERIFY=1`,
/// `DOCKER_CERT_PATH=certs`.
pub fn with_docker_tls<'a>(cmd: &'a mut Command, host: &str, certs: &Path) -> &'a mut Command {
    cmd.env("DOCKER_HOST", host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs)
}

/// bk-build aimed at the TLS engine the way a docker CLI user would aim it.
pub fn bk_tls() -> Command {
    let t = tls_engine();
    let mut c = bk();
    with_docker_tls(&mut c, &t.host, &t.certs);
    c
}

/// The docker CLI on the TLS engine (the oracle for what landed there).
pub fn docker_tls() -> Command {
    let t = tls_engine();
    let mut c = docker();
    with_docker_tls(&mut c, &t.host, &t.certs);
    c
}

/// Runs openssl; panics with its output if it fails.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes, in `dir`, a CA of its own (`ca.pem`, `ca-key.pem`) and a client certificate it
/// signed (`cert.pem`, `key.pem`): valid TLS material that the test engine does not trust.
pub fn foreign_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=another CA",
        "-keyout",
        &p("ca-key.pem"),
        "-out",
        &p("ca.pem"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=stranger",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("req.csr"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("req.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca-key.pem"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]);
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwards plain TCP on 127.0.0.1:`port` to a unix socket: the primary engine as a
/// plain-text `tcp://` daemon. The threads live as long as the test process.
pub fn tcp_to_unix_proxy(socket: &Path) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let (mut t1, mut u1) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            let (mut t2, mut u2) = (tcp, unix);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut t1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut t2);
                let _ = t2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// [`tcp_to_unix_proxy`] that can stall: while the returned flag is set, nothing it has read
/// is passed on in either direction, and nothing is closed (a network that stops moving, not
/// one that breaks). Clearing the flag lets everything through again.
pub fn stalling_proxy(socket: &Path) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = socket.to_path_buf();
    let frozen = std::sync::Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    fn pump(
        mut from: impl Read,
        mut to: impl Write,
        frozen: std::sync::Arc<AtomicBool>,
        done: impl FnOnce(),
    ) {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            while frozen.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        done();
    }
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let (t1, u1) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            let (t2, u2) = (tcp, unix);
            let (f1, f2) = (flag.clone(), flag.clone());
            std::thread::spawn(move || {
                let u = u1.try_clone().unwrap();
                pump(t1, u1, f1, move || {
                    let _ = u.shutdown(std::net::Shutdown::Write);
                })
            });
            std::thread::spawn(move || {
                let t = t2.try_clone().unwrap();
                pump(u2, t2, f2, move || {
                    let _ = t.shutdown(std::net::Shutdown::Write);
                })
            });
        }
    });
    (port, frozen)
}

/// Forgets this test's steps on the daemon: prunes only records whose description holds
/// `marker` (after checking the filter selects nothing else); returns how many there were.
pub fn forget(marker: &str) -> usize {
    let filter = format!("description~={marker}");
    let du = run_ok(bk().args(["du", "-v", "--filter", &filter]));
    let found = String::from_utf8_lossy(&du.stdout)
        .lines()
        .filter(|l| !l.starts_with("Records:"))
        .count();
    for line in String::from_utf8_lossy(&du.stdout).lines() {
        if !line.starts_with("Records:") {
            assert!(
                line.contains(marker),
                "the du filter selected a record that is not this test's: {line}"
            );
        }
    }
    run_ok(bk().args(["prune", "--all", "--filter", &filter]));
    let du = run_ok(bk().args(["du", "-v", "--filter", &filter]));
    let left = String::from_utf8_lossy(&du.stdout);
    assert!(
        left.contains("Records: 0"),
        "records of {marker} survived the prune:\n{left}"
    );
    found
}

/// A registry in front of the test registry ([`registry`]; use `127.0.0.1:PORT/…` names)
/// that holds the push of a manifest to repository `held` (`PUT /v2/<held>/manifests/<tag>`,
/// bk-build's ledger tags `bk-build-…` excepted) until a request for repository `opener`
/// arrives, or `wait` passes. With `refuse`, the held push is then answered `400` instead of
/// passed on. Everything else passes through unchanged (the `Host` header too, so the
/// registry's upload locations point back here). Runs as long as the value lives.
pub struct GatedRegistry {
    pub port: u16,
    /// A manifest push was held.
    pub held: Arc<AtomicBool>,
    /// `wait` passed before the opener came.
    pub timed_out: Arc<AtomicBool>,
    /// Every request, as `METHOD /path`, in arrival order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

pub fn gated_registry(
    held: &str,
    opener: &str,
    wait: std::time::Duration,
    refuse: bool,
) -> GatedRegistry {
    use http_body_util::{Either, Empty};
    use hyper::body::{Bytes, Incoming};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::Ordering::SeqCst;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (was_held, timed_out) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let opened = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(tokio::sync::Notify::new());
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
    let held_prefix = format!("/v2/{held}/manifests/");
    let opener_prefix = format!("/v2/{opener}/");
    let upstream = registry();
    let (h, t) = (was_held.clone(), timed_out.clone());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (client, opened, notify) = (client.clone(), opened.clone(), notify.clone());
            let (held_prefix, opener_prefix) = (held_prefix.clone(), opener_prefix.clone());
            let (h, t, upstream) = (h.clone(), t.clone(), upstream.clone());
            let log = log.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        let (client, opened, notify) =
                            (client.clone(), opened.clone(), notify.clone());
                        let (held_prefix, opener_prefix) =
                            (held_prefix.clone(), opener_prefix.clone());
                        let (h, t, upstream) = (h.clone(), t.clone(), upstream.clone());
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            log.lock().unwrap().push(format!("{} {path}", req.method()));
                            if path.starts_with(&opener_prefix) {
                                opened.store(true, SeqCst);
                                notify.notify_waiters();
                            }
                            let gated = req.method() == hyper::Method::PUT
                                && path.starts_with(&held_prefix)
                                && !path[held_prefix.len()..].starts_with("bk-build-");
                            if gated {
                                h.store(true, SeqCst);
                                let n = notify.notified();
                                tokio::pin!(n);
                                n.as_mut().enable();
                                if !opened.load(SeqCst)
                                    && tokio::time::timeout(wait, n).await.is_err()
                                {
                                    t.store(true, SeqCst);
                                    opened.store(true, SeqCst);
                                }
                                if refuse {
                                    let mut r =
                                        hyper::Response::new(Either::Right(Empty::<Bytes>::new()));
                                    *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                                    return Ok::<_, std::convert::Infallible>(r);
                                }
                            }
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            *req.uri_mut() = format!("http://{upstream}{pq}").parse().unwrap();
                            Ok(match client.request(req).await {
                                Ok(r) => r.map(Either::Left),
                                Err(_) => {
                                    let mut r = hyper::Response::new(Either::Right(Empty::new()));
                                    *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                    r
                                }
                            })
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    GatedRegistry {
        port,
        held: was_held,
        timed_out,
        seen,
        _rt: rt,
    }
}
