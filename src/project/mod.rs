//! Loading a project: `bk-build.toml` files, or docker-compose files and buildx bake files
//! (`docker-bake.hcl`, `docker-bake.json`), merged, interpolated and validated into one plain
//! [`Project`].
//!
//! This module owns the file formats, their merge rules (later `-f` files win; compose files
//! before bake files, as buildx does), variable interpolation, path resolution (bk-build.toml:
//! relative to the file that sets the key; compose: relative to the first file's directory, as
//! compose does; bake files: relative to the current directory, as buildx does) and every
//! validation that
//! can be done from the files and the disk alone, with errors that name the file, the key path
//! and the fix. Option strings (`secrets`, `outputs`, `cache_to`, …) are parsed here, once, with
//! the [`crate::options`] parsers the CLI uses, into typed values that keep their spelling
//! ([`Spelled`]); nothing further in parses them again. It must not know about BuildKit, the
//! network or the dependency graph.
//!
//! Command-line overrides (`bake --set`, `--push`, …) are applied to a loaded project by
//! [`overrides`], after every file, whatever its format.
//!
//! Format reference (bk-build.toml): top-level tables `[vars]` (defaults for `${VAR}`; the
//! environment overrides them), `[defaults]` (target keys every target inherits unless it sets
//! its own; `args`, `labels` and `contexts` are merged entry by entry), `[target.NAME]` and
//! `[group.NAME] targets = [...]`. Strings may use `${VAR}`, `${VAR:-default}` (and `-`, `:?`,
//! `?`, `:+`, `+`), `$$` for a literal `$`, and `{name}` for the target's name. Built-in
//! variables: `GIT_SHA`, `GIT_SHORT_SHA`, `GIT_BRANCH` (`HEAD` when detached) and
//! `GIT_BRANCH_SLUG` (the branch made tag-safe), computed with git in the project root only
//! when used.

mod bake_file;
mod compose;
mod dotenv;
mod interp;
pub mod overrides;
mod toml_file;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::options::ContextSource;
use crate::options::{
    AddHost, AttestSpec, CacheSpec, Network, OptionError, OutputSpec, SecretSpec, Spelled, SshSpec,
    Ulimit,
};

/// A loaded project: every target fully resolved (absolute paths, interpolated strings).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Project {
    /// Directory of the first project file.
    pub root: PathBuf,
    /// The project files, absolute, in merge order.
    pub files: Vec<PathBuf>,
    pub targets: BTreeMap<String, Target>,
    /// Group name → member names (targets or other groups), as written. A project without a
    /// `default` group builds all targets by default, unless `default_must_exist`.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Naming no target means the `default` group or target, which must exist (bake files, as
    /// in buildx: `failed to find target default`); when false, a project without one builds
    /// every target by default (bk-build.toml).
    pub default_must_exist: bool,
    /// Groups that cannot be expanded (a bake-file group naming a target a matrix no longer
    /// makes), with the complete message: as in buildx, only naming such a group (or a group
    /// that contains it) fails, not loading the file.
    pub group_problems: BTreeMap<String, String>,
    /// Things the user should see but that do not stop the load (compose: unset variables
    /// replaced by "", build keys bk-build ignores).
    pub warnings: Vec<String>,
    /// The project's variables with the values the load used, sorted by name (`bake --list
    /// variables`): bk-build.toml's `[vars]` (an environment variable of the same name wins).
    /// Compose files have none.
    pub variables: Vec<Variable>,
    /// The daemons `bake` builds on when neither `--addr` nor `$BUILDKIT_HOST` names any
    /// (bk-build.toml's `[builders.NAME]`, in the order written: files as given, then lines; the
    /// first is the engine that `load` images go to). Empty: discover one, as always.
    pub builders: Vec<Builder>,
}

/// One daemon of a project's pool (`[builders.NAME]` in bk-build.toml). Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Builder {
    pub name: String,
    /// The bk-build.toml that declares it (absolute), for its messages.
    pub file: PathBuf,
    /// A BuildKit address as `--addr` takes it.
    pub addr: String,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
    pub tlsservername: Option<String>,
    pub tlsdir: Option<PathBuf>,
    /// Builds it runs at once (its weight in the pool); `None`: its CPU count.
    pub jobs: Option<usize>,
    /// The platforms it builds natively (`os/arch[/variant]`), which route targets to it;
    /// empty: the ones its workers report.
    pub platforms: Vec<String>,
}

