//! Attestations: which `attest:TYPE` frontend attributes a build sends (buildx's rules, its
//! default provenance included), whether the daemon can attach them to an image, and the
//! build's provenance for a metadata file (`buildx.build.provenance`), read back from the
//! daemon's build history.
//!
//! BuildKit makes the attestations itself (its solver runs the provenance and SBOM steps for
//! any frontend); the client only asks. Sources of the rules: buildx `build/opt.go` (default
//! provenance, when attestations are supported), `build/provenance.go` (the metadata file's
//! provenance), BuildKit `frontend/attestations` (the attribute values) and its SLSA predicate
//! types (`solver/llbsolver/provenance/types`).
//!
//! This module knows BuildKit's attestation attributes, its history API and the SLSA
//! provenance shapes. It does not know where the options came from (CLI, project files).

use std::collections::BTreeMap;

use futures_util::StreamExt;

use crate::digest::{Digest, Hasher};
use crate::options::{AttestSpec, MetadataProvenance};
use crate::proto::containerd::services::content::v1::{
    content_client::ContentClient, ReadContentRequest,
};
use crate::proto::control::{
    control_client::ControlClient, BuildHistoryRequest, BuildResultInfo, Descriptor,
};
use crate::transport::{Daemon, DaemonKind};

/// The provenance buildx asks for when none is given (buildx `build/opt.go`): the minimal
/// predicate, attached only to exporters that embed attestations in an image (`image`,
/// `moby`), never written next to a `local`/`tar` export or into an `oci`/`docker` tarball.
pub const DEFAULT_PROVENANCE: &str = "mode=min,inline-only=true";

/// The `attest:TYPE` frontend attributes for `entries`, by type (`provenance`, `sbom`): the
/// first entry of a type decides (buildx `Attests.ToMap`), a `disabled` one asks for none.
/// Without any provenance entry, `default_provenance` adds [`DEFAULT_PROVENANCE`].
pub fn frontend_attrs(
    entries: &[AttestSpec],
    default_provenance: bool,
) -> BTreeMap<String, String> {
    let mut decided: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for a in entries {
        decided
            .entry(a.kind.as_str())
            .or_insert_with(|| (!a.disabled).then(|| a.frontend_value()));
    }
    if default_provenance && !decided.contains_key("provenance") {
        decided.insert("provenance", Some(DEFAULT_PROVENANCE.to_string()));
    }
    decided
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect()
}

/// Whether the attestations of `attrs` (from [`frontend_attrs`]) record every build arg,
/// declared by the Dockerfile or not: a provenance attestation in any mode but `min` (BuildKit
/// `solver/llbsolver/provenance`: the minimal predicate leaves the frontend's args out, the
/// maximal one keeps them all). A mode this does not know counts as recording them.
pub fn records_build_args(attrs: &BTreeMap<String, String>) -> bool {
    attrs.get("provenance").is_some_and(|v| {
        !v.split(',').any(|kv| {
            kv.split_once('=').is_some_and(|(k, m)| {
                k.trim().eq_ignore_ascii_case("mode") && m.trim().eq_ignore_ascii_case("min")
            })
        })
    })
}

/// Whether images built on `daemon` can carry attestations, by buildx's rule (`build/opt.go`:
/// the daemon's image exporter supports them, BuildKit v0.11 and later, and the driver makes
/// multi-platform images): a Docker Engine only with the containerd image store (its BuildKit
/// worker has the `org.mobyproject.buildkit.worker.snapshotter` label; the classic store keeps
/// one manifest per image, and its exporter refuses attestations), a buildkitd always.
async fn supported(daemon: &Daemon) -> Result<bool, String> {
    match daemon.kind {
        DaemonKind::Buildkitd => Ok(true),
        DaemonKind::DockerEngine { .. } => {
            let workers = crate::client::workers(daemon)
                .await
                .map_err(|e| e.to_string())?;
            Ok(workers.iter().any(|w| w.uses_containerd_store()))
        }
    }
}

