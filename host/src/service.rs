//! The domain: what each operation means, whatever the backend. The HTTP layer parses
//! requests into calls of this module and never sees a backend.
//!
//! Rules enforced here, the same for every plugin:
//! - names are valid and unique across backends (reserved before the backend is asked);
//! - operations on one instance run one at a time, different instances in parallel;
//! - state rules of the contract: start of a running instance, stop of a stopped one,
//!   pause of a paused one and unpause of a running one change nothing; otherwise
//!   pause needs a running instance and unpause a paused one; delete of a running,
//!   paused or restarting instance needs `force`;
//! - backend calls run on the blocking pool, never on the HTTP executor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use tokio::sync::mpsc;
use unicompute_plugin_api::{
    Backend, CreateRequest, ErrorCode, Event, EventSink, Instance, InstanceState, JsonMap,
    PluginError, Resources, StopOptions, UpdateRequest, Usage,
};

use crate::api::error::ApiError;
use crate::config::Config;
use crate::inventory::{Inventory, ListFilter};
use crate::plugins::loader::{self, ScanEntry};
use crate::plugins::registry::{BackendEntry, Registry};

/// Whether a name is 1-63 characters of `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start.
    Start,
    /// Stop, graceful or forced.
    Stop(StopOptions),
    /// Stop then start.
    Restart(StopOptions),
    /// Freeze.
    Pause,
    /// Thaw.
    Unpause,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop(_) => "stop",
            Action::Restart(_) => "restart",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
        }
    }
}

/// A create, validated by the HTTP layer.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// Name.
    pub name: String,
    /// Backend name.
    pub backend: String,
    /// Backend-specific config.
    pub config: JsonMap,
    /// Resources.
    pub resources: Resources,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Start after create.
    pub start: bool,
}

/// Backend statuses and counts for cluster status.
#[derive(Clone)]
pub struct BackendSummary {
    /// The backend entry.
    pub entry: Arc<BackendEntry>,
    /// Managed instances.
    pub instances: usize,
    /// Cores allocated to active instances.
    pub cpu_used: u64,
    /// Memory allocated to active instances.
    pub memory_used: u64,
}

/// The service.
pub struct Service {
    config: RwLock<Arc<Config>>,
    registry: RwLock<Arc<Registry>>,
    scanned: Mutex<Vec<ScanEntry>>,
    config_path: Option<PathBuf>,
    events: mpsc::UnboundedSender<(String, Event)>,
    reload_lock: tokio::sync::Mutex<()>,
    /// What is known of every instance.
    pub inventory: Inventory,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    busy: Mutex<BTreeMap<String, usize>>,
}

/// Where the plugins' events arrive, tagged with the backend's name.
pub type EventReceiver = mpsc::UnboundedReceiver<(String, Event)>;

/// Why the service could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file or environment is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A backend's settings were refused by its plugin.
    #[error("invalid configuration: {0}")]
    Registry(#[from] crate::plugins::registry::RegistryError),
}

/// What a reload did, per backend: `kept`, `started`, `restarted`, `stopped`, `disabled`
/// (not running before or after), `removed`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// Plugin files and what loading them gave.
    pub plugins: Vec<PluginFileReport>,
    /// Backends and what happened to them.
    pub backends: BTreeMap<String, String>,
}

/// One plugin file in a [`ReloadReport`].
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginFileReport {
    /// The file.
    pub file: String,
    /// The plugin name and version, when loaded.
    pub plugin: Option<String>,
    /// Why skipped.
    pub skipped: Option<String>,
}

/// Marks an instance busy (spared by resyncs) while alive.
struct Busy<'a> {
    service: &'a Service,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut busy = self.service.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.id);
            }
        }
    }
}

/// Runs a backend call on the blocking pool.
async fn call<T: Send + 'static>(
    backend: &Arc<dyn Backend>,
    f: impl FnOnce(&dyn Backend) -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    let backend = Arc::clone(backend);
    tokio::task::spawn_blocking(move || f(&*backend))
        .await
        .unwrap_or_else(|_| Err(PluginError::internal("the backend call failed")))
}

