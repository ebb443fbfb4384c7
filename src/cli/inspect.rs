//! `info`, `workers` and `du` as text for people or JSON for scripts (`--format json`).
//!
//! The JSON uses BuildKit's own names and units: the JSON its Go client encodes
//! (`client.Info`, `client.WorkerInfo`, `client.UsageInfo`), which is what
//! `buildctl debug info`, `buildctl debug workers` and `buildctl du` print with
//! `--format '{{json .}}'`: sizes in bytes, durations in nanoseconds, times in RFC 3339 (UTC),
//! a missing time as `null`. `info` adds bk-build's own `address` (in `--addr` form, e.g.
//! `docker://unix:///var/run/docker.sock`) and, for a Docker Engine, `dockerApiVersion`. Field names are part of bk-build's interface and only ever added to.

use anyhow::Result;
use serde::Serialize;

use crate::client::{DaemonInfo, GcPolicy, UsageEntry, WorkerInfo};
use crate::transport::{Address, Daemon, DaemonKind};

/// `--format` of `info`, `workers` and `du`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// JSON with BuildKit's field names.
    Json,
}

/// `client.BuildkitVersion`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionJson<'a> {
    package: &'a str,
    version: &'a str,
    revision: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    dockerfile_version: &'a str,
}

impl<'a> From<&'a DaemonInfo> for VersionJson<'a> {
    fn from(i: &'a DaemonInfo) -> Self {
        VersionJson {
            package: &i.package,
            version: &i.version,
            revision: &i.revision,
            dockerfile_version: &i.dockerfile_version,
        }
    }
}

/// `client.Info`, plus where the daemon is.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InfoJson<'a> {
    /// The daemon's address as `--addr` takes it.
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_api_version: Option<&'a str>,
    /// `null` for a daemon older than BuildKit v0.11, which does not answer `Info`.
    buildkit_version: Option<VersionJson<'a>>,
}

/// The text of `bk-build info`.
pub fn info_text(d: &Daemon, info: Option<&DaemonInfo>) -> String {
    let mut out = format!("Address:  {}\n", d.address);
    if let DaemonKind::DockerEngine { api_version } = &d.kind {
        out.push_str(&format!("Engine:   Docker Engine (API {api_version})\n"));
    }
    match info {
        Some(i) => {
            let line = format!("BuildKit: {} {} {}", i.package, i.version, i.revision);
            out.push_str(line.trim_end());
            out.push('\n');
            if !i.dockerfile_version.is_empty() {
                out.push_str(&format!("Dockerfile frontend: {}\n", i.dockerfile_version));
            }
        }
        None => out.push_str("BuildKit: (version not reported: daemon older than v0.11)\n"),
    }
    out
}

pub fn info_json(d: &Daemon, info: Option<&DaemonInfo>) -> Result<String> {
    let v = InfoJson {
        address: match &d.address {
            Address::Docker(h) => format!("docker://{h}"),
            other => other.to_string(),
        },
        docker_api_version: match &d.kind {
            DaemonKind::DockerEngine { api_version } => Some(api_version),
            DaemonKind::Buildkitd => None,
        },
        buildkit_version: info.map(VersionJson::from),
    };
    Ok(serde_json::to_string_pretty(&v)?)
}

/// An OCI image-spec platform, as BuildKit's client encodes it.
#[derive(Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(rename = "os.version", skip_serializing_if = "str::is_empty")]
    os_version: &'a str,
    #[serde(rename = "os.features", skip_serializing_if = "<[String]>::is_empty")]
    os_features: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    variant: &'a str,
}

/// `client.PruneInfo` (a worker's GC policy).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GcPolicyJson<'a> {
    all: bool,
    filter: Option<&'a [String]>,
    keep_duration: i64,
    reserved_space: i64,
    max_used_space: i64,
    min_free_space: i64,
}

impl<'a> From<&'a GcPolicy> for GcPolicyJson<'a> {
    fn from(g: &'a GcPolicy) -> Self {
        GcPolicyJson {
            all: g.all,
            filter: (!g.filters.is_empty()).then_some(g.filters.as_slice()),
            keep_duration: g.keep_duration_ns,
            reserved_space: g.reserved_space,
            max_used_space: g.max_used_space,
            min_free_space: g.min_free_space,
        }
    }
}

/// `client.WorkerInfo`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkerJson<'a> {
    id: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
    platforms: Vec<PlatformJson<'a>>,
    gc_policy: Vec<GcPolicyJson<'a>>,
    buildkit_version: Option<VersionJson<'a>>,
}

/// The text of `bk-build workers`.
pub fn workers_text(workers: &[WorkerInfo]) -> String {
    let mut out = String::new();
    for w in workers {
        out.push_str(&format!("ID:        {}\n", w.id));
        out.push_str(&format!("Platforms: {}\n", w.platforms.join(",")));
        for (k, v) in &w.labels {
            out.push_str(&format!("  {k}={v}\n"));
        }
    }
    out
}

