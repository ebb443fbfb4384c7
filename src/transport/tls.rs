//! TLS for every daemon reached over TCP: standalone buildkitd (`tcp://` + `--tls*` flags)
//! and Docker Engine (`DOCKER_TLS_VERIFY` + `DOCKER_CERT_PATH`, a docker context's TLS
//! files, or the `--tls*` flags with `docker://tcp://`). One loader, one rustls client
//! configuration, one handshake, so both kinds accept the same files and fail the same way.
//!
//! Certificates are PEM files: the CA that signed the daemon's certificate (verification is
//! never skipped), and optionally a client certificate and key for mutual TLS. Without a CA
//! file (only possible for a docker context created without `ca=`), the public web PKI roots
//! verify the daemon, as the docker CLI's system roots would.
//!
//! This module knows files, rustls and where a setting came from (to say which flag or
//! variable to change); it does not know HTTP, gRPC or Docker's API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::TransportError;

/// Where a TLS setting came from: decides which flag, variable or context an error message
/// tells the user to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// `--tlscacert`, `--tlscert`, `--tlskey`, `--tlsdir`.
    Flags,
    /// `DOCKER_TLS_VERIFY` (or `DOCKER_TLS`) with the files in `DOCKER_CERT_PATH` (default:
    /// the docker config directory), as the docker CLI reads them.
    DockerEnv { cert_path: PathBuf },
    /// The TLS files stored with a docker context (`contexts/tls/<id>/docker/`).
    DockerContext { name: String, dir: PathBuf },
    /// The `tlscacert`, `tlscert`, `tlskey`, `tlsdir` keys of a table; `of` says which, e.g.
    /// `[builders.ci] in /repo/bk-build.toml`.
    Keys { of: String },
}

/// The files of one TLS client setup, checked to exist; read when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) that verify the daemon; `None`: the web PKI roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name to verify the daemon's certificate for (default: the host connected to).
    pub server_name: Option<String>,
    pub source: TlsSource,
}

impl TlsFiles {
    /// What to change to give the daemon's CA, for messages.
    pub(crate) fn ca_fix(&self) -> String {
        match &self.source {
            TlsSource::Flags => "pass the daemon's CA certificate with --tlscacert FILE".into(),
            TlsSource::Keys { of } => {
                format!("set tlscacert to the daemon's CA certificate in {of}")
            }
            TlsSource::DockerEnv { cert_path } => format!(
                "put the CA certificate that signed the daemon's certificate in {} (DOCKER_CERT_PATH)",
                cert_path.join("ca.pem").display()
            ),
            TlsSource::DockerContext { name, .. } => format!(
                "give the context the daemon's CA: docker context update {name} --docker \"host=…,ca=/path/ca.pem,cert=/path/cert.pem,key=/path/key.pem\""
            ),
        }
    }

    /// What to change to present another (or any) client certificate, for messages.
    pub(crate) fn identity_fix(&self) -> String {
        match &self.source {
            TlsSource::Flags => {
                "pass a client certificate and key issued by the daemon's CA with --tlscert FILE --tlskey FILE"
                    .into()
            }
            TlsSource::Keys { of } => format!(
                "set tlscert and tlskey to a client certificate and key issued by the daemon's CA in {of}"
            ),
            TlsSource::DockerEnv { cert_path } => format!(
                "put a client certificate and key issued by the daemon's CA in {} and {} (DOCKER_CERT_PATH)",
                cert_path.join("cert.pem").display(),
                cert_path.join("key.pem").display()
            ),
            TlsSource::DockerContext { name, .. } => format!(
                "give the context a client certificate issued by the daemon's CA: docker context update {name} --docker \"host=…,ca=/path/ca.pem,cert=/path/cert.pem,key=/path/key.pem\""
            ),
        }
    }

    /// What to change to connect without TLS, for messages.
    pub(crate) fn disable_fix(&self) -> String {
        match &self.source {
            TlsSource::Flags => "drop --tlscacert, --tlscert, --tlskey and --tlsdir".into(),
            TlsSource::Keys { of } => {
                format!("remove the tlscacert, tlscert, tlskey and tlsdir keys from {of}")
            }
            TlsSource::DockerEnv { .. } => {
                "unset DOCKER_TLS_VERIFY and DOCKER_TLS, or point DOCKER_HOST at the daemon's TLS port"
                    .into()
            }
            TlsSource::DockerContext { name, .. } => format!(
                "recreate the context without TLS files (docker context rm {name}; docker context create {name} --docker host=tcp://HOST:PORT), or point it at the daemon's TLS port"
            ),
        }
    }

