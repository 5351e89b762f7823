//! Create, and its rollback: the spec checked and turned into the engine's create body
//! (labels, pinned bind mounts, limits), the image pulled when missing, the storage
//! quota dropped where the driver has none; a create that fails removes what it made,
//! at once or, with the engine away, as soon as it is back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions};
use futures_util::TryStreamExt;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{CreateRequest, ErrorCode, Instance, PluginError};

use super::Result;
use crate::backend::{Shared, QUOTA_NO, QUOTA_YES};
use crate::error::{is_no_such_image, Error};
use crate::record::{self, LABEL_BINDS};
use crate::spec::{self, BindSpec, DockerSpec};

/// How long the id of a create that timed out is watched for a late container.
pub(crate) const ABANDONED_FOR: Duration = Duration::from_secs(600);

/// Marks a create under way until dropped.
struct Creating<'a>(&'a Shared, String);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        lock(&self.0.creating).remove(&self.1);
    }
}

/// Splits an image reference into repository and tag for a pull.
pub(crate) fn split_image(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_owned(), None);
    }
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_owned(),
            Some(image[slash + i + 1..].to_owned()),
        ),
        None => (image.to_owned(), Some("latest".to_owned())),
    }
}

/// Whether the engine refused `StorageOpt.size` because its storage driver has no
/// quota (`--storage-opt is supported only for overlay over xfs with 'pquota' mount
/// option`, `... not supported ...`), not for any other reason.
fn storage_opt_refused(e: &Error) -> bool {
    let m = e.engine_message().to_ascii_lowercase();
    e.status().is_some()
        && (m.contains("storage-opt") || m.contains("storage opt"))
        && (m.contains("supported") || m.contains("quota"))
}

impl Shared {
    pub(crate) async fn create(&self, req: CreateRequest) -> Result<Instance> {
        record::check_user_labels(&req.labels)?;
        lock(&self.creating).insert(req.id.clone());
        let _creating = Creating(self, req.id.clone());
        let mut spec = DockerSpec::from_config(&req.config)?;
        let prepared = spec.prepare(
            &self.engine.config().allowed_host_paths,
            self.engine.is_local(),
        )?;
        let cores = req.resources.cores();
        let memory = req.resources.memory_limit();
        let storage = req.resources.total_space();
        if cores.is_some() || memory.is_some() {
            let host = self.host_resources().await?;
            self.check_resources(&host, cores, memory)?;
        }
        self.check_sizes(None, storage).await?;

        self.check_network(&spec.network_mode).await?;

        let mut labels = record::create_labels(&req, &self.name, &spec)?;
        let cname = record::container_name(&req.name);

        // Bind mounts: a local engine mounts pins of the resolved sources (pin.rs); a
        // remote one gets the paths as they are (checked lexically only).
        let local = self.engine.is_local();
        let mut binds = prepared.binds.clone();
        let mut mounts = Vec::new();
        if local && !prepared.bind_mounts.is_empty() {
            let pinned = self.pin_all(&req.id, &prepared.bind_mounts)?;
            match serde_json::to_string(&pinned) {
                Ok(l) => labels.insert(LABEL_BINDS.into(), l),
                Err(e) => {
                    self.unpin(&req.id);
                    return Err(PluginError::internal(format!(
                        "cannot store the binds: {e}"
                    )));
                }
            };
            mounts = prepared
                .bind_mounts
                .iter()
                .zip(&pinned)
                .map(|(b, p)| b.pinned_mount(&p.pin))
                .collect();
        } else {
            binds.extend(prepared.bind_mounts.iter().map(BindSpec::entry));
        }

        let (nano_cpus, memory) = spec::engine_limits(cores, memory);
        let mut body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            env: Some(spec.env.clone()),
            labels: Some(labels),
            exposed_ports: (!prepared.exposed.is_empty()).then(|| prepared.exposed.clone()),
            volumes: (!prepared.anonymous.is_empty()).then(|| prepared.anonymous.clone()),
            healthcheck: prepared.healthcheck.clone(),
            // A console to attach to; stdin stays open across attaches (no
            // `StdinOnce`), as `docker create -it` leaves it.
            tty: spec.tty.then_some(true),
            open_stdin: spec.open_stdin.then_some(true),
            host_config: Some(HostConfig {
                binds: Some(binds),
                mounts: (!mounts.is_empty()).then_some(mounts),
                port_bindings: Some(prepared.bindings.clone()),
                network_mode: Some(spec.network_mode.clone()),
                restart_policy: Some(prepared.restart.clone()),
                nano_cpus,
                memory,
                // No swap beyond the limit: the limit is what the instance gets.
                memory_swap: memory,
                ..Default::default()
            }),
            ..Default::default()
        };
        let want_quota =
            storage.is_some() && self.storage_quota.load(Ordering::Relaxed) != QUOTA_NO;
        if let (true, Some(s), Some(h)) = (want_quota, storage, body.host_config.as_mut()) {
            h.storage_opt = Some(HashMap::from([("size".to_owned(), s.to_string())]));
        }

