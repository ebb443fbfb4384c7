//! Typed wrappers for the daemon-level Control calls (`info`, `workers`, `du`, `prune`),
//! returning plain data. Builds go through [`crate::build`].

use futures_util::StreamExt;

use crate::proto::control::{
    control_client::ControlClient, DiskUsageRequest, InfoRequest, ListWorkersRequest, PruneRequest,
    UsageRecord,
};
use crate::session::{MAX_DECODE, MAX_ENCODE};
use crate::transport::Daemon;

#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {message}")]
pub struct ClientError {
    pub call: &'static str,
    pub message: String,
}

/// A failed call: the daemon's own message, or what broke the connection and what to change.
fn err<'a>(d: &'a Daemon, call: &'static str) -> impl Fn(tonic::Status) -> ClientError + 'a {
    move |s| ClientError {
        call,
        message: crate::transport::explain_status(d, &s),
    }
}

fn control(d: &Daemon) -> ControlClient<tonic::transport::Channel> {
    ControlClient::new(d.channel.clone())
        .max_decoding_message_size(MAX_DECODE)
        .max_encoding_message_size(MAX_ENCODE)
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DaemonInfo {
    pub package: String,
    pub version: String,
    pub revision: String,
    pub dockerfile_version: String,
}

/// `Control.Info`; `None` when the daemon predates it (v0.11).
pub async fn info(d: &Daemon) -> Result<Option<DaemonInfo>, ClientError> {
    match control(d).info(InfoRequest {}).await {
        Ok(r) => Ok(r.into_inner().buildkit_version.map(|v| DaemonInfo {
            package: v.package,
            version: v.version,
            revision: v.revision,
            dockerfile_version: v.dockerfile_version,
        })),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(err(d, "Info")(s)),
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerInfo {
    pub id: String,
    /// `os/architecture[/variant]`, e.g. `linux/arm64/v8`; each once, in the daemon's order.
    pub platforms: Vec<String>,
    /// The same platforms with the fields the daemon sent.
    pub platform_specs: Vec<PlatformSpec>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The worker's garbage-collection rules, in order.
    pub gc_policy: Vec<GcPolicy>,
    /// `None` when the daemon does not say (before BuildKit v0.11).
    pub buildkit_version: Option<DaemonInfo>,
}

/// A platform as BuildKit describes it (the OCI image spec's fields).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: String,
    pub os_version: String,
    pub os_features: Vec<String>,
}

/// One garbage-collection rule of a worker (BuildKit's `GCPolicy`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcPolicy {
    /// Applies to every record, also internal and frontend ones.
    pub all: bool,
    pub filters: Vec<String>,
    /// Records unused for longer than this (nanoseconds) are removed; 0: no age limit.
    pub keep_duration_ns: i64,
    /// Bytes of cache always kept (`keepBytes` before BuildKit v0.17, the same field).
    pub reserved_space: i64,
    pub max_used_space: i64,
    pub min_free_space: i64,
}

impl WorkerInfo {
    /// Docker Engine with the containerd image store (more exporters, direct push).
    pub fn uses_containerd_store(&self) -> bool {
        self.labels
            .contains_key("org.mobyproject.buildkit.worker.snapshotter")
    }
}

pub async fn workers(d: &Daemon) -> Result<Vec<WorkerInfo>, ClientError> {
    let r = control(d)
        .list_workers(ListWorkersRequest { filter: vec![] })
        .await
        .map_err(err(d, "ListWorkers"))?;
    Ok(r.into_inner()
        .record
        .into_iter()
        .map(|w| {
            // Some daemons list a platform more than once (Docker Engine's worker repeats
            // the amd64 variants); buildx shows each once, in the daemon's order.
            let mut seen = std::collections::HashSet::new();
            let (platforms, platform_specs): (Vec<String>, Vec<PlatformSpec>) = w
                .platforms
                .iter()
                .map(|p| {
                    let mut s = format!("{}/{}", p.os, p.architecture);
                    if !p.variant.is_empty() {
                        s.push('/');
                        s.push_str(&p.variant);
                    }
                    let spec = PlatformSpec {
                        os: p.os.clone(),
                        architecture: p.architecture.clone(),
                        variant: p.variant.clone(),
                        os_version: p.os_version.clone(),
                        os_features: p.os_features.clone(),
                    };
                    (s, spec)
                })
                .filter(|(s, spec)| seen.insert((s.clone(), spec.os_version.clone())))
                .unzip();
            WorkerInfo {
                id: w.id,
                platforms,
                platform_specs,
                gc_policy: w
                    .gc_policy
                    .iter()
                    .map(|g| GcPolicy {
                        all: g.all,
                        filters: g.filters.clone(),
                        keep_duration_ns: g.keep_duration,
                        reserved_space: g.reserved_space,
                        max_used_space: g.max_used_space,
                        min_free_space: g.min_free_space,
                    })
                    .collect(),
                buildkit_version: w.buildkit_version.map(|v| DaemonInfo {
                    package: v.package,
                    version: v.version,
                    revision: v.revision,
                    dockerfile_version: v.dockerfile_version,
                }),
                labels: w.labels.into_iter().collect(),
            }
        })
        .collect())
}

#[derive(Debug, Clone, Default)]
pub struct UsageEntry {
    pub id: String,
    pub size: i64,
    pub in_use: bool,
    pub shared: bool,
    pub mutable: bool,
    pub record_type: String,
    pub description: String,
    pub usage_count: i64,
    /// Records this one is built on (older daemons report at most one, as `Parent`).
    pub parents: Vec<String>,
    pub created_at: Option<prost_types::Timestamp>,
    /// `None` when never used since it was made.
    pub last_used_at: Option<prost_types::Timestamp>,
}

fn usage(r: UsageRecord) -> UsageEntry {
    let parents = if r.parents.is_empty() && !r.parent.is_empty() {
        vec![r.parent.clone()]
    } else {
        r.parents.clone()
    };
    UsageEntry {
        parents,
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        id: r.id,
        size: r.size,
        in_use: r.in_use,
        shared: r.shared,
        mutable: r.mutable,
        record_type: r.record_type,
        description: r.description,
        usage_count: r.usage_count,
    }
}

pub async fn disk_usage(d: &Daemon, filters: Vec<String>) -> Result<Vec<UsageEntry>, ClientError> {
    let r = control(d)
        .disk_usage(DiskUsageRequest {
            filter: filters,
            age_limit: 0,
        })
        .await
        .map_err(err(d, "DiskUsage"))?;
    Ok(r.into_inner().record.into_iter().map(usage).collect())
}

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    pub all: bool,
    pub filters: Vec<String>,
    pub keep_duration_ns: i64,
    pub keep_bytes: i64,
}

/// Prunes the build cache; returns what was removed.
pub async fn prune(d: &Daemon, o: &PruneOptions) -> Result<Vec<UsageEntry>, ClientError> {
    let r = control(d)
        .prune(PruneRequest {
            filter: o.filters.clone(),
            all: o.all,
            keep_duration: o.keep_duration_ns,
            reserved_space: o.keep_bytes,
            max_used_space: 0,
            min_free_space: 0,
        })
        .await
        .map_err(err(d, "Prune"))?;
    let mut s = r.into_inner();
    let mut out = Vec::new();
    while let Some(rec) = s.next().await {
        out.push(usage(rec.map_err(err(d, "Prune"))?));
    }
    Ok(out)
}
