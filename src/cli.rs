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

mod inspect;
mod reference;

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
        .map_err(stdout_error)
}

/// Bytes to standard output as they are (a script, a manual page), with `outln!`'s errors.
fn write_stdout_bytes(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
        _ => anyhow::Error::new(e).context("cannot write to standard output"),
    }
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
    /// Repeat it (or give $BUILDKIT_HOST a comma list) for a pool: `bake` places each target
    /// on the daemon that most likely has its cache; `info`, `workers`, `du` and `prune` act
    /// on every daemon; other commands use the first one that answers.
    #[arg(long, global = true, env = "BUILDKIT_HOST", value_delimiter = ',')]
    pub addr: Vec<String>,
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
    /// Show the daemon's version (each daemon's, for several `--addr`s or, without any, the
    /// `[builders]` of the project's bk-build.toml).
    Info(FormatArgs),
    /// List the daemon's workers and platforms (each daemon's, as for `info`).
    Workers(FormatArgs),
    /// Show build cache disk usage (each daemon's, as for `info`).
    Du(DuArgs),
    /// Remove build cache (from each daemon, as for `info`).
    Prune(PruneArgs),
    /// Print a shell completion script, e.g. `source <(bk-build completion bash)`.
    Completion(CompletionArgs),
    /// Print a manual page (roff): `bk-build man | man -l -`, `bk-build man bake > bk-build-bake.1`.
    Man(ManArgs),
    /// Benchmark support: time to lstat, and to blake3, every input file under DIR (JSON).
    #[command(hide = true)]
    BenchFloor { dir: PathBuf },
}

#[derive(Args, Debug, Default)]
pub struct BuildArgs {
    /// Build context: a directory, `-` (a tar archive, or a Dockerfile, on standard input),
    /// or a Git or HTTP(S) URL the daemon fetches (https://host/repo.git#REF:SUBDIR).
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// Dockerfile path (default: CONTEXT/Dockerfile); `-` reads it from standard input. With
    /// a URL or archive context, a relative path is inside that context.
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
    /// Target platform(s), e.g. linux/amd64,linux/arm64 (default: $DOCKER_DEFAULT_PLATFORM,
    /// as for docker buildx build, else the daemon's).
    #[arg(long, env = "DOCKER_DEFAULT_PLATFORM", hide_env_values = true)]
    pub platform: Vec<String>,
    /// Do not use cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use cache for this stage (repeat for several); not with --no-cache.
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
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
    /// Resource limit of RUN steps, NAME=SOFT[:HARD] (e.g. nofile=1024:2048).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// Size of /dev/shm in RUN steps, e.g. 128m or 1g.
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Parent cgroup of RUN steps.
    #[arg(long = "cgroup-parent", value_name = "CGROUP")]
    pub cgroup_parent: Option<String>,
    /// Grant the build a privilege: network.host (RUN --network=host), security.insecure
    /// (RUN --security=insecure), device[=NAME]; the daemon must allow it too.
    #[arg(long, value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// Image name, e.g. localhost:5000/app:1.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Image annotation, TYPES:KEY=VALUE or KEY=VALUE: TYPES is a comma list of manifest,
    /// manifest-descriptor (each may name a platform: manifest[linux/arm64]), index and
    /// index-descriptor; without TYPES, the manifest.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
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
    /// SSH agent socket or private key files to expose: default (= $SSH_AUTH_SOCK), ID=SOCKET
    /// or ID=KEYFILE[,KEYFILE…].
    #[arg(long = "ssh")]
    pub ssh: Vec<String>,
    /// Write the build result metadata (digest, image name, …) as JSON to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Write the image ID to this file: the image config's digest, or the manifest's (or
    /// index's) when the daemon reports no config digest, as buildx writes it.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Show no progress and print the image ID (as --iidfile writes it) when done.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Progress output: auto, tty, plain, rawjson, quiet (= --quiet), none (nothing, and no
    /// image ID on standard output). With auto, $BUILDKIT_PROGRESS decides when set.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// What to evaluate: build (the default), check (lint the Dockerfile), outline (its build
    /// args, secrets, ssh) or targets (its stages); options format=json, ignorestatus=true.
    #[arg(long, value_name = "METHOD")]
    pub call: Option<String>,
    /// Shorthand for --call=check.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub check: Option<bool>,
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

/// `--call` and `--check` as one value: `None` for an ordinary build. `--check` together with
/// a `--call` of another method is refused (buildx lets the later flag win).
fn call_flags(call: Option<&str>, check: Option<bool>) -> Result<Option<options::CallFunc>> {
    let from_call = match call {
        Some(c) => options::parse_call(c)?,
        None => None,
    };
    if check != Some(true) {
        return Ok(from_call);
    }
    match from_call {
        None if call.is_none() => Ok(options::parse_call("check")?),
        Some(c) if c.name == "lint" => Ok(Some(c)),
        _ => anyhow::bail!(
            "--check asks for --call=check, and --call {} asks for another method\n  fix: give only one of them",
            call.unwrap_or_default()
        ),
    }
}

/// The run ends with this exit status and nothing more to print (`--call check` found
/// warnings: buildx exits with the answer's status code).
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
struct ExitStatus(u8);

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
    /// Read every file whose hash is not in bk-build's own stat cache, instead of taking the
    /// blob ids git's index vouches for (what makes a fresh clone's fingerprint fast).
    #[arg(long, env = "BK_BUILD_NO_GIT_INDEX", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_git_index: bool,
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
    /// Act on shard I of N only (1 ≤ I ≤ N): a fixed share of the targets, the same whatever
    /// the registry holds, so N runners with the same checkout and flags build every target
    /// once between them. A target whose base another shard builds waits for that base's
    /// registry ledger entry, then builds on exactly that image.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::bake::Shard>,
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
            // The engine the plan checks is the first daemon's (or the discovered one's).
            engine_images: match daemon.specs(Some(project)).first() {
                Some(s) => transport::docker_engine_builder(Some(&s.addr), &s.tls),
                None => transport::docker_engine_builder(None, &daemon.tls()),
            },
            pool: daemon
                .specs(Some(project))
                .into_iter()
                .map(|s| s.addr)
                .collect(),
            default_provenance: default_provenance()?,
            metadata_provenance: options::MetadataProvenance::Disabled,
            retag_early: false,
            shard: self.shard,
        })
    }
}

