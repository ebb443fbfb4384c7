//! Build secrets served to `RUN --mount=type=secret` (`/moby.buildkit.secrets.v1.Secrets/GetSecret`).
//!
//! Owns turning `--secret` specs into values: environment variables are captured when the store
//! is built, files are checked then and read only when the daemon asks (so a large or rotated
//! file is read fresh, and unused secrets are never read). Must not know about the tunnel or the
//! build; values never appear in `Debug` output or errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tonic::{Request, Response, Status};

use crate::options::{SecretSource, SecretSpec};
use crate::proto::moby::buildkit::secrets::v1::{
    secrets_server::Secrets, GetSecretRequest, GetSecretResponse,
};

/// BuildKit refuses secrets larger than this (`secretsprovider.MaxSecretSize`).
const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// A `--secret` that cannot be served. Each message names the secret and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("--secret id={id}: cannot read {path}: {source}; check src= or create the file")]
    File {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--secret id={id}: {path} is not a regular file; src= must name a file")]
    NotAFile { id: String, path: PathBuf },
    #[error("--secret id={id}: {path} is {size} bytes, more than the 500 KiB BuildKit accepts")]
    TooLarge {
        id: String,
        path: PathBuf,
        size: u64,
    },
    #[error("--secret id={id}: environment variable {var} is not set; export it, or use src=FILE")]
    EnvUnset { id: String, var: String },
    #[error("--secret id={id}: neither an environment variable nor a file named {id:?} exists; add env=VAR or src=FILE")]
    NoSource { id: String },
    #[error("--secret id={id} is given more than once; each ID must be unique")]
    Duplicate { id: String },
}

enum Value {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Serves `Secrets.GetSecret` from a fixed set of secrets.
pub struct SecretStore {
    values: HashMap<String, Value>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.values.keys().collect();
        ids.sort();
        f.debug_struct("SecretStore").field("ids", &ids).finish()
    }
}

impl SecretStore {
    /// Builds the store from the process environment. Relative `src=` paths are taken from the
    /// current directory; the project loader resolves its own paths before calling this.
    pub fn new(specs: &[SecretSpec]) -> Result<Self, SecretError> {
        Self::with_env(specs, |k| {
            std::env::var_os(k).map(|v| v.into_encoded_bytes())
        })
    }

