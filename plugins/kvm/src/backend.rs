//! The [`Backend`] implementation: KVM virtual machines as compute instances.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, CpuResources, CreateRequest, EventSink,
    HostResources, Image, Instance, InstanceState, InstanceType, MemoryResources, Metadata,
    PluginError, Resources, StopOptions, StorageResources, UpdateRequest, Usage,
};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState, DomainStateEnum};
use virt::sys;

use crate::cloud_init;
use crate::config::{InstanceConfig, KvmConfig};
use crate::connection::Connection;
use crate::error::KvmError;
use crate::stats::CpuSamples;
use crate::storage;
use crate::xml::{DomainDoc, DomainSpec, InstanceMeta, LabelsXml, PoolDoc, NAMESPACE, NS_PREFIX};

type Result<T> = std::result::Result<T, KvmError>;

/// Memory of an instance when the request names none: 1 GiB.
const DEFAULT_MEMORY: u64 = 1 << 30;
/// How often a graceful stop checks whether the guest is off.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The kvm backend.
pub struct KvmBackend {
    inner: Arc<Inner>,
}

/// A domain of ours, read from libvirt.
pub(crate) struct Found {
    pub dom: Domain,
    pub doc: DomainDoc,
    pub meta: InstanceMeta,
}

/// What the backend, its event worker and its stats share.
pub(crate) struct Inner {
    pub name: String,
    pub config: KvmConfig,
    pub domain_type: String,
    pub conn: Connection,
    pub sink: EventSink,
    /// Our id -> libvirt UUID, so a lookup needs no scan of every domain.
    ids: Mutex<HashMap<String, String>>,
    pub cpu: CpuSamples,
    /// The connection generation for which the storage pool is known to be there,
    /// and the pool's directory.
    pool_state: Mutex<Option<(u64, PathBuf)>>,
    /// Ids whose create runs now in this process: the orphan sweep leaves their
    /// files alone.
    creating: Mutex<HashSet<String>>,
    pub stopping: AtomicBool,
}

/// Marks an id as being created until dropped.
struct InFlight<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.inner.creating).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lv(op: &'static str) -> impl FnOnce(virt::error::Error) -> KvmError {
    KvmError::libvirt(op)
}

/// The `updatedAt` of a change made now, after one stamped `prev`: the current
/// time in whole milliseconds, and always later than `prev` (by 1 ms at least, also
/// when the clock went back), so that it never goes backwards and changes on every
/// change. Kept in the domain's metadata and returned as is.
fn next_update(prev: &str) -> String {
    let now = Utc::now();
    let now =
        now - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos() % 1_000_000));
    let prev = parse_time(prev);
    let t = if now > prev {
        now
    } else {
        prev + chrono::Duration::milliseconds(1)
    };
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

/// The domain's state and reason, as `virDomainGetState` gives them. `virt` 0.5's
/// `Domain::state` drops the call's failure and answers "no state"; this reports it.
fn domain_state(
    dom: &Domain,
) -> std::result::Result<(sys::virDomainState, i32), virt::error::Error> {
    let mut state: std::os::raw::c_int = -1;
    let mut reason: std::os::raw::c_int = -1;
    // SAFETY: `dom` holds a valid domain pointer for this call; libvirt writes two
    // ints that live on this stack frame.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if rc == -1 {
        return Err(virt::error::Error::last_error());
    }
    Ok((state as sys::virDomainState, reason))
}

/// Maps a libvirt state onto an instance state.
///
/// | libvirt | instance |
/// |---|---|
/// | running, blocked, shutdown (in progress) | running |
/// | paused, pmsuspended | paused |
/// | shutoff, never started by us | created |
/// | shutoff after having run | stopped |
/// | shutoff because it crashed or failed | error |
/// | crashed | error |
/// | nostate, anything new | unknown |
/// `failed`: shut off because it crashed or failed to start, or paused by QEMU on an
/// I/O error.
pub fn map_state(state: Option<DomainState>, failed: bool, started: bool) -> InstanceState {
    match state {
        Some(DomainState::Running | DomainState::Blocked | DomainState::Shutdown) => {
            InstanceState::Running
        }
        Some(DomainState::Paused) if failed => InstanceState::Error,
        Some(DomainState::Paused | DomainState::PMSuspended) => InstanceState::Paused,
        Some(DomainState::Shutoff) if failed => InstanceState::Error,
        Some(DomainState::Shutoff) if started => InstanceState::Stopped,
        Some(DomainState::Shutoff) => InstanceState::Created,
        Some(DomainState::Crashed) => InstanceState::Error,
        Some(DomainState::NoState) | None => InstanceState::Unknown,
    }
}

fn is_active_state(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Running | InstanceState::Paused | InstanceState::Restarting
    )
}

