//! Request and response bodies of the HTTP API. Requests refuse unknown fields, so a
//! typo is a 400 that names the field rather than a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use unicompute_plugin_api::{
    CpuResources, Image, Instance, JsonMap, MemoryResources, Resources, StopOptions,
    StorageResources,
};

/// `resources.cpu` in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CpuRequest {
    /// Cores (vCPUs), at least 1.
    pub cores: Option<u32>,
}

/// `resources.memory` in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemoryRequest {
    /// Bytes, at least 4 MiB.
    pub limit: Option<u64>,
}

/// `resources.storage` in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageRequest {
    /// Bytes.
    pub total_space: Option<u64>,
}

/// `resources` in a request.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourcesRequest {
    /// CPU.
    pub cpu: Option<CpuRequest>,
    /// Memory.
    pub memory: Option<MemoryRequest>,
    /// Storage.
    pub storage: Option<StorageRequest>,
}

/// Smallest memory limit accepted (Docker's own minimum is 6 MiB; QEMU needs more).
pub const MIN_MEMORY: u64 = 4 << 20;

impl ResourcesRequest {
    /// Checks bounds and converts to the model.
    pub fn validate(self) -> Result<Resources, String> {
        if let Some(0) = self.cpu.as_ref().and_then(|c| c.cores) {
            return Err("resources.cpu.cores must be at least 1".into());
        }
        if let Some(m) = self.memory.as_ref().and_then(|m| m.limit) {
            if m < MIN_MEMORY {
                return Err(format!(
                    "resources.memory.limit must be at least {MIN_MEMORY} bytes"
                ));
            }
        }
        if let Some(0) = self.storage.as_ref().and_then(|s| s.total_space) {
            return Err("resources.storage.totalSpace must be more than 0".into());
        }
        Ok(Resources {
            cpu: self.cpu.map(|c| CpuResources { cores: c.cores }),
            memory: self.memory.map(|m| MemoryResources {
                limit: m.limit,
                used: None,
            }),
            storage: self.storage.map(|s| StorageResources {
                total_space: s.total_space,
                enforced: None,
            }),
        })
    }
}

/// `metadata` in a create request.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetadataRequest {
    /// Labels: keys of 1-253 characters without `=`, whitespace or control characters.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `metadata` in an update request.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateMetadataRequest {
    /// New labels, replacing the old ones; absent keeps them.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Label keys with this prefix belong to the server and its plugins (every backend
/// refuses them alike).
pub const RESERVED_LABEL_PREFIX: &str = "io.unicompute.";

/// Checks label keys: 1-253 characters, no `=` (a list filter is `label=key=value`),
/// no whitespace or control characters, not under [`RESERVED_LABEL_PREFIX`].
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in labels {
        if key.starts_with(RESERVED_LABEL_PREFIX) {
            return Err(format!(
                "label {key}: the prefix {RESERVED_LABEL_PREFIX} is reserved"
            ));
        }
        if value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        {
            return Err(format!("label {key:?}: the value holds control characters"));
        }
        let bad = key.is_empty()
            || key.chars().count() > 253
            || key
                .chars()
                .any(|c| c == '=' || c.is_whitespace() || c.is_control());
        if bad {
            return Err(format!(
                "label key {key:?} is invalid: 1-253 characters without '=', whitespace or control characters"
            ));
        }
    }
    Ok(())
}

/// `POST /api/v1/compute/instances`
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateInstanceRequest {
    /// 1-63 characters of `[a-zA-Z0-9_.-]`, unique across backends.
    pub name: String,
    /// A configured backend's name (`docker`, `kvm`...).
    pub backend: String,
    /// Backend-specific config (see the spec: image, env, ports... or image,
    /// diskFormat, networkType, cloudInit...).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: JsonMap,
    /// Resources.
    #[serde(default)]
    pub resources: ResourcesRequest,
    /// Labels.
    #[serde(default)]
    pub metadata: MetadataRequest,
    /// Start the instance once created (default false).
    #[serde(default)]
    pub start: bool,
}

/// `PUT /api/v1/compute/instances/:id`
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateInstanceRequest {
    /// New resources; absent parts are kept.
    #[serde(default)]
    pub resources: ResourcesRequest,
    /// New labels, replacing the old ones.
    #[serde(default)]
    pub metadata: Option<UpdateMetadataRequest>,
}

/// `PUT /api/v1/compute/instances/:id/stop` (and restart); the body is optional.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StopRequest {
    /// Stop hard at once (default false).
    #[serde(default)]
    pub force: bool,
    /// Seconds before a graceful stop turns hard (default 30).
    pub timeout: Option<u64>,
}

impl StopRequest {
    /// The options, with the default timeout filled in.
    pub fn options(&self) -> StopOptions {
        StopOptions {
            force: self.force,
            timeout: self.timeout.unwrap_or(StopOptions::default().timeout),
        }
    }
}

/// The list response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceList<'a> {
    /// The page.
    #[schema(value_type = Vec<Instance>)]
    pub instances: Vec<&'a Instance>,
    /// How many match in all.
    pub total: usize,
    /// The page number.
    pub page: usize,
    /// The page size.
    pub page_size: usize,
}

/// `{used, total}` of a resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsedTotal {
    /// Allocated to running instances.
    pub used: u64,
    /// The host's.
    pub total: u64,
}

/// A backend's resources in cluster status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterResources {
    /// Cores.
    pub cpu: UsedTotal,
    /// Bytes.
    pub memory: UsedTotal,
}

/// One backend in cluster status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterBackend {
    /// `healthy` or `unavailable`.
    pub status: &'static str,
    /// Managed instances.
    pub instances: usize,
    /// Allocation against capacity.
    pub resources: ClusterResources,
}

/// `GET /api/v1/compute/cluster/status`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Enabled backends by name.
    pub backends: BTreeMap<String, ClusterBackend>,
    /// Instances on all backends.
    pub total_instances: usize,
    /// `healthy`, `degraded` or `unhealthy`.
    pub health: &'static str,
}

/// `healthCheck` of backend info.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `healthy` or `unhealthy`.
    pub status: &'static str,
    /// When checked.
    pub last_check: Option<chrono::DateTime<chrono::Utc>>,
    /// Why unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/v1/compute/backends/:backend/info`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendInfo {
    /// The backend's name.
    pub name: String,
    /// Backend kind (`docker`, `kvm`...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Version of the software behind it.
    pub version: String,
    /// API version spoken with it.
    pub api_version: String,
    /// `running`, `unavailable` or `disabled`.
    pub status: &'static str,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Instance types.
    pub supported_types: Vec<String>,
    /// Last health check.
    pub health_check: HealthCheck,
    /// The plugin.
    pub plugin: Option<crate::plugins::registry::PluginMeta>,
    /// Anything else the backend reports.
    #[schema(value_type = Object)]
    pub extra: JsonMap,
}

/// One entry of `GET /api/v1/compute/backends`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendSummaryDto {
    /// The backend's name.
    pub name: String,
    /// The plugin named in the config.
    pub plugin: String,
    /// Kind, when the plugin is loaded.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Whether enabled in the config.
    pub enabled: bool,
    /// `healthy`, `unavailable` or `disabled`.
    pub status: &'static str,
    /// Why not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Managed instances.
    pub instances: usize,
}

/// `GET /api/v1/compute/backends`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackendList {
    /// Every configured backend.
    pub backends: Vec<BackendSummaryDto>,
}

/// `GET /api/v1/compute/backends/:backend/images`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageList {
    /// The backend's name.
    pub backend: String,
    /// Images or templates.
    pub images: Vec<Image>,
}
