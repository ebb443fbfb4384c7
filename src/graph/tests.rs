use super::*;
use crate::project::Target;
use std::path::Path;

const PYBASE: &str =
    "ARG BASE_IMAGE=localhost:5000/busybox:latest\nFROM ${BASE_IMAGE}\nCOPY lib/ /opt/lib/\n";
const SERVICE: &str =
    "ARG REPO=localhost:5000\nARG TAG=latest\nFROM ${REPO}/pybase:${TAG}\nCOPY app/ /app/\n";

struct Fixture {
    dir: tempfile::TempDir,
    project: Project,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = Project {
            root: dir.path().to_path_buf(),
            files: vec![dir.path().join("bk-build.toml")],
            targets: BTreeMap::new(),
            groups: BTreeMap::new(),
            default_must_exist: false,
            group_problems: BTreeMap::new(),
            warnings: Vec::new(),
            variables: Vec::new(),
            builders: Vec::new(),
        };
        Fixture { dir, project }
    }

    /// Adds a target with its own Dockerfile and the usual `REPO/NAME:TAG` tag.
    fn target(&mut self, name: &str, dockerfile: &str, edit: impl FnOnce(&mut Target)) {
        let ctx = self.dir.path().join(name);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let mut t = Target {
            name: name.to_string(),
            context: ctx.clone(),
            dockerfile: ctx.join("Dockerfile"),
            tags: vec![format!("localhost:5000/acme/{name}:dev")],
            args: [("REPO", "localhost:5000/acme"), ("TAG", "dev")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Target::default()
        };
        edit(&mut t);
        self.project.targets.insert(name.to_string(), t);
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn services_are_inferred_to_build_on_pybase() {
    let mut f = Fixture::new();
    f.target("pybase", PYBASE, |_| {});
    f.target("service_1", SERVICE, |_| {});
    f.target("service_2", SERVICE, |_| {});
    let p = plan(&f.project, &[]).unwrap();
    assert_eq!(p.order, ["pybase", "service_1", "service_2"]);
    assert!(p.deps["pybase"].is_empty());
    assert_eq!(
        p.deps["service_1"],
        [Edge {
            dep: "pybase".into(),
            via: Via::BaseImage {
                reference: "localhost:5000/acme/pybase:dev".into(),
                tag: "localhost:5000/acme/pybase:dev".into(),
                context_key: "localhost:5000/acme/pybase:dev".into(),
            },
        }]
    );
    assert_eq!(p.dependents("pybase"), ["service_1", "service_2"]);
    // Selecting one service pulls its base in, and nothing else.
    assert_eq!(
        select(&f.project, &names(&["service_2"])).unwrap(),
        ["pybase", "service_2"]
    );
}

#[test]
fn inference_needs_the_expanded_reference_to_match_a_tag() {
    let mut f = Fixture::new();
    f.target("pybase", PYBASE, |_| {});
    // Without the args the Dockerfile defaults give localhost:5000/pybase:latest: no match.
    f.target("service_1", SERVICE, |t| t.args.clear());
    // Tags match in canonical form: `:latest` and docker.io spelling differences don't matter.
    f.target("hub", "FROM docker.io/library/busybox\n", |t| {
        t.tags = vec![]
    });
    f.target("uses_hub", "FROM busybox:latest\n", |_| {});
    f.project.targets.get_mut("hub").unwrap().tags = vec!["busybox".into()];
    let p = plan(&f.project, &[]).unwrap();
    assert!(p.deps["service_1"].is_empty());
    assert_eq!(p.dependencies("uses_hub"), ["hub"]);
    match &p.deps["uses_hub"][0].via {
        Via::BaseImage {
            reference,
            tag,
            context_key,
        } => {
            assert_eq!(reference, "busybox:latest");
            assert_eq!(tag, "busybox");
            assert_eq!(context_key, "busybox");
        }
        other => panic!("unexpected edge {other:?}"),
    }
    // A target whose FROM is its own tag does not depend on itself.
    assert!(p.deps["hub"].is_empty());
}

#[test]
fn depends_on_and_target_contexts_are_edges_and_replace_inference() {
    let mut f = Fixture::new();
    f.target("pybase", PYBASE, |_| {});
    f.target("tools", "FROM scratch\n", |_| {});
    f.target("service_1", SERVICE, |t| {
        t.depends_on = vec!["tools".into()];
        // The named context replaces the FROM, so no inferred edge for it.
        t.contexts.insert(
            "localhost:5000/acme/pybase:dev".into(),
            ContextSource::Target("pybase".into()),
        );
    });
    let p = plan(&f.project, &names(&["service_1"])).unwrap();
    assert_eq!(p.order, ["pybase", "tools", "service_1"]);
    assert_eq!(
        p.deps["service_1"],
        [
            Edge {
                dep: "pybase".into(),
                via: Via::NamedContext {
                    name: "localhost:5000/acme/pybase:dev".into()
                }
            },
            Edge {
                dep: "tools".into(),
                via: Via::DependsOn
            },
        ]
    );
}

#[test]
fn cycles_are_reported_with_their_path() {
    let mut f = Fixture::new();
    f.target("a", "FROM scratch\n", |t| t.depends_on = vec!["b".into()]);
    f.target("b", "FROM localhost:5000/acme/c:dev\n", |_| {});
    f.target("c", "FROM scratch\n", |t| {
        t.contexts
            .insert("x".into(), ContextSource::Target("a".into()));
    });
    f.target("free", "FROM scratch\n", |_| {});
    let e = plan(&f.project, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("dependency cycle: a -> b -> c -> a"), "{msg}");
    assert!(msg.contains("a -> b: depends_on"), "{msg}");
    assert!(
        msg.contains("b -> c: its Dockerfile reads localhost:5000/acme/c:dev"),
        "{msg}"
    );
    assert!(msg.contains("c -> a: contexts.x = \"target:a\""), "{msg}");
    assert!(msg.contains("fix:"), "{msg}");
    // Selecting only the acyclic part works.
    assert_eq!(select(&f.project, &names(&["free"])).unwrap(), ["free"]);
}

#[test]
fn groups_resolve_recursively_and_unknown_names_suggest() {
    let mut f = Fixture::new();
    f.target("pybase", PYBASE, |_| {});
    f.target("service_1", SERVICE, |_| {});
    f.target("openresty", "FROM scratch\n", |_| {});
    f.project.groups.insert("py".into(), names(&["service_1"]));
    f.project
        .groups
        .insert("all".into(), names(&["py", "openresty", "all"]));
    assert_eq!(
        select(&f.project, &names(&["all"])).unwrap(),
        ["openresty", "pybase", "service_1"]
    );
    // No default group: everything.
    assert_eq!(select(&f.project, &[]).unwrap().len(), 3);
    f.project
        .groups
        .insert("default".into(), names(&["openresty"]));
    assert_eq!(select(&f.project, &[]).unwrap(), ["openresty"]);
    let msg = select(&f.project, &names(&["servce_1"]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`servce_1` is not a target or group (did you mean `service_1`?)"),
        "{msg}"
    );
    assert!(msg.contains("fix: use one of:"), "{msg}");
}

#[test]
fn ambiguous_tags_and_missing_dockerfiles_are_errors() {
    let mut f = Fixture::new();
    f.target("pybase", PYBASE, |_| {});
    f.target("pybase2", PYBASE, |t| {
        t.tags = vec!["localhost:5000/acme/pybase:dev".into()]
    });
    f.target("service_1", SERVICE, |_| {});
    let msg = plan(&f.project, &names(&["service_1"]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("several targets (pybase, pybase2)"), "{msg}");

    let mut f = Fixture::new();
    f.target("a", "FROM scratch\n", |_| {});
    std::fs::remove_file(f.path().join("a/Dockerfile")).unwrap();
    let msg = plan(&f.project, &[]).unwrap_err().to_string();
    assert!(
        msg.contains("target `a`: cannot read its Dockerfile"),
        "{msg}"
    );
}

#[test]
fn from_deps_orders_and_rejects_unknown_dependencies() {
    let p = Plan::from_deps([
        ("c", vec!["b"]),
        ("b", vec!["a"]),
        ("a", vec![]),
        ("d", vec![]),
    ])
    .unwrap();
    assert_eq!(p.order, ["a", "b", "c", "d"]);
    let e = Plan::from_deps([("a", vec!["zz"])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`zz`") && e.contains("dependency of `a`"), "{e}");
}

#[test]
fn example_monorepo_builds_pybase_before_its_services() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monorepo");
    let project = crate::project::load(&[dir.join("bk-build.toml")], &|_| None).unwrap();
    let p = plan(&project, &[]).unwrap();
    assert_eq!(p.order, ["openresty", "pybase", "service_1", "service_2"]);
    assert!(p.deps["openresty"].is_empty());
    for s in ["service_1", "service_2"] {
        assert_eq!(p.dependencies(s), ["pybase"]);
    }
    // openresty's luamods stage is replaced by the named context, so only conf/ and html/
    // are read from its own context.
    let o = &project.targets["openresty"];
    let named: BTreeSet<String> = o.contexts.keys().cloned().collect();
    let scan = scan_dockerfile(
        &std::fs::read_to_string(&o.dockerfile).unwrap(),
        &ScanOptions {
            args: &o.args,
            target: None,
            named_contexts: &named,
            platform: None,
        },
    );
    assert_eq!(scan.copy_sources.unwrap(), ["conf", "html"]);
    assert_eq!(scan.base_refs, ["localhost:5000/busybox:latest"]);
}

#[test]
fn identical_builds_sharing_a_tag_are_one_image_not_an_ambiguity() {
    let mut f = Fixture::new();
    f.target("web", "FROM scratch\n", |t| {
        t.tags = vec!["shared-local".into()]
    });
    let web = f.project.targets["web"].clone();
    let mut worker = web.clone();
    worker.name = "worker".into();
    f.project.targets.insert("worker".into(), worker);
    f.target("third", "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n", |t| {
        t.args.insert("BASE_IMAGE".into(), "shared-local".into());
        t.tags = vec!["third-local".into()];
    });
    for wanted in [names(&["third"]), Vec::new()] {
        let p = plan(&f.project, &wanted).unwrap();
        assert_eq!(p.dependencies("third"), ["web"], "{wanted:?}");
        assert_eq!(p.order[0], "web");
    }
    // The second waits for the first, so the daemon builds the image once.
    let p = plan(&f.project, &[]).unwrap();
    assert_eq!(p.dependencies("worker"), ["web"]);

    // Different builds behind one tag are still ambiguous.
    f.project
        .targets
        .get_mut("worker")
        .unwrap()
        .args
        .insert("X".into(), "1".into());
    let msg = plan(&f.project, &names(&["third"]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("several targets (web, worker)"), "{msg}");
}

#[test]
fn an_unbuildable_target_and_what_needs_it_leave_the_others_alone() {
    let mut f = Fixture::new();
    f.target("pybase", PYBASE, |t| {
        t.unavailable = Some("context directory missing".into())
    });
    std::fs::remove_file(f.path().join("pybase/Dockerfile")).unwrap();
    f.target("service_1", SERVICE, |_| {});
    f.target("other", "FROM scratch\n", |_| {});
    let p = plan(&f.project, &[]).unwrap();
    assert_eq!(p.order, ["other"]);
    assert_eq!(p.unavailable["pybase"], "context directory missing");
    assert!(p.unavailable["service_1"].contains("needs `pybase`"));
    let p = plan(&f.project, &names(&["other"])).unwrap();
    assert!(p.unavailable.is_empty());
}

/// `bake --print`'s cut of the project: bk-build.toml without a default group shows every
/// target as the default; bake files (`default_must_exist`) need one; a named target brings
/// what it uses through `target:` but not its other dependencies.
#[test]
fn printed_keeps_what_was_asked_for() {
    let mut f = Fixture::new();
    f.target("pybase", PYBASE, |_| {});
    f.target("tools", "FROM scratch\n", |_| {});
    f.target("lib", "FROM scratch\n", |_| {});
    f.target("service_1", SERVICE, |t| {
        t.depends_on = vec!["tools".into()];
        t.contexts
            .insert("lib".into(), ContextSource::Target("lib".into()));
    });
    let all = printed(&f.project, &[]).unwrap();
    assert_eq!(all.targets.len(), 4);
    assert_eq!(
        all.groups["default"],
        ["lib", "pybase", "service_1", "tools"]
    );

    let one = printed(&f.project, &names(&["service_1"])).unwrap();
    let shown: Vec<&String> = one.targets.keys().collect();
    assert_eq!(shown, ["lib", "service_1"], "linked, not depended on");
    assert_eq!(one.groups["default"], ["service_1"]);

    f.project
        .groups
        .insert("svc".into(), names(&["service_1", "svc"]));
    let g = printed(&f.project, &names(&["svc", "pybase", "pybase"])).unwrap();
    assert_eq!(g.groups["default"], ["pybase", "svc"]);
    assert_eq!(g.groups["svc"], ["service_1", "svc"]);
    assert_eq!(g.targets.len(), 3);
    let p = printed(&f.project, &names(&["p*", "x?"]));
    assert!(matches!(p, Err(GraphError::NoMatch { .. })), "{p:?}");

    f.project.default_must_exist = true;
    assert!(matches!(
        printed(&f.project, &[]),
        Err(GraphError::NoDefault { .. })
    ));
    assert!(matches!(
        plan(&f.project, &[]),
        Err(GraphError::NoDefault { .. })
    ));
    assert_eq!(
        printed(&f.project, &names(&["t*"])).unwrap().groups["default"],
        ["tools"]
    );
}
