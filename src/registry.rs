//! Asking a registry whether an image reference exists and what its manifest digest is, for
//! bake's skip rule and for dropping cache imports that are not there. Plain HTTP for local
//! registries (`localhost`, `127.0.0.1`, like Docker's default insecure rule); other
//! registries are reported as "cannot check" (the caller then rebuilds, which is safe).
//!
//! Knows image references and the registry HTTP API; nothing about builds.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {0:?}")]
    BadReference(String),
    #[error("{host}: {why}")]
    Unreachable { host: String, why: String },
    #[error("{host}: only local registries (localhost, 127.0.0.1) can be checked without TLS")]
    Unsupported { host: String },
}

/// A parsed `host[:port]/repo[:tag|@digest]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub repository: String,
    /// Tag or `sha256:…` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = || RegistryError::BadReference(s.to_string());
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(bad());
        }
        let (name, reference) = match s.split_once('@') {
            Some((n, d)) => (n, d.to_string()),
            None => {
                // A ':' after the last '/' is a tag; before it, a port.
                let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
                match s[slash..].rfind(':') {
                    Some(i) => (&s[..slash + i], s[slash + i + 1..].to_string()),
                    None => (s, "latest".to_string()),
                }
            }
        };
        let (host, repository) = match name.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), r.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if host == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || reference.is_empty() {
            return Err(bad());
        }
        Ok(Reference {
            host,
            repository,
            reference,
        })
    }

    fn is_local(&self) -> bool {
        let h = self.host.split(':').next().unwrap_or("");
        h == "localhost" || h == "127.0.0.1" || h == "[::1]"
    }
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest digest `reference` resolves to, or `None` when the registry does not have it.
pub async fn manifest_digest(reference: &str) -> Result<Option<String>, RegistryError> {
    let r = Reference::parse(reference)?;
    if !r.is_local() {
        return Err(RegistryError::Unsupported { host: r.host });
    }
    let unreachable = |why: String| RegistryError::Unreachable {
        host: r.host.clone(),
        why,
    };
    let addr = r.host.replace("localhost", "127.0.0.1");
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| unreachable("no answer within 5s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::head(format!("/v2/{}/manifests/{}", r.repository, r.reference))
        .header(http::header::HOST, &r.host)
        .header(http::header::ACCEPT, ACCEPT)
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let _ = resp.into_body().collect().await;
    match status {
        http::StatusCode::OK => Ok(digest),
        http::StatusCode::NOT_FOUND => Ok(None),
        s => Err(unreachable(format!(
            "HEAD manifest {}:{} answered {s}",
            r.repository, r.reference
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = Reference::parse("localhost:5000/acme/pybase:dev").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("localhost:5000", "acme/pybase", "dev")
        );
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("docker.io", "library/busybox", "latest")
        );
        let r = Reference::parse("localhost:5000/x@sha256:abc").unwrap();
        assert_eq!(r.reference, "sha256:abc");
        assert_eq!(r.repository, "x");
        let r = Reference::parse("ghcr.io/o/r").unwrap();
        assert_eq!(
            (r.host.as_str(), r.reference.as_str()),
            ("ghcr.io", "latest")
        );
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("a b").is_err());
        assert!(!Reference::parse("ghcr.io/o/r").unwrap().is_local());
        assert!(Reference::parse("localhost:5000/a").unwrap().is_local());
    }
}
