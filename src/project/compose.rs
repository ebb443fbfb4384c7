//! docker-compose files as a project: the `build:` sections of `services`, loaded the way the
//! compose specification (and compose-go, its reference loader) loads them.
//!
//! Order of work for each file, and for each YAML document in it: parse ([`super::yaml`]:
//! anchors, merge keys, `!reset`/`!override` tags), interpolate every value (not keys) from
//! the environment and the env files, expand short forms (`build: DIR`, `KEY=VALUE` lists),
//! make paths absolute, load its `include`s, resolve `extends`, then merge it over the files
//! before it. Rules followed:
//!
//! - **Variables**: the process environment wins over env files. Env files: `COMPOSE_ENV_FILES`
//!   (comma-separated, relative to the current directory) or else `.env` in the project
//!   directory (unless `COMPOSE_DISABLE_ENV_FILE` is true). An unset variable without default
//!   becomes "" with a warning. `COMPOSE_PROJECT_NAME` is the project name (environment, `.env`,
//!   else the last `name:`, else the project directory's name, made lowercase `[a-z0-9_-]`).
//! - **Paths**: a main (`-f`) file's relative paths start at the project directory (the first
//!   file's directory); an `extends: {file: F}` service's at F's directory; an included
//!   project's at its `project_directory` (default: its first file's directory). `~` is the
//!   home directory. `dockerfile` is relative to the build context.
//! - **Merging** (later files, and a service over the one it `extends`): mappings merge key by
//!   key; scalars are replaced; a null changes nothing; lists are appended (lists under
//!   `build`, and `profiles`, without repeating an equal item); `args`, `labels`,
//!   `additional_contexts` (lists of `KEY=VALUE` or mappings) merge by key; `extra_hosts` is a
//!   union. `!reset` removes the earlier value, `!override` replaces it without merging.
//! - **include**: each entry (a path, or `{path, project_directory, env_file}`) is loaded as its
//!   own project, with its own env file (default: `.env` in its project directory, below the
//!   including project's variables); its services are added, and a service the including
//!   file also defines is merged with the including file's definition winning.
//! - **profiles**: every service with a `build:` is a target, but the `default` group holds only
//!   the services whose profiles are active (`COMPOSE_PROFILES`, comma-separated, `*` for all),
//!   so `bake` builds those, and naming a service builds it whatever its profiles, as
//!   `docker compose build NAME` does.
//!
//! bk-build specifics: `image:` is the first tag, then `build.tags` (the spec: tags are "in
//! addition to" the image); without either, compose's default name `PROJECT-SERVICE` in lower
//! case (compose adds that name also next to `build.tags`; bk-build does not, since with
//! `push` it would go to Docker Hub). `service:NAME` in `additional_contexts` refers to another service's image.
//! `build.x-bake` takes buildx's extension keys; `build.x-bk-build` may set `push`, `load`,
//! `outputs` and `depends_on`. A service whose context or Dockerfile is missing loads as an
//! [`Target::unavailable`] target, so it fails only when it is built. Compose's own
//! `depends_on` is about running containers, not building images, and is ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dotenv::read_dotenv;
use super::interp::{interpolate, Dialect, InterpError};
use super::yaml::{self, plain_scalar_as_compose_text, Key, Node, Tag, Value};
use super::{
    normalize, option_invalid, suggest, valid_name, ContextSource, OptionList, Project,
    ProjectError, SourceFile, Target,
};

const TOP_KEYS: &[&str] = &[
    "services", "name", "include", "secrets", "version", "networks", "volumes", "configs", "models",
];
const BUILD_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile_inline",
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
    "network",
    "extra_hosts",
    "shm_size",
    "ulimits",
    "privileged",
    "entitlements",
    "provenance",
    "sbom",
    "x-bake",
    "x-bk-build",
];
/// Valid compose build keys that change nothing bk-build can honour (Windows isolation); they
/// are reported as warnings rather than silently dropped.
const IGNORED_BUILD_KEYS: &[&str] = &["isolation"];
/// Build keys whose list form `KEY=VALUE` is really a mapping, merged key by key.
const MAP_LIKE: &[&str] = &["args", "labels", "additional_contexts"];
const EXTENSION_KEYS: &[&str] = &["push", "load", "outputs", "depends_on"];
/// buildx's `x-bake` keys (its `bake/compose.go`), with buildx's spelling.
const XBAKE_KEYS: &[&str] = &[
    "tags",
    "cache-from",
    "cache-to",
    "secret",
    "ssh",
    "platforms",
    "output",
    "pull",
    "no-cache",
    "no-cache-filter",
    "contexts",
];
/// How many `include` or `extends` levels may stack up; real projects use two or three.
const MAX_CHAIN: usize = 64;

/// What the values of one project (the main one, or an included one) are read with.
#[derive(Clone)]
struct Scope {
    /// Where relative paths start.
    workdir: PathBuf,
    /// Variables from env files; the process environment wins over them.
    vars: BTreeMap<String, String>,
}

struct Loader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Every file read, as shown in messages; a node's `src` indexes this.
    shown: Vec<PathBuf>,
    /// The same files, absolute (for cycle checks).
    abs: Vec<PathBuf>,
    warnings: Vec<String>,
    project_name: String,
    root: PathBuf,
}

pub(super) fn load(
    files: &[SourceFile],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Project, ProjectError> {
    let root = files[0].dir.clone();
    let vars = env_files(&root, env)?;
    let scope = Scope {
        workdir: root.clone(),
        vars,
    };
    let mut l = Loader {
        env,
        shown: Vec::new(),
        abs: Vec::new(),
        warnings: Vec::new(),
        project_name: String::new(),
        root: root.clone(),
    };
    let mut docs = Vec::new();
    for f in files {
        let src = l.add_file(&f.shown, &f.abs);
        docs.push((src, l.parse(src, &f.text)?));
    }
    l.project_name = l.project_name(&docs, &scope)?;
    let mut stack: Vec<PathBuf> = files.iter().map(|f| f.abs.clone()).collect();
    let mut model = l.load_docs(docs, &scope, &mut stack, true)?;
    strip_tags(&mut model);
    let mut project = l.extract(&model, &scope)?;
    let mut seen = std::collections::BTreeSet::new();
    l.warnings.retain(|w| seen.insert(w.clone()));
    project.warnings = l.warnings;
    project.files = files.iter().map(|f| f.abs.clone()).collect();
    Ok(project)
}

/// The env files of the main project: `COMPOSE_ENV_FILES` or `.env` in the project directory.
fn env_files(
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ProjectError> {
    let mut vars = BTreeMap::new();
    let lookup_in =
        |vars: &BTreeMap<String, String>, k: &str| env(k).or_else(|| vars.get(k).cloned());
    if let Some(list) = env("COMPOSE_ENV_FILES").filter(|v| !v.trim().is_empty()) {
        for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let path = std::path::absolute(f).unwrap_or_else(|_| PathBuf::from(f));
            let snapshot = vars.clone();
            let more = read_dotenv(&path, true, &|k: &str| lookup_in(&snapshot, k))?;
            vars.extend(more);
        }
        return Ok(vars);
    }
    let disabled = env("COMPOSE_DISABLE_ENV_FILE")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "t"));
    if disabled {
        return Ok(vars);
    }
    read_dotenv(&root.join(".env"), false, env)
}

