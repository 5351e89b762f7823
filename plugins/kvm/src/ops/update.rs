//! Update: vCPUs and memory into the persistent config and live where the guest
//! allows, the disk grown (live or offline, never shrunk), labels replaced; every
//! limit checked before anything changes.

use unicompute_plugin_api::{Instance, UpdateRequest};
use virt::sys;

use crate::backend::Inner;
use crate::error::{lv, KvmError, LibvirtOp, Result};
use crate::record::config_doc;
use crate::xml::LabelsXml;

impl Inner {
    pub(crate) fn update(&self, id: &str, req: UpdateRequest) -> Result<Instance> {
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
        let cfg = config_doc(dom)?;
        if let Some(cores) = req.resources.cores() {
            if cores > cfg.max_vcpus() {
                dom.set_vcpus_flags(
                    cores,
                    sys::VIR_DOMAIN_VCPU_CONFIG | sys::VIR_DOMAIN_VCPU_MAXIMUM,
                )
                .map_err(lv(LibvirtOp::RaiseVcpuMaximum))?;
            }
            dom.set_vcpus_flags(cores, sys::VIR_DOMAIN_VCPU_CONFIG)
                .map_err(lv(LibvirtOp::SetVcpus))?;
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
            .map_err(lv(LibvirtOp::SetMemoryMaximum))?;
            dom.set_memory_flags(kib, sys::VIR_DOMAIN_MEM_CONFIG)
                .map_err(lv(LibvirtOp::SetMemory))?;
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
                    .map_err(lv(LibvirtOp::GrowDisk))?;
            } else {
                conn.lookup_storage_vol_by_path(&found.meta.disk)
                    .and_then(|v| v.resize(size, 0))
                    .map_err(lv(LibvirtOp::GrowDiskVolume))?;
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