#[derive(Args, Debug)]
pub struct BakeArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Builds to run at once on each daemon (default: 4 per CPU of the daemon, as measured in
    /// bench/jobs.py; for buildkitd, which does not report its CPUs, this machine's count).
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// With --shard: how long, in seconds, this shard waits in all for bases other shards
    /// build to appear in the registry ledger; targets still waiting then fail.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1800,
        requires = "shard"
    )]
    pub shard_wait: u64,
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
    /// What to evaluate for every target: build (the default), check (lint its Dockerfile),
    /// outline or targets; options format=json, ignorestatus=true. Nothing is built.
    #[arg(long, value_name = "METHOD")]
    pub call: Option<String>,
    /// Shorthand for --call=check.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub check: Option<bool>,
    /// Write every target's result metadata as JSON to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Progress output: auto, tty, plain, rawjson, quiet, none (no progress and no summary
    /// table; failures are still reported).
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS")]
    pub progress: String,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Output format: text, json, or matrix (the targets that must be built, in dependency
    /// layers, as JSON a CI job matrix takes: `{"layers": [[…], …], "include": [{"layer": 0,
    /// "target": "…"}, …]}`).
    #[arg(long, default_value = "text")]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// Output format: text, or json (BuildKit's field names, as `buildctl … --format '{{json .}}'`).
    #[arg(long, value_enum, default_value_t = inspect::Format::Text)]
    pub format: inspect::Format,
    #[command(flatten)]
    pub pool: PoolFileArgs,
}

/// Where `info`, `workers`, `du` and `prune` find a project's pool when no `--addr` is given.
#[derive(Args, Debug)]
pub struct PoolFileArgs {
    /// bk-build.toml whose [builders] are the daemons to act on (default: the one in the
    /// current directory, if any). Ignored when --addr or BUILDKIT_HOST names the daemons.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// A command whose page to print (the page `bk-build-COMMAND`); without it, the page of
    /// bk-build itself.
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

#[derive(Args, Debug)]
pub struct DuArgs {
    /// Show every record.
    #[arg(short, long)]
    pub verbose: bool,
    /// Output format: text, or json (every record, with BuildKit's field names; --verbose is
    /// then not needed).
    #[arg(long, value_enum, default_value_t = inspect::Format::Text)]
    pub format: inspect::Format,
    /// Filter, e.g. type=regular.
    #[arg(long)]
    pub filter: Vec<String>,
    #[command(flatten)]
    pub pool: PoolFileArgs,
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
    #[command(flatten)]
    pub pool: PoolFileArgs,
}

impl DaemonArgs {
    /// The addresses as given, each once, without surrounding spaces or empty items (a
    /// `BUILDKIT_HOST` of `a, b,` is `a` and `b`).
    pub fn addrs(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for a in &self.addr {
            let a = a.trim();
            if !a.is_empty() && !v.iter().any(|x| x == a) {
                v.push(a.to_string());
            }
        }
        v
    }

    fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_cert: self.tlscacert.clone(),
            cert: self.tlscert.clone(),
            key: self.tlskey.clone(),
            server_name: self.tlsservername.clone(),
            dir: self.tlsdir.clone(),
            keys_of: None,
        }
    }

    /// The daemons given: `--addr` (repeated) or `$BUILDKIT_HOST`, with the `--tls*` flags for
    /// their `tcp://` ones; else the project's `[builders]`; else none (discovery).
    pub fn specs(&self, project: Option<&crate::project::Project>) -> Vec<crate::pool::Spec> {
        let addrs = self.addrs();
        if !addrs.is_empty() {
            let tls = self.tls();
            let several = addrs.len() > 1;
            return addrs
                .into_iter()
                .map(|addr| {
                    // In a pool, the flags are for its tcp:// members; a socket takes none.
                    let tcp = addr.starts_with("tcp://") || addr.starts_with("docker://tcp://");
                    crate::pool::Spec {
                        tls: if several && !tcp {
                            TlsOptions::default()
                        } else {
                            tls.clone()
                        },
                        addr,
                        ..Default::default()
                    }
                })
                .collect();
        }
        project
            .map(|p| {
                p.builders
                    .iter()
                    .map(|b| crate::pool::Spec {
                        addr: b.addr.clone(),
                        tls: TlsOptions {
                            ca_cert: b.tlscacert.clone(),
                            cert: b.tlscert.clone(),
                            key: b.tlskey.clone(),
                            server_name: b.tlsservername.clone(),
                            dir: b.tlsdir.clone(),
                            keys_of: Some(format!("[builders.{}] in {}", b.name, b.file.display())),
                        },
                        jobs: b.jobs,
                        platforms: b.platforms.clone(),
                        name: Some(b.name.clone()),
                        origin: Some(format!("[builders.{}] in {}", b.name, b.file.display())),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The daemon a one-daemon command uses: the first address that answers.
    pub async fn connect(&self) -> Result<Daemon> {
        let timeout = Duration::from_secs(self.timeout.max(1));
        let addrs = self.addrs();
        if addrs.len() <= 1 {
            return Ok(
                transport::connect(addrs.first().map(String::as_str), &self.tls(), timeout).await?,
            );
        }
        let c = crate::pool::connect(&self.specs(None), &self.tls(), timeout, Some(1)).await?;
        for w in &c.warnings {
            eprintln!("WARNING: {w}");
        }
        Ok(c.pool.member(0).daemon.clone())
    }

    /// The `--tls*` flags are for `--addr`: with the project's `[builders]` (each with its own
    /// TLS keys) they are refused, not silently ignored.
    fn refuse_tls_flags_for_builders(
        &self,
        project: Option<&crate::project::Project>,
    ) -> Result<()> {
        let from_project =
            self.addrs().is_empty() && project.is_some_and(|p| !p.builders.is_empty());
        let t = self.tls();
        anyhow::ensure!(
            !from_project
                || (t.ca_cert.is_none()
                    && t.cert.is_none()
                    && t.key.is_none()
                    && t.dir.is_none()
                    && t.server_name.is_none()),
            "the --tls* flags apply to --addr; the project's [builders.NAME] each take their own tlscacert, tlscert, tlskey, tlsdir and tlsservername keys (or pass the pool with --addr and the flags)"
        );
        Ok(())
    }

    /// Checks every daemon's settings without connecting ([`transport::check_settings`]), so
    /// that `plan`, which needs no daemon, fails on a wrong address or TLS file as `bake` does.
    ///
    /// Errors: the first wrong setting, naming where it was given.
    pub fn check_settings(&self, project: Option<&crate::project::Project>) -> Result<()> {
        self.refuse_tls_flags_for_builders(project)?;
        for spec in self.specs(project) {
            transport::check_settings(&spec.addr, &spec.tls).map_err(|e| match &spec.origin {
                Some(o) => anyhow::anyhow!("{o} (its addr and tls* keys): {e}"),
                None => anyhow::anyhow!("{}: {e}", spec.addr),
            })?;
        }
        Ok(())
    }

    /// Every daemon of [`specs`](Self::specs) that answers (warning about the others), each
    /// with `jobs` slots when given, else its own, else [`crate::pool::default_jobs`].
    pub async fn connect_pool(
        &self,
        project: Option<&crate::project::Project>,
        jobs: Option<usize>,
    ) -> Result<crate::pool::Pool> {
        Ok(self.connect_pool_reporting(project, jobs).await?.pool)
    }

    /// [`connect_pool`](Self::connect_pool), also saying which daemons were left out.
    pub async fn connect_pool_reporting(
        &self,
        project: Option<&crate::project::Project>,
        jobs: Option<usize>,
    ) -> Result<crate::pool::Connected> {
        let timeout = Duration::from_secs(self.timeout.max(1));
        self.refuse_tls_flags_for_builders(project)?;
        let c = crate::pool::connect(&self.specs(project), &self.tls(), timeout, jobs).await?;
        for w in &c.warnings {
            eprintln!("WARNING: {w}");
        }
        Ok(c)
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
        cgroup_parent: a.cgroup_parent.clone().filter(|c| !c.is_empty()),
        ..Default::default()
    };
    for s in &a.no_cache_filter {
        anyhow::ensure!(
            !s.is_empty(),
            "--no-cache-filter: empty stage name\n  fix: name a stage of the Dockerfile, or use --no-cache for all of them"
        );
        spec.no_cache_filter.push(s.clone());
    }
    // buildx: "--no-cache and --no-cache-filter cannot currently be used together".
    anyhow::ensure!(
        !a.no_cache || a.no_cache_filter.is_empty(),
        "--no-cache and --no-cache-filter cannot be used together\n  fix: --no-cache already builds every stage without cache; drop one of them"
    );
    for s in &a.ulimits {
        let u = options::parse_ulimit(s)?;
        // One limit per name, the last one given winning (buildx keeps them in a map).
        spec.ulimits.retain(|x| x.name != u.name);
        spec.ulimits.push(u);
    }
    if let Some(s) = &a.shm_size {
        spec.shm_size = Some(options::parse_shm_size(s)?).filter(|b| *b > 0);
    }
    for s in &a.allow {
        let e = options::parse_entitlement(s)?;
        if !spec.entitlements.contains(&e) {
            spec.entitlements.push(e);
        }
    }
    for s in &a.annotations {
        for an in options::parse_annotation(s)? {
            spec.annotations
                .retain(|x| x.exporter_attr() != an.exporter_attr());
            spec.annotations.push(an);
        }
    }
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
    for s in a.platform.iter().filter(|s| !s.is_empty()) {
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

/// Fails unless a file can be written at `path` (given by `flag`), so that a build is not run
/// only to fail at its end: the directory must exist and take a new file, or the path must
/// be something written into as it is (`/dev/stdout`, a FIFO).
fn check_writable(flag: &str, path: Option<&Path>) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let target = crate::fs::OutputFile::at(path)
        .with_context(|| format!("{flag} {}: cannot write there", path.display()))?;
    let crate::fs::OutputFile::Replace(file) = target else {
        return Ok(());
    };
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    anyhow::ensure!(
        dir.is_dir(),
        "{flag} {}: directory {} does not exist",
        path.display(),
        dir.display()
    );
    crate::fs::new_temp_file_in(dir).with_context(|| {
        format!(
            "{flag} {}: cannot create a file in {}",
            path.display(),
            dir.display()
        )
    })?;
    Ok(())
}

/// What `bk-build build` prints on standard output when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Printed {
    /// The image's digest (`containerimage.digest`), bk-build's default.
    Digest,
    /// The image ID, as buildx's `--quiet` prints it.
    ImageId,
    /// Nothing: the export itself goes to standard output, or `--progress none`.
    Nothing,
}

/// The display mode and what is printed at the end, from `--progress`, `--quiet` and
/// `$BUILDKIT_PROGRESS`, as buildx decides them (`toDisplayMode`, and its printer, which reads
/// the variable only when the flag says `auto`): `quiet` is `--quiet`, `none` shows nothing
/// and prints no image ID.
fn build_progress(a: &BuildArgs) -> Result<(Mode, Printed)> {
    let given: Mode = a
        .progress
        .parse()
        .map_err(|e| anyhow::anyhow!("--progress: {e}"))?;
    if a.quiet || given == Mode::Quiet {
        anyhow::ensure!(
            matches!(given, Mode::Auto | Mode::Quiet),
            "--progress {} and --quiet cannot be used together\n  fix: drop one of them",
            a.progress
        );
        return Ok((Mode::Quiet, Printed::ImageId));
    }
    let mode = match (given, std::env::var("BUILDKIT_PROGRESS")) {
        (Mode::Auto, Ok(v)) if !v.is_empty() => v
            .parse()
            .map_err(|e| anyhow::anyhow!("BUILDKIT_PROGRESS: {e}"))?,
        _ => given,
    };
    let printed = if mode == Mode::None {
        Printed::Nothing
    } else {
        Printed::Digest
    };
    Ok((mode, printed))
}

/// Runs `bk-build build`; also says what to print on standard output afterwards.
async fn run_build(daemon_args: &DaemonArgs, a: &BuildArgs) -> Result<(BuildResult, Printed)> {
    let spec = build_spec(a)?;
    let stdout_export = spec
        .outputs
        .iter()
        .any(|o| o.dest == Some(options::OutputDest::Stdout));
    let (mode, printed) = build_progress(a)?;
    // Standard output that carries the export (`-o -`, `dest=-`) gets nothing else: a digest
    // after the tarball would corrupt it.
    let printed = if stdout_export {
        Printed::Nothing
    } else {
        printed
    };
    // As buildx: these exports make no image, so there would be no ID to write.
    if a.iidfile.is_some()
        && spec.outputs.iter().any(|o| {
            matches!(
                o.kind,
                options::OutputKind::Local | options::OutputKind::Tar
            )
        })
    {
        anyhow::bail!(
            "--iidfile cannot be used with a local or tar output (-o type=local|tar): those \
             exports make no image, so there is no image ID to write; drop --iidfile or export \
             an image"
        );
    }
    // Fail before building when a file cannot be written.
    check_writable("--metadata-file", a.metadata_file.as_deref())?;
    check_writable("--iidfile", a.iidfile.as_deref())?;
    if let Some(f) = &a.iidfile {
        // As buildx: a failed build leaves no stale ID behind for a script to pick up.
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "--iidfile {}: cannot remove the old file",
                    f.display()
                )))
            }
        }
    }
    let mut spec = spec;
    let _inputs = read_inputs(a, &mut spec)?;
    let daemon = daemon_args.connect().await?;
    if spec.outputs.is_empty() && spec.tags.is_empty() && !spec.push && !spec.load {
        if matches!(daemon.kind, transport::DaemonKind::DockerEngine { .. }) {
            // As buildx's docker driver: a result with nowhere else to go is loaded into the
            // engine, untagged (`moby-dangling@…`), so `docker run $(bk-build build -q .)` works.
            spec.load = true;
        } else {
            // As buildx's other drivers, which say so too.
            eprintln!(
                "WARNING: no output specified: the result stays only in the daemon's build cache; to keep it, tag it and --push, or --load it into Docker, or export it with -o"
            );
        }
    }
    if spec.needs_load() {
        spec.load_into = daemon.load_target()?;
    }
    let (progress, task) = Progress::start(mode, Box::new(std::io::stderr()));
    let result = crate::build::build(&daemon, &spec, &progress, None).await;
    drop(progress);
    task.finish().await;
    let result = result?;
    if let Some(f) = &a.iidfile {
        write_atomic(f, result.image_id().unwrap_or_default().as_bytes())
            .with_context(|| format!("--iidfile {}", f.display()))?;
    }
    if let Some(m) = &a.metadata_file {
        let doc = serde_json::to_vec_pretty(&result.metadata_json())?;
        write_atomic(m, &doc).with_context(|| format!("--metadata-file {}", m.display()))?;
    }
    Ok((result, printed))
}

