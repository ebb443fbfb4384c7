//! Running a project: decide per target whether to build, re-tag or skip it (graph +
//! fingerprints + what the local state and the registry already hold), then do it with
//! bounded parallelism, each dependent on the exact image its base produced, recording every
//! success as soon as it happens.
//!
//! The decision ("the skip rule") lives here. A target's key covers its content inputs only
//! (files, Dockerfile, visible args, bases by digest, …; see [`crate::fingerprint`]). A result
//! for that key is known from the local state or from the **registry ledger**: after a push,
//! the image is also tagged `<repository>:bk-build-<key>` ([`fingerprint::ledger_tag`]), so a
//! fresh CI runner can find it by content. With a known result, the wanted tags and outputs
//! are checked: all present → `skip`; only tags missing → `retag` (a manifest copy, no layer
//! upload, no daemon); anything else → `build`. Whatever is uncertain leads to `build`.
//!
//! This is the orchestration layer: it joins [`crate::project`], [`crate::graph`],
//! [`crate::fingerprint`], [`crate::build`], [`crate::registry`] and [`crate::progress`]. It
//! does not parse files, walk directories or speak the protocol itself.
//!
//! - [`plan`](plan()): inputs, fingerprints and the decision per target;
//! - `deliver`: where a known result must be (tags, engine images, outputs), checked;
//! - `link`: how a target without tags reaches the targets that use it through `target:`;
//! - [`execute`]: skips and re-tags, then builds in dependency order, recording each result;
//! - [`call`](call()): `--call`, every target evaluated by the frontend, nothing built.

mod call;
mod deliver;
mod execute;
mod link;
mod plan;
mod shard;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::fingerprint::{self, Fingerprint, FingerprintInput};
use crate::graph;
use crate::progress::{SummaryRow, TargetOutcome};
use crate::transport::DockerHost;

pub use call::call;
pub use execute::execute;
pub use plan::plan;
pub use shard::{execute_shard, Shard, ShardParseError};

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    #[error(transparent)]
    Fingerprint(#[from] fingerprint::FingerprintError),
    #[error(transparent)]
    State(#[from] fingerprint::StateError),
    #[error("target `{target}`: {message}")]
    Target { target: String, message: String },
    /// Planning failed after some re-tags had started ([`BakeOptions::retag_early`]).
    #[error("{source}\n  note: re-tagged before this error (their inputs are unchanged, so these tags are right): {}", done.join("; "))]
    AfterRetags {
        source: Box<BakeError>,
        /// What the re-tags did, a line per tag set.
        done: Vec<String>,
    },
}

fn terr(target: &str, message: impl Into<String>) -> BakeError {
    BakeError::Target {
        target: target.to_string(),
        message: message.into(),
    }
}

/// How a run decides.
#[derive(Debug, Clone, Default)]
pub struct BakeOptions {
    /// Build these targets whatever their state (`bake --force`), and record the result.
    pub force: BTreeSet<String>,
    /// Look results up in, and record them to, the registry ledger (default on).
    pub ledger: bool,
    /// The Docker Engine that builds (if the builder is one): a `FROM` without `pull` uses
    /// the image of that name in its store when there is one, so a result is reused only if
    /// it was built from that same image.
    pub engine_images: Option<DockerHost>,
    /// Builds get buildx's default provenance unless a target says otherwise (off with
    /// `BUILDX_NO_DEFAULT_ATTESTATIONS`); part of every fingerprint.
    pub default_provenance: bool,
    /// How much provenance built targets' metadata carries (`Disabled` without a metadata
    /// file).
    pub metadata_provenance: crate::options::MetadataProvenance,
    /// Start each `retag` as soon as it is decided, while other targets are still being
    /// fingerprinted (`bake`; a `plan` only answers). [`execute`] then waits for it.
    pub retag_early: bool,
    /// Act only on this shard's share of the targets (`bake --shard I/N`); the others are
    /// planned only for the digests their dependents need (see `shard`).
    pub shard: Option<Shard>,
    /// The addresses of the daemon pool as given (`--addr` repeated); `plan` shows where each
    /// build most likely goes when there are several.
    pub pool: Vec<String>,
}

/// A plan's [`TargetPlan::daemon`] for a build whose daemon only the run can choose.
pub const DAEMON_AT_RUN_TIME: &str = "decided at run time: the registry's hint, else least loaded";

/// What a run will do with one target, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetPlan {
    pub name: String,
    pub action: Action,
    pub reasons: Vec<String>,
    /// The key of the target's inputs; `None` while a base it builds on must be built first
    /// (the base's new digest is one of the inputs).
    pub fingerprint: Option<String>,
    /// The image digest a skipped or re-tagged target has.
    pub digest: Option<String>,
    /// The shard that acts on this target, when the run is sharded (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<usize>,
    /// With a pool of daemons, the one a build most likely goes to (its address as given,
    /// or [`DAEMON_AT_RUN_TIME`] when neither state nor requirements say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// Tags a `retag` adds (registry tags, then Docker Engine tags).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retag: Vec<String>,
    #[serde(skip)]
    retag_registry: Vec<String>,
    #[serde(skip)]
    retag_engine: Vec<String>,
    /// A registry reference holding `digest`, to copy re-tagged manifests from.
    #[serde(skip)]
    retag_from: Option<String>,
    /// The ledger entry's manifest, when that is the source: re-tagging within its repository
    /// then needs only a `PUT`.
    #[serde(skip)]
    retag_manifest: Option<crate::registry::StoredManifest>,
    /// The result is already in the registry ledger (no need to write it again).
    #[serde(skip)]
    in_ledger: bool,
    /// Content fingerprint without the digests of project bases (added once known).
    #[serde(skip)]
    content: Option<Fingerprint>,
    /// What `content` was computed from, to check it again after a build.
    #[serde(skip)]
    input: Option<FingerprintInput>,
    /// External bases the building engine has its own image of: reference → image ID.
    #[serde(skip)]
    local_bases: BTreeMap<String, String>,
    /// The images the Dockerfile scan says the build starts from (checked after a build
    /// against the ones the frontend really resolved).
    #[serde(skip)]
    base_refs: Vec<String>,
    /// The whole fingerprint, when every base's digest is known at planning time.
    #[serde(skip)]
    full: Option<Fingerprint>,
    /// Project targets whose images this one builds on (they pin it by digest).
    #[serde(skip)]
    image_deps: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Build,
    Retag,
    Skip,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Build => "build",
            Action::Retag => "retag",
            Action::Skip => "skip",
        }
    }
}

