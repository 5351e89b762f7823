//! The fake backend: instances in memory, each kept as a record in `state_dir`
//! (see [`crate::store`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use unicompute_plugin_api::sync::lock;

use crate::store::Store;
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, ByteStream, CpuUsage, CreateRequest, ErrorCode,
    Event, EventSink, HostResources, Image, Instance, InstanceState, InstanceType, MemoryUsage,
    Metadata, NetworkUsage, PluginError, Progress, PullRequest, Resources, StopOptions,
    StorageUsage, StreamKind, StreamRequest, UpdateRequest, UploadRequest, UploadTarget, Usage,
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
    /// Images to offer at start; `config.image` must name one of them. Pulls and
    /// uploads add to them, `delete_image` removes.
    #[serde(default = "default_images")]
    pub images: Vec<String>,
    /// Progress events a pull emits (one per step; a reference starting with
    /// `missing` is `IMAGE_NOT_FOUND` instead).
    #[serde(default = "default_pull_steps")]
    pub pull_steps: u32,
    /// Pause between two steps of a pull, in milliseconds.
    #[serde(default = "default_pull_step_ms")]
    pub pull_step_ms: u64,
    /// Bytes one step of a pull pretends to download.
    #[serde(default = "default_pull_step_bytes")]
    pub pull_step_bytes: u64,
    /// Where uploads are staged and kept (`.upload-<operation>.part`, then
    /// `<name>.img`); a directory under the system's temp dir when absent.
    #[serde(default)]
    pub upload_dir: Option<PathBuf>,
    /// The most bytes an upload may have.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Where the instances' records are kept (one JSON file per instance), so that
    /// a new backend from the same settings finds them. Relative: from the server's
    /// working directory. Default: a directory under the system's temp dir for the
    /// server's working directory and this backend's name.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Milliseconds a pause takes (a slow freezer), for the check's timings.
    #[serde(default)]
    pub pause_ms: u64,
    /// Instances made in memory when the backend starts, for scale benchmarks
    /// (`tests/benches/scale.rs`); default 0, none. They are NOT written to
    /// `state_dir` (100,000 files would be the benchmark), so they are made again, the
    /// same, by each new backend of these settings: see [`seeded`]. A record in
    /// `state_dir` of the same id (a seeded instance changed by an operation) wins.
    #[serde(default)]
    pub seed_instances: u32,
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
fn default_pull_steps() -> u32 {
    5
}
fn default_pull_step_ms() -> u64 {
    20
}
fn default_pull_step_bytes() -> u64 {
    1 << 20
}
fn default_max_upload_bytes() -> u64 {
    1 << 30
}

/// A plain name: 1-63 of `[a-zA-Z0-9_.-]`, starting with a letter or digit.
fn plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// When the first seeded instance was made; the n-th was made n seconds later.
const SEED_EPOCH_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Seeded instance `n` (see [`FakeConfig::seed_instances`]): the same for the same
/// `n` in every backend, so that a reload or a restart finds the same instances. Its
/// id is in the host's format (`i-`, 12 hex digits of the creation millisecond, 4 of
/// a counter, 4 "random"), named `seed-<n>`, labelled `app=seed` and `n=<n % 100>`,
/// 20% running, 40% stopped, 40% created.
pub fn seeded(n: u32) -> Instance {
    // A fixed odd multiplier scatters n over 64 bits (stable, unlike a hasher's seed).
    let mix = u64::from(n)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let ms = SEED_EPOCH_MS + i64::from(n) * 1000;
    let created = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let mut config = unicompute_plugin_api::JsonMap::new();
    config.insert("image".into(), "busybox".into());
    config.insert(
        "env".into(),
        serde_json::json!([format!("SEED={n}"), "MODE=bench"]),
    );
    Instance {
        id: format!("i-{ms:012x}0000{:04x}", mix >> 48),
        name: format!("seed-{n}"),
        uuid: uuid::Builder::from_random_bytes(
            (u128::from(mix) << 64 | u128::from(n)).to_le_bytes(),
        )
        .into_uuid()
        .to_string(),
        instance_type: InstanceType::Container,
        backend: String::new(),
        state: match n % 10 {
            0 | 1 => InstanceState::Running,
            2..=5 => InstanceState::Stopped,
            _ => InstanceState::Created,
        },
        status: Default::default(),
        config,
        resources: Resources {
            cpu: Some(unicompute_plugin_api::CpuResources { cores: Some(1) }),
            memory: Some(unicompute_plugin_api::MemoryResources {
                limit: Some(256 << 20),
                used: None,
            }),
            storage: None,
        },
        pending_resources: None,
        metadata: Metadata {
            labels: [
                ("app".to_owned(), "seed".to_owned()),
                ("n".to_owned(), (n % 100).to_string()),
            ]
            .into(),
        },
        created_at: created,
        updated_at: created,
    }
}

