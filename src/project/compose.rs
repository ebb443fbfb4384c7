//! docker-compose files as a project: the `build:` sections of `services`, merged across `-f`
//! files the way compose merges them, with compose's variable interpolation and `.env` file.
//!
//! Compose rules followed here: every string value is interpolated (keys are not) from the
//! environment, then from `.env` next to the first file; an unset variable without default
//! becomes "" (recorded as a warning, as compose warns). Files merge mapping by mapping; a
//! later scalar replaces; lists are appended without duplicates, except `args`, `labels` and
//! `additional_contexts`, which may be written as `KEY=VALUE` lists or mappings and merge key by
//! key. `x-*` extension keys are replaced whole. All relative paths are taken from the first
//! file's directory (compose's project directory); `dockerfile` is relative to the context.
//!
//! bk-build specifics: `image:` is the first tag (a service without `image:` or `build.tags`
//! gets compose's default name `PROJECT-SERVICE`); `service:NAME` in `additional_contexts`
//! refers to another service's image; `build.x-bk-build` may set `push`, `load`, `outputs` and
//! `depends_on`, which compose has no words for. Compose's own `depends_on` is about running
//! containers, not building images, and is ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::interp::{interpolate, Dialect, InterpError};
use super::{
    invalid, normalize, option_invalid, suggest, valid_name, ContextSource, OptionList, Project,
    ProjectError, SourceFile, Target,
};

const TOP_KEYS: &[&str] = &[
    "services", "name", "secrets", "version", "networks", "volumes", "configs",
];
const BUILD_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "args",
    "ssh",
    "cache_from",
    "cache_to",
    "additional_contexts",
    "labels",
    "no_cache",
    "pull",
    "target",
    "secrets",
    "tags",
    "platforms",
    "x-bk-build",
];
/// Valid compose build keys that change nothing bk-build can honour; they are reported as
/// warnings rather than silently dropped.
const IGNORED_BUILD_KEYS: &[&str] = &[
    "extra_hosts",
    "isolation",
    "privileged",
    "network",
    "shm_size",
    "ulimits",
    "entitlements",
    "provenance",
    "sbom",
];
/// Build keys whose list form `KEY=VALUE` is really a mapping, merged key by key.
const MAP_LIKE: &[&str] = &["args", "labels", "additional_contexts"];
const EXTENSION_KEYS: &[&str] = &["push", "load", "outputs", "depends_on"];

/// Which file last set each dotted key path; looked up by longest prefix.
type Origins = BTreeMap<String, usize>;

