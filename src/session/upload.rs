//! The session's upload service (`/moby.upload.v1.Upload/Pull`, BuildKit
//! `session/upload`): a build context given to the frontend as `http://buildkit-session/<id>`
//! is pulled by the daemon through the session, as a stream of byte chunks. bk-build uses it
//! for a tar archive on standard input (`bk-build build - < context.tar`), as buildx does.
//!
//! Owns streaming one reader to the daemon, chunk by chunk through a small bounded queue, so
//! memory stays flat however large the archive is. Each upload is sent at most once (a
//! reader cannot be rewound), like BuildKit's own provider. Knows nothing about what the
//! bytes are.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::moby::upload::v1::{upload_server, BytesMessage};

/// The host part of the URL the frontend is given for an upload (BuildKit's http source
/// pulls URLs on this host through the session instead of the network).
pub const UPLOAD_HOST: &str = "buildkit-session";
/// Bytes per message: well under old daemons' 4 MiB message limit (BuildKit sends ≤ 3 MiB).
const CHUNK: usize = 256 << 10;
/// Messages read ahead of the daemon: at most this many chunks are held in memory.
const QUEUE: usize = 4;

/// What an upload sends: the bytes already read, then the rest of the reader.
type Source = (Vec<u8>, Box<dyn Read + Send>);

/// Bytes the daemon may pull once: what was already read from the reader (`head`, e.g. to
/// tell an archive from a Dockerfile), then the rest of the reader. Cloning shares the one
/// stream.
#[derive(Clone)]
pub struct Upload(Arc<Mutex<Option<Source>>>);

impl Upload {
    /// An upload of `head` followed by everything `rest` yields.
    pub fn new(head: Vec<u8>, rest: impl Read + Send + 'static) -> Upload {
        Upload(Arc::new(Mutex::new(Some((head, Box::new(rest))))))
    }

    fn take(&self) -> Option<Source> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }

    /// The URL that names upload `id` to the frontend (its `context` attribute).
    pub fn url(id: &str) -> String {
        format!("http://{UPLOAD_HOST}/{id}")
    }
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upload")
    }
}

/// Serves the uploads of one session, by ID.
pub struct UploadService {
    uploads: BTreeMap<String, Upload>,
}

impl UploadService {
    pub fn new(uploads: BTreeMap<String, Upload>) -> Self {
        UploadService { uploads }
    }

    /// The gRPC service, with the session's message limits.
    pub fn into_server(self) -> upload_server::UploadServer<Self> {
        upload_server::UploadServer::new(self)
            .max_decoding_message_size(super::MAX_DECODE)
            .max_encoding_message_size(super::MAX_ENCODE)
    }
}

#[tonic::async_trait]
impl upload_server::Upload for UploadService {
    type PullStream = ReceiverStream<Result<BytesMessage, Status>>;

    async fn pull(
        &self,
        req: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::PullStream>, Status> {
        // `urlpath` is the URL's path, `/<id>` (BuildKit `session/upload`).
        let path = req
            .metadata()
            .get("urlpath")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let id = path.rsplit('/').next().unwrap_or_default();
        let upload = self
            .uploads
            .get(id)
            .ok_or_else(|| Status::not_found(format!("no upload {path:?} in this session")))?;
        let (head, mut rest) = upload.take().ok_or_else(|| {
            Status::failed_precondition(format!(
                "upload {path:?} was already sent once; standard input cannot be read again"
            ))
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::task::spawn_blocking(move || {
            if !head.is_empty() && tx.blocking_send(Ok(BytesMessage { data: head })).is_err() {
                return;
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rest.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let msg = BytesMessage {
                            data: buf[..n].to_vec(),
                        };
                        // The daemon stopped pulling (the build ended): stop reading.
                        if tx.blocking_send(Ok(msg)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::data_loss(format!(
                            "cannot read the build context from standard input: {e}"
                        ))));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
