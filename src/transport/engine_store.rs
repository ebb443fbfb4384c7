//! Which image a tag names in a local Docker Engine, read from the engine's containerd image
//! store directly when that is possible and safe.
//!
//! Why: the Engine API's cheapest answer, `GET /images/{ref}/history`, costs about 20 ms of
//! dockerd + containerd CPU per tag on the containerd image store (it reads the manifest,
//! the config and every layer's usage). A no-op run of a monorepo whose targets `load`
//! checks every tag, so those checks were most of its time. containerd's own
//! `Images.Get` is a metadata read of well under a millisecond.
//!
//! When: the engine is on a unix socket, `GET /info` says it uses the containerd image store
//! (`DriverStatus` `driver-type` = `io.containerd.snapshotter.v1`) and names containerd's
//! socket and namespace (`Containerd`, API ≥ 1.46), and that socket accepts us (usually only
//! root or the rootless engine's user). `/info` is expensive too (~60 ms of CPU), so its
//! answer is cached per user (`$XDG_CACHE_HOME/bk-build/engines.json`) for as long as the
//! engine's socket is the same file (device, inode, ctime): dockerd makes a new socket each
//! time it starts, and the image store cannot change without a restart.
//!
//! Trust, but verify: the store's answer for a tag is compared with the Engine API's
//! (`history`) before the store is used; when the comparison proves nothing (the tag is in
//! neither) the Engine API answers every question of that process, and when they differ the
//! cached facts are dropped as well. The same happens whenever the store says a tag is absent
//! and the Engine API, asked to confirm it, does not. Anything unexpected falls back to the
//! Engine API, never to an answer.
//!
//! The comparison costs as much as the checks it saves (~35 ms of dockerd + containerd CPU
//! for an index with provenance), so a passed one is kept with the facts for as long as the
//! same dockerd *process* serves the socket and the same containerd socket is there: which
//! store an engine uses is fixed for the life of its process. The process is the one that
//! listens on the socket (`SO_PEERCRED`), named `dockerd` in `/proc/<pid>/stat`, identified by
//! pid and start time. When the listener is something else — systemd's socket activation
//! (`docker.socket`) keeps one socket across dockerd restarts — or is not visible (another pid
//! namespace), nothing is kept and every process compares again.
//!
//! This module knows the Docker Engine and containerd; it must not know what the answers are
//! used for.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::docker::{self, DockerHost};
use crate::proto::containerd::services::images::v1 as images;

/// `DriverStatus` entry of an engine on the containerd image store.
const CONTAINERD_SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";

/// What `/info` told us about an engine, valid while its socket is the same file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct EngineFacts {
    socket: PathBuf,
    /// (device, inode, ctime seconds, ctime nanoseconds) of the socket.
    identity: (u64, u64, i64, i64),
    /// containerd's socket, when the engine keeps its images there.
    containerd: Option<PathBuf>,
    namespace: String,
    /// Set when a comparison with the Engine API passed (see the module doc).
    #[serde(default)]
    verified: Option<Verified>,
}

/// Under what a passed comparison holds: the same dockerd process listening on the engine's
/// socket and the same containerd socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Verified {
    /// (pid, start time in clock ticks since boot) of the dockerd listening on the socket.
    listener: (u32, u64),
    /// (device, inode, ctime seconds, ctime nanoseconds) of containerd's socket.
    containerd: (u64, u64, i64, i64),
}

/// The image-store reader of this process, once decided.
enum Store {
    /// Ask containerd (verified against the Engine API).
    Containerd { channel: Channel, namespace: String },
    /// Ask the Engine API.
    EngineApi,
}

type Decided = (DockerHost, std::sync::Arc<Store>);
static DECIDED: tokio::sync::Mutex<Option<Decided>> = tokio::sync::Mutex::const_new(None);
static CACHE_LOCK: Mutex<()> = Mutex::new(());

/// The image ID `reference` names in the engine at `host` (`None`: no such image). Same
/// contract as [`docker::image_id`], which answers when the fast path is not available.
pub async fn image_id(host: &DockerHost, reference: &str) -> Result<Option<String>, String> {
    let Some(name) = containerd_name(reference) else {
        return docker::image_id(host, reference).await;
    };
    let store = {
        let mut decided = DECIDED.lock().await;
        match decided.as_ref() {
            Some((h, s)) if h == host => s.clone(),
            _ => {
                // The first question decides for the whole process (others wait on the lock).
                let (store, answer) = decide(host, reference, &name).await;
                let store = std::sync::Arc::new(store);
                *decided = Some((host.clone(), store.clone()));
                if let Some(a) = answer {
                    return a;
                }
                store
            }
        }
    };
    match &*store {
        Store::Containerd { channel, namespace } => {
            match get(channel.clone(), namespace, &name).await {
                Ok(Some(id)) => Ok(Some(id)),
                // Absence (or a failure) is confirmed by the Engine API: a store that lacks
                // an image the engine has is not the engine's, whatever the cache said.
                mine => {
                    let engine = docker::image_id(host, reference).await;
                    if !matches!((&mine, &engine), (Ok(None), Ok(None))) {
                        demote(host).await;
                    }
                    engine
                }
            }
        }
        Store::EngineApi => docker::image_id(host, reference).await,
    }
}

