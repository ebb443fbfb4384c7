//! The command line: clap definitions shaped like `docker buildx build`, turned into plain
//! library calls. Owns argument parsing, exit codes and printing results; no protocol details.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::build::{BuildResult, BuildSpec};
use crate::options;
use crate::progress::{Mode, Progress};
use crate::project::overrides::{self, Override};
use crate::transport::{self, Daemon, TlsOptions};

/// Exit status after Ctrl-C, like a shell's 128 + SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status after SIGTERM (128 + 15), as a shell reports a terminated command.
pub const EXIT_TERMINATED: u8 = 143;

/// `eprintln!` that never panics: with standard error gone there is nowhere left to report to.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that returns an error instead of panicking (use with `?`): a reader that closed
/// the pipe (`| head -1`) ends the run quietly, any other failure (a full disk) is an error.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))
    };
}

/// Standard output was closed by its reader: not a failure, the run just ends (as `cat`, `rg`).
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
struct StdoutClosed;

fn write_stdout(line: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("cannot write to standard output"),
        })
}

#[derive(Parser, Debug)]
#[command(
    name = "bk-build",
    version,
    about = "Build container images through BuildKit's gRPC API"
)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// BuildKit address: unix:///path, tcp://host:port, docker:// (the Docker Engine the docker
    /// CLI would use: DOCKER_HOST, else the current docker context), docker://unix:///path,
    /// docker://tcp://host:port, docker://ssh://[user@]host[:port].
    /// Default: $BUILDKIT_HOST, the rootless and rootful buildkitd sockets, then Docker.
    #[arg(long, global = true, env = "BUILDKIT_HOST")]
    pub addr: Option<String>,
    /// CA certificate for tcp:// with TLS (buildkitd, or a Docker Engine at docker://tcp://).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// Server name to verify (default: the host of --addr).
    #[arg(long, global = true)]
    pub tlsservername: Option<String>,
    /// Directory with ca.pem, cert.pem, key.pem (or ca.crt, tls.crt, tls.key).
    #[arg(long, global = true, value_name = "DIR")]
    pub tlsdir: Option<PathBuf>,
    /// Seconds allowed to connect to the daemon.
    #[arg(long, global = true, default_value_t = 5)]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build one image (like `docker buildx build`).
    Build(Box<BuildArgs>),
    /// Build a project's targets (bk-build.toml or compose files), skipping unchanged ones.
    Bake(BakeArgs),
    /// Show what `bake` would build or skip, and why, without building.
    Plan(PlanArgs),
    /// Show the daemon's version.
    Info,
    /// List the daemon's workers and platforms.
    Workers,
    /// Show build cache disk usage.
    Du(DuArgs),
    /// Remove build cache.
    Prune(PruneArgs),
    /// Benchmark support: time to lstat, and to blake3, every input file under DIR (JSON).
    #[command(hide = true)]
    BenchFloor { dir: PathBuf },
}