/// One project variable, as `docker buildx bake --list variables` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Variable {
    pub name: String,
    /// The value in effect; `None` when it has none (buildx prints `<null>`).
    pub value: Option<String>,
    /// A declared type (bake files' `type = …`), if any.
    pub type_name: Option<String>,
    pub description: Option<String>,
}

/// One image to build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub name: String,
    /// Absolute path of the build context directory.
    pub context: PathBuf,
    /// Absolute path of the Dockerfile (default `<context>/Dockerfile`).
    pub dockerfile: PathBuf,
    /// Dockerfile stage to build.
    pub target: Option<String>,
    pub args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Named contexts by the name the Dockerfile uses, as written in the file. Local
    /// directories are absolute.
    pub contexts: BTreeMap<String, ContextSource>,
    pub tags: Vec<String>,
    /// Platforms as `--platform` takes them (`os/arch[/variant]` or `local`), each checked; an
    /// entry may list several, comma-separated, as buildx keeps them.
    pub platforms: Vec<String>,
    /// `--secret` entries; relative `src=` paths are made absolute before parsing.
    pub secrets: Vec<Spelled<SecretSpec>>,
    /// `--ssh` entries; relative socket/key paths are made absolute before parsing.
    pub ssh: Vec<Spelled<SshSpec>>,
    /// `--cache-from` entries (one string may name several registry refs).
    pub cache_from: Vec<Spelled<Vec<CacheSpec>>>,
    /// `--cache-to` entries; a local `dest=` is made absolute before parsing.
    pub cache_to: Vec<Spelled<Vec<CacheSpec>>>,
    /// `--output` entries; relative `dest=` paths are made absolute before parsing.
    pub outputs: Vec<Spelled<OutputSpec>>,
    pub push: bool,
    pub load: bool,
    pub no_cache: bool,
    /// Always ask the registry for the newest image of each base tag (`--pull`); the
    /// fingerprint then includes the digests the registry gives for them.
    pub pull: bool,
    /// Explicit dependencies (target names).
    pub depends_on: Vec<String>,
    /// Network of RUN steps (`host` also puts `network.host` in `entitlements`, as buildx
    /// does). `None`: not set, the daemon's default.
    pub network: Option<Network>,
    /// `/etc/hosts` entries for RUN steps.
    pub extra_hosts: Vec<AddHost>,
    /// Size of `/dev/shm` in RUN steps, in bytes.
    pub shm_size: Option<u64>,
    /// Resource limits of RUN steps, sorted by their `NAME=SOFT:HARD` form.
    pub ulimits: Vec<Ulimit>,
    /// Privileges the build asks the daemon for (`network.host`, `security.insecure`); the
    /// daemon must be configured to allow them.
    pub entitlements: Vec<String>,
    /// Stages built without the build cache (`no-cache-filter`); the target is always built.
    pub no_cache_filter: Vec<String>,
    /// Attestations to attach, one per type (`type=sbom,disabled=true` asks for none).
    pub attest: Vec<AttestSpec>,
    /// Image annotations (`--annotation` entries, each possibly of several types), in order:
    /// a later one for the same place replaces an earlier one.
    pub annotations: Vec<Spelled<Vec<crate::options::Annotation>>>,
    /// The Dockerfile's text when the project file holds it (compose `dockerfile_inline`).
    /// `dockerfile` then names the file [`materialize`] writes it to, under the project's
    /// state directory, so it is served and fingerprinted like any other Dockerfile.
    pub dockerfile_inline: Option<String>,
    /// Why this target cannot be built (its context directory is missing, …), as a complete
    /// message. Loading, `--print` and other targets are not affected: only planning or
    /// building this target (or what needs it) fails, with this message.
    pub unavailable: Option<String>,
}

