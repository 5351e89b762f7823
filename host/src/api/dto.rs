//! Request and response bodies of the HTTP API. Requests refuse unknown fields, so a
//! typo is a 400 that names the field rather than a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plugins::registry::{BackendStatus, PluginMeta};
use crate::service::{ClusterHealth, PluginFileReport, ReloadReport, Verdict};
use unicompute_plugin_api::{
    CpuResources, Image, Instance, JsonMap, MemoryResources, Resources, StopOptions,
    StorageResources,
};

/// Whole numbers as JSON Schema counts them: `2` and `2.0` alike (a client that
/// sends every number as a float, as JavaScript's JSON does, is not refused).
mod whole {
    use serde::de::{Deserializer, Error, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number of at least 0")
        }

        fn visit_u64<E: Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }

        fn visit_i64<E: Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n).map_err(|_| {
                E::custom(format!(
                    "invalid value: {n}, expected {}",
                    "a whole number of at least 0"
                ))
            })
        }

        fn visit_f64<E: Error>(self, f: f64) -> Result<u64, E> {
            // 2^64 as a float is out of range (the cast would saturate).
            if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Ok(f as u64)
            } else {
                Err(E::custom(format!(
                    "invalid value: {f}, expected a whole number of at least 0"
                )))
            }
        }
    }

    struct OptWhole;

    impl<'de> Visitor<'de> for OptWhole {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number of at least 0, or null")
        }

        fn visit_none<E: Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
            d.deserialize_any(Whole).map(Some)
        }
    }

    /// An optional whole number of type `T`.
    pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        match d.deserialize_option(OptWhole)? {
            None => Ok(None),
            Some(n) => T::try_from(n)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("invalid value: {n} is out of range"))),
        }
    }
}

/// `resources.cpu` in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CpuRequest {
    /// Cores (vCPUs), at least 1.
    #[serde(default, deserialize_with = "whole::opt")]
    pub cores: Option<u32>,
}

/// `resources.memory` in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemoryRequest {
    /// Bytes, at least 4 MiB.
    #[serde(default, deserialize_with = "whole::opt")]
    pub limit: Option<u64>,
}

/// `resources.storage` in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageRequest {
    /// Bytes.
    #[serde(default, deserialize_with = "whole::opt")]
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
    #[serde(default, deserialize_with = "whole::opt")]
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
    pub status: BackendState,
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
    pub health: ClusterHealthDto,
}

/// `healthCheck` of backend info.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `healthy` or `unhealthy`.
    pub status: CheckStatus,
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
    pub status: InfoStatus,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Instance types.
    pub supported_types: Vec<String>,
    /// Last health check.
    pub health_check: HealthCheck,
    /// The plugin.
    pub plugin: Option<PluginInfo>,
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
    pub status: BackendState,
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

/// A backend's status in lists and cluster status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Enabled and answering.
    Healthy,
    /// Enabled, not answering (or its plugin is missing).
    Unavailable,
    /// Disabled in the config.
    Disabled,
}

impl From<BackendStatus> for BackendState {
    fn from(s: BackendStatus) -> Self {
        match s {
            BackendStatus::Healthy => BackendState::Healthy,
            BackendStatus::Unavailable => BackendState::Unavailable,
            BackendStatus::Disabled => BackendState::Disabled,
        }
    }
}

/// A backend's status in its info (the spec's word for a healthy one is `running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InfoStatus {
    /// Enabled and answering.
    Running,
    /// Enabled, not answering.
    Unavailable,
    /// Disabled in the config.
    Disabled,
}

impl From<BackendStatus> for InfoStatus {
    fn from(s: BackendStatus) -> Self {
        match s {
            BackendStatus::Healthy => InfoStatus::Running,
            BackendStatus::Unavailable => InfoStatus::Unavailable,
            BackendStatus::Disabled => InfoStatus::Disabled,
        }
    }
}

/// The last health check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// It answered.
    Healthy,
    /// It did not, or the backend is disabled.
    Unhealthy,
}

impl From<BackendStatus> for CheckStatus {
    fn from(s: BackendStatus) -> Self {
        match s {
            BackendStatus::Healthy => CheckStatus::Healthy,
            BackendStatus::Unavailable | BackendStatus::Disabled => CheckStatus::Unhealthy,
        }
    }
}

