//! `bk_build::registry` against the real test registry (127.0.0.1:5000), with
//! `docker buildx imagetools` and the registry's own answers as the oracle; and
//! `bk_build::transport::docker_tag_image` against the test engine.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bk_build::registry::{manifest_digest, tag_existing, RegistryError};
use bk_build::transport::{docker_image_id, docker_tag_image, DockerHost};
use support::*;

/// The digest `docker buildx imagetools inspect` reports for `reference`.
fn oracle_digest(reference: &str) -> String {
    let out = run_ok(docker().args([
        "buildx",
        "imagetools",
        "inspect",
        "--format",
        "{{json .Manifest.Digest}}",
        reference,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().trim_matches('"').to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn digest_of_an_existing_tag_matches_imagetools() {
    let base = base_image();
    let expected = oracle_digest(&base);
    assert!(expected.starts_with("sha256:"), "{expected}");
    let rt = runtime();
    assert_eq!(
        rt.block_on(manifest_digest(&base)).unwrap().as_deref(),
        Some(expected.as_str())
    );
    // The same image by IP, and pinned by its digest.
    let by_ip = base.replacen("localhost:", "127.0.0.1:", 1);
    assert_eq!(
        rt.block_on(manifest_digest(&by_ip)).unwrap().as_deref(),
        Some(expected.as_str())
    );
    let repo = base.rsplit_once(':').map(|(r, _)| r).unwrap_or(&base);
    let pinned = format!("{repo}@{expected}");
    assert_eq!(
        rt.block_on(manifest_digest(&pinned)).unwrap().as_deref(),
        Some(expected.as_str())
    );
}

#[test]
fn missing_tag_and_missing_repository_are_none() {
    let rt = runtime();
    let tag = unique("absent");
    assert_eq!(
        rt.block_on(manifest_digest(&format!("localhost:5000/busybox:{tag}")))
            .unwrap(),
        None
    );
    let repo = unique("no-such-repo");
    assert_eq!(
        rt.block_on(manifest_digest(&format!(
            "localhost:5000/{repo}/img:latest"
        )))
        .unwrap(),
        None
    );
}

#[test]
fn retag_makes_a_new_tag_for_the_same_manifest_without_a_build() {
    // A private repository of our own, copied from the base image by the oracle.
    let repo = format!("localhost:5000/{}/img", unique("retag"));
    let src = format!("{repo}:first");
    run_ok(docker().args([
        "buildx",
        "imagetools",
        "create",
        "--tag",
        &src,
        &base_image(),
    ]));
    let expected = oracle_digest(&src);

    let rt = runtime();
    let dst = format!("{repo}:second");
    assert_eq!(rt.block_on(manifest_digest(&dst)).unwrap(), None);
    let got = rt.block_on(tag_existing(&src, &dst)).unwrap();
    assert_eq!(got, expected);
    assert_eq!(oracle_digest(&dst), expected);
    let path = repo.trim_start_matches("localhost:5000/");
    assert_eq!(manifest_digest_raw(path, "second"), Some(expected.clone()));

    // By digest works too; a missing source is a clear NotFound.
    let third = format!("{repo}:third");
    let by_digest = format!("{repo}@{expected}");
    assert_eq!(
        rt.block_on(tag_existing(&by_digest, &third)).unwrap(),
        expected
    );
    let err = rt
        .block_on(tag_existing(&format!("{repo}:nope"), &third))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

/// The registry's own answer, through the harness's raw HTTP client (independent of ours).
fn manifest_digest_raw(repo: &str, tag: &str) -> Option<String> {
    support::manifest_digest(repo, tag)
}

/// `n` random bytes, so each test's layer is new to the registry.
fn random_bytes(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    std::fs::File::open("/dev/urandom")
        .and_then(|f| f.take(n).read_to_end(&mut out))
        .expect("read /dev/urandom");
    out
}

/// A build context: `Dockerfile` with `from`, plus a file of `size` random bytes it copies.
fn context(from: &str, size: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("Dockerfile"),
        format!("FROM {from}\nCOPY data /data\n"),
    );
    write(&dir.path().join("data"), random_bytes(size));
    dir
}

fn build(dir: &Path, args: &[&str]) {
    let mut cmd = docker();
    cmd.args(["buildx", "build", "--quiet"]).args(args).arg(dir);
    run_ok(&mut cmd);
}

/// The manifest `repo` serves for `reference` (tag or digest), as JSON.
fn manifest_json(repo: &str, reference: &str) -> serde_json::Value {
    let (status, _, body) = registry_request("GET", &format!("/v2/{repo}/manifests/{reference}"));
    assert_eq!(status, 200, "GET {repo} manifest {reference}");
    serde_json::from_slice(&body).expect("manifest JSON")
}

fn descriptors<'a>(v: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    v[field]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["digest"].as_str()).collect())
        .unwrap_or_default()
}

/// Asserts `repo` holds the config and every layer of image manifest `m`; returns how many.
fn assert_blobs_in(repo: &str, m: &serde_json::Value) -> usize {
    let config = m["config"]["digest"].as_str().expect("a config");
    let mut blobs = vec![config];
    blobs.extend(descriptors(m, "layers"));
    for d in &blobs {
        let (status, _, _) = registry_request("HEAD", &format!("/v2/{repo}/blobs/{d}"));
        assert_eq!(status, 200, "blob {d} in {repo}");
    }
    blobs.len()
}

#[test]
fn retag_into_another_repository_brings_every_blob_along() {
    let ns = unique("xrepo");
    let (a, b) = (format!("{ns}/a"), format!("{ns}/b"));
    let src = format!("localhost:5000/{a}:1");
    let dst = format!("localhost:5000/{b}:2");
    let dir = context(&base_image(), 64);
    build(dir.path(), &["--push", "--provenance=false", "-t", &src]);
    let expected = manifest_digest_raw(&a, "1").expect("the pushed image");
    let m = manifest_json(&a, "1");
    assert_eq!(
        m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
        "a single image manifest, not an index"
    );
    assert_eq!(manifest_digest_raw(&b, "2"), None);

    let rt = runtime();
    let started = std::time::Instant::now();
    assert_eq!(rt.block_on(tag_existing(&src, &dst)).unwrap(), expected);
    eprintln!("cross-repository retag took {:?}", started.elapsed());
    assert_eq!(manifest_digest_raw(&b, "2"), Some(expected.clone()));
    assert_eq!(oracle_digest(&dst), expected);
    assert_eq!(
        assert_blobs_in(&b, &m),
        3,
        "config, busybox layer, our layer"
    );

    // Again, now that every blob is there; and onward from the copy into a third repository.
    assert_eq!(rt.block_on(tag_existing(&src, &dst)).unwrap(), expected);
    let c = format!("{ns}/c");
    let onward = format!("localhost:5000/{c}:3");
    assert_eq!(rt.block_on(tag_existing(&dst, &onward)).unwrap(), expected);
    assert_blobs_in(&c, &m);

    // A missing source is NotFound, and the target tag is not made.
    let err = rt
        .block_on(tag_existing(
            &format!("localhost:5000/{a}:nope"),
            &format!("localhost:5000/{b}:nope"),
        ))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert_eq!(manifest_digest_raw(&b, "nope"), None);
    // So is a missing repository.
    let err = rt
        .block_on(tag_existing(
            &format!("localhost:5000/{ns}/never:1"),
            &format!("localhost:5000/{b}:never"),
        ))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[test]
fn retag_of_a_multi_platform_index_into_another_repository_copies_each_child() {
    let ns = unique("xrepo-index");
    let (a, b) = (format!("{ns}/a"), format!("{ns}/b"));
    let src = format!("localhost:5000/{a}:1");
    let dst = format!("localhost:5000/{b}:2");
    // FROM scratch: no emulation needed for the foreign platform. Provenance (on by default)
    // adds an attestation manifest per platform, children of another kind.
    let dir = context("scratch", 64);
    build(
        dir.path(),
        &[
            "--push",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &src,
        ],
    );
    let expected = manifest_digest_raw(&a, "1").expect("the pushed index");
    let index = manifest_json(&a, "1");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let children = descriptors(&index, "manifests");
    assert!(children.len() >= 2, "{index}");

    let rt = runtime();
    assert_eq!(rt.block_on(tag_existing(&src, &dst)).unwrap(), expected);
    assert_eq!(manifest_digest_raw(&b, "2"), Some(expected.clone()));
    assert_eq!(oracle_digest(&dst), expected);
    for child in &children {
        assert_eq!(
            manifest_digest_raw(&b, child).as_deref(),
            Some(*child),
            "child manifest {child} in {b}"
        );
        assert_blobs_in(&b, &manifest_json(&b, child));
    }

    // Within the target repository, a plain re-tag of the index.
    let again = format!("localhost:5000/{b}:3");
    assert_eq!(rt.block_on(tag_existing(&dst, &again)).unwrap(), expected);
    assert_eq!(manifest_digest_raw(&b, "3"), Some(expected));
}

/// A pass-through proxy to the test registry that drops `mount`/`from` from blob-upload POSTs,
/// so the registry opens an upload session (202) as one refusing the mount would. One request
/// per connection (it asks the registry to close after answering); counts the POSTs it changed.
fn no_mount_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stripped = Arc::new(AtomicUsize::new(0));
    let count = stripped.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                let _ = forward(client, &count);
            });
        }
    });
    (addr, stripped)
}

