//! The target graph: which targets a run builds, in which order, and why each depends on
//! another; plus a small generic scheduler that runs the graph with bounded parallelism.
//!
//! Edges come from three places: `depends_on`, `target:NAME` named contexts, and inference —
//! a target whose Dockerfile reads an image (after `ARG` expansion with the target's args) that
//! is one of another target's tags builds on that target. For inferred edges the [`Plan`] keeps
//! the reference as written and the matched tag, so the executor can hand the dependent the
//! exact image its base just produced (e.g. `context:<key>=docker-image://<tag>@<digest>`)
//! instead of whatever the registry held before.
//!
//! This module reads the [`Project`] (plain data) and Dockerfiles; it must not know about
//! project file formats, fingerprints or BuildKit. The scheduler does not know what a build is.

pub mod dockerfile;
mod reference;
mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::project::{ContextSource, Project};

pub use dockerfile::{
    dockerfile_base_refs, dockerfile_copy_sources, scan_dockerfile, DockerfileScan, ScanOptions,
};
pub use reference::familiar;
pub use schedule::{run, Outcome, Release};

/// Why a target depends on another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Listed in `depends_on`.
    DependsOn,
    /// `contexts = { NAME = "target:DEP" }`.
    NamedContext { name: String },
    /// The Dockerfile reads `reference` (`FROM`, `COPY --from`, `RUN --mount=from=`), which is
    /// the dependency's tag `tag`. `context_key` is the name BuildKit looks a named context up
    /// by for that reference ([`familiar`] form), i.e. pass `context:<context_key>=…` to pin it.
    BaseImage {
        reference: String,
        tag: String,
        context_key: String,
    },
}

/// One dependency of a target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// The target depended on.
    pub dep: String,
    pub via: Via,
}

/// The targets of one run in a valid build order, with their dependencies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Topological order (dependencies first; ties broken by name, so it is stable).
    pub order: Vec<String>,
    /// Target → its dependencies (only targets in `order`). Every target in `order` has an
    /// entry, possibly empty.
    pub deps: BTreeMap<String, Vec<Edge>>,
    /// Targets of the run that cannot be built ([`crate::project::Target::unavailable`], or
    /// a dependency that cannot be built), with the reason. They are not in `order`; the
    /// rest of the run goes on without them.
    pub unavailable: BTreeMap<String, String>,
    /// Targets of `order` whose build is exactly an earlier target's (everything but the
    /// name, sharing a tag: compose's "one image, run as web and as worker") → that target,
    /// which they depend on. They deliver the image that target built rather than build it
    /// again: a second build of the same inputs is another image (its provenance names
    /// another build), and the shared tag would then change hands on every run.
    pub same_as: BTreeMap<String, String>,
}

