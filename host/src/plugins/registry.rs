//! The configured backends: each one's plugin, its live backend object, and its health.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use unicompute_plugin_api::load::LoadedPlugin;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{Backend, BackendDescription, ErrorCode, EventSink, HostResources};

use crate::config::BackendConfig;
use crate::plugins::loader::ScanEntry;

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A backend's settings were refused by its plugin.
    #[error("backends.{backend}: {message}")]
    BadSettings {
        /// The backend.
        backend: String,
        /// The plugin's message, naming the key.
        message: String,
    },
}

/// The plugin behind a backend.
#[derive(Debug, Clone)]
pub struct PluginMeta {
    /// The plugin's name.
    pub name: String,
    /// The backend kind.
    pub kind: String,
    /// The plugin's version.
    pub version: String,
    /// The interface version it was built against.
    pub interface_version: String,
    /// The file it was loaded from.
    pub file: String,
    /// Which load of the file this is.
    pub load_id: u64,
}

impl PluginMeta {
    fn of(p: &LoadedPlugin, load_id: u64) -> Self {
        PluginMeta {
            load_id,
            name: p.handshake.name.clone(),
            kind: p.handshake.kind.clone(),
            version: p.handshake.version.clone(),
            interface_version: p.handshake.interface_version.clone(),
            file: p.path.display().to_string(),
        }
    }
}

/// What the last health check found.
#[derive(Debug, Clone)]
pub struct Health {
    /// Whether the backend answered.
    pub available: bool,
    /// Why not.
    pub reason: Option<String>,
    /// When it was checked.
    pub last_check: Option<DateTime<Utc>>,
    /// Host capacity, as last read.
    pub host: Option<HostResources>,
    /// Versions and capabilities, as last read.
    pub description: Option<BackendDescription>,
}

/// One configured backend.
pub struct BackendEntry {
    /// Its name in the config.
    pub name: String,
    /// Its config table.
    pub config: BackendConfig,
    /// Its plugin, when loaded.
    pub plugin: Option<PluginMeta>,
    /// The backend object, when the backend is enabled and its plugin made it.
    pub backend: Option<Arc<dyn Backend>>,
    health: Mutex<Health>,
}

impl BackendEntry {
    /// The health as last checked.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Records a health check or an operation's verdict.
    pub fn set_health(&self, update: impl FnOnce(&mut Health)) {
        update(&mut lock(&self.health))
    }

    /// Disabled in the config, healthy (live and answering), or unavailable.
    pub fn status(&self) -> BackendStatus {
        if !self.config.enabled {
            BackendStatus::Disabled
        } else if self.backend.is_some() && self.health().available {
            BackendStatus::Healthy
        } else {
            BackendStatus::Unavailable
        }
    }
}

/// A backend's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendStatus {
    /// Enabled, made by its plugin, and its daemon answers.
    Healthy,
    /// Enabled, but not made (plugin missing, refused) or its daemon does not answer.
    Unavailable,
    /// Disabled in the config.
    Disabled,
}

/// The registry: every configured backend by name.
pub struct Registry {
    backends: BTreeMap<String, Arc<BackendEntry>>,
}

impl Registry {
    /// Makes a backend for every enabled entry of the config from the loaded plugins.
    /// `events` makes the event sink of each backend from its name.
    pub fn build(
        configs: &BTreeMap<String, BackendConfig>,
        scanned: &[ScanEntry],
        events: impl Fn(&str) -> EventSink,
    ) -> Result<Registry, RegistryError> {
        Self::rebuild(None, configs, scanned, events)
    }

    /// As [`Registry::build`], keeping from `old` every backend whose settings and
    /// plugin load are unchanged (the same live object, untouched).
    pub fn rebuild(
        old: Option<&Registry>,
        configs: &BTreeMap<String, BackendConfig>,
        scanned: &[ScanEntry],
        events: impl Fn(&str) -> EventSink,
    ) -> Result<Registry, RegistryError> {
        let mut backends = BTreeMap::new();
        for (name, config) in configs {
            let found = scanned.iter().find_map(|e| {
                e.outcome
                    .as_ref()
                    .ok()
                    .filter(|p| p.handshake.name == config.plugin)
                    .map(|p| (p, e.load_id))
            });
            let plugin = found.map(|(p, _)| p);
            let load_id = found.map(|(_, id)| id);
            if let Some(kept) = old
                .and_then(|o| o.get(name))
                .filter(|e| e.config == *config && e.plugin.as_ref().map(|p| p.load_id) == load_id)
            {
                backends.insert(name.clone(), kept);
                continue;
            }
            let mut health = Health {
                available: false,
                reason: None,
                last_check: None,
                host: None,
                description: None,
            };
            let mut backend: Option<Arc<dyn Backend>> = None;
            match (plugin, config.enabled) {
                (_, false) => health.reason = Some("disabled in the config".into()),
                (None, true) => {
                    let reason = format!("plugin {} is not loaded", config.plugin);
                    tracing::warn!(backend = %name, %reason, "backend unavailable");
                    health.reason = Some(reason);
                }
                (Some(p), true) => {
                    let settings = serde_json::Value::Object(config.settings.clone());
                    match p.create_backend(name, &settings, events(name)) {
                        Ok(b) => {
                            tracing::info!(backend = %name, plugin = %p.handshake.name, "backend created");
                            health.reason = Some("not checked yet".into());
                            backend = Some(Arc::new(b));
                        }
                        Err(e) if e.code == ErrorCode::InvalidConfig => {
                            return Err(RegistryError::BadSettings {
                                backend: name.clone(),
                                message: e.message,
                            })
                        }
                        Err(e) => {
                            tracing::warn!(backend = %name, reason = %e.message, "backend unavailable");
                            health.reason = Some(e.message);
                        }
                    }
                }
            }
            backends.insert(
                name.clone(),
                Arc::new(BackendEntry {
                    name: name.clone(),
                    config: config.clone(),
                    plugin: found.map(|(p, id)| PluginMeta::of(p, id)),
                    backend,
                    health: Mutex::new(health),
                }),
            );
        }
        Ok(Registry { backends })
    }

    /// A registry of backends made in this process (tests, embedding), enabled under
    /// their names, with no plugin file behind them.
    pub fn from_backends(backends: Vec<(String, Arc<dyn Backend>)>) -> Registry {
        let backends = backends
            .into_iter()
            .map(|(name, backend)| {
                let entry = BackendEntry {
                    name: name.clone(),
                    config: BackendConfig {
                        plugin: name.clone(),
                        enabled: true,
                        settings: serde_json::Map::new(),
                    },
                    plugin: None,
                    backend: Some(backend),
                    health: Mutex::new(Health {
                        available: false,
                        reason: Some("not checked yet".into()),
                        last_check: None,
                        host: None,
                        description: None,
                    }),
                };
                (name, Arc::new(entry))
            })
            .collect();
        Registry { backends }
    }

    /// A backend by name.
    pub fn get(&self, name: &str) -> Option<Arc<BackendEntry>> {
        self.backends.get(name).cloned()
    }

    /// Every configured backend, by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<BackendEntry>> {
        self.backends.values()
    }

    /// The enabled backends with a live backend object.
    pub fn live(&self) -> impl Iterator<Item = (&Arc<BackendEntry>, &Arc<dyn Backend>)> {
        self.backends
            .values()
            .filter_map(|e| e.backend.as_ref().map(|b| (e, b)))
    }

    /// Stops every backend's background work.
    pub fn shutdown(&self) {
        for (_, b) in self.live() {
            b.shutdown();
        }
    }
}
