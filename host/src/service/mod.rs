//! The domain: what each operation means, whatever the backend. It knows no HTTP: it
//! answers its own [`Error`] and views, and `api/` alone turns them into statuses and
//! bodies.
//!
//! Rules enforced here, the same for every plugin:
//! - names are valid and unique across backends (reserved before the backend is asked);
//! - operations on one instance run one at a time, different instances in parallel;
//! - the contract's state table ([`instances::rule`]);
//! - backend calls run on the blocking pool, never on the HTTP executor.
//!
//! Files: `instances` (the operations), `reload` (config and plugin reloads, the
//! directory watch), `sync` (health checks, resyncs, events), `views` (cluster and
//! backend status), `ids` (ids and names), `error`.

mod error;
mod ids;
mod images;
mod instances;
mod operations;
mod reload;
mod streams;
mod sync;
mod views;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use chrono::SubsecRound;
use tokio::sync::mpsc;
use unicompute_plugin_api::sync::{lock, read};
use unicompute_plugin_api::{Backend, ErrorCode, Event, Instance, PluginError};

pub use error::{Error, Lookup};
pub use ids::valid_name;
pub use images::BodyError;
pub use instances::{delete_needs_force, new_instance_id, rule, Action, NewInstance, Rule};
pub use operations::{
    current as current_operation, Canceller, OpKind, OpResult, OpStatus, Operation, Operations,
    Progress, Work,
};
pub use reload::{PluginFileReport, ReloadReport, Verdict};
pub use streams::{ConsoleLease, Consoles};
pub use views::{BackendDetail, BackendView, ClusterBackendView, ClusterHealth, ClusterView};

use crate::config::Config;
use crate::events::{Hub, Kind, Source, Subject};
use crate::inventory::Inventory;
use crate::plugins::loader::{self, ScanEntry};
use crate::plugins::registry::{BackendEntry, Registry};

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
    /// Every change, for the event stream (the inventory publishes on it too).
    pub hub: Arc<Hub>,
    /// Operations running or recently ended.
    pub operations: Operations,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    busy: Mutex<BTreeMap<String, usize>>,
    /// Markers sent after the plugins' events, answered when the events before them
    /// have been applied ([`Service::events_applied`]).
    barriers: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// Who holds each instance's console.
    consoles: Arc<Consoles>,
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

/// Marks an instance busy (spared by resyncs) while alive.
struct Busy<'a> {
    service: &'a Service,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.service.busy);
        if let Some(n) = busy.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.id);
            }
        }
    }
}

/// Runs a backend call on the blocking pool; its time and error code go to the
/// metrics under the backend's name and `operation` (the plugin method's name).
async fn call<T: Send + 'static>(
    entry: &BackendEntry,
    operation: &'static str,
    backend: &Arc<dyn Backend>,
    f: impl FnOnce(&dyn Backend) -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    let backend = Arc::clone(backend);
    let started = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || f(&*backend))
        .await
        .unwrap_or_else(|_| Err(PluginError::internal("the backend call failed")));
    crate::metrics::plugin_call(
        &entry.name,
        operation,
        started.elapsed(),
        r.as_ref().err().map(|e| e.code),
    );
    r
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
        Ok((
            Self::assemble(config, config_path, registry, scanned, tx),
            rx,
        ))
    }

    /// A service over backends made in this process (tests, embedding): no plugin
    /// files, no config file. `backends` are enabled under their names; events pushed
    /// into the sinks that [`Service::event_sink`] makes from the returned sender reach
    /// [`Service::run_events`].
    pub fn in_process(
        config: Config,
        backends: Vec<(String, Arc<dyn Backend>)>,
    ) -> (
        Arc<Service>,
        mpsc::UnboundedSender<(String, Event)>,
        EventReceiver,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let registry = Registry::from_backends(backends);
        let service = Self::assemble(config, None, registry, Vec::new(), tx.clone());
        (service, tx, rx)
    }

    fn assemble(
        config: Config,
        config_path: Option<PathBuf>,
        registry: Registry,
        scanned: Vec<ScanEntry>,
        events: mpsc::UnboundedSender<(String, Event)>,
    ) -> Arc<Service> {
        let hub = Arc::new(Hub::new(
            config.server.events_retained,
            config.server.events_buffer,
        ));
        Arc::new(Service {
            inventory: Inventory::with_hub(Arc::clone(&hub)),
            hub,
            operations: Operations::default(),
            config: RwLock::new(Arc::new(config)),
            registry: RwLock::new(Arc::new(registry)),
            scanned: Mutex::new(scanned),
            config_path,
            events,
            reload_lock: tokio::sync::Mutex::new(()),
            locks: Mutex::default(),
            busy: Mutex::default(),
            barriers: Mutex::default(),
            consoles: Arc::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&read(&self.config))
    }

    /// The backends in force.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&read(&self.registry))
    }

    fn mark_busy(&self, id: &str) -> Busy<'_> {
        *lock(&self.busy).entry(id.to_owned()).or_default() += 1;
        Busy {
            service: self,
            id: id.to_owned(),
        }
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = Arc::clone(lock(&self.locks).entry(id.to_owned()).or_default());
        m.lock_owned().await
    }

    fn forget_lock(&self, id: &str) {
        lock(&self.locks).remove(id);
    }

    /// The live backend of a name, or why there is none.
    pub fn backend(&self, name: &str) -> Result<(Arc<BackendEntry>, Arc<dyn Backend>), Error> {
        let entry = self
            .registry()
            .get(name)
            .ok_or_else(|| Error::InvalidBackend(name.to_owned()))?;
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
                Err(Error::Unavailable {
                    backend: name.to_owned(),
                    reason,
                })
            }
        }
    }

    /// A backend's error as the domain's, noting unavailability.
    fn fail(&self, entry: &BackendEntry, e: PluginError) -> Error {
        if e.code == ErrorCode::BackendUnavailable {
            let reason = e.message.clone();
            let was = entry.health().available;
            entry.set_health(|h| {
                h.available = false;
                h.reason = Some(reason.clone());
            });
            if was {
                self.backend_event(Kind::BackendUnavailable, &entry.name, Some(reason));
            }
        }
        Error::Plugin {
            backend: entry.name.clone(),
            error: e,
        }
    }

    /// Publishes an event about a backend.
    fn backend_event(&self, kind: Kind, backend: &str, reason: Option<String>) {
        self.hub.publish(
            kind,
            Some(backend),
            None,
            Source::Backend,
            Subject::Backend { reason },
        );
    }

    /// Makes a backend's instance ours: its backend name, timestamps in milliseconds
    /// (one format for every plugin).
    fn adopt(&self, entry: &BackendEntry, mut inst: Instance) -> Instance {
        inst.backend = entry.name.clone();
        inst.created_at = inst.created_at.trunc_subsecs(3);
        inst.updated_at = inst.updated_at.trunc_subsecs(3);
        inst
    }
}