impl Service {
    /// Loads the plugins and makes the backends of `config`. Returns the receiving end
    /// of the plugins' events, to hand to [`Service::run_events`]. `config_path` is
    /// read again on [`Service::reload`].
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<(Arc<Service>, EventReceiver), StartError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let scanned = loader::scan(&config.plugins.dirs);
        let registry = Registry::build(&config.backends, &scanned, Self::event_sink(tx.clone()))?;
        let service = Service {
            config: RwLock::new(Arc::new(config)),
            registry: RwLock::new(Arc::new(registry)),
            scanned: Mutex::new(scanned),
            config_path,
            events: tx,
            reload_lock: tokio::sync::Mutex::new(()),
            inventory: Inventory::default(),
            locks: Mutex::default(),
            busy: Mutex::default(),
        };
        Ok((Arc::new(service), rx))
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The backends in force.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the config file (and environment), loads new or changed plugin files,
    /// and swaps in the new set of backends. Backends whose settings and plugin are
    /// unchanged are kept as they are; requests in flight finish on the backend they
    /// started on. On an invalid config nothing changes.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadReport, StartError> {
        self.reload_with(true).await
    }

    /// As [`Service::reload`], with the configuration in force: only the plugin files
    /// are looked at again (what the directory watch does).
    pub async fn reload_plugins(self: &Arc<Self>) -> Result<ReloadReport, StartError> {
        self.reload_with(false).await
    }

    /// Watches the plugin directories every `plugins.watch_interval_secs` (read anew
    /// each round, so a reload can change it; `0` pauses the watch). A `*.so` file
    /// added, replaced or removed is acted on once it has stayed the same for one more round,
    /// so that a file still being written is not loaded half-made.
    pub async fn watch_plugins(self: Arc<Self>) {
        let mut pending: Option<Vec<loader::Fingerprinted>> = None;
        // A listing whose reload failed (a plugin refused the settings in force) is
        // not tried again until the directory changes: no reload loop, no new copy of
        // the same library every round.
        let mut failed: Option<Vec<loader::Fingerprinted>> = None;
        loop {
            let config = self.config();
            let secs = config.plugins.watch_interval_secs;
            tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
            if secs == 0 {
                pending = None;
                continue;
            }
            let dirs = config.plugins.dirs.clone();
            // Only `*.so` files count: a build's target directory changes all the time.
            let Ok(now) = tokio::task::spawn_blocking(move || {
                let mut files = loader::listing(&dirs);
                files.retain(|(p, _)| loader::is_plugin_file(p));
                files
            })
            .await
            else {
                continue;
            };
            let known: Vec<loader::Fingerprinted> = self
                .scanned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|e| loader::is_plugin_file(&e.path))
                .map(|e| (e.path.clone(), e.fingerprint))
                .collect();
            if now == known || failed.as_ref() == Some(&now) {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&now) {
                // Changed since the last look: wait one more round for it to settle.
                pending = Some(now);
                continue;
            }
            pending = None;
            tracing::info!("plugin directory changed: loading the plugins again");
            match self.reload_plugins().await {
                Ok(_) => failed = None,
                Err(e) => {
                    tracing::warn!(error = %e, "plugins not reloaded; the running set is kept");
                    failed = Some(now);
                }
            }
        }
    }

    async fn reload_with(self: &Arc<Self>, read_config: bool) -> Result<ReloadReport, StartError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let svc = Arc::clone(self);
        let (new_config, new_registry, scanned) = tokio::task::spawn_blocking(move || {
            let config = if read_config {
                Config::load(svc.config_path.as_deref())?
            } else {
                (*svc.config()).clone()
            };
            let previous = svc
                .scanned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let scanned = loader::rescan(&config.plugins.dirs, &previous);
            let old = svc.registry();
            let registry = Registry::rebuild(
                Some(&old),
                &config.backends,
                &scanned,
                Self::event_sink(svc.events.clone()),
            )?;
            Ok::<_, StartError>((config, registry, scanned))
        })
        .await
        .unwrap_or_else(|_| {
            Err(StartError::Config(crate::config::ConfigError::Invalid(
                "reload failed".into(),
            )))
        })?;
        let old = self.registry();
        let new_registry = Arc::new(new_registry);
        let mut report = ReloadReport {
            plugins: scanned
                .iter()
                .map(|e| PluginFileReport {
                    file: e.path.display().to_string(),
                    plugin: e
                        .outcome
                        .as_ref()
                        .ok()
                        .map(|p| format!("{} {}", p.handshake.name, p.handshake.version)),
                    skipped: e.outcome.as_ref().err().cloned(),
                })
                .collect(),
            backends: BTreeMap::new(),
        };
        if new_config.server.listen != self.config().server.listen {
            tracing::warn!(
                listen = %new_config.server.listen,
                "server.listen changed: it takes effect at the next start"
            );
        }
        *self.scanned.lock().unwrap_or_else(|p| p.into_inner()) = scanned;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new_config);
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&new_registry);

        for entry in new_registry.all() {
            let verdict = match old.get(&entry.name) {
                Some(o) if Arc::ptr_eq(&o, entry) => "kept",
                Some(_) if entry.config.enabled => "restarted",
                None if entry.config.enabled => "started",
                Some(o) if o.config.enabled => "stopped",
                // Was not running and is not now.
                _ => "disabled",
            };
            report
                .backends
                .insert(entry.name.clone(), verdict.to_owned());
        }
        for o in old.all() {
            if new_registry.get(&o.name).is_none() {
                report.backends.insert(o.name.clone(), "removed".to_owned());
            }
        }
        // Old backends that were replaced or dropped: stop their background work,
        // forget their instances unless the new backend of the same name lists them.
        for o in old.all() {
            let replaced = !new_registry
                .get(&o.name)
                .is_some_and(|n| Arc::ptr_eq(&n, o));
            if !replaced {
                continue;
            }
            if let Some(b) = o.backend.clone() {
                tokio::task::spawn_blocking(move || b.shutdown());
            }
            let still_served = new_registry
                .get(&o.name)
                .is_some_and(|n| n.backend.is_some());
            if !still_served {
                for i in self.inventory.of_backend(&o.name) {
                    self.inventory.remove(&i.id);
                }
            }
        }
        for (entry, backend) in new_registry.live() {
            if report.backends.get(&entry.name).map(String::as_str) != Some("kept")
                && self.check(entry, backend).await
            {
                self.resync(entry, backend).await;
            }
        }
        tracing::info!(backends = ?report.backends, "reloaded");
        Ok(report)
    }

    /// The event sink factory for [`Registry::build`]: events go into `tx`.
    pub fn event_sink(tx: mpsc::UnboundedSender<(String, Event)>) -> impl Fn(&str) -> EventSink {
        move |backend: &str| {
            let tx = tx.clone();
            let backend = backend.to_owned();
            EventSink::from_fn(move |ev: &Event| {
                let _ = tx.send((backend.clone(), ev.clone()));
            })
        }
    }

    fn mark_busy(&self, id: &str) -> Busy<'_> {
        *self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default() += 1;
        Busy {
            service: self,
            id: id.to_owned(),
        }
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = Arc::clone(
            self.locks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.to_owned())
                .or_default(),
        );
        m.lock_owned().await
    }

    fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The live backend of a name, or the error a client gets.
    pub fn backend(&self, name: &str) -> Result<(Arc<BackendEntry>, Arc<dyn Backend>), ApiError> {
        let entry = self
            .registry()
            .get(name)
            .ok_or_else(|| ApiError::invalid_backend(name))?;
        match &entry.backend {
            Some(b) => {
                let b = Arc::clone(b);
                Ok((entry, b))
            }
            None => {
                let reason = entry
                    .health()
                    .reason
                    .unwrap_or_else(|| "not started".into());
                Err(ApiError::unavailable(name, &reason))
            }
        }
    }

    /// Maps a backend's error, noting unavailability.
    fn fail(&self, entry: &BackendEntry, e: PluginError) -> ApiError {
        if e.code == ErrorCode::BackendUnavailable {
            let reason = e.message.clone();
            entry.set_health(|h| {
                h.available = false;
                h.reason = Some(reason);
            });
        }
        ApiError::from_plugin(&entry.name, e)
    }

    /// Makes a backend's instance ours: its backend name, timestamps in milliseconds
    /// (one format for every plugin).
    fn adopt(&self, entry: &BackendEntry, mut inst: Instance) -> Instance {
        inst.backend = entry.name.clone();
        inst.created_at = inst.created_at.trunc_subsecs(3);
        inst.updated_at = inst.updated_at.trunc_subsecs(3);
        inst
    }

    /// One instance by id, from memory.
    pub fn get(&self, id: &str) -> Result<Arc<Instance>, ApiError> {
        self.inventory
            .get(id)
            .ok_or_else(|| ApiError::instance_not_found(id).detail("id", id))
    }

    /// One instance by name, from memory.
    pub fn get_by_name(&self, name: &str) -> Result<Arc<Instance>, ApiError> {
        self.inventory
            .get_by_name(name)
            .ok_or_else(|| ApiError::instance_not_found(name).detail("name", name))
    }

    /// A page of instances, from memory. The filter's backend must be configured.
    pub fn list(
        &self,
        filter: &ListFilter,
        page: usize,
        page_size: usize,
    ) -> Result<(Vec<Arc<Instance>>, usize), ApiError> {
        if let Some(b) = &filter.backend {
            if self.registry().get(b).is_none() {
                return Err(ApiError::invalid_backend(b));
            }
        }
        Ok(self.inventory.list(filter, page, page_size))
    }

    /// Creates an instance.
    pub async fn create(&self, new: NewInstance) -> Result<Arc<Instance>, ApiError> {
        if !valid_name(&new.name) {
            return Err(ApiError::invalid(
                "name must be 1-63 characters of [a-zA-Z0-9_.-], starting with a letter or digit",
            )
            .detail("name", new.name.as_str()));
        }
        let (entry, backend) = self.backend(&new.backend)?;
        let created_at = Utc::now().trunc_subsecs(3);
        let id = new_id(created_at.timestamp_millis());
        let reservation = self
            .inventory
            .reserve_name(&new.name, &id)
            .ok_or_else(|| ApiError::already_exists(&new.name))?;
        let _busy = self.mark_busy(&id);
        let request = CreateRequest {
            id: id.clone(),
            name: new.name.clone(),
            config: new.config,
            resources: new.resources,
            labels: new.labels,
            start: new.start,
            created_at,
        };
        tracing::info!(instance = %id, name = %new.name, backend = %entry.name, "creating");
        let created = call(&backend, move |b| b.create(request))
            .await
            .map_err(|e| self.fail(&entry, e))?;
        let created = self.adopt(&entry, created);
        tracing::info!(instance = %id, state = created.state.as_str(), "created");
        Ok(reservation.commit(created))
    }

    /// Refreshes an instance from its backend; forgets it if the backend lost it.
    async fn fresh(
        &self,
        entry: &BackendEntry,
        backend: &Arc<dyn Backend>,
        id: &str,
    ) -> Result<Instance, ApiError> {
        let owned = id.to_owned();
        match call(backend, move |b| b.get(&owned)).await {
            Ok(inst) => {
                let inst = self.adopt(entry, inst);
                self.inventory.upsert(inst.clone());
                Ok(inst)
            }
            Err(e) if e.code == ErrorCode::InstanceNotFound => {
                self.inventory.remove(id);
                Err(ApiError::instance_not_found(id).detail("id", id))
            }
            Err(e) => Err(self.fail(entry, e)),
        }
    }

    /// Runs a lifecycle action.
    pub async fn act(&self, id: &str, action: Action) -> Result<Arc<Instance>, ApiError> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let _guard = self.lock(id).await;
        let _busy = self.mark_busy(id);
        let current = self.fresh(&entry, &backend, id).await?;
        use InstanceState::*;
        let state = current.state;
        let unchanged = match action {
            Action::Start => state == Running,
            Action::Stop(_) => matches!(state, Stopped | Created),
            Action::Pause => state == Paused,
            Action::Unpause => state == Running,
            Action::Restart(_) => false,
        };
        if unchanged {
            return Ok(self.inventory.upsert(current));
        }
        let refused = match action {
            Action::Pause => state != Running,
            Action::Unpause => state != Paused,
            _ => false,
        };
        if refused {
            return Err(ApiError::invalid_state(format!(
                "cannot {} an instance that is {}",
                action.name(),
                state.as_str()
            ))
            .detail("state", state.as_str()));
        }
        tracing::info!(instance = %id, action = action.name(), "acting");
        let owned = id.to_owned();
        let after = call(&backend, move |b| match action {
            Action::Start => b.start(&owned),
            Action::Stop(o) => b.stop(&owned, o),
            Action::Restart(o) => b.restart(&owned, o),
            Action::Pause => b.pause(&owned),
            Action::Unpause => b.unpause(&owned),
        })
        .await
        .map_err(|e| self.fail(&entry, e))?;
        let after = self.adopt(&entry, after);
        Ok(self.inventory.upsert(after))
    }

    /// Changes resources or labels.
    pub async fn update(
        &self,
        id: &str,
        request: UpdateRequest,
    ) -> Result<Arc<Instance>, ApiError> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let _guard = self.lock(id).await;
        let _busy = self.mark_busy(id);
        let owned = id.to_owned();
        let after = call(&backend, move |b| b.update(&owned, request))
            .await
            .map_err(|e| self.fail(&entry, e))?;
        let after = self.adopt(&entry, after);
        tracing::info!(instance = %id, "updated");
        Ok(self.inventory.upsert(after))
    }

    /// Deletes an instance.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), ApiError> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let guard = self.lock(id).await;
        let _busy = self.mark_busy(id);
        let current = self.fresh(&entry, &backend, id).await?;
        if current.state.is_active() && !force {
            return Err(ApiError::invalid_state(format!(
                "instance is {}; stop it first or delete with ?force=true",
                current.state.as_str()
            ))
            .detail("state", current.state.as_str()));
        }
        let owned = id.to_owned();
        match call(&backend, move |b| b.delete(&owned, force)).await {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::InstanceNotFound => {}
            Err(e) => return Err(self.fail(&entry, e)),
        }
        self.inventory.remove(id);
        drop(guard);
        self.forget_lock(id);
        tracing::info!(instance = %id, "deleted");
        Ok(())
    }

    /// Resource usage, live from the backend.
    pub async fn usage(&self, id: &str) -> Result<Usage, ApiError> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let owned = id.to_owned();
        match call(&backend, move |b| b.usage(&owned)).await {
            Ok(u) => Ok(u),
            Err(e) if e.code == ErrorCode::InstanceNotFound => {
                self.inventory.remove(id);
                Err(ApiError::instance_not_found(id).detail("id", id))
            }
            Err(e) => Err(self.fail(&entry, e)),
        }
    }

    /// A backend's description, live; falls back to the last one read when the
    /// backend does not answer.
    pub async fn describe(
        &self,
        name: &str,
    ) -> Result<
        (
            Arc<BackendEntry>,
            Option<unicompute_plugin_api::BackendDescription>,
        ),
        ApiError,
    > {
        let entry = self
            .registry()
            .get(name)
            .ok_or_else(|| ApiError::invalid_backend(name))?;
        let Some(backend) = entry.backend.clone() else {
            return Ok((entry, None));
        };
        if self.check(&entry, &backend).await {
            match call(&backend, |b| b.describe()).await {
                Ok(d) => {
                    let fresh = d.clone();
                    entry.set_health(|h| h.description = Some(fresh));
                    return Ok((entry, Some(d)));
                }
                Err(e) => {
                    let _ = self.fail(&entry, e);
                }
            }
        }
        let cached = entry.health().description;
        Ok((entry, cached))
    }

    /// The images or templates of a backend, live.
    pub async fn images(&self, name: &str) -> Result<Vec<unicompute_plugin_api::Image>, ApiError> {
        let (entry, backend) = self.backend(name)?;
        call(&backend, |b| b.images())
            .await
            .map_err(|e| self.fail(&entry, e))
    }

    /// Per-backend counts for cluster status, for the enabled backends.
    pub fn summaries(&self) -> Vec<BackendSummary> {
        let usage = self.inventory.usage_by_backend();
        self.registry()
            .all()
            .filter(|e| e.config.enabled)
            .map(|e| {
                let (instances, cpu_used, memory_used) =
                    usage.get(&e.name).copied().unwrap_or_default();
                BackendSummary {
                    entry: Arc::clone(e),
                    instances,
                    cpu_used,
                    memory_used,
                }
            })
            .collect()
    }

    /// Checks one backend's health; on a change to healthy, reads its capacity and
    /// description. Returns whether it is available.
    pub async fn check(&self, entry: &Arc<BackendEntry>, backend: &Arc<dyn Backend>) -> bool {
        let was = entry.health();
        let result = call(backend, |b| b.health()).await;
        let now = Some(Utc::now());
        match result {
            Ok(()) => {
                let refresh = !was.available || was.host.is_none() || was.description.is_none();
                let (host, description) = if refresh {
                    (
                        call(backend, |b| b.host_resources()).await.ok(),
                        call(backend, |b| b.describe()).await.ok(),
                    )
                } else {
                    (was.host.clone(), was.description.clone())
                };
                entry.set_health(|h| {
                    h.available = true;
                    h.reason = None;
                    h.last_check = now;
                    h.host = host.or(h.host.take());
                    h.description = description.or(h.description.take());
                });
                if !was.available {
                    tracing::info!(backend = %entry.name, "backend available");
                }
                true
            }
            Err(e) => {
                if was.available || was.last_check.is_none() {
                    tracing::warn!(backend = %entry.name, reason = %e.message, "backend unavailable");
                }
                entry.set_health(|h| {
                    h.available = false;
                    h.reason = Some(e.message);
                    h.last_check = now;
                });
                false
            }
        }
    }

    /// Reads every instance of one backend into the inventory.
    pub async fn resync(&self, entry: &Arc<BackendEntry>, backend: &Arc<dyn Backend>) {
        let since = self.inventory.seq();
        match call(backend, |b| b.list()).await {
            Ok(list) => {
                let list: Vec<Instance> = list.into_iter().map(|i| self.adopt(entry, i)).collect();
                let busy: BTreeSet<String> = self
                    .busy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                tracing::debug!(backend = %entry.name, instances = list.len(), "resynced");
                self.inventory
                    .replace_backend(&entry.name, list, &busy, since);
            }
            Err(e) => {
                let _ = self.fail(entry, e);
            }
        }
    }

    /// Checks and resyncs every live backend, at most `limit` each.
    pub async fn sync_all(self: &Arc<Self>, limit: Duration) {
        let mut tasks = Vec::new();
        for (entry, backend) in self.registry().live() {
            let (svc, entry, backend) = (Arc::clone(self), Arc::clone(entry), Arc::clone(backend));
            tasks.push(tokio::spawn(async move {
                let work = async {
                    if svc.check(&entry, &backend).await {
                        svc.resync(&entry, &backend).await;
                    }
                };
                if tokio::time::timeout(limit, work).await.is_err() {
                    tracing::warn!(backend = %entry.name, "backend did not answer in time at sync");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Applies plugin events to the inventory until the channel closes.
    pub async fn run_events(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, Event)>) {
        while let Some((backend, event)) = rx.recv().await {
            match event {
                Event::Changed { instance } => {
                    let Some(entry) = self.registry().get(&backend) else {
                        continue;
                    };
                    let inst = self.adopt(&entry, *instance);
                    tracing::debug!(backend = %backend, instance = %inst.id, state = inst.state.as_str(), "event: changed");
                    if self.inventory.upsert_reported(inst).is_none() {
                        tracing::debug!(backend = %backend, "event about a removed instance ignored");
                    }
                }
                Event::Vanished { id } => {
                    if self
                        .inventory
                        .get(&id)
                        .is_some_and(|i| i.backend == backend)
                    {
                        tracing::info!(backend = %backend, instance = %id, "event: vanished");
                        self.inventory.remove(&id);
                    }
                }
                Event::Resync => {
                    if let Some(entry) = self.registry().get(&backend) {
                        if let Some(b) = entry.backend.clone() {
                            let svc = Arc::clone(&self);
                            tokio::spawn(async move { svc.resync(&entry, &b).await });
                        }
                    }
                }
            }
        }
    }

    /// Health checks and resyncs, forever.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut last_resync = tokio::time::Instant::now();
        loop {
            // Read each round, so that a reload changes them.
            let server = self.config().server.clone();
            let health = Duration::from_secs(server.health_interval_secs.max(1));
            let resync = Duration::from_secs(server.resync_interval_secs.max(1));
            tokio::time::sleep(health).await;
            let full = last_resync.elapsed() >= resync;
            if full {
                last_resync = tokio::time::Instant::now();
            }
            for (entry, backend) in self.registry().live() {
                let (svc, entry, backend) =
                    (Arc::clone(&self), Arc::clone(entry), Arc::clone(backend));
                tokio::spawn(async move {
                    let was = entry.health().available;
                    let now = svc.check(&entry, &backend).await;
                    if now && (full || !was) {
                        svc.resync(&entry, &backend).await;
                    }
                });
            }
        }
    }
}

/// A new instance id: `i-`, then 12 hex digits of the creation millisecond, 4 of a
/// counter within that millisecond, and 4 random ones. Ids sort in creation order, so
/// the list order (`createdAt`, then `id`) is the creation order even for creates in
/// one millisecond; the random part keeps ids unique across restarts.
fn new_id(millis: i64) -> String {
    static LAST: Mutex<(u64, u16)> = Mutex::new((0, 0));
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let ms = u64::try_from(millis).unwrap_or(0).max(last.0);
    let (ms, seq) = if ms == last.0 {
        match last.1.checked_add(1) {
            Some(n) => (ms, n),
            // 65,536 creates in one millisecond: borrow the next one.
            None => (ms + 1, 0),
        }
    } else {
        (ms, 0)
    };
    *last = (ms, seq);
    let random = u16::from_le_bytes(
        *uuid::Uuid::new_v4()
            .as_bytes()
            .first_chunk()
            .unwrap_or(&[0; 2]),
    );
    format!("i-{:012x}{seq:04x}{random:04x}", ms & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::{new_id, valid_name};

    #[test]
    fn ids_sort_in_creation_order() {
        let mut ids: Vec<String> = (0..1000).map(|_| new_id(1_800_000_000_000)).collect();
        assert!(ids.iter().all(|i| i.len() == 22 && i.starts_with("i-")));
        let made = ids.clone();
        ids.sort();
        assert_eq!(ids, made, "same millisecond: the counter orders them");
        let later = new_id(1_800_000_000_001);
        assert!(later > made[999]);
        // A clock that goes back does not make an id sort before earlier ones.
        assert!(new_id(1_700_000_000_000) > later);
        ids.dedup();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn names() {
        for ok in ["a", "web-1", "A.b_c-9", &"x".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
