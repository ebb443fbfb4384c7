//! `bake --set TARGET.KEY=VALUE` and the flags that stand for it (`--push`, `--load`,
//! `--no-cache`, `--pull`, `--sbom`, `--provenance`), applied to a loaded [`Project`] after
//! every project file and before planning, so fingerprints, `plan` and `bake --print` all see
//! them; and `bake --allow`, the privileges the user grants to the targets.
//!
//! The meanings are `docker buildx bake`'s (buildx `commands/bake.go` and `bake/bake.go`:
//! `newOverrides`, `Target.AddOverrides`, `setPushOverride`, `setLoadOverride`,
//! `bake/entitlements.go`, v0.29):
//!
//! - `TARGET` is a target name or a pattern with `*`, `?` and `[…]` (Go's `path.Match`),
//!   matched against target names — not groups; a target named exactly like the pattern is
//!   the only match. No match is an error.
//! - Map keys take a name: `args.NAME`, `labels.NAME`, `contexts.NAME` (an empty value removes
//!   the context), `extra-hosts.HOST` (IP, or several comma-separated). `args.NAME` without
//!   `=VALUE` takes the value from the environment and does nothing when it is unset.
//! - Single values: `context`, `dockerfile` (relative to the target's context), `target`,
//!   `network`, `shm-size`, and the booleans `no-cache`, `pull`, `push`, `load` (Go's
//!   `strconv.ParseBool` spellings).
//! - Lists: `tags`, `platform`, `output`, `cache-from`, `cache-to`, `secrets`, `ssh`,
//!   `no-cache-filter`, `ulimits`. All `--set`s of one key for one target make one list, which
//!   replaces the target's; with `KEY+=VALUE` it is appended instead (the last `--set` of the
//!   key decides which, as in buildx). Empty entries are dropped, so `--set '*.cache-to='`
//!   clears a list. `attest` (one entry per type, a later one replacing an earlier one),
//!   `annotations` and `entitlements` are always added to.
//! - `push=true` keeps or turns on pushing: `image` outputs get `push=true`, and a target with
//!   no outputs or only `docker` ones gets an `image,push=true` output; a target that writes
//!   only elsewhere (`local`, `tar`, …) is left alone. `push=false` removes `registry` outputs
//!   and sets `push=false` on `image` ones. `load=true` adds a `docker` output (load into the
//!   Docker Engine) unless one is there or the target writes only elsewhere; `load=false`
//!   changes nothing. In the project model a plain `image,push=true` / `registry` output is the
//!   target's `push` and a plain `docker` output its `load` (as the bake-file loader reads
//!   them), so re-tagging, the registry ledger and the engine checks keep working.
//! - Relative paths in values (`context`, `contexts.NAME`, `dest=`, `src=`, ssh sockets) start
//!   at the current directory, as buildx's do.
//! - `entitlements` given with `--set` are also granted, as with `--allow`.
//!
//! Where bk-build differs, on purpose:
//! - `network` is a single value (buildx v0.29 lists it with the list keys and then reads no
//!   value, printing `"network": ""`); `host` also asks for `network.host`. Likewise
//!   `ulimits` and `no-cache-filter` are lists (buildx v0.29 reads them as single values and
//!   then takes the empty list).
//! - buildx applies one target's overrides in random (Go map) order; bk-build applies
//!   `context` before `dockerfile`, and `output` before `push`/`load`, so `--set
//!   '*.output=type=local,dest=out' --push` always means the same.
//! - A `dockerfile` override replaces an inline Dockerfile (`dockerfile_inline`); buildx keeps
//!   building the inline one.
//! - A `context` override moves a Dockerfile that was inside the old context to the same place
//!   in the new one (in buildx the Dockerfile is always relative to the context).
//! - `call` other than `build` is refused until the build path supports it (see [`NOT_YET`]).
//! - An overridden inherited parent does not reach its children: by the time overrides apply,
//!   bake-file `inherits` are already merged (buildx overrides a parent before merging it).
//!
//! Values are checked with the same parsers as project files ([`crate::options`]); every error
//! names the `--set` argument, or the flag it stands for.