/// Checks that an id can name volumes (`<id>.qcow2`).
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(KvmError::InvalidRequest(format!(
            "invalid instance id {id:?}"
        )))
    }
}

/// What a failed create leaves behind, removed on drop unless disarmed.
struct Rollback<'a> {
    conn: &'a Connect,
    local: bool,
    dom: Option<Domain>,
    volumes: Vec<String>,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(dom) = self.dom.take() {
            let _ = dom.destroy();
            if undefine(&dom).is_err() {
                tracing::warn!("rollback could not undefine a domain");
            }
        }
        for path in &self.volumes {
            if let Err(e) = storage::delete_volume(self.conn, path, self.local) {
                tracing::warn!(error = %e, "rollback could not delete a volume");
            }
        }
    }
}

fn undefine(dom: &Domain) -> Result<()> {
    let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
    match dom.undefine_flags(flags) {
        Ok(()) => Ok(()),
        // Drivers without some of these flags (test:///) take a plain undefine.
        Err(_) => dom.undefine().map_err(lv("undefining the domain")),
    }
}

impl KvmBackend {
    /// Makes a backend from the host's context. Does not connect: libvirtd may be down.
    pub fn new(ctx: BackendContext) -> std::result::Result<Self, PluginError> {
        let config: KvmConfig = ctx.parse_config()?;
        if config.storage_pool.is_empty() || config.storage_pool.contains('/') {
            return Err(PluginError::config(format!(
                "backend {}: storage_pool must be a plain name",
                ctx.name
            )));
        }
        for (key, dir) in [
            ("templates_dir", &config.templates_dir),
            ("storage_dir", &config.storage_dir),
        ] {
            // libvirtd resolves paths from its own working directory, not ours.
            if !dir.is_absolute() {
                return Err(PluginError::config(format!(
                    "backend {}: {key} must be an absolute path, not {}",
                    ctx.name,
                    dir.display()
                )));
            }
        }
        let domain_type = config.resolved_domain_type();
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            name: ctx.name.clone(),
            conn: Connection::new(&config.uri, tx),
            domain_type,
            config,
            sink: ctx.events,
            ids: Mutex::default(),
            cpu: CpuSamples::default(),
            pool_state: Mutex::new(None),
            creating: Mutex::default(),
            stopping: AtomicBool::new(false),
        });
        crate::events::spawn_worker(Arc::downgrade(&inner), rx).map_err(|e| {
            PluginError::internal(format!("cannot start the kvm event worker: {e}"))
        })?;
        tracing::info!(backend = %ctx.name, uri = %inner.config.uri, domain_type = %inner.domain_type, "kvm backend ready");
        Ok(KvmBackend { inner })
    }
}

impl Inner {
    pub fn connect(&self) -> Result<Connect> {
        self.conn.get()
    }

    /// The instance pool and its directory (which is `storage_dir` unless the pool
    /// existed before with another one).
    fn pool(&self, conn: &Connect) -> Result<(virt::storage_pool::StoragePool, PathBuf)> {
        let generation = self.conn.generation();
        let mut known = lock(&self.pool_state);
        if let Some((g, dir)) = &*known {
            if *g == generation {
                if let Ok(pool) = conn.lookup_storage_pool_by_name(&self.config.storage_pool) {
                    // Stopped by hand (virsh pool-destroy): started again below.
                    if pool.is_active().unwrap_or(false) {
                        return Ok((pool, dir.clone()));
                    }
                }
            }
        }
        let pool = storage::ensure_pool(conn, &self.config.storage_pool, &self.config.storage_dir)?;
        let dir = pool
            .xml_desc(0)
            .ok()
            .and_then(|x| PoolDoc::parse(&x).ok())
            .and_then(|d| d.path().map(PathBuf::from))
            .unwrap_or_else(|| self.config.storage_dir.clone());
        if dir != self.config.storage_dir {
            tracing::warn!(pool = %self.config.storage_pool, "the storage pool exists with another directory than storage_dir; using the pool's");
        }
        *known = Some((generation, dir.clone()));
        Ok((pool, dir))
    }

    /// The ids whose create is in flight now.
    pub(crate) fn creating_ids(&self) -> HashSet<String> {
        lock(&self.creating).clone()
    }

    /// Sweeps orphaned volumes, logging rather than failing.
    pub(crate) fn sweep(&self, conn: &Connect) {
        if let Err(e) = self.sweep_orphans(conn) {
            tracing::debug!(backend = %self.name, error = %e, "orphan sweep skipped");
        }
    }

    fn remember(&self, id: &str, uuid: &str) {
        lock(&self.ids).insert(id.to_owned(), uuid.to_owned());
    }

    fn forget(&self, id: &str) {
        lock(&self.ids).remove(id);
    }