pub(super) fn load(
    files: &[SourceFile],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Project, ProjectError> {
    let root = files[0].dir.clone();
    let dotenv = read_dotenv(&root.join(".env"), env)?;
    let lookup = |name: &str| env(name).or_else(|| dotenv.get(name).cloned());
    let mut warnings = Vec::new();
    let mut merged = Value::Mapping(Mapping::new());
    let mut origins = Origins::new();
    for (i, f) in files.iter().enumerate() {
        let mut doc: Value = serde_yaml::from_str(&f.text).map_err(|e| {
            invalid(
                f,
                e.location().map(|l| l.line()),
                "",
                format!("not valid YAML: {e}"),
                "correct the YAML syntax (indentation, quoting) at that line",
            )
        })?;
        doc.apply_merge().map_err(|e| {
            invalid(
                f,
                None,
                "",
                format!("YAML merge key (<<) failed: {e}"),
                "merge only mappings into mappings",
            )
        })?;
        if doc.is_null() {
            doc = Value::Mapping(Mapping::new());
        }
        if !doc.is_mapping() {
            return Err(invalid(
                f,
                None,
                "",
                "a compose file must be a mapping at the top",
                "start the file with `services:`",
            ));
        }
        let mut undefined = Vec::new();
        interpolate_tree(&mut doc, "", f, &lookup, &mut undefined)?;
        for (key, var) in undefined {
            warnings.push(format!(
                "{}: {key}: variable {var} is not set; using an empty string",
                f.shown.display()
            ));
        }
        expand_short_forms(&mut doc, f)?;
        merge(&mut merged, doc, "", i, &mut origins);
    }
    let ctx = Ctx {
        files,
        origins,
        root,
        lookup: &lookup,
    };
    let mut project = ctx.extract(&merged, env)?;
    warnings.append(&mut project.warnings);
    project.warnings = warnings;
    Ok(project)
}

// ---------------------------------------------------------------------------------------------
// Per-file preparation
// ---------------------------------------------------------------------------------------------

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => serde_yaml::to_string(k)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn interpolate_tree(
    v: &mut Value,
    path: &str,
    file: &SourceFile,
    lookup: &dyn Fn(&str) -> Option<String>,
    undefined: &mut Vec<(String, String)>,
) -> Result<(), ProjectError> {
    match v {
        Value::String(s) => {
            let mut names = Vec::new();
            let mut look = |n: &str| -> Result<Option<String>, ()> { Ok(lookup(n)) };
            *s = interpolate(s, Dialect::Compose, &mut look, &mut names).map_err(|e| match e {
                InterpError::Required { var, message } => invalid(
                    file,
                    None,
                    path,
                    format!("required variable {var} is missing: {message}"),
                    format!("set {var} in the environment or in the .env file next to the first compose file"),
                ),
                InterpError::Syntax { message } => invalid(
                    file,
                    None,
                    path,
                    message,
                    "write ${NAME}, ${NAME:-default} or $NAME; write $$ for a literal $",
                ),
                InterpError::Undefined { var } => invalid(file, None, path, format!("variable {var} is not set"), format!("set {var}")),
                InterpError::Lookup(()) => invalid(file, None, path, "variable lookup failed", "retry"),
            })?;
            undefined.extend(names.into_iter().map(|n| (path.to_string(), n)));
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), file, lookup, undefined)?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                interpolate_tree(item, &join(path, &key_str(k)), file, lookup, undefined)?;
            }
        }
        Value::Tagged(t) => interpolate_tree(&mut t.value, path, file, lookup, undefined)?,
        _ => {}
    }
    Ok(())
}

/// Compose merges the long form of values that have a short one, so `build: DIR` becomes
/// `{context: DIR}` and `args: [K=V]` becomes `{K: V}` before merging.
fn expand_short_forms(doc: &mut Value, file: &SourceFile) -> Result<(), ProjectError> {
    let Some(Value::Mapping(services)) = doc.get_mut("services") else {
        return Ok(());
    };
    for (name, svc) in services.iter_mut() {
        let Some(svc) = svc.as_mapping_mut() else {
            continue;
        };
        let Some(build) = svc.get_mut("build") else {
            continue;
        };
        if let Value::String(dir) = build {
            let mut m = Mapping::new();
            m.insert("context".into(), Value::String(dir.clone()));
            *build = Value::Mapping(m);
        }
        let Some(build) = build.as_mapping_mut() else {
            continue;
        };
        for key in MAP_LIKE {
            let Some(Value::Sequence(items)) = build.get(*key) else {
                continue;
            };
            let mut m = Mapping::new();
            for (i, item) in items.iter().enumerate() {
                let Some(s) = item.as_str() else {
                    return Err(invalid(
                        file,
                        None,
                        format!("services.{}.build.{key}[{i}]", key_str(name)),
                        "expected a KEY=VALUE string",
                        format!("write `- NAME=value`, or use a mapping under {key}:"),
                    ));
                };
                match s.split_once('=') {
                    Some((k, v)) => m.insert(k.into(), Value::String(v.into())),
                    None => m.insert(s.into(), Value::Null),
                };
            }
            build.insert((*key).into(), Value::Mapping(m));
        }
    }
    Ok(())
}

fn set_origin(origins: &mut Origins, path: &str, file: usize) {
    let prefix = format!("{path}.");
    origins.retain(|k, _| !k.starts_with(&prefix));
    origins.insert(path.to_string(), file);
}

