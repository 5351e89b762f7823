//! The in-memory backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, CpuUsage, CreateRequest, Event, EventSink,
    HostResources, Image, Instance, InstanceState, InstanceType, MemoryUsage, Metadata,
    NetworkUsage, PluginError, Resources, StopOptions, StorageUsage, UpdateRequest, Usage,
};

#[cfg(not(feature = "v2"))]
pub(crate) const VERSION: &str = "0.1.0";
#[cfg(feature = "v2")]
pub(crate) const VERSION: &str = "0.2.0";

/// Settings of a fake backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeConfig {
    /// Whether the pretend daemon answers.
    #[serde(default = "yes")]
    pub available: bool,
    /// Host CPUs to report.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Host memory to report, bytes.
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// Images to offer; `config.image` must name one of them.
    #[serde(default = "default_images")]
    pub images: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_cpus() -> u32 {
    64
}
fn default_memory() -> u64 {
    256 << 30
}
fn default_images() -> Vec<String> {
    vec!["busybox".into(), "alpine".into()]
}

/// The in-memory backend.
pub struct FakeBackend {
    name: String,
    config: FakeConfig,
    instances: Arc<Mutex<HashMap<String, Instance>>>,
    events: EventSink,
}

impl FakeBackend {
    /// Makes a backend from the host's context.
    pub fn new(ctx: BackendContext) -> Result<Self, PluginError> {
        let config: FakeConfig = ctx.parse_config()?;
        tracing::info!(backend = %ctx.name, "fake backend ready");
        Ok(FakeBackend {
            name: ctx.name,
            config,
            instances: Arc::default(),
            events: ctx.events,
        })
    }

    fn check(&self) -> Result<(), PluginError> {
        if self.config.available {
            Ok(())
        } else {
            Err(PluginError::unavailable(format!(
                "fake backend {} is configured unavailable",
                self.name
            )))
        }
    }

    fn hooks(&self, inst: &Instance, op: &str) {
        if inst.metadata.labels.get("fake/panic").map(String::as_str) == Some(op) {
            panic!("fake panic in {op} as asked by label");
        }
    }

    fn with<T>(
        &self,
        id: &str,
        op: &str,
        f: impl FnOnce(&mut Instance) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        self.check()?;
        let mut map = lock(&self.instances);
        let inst = map.get_mut(id).ok_or_else(|| PluginError::not_found(id))?;
        self.hooks(inst, op);
        f(inst)
    }

    fn set_state(
        &self,
        id: &str,
        op: &str,
        allowed: &[InstanceState],
        to: InstanceState,
    ) -> Result<Instance, PluginError> {
        self.with(id, op, |inst| {
            if inst.state == to {
                return Ok(inst.clone());
            }
            if !allowed.contains(&inst.state) {
                return Err(PluginError::invalid_state(format!(
                    "cannot {op} an instance that is {}",
                    inst.state.as_str()
                )));
            }
            inst.state = to;
            inst.updated_at = Utc::now();
            Ok(inst.clone())
        })
    }
}

impl Backend for FakeBackend {
    fn describe(&self) -> Result<BackendDescription, PluginError> {
        self.check()?;
        Ok(BackendDescription {
            version: VERSION.into(),
            api_version: "1".into(),
            capabilities: vec!["containers".into(), "pause".into(), "live-update".into()],
            supported_types: vec![InstanceType::Container],
            extra: Default::default(),
        })
    }

    fn health(&self) -> Result<(), PluginError> {
        self.check()
    }

    fn host_resources(&self) -> Result<HostResources, PluginError> {
        self.check()?;
        Ok(HostResources {
            cpus: self.config.cpus,
            memory: self.config.memory,
        })
    }

    fn images(&self) -> Result<Vec<Image>, PluginError> {
        self.check()?;
        Ok(self
            .config
            .images
            .iter()
            .map(|n| Image {
                name: n.clone(),
                format: Some("fake".into()),
                ..Default::default()
            })
            .collect())
    }

