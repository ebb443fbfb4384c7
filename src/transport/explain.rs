//! Turns a failed connection into a sentence that says what happened and what to change.
//!
//! hyper and tonic report most failures as "transport error" or "connection error"; the
//! cause sits further down the error chain (inside `io::Error`s): a TLS alert from the
//! daemon, a certificate rustls refused, ssh's stderr, a refused or reset connection. This
//! module finds it and names the setting to change: `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and
//! `DOCKER_CERT_PATH`, a docker context, or the `--addr`/`--tls*` flags, depending on where
//! the address and TLS files came from.

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

use super::docker::{DockerHost, Endpoint, Origin};
use super::ssh::SshFailure;
use super::tls::{self, TlsFiles};

/// The daemon a connection was for, as far as messages need it.
pub(crate) struct Peer<'a> {
    /// "the Docker Engine at tcp://…", "buildkitd at tcp://…".
    pub what: String,
    /// `Some` for a Docker Engine: where its address came from.
    pub docker: Option<&'a Origin>,
    /// TCP (where TLS is a question) rather than a socket or ssh.
    pub tcp: bool,
    pub tls: Option<&'a TlsFiles>,
    /// Where the TLS settings are keys rather than flags ([`super::TlsOptions::keys_of`]).
    pub keys_of: Option<&'a str>,
}

impl<'a> Peer<'a> {
    pub(crate) fn docker(h: &'a DockerHost) -> Peer<'a> {
        let (tcp, tls) = match &h.endpoint {
            Endpoint::Tcp { tls, .. } => (true, tls.as_ref()),
            _ => (false, None),
        };
        Peer {
            what: format!("the Docker Engine at {h}"),
            docker: Some(&h.origin),
            tcp,
            tls,
            keys_of: None,
        }
    }

    pub(crate) fn buildkitd(addr: String, tcp: bool, tls: Option<&'a TlsFiles>) -> Peer<'a> {
        Peer {
            what: format!("buildkitd at {addr}"),
            docker: None,
            tcp,
            tls,
            keys_of: None,
        }
    }

    /// The same peer, its TLS settings given as the keys of `keys_of` (see
    /// [`super::TlsOptions::keys_of`]).
    pub(crate) fn with_keys_of(mut self, keys_of: Option<&'a str>) -> Peer<'a> {
        self.keys_of = keys_of;
        self
    }

    /// How to give TLS files: the flags, or the keys of the table they belong in.
    fn tls_settings(&self) -> String {
        match self.keys_of {
            Some(of) => format!("set tlscacert, tlscert and tlskey (or tlsdir) in {of}"),
            None => "pass --tlscacert, --tlscert and --tlskey (or --tlsdir DIR)".into(),
        }
    }

    /// Where to look when the address itself is wrong.
    pub(crate) fn setting(&self) -> String {
        match self.docker {
            Some(o) => o.setting(),
            None => "--addr (or BUILDKIT_HOST)".into(),
        }
    }

    /// What to set to speak TLS to this daemon.
    pub(crate) fn enable_tls_fix(&self) -> String {
        match self.docker {
            Some(Origin::Context(name)) => format!(
                "give the docker context its TLS files: docker context update {name} --docker \"host=…,ca=/path/ca.pem,cert=/path/cert.pem,key=/path/key.pem\""
            ),
            Some(Origin::Address) => format!("set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH=DIR (a directory with the daemon's ca.pem and your cert.pem and key.pem), or {}", self.tls_settings()),
            Some(_) => "set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH=DIR (a directory with the daemon's ca.pem and your cert.pem and key.pem)".into(),
            None => self.tls_settings(),
        }
    }
}

/// Calls `f` on `e` and every cause under it, including the error inside each `io::Error`
/// and the I/O error of an HTTP/2 connection (h2 does not give it as a source).
pub(crate) fn for_each_cause<'a>(
    e: &'a (dyn Error + 'static),
    f: &mut dyn FnMut(&'a (dyn Error + 'static)),
) {
    let mut cur = Some(e);
    while let Some(c) = cur {
        f(c);
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                for_each_cause(inner, f);
            }
        }
        if let Some(io) = c.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
            for_each_cause(io, f);
        }
        cur = c.source();
    }
}

/// The innermost `io::ErrorKind` that says something about the connection.
fn io_kind(e: &(dyn Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut kind = None;
    for_each_cause(e, &mut |c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() != std::io::ErrorKind::Other {
                kind = Some(io.kind());
            }
        }
    });
    kind
}