    /// Our id of a libvirt UUID seen before.
    pub fn id_of_uuid(&self, uuid: &str) -> Option<String> {
        lock(&self.ids)
            .iter()
            .find(|(_, u)| u.as_str() == uuid)
            .map(|(id, _)| id.clone())
    }

    /// Forgets a UUID (its domain vanished); returns our id of it.
    pub fn forget_uuid(&self, uuid: &str) -> Option<String> {
        let id = self.id_of_uuid(uuid)?;
        self.forget(&id);
        self.cpu.forget(uuid);
        Some(id)
    }

    /// Reads a domain; `None` when it is not one of ours.
    pub fn read(&self, dom: Domain) -> Result<Option<Found>> {
        let xml = dom.xml_desc(0).map_err(lv("reading the domain xml"))?;
        let Ok(doc) = DomainDoc::parse(&xml) else {
            return Ok(None);
        };
        let Some(meta) = doc.meta().cloned() else {
            return Ok(None);
        };
        if meta.pool != self.config.storage_pool {
            return Ok(None);
        }
        self.remember(&meta.id, &doc.uuid);
        Ok(Some(Found { dom, doc, meta }))
    }

    fn scan(&self, conn: &Connect) -> Result<Vec<Found>> {
        let doms = conn.list_all_domains(0).map_err(lv("listing domains"))?;
        let mut out = Vec::new();
        for dom in doms {
            // A domain may vanish between the listing and the read.
            if let Ok(Some(found)) = self.read(dom) {
                out.push(found);
            }
        }
        Ok(out)
    }

    pub fn find(&self, conn: &Connect, id: &str) -> Result<Found> {
        let cached = lock(&self.ids).get(id).cloned();
        if let Some(uuid) = cached {
            if let Ok(dom) = conn.lookup_domain_by_uuid_string(&uuid) {
                if let Ok(Some(found)) = self.read(dom) {
                    if found.meta.id == id {
                        return Ok(found);
                    }
                }
            }
            self.forget(id);
        }
        self.scan(conn)?
            .into_iter()
            .find(|f| f.meta.id == id)
            .ok_or_else(|| KvmError::NotFound(id.to_owned()))
    }

    pub fn state(&self, found: &Found) -> Result<InstanceState> {
        let (state, reason) = domain_state(&found.dom).map_err(lv("reading the domain state"))?;
        let failed = (state == sys::VIR_DOMAIN_SHUTOFF
            && matches!(
                reason as sys::virDomainShutoffReason,
                sys::VIR_DOMAIN_SHUTOFF_CRASHED | sys::VIR_DOMAIN_SHUTOFF_FAILED
            ))
            // Paused by QEMU on an I/O error (a full pool under a thin disk).
            || (state == sys::VIR_DOMAIN_PAUSED
                && reason as sys::virDomainPausedReason == sys::VIR_DOMAIN_PAUSED_IOERROR);
        let state = DomainStateEnum::from_raw(state).known();
        Ok(map_state(state, failed, found.meta.started))
    }

    pub fn instance(&self, found: &Found) -> Result<Instance> {
        let state = self.state(found)?;
        let doc = &found.doc;
        let meta = &found.meta;
        let mut pending = None;
        if is_active_state(state) {
            let cfg = found
                .dom
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(lv("reading the domain config"))
                .and_then(|x| DomainDoc::parse(&x))?;
            let mut p = Resources::default();
            if cfg.vcpus() != doc.vcpus() {
                p.cpu = Some(CpuResources {
                    cores: Some(cfg.vcpus()),
                });
            }
            if cfg.memory() != doc.memory() {
                p.memory = Some(MemoryResources {
                    limit: Some(cfg.memory()),
                    used: None,
                });
            }
            if !p.is_empty() {
                pending = Some(p);
            }
        }
        Ok(Instance {
            id: meta.id.clone(),
            name: doc.name.clone(),
            uuid: doc.uuid.clone(),
            instance_type: InstanceType::Vm,
            backend: self.name.clone(),
            state,
            status: Default::default(),
            config: meta.config.to_json(),
            resources: Resources {
                cpu: Some(CpuResources {
                    cores: Some(doc.vcpus()),
                }),
                memory: Some(MemoryResources {
                    limit: Some(doc.memory()),
                    used: None,
                }),
                storage: Some(StorageResources {
                    total_space: Some(meta.disk_size),
                    enforced: None,
                }),
            },
            pending_resources: pending,
            metadata: Metadata {
                labels: meta.labels.to_map(),
            },
            created_at: parse_time(&meta.created_at),
            updated_at: parse_time(&meta.updated_at),
        })
    }

    /// Re-reads a domain and returns it as an instance.
    fn reread(&self, conn: &Connect, id: &str, dom: &Domain) -> Result<Instance> {
        match self.read(dom.clone())? {
            Some(found) => self.instance(&found),
            None => self.instance(&self.find(conn, id)?),
        }
    }

