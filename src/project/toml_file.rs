//! bk-build.toml: parsing with source positions, merging several files (later keys win,
//! tables merge key by key), and resolving targets.
//!
//! Every value remembers the file and line that set it, so after merging an error still points
//! at the right place, and a relative path is resolved against the directory of the file that
//! wrote it, not the first file's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::process::Command;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::interp::{interpolate, Dialect, InterpError};
use super::{
    invalid, normalize, option_invalid, suggest, valid_name, ContextSource, OptionList, Project,
    ProjectError, SourceFile, Target,
};

const TOP_KEYS: &[&str] = &["vars", "defaults", "target", "group", "builders"];
const BUILDER_KEYS: &[&str] = &[
    "addr",
    "tlscacert",
    "tlscert",
    "tlskey",
    "tlsservername",
    "tlsdir",
    "jobs",
    "platforms",
];
const TARGET_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "target",
    "args",
    "labels",
    "contexts",
    "tags",
    "platforms",
    "secrets",
    "ssh",
    "cache_from",
    "cache_to",
    "outputs",
    "push",
    "load",
    "no_cache",
    "pull",
    "depends_on",
];
/// Keys that only make sense per target: a shared context or a shared dependency list would
/// make every target build the same thing or depend on itself.
const NOT_IN_DEFAULTS: &[&str] = &["context", "depends_on"];
const GROUP_KEYS: &[&str] = &["targets"];
const GIT_VARS: &[&str] = &["GIT_SHA", "GIT_SHORT_SHA", "GIT_BRANCH", "GIT_BRANCH_SLUG"];

// ---------------------------------------------------------------------------------------------
// Parsing: a TOML document into a tree of values that keep (file, line)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Val {
    kind: Kind,
    file: usize,
    line: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Val>),
    Table(BTreeMap<String, Val>),
}

impl Kind {
    fn type_name(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a date",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

/// The `toml` crate reports positions only through its `Spanned<T>` protocol, and `toml::Value`
/// has none, so the document is read into this mirror type whose nodes carry their start.
enum RawKind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Located>),
    Table(RawTable),
}

struct RawTable(Vec<(String, Located)>);

/// A value and, when the parser knows it, the byte offset where it starts. `toml::Spanned`
/// cannot be used directly: implicit tables (`target` in `[target.x]`) have no span and make it
/// fail, while this type then just has no position.
struct Located {
    start: Option<usize>,
    kind: RawKind,
}

