//! containerd's content service (`/containerd.services.content.v1.Content/*`) served on the
//! session, backed by OCI layout directories on the client. BuildKit reaches client-side
//! layouts only this way: the local cache exporter writes its blobs here, the local cache
//! importer and `oci-layout://` named contexts read theirs (BuildKit `session/content`,
//! `cache/remotecache/local`, `source/containerimage/ocilayout.go`).
//!
//! Every call names its layout in the gRPC metadata `buildkit-attachable-store-id`: `local:`
//! followed by the cache attribute `src`/`dest` for local caches, `oci:` followed by the store
//! name in an `oci-layout://` context reference. Layouts registered read-only refuse writes.
//!
//! Owns the protocol: store selection, streaming reads, the write conversation (offsets,
//! restarts, locking one ref at a time, digest and size checked on commit) and remembering
//! which blobs the daemon stored or offered per layout, so the build layer can find the cache
//! manifest of an export. The directory format itself is [`super::oci_layout`]'s. Knows
//! nothing about caches, images or the build.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::oci_layout::{Committed, LayoutError, OciLayout};
use crate::digest::{Digest, Hasher};
use crate::proto::containerd::services::content::v1 as api;
use api::content_server::Content;

/// The metadata key naming the layout a call is for (BuildKit `sessioncontent.GRPCHeaderID`).
pub const STORE_ID_HEADER: &str = "buildkit-attachable-store-id";

/// The methods this service answers, for the session's method list.
pub const METHODS: [&str; 9] = [
    "/containerd.services.content.v1.Content/Info",
    "/containerd.services.content.v1.Content/Update",
    "/containerd.services.content.v1.Content/List",
    "/containerd.services.content.v1.Content/Delete",
    "/containerd.services.content.v1.Content/Read",
    "/containerd.services.content.v1.Content/Status",
    "/containerd.services.content.v1.Content/ListStatuses",
    "/containerd.services.content.v1.Content/Write",
    "/containerd.services.content.v1.Content/Abort",
];

/// Bytes per Read response message: large enough that the daemon's usual read (32 KiB to a
/// few MiB) takes few messages, small enough to share the tunnel with health checks.
const READ_CHUNK: usize = 256 << 10;
/// Blobs per List response message.
const LIST_BATCH: usize = 128;

/// The value BuildKit's local cache exporter/importer gets as `dest`/`src` for `dir`, which it
/// turns into the store ID `local:<value>`. The absolute path, except that bytes a gRPC header
/// value cannot carry (and `%`) are percent-encoded: the daemon refuses to send such headers,
/// and the value is only a key, never opened by the daemon.
pub fn local_cache_key(dir: &Path) -> String {
    let mut out = String::new();
    for &b in dir.as_os_str().as_encoded_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The store ID of a local cache whose `src`/`dest` attribute is `key`.
pub fn local_store_id(key: &str) -> String {
    format!("local:{key}")
}

/// The store ID of an `oci-layout://NAME…` context reference.
pub fn oci_store_id(name: &str) -> String {
    format!("oci:{name}")
}

/// One layout to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub dir: PathBuf,
    /// Whether the daemon may add (and delete) blobs. Only cache exports need it.
    pub writable: bool,
}

/// The layouts a session serves, by store ID. Cheap to clone: the build layer keeps a clone
/// to ask, after the build, what the daemon stored in each.
#[derive(Clone, Default)]
pub struct ContentStores {
    stores: Arc<BTreeMap<String, Arc<Store>>>,
}

impl std::fmt::Debug for ContentStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.stores.iter().map(|(k, s)| (k, &s.layout)))
            .finish()
    }
}

struct Store {
    layout: OciLayout,
    writable: bool,
    /// Writes in progress, by ref; a ref is written by one stream at a time.
    writes: Mutex<HashMap<String, Arc<WriteState>>>,
    /// Blobs the daemon committed, or announced and found already stored, in that order.
    received: Mutex<Vec<Digest>>,
}

struct WriteState {
    status: Mutex<api::Status>,
    aborted: AtomicBool,
}

