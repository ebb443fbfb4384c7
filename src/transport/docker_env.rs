//! Which Docker Engine to use, decided as the docker CLI decides it (docker/cli
//! `cli/command/cli.go` `resolveContextName`, `cli/flags/options.go`, `cli/context/store`):
//!
//! 1. `DOCKER_HOST` set (non-empty) — that host, TLS from the environment: when
//!    `DOCKER_TLS_VERIFY` or `DOCKER_TLS` is non-empty (any value, even `0`), a `tcp://`
//!    host uses TLS with `ca.pem`, `cert.pem`, `key.pem` from `DOCKER_CERT_PATH` (default:
//!    the docker config directory). `ca.pem` must exist; without `cert.pem`/`key.pem` no
//!    client certificate is sent. TLS settings are ignored for `unix://` and `ssh://`.
//! 2. Else the context named by `DOCKER_CONTEXT`, else `currentContext` in
//!    `$DOCKER_CONFIG/config.json` (`DOCKER_CONFIG` defaults to `~/.docker`).
//! 3. Context `default` (or none of the above): `/var/run/docker.sock`, or
//!    `tcp://localhost:2376` when the TLS variables are set.
//!
//! A named context lives in `$DOCKER_CONFIG/contexts/meta/<sha256 of the name>/meta.json`
//! (`Endpoints.docker.Host`, `Endpoints.docker.SkipTLSVerify`), its TLS files in
//! `$DOCKER_CONFIG/contexts/tls/<sha256 of the name>/docker/{ca,cert,key}.pem`. A `tcp://`
//! context with TLS files uses TLS; one without uses plain TCP.
//!
//! bk-build never connects without verifying the daemon's certificate: `DOCKER_TLS` without
//! `DOCKER_TLS_VERIFY`, and contexts with `SkipTLSVerify`, are refused with a message
//! instead of being trusted blindly.

use std::path::{Path, PathBuf};

use sha2::Digest;

use super::docker::{DockerHost, Endpoint, Origin};
use super::tls::{TlsFiles, TlsSource};
use super::TransportError;

/// Reads an environment variable; a function so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, empty values read as unset (as the docker CLI does).
pub fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The docker config directory: `$DOCKER_CONFIG`, else `$HOME/.docker`.
fn config_dir(env: Env) -> Result<PathBuf, TransportError> {
    if let Some(d) = env("DOCKER_CONFIG") {
        return Ok(PathBuf::from(d));
    }
    env("HOME")
        .map(|h| Path::new(&h).join(".docker"))
        .ok_or_else(|| TransportError::DockerConfig("neither DOCKER_CONFIG nor HOME is set, so the docker config directory is unknown; set DOCKER_HOST or DOCKER_CONFIG".into()))
}

/// The Docker Engine the docker CLI would talk to in this environment.
pub fn resolve(env: Env) -> Result<DockerHost, TransportError> {
    if let Some(h) = env("DOCKER_HOST") {
        let endpoint = Endpoint::parse(h.trim())?;
        return Ok(DockerHost {
            endpoint: with_env_tls(endpoint, env)?,
            origin: Origin::DockerHostEnv,
        });
    }
    let name = match env("DOCKER_CONTEXT") {
        Some(n) => Some((n, "DOCKER_CONTEXT")),
        None => current_context(env)?.map(|n| (n, "currentContext")),
    };
    match name {
        Some((n, _)) if n != "default" => context(env, &n),
        _ => {
            let tls = env_tls_requested(env);
            let endpoint = if tls {
                Endpoint::Tcp {
                    host: "localhost".into(),
                    port: 2376,
                    tls: None,
                }
            } else {
                Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))
            };
            Ok(DockerHost {
                endpoint: with_env_tls(endpoint, env)?,
                origin: Origin::Default,
            })
        }
    }
}

fn env_tls_requested(env: Env) -> bool {
    env("DOCKER_TLS_VERIFY").is_some() || env("DOCKER_TLS").is_some()
}

