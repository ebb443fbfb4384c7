//! Registry credentials served to the daemon (`/moby.filesync.v1.Auth/Credentials`).
//!
//! Owns the client-side lookup Docker uses: `$DOCKER_CONFIG/config.json` (or
//! `~/.docker/config.json`), `credHelpers` → `credsStore` → `auths`, and the
//! `docker-credential-<name> get` helper protocol, with a short per-host cache because cloud
//! helpers mint short-lived tokens. The daemon asks per registry host when it meets a 401.
//!
//! Must not know about the tunnel, images or what is being built. Token-authority mode
//! (`FetchToken`, `GetTokenAuthority`, `VerifyTokenAuthority`) is not offered: answering
//! `Unimplemented` makes the daemon fall back to `Credentials` and fetch tokens itself.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

use crate::proto::moby::filesync::v1::{
    auth_server::Auth, CredentialsRequest, CredentialsResponse, FetchTokenRequest,
    FetchTokenResponse, GetTokenAuthorityRequest, GetTokenAuthorityResponse,
    VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};

/// Docker Hub's config key; `docker login` stores Hub credentials under it.
const HUB_SERVER_URL: &str = "https://index.docker.io/v1/";
/// Host names that all mean Docker Hub (the daemon asks for `registry-1.docker.io`).
const HUB_HOSTS: &[&str] = &["registry-1.docker.io", "index.docker.io", "docker.io"];
/// buildx re-reads after this long, so short-lived cloud tokens are refreshed mid-build.
const CACHE_TTL: Duration = Duration::from_secs(4 * 60 + 50);
/// The daemon gives up on an Auth call after 60 s; a hung helper must not outlive that.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Credentials for one registry. An identity token comes back as an empty `username` with the
/// token in `secret`, which is what the daemon expects.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret: Debug output ends up in logs.
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why credentials could not be looked up. Each variant says where the problem is and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read Docker config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Docker config {path} is not valid JSON: {source}; fix the file or point DOCKER_CONFIG elsewhere")]
    ParseConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the \"auth\" entry for {key:?} in {path} is not base64 of USER:PASSWORD; run `docker login {key}` again")]
    BadAuthEntry { path: PathBuf, key: String },
    #[error("credential helper docker-credential-{helper} (set by {origin} in {path}) was not found on PATH; install it, or remove {origin} from the config")]
    HelperMissing {
        helper: String,
        origin: String,
        path: PathBuf,
    },
    #[error("credential helper docker-credential-{helper} failed for {server}: {message}")]
    HelperFailed {
        helper: String,
        server: String,
        message: String,
    },
    #[error("credential helper docker-credential-{helper} did not answer for {server} within {} s", timeout.as_secs())]
    HelperTimeout {
        helper: String,
        server: String,
        timeout: Duration,
    },
}

/// Serves `Auth` from the Docker config. Cheap to share; results are cached per host.
pub struct AuthProvider {
    /// Directory holding `config.json`; `None` when neither `DOCKER_CONFIG` nor `HOME` is set.
    config_dir: Option<PathBuf>,
    /// `PATH` used to find `docker-credential-*` helpers.
    search_path: Option<OsString>,
    helper_timeout: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<RegistryCredentials>)>>,
    /// Serializes cache misses: the daemon asks for the same host from many concurrent layer
    /// pulls, and one helper run should answer them all.
    miss_lock: tokio::sync::Mutex<()>,
}

