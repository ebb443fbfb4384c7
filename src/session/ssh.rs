//! SSH agent forwarding for `RUN --mount=type=ssh` (`/moby.sshforward.v1.SSH/*`).
//!
//! Owns the mapping from `--ssh` IDs to what answers for them, and the pump between a
//! `ForwardAgent` stream and that answerer: a fresh connection to a local agent socket
//! (`--ssh ID=SOCKET`, `--ssh default` for `$SSH_AUTH_SOCK`), or the in-process agent over
//! private key files (`--ssh ID=KEYFILE[,KEYFILE…]`, [`super::ssh_keys`]), as BuildKit's client
//! does (`sshprovider`: one socket, or any number of key files, never both). Like BuildKit, the
//! forwarded agent is read-only: only "list identities" and "sign" requests reach it; requests
//! that would add, remove or lock keys (or protocol extensions) are answered with a failure, so
//! a build step cannot change the user's agent. Must not know about the tunnel or the build.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ssh_keys::{KeyAgent, KeyFileError};
use crate::options::SshSpec;
use crate::proto::moby::sshforward::v1::{
    ssh_server::Ssh, BytesMessage, CheckAgentRequest, CheckAgentResponse,
};

/// gRPC metadata key carrying the agent ID on `ForwardAgent` (`sshforward.KeySSHID`).
const KEY_SSH_ID: &str = "buildkit.ssh.id";
const DEFAULT_ID: &str = "default";
/// OpenSSH's limit for one agent message; anything larger is garbage or abuse.
const MAX_AGENT_MSG: usize = 256 * 1024;
const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An `--ssh` entry that cannot be forwarded. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("--ssh {id}: SSH_AUTH_SOCK is not set; start an agent (eval \"$(ssh-agent)\" && ssh-add) or pass --ssh {id}=/path/to/agent.sock")]
    NoAuthSock { id: String },
    #[error("--ssh {id}={}: {source}", path.display())]
    Missing {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--ssh {id}={source}")]
    Key {
        id: String,
        #[source]
        source: KeyFileError,
    },
    #[error("--ssh {id}={}: neither an agent socket nor a private key file; pass the socket of a running ssh-agent or a key file", path.display())]
    NotSocket { id: String, path: PathBuf },
    #[error("--ssh {id}: an agent socket ({}) cannot be combined with other paths; give one socket, or only key files", socket.display())]
    SocketAndMore { id: String, socket: PathBuf },
    #[error("--ssh {id} is given more than once; each ID must be unique")]
    Duplicate { id: String },
}

/// What answers agent requests for one `--ssh` ID.
#[derive(Debug)]
enum Agent {
    /// A running agent's socket, connected to anew for each forwarded connection.
    Socket(PathBuf),
    /// Private key files, served in this process.
    Keys(Arc<KeyAgent>),
}

/// Serves the SSH service from a fixed map of agent IDs to agents.
#[derive(Debug)]
pub struct SshForwarder {
    agents: HashMap<String, Agent>,
}

impl SshForwarder {
    /// Paths left empty in a spec mean `$SSH_AUTH_SOCK` of this process.
    pub fn new(specs: &[SshSpec]) -> Result<Self, SshError> {
        let sock = std::env::var_os("SSH_AUTH_SOCK")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Self::with_auth_sock(specs, sock)
    }

    /// Like [`SshForwarder::new`] with an explicit default agent socket.
    pub fn with_auth_sock(specs: &[SshSpec], auth_sock: Option<PathBuf>) -> Result<Self, SshError> {
        let mut agents = HashMap::new();
        for spec in specs {
            let id = if spec.id.is_empty() {
                DEFAULT_ID.to_string()
            } else {
                spec.id.clone()
            };
            if agents.contains_key(&id) {
                return Err(SshError::Duplicate { id });
            }
            let paths = match spec.paths.as_slice() {
                [] => vec![auth_sock
                    .clone()
                    .ok_or_else(|| SshError::NoAuthSock { id: id.clone() })?],
                some => some.to_vec(),
            };
            let mut sockets = Vec::new();
            for p in &paths {
                if is_socket(&id, p)? {
                    sockets.push(p.clone());
                }
            }
            let agent = match sockets.as_slice() {
                [] => Agent::Keys(Arc::new(KeyAgent::load(&paths).map_err(|source| {
                    SshError::Key {
                        id: id.clone(),
                        source,
                    }
                })?)),
                [one] if paths.len() == 1 => Agent::Socket(one.clone()),
                [first, ..] => {
                    return Err(SshError::SocketAndMore {
                        id,
                        socket: first.clone(),
                    })
                }
            };
            agents.insert(id, agent);
        }
        Ok(SshForwarder { agents })
    }
}