/// What ended an established connection, in a few words.
pub(crate) fn cause(e: &(dyn Error + 'static)) -> String {
    use std::io::ErrorKind as K;
    match io_kind(e) {
        Some(K::ConnectionReset) => "connection reset".into(),
        Some(K::UnexpectedEof | K::BrokenPipe | K::ConnectionAborted) => {
            "the connection was closed".into()
        }
        _ => super::error_chain(e),
    }
}

/// Explains why talking to `peer` failed with `e`, with the fix.
pub(crate) fn explain(peer: &Peer, e: &(dyn Error + 'static)) -> String {
    let detail = super::error_chain(e);
    if let Some(r) = tls::rustls_error(e) {
        return explain_tls(peer, r);
    }
    let mut ssh = None;
    let mut parse = false;
    for_each_cause(e, &mut |c| {
        if let Some(s) = c.downcast_ref::<SshFailure>() {
            ssh.get_or_insert(s);
        }
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            parse |= h.is_parse() || h.is_parse_status();
        }
    });
    if let Some(s) = ssh {
        return explain_ssh(s);
    }
    use std::io::ErrorKind as K;
    let not_tls_hint = || {
        if peer.tcp && peer.tls.is_none() {
            format!(" If it expects TLS, {}.", peer.enable_tls_fix())
        } else {
            String::new()
        }
    };
    match io_kind(e) {
        Some(K::ConnectionRefused) => {
            let how = match peer.docker {
                Some(_) => "Is dockerd running and listening there (dockerd -H …)?",
                None => "Is buildkitd running and listening there (buildkitd --addr …)?",
            };
            format!(
                "cannot reach {}: connection refused, nothing listens there. {how} Check {}.",
                peer.what,
                peer.setting()
            )
        }
        Some(K::NotFound) => format!(
            "cannot reach {}: no such socket. Is the daemon running? Check {}.",
            peer.what,
            peer.setting()
        ),
        Some(K::PermissionDenied) => format!(
            "cannot reach {}: permission denied; run as a user allowed to use that socket (root, or a member of its group). ({detail})",
            peer.what
        ),
        Some(K::TimedOut) => format!(
            "cannot reach {}: timed out; check the address ({}) and the network. ({detail})",
            peer.what,
            peer.setting()
        ),
        Some(K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe) => {
            format!(
                "{} closed the connection ({detail}).{}",
                peer.what,
                not_tls_hint()
            )
        }
        _ if parse => format!(
            "{} did not answer in HTTP ({detail}).{}",
            peer.what,
            not_tls_hint()
        ),
        _ => format!("cannot talk to {}: {detail}.{}", peer.what, not_tls_hint()),
    }
}

/// `peer` was to be reached on the unix socket `path`, which does not exist: no daemon
/// listens there. Says how to start one there, or where else to point.
pub(crate) fn missing_socket(peer: &Peer, path: &std::path::Path) -> String {
    let url = format!("unix://{}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() && !d.is_dir() => {
            format!(" (its directory {} does not exist either)", d.display())
        }
        _ => String::new(),
    };
    let (start, elsewhere) = match peer.docker {
        Some(_) => (
            format!("start dockerd with that socket (`dockerd -H {url}`, or `systemctl start docker` for the default /var/run/docker.sock)"),
            "the socket of a running Docker Engine (`docker context ls` lists the ones the docker CLI knows)",
        ),
        None => (
            format!("start buildkitd on it (`buildkitd --addr {url}`; rootless: `rootlesskit buildkitd`)"),
            "a running daemon: unix:///run/buildkit/buildkitd.sock for a rootful buildkitd, $XDG_RUNTIME_DIR/buildkit/buildkitd.sock for a rootless one, docker:// for the Docker Engine",
        ),
    };
    format!(
        "cannot reach {}: there is no socket at {}{dir}, so no daemon listens there. Either {start}, or point {} at {elsewhere}.",
        peer.what,
        path.display(),
        peer.setting()
    )
}

