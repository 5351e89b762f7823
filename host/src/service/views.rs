//! What the server says about its backends and the cluster, computed here once so that
//! every client (the API today, a CLI or a dashboard through it) sees the same rules.

use std::sync::Arc;

use unicompute_plugin_api::BackendDescription;

use super::{Error, Service};
use crate::plugins::registry::{BackendEntry, BackendStatus, Health};

/// Whether the cluster's enabled backends answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterHealth {
    /// Every enabled backend is healthy (also when none is enabled).
    Healthy,
    /// Some are.
    Degraded,
    /// None is.
    Unhealthy,
}

impl ClusterHealth {
    /// From the number of healthy backends among `count` enabled ones.
    pub fn of(healthy: usize, count: usize) -> ClusterHealth {
        if healthy == count {
            ClusterHealth::Healthy
        } else if healthy == 0 {
            ClusterHealth::Unhealthy
        } else {
            ClusterHealth::Degraded
        }
    }
}

/// One enabled backend in the cluster status.
#[derive(Debug, Clone)]
pub struct ClusterBackendView {
    /// The backend's name.
    pub name: String,
    /// `Healthy` or `Unavailable` (only enabled backends are shown).
    pub status: BackendStatus,
    /// Managed instances.
    pub instances: usize,
    /// Cores allocated to running, paused and restarting instances.
    pub cpu_used: u64,
    /// The host's cores.
    pub cpu_total: u64,
    /// Memory allocated to running, paused and restarting instances, bytes.
    pub memory_used: u64,
    /// The host's memory, bytes.
    pub memory_total: u64,
}

/// The whole cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Enabled backends, by name.
    pub backends: Vec<ClusterBackendView>,
    /// Instances on all of them.
    pub total_instances: usize,
    /// The verdict.
    pub health: ClusterHealth,
}

/// One configured backend.
#[derive(Debug, Clone)]
pub struct BackendView {
    /// The backend's name.
    pub name: String,
    /// The plugin named in the config.
    pub plugin: String,
    /// Its kind, when the plugin is loaded.
    pub kind: Option<String>,
    /// Enabled in the config.
    pub enabled: bool,
    /// Healthy, unavailable or disabled.
    pub status: BackendStatus,
    /// Why not healthy.
    pub reason: Option<String>,
    /// Managed instances.
    pub instances: usize,
}

/// One backend in detail.
pub struct BackendDetail {
    /// The backend.
    pub entry: Arc<BackendEntry>,
    /// Healthy, unavailable or disabled.
    pub status: BackendStatus,
    /// The last health check.
    pub health: Health,
    /// Its description, live or as last read.
    pub description: Option<BackendDescription>,
}

impl Service {
    /// The cluster status: every enabled backend with its counts and capacity.
    pub fn cluster(&self) -> ClusterView {
        let usage = self.inventory.usage_by_backend();
        let mut backends = Vec::new();
        let (mut total, mut healthy) = (0, 0);
        for e in self.registry().all().filter(|e| e.config.enabled) {
            let (instances, cpu_used, memory_used) =
                usage.get(&e.name).copied().unwrap_or_default();
            let status = match e.status() {
                BackendStatus::Healthy => BackendStatus::Healthy,
                BackendStatus::Unavailable | BackendStatus::Disabled => BackendStatus::Unavailable,
            };
            let host = e.health().host.unwrap_or_default();
            healthy += usize::from(status == BackendStatus::Healthy);
            total += instances;
            backends.push(ClusterBackendView {
                name: e.name.clone(),
                status,
                instances,
                cpu_used,
                cpu_total: u64::from(host.cpus),
                memory_used,
                memory_total: host.memory,
            });
        }
        let health = ClusterHealth::of(healthy, backends.len());
        ClusterView {
            backends,
            total_instances: total,
            health,
        }
    }

    /// Every configured backend with its status.
    pub fn backends(&self) -> Vec<BackendView> {
        let counts = self.inventory.usage_by_backend();
        self.registry()
            .all()
            .map(|e| {
                let status = e.status();
                BackendView {
                    name: e.name.clone(),
                    plugin: e.config.plugin.clone(),
                    kind: e.plugin.as_ref().map(|p| p.kind.clone()),
                    enabled: e.config.enabled,
                    status,
                    reason: match status {
                        BackendStatus::Healthy => None,
                        BackendStatus::Unavailable | BackendStatus::Disabled => e.health().reason,
                    },
                    instances: counts.get(&e.name).map(|c| c.0).unwrap_or(0),
                }
            })
            .collect()
    }

    /// One backend in detail, its description read live when it answers.
    pub async fn backend_detail(&self, name: &str) -> Result<BackendDetail, Error> {
        let (entry, description) = self.describe(name).await?;
        Ok(BackendDetail {
            status: entry.status(),
            health: entry.health(),
            entry,
            description,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterHealth;

    #[test]
    fn cluster_health_from_healthy_backends() {
        for (healthy, count, want) in [
            (0, 0, ClusterHealth::Healthy),
            (2, 2, ClusterHealth::Healthy),
            (1, 2, ClusterHealth::Degraded),
            (0, 2, ClusterHealth::Unhealthy),
        ] {
            assert_eq!(ClusterHealth::of(healthy, count), want, "{healthy}/{count}");
        }
    }
}