/// Why a project could not be loaded. Every message says what is wrong, where, and how to fix
/// it.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// No project file in the directory and none given.
    #[error(
        "no project file in {}: looked for {}\n  fix: create bk-build.toml there (see examples/monorepo), or name the file with -f",
        dir.display(),
        DISCOVER_NAMES.join(", ")
    )]
    NotFound { dir: PathBuf },
    /// A project file (or a path it names) could not be read.
    #[error("{}: cannot read: {source}\n  fix: {fix}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        fix: String,
    },
    /// A value is missing, malformed or points at something that does not exist.
    #[error("{}{}{}: {problem}\n  fix: {fix}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!(": {key}") })]
    Invalid {
        /// The file that set the offending key, as given by the user.
        file: PathBuf,
        /// 1-based line of the offending value, when known.
        line: Option<usize>,
        /// Dotted key path, e.g. `target.service_1.args.BASE`; empty for whole-file problems.
        key: String,
        problem: String,
        fix: String,
    },
}

/// File names [`discover`] looks for, in order of preference.
pub const DISCOVER_NAMES: &[&str] = &[
    "bk-build.toml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
    "docker-bake.json",
    "docker-bake.hcl",
    "docker-bake.override.json",
    "docker-bake.override.hcl",
];

/// The compose file names [`discover`] looks for (the first that exists is used).
const COMPOSE_NAMES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Override files compose reads after the main file when no `-f` is given.
const COMPOSE_OVERRIDES: &[&str] = &[
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

/// Finds the project files in `cwd`: `bk-build.toml` alone when it exists; else the compose
/// files (those `COMPOSE_FILE` names, else the first compose file name that exists, in
/// compose's own order, followed by its override file when there is one, as `docker compose`
/// does without `-f`), then every bake file that exists in buildx's order
/// (`docker-bake.json`, `docker-bake.hcl`, `docker-bake.override.json`,
/// `docker-bake.override.hcl`), as `docker buildx bake` reads them all.
pub fn discover(cwd: &Path) -> Result<Vec<PathBuf>, ProjectError> {
    discover_with_env(cwd, &|k: &str| std::env::var(k).ok())
}

/// [`discover`] with the environment given: compose's `COMPOSE_FILE` (from `env`, else from
/// `.env` in `cwd`) names the compose files, separated by `COMPOSE_PATH_SEPARATOR` (default
/// `:`), as `docker compose` reads it without `-f`.
pub fn discover_with_env(
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<PathBuf>, ProjectError> {
    let toml = cwd.join("bk-build.toml");
    if toml.is_file() {
        return Ok(vec![toml]);
    }
    let mut files = match compose::compose_file_env(cwd, env)? {
        Some(files) => files,
        None => {
            let mut files = Vec::new();
            if let Some(p) = COMPOSE_NAMES
                .iter()
                .map(|n| cwd.join(n))
                .find(|p| p.is_file())
            {
                files.push(p);
                if let Some(o) = COMPOSE_OVERRIDES
                    .iter()
                    .map(|o| cwd.join(o))
                    .find(|o| o.is_file())
                {
                    files.push(o);
                }
            }
            files
        }
    };
    files.extend(
        bake_file::DEFAULT_FILES
            .iter()
            .map(|n| cwd.join(n))
            .filter(|p| p.is_file()),
    );
    if files.is_empty() {
        return Err(ProjectError::NotFound {
            dir: cwd.to_path_buf(),
        });
    }
    Ok(files)
}

/// The project files named by `BUILDX_BAKE_FILE` (separated by `BUILDX_BAKE_FILE_SEPARATOR`,
/// default `:`), which `docker buildx bake` reads when no `-f` is given; `None` when it is not
/// set. A named file that does not exist is an error, as in buildx.
pub fn files_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Vec<PathBuf>>, ProjectError> {
    let Some(list) = env("BUILDX_BAKE_FILE") else {
        return Ok(None);
    };
    let sep = env("BUILDX_BAKE_FILE_SEPARATOR")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ":".into());
    let mut files = Vec::new();
    for f in list
        .split(sep.as_str())
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        let p = PathBuf::from(f);
        if f != "-" && !p.exists() {
            return Err(ProjectError::Read {
                path: p,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
                fix: "correct BUILDX_BAKE_FILE (files separated by BUILDX_BAKE_FILE_SEPARATOR, default :), or unset it".into(),
            });
        }
        files.push(p);
    }
    Ok(Some(files))
}