        self.expect(&req.id, &["create"]);
        let container = self
            .make_container(&req.id, &cname, &spec.image, &mut body)
            .await
            .inspect_err(|_| {
                self.unexpect(&req.id);
                self.unpin(&req.id);
            })?;
        lock(&self.containers).insert(req.id.clone(), container.clone());
        if req.start {
            self.expect(&req.id, &["start"]);
            if let Err(e) = self.start_container(&container).await {
                tracing::warn!(
                    instance = %req.id,
                    error = %e,
                    "start after create failed; removing the container"
                );
                self.discard(&req.id, false).await;
                return Err(e.into());
            }
        }
        match self.instance(&req.id, &container).await {
            Ok(i) => Ok(i),
            Err(e) => {
                // Made but not readable back: not an instance the client was told of.
                self.discard(&req.id, false).await;
                Err(e)
            }
        }
    }

    /// Creates the container, pulling the image when it is missing and dropping the
    /// storage size when the driver cannot enforce it.
    pub(crate) async fn make_container(
        &self,
        id: &str,
        name: &str,
        image: &str,
        body: &mut ContainerCreateBody,
    ) -> Result<String> {
        let mut pulled = false;
        let mut swept = false;
        loop {
            let with_quota = body
                .host_config
                .as_ref()
                .is_some_and(|h| h.storage_opt.is_some());
            match self.create_container(name, body).await {
                Ok(id) => {
                    if with_quota {
                        self.storage_quota.store(QUOTA_YES, Ordering::Relaxed);
                    }
                    return Ok(id);
                }
                Err(e)
                    if e.status() == Some(404)
                        && !pulled
                        && is_no_such_image(e.engine_message()) =>
                {
                    pulled = true;
                    self.pull(image).await?;
                }
                Err(e) if with_quota && storage_opt_refused(&e) => {
                    tracing::info!(
                        backend = %self.name,
                        "the storage driver has no size quota; sizes are kept, not enforced"
                    );
                    self.storage_quota.store(QUOTA_NO, Ordering::Relaxed);
                    if let Some(h) = body.host_config.as_mut() {
                        h.storage_opt = None;
                    }
                }
                Err(e)
                    if e.status() == Some(409) && !swept && !lock(&self.abandoned).is_empty() =>
                {
                    // Perhaps the leftover of a create that timed out holds the name.
                    swept = true;
                    self.sweep_abandoned().await;
                }
                Err(e) if e.status() == Some(409) => {
                    return Err(PluginError::new(
                        ErrorCode::InstanceAlreadyExists,
                        format!("a container named {name} exists"),
                    )
                    .with_detail("name", name));
                }
                Err(e) if e.status() == Some(404) && is_no_such_image(e.engine_message()) => {
                    return Err(PluginError::invalid(format!("image {image} not found"))
                        .with_detail("image", image));
                }
                Err(e) if e.status() == Some(404) => {
                    // Something the config names is missing (a network, a container
                    // to share a namespace with): the client's to fix.
                    return Err(PluginError::invalid(format!(
                        "cannot create the container: {}",
                        e.engine_message().trim()
                    )));
                }
                Err(e) => {
                    if e.is_unavailable() {
                        // The engine may have made it before going quiet, or still
                        // be making it (a timeout).
                        let late = matches!(e, Error::Timeout { .. });
                        self.discard(id, late).await;
                    }
                    return Err(e.into());
                }
            }
        }
    }

    pub(crate) async fn create_container(
        &self,
        name: &str,
        body: &ContainerCreateBody,
    ) -> std::result::Result<String, Error> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let body = body.clone();
        self.engine
            .quick("create", |d| async move {
                d.create_container(Some(options), body).await
            })
            .await
            .map(|r| r.id)
    }

    pub(crate) async fn pull(&self, image: &str) -> Result<()> {
        let (repo, tag) = split_image(image);
        let options = CreateImageOptions {
            from_image: Some(repo),
            tag,
            ..Default::default()
        };
        tracing::info!(backend = %self.name, image, "pulling image");
        let timeout = self.engine.config().request_timeout() * 10;
        let result = self
            .engine
            .call("pull", timeout, |d| async move {
                d.create_image(Some(options), None, None)
                    .try_for_each(|_| async { Ok(()) })
                    .await
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() && !matches!(e, Error::Timeout { .. }) => Err(e.into()),
            Err(e) => {
                let reason = match &e {
                    Error::Engine { message, .. } | Error::Client { message, .. } => {
                        message.clone()
                    }
                    other => other.to_string(),
                };
                let lower = reason.to_ascii_lowercase();
                let code = if [
                    "not found",
                    "denied",
                    "manifest unknown",
                    "does not exist",
                    "invalid reference",
                ]
                .iter()
                .any(|s| lower.contains(s))
                {
                    ErrorCode::InvalidRequest
                } else {
                    ErrorCode::BackendError
                };
                Err(
                    PluginError::new(code, format!("cannot pull image {image}: {reason}"))
                        .with_detail("image", image),
                )
            }
        }
    }

    /// Refuses a `networkMode` that names a network the engine does not have (the
    /// engine itself would only notice at start).
    pub(crate) async fn check_network(&self, mode: &str) -> Result<()> {
        let builtin = matches!(mode, "bridge" | "host" | "none" | "default")
            || mode.starts_with("container:");
        if builtin {
            return Ok(());
        }
        let found = self
            .engine
            .quick("inspect network", |d| async move {
                d.inspect_network(
                    mode,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
            })
            .await;
        match found {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Err(PluginError::invalid(format!(
                "network {mode} does not exist"
            ))
            .with_detail("networkMode", mode)),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every container made for instance `id`; answers how many it removed.
    pub(crate) async fn remove_made_for(&self, id: &str) -> std::result::Result<usize, Error> {
        let mut removed = 0;
        for cid in self.containers_of(Some(id)).await? {
            self.remove(&cid).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Undoes a failed create: removes what was made for `id`, now if the engine
    /// answers, else as soon as it is back (meanwhile it is never listed). With
    /// `late` (the engine timed out: it may still be making the container), the id is
    /// watched for [`ABANDONED_FOR`] even when nothing is there yet.
    pub(crate) async fn discard(&self, id: &str, late: bool) {
        self.forget(id);
        let removed = self.remove_made_for(id).await;
        // A container left behind (the engine is away) cannot start without them.
        self.unpin(id);
        match removed {
            Ok(n) if n > 0 || !late => {}
            Ok(_) => {
                lock(&self.abandoned).insert(id.to_owned(), Instant::now());
            }
            Err(e) => {
                tracing::warn!(
                    backend = %self.name,
                    instance = %id,
                    error = %e,
                    "a failed create's container will be removed when the engine answers"
                );
                lock(&self.abandoned).insert(id.to_owned(), Instant::now());
            }
        }
    }

    /// Removes the containers of failed creates that could not be removed at the
    /// time; an id is forgotten once its container is gone, or after
    /// [`ABANDONED_FOR`] with nothing found.
    pub(crate) async fn sweep_abandoned(&self) {
        let ids: Vec<(String, Instant)> = lock(&self.abandoned)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (id, since) in ids {
            match self.remove_made_for(&id).await {
                Ok(n) if n > 0 || since.elapsed() > ABANDONED_FOR => {
                    if n > 0 {
                        tracing::info!(backend = %self.name, instance = %id, "a failed create's container removed");
                    }
                    lock(&self.abandoned).remove(&id);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_for_a_pull() {
        assert_eq!(
            split_image("nginx"),
            ("nginx".into(), Some("latest".into()))
        );
        assert_eq!(
            split_image("nginx:alpine"),
            ("nginx".into(), Some("alpine".into()))
        );
        assert_eq!(
            split_image("localhost:5000/app"),
            ("localhost:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(
            split_image("localhost:5000/app:1.2"),
            ("localhost:5000/app".into(), Some("1.2".into()))
        );
        assert_eq!(
            split_image("app@sha256:abc"),
            ("app@sha256:abc".into(), None)
        );
    }

    #[test]
    fn storage_opt_refusals_are_recognised() {
        let e = Error::Engine {
            operation: "create",
            status: 500,
            message:
                "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
                    .into(),
        };
        assert!(storage_opt_refused(&e));
        let other = Error::Engine {
            operation: "create",
            status: 500,
            message: "no space left".into(),
        };
        assert!(!storage_opt_refused(&other));
    }
}