/// Sends the rest of this process's questions about `host` to the Engine API and drops the
/// cached facts about it, after the store and the engine disagreed.
async fn demote(host: &DockerHost) {
    *DECIDED.lock().await = Some((host.clone(), std::sync::Arc::new(Store::EngineApi)));
    if let Some(socket) = host.unix_socket() {
        forget(socket);
    }
}

/// Chooses the reader for `host`, asking `reference` both ways to verify; returns the Engine
/// API's answer for it when that was asked.
async fn decide(
    host: &DockerHost,
    reference: &str,
    name: &str,
) -> (Store, Option<Result<Option<String>, String>>) {
    let Some(socket) = host.unix_socket() else {
        return (Store::EngineApi, None);
    };
    let Some(facts) = facts(host, socket).await else {
        return (Store::EngineApi, None);
    };
    let Some(address) = facts.containerd.clone() else {
        return (Store::EngineApi, None);
    };
    // Taken before comparing: a restart in between then leaves a record no process matches.
    let under = match (listener(socket).await, identity(&address)) {
        (Some(listener), Some(containerd)) => Some(Verified {
            listener,
            containerd,
        }),
        _ => None,
    };
    let Ok(channel) = connect(address).await else {
        return (Store::EngineApi, None);
    };
    let store = Store::Containerd {
        channel: channel.clone(),
        namespace: facts.namespace.clone(),
    };
    if under.is_some() && facts.verified == under {
        return (store, None);
    }
    let (mine, engine) = tokio::join!(
        get(channel, &facts.namespace, name),
        docker::image_id(host, reference)
    );
    match (&mine, &engine) {
        (Ok(Some(a)), Ok(Some(b))) if a == b => {
            if let Some(v) = under {
                remember(EngineFacts {
                    verified: Some(v),
                    ..facts
                });
            }
            (store, Some(engine))
        }
        (Ok(None), Ok(None)) => (Store::EngineApi, Some(engine)),
        _ => {
            // Either side failed or they disagree: the cached facts may be stale.
            forget(socket);
            (Store::EngineApi, Some(engine))
        }
    }
}

/// (pid, start time) of the dockerd process listening on `socket`, or `None` when the
/// listener is not visible or not a dockerd (see the module doc).
async fn listener(socket: &Path) -> Option<(u32, u64)> {
    let stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let pid = u32::try_from(stream.peer_cred().ok()?.pid()?).ok()?;
    drop(stream);
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    dockerd_start_time(&stat).map(|start| (pid, start))
}