/// Adds the TLS settings of `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH` to a `tcp://` endpoint
/// without TLS of its own.
pub fn with_env_tls(endpoint: Endpoint, env: Env) -> Result<Endpoint, TransportError> {
    let (host, port) = match endpoint {
        Endpoint::Tcp {
            host,
            port,
            tls: None,
        } => (host, port),
        other => return Ok(other),
    };
    if !env_tls_requested(env) {
        return Ok(Endpoint::Tcp {
            host,
            port,
            tls: None,
        });
    }
    if env("DOCKER_TLS_VERIFY").is_none() {
        return Err(TransportError::Tls(
            "DOCKER_TLS is set without DOCKER_TLS_VERIFY, which asks for TLS without checking the daemon's certificate; bk-build always checks it: set DOCKER_TLS_VERIFY=1 and put the daemon's CA in DOCKER_CERT_PATH/ca.pem".into(),
        ));
    }
    let dir = match env("DOCKER_CERT_PATH") {
        Some(d) => PathBuf::from(d),
        None => config_dir(env)?,
    };
    let ca = dir.join("ca.pem");
    if !ca.is_file() {
        return Err(TransportError::Tls(format!(
            "DOCKER_TLS_VERIFY is set, but there is no {}: put the CA certificate that signed the daemon's certificate there, or point DOCKER_CERT_PATH at the directory that has ca.pem, cert.pem and key.pem",
            ca.display()
        )));
    }
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let identity = match (cert.is_file(), key.is_file()) {
        (true, true) => Some((cert, key)),
        (false, false) => None,
        (true, false) => {
            return Err(TransportError::Tls(format!(
                "{} exists without {}: put the client key beside its certificate (or remove both to connect without a client certificate)",
                cert.display(),
                key.display()
            )))
        }
        (false, true) => {
            return Err(TransportError::Tls(format!(
                "{} exists without {}: put the client certificate beside its key (or remove both to connect without a client certificate)",
                key.display(),
                cert.display()
            )))
        }
    };
    Ok(Endpoint::Tcp {
        host,
        port,
        tls: Some(TlsFiles {
            ca: Some(ca),
            identity,
            server_name: None,
            source: TlsSource::DockerEnv { cert_path: dir },
        }),
    })
}

/// `currentContext` from the docker config file, if it names one.
fn current_context(env: Env) -> Result<Option<String>, TransportError> {
    let file = config_dir(env)?.join("config.json");
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(TransportError::DockerConfig(format!(
                "cannot read {}: {e}",
                file.display()
            )))
        }
    };
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(rename = "currentContext", default)]
        current_context: Option<String>,
    }
    let c: Config = serde_json::from_slice(&bytes).map_err(|e| {
        TransportError::DockerConfig(format!(
            "{} is not valid JSON ({e}); fix or remove it",
            file.display()
        ))
    })?;
    Ok(c.current_context.filter(|n| !n.is_empty()))
}