/// Whether `path` is a socket (`false`: a regular file, to be read as a key), as BuildKit's
/// client tells them apart (following symlinks).
fn is_socket(id: &str, path: &Path) -> Result<bool, SshError> {
    let meta = std::fs::metadata(path).map_err(|source| SshError::Missing {
        id: id.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let ft = meta.file_type();
    if ft.is_socket() {
        Ok(true)
    } else if ft.is_file() {
        Ok(false)
    } else {
        Err(SshError::NotSocket {
            id: id.to_string(),
            path: path.to_path_buf(),
        })
    }
}

fn unknown_id(id: &str) -> Status {
    Status::not_found(format!(
        "ssh agent {id:?} was not given to bk-build; pass --ssh {id}=$SSH_AUTH_SOCK"
    ))
}

#[tonic::async_trait]
impl Ssh for SshForwarder {
    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> Result<Response<CheckAgentResponse>, Status> {
        let id = request.into_inner().id;
        let id = if id.is_empty() { DEFAULT_ID } else { &id };
        if self.agents.contains_key(id) {
            Ok(Response::new(CheckAgentResponse {}))
        } else {
            Err(unknown_id(id))
        }
    }

    type ForwardAgentStream = ReceiverStream<Result<BytesMessage, Status>>;

    async fn forward_agent(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::ForwardAgentStream>, Status> {
        let id = request
            .metadata()
            .get(KEY_SSH_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_ID)
            .to_string();
        let path = match self.agents.get(&id).ok_or_else(|| unknown_id(&id))? {
            Agent::Socket(path) => path,
            Agent::Keys(keys) => {
                let (tx, rx) = mpsc::channel(16);
                tokio::spawn(proxy(
                    request.into_inner(),
                    Answerer::<tokio::net::UnixStream>::Keys(keys.clone()),
                    tx,
                ));
                return Ok(Response::new(ReceiverStream::new(rx)));
            }
        };
        let agent = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::UnixStream::connect(path),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!(
                "cannot connect to ssh agent {} for --ssh {id}: {e}; is the agent still running?",
                path.display()
            )))
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "ssh agent {} for --ssh {id} did not accept a connection within {} s",
                    path.display(),
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(proxy(request.into_inner(), Answerer::Agent(agent), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Who answers the requests of one forwarded connection.
enum Answerer<A> {
    /// A connection to a running agent.
    Agent(A),
    /// The keys of an `--ssh ID=KEYFILE`.
    Keys(Arc<KeyAgent>),
}

impl<A: AsyncRead + AsyncWrite + Unpin> Answerer<A> {
    async fn answer(&mut self, request: Vec<u8>) -> std::io::Result<Vec<u8>> {
        match self {
            Answerer::Agent(agent) => exchange(agent, &request).await,
            // An RSA signature takes milliseconds: off the async threads.
            Answerer::Keys(keys) => {
                let keys = keys.clone();
                tokio::task::spawn_blocking(move || keys.answer(&request))
                    .await
                    .map_err(std::io::Error::other)
            }
        }
    }
}

/// Relays agent requests from the daemon one at a time and their replies back. The agent
/// protocol is strict request/response (the agent never speaks first), so handling one framed
/// request at a time is exact and lets us filter by message type. Ends when either side closes
/// or the daemon stops reading; dropping `tx` ends the response stream.
async fn proxy<S, A>(
    mut inbound: S,
    mut agent: Answerer<A>,
    tx: mpsc::Sender<Result<BytesMessage, Status>>,
) where
    S: Stream<Item = Result<BytesMessage, Status>> + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let request = loop {
            match take_frame(&mut pending) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(m)) => pending.extend_from_slice(&m.data),
                    // Daemon closed (or broke) its side: the connection in the container is gone.
                    _ => return,
                },
                _ = tx.closed() => return,
            }
        };

        let allowed = matches!(
            request.get(4),
            Some(&SSH_AGENTC_REQUEST_IDENTITIES) | Some(&SSH_AGENTC_SIGN_REQUEST)
        );
        let reply = if allowed {
            match agent.answer(request).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "ssh agent connection failed: {e}"
                        ))))
                        .await;
                    return;
                }
            }
        } else {
            vec![0, 0, 0, 1, SSH_AGENT_FAILURE]
        };
        if tx.send(Ok(BytesMessage { data: reply })).await.is_err() {
            return;
        }
    }
}

/// Removes one complete length-prefixed agent message from the front of `buf`.
fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, Status> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_AGENT_MSG {
        return Err(Status::invalid_argument(format!(
            "ssh agent request of {len} bytes exceeds the {MAX_AGENT_MSG}-byte limit"
        )));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let rest = buf.split_off(4 + len);
    Ok(Some(std::mem::replace(buf, rest)))
}