impl ContentStores {
    pub fn new(specs: BTreeMap<String, StoreSpec>) -> ContentStores {
        let stores = specs
            .into_iter()
            .map(|(id, s)| {
                let store = Store {
                    layout: OciLayout::new(s.dir),
                    writable: s.writable,
                    writes: Mutex::new(HashMap::new()),
                    received: Mutex::new(Vec::new()),
                };
                (id, Arc::new(store))
            })
            .collect();
        ContentStores {
            stores: Arc::new(stores),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// The layout behind a store ID.
    pub fn layout(&self, id: &str) -> Option<&OciLayout> {
        self.stores.get(id).map(|s| &s.layout)
    }

    /// The blobs the daemon stored in (or offered to) store `id` so far, oldest first, each
    /// once.
    pub fn received(&self, id: &str) -> Vec<Digest> {
        let Some(store) = self.stores.get(id) else {
            return Vec::new();
        };
        let all = store.received.lock().map(|v| v.clone()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        all.into_iter().filter(|d| seen.insert(d.clone())).collect()
    }

    /// The gRPC service over these stores.
    pub fn service(&self) -> api::content_server::ContentServer<ContentService> {
        api::content_server::ContentServer::new(ContentService {
            stores: self.clone(),
        })
        .max_decoding_message_size(super::MAX_DECODE)
        .max_encoding_message_size(super::MAX_ENCODE)
    }

    fn select(&self, md: &MetadataMap) -> Result<Arc<Store>, Status> {
        let id = md.get(STORE_ID_HEADER).ok_or_else(|| {
            Status::invalid_argument(format!("request lacks metadata {STORE_ID_HEADER:?}"))
        })?;
        let id = id
            .to_str()
            .map_err(|_| Status::invalid_argument(format!("{STORE_ID_HEADER} is not text")))?;
        self.stores
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("unknown store {id}")))
    }
}

impl Store {
    fn writable(&self) -> Result<(), Status> {
        if self.writable {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} is only read in this build (a cache import or an oci-layout context)",
                self.layout.root().display()
            )))
        }
    }

    /// The writes in progress, locked.
    fn lock_writes(&self) -> Result<MutexGuard<'_, HashMap<String, Arc<WriteState>>>, Status> {
        self.writes
            .lock()
            .map_err(|_| Status::internal("content store state poisoned"))
    }

    /// Runs `f` on the write in progress for ref `r` (with the writes locked, so the write
    /// cannot end meanwhile); NOT_FOUND when there is none.
    fn with_write<T>(&self, r: &str, f: impl FnOnce(&WriteState) -> T) -> Result<T, Status> {
        let writes = self.lock_writes()?;
        let w = writes
            .get(r)
            .ok_or_else(|| Status::not_found(format!("no write in progress for ref {r:?}")))?;
        Ok(f(w))
    }

    fn note_received(&self, d: &Digest) {
        if let Ok(mut v) = self.received.lock() {
            v.push(d.clone());
        }
    }
}

/// Serves [`ContentStores`]; see the module docs.
pub struct ContentService {
    stores: ContentStores,
}