    pub(crate) fn write_meta(&self, dom: &Domain, meta: &InstanceMeta) -> Result<()> {
        let xml = meta.to_metadata_element()?;
        let live = dom.is_active().unwrap_or(false);
        let flags = if live {
            sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG
        } else {
            sys::VIR_DOMAIN_AFFECT_CONFIG
        };
        dom.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&xml),
            Some(NS_PREFIX),
            Some(NAMESPACE),
            flags,
        )
        .map_err(lv("writing the domain metadata"))
    }

    /// Stamps a change made through the API (see [`next_update`]) into the metadata.
    fn touch(&self, found: &mut Found) -> Result<()> {
        found.meta.updated_at = next_update(&found.meta.updated_at);
        self.write_meta(&found.dom, &found.meta)
    }

    fn host(&self, conn: &Connect) -> Result<HostResources> {
        let info = conn.node_info().map_err(lv("reading the node info"))?;
        Ok(HostResources {
            cpus: info.cpus,
            memory: info.memory.saturating_mul(1024),
        })
    }

    fn check_limits(
        &self,
        conn: &Connect,
        cores: Option<u32>,
        memory: Option<u64>,
    ) -> Result<HostResources> {
        let host = self.host(conn)?;
        if let Some(c) = cores {
            if c == 0 {
                return Err(KvmError::InvalidRequest(
                    "cpu.cores must be at least 1".into(),
                ));
            }
            if c > host.cpus {
                return Err(KvmError::ResourceLimit {
                    field: "cpu.cores",
                    requested: c.into(),
                    limit: host.cpus.into(),
                    of: "the host's cpus",
                });
            }
        }
        if let Some(m) = memory {
            if m < (16 << 20) {
                return Err(KvmError::InvalidRequest(
                    "memory.limit must be at least 16 MiB".into(),
                ));
            }
            if m > host.memory {
                return Err(KvmError::ResourceLimit {
                    field: "memory.limit",
                    requested: m,
                    limit: host.memory,
                    of: "the host's memory",
                });
            }
        }
        Ok(host)
    }

    /// Refuses a disk larger than the storage pool's capacity (the size of the
    /// file system under it, not what is free now: qcow2 disks are thin), before
    /// libvirt or qemu-img is asked for it.
    fn check_disk_size(&self, pool: &virt::storage_pool::StoragePool, size: u64) -> Result<()> {
        let capacity = pool
            .info()
            .map_err(lv("reading the storage pool's capacity"))?
            .capacity;
        if size > capacity {
            return Err(KvmError::ResourceLimit {
                field: "storage.totalSpace",
                requested: size,
                limit: capacity,
                of: "the storage pool's capacity",
            });
        }
        Ok(())
    }

    /// The domain type for a new domain: as configured, else as probed at start for
    /// a local libvirt, else (a remote one) `kvm` when its capabilities offer it.
    fn domain_type_on(&self, conn: &Connect) -> String {
        if self.config.domain_type.is_some() || storage::uri_is_local(&self.config.uri) {
            return self.domain_type.clone();
        }
        match conn.capabilities() {
            Ok(caps)
                if caps.contains("<domain type='kvm'") || caps.contains("<domain type=\"kvm\"") =>
            {
                "kvm".into()
            }
            Ok(_) => "qemu".into(),
            Err(_) => self.domain_type.clone(),
        }
    }

    fn create(&self, req: CreateRequest) -> Result<Instance> {
        check_id(&req.id)?;
        // Dropped after the domain is defined (or the create failed and rolled back).
        lock(&self.creating).insert(req.id.clone());
        let _in_flight = InFlight {
            inner: self,
            id: req.id.clone(),
        };
        let config = InstanceConfig::from_request(&req.config, &self.config.default_network)
            .map_err(KvmError::InvalidRequest)?;
        if let Some(field) = config.xml_illegal() {
            return Err(KvmError::InvalidRequest(format!(
                "{field} holds control characters"
            )));
        }
        let xml_bad = crate::config::has_control_chars;
        if let Some((k, _)) = req.labels.iter().find(|(k, v)| xml_bad(k) || xml_bad(v)) {
            return Err(KvmError::InvalidRequest(format!(
                "label {k:?} holds control characters"
            )));
        }
        let template = storage::find_template(&self.config.templates_dir, &config.image)?;
        let cores = req.resources.cores().unwrap_or(1);
        let memory = req.resources.memory_limit().unwrap_or(DEFAULT_MEMORY);
        let size = req.resources.total_space().unwrap_or(template.virtual_size);
        if size < template.virtual_size {
            return Err(KvmError::InvalidRequest(format!(
                "storage.totalSpace {size} is smaller than template {} ({} bytes)",
                template.name, template.virtual_size
            )));
        }
        let conn = self.connect()?;
        let host = self.check_limits(&conn, Some(cores), Some(memory))?;
        if conn.lookup_domain_by_name(&req.name).is_ok() {
            return Err(KvmError::NameTaken(req.name));
        }
        if let (crate::config::NetworkType::Network, Some(net)) =
            (config.network_type, config.network_source.as_deref())
        {
            // libvirt itself would only notice at start.
            if conn.lookup_network_by_name(net).is_err() {
                return Err(KvmError::InvalidRequest(format!(
                    "libvirt network {net} does not exist"
                )));
            }
        }
        if let (crate::config::NetworkType::Bridge, Some(br)) =
            (config.network_type, config.network_source.as_deref())
        {
            // On this host the bridge can be seen; a remote one shows it at start.
            let sys_net = std::path::Path::new("/sys/class/net");
            if storage::uri_is_local(&self.config.uri)
                && sys_net.is_dir()
                && !sys_net.join(br).join("bridge").is_dir()
            {
                return Err(KvmError::InvalidRequest(format!(
                    "{br} is not a bridge on this host"
                )));
            }
        }
        let (pool, pool_dir) = self.pool(&conn)?;
        self.check_disk_size(&pool, size)?;
        let format = config.disk_format.as_str();
        let mut rollback = Rollback {
            conn: &conn,
            local: storage::uri_is_local(&self.config.uri),
            dom: None,
            volumes: Vec::new(),
            armed: true,
        };
        let volume = storage::create_disk(
            &pool,
            &pool_dir,
            &format!("{}.{format}", req.id),
            &template,
            format,
            size,
        )?;
        let disk = match volume.path() {
            Ok(path) => path,
            Err(source) => {
                let _ = volume.delete(0);
                return Err(KvmError::Libvirt {
                    op: "reading the disk volume path",
                    source,
                });
            }
        };
        rollback.volumes.push(disk.clone());
        let seed = match &config.cloud_init {
            Some(ci) => {
                let files = cloud_init::seed_files(ci, &req.id, &req.name);
                let image = cloud_init::build_seed(&files)?;
                let path =
                    storage::create_seed(&conn, &pool, &format!("{}-seed.img", req.id), &image)?;
                rollback.volumes.push(path.clone());
                Some(path)
            }
            None => None,
        };
        let created = req.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let meta = InstanceMeta {
            xmlns: None,
            id: req.id.clone(),
            created_at: created.clone(),
            updated_at: created,
            started: req.start,
            labels: LabelsXml::from_map(&req.labels),
            config: config.redacted(),
            pool: self.config.storage_pool.clone(),
            disk: disk.clone(),
            disk_size: size,
            seed: seed.clone(),
        };
        let spec = DomainSpec {
            domain_type: self.domain_type_on(&conn),
            name: req.name.clone(),
            vcpus: cores,
            max_vcpus: cores.max(host.cpus),
            cpu_mode: self.config.cpu_mode.map(|m| m.as_str()),
            memory,
            disk: (disk, format.to_owned()),
            seed,
            meta: meta.clone(),
        };
        let xml = spec.to_xml()?;
        let dom = match conn.define_domain_xml(&xml) {
            Ok(d) => d,
            // Another domain took the name while the disk was being made.
            Err(e)
                if e.code().to_raw() == sys::VIR_ERR_OPERATION_FAILED
                    && e.message().contains("already exists") =>
            {
                return Err(KvmError::NameTaken(req.name));
            }
            Err(source) => {
                return Err(KvmError::Libvirt {
                    op: "defining the domain",
                    source,
                })
            }
        };
        rollback.dom = Some(dom.clone());
        if req.start {
            dom.create().map_err(lv("starting the domain"))?;
            // updatedAt is the start's time, after createdAt.
            let mut found = Found {
                dom: dom.clone(),
                doc: DomainDoc::parse(&dom.xml_desc(0).map_err(lv("reading the domain xml"))?)?,
                meta,
            };
            self.touch(&mut found)?;
        }
        let instance = self.reread(&conn, &req.id, &dom)?;
        rollback.armed = false;
        tracing::info!(instance = %req.id, name = %req.name, "created");
        Ok(instance)
    }

    fn start(&self, id: &str) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        if is_active_state(self.state(&found)?) {
            return self.instance(&found);
        }
        let was_started = found.meta.started;
        if !was_started {
            // Before the start, so that the STARTED event already reads `started`.
            found.meta.started = true;
            self.write_meta(&found.dom, &found.meta)?;
        }
        if let Err(source) = found.dom.create() {
            // Started meanwhile by someone else (virsh): that is what was asked.
            if found.dom.is_active().unwrap_or(false) {
                return self.reread(&conn, id, &found.dom);
            }
            // Never ran: keep it `created` rather than `stopped`.
            if !was_started {
                found.meta.started = false;
                let _ = self.write_meta(&found.dom, &found.meta);
            }
            return Err(KvmError::Libvirt {
                op: "starting the domain",
                source,
            });
        }
        self.touch(&mut found)?;
        tracing::info!(instance = %id, "started");
        self.reread(&conn, id, &found.dom)
    }

    fn stop(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        let state = self.state(&found)?;
        if !is_active_state(state) {
            return self.instance(&found);
        }
        let dom = &found.dom;
        let mut graceful = !options.force && options.timeout > 0;
        if graceful && state == InstanceState::Paused {
            // A frozen guest cannot see the ACPI button: thaw it first.
            graceful = dom.resume().is_ok();
        }
        if graceful {
            let deadline = Instant::now() + Duration::from_secs(options.timeout);
            if dom.shutdown().is_ok() {
                while Instant::now() < deadline && dom.is_active().unwrap_or(false) {
                    std::thread::sleep(STOP_POLL);
                }
            }
        }
        if dom.is_active().unwrap_or(false) {
            if let Err(e) = dom.destroy() {
                // It may have shut down between the check and the destroy.
                if dom.is_active().unwrap_or(true) {
                    return Err(KvmError::Libvirt {
                        op: "destroying the domain",
                        source: e,
                    });
                }
            }
            tracing::info!(instance = %id, graceful, "stopped hard");
        } else {
            tracing::info!(instance = %id, "stopped gracefully");
        }
        self.touch(&mut found)?;
        self.reread(&conn, id, &found.dom)
    }

    fn pause(&self, id: &str) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        match self.state(&found)? {
            InstanceState::Paused => return self.instance(&found),
            InstanceState::Running => {}
            other => {
                return Err(KvmError::InvalidState(format!(
                    "cannot pause an instance that is {}",
                    other.as_str()
                )))
            }
        }
        found.dom.suspend().map_err(lv("suspending the domain"))?;
        self.touch(&mut found)?;
        self.reread(&conn, id, &found.dom)
    }

    fn unpause(&self, id: &str) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        match self.state(&found)? {
            InstanceState::Running => return self.instance(&found),
            InstanceState::Paused => {}
            other => {
                return Err(KvmError::InvalidState(format!(
                    "cannot unpause an instance that is {}",
                    other.as_str()
                )))
            }
        }
        // A guest suspended by its own power management wakes up; one paused by us
        // (or libvirt) resumes.
        let pm_suspended =
            domain_state(&found.dom).is_ok_and(|(state, _)| state == sys::VIR_DOMAIN_PMSUSPENDED);
        if pm_suspended {
            found.dom.pm_wakeup(0).map_err(lv("waking the domain up"))?;
        } else {
            found.dom.resume().map_err(lv("resuming the domain"))?;
        }
        self.touch(&mut found)?;
        self.reread(&conn, id, &found.dom)
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let conn = self.connect()?;
        let found = self.find(&conn, id)?;
        let state = self.state(&found)?;
        if found.dom.is_active().unwrap_or(false) {
            if !force {
                return Err(KvmError::InvalidState(format!(
                    "instance is {}; delete it with force",
                    state.as_str()
                )));
            }
            if let Err(e) = found.dom.destroy() {
                if found.dom.is_active().unwrap_or(true) {
                    return Err(KvmError::Libvirt {
                        op: "destroying the domain",
                        source: e,
                    });
                }
            }
        }
        undefine(&found.dom)?;
        // The id stays known until the worker sees the UNDEFINED event, so that the
        // host gets a Vanished event after any late Changed event of this domain.
        self.cpu.forget(&found.doc.uuid);
        // The domain is gone: from here on every volume is tried, and a failure is
        // logged rather than answered (a retry would find no instance to delete).
        // Only files inside this backend's pool are removed, whatever the metadata
        // says (a domain copied by hand carries our metadata too).
        let pool_dir = self.pool(&conn).map(|(_, dir)| dir);
        let mut volumes = vec![found.meta.disk.clone()];
        volumes.extend(found.meta.seed.clone());
        for path in volumes {
            // Directly in the pool's directory: `<pool>/../x` is not.
            let inside = pool_dir
                .as_ref()
                .is_ok_and(|dir| std::path::Path::new(&path).parent() == Some(dir.as_path()));
            if !inside {
                tracing::warn!(instance = %id, volume = %path, "volume outside the pool left in place");
                continue;
            }
            if let Err(e) =
                storage::delete_volume(&conn, &path, storage::uri_is_local(&self.config.uri))
            {
                tracing::error!(instance = %id, volume = %path, error = %e, "volume of a deleted instance not removed");
            }
        }
        tracing::info!(instance = %id, "deleted");
        Ok(())
    }

    fn update(&self, id: &str, req: UpdateRequest) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        // Everything is checked before anything is changed.
        self.check_limits(&conn, req.resources.cores(), req.resources.memory_limit())?;
        let mut grow_to = None;
        if let Some(size) = req.resources.total_space() {
            // The volume's own capacity too: the metadata may lag behind a resize.
            let current = conn
                .lookup_storage_vol_by_path(&found.meta.disk)
                .and_then(|v| v.info())
                .map(|i| i.capacity)
                .unwrap_or(0)
                .max(found.meta.disk_size);
            if size < current {
                return Err(KvmError::DiskShrink {
                    requested: size,
                    current,
                });
            }
            if size > current {
                let (pool, _) = self.pool(&conn)?;
                self.check_disk_size(&pool, size)?;
                grow_to = Some(size);
            }
        }
        let dom = &found.dom;
        let active = dom.is_active().unwrap_or(false);
        let cfg = dom
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(lv("reading the domain config"))
            .and_then(|x| DomainDoc::parse(&x))?;
        if let Some(cores) = req.resources.cores() {
            if cores > cfg.max_vcpus() {
                dom.set_vcpus_flags(
                    cores,
                    sys::VIR_DOMAIN_VCPU_CONFIG | sys::VIR_DOMAIN_VCPU_MAXIMUM,
                )
                .map_err(lv("raising the vcpu maximum"))?;
            }
            dom.set_vcpus_flags(cores, sys::VIR_DOMAIN_VCPU_CONFIG)
                .map_err(lv("setting vcpus"))?;
            if active && cores <= found.doc.max_vcpus() && cores != found.doc.vcpus() {
                if let Err(e) = dom.set_vcpus_flags(cores, sys::VIR_DOMAIN_VCPU_LIVE) {
                    tracing::info!(instance = %id, error = %e, "vcpus change waits for the next start");
                }
            }
        }
        if let Some(memory) = req.resources.memory_limit() {
            let kib = memory.div_ceil(1024);
            dom.set_memory_flags(
                kib,
                sys::VIR_DOMAIN_MEM_CONFIG | sys::VIR_DOMAIN_MEM_MAXIMUM,
            )
            .map_err(lv("setting the memory maximum"))?;
            dom.set_memory_flags(kib, sys::VIR_DOMAIN_MEM_CONFIG)
                .map_err(lv("setting memory"))?;
            if active && memory <= found.doc.max_memory() && memory != found.doc.memory() {
                if let Err(e) = dom.set_memory_flags(kib, sys::VIR_DOMAIN_MEM_LIVE) {
                    tracing::info!(instance = %id, error = %e, "memory change waits for the next start");
                }
            }
        }
        if let Some(size) = grow_to {
            // Only ever larger (checked above): never a shrink.
            if active {
                dom.block_resize("vda", size, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                    .map_err(lv("growing the disk"))?;
            } else {
                conn.lookup_storage_vol_by_path(&found.meta.disk)
                    .and_then(|v| v.resize(size, 0))
                    .map_err(lv("growing the disk volume"))?;
            }
            found.meta.disk_size = size;
        }
        if let Some(labels) = &req.labels {
            found.meta.labels = LabelsXml::from_map(labels);
        }
        self.touch(&mut found)?;
        self.reread(&conn, id, &found.dom)
    }
}