/// `attrs` (from [`frontend_attrs`]) as `daemon` can take them: unchanged where attestations
/// are supported; elsewhere the default provenance is dropped, as buildx drops it, and an
/// attestation that was asked for is an error.
pub(super) async fn for_daemon(
    daemon: &Daemon,
    attrs: BTreeMap<String, String>,
    entries: &[AttestSpec],
) -> Result<BTreeMap<String, String>, String> {
    if attrs.is_empty() || supported(daemon).await? {
        return Ok(attrs);
    }
    let asked: Vec<&str> = entries
        .iter()
        .filter(|a| !a.disabled)
        .map(|a| a.kind.as_str())
        .collect();
    if asked.is_empty() {
        return Ok(BTreeMap::new());
    }
    Err(format!(
        "attestations ({}) are not supported by this Docker Engine: it keeps images in its classic image store, which holds one manifest per image\n  fix: turn on the containerd image store (\"features\": {{\"containerd-snapshotter\": true}} in daemon.json), use a buildkitd, or build without --attest/--provenance/--sbom",
        asked.join(", ")
    ))
}

/// The in-toto media type of an attestation blob.
const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation that names an in-toto blob's predicate type.
const PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
const SLSA_PREFIX: &str = "https://slsa.dev/provenance/";
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
/// The metadata file's key (buildx), `/PLATFORM` appended for each result of a multi-platform
/// build.
const METADATA_KEY: &str = "buildx.build.provenance";
/// A provenance predicate larger than this is not read (a max-mode predicate of a large build
/// is a few MB).
const MAX_PREDICATE: i64 = 256 << 20;

