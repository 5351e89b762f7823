//! Images through the API (interface 1.2): a pull with credentials, its layer bytes
//! reported as progress and stoppable by `cancel` (the stream is dropped, so the
//! engine aborts the pull, and an image that still came is removed); and a delete
//! that the engine refuses while a container uses the image.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::models::CreateImageInfo;
use bollard::query_parameters::{CreateImageOptions, ListContainersOptions, RemoveImageOptions};
use futures_util::StreamExt;
use tokio::sync::Notify;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{
    ErrorCode, Event, Image, PluginError, Progress, PullRequest, RegistryAuth,
};

use super::create::split_image;
use super::Result;
use crate::backend::Shared;
use crate::error::Error;
use crate::record::LABEL_ID;

/// The least time between two progress events of one pull (at most 10 a second).
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The cancel switch of one pull.
#[derive(Default)]
pub(crate) struct PullCancel {
    set: AtomicBool,
    notify: Notify,
}

impl PullCancel {
    fn cancel(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    async fn cancelled(&self) {
        if !self.set.load(Ordering::SeqCst) {
            self.notify.notified().await;
        }
    }
}

/// The pulls under way, by operation token.
#[derive(Default)]
pub(crate) struct Pulls(std::sync::Mutex<HashMap<String, Arc<PullCancel>>>);

impl Pulls {
    /// Tells the pull of `operation` to stop; whether one runs.
    pub(crate) fn cancel(&self, operation: &str) -> bool {
        match lock(&self.0).get(operation) {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }
}

/// Unlists a pull's cancel switch when dropped.
struct Listed<'a> {
    pulls: &'a Pulls,
    operation: Option<String>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        if let Some(op) = &self.operation {
            lock(&self.pulls.0).remove(op);
        }
    }
}

/// Bytes of the layers of one pull, summed from the engine's progress messages.
#[derive(Debug, Default)]
pub(crate) struct LayerBytes {
    /// Layer id to (bytes downloaded, bytes in all).
    layers: BTreeMap<String, (u64, u64)>,
    extracting: bool,
}

impl LayerBytes {
    /// Takes one message of the pull stream; whether it changed anything.
    pub(crate) fn take(&mut self, info: &CreateImageInfo) -> bool {
        let (Some(id), Some(status)) = (&info.id, &info.status) else {
            return false;
        };
        let detail = info.progress_detail.as_ref();
        let current = detail.and_then(|d| d.current).map(|v| v.max(0) as u64);
        let total = detail.and_then(|d| d.total).map(|v| v.max(0) as u64);
        match status.as_str() {
            "Downloading" => {
                let entry = self.layers.entry(id.clone()).or_default();
                if let Some(t) = total.filter(|t| *t > 0) {
                    entry.1 = t;
                }
                if let Some(c) = current {
                    entry.0 = c.min(entry.1.max(c));
                }
                true
            }
            "Download complete" | "Verifying Checksum" => match self.layers.get_mut(id) {
                Some(entry) if entry.0 != entry.1 => {
                    entry.0 = entry.1;
                    true
                }
                _ => false,
            },
            "Extracting" | "Pull complete" => {
                let changed = !self.extracting;
                self.extracting = true;
                if let Some(entry) = self.layers.get_mut(id) {
                    entry.0 = entry.1;
                }
                changed
            }
            _ => false,
        }
    }

    /// The progress so far.
    pub(crate) fn progress(&self) -> Progress {
        let done: u64 = self.layers.values().map(|l| l.0).sum();
        let total: u64 = self.layers.values().map(|l| l.1).sum();
        let stage = if self.extracting {
            "extracting"
        } else {
            "downloading"
        };
        Progress::bytes(stage, done, (total > 0).then_some(total))
    }

    /// Everything downloaded: the last report of a pull that went through.
    pub(crate) fn complete(&mut self) -> Progress {
        for l in self.layers.values_mut() {
            l.0 = l.1;
        }
        let mut p = self.progress();
        p.stage = "complete".into();
        p
    }
}

/// The engine's credentials from the request's.
fn credentials(auth: &RegistryAuth) -> DockerCredentials {
    DockerCredentials {
        username: auth.username.clone(),
        password: auth.password.clone(),
        serveraddress: auth.server_address.clone(),
        identitytoken: auth.identity_token.clone(),
        ..Default::default()
    }
}