impl Backend for KvmBackend {
    fn describe(&self) -> std::result::Result<BackendDescription, PluginError> {
        let conn = self.inner.connect()?;
        let lib = conn
            .lib_version()
            .map_err(lv("reading the libvirt version"))?;
        let hyp = conn
            .hyp_version()
            .map_err(lv("reading the hypervisor version"))?;
        let driver = conn.driver_type().map_err(lv("reading the driver type"))?;
        let mut extra = serde_json::Map::new();
        extra.insert("hypervisor".into(), driver.into());
        extra.insert("hypervisorVersion".into(), version_string(hyp).into());
        extra.insert("libvirtVersion".into(), version_string(lib).into());
        extra.insert("uri".into(), self.inner.config.uri.clone().into());
        extra.insert("domainType".into(), self.inner.domain_type.clone().into());
        extra.insert(
            "storagePool".into(),
            self.inner.config.storage_pool.clone().into(),
        );
        Ok(BackendDescription {
            version: version_string(lib),
            api_version: version_string(lib),
            capabilities: [
                "vms",
                "templates",
                "pause",
                "live-update",
                "cloud-init",
                "events",
            ]
            .map(String::from)
            .to_vec(),
            supported_types: vec![InstanceType::Vm],
            extra,
        })
    }

    fn health(&self) -> std::result::Result<(), PluginError> {
        let conn = self.inner.connect()?;
        conn.lib_version().map_err(lv("pinging libvirt"))?;
        Ok(())
    }