/// The provenance of build `build_ref` for a metadata file, as buildx writes it
/// (`build/provenance.go`): from the daemon's build record (BuildKit records a provenance for
/// every build, whether or not the image carries one), as an SLSA v0.2 predicate (a v1 one is
/// converted), without `buildConfig` and `metadata` for [`MetadataProvenance::Min`]. Keys are
/// `buildx.build.provenance`, or `buildx.build.provenance/PLATFORM` per platform. Empty when
/// the daemon has no build history API (BuildKit before v0.11), as buildx leaves it out then.
pub(super) async fn record_provenance(
    daemon: &Daemon,
    build_ref: &str,
    detail: MetadataProvenance,
) -> Result<Vec<(String, serde_json::Value)>, String> {
    if detail == MetadataProvenance::Disabled {
        return Ok(Vec::new());
    }
    let mut control = ControlClient::new(daemon.channel.clone())
        .max_decoding_message_size(crate::session::MAX_DECODE);
    let request = BuildHistoryRequest {
        active_only: false,
        r#ref: build_ref.to_string(),
        early_exit: true,
    };
    let mut stream = match control.listen_build_history(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(Vec::new()),
        Err(s) => return Err(crate::transport::explain_status(daemon, &s)),
    };
    let mut wanted: Vec<(String, Descriptor)> = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.map_err(|s| crate::transport::explain_status(daemon, &s))?;
        let Some(record) = event.record else { continue };
        if !record.results.is_empty() {
            for (platform, info) in &record.results {
                if let Some(d) = provenance_blob(info) {
                    wanted.push((format!("{METADATA_KEY}/{platform}"), d.clone()));
                }
            }
        } else if let Some(d) = record.result.as_ref().and_then(provenance_blob) {
            wanted.push((METADATA_KEY.to_string(), d.clone()));
        }
    }
    let mut out = Vec::new();
    for (key, d) in wanted {
        let bytes = read_blob(daemon, &d).await?;
        let predicate: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "the build record's provenance {} is not JSON: {e}",
                d.digest
            )
        })?;
        let kind = d.annotations.get(PREDICATE_TYPE).map(String::as_str);
        out.push((key, metadata_predicate(predicate, kind, detail)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The build record's provenance attestation among a result's attestations (buildx
/// `lookupProvenance`).
fn provenance_blob(info: &BuildResultInfo) -> Option<&Descriptor> {
    info.attestations.iter().find(|a| {
        a.media_type == IN_TOTO
            && a.annotations
                .get(PREDICATE_TYPE)
                .is_some_and(|t| t.starts_with(SLSA_PREFIX))
    })
}

/// Reads blob `d` from the daemon's content store (containerd's Content service, which
/// BuildKit serves on its control connection for build records), checked against its digest.
async fn read_blob(daemon: &Daemon, d: &Descriptor) -> Result<Vec<u8>, String> {
    let digest = Digest::parse(&d.digest)
        .map_err(|e| format!("the build record names {:?}: {e}", d.digest))?;
    if d.size > MAX_PREDICATE {
        return Err(format!(
            "the build record's provenance {digest} is {} bytes, more than the {} bytes bk-build reads",
            d.size, MAX_PREDICATE
        ));
    }
    let mut content = ContentClient::new(daemon.channel.clone())
        .max_decoding_message_size(crate::session::MAX_DECODE);
    let request = ReadContentRequest {
        digest: digest.to_string(),
        offset: 0,
        size: 0,
    };
    let fail = |s: tonic::Status| {
        format!(
            "cannot read the build record's provenance {digest} from the daemon: {}",
            crate::transport::explain_status(daemon, &s)
        )
    };
    let mut stream = content.read(request).await.map_err(fail)?.into_inner();
    let mut bytes = Vec::with_capacity(usize::try_from(d.size).unwrap_or(0));
    let mut hasher = Hasher::new(digest.algorithm());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(fail)?;
        if usize::try_from(chunk.offset).ok() != Some(bytes.len()) {
            return Err(format!(
                "the daemon sent provenance {digest} out of order (offset {} after {} bytes)",
                chunk.offset,
                bytes.len()
            ));
        }
        if (bytes.len() + chunk.data.len()) as i64 > MAX_PREDICATE {
            return Err(format!(
                "the daemon sent more than {MAX_PREDICATE} bytes for provenance {digest}"
            ));
        }
        hasher.update(&chunk.data);
        bytes.extend_from_slice(&chunk.data);
    }
    let got = hasher.finish();
    if got != digest {
        return Err(format!(
            "the daemon sent provenance {digest} with the wrong content ({} bytes hashing to {got})",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// A provenance predicate as a metadata file carries it: SLSA v0.2 (a v1 predicate converted
/// as BuildKit's `ConvertToSLSA02` does), trimmed to the minimal form for `Min`.
fn metadata_predicate(
    predicate: serde_json::Value,
    predicate_type: Option<&str>,
    detail: MetadataProvenance,
) -> serde_json::Value {
    let mut p = if predicate_type == Some(SLSA_V1) {
        slsa1_to_slsa02(&predicate)
    } else {
        predicate
    };
    if detail == MetadataProvenance::Min {
        if let Some(m) = p.as_object_mut() {
            m.remove("buildConfig");
            m.remove("metadata");
        }
    }
    p
}

/// BuildKit's build type of SLSA v0.2 predicates.
const BUILD_TYPE_SLSA02: &str = "https://mobyproject.org/buildkit@v1";

/// An SLSA v1 provenance predicate in BuildKit's v0.2 shape (field for field as BuildKit
/// `ProvenancePredicateSLSA1.ConvertToSLSA02`, with the JSON names and empty-field rules of
/// the v0.2 types).
fn slsa1_to_slsa02(p: &serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let def = &p["buildDefinition"];
    let run = &p["runDetails"];
    let internal = &def["internalParameters"];
    let external = &def["externalParameters"];
    let mut out = Map::new();
    out.insert(
        "builder".into(),
        json!({"id": run["builder"]["id"].as_str().unwrap_or_default()}),
    );
    out.insert("buildType".into(), json!(BUILD_TYPE_SLSA02));
    let materials: Vec<Value> = def["resolvedDependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mut o = Map::new();
            copy_present(&mut o, "uri", &m["uri"]);
            copy_present(&mut o, "digest", &m["digest"]);
            Value::Object(o)
        })
        .collect();
    if !materials.is_empty() {
        out.insert("materials".into(), Value::Array(materials));
    }
    let source = &external["configSource"];
    let mut config_source = Map::new();
    copy_present(&mut config_source, "uri", &source["uri"]);
    copy_present(&mut config_source, "digest", &source["digest"]);
    copy_present(&mut config_source, "entryPoint", &source["path"]);
    let mut environment = Map::new();
    environment.insert(
        "platform".into(),
        json!(internal["builderPlatform"].as_str().unwrap_or_default()),
    );
    copy_present(
        &mut environment,
        "dockerfileVersion",
        &internal["dockerfileVersion"],
    );
    // The custom environment is stored flattened among the internal parameters.
    for (k, v) in internal.as_object().into_iter().flatten() {
        if !matches!(
            k.as_str(),
            "buildConfig" | "builderPlatform" | "dockerfileVersion"
        ) {
            environment.insert(k.clone(), v.clone());
        }
    }
    let parameters = match &external["request"] {
        Value::Object(o) => Value::Object(o.clone()),
        _ => json!({}),
    };
    out.insert(
        "invocation".into(),
        json!({
            "configSource": config_source,
            "parameters": parameters,
            "environment": environment,
        }),
    );
    copy_present(&mut out, "buildConfig", &internal["buildConfig"]);
    // Indexing a `Value` (not its map) gives `Null` for a missing key, never a panic.
    let meta = &run["metadata"];
    if meta.is_object() {
        let mut m = Map::new();
        copy_present(&mut m, "buildInvocationID", &meta["invocationID"]);
        copy_present(&mut m, "buildStartedOn", &meta["startedOn"]);
        copy_present(&mut m, "buildFinishedOn", &meta["finishedOn"]);
        let completeness = &meta["buildkit_completeness"];
        m.insert(
            "completeness".into(),
            json!({
                "parameters": completeness["request"].as_bool().unwrap_or(false),
                "environment": true,
                "materials": completeness["resolvedDependencies"].as_bool().unwrap_or(false),
            }),
        );
        m.insert(
            "reproducible".into(),
            json!(meta["buildkit_reproducible"].as_bool().unwrap_or(false)),
        );
        m.insert(
            format!("{BUILD_TYPE_SLSA02}#metadata"),
            match &meta["buildkit_metadata"] {
                Value::Object(o) => Value::Object(o.clone()),
                _ => json!({}),
            },
        );
        if meta["buildkit_hermetic"].as_bool() == Some(true) {
            m.insert(format!("{BUILD_TYPE_SLSA02}#hermetic"), json!(true));
        }
        out.insert("metadata".into(), Value::Object(m));
    }
    Value::Object(out)
}

/// Copies `v` under `key` unless it is absent or empty (Go's `omitempty`).
fn copy_present(
    into: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    v: &serde_json::Value,
) {
    use serde_json::Value;
    let empty = match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(_) => false,
    };
    if !empty {
        into.insert(key.to_string(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::parse_attest;

    fn attests(specs: &[&str]) -> Vec<AttestSpec> {
        specs.iter().map(|s| parse_attest(s).unwrap()).collect()
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_provenance_unless_one_is_given_or_defaults_are_off() {
        assert_eq!(
            frontend_attrs(&[], true),
            attrs(&[("provenance", DEFAULT_PROVENANCE)])
        );
        assert_eq!(frontend_attrs(&[], false), attrs(&[]));
        // Disabled: none, and no default either.
        let off = attests(&["type=provenance,disabled=true"]);
        assert_eq!(frontend_attrs(&off, true), attrs(&[]));
        // An SBOM alone keeps the default provenance.
        let sbom = attests(&["type=sbom,generator=img"]);
        assert_eq!(
            frontend_attrs(&sbom, true),
            attrs(&[
                ("provenance", DEFAULT_PROVENANCE),
                ("sbom", "generator=img")
            ])
        );
        let max = attests(&["type=provenance,mode=max"]);
        assert_eq!(
            frontend_attrs(&max, false),
            attrs(&[("provenance", "mode=max")])
        );
        // Only a minimal provenance leaves the args out.
        assert!(records_build_args(&frontend_attrs(&max, false)));
        assert!(!records_build_args(&frontend_attrs(&[], true)));
        assert!(!records_build_args(&frontend_attrs(&[], false)));
        assert!(!records_build_args(&frontend_attrs(&sbom, true)));
        let unknown = attests(&["type=provenance,builder-id=x"]);
        assert!(records_build_args(&frontend_attrs(&unknown, false)));
        // `type=provenance` alone (`--provenance=true`): BuildKit's default mode, which records
        // every build arg (seen with buildx on Docker 28.5), so all args count.
        let on = attests(&["type=provenance,disabled=false"]);
        assert_eq!(frontend_attrs(&on, true), attrs(&[("provenance", "")]));
        assert!(records_build_args(&frontend_attrs(&on, true)));
    }

    #[test]
    fn the_first_entry_of_a_type_decides() {
        let a = attests(&[
            "type=provenance,mode=max",
            "type=provenance,disabled=true",
            "type=sbom,disabled=true",
            "type=sbom",
        ]);
        assert_eq!(
            frontend_attrs(&a, true),
            attrs(&[("provenance", "mode=max")])
        );
    }

    #[test]
    fn metadata_provenance_from_the_environment() {
        use crate::options::parse_metadata_provenance as p;
        assert_eq!(p(None), MetadataProvenance::Min);
        assert_eq!(p(Some("max")), MetadataProvenance::Max);
        assert_eq!(p(Some("min")), MetadataProvenance::Min);
        for off in ["disabled", "false", "0"] {
            assert_eq!(p(Some(off)), MetadataProvenance::Disabled, "{off}");
        }
        assert_eq!(p(Some("whatever")), MetadataProvenance::Min);
        use crate::options::parse_no_default_attestations as n;
        assert_eq!(n(None), Ok(false));
        assert_eq!(n(Some("1")), Ok(true));
        assert_eq!(n(Some("false")), Ok(false));
        let e = n(Some("yes")).unwrap_err();
        assert!(e.contains("BUILDX_NO_DEFAULT_ATTESTATIONS=\"yes\""), "{e}");
        assert!(n(Some("")).is_err());
    }

    /// A v1 predicate as BuildKit writes one (`mode=max`), and the v0.2 form it becomes.
    #[test]
    fn slsa_v1_becomes_the_v02_shape() {
        let v1 = serde_json::json!({
            "buildDefinition": {
                "buildType": "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md",
                "externalParameters": {
                    "configSource": {"path": "Dockerfile"},
                    "request": {"frontend": "dockerfile.v0", "locals": [{"name": "context"}]}
                },
                "internalParameters": {
                    "buildConfig": {"llbDefinition": [{"id": "step0"}]},
                    "builderPlatform": "linux/amd64",
                    "dockerfileVersion": "1.2.3",
                    "custom": "x"
                },
                "resolvedDependencies": [
                    {"uri": "pkg:docker/busybox@latest", "digest": {"sha256": "ab"}}
                ]
            },
            "runDetails": {
                "builder": {"id": ""},
                "metadata": {
                    "invocationID": "inv",
                    "startedOn": "2024-01-01T00:00:00Z",
                    "finishedOn": "2024-01-01T00:00:01Z",
                    "buildkit_completeness": {"request": true, "resolvedDependencies": false},
                    "buildkit_metadata": {"vcs": {"source": "git"}}
                }
            }
        });
        let want = serde_json::json!({
            "builder": {"id": ""},
            "buildType": "https://mobyproject.org/buildkit@v1",
            "materials": [{"uri": "pkg:docker/busybox@latest", "digest": {"sha256": "ab"}}],
            "invocation": {
                "configSource": {"entryPoint": "Dockerfile"},
                "parameters": {"frontend": "dockerfile.v0", "locals": [{"name": "context"}]},
                "environment": {"platform": "linux/amd64", "dockerfileVersion": "1.2.3", "custom": "x"}
            },
            "buildConfig": {"llbDefinition": [{"id": "step0"}]},
            "metadata": {
                "buildInvocationID": "inv",
                "buildStartedOn": "2024-01-01T00:00:00Z",
                "buildFinishedOn": "2024-01-01T00:00:01Z",
                "completeness": {"parameters": true, "environment": true, "materials": false},
                "reproducible": false,
                "https://mobyproject.org/buildkit@v1#metadata": {"vcs": {"source": "git"}}
            }
        });
        assert_eq!(
            metadata_predicate(v1.clone(), Some(SLSA_V1), MetadataProvenance::Max),
            want
        );
        let mut min = want.clone();
        min.as_object_mut().unwrap().remove("buildConfig");
        min.as_object_mut().unwrap().remove("metadata");
        assert_eq!(
            metadata_predicate(v1, Some(SLSA_V1), MetadataProvenance::Min),
            min
        );
        // Whatever the daemon sends, the conversion does not panic.
        for odd in [
            serde_json::json!({}),
            serde_json::json!("text"),
            serde_json::json!({"runDetails": {"metadata": {}}, "buildDefinition": []}),
        ] {
            let p = metadata_predicate(odd, Some(SLSA_V1), MetadataProvenance::Max);
            assert_eq!(p["buildType"], BUILD_TYPE_SLSA02);
        }
        // A v0.2 predicate keeps its shape.
        assert_eq!(
            metadata_predicate(
                want.clone(),
                Some("https://slsa.dev/provenance/v0.2"),
                MetadataProvenance::Min
            ),
            min
        );
    }
}
