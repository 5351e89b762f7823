//! What the host can hold: its CPUs and memory, and the checks of `cpu.cores`,
//! `memory.limit` and `storage.totalSpace` made at create and update before libvirt
//! or qemu-img is asked for anything (`RESOURCE_LIMIT_EXCEEDED` beyond them).

use unicompute_plugin_api::HostResources;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use crate::backend::Inner;
use crate::error::{lv, KvmError, LibvirtOp, Result};

/// The least memory a guest is given (16 MiB).
const MIN_MEMORY: u64 = 16 << 20;

impl Inner {
    /// The host's CPUs and memory (bytes).
    pub(super) fn host(&self, conn: &Connect) -> Result<HostResources> {
        let info = conn.node_info().map_err(lv(LibvirtOp::ReadNodeInfo))?;
        Ok(HostResources {
            cpus: info.cpus,
            memory: info.memory.saturating_mul(1024),
        })
    }

    /// Refuses vCPUs or memory beyond the host's (and below what a guest needs);
    /// returns the host's resources.
    pub(super) fn check_limits(
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
            if m < MIN_MEMORY {
                return Err(KvmError::TooSmall {
                    field: "memory.limit",
                    requested: m,
                    limit: MIN_MEMORY,
                    of: "what a guest needs".into(),
                });
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
    pub(super) fn check_disk_size(&self, pool: &StoragePool, size: u64) -> Result<()> {
        let capacity = pool
            .info()
            .map_err(lv(LibvirtOp::ReadPoolCapacity))?
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
}
