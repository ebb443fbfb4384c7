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
    pub platforms: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
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
        .map(|w| WorkerInfo {
            id: w.id,
            platforms: w
                .platforms
                .iter()
                .map(|p| {
                    let mut s = format!("{}/{}", p.os, p.architecture);
                    if !p.variant.is_empty() {
                        s.push('/');
                        s.push_str(&p.variant);
                    }
                    s
                })
                .collect(),
            labels: w.labels.into_iter().collect(),
        })
        .collect())
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UsageEntry {
    pub id: String,
    pub size: i64,
    pub in_use: bool,
    pub shared: bool,
    pub mutable: bool,
    pub record_type: String,
    pub description: String,
    pub usage_count: i64,
}

fn usage(r: UsageRecord) -> UsageEntry {
    UsageEntry {
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