fn explain_tls(peer: &Peer, r: &rustls::Error) -> String {
    let what = &peer.what;
    let Some(t) = peer.tls else {
        return format!("TLS with {what} failed: {r}");
    };
    match r {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "{what} presented a certificate that the CA in {} did not sign ({r}): {}",
                ca_name(t),
                t.ca_fix()
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let flag = match &t.source {
                    tls::TlsSource::Flags => {
                        ", or name the certificate's host with --tlsservername".to_string()
                    }
                    tls::TlsSource::Keys { of } => {
                        format!(", or name the certificate's host with tlsservername in {of}")
                    }
                    _ => String::new(),
                };
                format!(
                    "{what} presented a certificate that is not valid for that host name ({r}): connect using a name or IP address the certificate was issued for{flag}"
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => format!(
                "{what} presented a certificate that is expired or not yet valid ({r}): renew the daemon's certificate, or check this machine's clock"
            ),
            _ => format!(
                "{what} presented a certificate that failed verification against {} ({r}): {}",
                ca_name(t),
                t.ca_fix()
            ),
        },
        rustls::Error::AlertReceived(a) => match (a, &t.identity) {
            (AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure, None)
            | (
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied,
                None,
            ) => format!(
                "{what} requires a client certificate (mutual TLS), and none is set up (TLS settings from {}; {a:?} from the daemon): {}",
                t.origin(),
                t.identity_fix()
            ),
            (
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied
                | AlertDescription::CertificateRequired
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::HandshakeFailure,
                Some((cert, _)),
            ) => format!(
                "{what} refused the client certificate {} ({a:?} from the daemon): it is not signed by a CA the daemon trusts (its --tlscacert), or is expired; {}",
                cert.display(),
                t.identity_fix()
            ),
            _ => format!("{what} ended the TLS handshake ({a:?} from the daemon): {r}"),
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => format!(
            "{what} does not speak TLS (it answered something else: {r}), but {} asks for TLS: {}",
            t.requested_by(),
            t.disable_fix()
        ),
        _ => format!("TLS with {what} failed ({r}); TLS settings from {}", t.origin()),
    }
}

fn ca_name(t: &TlsFiles) -> String {
    match &t.ca {
        Some(p) => p.display().to_string(),
        None => "the public web PKI".into(),
    }
}

fn explain_ssh(s: &SshFailure) -> String {
    let said = s.stderr.trim();
    let hint = if said.contains("command not found") || said.contains("No such file") {
        "the remote host has no `docker` command on the PATH of a non-interactive ssh session: bk-build runs `docker system dial-stdio` there, like the docker CLI, so install the docker CLI on it"
    } else if said.contains("Permission denied") {
        "ssh could not log in: set up key-based login for that user and host (ssh-agent, or IdentityFile in ~/.ssh/config); bk-build runs ssh like the docker CLI and cannot answer a password prompt"
    } else if said.contains("Host key verification failed") {
        "ssh does not know the host's key: connect once with `ssh HOST` to check and accept it"
    } else if said.contains("Cannot connect to the Docker daemon") || said.contains("docker.sock") {
        "ssh logged in, but no Docker Engine answers on the remote host's socket: start dockerd there, or put the socket path in the URL (ssh://HOST/path/to/docker.sock)"
    } else {
        "check that `ssh HOST docker system dial-stdio` works from this shell"
    };
    format!("{s}: {hint}")
}

/// Whether an HTTP answer is a TLS server's refusal of plain HTTP (Go's servers answer
/// `400 Client sent an HTTP request to an HTTPS server.`; others word it alike).
pub(crate) fn is_https_refusal(status: http::StatusCode, body: &[u8]) -> bool {
    status == http::StatusCode::BAD_REQUEST
        && String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("https")
}

/// `peer` was sent plain HTTP and answered that it wants TLS.
pub(crate) fn plain_to_tls(peer: &Peer) -> String {
    format!(
        "{} expects TLS, and bk-build connected without TLS: {}",
        peer.what,
        peer.enable_tls_fix()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_servers_refusal_of_plain_http_is_recognised() {
        // Go's answer to plain HTTP on a TLS listener (dockerd --tlsverify).
        let go = b"Client sent an HTTP request to an HTTPS server.\n";
        assert!(is_https_refusal(http::StatusCode::BAD_REQUEST, go));
        assert!(!is_https_refusal(http::StatusCode::OK, go));
        assert!(!is_https_refusal(
            http::StatusCode::BAD_REQUEST,
            br#"{"message":"invalid reference format"}"#
        ));
    }

    #[test]
    fn causes_are_found_inside_io_errors() {
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let outer = std::io::Error::other(io);
        assert!(matches!(
            tls::rustls_error(&outer),
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))
        ));
        let refused =
            std::io::Error::other(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            io_kind(&refused),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        let peer = Peer::buildkitd("tcp://h:1".into(), true, None);
        let msg = explain(&peer, &refused);
        assert!(
            msg.contains("connection refused") && msg.contains("--addr"),
            "{msg}"
        );
    }
}