/// Loads and merges `files` (all bk-build.toml, or compose and bake files), in order. `env`
/// looks up environment variables; it is a parameter so callers and tests control it.
/// Relative paths in bake files are taken from the current directory.
pub fn load(
    files: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Project, ProjectError> {
    load_in(files, env, &bake_file::cwd())
}

/// [`load`] with the directory bake-file paths are relative to.
pub fn load_in(
    files: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<Project, ProjectError> {
    let (sources, kinds) = read_sources(files)?;
    if kinds[0] == FileKind::Toml {
        return toml_file::load(&sources, env);
    }
    // buildx reads every compose file first, then the bake files on top, whatever the order
    // of -f.
    let mut compose_files = Vec::new();
    let mut bake_files = Vec::new();
    for (s, k) in sources.into_iter().zip(kinds) {
        match k {
            FileKind::Bake(syntax) => bake_files.push((s, syntax)),
            _ => compose_files.push(s),
        }
    }
    let compose = if compose_files.is_empty() {
        None
    } else {
        Some(compose::load(&compose_files, env)?)
    };
    match (compose, bake_files.is_empty()) {
        (Some(p), true) => Ok(p),
        (compose, _) => bake_file::load(compose, &bake_files, env, cwd),
    }
}

/// The pool of daemons `files` declare (bk-build.toml's `[builders]`, with the `[vars]` their
/// addresses use), read without resolving targets and groups, so that a mistake in a target
/// does not hide them: what `info`, `workers`, `du` and `prune` act on. The project returned
/// has its `root`, `files` and `builders`; its targets and groups are empty. Compose and bake
/// files declare no builders.
///
/// Errors: as [`load`] for the files and for `[vars]` and `[builders]`.
pub fn load_builders(
    files: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Project, ProjectError> {
    let (sources, kinds) = read_sources(files)?;
    if kinds[0] == FileKind::Toml {
        return toml_file::load_scoped(&sources, env, toml_file::Scope::Builders);
    }
    Ok(Project {
        root: sources[0].dir.clone(),
        files: sources.iter().map(|s| s.abs.clone()).collect(),
        ..Default::default()
    })
}

/// Reads every project file (`-` from standard input) and tells their kinds apart; bk-build
/// TOML files do not mix with compose and bake files. At least one file is returned.
fn read_sources(files: &[PathBuf]) -> Result<(Vec<SourceFile>, Vec<FileKind>), ProjectError> {
    let Some(first) = files.first() else {
        return Err(ProjectError::NotFound {
            dir: std::env::current_dir().unwrap_or_default(),
        });
    };
    let mut sources = Vec::with_capacity(files.len());
    let mut kinds = Vec::with_capacity(files.len());
    let mut stdin_used = false;
    for f in files {
        if f.as_os_str() == "-" {
            // `-f -`: the file comes from standard input; its directory is the current one.
            if std::mem::replace(&mut stdin_used, true) {
                return Err(ProjectError::Invalid {
                    file: f.clone(),
                    line: None,
                    key: String::new(),
                    problem: "standard input (-f -) is named twice".into(),
                    fix: "pass -f - once".into(),
                });
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
                ProjectError::Read {
                    path: f.clone(),
                    source: e,
                    fix: "pipe a UTF-8 compose or bake file into bk-build".into(),
                }
            })?;
            let dir = std::env::current_dir().map_err(|e| ProjectError::Read {
                path: f.clone(),
                source: e,
                fix: "run bk-build from an existing directory".into(),
            })?;
            kinds.push(bake_file::Syntax::sniff(&text).map_or(FileKind::Compose, FileKind::Bake));
            sources.push(SourceFile {
                shown: f.clone(),
                abs: f.clone(),
                dir,
                text,
            });
            continue;
        }
        let abs =
            std::path::absolute(f)
                .map(|p| normalize(&p))
                .map_err(|e| ProjectError::Read {
                    path: f.clone(),
                    source: e,
                    fix: "run bk-build from an existing directory".into(),
                })?;
        let text = std::fs::read_to_string(&abs).map_err(|e| ProjectError::Read {
            path: f.clone(),
            fix: if e.kind() == std::io::ErrorKind::NotFound {
                "check the -f path; relative paths are taken from the current directory".into()
            } else {
                "make the file readable (and UTF-8)".into()
            },
            source: e,
        })?;
        let kind = FileKind::of(f, &text).ok_or_else(|| ProjectError::Invalid {
            file: f.clone(),
            line: None,
            key: String::new(),
            problem: "unknown project file type".into(),
            fix: "use a bk-build .toml file, a compose .yml/.yaml file or a bake .hcl/.json file"
                .into(),
        })?;
        kinds.push(kind);
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        sources.push(SourceFile {
            shown: f.clone(),
            abs,
            dir,
            text,
        });
    }
    let is_toml = |k: &FileKind| *k == FileKind::Toml;
    if let Some(i) = kinds.iter().position(|k| is_toml(k) != is_toml(&kinds[0])) {
        return Err(ProjectError::Invalid {
            file: files[i].clone(),
            line: None,
            key: String::new(),
            problem: format!(
                "cannot merge a {} file into a {} project ({})",
                kinds[i].label(),
                kinds[0].label(),
                first.display()
            ),
            fix: "pass only bk-build.toml files, or only compose and bake files, with -f".into(),
        });
    }
    Ok((sources, kinds))
}

/// Where a target's inline Dockerfile (compose `dockerfile_inline`) is written: under the
/// project's state directory, named by its content, so equal texts share one file and a
/// changed text is a new file (never a file rewritten under a running build).
pub fn inline_dockerfile_path(root: &Path, text: &str) -> PathBuf {
    let hash = blake3::hash(text.as_bytes()).to_hex();
    root.join(crate::fingerprint::STATE_DIR_NAME)
        .join("inline")
        .join(&hash.as_str()[..32])
        .join("Dockerfile")
}

/// Writes the inline Dockerfiles of `project`'s targets where their `dockerfile` says
/// (atomically: a temporary file renamed into place), so that they are read, served and
/// fingerprinted like any other Dockerfile. Files already there with the same content are
/// left alone.
pub fn materialize(project: &Project) -> Result<(), ProjectError> {
    for t in project.targets.values() {
        let Some(text) = &t.dockerfile_inline else {
            continue;
        };
        if std::fs::read(&t.dockerfile).is_ok_and(|b| b == text.as_bytes()) {
            continue;
        }
        let write = || -> std::io::Result<()> {
            let dir = t.dockerfile.parent().unwrap_or(&project.root);
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut tmp, text.as_bytes())?;
            tmp.as_file().sync_all()?;
            tmp.persist(&t.dockerfile).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| ProjectError::Read {
            path: t.dockerfile.clone(),
            source: e,
            fix: format!(
                "target `{}` has dockerfile_inline, which bk-build writes there: make the project directory writable",
                t.name
            ),
        })?;
    }
    Ok(())
}

/// The annotations `t` gives its image, one per exporter attribute: a later entry for the same
/// place replaces an earlier one, as buildx's map of them does.
pub fn annotations(t: &Target) -> Vec<crate::options::Annotation> {
    let mut out: Vec<crate::options::Annotation> = Vec::new();
    for a in t.annotations.iter().flat_map(|s| s.value()) {
        out.retain(|x| x.exporter_attr() != a.exporter_attr());
        out.push(a.clone());
    }
    out
}

/// The resolved project as JSON, shaped like `docker buildx bake --print`
/// (`{"group": {...}, "target": {...}}`) plus `root` and `files`.
pub fn to_json(project: &Project) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    let strs = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    fn shown<T: std::fmt::Display>(v: &[T]) -> serde_json::Value {
        serde_json::Value::Array(
            v.iter()
                .map(|x| serde_json::Value::String(x.to_string()))
                .collect(),
        )
    }
    let map = |m: &BTreeMap<String, String>| {
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    };
    let mut targets = Map::new();
    for (name, t) in &project.targets {
        let contexts: Map<String, Value> = t
            .contexts
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(context_source_string(v))))
            .collect();
        let mut extra = Map::new();
        if let Some(n) = t.network {
            extra.insert("network".into(), Value::String(n.to_string()));
        }
        if !t.extra_hosts.is_empty() {
            extra.insert("extra_hosts".into(), shown(&t.extra_hosts));
        }
        if let Some(s) = t.shm_size {
            extra.insert("shm_size".into(), json!(s));
        }
        if !t.ulimits.is_empty() {
            extra.insert("ulimits".into(), shown(&t.ulimits));
        }
        if !t.entitlements.is_empty() {
            extra.insert("entitlements".into(), strs(&t.entitlements));
        }
        if !t.no_cache_filter.is_empty() {
            extra.insert("no_cache_filter".into(), strs(&t.no_cache_filter));
        }
        if !t.attest.is_empty() {
            extra.insert("attest".into(), shown(&t.attest));
        }
        if !t.annotations.is_empty() {
            extra.insert("annotations".into(), shown(&t.annotations));
        }
        if let Some(d) = &t.dockerfile_inline {
            extra.insert("dockerfile_inline".into(), Value::String(d.clone()));
        }
        if let Some(u) = &t.unavailable {
            extra.insert("unavailable".into(), Value::String(u.clone()));
        }
        let mut target = json!({
            "context": path(&t.context),
            "dockerfile": path(&t.dockerfile),
            "target": t.target,
            "args": map(&t.args),
            "labels": map(&t.labels),
            "contexts": contexts,
            "tags": strs(&t.tags),
            "platforms": strs(&t.platforms),
            "secrets": shown(&t.secrets),
            "ssh": shown(&t.ssh),
            "cache_from": shown(&t.cache_from),
            "cache_to": shown(&t.cache_to),
            "outputs": shown(&t.outputs),
            "push": t.push,
            "load": t.load,
            "no_cache": t.no_cache,
            "pull": t.pull,
            "depends_on": strs(&t.depends_on),
        });
        if let Some(obj) = target.as_object_mut() {
            obj.extend(extra);
        }
        targets.insert(name.clone(), target);
    }
    let groups: Map<String, Value> = project
        .groups
        .iter()
        .map(|(k, v)| (k.clone(), json!({ "targets": strs(v) })))
        .collect();
    json!({
        "root": path(&project.root),
        "files": project.files.iter().map(|f| path(f)).collect::<Vec<_>>(),
        "group": groups,
        "target": targets,
    })
}

