//! The Docker backend: the [`Backend`] trait on a Docker engine through bollard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerUpdateBody,
    HostConfig, Mount, MountBindOptions, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    ListImagesOptions, RemoveContainerOptions, StopContainerOptions,
};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tracing::Instrument;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, CpuUsage, CreateRequest, ErrorCode, EventSink,
    HostResources, Image, Instance, InstanceState, InstanceType, MemoryUsage, PluginError,
    StopOptions, StorageUsage, UpdateRequest, Usage,
};

use crate::client::{self, Engine};
use crate::error::{is_no_such_image, Error};
use crate::pin::{self, PinError, Pinned};
use crate::record::{
    self, LABEL_BACKEND, LABEL_BINDS, LABEL_CONFIG, LABEL_CREATED_AT, LABEL_ID, LABEL_LABELS,
    LABEL_PREFIX, LABEL_STORAGE, LABEL_UUID,
};
use crate::settings::DockerSettings;
use crate::spec::{BindSpec, DockerSpec};
use crate::state::ChangeTimes;
use crate::stats::{Allocation, StatsCache};

type Result<T> = std::result::Result<T, PluginError>;

/// Docker refuses memory limits below this.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;
/// How long the id of a create that timed out is watched for a late container.
const ABANDONED_FOR: Duration = Duration::from_secs(600);
/// How long an API call's own engine events are expected.
const EXPECT_WINDOW: Duration = Duration::from_secs(5);
/// Whether the storage driver enforces `StorageOpt.size`: not known yet.
const QUOTA_UNKNOWN: u8 = 0;
const QUOTA_YES: u8 = 1;
const QUOTA_NO: u8 = 2;

/// The Docker backend. Cheap to share: the state lives in an `Arc`.
pub struct DockerBackend {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

/// What the backend's calls and its background tasks share.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) engine: Engine,
    pub(crate) events: EventSink,
    pub(crate) stats: StatsCache,
    /// Instance id to container id, to skip a lookup by label.
    containers: Mutex<HashMap<String, String>>,
    /// The last change made through the API, kept in the state file.
    touched: ChangeTimes,
    host: Mutex<Option<HostResources>>,
    /// The largest `storage.totalSpace` taken (see [`Shared::storage_limit`]).
    storage_cap: Mutex<Option<u64>>,
    storage_quota: AtomicU8,
    /// Engine events that a call in progress causes, by instance id: the event loop
    /// skips them, since the call's result tells the host already.
    expected: Mutex<HashMap<String, Vec<(&'static str, Instant)>>>,
    /// Instance ids of failed creates whose container could not be removed yet (the
    /// engine went away mid-create): never listed, removed when the engine is back.
    abandoned: Mutex<HashMap<String, Instant>>,
    /// Instance ids whose create is under way.
    creating: Mutex<std::collections::HashSet<String>>,
}

/// Marks a create under way until dropped.
struct Creating<'a>(&'a Shared, String);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        lock(&self.0.creating).remove(&self.1);
    }
}

impl DockerBackend {
    /// Makes a backend from the host's context. Does not need the engine to be up.
    pub fn new(ctx: BackendContext) -> Result<Self> {
        let config: DockerSettings = ctx.parse_config()?;
        let endpoint = config
            .validate()
            .map_err(|e| PluginError::config(format!("backend {}: {e}", ctx.name)))?;
        let rt = client::runtime()?;
        let touched = ChangeTimes::load(&config.state_dir, &ctx.name);
        let shared = Arc::new(Shared {
            name: ctx.name,
            engine: Engine::new(config, endpoint),
            events: ctx.events,
            stats: StatsCache::default(),
            containers: Mutex::default(),
            touched,
            host: Mutex::default(),
            storage_cap: Mutex::default(),
            storage_quota: AtomicU8::new(QUOTA_UNKNOWN),
            expected: Mutex::default(),
            abandoned: Mutex::default(),
            creating: Mutex::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        rt.spawn(crate::events::run(Arc::clone(&shared), rx));
        tracing::info!(backend = %shared.name, "docker backend ready");
        Ok(DockerBackend { shared, shutdown })
    }

    /// Runs one operation on the plugin's runtime.
    fn run<T, F, Fut>(&self, op: &'static str, instance: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let span =
            tracing::debug_span!("docker", backend = %self.shared.name, op, instance = %instance);
        let fut = f(Arc::clone(&self.shared));
        client::block_on(
            async move {
                let result = fut.await;
                if let Err(e) = &result {
                    tracing::debug!(code = e.code.as_str(), error = %e, "call failed");
                }
                result
            }
            .instrument(span),
        )
    }
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.shared.stats.clear();
    }
}

fn filters(pairs: &[(&str, String)]) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        map.entry((*k).to_owned()).or_default().push(v.clone());
    }
    map
}

/// `RESOURCE_LIMIT_EXCEEDED` for a size beyond what can be held.
fn too_big(field: &str, requested: u64, limit: u64) -> PluginError {
    PluginError::new(
        ErrorCode::ResourceLimitExceeded,
        format!("{field} of {requested} bytes asked, at most {limit} can be held here"),
    )
    .with_detail("field", field)
    .with_detail("requested", requested)
    .with_detail("limit", limit)
}

