//! Usage of one instance: CPU from the domain's cpu time, memory from the balloon
//! (else the allocation), storage from the disk volume, network from the
//! interface counters. The arithmetic is in `crate::stats`.

use std::time::Instant;

use unicompute_plugin_api::{CpuUsage, MemoryUsage, NetworkUsage, StorageUsage, Usage};
use virt::domain::DomainState;

use crate::backend::Inner;
use crate::error::{lv, LibvirtOp, Result};
use crate::stats::balloon_used;

impl Inner {
    pub(crate) fn usage(&self, id: &str) -> Result<Usage> {
        let conn = self.connect()?;
        let found = self.find(&conn, id)?;
        let dom = &found.dom;
        let uuid = &found.doc.uuid;
        let info = dom.info().map_err(lv(LibvirtOp::ReadDomainInfo))?;
        let active = !matches!(
            info.state.known(),
            Some(DomainState::Shutoff | DomainState::Crashed | DomainState::NoState) | None
        );
        let vcpus = found.doc.vcpus();
        let cpu = if active {
            let sample = (Instant::now(), info.cpu_time);
            self.cpu.percent(uuid, sample, vcpus, || {
                dom.info()
                    .map(|again| again.cpu_time)
                    .map_err(lv(LibvirtOp::ReadDomainInfo))
            })?
        } else {
            self.cpu.forget(uuid);
            0.0
        };

        let limit = found.doc.memory();
        let used = if active {
            let stats: Vec<(u32, u64)> = dom
                .memory_stats(0)
                .map(|s| s.into_iter().map(|m| (m.tag, m.val)).collect())
                .unwrap_or_default();
            balloon_used(&stats).unwrap_or(info.memory.saturating_mul(1024))
        } else {
            0
        };

        // From the volume, not `Domain::block_info`: `virt` 0.5 ignores that call's
        // failure and reads an uninitialised struct.
        let (total, allocated) = self
            .connect()
            .and_then(|c| {
                c.lookup_storage_vol_by_path(&found.meta.disk)
                    .and_then(|v| v.info())
                    .map_err(lv(LibvirtOp::ReadDiskVolume))
            })
            .map(|i| (i.capacity, i.allocation))
            .unwrap_or((found.meta.disk_size, 0));

        let mut network = NetworkUsage::default();
        if active {
            for iface in found.doc.interfaces() {
                if let Some(dev) = iface.target_dev() {
                    if let Ok(s) = dom.interface_stats(dev) {
                        network.rx_bytes += u64::try_from(s.rx_bytes).unwrap_or(0);
                        network.tx_bytes += u64::try_from(s.tx_bytes).unwrap_or(0);
                    }
                }
            }
        }

        Ok(Usage {
            cpu: CpuUsage {
                usage: cpu,
                cores: vcpus,
            },
            memory: MemoryUsage::new(used, limit),
            storage: StorageUsage {
                used: allocated,
                total,
            },
            network,
        })
    }
}