    /// Like [`SecretStore::new`] with an explicit environment.
    pub fn with_env(
        specs: &[SecretSpec],
        env: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Result<Self, SecretError> {
        let mut values = HashMap::new();
        for spec in specs {
            let id = spec.id.clone();
            let value = match &spec.source {
                SecretSource::Env(var) => match env(var) {
                    Some(v) => Value::Bytes(v),
                    None => {
                        return Err(SecretError::EnvUnset {
                            id,
                            var: var.clone(),
                        })
                    }
                },
                SecretSource::File(path) => Value::File(check_file(&id, path)?),
                // BuildKit's rule for a bare id: the variable if it is set, else the file.
                SecretSource::FromId => match env(&id) {
                    Some(v) => Value::Bytes(v),
                    None if Path::new(&id).exists() => {
                        Value::File(check_file(&id, Path::new(&id))?)
                    }
                    None => return Err(SecretError::NoSource { id }),
                },
            };
            if values.insert(spec.id.clone(), value).is_some() {
                return Err(SecretError::Duplicate {
                    id: spec.id.clone(),
                });
            }
        }
        Ok(SecretStore { values })
    }

    /// The secret's bytes, or `None` for an unknown ID.
    pub async fn get(&self, id: &str) -> Option<Result<Vec<u8>, SecretError>> {
        let value = self.values.get(id)?;
        Some(match value {
            Value::Bytes(b) => Ok(b.clone()),
            Value::File(path) => read_file(id, path).await,
        })
    }
}

/// Validates a secret file now so a typo fails before the build starts; returns its absolute
/// path so a later change of directory cannot redirect it.
fn check_file(id: &str, path: &Path) -> Result<PathBuf, SecretError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretError::File {
        id: id.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            id: id.to_string(),
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_SECRET_SIZE {
        return Err(SecretError::TooLarge {
            id: id.to_string(),
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    std::path::absolute(path).map_err(|source| SecretError::File {
        id: id.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

async fn read_file(id: &str, path: &Path) -> Result<Vec<u8>, SecretError> {
    let data = tokio::fs::read(path)
        .await
        .map_err(|source| SecretError::File {
            id: id.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
    if data.len() as u64 > MAX_SECRET_SIZE {
        return Err(SecretError::TooLarge {
            id: id.to_string(),
            path: path.to_path_buf(),
            size: data.len() as u64,
        });
    }
    Ok(data)
}

#[tonic::async_trait]
impl Secrets for SecretStore {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        match self.get(&id).await {
            // NotFound lets the daemon honour `required=false` mounts.
            None => Err(Status::not_found(format!(
                "secret {id:?} was not given to bk-build; pass --secret id={id},src=FILE"
            ))),
            Some(Ok(data)) => Ok(Response::new(GetSecretResponse { data })),
            Some(Err(e)) => Err(Status::failed_precondition(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::parse_secret;

    fn env(k: &str) -> Option<Vec<u8>> {
        match k {
            "TOKEN" => Some(b"tok-value".to_vec()),
            "bare" => Some(b"bare-from-env".to_vec()),
            _ => None,
        }
    }

    async fn get(store: &SecretStore, id: &str) -> Result<Vec<u8>, Status> {
        store
            .get_secret(Request::new(GetSecretRequest {
                id: id.into(),
                annotations: Default::default(),
            }))
            .await
            .map(|r| r.into_inner().data)
    }

    #[tokio::test]
    async fn serves_env_and_file_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("npmrc");
        std::fs::write(&file, b"first").unwrap();
        let specs = vec![
            parse_secret(&format!("id=npm,src={}", file.display())).unwrap(),
            parse_secret("id=tok,env=TOKEN").unwrap(),
            parse_secret("id=bare").unwrap(),
        ];
        let store = SecretStore::with_env(&specs, env).unwrap();
        assert_eq!(get(&store, "tok").await.unwrap(), b"tok-value");
        assert_eq!(get(&store, "bare").await.unwrap(), b"bare-from-env");
        assert_eq!(get(&store, "npm").await.unwrap(), b"first");
        // Files are read on request, not at startup.
        std::fs::write(&file, b"second").unwrap();
        assert_eq!(get(&store, "npm").await.unwrap(), b"second");
        let e = get(&store, "nope").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("--secret id=nope"), "{}", e.message());
        assert!(!format!("{store:?}").contains("tok-value"));
    }

    #[tokio::test]
    async fn file_removed_after_start_is_an_error_not_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, b"x").unwrap();
        let specs = vec![SecretSpec {
            id: "s".into(),
            source: SecretSource::File(file.clone()),
        }];
        let store = SecretStore::with_env(&specs, env).unwrap();
        std::fs::remove_file(&file).unwrap();
        let e = get(&store, "s").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains(&file.display().to_string()));
    }

    #[test]
    fn construction_errors_name_the_problem() {
        let missing = SecretSpec {
            id: "k".into(),
            source: SecretSource::File("/nonexistent/bk-build/key".into()),
        };
        let e = SecretStore::with_env(&[missing], env).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("--secret id=k: cannot read /nonexistent/bk-build/key"),
            "{msg}"
        );

        let dir = tempfile::tempdir().unwrap();
        let e = SecretStore::with_env(
            &[SecretSpec {
                id: "d".into(),
                source: SecretSource::File(dir.path().into()),
            }],
            env,
        )
        .unwrap_err();
        assert!(matches!(e, SecretError::NotAFile { .. }), "{e}");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 500 * 1024 + 1]).unwrap();
        let e = SecretStore::with_env(
            &[SecretSpec {
                id: "b".into(),
                source: SecretSource::File(big),
            }],
            env,
        )
        .unwrap_err();
        assert!(matches!(e, SecretError::TooLarge { .. }), "{e}");

        let e =
            SecretStore::with_env(&[parse_secret("id=x,env=UNSET_VAR").unwrap()], env).unwrap_err();
        assert!(e.to_string().contains("UNSET_VAR is not set"), "{e}");

        let e = SecretStore::with_env(&[parse_secret("id=no-such-secret-here").unwrap()], env)
            .unwrap_err();
        assert!(matches!(e, SecretError::NoSource { .. }), "{e}");

        let twice = [
            parse_secret("id=tok,env=TOKEN").unwrap(),
            parse_secret("id=tok,env=TOKEN").unwrap(),
        ];
        assert!(matches!(
            SecretStore::with_env(&twice, env).unwrap_err(),
            SecretError::Duplicate { .. }
        ));
    }
}