/// Runs `bk-build build --call METHOD`: the frontend evaluates the Dockerfile, and its answer
/// is printed on standard output as buildx prints it. Fails with the check's build error, or
/// ends with the answer's exit status (1 when a check found warnings).
async fn run_build_call(
    daemon_args: &DaemonArgs,
    a: &BuildArgs,
    call: &options::CallFunc,
) -> Result<()> {
    // Nothing is built, so there is nothing to deliver: asking for both is a mistake.
    let mut delivered = Vec::new();
    if a.push {
        delivered.push("--push");
    }
    if a.load {
        delivered.push("--load");
    }
    if !a.outputs.is_empty() {
        delivered.push("--output");
    }
    if !a.cache_to.is_empty() {
        delivered.push("--cache-to");
    }
    if !delivered.is_empty() {
        anyhow::bail!(
            "--call {} evaluates the Dockerfile without building it, so there is nothing for {} to deliver\n  fix: run the check and the build as two commands",
            call.shown_name(),
            delivered.join(", ")
        );
    }
    let mut spec = build_spec(a)?;
    spec.call = Some(call.name.clone());
    let mode: Mode = a.progress.parse()?;
    let inputs = read_inputs(a, &mut spec)?;
    let daemon = daemon_args.connect().await?;
    let (progress, task) = Progress::start(mode, Box::new(std::io::stderr()));
    let result = crate::build::build(&daemon, &spec, &progress, None).await;
    drop(progress);
    task.finish().await;
    let result = result?;
    if let Some(m) = &a.metadata_file {
        let doc = serde_json::to_vec_pretty(&result.metadata_json())?;
        write_atomic(m, &doc).with_context(|| format!("--metadata-file {}", m.display()))?;
    }
    let report = crate::progress::call_report(call, &result.exporter_response, Some(&inputs.shown))
        .map_err(anyhow::Error::msg)?;
    write_stdout_raw(&report.text)?;
    if let Some(e) = report.error {
        // Already shaped like buildx's message: no chain to add.
        return Err(anyhow::Error::msg(
            e.trim_end_matches('\n').to_string() + "\n",
        ));
    }
    match u8::try_from(report.status) {
        Ok(0) => Ok(()),
        Ok(n) => Err(ExitStatus(n).into()),
        Err(_) => Err(ExitStatus(1).into()),
    }
}

/// What a build read from standard input or the context argument, kept while it runs.
struct Inputs {
    /// A Dockerfile read from standard input and the empty context beside it: deleted when
    /// the build is over.
    _temp: Vec<tempfile::TempDir>,
    /// The Dockerfile's name as buildx shows it in check results (`build/opt.go`
    /// `dockerfileSrcName`): `-f` as given, `stdin` when it came from standard input, else
    /// CONTEXT/Dockerfile cleaned the way Go's `filepath.Join` cleans it.
    shown: String,
}

/// Applies the context and `-f` forms `docker buildx build` reads beyond a directory
/// (`build/opt.go` `loadInputs`): a context of `-` is a tar archive on standard input
/// (streamed to the daemon as it pulls it) or, when the first bytes are not an archive, a
/// Dockerfile with an empty context; `-f -` reads the Dockerfile from standard input; a Git or
/// HTTP(S) URL context is fetched by the daemon, with `-f` a path inside it (or a local file,
/// when absolute or `-`). A local directory of the same name wins over a URL, as in buildx.
fn read_inputs(a: &BuildArgs, spec: &mut BuildSpec) -> Result<Inputs> {
    let file = a.file.as_deref();
    let file_stdin = file.is_some_and(|f| f.as_os_str() == "-");
    let mut inputs = Inputs {
        _temp: Vec::new(),
        shown: match file {
            Some(_) if file_stdin => "stdin".to_string(),
            Some(f) => f.display().to_string(),
            None => go_clean(&format!("{}/Dockerfile", a.context.display())),
        },
    };
    let context = a.context.to_string_lossy().into_owned();
    if context == "-" {
        anyhow::ensure!(
            !file_stdin,
            "standard input cannot be both the build context (CONTEXT -) and the Dockerfile (-f -)\n  fix: pipe one of them, and pass the other as a path"
        );
        let mut stdin = std::io::stdin();
        let head = read_head(&mut stdin, crate::build::ARCHIVE_PEEK)
            .context("cannot read the build context from standard input")?;
        anyhow::ensure!(
            !head.is_empty(),
            "standard input is empty, but CONTEXT - reads the build context from it\n  fix: pipe a tar archive of the context (tar -C dir -c . | bk-build build -) or a Dockerfile (bk-build build - < Dockerfile)"
        );
        if crate::build::is_archive(&head) {
            spec.context_input = crate::build::ContextInput::Upload {
                upload: crate::session::upload::Upload::new(head, stdin),
                filename: file.map(|f| f.to_string_lossy().into_owned()),
            };
            spec.dockerfile = None;
        } else {
            anyhow::ensure!(
                file.is_none(),
                "standard input holds a Dockerfile (it is no tar archive), and -f names another one\n  fix: pipe a tar archive of the context, or leave out -f"
            );
            let (dir, dockerfile) = stdin_dockerfile(&head, &mut stdin)?;
            let empty = temp_dir("bk-build-empty-context")?;
            spec.context = empty.path().to_path_buf();
            spec.dockerfile = Some(dockerfile);
            inputs._temp.extend([dir, empty]);
            inputs.shown = "stdin".to_string();
        }
        return Ok(inputs);
    }
    let remote = !a.context.is_dir() && options::is_remote_url(&context);
    if file_stdin {
        let (dir, dockerfile) = stdin_dockerfile(&[], &mut std::io::stdin())?;
        spec.dockerfile = Some(dockerfile);
        inputs._temp.push(dir);
    }
    if remote {
        let filename = match file {
            Some(f) if !file_stdin && !f.is_absolute() => {
                // A path inside the fetched context, not on this machine.
                spec.dockerfile = None;
                Some(f.to_string_lossy().into_owned())
            }
            _ => None,
        };
        spec.context_input = crate::build::ContextInput::Url {
            url: context,
            filename,
        };
    }
    Ok(inputs)
}

/// Up to `n` bytes from the start of `r` (fewer only at its end).
fn read_head(r: &mut impl std::io::Read, n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// A new temporary directory (the system's), named for what it holds.
fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("cannot create a temporary directory")
}

/// The largest Dockerfile `bk-build build -` takes from standard input, in bytes.
const STDIN_DOCKERFILE_MAX: u64 = 16 << 20;