fn merge(base: &mut Value, over: Value, path: &str, file: usize, origins: &mut Origins) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                let ks = key_str(&k);
                let p = join(path, &ks);
                match b.get_mut(&k) {
                    Some(existing) if !ks.starts_with("x-") => {
                        merge(existing, v, &p, file, origins)
                    }
                    _ => {
                        set_origin(origins, &p, file);
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) => {
            for item in o {
                if !b.contains(&item) {
                    b.push(item);
                }
            }
            set_origin(origins, path, file);
        }
        (b, o) => {
            *b = o;
            set_origin(origins, path, file);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// .env
// ---------------------------------------------------------------------------------------------

/// Reads compose's `.env`: `KEY=VALUE` lines, `export` prefixes, `#` comments, single quotes
/// (literal), double quotes (escapes and interpolation, may span lines), unquoted values
/// (trimmed, ` #` starts a comment, interpolated). A missing file is an empty one.
fn read_dotenv(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ProjectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(ProjectError::Read {
                path: path.to_path_buf(),
                source: e,
                fix: "make the .env file readable, or remove it".into(),
            })
        }
    };
    parse_dotenv(&text, env).map_err(|(line, problem)| ProjectError::Invalid {
        file: path.to_path_buf(),
        line: Some(line),
        key: String::new(),
        problem,
        fix: "write KEY=value, KEY=\"value\" or KEY='value', one per line".into(),
    })
}

fn parse_dotenv(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    let line_end = |from: usize| {
        chars[from..]
            .iter()
            .position(|c| *c == '\n')
            .map_or(chars.len(), |p| from + p)
    };
    while i < chars.len() {
        let end = line_end(i);
        let raw: String = chars[i..end].iter().collect();
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i = end + 1;
            line += 1;
            continue;
        }
        let start_line = line;
        let body = trimmed
            .strip_prefix("export ")
            .map_or(trimmed, str::trim_start);
        // compose also accepts `KEY: value`; a bare `KEY` leaves the variable to the environment.
        let Some(sep) = body.find(['=', ':']) else {
            i = end + 1;
            line += 1;
            continue;
        };
        let key = &body[..sep];
        let key = key.trim().to_string();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err((start_line, format!("{key:?} is not a valid variable name")));
        }
        // Position of the value in `chars`: after the separator on this line.
        let eq = i + raw.find(['=', ':']).map_or(0, |b| raw[..b].chars().count()) + 1;
        let mut j = eq;
        while j < end && (chars[j] == ' ' || chars[j] == '\t') {
            j += 1;
        }
        let lookup = |n: &str| env(n).or_else(|| vars.get(n).cloned());
        let value = match chars.get(j) {
            Some(q @ ('\'' | '"')) if j < end => {
                let q = *q;
                let mut k = j + 1;
                let mut content = String::new();
                loop {
                    match chars.get(k) {
                        None => return Err((start_line, format!("missing closing {q}"))),
                        Some(c) if *c == q => break,
                        Some('\\') if q == '"' => {
                            k += 1;
                            match chars.get(k) {
                                Some('n') => content.push('\n'),
                                Some('t') => content.push('\t'),
                                Some('r') => content.push('\r'),
                                Some('"') => content.push('"'),
                                Some('\\') => content.push('\\'),
                                Some('$') => content.push_str("$$"),
                                Some(c) => {
                                    content.push('\\');
                                    content.push(*c);
                                }
                                None => return Err((start_line, "missing closing \"".into())),
                            }
                        }
                        Some(c) => {
                            if *c == '\n' {
                                line += 1;
                            }
                            content.push(*c);
                        }
                    }
                    k += 1;
                }
                let next_end = line_end(k);
                i = next_end + 1;
                if q == '\'' {
                    content
                } else {
                    expand_env_value(&content, &lookup).map_err(|m| (start_line, m))?
                }
            }
            _ => {
                let v: String = chars[j..end].iter().collect();
                let v = match v.find(" #").or_else(|| v.find("\t#")) {
                    Some(p) => v[..p].to_string(),
                    None => v,
                };
                i = end + 1;
                expand_env_value(v.trim_end(), &lookup).map_err(|m| (start_line, m))?
            }
        };
        line += 1;
        vars.insert(key, value);
    }
    Ok(vars)
}