/// The API error of a failed pull: a missing image or tag is `IMAGE_NOT_FOUND`.
fn pull_error(reference: &str, e: Error) -> PluginError {
    if e.is_unavailable() && !matches!(e, Error::Timeout { .. }) {
        return e.into();
    }
    let reason = match &e {
        Error::Engine { message, .. } | Error::Client { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let lower = reason.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let code = if has(&["not found", "manifest unknown", "does not exist", "no such"]) {
        ErrorCode::ImageNotFound
    } else if has(&["unauthorized", "authentication required", "denied"]) {
        ErrorCode::Forbidden
    } else if has(&["invalid reference", "invalid tag", "repository name must"]) {
        ErrorCode::InvalidRequest
    } else {
        ErrorCode::BackendError
    };
    PluginError::new(code, format!("cannot pull image {reference}: {reason}"))
        .with_detail("image", reference)
}

impl Shared {
    pub(crate) async fn pull_image(&self, request: PullRequest) -> Result<Image> {
        let reference = request.reference.trim().to_owned();
        if reference.is_empty()
            || reference.starts_with('-')
            || reference
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(PluginError::invalid(
                "reference must be an image reference such as registry.example.com/repo:tag",
            ));
        }
        let cancel = Arc::new(PullCancel::default());
        let _listed = Listed {
            pulls: &self.pulls,
            operation: request.operation.clone(),
        };
        if let Some(op) = &request.operation {
            lock(&self.pulls.0).insert(op.clone(), Arc::clone(&cancel));
        }
        let (repo, tag) = split_image(&reference);
        let name = match &tag {
            Some(t) => format!("{repo}:{t}"),
            None => repo.clone(),
        };
        let existed = self.image_exists(&name).await?;
        let docker = self.engine.client().await?;
        let options = CreateImageOptions {
            from_image: Some(repo),
            tag,
            ..Default::default()
        };
        // The credentials go to the engine only: never into a log line or an error.
        let creds = request.auth.as_ref().map(credentials);
        tracing::info!(backend = %self.name, image = %reference, operation = ?request.operation, with_credentials = creds.is_some(), "pulling image");
        let mut stream = docker.create_image(Some(options), None, creds);
        // No message for this long: the engine or the registry hangs.
        let idle = self.engine.config().request_timeout();
        let mut bytes = LayerBytes::default();
        let mut last: Option<Instant> = None;
        let emit = |p: Progress| {
            if let Some(op) = &request.operation {
                self.events.emit(&Event::Progress {
                    operation: op.clone(),
                    progress: p,
                });
            }
        };
        let outcome: std::result::Result<(), Option<Error>> = loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => break Err(None),
                n = tokio::time::timeout(idle, stream.next()) => n,
            };
            match next {
                Err(_) => break Err(Some(Error::Timeout { operation: "pull" })),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(Some(Error::from_bollard("pull", e))),
                Ok(Some(Ok(info))) => {
                    let was_extracting = bytes.extracting;
                    if bytes.take(&info)
                        && (last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
                            || was_extracting != bytes.extracting)
                    {
                        emit(bytes.progress());
                        last = Some(Instant::now());
                    }
                }
            }
        };
        // Dropping the stream closes the connection: the engine aborts the pull.
        drop(stream);
        match outcome {
            Ok(()) => {}
            Err(None) => {
                let op = request.operation.clone().unwrap_or_default();
                tracing::info!(backend = %self.name, image = %reference, operation = %op, "pull cancelled");
                // The pull may have finished as it was cancelled: what it brought goes.
                if !existed && self.image_exists(&name).await.unwrap_or(false) {
                    let _ = self.remove_image(&name).await;
                }
                return Err(PluginError::cancelled(&op).with_detail("image", reference));
            }
            Err(Some(e)) => {
                if e.is_unavailable() {
                    self.engine.reset();
                }
                return Err(pull_error(&reference, e));
            }
        }
        emit(bytes.complete());
        tracing::info!(backend = %self.name, image = %reference, "image pulled");
        let found = self
            .images()
            .await?
            .into_iter()
            .find(|i| i.name == name || i.name == reference);
        Ok(found.unwrap_or(Image {
            name,
            format: Some("oci".into()),
            ..Default::default()
        }))
    }

    /// Whether the engine has the image `name`.
    async fn image_exists(&self, name: &str) -> Result<bool> {
        match self
            .engine
            .quick(
                "inspect image",
                |d| async move { d.inspect_image(name).await },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_image(&self, name: &str) -> std::result::Result<(), Error> {
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        self.engine
            .quick("remove image", |d| async move {
                d.remove_image(name, Some(options), None).await
            })
            .await
            .map(|_| ())
    }

    pub(crate) async fn delete_image(&self, name: &str) -> Result<()> {
        if name.trim().is_empty() || name.starts_with('-') {
            return Err(PluginError::invalid("an image name is required"));
        }
        // The engine refuses to remove an image a container uses, but removing one
        // of several tags of it only untags: a container made from this very name is
        // refused here as well, so that no instance is left naming a deleted image.
        let (repo, tag) = split_image(name);
        let full = match &tag {
            Some(t) => format!("{repo}:{t}"),
            None => repo,
        };
        match self
            .engine
            .quick(
                "inspect image",
                |d| async move { d.inspect_image(name).await },
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => return Err(PluginError::image_not_found(name)),
            Err(e) => return Err(e.into()),
        }
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let users: Vec<String> = self
            .engine
            .quick("list containers", |d| async move {
                d.list_containers(Some(options)).await
            })
            .await?
            .into_iter()
            .filter(|c| matches!(c.image.as_deref(), Some(i) if i == name || i == full))
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                labels
                    .get(LABEL_ID)
                    .cloned()
                    .unwrap_or_else(|| c.id.unwrap_or_default().chars().take(12).collect())
            })
            .collect();
        if !users.is_empty() {
            return Err(PluginError::new(
                ErrorCode::ImageInUse,
                format!("image {name} is used by {} container(s)", users.len()),
            )
            .with_detail("image", name)
            .with_detail("containers", users));
        }
        match self.remove_image(name).await {
            Ok(()) => {
                tracing::info!(backend = %self.name, image = %name, "image deleted");
                Ok(())
            }
            Err(e) if e.status() == Some(404) => Err(PluginError::image_not_found(name)),
            Err(e) if e.status() == Some(409) => Err(PluginError::new(
                ErrorCode::ImageInUse,
                format!("image {name} is in use: {}", e.engine_message()),
            )
            .with_detail("image", name)),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ProgressDetail;

    fn msg(id: &str, status: &str, current: Option<i64>, total: Option<i64>) -> CreateImageInfo {
        CreateImageInfo {
            id: Some(id.into()),
            status: Some(status.into()),
            progress_detail: Some(ProgressDetail { current, total }),
            ..Default::default()
        }
    }

    #[test]
    fn layer_bytes_add_up_over_layers() {
        let mut b = LayerBytes::default();
        assert!(!b.take(&msg("a", "Pulling fs layer", None, None)));
        assert!(b.take(&msg("a", "Downloading", Some(10), Some(100))));
        assert!(b.take(&msg("b", "Downloading", Some(5), Some(50))));
        let p = b.progress();
        assert_eq!((p.bytes_done, p.bytes_total), (Some(15), Some(150)));
        assert_eq!(p.stage, "downloading");
        assert_eq!(p.percent, Some(10.0));
        assert!(b.take(&msg("a", "Download complete", None, None)));
        assert_eq!(b.progress().bytes_done, Some(105));
        assert!(b.take(&msg("a", "Extracting", Some(1), Some(100))));
        assert_eq!(b.progress().stage, "extracting");
        let end = b.complete();
        assert_eq!((end.bytes_done, end.bytes_total), (Some(150), Some(150)));
        assert_eq!(end.percent, Some(100.0));
    }

    #[test]
    fn missing_images_and_refusals_are_told_apart() {
        let engine = |status, message: &str| Error::Engine {
            operation: "pull",
            status,
            message: message.into(),
        };
        let code = |e| pull_error("r", e).code;
        assert_eq!(
            code(engine(
                404,
                "manifest for 127.0.0.1:5/x:nope not found: manifest unknown"
            )),
            ErrorCode::ImageNotFound
        );
        assert_eq!(
            code(engine(500, "Head \"https://r/v2/x\": unauthorized")),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(engine(400, "invalid reference format")),
            ErrorCode::InvalidRequest
        );
        assert_eq!(code(engine(500, "disk full")), ErrorCode::BackendError);
    }
}
