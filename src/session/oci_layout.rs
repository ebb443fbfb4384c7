//! An OCI image layout directory on the client (OCI image spec, "image-layout"): content-
//! addressed blobs under `blobs/<algorithm>/<hex>`, the `oci-layout` marker, and `index.json`,
//! whose entries name images by the annotation `org.opencontainers.image.ref.name` (a tag) or
//! containerd's `io.containerd.image.name` (a full name).
//!
//! Owns the on-disk format and its safety: blobs are written to a temp file under `ingest/`,
//! synced, and renamed into place only after their digest was verified, never replacing an
//! existing blob; `index.json` is replaced atomically while holding `index.json.lock` (the
//! lock file BuildKit's client takes, so the two never interleave updates). Knows nothing
//! about gRPC, sessions or what the daemon does with the blobs.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::digest::{Algorithm, Digest};

/// Media types of manifests and indexes (OCI image spec; Docker's schema 2 equivalents).
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The config of a BuildKit cache export (`cache/remotecache/v1/types`).
const MEDIA_TYPE_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";

/// The `index.json` annotation holding a tag (OCI `AnnotationRefName`).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation holding a full image name; looked up before the tag, as BuildKit's
/// `ociindex.Get` does.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// Manifests and indexes are small; anything larger is not read as one.
const MAX_MANIFEST_SIZE: u64 = 16 << 20;
/// How long an update waits for another process's `index.json.lock`.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A layout that cannot be read or written. Every message names the path.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl LayoutError {
    /// The underlying I/O error kind, for mapping to gRPC codes.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            LayoutError::Io { source, .. } => Some(source.kind()),
            LayoutError::Invalid { .. } => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> LayoutError {
    LayoutError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What an `index.json` entry (or a manifest's reference) says about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Empty when the entry has none.
    pub media_type: String,
    pub digest: Digest,
    /// Bytes.
    pub size: u64,
}

impl Descriptor {
    /// Reads `mediaType`, `digest` and `size` of a JSON descriptor.
    fn from_json(v: &Value, where_: &Path) -> Result<Descriptor, LayoutError> {
        let digest = v
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(where_, "a descriptor without a digest"))?;
        let digest = Digest::parse(digest).map_err(|e| invalid(where_, e.to_string()))?;
        Ok(Descriptor {
            media_type: v
                .get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            digest,
            size: v.get("size").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    fn is_manifest_or_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            MEDIA_TYPE_OCI_INDEX
                | MEDIA_TYPE_OCI_MANIFEST
                | MEDIA_TYPE_DOCKER_LIST
                | MEDIA_TYPE_DOCKER_MANIFEST
        )
    }
}

/// The parsed `index.json` of a layout.
#[derive(Debug, Clone)]
pub struct Index {
    path: PathBuf,
    doc: Value,
}

impl Index {
    fn manifests(&self) -> &[Value] {
        self.doc
            .get("manifests")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The entry named `name`: by full image name first, then by tag (BuildKit `ociindex.Get`).
    pub fn find(&self, name: &str) -> Result<Option<Descriptor>, LayoutError> {
        for key in [ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME] {
            for m in self.manifests() {
                if m.pointer(&format!("/annotations/{}", key.replace('/', "~1")))
                    .and_then(Value::as_str)
                    == Some(name)
                {
                    return Descriptor::from_json(m, &self.path).map(Some);
                }
            }
        }
        Ok(None)
    }

    /// The only entry, when there is exactly one.
    pub fn single(&self) -> Result<Option<Descriptor>, LayoutError> {
        match self.manifests() {
            [only] => Descriptor::from_json(only, &self.path).map(Some),
            _ => Ok(None),
        }
    }

    /// The tags and names of the entries, for error messages.
    pub fn names(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for m in self.manifests() {
            for key in [ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME] {
                if let Some(n) = m.get("annotations").and_then(|a| a.get(key)) {
                    if let Some(n) = n.as_str() {
                        out.insert(n.to_string());
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// How an `index.json` entry is named (BuildKit `ociindex.NameOrTag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexName {
    /// Just a tag (`org.opencontainers.image.ref.name`), e.g. `latest`.
    Tag(String),
    /// A full image name (`io.containerd.image.name`), with its tag as the ref name.
    Name(String),
}

impl IndexName {
    /// (`io.containerd.image.name`, `org.opencontainers.image.ref.name`).
    fn annotations(&self) -> (Option<&str>, &str) {
        match self {
            IndexName::Tag(t) => (None, t),
            IndexName::Name(n) => (Some(n), reference_object(n)),
        }
    }
}

/// The part of an image reference after its repository (containerd `reference.Spec.Object`:
/// from the first `:` or `@` after the host, without a leading `:`), e.g. `1` for
/// `docker.io/library/app:1`; empty when there is none, as in containerd.
fn reference_object(name: &str) -> &str {
    let path_start = name.find('/').unwrap_or(0);
    match name[path_start..].find([':', '@']) {
        Some(i) => {
            let obj = &name[path_start + i..];
            obj.strip_prefix(':').unwrap_or(obj)
        }
        None => "",
    }
}

/// How a verified blob arrived in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Renamed into `blobs/`.
    Stored,
    /// The layout already held this blob; it was left as it was.
    AlreadyThere,
}

/// One OCI layout directory (it need not exist until something is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    pub fn new(root: impl Into<PathBuf>) -> OciLayout {
        OciLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The blob's metadata, `None` when the layout does not hold it. Anything but a regular
    /// file at a blob's path is an error: it is not content this layout can serve.
    pub fn blob_metadata(&self, digest: &Digest) -> Result<Option<fs::Metadata>, LayoutError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m)),
            Ok(_) => Err(invalid(&path, "is not a regular file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Opens a blob for reading; `None` when the layout does not hold it.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<(File, u64)>, LayoutError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let meta = file.metadata().map_err(io_err(&path))?;
        if !meta.is_file() {
            return Err(invalid(&path, "is not a regular file"));
        }
        Ok(Some((file, meta.len())))
    }

    /// Every blob in `blobs/`, by digest (files whose names are not digests are ignored).
    pub fn blobs(&self) -> Result<Vec<(Digest, fs::Metadata)>, LayoutError> {
        let mut out = Vec::new();
        for alg in Algorithm::ALL {
            let dir = self.root.join("blobs").join(alg.as_str());
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(digest) = Digest::parse(&format!("{}:{name}", alg.as_str())) else {
                    continue;
                };
                let meta = entry.metadata().map_err(io_err(&entry.path()))?;
                if meta.is_file() {
                    out.push((digest, meta));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// A temp file for a blob being written, under `ingest/` (the directory containerd's and
    /// BuildKit's local stores use too). It is deleted when dropped uncommitted.
    pub fn new_ingest(&self) -> Result<tempfile::NamedTempFile, LayoutError> {
        let dir = self.root.join("ingest");
        create_dirs(&self.root)?;
        // 0777 less the umask, as containerd's local store makes it (`ensureIngestRoot`).
        if let Err(e) = fs::DirBuilder::new().mode(0o777).create(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_err(&dir)(e));
            }
        }
        tempfile::Builder::new()
            .prefix("bk-build-")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))
    }

    /// Makes a fully written and verified temp file the blob `digest`: synced, read-only, then
    /// renamed into `blobs/` without ever replacing a blob already there.
    pub fn commit(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<Committed, LayoutError> {
        use std::os::unix::fs::PermissionsExt;
        let tmp_path = tmp.path().to_path_buf();
        tmp.as_file().sync_all().map_err(io_err(&tmp_path))?;
        // Read-only like containerd's local store: content-addressed files never change.
        fs::set_permissions(&tmp_path, fs::Permissions::from_mode(0o444))
            .map_err(io_err(&tmp_path))?;
        let target = self.blob_path(digest);
        if let Some(dir) = target.parent() {
            create_dirs(dir)?;
        }
        match tmp.persist_noclobber(&target) {
            Ok(_) => Ok(Committed::Stored),
            // Another write of the same content won: the temp file is dropped (deleted).
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(Committed::AlreadyThere),
            Err(e) => Err(io_err(&target)(e.error)),
        }
    }

    /// Reads `index.json`; `None` when the layout has none (e.g. nothing exported yet).
    pub fn read_index(&self) -> Result<Option<Index>, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = match read_regular(&path, MAX_MANIFEST_SIZE) {
            Ok(b) => b,
            Err(LayoutError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(&path, format!("not valid JSON: {e}")))?;
        if !doc.is_object() {
            return Err(invalid(&path, "is not a JSON object"));
        }
        Ok(Some(Index { path, doc }))
    }

    /// Reads a manifest or index blob as JSON.
    fn read_json_blob(&self, digest: &Digest) -> Result<Option<Value>, LayoutError> {
        let path = self.blob_path(digest);
        let bytes = match read_regular(&path, MAX_MANIFEST_SIZE) {
            Ok(b) => b,
            Err(LayoutError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| invalid(&path, format!("not valid JSON: {e}")))
    }

    /// Whether the blob is the root of a BuildKit cache export: an index listing a cache
    /// config, or an image manifest whose config is one (`cache/remotecache/export.go`).
    /// Returns its descriptor when it is.
    pub fn cache_root(&self, digest: &Digest) -> Result<Option<Descriptor>, LayoutError> {
        let Some(meta) = self.blob_metadata(digest)? else {
            return Ok(None);
        };
        if meta.len() > MAX_MANIFEST_SIZE {
            return Ok(None);
        }
        let Ok(Some(doc)) = self.read_json_blob(digest) else {
            // Layers are not JSON; that is not an error here.
            return Ok(None);
        };
        let media_type = doc.get("mediaType").and_then(Value::as_str).unwrap_or("");
        let is_cache_config =
            |d: &Value| d.get("mediaType").and_then(Value::as_str) == Some(MEDIA_TYPE_CACHE_CONFIG);
        let root = match media_type {
            MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST => doc
                .get("manifests")
                .and_then(Value::as_array)
                .is_some_and(|m| m.iter().any(is_cache_config)),
            MEDIA_TYPE_OCI_MANIFEST => doc.get("config").is_some_and(is_cache_config),
            _ => false,
        };
        Ok(root.then(|| Descriptor {
            media_type: media_type.to_string(),
            digest: digest.clone(),
            size: meta.len(),
        }))
    }

    /// Points the tag `tag` in `index.json` at `desc`, replacing an entry with the same tag
    /// (and no full name), as BuildKit's client does after a cache export.
    pub fn tag(&self, desc: &Descriptor, tag: &str) -> Result<(), LayoutError> {
        let entry = json!({
            "mediaType": desc.media_type,
            "digest": desc.digest.to_string(),
            "size": desc.size,
        });
        self.put(&entry, &[IndexName::Tag(tag.to_string())])
    }

    /// Adds `desc` (a JSON descriptor, kept as it is apart from the name annotations) to
    /// `index.json` once per name, replacing entries with the same name (BuildKit
    /// `ociindex.Put`). Writes `oci-layout`, and makes the blobs durable before the index
    /// names them.
    pub fn put(&self, desc: &Value, names: &[IndexName]) -> Result<(), LayoutError> {
        let _lock = IndexLock::acquire(&self.root)?;
        self.sync_blob_dirs()?;
        write_if_changed(
            &self.root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let index_path = self.root.join("index.json");
        if !desc.is_object() {
            return Err(invalid(
                &index_path,
                "a new entry must be a JSON descriptor",
            ));
        }
        let mut doc = match self.read_index()? {
            Some(i) => i.doc,
            None => Value::Object(Map::new()),
        };
        let obj = doc
            .as_object_mut()
            .ok_or_else(|| invalid(&index_path, "is not a JSON object"))?;
        obj.entry("schemaVersion").or_insert(json!(2));
        obj.entry("mediaType")
            .or_insert(json!(MEDIA_TYPE_OCI_INDEX));
        let manifests = obj
            .entry("manifests")
            .or_insert_with(|| Value::Array(Vec::new()));
        let list = manifests
            .as_array_mut()
            .ok_or_else(|| invalid(&index_path, "\"manifests\" is not a list"))?;
        let unnamed = [None];
        let names: Vec<Option<&IndexName>> = if names.is_empty() {
            unnamed.to_vec()
        } else {
            names.iter().map(Some).collect()
        };
        for name in names {
            let mut entry = desc.clone();
            if let Some(name) = name {
                let (image_name, ref_name) = name.annotations();
                list.retain(|m| {
                    let ann = |k: &str| {
                        m.get("annotations")
                            .and_then(|a| a.get(k))
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    };
                    ann(ANNOTATION_REF_NAME) != ref_name
                        || ann(ANNOTATION_IMAGE_NAME) != image_name.unwrap_or("")
                });
                let ann = entry
                    .as_object_mut()
                    .map(|o| o.entry("annotations").or_insert_with(|| json!({})));
                if let Some(Value::Object(ann)) = ann {
                    if let Some(n) = image_name {
                        ann.insert(ANNOTATION_IMAGE_NAME.into(), json!(n));
                    }
                    ann.insert(ANNOTATION_REF_NAME.into(), json!(ref_name));
                }
            }
            list.push(entry);
        }
        let bytes = serde_json::to_vec(&doc).map_err(|e| invalid(&index_path, e.to_string()))?;
        write_atomic(&index_path, &bytes)
    }

    /// Deletes every blob that `index.json` does not reach (through indexes and manifests to
    /// their configs and layers): BuildKit's `reset=true` for local cache exports. Nothing is
    /// deleted when any reachable manifest is missing or unreadable. Returns how many blobs
    /// were removed and their total size.
    pub fn remove_unreferenced(&self) -> Result<(usize, u64), LayoutError> {
        let _lock = IndexLock::acquire(&self.root)?;
        let index_path = self.root.join("index.json");
        let index = self
            .read_index()?
            .ok_or_else(|| invalid(&index_path, "does not exist; nothing would be kept"))?;
        let mut keep: BTreeSet<Digest> = BTreeSet::new();
        let mut todo: Vec<Descriptor> = index
            .manifests()
            .iter()
            .map(|m| Descriptor::from_json(m, &index_path))
            .collect::<Result<_, _>>()?;
        while let Some(d) = todo.pop() {
            if !keep.insert(d.digest.clone()) || !d.is_manifest_or_index() {
                continue;
            }
            let path = self.blob_path(&d.digest);
            let doc = self.read_json_blob(&d.digest)?.ok_or_else(|| {
                invalid(
                    &path,
                    "is referenced from index.json but missing; nothing was removed",
                )
            })?;
            let children = doc
                .get("manifests")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(doc.get("config"))
                .chain(
                    doc.get("layers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
            for c in children {
                todo.push(Descriptor::from_json(c, &path)?);
            }
        }
        let mut removed = (0, 0);
        for (digest, meta) in self.blobs()? {
            if !keep.contains(&digest) {
                let path = self.blob_path(&digest);
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed.0 += 1;
                removed.1 += meta.len();
            }
        }
        Ok(removed)
    }

    /// Renames into `blobs/<alg>/` are only durable once the directory itself is synced.
    fn sync_blob_dirs(&self) -> Result<(), LayoutError> {
        for alg in Algorithm::ALL {
            let dir = self.root.join("blobs").join(alg.as_str());
            match File::open(&dir) {
                Ok(f) => f.sync_all().map_err(io_err(&dir))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(())
    }
}

/// Reads a regular file of at most `limit` bytes (a FIFO or device would block or never end).
fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, LayoutError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(invalid(path, "is not a regular file"));
    }
    if meta.len() > limit {
        return Err(invalid(
            path,
            format!(
                "is {} bytes, more than a manifest or index can be",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    Ok(bytes)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    write_atomic(path, bytes)
}

/// Creates `dir` and any parents missing, mode 0755 (less the umask), as BuildKit's client
/// and containerd's local store create a layout, its parents and `blobs/<algorithm>`
/// (`os.MkdirAll(dir, 0755)`): never writable by the group or others, whatever the umask.
fn create_dirs(dir: &Path) -> Result<(), LayoutError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err(dir))
}

/// Replaces `path` with `bytes`: temp file beside it, fsync, rename, fsync the directory. The
/// file gets mode 0644 (less the umask), as BuildKit's client writes `index.json` and
/// `oci-layout`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dirs(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".bk-build-")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// `index.json.lock`, held (flock, like BuildKit's client) while the index is rewritten or
/// blobs are removed. Removed again while still held, as BuildKit's client does, so a layout
/// keeps no stray lock file.
struct IndexLock {
    path: PathBuf,
    /// The locked descriptor; closing it releases the lock.
    _held: File,
}

impl IndexLock {
    fn acquire(root: &Path) -> Result<IndexLock, LayoutError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        create_dirs(root)?;
        let path = root.join("index.json.lock");
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            // SAFETY: flock on a descriptor this function owns for the call's duration.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    return Err(io_err(&path)(e));
                }
            } else {
                // The previous holder may have removed the file we locked: only a lock on the
                // file that is at the path now counts.
                let same = match (file.metadata(), fs::metadata(&path)) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                };
                if same {
                    return Ok(IndexLock { path, _held: file });
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(invalid(
                    &path,
                    "is held by another process for too long (another build updating this layout?)",
                ));
            }
            drop(file);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for IndexLock {
    fn drop(&mut self) {
        // Still held here; the lock is released when the descriptor closes right after.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `bytes` as a blob the way a verified write does; returns its descriptor.
    fn put(l: &OciLayout, media_type: &str, bytes: &[u8]) -> Descriptor {
        let d = Digest::sha256_of(bytes);
        let mut tmp = l.new_ingest().unwrap();
        tmp.write_all(bytes).unwrap();
        l.commit(tmp, &d).unwrap();
        Descriptor {
            media_type: media_type.into(),
            digest: d,
            size: bytes.len() as u64,
        }
    }

    fn desc_json(d: &Descriptor) -> Value {
        json!({"mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size})
    }

    /// A cache export as BuildKit writes it with image-manifest=true: layers, the cache
    /// config, and a manifest whose config is the cache config.
    fn cache_export(l: &OciLayout, seed: &str) -> (Descriptor, Vec<Descriptor>) {
        let layer = put(
            l,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            seed.as_bytes(),
        );
        let config = put(
            l,
            MEDIA_TYPE_CACHE_CONFIG,
            format!("{{\"seed\":\"{seed}\"}}").as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": desc_json(&config),
            "layers": [desc_json(&layer)],
        });
        let m = put(l, MEDIA_TYPE_OCI_MANIFEST, manifest.to_string().as_bytes());
        (m, vec![layer, config])
    }

    #[test]
    fn committing_the_same_content_twice_keeps_the_first_blob() {
        let dir = tempfile::tempdir().unwrap();
        let l = OciLayout::new(dir.path());
        let d = put(&l, "", b"abc").digest;
        let mut tmp = l.new_ingest().unwrap();
        tmp.write_all(b"abc").unwrap();
        assert_eq!(l.commit(tmp, &d).unwrap(), Committed::AlreadyThere);
        assert_eq!(fs::read(l.blob_path(&d)).unwrap(), b"abc");
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        assert_eq!(l.blobs().unwrap().len(), 1);
    }

    #[test]
    fn tagging_replaces_the_entry_with_that_tag_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let l = OciLayout::new(dir.path());
        assert!(l.read_index().unwrap().is_none());
        let (m1, _) = cache_export(&l, "one");
        let (m2, _) = cache_export(&l, "two");
        l.tag(&m1, "latest").unwrap();
        l.tag(&m1, "main").unwrap();
        l.tag(&m2, "latest").unwrap();

        let index = l.read_index().unwrap().unwrap();
        assert_eq!(index.find("latest").unwrap(), Some(m2.clone()));
        assert_eq!(index.find("main").unwrap(), Some(m1));
        assert_eq!(index.find("other").unwrap(), None);
        assert_eq!(index.single().unwrap(), None);
        assert_eq!(
            index.names(),
            vec!["latest".to_string(), "main".to_string()]
        );
        let doc: Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(doc["schemaVersion"], 2);
        assert_eq!(doc["mediaType"], MEDIA_TYPE_OCI_INDEX);
        assert_eq!(
            fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        assert!(
            !dir.path().join("index.json.lock").exists(),
            "lock file removed"
        );
    }

    #[test]
    fn a_full_image_name_is_found_before_a_tag_and_unknown_fields_survive() {
        let dir = tempfile::tempdir().unwrap();
        let l = OciLayout::new(dir.path());
        let a = put(&l, MEDIA_TYPE_OCI_MANIFEST, b"{}");
        let b = put(&l, MEDIA_TYPE_OCI_MANIFEST, b"{ }");
        let index = json!({
            "schemaVersion": 2,
            "x-extra": {"kept": true},
            "manifests": [
                {"mediaType": a.media_type, "digest": a.digest.to_string(), "size": a.size,
                 "annotations": {ANNOTATION_REF_NAME: "v1"}},
                {"mediaType": b.media_type, "digest": b.digest.to_string(), "size": b.size,
                 "annotations": {ANNOTATION_IMAGE_NAME: "v1", ANNOTATION_REF_NAME: "v1"}},
            ]
        });
        fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        assert_eq!(
            l.read_index().unwrap().unwrap().find("v1").unwrap(),
            Some(b.clone())
        );
        // Tagging v1 replaces only the entry without a full name.
        l.tag(&b, "v1").unwrap();
        let doc: Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(doc["x-extra"]["kept"], true);
        let m = doc["manifests"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|e| e["digest"] == b.digest.to_string()));
    }

    #[test]
    fn cache_roots_are_told_from_configs_layers_and_images() {
        let dir = tempfile::tempdir().unwrap();
        let l = OciLayout::new(dir.path());
        let (m, others) = cache_export(&l, "s");
        assert_eq!(l.cache_root(&m.digest).unwrap(), Some(m.clone()));
        for o in others {
            assert_eq!(l.cache_root(&o.digest).unwrap(), None);
        }
        // An index-style cache (image-manifest=false) is a root too; an image is not.
        let cfg = put(&l, MEDIA_TYPE_CACHE_CONFIG, b"{\"c\":1}");
        let idx = json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": [desc_json(&cfg)]});
        let i = put(&l, MEDIA_TYPE_OCI_INDEX, idx.to_string().as_bytes());
        assert_eq!(
            l.cache_root(&i.digest).unwrap().map(|d| d.media_type),
            Some(MEDIA_TYPE_OCI_INDEX.to_string())
        );
        let img_cfg = put(
            &l,
            "application/vnd.oci.image.config.v1+json",
            b"{\"os\":\"linux\"}",
        );
        let img = json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST, "config": desc_json(&img_cfg), "layers": []});
        let img = put(&l, MEDIA_TYPE_OCI_MANIFEST, img.to_string().as_bytes());
        assert_eq!(l.cache_root(&img.digest).unwrap(), None);
        assert_eq!(l.cache_root(&Digest::sha256_of(b"absent")).unwrap(), None);
    }

    #[test]
    fn reset_removes_exactly_what_the_index_no_longer_reaches() {
        let dir = tempfile::tempdir().unwrap();
        let l = OciLayout::new(dir.path());
        let (old, old_parts) = cache_export(&l, "old");
        l.tag(&old, "latest").unwrap();
        let (new, new_parts) = cache_export(&l, "new");
        l.tag(&new, "latest").unwrap();
        let stray = put(&l, "", b"stray");
        // Not a digest name: never touched.
        fs::write(dir.path().join("blobs/sha256/README"), "keep").unwrap();

        let (n, _) = l.remove_unreferenced().unwrap();
        assert_eq!(
            n,
            1 + old_parts.len() + 1,
            "old manifest, its layer and config, the stray blob"
        );
        let left: BTreeSet<Digest> = l.blobs().unwrap().into_iter().map(|(d, _)| d).collect();
        let want: BTreeSet<Digest> = std::iter::once(new.digest.clone())
            .chain(new_parts.iter().map(|d| d.digest.clone()))
            .collect();
        assert_eq!(left, want);
        assert!(!l.blob_path(&stray.digest).exists());
        assert!(dir.path().join("blobs/sha256/README").exists());
    }

    #[test]
    fn reset_removes_nothing_when_a_referenced_manifest_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let l = OciLayout::new(dir.path());
        let (m, _) = cache_export(&l, "x");
        l.tag(&m, "latest").unwrap();
        put(&l, "", b"stray");
        fs::remove_file(l.blob_path(&m.digest)).unwrap();
        let before = l.blobs().unwrap().len();
        let e = l.remove_unreferenced().unwrap_err().to_string();
        assert!(e.contains("missing; nothing was removed"), "{e}");
        assert_eq!(l.blobs().unwrap().len(), before);
    }
}