fn forward(mut client: TcpStream, stripped: &AtomicUsize) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").splitn(3, ' ');
    let (method, mut target, version) = (
        first.next().unwrap_or(""),
        first.next().unwrap_or(""),
        first.next().unwrap_or(""),
    );
    if method == "POST" && target.contains("mount=") {
        stripped.fetch_add(1, Ordering::SeqCst);
        target = target.split('?').next().unwrap_or(target);
    }
    let mut out = format!("{method} {target} {version}\r\n");
    for l in lines.filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:")) {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(registry())?;
    upstream.write_all(out.as_bytes())?;
    let (mut from_client, mut to_upstream) = (client.try_clone()?, upstream.try_clone()?);
    let body = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_upstream);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = body.join();
    Ok(())
}

#[test]
fn retag_streams_blobs_a_registry_will_not_mount() {
    let ns = unique("xrepo-stream");
    let (a, b) = (format!("{ns}/a"), format!("{ns}/b"));
    // A 6 MiB layer of noise: more than the 4 MiB a buffered answer may hold, so it can only
    // arrive as a stream.
    let dir = context(&base_image(), 6 << 20);
    let out = format!("type=registry,name=localhost:5000/{a}:1,oci-mediatypes=true");
    build(dir.path(), &["--provenance=false", "--output", &out]);
    let expected = manifest_digest_raw(&a, "1").expect("the pushed image");
    let m = manifest_json(&a, "1");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");

    let (proxy, stripped) = no_mount_proxy();
    let rt = runtime();
    let started = std::time::Instant::now();
    let got = rt
        .block_on(tag_existing(
            &format!("{proxy}/{a}:1"),
            &format!("{proxy}/{b}:2"),
        ))
        .unwrap();
    eprintln!("streamed copy took {:?}", started.elapsed());
    assert_eq!(got, expected);
    let blobs = assert_blobs_in(&b, &m);
    assert_eq!(
        stripped.load(Ordering::SeqCst),
        blobs,
        "every blob went through a refused mount"
    );
    assert_eq!(manifest_digest_raw(&b, "2"), Some(expected));
}