/// The cluster's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterHealthDto {
    /// Every enabled backend answers.
    Healthy,
    /// Some do.
    Degraded,
    /// None does.
    Unhealthy,
}

impl From<ClusterHealth> for ClusterHealthDto {
    fn from(h: ClusterHealth) -> Self {
        match h {
            ClusterHealth::Healthy => ClusterHealthDto::Healthy,
            ClusterHealth::Degraded => ClusterHealthDto::Degraded,
            ClusterHealth::Unhealthy => ClusterHealthDto::Unhealthy,
        }
    }
}

/// The plugin behind a backend.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// The backend kind.
    pub kind: String,
    /// The plugin's version.
    pub version: String,
    /// The interface version it was built against.
    pub interface_version: String,
    /// The file it was loaded from.
    pub file: String,
}

impl From<&PluginMeta> for PluginInfo {
    fn from(p: &PluginMeta) -> Self {
        PluginInfo {
            name: p.name.clone(),
            kind: p.kind.clone(),
            version: p.version.clone(),
            interface_version: p.interface_version.clone(),
            file: p.file.clone(),
        }
    }
}

/// What a reload did to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReloadVerdict {
    /// Unchanged, untouched.
    Kept,
    /// Enabled now, not there before.
    Started,
    /// Enabled before and now, with other settings or another plugin load.
    Restarted,
    /// Running before, disabled now.
    Stopped,
    /// Not running before or after.
    Disabled,
    /// Gone from the config.
    Removed,
}

impl From<Verdict> for ReloadVerdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Kept => ReloadVerdict::Kept,
            Verdict::Started => ReloadVerdict::Started,
            Verdict::Restarted => ReloadVerdict::Restarted,
            Verdict::Stopped => ReloadVerdict::Stopped,
            Verdict::Disabled => ReloadVerdict::Disabled,
            Verdict::Removed => ReloadVerdict::Removed,
        }
    }
}

/// One plugin file in a reload's answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginFileDto {
    /// The file.
    pub file: String,
    /// The plugin name and version, when loaded.
    pub plugin: Option<String>,
    /// Why skipped.
    pub skipped: Option<String>,
}

/// `POST /api/v1/compute/backends/reload`
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReloadAnswer {
    /// Plugin files and what loading them gave.
    pub plugins: Vec<PluginFileDto>,
    /// Backends and what happened to them.
    pub backends: BTreeMap<String, ReloadVerdict>,
}

impl From<ReloadReport> for ReloadAnswer {
    fn from(r: ReloadReport) -> Self {
        ReloadAnswer {
            plugins: r
                .plugins
                .into_iter()
                .map(
                    |PluginFileReport {
                         file,
                         plugin,
                         skipped,
                     }| PluginFileDto {
                        file,
                        plugin,
                        skipped,
                    },
                )
                .collect(),
            backends: r.backends.into_iter().map(|(k, v)| (k, v.into())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ResourcesRequest;

    #[test]
    fn whole_numbers_may_come_as_floats() {
        let r: ResourcesRequest = serde_json::from_str(
            r#"{"cpu":{"cores":2.0},"memory":{"limit":536870912.0},"storage":{"totalSpace":1}}"#,
        )
        .unwrap();
        assert_eq!(r.cpu.unwrap().cores, Some(2));
        assert_eq!(r.memory.unwrap().limit, Some(536_870_912));
        for bad in [
            r#"{"cpu":{"cores":1.5}}"#,
            r#"{"cpu":{"cores":-1}}"#,
            r#"{"cpu":{"cores":4294967296}}"#,
            r#"{"memory":{"limit":18446744073709551616.0}}"#,
            r#"{"cpu":{"cores":"2"}}"#,
        ] {
            assert!(
                serde_json::from_str::<ResourcesRequest>(bad).is_err(),
                "{bad}"
            );
        }
        let r: ResourcesRequest = serde_json::from_str(r#"{"cpu":{"cores":null}}"#).unwrap();
        assert_eq!(r.cpu.unwrap().cores, None);
        let r: ResourcesRequest = serde_json::from_str(r#"{"cpu":{}}"#).unwrap();
        assert_eq!(r.cpu.unwrap().cores, None);
    }
}
