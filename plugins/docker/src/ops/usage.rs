//! Usage of an instance while it runs: from its cgroup for a local engine, else (a
//! remote engine, or cgroup files that cannot be read) from its stats stream (see
//! `stats.rs`); when it does not run, nothing used but the writable layer.

use std::time::Duration;

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::InspectContainerOptions;
use unicompute_plugin_api::{CpuUsage, MemoryUsage, StorageUsage, Usage};

use super::{state_of, Result};
use crate::backend::Shared;
use crate::record;
use crate::stats::Allocation;

impl Shared {
    pub(crate) async fn usage(&self, id: &str) -> Result<Usage> {
        if let Some(u) = self.stats.fresh(id) {
            return Ok(u);
        }
        let (container, c) = self.resolve(id).await?;
        let limits = record::limits_of(&c);
        let alloc = Allocation {
            cores: limits.cores,
            memory_limit: limits.memory,
            storage_total: limits.storage.unwrap_or(0),
        };
        let storage_total = alloc.storage_total;
        let running = matches!(
            state_of(&c),
            Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::PAUSED)
        );
        if running && self.engine.is_local() {
            let docker = self.engine.client().await?;
            match self.stats.local_usage(docker, id, &c, alloc).await {
                Ok(u) => return Ok(u),
                Err(reason) => tracing::debug!(
                    instance = %id, %reason,
                    "usage: the cgroup cannot be read, using the engine's stats stream"
                ),
            }
        } else if running {
            tracing::debug!(instance = %id, "usage: remote engine, using the engine's stats stream");
        }
        if running {
            let docker = self.engine.client().await?;
            let idle = Duration::from_secs(self.engine.config().stats_idle_secs);
            if let Some(u) = self.stats.watch(docker, id, &container, alloc, idle).await {
                return Ok(u);
            }
        }
        // Not running: nothing is used but the writable layer.
        let host_res = self.host_resources().await?;
        let sized = self
            .engine
            .quick("inspect", |d| async move {
                d.inspect_container(&container, Some(InspectContainerOptions { size: true }))
                    .await
            })
            .await?;
        Ok(Usage {
            cpu: CpuUsage {
                usage: 0.0,
                cores: alloc
                    .cores
                    .map(|c| c.ceil() as u32)
                    .unwrap_or(host_res.cpus),
            },
            memory: MemoryUsage::new(0, alloc.memory_limit.unwrap_or(host_res.memory)),
            storage: StorageUsage {
                used: sized.size_rw.unwrap_or(0).max(0) as u64,
                total: storage_total,
            },
            network: Default::default(),
        })
    }
}