fn docker_host() -> DockerHost {
    let env = env();
    let host = env.get("DOCKER_HOST").expect("DOCKER_HOST in the test env");
    DockerHost::parse(host).unwrap()
}

#[test]
fn tag_image_names_an_engine_image_by_id_or_reference() {
    let name = unique("tag-image");
    let dir = context(&base_image(), 64);
    build(
        dir.path(),
        &["--load", "--provenance=false", "-t", &format!("{name}:1")],
    );
    let host = docker_host();
    let rt = runtime();
    let id = rt
        .block_on(docker_image_id(&host, &format!("{name}:1")))
        .unwrap()
        .expect("the loaded image");
    assert!(id.starts_with("sha256:"), "{id}");

    rt.block_on(docker_tag_image(&host, &id, &format!("{name}:2")))
        .unwrap();
    assert_eq!(
        rt.block_on(docker_image_id(&host, &format!("{name}:2")))
            .unwrap(),
        Some(id.clone())
    );
    // By reference, into a registry-qualified name without a tag (so `latest`).
    let qualified = format!("localhost:5000/{name}/x");
    rt.block_on(docker_tag_image(&host, &format!("{name}:1"), &qualified))
        .unwrap();
    assert_eq!(
        rt.block_on(docker_image_id(&host, &format!("{qualified}:latest")))
            .unwrap(),
        Some(id.clone())
    );

    let err = rt
        .block_on(docker_tag_image(
            &host,
            &format!("{name}:absent"),
            &format!("{name}:3"),
        ))
        .unwrap_err();
    assert!(err.contains("is not in"), "{err}");
    let err = rt
        .block_on(docker_tag_image(&host, &id, &format!("{name}@{id}")))
        .unwrap_err();
    assert!(err.contains("not a digest"), "{err}");

    for tag in [format!("{name}:1"), format!("{name}:2"), qualified] {
        run(docker().args(["image", "rm", &tag]));
    }
}