/// The decisions for one run, in build order.
#[derive(Debug, Clone)]
pub struct BakePlan {
    pub graph: graph::Plan,
    pub targets: BTreeMap<String, TargetPlan>,
    /// Re-tags already under way ([`BakeOptions::retag_early`]).
    early: EarlyRetags,
}

/// What a re-tag reports: a line per tag set, then how it ended.
type RetagOutcome = (Vec<String>, Result<(), String>);

/// Re-tags started while planning, by target; [`execute`] takes each one over.
#[derive(Clone, Default)]
struct EarlyRetags(
    std::sync::Arc<std::sync::Mutex<BTreeMap<String, tokio::task::JoinHandle<RetagOutcome>>>>,
);

impl EarlyRetags {
    fn insert(&self, name: &str, task: tokio::task::JoinHandle<RetagOutcome>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(name.to_string(), task);
        }
    }

    fn take(&self, name: &str) -> Option<tokio::task::JoinHandle<RetagOutcome>> {
        self.0.lock().ok()?.remove(name)
    }

    /// Waits for every re-tag under way and returns `error`, naming what they did.
    async fn settle(&self, error: BakeError) -> BakeError {
        let tasks: Vec<_> = match self.0.lock() {
            Ok(mut m) => std::mem::take(&mut *m).into_values().collect(),
            Err(_) => Vec::new(),
        };
        let mut done = Vec::new();
        for task in tasks {
            if let Ok((lines, _)) = task.await {
                done.extend(lines);
            }
        }
        if done.is_empty() {
            return error;
        }
        BakeError::AfterRetags {
            source: Box::new(error),
            done,
        }
    }
}

impl std::fmt::Debug for EarlyRetags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "EarlyRetags({n} under way)")
    }
}

impl BakePlan {
    /// The same decisions, acting only on `keep` (in the same order): the other targets stay
    /// in `targets`, so the digests they have still reach the targets that build on them.
    fn restricted(&self, keep: &BTreeSet<String>) -> BakePlan {
        let mut graph = self.graph.clone();
        graph.order.retain(|n| keep.contains(n));
        graph
            .same_as
            .retain(|n, first| keep.contains(n) && keep.contains(first));
        graph.unavailable.clear();
        BakePlan {
            graph,
            targets: self.targets.clone(),
            early: self.early.clone(),
        }
    }

    pub fn ordered(&self) -> impl Iterator<Item = &TargetPlan> {
        self.graph.order.iter().filter_map(|n| self.targets.get(n))
    }

    /// The targets that must be built, in dependency layers: layer 0 needs nothing built
    /// first; a target in layer k needs something of layer k − 1 (through its bases or
    /// `depends_on`). Each layer can be built on separate runners at once, one job per
    /// target (`bake TARGET`), once the layers before it are pushed: what they built is then
    /// found in the registry ledger and not built again. Names sorted within a layer.
    pub fn build_layers(&self) -> Vec<Vec<String>> {
        let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
        // `order` is topological: dependencies come first.
        for tp in self.ordered().filter(|t| t.action == Action::Build) {
            let l = self
                .graph
                .dependencies(&tp.name)
                .into_iter()
                .filter_map(|d| layer.get(d).map(|l| l + 1))
                .max()
                .unwrap_or(0);
            layer.insert(&tp.name, l);
        }
        let mut out: Vec<Vec<String>> = Vec::new();
        for (name, l) in layer {
            if out.len() <= l {
                out.resize(l + 1, Vec::new());
            }
            out[l].push(name.to_string());
        }
        out
    }
}

pub use crate::options::host_platform;

/// The result of one target in a run.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub name: String,
    pub outcome: TargetOutcome,
    pub duration: Option<Duration>,
    pub bytes_sent: Option<u64>,
    pub digest: Option<String>,
    pub error: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Things the user must see whatever the progress mode (a result that will not be
    /// reused, and why).
    pub warnings: Vec<String>,
}

/// Rows for the end-of-run table and the CI job summary: each result with what the plan
/// decided for it and why.
pub fn summary_rows(results: &[TargetResult], plan: &BakePlan) -> Vec<SummaryRow> {
    results
        .iter()
        .map(|r| {
            let tp = plan.targets.get(&r.name);
            SummaryRow {
                target: r.name.clone(),
                outcome: r.outcome,
                duration: r.duration,
                bytes_sent: r.bytes_sent,
                digest: r.digest.clone(),
                action: tp.map(|t| t.action.as_str().to_string()),
                reason: tp.map(|t| t.reasons.join("; ")),
                error: r.error.clone(),
            }
        })
        .collect()
}

/// `--metadata-file` for a bake run: one object per target, like `docker buildx bake`.
pub fn metadata_json(results: &[TargetResult]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for r in results {
        if let Some(v) = &r.metadata {
            m.insert(r.name.clone(), v.clone());
        }
    }
    serde_json::Value::Object(m)
}