    fn host_resources(&self) -> std::result::Result<HostResources, PluginError> {
        let conn = self.inner.connect()?;
        Ok(self.inner.host(&conn)?)
    }

    fn images(&self) -> std::result::Result<Vec<Image>, PluginError> {
        Ok(storage::list_templates(&self.inner.config.templates_dir)?
            .iter()
            .map(storage::Template::to_image)
            .collect())
    }

    fn list(&self) -> std::result::Result<Vec<Instance>, PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "list").entered();
        let conn = self.inner.connect()?;
        let mut out = Vec::new();
        for found in self.inner.scan(&conn)? {
            match self.inner.instance(&found) {
                Ok(i) => out.push(i),
                // Gone between the scan and the read.
                Err(e) if e.libvirt_code() == Some(sys::VIR_ERR_NO_DOMAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // A list is the host's resync: leftovers of a killed server go now.
        self.inner.sweep(&conn);
        Ok(out)
    }

    fn get(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "get", instance = %id)
                .entered();
        let conn = self.inner.connect()?;
        let found = self.inner.find(&conn, id)?;
        Ok(self.inner.instance(&found)?)
    }

    fn create(&self, request: CreateRequest) -> std::result::Result<Instance, PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "create", instance = %request.id).entered();
        Ok(self.inner.create(request)?)
    }

    fn update(
        &self,
        id: &str,
        request: UpdateRequest,
    ) -> std::result::Result<Instance, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "update", instance = %id)
                .entered();
        Ok(self.inner.update(id, request)?)
    }

    fn delete(&self, id: &str, force: bool) -> std::result::Result<(), PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "delete", instance = %id)
                .entered();
        Ok(self.inner.delete(id, force)?)
    }

    fn start(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "start", instance = %id)
                .entered();
        Ok(self.inner.start(id)?)
    }

    fn stop(&self, id: &str, options: StopOptions) -> std::result::Result<Instance, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "stop", instance = %id)
                .entered();
        Ok(self.inner.stop(id, options)?)
    }

    fn restart(
        &self,
        id: &str,
        options: StopOptions,
    ) -> std::result::Result<Instance, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "restart", instance = %id)
                .entered();
        self.inner.stop(id, options)?;
        Ok(self.inner.start(id)?)
    }

    fn pause(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "pause", instance = %id)
                .entered();
        Ok(self.inner.pause(id)?)
    }

    fn unpause(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "unpause", instance = %id)
                .entered();
        Ok(self.inner.unpause(id)?)
    }

    fn usage(&self, id: &str) -> std::result::Result<Usage, PluginError> {
        let _span =
            tracing::info_span!("kvm", backend = %self.inner.name, op = "usage", instance = %id)
                .entered();
        let conn = self.inner.connect()?;
        let found = self.inner.find(&conn, id)?;
        Ok(crate::stats::usage(&self.inner, &found)?)
    }

    fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.conn.close();
    }
}