/// `COMPOSE_FILE` (from the environment, else from `.env` in `cwd`): the compose files to
/// load when no `-f` is given, separated by `COMPOSE_PATH_SEPARATOR` (default `:`), relative
/// to `cwd`. `None` when it is not set.
pub(super) fn compose_file_env(
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Vec<PathBuf>>, ProjectError> {
    let dotenv = read_dotenv(&cwd.join(".env"), false, env)?;
    let get = |k: &str| env(k).or_else(|| dotenv.get(k).cloned());
    let Some(list) = get("COMPOSE_FILE").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let sep = get("COMPOSE_PATH_SEPARATOR")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ":".to_string());
    Ok(Some(
        list.split(sep.as_str())
            .filter(|p| !p.is_empty())
            .map(|p| normalize(&cwd.join(p)))
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Files, documents, interpolation
// ---------------------------------------------------------------------------------------------

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Node) -> &'static str {
    match v.value {
        Value::Null => "nothing",
        Value::Scalar(..) => "a string",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
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

fn is_remote(s: &str) -> bool {
    [
        "https://",
        "http://",
        "git://",
        "ssh://",
        "github.com/",
        "git@",
    ]
    .iter()
    .any(|p| s.starts_with(p))
        || s.contains("://")
}

impl Loader<'_> {
    fn add_file(&mut self, shown: &Path, abs: &Path) -> usize {
        self.shown.push(shown.to_path_buf());
        self.abs.push(abs.to_path_buf());
        self.shown.len() - 1
    }

    fn err_at(
        &self,
        src: usize,
        line: Option<usize>,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ProjectError {
        ProjectError::Invalid {
            file: self.shown[src].clone(),
            line,
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn err(
        &self,
        node: &Node,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ProjectError {
        self.err_at(node.src, Some(node.line), key, problem, fix)
    }

    fn parse(&self, src: usize, text: &str) -> Result<Vec<Node>, ProjectError> {
        let mut docs = yaml::parse(text).map_err(|e| {
            self.err_at(
                src,
                Some(e.line),
                "",
                format!("not valid YAML: {}", e.message),
                "correct the YAML syntax (indentation, quoting) at that line",
            )
        })?;
        for d in &mut docs {
            d.set_src(src);
            if d.is_null() {
                d.value = Value::Map(Vec::new());
            }
            if !matches!(d.value, Value::Map(_)) {
                return Err(self.err(
                    d,
                    "",
                    "a compose file must be a mapping at the top",
                    "start the file with `services:`",
                ));
            }
        }
        Ok(docs)
    }

    fn lookup(&self, scope: &Scope, name: &str) -> Option<String> {
        (self.env)(name)
            .or_else(|| scope.vars.get(name).cloned())
            .or_else(|| {
                (name == "COMPOSE_PROJECT_NAME" && !self.project_name.is_empty())
                    .then(|| self.project_name.clone())
            })
    }

    fn home(&self) -> Option<String> {
        (self.env)("HOME").filter(|h| !h.is_empty())
    }

    /// `p` as an absolute path: `~` is the home directory, relative paths start at `base`.
    fn abs_path(&self, p: &str, base: &Path) -> PathBuf {
        let expanded = match (p.strip_prefix('~'), self.home()) {
            (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
                format!("{home}{rest}")
            }
            _ => p.to_string(),
        };
        normalize(&base.join(expanded))
    }

    /// The project name: `COMPOSE_PROJECT_NAME` from the environment or `.env`, else the last
    /// `name:` of the main files (interpolated), else the project directory's name.
    fn project_name(
        &mut self,
        docs: &[(usize, Vec<Node>)],
        scope: &Scope,
    ) -> Result<String, ProjectError> {
        if let Some(n) = self
            .lookup(scope, "COMPOSE_PROJECT_NAME")
            .filter(|n| !n.is_empty())
        {
            return Ok(project_name(&n));
        }
        let mut from_file = None;
        for (_, ds) in docs {
            for d in ds {
                if let Some(n) = d.get("name") {
                    let mut n = n.clone();
                    self.interpolate(&mut n, "name", scope)?;
                    if let Some(s) = n.as_str().filter(|s| !s.is_empty()) {
                        from_file = Some(s.to_string());
                    }
                }
            }
        }
        Ok(project_name(&from_file.unwrap_or_else(|| {
            self.root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })))
    }

    fn interpolate(&mut self, v: &mut Node, path: &str, scope: &Scope) -> Result<(), ProjectError> {
        match &mut v.value {
            Value::Scalar(s, plain) => {
                if !s.contains('$') {
                    return Ok(());
                }
                let mut names = Vec::new();
                let out = {
                    let me = &*self;
                    let mut look =
                        |n: &str| -> Result<Option<String>, ()> { Ok(me.lookup(scope, n)) };
                    interpolate(s, Dialect::Compose, &mut look, &mut names)
                };
                match out {
                    Ok(o) => {
                        *s = o;
                        // An interpolated value is text, whatever it looks like now.
                        *plain = false;
                    }
                    Err(e) => {
                        let (problem, fix) = describe(e);
                        return Err(self.err_at(v.src, Some(v.line), path, problem, fix));
                    }
                }
                for n in names {
                    self.warnings.push(format!(
                        "{}: {path}: variable {n} is not set; using an empty string",
                        self.shown[v.src].display()
                    ));
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.interpolate(item, &format!("{path}[{i}]"), scope)?;
                }
            }
            Value::Map(m) => {
                for (k, item) in m.iter_mut() {
                    self.interpolate(item, &join(path, &k.name), scope)?;
                }
            }
            Value::Null => {}
        }
        Ok(())
    }

    /// Interpolation, short forms and paths of one document, relative to `scope.workdir`.
    fn prepare(&mut self, doc: &mut Node, scope: &Scope) -> Result<(), ProjectError> {
        self.interpolate(doc, "", scope)?;
        let workdir = scope.workdir.clone();
        if let Some(Value::Map(services)) = doc.get_mut("services").map(|s| &mut s.value) {
            for (name, svc) in services.iter_mut() {
                self.prepare_service(&name.name, svc, &workdir)?;
            }
        }
        if let Some(Value::Map(secrets)) = doc.get_mut("secrets").map(|s| &mut s.value) {
            for (_, def) in secrets.iter_mut() {
                if let Some(f) = def.get_mut("file") {
                    if let Some(p) = f.as_str().map(str::to_string) {
                        f.value = Value::Scalar(
                            self.abs_path(&p, &workdir).to_string_lossy().into_owned(),
                            false,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn prepare_service(
        &self,
        name: &str,
        svc: &mut Node,
        workdir: &Path,
    ) -> Result<(), ProjectError> {
        let prefix = format!("services.{name}");
        if let Some(ext) = svc.get_mut("extends") {
            if let Some(f) = ext.get_mut("file") {
                if let Some(p) = f.as_str().map(str::to_string) {
                    f.value = Value::Scalar(
                        self.abs_path(&p, workdir).to_string_lossy().into_owned(),
                        false,
                    );
                }
            }
        }
        let Some(build) = svc.get_mut("build") else {
            return Ok(());
        };
        if let Value::Scalar(dir, _) = &build.value {
            let ctx = Node::string(dir.clone(), build.line);
            let mut m = Node::map(vec![(key("context", build.line), ctx)], build.line);
            m.tag = build.tag;
            m.set_src(build.src);
            *build = m;
        }
        if !matches!(build.value, Value::Map(_)) {
            return Ok(()); // reported with its key when the target is made
        }
        let bp = format!("{prefix}.build");
        for k in MAP_LIKE {
            let Some(v) = build.get_mut(k) else { continue };
            let Value::Seq(items) = &v.value else {
                continue;
            };
            let mut entries: Vec<(Key, Node)> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Some(s) = item.as_str() else {
                    return Err(self.err(
                        item,
                        &format!("{bp}.{k}[{i}]"),
                        "expected a KEY=VALUE string",
                        format!("write `- NAME=value`, or use a mapping under {k}:"),
                    ));
                };
                let (name, value) = match s.split_once('=') {
                    Some((n, v)) => (n.to_string(), Node::string(v, item.line)),
                    None => (s.to_string(), Node::new(Value::Null, item.line)),
                };
                let mut value = value;
                value.set_src(item.src);
                entries.retain(|(e, _)| e.name != name);
                entries.push((key(&name, item.line), value));
            }
            v.value = Value::Map(entries);
        }
        // extra_hosts: a list of HOST:IP / HOST=IP, or a mapping HOST: IP | [IP, …]; one
        // `HOST=IP` string per address, as compose-go's canonical form.
        if let Some(v) = build.get_mut("extra_hosts") {
            if let Value::Map(m) = &v.value {
                let mut items = Vec::new();
                for (host, ips) in m {
                    let ips: Vec<&Node> = match &ips.value {
                        Value::Seq(list) => list.iter().collect(),
                        _ => vec![ips],
                    };
                    for ip in ips {
                        let mut n = Node::string(
                            format!("{}={}", host.name, ip.as_str().unwrap_or_default()),
                            ip.line,
                        );
                        n.set_src(ip.src);
                        items.push(n);
                    }
                }
                v.value = Value::Seq(items);
            }
        }
        // ssh: the mapping form ID: PATH becomes the list form ID=PATH.
        if let Some(v) = build.get_mut("ssh") {
            if let Value::Map(m) = &v.value {
                let items = m
                    .iter()
                    .map(|(id, p)| {
                        let mut n = match p.as_str() {
                            Some(p) if !p.is_empty() => {
                                Node::string(format!("{}={p}", id.name), id.line)
                            }
                            _ => Node::string(id.name.clone(), id.line),
                        };
                        n.set_src(v.src);
                        n
                    })
                    .collect();
                v.value = Value::Seq(items);
            }
            if let Value::Seq(items) = &mut v.value {
                for item in items.iter_mut() {
                    if let Some((id, path)) = item.as_str().and_then(|s| s.split_once('=')) {
                        let abs = self.abs_path(path, workdir);
                        item.value = Value::Scalar(format!("{id}={}", abs.display()), false);
                    }
                }
            }
        }
        // Option strings that name local files (`dest=`, `src=`) start at this file's working
        // directory too; make them absolute before the file is merged with others.
        let lists: [(&[&str], &str, OptionList); 7] = [
            (&[], "cache_from", OptionList::CacheFrom),
            (&[], "cache_to", OptionList::CacheTo),
            (&["x-bk-build"], "outputs", OptionList::Outputs),
            (&["x-bake"], "output", OptionList::Outputs),
            (&["x-bake"], "secret", OptionList::Secrets),
            (&["x-bake"], "cache-from", OptionList::CacheFrom),
            (&["x-bake"], "cache-to", OptionList::CacheTo),
        ];
        for (parent, field, list) in lists {
            let holder = match parent.first() {
                Some(p) => build.get_mut(p),
                None => Some(&mut *build),
            };
            let Some(v) = holder.and_then(|h| h.get_mut(field)) else {
                continue;
            };
            if let Value::Scalar(one, _) = &v.value {
                // x-bake also takes one string of space-separated items.
                let (line, src) = (v.line, v.src);
                let items = one
                    .split_whitespace()
                    .map(|x| {
                        let mut n = Node::string(x, line);
                        n.set_src(src);
                        n
                    })
                    .collect();
                v.value = Value::Seq(items);
            }
            if let Value::Seq(items) = &mut v.value {
                for item in items.iter_mut() {
                    if let Value::Scalar(raw, _) = &mut item.value {
                        *raw = list.absolutize(raw, workdir);
                    }
                }
            }
        }
        if let Some(c) = build.get_mut("context") {
            if let Some(p) = c.as_str().filter(|p| !is_remote(p)).map(str::to_string) {
                c.value = Value::Scalar(
                    self.abs_path(&p, workdir).to_string_lossy().into_owned(),
                    false,
                );
            }
        }
        if let Some(Value::Map(m)) = build.get_mut("additional_contexts").map(|c| &mut c.value) {
            for (_, c) in m.iter_mut() {
                let local = c.as_str().filter(|p| {
                    !is_remote(p) && !p.starts_with("service:") && !p.starts_with("target:")
                });
                if let Some(p) = local.map(str::to_string) {
                    c.value = Value::Scalar(
                        self.abs_path(&p, workdir).to_string_lossy().into_owned(),
                        false,
                    );
                }
            }
        }
        Ok(())
    }

    /// Loads the documents of one project (the main files, or an included project's), in
    /// order: each is prepared, gets its includes and extends, and is merged over the others.
    fn load_docs(
        &mut self,
        docs: Vec<(usize, Vec<Node>)>,
        scope: &Scope,
        stack: &mut Vec<PathBuf>,
        main: bool,
    ) -> Result<Node, ProjectError> {
        let mut model = Node::map(Vec::new(), 1);
        for (src, ds) in docs {
            for mut doc in ds {
                self.prepare(&mut doc, scope)?;
                self.apply_include(&mut doc, scope, stack)?;
                self.apply_extends(&mut doc, src, scope)?;
                merge(&mut model, doc, &mut Vec::new()).map_err(|(node, path)| {
                    self.err(
                        &node,
                        &path,
                        "cannot merge this value with the one an earlier file set (a mapping, a list and a single value do not merge)",
                        "write the same kind of value as the earlier file, or tag it !override to replace it",
                    )
                })?;
            }
        }
        // compose's default context (`.`) is the project directory of the project that
        // defines the service; for the main project that is the root, for an included one
        // its own directory.
        if !main {
            if let Some(Value::Map(services)) = model.get_mut("services").map(|s| &mut s.value) {
                for (_, svc) in services.iter_mut() {
                    if let Some(build) = svc.get_mut("build") {
                        if matches!(build.value, Value::Map(_)) && build.get("context").is_none() {
                            let mut c = Node::string(scope.workdir.to_string_lossy(), build.line);
                            c.set_src(build.src);
                            build.insert(key("context", build.line), c);
                        }
                    }
                }
            }
        }
        Ok(model)
    }

    fn apply_include(
        &mut self,
        doc: &mut Node,
        scope: &Scope,
        stack: &mut Vec<PathBuf>,
    ) -> Result<(), ProjectError> {
        let Some(inc) = doc.remove("include") else {
            return Ok(());
        };
        let items = match inc.value {
            Value::Seq(items) => items,
            Value::Null => return Ok(()),
            _ => {
                return Err(self.err(
                    &inc,
                    "include",
                    format!("expected a list, found {}", type_name(&inc)),
                    "write include: [path/to/compose.yaml]",
                ))
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let ik = format!("include[{i}]");
            let strings = |n: &Node, k: &str| -> Result<Vec<String>, ProjectError> {
                match &n.value {
                    Value::Scalar(s, _) => Ok(vec![s.clone()]),
                    Value::Seq(list) => list
                        .iter()
                        .map(|x| {
                            x.as_str().map(str::to_string).ok_or_else(|| {
                                self.err(x, k, "expected a path", "write a path string")
                            })
                        })
                        .collect(),
                    _ => Err(self.err(
                        n,
                        k,
                        format!("expected a path or a list of paths, found {}", type_name(n)),
                        "write path: ./other/compose.yaml",
                    )),
                }
            };
            let (paths, project_dir, env_file) = match &item.value {
                Value::Scalar(s, _) => (vec![s.clone()], None, None),
                Value::Map(_) => {
                    for (k, _) in item.entries() {
                        if !["path", "project_directory", "env_file"].contains(&k.name.as_str()) {
                            return Err(self.err(
                                &item,
                                &format!("{ik}.{}", k.name),
                                format!("unknown include key `{}`", k.name),
                                "include entries have path, project_directory and env_file",
                            ));
                        }
                    }
                    let Some(p) = item.get("path") else {
                        return Err(self.err(
                            &item,
                            &ik,
                            "include entry without `path`",
                            "write - path: ./other/compose.yaml",
                        ));
                    };
                    let paths = strings(p, &format!("{ik}.path"))?;
                    let dir = match item.get("project_directory") {
                        Some(d) => Some(d.as_str().map(str::to_string).ok_or_else(|| {
                            self.err(
                                d,
                                &format!("{ik}.project_directory"),
                                "expected a directory path",
                                "write project_directory: ./dir",
                            )
                        })?),
                        None => None,
                    };
                    let env_file = match item.get("env_file") {
                        Some(e) => Some(strings(e, &format!("{ik}.env_file"))?),
                        None => None,
                    };
                    (paths, dir, env_file)
                }
                _ => {
                    return Err(self.err(
                        &item,
                        &ik,
                        format!("expected a path or a mapping, found {}", type_name(&item)),
                        "write - path/to/compose.yaml",
                    ))
                }
            };
            if paths.is_empty() {
                return Err(self.err(
                    &item,
                    &ik,
                    "include entry without a path",
                    "write - path/to/compose.yaml",
                ));
            }
            let paths: Vec<PathBuf> = paths
                .iter()
                .map(|p| self.abs_path(p, &scope.workdir))
                .collect();
            let project_dir = match project_dir {
                Some(d) => self.abs_path(&d, &scope.workdir),
                None => paths[0].parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            if stack.len() > MAX_CHAIN || stack.contains(&paths[0]) {
                let mut chain: Vec<String> =
                    stack.iter().map(|p| p.display().to_string()).collect();
                chain.push(paths[0].display().to_string());
                return Err(self.err(
                    &item,
                    &ik,
                    format!("include cycle: {}", chain.join(" includes ")),
                    "remove the include that leads back to a file already being loaded",
                ));
            }
            // The included project's variables: the including project's, then its own env
            // files for what those do not set.
            let env_files: Vec<(PathBuf, bool)> = match env_file {
                Some(list) => list
                    .iter()
                    .filter(|f| f.as_str() != "/dev/null")
                    .map(|f| (self.abs_path(f, &scope.workdir), true))
                    .collect(),
                None => vec![(project_dir.join(".env"), false)],
            };
            let mut vars = scope.vars.clone();
            let mut own: BTreeMap<String, String> = BTreeMap::new();
            for (f, required) in env_files {
                let parent = scope.clone();
                let snapshot = own.clone();
                let env = self.env;
                let more = read_dotenv(&f, required, &|k: &str| {
                    env(k)
                        .or_else(|| parent.vars.get(k).cloned())
                        .or_else(|| snapshot.get(k).cloned())
                })?;
                own.extend(more);
            }
            for (k, v) in own {
                vars.entry(k).or_insert(v);
            }
            let sub = Scope {
                workdir: project_dir,
                vars,
            };
            let mut docs = Vec::new();
            for p in &paths {
                let text = std::fs::read_to_string(p).map_err(|e| ProjectError::Read {
                    path: p.clone(),
                    fix: format!(
                        "{}: {ik}: paths are relative to {}",
                        self.shown[item.src].display(),
                        scope.workdir.display()
                    ),
                    source: e,
                })?;
                let src = self.add_file(p, p);
                docs.push((src, self.parse(src, &text)?));
            }
            stack.push(paths[0].clone());
            let imported = self.load_docs(docs, &sub, stack, false)?;
            stack.pop();
            for kind in ["services", "secrets", "volumes", "networks", "configs"] {
                let Some(Value::Map(from)) = imported.get(kind).map(|n| n.value.clone()) else {
                    continue;
                };
                if doc
                    .get(kind)
                    .is_none_or(|n| !matches!(n.value, Value::Map(_)))
                {
                    doc.insert(key(kind, item.line), Node::map(Vec::new(), item.line));
                }
                let Some(to) = doc.get_mut(kind) else {
                    continue;
                };
                for (name, def) in from {
                    match to.get_mut(&name.name) {
                        Some(mine) => {
                            let mut merged = def;
                            let own = std::mem::replace(mine, Node::new(Value::Null, 0));
                            merge(
                                &mut merged,
                                own,
                                &mut vec![kind.to_string(), name.name.clone()],
                            )
                            .map_err(|(node, path)| {
                                self.err(
                                    &node,
                                    &path,
                                    "cannot merge this value with the included project's",
                                    "write the same kind of value, or tag it !override",
                                )
                            })?;
                            *mine = merged;
                        }
                        None => to.insert(name, def),
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_extends(
        &mut self,
        doc: &mut Node,
        src: usize,
        scope: &Scope,
    ) -> Result<(), ProjectError> {
        let Some(services) = doc
            .get("services")
            .filter(|s| matches!(s.value, Value::Map(_)))
            .cloned()
        else {
            return Ok(());
        };
        let file = self.abs[src].clone();
        let names: Vec<String> = services
            .entries()
            .iter()
            .map(|(k, _)| k.name.clone())
            .collect();
        for name in names {
            let svc = services
                .get(&name)
                .cloned()
                .unwrap_or_else(|| Node::new(Value::Null, 0));
            if svc.get("extends").is_none() {
                continue;
            }
            let mut stack = Vec::new();
            let merged = self.extend(&services, &name, &file, scope, &mut stack)?;
            if let Some(slot) = doc.get_mut("services").and_then(|s| s.get_mut(&name)) {
                *slot = merged;
            }
        }
        Ok(())
    }

    /// The service `name` of `services` (read from `file`) with its `extends` chain applied.
    fn extend(
        &mut self,
        services: &Node,
        name: &str,
        file: &Path,
        scope: &Scope,
        stack: &mut Vec<(PathBuf, String)>,
    ) -> Result<Node, ProjectError> {
        let Some(svc) = services.get(name) else {
            return Ok(Node::new(Value::Null, 0));
        };
        let Some(ext) = svc.get("extends") else {
            return Ok(svc.clone());
        };
        let ek = format!("services.{name}.extends");
        let (base_name, base_file) = match &ext.value {
            Value::Scalar(s, _) => (s.clone(), None),
            Value::Map(_) => {
                let s = ext.get("service").and_then(Node::as_str).ok_or_else(|| {
                    self.err(
                        ext,
                        &ek,
                        "extends needs `service`",
                        "write extends: {service: NAME} or extends: NAME",
                    )
                })?;
                let f = match ext.get("file") {
                    Some(f) => Some(PathBuf::from(f.as_str().ok_or_else(|| {
                        self.err(
                            f,
                            &format!("{ek}.file"),
                            "expected a file path",
                            "write file: ./base.yaml",
                        )
                    })?)),
                    None => None,
                };
                (s.to_string(), f)
            }
            _ => {
                return Err(self.err(
                    ext,
                    &ek,
                    format!(
                        "expected a service name or a mapping, found {}",
                        type_name(ext)
                    ),
                    "write extends: {service: NAME, file: ./base.yaml}",
                ))
            }
        };
        let entry = (
            base_file.clone().unwrap_or_else(|| file.to_path_buf()),
            base_name.clone(),
        );
        let me = (file.to_path_buf(), name.to_string());
        if stack.len() > MAX_CHAIN || stack.contains(&me) || entry == me {
            let mut chain: Vec<String> = stack
                .iter()
                .map(|(f, s)| format!("{s} ({})", f.display()))
                .collect();
            chain.push(format!("{name} ({})", file.display()));
            return Err(self.err(
                ext,
                &ek,
                format!("extends cycle: {}", chain.join(" extends ")),
                "remove the extends that leads back to a service already being extended",
            ));
        }
        stack.push(me);
        let base = match &base_file {
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    self.err(
                        ext,
                        &format!("{ek}.file"),
                        format!("cannot read {}: {e}", f.display()),
                        "paths are relative to the file that names them; name a compose file that exists",
                    )
                })?;
                let src = self.add_file(f, f);
                let own = Scope {
                    workdir: f.parent().map(Path::to_path_buf).unwrap_or_default(),
                    vars: scope.vars.clone(),
                };
                let mut model = Node::map(Vec::new(), 1);
                for mut d in self.parse(src, &text)? {
                    self.prepare(&mut d, &own)?;
                    merge(&mut model, d, &mut Vec::new()).map_err(|(node, path)| {
                        self.err(
                            &node,
                            &path,
                            "cannot merge the documents of this file",
                            "write one document",
                        )
                    })?;
                }
                let others = model
                    .get("services")
                    .cloned()
                    .unwrap_or_else(|| Node::map(Vec::new(), 1));
                if others.get(&base_name).is_none() {
                    return Err(self.err(
                        ext,
                        &ek,
                        format!("service `{base_name}` is not defined in {}", f.display()),
                        "name a service of that file",
                    ));
                }
                self.extend(&others, &base_name, f, &own, stack)?
            }
            None => {
                if services.get(&base_name).is_none() {
                    let names: Vec<&str> = services
                        .entries()
                        .iter()
                        .map(|(k, _)| k.name.as_str())
                        .collect();
                    let hint = suggest(&base_name, names.iter().copied())
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    return Err(self.err(
                        ext,
                        &ek,
                        format!("service `{base_name}` is not defined in this file"),
                        format!("{hint}extends without `file` names a service of the same file"),
                    ));
                }
                self.extend(services, &base_name, file, scope, stack)?
            }
        };
        stack.pop();
        let mut merged = base;
        if merged.is_null() {
            merged = Node::map(Vec::new(), svc.line);
        }
        let mut child = svc.clone();
        child.remove("extends");
        merge(
            &mut merged,
            child,
            &mut vec!["services".to_string(), name.to_string()],
        )
        .map_err(|(node, path)| {
            self.err(
                &node,
                &path,
                "cannot merge this value with the extended service's",
                "write the same kind of value, or tag it !override",
            )
        })?;
        merged.remove("extends");
        Ok(merged)
    }
}

fn describe(e: InterpError<()>) -> (String, String) {
    match e {
        InterpError::Required { var, message } => (
            format!("required variable {var} is missing: {message}"),
            format!("set {var} in the environment or in the .env file of the project directory"),
        ),
        InterpError::Syntax { message } => (
            message,
            "write ${NAME}, ${NAME:-default} or $NAME; write $$ for a literal $".to_string(),
        ),
        InterpError::Undefined { var } => {
            (format!("variable {var} is not set"), format!("set {var}"))
        }
        InterpError::Lookup(()) => ("variable lookup failed".into(), "retry".into()),
    }
}

/// The target a service builds: its name with each `.` made `_` (buildx `bake/compose.go`
/// names compose targets so; a bake target's name cannot hold a `.`).
fn target_name(service: &str) -> String {
    service.replace('.', "_")
}

fn key(name: &str, line: usize) -> Key {
    Key {
        name: name.to_string(),
        line,
    }
}

/// Whether two nodes hold the same value (positions and files aside).
fn same(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Null, Value::Null) => true,
        (Value::Scalar(x, _), Value::Scalar(y, _)) => x == y,
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.iter().any(|(k2, v2)| k.name == k2.name && same(v, v2)))
        }
        _ => false,
    }
}

/// Removes what `!reset` marks (nothing earlier to reset) and forgets `!override` tags.
fn strip_tags(n: &mut Node) {
    n.tag = Tag::None;
    match &mut n.value {
        Value::Map(m) => {
            m.retain(|(_, v)| v.tag != Tag::Reset);
            m.iter_mut().for_each(|(_, v)| strip_tags(v));
        }
        Value::Seq(items) => {
            items.retain(|v| v.tag != Tag::Reset);
            items.iter_mut().for_each(strip_tags);
        }
        _ => {}
    }
}

/// compose's merge of `over` into `base` at `path` (see the module documentation). On a
/// value that cannot merge, the offending node and its dotted path.
fn merge(base: &mut Node, over: Node, path: &mut Vec<String>) -> Result<(), (Node, String)> {
    let Node {
        value,
        line,
        tag,
        src,
    } = over;
    match (&mut base.value, value) {
        (Value::Map(b), Value::Map(o)) => {
            for (k, mut v) in o {
                match v.tag {
                    Tag::Reset => {
                        b.retain(|(e, _)| e.name != k.name);
                        continue;
                    }
                    Tag::Override => {
                        strip_tags(&mut v);
                        match b.iter_mut().find(|(e, _)| e.name == k.name) {
                            Some(slot) => slot.1 = v,
                            None => b.push((k, v)),
                        }
                        continue;
                    }
                    _ => {}
                }
                match b.iter_mut().find(|(e, _)| e.name == k.name) {
                    Some((_, existing)) => {
                        path.push(k.name.clone());
                        let r = merge(existing, v, path);
                        path.pop();
                        r?;
                    }
                    None => {
                        strip_tags(&mut v);
                        b.push((k, v));
                    }
                }
            }
        }
        (Value::Seq(b), Value::Seq(o)) => {
            // Lists under `build` (tags, cache_from, extra_hosts, …) and `profiles` hold each
            // value once; others (compose's runtime keys) are plainly appended.
            let unique = path.len() >= 3
                && path[0] == "services"
                && (path[2] == "build" || path[2] == "profiles");
            for mut item in o {
                if item.tag == Tag::Reset {
                    continue;
                }
                strip_tags(&mut item);
                if !(unique && b.iter().any(|e| same(e, &item))) {
                    b.push(item);
                }
            }
        }
        (_, Value::Null) => {}
        (Value::Map(_), v) | (Value::Seq(_), v) => {
            return Err((
                Node {
                    value: v,
                    line,
                    tag,
                    src,
                },
                path.join("."),
            ));
        }
        (_, v) => {
            let mut n = Node {
                value: v,
                line,
                tag,
                src,
            };
            strip_tags(&mut n);
            *base = n;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

impl Loader<'_> {
    fn scalar(&self, v: &Node, key: &str) -> Result<String, ProjectError> {
        match &v.value {
            Value::Scalar(s, _) => Ok(s.clone()),
            _ => Err(self.err(
                v,
                key,
                format!("expected a string, found {}", type_name(v)),
                format!("write {}: \"...\"", leaf(key)),
            )),
        }
    }

    /// A value of a mapping the compose schema types "string, number or boolean" (`args`,
    /// `labels`): a plain scalar is the text compose-go makes of it after YAML typed it
    /// (`3.10` → `3.1`, see [`plain_scalar_as_compose_text`]).
    fn mapping_value(&self, v: &Node, key: &str) -> Result<String, ProjectError> {
        match &v.value {
            Value::Scalar(s, true) => match plain_scalar_as_compose_text(s) {
                Ok(t) => Ok(t.into_owned()),
                Err(what) => Err(self.err(
                    v,
                    key,
                    format!("{s} is read as {what} by YAML, and compose would pass it on as Go prints that date"),
                    format!("quote it: {}: \"{s}\"", leaf(key)),
                )),
            },
            _ => self.scalar(v, key),
        }
    }

    /// A list of strings; buildx's `x-bake` also takes one string of space-separated items.
    fn strings(
        &self,
        v: &Node,
        key: &str,
        split_one: bool,
    ) -> Result<Vec<(String, String)>, ProjectError> {
        let items = match &v.value {
            Value::Seq(items) => items,
            Value::Scalar(s, _) if split_one => {
                return Ok(s
                    .split_whitespace()
                    .map(|x| (x.to_string(), key.to_string()))
                    .collect())
            }
            _ => {
                return Err(self.err(
                    v,
                    key,
                    format!("expected a list, found {}", type_name(v)),
                    format!("write {}: [\"...\"]", leaf(key)),
                ))
            }
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

    fn mapping<'v>(&self, v: &'v Node, key: &str) -> Result<&'v [(Key, Node)], ProjectError> {
        match &v.value {
            Value::Map(m) => Ok(m),
            _ => Err(self.err(
                v,
                key,
                format!("expected a mapping, found {}", type_name(v)),
                format!("write {}: {{KEY: value}}", leaf(key)),
            )),
        }
    }

    fn boolean(&self, v: &Node, key: &str) -> Result<bool, ProjectError> {
        match v.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            _ => Err(self.err(
                v,
                key,
                format!(
                    "expected true or false, found {}",
                    v.as_str()
                        .map_or(type_name(v).to_string(), |s| format!("{s:?}"))
                ),
                format!("write {}: true", leaf(key)),
            )),
        }
    }

    /// Places an option parser's error at `node` and `key`.
    fn checked<T>(
        &self,
        node: &Node,
        key: &str,
        parsed: Result<T, crate::options::OptionError>,
    ) -> Result<T, ProjectError> {
        parsed.map_err(|e| {
            let f = SourceFile {
                shown: self.shown[node.src].clone(),
                abs: PathBuf::new(),
                dir: PathBuf::new(),
                text: String::new(),
            };
            option_invalid(&f, Some(node.line), key, e)
        })
    }

    fn extract(&mut self, doc: &Node, scope: &Scope) -> Result<Project, ProjectError> {
        for (k, _) in doc.entries() {
            if !TOP_KEYS.contains(&k.name.as_str()) && !k.name.starts_with("x-") {
                let hint = suggest(&k.name, TOP_KEYS.iter().copied())
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                let at = doc.get(&k.name).map_or(0, |n| n.src);
                return Err(self.err_at(
                    at,
                    Some(k.line),
                    &k.name,
                    format!("unknown top-level key `{}`", k.name),
                    format!("{hint}compose files have: {}", TOP_KEYS.join(", ")),
                ));
            }
        }
        let top_secrets = match doc.get("secrets") {
            Some(v) if !v.is_null() => Some(self.mapping(v, "secrets")?),
            _ => None,
        };
        let profiles: Vec<String> = self
            .lookup(scope, "COMPOSE_PROFILES")
            .unwrap_or_default()
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        let mut targets = BTreeMap::new();
        // Target name → service name, where they differ.
        let mut service_of: BTreeMap<String, String> = BTreeMap::new();
        let mut enabled = Vec::new();
        let empty = Node::map(Vec::new(), 1);
        let services = match doc.get("services") {
            Some(v) if !v.is_null() => v,
            _ => &empty,
        };
        for (name, svc) in self.mapping(services, "services")? {
            let name = &name.name;
            let prefix = format!("services.{name}");
            if svc.is_null() {
                continue;
            }
            self.mapping(svc, &prefix)?;
            let Some(build) = svc.get("build").filter(|b| !b.is_null()) else {
                continue;
            };
            if !valid_name(name) {
                return Err(self.err(
                    svc,
                    &prefix,
                    format!("`{name}` is not a valid service name for bk-build"),
                    "use letters, digits, '_', '.' and '-', starting with a letter or digit",
                ));
            }
            let svc_profiles = match svc.get("profiles") {
                Some(p) if !p.is_null() => self
                    .strings(p, &format!("{prefix}.profiles"), false)?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
                _ => Vec::new(),
            };
            if svc_profiles.is_empty()
                || profiles
                    .iter()
                    .any(|p| p == "*" || svc_profiles.contains(p))
            {
                enabled.push(target_name(name));
            }
            let t = self.target(name, svc, build, top_secrets, scope)?;
            let tname = target_name(name);
            if let Some(other) = service_of
                .get(&tname)
                .or(targets.get(&tname).map(|_| &tname))
            {
                return Err(self.err(
                    svc,
                    &prefix,
                    format!("services `{other}` and `{name}` would both be target `{tname}` (a `.` in a service name becomes `_`, as in buildx)"),
                    "rename one of the services",
                ));
            }
            if tname != *name {
                service_of.insert(tname.clone(), name.clone());
            }
            targets.insert(tname, t);
        }
        for (tname, t) in &targets {
            let name = service_of.get(tname).unwrap_or(tname);
            let svc = services.get(name).unwrap_or(&empty);
            for (i, dep) in t.depends_on.iter().enumerate() {
                let key = format!("services.{name}.build.x-bk-build.depends_on[{i}]");
                if !targets.contains_key(dep) {
                    return Err(self.unknown_service(svc, &key, dep, &targets));
                }
            }
            for (cname, src) in &t.contexts {
                if let ContextSource::Target(other) = src {
                    let key = format!("services.{name}.build.additional_contexts.{cname}");
                    if other == tname {
                        return Err(self.err(
                            svc,
                            &key,
                            "a service cannot use its own image as a context",
                            "point it at another service, a directory or docker-image://REF",
                        ));
                    }
                    if !targets.contains_key(other) {
                        return Err(self.unknown_service(svc, &key, other, &targets));
                    }
                }
            }
        }
        let mut groups = BTreeMap::new();
        groups.insert("default".to_string(), enabled);
        Ok(Project {
            root: self.root.clone(),
            files: Vec::new(),
            targets,
            groups,
            default_must_exist: false,
            group_problems: BTreeMap::new(),
            warnings: Vec::new(),
            variables: Vec::new(),
            builders: Vec::new(),
        })
    }

    fn unknown_service(
        &self,
        at: &Node,
        key: &str,
        what: &str,
        targets: &BTreeMap<String, Target>,
    ) -> ProjectError {
        let names: Vec<&str> = targets.keys().map(String::as_str).collect();
        let hint = suggest(what, names.iter().copied())
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        self.err(
            at,
            key,
            format!("`{what}` is not a service with a build section"),
            format!("{hint}services that build: {}", names.join(", ")),
        )
    }

    fn target(
        &mut self,
        name: &str,
        svc: &Node,
        build: &Node,
        top_secrets: Option<&[(Key, Node)]>,
        scope: &Scope,
    ) -> Result<Target, ProjectError> {
        let bp = format!("services.{name}.build");
        self.mapping(build, &bp)?;
        for (k, v) in build.entries() {
            let key = format!("{bp}.{}", k.name);
            if IGNORED_BUILD_KEYS.contains(&k.name.as_str()) {
                self.warnings.push(format!(
                    "{}:{}: {key} is not supported by bk-build and was ignored",
                    self.shown[v.src].display(),
                    k.line
                ));
            } else if !BUILD_KEYS.contains(&k.name.as_str()) && !k.name.starts_with("x-") {
                let hint = suggest(&k.name, BUILD_KEYS.iter().copied())
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                return Err(self.err_at(
                    v.src,
                    Some(k.line),
                    &key,
                    format!("unknown build key `{}`", k.name),
                    format!("{hint}known build keys: {}", BUILD_KEYS.join(", ")),
                ));
            }
        }
        let get = |k: &str| build.get(k).filter(|v| !v.is_null());
        let mut t = Target {
            name: name.to_string(),
            ..Target::default()
        };
        // Problems that only matter when this target is built (a context not checked out);
        // the first one is kept.
        let mut unavailable: Option<String> = None;
        let defer = |u: &mut Option<String>, e: ProjectError| {
            if u.is_none() {
                *u = Some(e.to_string());
            }
        };

        let ctx_key = format!("{bp}.context");
        let ctx_node = get("context");
        let ctx_raw = match ctx_node {
            Some(v) => self.scalar(v, &ctx_key)?,
            None => self.root.to_string_lossy().into_owned(),
        };
        let at = ctx_node.unwrap_or(build);
        t.context = PathBuf::from(&ctx_raw);
        if is_remote(&ctx_raw) {
            defer(
                &mut unavailable,
                self.err(
                    at,
                    &ctx_key,
                    format!("remote build context {ctx_raw:?} is not supported"),
                    "check the repository out and point context at the directory",
                ),
            );
        } else if !t.context.is_dir() {
            defer(&mut unavailable, self.err(at, &ctx_key, format!("context directory {} does not exist (a git submodule that is not checked out?)", t.context.display()), "check it out, or correct the path: a file's relative paths start at the project directory (the first file's), an extended file's at its own directory"));
        }
        let df_key = format!("{bp}.dockerfile");
        if let Some(inline) = get("dockerfile_inline") {
            let text = self.scalar(inline, &format!("{bp}.dockerfile_inline"))?;
            t.dockerfile = super::inline_dockerfile_path(&self.root, &text);
            t.dockerfile_inline = Some(text);
        } else {
            let df_raw = match get("dockerfile") {
                Some(v) => self.scalar(v, &df_key)?,
                None => "Dockerfile".to_string(),
            };
            t.dockerfile = normalize(&t.context.join(&df_raw));
            if unavailable.is_none() && !t.dockerfile.is_file() {
                let at = get("dockerfile").unwrap_or(at);
                defer(&mut unavailable, self.err(at, if get("dockerfile").is_some() { &df_key } else { &ctx_key }, format!("Dockerfile {} does not exist", t.dockerfile.display()), "in compose, dockerfile is relative to the build context; correct the path or add the file"));
            }
        }
        if let Some(v) = get("target") {
            t.target = Some(self.scalar(v, &format!("{bp}.target"))?);
        }
        if let Some(v) = get("args") {
            for (k, val) in self.mapping(v, &format!("{bp}.args"))? {
                let key = format!("{bp}.args.{}", k.name);
                // compose: an arg without value is taken from the environment, or left out.
                let value = match &val.value {
                    Value::Null => match self.lookup(scope, &k.name) {
                        Some(v) => v,
                        None => continue,
                    },
                    _ => self.mapping_value(val, &key)?,
                };
                t.args.insert(k.name.clone(), value);
            }
        }
        if let Some(v) = get("labels") {
            for (k, val) in self.mapping(v, &format!("{bp}.labels"))? {
                let value = match &val.value {
                    Value::Null => String::new(),
                    _ => self.mapping_value(val, &format!("{bp}.labels.{}", k.name))?,
                };
                t.labels.insert(k.name.clone(), value);
            }
        }
        let mut contexts: Vec<(String, String, &Node, String)> = Vec::new();
        if let Some(v) = get("additional_contexts") {
            for (k, val) in self.mapping(v, &format!("{bp}.additional_contexts"))? {
                let key = format!("{bp}.additional_contexts.{}", k.name);
                contexts.push((k.name.clone(), self.scalar(val, &key)?, val, key));
            }
        }
        let xbake = get("x-bake");
        if let Some(x) = xbake {
            if let Some(c) = x.get("contexts") {
                for (k, val) in self.mapping(c, &format!("{bp}.x-bake.contexts"))? {
                    let key = format!("{bp}.x-bake.contexts.{}", k.name);
                    let raw = self.scalar(val, &key)?;
                    let raw = if is_remote(&raw)
                        || raw.starts_with("service:")
                        || raw.starts_with("target:")
                    {
                        raw
                    } else {
                        self.abs_path(&raw, &self.root)
                            .to_string_lossy()
                            .into_owned()
                    };
                    contexts.retain(|(n, ..)| *n != k.name);
                    contexts.push((k.name.clone(), raw, val, key));
                }
            }
        }
        for (cname, raw, val, key) in contexts {
            let src = match raw
                .strip_prefix("service:")
                .or_else(|| raw.strip_prefix("target:"))
            {
                Some(svc) if raw.starts_with("service:") => ContextSource::Target(target_name(svc)),
                Some(target) => ContextSource::Target(target.to_string()),
                None => crate::options::parse_context_source(&raw).map_err(|e| {
                    let f = SourceFile {
                        shown: self.shown[val.src].clone(),
                        abs: PathBuf::new(),
                        dir: PathBuf::new(),
                        text: String::new(),
                    };
                    option_invalid(&f, Some(val.line), &key, e)
                })?,
            };
            let src = match src {
                ContextSource::Local(p) => {
                    let abs = normalize(&self.root.join(p));
                    if !abs.is_dir() {
                        defer(&mut unavailable, self.err(val, &key, format!("additional context directory {} does not exist", abs.display()), "correct the path (relative to the project directory), or use docker-image://REF or service:NAME"));
                    }
                    ContextSource::Local(abs)
                }
                ContextSource::OciLayout(mut l) => {
                    l.path = normalize(&self.root.join(&l.path));
                    ContextSource::OciLayout(l)
                }
                other => other,
            };
            t.contexts.insert(cname, src);
        }

        if let Some(image) = svc.get("image").filter(|v| !v.is_null()) {
            let image = self.scalar(image, &format!("services.{name}.image"))?;
            if !image.is_empty() {
                t.tags.push(image);
            }
        }
        let mut more_tags = Vec::new();
        if let Some(v) = get("tags") {
            more_tags.extend(self.strings(v, &format!("{bp}.tags"), false)?);
        }
        if let Some(v) = xbake.and_then(|x| x.get("tags")) {
            more_tags.extend(self.strings(v, &format!("{bp}.x-bake.tags"), true)?);
        }
        for (tag, _) in more_tags {
            if !tag.is_empty() && !t.tags.contains(&tag) {
                t.tags.push(tag);
            }
        }
        if t.tags.is_empty() {
            // compose's default image name; references must be lower case.
            t.tags
                .push(format!("{}-{name}", self.project_name).to_lowercase());
        }
        let mut platforms: Vec<(String, String, &Node)> = match (
            get("platforms"),
            svc.get("platform").filter(|v| !v.is_null()),
        ) {
            (Some(v), _) => self
                .strings(v, &format!("{bp}.platforms"), false)?
                .into_iter()
                .map(|(s, k)| (s, k, v))
                .collect(),
            (None, Some(p)) => {
                let key = format!("services.{name}.platform");
                vec![(self.scalar(p, &key)?, key, p)]
            }
            (None, None) => Vec::new(),
        };
        if let Some(v) = xbake.and_then(|x| x.get("platforms")) {
            platforms.extend(
                self.strings(v, &format!("{bp}.x-bake.platforms"), true)?
                    .into_iter()
                    .map(|(s, k)| (s, k, v)),
            );
        }
        for (p, key, node) in platforms {
            // `platform: ${DOCKER_PLATFORM:-}`: empty means unset.
            if p.trim().is_empty() {
                continue;
            }
            let p = self.checked(node, &key, OptionList::platform(&p))?;
            if !t.platforms.contains(&p) {
                t.platforms.push(p);
            }
        }
        for (list, field, xfield) in [
            (OptionList::CacheFrom, "cache_from", "cache-from"),
            (OptionList::CacheTo, "cache_to", "cache-to"),
        ] {
            let mut raw = Vec::new();
            if let Some(v) = get(field) {
                raw.extend(
                    self.strings(v, &format!("{bp}.{field}"), false)?
                        .into_iter()
                        .map(|(s, k)| (s, k, v)),
                );
            }
            if let Some(v) = xbake.and_then(|x| x.get(xfield)) {
                raw.extend(
                    self.strings(v, &format!("{bp}.x-bake.{xfield}"), true)?
                        .into_iter()
                        .map(|(s, k)| (s, k, v)),
                );
            }
            for (r, k, node) in raw {
                let c = self.checked(node, &k, list.cache(&r, &self.root))?;
                let out = if list == OptionList::CacheFrom {
                    &mut t.cache_from
                } else {
                    &mut t.cache_to
                };
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        // Attestations, as buildx reads them (`bake/compose.go`): `true`, `false` or options,
        // the SBOM's entry first.
        for kind in ["sbom", "provenance"] {
            let Some(v) = get(kind) else { continue };
            let key = format!("{bp}.{kind}");
            let raw = self.scalar(v, &key)?;
            if let Some(entry) = crate::options::canonical_attest(kind, &raw) {
                t.attest
                    .push(self.checked(v, &key, crate::options::parse_attest(&entry))?);
            }
        }
        let mut ssh = Vec::new();
        if let Some(v) = get("ssh") {
            ssh.extend(
                self.strings(v, &format!("{bp}.ssh"), false)?
                    .into_iter()
                    .map(|(s, k)| (s, k, v)),
            );
        }
        if let Some(v) = xbake.and_then(|x| x.get("ssh")) {
            ssh.extend(
                self.strings(v, &format!("{bp}.x-bake.ssh"), true)?
                    .into_iter()
                    .map(|(s, k)| {
                        // buildx resolves these itself; make `~` and relative paths absolute here.
                        let s = match s.split_once('=') {
                            Some((id, p)) => {
                                format!("{id}={}", self.abs_path(p, &self.root).display())
                            }
                            None => s,
                        };
                        (s, k, v)
                    }),
            );
        }
        for (raw, k, node) in ssh {
            let s = self.checked(node, &k, OptionList::ssh(&raw, &self.root))?;
            if !t.ssh.contains(&s) {
                t.ssh.push(s);
            }
        }
        if let Some(v) = get("secrets") {
            let key = format!("{bp}.secrets");
            let Value::Seq(items) = &v.value else {
                return Err(self.err(
                    v,
                    &key,
                    format!("expected a list, found {}", type_name(v)),
                    "write secrets: [NAME]",
                ));
            };
            for (i, item) in items.iter().enumerate() {
                let k = format!("{key}[{i}]");
                let (source, id) = match &item.value {
                    Value::Map(_) => {
                        let source = item.get("source").ok_or_else(|| {
                            self.err(item, &k, "secret without `source`", "write - source: NAME")
                        })?;
                        let source = self.scalar(source, &format!("{k}.source"))?;
                        let id = match item.get("target") {
                            Some(t) => self.scalar(t, &format!("{k}.target"))?,
                            None => source.clone(),
                        };
                        (source, id)
                    }
                    _ => {
                        let s = self.scalar(item, &k)?;
                        (s.clone(), s)
                    }
                };
                let raw = self.secret(&source, &id, top_secrets, item, &k)?;
                t.secrets
                    .push(self.checked(item, &k, OptionList::secret(&raw, &self.root))?);
            }
        }
        if let Some(v) = xbake.and_then(|x| x.get("secret")) {
            for (raw, k) in self.strings(v, &format!("{bp}.x-bake.secret"), true)? {
                let s = self.checked(v, &k, OptionList::secret(&raw, &self.root))?;
                if !t.secrets.contains(&s) {
                    t.secrets.push(s);
                }
            }
        }
        if let Some(v) = get("pull") {
            t.pull = self.boolean(v, &format!("{bp}.pull"))?;
        }
        if let Some(v) = get("no_cache") {
            t.no_cache = self.boolean(v, &format!("{bp}.no_cache"))?;
        }
        if let Some(v) = get("network") {
            let key = format!("{bp}.network");
            let n = self.scalar(v, &key)?;
            match n.as_str() {
                "" => {}
                "default" | "none" | "host" => {
                    t.network = Some(self.checked(v, &key, crate::options::parse_network(&n))?)
                }
                other => defer(&mut unavailable, self.err(v, &key, format!("network {other:?} is not supported by BuildKit (only default, none and host)"), "remove it, or use network: host")),
            }
        }
        if let Some(v) = get("extra_hosts") {
            for (raw, k) in self.strings(v, &format!("{bp}.extra_hosts"), false)? {
                let h = self.checked(v, &k, crate::options::parse_add_host(&raw))?;
                if !t.extra_hosts.contains(&h) {
                    t.extra_hosts.push(h);
                }
            }
        }
        if let Some(v) = get("shm_size") {
            let key = format!("{bp}.shm_size");
            let raw = self.scalar(v, &key)?;
            let bytes = self.checked(v, &key, crate::options::parse_shm_size(&raw))?;
            t.shm_size = (bytes > 0).then_some(bytes);
        }
        if let Some(v) = get("ulimits") {
            for (k, val) in self.mapping(v, &format!("{bp}.ulimits"))? {
                let key = format!("{bp}.ulimits.{}", k.name);
                let raw = match &val.value {
                    Value::Map(_) => {
                        let part = |p: &str| -> Result<String, ProjectError> {
                            let n = val.get(p).ok_or_else(|| {
                                self.err(
                                    val,
                                    &key,
                                    format!("ulimit without `{p}`"),
                                    "write {soft: 1024, hard: 2048} or a single number",
                                )
                            })?;
                            self.scalar(n, &format!("{key}.{p}"))
                        };
                        format!("{}={}:{}", k.name, part("soft")?, part("hard")?)
                    }
                    _ => format!("{}={}", k.name, self.scalar(val, &key)?),
                };
                t.ulimits
                    .push(self.checked(val, &key, crate::options::parse_ulimit(&raw))?);
            }
            t.ulimits.sort_by_cached_key(|u| u.to_string());
        }
        if let Some(v) = get("privileged") {
            if self.boolean(v, &format!("{bp}.privileged"))? {
                t.entitlements.push("security.insecure".to_string());
            }
        }
        if let Some(v) = get("entitlements") {
            for (e, _) in self.strings(v, &format!("{bp}.entitlements"), false)? {
                if !t.entitlements.contains(&e) {
                    t.entitlements.push(e);
                }
            }
        }
        if t.network == Some(crate::options::Network::Host)
            && !t.entitlements.iter().any(|e| e == "network.host")
        {
            t.entitlements.push("network.host".to_string());
        }
        if let Some(x) = xbake {
            let xp = format!("{bp}.x-bake");
            for (k, val) in self.mapping(x, &xp)? {
                let key = format!("{xp}.{}", k.name);
                match k.name.as_str() {
                    "pull" => t.pull = self.boolean(val, &key)?,
                    "no-cache" => t.no_cache = self.boolean(val, &key)?,
                    "no-cache-filter" => {
                        for (s, _) in self.strings(val, &key, true)? {
                            if !t.no_cache_filter.contains(&s) {
                                t.no_cache_filter.push(s);
                            }
                        }
                    }
                    "output" => {
                        for (raw, kk) in self.strings(val, &key, true)? {
                            let o = self.checked(val, &kk, OptionList::output(&raw, &self.root))?;
                            if !t.outputs.contains(&o) {
                                t.outputs.push(o);
                            }
                        }
                    }
                    n if XBAKE_KEYS.contains(&n) => {} // read above
                    other => {
                        let hint = suggest(other, XBAKE_KEYS.iter().copied())
                            .map(|s| format!("did you mean `{s}`? "))
                            .unwrap_or_default();
                        return Err(self.err_at(
                            val.src,
                            Some(k.line),
                            &key,
                            format!("unknown x-bake key `{other}`"),
                            format!("{hint}x-bake knows: {}", XBAKE_KEYS.join(", ")),
                        ));
                    }
                }
            }
        }
        if let Some(v) = get("x-bk-build") {
            let xp = format!("{bp}.x-bk-build");
            for (k, val) in self.mapping(v, &xp)? {
                let key = format!("{xp}.{}", k.name);
                match k.name.as_str() {
                    "push" => t.push = self.boolean(val, &key)?,
                    "load" => t.load = self.boolean(val, &key)?,
                    "outputs" => {
                        for (raw, kk) in self.strings(val, &key, false)? {
                            let o = self.checked(val, &kk, OptionList::output(&raw, &self.root))?;
                            if !t.outputs.contains(&o) {
                                t.outputs.push(o);
                            }
                        }
                    }
                    "depends_on" => {
                        t.depends_on = self
                            .strings(val, &key, false)?
                            .into_iter()
                            .map(|(s, _)| target_name(&s))
                            .collect()
                    }
                    other => {
                        let hint = suggest(other, EXTENSION_KEYS.iter().copied())
                            .map(|s| format!("did you mean `{s}`? "))
                            .unwrap_or_default();
                        return Err(self.err_at(
                            val.src,
                            Some(k.line),
                            &key,
                            format!("unknown x-bk-build key `{other}`"),
                            format!("{hint}x-bk-build knows: {}", EXTENSION_KEYS.join(", ")),
                        ));
                    }
                }
            }
        }
        t.unavailable = unavailable;
        Ok(t)
    }

    /// A compose build secret as a `--secret` string, from the top-level `secrets:` entry.
    fn secret(
        &self,
        source: &str,
        id: &str,
        top: Option<&[(Key, Node)]>,
        at: &Node,
        key: &str,
    ) -> Result<String, ProjectError> {
        let Some((_, def)) = top.and_then(|m| m.iter().find(|(k, _)| k.name == source)) else {
            return Err(self.err(
                at,
                key,
                format!("secret `{source}` is not defined in the top-level secrets"),
                format!("add a top-level secrets: {{{source}: {{file: ./path}}}} (or {{environment: VAR}})"),
            ));
        };
        let dk = format!("secrets.{source}");
        self.mapping(def, &dk)?;
        if let Some(f) = def.get("file") {
            let path = self.scalar(f, &format!("{dk}.file"))?;
            return Ok(format!("id={id},src={path}"));
        }
        if let Some(e) = def.get("environment") {
            return Ok(format!(
                "id={id},env={}",
                self.scalar(e, &format!("{dk}.environment"))?
            ));
        }
        Err(self.err(
            def,
            &dk,
            "a build secret needs `file` or `environment`",
            "add file: ./path or environment: VAR",
        ))
    }
}
