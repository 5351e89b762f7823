//! Images and templates through the API: a pull (Docker), an upload streamed to disk
//! (KVM templates), a deletion. A pull and an upload always run as operations, so
//! that their progress is seen and they can be cancelled, whether the client waits
//! for the end or not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use unicompute_plugin_api::{PullRequest, RegistryAuth, UploadRequest};

use super::operations::{current, OpKind, OpResult, Operation, Progress};
use super::{call, Canceller, Error, Service};

/// How often the server reports an upload's progress.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// How long a finished pull waits for the plugin's progress events sent before its
/// answer to be applied.
const EVENTS_APPLIED_WAIT: Duration = Duration::from_secs(1);

/// How often an upload waiting for bytes looks whether it was cancelled.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Why an upload's bytes stopped.
#[derive(Debug)]
pub enum BodyError {
    /// The client went away or the connection broke before the end.
    Broken(String),
}

impl Service {
    /// The backend's `cancel` as an operation's canceller: an older plugin (no
    /// `cancel`) or one that fails simply did not stop anything.
    pub fn backend_canceller(backend: Arc<dyn unicompute_plugin_api::Backend>) -> Canceller {
        Canceller::Call(Arc::new(move |op: &str| {
            backend.cancel(op).unwrap_or(false)
        }))
    }

    /// Starts a pull as an operation.
    pub fn pull_image(
        self: &Arc<Self>,
        backend: &str,
        reference: String,
        auth: Option<RegistryAuth>,
    ) -> Result<Arc<Operation>, Error> {
        let (entry, b) = self.backend(backend)?;
        let svc = Arc::clone(self);
        let bb = Arc::clone(&b);
        let work = Box::pin(async move {
            let request = PullRequest {
                reference,
                auth,
                operation: current(),
            };
            tracing::info!(backend = %entry.name, reference = %request.reference, "pulling");
            let pulled = call(&entry, "pull_image", &bb, move |b| b.pull_image(request)).await;
            // The progress the plugin sent before it answered goes first.
            svc.events_applied(EVENTS_APPLIED_WAIT).await;
            pulled.map(OpResult::Image).map_err(|e| svc.fail(&entry, e))
        });
        Ok(self.spawn_operation(
            OpKind::ImagePull,
            Some(backend.to_owned()),
            None,
            Self::backend_canceller(b),
            work,
        ))
    }

    /// Deletes an image or template.
    pub async fn delete_image(&self, backend: &str, name: &str) -> Result<(), Error> {
        let (entry, b) = self.backend(backend)?;
        let owned = name.to_owned();
        call(&entry, "delete_image", &b, move |b| b.delete_image(&owned))
            .await
            .map_err(|e| self.fail(&entry, e))?;
        tracing::info!(backend = %entry.name, image = %name, "image deleted");
        Ok(())
    }

    /// Starts an upload as an operation: `body` is streamed into the place the
    /// backend gives, against its size limit, then handed to the backend to check and
    /// make visible. `received` is told once the body has been read (or failed).
    pub fn upload_image<S>(
        self: &Arc<Self>,
        backend: &str,
        name: String,
        declared: Option<u64>,
        body: S,
        received: tokio::sync::oneshot::Sender<()>,
    ) -> Result<Arc<Operation>, Error>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    {
        if !super::valid_name(&name) {
            return Err(Error::InvalidName(name));
        }
        let (entry, b) = self.backend(backend)?;
        let stop = Arc::new(AtomicBool::new(false));
        let svc = Arc::clone(self);
        let flag = Arc::clone(&stop);
        let work = Box::pin(async move {
            let op = current().unwrap_or_default();
            let request = UploadRequest {
                name: name.clone(),
                operation: op.clone(),
                size: None,
            };
            let begin = request.clone();
            let target = call(&entry, "upload_begin", &b, move |b| b.upload_begin(begin))
                .await
                .map_err(|e| svc.fail(&entry, e));
            let target = match target {
                Ok(t) => t,
                Err(e) => {
                    let _ = received.send(());
                    return Err(e);
                }
            };
            let streamed = svc
                .stream_to(&target.path, target.max_bytes, declared, body, &op, &flag)
                .await;
            let _ = received.send(());
            let result = match streamed {
                Ok(n) => {
                    tracing::info!(backend = %entry.name, image = %name, bytes = n, "upload received");
                    let commit = request.clone();
                    call(&entry, "upload_commit", &b, move |b| {
                        b.upload_commit(commit)
                    })
                    .await
                    .map_err(|e| svc.fail(&entry, e))
                }
                Err(e) => Err(e),
            };
            if result.is_err() {
                // Nothing is left of a failed or cancelled upload.
                let abort = request.clone();
                let _ = call(&entry, "upload_abort", &b, move |b| b.upload_abort(abort)).await;
            }
            result.map(OpResult::Image)
        });
        Ok(self.spawn_operation(
            OpKind::ImageUpload,
            Some(backend.to_owned()),
            None,
            Canceller::Flag(stop),
            work,
        ))
    }

    /// Writes `body` to a new file at `path`, at most `max` bytes; reports progress.
    async fn stream_to<S>(
        &self,
        path: &str,
        max: u64,
        declared: Option<u64>,
        body: S,
        op: &str,
        stop: &AtomicBool,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send,
    {
        let too_large = || Error::TooLarge {
            limit: max,
            what: "the upload".into(),
        };
        if declared.is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let io = |e: std::io::Error| Error::Internal(format!("cannot write the upload: {e}"));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .await
            .map_err(io)?;
        let mut done = 0u64;
        let mut reported = Instant::now();
        let report = |done: u64| Progress {
            stage: "uploading".into(),
            percent: declared
                .filter(|t| *t > 0)
                .map(|t| (done as f64 * 100.0 / t as f64).min(100.0)),
            bytes_done: Some(done),
            bytes_total: declared,
        };
        self.operation_progress(op, report(0));
        let mut reported_done = 0u64;
        futures_util::pin_mut!(body);
        loop {
            // Not only when bytes come: a client that stops sending (and keeps its
            // connection) must not keep a cancel from taking effect, nor its
            // progress from being seen.
            let next = tokio::time::timeout(STOP_CHECK, body.next()).await;
            if stop.load(Ordering::SeqCst) {
                return Err(Error::Cancelled("the upload was cancelled".into()));
            }
            if let Ok(Some(chunk)) = next {
                let chunk = chunk.map_err(|BodyError::Broken(why)| {
                    Error::Invalid(format!("the upload ended early after {done} bytes: {why}"))
                })?;
                done += chunk.len() as u64;
                if done > max {
                    return Err(too_large());
                }
                file.write_all(&chunk).await.map_err(io)?;
            } else if let Ok(None) = next {
                break;
            }
            if done != reported_done && reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                reported_done = done;
                self.operation_progress(op, report(done));
            }
        }
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Cancelled("the upload was cancelled".into()));
        }
        if let Some(n) = declared.filter(|n| *n != done) {
            return Err(Error::Invalid(format!(
                "the upload ended after {done} of the {n} bytes announced"
            )));
        }
        if done == 0 {
            return Err(Error::Invalid("the upload is empty".into()));
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        self.operation_progress(op, report(done));
        Ok(done)
    }
}
