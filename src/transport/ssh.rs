//! `DOCKER_HOST=ssh://[user@]host[:port][/socket]`, reached the way the docker CLI reaches it:
//! run the local `ssh` client with `docker system dial-stdio` as the remote command, and
//! speak HTTP (and then gRPC) over the process's stdin and stdout. Authentication, host keys,
//! jump hosts and the like are whatever the user's ssh configuration says.
//!
//! The command line follows docker/cli's `connhelper`: `ssh [-l USER] [-p PORT] -o
//! ConnectTimeout=30 -T -- HOST docker system dial-stdio`, and with a socket path in the URL
//! `docker --host=unix://PATH system dial-stdio`. The URL may not carry a password, query or
//! fragment.
//!
//! What ssh prints on stderr (a refused login, an unknown host, `docker: command not found`)
//! is kept, and reported when the connection ends without an answer.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// A parsed `ssh://` Docker host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The engine's socket on the remote host (the URL's path), if not the default.
    pub socket: Option<String>,
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(s) = &self.socket {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl SshTarget {
    /// Parses what follows `ssh://`. Errors say what is wrong with the URL.
    pub fn parse(rest: &str) -> Result<SshTarget, String> {
        if rest.contains('?') {
            return Err("query parameters are not allowed in an ssh:// Docker host".into());
        }
        if rest.contains('#') {
            return Err("fragments are not allowed in an ssh:// Docker host".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if let Some(u) = user {
            if u.contains(':') {
                return Err(
                    "a password in the URL is not supported: use ssh keys or an agent".into(),
                );
            }
            if u.is_empty() {
                return Err("the user name before '@' is empty".into());
            }
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs a closing ']'")?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected :PORT after ']'")?),
            };
            (h, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("the host name is empty".into());
        }
        // ssh would take a host or user starting with '-' for an option.
        if host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
            return Err("a host or user name may not start with '-'".into());
        }
        let port = match port {
            None | Some("") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
            ),
        };
        let socket = (!path.trim_matches('/').is_empty()).then(|| path.to_string());
        Ok(SshTarget {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            socket,
        })
    }

    /// The arguments after `ssh`, as docker/cli's connection helper builds them.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(u) = &self.user {
            args.extend(["-l".to_string(), u.clone()]);
        }
        if let Some(p) = self.port {
            args.extend(["-p".to_string(), p.to_string()]);
        }
        args.extend(["-o", "ConnectTimeout=30", "-T", "--"].map(String::from));
        args.push(self.host.clone());
        let mut remote = vec!["docker".to_string()];
        if let Some(s) = &self.socket {
            remote.push(format!("--host=unix://{s}"));
        }
        remote.extend(["system", "dial-stdio"].map(String::from));
        // ssh hands the remote command to the user's shell as one string.
        args.push(
            remote
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
        args
    }
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Why an ssh connection ended without an answer: ssh's own words.
#[derive(Debug)]
pub struct SshFailure {
    pub target: String,
    pub stderr: String,
}

impl std::fmt::Display for SshFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ssh to {} ended: {}",
            self.target,
            self.stderr.trim().replace('\n', "; ")
        )
    }
}

impl std::error::Error for SshFailure {}

/// One `ssh … docker system dial-stdio` process as a byte stream.
pub struct SshStream {
    // Dropping the child kills ssh (kill_on_drop), which ends the remote dial-stdio.
    _child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: Arc<Mutex<String>>,
    stderr_closed: Option<tokio::sync::oneshot::Receiver<()>>,
    target: String,
}

/// Starts ssh for `target`.
pub async fn dial(target: &SshTarget) -> std::io::Result<SshStream> {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(target.ssh_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot run `ssh` to reach {target} ({e}): the Docker host is an ssh:// URL, which needs the OpenSSH client on PATH"
            ),
        )
    })?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("ssh started without a stdout pipe"))?;
    let mut err_pipe = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("ssh started without a stderr pipe"))?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sink = stderr.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                // Keep the start: that is where ssh says what went wrong; bounded.
                if s.len() < 16 << 10 {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        }
        let _ = tx.send(());
    });
    Ok(SshStream {
        _child: child,
        stdin,
        stdout,
        stderr,
        stderr_closed: Some(rx),
        target: target.to_string(),
    })
}

impl SshStream {
    /// Once ssh has closed its stderr: why the connection ended, if ssh said (`None`: it
    /// said nothing, a plain end of stream).
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Error>> {
        if let Some(rx) = self.stderr_closed.as_mut() {
            if Pin::new(rx).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.stderr_closed = None;
        }
        let said = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let said: String = said
            .lines()
            // ssh's notes about known_hosts are not why a connection ended.
            .filter(|l| !l.starts_with("Warning: Permanently added"))
            .collect::<Vec<_>>()
            .join("\n");
        if said.trim().is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            SshFailure {
                target: self.target.clone(),
                stderr: said,
            },
        )))
    }
}

impl AsyncRead for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stdout).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {}
            other => return other,
        }
        // End of stream: if ssh said why, that is the error.
        match std::task::ready!(this.poll_failure(cx)) {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(w) = this.stdin.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        };
        match Pin::new(w).poll_write(cx, buf) {
            // ssh exited: its words say more than "broken pipe".
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                Poll::Ready(Err(std::task::ready!(this.poll_failure(cx)).unwrap_or(e)))
            }
            other => other,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().stdin.as_mut() {
            Some(w) => Pin::new(w).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(w) = this.stdin.as_mut() {
            std::task::ready!(Pin::new(w).poll_shutdown(cx))?;
        }
        // Closing stdin tells dial-stdio to close its half of the connection.
        this.stdin = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_docker_cli() {
        let t = SshTarget::parse("me@build-host:2222").unwrap();
        assert_eq!(
            t,
            SshTarget {
                user: Some("me".into()),
                host: "build-host".into(),
                port: Some(2222),
                socket: None
            }
        );
        assert_eq!(
            t.ssh_args(),
            [
                "-l",
                "me",
                "-p",
                "2222",
                "-o",
                "ConnectTimeout=30",
                "-T",
                "--",
                "build-host",
                "docker system dial-stdio"
            ]
        );
        let t = SshTarget::parse("h/run/user/1000/docker.sock").unwrap();
        assert_eq!(t.socket.as_deref(), Some("/run/user/1000/docker.sock"));
        assert_eq!(
            t.ssh_args().last().unwrap(),
            "docker --host=unix:///run/user/1000/docker.sock system dial-stdio"
        );
        assert_eq!(t.to_string(), "ssh://h/run/user/1000/docker.sock");
        let t = SshTarget::parse("[::1]:22/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.socket), ("::1", Some(22), None));
        assert_eq!(
            shell_quote("/a b/it's"),
            r"'/a b/it'\''s'",
            "paths with spaces and quotes reach the remote shell whole"
        );
        for (bad, why) in [
            ("me:pw@h", "password"),
            ("h?x=1", "query"),
            ("h#f", "fragment"),
            ("", "empty"),
            ("me@", "empty"),
            ("h:99999", "port"),
            ("-oProxyCommand=x", "'-'"),
        ] {
            let e = SshTarget::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