/// A JSON array of workers.
pub fn workers_json(workers: &[WorkerInfo]) -> Result<String> {
    let v: Vec<WorkerJson<'_>> = workers
        .iter()
        .map(|w| WorkerJson {
            id: &w.id,
            labels: &w.labels,
            platforms: w
                .platform_specs
                .iter()
                .map(|p| PlatformJson {
                    architecture: &p.architecture,
                    os: &p.os,
                    os_version: &p.os_version,
                    os_features: &p.os_features,
                    variant: &p.variant,
                })
                .collect(),
            gc_policy: w.gc_policy.iter().map(GcPolicyJson::from).collect(),
            buildkit_version: w.buildkit_version.as_ref().map(VersionJson::from),
        })
        .collect();
    Ok(serde_json::to_string_pretty(&v)?)
}

/// `client.UsageInfo` (one build cache record).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageJson<'a> {
    id: &'a str,
    mutable: bool,
    in_use: bool,
    /// Bytes.
    size: i64,
    created_at: String,
    last_used_at: Option<String>,
    usage_count: i64,
    parents: Option<&'a [String]>,
    description: &'a str,
    record_type: &'a str,
    shared: bool,
}

/// Go's zero `time.Time`, which BuildKit's client shows for a record without a creation time.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A JSON array of cache records, smallest first (ties by ID), as BuildKit's client sorts them.
pub fn du_json(records: &[UsageEntry]) -> Result<String> {
    let mut sorted: Vec<&UsageEntry> = records.iter().collect();
    sorted.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.id.cmp(&b.id)));
    let v: Vec<UsageJson<'_>> = sorted
        .into_iter()
        .map(|r| UsageJson {
            id: &r.id,
            mutable: r.mutable,
            in_use: r.in_use,
            size: r.size,
            created_at: r
                .created_at
                .as_ref()
                .map_or_else(|| GO_ZERO_TIME.to_string(), ToString::to_string),
            last_used_at: r.last_used_at.as_ref().map(ToString::to_string),
            usage_count: r.usage_count,
            parents: (!r.parents.is_empty()).then_some(r.parents.as_slice()),
            description: &r.description,
            record_type: &r.record_type,
            shared: r.shared,
        })
        .collect();
    Ok(serde_json::to_string_pretty(&v)?)
}

/// The text of `bk-build du`: every record with `-v`, then the totals.
pub fn du_text(records: &[UsageEntry], verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        for r in records {
            out.push_str(&format!(
                "{:<28} {:>10} {:<6} {}\n",
                r.id,
                crate::progress::format_bytes(r.size),
                if r.in_use { "in use" } else { "" },
                r.description
            ));
        }
    }
    let total: i64 = records.iter().map(|r| r.size).sum();
    out.push_str(&format!(
        "Records: {}  Total: {}\n",
        records.len(),
        crate::progress::format_bytes(total)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_json_uses_buildkit_names_units_and_order() {
        let recs = vec![
            UsageEntry {
                id: "b".into(),
                size: 4096,
                in_use: true,
                record_type: "regular".into(),
                description: "mount / from exec".into(),
                usage_count: 3,
                parents: vec!["p".into()],
                created_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            },
            UsageEntry {
                id: "a".into(),
                size: 10,
                mutable: true,
                shared: true,
                record_type: "source.local".into(),
                ..Default::default()
            },
        ];
        let v: serde_json::Value = serde_json::from_str(&du_json(&recs).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"id": "a", "mutable": true, "inUse": false, "size": 10,
                 "createdAt": GO_ZERO_TIME, "lastUsedAt": null, "usageCount": 0,
                 "parents": null, "description": "", "recordType": "source.local",
                 "shared": true},
                {"id": "b", "mutable": false, "inUse": true, "size": 4096,
                 "createdAt": "2023-11-14T22:13:20Z", "lastUsedAt": null, "usageCount": 3,
                 "parents": ["p"], "description": "mount / from exec",
                 "recordType": "regular", "shared": false},
            ])
        );
    }

    #[test]
    fn workers_json_spells_platforms_and_gc_policy_as_buildkit() {
        let w = WorkerInfo {
            id: "w1".into(),
            platforms: vec!["linux/arm64/v8".into()],
            platform_specs: vec![crate::client::PlatformSpec {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: "v8".into(),
                ..Default::default()
            }],
            labels: [("k".to_string(), "v".to_string())].into(),
            gc_policy: vec![GcPolicy {
                filters: vec!["type==source.local".into()],
                keep_duration_ns: 172_800_000_000_000,
                reserved_space: 1000,
                ..Default::default()
            }],
            buildkit_version: None,
        };
        let v: serde_json::Value = serde_json::from_str(&workers_json(&[w]).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "id": "w1",
                "labels": {"k": "v"},
                "platforms": [{"architecture": "arm64", "os": "linux", "variant": "v8"}],
                "gcPolicy": [{"all": false, "filter": ["type==source.local"],
                              "keepDuration": 172_800_000_000_000i64, "reservedSpace": 1000,
                              "maxUsedSpace": 0, "minFreeSpace": 0}],
                "buildkitVersion": null,
            }])
        );
    }
}