impl Drop for KvmBackend {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        use DomainState::*;
        let cases = [
            (Some(Running), false, false, InstanceState::Running),
            (Some(Blocked), false, true, InstanceState::Running),
            (Some(Shutdown), false, true, InstanceState::Running),
            (Some(Paused), false, true, InstanceState::Paused),
            (Some(Paused), true, true, InstanceState::Error),
            (Some(PMSuspended), false, true, InstanceState::Paused),
            (Some(Shutoff), false, false, InstanceState::Created),
            (Some(Shutoff), false, true, InstanceState::Stopped),
            (Some(Shutoff), true, true, InstanceState::Error),
            (Some(Crashed), false, true, InstanceState::Error),
            (Some(NoState), false, true, InstanceState::Unknown),
            (None, false, true, InstanceState::Unknown),
        ];
        for (s, failed, started, want) in cases {
            assert_eq!(
                map_state(s, failed, started),
                want,
                "{s:?} {failed} {started}"
            );
        }
    }

    #[test]
    fn ids_must_be_volume_safe() {
        assert!(check_id("inst-1a2b_3.x").is_ok());
        for bad in ["", "../x", "a/b", ".x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn updates_are_in_milliseconds_and_never_go_back() {
        let t = next_update("2020-01-01T00:00:00.123456789Z");
        let p = parse_time(&t);
        assert_eq!(p.timestamp_subsec_nanos() % 1_000_000, 0, "{t}");
        assert!(p > parse_time("2020-01-01T00:00:00.123456789Z"));
        // A stamp in the future (the clock went back): 1 ms after it.
        assert_eq!(
            next_update("2999-01-01T00:00:00.123Z"),
            "2999-01-01T00:00:00.124Z"
        );
        assert_eq!(
            next_update("2999-01-01T00:00:00.123456Z"),
            "2999-01-01T00:00:00.124Z"
        );
    }

    #[test]
    fn versions_print_as_dotted() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }
}
