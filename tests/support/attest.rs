//! Attestations as the registry holds them: the shape of a pushed image (its manifest kind,
//! the platforms of its images, and per attestation manifest the in-toto predicate types of
//! its layers), the in-toto statements themselves, and a small SBOM generator image for
//! `--sbom generator=…` (no public registry is reachable, so the default generator is not).

use std::sync::OnceLock;

use super::*;

/// The annotation BuildKit puts on an attestation manifest's entry in an index.
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// The annotation on an attestation layer that names its in-toto predicate type.
pub const PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
pub const SPDX: &str = "https://spdx.dev/Document";

/// What a pushed image carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The media type of the manifest the reference names.
    pub media_type: String,
    /// The platforms of the image manifests, in index order (`os/arch`); one entry `-` for a
    /// single image manifest.
    pub images: Vec<String>,
    /// Per attestation manifest: the platform of the image it describes, and its layers'
    /// predicate types, sorted.
    pub attestations: Vec<(String, Vec<String>)>,
}

impl Attested {
    /// Every predicate type of every attestation manifest, sorted.
    pub fn predicate_types(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .attestations
            .iter()
            .flat_map(|(_, t)| t.clone())
            .collect();
        all.sort();
        all
    }
}

fn platform(d: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        d["platform"]["os"].as_str().unwrap_or("?"),
        d["platform"]["architecture"].as_str().unwrap_or("?")
    )
}

/// Reads `repo:reference` from the test registry. Checks on the way that every attestation
/// manifest names an image of the index (`vnd.docker.reference.digest`), has the
/// `unknown/unknown` platform, and that its config and layers (in-toto blobs) are in `repo`.
pub fn attested(repo: &str, reference: &str) -> Attested {
    let top = registry_json(&format!("/v2/{repo}/manifests/{reference}"));
    let media_type = top["mediaType"].as_str().unwrap_or_default().to_string();
    let Some(list) = top["manifests"].as_array() else {
        return Attested {
            media_type,
            images: vec!["-".into()],
            attestations: Vec::new(),
        };
    };
    let mut images = Vec::new();
    let mut attestations = Vec::new();
    for d in list {
        if d["annotations"][REFERENCE_TYPE].is_null() {
            images.push(platform(d));
            continue;
        }
        assert_eq!(
            d["annotations"][REFERENCE_TYPE], "attestation-manifest",
            "{top}"
        );
        assert_eq!(platform(d), "unknown/unknown", "{top}");
        let of = d["annotations"]["vnd.docker.reference.digest"]
            .as_str()
            .expect("the attestation names its image");
        let image = list
            .iter()
            .find(|i| i["digest"] == of)
            .unwrap_or_else(|| panic!("the attestation's image {of} is in the index: {top}"));
        let m = registry_json(&format!(
            "/v2/{repo}/manifests/{}",
            d["digest"].as_str().unwrap()
        ));
        let config = m["config"]["digest"].as_str().expect("a config");
        let (status, _, _) = registry_request("HEAD", &format!("/v2/{repo}/blobs/{config}"));
        assert_eq!(status, 200, "attestation config {config} in {repo}");
        let mut types = Vec::new();
        for layer in m["layers"].as_array().expect("attestation layers") {
            assert_eq!(layer["mediaType"], "application/vnd.in-toto+json", "{m}");
            let (status, _, _) = registry_request(
                "HEAD",
                &format!("/v2/{repo}/blobs/{}", layer["digest"].as_str().unwrap()),
            );
            assert_eq!(status, 200, "attestation blob {layer} in {repo}");
            types.push(
                layer["annotations"][PREDICATE_TYPE]
                    .as_str()
                    .expect("a predicate type")
                    .to_string(),
            );
        }
        types.sort();
        attestations.push((platform(image), types));
    }
    Attested {
        media_type,
        images,
        attestations,
    }
}

/// The in-toto statements of `repo:reference`'s attestations whose predicate type starts with
/// `prefix`.
pub fn statements(repo: &str, reference: &str, prefix: &str) -> Vec<serde_json::Value> {
    let top = registry_json(&format!("/v2/{repo}/manifests/{reference}"));
    let mut out = Vec::new();
    for d in top["manifests"].as_array().into_iter().flatten() {
        if d["annotations"][REFERENCE_TYPE].is_null() {
            continue;
        }
        let m = registry_json(&format!(
            "/v2/{repo}/manifests/{}",
            d["digest"].as_str().unwrap()
        ));
        for layer in m["layers"].as_array().into_iter().flatten() {
            let t = layer["annotations"][PREDICATE_TYPE].as_str().unwrap_or("");
            if t.starts_with(prefix) {
                out.push(registry_json(&format!(
                    "/v2/{repo}/blobs/{}",
                    layer["digest"].as_str().unwrap()
                )));
            }
        }
    }
    out
}

/// The scanner: writes one in-toto statement with an SPDX predicate that lists the top-level
/// entries of the scanned file system (BuildKit's SBOM protocol: read
/// `$BUILDKIT_SCAN_SOURCE`, write `$BUILDKIT_SCAN_DESTINATION/<name>.spdx.json`).
const SCANNER: &str = r#"#!/bin/sh
set -eu
src="$BUILDKIT_SCAN_SOURCE"
out="$BUILDKIT_SCAN_DESTINATION/$(basename "$src").spdx.json"
names=""
for f in $(ls -A "$src"); do names="$names\"$f\","; done
names="${names%,}"
printf '{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"bk-build test scan","dataLicense":"CC0-1.0","files":[%s]}}\n' "$names" > "$out"
"#;

/// A small SBOM generator image in the test registry, built once per test binary from the
/// base image with buildx; its reference.
pub fn sbom_generator() -> String {
    static GENERATOR: OnceLock<String> = OnceLock::new();
    GENERATOR
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            write(
                &dir.path().join("Dockerfile"),
                format!(
                    "FROM {}\nCOPY scan.sh /scan.sh\nENTRYPOINT [\"/bin/sh\", \"/scan.sh\"]\n",
                    base_image()
                ),
            );
            write(&dir.path().join("scan.sh"), SCANNER);
            let reference = format!("localhost:5000/{}:1", unique("sbom-generator"));
            run_ok(
                docker()
                    .args([
                        "buildx",
                        "build",
                        "--quiet",
                        "--provenance=false",
                        "--push",
                        "-t",
                        &reference,
                    ])
                    .arg(dir.path()),
            );
            reference
        })
        .clone()
}

/// Removes, when dropped, the images of repository `localhost:5000/NAME` that the builds of a
/// test left in the engine (a pushed image stays there too on the containerd image store).
pub struct EngineImages(pub String);

impl Drop for EngineImages {
    fn drop(&mut self) {
        let out = run(docker().args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]));
        let repo = format!("localhost:5000/{}:", self.0);
        let mine: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&repo))
            .map(str::to_string)
            .collect();
        if !mine.is_empty() {
            run(docker().args(["image", "rm"]).args(&mine));
        }
    }
}