    fn list(&self) -> Result<Vec<Instance>, PluginError> {
        self.check()?;
        let map = lock(&self.instances);
        Ok(map.values().cloned().collect())
    }

    fn get(&self, id: &str) -> Result<Instance, PluginError> {
        self.with(id, "get", |inst| Ok(inst.clone()))
    }

    fn create(&self, req: CreateRequest) -> Result<Instance, PluginError> {
        self.check()?;
        let image = req
            .config
            .get("image")
            .and_then(|v| v.as_str())
            .ok_or_else(|| PluginError::invalid("config.image is required"))?;
        if !self.config.images.iter().any(|i| i == image) {
            return Err(
                PluginError::invalid(format!("image {image} does not exist"))
                    .with_detail("image", image)
                    .with_detail("available", self.config.images.clone()),
            );
        }
        if req.resources.cores().unwrap_or(1) > self.config.cpus {
            return Err(PluginError::new(
                unicompute_plugin_api::ErrorCode::ResourceLimitExceeded,
                format!(
                    "{} cores asked, the host has {}",
                    req.resources.cores().unwrap_or(1),
                    self.config.cpus
                ),
            ));
        }
        let mut resources = req.resources.clone();
        resources
            .cpu
            .get_or_insert_with(Default::default)
            .cores
            .get_or_insert(1);
        resources
            .memory
            .get_or_insert_with(Default::default)
            .limit
            .get_or_insert(64 << 20);
        let inst = Instance {
            id: req.id.clone(),
            name: req.name.clone(),
            uuid: uuid::Uuid::new_v4().to_string(),
            instance_type: InstanceType::Container,
            backend: String::new(),
            state: if req.start {
                InstanceState::Running
            } else {
                InstanceState::Created
            },
            status: Default::default(),
            config: req.config.clone(),
            resources,
            pending_resources: None,
            metadata: Metadata {
                labels: req.labels.clone(),
            },
            created_at: req.created_at,
            updated_at: req.created_at,
        };
        self.hooks(&inst, "create");
        let mut map = lock(&self.instances);
        if map.values().any(|i| i.name == req.name) {
            return Err(PluginError::new(
                unicompute_plugin_api::ErrorCode::InstanceAlreadyExists,
                format!("an instance named {} exists", req.name),
            ));
        }
        map.insert(inst.id.clone(), inst.clone());
        drop(map);
        if let Some(ms) = inst
            .metadata
            .labels
            .get("fake/vanish-after-ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let instances = Arc::clone(&self.instances);
            let events = self.events.clone();
            let id = inst.id.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                lock(&instances).remove(&id);
                tracing::info!(instance = %id, "vanished by itself");
                events.emit(&Event::Vanished { id });
            });
        }
        if let Some((count, every)) = inst
            .metadata
            .labels
            .get("fake/flap")
            .and_then(|v| v.split_once(':'))
            .and_then(|(n, us)| Some((n.parse::<u64>().ok()?, us.parse::<u64>().ok()?)))
        {
            // `COUNT:MICROS`: the instance flips between running and stopped COUNT
            // times, every MICROS, each time reported as an event (as a busy engine's
            // events would be), on a steady clock so that the rate holds.
            let instances = Arc::clone(&self.instances);
            let events = self.events.clone();
            let id = inst.id.clone();
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                for n in 1..=count {
                    let due = start + Duration::from_micros(every * n);
                    if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let now = {
                        let mut map = lock(&instances);
                        let Some(i) = map.get_mut(&id) else { return };
                        i.state = match i.state {
                            InstanceState::Running => InstanceState::Stopped,
                            _ => InstanceState::Running,
                        };
                        i.updated_at = Utc::now();
                        i.clone()
                    };
                    events.emit(&Event::Changed {
                        instance: Box::new(now),
                    });
                }
            });
        }
        Ok(inst)
    }

    fn update(&self, id: &str, req: UpdateRequest) -> Result<Instance, PluginError> {
        self.with(id, "update", |inst| {
            if let Some(c) = req.resources.cores() {
                if c > self.config.cpus {
                    return Err(PluginError::new(
                        unicompute_plugin_api::ErrorCode::ResourceLimitExceeded,
                        format!("{c} cores asked, the host has {}", self.config.cpus),
                    ));
                }
                inst.resources
                    .cpu
                    .get_or_insert_with(Default::default)
                    .cores = Some(c);
            }
            if let Some(m) = req.resources.memory_limit() {
                inst.resources
                    .memory
                    .get_or_insert_with(Default::default)
                    .limit = Some(m);
            }
            if let Some(s) = req.resources.total_space() {
                // Storage grows at the next start only, to exercise pendingResources.
                let pending = inst
                    .pending_resources
                    .get_or_insert_with(Resources::default);
                pending
                    .storage
                    .get_or_insert_with(Default::default)
                    .total_space = Some(s);
            }
            if let Some(labels) = req.labels {
                inst.metadata.labels = labels;
            }
            inst.updated_at = Utc::now();
            Ok(inst.clone())
        })
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), PluginError> {
        self.with(id, "delete", |inst| {
            if inst.state.is_active() && !force {
                return Err(PluginError::invalid_state("instance is running; use force"));
            }
            Ok(())
        })?;
        lock(&self.instances).remove(id);
        Ok(())
    }

    fn start(&self, id: &str) -> Result<Instance, PluginError> {
        use InstanceState::*;
        let inst = self.set_state(id, "start", &[Created, Stopped, Error], Running)?;
        self.with(id, "start", |i| {
            if let Some(p) = i.pending_resources.take() {
                if let Some(s) = p.total_space() {
                    i.resources
                        .storage
                        .get_or_insert_with(Default::default)
                        .total_space = Some(s);
                }
            }
            Ok(())
        })?;
        let _ = inst;
        self.get(id)
    }

    fn stop(&self, id: &str, options: StopOptions) -> Result<Instance, PluginError> {
        use InstanceState::*;
        let ignores = self.with(id, "stop", |inst| {
            Ok(inst.state == Running
                && inst
                    .metadata
                    .labels
                    .get("fake/ignore-sigterm")
                    .map(String::as_str)
                    == Some("true"))
        })?;
        if ignores && !options.force {
            // Tests wait for this line to know that a slow stop is in flight.
            tracing::info!(instance = %id, timeout = options.timeout, "graceful stop waits for its timeout");
            std::thread::sleep(Duration::from_secs(options.timeout));
        }
        let current = self.get(id)?;
        if cfg!(feature = "broken-stop") {
            return Ok(current);
        }
        if current.state == Created {
            // Never started: nothing to stop, as with Docker.
            return Ok(current);
        }
        self.set_state(id, "stop", &[Running, Paused, Restarting, Error], Stopped)
    }

    fn restart(&self, id: &str, options: StopOptions) -> Result<Instance, PluginError> {
        self.stop(id, options)?;
        self.start(id)
    }

    fn pause(&self, id: &str) -> Result<Instance, PluginError> {
        use InstanceState::*;
        self.set_state(id, "pause", &[Running], Paused)
    }

    fn unpause(&self, id: &str) -> Result<Instance, PluginError> {
        use InstanceState::*;
        self.set_state(id, "unpause", &[Paused], Running)
    }

    fn usage(&self, id: &str) -> Result<Usage, PluginError> {
        self.with(id, "usage", |inst| {
            let running = inst.state == InstanceState::Running;
            let limit = inst.resources.memory_limit().unwrap_or(0);
            let used = if running { limit / 4 } else { 0 };
            Ok(Usage {
                cpu: CpuUsage {
                    usage: if running { 12.5 } else { 0.0 },
                    cores: inst.resources.cores().unwrap_or(1),
                },
                memory: MemoryUsage::new(used, limit),
                storage: StorageUsage {
                    used: 0,
                    total: inst.resources.total_space().unwrap_or(0),
                },
                network: NetworkUsage::default(),
            })
        })
    }
}
