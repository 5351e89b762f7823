//! What the host can hold: its resources (cached until the engine reconnects), and
//! the checks of `cpu.cores`, `memory.limit` and `storage.totalSpace` made before the
//! engine sees them (`RESOURCE_LIMIT_EXCEEDED` beyond them).

use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{ErrorCode, HostResources, PluginError};

use super::Result;
use crate::backend::Shared;

/// Docker refuses memory limits below this.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// `RESOURCE_LIMIT_EXCEEDED` for a size beyond what can be held.
fn too_big(field: &str, requested: u64, limit: u64) -> PluginError {
    PluginError::new(
        ErrorCode::ResourceLimitExceeded,
        format!("{field} of {requested} bytes asked, at most {limit} can be held here"),
    )
    .with_detail("field", field)
    .with_detail("requested", requested)
    .with_detail("limit", limit)
}

impl Shared {
    pub(crate) async fn host_resources(&self) -> Result<HostResources> {
        if let Some(h) = lock(&self.host).clone() {
            return Ok(h);
        }
        let info = self
            .engine
            .quick("info", |d| async move { d.info().await })
            .await?;
        let h = HostResources {
            cpus: info.ncpu.unwrap_or(0).max(0) as u32,
            memory: info.mem_total.unwrap_or(0).max(0) as u64,
        };
        *lock(&self.host) = Some(h.clone());
        Ok(h)
    }

    pub(crate) fn check_resources(
        &self,
        host: &HostResources,
        cores: Option<u32>,
        memory: Option<u64>,
    ) -> Result<()> {
        if let Some(c) = cores {
            if c == 0 {
                return Err(PluginError::invalid("cpu.cores must be at least 1"));
            }
            if host.cpus > 0 && c > host.cpus {
                return Err(PluginError::new(
                    ErrorCode::ResourceLimitExceeded,
                    format!("{c} cores asked, the host has {}", host.cpus),
                )
                .with_detail("available", host.cpus));
            }
        }
        if let Some(m) = memory {
            // Well formed, only less than the engine can give: 422, not 400.
            if m < MIN_MEMORY {
                return Err(PluginError::new(
                    ErrorCode::ResourceLimitExceeded,
                    format!(
                        "memory.limit of {m} bytes asked, the engine needs at least {MIN_MEMORY}"
                    ),
                )
                .with_detail("field", "memory.limit")
                .with_detail("requested", m)
                .with_detail("limit", MIN_MEMORY));
            }
            // The engine takes a signed 64-bit count: never more than that either.
            let limit = if host.memory > 0 {
                host.memory.min(i64::MAX as u64)
            } else {
                i64::MAX as u64
            };
            if m > limit {
                return Err(too_big("memory.limit", m, limit).with_detail("available", limit));
            }
        }
        Ok(())
    }

    /// The largest `storage.totalSpace` an instance may ask: the size of the
    /// filesystem of the engine's data root for a local engine (a container cannot
    /// hold more, with a quota or without), else `i64::MAX` (the engine's bound).
    pub(crate) async fn storage_limit(&self) -> Result<u64> {
        if let Some(c) = *lock(&self.storage_cap) {
            return Ok(c);
        }
        let mut cap = i64::MAX as u64;
        if self.engine.is_local() {
            let info = self
                .engine
                .quick("info", |d| async move { d.info().await })
                .await?;
            if let Some(root) = info.docker_root_dir {
                match rustix::fs::statvfs(root.as_str()) {
                    Ok(v) => cap = cap.min(v.f_blocks.saturating_mul(v.f_frsize)),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot size the engine's data root; storage bound is i64::MAX")
                    }
                }
            }
        }
        *lock(&self.storage_cap) = Some(cap);
        Ok(cap)
    }

    /// Refuses sizes beyond what the host can hold, before the engine sees them.
    pub(crate) async fn check_sizes(
        &self,
        memory: Option<u64>,
        storage: Option<u64>,
    ) -> Result<()> {
        if let Some(m) = memory {
            let host = self.host_resources().await?;
            self.check_resources(&host, None, Some(m))?;
        }
        if let Some(s) = storage {
            let limit = self.storage_limit().await?;
            if s > limit {
                return Err(too_big("storage.totalSpace", s, limit));
            }
        }
        Ok(())
    }
}