#[derive(Args, Debug, Default)]
pub struct BuildArgs {
    /// Build context directory.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// Dockerfile path (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Stage to build.
    #[arg(long)]
    pub target: Option<String>,
    /// Build-time variable KEY=VALUE (KEY alone takes it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Image label KEY=VALUE.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Target platform(s), e.g. linux/amd64,linux/arm64.
    #[arg(long)]
    pub platform: Vec<String>,
    /// Do not use cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Always look for newer base images.
    #[arg(long)]
    pub pull: bool,
    /// Additional build context NAME=DIR|docker-image://REF|URL.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// Add a host-to-IP mapping HOST:IP.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// Network mode for RUN steps: default, none, host.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Image name, e.g. localhost:5000/app:1.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Push the image (shorthand for --output=type=image,push=true).
    #[arg(long)]
    pub push: bool,
    /// Load the image into the Docker Engine (docker daemons only).
    #[arg(long)]
    pub load: bool,
    /// Output destination: type=image|local|tar|oci|docker,…
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Cache import source, e.g. type=registry,ref=REF.
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// Cache export destination, e.g. type=registry,ref=REF,mode=max.
    #[arg(long = "cache-to")]
    pub cache_to: Vec<String>,
    /// Secret to expose: id=ID,src=PATH or id=ID,env=VAR.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// SSH agent socket or keys to expose: default or ID=PATH.
    #[arg(long = "ssh")]
    pub ssh: Vec<String>,
    /// Write the build result metadata (digest, image name, …) as JSON to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Progress output: auto, tty, plain, rawjson, quiet.
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS")]
    pub progress: String,
    /// Attestation to attach, e.g. type=provenance,mode=max or type=sbom,generator=IMAGE
    /// (the first of a type counts). A minimal provenance is attached unless one is given
    /// or BUILDX_NO_DEFAULT_ATTESTATIONS is set.
    #[arg(long = "attest", value_name = "TYPE=…,KEY=VALUE")]
    pub attests: Vec<String>,
    /// Provenance attestation: true, false, or its options such as mode=max
    /// (--attest=type=provenance,…).
    #[arg(long, value_name = "VALUE")]
    pub provenance: Option<String>,
    /// SBOM attestation: true, false, or its options such as generator=IMAGE
    /// (--attest=type=sbom,…).
    #[arg(long, value_name = "VALUE")]
    pub sbom: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ProjectArgs {
    /// Targets or groups to build (default: the `default` group; without one, every target
    /// of a bk-build.toml, while bake files need it, as in buildx).
    pub targets: Vec<String>,
    /// Project file(s): bk-build.toml, or compose and bake files (docker-bake.hcl/.json);
    /// later files override earlier ones. Default: bk-build.toml, else $BUILDX_BAKE_FILE, else
    /// the compose and bake files found in the current directory.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Build the named targets (default: every requested target, not their dependencies)
    /// even if their inputs are unchanged, and record the result.
    #[arg(long)]
    pub force: bool,
    /// Neither look results up in nor record them to the registry ledger (the
    /// `bk-build-<fingerprint>` tags that let a fresh checkout re-tag instead of rebuilding).
    #[arg(long, env = "BK_BUILD_NO_LEDGER", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_ledger: bool,
    /// Override a target's value, as `docker buildx bake --set`: TARGET.KEY=VALUE, where
    /// TARGET is a name or a pattern ('*', 'app*'), KEY e.g. args.NAME, labels.NAME,
    /// contexts.NAME, tags, platform, output, cache-from, cache-to, secrets, ssh, target,
    /// dockerfile, context, pull, no-cache, push, load, attest; KEY+=VALUE appends to a list.
    /// Applied after all project files.
    #[arg(long = "set", value_name = "TARGET.KEY=VALUE")]
    pub set: Vec<String>,
    /// Shorthand for --set='*.push=true': push every target's image (targets that only write
    /// files elsewhere are left alone).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub push: Option<bool>,
    /// Shorthand for --set='*.load=true': load every target's image into the Docker Engine.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub load: Option<bool>,
    /// Do not use the build cache (--set='*.no-cache=true'): every target is built.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_cache: Option<bool>,
    /// Always look for newer base images (--set='*.pull=true').
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub pull: Option<bool>,
    /// Provenance attestation: true, false, or its options such as mode=max
    /// (--set='*.attest=type=provenance,…').
    #[arg(long, value_name = "VALUE")]
    pub provenance: Option<String>,
    /// SBOM attestation: true, false, or its options such as generator=IMAGE
    /// (--set='*.attest=type=sbom,…').
    #[arg(long, value_name = "VALUE")]
    pub sbom: Option<String>,
}

impl ProjectArgs {
    /// Every `--set`, then the flags that stand for one, in buildx's order.
    fn overrides(&self) -> Vec<Override> {
        let mut out: Vec<Override> = self.set.iter().map(|s| Override::set(s)).collect();
        if self.push == Some(true) {
            out.push(Override::shorthand("--push", "*.push=true"));
        }
        if self.load == Some(true) {
            out.push(Override::shorthand("--load", "*.load=true"));
        }
        if let Some(b) = self.no_cache {
            out.push(Override::shorthand(
                "--no-cache",
                &format!("*.no-cache={b}"),
            ));
        }
        if let Some(b) = self.pull {
            out.push(Override::shorthand("--pull", &format!("*.pull={b}")));
        }
        for (flag, kind, value) in [
            ("--sbom", "sbom", &self.sbom),
            ("--provenance", "provenance", &self.provenance),
        ] {
            if let Some(a) = value
                .as_deref()
                .and_then(|v| options::canonical_attest(kind, v))
            {
                out.push(Override::shorthand(flag, &format!("*.attest={a}")));
            }
        }
        out
    }