/// The `contexts` value as a user would write it (`docker-image://…`, `target:…`, a path).
pub fn context_source_string(source: &ContextSource) -> String {
    match source {
        ContextSource::Local(p) => p.to_string_lossy().into_owned(),
        ContextSource::DockerImage(r) => format!("docker-image://{r}"),
        ContextSource::Target(t) => format!("target:{t}"),
        ContextSource::OciLayout(r) => r.to_string(),
        ContextSource::Remote(u) => u.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared between the two formats
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FileKind {
    Toml,
    Compose,
    Bake(bake_file::Syntax),
}

impl FileKind {
    /// `.toml` is bk-build's format, `.hcl` and `.json` are bake files; a file with another
    /// or no extension (or `-`, standard input) is a bake file when its content reads as one,
    /// else compose YAML, as `docker compose -f` reads any file name.
    fn of(path: &Path, text: &str) -> Option<FileKind> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Some(FileKind::Toml),
            Some("yml" | "yaml") => Some(FileKind::Compose),
            _ => Some(
                bake_file::Syntax::of(path)
                    .or_else(|| bake_file::Syntax::sniff(text))
                    .map_or(FileKind::Compose, FileKind::Bake),
            ),
        }
    }

    fn label(self) -> &'static str {
        match self {
            FileKind::Toml => "bk-build.toml",
            FileKind::Compose => "compose",
            FileKind::Bake(_) => "bake",
        }
    }
}