impl Plan {
    /// A plan from plain `name → [dependency]` lists (all edges [`Via::DependsOn`]); for
    /// callers and tests that have no project. Every dependency must be a key.
    pub fn from_deps<N, D, I>(deps: I) -> Result<Plan, GraphError>
    where
        I: IntoIterator<Item = (N, D)>,
        N: Into<String>,
        D: IntoIterator,
        D::Item: Into<String>,
    {
        let deps: BTreeMap<String, Vec<Edge>> = deps
            .into_iter()
            .map(|(n, ds)| {
                let edges = ds
                    .into_iter()
                    .map(|d| Edge {
                        dep: d.into(),
                        via: Via::DependsOn,
                    })
                    .collect();
                (n.into(), edges)
            })
            .collect();
        for (n, edges) in &deps {
            if let Some(e) = edges.iter().find(|e| !deps.contains_key(&e.dep)) {
                return Err(GraphError::Unknown {
                    name: e.dep.clone(),
                    hint: format!(" (dependency of `{n}`)"),
                    known: deps.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
        let order = topo_order(&deps)?;
        Ok(Plan {
            order,
            deps,
            unavailable: BTreeMap::new(),
            same_as: BTreeMap::new(),
        })
    }

    /// The distinct targets `name` depends on, sorted.
    pub fn dependencies(&self, name: &str) -> Vec<&str> {
        let set: BTreeSet<&str> = self
            .deps
            .get(name)
            .into_iter()
            .flatten()
            .map(|e| e.dep.as_str())
            .collect();
        set.into_iter().collect()
    }

    /// The distinct targets that depend directly on `name`, sorted.
    pub fn dependents(&self, name: &str) -> Vec<&str> {
        self.deps
            .iter()
            .filter(|(_, edges)| edges.iter().any(|e| e.dep == name))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("`{name}` is not a target or group{hint}\n  fix: use one of: {known}")]
    Unknown {
        name: String,
        /// " (did you mean `x`?)" or similar context, possibly empty.
        hint: String,
        known: String,
    },
    #[error("no target named, and the project has no `default` group or target to build (as in buildx bake)\n  fix: name the targets or groups to build (one of: {known}), or add a group \"default\" {{ targets = [...] }}")]
    NoDefault { known: String },
    /// A group named (directly or through another group) that the project could not expand;
    /// the message names the file, line and key.
    #[error("{0}")]
    BrokenGroup(String),
    #[error("no target or group matches `{pattern}`\n  fix: use one of: {known}")]
    NoMatch { pattern: String, known: String },
    #[error("dependency cycle: {}\n{}  fix: remove one of these dependencies (a target cannot be built before itself)", path.join(" -> "), explain(reasons))]
    Cycle {
        /// `a, b, c, a`: a needs b, b needs c, c needs a.
        path: Vec<String>,
        /// One line per hop saying where the dependency comes from.
        reasons: Vec<String>,
    },
    #[error("target `{target}`: cannot read its Dockerfile {}: {source}\n  fix: check the target's dockerfile path", path.display())]
    Dockerfile {
        target: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("target `{target}`: `{reference}` is a tag of several targets ({})\n  fix: give each target its own tags, or name the base with contexts = {{ \"{reference}\" = \"target:NAME\" }}", candidates.join(", "))]
    AmbiguousBase {
        target: String,
        reference: String,
        candidates: Vec<String>,
    },
}

fn explain(reasons: &[String]) -> String {
    reasons.iter().map(|r| format!("  {r}\n")).collect()
}

/// Resolves `names_or_groups` (empty: the `default` group, or every target when there is
/// none) to targets, adds everything they depend on, and orders the result.
pub fn plan(project: &Project, names_or_groups: &[String]) -> Result<Plan, GraphError> {
    let wanted = resolve_names(project, names_or_groups)?;
    let tags = tag_index(project);
    let same = same_builds(project);
    let mut deps: BTreeMap<String, Vec<Edge>> = BTreeMap::new();
    let mut unavailable: BTreeMap<String, String> = BTreeMap::new();
    let mut todo: Vec<String> = wanted.into_iter().collect();
    while let Some(name) = todo.pop() {
        if deps.contains_key(&name) || unavailable.contains_key(&name) {
            continue;
        }
        if let Some(why) = project
            .targets
            .get(&name)
            .and_then(|t| t.unavailable.clone())
        {
            unavailable.insert(name, why);
            continue;
        }
        let edges = edges_of(project, &name, &tags, &same)?;
        todo.extend(edges.iter().map(|e| e.dep.clone()));
        deps.insert(name, edges);
    }
    // What needs a target that cannot be built cannot be built either.
    loop {
        let blocked: Vec<(String, String)> = deps
            .iter()
            .filter_map(|(n, edges)| {
                let e = edges.iter().find(|e| unavailable.contains_key(&e.dep))?;
                Some((
                    n.clone(),
                    format!("needs `{}`, which cannot be built", e.dep),
                ))
            })
            .collect();
        if blocked.is_empty() {
            break;
        }
        for (n, why) in blocked {
            deps.remove(&n);
            unavailable.insert(n, why);
        }
    }
    let order = topo_order(&deps)?;
    let same_as = same
        .into_iter()
        .filter(|(dup, first)| deps.contains_key(dup) && deps.contains_key(first))
        .collect();
    Ok(Plan {
        order,
        deps,
        unavailable,
        same_as,
    })
}

/// Target → an earlier-named target with exactly the same build (everything but the name),
/// for targets that share a tag: compose's "one image, run as web and as worker". Such a tag
/// names one image, not an ambiguity: the later target waits for the first and delivers the
/// image the first built ([`Plan::same_as`]).
fn same_builds(project: &Project) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let names: Vec<&String> = project.targets.keys().collect();
    for (i, a) in names.iter().enumerate() {
        if out.contains_key(*a) {
            continue;
        }
        let ta = &project.targets[*a];
        for b in &names[i + 1..] {
            let tb = &project.targets[*b];
            if out.contains_key(*b) || !ta.tags.iter().any(|t| tb.tags.contains(t)) {
                continue;
            }
            let mut tb2 = tb.clone();
            tb2.name = ta.name.clone();
            if *ta == tb2 {
                out.insert((*b).clone(), (*a).clone());
            }
        }
    }
    out
}

/// The targets `names_or_groups` name (groups expanded; empty: the `default` group, or every
/// target when there is none), without the targets they depend on.
pub fn requested(
    project: &Project,
    names_or_groups: &[String],
) -> Result<BTreeSet<String>, GraphError> {
    resolve_names(project, names_or_groups)
}

/// The targets to build for `names_or_groups`, dependencies included, in build order.
pub fn select(project: &Project, names_or_groups: &[String]) -> Result<Vec<String>, GraphError> {
    plan(project, names_or_groups).map(|p| p.order)
}

/// `names` with patterns (`*`, `?`, `[…]`, Go's `path.Match`) replaced by the groups and
/// targets they match, as buildx reads the names given to `bake` (`matchNames`); no names
/// means `default`. Without repeats, in the order given.
fn expand_names(project: &Project, names: &[String]) -> Result<Vec<String>, GraphError> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    };
    if names.is_empty() {
        add("default");
    }
    for n in names {
        if !n.contains(['*', '?', '[', ']']) {
            add(n);
            continue;
        }
        let matched: Vec<&String> = project
            .groups
            .keys()
            .chain(project.targets.keys())
            .filter(|c| crate::project::overrides::glob_match(n, c).unwrap_or(false))
            .collect();
        if matched.is_empty() {
            return Err(GraphError::NoMatch {
                pattern: n.clone(),
                known: known_names(project),
            });
        }
        for m in matched {
            add(m);
        }
    }
    Ok(out)
}

fn resolve_names(project: &Project, names: &[String]) -> Result<BTreeSet<String>, GraphError> {
    let names = expand_names(project, names)?;
    let mut out = BTreeSet::new();
    let mut seen_groups = BTreeSet::new();
    let mut todo: Vec<&String> = names.iter().rev().collect();
    while let Some(n) = todo.pop() {
        if project.targets.contains_key(n) {
            out.insert(n.clone());
        } else if let Some(members) = project.groups.get(n) {
            if let Some(problem) = project.group_problems.get(n) {
                return Err(GraphError::BrokenGroup(problem.clone()));
            }
            if seen_groups.insert(n.clone()) {
                todo.extend(members.iter().rev());
            }
        } else if n == "default" && !project.default_must_exist {
            // bk-build.toml's rule: without a default group, everything is the default.
            out.extend(project.targets.keys().cloned());
        } else {
            return Err(unknown(project, n));
        }
    }
    Ok(out)
}

/// Every target and group name of `project`, for "use one of" hints.
fn known_names(project: &Project) -> String {
    let known: Vec<&str> = project
        .targets
        .keys()
        .chain(project.groups.keys())
        .map(String::as_str)
        .collect();
    known.join(", ")
}

/// The error for a name that is neither a target nor a group of `project`.
fn unknown(project: &Project, name: &str) -> GraphError {
    let known: Vec<&str> = project
        .targets
        .keys()
        .chain(project.groups.keys())
        .map(String::as_str)
        .collect();
    if name == "default" {
        return GraphError::NoDefault {
            known: known.join(", "),
        };
    }
    let hint = crate::project::suggest(name, known.iter().copied())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    GraphError::Unknown {
        name: name.to_string(),
        hint,
        known: known.join(", "),
    }
}

/// What `bake --print` shows for `names_or_groups`: the project cut down as `docker buildx
/// bake --print` cuts it (buildx `bake.ReadTargets`).
///
/// - Names: as for a build (patterns match group and target names; none means `default`).
/// - Targets: the named ones and the members of the named groups (nested groups expanded),
///   plus every target they use through `target:` contexts, recursively. Not the targets they
///   merely depend on (`depends_on`, a `FROM` of another target's tag): buildx knows no such
///   links.
/// - Groups: every group reached from the names, as defined; and `default`, which lists the
///   names asked for (sorted, without repeats). When `default` is itself one of the groups
///   reached, the other names asked for are added to its members, as buildx does.
///
/// Errors: a name (or group member) that is neither a target nor a group; no names and no
/// `default` when [`Project::default_must_exist`].
pub fn printed(project: &Project, names_or_groups: &[String]) -> Result<Project, GraphError> {
    let names = expand_names(project, names_or_groups)?;
    let mut targets: BTreeSet<String> = BTreeSet::new();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &names {
        if project.targets.contains_key(n) {
            targets.insert(n.clone());
        } else if project.groups.contains_key(n) {
            let mut todo = vec![n.clone()];
            while let Some(g) = todo.pop() {
                if groups.contains_key(&g) {
                    continue;
                }
                if let Some(problem) = project.group_problems.get(&g) {
                    return Err(GraphError::BrokenGroup(problem.clone()));
                }
                let members = project.groups[&g].clone();
                for m in &members {
                    if project.targets.contains_key(m) {
                        targets.insert(m.clone());
                    } else if project.groups.contains_key(m) {
                        todo.push(m.clone());
                    } else {
                        return Err(unknown(project, m));
                    }
                }
                groups.insert(g, members);
            }
        } else if n == "default" && !project.default_must_exist {
            // bk-build.toml without a default group: every target, shown as that group.
            targets.extend(project.targets.keys().cloned());
            groups.insert("default".into(), project.targets.keys().cloned().collect());
        } else {
            return Err(unknown(project, n));
        }
    }
    for n in &names {
        // buildx checks for the group at each name, after adding the earlier ones.
        if n == "default" && groups.contains_key("default") {
            continue;
        }
        groups.entry("default".into()).or_default().push(n.clone());
    }
    if let Some(d) = groups.get_mut("default") {
        d.sort();
        d.dedup();
    }
    let mut todo: Vec<String> = targets.iter().cloned().collect();
    while let Some(t) = todo.pop() {
        for src in project.targets[&t].contexts.values() {
            if let ContextSource::Target(d) = src {
                if !project.targets.contains_key(d) {
                    return Err(unknown(project, d));
                }
                if targets.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
    }
    Ok(Project {
        targets: project
            .targets
            .iter()
            .filter(|(n, _)| targets.contains(*n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect(),
        groups,
        ..project.clone()
    })
}

/// Canonical tag → (target, tag as written).
fn tag_index(project: &Project) -> BTreeMap<String, Vec<(String, String)>> {
    let mut idx: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, t) in &project.targets {
        for tag in &t.tags {
            if let Some(c) = reference::canonical(tag) {
                let entry = idx.entry(c).or_default();
                if !entry.iter().any(|(n, _)| n == name) {
                    entry.push((name.clone(), tag.clone()));
                }
            }
        }
    }
    idx
}

fn edges_of(
    project: &Project,
    name: &str,
    tags: &BTreeMap<String, Vec<(String, String)>>,
    same: &BTreeMap<String, String>,
) -> Result<Vec<Edge>, GraphError> {
    let Some(t) = project.targets.get(name) else {
        return Err(GraphError::Unknown {
            name: name.to_string(),
            hint: String::new(),
            known: project
                .targets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let mut edges = BTreeSet::new();
    if let Some(first) = same.get(name) {
        edges.insert(Edge {
            dep: first.clone(),
            via: Via::DependsOn,
        });
    }
    for d in &t.depends_on {
        edges.insert(Edge {
            dep: d.clone(),
            via: Via::DependsOn,
        });
    }
    for (ctx, src) in &t.contexts {
        if let ContextSource::Target(d) = src {
            edges.insert(Edge {
                dep: d.clone(),
                via: Via::NamedContext { name: ctx.clone() },
            });
        }
    }
    let text = std::fs::read_to_string(&t.dockerfile).map_err(|e| GraphError::Dockerfile {
        target: name.to_string(),
        path: t.dockerfile.clone(),
        source: e,
    })?;
    let named: BTreeSet<String> = t.contexts.keys().cloned().collect();
    let platform = crate::options::single_platform(&t.platforms);
    let scan = scan_dockerfile(
        &text,
        &ScanOptions {
            args: &t.args,
            target: t.target.as_deref(),
            named_contexts: &named,
            platform: platform.as_deref(),
        },
    );
    for r in scan.base_refs {
        let Some(c) = reference::canonical(&r) else {
            continue;
        };
        // Targets with the same build count once, as the first of them.
        let mut owners: Vec<(String, String)> = Vec::new();
        for (owner, tag) in tags.get(&c).into_iter().flatten() {
            let owner = same.get(owner).unwrap_or(owner);
            if owner != name
                && same.get(name) != Some(owner)
                && !owners.iter().any(|(o, _)| o == owner)
            {
                owners.push((owner.clone(), tag.clone()));
            }
        }
        match owners.as_slice() {
            [] => {}
            [(owner, tag)] => {
                edges.insert(Edge {
                    dep: owner.clone(),
                    via: Via::BaseImage {
                        context_key: familiar(&r),
                        reference: r.clone(),
                        tag: tag.clone(),
                    },
                });
            }
            many => {
                return Err(GraphError::AmbiguousBase {
                    target: name.to_string(),
                    reference: r.clone(),
                    candidates: many.iter().map(|(n, _)| n.clone()).collect(),
                })
            }
        }
    }
    Ok(edges.into_iter().collect())
}

/// Kahn's algorithm with a sorted ready set, so equal inputs give equal orders. On a cycle,
/// a depth-first search names it.
fn topo_order(deps: &BTreeMap<String, Vec<Edge>>) -> Result<Vec<String>, GraphError> {
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (n, edges) in deps {
        let ds: BTreeSet<&str> = edges.iter().map(|e| e.dep.as_str()).collect();
        waiting.insert(n, ds.len());
        for d in ds {
            dependents.entry(d).or_default().insert(n);
        }
    }
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(n) = ready.pop_first() {
        order.push(n.to_string());
        for d in dependents.get(n).into_iter().flatten() {
            if let Some(c) = waiting.get_mut(d) {
                *c -= 1;
                if *c == 0 {
                    ready.insert(d);
                }
            }
        }
    }
    if order.len() == deps.len() {
        return Ok(order);
    }
    Err(find_cycle(deps))
}

fn find_cycle(deps: &BTreeMap<String, Vec<Edge>>) -> GraphError {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    fn visit<'a>(
        n: &'a str,
        deps: &'a BTreeMap<String, Vec<Edge>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<(&'a str, Option<&'a Edge>)>,
    ) -> Option<Vec<(&'a str, Option<&'a Edge>)>> {
        marks.insert(n, Mark::Active);
        for e in deps.get(n).into_iter().flatten() {
            match marks.get(e.dep.as_str()) {
                Some(Mark::Done) => continue,
                Some(Mark::Active) => {
                    let start = stack.iter().position(|(s, _)| *s == e.dep)?;
                    let mut cycle = stack[start..].to_vec();
                    cycle.push((n, Some(e)));
                    return Some(cycle);
                }
                None => {
                    stack.push((n, Some(e)));
                    if let Some(c) = visit(&e.dep, deps, marks, stack) {
                        return Some(c);
                    }
                    stack.pop();
                }
            }
        }
        marks.insert(n, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in deps.keys() {
        if marks.contains_key(n.as_str()) {
            continue;
        }
        let mut stack = Vec::new();
        if let Some(hops) = visit(n, deps, &mut marks, &mut stack) {
            let mut path: Vec<String> = hops.iter().map(|(s, _)| s.to_string()).collect();
            if let Some((_, Some(e))) = hops.last() {
                path.push(e.dep.clone());
            }
            let reasons = hops
                .iter()
                .filter_map(|(from, e)| {
                    let e = (*e)?;
                    Some(match &e.via {
                        Via::DependsOn => format!("{from} -> {}: depends_on", e.dep),
                        Via::NamedContext { name } => {
                            format!(
                                "{from} -> {}: contexts.{name} = \"target:{}\"",
                                e.dep, e.dep
                            )
                        }
                        Via::BaseImage { reference, .. } => {
                            format!("{from} -> {}: its Dockerfile reads {reference}", e.dep)
                        }
                    })
                })
                .collect();
            return GraphError::Cycle { path, reasons };
        }
    }
    // Unreachable when called after Kahn's algorithm stalled; keep a truthful message anyway.
    GraphError::Cycle {
        path: deps.keys().cloned().collect(),
        reasons: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