/// Writes `head` and the rest of `r` (standard input) to `Dockerfile` in a new temporary
/// directory, streaming; returns the directory and the file. Errors past
/// [`STDIN_DOCKERFILE_MAX`] bytes.
fn stdin_dockerfile(
    head: &[u8],
    r: &mut impl std::io::Read,
) -> Result<(tempfile::TempDir, PathBuf)> {
    use std::io::Write;
    let dir = temp_dir("bk-build-dockerfile")?;
    let path = dir.path().join("Dockerfile");
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    // Bounded: what arrives here is not a tar archive, and a stream that is not a Dockerfile
    // either (a mistaken pipe) must not fill the disk before the frontend rejects it.
    let rest = STDIN_DOCKERFILE_MAX.saturating_sub(head.len() as u64) + 1;
    let copied = f
        .write_all(head)
        .and_then(|()| std::io::copy(&mut std::io::Read::take(&mut *r, rest), &mut f))
        .and_then(|n| f.flush().map(|()| n))
        .with_context(|| {
            format!(
                "cannot copy the Dockerfile from standard input to {}",
                path.display()
            )
        })?;
    anyhow::ensure!(
        head.len() as u64 + copied <= STDIN_DOCKERFILE_MAX,
        "standard input is not a tar archive, and at over {} MiB it is no Dockerfile either: \
         pipe a Dockerfile, or a tar of the build context, into `bk-build build -`",
        STDIN_DOCKERFILE_MAX >> 20
    );
    Ok((dir, path))
}

/// A slash path cleaned lexically, as Go's `path/filepath.Clean` does: repeated slashes and
/// `.` elements go, `..` removes the element before it.
fn go_clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Writes `text` to standard output as it is (it carries its own newlines).
fn write_stdout_raw(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("cannot write to standard output"),
        })
}

/// `SOURCE_DATE_EPOCH` from the environment becomes the build arg of that name unless one is
/// given, as buildx does (its `build` and `bake` commands): BuildKit then clamps timestamps
/// in the image to it (reproducible builds).
fn source_date_epoch(args: &mut std::collections::BTreeMap<String, String>) {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        args.entry("SOURCE_DATE_EPOCH".to_string()).or_insert(v);
    }
}

/// The daemons `info`, `workers`, `du` and `prune` act on.
enum Inspected {
    /// One daemon: the address given, or the one discovered.
    One,
    /// Every daemon of a pool: several `--addr`s (or `BUILDKIT_HOST` items), or, with none
    /// given, the project's `[builders]` (`Some(project)`).
    Pool(Option<crate::project::Project>),
}

/// Which daemons `info`, `workers`, `du` and `prune` act on: those given with `--addr`; else
/// the `[builders]` of the bk-build.toml named with `-f`, else of the current directory's;
/// else the default daemon. Only `[vars]` and `[builders]` are read
/// ([`crate::project::load_builders`]): a mistake in a target does not hide the pool.
///
/// Errors: the bk-build.toml (named or found) cannot be read for its `[builders]`: acting
/// on the default daemon instead could prune one the user did not mean; the files named with
/// `-f` declare no builders (compose and bake files never do).
fn inspected(d: &DaemonArgs, files: &[PathBuf]) -> Result<Inspected> {
    let addrs = d.addrs();
    if addrs.len() > 1 {
        return Ok(Inspected::Pool(None));
    }
    if !addrs.is_empty() {
        return Ok(Inspected::One);
    }
    let env = |k: &str| std::env::var(k).ok();
    let project = if files.is_empty() {
        let Ok(cwd) = std::env::current_dir() else {
            return Ok(Inspected::One);
        };
        let toml = cwd.join("bk-build.toml");
        if !toml.is_file() {
            return Ok(Inspected::One);
        }
        crate::project::load_builders(std::slice::from_ref(&toml), &env).with_context(|| {
            format!(
                "{}: its [builders] (the daemons to act on) could not be read; fix the file, or name the daemon with --addr",
                toml.display()
            )
        })?
    } else {
        let p = crate::project::load_builders(files, &env)?;
        // Named on purpose, a file without a pool is a mistake, not a request for the default.
        anyhow::ensure!(
            !p.builders.is_empty(),
            "-f {}: declares no [builders.NAME] (compose and bake files never do); pass a bk-build.toml with [builders], or the daemons with --addr",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" -f ")
        );
        p
    };
    Ok(if project.builders.is_empty() {
        Inspected::One
    } else {
        Inspected::Pool(Some(project))
    })
}

/// What a pool member is, for the text of `info`, `workers` and `du`: its `[builders]` name
/// and its address as given, the values at column `width` (that of the lines that follow);
/// for `workers` (`Some(declared)`) also the builds `bake` runs on it at once and, when the
/// builder declares them, its platforms.
fn member_header(m: &crate::pool::Member, width: usize, workers: Option<bool>) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| s.push_str(&format!("{:<width$}{v}\n", format!("{k}:")));
    if let Some(n) = &m.name {
        line("Builder", n);
    }
    line("Daemon", &m.address);
    if let Some(declared) = workers {
        line("Jobs", &m.slots.to_string());
        if declared {
            line(
                "Declared",
                &format!(
                    "{} (targets for these platforms go here)",
                    m.platforms.join(",")
                ),
            );
        }
    }
    s
}

/// A pool member's JSON list (as printed for one address), each object with the member's
/// `address` (as given) and `[builders]` name (`builder`) added, so that one list can hold
/// every member's.
fn with_member(list: &str, m: &crate::pool::Member) -> Result<Vec<serde_json::Value>> {
    let listed: serde_json::Value = serde_json::from_str(list)?;
    Ok(listed
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.insert("address".into(), serde_json::json!(m.address));
                if let Some(n) = &m.name {
                    o.insert("builder".into(), serde_json::json!(n));
                }
            }
            v
        })
        .collect())
}