// The field names of serde_spanned's private protocol, which toml's deserializer answers.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawKind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawKind, E> {
        Ok(RawKind::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawKind, E> {
        Ok(RawKind::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawKind, E> {
        i64::try_from(v)
            .map(RawKind::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawKind, E> {
        Ok(RawKind::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawKind, E> {
        Ok(RawKind::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawKind, E> {
        Ok(RawKind::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawKind, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Located>()? {
            items.push(v);
        }
        Ok(RawKind::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawKind, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            entries.push((k, map.next_value::<Located>()?));
        }
        Ok(RawKind::Table(RawTable(entries)))
    }
}

impl<'de> Deserialize<'de> for RawKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

impl<'de> Deserialize<'de> for RawTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_map(RawVisitor)? {
            RawKind::Table(t) => Ok(t),
            _ => Err(de::Error::custom("expected a table")),
        }
    }
}

struct LocatedVisitor;

impl<'de> Visitor<'de> for LocatedVisitor {
    type Value = Located;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Located, E> {
        Ok(Located {
            start: None,
            kind: RawKind::Bool(v),
        })
    }
    fn visit_i64<E>(self, v: i64) -> Result<Located, E> {
        Ok(Located {
            start: None,
            kind: RawKind::Int(v),
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Located, E> {
        RawVisitor
            .visit_u64(v)
            .map(|kind| Located { start: None, kind })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Located, E> {
        Ok(Located {
            start: None,
            kind: RawKind::Float(v),
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<Located, E> {
        Ok(Located {
            start: None,
            kind: RawKind::Str(v.to_string()),
        })
    }
    fn visit_string<E>(self, v: String) -> Result<Located, E> {
        Ok(Located {
            start: None,
            kind: RawKind::Str(v),
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Located, A::Error> {
        RawVisitor
            .visit_seq(seq)
            .map(|kind| Located { start: None, kind })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(Located {
                start: None,
                kind: RawKind::Table(RawTable(Vec::new())),
            });
        };
        if first != SPANNED_START {
            // An ordinary table without position.
            let mut entries = vec![(first, map.next_value::<Located>()?)];
            while let Some(k) = map.next_key::<String>()? {
                entries.push((k, map.next_value::<Located>()?));
            }
            return Ok(Located {
                start: None,
                kind: RawKind::Table(RawTable(entries)),
            });
        }
        let start: usize = map.next_value()?;
        let mut kind = None;
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                SPANNED_END => {
                    map.next_value::<usize>()?;
                }
                SPANNED_VALUE => kind = Some(map.next_value::<RawKind>()?),
                _ => return Err(de::Error::unknown_field(&k, SPANNED_FIELDS)),
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field(SPANNED_VALUE))?;
        Ok(Located {
            start: Some(start),
            kind,
        })
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, LocatedVisitor)
    }
}

/// The key toml uses to smuggle a datetime through serde.
const DATETIME_KEY: &str = "$__toml_private_datetime";

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Values without a position of their own (implicit tables) take their parent's line.
fn convert_table(
    t: RawTable,
    file: usize,
    text: &str,
    parent_line: usize,
) -> BTreeMap<String, Val> {
    t.0.into_iter()
        .map(|(k, v)| (k, convert(v, file, text, parent_line)))
        .collect()
}

fn convert(raw: Located, file: usize, text: &str, parent_line: usize) -> Val {
    let line = raw.start.map_or(parent_line, |s| line_of(text, s));
    let kind = match raw.kind {
        RawKind::Str(s) => Kind::Str(s),
        RawKind::Int(i) => Kind::Int(i),
        RawKind::Float(f) => Kind::Float(f),
        RawKind::Bool(b) => Kind::Bool(b),
        RawKind::Array(items) => Kind::Array(
            items
                .into_iter()
                .map(|v| convert(v, file, text, line))
                .collect(),
        ),
        RawKind::Table(t) if t.0.len() == 1 && t.0[0].0 == DATETIME_KEY => Kind::Datetime,
        RawKind::Table(t) => Kind::Table(convert_table(t, file, text, line)),
    };
    Val { kind, file, line }
}

fn parse(file: usize, src: &SourceFile) -> Result<BTreeMap<String, Val>, ProjectError> {
    let raw: RawTable = toml::from_str(&src.text).map_err(|e| {
        let line = e.span().map(|s| line_of(&src.text, s.start));
        invalid(
            src,
            line,
            "",
            format!("not valid TOML: {}", e.message().trim()),
            "correct the syntax on that line (strings need quotes; tables are written [name])",
        )
    })?;
    Ok(convert_table(raw, file, &src.text, 1))
}

/// Later files win key by key; tables merge recursively, anything else is replaced whole
/// (so a later `tags = [...]` replaces the list, a later `args.X` changes one entry).
fn merge_tables(base: &mut BTreeMap<String, Val>, over: BTreeMap<String, Val>) {
    for (k, v) in over {
        match base.get_mut(&k) {
            Some(existing) => merge(existing, v),
            None => {
                base.insert(k, v);
            }
        }
    }
}

fn merge(base: &mut Val, over: Val) {
    if let (Kind::Table(b), Kind::Table(_)) = (&mut base.kind, &over.kind) {
        if let Kind::Table(o) = over.kind {
            merge_tables(b, o);
        }
        return;
    }
    *base = over;
}

// ---------------------------------------------------------------------------------------------
// Variables
// ---------------------------------------------------------------------------------------------

enum VarError {
    /// Already a complete message (e.g. a problem inside another variable's definition).
    Project(ProjectError),
    /// A git built-in could not be computed; the caller knows which key used it.
    Git { var: String, reason: String },
}

struct Vars<'a> {
    files: &'a [SourceFile],
    env: &'a dyn Fn(&str) -> Option<String>,
    /// `[vars]` entries: name → (raw value, file, line).
    raw: BTreeMap<String, (String, usize, usize)>,
    resolved: HashMap<String, String>,
    /// Variables being expanded, to report `A -> B -> A`.
    stack: Vec<String>,
    git_root: PathBuf,
    git_cache: HashMap<String, Result<String, String>>,
}

impl Vars<'_> {
    fn get(&mut self, name: &str) -> Result<Option<String>, VarError> {
        if let Some(v) = (self.env)(name) {
            return Ok(Some(v));
        }
        if let Some(v) = self.resolved.get(name) {
            return Ok(Some(v.clone()));
        }
        if let Some((raw, file, line)) = self.raw.get(name).cloned() {
            if self.stack.last().map(String::as_str) == Some(name) {
                // `TAG = "${TAG:-dev}"`: inside its own definition a variable means "the
                // environment's value", which was already found unset above.
                return Ok(None);
            }
            if let Some(pos) = self.stack.iter().position(|n| n == name) {
                let mut cycle: Vec<&str> = self.stack[pos..].iter().map(String::as_str).collect();
                cycle.push(name);
                return Err(VarError::Project(invalid(
                    &self.files[file],
                    Some(line),
                    format!("vars.{name}"),
                    format!("variables refer to each other: {}", cycle.join(" -> ")),
                    "give one of them a plain value",
                )));
            }
            self.stack.push(name.to_string());
            let r = self.expand_raw(&raw);
            self.stack.pop();
            let v = match r {
                Ok(v) => v,
                // Reported at the key that (indirectly) needed git, not here.
                Err(InterpError::Lookup(e @ VarError::Git { .. })) => return Err(e),
                Err(e) => {
                    return Err(VarError::Project(self.describe(
                        e,
                        file,
                        Some(line),
                        &format!("vars.{name}"),
                    )))
                }
            };
            self.resolved.insert(name.to_string(), v.clone());
            return Ok(Some(v));
        }
        if GIT_VARS.contains(&name) {
            return self.git(name).map(Some).map_err(|reason| VarError::Git {
                var: name.to_string(),
                reason,
            });
        }
        Ok(None)
    }

    fn git(&mut self, name: &str) -> Result<String, String> {
        if let Some(r) = self.git_cache.get(name) {
            return r.clone();
        }
        let args: &[&str] = match name {
            "GIT_SHA" => &["rev-parse", "HEAD"],
            "GIT_SHORT_SHA" => &["rev-parse", "--short", "HEAD"],
            _ => &["rev-parse", "--abbrev-ref", "HEAD"],
        };
        let r = match Command::new("git")
            .arg("-C")
            .arg(&self.git_root)
            .args(args)
            .output()
        {
            Err(e) => Err(format!("cannot run git: {e}")),
            Ok(out) if !out.status.success() => {
                let msg = String::from_utf8_lossy(&out.stderr);
                Err(format!(
                    "git {} failed in {}: {}",
                    args.join(" "),
                    self.git_root.display(),
                    msg.lines().next().unwrap_or("").trim()
                ))
            }
            Ok(out) => {
                let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Ok(if name == "GIT_BRANCH_SLUG" {
                    slug(&v)
                } else {
                    v
                })
            }
        };
        self.git_cache.insert(name.to_string(), r.clone());
        r
    }

    /// Interpolates `s` (after replacing `{name}` when a target name is given); errors name
    /// `key` in `file`.
    fn expand(
        &mut self,
        s: &str,
        file: usize,
        line: Option<usize>,
        key: &str,
        target_name: Option<&str>,
    ) -> Result<String, ProjectError> {
        let owned;
        let s = match target_name {
            Some(n) if s.contains("{name}") => {
                owned = s.replace("{name}", n);
                owned.as_str()
            }
            _ => s,
        };
        self.expand_raw(s)
            .map_err(|e| self.describe(e, file, line, key))
    }

    fn expand_raw(&mut self, s: &str) -> Result<String, InterpError<VarError>> {
        interpolate(s, Dialect::Toml, &mut |n| self.get(n), &mut Vec::new())
    }

    fn describe(
        &self,
        e: InterpError<VarError>,
        file: usize,
        line: Option<usize>,
        key: &str,
    ) -> ProjectError {
        let src = &self.files[file];
        match e {
            InterpError::Undefined { var } => invalid(
                src,
                line,
                key,
                format!("variable ${{{var}}} is not defined"),
                format!(
                    "define {var} under [vars], set it in the environment, or give a default: ${{{var}:-value}}"
                ),
            ),
            InterpError::Required { var, message } => invalid(
                src,
                line,
                key,
                format!("${{{var}}} is required: {message}"),
                format!("set {var} in the environment or under [vars]"),
            ),
            InterpError::Syntax { message } => invalid(
                src,
                line,
                key,
                message,
                "write ${NAME} or ${NAME:-default}; write $$ for a literal $",
            ),
            InterpError::Lookup(VarError::Project(e)) => e,
            InterpError::Lookup(VarError::Git { var, reason }) => invalid(
                src,
                line,
                key,
                format!("${{{var}}} needs git: {reason}"),
                format!("run inside a git checkout, or set {var} in the environment or under [vars]"),
            ),
        }
    }
}

/// A branch name made safe for an image tag: lowercase `[a-z0-9_.-]`, at most 128 characters.
fn slug(branch: &str) -> String {
    let s: String = branch
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_start_matches(['.', '-']).chars().take(128).collect()
}

// ---------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------

struct Resolver<'a> {
    files: &'a [SourceFile],
    vars: Vars<'a>,
}

impl<'a> Resolver<'a> {
    fn err(
        &self,
        v: &Val,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ProjectError {
        invalid(&self.files[v.file], Some(v.line), key, problem, fix)
    }

    fn type_err(&self, v: &Val, key: &str, expected: &str, example: &str) -> ProjectError {
        self.err(
            v,
            key,
            format!("expected {expected}, found {}", v.kind.type_name()),
            format!("write it like {example}"),
        )
    }

    fn table<'v>(&self, v: &'v Val, key: &str) -> Result<&'v BTreeMap<String, Val>, ProjectError> {
        match &v.kind {
            Kind::Table(t) => Ok(t),
            _ => Err(self.type_err(v, key, "a table", &format!("[{key}]"))),
        }
    }

    fn check_keys(
        &self,
        table: &BTreeMap<String, Val>,
        prefix: &str,
        allowed: &[&str],
    ) -> Result<(), ProjectError> {
        for (k, v) in table {
            if !allowed.contains(&k.as_str()) {
                let hint = match suggest(k, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? "),
                    None => String::new(),
                };
                return Err(self.err(
                    v,
                    &format!("{prefix}.{k}"),
                    format!("unknown key `{k}`"),
                    format!("{hint}known keys here: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn string(&mut self, v: &Val, key: &str, name: Option<&str>) -> Result<String, ProjectError> {
        match &v.kind {
            Kind::Str(s) => self.vars.expand(s, v.file, Some(v.line), key, name),
            _ => Err(self.type_err(v, key, "a string", &format!("{} = \"...\"", leaf(key)))),
        }
    }

    /// Strings, numbers and booleans all make sense as build-arg or label values.
    fn scalar(&mut self, v: &Val, key: &str, name: Option<&str>) -> Result<String, ProjectError> {
        match &v.kind {
            Kind::Str(_) => self.string(v, key, name),
            Kind::Int(i) => Ok(i.to_string()),
            Kind::Float(f) => Ok(f.to_string()),
            Kind::Bool(b) => Ok(b.to_string()),
            _ => Err(self.type_err(v, key, "a string", &format!("{} = \"...\"", leaf(key)))),
        }
    }

    fn strings(
        &mut self,
        v: &Val,
        key: &str,
        name: Option<&str>,
    ) -> Result<Vec<(String, Val, String)>, ProjectError> {
        let Kind::Array(items) = &v.kind else {
            return Err(self.type_err(
                v,
                key,
                "an array of strings",
                &format!("{} = [\"...\"]", leaf(key)),
            ));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            out.push((self.string(item, &k, name)?, item.clone(), k));
        }
        Ok(out)
    }

    fn boolean(&self, v: &Val, key: &str) -> Result<bool, ProjectError> {
        match v.kind {
            Kind::Bool(b) => Ok(b),
            _ => Err(self.type_err(v, key, "true or false", &format!("{} = true", leaf(key)))),
        }
    }

    fn path(&mut self, v: &Val, key: &str, name: Option<&str>) -> Result<PathBuf, ProjectError> {
        let s = self.string(v, key, name)?;
        if s.is_empty() {
            return Err(self.err(v, key, "empty path", "write a directory, e.g. \".\""));
        }
        Ok(normalize(&self.files[v.file].dir.join(s)))
    }
}

fn leaf(key: &str) -> &str {
    let k = key.rsplit('.').next().unwrap_or(key);
    k.split('[').next().unwrap_or(k)
}

/// A target key's value: the target's own, else the one from `[defaults]`.
struct Setting<'v> {
    val: &'v Val,
    key: String,
}

/// How much of a bk-build.toml [`load_scoped`] resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Everything: a project to plan and build.
    All,
    /// `[vars]` and `[builders]` only (targets and groups left empty and unchecked): the
    /// daemons `info`, `workers`, `du` and `prune` act on, which a mistake in a target must
    /// not hide.
    Builders,
}

pub(super) fn load(
    files: &[SourceFile],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Project, ProjectError> {
    load_scoped(files, env, Scope::All)
}

pub(super) fn load_scoped(
    files: &[SourceFile],
    env: &dyn Fn(&str) -> Option<String>,
    scope: Scope,
) -> Result<Project, ProjectError> {
    let mut root: BTreeMap<String, Val> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        merge_tables(&mut root, parse(i, f)?);
    }
    let project_root = files[0].dir.clone();
    let mut r = Resolver {
        files,
        vars: Vars {
            files,
            env,
            raw: BTreeMap::new(),
            resolved: HashMap::new(),
            stack: Vec::new(),
            git_root: project_root.clone(),
            git_cache: HashMap::new(),
        },
    };
    for (k, v) in &root {
        if !TOP_KEYS.contains(&k.as_str()) {
            let hint = suggest(k, TOP_KEYS.iter().copied())
                .map(|s| format!("did you mean [{s}]? "))
                .unwrap_or_default();
            return Err(r.err(
                v,
                k,
                format!("unknown top-level key `{k}`"),
                format!("{hint}a bk-build.toml has only [vars], [defaults], [target.NAME], [group.NAME] and [builders.NAME]"),
            ));
        }
    }
    let empty = BTreeMap::new();
    let section = |r: &Resolver, k: &str| -> Result<&BTreeMap<String, Val>, ProjectError> {
        root.get(k).map_or(Ok(&empty), |v| r.table(v, k))
    };

    // [vars]
    for (name, v) in section(&r, "vars")? {
        let key = format!("vars.{name}");
        if !name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(r.err(
                v,
                &key,
                format!("`{name}` is not a valid variable name"),
                "use letters, digits and _ (not starting with a digit), e.g. REPO",
            ));
        }
        let raw = match &v.kind {
            Kind::Str(s) => s.clone(),
            Kind::Int(i) => i.to_string(),
            Kind::Float(f) => f.to_string(),
            Kind::Bool(b) => b.to_string(),
            _ => return Err(r.type_err(v, &key, "a string", &format!("{name} = \"...\""))),
        };
        r.vars.raw.insert(name.clone(), (raw, v.file, v.line));
    }
    // Mistakes in [vars] are reported even when no target uses the variable; only git
    // failures wait until a value is really needed.
    let names: Vec<String> = r.vars.raw.keys().cloned().collect();
    for name in names {
        if let Err(VarError::Project(e)) = r.vars.get(&name) {
            return Err(e);
        }
    }

    // A reader of `[builders]` alone (`info`, `workers`…) must not fail on a target's mistake.
    let (targets, groups) = match scope {
        Scope::All => targets_and_groups(&mut r, &root)?,
        Scope::Builders => Default::default(),
    };

    // Every [vars] entry with the value targets saw (already resolved above; a git built-in
    // that could not be computed leaves it without one).
    let names: Vec<String> = r.vars.raw.keys().cloned().collect();
    let variables = names
        .into_iter()
        .map(|name| {
            let value = r.vars.get(&name).ok().flatten();
            super::Variable {
                name,
                value,
                ..Default::default()
            }
        })
        .collect();
    // [builders.*]
    let mut builders = Vec::new();
    for (bname, bv) in section(&r, "builders")? {
        let prefix = format!("builders.{bname}");
        let b = r.table(bv, &prefix)?;
        r.check_keys(b, &prefix, BUILDER_KEYS)?;
        let mut builder = super::Builder {
            name: bname.clone(),
            file: r.files[bv.file].abs.clone(),
            ..Default::default()
        };
        builder.addr = match b.get("addr") {
            Some(v) => r
                .string(v, &format!("{prefix}.addr"), None)?
                .trim()
                .to_string(),
            None => String::new(),
        };
        if builder.addr.is_empty() {
            return Err(r.err(
                bv,
                &prefix,
                "builder has no `addr`",
                format!("add addr = \"tcp://HOST:1234\" (or unix://, docker://) under [builders.{bname}]"),
            ));
        }
        let opt_path = |r: &mut Resolver, k: &str| -> Result<Option<PathBuf>, ProjectError> {
            b.get(k)
                .map(|v| r.path(v, &format!("{prefix}.{k}"), None))
                .transpose()
        };
        builder.tlscacert = opt_path(&mut r, "tlscacert")?;
        builder.tlscert = opt_path(&mut r, "tlscert")?;
        builder.tlskey = opt_path(&mut r, "tlskey")?;
        builder.tlsdir = opt_path(&mut r, "tlsdir")?;
        builder.tlsservername = b
            .get("tlsservername")
            .map(|v| r.string(v, &format!("{prefix}.tlsservername"), None))
            .transpose()?;
        if let Some(v) = b.get("jobs") {
            builder.jobs = match v.kind {
                Kind::Int(i) if i >= 1 => Some(i as usize),
                _ => {
                    return Err(r.type_err(
                        v,
                        &format!("{prefix}.jobs"),
                        "a whole number of at least 1",
                        "jobs = 4",
                    ))
                }
            };
        }
        if let Some(v) = b.get("platforms") {
            for (p, item, k) in r.strings(v, &format!("{prefix}.platforms"), None)? {
                let parts = p.split('/').count();
                if !(2..=3).contains(&parts) || p.split('/').any(str::is_empty) {
                    return Err(r.err(
                        &item,
                        &k,
                        format!("`{p}` is not a platform"),
                        "write os/arch[/variant], e.g. \"linux/arm64\"",
                    ));
                }
                builder.platforms.push(p);
            }
        }
        builders.push(((bv.file, bv.line), builder));
    }
    // As written: the first builder is the one a run's engine-bound images go to.
    builders.sort_by_key(|(at, _)| *at);
    let builders: Vec<super::Builder> = builders.into_iter().map(|(_, b)| b).collect();
    Ok(Project {
        root: project_root,
        files: files.iter().map(|f| f.abs.clone()).collect(),
        targets,
        groups,
        default_must_exist: false,
        group_problems: BTreeMap::new(),
        warnings: Vec::new(),
        variables,
        builders,
    })
}

/// `[defaults]`, `[target.*]` and `[group.*]`, resolved and cross-checked.
#[allow(clippy::type_complexity)]
fn targets_and_groups(
    r: &mut Resolver,
    root: &BTreeMap<String, Val>,
) -> Result<(BTreeMap<String, Target>, BTreeMap<String, Vec<String>>), ProjectError> {
    let empty = BTreeMap::new();
    let section = |r: &Resolver, k: &str| -> Result<&BTreeMap<String, Val>, ProjectError> {
        root.get(k).map_or(Ok(&empty), |v| r.table(v, k))
    };
    // [defaults]
    let defaults = section(r, "defaults")?;
    r.check_keys(defaults, "defaults", TARGET_KEYS)?;
    for k in NOT_IN_DEFAULTS {
        if let Some(v) = defaults.get(*k) {
            return Err(r.err(
                v,
                &format!("defaults.{k}"),
                format!("`{k}` cannot be a default: it only makes sense per target"),
                "move it into each [target.NAME] that needs it",
            ));
        }
    }

    // [target.*]
    let target_tables = section(r, "target")?;
    let mut targets = BTreeMap::new();
    for (name, tv) in target_tables {
        let prefix = format!("target.{name}");
        if !valid_name(name) {
            return Err(r.err(
                tv,
                &prefix,
                format!("`{name}` is not a valid target name"),
                "use letters, digits, '_', '.' and '-', starting with a letter or digit",
            ));
        }
        let own = r.table(tv, &prefix)?;
        r.check_keys(own, &prefix, TARGET_KEYS)?;
        let t = resolve_target(r, name, tv, own, defaults)?;
        targets.insert(name.clone(), (t, tv));
    }

    // Cross references, once every target is known.
    let names: Vec<&str> = targets.keys().map(String::as_str).collect();
    let unknown_target = |r: &Resolver, v: &Val, key: &str, what: &str| {
        let hint = suggest(what, names.iter().copied())
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        r.err(
            v,
            key,
            format!("`{what}` is not a target of this project"),
            format!(
                "{hint}define [target.{what}] or use one of: {}",
                if names.is_empty() {
                    "(none defined)".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
    };
    for (name, (t, tv)) in &targets {
        let own = r.table(tv, "")?;
        for (i, dep) in t.depends_on.iter().enumerate() {
            let v = own
                .get("depends_on")
                .and_then(|d| match &d.kind {
                    Kind::Array(items) => items.get(i),
                    _ => None,
                })
                .unwrap_or(tv);
            let key = format!("target.{name}.depends_on[{i}]");
            if dep == name {
                return Err(r.err(
                    v,
                    &key,
                    "a target cannot depend on itself",
                    "remove it from depends_on",
                ));
            }
            if !targets.contains_key(dep) {
                return Err(unknown_target(r, v, &key, dep));
            }
        }
        for (ctx_name, src) in &t.contexts {
            if let ContextSource::Target(other) = src {
                let key = format!("target.{name}.contexts.{ctx_name}");
                let v = own
                    .get("contexts")
                    .and_then(|c| match &c.kind {
                        Kind::Table(m) => m.get(ctx_name),
                        _ => None,
                    })
                    .or_else(|| match defaults.get("contexts").map(|c| &c.kind) {
                        Some(Kind::Table(m)) => m.get(ctx_name),
                        _ => None,
                    })
                    .unwrap_or(tv);
                if other == name {
                    return Err(r.err(
                        v,
                        &key,
                        "a target cannot use itself as a context",
                        "point it at another target, a directory or docker-image://REF",
                    ));
                }
                if !targets.contains_key(other) {
                    return Err(unknown_target(r, v, &key, other));
                }
            }
        }
    }

    // [group.*]
    let mut groups = BTreeMap::new();
    let group_tables = section(r, "group")?;
    for (gname, gv) in group_tables {
        let prefix = format!("group.{gname}");
        let g = r.table(gv, &prefix)?;
        r.check_keys(g, &prefix, GROUP_KEYS)?;
        if targets.contains_key(gname) {
            return Err(r.err(
                gv,
                &prefix,
                format!("`{gname}` is both a group and a target"),
                "rename the group or the target so a name means one thing",
            ));
        }
        let members = match g.get("targets") {
            Some(v) => r.strings(v, &format!("{prefix}.targets"), None)?,
            None => {
                return Err(r.err(
                    gv,
                    &prefix,
                    "group has no `targets`",
                    format!("add targets = [\"...\"] under [group.{gname}]"),
                ))
            }
        };
        let mut list = Vec::new();
        for (m, v, key) in members {
            if !targets.contains_key(&m) && !group_tables.contains_key(&m) {
                return Err(unknown_target(r, &v, &key, &m));
            }
            list.push(m);
        }
        groups.insert(gname.clone(), list);
    }
    Ok((
        targets.into_iter().map(|(k, (t, _))| (k, t)).collect(),
        groups,
    ))
}

fn resolve_target(
    r: &mut Resolver,
    name: &str,
    tv: &Val,
    own: &BTreeMap<String, Val>,
    defaults: &BTreeMap<String, Val>,
) -> Result<Target, ProjectError> {
    let setting = |key: &str| -> Option<Setting> {
        own.get(key)
            .map(|val| Setting {
                val,
                key: format!("target.{name}.{key}"),
            })
            .or_else(|| {
                defaults.get(key).map(|val| Setting {
                    val,
                    key: format!("defaults.{key}"),
                })
            })
    };
    // Map-valued keys merge entry by entry: defaults first, the target's own entries win.
    let entries = |r: &Resolver, key: &str| -> Result<Vec<(String, Val, String)>, ProjectError> {
        let mut out: BTreeMap<String, (Val, String)> = BTreeMap::new();
        for (prefix, table) in [
            ("defaults".to_string(), defaults),
            (format!("target.{name}"), own),
        ] {
            if let Some(v) = table.get(key) {
                let k = format!("{prefix}.{key}");
                for (ek, ev) in r.table(v, &k)? {
                    out.insert(ek.clone(), (ev.clone(), format!("{k}.{ek}")));
                }
            }
        }
        Ok(out.into_iter().map(|(k, (v, key))| (k, v, key)).collect())
    };
    let n = Some(name);
    let mut t = Target {
        name: name.to_string(),
        ..Target::default()
    };

    t.context = match setting("context") {
        Some(s) => r.path(s.val, &s.key, n)?,
        None => r.files[tv.file].dir.clone(),
    };
    let ctx_setting = setting("context");
    if !t.context.is_dir() {
        let (v, key) = ctx_setting.map_or((tv, format!("target.{name}")), |s| (s.val, s.key));
        return Err(r.err(
            v,
            &key,
            format!("context directory {} does not exist", t.context.display()),
            format!(
                "paths are relative to the file that names them ({}); create the directory or correct the path",
                r.files[v.file].dir.display()
            ),
        ));
    }

    t.dockerfile = match setting("dockerfile") {
        Some(s) => {
            let p = r.path(s.val, &s.key, n)?;
            if !p.is_file() {
                let written = match &s.val.kind {
                    Kind::Str(w) => w.clone(),
                    _ => String::new(),
                };
                let in_context = t.context.join(&written);
                let hint = match in_context.strip_prefix(&r.files[s.val.file].dir) {
                    Ok(rel) if in_context.is_file() => format!(
                        "paths are relative to the file, not the context: write dockerfile = \"{}\"",
                        rel.display()
                    ),
                    _ => format!(
                        "paths are relative to the file that names them ({}); correct the path",
                        r.files[s.val.file].dir.display()
                    ),
                };
                return Err(r.err(
                    s.val,
                    &s.key,
                    format!("Dockerfile {} does not exist", p.display()),
                    hint,
                ));
            }
            p
        }
        None => {
            let p = t.context.join("Dockerfile");
            if !p.is_file() {
                let (v, key) =
                    ctx_setting.map_or((tv, format!("target.{name}")), |s| (s.val, s.key));
                return Err(r.err(
                    v,
                    &key,
                    format!("no Dockerfile in the context {}", t.context.display()),
                    format!(
                        "add {} or set dockerfile = \"PATH\" in [target.{name}]",
                        p.display()
                    ),
                ));
            }
            p
        }
    };

    if let Some(s) = setting("target") {
        t.target = Some(r.string(s.val, &s.key, n)?);
    }
    for (k, v, key) in entries(r, "args")? {
        t.args.insert(k, r.scalar(&v, &key, n)?);
    }
    for (k, v, key) in entries(r, "labels")? {
        t.labels.insert(k, r.scalar(&v, &key, n)?);
    }
    for (k, v, key) in entries(r, "contexts")? {
        let raw = r.string(&v, &key, n)?;
        let src = crate::options::parse_context_source(&raw)
            .map_err(|e| option_invalid(&r.files[v.file], Some(v.line), &key, e))?;
        let src = match src {
            ContextSource::Local(p) => {
                let abs = normalize(&r.files[v.file].dir.join(p));
                if !abs.is_dir() {
                    return Err(r.err(
                        &v,
                        &key,
                        format!("named context directory {} does not exist", abs.display()),
                        format!(
                            "paths are relative to the file that names them ({}); or use docker-image://REF or target:NAME",
                            r.files[v.file].dir.display()
                        ),
                    ));
                }
                ContextSource::Local(abs)
            }
            // Checked when the target is built, not here: a target it depends on may write
            // the layout in the same run.
            ContextSource::OciLayout(mut l) => {
                l.path = normalize(&r.files[v.file].dir.join(&l.path));
                ContextSource::OciLayout(l)
            }
            other => other,
        };
        t.contexts.insert(k, src);
    }
    for (key, out) in [("tags", &mut t.tags), ("depends_on", &mut t.depends_on)] {
        let Some(s) = setting(key) else { continue };
        for (value, v, k) in r.strings(s.val, &s.key, n)? {
            if value.is_empty() {
                return Err(r.err(&v, &k, "empty string", "remove it or give a value"));
            }
            if !out.contains(&value) {
                out.push(value);
            }
        }
    }
    // Option strings are parsed here, where a bad one can still be reported at its key.
    macro_rules! options {
        ($key:literal, $out:expr, |$raw:ident, $base:ident| $parse:expr) => {
            if let Some(s) = setting($key) {
                for ($raw, v, k) in r.strings(s.val, &s.key, n)? {
                    let $base = &r.files[v.file].dir;
                    let value = $parse
                        .map_err(|e| option_invalid(&r.files[v.file], Some(v.line), &k, e))?;
                    if !$out.contains(&value) {
                        $out.push(value);
                    }
                }
            }
        };
    }
    options!("platforms", t.platforms, |raw, _base| OptionList::platform(
        &raw
    ));
    options!("secrets", t.secrets, |raw, base| OptionList::secret(
        &raw, base
    ));
    options!("ssh", t.ssh, |raw, base| OptionList::ssh(&raw, base));
    options!("cache_from", t.cache_from, |raw, base| {
        OptionList::CacheFrom.cache(&raw, base)
    });
    options!("cache_to", t.cache_to, |raw, base| OptionList::CacheTo
        .cache(&raw, base));
    options!("outputs", t.outputs, |raw, base| OptionList::output(
        &raw, base
    ));
    for (key, out) in [
        ("push", &mut t.push),
        ("load", &mut t.load),
        ("no_cache", &mut t.no_cache),
        ("pull", &mut t.pull),
    ] {
        if let Some(s) = setting(key) {
            *out = r.boolean(s.val, &s.key)?;
        }
    }
    Ok(t)
}
