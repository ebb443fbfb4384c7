use std::path::PathBuf;

use super::*;

/// A project with targets `app`, `app-worker` and `web` in a temporary directory, each with its
/// own context and Dockerfile.
struct Fixture {
    dir: tempfile::TempDir,
    project: Project,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut project = Project {
            root: dir.path().to_path_buf(),
            ..Default::default()
        };
        for name in ["app", "app-worker", "web"] {
            let ctx = dir.path().join(name);
            std::fs::create_dir_all(&ctx).unwrap();
            std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
            project.targets.insert(
                name.to_string(),
                Target {
                    name: name.to_string(),
                    dockerfile: ctx.join("Dockerfile"),
                    context: ctx,
                    tags: vec![format!("localhost:5000/t/{name}:1")],
                    ..Default::default()
                },
            );
        }
        project
            .groups
            .insert("default".into(), vec!["app".into(), "web".into()]);
        Fixture { dir, project }
    }

    fn set(&mut self, sets: &[&str]) -> Result<(), OverrideError> {
        self.set_env(sets, &[])
    }

    fn set_env(&mut self, sets: &[&str], env: &[(&str, &str)]) -> Result<(), OverrideError> {
        let overrides: Vec<Override> = sets.iter().map(|s| Override::set(s)).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        apply(&mut self.project, &overrides, self.dir.path(), &lookup)
    }

    fn t(&self, name: &str) -> &Target {
        &self.project.targets[name]
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

#[test]
fn glob_follows_go_path_match() {
    let yes = [
        ("*", "app"),
        ("app*", "app-worker"),
        ("app*", "app"),
        ("a?p", "app"),
        ("[aw]*", "web"),
        ("[^w]*", "app"),
        ("[a-c]pp", "bpp"),
        ("\\*", "*"),
    ];
    for (p, n) in yes {
        assert_eq!(glob_match(p, n), Ok(true), "{p} {n}");
    }
    let no = [
        ("app", "app-worker"),
        ("a?p", "ap"),
        ("[^w]*", "web"),
        ("*", "a/b"),
    ];
    for (p, n) in no {
        assert_eq!(glob_match(p, n), Ok(false), "{p} {n}");
    }
    assert!(glob_match("[app", "app").is_err());
    assert!(glob_match("app\\", "app").is_err());
}

#[test]
fn patterns_select_targets_and_an_exact_name_wins() {
    let mut f = Fixture::new();
    f.set(&["app*.args.FOO=bar", "web.labels.team=web"])
        .unwrap();
    assert_eq!(f.t("app").args["FOO"], "bar");
    assert_eq!(f.t("app-worker").args["FOO"], "bar");
    assert!(!f.t("web").args.contains_key("FOO"));
    assert_eq!(f.t("web").labels["team"], "web");
    // `app` is a target: only it, not `app-worker`.
    f.set(&["app.args.ONLY=1"]).unwrap();
    assert!(f.t("app").args.contains_key("ONLY"));
    assert!(!f.t("app-worker").args.contains_key("ONLY"));
}

#[test]
fn errors_name_the_argument_and_the_fix() {
    let mut f = Fixture::new();
    let e = f.set(&["nope.args.X=1"]).unwrap_err();
    assert_eq!(e.shown, "--set nope.args.X=1");
    assert!(e.problem.contains("no target matches \"nope\""), "{e}");
    assert!(e.fix.contains("app, app-worker, web"), "{e}");
    let e = f.set(&["default.tags=x"]).unwrap_err();
    assert!(e.problem.contains("is a group"), "{e}");
    let e = f.set(&["app.platfrom=linux/arm64"]).unwrap_err();
    assert!(e.fix.contains("did you mean `platform`"), "{e}");
    let e = f.set(&["app.args=1"]).unwrap_err();
    assert!(e.problem.contains("needs a name"), "{e}");
    let e = f.set(&["app.tags.x=1"]).unwrap_err();
    assert!(e.problem.contains("takes no name"), "{e}");
    let e = f.set(&["app.platform"]).unwrap_err();
    assert!(e.problem.contains("no value"), "{e}");
    let e = f.set(&["app.no-cache=yes"]).unwrap_err();
    assert!(e.problem.contains("not a boolean"), "{e}");
    let e = f.set(&["app.platform=linux"]).unwrap_err();
    assert!(e.problem.contains("not a valid platform value"), "{e}");
    let e = f.set(&["app.output=type=bogus"]).unwrap_err();
    assert!(e.problem.contains("unknown type"), "{e}");
    let e = f.set(&["app.target+=x"]).unwrap_err();
    assert!(e.problem.contains("appends to lists"), "{e}");
    let e = f.set(&["app.annotations=bogus:a=b"]).unwrap_err();
    assert!(e.problem.contains("unknown annotation type"), "{e}");
    let e = f.set(&["app.call=check"]).unwrap_err();
    assert!(e.problem.contains(NOT_YET), "{e}");
    f.set(&["app.call=build"]).unwrap();
    let e = f.set(&["app.context=missing"]).unwrap_err();
    assert!(e.problem.contains("does not exist"), "{e}");
    let e = f.set(&["app.contexts.x=target:nope"]).unwrap_err();
    assert!(e.problem.contains("not a target"), "{e}");
}

#[test]
fn args_without_a_value_come_from_the_environment() {
    let mut f = Fixture::new();
    f.set_env(
        &["app.args.FROM_ENV", "app.args.UNSET"],
        &[("FROM_ENV", "v")],
    )
    .unwrap();
    assert_eq!(f.t("app").args["FROM_ENV"], "v");
    assert!(!f.t("app").args.contains_key("UNSET"));
    // The pattern is still checked when the variable is unset, as in buildx.
    assert!(f.set(&["nope.args.UNSET"]).is_err());
}

#[test]
fn lists_replace_append_and_drop_empty_entries() {
    let mut f = Fixture::new();
    f.set(&["app.tags=r/a:2", "app.tags=r/a:3"]).unwrap();
    assert_eq!(f.t("app").tags, ["r/a:2", "r/a:3"]);
    f.set(&["app.tags+=r/a:4", "app.tags+=r/a:2"]).unwrap();
    assert_eq!(f.t("app").tags, ["r/a:2", "r/a:3", "r/a:4"]);
    // The last --set of a key decides between replacing and appending, as in buildx.
    f.set(&["web.tags=r/w:2", "web.tags+=r/w:3"]).unwrap();
    assert_eq!(
        f.t("web").tags,
        ["localhost:5000/t/web:1", "r/w:2", "r/w:3"]
    );
    f.set(&["app.cache-to=type=inline"]).unwrap();
    assert_eq!(f.t("app").cache_to, ["type=inline"]);
    f.set(&["*.cache-to="]).unwrap();
    assert!(f.t("app").cache_to.is_empty());
    f.set(&["*.platform=linux/arm64"]).unwrap();
    assert_eq!(f.t("web").platforms, ["linux/arm64"]);
}

#[test]
fn paths_start_at_the_current_directory_and_dockerfile_at_the_context() {
    let mut f = Fixture::new();
    std::fs::create_dir_all(f.path("other/sub")).unwrap();
    std::fs::write(f.path("other/Dockerfile.alt"), "FROM scratch\n").unwrap();
    f.set(&[
        "app.context=other",
        "web.context=other",
        "web.dockerfile=Dockerfile.alt",
        "app.contexts.shared=other/sub",
        "app.output=type=local,dest=out",
        "app.secrets=id=npm,src=npmrc",
    ])
    .unwrap();
    // The Dockerfile inside the old context moves along with it.
    assert_eq!(f.t("app").context, f.path("other"));
    assert_eq!(f.t("app").dockerfile, f.path("other/Dockerfile"));
    assert_eq!(f.t("web").dockerfile, f.path("other/Dockerfile.alt"));
    assert_eq!(
        f.t("app").contexts["shared"],
        ContextSource::Local(f.path("other/sub"))
    );
    assert_eq!(
        f.t("app").outputs,
        [format!("type=local,dest={}", f.path("out").display())]
    );
    assert_eq!(
        f.t("app").secrets,
        [format!("id=npm,src={}", f.path("npmrc").display())]
    );
    f.set(&["app.contexts.shared="]).unwrap();
    assert!(f.t("app").contexts.is_empty());
}

#[test]
fn dockerfile_override_replaces_an_inline_dockerfile() {
    let mut f = Fixture::new();
    if let Some(t) = f.project.targets.get_mut("app") {
        t.dockerfile_inline = Some("FROM busybox\n".into());
        t.dockerfile = f.dir.path().join(".bk-build/inline/x/Dockerfile");
    }
    f.set(&["app.dockerfile=Dockerfile"]).unwrap();
    assert_eq!(f.t("app").dockerfile_inline, None);
    assert_eq!(f.t("app").dockerfile, f.path("app/Dockerfile"));
}

#[test]
fn push_and_load_follow_buildx() {
    let mut f = Fixture::new();
    // No outputs: push and load are the target's own flags.
    f.set(&["app.push=true", "app.load=true"]).unwrap();
    assert!(f.t("app").push && f.t("app").load && f.t("app").outputs.is_empty());
    // push=false takes the push away (a registry output is removed).
    f.set(&["app.push=false"]).unwrap();
    assert!(!f.t("app").push && f.t("app").load);
    // load=false changes nothing in buildx.
    f.set(&["app.load=false"]).unwrap();
    assert!(f.t("app").load);
    // A target that writes files elsewhere is left alone by push and load.
    f.set(&[
        "web.output=type=local,dest=out",
        "web.push=true",
        "web.load=true",
    ])
    .unwrap();
    assert!(!f.t("web").push && !f.t("web").load);
    assert_eq!(f.t("web").outputs.len(), 1);
    // An image output with attributes keeps them and gains push=true.
    f.set(&[
        "app-worker.output=type=image,compression=zstd",
        "app-worker.push=true",
    ])
    .unwrap();
    assert_eq!(
        f.t("app-worker").outputs,
        ["type=image,compression=zstd,push=true"]
    );
    assert!(!f.t("app-worker").push);
    // A plain registry output is the target's push.
    f.set(&["app-worker.output=type=registry"]).unwrap();
    assert!(f.t("app-worker").push && f.t("app-worker").outputs.is_empty());
    f.set(&["app-worker.output+=type=docker"]).unwrap();
    assert!(f.t("app-worker").push && f.t("app-worker").load);
}

#[test]
fn network_host_asks_for_its_entitlement_and_attest_keeps_one_per_type() {
    let mut f = Fixture::new();
    f.set(&["app.network=host"]).unwrap();
    assert_eq!(f.t("app").entitlements, ["network.host"]);
    f.set(&["app.network=none"]).unwrap();
    assert!(f.t("app").entitlements.is_empty());
    f.set(&[
        "app.attest=type=sbom,generator=g",
        "app.attest=type=provenance,mode=max",
        "app.attest=type=sbom,disabled=true",
    ])
    .unwrap();
    assert_eq!(
        crate::project::spelled(&f.t("app").attest),
        ["type=sbom,disabled=true", "type=provenance,mode=max"]
    );
    f.set(&["app.extra-hosts.db=10.0.0.1,10.0.0.2"]).unwrap();
    assert_eq!(
        crate::project::spelled(&f.t("app").extra_hosts),
        ["db=10.0.0.1", "db=10.0.0.2"]
    );
    f.set(&["app.extra-hosts.db=10.0.0.3"]).unwrap();
    assert_eq!(
        crate::project::spelled(&f.t("app").extra_hosts),
        ["db=10.0.0.3"]
    );
    // Annotations are always added to (buildx appends them), later ones winning per place.
    f.set(&["app.annotations=a=1", "app.annotations=index,manifest:b=2"])
        .unwrap();
    f.set(&["app.annotations=a=3"]).unwrap();
    assert_eq!(
        crate::project::spelled(&f.t("app").annotations),
        ["a=1", "index,manifest:b=2", "a=3"]
    );
    let attrs: Vec<(String, String)> = crate::project::annotations(f.t("app"))
        .into_iter()
        .map(|a| (a.exporter_attr(), a.value))
        .collect();
    assert_eq!(
        attrs,
        [
            ("annotation-index.b".to_string(), "2".to_string()),
            ("annotation-manifest.b".to_string(), "2".to_string()),
            ("annotation.a".to_string(), "3".to_string()),
        ]
    );
}

#[test]
fn allow_grants_what_targets_ask_for() {
    let mut f = Fixture::new();
    f.set(&["app.network=host", "web.entitlements=security.insecure"])
        .unwrap();
    let all = ["app".to_string(), "web".to_string()];
    assert_eq!(
        ungranted(&f.project, &all, &[]),
        [
            ("app".to_string(), "network.host".to_string()),
            ("web".to_string(), "security.insecure".to_string())
        ]
    );
    let granted = parse_allow(&["network.host".into(), "fs.read=/x".into()]).unwrap();
    assert_eq!(ungranted(&f.project, &all[..1], &granted), []);
    assert!(parse_allow(&["network".into()]).is_err());
    assert!(parse_allow(&["fs.read".into()]).is_err());
    assert!(parse_allow(&["device=".into()]).is_err());
    parse_allow(&[
        "device".into(),
        "device=nvidia.com/gpu=all,alias=gpu".into(),
    ])
    .unwrap();
    assert_eq!(
        granted_by(&[Override::set("*.entitlements=security.insecure")]),
        ["security.insecure"]
    );
}

#[test]
fn call_function_reads_buildx_syntax() {
    assert_eq!(call_function("build"), Ok(None));
    assert_eq!(call_function(""), Ok(None));
    assert_eq!(call_function("check"), Ok(Some("check".into())));
    assert_eq!(call_function("lint"), Ok(Some("check".into())));
    assert_eq!(
        call_function("outline,format=json"),
        Ok(Some("outline".into()))
    );
    assert!(call_function("check,ignorestatus=maybe").is_err());
    assert!(call_function("check,outline").is_err());
    assert!(call_function("nope").is_err_and(|e| e.contains("not a method")));
}