fn state_of(c: &ContainerInspectResponse) -> Option<ContainerStateStatusEnum> {
    c.state.as_ref().and_then(|s| s.status)
}

/// Splits an image reference into repository and tag for a pull.
fn split_image(image: &str) -> (String, Option<String>) {
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
    async fn inspect(
        &self,
        container: &str,
    ) -> std::result::Result<ContainerInspectResponse, Error> {
        self.engine
            .quick("inspect", |d| async move {
                d.inspect_container(container, None).await
            })
            .await
    }

    fn touched_at(&self, id: &str) -> Option<DateTime<Utc>> {
        self.touched.get(id)
    }

    /// Records a change made through the API now.
    fn touch(&self, id: &str) {
        self.touched.record(id, Utc::now());
    }

    /// Records the instance's `updatedAt` as answered (after a start or a stop, whose
    /// times the engine also keeps), so that it never goes back.
    fn noted(&self, inst: Instance) -> Instance {
        self.touched.record(&inst.id, inst.updated_at);
        inst
    }

    /// Drops what is remembered of an instance that is gone (its pins are
    /// [`Shared::unpin`]'s).
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.containers).remove(id);
        self.touched.remove(id);
        lock(&self.expected).remove(id);
        self.stats.forget(id);
    }

    /// Removes the pins of an instance whose container was seen gone (an event, a
    /// 404), unless a create of it is under way (the engine removes a container it
    /// failed to set up, and the create tries again) or a container of it is still
    /// there.
    pub(crate) async fn unpin_if_gone(&self, id: &str) {
        if !self.engine.is_local() || lock(&self.creating).contains(id) {
            return;
        }
        if matches!(self.containers_of(Some(id)).await, Ok(v) if v.is_empty()) {
            self.unpin(id);
        }
    }

    /// The directory of an instance's pins (`None`: an id that cannot name one).
    fn pin_dir(&self, id: &str) -> Option<std::path::PathBuf> {
        pin::usable_id(id).then(|| self.engine.config().pin_dir.join(id))
    }

    /// Detaches and removes the pins of an instance.
    fn unpin(&self, id: &str) {
        if !self.engine.is_local() {
            return;
        }
        if let Some(dir) = self.pin_dir(id) {
            pin::unpin_dir(&dir);
        }
    }

    /// Pins the bind sources of a new instance; on failure nothing is left.
    fn pin_all(&self, id: &str, binds: &[BindSpec]) -> Result<Vec<Pinned>> {
        let dir = self.pin_dir(id).ok_or_else(|| {
            PluginError::invalid(format!("instance id {id:?} cannot name a pin directory"))
        })?;
        let mut out = Vec::with_capacity(binds.len());
        for (n, b) in binds.iter().enumerate() {
            match pin::pin_new(&b.source, &dir.join(n.to_string())) {
                Ok(p) => out.push(p),
                Err(e) => {
                    pin::unpin_dir(&dir);
                    return Err(self.pin_error(e));
                }
            }
        }
        Ok(out)
    }

    fn pin_error(&self, e: PinError) -> PluginError {
        match &e {
            PinError::Changed { source_path, .. } => {
                PluginError::new(ErrorCode::Forbidden, e.to_string())
                    .with_detail("hostPath", source_path.to_string_lossy().into_owned())
                    .with_detail(
                        "allowedHostPaths",
                        self.engine
                            .config()
                            .allowed_host_paths
                            .iter()
                            .map(|a| a.to_string_lossy().into_owned())
                            .collect::<Vec<_>>(),
                    )
            }
            PinError::Mount { .. } => PluginError::backend(format!(
                "{e} (pinning bind mounts needs CAP_SYS_ADMIN in the engine's mount namespace)"
            )),
        }
    }

    /// Before a start through the API: every pinned bind source is still what it was
    /// at create and inside the allowlist (else `FORBIDDEN`), and its pin is there
    /// (made again if missing).
    fn check_pins(&self, c: &ContainerInspectResponse) -> Result<()> {
        if !self.engine.is_local() {
            return Ok(());
        }
        let Some(label) = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_BINDS))
        else {
            return Ok(());
        };
        let pinned: Vec<Pinned> = serde_json::from_str(label)
            .map_err(|e| PluginError::internal(format!("unreadable {LABEL_BINDS} label: {e}")))?;
        let allowed = &self.engine.config().allowed_host_paths;
        for p in &pinned {
            pin::ensure(p, allowed).map_err(|e| self.pin_error(e))?;
        }
        Ok(())
    }

    /// The engine came back: it may be another one (or another version) now.
    pub(crate) fn reconnected(&self) {
        *lock(&self.host) = None;
        *lock(&self.storage_cap) = None;
        self.storage_quota.store(QUOTA_UNKNOWN, Ordering::Relaxed);
        lock(&self.expected).clear();
        self.stats.clear();
    }

    /// Notes that a call is about to cause these engine events.
    fn expect(&self, id: &str, actions: &[&'static str]) {
        let now = Instant::now();
        lock(&self.expected)
            .entry(id.to_owned())
            .or_default()
            .extend(actions.iter().map(|a| (*a, now)));
    }

    /// The call failed: its events may not come.
    fn unexpect(&self, id: &str) {
        lock(&self.expected).remove(id);
    }

    /// Whether an engine event was caused by a call of ours (and is consumed). Any
    /// other event for the instance means someone else acts on it: then nothing more
    /// is skipped.
    pub(crate) fn expected_event(&self, id: &str, action: &str) -> bool {
        let mut map = lock(&self.expected);
        let Some(list) = map.get_mut(id) else {
            return false;
        };
        list.retain(|(_, at)| at.elapsed() < EXPECT_WINDOW);
        let found = list.iter().position(|(a, _)| *a == action);
        match found {
            Some(i) => {
                list.remove(i);
                if list.is_empty() {
                    map.remove(id);
                }
                true
            }
            None => {
                map.remove(id);
                false
            }
        }
    }

    fn mine(&self, c: &ContainerInspectResponse) -> bool {
        c.config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_BACKEND))
            .is_some_and(|b| *b == self.name)
    }

    fn to_instance(&self, c: &ContainerInspectResponse) -> Option<Instance> {
        if !self.mine(c) {
            return None;
        }
        let id = record::instance_id(c.config.as_ref().and_then(|c| c.labels.as_ref()))?;
        let mut inst = record::from_inspect(c, self.touched_at(id))?;
        inst.backend = self.name.clone();
        // Memory in use is cheap to report only for a watched instance.
        if inst.state == InstanceState::Running {
            if let Some(used) = self.stats.memory_used(&inst.id) {
                inst.resources
                    .memory
                    .get_or_insert_with(Default::default)
                    .used = Some(used);
            }
        }
        Some(inst)
    }

    /// Inspects a container and reads it as an instance (`None`: not one of ours).
    pub(crate) async fn inspect_instance(
        &self,
        container: &str,
    ) -> std::result::Result<Option<Instance>, Error> {
        let c = self.inspect(container).await?;
        let inst = self.to_instance(&c);
        if let (Some(i), Some(cid)) = (&inst, &c.id) {
            lock(&self.containers).insert(i.id.clone(), cid.clone());
        }
        Ok(inst)
    }

    /// Finds the container of an instance.
    async fn resolve(&self, id: &str) -> Result<(String, ContainerInspectResponse)> {
        let cached = lock(&self.containers).get(id).cloned();
        if let Some(cid) = cached {
            match self.inspect(&cid).await {
                Ok(c)
                    if self.mine(&c)
                        && record::instance_id(
                            c.config.as_ref().and_then(|c| c.labels.as_ref()),
                        ) == Some(id) =>
                {
                    return Ok((cid, c));
                }
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
            lock(&self.containers).remove(id);
        }
        for cid in self.containers_of(Some(id)).await? {
            match self.inspect(&cid).await {
                Ok(c) => {
                    lock(&self.containers).insert(id.to_owned(), cid.clone());
                    return Ok((cid, c));
                }
                Err(e) if e.status() == Some(404) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PluginError::not_found(id))
    }

    /// The instance from an inspection already made.
    fn instance_of(&self, id: &str, c: &ContainerInspectResponse) -> Result<Instance> {
        self.to_instance(c)
            .ok_or_else(|| PluginError::not_found(id))
    }

    /// The instance, inspected now.
    async fn instance(&self, id: &str, container: &str) -> Result<Instance> {
        match self.inspect_instance(container).await {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(PluginError::not_found(id)),
            Err(e) if e.status() == Some(404) => {
                self.forget(id);
                self.unpin_if_gone(id).await;
                Err(PluginError::not_found(id))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn host_resources(&self) -> Result<HostResources> {
        if let Some(h) = lock(&self.host).clone() {
            return Ok(h);
        }
        let info = self
            .engine
            .quick("info", |d| async move { d.info().await })
            .await?;
        let h = HostResources {
            cpus: info.ncpu.unwrap_or(0).max(0) as u32,
            memory: info.mem_total.unwrap_or(0).max(0) as u64,
        };
        *lock(&self.host) = Some(h.clone());
        Ok(h)
    }

    fn check_resources(
        &self,
        host: &HostResources,
        cores: Option<u32>,
        memory: Option<u64>,
    ) -> Result<()> {
        if let Some(c) = cores {
            if c == 0 {
                return Err(PluginError::invalid("cpu.cores must be at least 1"));
            }
            if host.cpus > 0 && c > host.cpus {
                return Err(PluginError::new(
                    ErrorCode::ResourceLimitExceeded,
                    format!("{c} cores asked, the host has {}", host.cpus),
                )
                .with_detail("available", host.cpus));
            }
        }
        if let Some(m) = memory {
            if m < MIN_MEMORY {
                return Err(PluginError::invalid(format!(
                    "memory.limit must be at least {MIN_MEMORY} bytes"
                )));
            }
            // The engine takes a signed 64-bit count: never more than that either.
            let limit = if host.memory > 0 {
                host.memory.min(i64::MAX as u64)
            } else {
                i64::MAX as u64
            };
            if m > limit {
                return Err(too_big("memory.limit", m, limit).with_detail("available", limit));
            }
        }
        Ok(())
    }

    /// The largest `storage.totalSpace` an instance may ask: the size of the
    /// filesystem of the engine's data root for a local engine (a container cannot
    /// hold more, with a quota or without), else `i64::MAX` (the engine's bound).
    async fn storage_limit(&self) -> Result<u64> {
        if let Some(c) = *lock(&self.storage_cap) {
            return Ok(c);
        }
        let mut cap = i64::MAX as u64;
        if self.engine.is_local() {
            let info = self
                .engine
                .quick("info", |d| async move { d.info().await })
                .await?;
            if let Some(root) = info.docker_root_dir {
                match rustix::fs::statvfs(root.as_str()) {
                    Ok(v) => cap = cap.min(v.f_blocks.saturating_mul(v.f_frsize)),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot size the engine's data root; storage bound is i64::MAX")
                    }
                }
            }
        }
        *lock(&self.storage_cap) = Some(cap);
        Ok(cap)
    }

    /// Refuses sizes beyond what the host can hold, before the engine sees them.
    async fn check_sizes(&self, memory: Option<u64>, storage: Option<u64>) -> Result<()> {
        if let Some(m) = memory {
            let host = self.host_resources().await?;
            self.check_resources(&host, None, Some(m))?;
        }
        if let Some(s) = storage {
            let limit = self.storage_limit().await?;
            if s > limit {
                return Err(too_big("storage.totalSpace", s, limit));
            }
        }
        Ok(())
    }

    async fn pull(&self, image: &str) -> Result<()> {
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

    async fn create_container(
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

    async fn remove(&self, container: &str) -> std::result::Result<(), Error> {
        self.remove_with(container, true).await
    }

    /// Removes a container and its anonymous volumes; without `force` the engine
    /// refuses a running one (409).
    async fn remove_with(&self, container: &str, force: bool) -> std::result::Result<(), Error> {
        let options = RemoveContainerOptions {
            force,
            v: true,
            ..Default::default()
        };
        match self
            .engine
            .quick("remove", |d| async move {
                d.remove_container(container, Some(options)).await
            })
            .await
        {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => other,
        }
    }

    /// Refuses a `networkMode` that names a network the engine does not have (the
    /// engine itself would only notice at start).
    async fn check_network(&self, mode: &str) -> Result<()> {
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

    /// The containers of this backend that carry instance `id`'s label, or any
    /// instance's with `None` (by label, never by name: a container of that name may
    /// be someone else's).
    async fn containers_of(&self, id: Option<&str>) -> std::result::Result<Vec<String>, Error> {
        let id_label = match id {
            Some(id) => format!("{LABEL_ID}={id}"),
            None => LABEL_ID.to_owned(),
        };
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters(&[
                ("label", id_label),
                ("label", format!("{LABEL_BACKEND}={}", self.name)),
            ])),
            ..Default::default()
        };
        let found = self
            .engine
            .quick(
                "list",
                |d| async move { d.list_containers(Some(options)).await },
            )
            .await?;
        Ok(found.into_iter().filter_map(|c| c.id).collect())
    }

    /// Removes every container made for instance `id`; answers how many it removed.
    async fn remove_made_for(&self, id: &str) -> std::result::Result<usize, Error> {
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
    async fn discard(&self, id: &str, late: bool) {
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

    /// Creates the container, pulling the image when it is missing and dropping the
    /// storage size when the driver cannot enforce it.
    async fn make_container(
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

    async fn create(&self, req: CreateRequest) -> Result<Instance> {
        if let Some(k) = req.labels.keys().find(|k| k.starts_with(LABEL_PREFIX)) {
            return Err(PluginError::invalid(format!(
                "label {k}: the prefix {LABEL_PREFIX} is reserved"
            ))
            .with_detail("label", k.as_str()));
        }
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

        let applied = serde_json::to_string(&spec)
            .map_err(|e| PluginError::internal(format!("cannot store the config: {e}")))?;
        let user_labels = serde_json::to_string(&req.labels)
            .map_err(|e| PluginError::internal(format!("cannot store the labels: {e}")))?;
        let mut labels: HashMap<String, String> = req.labels.clone().into_iter().collect();
        labels.insert(LABEL_ID.into(), req.id.clone());
        labels.insert(LABEL_UUID.into(), uuid::Uuid::new_v4().to_string());
        labels.insert(LABEL_BACKEND.into(), self.name.clone());
        labels.insert(
            LABEL_CREATED_AT.into(),
            req.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        );
        labels.insert(LABEL_CONFIG.into(), applied);
        labels.insert(LABEL_LABELS.into(), user_labels);
        if let Some(s) = storage {
            labels.insert(LABEL_STORAGE.into(), s.to_string());
        }
        let cname = record::container_name(&req.name);
        if cname != req.name {
            labels.insert(record::LABEL_NAME.into(), req.name.clone());
        }

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
                .map(|(b, p)| Mount {
                    target: Some(b.target.clone()),
                    source: Some(p.pin.to_string_lossy().into_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(b.read_only()),
                    bind_options: b.propagation().and_then(|o| o.parse().ok()).map(|p| {
                        MountBindOptions {
                            propagation: Some(p),
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                })
                .collect();
        } else {
            binds.extend(prepared.bind_mounts.iter().map(BindSpec::entry));
        }

        let memory = memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let mut body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            env: Some(spec.env.clone()),
            labels: Some(labels),
            exposed_ports: (!prepared.exposed.is_empty()).then(|| prepared.exposed.clone()),
            volumes: (!prepared.anonymous.is_empty()).then(|| prepared.anonymous.clone()),
            healthcheck: prepared.healthcheck.clone(),
            host_config: Some(HostConfig {
                binds: Some(binds),
                mounts: (!mounts.is_empty()).then_some(mounts),
                port_bindings: Some(prepared.bindings.clone()),
                network_mode: Some(spec.network_mode.clone()),
                restart_policy: Some(prepared.restart.clone()),
                nano_cpus: cores.map(|c| i64::from(c) * 1_000_000_000),
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
            let cid = &container;
            let started = self
                .engine
                .quick(
                    "start",
                    |d| async move { d.start_container(cid, None).await },
                )
                .await;
            if let Err(e) = started {
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

    async fn update(&self, id: &str, req: UpdateRequest) -> Result<Instance> {
        self.check_sizes(req.resources.memory_limit(), req.resources.total_space())
            .await?;
        let (container, c) = self.resolve(id).await?;
        let current = self
            .to_instance(&c)
            .ok_or_else(|| PluginError::not_found(id))?;
        if let Some(labels) = &req.labels {
            if *labels != current.metadata.labels {
                return Err(PluginError::new(
                    ErrorCode::OperationNotSupported,
                    "docker cannot change the labels of an existing container",
                )
                .with_detail("operation", "update labels"));
            }
        }
        if let Some(s) = req.resources.total_space() {
            if Some(s) != current.resources.total_space() {
                return Err(PluginError::new(
                    ErrorCode::OperationNotSupported,
                    "docker cannot resize the storage of an existing container",
                )
                .with_detail("operation", "update storage"));
            }
        }
        let cores = req.resources.cores();
        let memory = req.resources.memory_limit();
        if cores.is_none() && memory.is_none() {
            return Ok(current);
        }
        let host = self.host_resources().await?;
        self.check_resources(&host, cores, memory)?;
        let memory = memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let body = ContainerUpdateBody {
            nano_cpus: cores.map(|c| i64::from(c) * 1_000_000_000),
            memory,
            memory_swap: memory,
            ..Default::default()
        };
        let cid = container.clone();
        self.expect(id, &["update"]);
        self.engine
            .quick(
                "update",
                |d| async move { d.update_container(&cid, body).await },
            )
            .await
            .inspect_err(|_| self.unexpect(id))?;
        self.touch(id);
        self.stats.forget(id);
        self.instance(id, &container).await
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let cached = lock(&self.containers).get(id).cloned();
        if let (Some(cid), true) = (cached, force) {
            // Our own cache says which container it is: no need to look first.
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            let removed = self
                .engine
                .quick("remove", |d| async move {
                    d.remove_container(&cid, Some(options)).await
                })
                .await;
            match removed {
                Ok(()) => {
                    self.forget(id);
                    self.unpin(id);
                    return Ok(());
                }
                // Gone or replaced meanwhile: look it up by its label.
                Err(e) if e.status() == Some(404) => {
                    lock(&self.containers).remove(id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (container, c) = self.resolve(id).await?;
        let active = matches!(
            state_of(&c),
            Some(ContainerStateStatusEnum::RUNNING)
                | Some(ContainerStateStatusEnum::PAUSED)
                | Some(ContainerStateStatusEnum::RESTARTING)
        );
        if active && !force {
            return Err(PluginError::invalid_state(
                "the instance is running; stop it or delete with force",
            ));
        }
        // Not forced: if it was started by hand since the check, the engine refuses.
        self.remove_with(&container, force).await.map_err(|e| {
            if e.status() == Some(409) {
                PluginError::invalid_state("the instance is running; stop it or delete with force")
            } else {
                e.into()
            }
        })?;
        self.forget(id);
        self.unpin(id);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<Instance> {
        // A local engine's instance may have pinned bind mounts to check first: the
        // checked way below. A remote one's goes straight to the engine.
        let cached = (!self.engine.is_local())
            .then(|| lock(&self.containers).get(id).cloned())
            .flatten();
        if let Some(cid) = cached {
            // Straight to the engine: starting a running container changes nothing
            // there either. Anything unusual takes the checked way below.
            self.expect(id, &["start"]);
            let c = cid.clone();
            match self
                .engine
                .quick(
                    "start",
                    |d| async move { d.start_container(&c, None).await },
                )
                .await
            {
                Ok(()) => return Ok(self.noted(self.instance(id, &cid).await?)),
                // Gone or replaced: look it up by its label below.
                Err(e) if e.status() == Some(404) => {
                    self.unexpect(id);
                    lock(&self.containers).remove(id);
                }
                Err(e) => {
                    self.unexpect(id);
                    if !e.is_unavailable() {
                        if let Ok((_, c)) = self.resolve(id).await {
                            if state_of(&c) == Some(ContainerStateStatusEnum::PAUSED) {
                                return Err(PluginError::invalid_state(
                                    "the instance is paused; unpause it",
                                ));
                            }
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        let (container, c) = self.resolve(id).await?;
        match state_of(&c) {
            // Already running: nothing changes.
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::RESTARTING) => return self.instance_of(id, &c),
            Some(ContainerStateStatusEnum::PAUSED) => {
                return Err(PluginError::invalid_state(
                    "the instance is paused; unpause it",
                ))
            }
            _ => {
                self.check_pins(&c)?;
                let cid = container.clone();
                self.expect(id, &["start"]);
                self.engine
                    .quick(
                        "start",
                        |d| async move { d.start_container(&cid, None).await },
                    )
                    .await
                    .inspect_err(|_| self.unexpect(id))?;
            }
        }
        Ok(self.noted(self.instance(id, &container).await?))
    }

    async fn unpause_container(&self, container: &str) -> Result<()> {
        match self
            .engine
            .quick("unpause", |d| async move {
                d.unpause_container(container).await
            })
            .await
        {
            // Not paused (any more): nothing to do.
            Err(e) if e.status() == Some(409) => Ok(()),
            other => Ok(other?),
        }
    }

    async fn stop(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let (container, c) = self.resolve(id).await?;
        match state_of(&c) {
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::RESTARTING)
            | Some(ContainerStateStatusEnum::PAUSED) => {}
            // Created, exited, dead: nothing runs.
            _ => return self.instance_of(id, &c),
        }
        self.expect(id, &["die"]);
        if state_of(&c) == Some(ContainerStateStatusEnum::PAUSED) {
            // A frozen process cannot handle (or die of) a signal.
            self.expect(id, &["unpause"]);
            self.unpause_container(&container)
                .await
                .inspect_err(|_| self.unexpect(id))?;
        }
        // `force` is a stop with no grace period: Docker kills at once and, as for any
        // stop, does not apply the restart policy.
        let grace = if options.force { 0 } else { options.timeout };
        let grace_i32 = i32::try_from(grace).unwrap_or(i32::MAX);
        let timeout =
            Duration::from_secs(grace).saturating_add(self.engine.config().request_timeout());
        let cid = container.clone();
        let stop = StopContainerOptions {
            t: Some(grace_i32),
            signal: None,
        };
        self.engine
            .call("stop", timeout, |d| async move {
                d.stop_container(&cid, Some(stop)).await
            })
            .await
            .inspect_err(|_| self.unexpect(id))?;
        self.stats.forget(id);
        Ok(self.noted(self.instance(id, &container).await?))
    }

    async fn pause(&self, id: &str) -> Result<Instance> {
        let (container, c) = self.resolve(id).await?;
        match state_of(&c) {
            Some(ContainerStateStatusEnum::PAUSED) => return self.instance_of(id, &c),
            Some(ContainerStateStatusEnum::RUNNING) => {
                let cid = container.clone();
                self.expect(id, &["pause"]);
                self.engine
                    .quick("pause", |d| async move { d.pause_container(&cid).await })
                    .await
                    .inspect_err(|_| self.unexpect(id))?;
                self.touch(id);
            }
            other => {
                return Err(PluginError::invalid_state(format!(
                    "cannot pause an instance that is {}",
                    record::map_state(other, false, false, "").as_str()
                )))
            }
        }
        self.instance(id, &container).await
    }

    async fn unpause(&self, id: &str) -> Result<Instance> {
        let (container, c) = self.resolve(id).await?;
        match state_of(&c) {
            Some(ContainerStateStatusEnum::RUNNING) => return self.instance_of(id, &c),
            Some(ContainerStateStatusEnum::PAUSED) => {
                self.expect(id, &["unpause"]);
                self.unpause_container(&container)
                    .await
                    .inspect_err(|_| self.unexpect(id))?;
                self.touch(id);
            }
            other => {
                return Err(PluginError::invalid_state(format!(
                    "cannot unpause an instance that is {}",
                    record::map_state(other, false, false, "").as_str()
                )))
            }
        }
        self.instance(id, &container).await
    }

    async fn usage(&self, id: &str) -> Result<Usage> {
        if let Some(u) = self.stats.fresh(id) {
            return Ok(u);
        }
        let (container, c) = self.resolve(id).await?;
        let host = c.host_config.as_ref();
        let storage_total = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_STORAGE))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let alloc = Allocation {
            cores: record::cores_of(
                host.and_then(|h| h.nano_cpus),
                host.and_then(|h| h.cpu_quota),
                host.and_then(|h| h.cpu_period),
            ),
            memory_limit: host
                .and_then(|h| h.memory)
                .filter(|m| *m > 0)
                .map(|m| m as u64),
            storage_total,
        };
        let running = matches!(
            state_of(&c),
            Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::PAUSED)
        );
        if running {
            let docker = self.engine.client().await?;
            let idle = Duration::from_secs(self.engine.config().stats_idle_secs);
            if let Some(u) = self.stats.watch(docker, id, &container, alloc, idle).await {
                return Ok(u);
            }
        }
        // Not running: nothing is used but the writable layer.
        let host_res = self.host_resources().await?;
        let sized = self
            .engine
            .quick("inspect", |d| async move {
                d.inspect_container(&container, Some(InspectContainerOptions { size: true }))
                    .await
            })
            .await?;
        Ok(Usage {
            cpu: CpuUsage {
                usage: 0.0,
                cores: alloc
                    .cores
                    .map(|c| c.ceil() as u32)
                    .unwrap_or(host_res.cpus),
            },
            memory: MemoryUsage::new(0, alloc.memory_limit.unwrap_or(host_res.memory)),
            storage: StorageUsage {
                used: sized.size_rw.unwrap_or(0).max(0) as u64,
                total: storage_total,
            },
            network: Default::default(),
        })
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        if !lock(&self.abandoned).is_empty() {
            self.sweep_abandoned().await;
        }
        let found = self.containers_of(None).await?;
        let results: Vec<_> = futures_util::stream::iter(found)
            .map(|cid| async move { self.inspect_instance(&cid).await })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(Some(i)) if !lock(&self.abandoned).contains_key(&i.id) => out.push(i),
                Ok(_) => {}
                // Removed between the list and the inspect.
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        // Instances removed while the server was away leave nothing in the state file,
        // nor pins.
        let ids: std::collections::HashSet<&str> = out.iter().map(|i| i.id.as_str()).collect();
        self.touched.retain(|id| ids.contains(id));
        self.sweep_pins(&ids).await;
        Ok(out)
    }

    /// Removes the pins of instances that have no container any more (removed by hand
    /// while the server was away). A pin directory is left alone while a create may
    /// still be making its container (younger than [`ABANDONED_FOR`]) and while any
    /// container, of any backend, carries its id.
    async fn sweep_pins(&self, listed: &std::collections::HashSet<&str>) {
        if !self.engine.is_local() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.engine.config().pin_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_FOR));
            if listed.contains(id.as_str())
                || !old
                || !pin::usable_id(&id)
                || lock(&self.creating).contains(&id)
            {
                continue;
            }
            let options = ListContainersOptions {
                all: true,
                filters: Some(filters(&[("label", format!("{LABEL_ID}={id}"))])),
                ..Default::default()
            };
            let found = self
                .engine
                .quick(
                    "list",
                    |d| async move { d.list_containers(Some(options)).await },
                )
                .await;
            if matches!(found, Ok(v) if v.is_empty()) {
                tracing::info!(backend = %self.name, instance = %id, "removing the pins of a container gone");
                self.unpin(&id);
            }
        }
    }

    async fn describe(&self) -> Result<BackendDescription> {
        let version = self
            .engine
            .quick("version", |d| async move { d.version().await })
            .await?;
        let info = self
            .engine
            .quick("info", |d| async move { d.info().await })
            .await?;
        let negotiated = self.engine.client().await?.client_version().to_string();
        let mut capabilities: Vec<String> = [
            "containers",
            "images",
            "networks",
            "volumes",
            "pause",
            "live-update",
            "events",
            "usage",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if self.storage_quota.load(Ordering::Relaxed) == QUOTA_YES {
            capabilities.push("storage-quota".into());
        }
        let mut extra = unicompute_plugin_api::JsonMap::new();
        extra.insert("negotiatedApiVersion".into(), negotiated.into());
        if let Some(v) = version.min_api_version {
            extra.insert("minApiVersion".into(), v.into());
        }
        for (key, value) in [
            ("storageDriver", info.driver),
            ("operatingSystem", info.operating_system),
            ("kernelVersion", info.kernel_version),
            ("os", version.os),
            ("arch", version.arch),
        ] {
            if let Some(v) = value {
                extra.insert(key.into(), v.into());
            }
        }
        if let Some(v) = info.cgroup_version {
            extra.insert("cgroupVersion".into(), v.to_string().into());
        }
        Ok(BackendDescription {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            capabilities,
            supported_types: vec![InstanceType::Container],
            extra,
        })
    }

    async fn health(&self) -> Result<()> {
        let timeout = self.engine.config().connect_timeout();
        self.engine
            .call("ping", timeout, |d| async move { d.ping().await })
            .await?;
        Ok(())
    }

    async fn images(&self) -> Result<Vec<Image>> {
        let options = ListImagesOptions::default();
        let images = self
            .engine
            .quick(
                "images",
                |d| async move { d.list_images(Some(options)).await },
            )
            .await?;
        let mut out = Vec::new();
        for img in images {
            let created_at = Utc.timestamp_opt(img.created, 0).single();
            let names: Vec<String> = img
                .repo_tags
                .iter()
                .filter(|t| t.as_str() != "<none>:<none>")
                .cloned()
                .collect();
            let names = if names.is_empty() {
                vec![img.id.clone()]
            } else {
                names
            };
            for name in names {
                out.push(Image {
                    name,
                    id: Some(img.id.clone()),
                    size: Some(img.size.max(0) as u64),
                    format: Some("oci".into()),
                    created_at,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl Backend for DockerBackend {
    fn describe(&self) -> Result<BackendDescription> {
        self.run(
            "describe",
            String::new(),
            |s| async move { s.describe().await },
        )
    }

    fn health(&self) -> Result<()> {
        self.run("health", String::new(), |s| async move { s.health().await })
    }

    fn host_resources(&self) -> Result<HostResources> {
        self.run("host_resources", String::new(), |s| async move {
            s.host_resources().await
        })
    }

    fn images(&self) -> Result<Vec<Image>> {
        self.run("images", String::new(), |s| async move { s.images().await })
    }

    fn list(&self) -> Result<Vec<Instance>> {
        self.run("list", String::new(), |s| async move { s.list().await })
    }

    fn get(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run("get", id.clone(), |s| async move {
            let (_, c) = s.resolve(&id).await?;
            s.instance_of(&id, &c)
        })
    }

    fn create(&self, request: CreateRequest) -> Result<Instance> {
        self.run("create", request.id.clone(), |s| async move {
            s.create(request).await
        })
    }

    fn update(&self, id: &str, request: UpdateRequest) -> Result<Instance> {
        let id = id.to_owned();
        self.run("update", id.clone(), |s| async move {
            s.update(&id, request).await
        })
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let id = id.to_owned();
        self.run("delete", id.clone(), |s| async move {
            s.delete(&id, force).await
        })
    }

    fn start(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run("start", id.clone(), |s| async move { s.start(&id).await })
    }

    fn stop(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let id = id.to_owned();
        self.run(
            "stop",
            id.clone(),
            |s| async move { s.stop(&id, options).await },
        )
    }

    fn restart(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let id = id.to_owned();
        self.run("restart", id.clone(), |s| async move {
            s.stop(&id, options).await?;
            s.start(&id).await
        })
    }

    fn pause(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run("pause", id.clone(), |s| async move { s.pause(&id).await })
    }

    fn unpause(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run(
            "unpause",
            id.clone(),
            |s| async move { s.unpause(&id).await },
        )
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        // The fast path needs no trip through the runtime.
        if let Some(u) = self.shared.stats.fresh(id) {
            return Ok(u);
        }
        let id = id.to_owned();
        self.run("usage", id.clone(), |s| async move { s.usage(&id).await })
    }

    fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.shared.stats.clear();
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

    #[test]
    fn a_backend_is_made_with_the_engine_down() {
        let ctx = BackendContext {
            name: "docker-down".into(),
            config: serde_json::json!({"endpoint": "unix:///nonexistent/docker.sock"}),
            events: EventSink::discard(),
        };
        let b = DockerBackend::new(ctx).unwrap();
        // How fast: measured in the bench (`examples/bench.rs`), not asserted here.
        let e = b.list().unwrap_err();
        assert_eq!(e.code, ErrorCode::BackendUnavailable);
        let e = b.get("i-1").unwrap_err();
        assert_eq!(e.code, ErrorCode::BackendUnavailable);
        assert_eq!(b.health().unwrap_err().code, ErrorCode::BackendUnavailable);
        b.shutdown();
    }

    #[test]
    fn missing_tls_files_fail_calls_not_the_backend() {
        let ctx = BackendContext {
            name: "docker-tls".into(),
            config: serde_json::json!({
                "endpoint": "tcp://127.0.0.1:9",
                "tls": {"ca": "/nonexistent/ca.pem", "cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}
            }),
            events: EventSink::discard(),
        };
        let b = DockerBackend::new(ctx).unwrap();
        let e = b.health().unwrap_err();
        assert_eq!(e.code, ErrorCode::BackendError, "{e:?}");
        assert!(!e.message.contains("/nonexistent"), "{}", e.message);
        b.shutdown();
    }

    #[test]
    fn events_of_our_own_calls_are_skipped_once_and_only_in_order() {
        let b = DockerBackend::new(BackendContext {
            name: "docker-expect".into(),
            config: serde_json::json!({"endpoint": "unix:///nonexistent/docker.sock"}),
            events: EventSink::discard(),
        })
        .unwrap();
        let s = &b.shared;
        s.expect("i-1", &["create", "start"]);
        assert!(s.expected_event("i-1", "create"));
        assert!(s.expected_event("i-1", "start"));
        // Consumed: the next one is someone else's.
        assert!(!s.expected_event("i-1", "start"));
        // Something unexpected drops what was still expected.
        s.expect("i-1", &["start"]);
        assert!(!s.expected_event("i-1", "die"));
        assert!(!s.expected_event("i-1", "start"));
        assert!(!s.expected_event("i-2", "start"));
        s.expect("i-3", &["pause"]);
        s.unexpect("i-3");
        assert!(!s.expected_event("i-3", "pause"));
        b.shutdown();
    }

    #[test]
    fn bad_config_is_refused_at_create() {
        let ctx = BackendContext {
            name: "docker".into(),
            config: serde_json::json!({"endpoint": "ftp://x"}),
            events: EventSink::discard(),
        };
        let e = DockerBackend::new(ctx).err().unwrap();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
    }
}