fn parse_digest(s: &str) -> Result<Digest, Status> {
    Digest::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn layout_status(e: LayoutError) -> Status {
    use std::io::ErrorKind;
    let msg = e.to_string();
    match e.io_kind() {
        Some(ErrorKind::NotFound) => Status::not_found(msg),
        Some(ErrorKind::PermissionDenied) => Status::permission_denied(msg),
        Some(ErrorKind::StorageFull | ErrorKind::QuotaExceeded) => Status::resource_exhausted(msg),
        _ => Status::internal(msg),
    }
}

fn not_found(d: &Digest, layout: &OciLayout) -> Status {
    Status::not_found(format!(
        "content {d}: not found in {}",
        layout.root().display()
    ))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("content store task failed: {e}")))?
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn info_of(d: &Digest, meta: &std::fs::Metadata) -> api::Info {
    let mtime = meta.modified().ok().map(timestamp);
    api::Info {
        digest: d.to_string(),
        size: meta.len() as i64,
        created_at: mtime,
        updated_at: mtime,
        labels: Default::default(),
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(
        &self,
        request: Request<api::InfoRequest>,
    ) -> Result<Response<api::InfoResponse>, Status> {
        let store = self.stores.select(request.metadata())?;
        let d = parse_digest(&request.get_ref().digest)?;
        let info = blocking(move || {
            let meta = store.layout.blob_metadata(&d).map_err(layout_status)?;
            let meta = meta.ok_or_else(|| not_found(&d, &store.layout))?;
            Ok(info_of(&d, &meta))
        })
        .await?;
        Ok(Response::new(api::InfoResponse { info: Some(info) }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateRequest>,
    ) -> Result<Response<api::UpdateResponse>, Status> {
        let store = self.stores.select(request.metadata())?;
        store.writable()?;
        let info = request.into_inner().info.unwrap_or_default();
        let d = parse_digest(&info.digest)?;
        blocking(move || {
            let found = store.layout.blob_metadata(&d).map_err(layout_status)?;
            if found.is_none() {
                return Err(not_found(&d, &store.layout));
            }
            // containerd's local store answers the same without a label database.
            Err(Status::failed_precondition(format!(
                "content {d}: an OCI layout directory keeps no labels"
            )))
        })
        .await
    }

    type ListStream = ReceiverStream<Result<api::ListContentResponse, Status>>;

    async fn list(
        &self,
        request: Request<api::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let store = self.stores.select(request.metadata())?;
        if !request.get_ref().filters.is_empty() {
            return Err(Status::invalid_argument(
                "content filters are not supported by this store",
            ));
        }
        let blobs = blocking(move || store.layout.blobs().map_err(layout_status)).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for batch in blobs.chunks(LIST_BATCH) {
                let info = batch.iter().map(|(d, m)| info_of(d, m)).collect();
                if tx
                    .send(Ok(api::ListContentResponse { info }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delete(
        &self,
        request: Request<api::DeleteContentRequest>,
    ) -> Result<Response<()>, Status> {
        let store = self.stores.select(request.metadata())?;
        store.writable()?;
        let d = parse_digest(&request.get_ref().digest)?;
        blocking(move || {
            let path = store.layout.blob_path(&d);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(not_found(&d, &store.layout))
                }
                Err(e) => Err(layout_status(LayoutError::Io { path, source: e })),
            }
        })
        .await?;
        Ok(Response::new(()))
    }

    type ReadStream = ReceiverStream<Result<api::ReadContentResponse, Status>>;

    async fn read(
        &self,
        request: Request<api::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let store = self.stores.select(request.metadata())?;
        let req = request.into_inner();
        let d = parse_digest(&req.digest)?;
        let (file, start, len) = blocking(move || {
            let (mut file, size) = store
                .layout
                .open_blob(&d)
                .map_err(layout_status)?
                .ok_or_else(|| not_found(&d, &store.layout))?;
            let size = size as i64;
            let start = req.offset.max(0);
            if start > size {
                return Err(Status::out_of_range(format!(
                    "read at {start} is past the end of {d} ({size} bytes)"
                )));
            }
            // A size of zero or less, or one past the end, means "to the end" (containerd).
            let len = if req.size <= 0 || start + req.size > size {
                size - start
            } else {
                req.size
            };
            file.seek(SeekFrom::Start(start as u64)).map_err(|e| {
                layout_status(LayoutError::Io {
                    path: store.layout.blob_path(&d),
                    source: e,
                })
            })?;
            Ok((file, start as u64, len as u64))
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || stream_file(file, start, len, &tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let store = self.stores.select(request.metadata())?;
        let status = store.with_write(&request.get_ref().r#ref, |w| {
            w.status.lock().map(|s| s.clone()).unwrap_or_default()
        })?;
        Ok(Response::new(api::StatusResponse {
            status: Some(status),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<api::ListStatusesRequest>,
    ) -> Result<Response<api::ListStatusesResponse>, Status> {
        let store = self.stores.select(request.metadata())?;
        if !request.get_ref().filters.is_empty() {
            return Err(Status::invalid_argument(
                "status filters are not supported by this store",
            ));
        }
        let writes = store.lock_writes()?;
        let mut statuses: Vec<api::Status> = writes
            .values()
            .filter_map(|w| w.status.lock().ok().map(|s| s.clone()))
            .collect();
        statuses.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
        Ok(Response::new(api::ListStatusesResponse { statuses }))
    }

    type WriteStream = ReceiverStream<Result<api::WriteContentResponse, Status>>;

    async fn write(
        &self,
        request: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let store = self.stores.select(request.metadata())?;
        store.writable()?;
        let (tx, rx) = mpsc::channel(4);
        let inbound = request.into_inner();
        tokio::spawn(async move {
            if let Err(status) = write_conversation(&store, inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn abort(&self, request: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        let store = self.stores.select(request.metadata())?;
        store.writable()?;
        // The writing stream sees this at its next message, fails and removes its temp file.
        store.with_write(&request.get_ref().r#ref, |w| {
            w.aborted.store(true, Ordering::SeqCst)
        })?;
        Ok(Response::new(()))
    }
}

/// Sends `len` bytes of `file` (already positioned at `start`) as Read responses. Stops early
/// when the daemon stops reading.
fn stream_file(
    mut file: File,
    start: u64,
    len: u64,
    tx: &mpsc::Sender<Result<api::ReadContentResponse, Status>>,
) {
    let mut offset = start;
    let end = start + len;
    while offset < end {
        let n = (end - offset).min(READ_CHUNK as u64) as usize;
        let mut data = vec![0u8; n];
        if let Err(e) = file.read_exact(&mut data) {
            let _ = tx.blocking_send(Err(Status::internal(format!(
                "reading blob at offset {offset}: {e}"
            ))));
            return;
        }
        let msg = api::ReadContentResponse {
            offset: offset as i64,
            data,
        };
        if tx.blocking_send(Ok(msg)).is_err() {
            return;
        }
        offset += n as u64;
    }
}

/// Marks a ref as being written; unmarks it when dropped, however the write ends.
struct RefLock {
    store: Arc<Store>,
    r#ref: String,
    state: Arc<WriteState>,
}

impl RefLock {
    fn take(store: &Arc<Store>, r: &str, total: i64, expected: &str) -> Result<RefLock, Status> {
        let mut writes = store.lock_writes()?;
        if writes.contains_key(r) {
            // containerd's answer: the writer retries until the other write is done.
            return Err(Status::unavailable(format!(
                "ref {r} is locked by another write"
            )));
        }
        let now = timestamp(SystemTime::now());
        let state = Arc::new(WriteState {
            status: Mutex::new(api::Status {
                started_at: Some(now),
                updated_at: Some(now),
                r#ref: r.to_string(),
                offset: 0,
                total,
                expected: expected.to_string(),
            }),
            aborted: AtomicBool::new(false),
        });
        writes.insert(r.to_string(), state.clone());
        Ok(RefLock {
            store: store.clone(),
            r#ref: r.to_string(),
            state,
        })
    }

    fn update(&self, offset: u64, total: i64, expected: Option<&Digest>) {
        if let Ok(mut s) = self.state.status.lock() {
            s.offset = offset as i64;
            s.total = total;
            s.expected = expected.map(Digest::to_string).unwrap_or_default();
            s.updated_at = Some(timestamp(SystemTime::now()));
        }
    }
}

impl Drop for RefLock {
    fn drop(&mut self) {
        if let Ok(mut w) = self.store.writes.lock() {
            w.remove(&self.r#ref);
        }
    }
}

/// The bytes of one write so far: a temp file in the layout (created with the first byte)
/// and the running hash.
struct Ingest {
    layout: OciLayout,
    file: Option<tempfile::NamedTempFile>,
    hasher: Hasher,
    offset: u64,
}

impl Ingest {
    fn append(&mut self, data: &[u8]) -> Result<(), Status> {
        if self.file.is_none() {
            self.file = Some(self.layout.new_ingest().map_err(layout_status)?);
        }
        if let Some(f) = &mut self.file {
            f.write_all(data).map_err(|e| {
                layout_status(LayoutError::Io {
                    path: f.path().to_path_buf(),
                    source: e,
                })
            })?;
        }
        self.hasher.update(data);
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Starts over (a write at offset 0 after data: the daemon retries from the beginning).
    fn restart(&mut self) -> Result<(), Status> {
        if let Some(f) = &mut self.file {
            let path = f.path().to_path_buf();
            let io = |e| layout_status(LayoutError::Io { path, source: e });
            f.as_file().set_len(0).map_err(io)?;
            f.seek(SeekFrom::Start(0))
                .map_err(|e| Status::internal(format!("rewinding a write: {e}")))?;
        }
        self.hasher = Hasher::new(self.hasher.algorithm());
        self.offset = 0;
        Ok(())
    }

    /// Checks size and digest and stores the blob. Returns its digest (in the expected
    /// digest's algorithm when one was given).
    fn commit(
        mut self,
        total: i64,
        expected: Option<&Digest>,
    ) -> Result<(Digest, Committed), Status> {
        if total > 0 && total as u64 != self.offset {
            return Err(Status::failed_precondition(format!(
                "unexpected commit size {}, expected {total}",
                self.offset
            )));
        }
        let file = match self.file.take() {
            Some(f) => f,
            // An empty blob is still a blob.
            None => self.layout.new_ingest().map_err(layout_status)?,
        };
        let actual = match expected {
            Some(e) if e.algorithm() != self.hasher.algorithm() => {
                rehash(file.path(), Hasher::new(e.algorithm()))?
            }
            _ => self.hasher.finish(),
        };
        if let Some(e) = expected {
            if *e != actual {
                return Err(Status::failed_precondition(format!(
                    "unexpected commit digest {actual}, expected {e}"
                )));
            }
        }
        let how = self.layout.commit(file, &actual).map_err(layout_status)?;
        Ok((actual, how))
    }
}

fn rehash(path: &Path, mut h: Hasher) -> Result<Digest, Status> {
    let mut f =
        File::open(path).map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// One Write stream, request by request (containerd's content service semantics): the first
/// message names the ref; an announced digest that is already stored ends the stream with
/// ALREADY_EXISTS; WRITE appends at the current offset (offset 0 restarts); COMMIT verifies
/// and stores, then the stream ends.
async fn write_conversation(
    store: &Arc<Store>,
    mut inbound: Streaming<api::WriteContentRequest>,
    tx: &mpsc::Sender<Result<api::WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(mut req) = inbound.message().await? else {
        return Ok(());
    };
    if req.r#ref.is_empty() {
        return Err(Status::invalid_argument(
            "first message must have a reference",
        ));
    }
    let lock = RefLock::take(store, &req.r#ref, req.total, &req.expected)?;
    let mut expected: Option<Digest> = None;
    let mut total = req.total;
    let mut ingest = Some(Ingest {
        layout: store.layout.clone(),
        file: None,
        hasher: Hasher::new(
            Digest::parse(&req.expected)
                .map(|d| d.algorithm())
                .unwrap_or(crate::digest::Algorithm::Sha256),
        ),
        offset: 0,
    });
    loop {
        if lock.state.aborted.load(Ordering::SeqCst) {
            return Err(Status::aborted(format!("write {} was aborted", req.r#ref)));
        }
        if !req.expected.is_empty() {
            let d = parse_digest(&req.expected)?;
            let layout = store.layout.clone();
            let d2 = d.clone();
            let exists = blocking(move || layout.blob_metadata(&d2).map_err(layout_status)).await?;
            if exists.is_some() {
                store.note_received(&d);
                return Err(Status::already_exists(format!(
                    "content {d}: already exists"
                )));
            }
            expected = Some(d);
        }
        if req.total > 0 {
            total = req.total;
        }
        let action = api::WriteAction::try_from(req.action).map_err(|_| {
            Status::invalid_argument(format!("unknown write action {}", req.action))
        })?;
        let mut ing = ingest
            .take()
            .ok_or_else(|| Status::internal("write state lost"))?;
        let mut resp = api::WriteContentResponse {
            action: req.action,
            total,
            ..Default::default()
        };
        if action != api::WriteAction::Stat {
            if req.offset < 0 {
                return Err(Status::invalid_argument(format!(
                    "negative write offset {}",
                    req.offset
                )));
            }
            if req.offset > 0 && req.offset as u64 != ing.offset {
                return Err(Status::out_of_range(format!(
                    "write @{} must occur at current offset {}",
                    req.offset, ing.offset
                )));
            }
            let data = std::mem::take(&mut req.data);
            let restart = req.offset == 0 && ing.offset > 0;
            ing = blocking(move || {
                if restart {
                    ing.restart()?;
                }
                if !data.is_empty() {
                    ing.append(&data)?;
                }
                Ok(ing)
            })
            .await?;
        }
        resp.offset = ing.offset as i64;
        lock.update(ing.offset, total, expected.as_ref());
        if action == api::WriteAction::Commit {
            let exp = expected.clone();
            let (digest, _how) = blocking(move || ing.commit(total, exp.as_ref())).await?;
            store.note_received(&digest);
            resp.digest = digest.to_string();
            let _ = tx.send(Ok(resp)).await;
            return Ok(());
        }
        resp.digest = ing.hasher.current().to_string();
        if let Ok(s) = lock.state.status.lock() {
            resp.started_at = s.started_at;
            resp.updated_at = s.updated_at;
        }
        ingest = Some(ing);
        if tx.send(Ok(resp)).await.is_err() {
            return Ok(());
        }
        req = match inbound.message().await? {
            Some(r) => r,
            None => return Ok(()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::content_client::ContentClient;
    use api::{WriteAction, WriteContentRequest};
    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint, Uri};

    /// Serves `stores` on an in-memory connection, as the session does.
    async fn client(stores: &ContentStores) -> ContentClient<Channel> {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let svc = stores.service();
        tokio::spawn(async move {
            let incoming = futures_util::stream::iter([Ok::<_, std::io::Error>(server_io)]);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        let slot = Arc::new(Mutex::new(Some(client_io)));
        let channel = Endpoint::from_static("http://content.test")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let io = slot.lock().unwrap().take();
                async move {
                    io.map(TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("connection already used"))
                }
            }))
            .await
            .unwrap();
        ContentClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    fn with_store<T>(id: &str, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert(STORE_ID_HEADER, id.parse().unwrap());
        r
    }

    /// The error an Info call for `digest` on store `id` gets.
    async fn info_err(c: &mut ContentClient<Channel>, id: &str, digest: &str) -> Status {
        let req = api::InfoRequest {
            digest: digest.into(),
        };
        c.info(with_store(id, req)).await.unwrap_err()
    }

    /// What Status reports for ref `r` on store `local:c`.
    async fn status_of(c: &mut ContentClient<Channel>, r: &str) -> Result<api::Status, Status> {
        let req = api::StatusRequest { r#ref: r.into() };
        let resp = c.status(with_store("local:c", req)).await?;
        Ok(resp
            .into_inner()
            .status
            .expect("a Status answer carries the status"))
    }

    fn stores(dir: &Path, writable: bool) -> ContentStores {
        ContentStores::new(BTreeMap::from([
            (
                "local:c".to_string(),
                StoreSpec {
                    dir: dir.to_path_buf(),
                    writable,
                },
            ),
            (
                "oci:ro".to_string(),
                StoreSpec {
                    dir: dir.to_path_buf(),
                    writable: false,
                },
            ),
        ]))
    }

    /// A Write conversation driven one request at a time.
    struct Writer {
        tx: mpsc::Sender<WriteContentRequest>,
        rx: Streaming<api::WriteContentResponse>,
    }

    impl Writer {
        async fn open(c: &mut ContentClient<Channel>, id: &str) -> Result<Writer, Status> {
            let (tx, rx) = mpsc::channel(4);
            let resp = c.write(with_store(id, ReceiverStream::new(rx))).await?;
            Ok(Writer {
                tx,
                rx: resp.into_inner(),
            })
        }

        async fn send(
            &mut self,
            req: WriteContentRequest,
        ) -> Result<api::WriteContentResponse, Status> {
            self.tx
                .send(req)
                .await
                .map_err(|_| Status::internal("closed"))?;
            match self.rx.message().await? {
                Some(r) => Ok(r),
                None => Err(Status::internal("stream ended")),
            }
        }
    }

    fn stat(r: &str, total: i64, expected: &str) -> WriteContentRequest {
        WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: r.into(),
            total,
            expected: expected.into(),
            ..Default::default()
        }
    }

    fn write(offset: i64, data: &[u8]) -> WriteContentRequest {
        WriteContentRequest {
            action: WriteAction::Write as i32,
            offset,
            data: data.to_vec(),
            ..Default::default()
        }
    }

    fn commit(offset: i64, total: i64, expected: &str) -> WriteContentRequest {
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset,
            total,
            expected: expected.into(),
            ..Default::default()
        }
    }

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn ingest_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("ingest"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn read_all(
        c: &mut ContentClient<Channel>,
        id: &str,
        d: &str,
        offset: i64,
        size: i64,
    ) -> Result<(Vec<u8>, Vec<i64>), Status> {
        let mut s = c
            .read(with_store(
                id,
                api::ReadContentRequest {
                    digest: d.into(),
                    offset,
                    size,
                },
            ))
            .await?
            .into_inner();
        let (mut data, mut offsets) = (Vec::new(), Vec::new());
        while let Some(m) = s.message().await? {
            offsets.push(m.offset);
            data.extend(m.data);
        }
        Ok((data, offsets))
    }

    #[tokio::test]
    async fn a_blob_written_in_chunks_is_verified_stored_and_read_back_in_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(dir.path(), true);
        let mut c = client(&stores).await;
        let data = blob(600 << 10);
        let d = Digest::sha256_of(&data).to_string();

        let mut w = Writer::open(&mut c, "local:c").await.unwrap();
        let r = w
            .send(stat("layer-1", data.len() as i64, &d))
            .await
            .unwrap();
        assert_eq!((r.offset, r.total), (0, data.len() as i64));
        let mut off = 0i64;
        for chunk in data.chunks(250 << 10) {
            let r = w.send(write(off, chunk)).await.unwrap();
            off += chunk.len() as i64;
            assert_eq!(r.offset, off);
        }
        // Mid-stream status, as `Status` reports it to another caller.
        let st = status_of(&mut c, "layer-1").await.unwrap();
        assert_eq!((st.offset, st.expected.as_str()), (off, d.as_str()));
        let r = w.send(commit(off, data.len() as i64, &d)).await.unwrap();
        assert_eq!((r.digest.as_str(), r.offset), (d.as_str(), off));

        let path = dir.path().join("blobs/sha256").join(&d[7..]);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(ingest_files(dir.path()), 0, "no temp file left");
        assert_eq!(stores.received("local:c"), vec![Digest::parse(&d).unwrap()]);

        let info = c
            .info(with_store("oci:ro", api::InfoRequest { digest: d.clone() }))
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(info.size, data.len() as i64);

        let (all, offsets) = read_all(&mut c, "oci:ro", &d, 0, 0).await.unwrap();
        assert_eq!(all, data);
        assert_eq!(offsets, vec![0, 256 << 10, 512 << 10]);
        let (part, offsets) = read_all(&mut c, "oci:ro", &d, 1000, 5000).await.unwrap();
        assert_eq!((part.as_slice(), offsets), (&data[1000..6000], vec![1000]));
        // A size past the end reads to the end, as containerd does.
        let (tail, _) = read_all(&mut c, "oci:ro", &d, (600 << 10) - 10, 100)
            .await
            .unwrap();
        assert_eq!(tail, &data[data.len() - 10..]);
        let e = read_all(&mut c, "oci:ro", &d, (600 << 10) + 1, 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);

        // The same content again: refused at once, and still counted as received.
        let mut w = Writer::open(&mut c, "local:c").await.unwrap();
        let e = w.send(stat("layer-2", 0, &d)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        assert_eq!(stores.received("local:c").len(), 1);
    }

    #[tokio::test]
    async fn wrong_content_is_refused_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(dir.path(), true);
        let mut c = client(&stores).await;
        let claimed = Digest::sha256_of(b"the real thing").to_string();

        let mut w = Writer::open(&mut c, "local:c").await.unwrap();
        w.send(stat("r", 0, &claimed)).await.unwrap();
        w.send(write(0, b"something else")).await.unwrap();
        let e = w.send(commit(14, 0, &claimed)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("unexpected commit digest"), "{e:?}");

        let mut w = Writer::open(&mut c, "local:c").await.unwrap();
        w.send(stat("r2", 3, "")).await.unwrap();
        w.send(write(0, b"abcd")).await.unwrap();
        let e = w.send(commit(4, 0, "")).await.unwrap_err();
        assert!(
            e.message().contains("unexpected commit size 4, expected 3"),
            "{e:?}"
        );

        let mut w = Writer::open(&mut c, "local:c").await.unwrap();
        w.send(stat("r3", 0, "")).await.unwrap();
        w.send(write(0, b"ab")).await.unwrap();
        let e = w.send(write(5, b"cd")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);

        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!dir.path().join("blobs").exists(), "no blob stored");
        assert_eq!(ingest_files(dir.path()), 0, "temp files removed");
        assert!(stores.received("local:c").is_empty());
    }

    #[tokio::test]
    async fn a_write_restarted_at_offset_zero_stores_only_the_second_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(dir.path(), true);
        let mut c = client(&stores).await;
        let good = b"second attempt".to_vec();
        let d = Digest::sha256_of(&good).to_string();
        let mut w = Writer::open(&mut c, "local:c").await.unwrap();
        w.send(stat("r", 0, "")).await.unwrap();
        w.send(write(0, b"first, broken off")).await.unwrap();
        let r = w.send(write(0, &good)).await.unwrap();
        assert_eq!(r.offset, good.len() as i64);
        assert_eq!(r.digest, d, "digest so far");
        let r = w
            .send(commit(good.len() as i64, good.len() as i64, &d))
            .await
            .unwrap();
        assert_eq!(r.digest, d);
        let (back, _) = read_all(&mut c, "local:c", &d, 0, 0).await.unwrap();
        assert_eq!(back, good);
    }

    #[tokio::test]
    async fn one_ref_is_written_by_one_stream_and_abort_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(dir.path(), true);
        let mut c = client(&stores).await;
        let mut w1 = Writer::open(&mut c, "local:c").await.unwrap();
        w1.send(stat("same", 0, "")).await.unwrap();
        w1.send(write(0, b"part")).await.unwrap();
        let mut w2 = Writer::open(&mut c, "local:c").await.unwrap();
        let e = w2.send(stat("same", 0, "")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

        let list = c
            .list_statuses(with_store("local:c", api::ListStatusesRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.statuses.len(), 1);
        assert_eq!(
            (list.statuses[0].r#ref.as_str(), list.statuses[0].offset),
            ("same", 4)
        );

        c.abort(with_store(
            "local:c",
            api::AbortRequest {
                r#ref: "same".into(),
            },
        ))
        .await
        .unwrap();
        let e = w1.send(write(4, b"more")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let e = status_of(&mut c, "same").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(ingest_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn stores_are_chosen_by_metadata_and_read_only_ones_refuse_changes() {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(dir.path(), true);
        let mut c = client(&stores).await;
        let d = Digest::sha256_of(b"x").to_string();

        let e = c
            .info(Request::new(api::InfoRequest { digest: d.clone() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = info_err(&mut c, "local:other", &d).await;
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("unknown store local:other"), "{e:?}");
        let e = info_err(&mut c, "local:c", &d).await;
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = info_err(&mut c, "local:c", "sha256:../../x").await;
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        let e = match Writer::open(&mut c, "oci:ro").await {
            Err(e) => e,
            Ok(mut w) => w.send(stat("r", 0, "")).await.unwrap_err(),
        };
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let e = c
            .delete(with_store(
                "oci:ro",
                api::DeleteContentRequest { digest: d.clone() },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);

        // Delete and List on the writable store.
        let mut w = Writer::open(&mut c, "local:c").await.unwrap();
        w.send(stat("r", 0, "")).await.unwrap();
        w.send(commit(0, 0, &Digest::sha256_of(b"").to_string()))
            .await
            .unwrap();
        let mut listed = c
            .list(with_store("local:c", api::ListContentRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let first = listed.message().await.unwrap().unwrap();
        assert_eq!(first.info.len(), 1);
        assert_eq!(first.info[0].size, 0);
        c.delete(with_store(
            "local:c",
            api::DeleteContentRequest {
                digest: Digest::sha256_of(b"").to_string(),
            },
        ))
        .await
        .unwrap();
        assert!(stores
            .layout("local:c")
            .unwrap()
            .blobs()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn local_cache_keys_are_header_safe_paths() {
        assert_eq!(
            local_cache_key(Path::new("/tmp/cache dir")),
            "/tmp/cache dir"
        );
        assert_eq!(
            local_cache_key(Path::new("/tmp/caché%")),
            "/tmp/cach%C3%A9%25"
        );
        assert_eq!(local_store_id("/c"), "local:/c");
        assert_eq!(oci_store_id("abc"), "oci:abc");
    }
}
