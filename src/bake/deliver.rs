//! Where a known result must be — pushed tags, images loaded into the Docker Engine, outputs
//! on disk — and whether it still is, for a given image digest.

use std::collections::BTreeMap;

use crate::options::{OutputDest, OutputKind};
use crate::project::Target;
use crate::transport::DockerHost;

/// The registry repository a pushed target lives in (its first tag's), where its ledger
/// entries go.
pub(super) fn home_repository(t: &Target) -> Option<String> {
    if !t.push {
        return None;
    }
    let r = crate::registry::Reference::parse(t.tags.first()?).ok()?;
    Some(format!("{}/{}", r.registry, r.repository))
}

/// Whether plain `tags` are loaded into the Docker Engine (`load`, or tags with nowhere else
/// to go, as with `docker buildx build -t`).
pub(super) fn loads(t: &Target) -> bool {
    t.load || (!t.push && t.outputs.is_empty() && !t.tags.is_empty())
}

/// Where a target's result must be, checked against a known image digest.
#[derive(Debug, Clone, Default)]
pub(super) struct Delivery {
    /// Pushed tags that do not point at the digest (yet).
    pub(super) registry_missing: Vec<String>,
    /// Pushed tags that already point at it.
    pub(super) registry_present: Vec<String>,
    /// Engine tags that are not that image.
    pub(super) engine_missing: Vec<String>,
    /// What makes anything short of a build impossible.
    pub(super) blockers: Vec<String>,
}

/// What each pushed tag of `t` names in the registry now (errors as text).
pub(super) type TagDigests = Vec<(String, Result<Option<String>, String>)>;

pub(super) async fn pushed_tag_digests(t: &Target) -> TagDigests {
    if !t.push {
        return Vec::new();
    }
    let checks = t.tags.iter().map(|tag| async move {
        let got = crate::registry::manifest_digest(tag)
            .await
            .map_err(|e| e.to_string());
        (tag.clone(), got)
    });
    futures_util::future::join_all(checks).await
}

/// Checks `t`'s tags and outputs against the image `digest`. `pushed` are the registry
/// answers for its pushed tags when already fetched (see [`pushed_tag_digests`]).
pub(super) async fn check_delivery(
    t: &Target,
    project_root: &std::path::Path,
    digest: Option<&str>,
    written: &BTreeMap<String, String>,
    engine: Option<&DockerHost>,
    pushed: Option<TagDigests>,
) -> Delivery {
    let mut d = Delivery::default();
    if t.push {
        match digest {
            None => d
                .blockers
                .push("the last build recorded no image digest".into()),
            Some(want) => {
                let pushed = match pushed {
                    Some(p) => p,
                    None => pushed_tag_digests(t).await,
                };
                for (tag, got) in pushed {
                    match got {
                        Ok(Some(g)) if g == want => d.registry_present.push(tag),
                        Ok(_) => d.registry_missing.push(tag),
                        Err(e) => d.blockers.push(format!("cannot check {tag}: {e}")),
                    }
                }
            }
        }
    }
    if loads(t) {
        match (engine, digest) {
            (Some(host), Some(want)) => {
                for tag in &t.tags {
                    match crate::transport::docker_image_id(host, tag).await {
                        Ok(Some(id)) if id == want => {}
                        Ok(_) => d.engine_missing.push(tag.clone()),
                        Err(e) => d.blockers.push(format!("cannot check image {tag}: {e}")),
                    }
                }
            }
            (None, _) => d
                .blockers
                .push("the Docker Engine its images load into is not reachable".into()),
            (_, None) => d
                .blockers
                .push("the last build recorded no image digest".into()),
        }
    }
    for o in &t.outputs {
        let spec = o.value();
        if let Some(OutputDest::Path(p)) = &spec.dest {
            let Some(w) = written.get(o.as_str()) else {
                d.blockers.push(format!(
                    "output {} was not written by that build",
                    p.display()
                ));
                continue;
            };
            match crate::fs::output_witness_again(p, &state_excludes(p, project_root), w) {
                Ok(None) => d
                    .blockers
                    .push(format!("output {} is missing", p.display())),
                Ok(Some(now)) if *w != now => d.blockers.push(format!(
                    "output {} changed since it was written",
                    p.display()
                )),
                Ok(Some(_)) => {}
                Err(e) => d
                    .blockers
                    .push(format!("cannot check output {}: {e}", p.display())),
            }
            continue;
        }
        let names = spec.names();
        match spec.kind {
            OutputKind::CacheOnly => {}
            OutputKind::Image if spec.attrs.get("push").is_some_and(|v| v == "true") => {
                for name in &names {
                    match (digest, crate::registry::manifest_digest(name).await) {
                        (Some(want), Ok(Some(got))) if got == want => {}
                        _ => d
                            .blockers
                            .push(format!("{name} is not in the registry as that image")),
                    }
                }
            }
            OutputKind::Image | OutputKind::Docker if !names.is_empty() => {
                for name in names {
                    let ok = match (engine, digest) {
                        (Some(host), Some(want)) => {
                            matches!(crate::transport::docker_image_id(host, &name).await, Ok(Some(id)) if id == want)
                        }
                        _ => false,
                    };
                    if !ok {
                        d.blockers
                            .push(format!("image {name} is not in the Docker Engine"));
                    }
                }
            }
            _ => d.blockers.push(format!("output {o} cannot be checked")),
        }
    }
    d
}

/// The state directory's exclude pattern when an output is written into the project
/// (`dest=.`): bk-build rewrites it on every run, so it is never part of an output's witness.
pub(super) fn state_excludes(
    dest: &std::path::Path,
    project_root: &std::path::Path,
) -> Vec<String> {
    crate::fingerprint::state_dir_exclude(dest, project_root)
        .into_iter()
        .collect()
}