async fn exchange<A>(agent: &mut A, request: &[u8]) -> std::io::Result<Vec<u8>>
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    agent.write_all(request).await?;
    agent.flush().await?;
    let mut len = [0u8; 4];
    agent.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_AGENT_MSG {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("agent reply of {n} bytes exceeds the {MAX_AGENT_MSG}-byte limit"),
        ));
    }
    let mut reply = vec![0u8; 4 + n];
    reply[..4].copy_from_slice(&len);
    agent.read_exact(&mut reply[4..]).await?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::body::Frame;
    use prost::Message as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::net::UnixListener;

    /// A fake agent that echoes every byte back and counts bytes received.
    fn echo_agent(dir: &Path) -> (PathBuf, Arc<AtomicUsize>) {
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                counter.fetch_add(n, Ordering::SeqCst);
                                if conn.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (path, received)
    }

    fn forwarder(id: &str, path: &Path) -> SshForwarder {
        SshForwarder::with_auth_sock(
            &[SshSpec {
                id: id.into(),
                paths: vec![path.to_path_buf()],
            }],
            None,
        )
        .unwrap()
    }

    type FrameTx = mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;

    /// A `Streaming<BytesMessage>` request as tonic would hand it to the service, fed by the
    /// returned sender (gRPC length-prefixed frames); dropping the sender ends the stream.
    fn streaming_request(id: Option<&str>) -> (FrameTx, Request<Streaming<BytesMessage>>) {
        let (tx, rx) = mpsc::channel(16);
        let body = http_body_util::StreamBody::new(ReceiverStream::new(rx));
        let streaming = Streaming::new_request(
            tonic_prost::ProstDecoder::<BytesMessage>::default(),
            body,
            None,
            None,
        );
        let mut req = Request::new(streaming);
        if let Some(id) = id {
            req.metadata_mut().insert(KEY_SSH_ID, id.parse().unwrap());
        }
        (tx, req)
    }

    async fn send(tx: &FrameTx, data: &[u8]) {
        let msg = BytesMessage {
            data: data.to_vec(),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        tx.send(Ok(Frame::data(Bytes::from(frame)))).await.unwrap();
    }

    fn agent_msg(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        m.push(kind);
        m.extend_from_slice(payload);
        m
    }

    async fn collect_n(
        stream: &mut ReceiverStream<Result<BytesMessage, Status>>,
        n: usize,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("reply in time")
                .expect("stream still open")
                .expect("no error");
            out.extend_from_slice(&msg.data);
        }
        out
    }

    #[tokio::test]
    async fn forwards_through_agent_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, received) = echo_agent(dir.path());
        let fwd = forwarder("gh", &sock);

        let (tx, req) = streaming_request(Some("gh"));
        let mut out = fwd.forward_agent(req).await.unwrap().into_inner();

        // A request split across several BytesMessages, as the daemon's chunking allows.
        let list = agent_msg(SSH_AGENTC_REQUEST_IDENTITIES, &[]);
        send(&tx, &list[..2]).await;
        send(&tx, &list[2..]).await;
        assert_eq!(collect_n(&mut out, list.len()).await, list);

        // A large sign request (bigger than any single read) arrives whole.
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let sign = agent_msg(SSH_AGENTC_SIGN_REQUEST, &payload);
        for chunk in sign.chunks(30_000) {
            send(&tx, chunk).await;
        }
        assert_eq!(collect_n(&mut out, sign.len()).await, sign);
        assert_eq!(received.load(Ordering::SeqCst), list.len() + sign.len());

        // The daemon closing its side ends the response stream.
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(5), out.next())
            .await
            .unwrap();
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn agent_is_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, received) = echo_agent(dir.path());
        let fwd = forwarder("default", &sock);
        // No metadata: the ID defaults to "default".
        let (tx, req) = streaming_request(None);
        let mut out = fwd.forward_agent(req).await.unwrap().into_inner();
        for kind in [17u8, 18, 19, 22, 27] {
            send(&tx, &agent_msg(kind, b"key material")).await;
            assert_eq!(
                collect_n(&mut out, 5).await,
                vec![0, 0, 0, 1, SSH_AGENT_FAILURE]
            );
        }
        assert_eq!(
            received.load(Ordering::SeqCst),
            0,
            "refused requests must not reach the agent"
        );
    }

    #[tokio::test]
    async fn key_files_are_served_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "k1", "-f"])
            .arg(&key)
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("ssh-keygen not found; skipped");
            return;
        }
        let fwd = forwarder("k", &key);
        let (tx, req) = streaming_request(Some("k"));
        let mut out = fwd.forward_agent(req).await.unwrap().into_inner();
        send(&tx, &agent_msg(SSH_AGENTC_REQUEST_IDENTITIES, &[])).await;
        let mut reply = collect_n(&mut out, 5).await;
        let len = u32::from_be_bytes([reply[0], reply[1], reply[2], reply[3]]) as usize;
        reply.extend(collect_n(&mut out, 4 + len - reply.len()).await);
        assert_eq!(reply[4], 12, "an identities answer");
        assert_eq!(&reply[5..9], &[0, 0, 0, 1], "one key");
        assert!(reply.ends_with(b"k1"), "with its comment");
        // Read-only like a forwarded agent: adding a key fails.
        send(&tx, &agent_msg(17, b"key material")).await;
        assert_eq!(
            collect_n(&mut out, 5).await,
            vec![0, 0, 0, 1, SSH_AGENT_FAILURE]
        );
    }

    #[tokio::test]
    async fn oversized_request_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _) = echo_agent(dir.path());
        let fwd = forwarder("default", &sock);
        let (tx, req) = streaming_request(Some("default"));
        let mut out = fwd.forward_agent(req).await.unwrap().into_inner();
        send(&tx, &(1u32 << 30).to_be_bytes()).await;
        let err = out.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn unknown_ids_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _) = echo_agent(dir.path());
        let fwd = forwarder("default", &sock);
        fwd.check_agent(Request::new(CheckAgentRequest { id: String::new() }))
            .await
            .unwrap();
        fwd.check_agent(Request::new(CheckAgentRequest {
            id: "default".into(),
        }))
        .await
        .unwrap();
        let e = fwd
            .check_agent(Request::new(CheckAgentRequest { id: "other".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let (_tx, req) = streaming_request(Some("other"));
        let e = fwd.forward_agent(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("--ssh other="), "{}", e.message());
    }

    #[tokio::test]
    async fn dead_agent_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        // A socket file whose listener is closed.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let fwd = forwarder("default", &path);
        let (_tx, req) = streaming_request(None);
        let e = fwd.forward_agent(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn construction_checks_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _) = echo_agent(dir.path());
        let spec = |id: &str, paths: Vec<PathBuf>| SshSpec {
            id: id.into(),
            paths,
        };

        // `--ssh default` uses SSH_AUTH_SOCK.
        let f =
            SshForwarder::with_auth_sock(&[spec("default", vec![])], Some(sock.clone())).unwrap();
        assert!(matches!(&f.agents["default"], Agent::Socket(p) if *p == sock));
        let e = SshForwarder::with_auth_sock(&[spec("default", vec![])], None).unwrap_err();
        assert!(e.to_string().contains("SSH_AUTH_SOCK is not set"), "{e}");

        // A regular file is a key file: read when the forwarder is made, errors named.
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let e = SshForwarder::with_auth_sock(&[spec("gh", vec![key.clone()])], None).unwrap_err();
        assert!(matches!(e, SshError::Key { .. }), "{e}");
        assert!(e.to_string().starts_with("--ssh gh="), "{e}");
        // One socket, or only key files.
        let e =
            SshForwarder::with_auth_sock(&[spec("gh", vec![key, sock.clone()])], None).unwrap_err();
        assert!(matches!(e, SshError::SocketAndMore { .. }), "{e}");

        let e = SshForwarder::with_auth_sock(&[spec("gh", vec![dir.path().join("nope")])], None)
            .unwrap_err();
        assert!(matches!(e, SshError::Missing { .. }), "{e}");
        let e =
            SshForwarder::with_auth_sock(&[spec("gh", vec![dir.path().into()])], None).unwrap_err();
        assert!(matches!(e, SshError::NotSocket { .. }), "{e}");
        let e = SshForwarder::with_auth_sock(&[spec("gh", vec![sock.clone(), sock.clone()])], None)
            .unwrap_err();
        assert!(matches!(e, SshError::SocketAndMore { .. }), "{e}");
        let e = SshForwarder::with_auth_sock(
            &[spec("a", vec![sock.clone()]), spec("a", vec![sock.clone()])],
            None,
        )
        .unwrap_err();
        assert!(matches!(e, SshError::Duplicate { .. }), "{e}");
    }

    #[test]
    fn frames_are_split_exactly() {
        let mut buf = agent_msg(11, &[]);
        buf.extend_from_slice(&agent_msg(13, b"abc")[..6]);
        let first = take_frame(&mut buf).unwrap().unwrap();
        assert_eq!(first, vec![0, 0, 0, 1, 11]);
        assert_eq!(take_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"bc");
        assert_eq!(
            take_frame(&mut buf).unwrap().unwrap(),
            agent_msg(13, b"abc")
        );
        assert!(buf.is_empty());
    }
}
