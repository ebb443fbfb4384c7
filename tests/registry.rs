//! `bk_build::registry` against the real test registry (127.0.0.1:5000), with
//! `docker buildx imagetools` as the oracle.

mod support;

use bk_build::registry::{manifest_digest, tag_existing, RegistryError};
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