    fn bake_options(
        &self,
        project: &crate::project::Project,
        daemon: &DaemonArgs,
    ) -> Result<crate::bake::BakeOptions> {
        let force = if self.force {
            crate::graph::requested(project, &self.targets)?
        } else {
            Default::default()
        };
        Ok(crate::bake::BakeOptions {
            force,
            ledger: !self.no_ledger,
            engine_images: transport::docker_engine_builder(daemon.addr.as_deref(), &daemon.tls()),
            default_provenance: default_provenance()?,
            metadata_provenance: options::MetadataProvenance::Disabled,
        })
    }
}

#[derive(Args, Debug)]
pub struct BakeArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Builds to run at once (default: the daemon's CPU count; for buildkitd, which does not
    /// report it, this machine's).
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// Print the requested targets (with the targets they use through `target:` contexts)
    /// and their groups, resolved and with the overrides, as JSON, and exit.
    #[arg(long)]
    pub print: bool,
    /// List the project's targets and groups, or its variables, and exit: targets, variables,
    /// or type=targets|variables[,format=table|json].
    #[arg(long, value_name = "TYPE")]
    pub list: Option<String>,
    /// Grant a privilege targets ask for: network.host, security.insecure (without it, a
    /// target that asks for one is refused, as in `docker buildx bake`); also accepted:
    /// device[=NAME], ssh, fs[.read|.write]=PATH, image[.push|.load]=REF.
    #[arg(long, value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// What to evaluate: build (the default). check, outline and targets are not supported yet.
    #[arg(long, value_name = "METHOD")]
    pub call: Option<String>,
    /// Shorthand for --call=check (not supported yet).
    #[arg(long)]
    pub check: bool,
    /// Write every target's result metadata as JSON to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Progress output: auto, tty, plain, rawjson, quiet.
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS")]
    pub progress: String,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Output format: text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct DuArgs {
    /// Show every record.
    #[arg(short, long)]
    pub verbose: bool,
    /// Filter, e.g. type=regular.
    #[arg(long)]
    pub filter: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Also remove internal and frontend records (synced contexts, the Dockerfile frontend's
    /// own images), which are kept without it. Records in use are never removed.
    #[arg(short, long)]
    pub all: bool,
    /// Keep data newer than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub keep_duration: Option<u64>,
    /// Keep this many bytes of cache.
    #[arg(long, value_name = "BYTES")]
    pub keep_storage: Option<i64>,
    /// Filter, e.g. type=regular.
    #[arg(long)]
    pub filter: Vec<String>,
}

impl DaemonArgs {
    fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_cert: self.tlscacert.clone(),
            cert: self.tlscert.clone(),
            key: self.tlskey.clone(),
            server_name: self.tlsservername.clone(),
            dir: self.tlsdir.clone(),
        }
    }

    pub async fn connect(&self) -> Result<Daemon> {
        let d = transport::connect(
            self.addr.as_deref(),
            &self.tls(),
            Duration::from_secs(self.timeout.max(1)),
        )
        .await?;
        Ok(d)
    }
}

/// Parses the buildx-style flags into a spec (no I/O beyond environment lookups).
pub fn build_spec(a: &BuildArgs) -> Result<BuildSpec> {
    let mut spec = BuildSpec {
        name: a
            .context
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "build".into()),
        context: a.context.clone(),
        dockerfile: a.file.clone(),
        target: a.target.clone(),
        no_cache: a.no_cache,
        pull: a.pull,
        tags: a.tags.clone(),
        push: a.push,
        load: a.load,
        ..Default::default()
    };
    for s in &a.build_args {
        if let Some((k, v)) = options::parse_build_arg(s)? {
            spec.build_args.insert(k, v);
        }
    }
    source_date_epoch(&mut spec.build_args);
    for s in &a.labels {
        let (k, v) = options::parse_label(s)?;
        spec.labels.insert(k, v);
    }
    for s in &a.platform {
        spec.platforms.extend(options::parse_platforms(s)?);
    }
    for s in &a.build_contexts {
        spec.contexts.push(options::parse_build_context(s)?);
    }
    for s in &a.add_hosts {
        spec.add_hosts.push(options::parse_add_host(s)?);
    }
    spec.network = options::parse_network(&a.network)?;
    for s in &a.outputs {
        spec.outputs.push(options::parse_output(s)?);
    }
    for s in &a.cache_from {
        spec.cache_from.extend(options::parse_cache_from(s)?);
    }
    for s in &a.cache_to {
        spec.cache_to.extend(options::parse_cache_to(s)?);
    }
    for s in &a.secrets {
        spec.secrets.push(options::parse_secret(s)?);
    }
    for s in &a.ssh {
        spec.ssh.push(options::parse_ssh(s)?);
    }
    // buildx's order: every --attest, then --provenance, then --sbom (the first of a type
    // counts).
    for s in &a.attests {
        spec.attests.push(options::parse_attest(s)?);
    }
    for (flag, kind, value, example) in [
        ("--provenance", "provenance", &a.provenance, "mode=max"),
        ("--sbom", "sbom", &a.sbom, "generator=IMAGE"),
    ] {
        let Some(v) = value.as_deref() else { continue };
        if let Some(canonical) = options::canonical_attest(kind, v) {
            // Errors name the flag and value as typed.
            let spec_of = options::parse_attest(&canonical).map_err(|e| options::OptionError {
                flag: flag.into(),
                input: v.into(),
                example: example.into(),
                ..e
            })?;
            spec.attests.push(spec_of);
        }
    }
    spec.default_provenance = default_provenance()?;
    if a.metadata_file.is_some() {
        spec.metadata_provenance = metadata_provenance();
    }
    Ok(spec)
}