/// The fake backend.
pub struct FakeBackend {
    name: String,
    config: FakeConfig,
    instances: Arc<Mutex<HashMap<String, Instance>>>,
    store: Arc<Store>,
    events: EventSink,
    /// The images on offer: name to size (when known).
    images: Mutex<Vec<(String, Option<u64>)>>,
    /// The cancel flags of the pulls under way, by operation token.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    upload_dir: PathBuf,
}

impl FakeBackend {
    /// Makes a backend from the host's context.
    pub fn new(ctx: BackendContext) -> Result<Self, PluginError> {
        let config: FakeConfig = ctx.parse_config()?;
        tracing::info!(backend = %ctx.name, "fake backend ready");
        let upload_dir = config.upload_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "unicompute-fake-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ))
        });
        let state_dir = config
            .state_dir
            .clone()
            .unwrap_or_else(|| crate::store::default_dir(&ctx.name));
        let store = Store::open(&state_dir)?;
        let mut instances = store.load();
        tracing::info!(backend = %ctx.name, instances = instances.len(), state_dir = %state_dir.display(), "records read");
        if config.seed_instances > 0 {
            for n in 0..config.seed_instances {
                let inst = seeded(n);
                instances.entry(inst.id.clone()).or_insert(inst);
            }
            tracing::info!(backend = %ctx.name, seeded = config.seed_instances, "instances seeded in memory");
        }
        Ok(FakeBackend {
            images: Mutex::new(config.images.iter().map(|n| (n.clone(), None)).collect()),
            name: ctx.name,
            config,
            instances: Arc::new(Mutex::new(instances)),
            store: Arc::new(store),
            events: ctx.events,
            running: Mutex::default(),
            upload_dir,
        })
    }

    fn has_image(&self, name: &str) -> bool {
        lock(&self.images).iter().any(|(n, _)| n == name)
    }

    fn image_names(&self) -> Vec<String> {
        lock(&self.images).iter().map(|(n, _)| n.clone()).collect()
    }

    fn staged(&self, request: &UploadRequest) -> Result<PathBuf, PluginError> {
        if !plain_name(&request.name) {
            return Err(PluginError::invalid(format!(
                "image name {:?} is not a plain name",
                request.name
            )));
        }
        if !plain_name(&request.operation) {
            return Err(PluginError::invalid(
                "the operation token is not a plain name",
            ));
        }
        Ok(self
            .upload_dir
            .join(format!(".upload-{}.part", request.operation)))
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

    /// As [`Self::with`], keeping the instance's record when `f` succeeds.
    fn with_mut<T>(
        &self,
        id: &str,
        op: &str,
        f: impl FnOnce(&mut Instance) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        self.with(id, op, |inst| {
            let out = f(inst)?;
            self.store.save(inst)?;
            Ok(out)
        })
    }

    fn set_state(
        &self,
        id: &str,
        op: &str,
        allowed: &[InstanceState],
        to: InstanceState,
    ) -> Result<Instance, PluginError> {
        self.with_mut(id, op, |inst| {
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
            capabilities: vec![
                "containers".into(),
                "pause".into(),
                "live-update".into(),
                "logs".into(),
                "console".into(),
                "exec".into(),
            ],
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
        Ok(lock(&self.images)
            .iter()
            .map(|(n, size)| Image {
                name: n.clone(),
                format: Some("fake".into()),
                size: *size,
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
        if !self.has_image(image) {
            return Err(
                PluginError::invalid(format!("image {image} does not exist"))
                    .with_detail("image", image)
                    .with_detail("available", self.image_names()),
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
        self.store.save(&inst)?;
        map.insert(inst.id.clone(), inst.clone());
        drop(map);
        if let Some(ms) = inst
            .metadata
            .labels
            .get("fake/vanish-after-ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let instances = Arc::clone(&self.instances);
            let store = Arc::clone(&self.store);
            let events = self.events.clone();
            let id = inst.id.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                lock(&instances).remove(&id);
                store.remove(&id);
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
            let store = Arc::clone(&self.store);
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
                        let _ = store.save(i);
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
        self.with_mut(id, "update", |inst| {
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
        self.store.remove(id);
        Ok(())
    }

    fn start(&self, id: &str) -> Result<Instance, PluginError> {
        use InstanceState::*;
        let inst = self.set_state(id, "start", &[Created, Stopped, Error], Running)?;
        self.with_mut(id, "start", |i| {
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
        std::thread::sleep(Duration::from_millis(self.config.pause_ms));
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

    fn pull_image(&self, request: PullRequest) -> Result<Image, PluginError> {
        self.check()?;
        let reference = request.reference.trim();
        if reference.is_empty() {
            return Err(PluginError::invalid("the image reference is empty"));
        }
        if reference.starts_with("missing") {
            return Err(PluginError::image_not_found(reference));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        if let Some(op) = &request.operation {
            lock(&self.running).insert(op.clone(), Arc::clone(&cancel));
        }
        let steps = u64::from(self.config.pull_steps);
        let total = steps * self.config.pull_step_bytes;
        let mut outcome = Ok(());
        for step in 1..=steps {
            std::thread::sleep(Duration::from_millis(self.config.pull_step_ms));
            if cancel.load(Ordering::SeqCst) {
                outcome = Err(PluginError::cancelled(
                    request.operation.as_deref().unwrap_or_default(),
                ));
                break;
            }
            if let Some(op) = &request.operation {
                self.events.emit(&Event::Progress {
                    operation: op.clone(),
                    progress: Progress::bytes(
                        "downloading",
                        step * self.config.pull_step_bytes,
                        Some(total),
                    ),
                });
            }
        }
        if let Some(op) = &request.operation {
            lock(&self.running).remove(op);
        }
        outcome?;
        let mut images = lock(&self.images);
        match images.iter_mut().find(|(n, _)| n == reference) {
            Some(entry) => entry.1 = Some(total),
            None => images.push((reference.to_owned(), Some(total))),
        }
        Ok(Image {
            name: reference.to_owned(),
            size: Some(total),
            format: Some("fake".into()),
            ..Default::default()
        })
    }

    fn delete_image(&self, name: &str) -> Result<(), PluginError> {
        self.check()?;
        if !self.has_image(name) {
            return Err(PluginError::image_not_found(name));
        }
        let users: Vec<String> = lock(&self.instances)
            .values()
            .filter(|i| i.config.get("image").and_then(|v| v.as_str()) == Some(name))
            .map(|i| i.id.clone())
            .collect();
        if !users.is_empty() {
            return Err(PluginError::new(
                ErrorCode::ImageInUse,
                format!("image {name} is used by {} instance(s)", users.len()),
            )
            .with_detail("image", name)
            .with_detail("instances", users));
        }
        lock(&self.images).retain(|(n, _)| n != name);
        if plain_name(name) {
            let _ = std::fs::remove_file(self.upload_dir.join(format!("{name}.img")));
        }
        Ok(())
    }

    fn upload_begin(&self, request: UploadRequest) -> Result<UploadTarget, PluginError> {
        self.check()?;
        let staged = self.staged(&request)?;
        if self.has_image(&request.name) {
            return Err(PluginError::new(
                ErrorCode::ImageAlreadyExists,
                format!("image {} exists", request.name),
            )
            .with_detail("image", request.name.as_str()));
        }
        if request
            .size
            .is_some_and(|s| s > self.config.max_upload_bytes)
        {
            return Err(PluginError::new(
                ErrorCode::ResourceLimitExceeded,
                format!(
                    "the upload is larger than the limit of {} bytes",
                    self.config.max_upload_bytes
                ),
            ));
        }
        std::fs::create_dir_all(&self.upload_dir)
            .map_err(|e| PluginError::backend(format!("cannot make the upload dir: {e}")))?;
        Ok(UploadTarget {
            path: staged.to_string_lossy().into_owned(),
            max_bytes: self.config.max_upload_bytes,
        })
    }

    fn upload_commit(&self, request: UploadRequest) -> Result<Image, PluginError> {
        self.check()?;
        let staged = self.staged(&request)?;
        let result = (|| {
            let meta = std::fs::metadata(&staged)
                .map_err(|_| PluginError::invalid("no upload is staged for this operation"))?;
            let head = std::fs::read(&staged)
                .map(|b| b.into_iter().take(12).collect::<Vec<u8>>())
                .map_err(|e| PluginError::backend(format!("cannot read the upload: {e}")))?;
            // The fake's "disk image" check: not empty, and not marked as garbage.
            if meta.len() == 0 || head.starts_with(b"not an image") {
                return Err(PluginError::invalid(
                    "the upload is not a disk image of a supported format",
                ));
            }
            if meta.len() > self.config.max_upload_bytes {
                return Err(PluginError::new(
                    ErrorCode::ResourceLimitExceeded,
                    "the upload is larger than the limit",
                ));
            }
            let mut images = lock(&self.images);
            if images.iter().any(|(n, _)| *n == request.name) {
                return Err(PluginError::new(
                    ErrorCode::ImageAlreadyExists,
                    format!("image {} exists", request.name),
                ));
            }
            std::fs::rename(
                &staged,
                self.upload_dir.join(format!("{}.img", request.name)),
            )
            .map_err(|e| PluginError::backend(format!("cannot keep the upload: {e}")))?;
            images.push((request.name.clone(), Some(meta.len())));
            Ok(Image {
                name: request.name.clone(),
                size: Some(meta.len()),
                format: Some("fake".into()),
                ..Default::default()
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        result
    }

    fn upload_abort(&self, request: UploadRequest) -> Result<(), PluginError> {
        let staged = self.staged(&request)?;
        match std::fs::remove_file(&staged) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PluginError::backend(format!(
                "cannot remove the staged upload: {e}"
            ))),
        }
    }

    fn open_stream(&self, request: StreamRequest) -> Result<ByteStream, PluginError> {
        let inst = self.with(&request.id, request.kind.name(), |inst| Ok(inst.clone()))?;
        let running = inst.state == InstanceState::Running;
        match request.kind {
            StreamKind::Logs(o) => Ok(crate::streams::logs(&inst, o)),
            StreamKind::Console(_) | StreamKind::Exec(_) if !running => Err(
                PluginError::invalid_state(format!("instance {} is not running", inst.id)),
            ),
            StreamKind::Console(_) => Ok(crate::streams::console(&inst)),
            StreamKind::Exec(o) => crate::streams::exec(&inst, o),
        }
    }

    fn cancel(&self, operation: &str) -> Result<bool, PluginError> {
        Ok(match lock(&self.running).get(operation) {
            Some(flag) => {
                flag.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(config: serde_json::Value, dir: &std::path::Path) -> FakeBackend {
        let mut config = config;
        config["state_dir"] = dir.to_string_lossy().into_owned().into();
        FakeBackend::new(BackendContext {
            name: "fake".into(),
            config,
            events: EventSink::discard(),
        })
        .expect("fake backend")
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "unicompute-fake-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    #[test]
    fn seeded_instances_are_in_memory_only_and_the_same_each_time() {
        let dir = temp_dir();
        let b = backend(serde_json::json!({"seed_instances": 1000}), &dir);
        let mut list = b.list().expect("list");
        assert_eq!(list.len(), 1000);
        assert_eq!(
            std::fs::read_dir(&dir).expect("state dir").count(),
            0,
            "seeded instances are not written"
        );
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        for (n, i) in list.iter().enumerate() {
            assert_eq!(i.name, format!("seed-{n}"));
            let hex = i.id.strip_prefix("i-").expect("i- prefix");
            assert_eq!(hex.len(), 20, "{}", i.id);
            assert!(hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
            assert_eq!(i.metadata.labels["app"], "seed");
            assert_eq!(i.metadata.labels["n"], (n % 100).to_string());
            assert_eq!(i.resources.cores(), Some(1));
            assert_eq!(i.resources.memory_limit(), Some(256 << 20));
            assert_eq!(i.config["image"], "busybox");
        }
        // Ids sort as the list order (as the host's do), and are distinct.
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let running = list
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        assert_eq!(running, 200);
        // An operation keeps the changed instance's record, and a new backend of the
        // same settings finds the same instances, the changed one as changed.
        let id = list[3].id.clone();
        assert_eq!(b.start(&id).expect("start").state, InstanceState::Running);
        assert_eq!(std::fs::read_dir(&dir).expect("state dir").count(), 1);
        let again = backend(serde_json::json!({"seed_instances": 1000}), &dir);
        assert_eq!(again.list().expect("list").len(), 1000);
        assert_eq!(again.get(&id).expect("get").state, InstanceState::Running);
        assert_eq!(again.get(&list[4].id).expect("get"), list[4]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_seed_by_default() {
        let dir = temp_dir();
        let b = backend(serde_json::json!({}), &dir);
        assert!(b.list().expect("list").is_empty());
        assert_eq!(b.config.seed_instances, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