    /// What asks for TLS, for messages: the setting to change to connect without it.
    pub(crate) fn requested_by(&self) -> String {
        match &self.source {
            TlsSource::Flags => "the --tls* flags".into(),
            TlsSource::Keys { of } => format!("the tls* keys of {of}"),
            // Only DOCKER_TLS_VERIFY turns TLS on; DOCKER_CERT_PATH just says where the files are.
            TlsSource::DockerEnv { .. } => "DOCKER_TLS_VERIFY".into(),
            TlsSource::DockerContext { name, .. } => {
                format!("docker context {name:?} (it has TLS files)")
            }
        }
    }

    /// Where these settings came from, for messages.
    pub(crate) fn origin(&self) -> String {
        match &self.source {
            TlsSource::Flags => "the --tls* flags".into(),
            TlsSource::Keys { of } => format!("the tls* keys of {of}"),
            TlsSource::DockerEnv { cert_path } => {
                format!("DOCKER_CERT_PATH={}", cert_path.display())
            }
            TlsSource::DockerContext { name, dir } => {
                format!("docker context {name:?} ({})", dir.display())
            }
        }
    }

    /// Reads and checks the files into a rustls client configuration offering `alpn`.
    pub(crate) fn client_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                let certs = read_certs(ca, || self.ca_fix())?;
                for c in certs {
                    roots.add(c).map_err(|e| {
                        TransportError::Tls(format!(
                            "{} is not a usable CA certificate ({e}); {}",
                            ca.display(),
                            self.ca_fix()
                        ))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut cfg = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert, || self.identity_fix())?;
                let bytes = read(key)?;
                let pk = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                    let why = if String::from_utf8_lossy(&bytes).contains("ENCRYPTED") {
                        "it is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.plain)"
                            .to_string()
                    } else {
                        format!("no PEM private key in it ({e})")
                    };
                    TransportError::Tls(format!(
                        "{} is not a usable client key: {why}; {}",
                        key.display(),
                        self.identity_fix()
                    ))
                })?;
                builder.with_client_auth_cert(chain, pk).map_err(|e| {
                    TransportError::Tls(format!(
                        "client certificate {} and key {} do not go together ({e}); {}",
                        cert.display(),
                        key.display(),
                        self.identity_fix()
                    ))
                })?
            }
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// The name the daemon's certificate must be valid for.
    pub(crate) fn server_name(&self, host: &str) -> Result<ServerName<'static>, TransportError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_string()).map_err(|_| {
            TransportError::Tls(format!(
                "{name:?} is neither a DNS name nor an IP address, so no certificate can be checked for it"
            ))
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::TlsFile {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    path: &Path,
    fix: impl Fn() -> String,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TransportError::Tls(format!(
                "{} is not a PEM certificate file ({e}); {}",
                path.display(),
                fix()
            ))
        })?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "{} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\"); {}",
            path.display(),
            fix()
        )));
    }
    Ok(certs)
}

/// A TCP connection made TLS: the handshake is done when this returns, so a daemon that does
/// not speak TLS or does not accept us fails here (TLS 1.3 servers reject a client
/// certificate only after the handshake: that shows on the first read).
pub(crate) async fn handshake(
    tcp: tokio::net::TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The rustls error somewhere in `e`'s chain (inside an `io::Error`, as tokio-rustls, hyper
/// and h2 pass it on).
pub(crate) fn rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut found = None;
    super::explain::for_each_cause(e, &mut |c| {
        if found.is_none() {
            found = c.downcast_ref::<rustls::Error>();
        }
    });
    found
}

/// A TLS connection to an HTTP/2 server (buildkitd), after the server's first bytes arrived.
///
/// With TLS 1.3 the client finishes its handshake before the server has checked the client
/// certificate; a server that rejects it sends an alert instead of its first HTTP/2 frames.
/// Reading those first bytes here makes that alert an error of the connection attempt, with
/// its cause, rather than a request the HTTP/2 layer only reports as "canceled". HTTP/2
/// servers speak first (their SETTINGS frame), so this waits for nothing that would not
/// come anyway; a server that did not agree on `h2` is not waited for.
pub(crate) async fn handshake_h2(
    tcp: tokio::net::TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<Prefixed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    use tokio::io::AsyncReadExt;
    let mut tls = handshake(tcp, config, name).await?;
    let mut first = Vec::new();
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let mut buf = vec![0u8; 16 << 10];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection right after the TLS handshake",
            ));
        }
        buf.truncate(n);
        first = buf;
    }
    Ok(Prefixed {
        first,
        pos: 0,
        inner: tls,
    })
}

/// A stream that yields `first` before reading on from `inner`.
pub(crate) struct Prefixed<S> {
    first: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.pos);
            buf.put_slice(&this.first[this.pos..this.pos + n]);
            this.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