/// Whether builds get buildx's default provenance: yes unless `BUILDX_NO_DEFAULT_ATTESTATIONS`
/// is true.
fn default_provenance() -> Result<bool> {
    let v = std::env::var("BUILDX_NO_DEFAULT_ATTESTATIONS").ok();
    Ok(!options::parse_no_default_attestations(v.as_deref()).map_err(anyhow::Error::msg)?)
}

/// How much provenance a metadata file gets (`BUILDX_METADATA_PROVENANCE`).
fn metadata_provenance() -> options::MetadataProvenance {
    options::parse_metadata_provenance(std::env::var("BUILDX_METADATA_PROVENANCE").ok().as_deref())
}

/// Writes `contents` to `path` atomically (temp file in the same directory, then rename), so
/// an interrupted run never leaves a half-written file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = match crate::fs::OutputFile::at(path)
        .with_context(|| format!("cannot write {}", path.display()))?
    {
        crate::fs::OutputFile::Replace(p) => p,
        // A device or FIFO (`/dev/stdout`): written into, as buildx does.
        crate::fs::OutputFile::WriteInto(p) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .with_context(|| format!("cannot write {}", p.display()))?;
            f.write_all(contents)
                .and_then(|()| f.flush())
                .with_context(|| format!("cannot write {}", p.display()))?;
            return Ok(());
        }
    };
    let path = path.as_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = crate::fs::new_temp_file_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs `bk-build build`; also says whether an export went to standard output.
async fn run_build(daemon_args: &DaemonArgs, a: &BuildArgs) -> Result<(BuildResult, bool)> {
    let spec = build_spec(a)?;
    let stdout_export = spec
        .outputs
        .iter()
        .any(|o| o.dest == Some(options::OutputDest::Stdout));
    let mode: Mode = a.progress.parse()?;
    if let Some(m) = &a.metadata_file {
        // Fail before building when the metadata file cannot be written.
        if let Some(dir) = m.parent().filter(|d| !d.as_os_str().is_empty()) {
            anyhow::ensure!(
                dir.is_dir(),
                "--metadata-file {}: directory {} does not exist",
                m.display(),
                dir.display()
            );
        }
    }
    let daemon = daemon_args.connect().await?;
    let mut spec = spec;
    if spec.needs_load() {
        spec.load_into = daemon.load_target()?;
    }
    let (progress, task) = Progress::start(mode, Box::new(std::io::stderr()));
    let result = crate::build::build(&daemon, &spec, &progress, None).await;
    drop(progress);
    task.finish().await;
    let result = result?;
    if let Some(m) = &a.metadata_file {
        let doc = serde_json::to_vec_pretty(&result.metadata_json())?;
        write_atomic(m, &doc)?;
    }
    Ok((result, stdout_export))
}

/// `SOURCE_DATE_EPOCH` from the environment becomes the build arg of that name unless one is
/// given, as buildx does (its `build` and `bake` commands): BuildKit then clamps timestamps
/// in the image to it (reproducible builds).
fn source_date_epoch(args: &mut std::collections::BTreeMap<String, String>) {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        args.entry("SOURCE_DATE_EPOCH".to_string()).or_insert(v);
    }
}

/// Loads the project files, then applies the command line's overrides (`--set` and the flags
/// that stand for it) unless `with_overrides` is false (`--list`, which buildx answers from
/// the files alone).
fn load_project(a: &ProjectArgs, with_overrides: bool) -> Result<crate::project::Project> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let env = |k: &str| std::env::var(k).ok();
    let files = if !a.files.is_empty() {
        a.files.clone()
    } else {
        // bk-build's own file first; buildx's variable only stands in for buildx's discovery.
        match crate::project::files_from_env(&env)? {
            Some(files) if !cwd.join("bk-build.toml").is_file() => files,
            _ => crate::project::discover(&cwd)?,
        }
    };
    let mut project = crate::project::load(&files, &env)?;
    if with_overrides {
        overrides::apply(&mut project, &a.overrides(), &cwd, &env)?;
    }
    // After the overrides, as buildx does: `--set t.args.SOURCE_DATE_EPOCH=…` wins.
    for t in project.targets.values_mut() {
        source_date_epoch(&mut t.args);
    }
    for w in &project.warnings {
        eprintln!("WARNING: {w}");
    }
    Ok(project)
}