/// `info`, `workers`, `du` or `prune` on every member of a pool (as `docker buildx` does on
/// every node of a builder). A member that answers the connection but fails the call (not
/// BuildKit, or gone since) is left out with a warning naming it, as a daemon that does not
/// answer is; `prune` then fails at the end, having pruned the others.
///
/// Errors: no member could answer; for `prune`, any member that failed.
async fn inspect_pool(cli: &Cli, project: Option<&crate::project::Project>) -> Result<()> {
    let connected = cli.daemon.connect_pool_reporting(project, None).await?;
    let pool = connected.pool;
    let declared = |m: &crate::pool::Member| {
        project.is_some_and(|p| {
            p.builders
                .iter()
                .any(|b| Some(&b.name) == m.name.as_ref() && !b.platforms.is_empty())
        })
    };
    let mut text = String::new();
    let mut all = Vec::new();
    let mut failed = Vec::new();
    let format = match &cli.command {
        Command::Info(a) | Command::Workers(a) => a.format,
        Command::Du(a) => a.format,
        _ => inspect::Format::Text,
    };
    for m in pool.members() {
        let answer: Result<()> = async {
            match &cli.command {
                Command::Info(_) => {
                    let info = crate::client::info(&m.daemon).await?;
                    text.push_str(&member_header(m, 10, None));
                    text.push_str(&inspect::info_text(&m.daemon, info.as_ref()));
                    let mut v: serde_json::Value =
                        serde_json::from_str(&inspect::info_json(&m.daemon, info.as_ref())?)?;
                    if let Some(o) = v.as_object_mut() {
                        // `address` as in the other pool outputs and `plan`; the resolved
                        // endpoint beside it.
                        if let Some(e) = o.remove("address") {
                            o.insert("endpoint".into(), e);
                        }
                        o.insert("address".into(), serde_json::json!(m.address));
                        if let Some(n) = &m.name {
                            o.insert("builder".into(), serde_json::json!(n));
                        }
                    }
                    all.push(v);
                }
                Command::Workers(_) => {
                    let workers = crate::client::workers(&m.daemon).await?;
                    text.push_str(&member_header(m, 11, Some(declared(m))));
                    text.push_str(&inspect::workers_text(&workers));
                    for mut w in with_member(&inspect::workers_json(&workers)?, m)? {
                        if let Some(o) = w.as_object_mut() {
                            o.insert("jobs".into(), serde_json::json!(m.slots));
                        }
                        all.push(w);
                    }
                }
                Command::Du(a) => {
                    let recs = crate::client::disk_usage(&m.daemon, a.filter.clone()).await?;
                    text.push_str(&member_header(m, 11, None));
                    text.push_str(&inspect::du_text(&recs, a.verbose));
                    all.extend(with_member(&inspect::du_json(&recs)?, m)?);
                }
                Command::Prune(a) => {
                    let recs = crate::client::prune(&m.daemon, &prune_options(a)).await?;
                    let total: i64 = recs.iter().map(|r| r.size).sum();
                    // Printed after the loop: a closed standard output is not a daemon's failure.
                    text.push_str(&format!(
                        "{}: removed {} records, {} reclaimed\n",
                        m.label(),
                        recs.len(),
                        crate::progress::format_bytes(total)
                    ));
                    return Ok(());
                }
                _ => {}
            }
            text.push('\n');
            Ok(())
        }
        .await;
        if let Err(e) = answer {
            failed.push((m.label(), format!("{e:#}")));
        }
    }
    let list = |failed: &[(String, String)]| {
        failed
            .iter()
            .map(|(who, e)| format!("  {who}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Every daemon refused the call (a filter none accepts, say): one error, not warnings.
    anyhow::ensure!(
        failed.len() < pool.members().len(),
        "every daemon of the pool failed:\n{}",
        list(&failed)
    );
    for (who, e) in &failed {
        eprintln!("WARNING: {who} left out: {e}");
    }
    if matches!(cli.command, Command::Prune(_)) {
        // Written first; a closed standard output does not hide a daemon left unpruned.
        let printed = write_stdout_bytes(text.as_bytes());
        // A cleanup that skipped a daemon must not look like one that did them all.
        let skipped: Vec<(String, String)> = connected
            .left_out
            .iter()
            .map(|who| (who.clone(), "did not answer (see above)".to_string()))
            .chain(failed)
            .collect();
        anyhow::ensure!(
            skipped.is_empty(),
            "some daemons of the pool were not pruned (the others were):\n{}",
            list(&skipped)
        );
        return printed;
    }
    match format {
        inspect::Format::Text => write_stdout_bytes(text.trim_end_matches('\n').as_bytes())
            .and_then(|()| write_stdout_bytes(b"\n"))?,
        // `info`: the first daemon's object, as with one address, plus every daemon's.
        inspect::Format::Json if matches!(cli.command, Command::Info(_)) => {
            let mut v = all.first().cloned().unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("pool".into(), serde_json::Value::Array(all));
            }
            outln!("{}", serde_json::to_string_pretty(&v)?)?
        }
        inspect::Format::Json => outln!("{}", serde_json::to_string_pretty(&all)?)?,
    }
    Ok(())
}

/// `prune`'s flags as BuildKit's prune request takes them.
fn prune_options(a: &PruneArgs) -> crate::client::PruneOptions {
    crate::client::PruneOptions {
        all: a.all,
        filters: a.filter.clone(),
        keep_duration_ns: a
            .keep_duration
            .map(|s| {
                i64::try_from(s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000_000)
            })
            .unwrap_or(0),
        keep_bytes: a.keep_storage.unwrap_or(0),
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

/// What a plan is for.
enum PlanFor<'a> {
    /// `plan`: a question; nothing is changed.
    Answer,
    /// `bake`, with the entitlements granted (checked before anything is done): re-tags start
    /// as soon as they are decided.
    Bake { granted: &'a [String] },
}

/// Opens the project's state (taking its lock) and plans the run.
async fn plan_project(
    daemon_args: &DaemonArgs,
    a: &ProjectArgs,
    lock_wait: Duration,
    purpose: PlanFor<'_>,
) -> Result<(
    crate::project::Project,
    crate::fingerprint::StateStore,
    crate::bake::BakePlan,
)> {
    let project = load_project(a, true)?;
    ensure_targets(&project)?;
    daemon_args.check_settings(Some(&project))?;
    // Inline Dockerfiles are written before the graph reads them.
    crate::project::materialize(&project)?;
    if let PlanFor::Bake { granted } = purpose {
        let order = crate::graph::plan(&project, &a.targets)?.order;
        ensure_granted(&project, &order, granted)?;
    }
    crate::timing::mark("project loaded");
    let mut state =
        crate::fingerprint::StateStore::open_with(&project.root, lock_wait, &mut |msg| {
            eprintln!("{msg}")
        })?;
    state.use_git_index(!a.no_git_index);
    crate::timing::mark("state opened");
    // Planning needs no BuildKit connection: images loaded into a Docker Engine are checked
    // over its HTTP API, and a plan that cannot reach it still works from the registry and
    // the recorded state.
    let mut opts = a.bake_options(&project, daemon_args)?;
    opts.retag_early = matches!(purpose, PlanFor::Bake { .. });
    let plan = crate::bake::plan(&project, &a.targets, &state, &opts).await?;
    crate::timing::mark("planned");
    if crate::timing::on() {
        let c = state.stat_cache();
        crate::timing::mark(&format!(
            "fingerprints: {} files read ({} bytes), {} vouched for by git's index",
            c.hashes_performed(),
            c.bytes_hashed(),
            c.files_vouched()
        ));
    }
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
                // With --shard, which shard acts on the target comes first.
                let shard = t.shard.map(|s| format!("shard {s}  ")).unwrap_or_default();
                // With a pool, where a build most likely goes.
                let on = match t.daemon.as_deref() {
                    Some(crate::bake::DAEMON_AT_RUN_TIME) => {
                        format!("  (daemon {})", crate::bake::DAEMON_AT_RUN_TIME)
                    }
                    Some(d) => format!("  (on {d})"),
                    None => String::new(),
                };
                outln!(
                    "{:<width$}  {shard}{:<5}  {}{on}",
                    t.name,
                    t.action.as_str(),
                    t.reasons.join("; ")
                )?;
            }
        }
        "matrix" => {
            let layers = plan.build_layers();
            let include: Vec<serde_json::Value> = layers
                .iter()
                .enumerate()
                .flat_map(|(l, names)| {
                    names
                        .iter()
                        .map(move |n| serde_json::json!({"layer": l, "target": n}))
                })
                .collect();
            outln!(
                "{}",
                serde_json::json!({"layers": layers, "include": include})
            )?;
        }
        other => anyhow::bail!("--format {other}: use text, json or matrix"),
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

/// As buildx bake: privileges the targets ask for must be granted with `--allow`.
fn ensure_granted(
    project: &crate::project::Project,
    targets: &[String],
    granted: &[String],
) -> Result<()> {
    let missing = overrides::ungranted(project, targets, granted);
    if missing.is_empty() {
        return Ok(());
    }
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

/// `bake --call METHOD`: every requested target (and those they use through `target:`) is
/// evaluated by the frontend, nothing is built or recorded, and the answers are printed on
/// standard output grouped as `docker buildx bake --call` prints them.
async fn run_bake_call(
    daemon_args: &DaemonArgs,
    a: &BakeArgs,
    call: &options::CallFunc,
    granted: &[String],
    mode: Mode,
) -> Result<bool> {
    // As `build --call`: nothing is built, so a flag asking to deliver it is a mistake (what
    // targets' own files say is left alone: the check is of those same targets).
    let delivered: Vec<&str> = [("--push", a.project.push), ("--load", a.project.load)]
        .into_iter()
        .filter(|(_, v)| *v == Some(true))
        .map(|(flag, _)| flag)
        .collect();
    if !delivered.is_empty() {
        anyhow::bail!(
            "--call {} evaluates the Dockerfiles without building them, so there is nothing for {} to deliver\n  fix: run the check and the build as two commands",
            call.shown_name(),
            delivered.join(", ")
        );
    }
    let project = load_project(&a.project, true)?;
    ensure_targets(&project)?;
    crate::project::materialize(&project)?;
    let shown = crate::graph::printed(&project, &a.project.targets)?;
    let names: Vec<String> = shown.targets.keys().cloned().collect();
    ensure_granted(&project, &names, granted)?;
    let daemon = daemon_args.connect().await?;
    let jobs = match a.jobs {
        Some(j) => j.max(1),
        None => crate::pool::default_jobs(&daemon).await,
    };
    let (progress, task) = Progress::start(mode, Box::new(std::io::stderr()));
    let answers = crate::bake::call(&daemon, &project, &names, &call.name, jobs, &progress).await;
    drop(progress);
    task.finish().await;
    let answers = answers?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut responses = std::collections::BTreeMap::new();
    let mut dockerfiles = std::collections::BTreeMap::new();
    let mut metadata = serde_json::Map::new();
    let mut failed = false;
    for (name, answer) in answers {
        match answer {
            Ok(r) => {
                metadata.insert(name.clone(), r.metadata_json());
                responses.insert(name.clone(), r.exporter_response);
            }
            Err(e) => {
                failed = true;
                eprintln!("[{name}] {e}");
            }
        }
        if let Some(t) = project.targets.get(&name) {
            // buildx shows the Dockerfile as CONTEXT/DOCKERFILE from the current directory.
            let df = t.dockerfile.strip_prefix(&cwd).unwrap_or(&t.dockerfile);
            dockerfiles.insert(name, df.display().to_string());
        }
    }
    if let Some(m) = &a.metadata_file {
        let doc = serde_json::to_vec_pretty(&serde_json::Value::Object(metadata))?;
        write_atomic(m, &doc).with_context(|| format!("--metadata-file {}", m.display()))?;
    }
    let printed = crate::project::to_json(&shown);
    let (text, status) =
        crate::progress::bake_call_report(call, &responses, &dockerfiles, &printed);
    write_stdout_raw(&text)?;
    if failed {
        return Ok(false);
    }
    match u8::try_from(status) {
        Ok(0) => Ok(true),
        Ok(n) => Err(ExitStatus(n).into()),
        Err(_) => Err(ExitStatus(1).into()),
    }
}

async fn run_bake(daemon_args: &DaemonArgs, a: &BakeArgs) -> Result<bool> {
    // Parsed before anything is read or built.
    let call = call_flags(a.call.as_deref(), a.check)?;
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
    check_writable("--metadata-file", a.metadata_file.as_deref())?;
    if let Some(call) = &call {
        return run_bake_call(daemon_args, a, call, &granted, mode).await;
    }
    let (project, state, plan) = plan_project(
        daemon_args,
        &a.project,
        crate::fingerprint::DEFAULT_LOCK_WAIT,
        PlanFor::Bake { granted: &granted },
    )
    .await?;
    let mut opts = a.project.bake_options(&project, daemon_args)?;
    if a.metadata_file.is_some() {
        opts.metadata_provenance = metadata_provenance();
    }
    // With shards, what other shards build needs no daemon here.
    let must_build = plan.ordered().any(|t| {
        t.action == crate::bake::Action::Build
            && opts.shard.is_none_or(|s| t.shard == Some(s.index()))
    });
    // Skips and re-tags need no daemon.
    let pool = if must_build {
        match daemon_args.connect_pool(Some(&project), a.jobs).await {
            Ok(p) => Some(p),
            Err(e) => {
                // Still do the skips and re-tags; the builds fail with this.
                eprintln!("ERROR: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let jobs = match &pool {
        // -j is per daemon; targets waiting for the daemon that has their cache must not
        // keep others from the free ones, so a pool has room for its queues.
        Some(p) if p.members().len() > 1 => p.total_slots() * (1 + crate::pool::QUEUE_PER_SLOT),
        Some(p) => p.total_slots(),
        None => a.jobs.map_or(16, |j| j.max(1)),
    };
    let (progress, task) = Progress::start(mode, Box::new(std::io::stderr()));
    if let Some(shard) = opts.shard {
        let mine = plan
            .ordered()
            .filter(|t| t.shard == Some(shard.index()))
            .count();
        progress.note(
            None,
            &format!(
                "shard {shard}: {mine} of the {} targets are this shard's",
                plan.graph.order.len()
            ),
        );
    }
    let executed = crate::bake::execute_shard(
        pool.as_ref(),
        &project,
        &a.project.targets,
        plan,
        &state,
        jobs,
        &progress,
        &opts,
        Duration::from_secs(a.shard_wait),
    )
    .await;
    crate::timing::mark("executed");
    let (mut results, plan) = match executed {
        Ok(done) => done,
        Err(e) => {
            drop(progress);
            task.finish().await;
            return Err(e.into());
        }
    };
    // Targets that cannot be built (a context not checked out, …) fail on their own; the
    // rest of the run went on without them. With shards, the first one reports them.
    let reports_unavailable = opts.shard.is_none_or(|s| s.index() == 1);
    for (name, why) in plan
        .graph
        .unavailable
        .iter()
        .filter(|_| reports_unavailable)
    {
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
    let rows = crate::bake::summary_rows(&results, &plan);
    // As `docker buildx bake --progress quiet`: no table; errors and warnings still follow.
    // `none` shows nothing but what went wrong (buildx documents it for bake as for build).
    if !matches!(mode, Mode::Quiet | Mode::None) {
        eprintln!("\n{}", crate::progress::summary_table(&rows));
    }
    // GitHub Actions shows this file on the run's summary page.
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) {
        let md = crate::progress::summary_markdown("bk-build bake", &rows);
        if let Err(e) = crate::progress::append_step_summary(Path::new(&path), &md) {
            eprintln!(
                "warning: cannot append the run's summary to GITHUB_STEP_SUMMARY={}: {e}",
                Path::new(&path).display()
            );
        }
    }
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
    state.save_stat_cache();
    crate::timing::mark("stat cache saved again");
    for w in state.take_warnings() {
        eprintln!("WARNING: {w}");
    }
    if let Some(m) = &a.metadata_file {
        let doc = serde_json::to_vec_pretty(&crate::bake::metadata_json(&results))?;
        write_atomic(m, &doc).with_context(|| format!("--metadata-file {}", m.display()))?;
    }
    Ok(ok)
}

async fn run(cli: Cli) -> Result<()> {
    // `info`, `workers`, `du` and `prune` act on every daemon of a pool: `--addr`s, else the
    // project's `[builders]` (the daemons `bake` there would use).
    let files = match &cli.command {
        Command::Info(a) | Command::Workers(a) => Some(&a.pool.files),
        Command::Du(a) => Some(&a.pool.files),
        Command::Prune(a) => Some(&a.pool.files),
        _ => None,
    };
    if let Some(files) = files {
        if let Inspected::Pool(project) = inspected(&cli.daemon, files)? {
            return inspect_pool(&cli, project.as_ref()).await;
        }
    }
    match &cli.command {
        Command::Bake(a) => {
            if !run_bake(&cli.daemon, a).await? {
                anyhow::bail!("some targets failed (see above)");
            }
        }
        Command::Plan(a) => {
            anyhow::ensure!(
                !(a.format == "matrix" && a.project.shard.is_some()),
                "--format matrix lists every target that must be built, for a CI matrix of one job per target; --shard I/N is the other way to split a run (N jobs, each `bake --shard I/N`): use one or the other"
            );
            // A plan is a question: don't wait long behind a running bake.
            let (_project, _state, plan) = plan_project(
                &cli.daemon,
                &a.project,
                Duration::from_secs(5),
                PlanFor::Answer,
            )
            .await?;
            print_plan(&plan, &a.format)?;
            if !plan.graph.unavailable.is_empty() {
                anyhow::bail!("some targets cannot be built (see above)");
            }
        }
        Command::Build(a) => {
            if let Some(call) = call_flags(a.call.as_deref(), a.check)? {
                return run_build_call(&cli.daemon, a, &call).await;
            }
            let (r, printed) = run_build(&cli.daemon, a).await?;
            let shown = match printed {
                Printed::Digest => r.image_digest(),
                Printed::ImageId => r.image_id(),
                Printed::Nothing => None,
            };
            if let Some(d) = shown {
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
        Command::Info(a) => {
            let d = cli.daemon.connect().await?;
            let info = crate::client::info(&d).await?;
            match a.format {
                inspect::Format::Text => {
                    write_stdout_bytes(inspect::info_text(&d, info.as_ref()).as_bytes())?
                }
                inspect::Format::Json => outln!("{}", inspect::info_json(&d, info.as_ref())?)?,
            }
        }
        Command::Workers(a) => {
            let d = cli.daemon.connect().await?;
            let workers = crate::client::workers(&d).await?;
            match a.format {
                inspect::Format::Text => {
                    write_stdout_bytes(inspect::workers_text(&workers).as_bytes())?
                }
                inspect::Format::Json => outln!("{}", inspect::workers_json(&workers)?)?,
            }
        }
        Command::Du(a) => {
            let d = cli.daemon.connect().await?;
            let recs = crate::client::disk_usage(&d, a.filter.clone()).await?;
            match a.format {
                inspect::Format::Text => {
                    write_stdout_bytes(inspect::du_text(&recs, a.verbose).as_bytes())?
                }
                inspect::Format::Json => outln!("{}", inspect::du_json(&recs)?)?,
            }
        }
        Command::Completion(a) => write_stdout_bytes(&reference::completion(a.shell))?,
        Command::Man(a) => write_stdout_bytes(&reference::man_page(a.command.as_deref())?)?,
        Command::Prune(a) => {
            let o = prune_options(a);
            let d = cli.daemon.connect().await?;
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
/// Set once `main` has begun to answer a signal.
static SIGNAL_ANSWERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How long a signal may wait for `main` to answer it.
const SIGNAL_BACKSTOP_WAIT: Duration = Duration::from_secs(2);

/// Ends the process when `main` does not answer a signal in time: `main` polls the run and the
/// signals on one thread, which planning blocks while it walks files (long on a big context
/// or a slow file system). Runs on a worker thread.
async fn signal_backstop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    let (how, code) = tokio::select! {
        _ = received(&mut interrupt) => ("interrupted", EXIT_INTERRUPTED),
        _ = received(&mut terminate) => ("terminated (SIGTERM)", EXIT_TERMINATED),
    };
    tokio::time::sleep(SIGNAL_BACKSTOP_WAIT).await;
    if !SIGNAL_ANSWERED.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("{how}: stopped while planning");
        std::process::exit(i32::from(code));
    }
}

/// Waits for the signal `s` listens for (forever when listening failed).
async fn received(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
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
        use tokio::signal::unix::{signal, SignalKind};
        // Listening starts before anything runs: with no handler yet, a signal would end the
        // process without a word.
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        tokio::spawn(signal_backstop());
        tokio::select! {
            r = run(cli) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<ExitStatus>().is_some() => {
                    ExitCode::from(e.downcast_ref::<ExitStatus>().map_or(1, |s| s.0))
                }
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
            _ = received(&mut interrupt) => {
                SIGNAL_ANSWERED.store(true, std::sync::atomic::Ordering::SeqCst);
                // Dropping the build future resets the Solve call (the daemon cancels the
                // job) and closes the session; give the connection a moment to send that.
                tokio::time::sleep(Duration::from_millis(300)).await;
                crate::progress::finish_interrupted(PROGRESS_END_WAIT);
                report_cancellation("interrupted").await;
                ExitCode::from(EXIT_INTERRUPTED)
            }
            _ = received(&mut terminate) => {
                SIGNAL_ANSWERED.store(true, std::sync::atomic::Ordering::SeqCst);
                // As Ctrl-C: `docker stop`, CI job timeouts and `kill` send SIGTERM.
                tokio::time::sleep(Duration::from_millis(300)).await;
                crate::progress::finish_interrupted(PROGRESS_END_WAIT);
                report_cancellation("terminated (SIGTERM)").await;
                ExitCode::from(EXIT_TERMINATED)
            }
        }
    });
    crate::timing::mark("finished");
    rt.shutdown_timeout(Duration::from_secs(1));
    crate::timing::mark("runtime shut down");
    code
}

/// How long an interrupted run waits for its progress output (held blocks of unfinished
/// targets) to be written.
const PROGRESS_END_WAIT: Duration = Duration::from_secs(2);

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
