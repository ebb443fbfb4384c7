//! Image loads into a Docker Engine through its API (`docker load`) that run beside a build,
//! and what became of them when the build was canceled (Ctrl-C, SIGTERM).
//!
//! A canceled build is a dropped future. A load is then in one of two states. Either the
//! engine has not received the whole image yet: the request is broken off and the engine
//! loads nothing. Or it has: the engine finishes the load whether or not anyone waits (a
//! client that goes away does not stop it), so the load is handed to a process-wide list,
//! and whoever reports the cancellation ([`settle_canceled_loads`]) waits for the engine's
//! answer and says what really happened instead of "canceled".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::session::StreamChunk;
use crate::transport::DockerHost;

type LoadTask = JoinHandle<Result<Vec<String>, String>>;

/// Loads of canceled builds whose engine had the whole image: (engine, the load).
static SETTLING: Mutex<Vec<(String, LoadTask)>> = Mutex::new(Vec::new());

/// One build's image loads, started before the build so the engine reads the export while
/// the daemon writes it.
pub(super) struct EngineLoads {
    loads: Vec<EngineLoad>,
}

struct EngineLoad {
    engine: String,
    /// Set once the whole export went into the request body: from then on the engine may
    /// load the image whatever this process does.
    body_sent: Arc<AtomicBool>,
    /// `None` once its outcome was taken.
    task: Option<LoadTask>,
}

impl EngineLoads {
    pub(super) fn new() -> EngineLoads {
        EngineLoads { loads: Vec::new() }
    }

    /// Starts loading the export arriving on `chunks` into the engine at `host`.
    pub(super) fn start(&mut self, host: DockerHost, chunks: mpsc::Receiver<StreamChunk>) {
        let body_sent = Arc::new(AtomicBool::new(false));
        let body = load_body(chunks, body_sent.clone());
        let engine = host.to_string();
        let task =
            tokio::spawn(async move { crate::transport::docker_load_image(&host, body).await });
        self.loads.push(EngineLoad {
            engine,
            body_sent,
            task: Some(task),
        });
    }

    /// The engines still loading, for a progress note.
    pub(super) fn engines(&self) -> Vec<String> {
        self.loads.iter().map(|l| l.engine.clone()).collect()
    }

    /// Waits for every load of a build that finished; `Err` with the first failure.
    pub(super) async fn finish(&mut self) -> Result<(), String> {
        let mut first_error = None;
        for load in &mut self.loads {
            let Some(task) = load.task.as_mut() else {
                continue;
            };
            let outcome = task
                .await
                .unwrap_or_else(|e| Err(format!("the image load stopped: {e}")));
            load.task = None;
            if let Err(why) = outcome {
                first_error.get_or_insert(why);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// After a build that failed: loads that had not received the whole image are broken off
    /// (nothing is loaded); the others are waited for, at most `wait`. Returns what the user
    /// must know besides the failure: the images that were loaded all the same, or loads whose
    /// outcome is unknown.
    pub(super) async fn after_failure(&mut self, wait: Duration) -> Vec<String> {
        for load in &mut self.loads {
            if !load.body_sent.load(Ordering::SeqCst) {
                if let Some(task) = load.task.take() {
                    task.abort();
                }
            }
        }
        let pending: Vec<(String, LoadTask)> = self
            .loads
            .iter_mut()
            .filter_map(|l| Some((l.engine.clone(), l.task.take()?)))
            .collect();
        settle(pending, wait)
            .await
            .into_iter()
            .filter_map(|o| match o {
                CanceledLoad::Failed { .. } => None,
                o => Some(o.to_string()),
            })
            .collect()
    }
}

impl Drop for EngineLoads {
    /// The build was canceled (its future dropped) while loads were running.
    fn drop(&mut self) {
        for load in &mut self.loads {
            let Some(task) = load.task.take() else {
                continue;
            };
            if task.is_finished() || load.body_sent.load(Ordering::SeqCst) {
                if let Ok(mut s) = SETTLING.lock() {
                    s.push((load.engine.clone(), task));
                }
            } else {
                // Dropping the request breaks off the body: the engine loads nothing.
                task.abort();
            }
        }
    }
}

/// The export's chunks as the load request's body. It ends when the export ended complete
/// (and then sets `sent`), and fails when the export broke off, so that the engine refuses
/// the request rather than loading a tarball cut short.
fn load_body(
    chunks: mpsc::Receiver<StreamChunk>,
    sent: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(chunks), move |chunks| {
        let sent = sent.clone();
        async move {
            let mut chunks = chunks?;
            match chunks.recv().await {
                Some(StreamChunk::Data(b)) => Some((Ok(b), Some(chunks))),
                Some(StreamChunk::End) => {
                    sent.store(true, Ordering::SeqCst);
                    None
                }
                None => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the export broke off before its end",
                    )),
                    None,
                )),
            }
        }
    })
}

/// What became of an image load whose build was canceled or failed after the engine had
/// received the whole image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanceledLoad {
    /// The engine loaded it; `images` are its "Loaded image: …" lines.
    Loaded { engine: String, images: Vec<String> },
    /// The engine did not load it.
    Failed { engine: String, why: String },
    /// The engine did not answer in time: whether it loaded the image is not known.
    Unanswered { engine: String },
}

impl std::fmt::Display for CanceledLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CanceledLoad::Loaded { engine, images } if images.is_empty() => {
                write!(f, "the image was loaded into the Docker Engine at {engine}")
            }
            CanceledLoad::Loaded { engine, images } => write!(
                f,
                "the image was loaded into the Docker Engine at {engine} ({})",
                images.join("; ")
            ),
            CanceledLoad::Failed { engine, why } => write!(
                f,
                "the image was not loaded into the Docker Engine at {engine}: {why}"
            ),
            CanceledLoad::Unanswered { engine } => write!(
                f,
                "the Docker Engine at {engine} had received the whole image and had not finished loading it: check with `docker image ls` whether it did"
            ),
        }
    }
}

/// The engines of canceled builds' loads that may still be running (for a "waiting" note).
pub fn settling_loads() -> Vec<String> {
    SETTLING
        .lock()
        .map(|s| s.iter().map(|(e, _)| e.clone()).collect())
        .unwrap_or_default()
}

/// Waits (at most `wait` in all) for the loads of canceled builds whose engine had the whole
/// image, and says what became of each. Empty when no canceled build was loading an image or
/// its engine had not received all of it (then nothing was loaded).
pub async fn settle_canceled_loads(wait: Duration) -> Vec<CanceledLoad> {
    let pending = SETTLING
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    settle(pending, wait).await
}

async fn settle(pending: Vec<(String, LoadTask)>, wait: Duration) -> Vec<CanceledLoad> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    for (engine, task) in pending {
        let outcome = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(images))) => CanceledLoad::Loaded { engine, images },
            Ok(Ok(Err(why))) => CanceledLoad::Failed { engine, why },
            Ok(Err(e)) => CanceledLoad::Failed {
                engine,
                why: format!("the image load stopped: {e}"),
            },
            Err(_) => CanceledLoad::Unanswered { engine },
        };
        out.push(outcome);
    }
    out
}