/// A project that defines no targets has nothing to plan or build: an error naming its files
/// and how to add one (buildx fails alike: "couldn't find a bake definition").
fn ensure_targets(project: &crate::project::Project) -> Result<()> {
    if !project.targets.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = project
        .files
        .iter()
        .map(|f| {
            if f.as_os_str() == "-" {
                "standard input".to_string()
            } else {
                f.display().to_string()
            }
        })
        .collect();
    let ext = |f: &&PathBuf| {
        f.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let mut fixes = Vec::new();
    let kinds: Vec<String> = project.files.iter().map(|f| ext(&f)).collect();
    if kinds.iter().any(|k| k == "toml") {
        fixes.push("in bk-build.toml, a table per image: [target.app] with context = \"app\" (see examples/monorepo)");
    }
    if kinds.iter().any(|k| k == "yml" || k == "yaml") {
        fixes.push("in a compose file, a service with a build: section (services with only image: are pulled, not built)");
    }
    if kinds.iter().any(|k| k == "hcl" || k == "json") || fixes.is_empty() {
        fixes.push("in a bake file, a block target \"app\" { context = \"app\" }");
    }
    anyhow::bail!(
        "{}: no targets: the project defines nothing to build\n  fix: add one: {}",
        names.join(", "),
        fixes.join("; or ")
    )
}

/// Opens the project's state (taking its lock) and plans the run.
async fn plan_project(
    daemon_args: &DaemonArgs,
    a: &ProjectArgs,
    lock_wait: Duration,
) -> Result<(
    crate::project::Project,
    crate::fingerprint::StateStore,
    crate::bake::BakePlan,
)> {
    let project = load_project(a, true)?;
    ensure_targets(&project)?;
    crate::project::materialize(&project)?;
    crate::timing::mark("project loaded");
    let state = crate::fingerprint::StateStore::open_with(&project.root, lock_wait, &mut |msg| {
        eprintln!("{msg}")
    })?;
    crate::timing::mark("state opened");
    // Planning needs no BuildKit connection: images loaded into a Docker Engine are checked
    // over its HTTP API, and a plan that cannot reach it still works from the registry and
    // the recorded state.
    let opts = a.bake_options(&project, daemon_args)?;
    let plan = crate::bake::plan(&project, &a.targets, &state, &opts).await?;
    crate::timing::mark("planned");
    for w in state.take_warnings() {
        eprintln!("WARNING: {w}");
    }
    Ok((project, state, plan))
}

fn print_plan(plan: &crate::bake::BakePlan, format: &str) -> Result<()> {
    match format {
        "json" => {
            let v: Vec<&crate::bake::TargetPlan> = plan.ordered().collect();
            outln!("{}", serde_json::to_string_pretty(&v)?)?;
        }
        "text" => {
            let width = plan.ordered().map(|t| t.name.len()).max().unwrap_or(0);
            for t in plan.ordered() {
                outln!(
                    "{:<width$}  {:<5}  {}",
                    t.name,
                    t.action.as_str(),
                    t.reasons.join("; ")
                )?;
            }
        }
        other => anyhow::bail!("--format {other}: use text or json"),
    }
    for (name, why) in &plan.graph.unavailable {
        eprintln!("ERROR: target `{name}` cannot be built: {why}");
    }
    Ok(())
}

/// What `bake --list` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Targets,
    Variables,
}

/// Parses `--list` as buildx does (`commands/bake.go` `parseList`): `targets`, `variables`, or
/// `type=…[,format=table|json]`.
fn parse_list(input: &str) -> Result<(ListKind, &'static str)> {
    let mut kind = String::new();
    let mut format = "table".to_string();
    if !input.starts_with("type=") && !input.contains([',', '=']) {
        kind = input.to_string();
    } else {
        let fields =
            options::csv_fields(input).map_err(|why| anyhow::anyhow!("--list {input}: {why}"))?;
        for field in fields {
            let Some((k, v)) = field.split_once('=') else {
                anyhow::bail!("--list {input}: field {field:?} is not KEY=VALUE\n  fix: write --list type=targets,format=json");
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "type" => kind = v.to_string(),
                "format" => format = v.to_string(),
                other => anyhow::bail!(
                    "--list {input}: unknown key {other:?}\n  fix: the keys are type and format"
                ),
            }
        }
    }
    let kind = match kind.as_str() {
        "targets" => ListKind::Targets,
        "variables" => ListKind::Variables,
        other => anyhow::bail!(
            "--list {input}: unknown list type {other:?}\n  fix: use targets or variables"
        ),
    };
    let format = match format.as_str() {
        "table" => "table",
        "json" => "json",
        other => anyhow::bail!(
            "--list {input}: unknown format {other:?}\n  fix: use format=table or format=json"
        ),
    };
    Ok((kind, format))
}

/// Cells laid out as Go's `text/tabwriter` with buildx's settings (minimum width 1, tab width
/// 8, padding 1, padded with tabs): every column but the last ends in tabs up to the next tab
/// stop past its widest cell.
fn tab_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols.saturating_sub(1)];
    for r in rows {
        for (i, c) in r.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(c.chars().count() + 1);
        }
    }
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if let Some(w) = widths.get(i) {
                let cell = w.div_ceil(8) * 8;
                let pad = cell - c.chars().count();
                out.push_str(&"\t".repeat(pad.div_ceil(8)));
            }
        }
        out.push('\n');
    }
    out
}