/// One input file, read once.
struct SourceFile {
    /// The path as the user gave it (used in messages).
    shown: PathBuf,
    abs: PathBuf,
    /// Absolute directory of the file: the base for its relative paths.
    dir: PathBuf,
    text: String,
}

fn invalid(
    file: &SourceFile,
    line: Option<usize>,
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ProjectError {
    ProjectError::Invalid {
        file: file.shown.clone(),
        line,
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Re-renders an option-syntax error at a project-file location.
fn option_invalid(
    file: &SourceFile,
    line: Option<usize>,
    key: &str,
    e: OptionError,
) -> ProjectError {
    invalid(
        file,
        line,
        key,
        format!(
            "{:?} is not a valid {} value: {}",
            e.input, e.flag, e.reason
        ),
        format!("write it like {:?}", e.example),
    )
}

/// Which option list a string belongs to; selects the parser and the fields that hold
/// client-side paths (made absolute before parsing: the value is used far from the file that
/// named it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OptionList {
    Secrets,
    Ssh,
    CacheFrom,
    CacheTo,
    Outputs,
}

impl OptionList {
    /// Checks a `platforms` entry with the CLI's parser; the checked string is the value.
    fn platform(raw: &str) -> Result<String, OptionError> {
        crate::options::parse_platforms(raw).map(|_| raw.to_string())
    }

    /// Parses a `secrets` entry, its relative `src=` made absolute against `base`.
    fn secret(raw: &str, base: &Path) -> Result<Spelled<SecretSpec>, OptionError> {
        Spelled::parse(
            Self::Secrets.absolutize(raw, base),
            crate::options::parse_secret,
        )
    }

    /// Parses an `ssh` entry, its relative socket/key paths made absolute against `base`.
    fn ssh(raw: &str, base: &Path) -> Result<Spelled<SshSpec>, OptionError> {
        Spelled::parse(Self::Ssh.absolutize(raw, base), crate::options::parse_ssh)
    }

    /// Parses a `cache_from` (`list` = `CacheFrom`) or `cache_to` entry, a local directory
    /// made absolute against `base`.
    fn cache(self, raw: &str, base: &Path) -> Result<Spelled<Vec<CacheSpec>>, OptionError> {
        let parse = if self == Self::CacheFrom {
            crate::options::parse_cache_from
        } else {
            crate::options::parse_cache_to
        };
        Spelled::parse(self.absolutize(raw, base), parse)
    }

    /// Parses an `outputs` entry, its relative `dest=` made absolute against `base`.
    fn output(raw: &str, base: &Path) -> Result<Spelled<OutputSpec>, OptionError> {
        Spelled::parse(
            Self::Outputs.absolutize(raw, base),
            crate::options::parse_output,
        )
    }

    fn absolutize(self, raw: &str, base: &Path) -> String {
        // Quoted CSV fields are rare here; rewriting them would need a full CSV writer, so such
        // strings are left exactly as written.
        if raw.contains('"') {
            return raw.to_string();
        }
        let abs = |p: &str| -> String {
            if p.is_empty() || p == "-" || p.starts_with('$') || p.starts_with('~') {
                p.to_string()
            } else {
                base.join(p).to_string_lossy().into_owned()
            }
        };
        match self {
            OptionList::Ssh => match raw.split_once('=') {
                Some((id, paths)) => {
                    let paths: Vec<String> = paths.split(',').map(abs).collect();
                    format!("{id}={}", paths.join(","))
                }
                None => raw.to_string(),
            },
            OptionList::Outputs if !raw.contains('=') && !raw.contains(',') => abs(raw),
            _ => {
                let fields: Vec<&str> = raw.split(',').collect();
                let is_local = fields
                    .iter()
                    .any(|f| *f == "type=local" || *f == "type=tar" || *f == "type=oci");
                let path_keys: &[&str] = match self {
                    OptionList::Secrets => {
                        if fields.contains(&"type=env") {
                            &[]
                        } else {
                            &["src", "source"]
                        }
                    }
                    OptionList::Outputs => &["dest"],
                    OptionList::CacheFrom | OptionList::CacheTo if is_local => &["src", "dest"],
                    _ => &[],
                };
                fields
                    .iter()
                    .map(|f| match f.split_once('=') {
                        Some((k, v)) if path_keys.contains(&k) => format!("{k}={}", abs(v)),
                        _ => (*f).to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            }
        }
    }
}

/// Removes `.` and resolves `..` lexically so paths in messages and JSON read cleanly
/// (symlinks are left alone on purpose: the user's spelling is what they will recognise).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A close spelling among `candidates`, for "did you mean" hints.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Target and group names end up in tags (`{name}`), `target:NAME` references and CLI
/// arguments, so they are kept to a safe alphabet.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Values as their option strings, for tests that compare with what a file says.
#[cfg(test)]
pub(crate) fn spelled<T: std::fmt::Display>(v: &[T]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests;
