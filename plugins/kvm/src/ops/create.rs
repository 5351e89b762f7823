//! Create: a request checked (`crate::spec`), the disk and the seed made in the
//! pool, the domain defined (and started when asked); and what a failed create
//! leaves, removed by a [`Rollback`]. Ids of creates in flight are kept in
//! [`Creating`] so that the orphan sweep leaves their files alone.

use std::collections::HashSet;
use std::sync::Mutex;

use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{CreateRequest, Event, Instance, Progress};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{remove_console_log, undefine};
use crate::backend::Inner;
use crate::cloud_init;
use crate::error::{lv, KvmError, LibvirtOp, Result};
use crate::record::Found;
use crate::settings::KvmConfig;
use crate::spec::{self, Plan};
use crate::storage;
use crate::xml::DomainDoc;

/// The ids whose create runs now in this process.
#[derive(Default)]
pub(crate) struct Creating(Mutex<HashSet<String>>);

impl Creating {
    /// Marks `id` as being created until the returned guard is dropped.
    fn mark(&self, id: &str) -> InFlight<'_> {
        lock(&self.0).insert(id.to_owned());
        InFlight {
            creating: self,
            id: id.to_owned(),
        }
    }

    /// The ids whose create is in flight now.
    pub(crate) fn ids(&self) -> HashSet<String> {
        lock(&self.0).clone()
    }
}

/// Marks an id as being created until dropped.
struct InFlight<'a> {
    creating: &'a Creating,
    id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.creating.0).remove(&self.id);
    }
}

/// What a failed create leaves behind, removed on drop unless disarmed.
struct Rollback<'a> {
    conn: &'a Connect,
    local: bool,
    dom: Option<Domain>,
    volumes: Vec<String>,
    /// The instance's id, its settings and console log (a failed start may have
    /// made it).
    console_log: Option<(&'a KvmConfig, String, String)>,
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
        if let Some((config, id, file)) = &self.console_log {
            remove_console_log(config, id, Some(file));
        }
    }
}

impl Inner {
    pub(crate) fn create(&self, req: CreateRequest) -> Result<Instance> {
        spec::check_id(&req.id)?;
        // Dropped after the domain is defined (or the create failed and rolled back).
        let _in_flight = self.creating.mark(&req.id);
        let mut plan = Plan::new(&req, &self.config)?;
        let conn = self.connect()?;
        let host = self.check_limits(&conn, Some(plan.cores), Some(plan.memory))?;
        if conn.lookup_domain_by_name(&req.name).is_ok() {
            return Err(KvmError::NameTaken(req.name));
        }
        // libvirt itself would only notice at start.
        plan.resolve_network(&conn, &self.config.uri)?;
        let (pool, pool_dir) = self.pool(&conn)?;
        self.check_disk_size(&pool, plan.size)?;
        let format = plan.config.disk_format.as_str();
        let mut rollback = Rollback {
            conn: &conn,
            local: storage::uri_is_local(&self.config.uri),
            dom: None,
            volumes: Vec::new(),
            console_log: None,
            armed: true,
        };
        // A raw copy with an operation token reports its bytes and can be cancelled.
        let copy = req
            .operation
            .as_deref()
            .filter(|_| format == "raw")
            .map(|op| (op, self.cancels.register(op)));
        let sink = self.sink.clone();
        let report = |done: u64, total: u64| {
            if let Some((op, _)) = &copy {
                sink.emit(&Event::Progress {
                    operation: (*op).to_owned(),
                    progress: Progress::bytes("copying", done, Some(total)),
                });
            }
        };
        let watch = copy.as_ref().map(|(op, c)| storage::CopyWatch {
            operation: op,
            progress: &report,
            cancel: &c.flag,
        });
        let made = storage::create_disk(
            &pool,
            &pool_dir,
            &format!("{}.{format}", req.id),
            &plan.template,
            format,
            plan.size,
            watch.as_ref(),
        );
        let volume = made?;
        let disk = storage::volume_path(&volume, LibvirtOp::ReadDiskVolumePath)?;
        rollback.volumes.push(disk.clone());
        // A cancel that came as the copy ended still fails the create (the rollback
        // removes the disk): a `true` answer to cancel always means `CANCELLED`.
        if let Some((_, c)) = copy {
            c.finish()?;
        }
        let seed = match &plan.config.cloud_init {
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
        let domain_type = spec::domain_type_on(&self.config, &self.domain_type, &conn);
        let spec = plan.domain(&req, &self.config, domain_type, host.cpus, disk, seed);
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
                    op: LibvirtOp::DefineDomain,
                    source,
                })
            }
        };
        rollback.dom = Some(dom.clone());
        rollback.console_log = spec
            .console_log
            .clone()
            .map(|file| (&self.config, req.id.clone(), file));
        if req.start {
            dom.create().map_err(lv(LibvirtOp::StartDomain))?;
            // updatedAt is the start's time, after createdAt.
            let mut found = Found {
                dom: dom.clone(),
                doc: DomainDoc::parse(&dom.xml_desc(0).map_err(lv(LibvirtOp::ReadDomainXml))?)?,
                meta: spec.meta,
            };
            self.touch(&mut found)?;
        }
        let instance = self.reread(&conn, &req.id, &dom)?;
        rollback.armed = false;
        tracing::info!(instance = %req.id, name = %req.name, "created");
        Ok(instance)
    }
}