/// `bake --list`: the shapes of `docker buildx bake --list` (`printTargetList`, `printVars`).
/// Targets and groups whose names start with `_` are private and left out, as in buildx.
fn print_list(project: &crate::project::Project, kind: ListKind, format: &str) -> Result<()> {
    let text = match kind {
        ListKind::Targets => {
            // (name, description, is a group), sorted by name.
            let mut entries: Vec<(String, String, bool)> = project
                .targets
                .keys()
                .map(|n| (n.clone(), String::new(), false))
                .chain(project.groups.iter().map(|(n, members)| {
                    let mut m = members.clone();
                    m.sort();
                    (n.clone(), m.join(", "), true)
                }))
                .filter(|(n, _, _)| !n.starts_with('_'))
                .collect();
            entries.sort();
            if format == "json" {
                #[derive(serde::Serialize)]
                struct Entry<'a> {
                    name: &'a str,
                    #[serde(skip_serializing_if = "str::is_empty")]
                    description: &'a str,
                    #[serde(skip_serializing_if = "std::ops::Not::not")]
                    group: bool,
                }
                json_list(
                    entries
                        .iter()
                        .map(|(n, d, g)| Entry {
                            name: n,
                            description: d,
                            group: *g,
                        })
                        .collect(),
                )?
            } else {
                let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".to_string()]];
                rows.extend(entries.into_iter().map(|(n, d, _)| vec![n, d]));
                tab_table(&rows)
            }
        }
        ListKind::Variables => {
            let mut vars = project.variables.clone();
            vars.sort_by(|a, b| a.name.cmp(&b.name));
            if format == "json" {
                // hclparser.Variable's fields, in its order.
                #[derive(serde::Serialize)]
                struct Entry<'a> {
                    name: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    description: Option<&'a str>,
                    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
                    type_name: Option<&'a str>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    value: Option<&'a str>,
                }
                json_list(
                    vars.iter()
                        .map(|v| Entry {
                            name: &v.name,
                            description: v.description.as_deref().filter(|d| !d.is_empty()),
                            type_name: v.type_name.as_deref().filter(|t| !t.is_empty()),
                            value: v.value.as_deref(),
                        })
                        .collect(),
                )?
            } else {
                let mut rows = vec![["VARIABLE", "TYPE", "VALUE", "DESCRIPTION"]
                    .map(String::from)
                    .to_vec()];
                rows.extend(vars.into_iter().map(|v| {
                    vec![
                        v.name,
                        v.type_name.unwrap_or_default(),
                        v.value.unwrap_or_else(|| "<null>".into()),
                        v.description.unwrap_or_default(),
                    ]
                }));
                tab_table(&rows)
            }
        }
    };
    outln!("{}", text.trim_end_matches('\n'))
}