/// The start time (field 22 of `proc_pid_stat(5)`) in `stat` when its command is `dockerd`.
fn dockerd_start_time(stat: &str) -> Option<u64> {
    // The command is in parentheses and may itself contain ") ", so split at the last one.
    let (head, rest) = stat.rsplit_once(") ")?;
    let (_, comm) = head.split_once(" (")?;
    if comm != "dockerd" {
        return None;
    }
    // `rest` starts at field 3 (state).
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// The name the containerd image store files `reference` under (fully qualified, with a
/// tag), or `None` for references it is not asked about (digests, unparseable names).
fn containerd_name(reference: &str) -> Option<String> {
    // Image IDs (`sha256:…`) and what the engine may take for an ID prefix are not names.
    let hex = |s: &str| s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if reference.starts_with("sha256:") || hex(reference) {
        return None;
    }
    let r = crate::registry::Reference::parse(reference).ok()?;
    if r.digest.is_some() {
        return None;
    }
    let tag = r.tag.as_deref().unwrap_or("latest");
    Some(format!("{}/{}:{tag}", r.registry, r.repository))
}

async fn get(channel: Channel, namespace: &str, name: &str) -> Result<Option<String>, String> {
    let mut client = images::images_client::ImagesClient::new(channel);
    let mut req = tonic::Request::new(images::GetImageRequest {
        name: name.to_string(),
    });
    let ns = namespace
        .parse()
        .map_err(|_| format!("bad containerd namespace {namespace:?}"))?;
    req.metadata_mut().insert("containerd-namespace", ns);
    req.set_timeout(std::time::Duration::from_secs(5));
    match client.get(req).await {
        Ok(resp) => {
            let digest = resp
                .into_inner()
                .image
                .and_then(|i| i.target)
                .map(|t| t.digest)
                .filter(|d| d.starts_with("sha256:"));
            digest
                .map(Some)
                .ok_or_else(|| format!("containerd has image {name} without a target digest"))
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.message().to_string()),
    }
}

async fn connect(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://containerd.local")
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
}

fn identity(socket: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(socket).ok()?;
    Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

fn cache_file() -> Option<PathBuf> {
    // A relative XDG_CACHE_HOME is ignored (XDG Base Directory specification).
    let base = match std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|v| v.is_absolute())
    {
        Some(d) => d,
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("bk-build").join("engines.json"))
}

fn read_cache(file: &Path) -> Vec<EngineFacts> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Replaces the cache with `entries`; a cache that cannot be written is simply not kept.
fn write_cache(file: &Path, entries: &[EngineFacts]) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(bytes) = serde_json::to_vec_pretty(entries) else {
        return;
    };
    let tmp = dir.join(format!(".engines.json.{}.tmp", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, file).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

fn forget(socket: &Path) {
    let Some(file) = cache_file() else { return };
    let _guard = CACHE_LOCK.lock();
    let mut entries = read_cache(&file);
    let before = entries.len();
    entries.retain(|e| e.socket != socket);
    if entries.len() != before {
        write_cache(&file, &entries);
    }
}

/// The engine's facts: from the cache while its socket is the same file, else from `/info`.
async fn facts(host: &DockerHost, socket: &Path) -> Option<EngineFacts> {
    let id = identity(socket)?;
    let file = cache_file();
    if let Some(file) = &file {
        let cached = read_cache(file)
            .into_iter()
            .find(|e| e.socket == socket && e.identity == id);
        if cached.is_some() {
            return cached;
        }
    }
    let (containerd, namespace) = docker::containerd_store(host).await.ok()?;
    // The socket must still be the one asked, or the answer may be another engine's.
    if identity(socket)? != id {
        return None;
    }
    let facts = EngineFacts {
        socket: socket.to_path_buf(),
        identity: id,
        containerd,
        namespace,
        verified: None,
    };
    remember(facts.clone());
    Some(facts)
}

/// Files `facts` in the cache in place of what it had for the same socket.
fn remember(facts: EngineFacts) {
    let Some(file) = cache_file() else { return };
    let _guard = CACHE_LOCK.lock();
    let mut entries = read_cache(&file);
    entries.retain(|e| e.socket != facts.socket);
    entries.push(facts);
    write_cache(&file, &entries);
}

/// `/info`'s answer, for [`docker::containerd_store`]: the containerd socket of an engine on
/// the containerd image store (`None` on another store) and the namespace of its images.
pub(super) fn containerd_from_info(info: &serde_json::Value) -> (Option<PathBuf>, String) {
    let on_containerd_store = info["DriverStatus"].as_array().is_some_and(|rows| {
        rows.iter().any(|row| {
            row.get(0).and_then(|v| v.as_str()) == Some("driver-type")
                && row.get(1).and_then(|v| v.as_str()) == Some(CONTAINERD_SNAPSHOTTER)
        })
    });
    let address = info["Containerd"]["Address"]
        .as_str()
        .filter(|a| a.starts_with('/'))
        .map(PathBuf::from);
    let namespace = info["Containerd"]["Namespaces"]["Containers"]
        .as_str()
        .unwrap_or("moby")
        .to_string();
    (address.filter(|_| on_containerd_store), namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_filed_fully_qualified() {
        assert_eq!(
            containerd_name("busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            containerd_name("localhost:5000/a/b:dev").as_deref(),
            Some("localhost:5000/a/b:dev")
        );
        assert_eq!(
            containerd_name("acme/app:1").as_deref(),
            Some("docker.io/acme/app:1")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(containerd_name(&d), None);
        assert_eq!(containerd_name("0123456789abcdef"), None);
        assert_eq!(containerd_name(&format!("app@{d}")), None);
    }

    #[test]
    fn only_a_dockerd_listener_identifies_the_engine_process() {
        let fields = |comm: &str| {
            format!("812 ({comm}) S 1 812 812 0 -1 4194560 9 0 0 0 5 3 0 0 20 0 18 0 4242 1 2")
        };
        assert_eq!(dockerd_start_time(&fields("dockerd")), Some(4242));
        // systemd's socket activation: the listener outlives dockerd restarts.
        assert_eq!(dockerd_start_time(&fields("systemd")), None);
        assert_eq!(dockerd_start_time(&fields("not) dockerd")), None);
        assert_eq!(dockerd_start_time("812 (dockerd) S 1"), None);
        assert_eq!(dockerd_start_time(""), None);
    }

    #[test]
    fn only_the_containerd_image_store_is_read_directly() {
        let info = serde_json::json!({
            "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]],
            "Containerd": {"Address": "/run/c.sock", "Namespaces": {"Containers": "moby"}}
        });
        assert_eq!(
            containerd_from_info(&info),
            (Some(PathBuf::from("/run/c.sock")), "moby".to_string())
        );
        // The overlay2 graph driver keeps images outside containerd, which may still hold
        // old ones from when the containerd store was on.
        let graph = serde_json::json!({
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"]],
            "Containerd": {"Address": "/run/c.sock", "Namespaces": {"Containers": "moby"}}
        });
        assert_eq!(containerd_from_info(&graph).0, None);
        let old =
            serde_json::json!({"DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]});
        assert_eq!(containerd_from_info(&old).0, None);
    }
}