fn expand_env_value(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut look = |n: &str| -> Result<Option<String>, ()> { Ok(lookup(n)) };
    interpolate(s, Dialect::Compose, &mut look, &mut Vec::new()).map_err(|e| match e {
        InterpError::Required { var, message } => {
            format!("required variable {var} is missing: {message}")
        }
        InterpError::Syntax { message } => message,
        InterpError::Undefined { var } => format!("variable {var} is not set"),
        InterpError::Lookup(()) => "variable lookup failed".into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    files: &'a [SourceFile],
    origins: Origins,
    /// compose's project directory: all relative paths start here.
    root: PathBuf,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn file_for(&self, path: &str) -> &SourceFile {
        let mut p = path;
        loop {
            if let Some(i) = self.origins.get(p) {
                return &self.files[*i];
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None => return &self.files[0],
            }
        }
    }

    fn err(&self, key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ProjectError {
        invalid(self.file_for(key), None, key, problem, fix)
    }

    fn scalar(&self, v: &Value, key: &str) -> Result<String, ProjectError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(self.err(
                key,
                format!("expected a string, found {}", type_name(v)),
                format!("write {}: \"...\"", leaf(key)),
            )),
        }
    }

    fn strings(&self, v: &Value, key: &str) -> Result<Vec<(String, String)>, ProjectError> {
        let Value::Sequence(items) = v else {
            return Err(self.err(
                key,
                format!("expected a list, found {}", type_name(v)),
                format!("write {}:\\n  - \"...\"", leaf(key)),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let k = format!("{key}[{i}]");
                self.scalar(item, &k).map(|s| (s, k))
            })
            .collect()
    }

    fn mapping<'v>(&self, v: &'v Value, key: &str) -> Result<&'v Mapping, ProjectError> {
        v.as_mapping().ok_or_else(|| {
            self.err(
                key,
                format!("expected a mapping, found {}", type_name(v)),
                format!("write {}:\\n  KEY: value", leaf(key)),
            )
        })
    }

    fn boolean(&self, v: &Value, key: &str) -> Result<bool, ProjectError> {
        v.as_bool().ok_or_else(|| {
            self.err(
                key,
                format!("expected true or false, found {}", type_name(v)),
                format!("write {}: true", leaf(key)),
            )
        })
    }

    fn checked(&self, list: OptionList, raw: &str, key: &str) -> Result<String, ProjectError> {
        list.check(raw, &self.root)
            .map_err(|e| option_invalid(self.file_for(key), None, key, e))
    }

    fn abs(&self, p: &str) -> PathBuf {
        let expanded = match p.strip_prefix('~') {
            Some(rest) => match (self.lookup)("HOME") {
                Some(home) => format!("{home}{rest}"),
                None => p.to_string(),
            },
            None => p.to_string(),
        };
        normalize(&self.root.join(expanded))
    }

    fn extract(
        &self,
        doc: &Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Project, ProjectError> {
        let top = self.mapping(doc, "")?;
        for (k, _) in top {
            let k = key_str(k);
            if k == "include" {
                return Err(self.err(
                    "include",
                    "compose `include` is not supported",
                    "pass the included files with -f instead",
                ));
            }
            if !TOP_KEYS.contains(&k.as_str()) && !k.starts_with("x-") {
                let hint = suggest(&k, TOP_KEYS.iter().copied())
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                return Err(self.err(
                    &k,
                    format!("unknown top-level key `{k}`"),
                    format!("{hint}compose files have: {}", TOP_KEYS.join(", ")),
                ));
            }
        }
        let project_name = env("COMPOSE_PROJECT_NAME")
            .or_else(|| top.get("name").and_then(Value::as_str).map(str::to_string))
            .or_else(|| {
                self.root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .map(|n| project_name(&n))
            .unwrap_or_default();
        let top_secrets = match top.get("secrets") {
            Some(v) => Some(self.mapping(v, "secrets")?),
            None => None,
        };
        let mut warnings = Vec::new();
        let mut targets = BTreeMap::new();
        let empty = Mapping::new();
        let services = match top.get("services") {
            Some(v) => self.mapping(v, "services")?,
            None => &empty,
        };
        for (name, svc) in services {
            let name = key_str(name);
            let prefix = format!("services.{name}");
            let svc = match svc {
                Value::Null => continue,
                v => self.mapping(v, &prefix)?,
            };
            let Some(build) = svc.get("build") else {
                continue;
            };
            if !valid_name(&name) {
                return Err(self.err(
                    &prefix,
                    format!("`{name}` is not a valid service name for bk-build"),
                    "use letters, digits, '_', '.' and '-', starting with a letter or digit",
                ));
            }
            let t = self.target(&name, svc, build, &project_name, top_secrets, &mut warnings)?;
            targets.insert(name, t);
        }
        for (name, t) in &targets {
            for (i, dep) in t.depends_on.iter().enumerate() {
                let key = format!("services.{name}.build.x-bk-build.depends_on[{i}]");
                if !targets.contains_key(dep) {
                    return Err(self.unknown_service(&key, dep, &targets));
                }
            }
            for (cname, src) in &t.contexts {
                if let ContextSource::Target(other) = src {
                    let key = format!("services.{name}.build.additional_contexts.{cname}");
                    if other == name {
                        return Err(self.err(
                            &key,
                            "a service cannot use its own image as a context",
                            "point it at another service, a directory or docker-image://REF",
                        ));
                    }
                    if !targets.contains_key(other) {
                        return Err(self.unknown_service(&key, other, &targets));
                    }
                }
            }
        }
        Ok(Project {
            root: self.root.clone(),
            files: self.files.iter().map(|f| f.abs.clone()).collect(),
            targets,
            groups: BTreeMap::new(),
            warnings,
        })
    }

    fn unknown_service(
        &self,
        key: &str,
        what: &str,
        targets: &BTreeMap<String, Target>,
    ) -> ProjectError {
        let names: Vec<&str> = targets.keys().map(String::as_str).collect();
        let hint = suggest(what, names.iter().copied())
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        self.err(
            key,
            format!("`{what}` is not a service with a build section"),
            format!("{hint}services that build: {}", names.join(", ")),
        )
    }

    fn target(
        &self,
        name: &str,
        svc: &Mapping,
        build: &Value,
        project_name: &str,
        top_secrets: Option<&Mapping>,
        warnings: &mut Vec<String>,
    ) -> Result<Target, ProjectError> {
        let bp = format!("services.{name}.build");
        let build = self.mapping(build, &bp)?;
        for (k, _) in build {
            let k = key_str(k);
            let key = format!("{bp}.{k}");
            if k == "dockerfile_inline" {
                return Err(self.err(
                    &key,
                    "dockerfile_inline is not supported",
                    "move the Dockerfile into a file and set dockerfile: PATH",
                ));
            }
            if IGNORED_BUILD_KEYS.contains(&k.as_str()) {
                warnings.push(format!(
                    "{}: {key} is not supported by bk-build and was ignored",
                    self.file_for(&key).shown.display()
                ));
            } else if !BUILD_KEYS.contains(&k.as_str()) && !k.starts_with("x-") {
                let hint = suggest(&k, BUILD_KEYS.iter().copied())
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                return Err(self.err(
                    &key,
                    format!("unknown build key `{k}`"),
                    format!("{hint}known build keys: {}", BUILD_KEYS.join(", ")),
                ));
            }
        }
        let get = |k: &str| build.get(k).filter(|v| !v.is_null());
        let mut t = Target {
            name: name.to_string(),
            ..Target::default()
        };

        let ctx_key = format!("{bp}.context");
        let ctx_raw = match get("context") {
            Some(v) => self.scalar(v, &ctx_key)?,
            None => ".".to_string(),
        };
        if ctx_raw.contains("://")
            || ctx_raw.starts_with("git@")
            || ctx_raw.starts_with("github.com/")
        {
            return Err(self.err(
                &ctx_key,
                format!("remote build context {ctx_raw:?} is not supported"),
                "check the repository out and point context at the directory",
            ));
        }
        t.context = self.abs(&ctx_raw);
        if !t.context.is_dir() {
            return Err(self.err(
                &ctx_key,
                format!("context directory {} does not exist", t.context.display()),
                format!("compose paths are relative to the first file's directory ({}); correct the path", self.root.display()),
            ));
        }
        let df_key = format!("{bp}.dockerfile");
        let df_raw = match get("dockerfile") {
            Some(v) => self.scalar(v, &df_key)?,
            None => "Dockerfile".to_string(),
        };
        t.dockerfile = normalize(&t.context.join(&df_raw));
        if !t.dockerfile.is_file() {
            return Err(self.err(
                if get("dockerfile").is_some() { &df_key } else { &ctx_key },
                format!("Dockerfile {} does not exist", t.dockerfile.display()),
                "in compose, dockerfile is relative to the build context; correct the path or add the file",
            ));
        }
        if let Some(v) = get("target") {
            t.target = Some(self.scalar(v, &format!("{bp}.target"))?);
        }
        if let Some(v) = get("args") {
            for (k, val) in self.mapping(v, &format!("{bp}.args"))? {
                let k = key_str(k);
                let key = format!("{bp}.args.{k}");
                // compose: an arg without value is taken from the environment, or left out.
                let value = match val {
                    Value::Null => match (self.lookup)(&k) {
                        Some(v) => v,
                        None => continue,
                    },
                    v => self.scalar(v, &key)?,
                };
                t.args.insert(k, value);
            }
        }
        if let Some(v) = get("labels") {
            for (k, val) in self.mapping(v, &format!("{bp}.labels"))? {
                let k = key_str(k);
                let value = match val {
                    Value::Null => String::new(),
                    v => self.scalar(v, &format!("{bp}.labels.{k}"))?,
                };
                t.labels.insert(k, value);
            }
        }
        if let Some(v) = get("additional_contexts") {
            for (k, val) in self.mapping(v, &format!("{bp}.additional_contexts"))? {
                let k = key_str(k);
                let key = format!("{bp}.additional_contexts.{k}");
                let raw = self.scalar(val, &key)?;
                let src = match raw.strip_prefix("service:") {
                    Some(svc) => ContextSource::Target(svc.to_string()),
                    None => crate::options::parse_context_source(&raw)
                        .map_err(|e| option_invalid(self.file_for(&key), None, &key, e))?,
                };
                let src = match src {
                    ContextSource::Local(p) => {
                        let abs = self.abs(&p.to_string_lossy());
                        if !abs.is_dir() {
                            return Err(self.err(
                                &key,
                                format!("additional context directory {} does not exist", abs.display()),
                                format!("compose paths are relative to the first file's directory ({}); or use docker-image://REF or service:NAME", self.root.display()),
                            ));
                        }
                        ContextSource::Local(abs)
                    }
                    ContextSource::OciLayout(mut l) => {
                        l.path = self.abs(&l.path.to_string_lossy());
                        ContextSource::OciLayout(l)
                    }
                    other => other,
                };
                t.contexts.insert(k, src);
            }
        }

        if let Some(image) = svc.get("image").filter(|v| !v.is_null()) {
            t.tags
                .push(self.scalar(image, &format!("services.{name}.image"))?);
        }
        if let Some(v) = get("tags") {
            for (tag, _) in self.strings(v, &format!("{bp}.tags"))? {
                if !t.tags.contains(&tag) {
                    t.tags.push(tag);
                }
            }
        }
        if t.tags.is_empty() {
            t.tags.push(format!("{project_name}-{name}"));
        }
        let platforms = match (
            get("platforms"),
            svc.get("platform").filter(|v| !v.is_null()),
        ) {
            (Some(v), _) => self.strings(v, &format!("{bp}.platforms"))?,
            (None, Some(p)) => {
                let key = format!("services.{name}.platform");
                vec![(self.scalar(p, &key)?, key)]
            }
            (None, None) => Vec::new(),
        };
        for (p, key) in platforms {
            t.platforms
                .push(self.checked(OptionList::Platforms, &p, &key)?);
        }
        for (list, field, out) in [
            (OptionList::CacheFrom, "cache_from", &mut t.cache_from),
            (OptionList::CacheTo, "cache_to", &mut t.cache_to),
        ] {
            if let Some(v) = get(field) {
                for (raw, key) in self.strings(v, &format!("{bp}.{field}"))? {
                    out.push(self.checked(list, &raw, &key)?);
                }
            }
        }
        if let Some(v) = get("ssh") {
            let key = format!("{bp}.ssh");
            let entries: Vec<(String, String)> = match v {
                Value::Mapping(m) => m
                    .iter()
                    .map(|(id, p)| {
                        let id = key_str(id);
                        let k = format!("{key}.{id}");
                        Ok((format!("{id}={}", self.scalar(p, &k)?), k))
                    })
                    .collect::<Result<_, ProjectError>>()?,
                other => self.strings(other, &key)?,
            };
            for (raw, k) in entries {
                t.ssh.push(self.checked(OptionList::Ssh, &raw, &k)?);
            }
        }
        if let Some(v) = get("secrets") {
            let key = format!("{bp}.secrets");
            let Value::Sequence(items) = v else {
                return Err(self.err(
                    &key,
                    format!("expected a list, found {}", type_name(v)),
                    "write secrets:\\n  - NAME",
                ));
            };
            for (i, item) in items.iter().enumerate() {
                let k = format!("{key}[{i}]");
                let (source, id) = match item {
                    Value::Mapping(m) => {
                        let source = m.get("source").ok_or_else(|| {
                            self.err(&k, "secret without `source`", "write - source: NAME")
                        })?;
                        let source = self.scalar(source, &format!("{k}.source"))?;
                        let id = match m.get("target") {
                            Some(t) => self.scalar(t, &format!("{k}.target"))?,
                            None => source.clone(),
                        };
                        (source, id)
                    }
                    other => {
                        let s = self.scalar(other, &k)?;
                        (s.clone(), s)
                    }
                };
                let raw = self.secret(&source, &id, top_secrets, &k)?;
                t.secrets.push(self.checked(OptionList::Secrets, &raw, &k)?);
            }
        }
        if let Some(v) = get("pull") {
            t.pull = self.boolean(v, &format!("{bp}.pull"))?;
        }
        if let Some(v) = get("no_cache") {
            t.no_cache = self.boolean(v, &format!("{bp}.no_cache"))?;
        }
        if let Some(v) = get("x-bk-build") {
            let xp = format!("{bp}.x-bk-build");
            for (k, val) in self.mapping(v, &xp)? {
                let k = key_str(k);
                let key = format!("{xp}.{k}");
                match k.as_str() {
                    "push" => t.push = self.boolean(val, &key)?,
                    "load" => t.load = self.boolean(val, &key)?,
                    "outputs" => {
                        for (raw, kk) in self.strings(val, &key)? {
                            t.outputs
                                .push(self.checked(OptionList::Outputs, &raw, &kk)?);
                        }
                    }
                    "depends_on" => {
                        t.depends_on = self
                            .strings(val, &key)?
                            .into_iter()
                            .map(|(s, _)| s)
                            .collect()
                    }
                    _ => {
                        let hint = suggest(&k, EXTENSION_KEYS.iter().copied())
                            .map(|s| format!("did you mean `{s}`? "))
                            .unwrap_or_default();
                        return Err(self.err(
                            &key,
                            format!("unknown x-bk-build key `{k}`"),
                            format!("{hint}x-bk-build knows: {}", EXTENSION_KEYS.join(", ")),
                        ));
                    }
                }
            }
        }
        Ok(t)
    }

    /// A compose build secret as a `--secret` string, from the top-level `secrets:` entry.
    fn secret(
        &self,
        source: &str,
        id: &str,
        top: Option<&Mapping>,
        key: &str,
    ) -> Result<String, ProjectError> {
        let Some(def) = top.and_then(|m| m.get(source)) else {
            return Err(self.err(
                key,
                format!("secret `{source}` is not defined in the top-level secrets"),
                format!("add secrets:\\n  {source}:\\n    file: ./path  (or environment: VAR)"),
            ));
        };
        let dk = format!("secrets.{source}");
        let def = self.mapping(def, &dk)?;
        if let Some(f) = def.get("file") {
            let path = self.abs(&self.scalar(f, &format!("{dk}.file"))?);
            return Ok(format!("id={id},src={}", path.display()));
        }
        if let Some(e) = def.get("environment") {
            return Ok(format!(
                "id={id},env={}",
                self.scalar(e, &format!("{dk}.environment"))?
            ));
        }
        Err(self.err(
            &dk,
            "a build secret needs `file` or `environment`",
            "add file: ./path or environment: VAR",
        ))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn leaf(key: &str) -> &str {
    let k = key.rsplit('.').next().unwrap_or(key);
    k.split('[').next().unwrap_or(k)
}

/// compose's project-name rule: lowercase letters, digits, `_` and `-`, starting with a letter
/// or digit.
fn project_name(raw: &str) -> String {
    let s: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    s.trim_start_matches(['_', '-']).to_string()
}