/// A JSON list as buildx's encoder writes it (two-space indent; `null` when empty, as Go
/// encodes a nil slice).
fn json_list<T: serde::Serialize>(v: Vec<T>) -> Result<String> {
    if v.is_empty() {
        return Ok("null".into());
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

/// The default `-j`: the daemon's cores. A Docker Engine reports them; BuildKit does not,
/// so for buildkitd (usually on this machine or one like it) the local count stands in.
async fn daemon_cpus(d: &Daemon) -> usize {
    let local = || {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    };
    match (&d.kind, &d.address) {
        (transport::DaemonKind::DockerEngine { .. }, transport::Address::Docker(host)) => {
            transport::docker_engine_cpus(host)
                .await
                .unwrap_or_else(|_| local())
        }
        _ => local(),
    }
}

async fn run_bake(daemon_args: &DaemonArgs, a: &BakeArgs) -> Result<bool> {
    // Refused before anything is read or built: these would change what a run means.
    let call = if a.check {
        Some("check".to_string())
    } else {
        a.call.clone()
    };
    if let Some(c) = &call {
        let by = Override {
            shown: format!("--call {c}"),
            text: format!("*.call={c}"),
        };
        let func = overrides::call_function(c).map_err(|why| {
            anyhow::anyhow!(
                "--call {c}: {why}\n  fix: use build (the default), check, outline or targets"
            )
        })?;
        if let Some(name) = func {
            return Err(overrides::call_refused(&by, &name).into());
        }
    }
    let mut granted = overrides::parse_allow(&a.allow)?;
    granted.extend(overrides::granted_by(&a.project.overrides()));
    if let Some(list) = &a.list {
        anyhow::ensure!(
            !a.print,
            "--print and --list cannot be used together: pick one"
        );
        let (kind, format) = parse_list(list)?;
        let project = load_project(&a.project, false)?;
        return print_list(&project, kind, format).map(|()| true);
    }
    if a.print {
        let project = load_project(&a.project, true)?;
        ensure_targets(&project)?;
        // Only what was asked for, as buildx prints it.
        let shown = crate::graph::printed(&project, &a.project.targets)?;
        outln!(
            "{}",
            serde_json::to_string_pretty(&crate::project::to_json(&shown))?
        )?;
        return Ok(true);
    }
    let mode: Mode = a.progress.parse()?;
    let (project, state, plan) = plan_project(
        daemon_args,
        &a.project,
        crate::fingerprint::DEFAULT_LOCK_WAIT,
    )
    .await?;
    // As buildx bake: privileges a target asks for must be granted with --allow.
    let missing = overrides::ungranted(&project, &plan.graph.order, &granted);
    if !missing.is_empty() {
        let asks: Vec<String> = missing
            .iter()
            .map(|(t, e)| format!("target `{t}` asks for {e}"))
            .collect();
        let mut flags: Vec<String> = missing
            .iter()
            .map(|(_, e)| format!("--allow={e}"))
            .collect();
        flags.sort();
        flags.dedup();
        anyhow::bail!(
            "additional privileges requested: {}\n  fix: grant them with {} (as docker buildx bake requires), or remove them from the targets",
            asks.join(", "),
            flags.join(" ")
        );
    }
    let mut opts = a.project.bake_options(&project, daemon_args)?;
    if a.metadata_file.is_some() {
        opts.metadata_provenance = metadata_provenance();
    }
    let must_build = plan
        .ordered()
        .any(|t| t.action == crate::bake::Action::Build);
    // Skips and re-tags need no daemon.
    let daemon = if must_build {
        match daemon_args.connect().await {
            Ok(d) => Some(d),
            Err(e) => {
                // Still do the skips and re-tags; the builds fail with this.
                eprintln!("ERROR: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let jobs = match (a.jobs, &daemon) {
        (Some(j), _) => j.max(1),
        (None, Some(d)) if must_build => daemon_cpus(d).await,
        // Only registry requests: many at a time.
        (None, _) => 16,
    };
    let (progress, task) = Progress::start(mode, Box::new(std::io::stderr()));
    let results = crate::bake::execute(
        daemon.as_ref(),
        &project,
        &plan,
        &state,
        jobs,
        &progress,
        &opts,
    )
    .await;
    crate::timing::mark("executed");
    let mut results = results;
    // Targets that cannot be built (a context not checked out, …) fail on their own; the
    // rest of the run went on without them.
    for (name, why) in &plan.graph.unavailable {
        results.push(crate::bake::TargetResult {
            name: name.clone(),
            outcome: crate::progress::TargetOutcome::Failed,
            duration: None,
            bytes_sent: None,
            digest: None,
            error: Some(format!("cannot be built: {why}")),
            metadata: None,
            warnings: Vec::new(),
        });
    }
    drop(progress);
    task.finish().await;
    eprintln!(
        "\n{}",
        crate::progress::summary_table(&crate::bake::summary_rows(&results))
    );
    let mut ok = true;
    for r in &results {
        for w in &r.warnings {
            eprintln!("[{}] warning: {w}", r.name);
        }
        if let Some(e) = &r.error {
            ok = false;
            eprintln!("[{}] {}", r.name, e);
        }
    }
    // Builds may have hashed files again (see `fingerprint::recheck`).
    state.save_stat_cache()?;
    if let Some(m) = &a.metadata_file {
        let doc = serde_json::to_vec_pretty(&crate::bake::metadata_json(&results))?;
        write_atomic(m, &doc)?;
    }
    Ok(ok)
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Bake(a) => {
            if !run_bake(&cli.daemon, a).await? {
                anyhow::bail!("some targets failed (see above)");
            }
        }
        Command::Plan(a) => {
            // A plan is a question: don't wait long behind a running bake.
            let (_project, _state, plan) =
                plan_project(&cli.daemon, &a.project, Duration::from_secs(5)).await?;
            print_plan(&plan, &a.format)?;
            if !plan.graph.unavailable.is_empty() {
                anyhow::bail!("some targets cannot be built (see above)");
            }
        }
        Command::Build(a) => {
            let (r, stdout_export) = run_build(&cli.daemon, a).await?;
            // Standard output that carries the export (`-o -`, `dest=-`) gets nothing else:
            // a digest after the tarball would corrupt it (buildx prints none there either).
            if let Some(d) = r.image_digest().filter(|_| !stdout_export) {
                outln!("{d}")?;
            }
        }
        Command::BenchFloor { dir } => {
            let t = crate::fingerprint::bench_floor(dir)?;
            outln!(
                "{}",
                serde_json::json!({
                    "lstat_s": t.lstat_all.as_secs_f64(),
                    "hash_s": t.hash_all.as_secs_f64(),
                    "entries": t.entries,
                    "files": t.files,
                    "bytes": t.bytes,
                })
            )?;
        }
        Command::Info => {
            let d = cli.daemon.connect().await?;
            outln!("Address:  {}", d.address)?;
            if let transport::DaemonKind::DockerEngine { api_version } = &d.kind {
                outln!("Engine:   Docker Engine (API {api_version})")?;
            }
            match crate::client::info(&d).await? {
                Some(i) => {
                    outln!("BuildKit: {} {} {}", i.package, i.version, i.revision)?;
                    if !i.dockerfile_version.is_empty() {
                        outln!("Dockerfile frontend: {}", i.dockerfile_version)?;
                    }
                }
                None => outln!("BuildKit: (version not reported: daemon older than v0.11)")?,
            }
        }
        Command::Workers => {
            let d = cli.daemon.connect().await?;
            for w in crate::client::workers(&d).await? {
                outln!("ID:        {}", w.id)?;
                outln!("Platforms: {}", w.platforms.join(","))?;
                for (k, v) in &w.labels {
                    outln!("  {k}={v}")?;
                }
            }
        }
        Command::Du(a) => {
            let d = cli.daemon.connect().await?;
            let recs = crate::client::disk_usage(&d, a.filter.clone()).await?;
            let total: i64 = recs.iter().map(|r| r.size).sum();
            if a.verbose {
                for r in &recs {
                    outln!(
                        "{:<28} {:>10} {:<6} {}",
                        r.id,
                        crate::progress::format_bytes(r.size),
                        if r.in_use { "in use" } else { "" },
                        r.description
                    )?;
                }
            }
            outln!(
                "Records: {}  Total: {}",
                recs.len(),
                crate::progress::format_bytes(total)
            )?;
        }
        Command::Prune(a) => {
            let d = cli.daemon.connect().await?;
            let o = crate::client::PruneOptions {
                all: a.all,
                filters: a.filter.clone(),
                keep_duration_ns: a
                    .keep_duration
                    .map(|s| (s as i64) * 1_000_000_000)
                    .unwrap_or(0),
                keep_bytes: a.keep_storage.unwrap_or(0),
            };
            let recs = crate::client::prune(&d, &o).await?;
            let total: i64 = recs.iter().map(|r| r.size).sum();
            outln!(
                "Removed {} records, {} reclaimed",
                recs.len(),
                crate::progress::format_bytes(total)
            )?;
        }
    }
    Ok(())
}

/// Resolves when the process receives SIGTERM (never, if it cannot listen for it).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Entry point for the binary: parse, run, map errors, Ctrl-C and SIGTERM to exit codes.
pub fn main() -> ExitCode {
    crate::timing::start();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        tokio::select! {
            r = run(cli) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
                Err(e) => {
                    let msg = format_error(&e);
                    // Build failures already read "ERROR: failed to solve: …".
                    if msg.starts_with("ERROR") {
                        eprintln!("{msg}");
                    } else {
                        eprintln!("ERROR: {msg}");
                    }
                    ExitCode::FAILURE
                }
            },
            _ = tokio::signal::ctrl_c() => {
                // Dropping the build future resets the Solve call (the daemon cancels the
                // job) and closes the session; give the connection a moment to send that.
                tokio::time::sleep(Duration::from_millis(300)).await;
                report_cancellation("interrupted").await;
                ExitCode::from(EXIT_INTERRUPTED)
            }
            _ = terminated() => {
                // As Ctrl-C: `docker stop`, CI job timeouts and `kill` send SIGTERM.
                tokio::time::sleep(Duration::from_millis(300)).await;
                report_cancellation("terminated (SIGTERM)").await;
                ExitCode::from(EXIT_TERMINATED)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// How long a canceled run waits for a Docker Engine that already received a whole image to
/// say whether it loaded it.
const CANCELED_LOAD_WAIT: Duration = Duration::from_secs(60);

/// Says what a canceled run leaves behind: "build canceled", unless an image load into a
/// Docker Engine was past the point of no return (the engine had the whole image). Then the
/// engine's answer is awaited and reported, so the message never says "canceled" about an
/// image that was loaded.
async fn report_cancellation(how: &str) {
    let engines = crate::build::settling_loads();
    if engines.is_empty() {
        eprintln!("{how}: build canceled");
        return;
    }
    eprintln!(
        "{how}: waiting for the Docker Engine at {} to finish loading the image it already received",
        engines.join(", ")
    );
    let outcomes = crate::build::settle_canceled_loads(CANCELED_LOAD_WAIT).await;
    let loaded = outcomes
        .iter()
        .any(|o| matches!(o, crate::build::CanceledLoad::Loaded { .. }));
    let said: Vec<String> = outcomes.iter().map(ToString::to_string).collect();
    let rest = if loaded {
        "anything else still running was canceled"
    } else {
        "build canceled"
    };
    eprintln!("{how}: {}; {rest}", said.join("; "));
}

fn format_error(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for c in e.chain().skip(1) {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
    }
    s
}