use std::collections::BTreeSet;
use std::path::Path;

use super::{normalize, suggest, OptionList, Project, Target};
use crate::options::{self, ContextSource};

/// Who adds what [`apply`] refuses today (attestation defaults, `--call`, remote contexts), as
/// error messages say it: users read them, not our issue tracker.
pub const NOT_YET: &str = "a planned release";

/// One override: the `TARGET.KEY=VALUE` text, and how the user gave it (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// What the user typed: `--set app.args.X=1`, or `--push (--set *.push=true)`.
    pub shown: String,
    pub text: String,
}

impl Override {
    /// An override given as `--set TEXT`.
    pub fn set(text: &str) -> Override {
        Override {
            shown: format!("--set {text}"),
            text: text.to_string(),
        }
    }

    /// An override a flag stands for, e.g. `--push` for `*.push=true`.
    pub fn shorthand(flag: &str, text: &str) -> Override {
        Override {
            shown: format!("{flag} (--set {text})"),
            text: text.to_string(),
        }
    }
}

/// A malformed or impossible override; says which argument, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown}: {problem}\n  fix: {fix}")]
pub struct OverrideError {
    pub shown: String,
    pub problem: String,
    pub fix: String,
}

fn fail(o: &Override, problem: impl Into<String>, fix: impl Into<String>) -> OverrideError {
    OverrideError {
        shown: o.shown.clone(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The shape of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `KEY=VALUE`, the last one wins.
    Single,
    /// `KEY.NAME=VALUE`.
    Map,
    /// `KEY=VALUE` repeated into a list.
    List,
}

/// The keys `--set` accepts (buildx's names), with their shapes.
const KEYS: &[(&str, Shape)] = &[
    ("args", Shape::Map),
    ("labels", Shape::Map),
    ("contexts", Shape::Map),
    ("extra-hosts", Shape::Map),
    ("context", Shape::Single),
    ("dockerfile", Shape::Single),
    ("target", Shape::Single),
    ("network", Shape::Single),
    ("shm-size", Shape::Single),
    ("no-cache", Shape::Single),
    ("pull", Shape::Single),
    ("push", Shape::Single),
    ("load", Shape::Single),
    ("call", Shape::Single),
    ("tags", Shape::List),
    ("platform", Shape::List),
    ("output", Shape::List),
    ("cache-from", Shape::List),
    ("cache-to", Shape::List),
    ("secrets", Shape::List),
    ("ssh", Shape::List),
    ("attest", Shape::List),
    ("entitlements", Shape::List),
    ("annotations", Shape::List),
    ("no-cache-filter", Shape::List),
    ("ulimits", Shape::List),
];

/// One parsed `TARGET.KEY[.NAME][+]=VALUE`.
#[derive(Debug)]
struct Parsed<'a> {
    by: &'a Override,
    pattern: String,
    key: &'static str,
    shape: Shape,
    name: Option<String>,
    append: bool,
    /// `None` only for `args.NAME` without a value.
    value: Option<String>,
}

fn parse<'a>(o: &'a Override) -> Result<Parsed<'a>, OverrideError> {
    const FIX: &str = "write it as TARGET.KEY=VALUE, e.g. --set 'app.args.VERSION=1.2' or --set '*.platform=linux/arm64'";
    let (lhs, value) = match o.text.split_once('=') {
        Some((l, v)) => (l, Some(v.to_string())),
        None => (o.text.as_str(), None),
    };
    let append = lhs.ends_with('+');
    let lhs = lhs.strip_suffix('+').unwrap_or(lhs);
    let parts: Vec<&str> = lhs.splitn(3, '.').collect();
    if parts.len() < 2 || parts[0].is_empty() {
        return Err(fail(o, format!("{lhs:?} is not TARGET.KEY"), FIX));
    }
    let known = || {
        KEYS.iter()
            .map(|(k, s)| match s {
                Shape::Map => format!("{k}.NAME"),
                _ => k.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some((key, shape)) = KEYS.iter().find(|(k, _)| *k == parts[1]).copied() else {
        let hint = suggest(parts[1], KEYS.iter().map(|(k, _)| *k))
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        return Err(fail(
            o,
            format!("unknown key `{}`", parts[1]),
            format!("{hint}the keys are {}", known()),
        ));
    };
    let name = parts.get(2).map(|s| s.to_string());
    match (shape, name.as_deref()) {
        (Shape::Map, None | Some("")) => {
            return Err(fail(
                o,
                format!("`{key}` needs a name"),
                format!("write {}.{key}.NAME=VALUE", parts[0]),
            ))
        }
        (Shape::Single | Shape::List, Some(n)) => {
            return Err(fail(
                o,
                format!("`{key}` takes no name (`.{n}`)"),
                format!("write {}.{key}=VALUE", parts[0]),
            ))
        }
        _ => {}
    }
    if value.is_none() && key != "args" {
        return Err(fail(o, "no value", FIX));
    }
    if append && shape != Shape::List {
        return Err(fail(
            o,
            format!("`+=` appends to lists, and `{key}` is not one"),
            format!("write {lhs}=VALUE"),
        ));
    }
    Ok(Parsed {
        by: o,
        pattern: parts[0].to_string(),
        key,
        shape,
        name,
        append,
        value,
    })
}

/// Go's `path.Match` (what buildx matches `--set` target patterns and requested names with):
/// `*` any run of characters but `/`, `?` one such character, `[…]` a class (`^` negates,
/// `a-z` ranges), `\` escapes. On Unix it is `filepath.Match`, which [`crate::fs`] already
/// implements for `.dockerignore`. `Err` for a malformed pattern.
pub fn glob_match(pattern: &str, name: &str) -> Result<bool, String> {
    crate::fs::pattern::go_match(pattern, name).map_err(|_| {
        "a malformed pattern (an unclosed [, a \\ at the end, or a bad range)".to_string()
    })
}

/// The targets `pattern` names (buildx `expandTargets`).
fn expand(project: &Project, p: &Parsed) -> Result<Vec<String>, OverrideError> {
    if project.targets.contains_key(&p.pattern) {
        return Ok(vec![p.pattern.clone()]);
    }
    let mut out = Vec::new();
    for name in project.targets.keys() {
        match glob_match(&p.pattern, name) {
            Ok(true) => out.push(name.clone()),
            Ok(false) => {}
            Err(why) => {
                return Err(fail(
                    p.by,
                    format!("target pattern {:?} is malformed: {why}", p.pattern),
                    "use a target name, or a pattern with *, ? and [...] such as 'app*'",
                ))
            }
        }
    }
    if out.is_empty() {
        let names: Vec<&str> = project.targets.keys().map(String::as_str).collect();
        let hint = suggest(&p.pattern, names.iter().copied())
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        let groups = if project.groups.contains_key(&p.pattern) {
            format!(" (`{}` is a group; --set applies to targets)", p.pattern)
        } else {
            String::new()
        };
        return Err(fail(
            p.by,
            format!("no target matches {:?}{groups}", p.pattern),
            format!(
                "{hint}the targets are: {}",
                if names.is_empty() {
                    "(none)".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ));
    }
    Ok(out)
}

/// Everything given for one key of one target.
struct Slot<'a> {
    key: &'static str,
    name: Option<String>,
    /// The last `--set` of this key (it decides single values and `+=`).
    last: &'a Override,
    value: String,
    append: bool,
    /// List values, each with the `--set` that gave it.
    list: Vec<(String, &'a Override)>,
}

impl Slot<'_> {
    /// Application order within a target (stable otherwise): `context` before `dockerfile`
    /// (a relative Dockerfile is relative to the new context), `output` before `push`/`load`.
    fn rank(&self) -> u8 {
        match self.key {
            "context" => 0,
            "dockerfile" => 1,
            "output" => 3,
            "push" | "load" => 4,
            _ => 2,
        }
    }
}

/// Applies `overrides` to `project` in order, as `docker buildx bake --set` does (see the
/// module docs). `cwd` is where relative paths in values start; `env` answers `args.NAME`
/// without a value. On error, `project` may be partly changed: callers stop there.
pub fn apply(
    project: &mut Project,
    overrides: &[Override],
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), OverrideError> {
    // Gather per target, in the order given.
    let mut per_target: std::collections::BTreeMap<String, Vec<Slot>> = Default::default();
    for o in overrides {
        let p = parse(o)?;
        let targets = expand(project, &p)?;
        let value = match &p.value {
            Some(v) => v.clone(),
            // `args.NAME` alone: from the environment, or no override at all.
            None => match env(p.name.as_deref().unwrap_or_default()) {
                Some(v) => v,
                None => continue,
            },
        };
        for target in targets {
            let slots = per_target.entry(target).or_default();
            let pos = slots
                .iter()
                .position(|s| s.key == p.key && s.name == p.name);
            let slot = match pos {
                Some(i) => &mut slots[i],
                None => {
                    slots.push(Slot {
                        key: p.key,
                        name: p.name.clone(),
                        last: o,
                        value: String::new(),
                        append: false,
                        list: Vec::new(),
                    });
                    let n = slots.len() - 1;
                    &mut slots[n]
                }
            };
            slot.last = o;
            if p.shape == Shape::List {
                slot.append = p.append;
                slot.list.push((value.clone(), o));
            } else {
                slot.value = value.clone();
            }
        }
    }
    let names: BTreeSet<String> = project.targets.keys().cloned().collect();
    for (target, mut slots) in per_target {
        slots.sort_by_key(Slot::rank);
        let dockerfile_set = slots.iter().any(|s| s.key == "dockerfile");
        let Some(t) = project.targets.get_mut(&target) else {
            continue;
        };
        for s in &slots {
            apply_slot(t, s, cwd, &names, dockerfile_set)?;
        }
    }
    Ok(())
}

/// Checks list entries with the project-file parser for `list` (relative paths made absolute
/// against `cwd`), dropping empty ones.
fn checked(s: &Slot, list: Option<OptionList>, cwd: &Path) -> Result<Vec<String>, OverrideError> {
    let mut out = Vec::new();
    for (v, by) in &s.list {
        if v.is_empty() {
            continue;
        }
        let v = match list {
            Some(OptionList::Outputs) => OptionList::output(v, cwd)
                .map_err(|e| option_fail(by, s.key, e))?
                .to_string(),
            _ => v.clone(),
        };
        out.push(v);
    }
    Ok(out)
}

fn option_fail(by: &Override, key: &str, e: options::OptionError) -> OverrideError {
    fail(
        by,
        format!("{:?} is not a valid {key} value: {}", e.input, e.reason),
        format!("write it like {:?}", e.example),
    )
}

/// Replaces `current` with `new`, or appends `new` to it, without duplicates or empty
/// entries (buildx normalizes its lists the same way).
fn merge_list<T: PartialEq>(current: &mut Vec<T>, new: Vec<T>, append: bool) {
    if !append {
        current.clear();
    }
    for v in new {
        if !current.contains(&v) {
            current.push(v);
        }
    }
}

/// Parses a slot's non-empty list entries with `parse`, errors placed at the override that
/// gave the entry.
fn parsed<T>(
    s: &Slot,
    parse: impl Fn(&str) -> Result<T, options::OptionError>,
) -> Result<Vec<T>, OverrideError> {
    s.list
        .iter()
        .filter(|(v, _)| !v.is_empty())
        .map(|(v, by)| parse(v).map_err(|e| option_fail(by, s.key, e)))
        .collect()
}

/// Go's `strconv.ParseBool`, for the boolean keys.
fn boolean(s: &Slot) -> Result<bool, OverrideError> {
    options::parse_bool(&s.value).ok_or_else(|| {
        fail(
            s.last,
            format!("{:?} is not a boolean for `{}`", s.value, s.key),
            format!("write {}=true or {}=false", s.key, s.key),
        )
    })
}

fn apply_slot(
    t: &mut Target,
    s: &Slot,
    cwd: &Path,
    targets: &BTreeSet<String>,
    dockerfile_set: bool,
) -> Result<(), OverrideError> {
    let by = s.last;
    let v = s.value.as_str();
    match s.key {
        "context" => {
            if v.is_empty() {
                return Err(fail(
                    by,
                    "empty context",
                    "give the build context directory",
                ));
            }
            if options::is_remote_url(v) {
                return Err(fail(
                    by,
                    format!(
                        "remote build contexts ({v}) are not supported yet ({NOT_YET} adds them)"
                    ),
                    "check the repository out and give its directory",
                ));
            }
            let dir = normalize(&cwd.join(v));
            if !dir.is_dir() {
                return Err(fail(
                    by,
                    format!("context directory {} does not exist", dir.display()),
                    format!(
                        "relative paths start at the current directory ({})",
                        cwd.display()
                    ),
                ));
            }
            // buildx reads the Dockerfile relative to the context: one that was inside the old
            // context moves along.
            if !dockerfile_set && t.dockerfile_inline.is_none() {
                if let Ok(rel) = t.dockerfile.strip_prefix(&t.context) {
                    t.dockerfile = dir.join(rel);
                }
            }
            t.context = dir;
        }
        "dockerfile" => {
            if v.is_empty() || v == "-" {
                return Err(fail(
                    by,
                    format!("{v:?} is not a Dockerfile path"),
                    "give the Dockerfile's path, relative to the target's context",
                ));
            }
            let file = normalize(&t.context.join(v));
            if !file.is_file() {
                return Err(fail(
                    by,
                    format!("Dockerfile {} does not exist", file.display()),
                    format!(
                        "a relative dockerfile is relative to the target's context ({})",
                        t.context.display()
                    ),
                ));
            }
            t.dockerfile = file;
            t.dockerfile_inline = None;
        }
        "args" => {
            t.args
                .insert(s.name.clone().unwrap_or_default(), v.to_string());
        }
        "labels" => {
            t.labels
                .insert(s.name.clone().unwrap_or_default(), v.to_string());
        }
        "contexts" => {
            let name = s.name.clone().unwrap_or_default();
            if v.is_empty() {
                t.contexts.remove(&name);
                return Ok(());
            }
            let src =
                options::parse_context_source(v).map_err(|e| option_fail(by, "contexts", e))?;
            let src = match src {
                ContextSource::Local(p) => {
                    let dir = normalize(&cwd.join(p));
                    if !dir.is_dir() {
                        return Err(fail(
                            by,
                            format!("named context directory {} does not exist", dir.display()),
                            format!(
                                "relative paths start at the current directory ({}); or use docker-image://REF or target:NAME",
                                cwd.display()
                            ),
                        ));
                    }
                    ContextSource::Local(dir)
                }
                ContextSource::OciLayout(mut l) => {
                    l.path = normalize(&cwd.join(&l.path));
                    ContextSource::OciLayout(l)
                }
                ContextSource::Target(other) => {
                    if other == t.name {
                        return Err(fail(
                            by,
                            "a target cannot use itself as a context",
                            "point it at another target, a directory or docker-image://REF",
                        ));
                    }
                    if !targets.contains(&other) {
                        let hint = suggest(&other, targets.iter().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`? "))
                            .unwrap_or_default();
                        return Err(fail(
                            by,
                            format!("`{other}` is not a target of this project"),
                            format!("{hint}name one of its targets"),
                        ));
                    }
                    ContextSource::Target(other)
                }
                other => other,
            };
            t.contexts.insert(name, src);
        }
        "extra-hosts" => {
            let host = s.name.clone().unwrap_or_default();
            t.extra_hosts.retain(|h| h.host != host);
            for ip in v.split(',').map(str::trim).filter(|ip| !ip.is_empty()) {
                let entry = options::parse_add_host(&format!("{host}={ip}"))
                    .map_err(|e| option_fail(by, "extra-hosts", e))?;
                t.extra_hosts.push(entry);
            }
        }
        "target" => t.target = (!v.is_empty()).then(|| v.to_string()),
        "network" => {
            let n = options::parse_network(v).map_err(|e| option_fail(by, "network", e))?;
            let was_host = t.network == Some(options::Network::Host);
            t.network = (!v.is_empty()).then_some(n);
            if n == options::Network::Host {
                if !t.entitlements.iter().any(|e| e == "network.host") {
                    t.entitlements.push("network.host".into());
                }
            } else if was_host {
                // The entitlement came with the host network.
                t.entitlements.retain(|e| e != "network.host");
            }
        }
        "shm-size" => {
            t.shm_size =
                Some(options::parse_shm_size(v).map_err(|e| option_fail(by, "shm-size", e))?);
        }
        "no-cache" => t.no_cache = boolean(s)?,
        "pull" => t.pull = boolean(s)?,
        "push" => set_push(t, boolean(s)?).map_err(|e| option_fail(by, "push", e))?,
        "load" => {
            if boolean(s)? {
                set_load(t).map_err(|e| option_fail(by, "load", e))?;
            }
        }
        "call" => {
            if let Some(name) = call_function(v).map_err(|why| fail(by, why, CALL_FIX))? {
                return Err(call_refused(by, &name));
            }
        }
        "tags" => merge_list(&mut t.tags, checked(s, None, cwd)?, s.append),
        "platform" => merge_list(&mut t.platforms, parsed(s, OptionList::platform)?, s.append),
        "cache-from" => merge_list(
            &mut t.cache_from,
            parsed(s, |v| OptionList::CacheFrom.cache(v, cwd))?,
            s.append,
        ),
        "cache-to" => merge_list(
            &mut t.cache_to,
            parsed(s, |v| OptionList::CacheTo.cache(v, cwd))?,
            s.append,
        ),
        "secrets" => merge_list(
            &mut t.secrets,
            parsed(s, |v| OptionList::secret(v, cwd))?,
            s.append,
        ),
        "ssh" => merge_list(
            &mut t.ssh,
            parsed(s, |v| OptionList::ssh(v, cwd))?,
            s.append,
        ),
        "no-cache-filter" => merge_list(&mut t.no_cache_filter, checked(s, None, cwd)?, s.append),
        "ulimits" => merge_list(&mut t.ulimits, parsed(s, options::parse_ulimit)?, s.append),
        "entitlements" => merge_list(&mut t.entitlements, checked(s, None, cwd)?, true),
        "attest" => {
            for (a, by) in &s.list {
                if a.is_empty() {
                    continue;
                }
                let spec = options::parse_attest(a).map_err(|e| option_fail(by, "attest", e))?;
                match t.attest.iter().position(|x| x.kind == spec.kind) {
                    Some(i) => t.attest[i] = spec,
                    None => t.attest.push(spec),
                }
            }
        }
        // Always added to, as in buildx.
        "annotations" => merge_list(
            &mut t.annotations,
            parsed(s, |v| options::Spelled::parse(v, options::parse_annotation))?,
            true,
        ),
        "output" => {
            let new = checked(s, Some(OptionList::Outputs), cwd)?;
            let mut list = if s.append { exports(t) } else { Vec::new() };
            merge_list(&mut list, new, true);
            set_exports(t, list).map_err(|e| option_fail(by, "output", e))?;
        }
        other => {
            // KEYS and this match list the same keys.
            return Err(fail(
                by,
                format!("internal error: key `{other}` has no handler"),
                "report this",
            ));
        }
    }
    Ok(())
}

/// What `--call` and the `call` key accept (buildx `ParseCallFunc`): a function name with
/// optional `format=` and `ignorestatus=` fields. `None` for `build` (the default).
pub fn call_function(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let fields = options::csv_fields(v).map_err(|why| format!("{v:?}: {why}"))?;
    let mut name: Option<String> = None;
    for f in fields {
        match f.split_once('=') {
            Some(("format", _)) => {}
            Some(("ignorestatus", b)) => {
                if options::parse_bool(b).is_none() {
                    return Err(format!("ignorestatus={b:?} is not a boolean"));
                }
            }
            Some(_) => return Err(format!("unknown field {f:?}")),
            None if name.is_some() => return Err(format!("{v:?} names two functions")),
            None => name = Some(f),
        }
    }
    Ok(match name.as_deref() {
        None | Some("build") => None,
        Some("lint") => Some("check".to_string()),
        Some(n @ ("check" | "outline" | "targets")) => Some(n.to_string()),
        // buildx: `invalid call ...` for anything its frontend does not answer.
        Some(n) => return Err(format!("{n:?} is not a method bake can call")),
    })
}

const CALL_FIX: &str = "use --call build (the default), check, outline or targets";

/// The error for a `--set TARGET.call=` other than `build`: one target's method cannot be
/// changed yet; `--call` changes every target's.
pub fn call_refused(by: &Override, name: &str) -> OverrideError {
    fail(
        by,
        format!(
            "setting one target's method (call = {name}) is not supported yet ({NOT_YET} adds it); `bake --call {name}` evaluates every requested target"
        ),
        "use bake --call (or --check) instead of --set TARGET.call",
    )
}

// ---------------------------------------------------------------------------------------------
// Outputs, push and load: buildx's output list <-> the project model
// ---------------------------------------------------------------------------------------------

const PUSH_OUTPUT: &str = "type=image,push=true";
const LOAD_OUTPUT: &str = "type=docker";

/// A target's outputs as buildx has them: its own, plus its `push` and `load` as outputs.
fn exports(t: &Target) -> Vec<String> {
    let mut v: Vec<String> = t.outputs.iter().map(ToString::to_string).collect();
    if t.push {
        v.push(PUSH_OUTPUT.into());
    }
    if t.load {
        v.push(LOAD_OUTPUT.into());
    }
    v
}

/// Stores a buildx output list in the model: when every entry is a plain push or load, as the
/// target's `push`/`load`; otherwise as outputs.
///
/// # Errors
/// An entry that is not a valid output (entries come checked; a rewritten one is parsed again).
fn set_exports(t: &mut Target, list: Vec<String>) -> Result<(), options::OptionError> {
    let plain = |raw: &String| -> Option<bool> {
        let spec = options::parse_output(raw).ok()?;
        match spec.kind {
            options::OutputKind::Image if spec.push() && spec.attrs.keys().all(|k| k == "push") => {
                Some(true)
            }
            options::OutputKind::Docker if spec.dest.is_none() && spec.attrs.is_empty() => {
                Some(false)
            }
            _ => None,
        }
    };
    let kinds: Vec<Option<bool>> = list.iter().map(plain).collect();
    if kinds.iter().all(Option::is_some) {
        t.push = kinds.contains(&Some(true));
        t.load = kinds.contains(&Some(false));
        t.outputs.clear();
    } else {
        t.push = false;
        t.load = false;
        t.outputs = list
            .into_iter()
            .map(|raw| options::Spelled::parse(raw, options::parse_output))
            .collect::<Result<_, _>>()?;
    }
    Ok(())
}

/// The `type=` of an output as written (`registry` stays `registry`); the `-o DIR` / `-o -`
/// shorthands are `local` / `tar`.
fn output_type(raw: &str) -> String {
    if !raw.contains('=') && !raw.contains(',') {
        return if raw == "-" { "tar" } else { "local" }.into();
    }
    options::csv_attrs("--output", raw, "")
        .ok()
        .and_then(|fields| fields.into_iter().find(|(k, _)| k == "type"))
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// `raw` with `key=value` set (replacing an earlier value).
fn with_attr(raw: &str, key: &str, value: &str) -> String {
    let Ok(mut fields) = options::csv_attrs("--output", raw, "") else {
        return raw.to_string();
    };
    match fields.iter_mut().find(|(k, _)| k == key) {
        Some(f) => f.1 = value.to_string(),
        None => fields.push((key.to_string(), value.to_string())),
    }
    options::csv_record(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// buildx `setPushOverride`.
fn set_push(t: &mut Target, push: bool) -> Result<(), options::OptionError> {
    let mut list = exports(t);
    if push {
        let only_docker = list.iter().all(|o| output_type(o) == "docker");
        for o in list.iter_mut() {
            if output_type(o) == "image" {
                *o = with_attr(o, "push", "true");
            }
        }
        if only_docker {
            list.push(PUSH_OUTPUT.into());
        }
    } else {
        // The model's own push (a bare `image,push=true`) goes like a registry output: what
        // is left is the target's default, which on a Docker Engine is buildx's meaning of
        // an `image,push=false` output there (the image is kept in the engine).
        list.retain(|o| output_type(o) != "registry" && o != PUSH_OUTPUT);
        for o in list.iter_mut() {
            if output_type(o) == "image" {
                *o = with_attr(o, "push", "false");
            }
        }
    }
    set_exports(t, list)
}

/// buildx `setLoadOverride` for `load=true`.
fn set_load(t: &mut Target) -> Result<(), options::OptionError> {
    let mut list = exports(t);
    for o in &list {
        match output_type(o).as_str() {
            "docker" if !options::parse_output(o).is_ok_and(|s| s.dest.is_some()) => return Ok(()),
            "docker" | "image" | "registry" | "oci" => {}
            // Written only elsewhere (local, tar, cacheonly): left alone.
            _ => return Ok(()),
        }
    }
    list.push(LOAD_OUTPUT.into());
    set_exports(t, list)
}

// ---------------------------------------------------------------------------------------------
// --allow
// ---------------------------------------------------------------------------------------------

/// Privileges a target can ask for that the user must grant with `--allow` (buildx
/// `EntitlementConf.check`): `network.host`, `security.insecure`, and `device` / `device=NAME`.
fn needs_grant(e: &str) -> bool {
    e == "network.host" || e == "security.insecure" || e == "device" || e.starts_with("device=")
}

/// Checks `--allow` values as buildx's `ParseEntitlements` does and returns them.
/// `network.host`, `security.insecure`, `device[=NAME]` grant what targets ask for; `ssh`,
/// `fs[.read|.write]=PATH`, `image[.push|.load]=REF` grant what bk-build never withholds (it
/// does not restrict file system, agent or image access), so they hold as given.
pub fn parse_allow(values: &[String]) -> Result<Vec<String>, OverrideError> {
    let mut out = Vec::new();
    for v in values {
        let key = v.split_once('=').map_or(v.as_str(), |(k, _)| k);
        // bake's own grants; the rest are BuildKit's, checked as `build --allow` checks them.
        let bake_only = v == "ssh"
            || matches!(
                key,
                "fs" | "fs.read" | "fs.write" | "image" | "image.push" | "image.load"
            ) && v.contains('=');
        if !bake_only {
            options::parse_entitlement(v).map_err(|e| OverrideError {
                shown: format!("--allow {v}"),
                problem: e.reason,
                fix: "use network.host, security.insecure, device[=NAME], ssh, fs=PATH, fs.read=PATH, fs.write=PATH, image=REF, image.push=REF or image.load=REF".into(),
            })?;
        }
        out.push(v.clone());
    }
    Ok(out)
}

/// Entitlements the `entitlements` key of `overrides` grants (buildx grants them as with
/// `--allow`), whichever targets they name.
pub fn granted_by(overrides: &[Override]) -> Vec<String> {
    overrides
        .iter()
        .filter_map(|o| parse(o).ok())
        .filter(|p| p.key == "entitlements")
        .filter_map(|p| p.value)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The privileges `targets` ask for that `granted` does not cover, as `(target,
/// entitlement)`: buildx bake refuses to build then (outside a terminal; it asks on one).
pub fn ungranted(
    project: &Project,
    targets: &[String],
    granted: &[String],
) -> Vec<(String, String)> {
    let covers = |e: &str| {
        granted
            .iter()
            .any(|g| g == e || (g == "device" && (e == "device" || e.starts_with("device="))))
    };
    let mut out = Vec::new();
    for name in targets {
        let Some(t) = project.targets.get(name) else {
            continue;
        };
        for e in &t.entitlements {
            if needs_grant(e) && !covers(e) {
                out.push((name.clone(), e.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
