//! `target:` links to a target without tags. A dependent is always given the exact image its
//! base produced; with tags that is `docker-image://TAG@DIGEST`. Without tags there is no name
//! to pin, so the base's build also exports its image as an OCI layout in the state directory
//! ([`crate::fingerprint::link_layout_dir`]), and the dependent gets
//! `oci-layout://DIR@DIGEST`, served from this machine by the session's content store. (buildx
//! instead builds such a base inside the dependent's build, over the gateway API.)
//!
//! Skipping stays sound as for tagged links: the dependent's key holds the base's digest
//! ([`super::plan::with_image_deps`]); a base result is reused only while its layout still
//! holds that image ([`link_layout_missing`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::build::BuildSpec;
use crate::digest::Digest;
use crate::options::{ContextSource, OciLayoutRef, OutputDest, OutputKind, OutputSpec};
use crate::project::Project;
use crate::session::oci_layout::OciLayout;

/// Where target `name`'s image goes for the targets that use it through `target:`: its OCI
/// layout, when it has no tags and some target uses it that way; else `None`.
pub(super) fn link_layout(project: &Project, name: &str) -> Option<PathBuf> {
    let t = project.targets.get(name)?;
    let used = project.targets.values().any(|o| {
        o.contexts
            .values()
            .any(|c| matches!(c, ContextSource::Target(d) if d == name))
    });
    (t.tags.is_empty() && used).then(|| crate::fingerprint::link_layout_dir(&project.root, name))
}

/// Why a known result of `name` cannot be reused as it is: its [`link_layout`] no longer holds
/// that image (deleted, or never written), which its dependents would be handed.
pub(super) fn link_layout_missing(
    project: &Project,
    name: &str,
    digest: Option<&str>,
) -> Option<String> {
    let dir = link_layout(project, name)?;
    let holds = digest
        .and_then(|d| Digest::parse(d).ok())
        .map(|d| OciLayout::new(&dir).blob_metadata(&d));
    match holds {
        Some(Ok(Some(_))) => None,
        Some(Ok(None)) | None => Some(format!(
            "its image for the targets that use it through target: (it has no tags) is not in {}",
            dir.display()
        )),
        Some(Err(e)) => Some(format!(
            "cannot read its image for the targets that use it through target: {e}"
        )),
    }
}

/// The named context for `contexts = { … = "target:DEP" }` when `DEP` has no tags: its
/// layout, pinned to the digest its build (or the reused result) has. `None` when `DEP` has
/// tags (then it is pinned by tag and digest).
pub(super) fn link_context(
    project: &Project,
    dep: &str,
    digests: &BTreeMap<String, String>,
) -> Option<Result<ContextSource, String>> {
    let dir = link_layout(project, dep)?;
    let Some(digest) = digests.get(dep) else {
        return Some(Err(format!("no image digest recorded for `{dep}`")));
    };
    Some(
        Digest::parse(digest)
            .map(|d| {
                ContextSource::OciLayout(OciLayoutRef {
                    path: dir,
                    tag: None,
                    digest: Some(d),
                })
            })
            .map_err(|e| format!("the image digest recorded for `{dep}`: {e}")),
    )
}

/// Adds the layout export to the build of `name` when its dependents need it. It goes last:
/// with several exporters, BuildKit answers with the keys of the last one
/// (`solver/llbsolver/export.go` merges the responses in order), so the recorded digest is
/// the layout's.
pub(super) fn add_link_output(
    project: &Project,
    name: &str,
    spec: &mut BuildSpec,
) -> Result<(), String> {
    let Some(dir) = link_layout(project, name) else {
        return Ok(());
    };
    if let Some(own) = spec.outputs.iter().find_map(|o| o.layout_dir()) {
        return Err(format!(
            "other targets use it through target:, and without tags bk-build hands them its image as an OCI layout, which BuildKit cannot write next to its own layout output {}; give it tags (and push or load)",
            own.display()
        ));
    }
    if spec.load {
        // `load` is an output among others here: `type=docker` without a file.
        spec.outputs.push(OutputSpec {
            kind: OutputKind::Docker,
            dest: None,
            attrs: BTreeMap::new(),
        });
        spec.load = false;
    }
    spec.outputs.push(OutputSpec {
        kind: OutputKind::Oci,
        dest: Some(OutputDest::Path(dir)),
        attrs: [("tar".to_string(), "false".to_string())].into(),
    });
    Ok(())
}