impl AuthProvider {
    /// Uses `$DOCKER_CONFIG` (or `~/.docker`) and `$PATH`, like the Docker CLI.
    pub fn from_env() -> Self {
        let config_dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".docker"))
            });
        Self::new(config_dir, std::env::var_os("PATH"))
    }

    /// An explicit config directory and helper search path (tests, or a `--config` flag).
    pub fn new(config_dir: Option<PathBuf>, search_path: Option<OsString>) -> Self {
        AuthProvider {
            config_dir,
            search_path,
            helper_timeout: HELPER_TIMEOUT,
            cache: Mutex::new(HashMap::new()),
            miss_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Credentials for a registry host as the daemon names it (`registry-1.docker.io`,
    /// `ghcr.io`, `localhost:5000`); `None` means anonymous.
    pub async fn lookup(&self, host: &str) -> Result<Option<RegistryCredentials>, AuthError> {
        if let Some(hit) = self.cached(host) {
            return Ok(hit);
        }
        let _guard = self.miss_lock.lock().await;
        if let Some(hit) = self.cached(host) {
            return Ok(hit);
        }
        let creds = self.lookup_uncached(host).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(host.to_string(), (Instant::now(), creds.clone()));
        }
        Ok(creds)
    }

    fn cached(&self, host: &str) -> Option<Option<RegistryCredentials>> {
        let cache = self.cache.lock().ok()?;
        let (at, creds) = cache.get(host)?;
        (at.elapsed() < CACHE_TTL).then(|| creds.clone())
    }

    async fn lookup_uncached(&self, host: &str) -> Result<Option<RegistryCredentials>, AuthError> {
        let Some(dir) = &self.config_dir else {
            return Ok(None);
        };
        let path = dir.join("config.json");
        let Some(config) = read_config(&path)? else {
            return Ok(None);
        };
        let hub = HUB_HOSTS.contains(&host);
        // The address helpers are asked about: what `docker login` stored it under.
        let server_url = if hub { HUB_SERVER_URL } else { host };

        if let Some(helper) =
            find_entry(&config.cred_helpers, server_url, hub).filter(|h| !h.is_empty())
        {
            return self
                .run_helper(helper, "credHelpers", &path, server_url)
                .await;
        }
        if let Some(store) = config.creds_store.as_deref().filter(|s| !s.is_empty()) {
            return self
                .run_helper(store, "credsStore", &path, server_url)
                .await;
        }
        match find_entry(&config.auths, server_url, hub) {
            Some(entry) => entry_credentials(entry, &path, server_url),
            None => Ok(None),
        }
    }

    async fn run_helper(
        &self,
        helper: &str,
        origin: &str,
        config_path: &Path,
        server_url: &str,
    ) -> Result<Option<RegistryCredentials>, AuthError> {
        let program = format!("docker-credential-{helper}");
        let Some(exe) = find_program(&program, self.search_path.as_deref()) else {
            return Err(AuthError::HelperMissing {
                helper: helper.to_string(),
                origin: origin.to_string(),
                path: config_path.to_path_buf(),
            });
        };
        let failed = |message: String| AuthError::HelperFailed {
            helper: helper.to_string(),
            server: server_url.to_string(),
            message,
        };
        let run = async {
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("get")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(p) = &self.search_path {
                cmd.env("PATH", p);
            }
            let mut child = spawn_retrying(&mut cmd)
                .await
                .map_err(|e| failed(format!("cannot start {}: {e}", exe.display())))?;
            if let Some(mut stdin) = child.stdin.take() {
                // A helper that exits without reading stdin is fine; its output decides.
                let _ = stdin.write_all(server_url.as_bytes()).await;
            }
            child
                .wait_with_output()
                .await
                .map_err(|e| failed(format!("cannot read its output: {e}")))
        };
        let output = match tokio::time::timeout(self.helper_timeout, run).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(AuthError::HelperTimeout {
                    helper: helper.to_string(),
                    server: server_url.to_string(),
                    timeout: self.helper_timeout,
                })
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // docker-credential-helpers print this (on stdout) when nothing is stored.
            if stdout.contains("credentials not found") || stderr.contains("credentials not found")
            {
                return Ok(None);
            }
            let msg = [stdout.trim(), stderr.trim()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("; ");
            return Err(failed(format!("{} ({msg})", output.status)));
        }
        let reply: HelperReply = serde_json::from_str(stdout.trim())
            .map_err(|e| failed(format!("unexpected output (not credential JSON): {e}")))?;
        Ok(match (reply.username.as_str(), reply.secret) {
            (_, s) if s.is_empty() => None,
            // Helpers mark identity tokens with this username (docker/cli's convention).
            ("<token>", s) => Some(RegistryCredentials {
                username: String::new(),
                secret: s,
            }),
            (u, s) => Some(RegistryCredentials {
                username: u.to_string(),
                secret: s,
            }),
        })
    }

    #[cfg(test)]
    fn set_helper_timeout(&mut self, t: Duration) {
        self.helper_timeout = t;
    }
}

/// Credentials for `host` from the process's own Docker config, for callers outside the session
/// (e.g. a registry client). Shares one cache for the whole process.
pub async fn lookup_credentials(host: &str) -> Result<Option<RegistryCredentials>, AuthError> {
    static PROVIDER: OnceLock<AuthProvider> = OnceLock::new();
    PROVIDER
        .get_or_init(AuthProvider::from_env)
        .lookup(host)
        .await
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// `Ok(None)` when the file does not exist: no config means anonymous, as for Docker.
fn read_config(path: &Path) -> Result<Option<ConfigFile>, AuthError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::ReadConfig {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|source| AuthError::ParseConfig {
            path: path.to_path_buf(),
            source,
        })
}

/// Hostname of a config key: `https://ghcr.io/v2/` → `ghcr.io` (legacy keys carry scheme/path).
fn key_hostname(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The entry for `server_url`: an exact key first, then any key with the same hostname
/// (for Hub, any of its host names).
fn find_entry<'a, V>(map: &'a HashMap<String, V>, server_url: &str, hub: bool) -> Option<&'a V> {
    if let Some(v) = map.get(server_url) {
        return Some(v);
    }
    let want = key_hostname(server_url);
    // Sorted so the choice does not depend on HashMap order when several keys match.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    keys.into_iter()
        .find(|k| {
            let h = key_hostname(k);
            if hub {
                HUB_HOSTS.contains(&h)
            } else {
                h == want
            }
        })
        .and_then(|k| map.get(k))
}

