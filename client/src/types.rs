//! The API's bodies, as the server sends and takes them. Answers ignore fields they
//! do not know (a newer server may add some); vocabularies that may grow (states,
//! kinds, statuses) are strings.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An instance's state (`created`, `running`, `paused`, `stopped`, `restarting`,
/// `error`, `unknown`).
pub type State = String;

/// A compute instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// `i-` and 20 hex digits.
    pub id: String,
    /// Its name, unique across backends.
    pub name: String,
    /// RFC 4122.
    #[serde(default)]
    pub uuid: String,
    /// `container` or `vm`.
    #[serde(rename = "type")]
    pub instance_type: String,
    /// The backend's name.
    pub backend: String,
    /// The state.
    pub state: State,
    /// Health: `healthy`, `unhealthy`, `starting`, `none`.
    #[serde(default)]
    pub status: String,
    /// The backend-specific config as applied.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// The resources in force.
    #[serde(default)]
    pub resources: Resources,
    /// Resources that take effect at the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_resources: Option<Resources>,
    /// Labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed through the API.
    pub updated_at: DateTime<Utc>,
}

impl Instance {
    /// `config.image`, when it has one.
    pub fn image(&self) -> Option<&str> {
        self.config.get("image").and_then(Value::as_str)
    }
}

/// Labels.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    /// Label map.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// CPU.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cpu {
    /// Cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
}

/// Memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Bytes in use, where the backend says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
}

/// Storage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_space: Option<u64>,
    /// false: kept but not enforced by the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
}

/// Resources (also as asked, in create and update requests).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
}

impl Resources {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.storage.is_none()
    }
}

/// A page of instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceList {
    /// This page.
    pub instances: Vec<Instance>,
    /// Every match.
    pub total: u64,
    /// The page number.
    pub page: u64,
    /// The page size.
    pub page_size: u64,
}

/// The filters of a list of instances.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Only this backend.
    pub backend: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// `key=value`, all must match.
    pub labels: Vec<String>,
}

/// `POST /instances`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInstance {
    /// Name.
    pub name: String,
    /// Backend.
    pub backend: String,
    /// Backend-specific config (`image`, `ports`, `env`, `volumes`, `cloudInit`...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
    /// Resources.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Start it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
}

/// `PUT /instances/{id}`: resources and/or labels (the labels replace the old ones).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateInstance {
    /// Resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// The body of a stop or restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopOptions {
    /// Hard at once.
    #[serde(default)]
    pub force: bool,
    /// Seconds before a hard stop (the server's default, 30, when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// Resource usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    /// CPU.
    #[serde(default)]
    pub cpu: CpuUsage,
    /// Memory.
    #[serde(default)]
    pub memory: MemoryUsage,
    /// Storage.
    #[serde(default)]
    pub storage: UsedTotalF,
    /// Network.
    #[serde(default)]
    pub network: NetworkUsage,
}

/// CPU usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUsage {
    /// Percent of the allocated cores.
    #[serde(default)]
    pub usage: f64,
    /// Cores.
    #[serde(default)]
    pub cores: u32,
}

/// Memory usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Bytes.
    #[serde(default)]
    pub used: u64,
    /// Bytes.
    #[serde(default)]
    pub limit: u64,
    /// Percent.
    #[serde(default)]
    pub percentage: f64,
}

/// Storage usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsedTotalF {
    /// Bytes.
    #[serde(default)]
    pub used: u64,
    /// Bytes.
    #[serde(default)]
    pub total: u64,
}

/// Network counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUsage {
    /// Bytes received.
    #[serde(default)]
    pub rx_bytes: u64,
    /// Bytes sent.
    #[serde(default)]
    pub tx_bytes: u64,
}

/// `GET /backends`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendList {
    /// Every configured backend.
    pub backends: Vec<BackendSummary>,
}

/// One configured backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendSummary {
    /// Its name.
    pub name: String,
    /// Its plugin.
    pub plugin: String,
    /// Its kind, when loaded.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub backend_type: Option<String>,
    /// Enabled in the config.
    pub enabled: bool,
    /// `healthy`, `unavailable`, `disabled`.
    pub status: String,
    /// Why unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its instances.
    #[serde(default)]
    pub instances: u64,
}