/// After a build of `name` with a link layout: the reported image must be in it (else the
/// dependents could not be given what was built), and older images' blobs are removed.
/// Returns a warning when the clean-up failed.
pub(super) fn finish_link_layout(
    project: &Project,
    name: &str,
    digest: Option<&str>,
) -> Result<Option<String>, String> {
    let Some(dir) = link_layout(project, name) else {
        return Ok(None);
    };
    if let Some(why) = link_layout_missing(project, name, digest) {
        return Err(format!(
            "the daemon reported image {}, and {why}",
            digest.unwrap_or("(none)")
        ));
    }
    // The index names only the latest image (tag `latest`, replaced by each build).
    Ok(match OciLayout::new(&dir).remove_unreferenced() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "warning: could not remove old images from {}: {e}",
            dir.display()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::Target;

    fn project() -> Project {
        let mut p = Project {
            root: "/p".into(),
            ..Default::default()
        };
        for (name, tags) in [("base", vec![]), ("tagged", vec!["r/t:1".to_string()])] {
            p.targets.insert(
                name.into(),
                Target {
                    name: name.into(),
                    tags,
                    ..Default::default()
                },
            );
        }
        let mut app = Target {
            name: "app".into(),
            ..Default::default()
        };
        for dep in ["base", "tagged"] {
            app.contexts
                .insert(dep.into(), ContextSource::Target(dep.into()));
        }
        p.targets.insert("app".into(), app);
        p
    }

    #[test]
    fn only_untagged_targets_used_through_target_have_a_layout() {
        let p = project();
        assert_eq!(
            link_layout(&p, "base"),
            Some(PathBuf::from("/p/.bk-build/links/base"))
        );
        assert_eq!(link_layout(&p, "tagged"), None);
        assert_eq!(
            link_layout(&p, "app"),
            None,
            "untagged, but nothing uses it"
        );
        let digests: BTreeMap<String, String> =
            [("base".to_string(), format!("sha256:{}", "a".repeat(64)))].into();
        match link_context(&p, "base", &digests) {
            Some(Ok(ContextSource::OciLayout(r))) => {
                assert_eq!(r.path, PathBuf::from("/p/.bk-build/links/base"));
                assert_eq!(r.digest.unwrap().to_string(), digests["base"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(link_context(&p, "tagged", &digests).is_none());
        assert!(matches!(
            link_context(&p, "base", &BTreeMap::new()),
            Some(Err(_))
        ));
        assert!(link_layout_missing(&p, "base", None).is_some());
        assert!(link_layout_missing(&p, "tagged", None).is_none());
    }

    #[test]
    fn the_layout_export_goes_last_and_load_becomes_an_output() {
        let p = project();
        let local = crate::options::parse_output("type=local,dest=/out").unwrap();
        let mut spec = BuildSpec {
            outputs: vec![local.clone()],
            load: true,
            ..Default::default()
        };
        add_link_output(&p, "base", &mut spec).unwrap();
        assert!(!spec.load);
        let kinds: Vec<OutputKind> = spec.outputs.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            [OutputKind::Local, OutputKind::Docker, OutputKind::Oci]
        );
        assert_eq!(
            spec.outputs[2].layout_dir(),
            Some(std::path::Path::new("/p/.bk-build/links/base"))
        );
        // Nothing added where no dependent needs it.
        let mut plain = BuildSpec::default();
        add_link_output(&p, "app", &mut plain).unwrap();
        assert!(plain.outputs.is_empty());
        // BuildKit writes one layout per build: the target's own cannot be kept beside it.
        let mut own = BuildSpec {
            outputs: vec![crate::options::parse_output("type=oci,tar=false,dest=/l").unwrap()],
            ..Default::default()
        };
        let err = add_link_output(&p, "base", &mut own).unwrap_err();
        assert!(err.contains("give it tags"), "{err}");
    }
}