fn entry_credentials(
    entry: &AuthEntry,
    path: &Path,
    key: &str,
) -> Result<Option<RegistryCredentials>, AuthError> {
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(RegistryCredentials {
            username: String::new(),
            secret: token.to_string(),
        }));
    }
    let (user, pass) = match entry.auth.as_deref().filter(|a| !a.is_empty()) {
        Some(auth) => {
            let bad = || AuthError::BadAuthEntry {
                path: path.to_path_buf(),
                key: key.to_string(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (u, p) = decoded.split_once(':').ok_or_else(bad)?;
            (u.to_string(), p.to_string())
        }
        None => (
            entry.username.clone().unwrap_or_default(),
            entry.password.clone().unwrap_or_default(),
        ),
    };
    if user.is_empty() && pass.is_empty() {
        return Ok(None);
    }
    Ok(Some(RegistryCredentials {
        username: user,
        secret: pass,
    }))
}

fn find_program(name: &str, search_path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let search_path = search_path?;
    std::env::split_paths(search_path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Spawns, retrying briefly on ETXTBSY: a helper written moments ago can still be open for
/// writing in a child forked concurrently by another thread.
async fn spawn_retrying(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

#[tonic::async_trait]
impl Auth for AuthProvider {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        match self.lookup(&host).await {
            Ok(Some(c)) => Ok(Response::new(CredentialsResponse {
                username: c.username,
                secret: c.secret,
            })),
            // An empty response tells the daemon to go on anonymously.
            Ok(None) => Ok(Response::new(CredentialsResponse::default())),
            Err(e) => Err(Status::failed_precondition(format!(
                "bk-build could not get credentials for {host}: {e}"
            ))),
        }
    }

    async fn fetch_token(
        &self,
        _request: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented(
            "client-side token fetching is not offered",
        ))
    }

    async fn get_token_authority(
        &self,
        _request: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented(
            "client-side token authority is not offered",
        ))
    }

    async fn verify_token_authority(
        &self,
        _request: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented(
            "client-side token authority is not offered",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(u: &str, s: &str) -> Option<RegistryCredentials> {
        Some(RegistryCredentials {
            username: u.into(),
            secret: s.into(),
        })
    }

    /// A config dir with `config.json` = `json`, and a bin dir holding `docker-credential-test`
    /// that logs each call to `calls` and answers per server URL.
    fn setup(json: &str) -> (tempfile::TempDir, AuthProvider) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("cfg");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(cfg.join("config.json"), json).unwrap();
        let calls = tmp.path().join("calls");
        let script = format!(
            r#"#!/bin/sh
[ "$1" = get ] || {{ echo "bad action $1" >&2; exit 3; }}
read -r url
echo "$url" >> '{calls}'
case "$url" in
  ghcr.io) echo '{{"ServerURL":"ghcr.io","Username":"gh-user","Secret":"gh-pass"}}' ;;
  tok.example) echo '{{"ServerURL":"tok.example","Username":"<token>","Secret":"idtok"}}' ;;
  https://index.docker.io/v1/) echo '{{"ServerURL":"x","Username":"hub","Secret":"hubpw"}}' ;;
  broken.example) echo 'keychain exploded' >&2; exit 2 ;;
  slow.example) sleep 5; echo '{{}}' ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
"#,
            calls = calls.display()
        );
        let helper = bin.join("docker-credential-test");
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The helper itself needs sh/sleep, so keep the system dirs after ours.
        let path = std::env::join_paths([bin, "/usr/bin".into(), "/bin".into()]).unwrap();
        let p = AuthProvider::new(Some(cfg), Some(path));
        (tmp, p)
    }

    fn calls(tmp: &tempfile::TempDir) -> Vec<String> {
        std::fs::read_to_string(tmp.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn plain_auths_entries() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{hub}"}},
                "https://ghcr.io/v2/": {{"auth": "{gh}"}},
                "localhost:5000": {{"username": "lu", "password": "lp"}},
                "idtok.example": {{"auth": "{idt}", "identitytoken": "tok123"}},
                "empty.example": {{}}
            }}}}"#,
            hub = b64("hubuser:hub:pw"),
            gh = b64("ghu:ghp"),
            idt = b64("x:y"),
        );
        let (_tmp, p) = setup(&json);
        assert_eq!(
            p.lookup("registry-1.docker.io").await.unwrap(),
            creds("hubuser", "hub:pw")
        );
        assert_eq!(p.lookup("ghcr.io").await.unwrap(), creds("ghu", "ghp"));
        assert_eq!(p.lookup("localhost:5000").await.unwrap(), creds("lu", "lp"));
        assert_eq!(
            p.lookup("idtok.example").await.unwrap(),
            creds("", "tok123")
        );
        assert_eq!(p.lookup("empty.example").await.unwrap(), None);
        assert_eq!(p.lookup("other.example").await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_auth_entry_names_the_file_and_fix() {
        let (_tmp, p) = setup(r#"{"auths": {"r.example": {"auth": "!!notbase64"}}}"#);
        let e = p.lookup("r.example").await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("config.json"), "{msg}");
        assert!(msg.contains("docker login r.example"), "{msg}");
    }

    #[tokio::test]
    async fn missing_or_invalid_config() {
        let p = AuthProvider::new(Some("/nonexistent/bk-build-test".into()), None);
        assert_eq!(p.lookup("ghcr.io").await.unwrap(), None);
        let p = AuthProvider::new(None, None);
        assert_eq!(p.lookup("ghcr.io").await.unwrap(), None);
        let (_tmp, p) = setup("{not json");
        let e = p.lookup("ghcr.io").await.unwrap_err();
        assert!(matches!(e, AuthError::ParseConfig { .. }), "{e}");
    }

    #[tokio::test]
    async fn creds_store_helper() {
        let (tmp, p) = setup(
            r#"{"credsStore": "test", "auths": {"ghcr.io": {"auth": "aWdub3JlZDppZ25vcmVk"}}}"#,
        );
        // The store wins over plain auths entries (no fallback once a helper is chosen).
        assert_eq!(
            p.lookup("ghcr.io").await.unwrap(),
            creds("gh-user", "gh-pass")
        );
        assert_eq!(
            p.lookup("registry-1.docker.io").await.unwrap(),
            creds("hub", "hubpw")
        );
        assert_eq!(p.lookup("tok.example").await.unwrap(), creds("", "idtok"));
        assert_eq!(p.lookup("unknown.example").await.unwrap(), None);
        assert_eq!(
            calls(&tmp),
            vec!["ghcr.io", HUB_SERVER_URL, "tok.example", "unknown.example"]
        );
    }

    #[tokio::test]
    async fn cred_helpers_take_precedence_and_keys_are_normalized() {
        let (tmp, p) = setup(&format!(
            r#"{{"credHelpers": {{"https://ghcr.io": "test"}},
                 "credsStore": "absent",
                 "auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#,
            b64("no:no")
        ));
        assert_eq!(
            p.lookup("ghcr.io").await.unwrap(),
            creds("gh-user", "gh-pass")
        );
        assert_eq!(calls(&tmp), vec!["ghcr.io"]);
        // Other hosts go to credsStore, whose helper is not installed.
        let e = p.lookup("quay.io").await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("docker-credential-absent"), "{msg}");
        assert!(msg.contains("credsStore"), "{msg}");
        assert!(msg.contains("not found on PATH"), "{msg}");
    }

    #[tokio::test]
    async fn helper_failure_and_timeout_are_errors() {
        let (_tmp, mut p) = setup(r#"{"credsStore": "test"}"#);
        let e = p.lookup("broken.example").await.unwrap_err();
        assert!(e.to_string().contains("keychain exploded"), "{e}");
        p.set_helper_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let e = p.lookup("slow.example").await.unwrap_err();
        assert!(matches!(e, AuthError::HelperTimeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn results_are_cached_per_host() {
        let (tmp, p) = setup(r#"{"credsStore": "test"}"#);
        for _ in 0..3 {
            assert_eq!(
                p.lookup("ghcr.io").await.unwrap(),
                creds("gh-user", "gh-pass")
            );
            assert_eq!(p.lookup("nothing.example").await.unwrap(), None);
        }
        assert_eq!(calls(&tmp), vec!["ghcr.io", "nothing.example"]);
    }

    #[tokio::test]
    async fn concurrent_misses_run_the_helper_once() {
        let (tmp, p) = setup(r#"{"credsStore": "test"}"#);
        let all = futures_util::future::join_all((0..8).map(|_| p.lookup("ghcr.io"))).await;
        for r in all {
            assert_eq!(r.unwrap(), creds("gh-user", "gh-pass"));
        }
        assert_eq!(calls(&tmp), vec!["ghcr.io"]);
    }

    #[tokio::test]
    async fn grpc_methods() {
        let (_tmp, p) = setup(r#"{"credsStore": "test"}"#);
        let r = p
            .credentials(Request::new(CredentialsRequest {
                host: "ghcr.io".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.username.as_str(), r.secret.as_str()),
            ("gh-user", "gh-pass")
        );
        let r = p
            .credentials(Request::new(CredentialsRequest {
                host: "anon.example".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r, CredentialsResponse::default());
        let e = p
            .credentials(Request::new(CredentialsRequest {
                host: "broken.example".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let e = p
            .get_token_authority(Request::new(GetTokenAuthorityRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let e = p
            .fetch_token(Request::new(FetchTokenRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let e = p
            .verify_token_authority(Request::new(VerifyTokenAuthorityRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn debug_redacts_secret() {
        let c = RegistryCredentials {
            username: "u".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