/// The directory name the context store files a context under: the hex SHA-256 of its name.
fn context_id(name: &str) -> String {
    let digest = sha2::Sha256::digest(name.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Docker endpoint of context `name`.
fn context(env: Env, name: &str) -> Result<DockerHost, TransportError> {
    let root = config_dir(env)?.join("contexts");
    let id = context_id(name);
    let meta_file = root.join("meta").join(&id).join("meta.json");
    let bad = |why: String| TransportError::DockerConfig(format!("docker context {name:?}: {why}"));
    let bytes = std::fs::read(&meta_file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            bad(format!(
                "not found (no {}); list contexts with `docker context ls`, or unset DOCKER_CONTEXT / run `docker context use default`",
                meta_file.display()
            ))
        } else {
            bad(format!("cannot read {}: {e}", meta_file.display()))
        }
    })?;
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "Endpoints", default)]
        endpoints: std::collections::BTreeMap<String, serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    struct DockerEndpointMeta {
        #[serde(rename = "Host", default)]
        host: String,
        #[serde(rename = "SkipTLSVerify", default)]
        skip_tls_verify: bool,
    }
    let meta: Meta = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{} is not valid JSON: {e}", meta_file.display())))?;
    let ep = meta
        .endpoints
        .get("docker")
        .ok_or_else(|| bad(format!("{} has no docker endpoint", meta_file.display())))?;
    let ep: DockerEndpointMeta = serde_json::from_value(ep.clone()).map_err(|e| {
        bad(format!(
            "the docker endpoint in {} is not what a context holds: {e}",
            meta_file.display()
        ))
    })?;
    if ep.host.trim().is_empty() {
        return Err(bad(format!(
            "{} gives no Host for the docker endpoint",
            meta_file.display()
        )));
    }
    let endpoint = Endpoint::parse(ep.host.trim()).map_err(|e| bad(e.to_string()))?;
    let tls_dir = root.join("tls").join(&id).join("docker");
    let endpoint = match endpoint {
        Endpoint::Tcp { host, port, .. } => {
            if ep.skip_tls_verify {
                return Err(bad(
                    "it sets SkipTLSVerify, which connects without checking the daemon's certificate; bk-build always checks it: recreate the context with ca=/path/ca.pem (docker context update NAME --docker \"host=…,ca=…,cert=…,key=…,skip-tls-verify=false\")".into(),
                ));
            }
            let file = |n: &str| Some(tls_dir.join(n)).filter(|p| p.is_file());
            let (ca, cert, key) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
            let tls = if ca.is_none() && cert.is_none() && key.is_none() {
                None
            } else {
                let identity = match (cert, key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => {
                        return Err(bad(format!(
                            "{} has only one of cert.pem and key.pem: give the context both (docker context update {name} --docker \"host=…,ca=…,cert=…,key=…\")",
                            tls_dir.display()
                        )))
                    }
                };
                Some(TlsFiles {
                    ca,
                    identity,
                    server_name: None,
                    source: TlsSource::DockerContext {
                        name: name.to_string(),
                        dir: tls_dir.clone(),
                    },
                })
            };
            Endpoint::Tcp { host, port, tls }
        }
        other => other,
    };
    Ok(DockerHost {
        endpoint,
        origin: Origin::Context(name.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned().filter(|v| !v.is_empty())
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    /// A context store laid out as `docker context create` writes it.
    fn make_context(cfg: &Path, name: &str, host: &str, tls: &[&str]) {
        let id = context_id(name);
        write(
            &cfg.join("contexts/meta").join(&id).join("meta.json"),
            &serde_json::json!({
                "Name": name, "Metadata": {},
                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}}
            })
            .to_string(),
        );
        for f in tls {
            write(
                &cfg.join("contexts/tls").join(&id).join("docker").join(f),
                "x",
            );
        }
    }

    #[test]
    fn context_ids_are_the_sha256_of_the_name() {
        // `printf default | sha256sum`
        assert_eq!(
            context_id("default"),
            "37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f"
        );
    }

    #[test]
    fn docker_host_wins_over_contexts_and_takes_tls_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path();
        make_context(cfg, "remote", "tcp://10.0.0.9:2376", &["ca.pem"]);
        write(&cfg.join("config.json"), r#"{"currentContext":"remote"}"#);
        write(&cfg.join("certs/ca.pem"), "x");
        write(&cfg.join("certs/cert.pem"), "x");
        write(&cfg.join("certs/key.pem"), "x");
        let c = cfg.to_str().unwrap();
        let certs = cfg.join("certs");
        let e = env_of(&[
            ("DOCKER_CONFIG", c),
            ("DOCKER_CONTEXT", "remote"),
            ("DOCKER_HOST", "tcp://127.0.0.1:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", certs.to_str().unwrap()),
        ]);
        let h = resolve(&e).unwrap();
        assert_eq!(h.origin, Origin::DockerHostEnv);
        let Endpoint::Tcp { host, port, tls } = h.endpoint else {
            panic!("{h:?}")
        };
        assert_eq!((host.as_str(), port), ("127.0.0.1", 2376));
        let tls = tls.unwrap();
        assert_eq!(tls.ca, Some(certs.join("ca.pem")));
        assert_eq!(
            tls.identity,
            Some((certs.join("cert.pem"), certs.join("key.pem")))
        );
        // Without DOCKER_TLS_VERIFY the same host is plain TCP.
        let e = env_of(&[
            ("DOCKER_CONFIG", c),
            ("DOCKER_HOST", "tcp://127.0.0.1:2375"),
        ]);
        assert!(matches!(
            resolve(&e).unwrap().endpoint,
            Endpoint::Tcp { tls: None, .. }
        ));
        // DOCKER_CERT_PATH defaults to the config directory, which has no ca.pem here.
        let e = env_of(&[
            ("DOCKER_CONFIG", c),
            ("DOCKER_HOST", "tcp://127.0.0.1:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
        ]);
        let err = resolve(&e).unwrap_err().to_string();
        assert!(
            err.contains(&cfg.join("ca.pem").display().to_string()),
            "{err}"
        );
        // TLS settings do not apply to sockets.
        let e = env_of(&[
            ("DOCKER_HOST", "unix:///x.sock"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", "/nonexistent"),
        ]);
        assert_eq!(
            resolve(&e).unwrap().endpoint,
            Endpoint::Unix("/x.sock".into())
        );
        // Verification is never skipped.
        let e = env_of(&[("DOCKER_HOST", "tcp://h:2376"), ("DOCKER_TLS", "1")]);
        assert!(resolve(&e)
            .unwrap_err()
            .to_string()
            .contains("DOCKER_TLS_VERIFY=1"));
    }

    #[test]
    fn contexts_come_from_docker_context_then_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path();
        let c = cfg.to_str().unwrap();
        make_context(
            cfg,
            "tls",
            "tcp://127.0.0.1:2376",
            &["ca.pem", "cert.pem", "key.pem"],
        );
        make_context(cfg, "plain", "tcp://127.0.0.1:2375", &[]);
        make_context(cfg, "over-ssh", "ssh://me@h:2222", &[]);
        write(&cfg.join("config.json"), r#"{"currentContext":"tls"}"#);

        let h = resolve(&env_of(&[("DOCKER_CONFIG", c)])).unwrap();
        assert_eq!(h.origin, Origin::Context("tls".into()));
        let Endpoint::Tcp { tls: Some(t), .. } = &h.endpoint else {
            panic!("{h:?}")
        };
        let tls_dir = cfg
            .join("contexts/tls")
            .join(context_id("tls"))
            .join("docker");
        assert_eq!(t.ca, Some(tls_dir.join("ca.pem")));
        assert_eq!(
            t.identity,
            Some((tls_dir.join("cert.pem"), tls_dir.join("key.pem")))
        );

        let h = resolve(&env_of(&[
            ("DOCKER_CONFIG", c),
            ("DOCKER_CONTEXT", "plain"),
        ]))
        .unwrap();
        assert!(matches!(
            h.endpoint,
            Endpoint::Tcp {
                tls: None,
                port: 2375,
                ..
            }
        ));
        let h = resolve(&env_of(&[
            ("DOCKER_CONFIG", c),
            ("DOCKER_CONTEXT", "over-ssh"),
        ]))
        .unwrap();
        assert!(matches!(h.endpoint, Endpoint::Ssh(ref t) if t.port == Some(2222)));
        // `default` is the environment's engine, not a stored context.
        let h = resolve(&env_of(&[
            ("DOCKER_CONFIG", c),
            ("DOCKER_CONTEXT", "default"),
        ]))
        .unwrap();
        assert_eq!(h.endpoint, Endpoint::Unix(DEFAULT_SOCKET.into()));

        let err = resolve(&env_of(&[("DOCKER_CONFIG", c), ("DOCKER_CONTEXT", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("not found"),
            "{err}"
        );

        // A context that skips verification is refused, not trusted blindly.
        make_context(cfg, "insecure", "tcp://h:2376", &["cert.pem", "key.pem"]);
        let meta = cfg
            .join("contexts/meta")
            .join(context_id("insecure"))
            .join("meta.json");
        let text = std::fs::read_to_string(&meta).unwrap();
        std::fs::write(
            &meta,
            text.replace("\"SkipTLSVerify\":false", "\"SkipTLSVerify\":true"),
        )
        .unwrap();
        let err = resolve(&env_of(&[
            ("DOCKER_CONFIG", c),
            ("DOCKER_CONTEXT", "insecure"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("SkipTLSVerify"), "{err}");

        // HOME/.docker when DOCKER_CONFIG is unset.
        let home = tempfile::tempdir().unwrap();
        make_context(&home.path().join(".docker"), "plain", "tcp://h:1", &[]);
        let h = resolve(&env_of(&[
            ("HOME", home.path().to_str().unwrap()),
            ("DOCKER_CONTEXT", "plain"),
        ]))
        .unwrap();
        assert!(matches!(h.endpoint, Endpoint::Tcp { port: 1, .. }));

        // No config at all: the default socket.
        let empty = tempfile::tempdir().unwrap();
        let h = resolve(&env_of(&[(
            "DOCKER_CONFIG",
            empty.path().to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(h.endpoint, Endpoint::Unix(DEFAULT_SOCKET.into()));
        assert_eq!(h.origin, Origin::Default);
    }
}