/// `GET /backends/{b}/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendInfo {
    /// Name.
    pub name: String,
    /// Kind.
    #[serde(rename = "type")]
    pub backend_type: String,
    /// Engine version.
    pub version: String,
    /// Engine API version.
    pub api_version: String,
    /// `running`, `unavailable`, `disabled`.
    pub status: String,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `container`, `vm`.
    #[serde(default)]
    pub supported_types: Vec<String>,
    /// The last health check.
    #[serde(default)]
    pub health_check: Value,
    /// The plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginInfo>,
    /// Backend-specific facts.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// A loaded plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Version.
    pub version: String,
    /// Plugin interface version.
    pub interface_version: String,
    /// File.
    pub file: String,
}

/// `GET /cluster/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Per enabled backend.
    pub backends: BTreeMap<String, ClusterBackend>,
    /// Instances in all.
    pub total_instances: u64,
    /// `healthy`, `degraded`, `unhealthy`.
    pub health: String,
}

/// One backend in the cluster status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterBackend {
    /// `healthy`, `unavailable`.
    pub status: String,
    /// Its instances.
    pub instances: u64,
    /// Allocations and totals.
    pub resources: ClusterResources,
}

/// Allocations and totals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterResources {
    /// Cores.
    pub cpu: UsedTotal,
    /// Bytes.
    pub memory: UsedTotal,
}

/// Used and total.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsedTotal {
    /// Used.
    pub used: u64,
    /// Total.
    pub total: u64,
}

/// An image or template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// Name (a reference for Docker, a file name for KVM).
    pub name: String,
    /// Engine id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// When made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

/// `GET /backends/{b}/images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageList {
    /// The backend.
    pub backend: String,
    /// Its images.
    pub images: Vec<Image>,
}

/// A pull (`POST /backends/{b}/images`, JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullImage {
    /// `registry:5000/team/app:1.2`.
    pub reference: String,
    /// Registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
}

/// Registry credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAuth {
    /// User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<String>,
    /// Registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_address: Option<String>,
}

/// An operation (`?async=true`, image pulls and uploads).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// `op-...`.
    pub id: String,
    /// `create`, `start`, `image-pull`...
    pub kind: String,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled`.
    pub status: String,
    /// The instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// How far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The instance after it (an operation on an instance, but a deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The image it made (a pull, an upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEnvelope>,
}

impl Operation {
    /// Whether it has ended.
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }

    /// The result as an instance, when it is one.
    pub fn instance(&self) -> Option<Instance> {
        self.result
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
    }
}

/// Progress of an operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// `downloading`, `extracting`, `uploading`...
    pub stage: String,
    /// Percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Bytes done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// Bytes in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

/// A page of operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationList {
    /// This page.
    pub operations: Vec<Operation>,
    /// Every match.
    pub total: u64,
    /// Page.
    pub page: u64,
    /// Page size.
    pub page_size: u64,
}

/// The filters of a list of operations.
#[derive(Debug, Clone, Default)]
pub struct OperationFilter {
    /// Status.
    pub status: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Instance id.
    pub instance: Option<String>,
    /// Backend.
    pub backend: Option<String>,
}

/// The error envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The error itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `INSTANCE_NOT_FOUND`...
    pub code: String,
    /// For people.
    pub message: String,
    /// Facts.
    #[serde(default)]
    pub details: Value,
}

/// One event of the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing id.
    pub id: u64,
    /// `instance.state-changed`...
    #[serde(rename = "type")]
    pub event_type: String,
    /// When.
    pub time: DateTime<Utc>,
    /// `api` or `backend`.
    pub source: String,
    /// The backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The instance's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The instance as it now is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    /// The state before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The state after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The operation (`operation.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// The plugin file (`plugin.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<Value>,
    /// The event as the server sent it (every field, known or not).
    #[serde(skip)]
    pub raw: Value,
}

/// The filters of the event stream (each repeatable: any of them; all given must
/// match).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Backends.
    pub backends: Vec<String>,
    /// Instance ids.
    pub instances: Vec<String>,
    /// Types or categories (`instance`, `backend`, `plugin`, `operation`).
    pub types: Vec<String>,
}
