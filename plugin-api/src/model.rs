//! The documents that cross the plugin boundary: instances, specs, usage, backend info.
//!
//! They cross as JSON. Every field added after 1.0 has a serde default, and unknown
//! fields are ignored on read, so a plugin built against any 1.x interface and a host
//! of any other 1.x version understand each other.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A free-form JSON object: the backend-specific `config` of an instance.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// What an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum InstanceType {
    /// A container (Docker, Podman...).
    Container,
    /// A virtual machine (KVM, Firecracker...).
    Vm,
}

impl InstanceType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceType::Container => "container",
            InstanceType::Vm => "vm",
        }
    }
}

/// The lifecycle state of an instance, the same on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Made, never started.
    Created,
    /// Running.
    Running,
    /// Frozen (cgroup freezer, VM suspended).
    Paused,
    /// Not running after having run.
    Stopped,
    /// Being restarted by the backend (a restart policy).
    Restarting,
    /// In a failed state.
    Error,
    /// The backend reports something we cannot map.
    #[default]
    #[serde(other)]
    Unknown,
}

impl InstanceState {
    /// Every state, in documentation order.
    pub const ALL: [InstanceState; 7] = [
        InstanceState::Created,
        InstanceState::Running,
        InstanceState::Paused,
        InstanceState::Stopped,
        InstanceState::Restarting,
        InstanceState::Error,
        InstanceState::Unknown,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Created => "created",
            InstanceState::Running => "running",
            InstanceState::Paused => "paused",
            InstanceState::Stopped => "stopped",
            InstanceState::Restarting => "restarting",
            InstanceState::Error => "error",
            InstanceState::Unknown => "unknown",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the instance holds its resources (counted as "used" in cluster status).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            InstanceState::Running | InstanceState::Paused | InstanceState::Restarting
        )
    }
}

/// Health of an instance as seen by the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Health check passes.
    Healthy,
    /// Health check fails.
    Unhealthy,
    /// Health check not decided yet.
    Starting,
    /// No health check defined.
    #[default]
    #[serde(other)]
    None,
}

/// CPU allocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CpuResources {
    /// Cores (vCPUs for a VM, CPU quota in cores for a container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
}

/// Memory allocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MemoryResources {
    /// Limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Bytes in use, where the backend reports it cheaply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
}

/// Storage allocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StorageResources {
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_space: Option<u64>,
    /// False when the backend keeps the value but cannot enforce it (for example a
    /// Docker storage driver without quotas). Absent means enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
}

/// Resources of an instance: in a request, what is asked; in an instance, what is in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuResources>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryResources>,
    /// Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageResources>,
}

impl Resources {
    /// Cores, if set.
    pub fn cores(&self) -> Option<u32> {
        self.cpu.as_ref().and_then(|c| c.cores)
    }
    /// Memory limit in bytes, if set.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory.as_ref().and_then(|m| m.limit)
    }
    /// Storage size in bytes, if set.
    pub fn total_space(&self) -> Option<u64> {
        self.storage.as_ref().and_then(|s| s.total_space)
    }
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.cores().is_none() && self.memory_limit().is_none() && self.total_space().is_none()
    }
}

/// User metadata of an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Labels, kept by the backend (Docker labels, libvirt metadata).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A compute instance: a container or a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Made by the host at create time; stable for the instance's life.
    pub id: String,
    /// Unique across all backends.
    pub name: String,
    /// RFC 4122 UUID (the libvirt domain UUID for a VM).
    pub uuid: String,
    /// `container` or `vm`.
    #[serde(rename = "type")]
    pub instance_type: InstanceType,
    /// The configured backend's name. Plugins may leave it empty: the host fills it.
    #[serde(default)]
    pub backend: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Health.
    #[serde(default)]
    pub status: Health,
    /// The backend-specific config as applied, defaults filled in.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: JsonMap,
    /// The resources in force.
    #[serde(default)]
    pub resources: Resources,
    /// Resources changed by an update that take effect at the next start only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_resources: Option<Resources>,
    /// Labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change made through the API (update or state change).
    pub updated_at: DateTime<Utc>,
}

/// What the host asks a backend to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRequest {
    /// The id the host made; the backend stores it with the instance.
    pub id: String,
    /// The validated, reserved name.
    pub name: String,
    /// Backend-specific config, as the user sent it.
    #[serde(default)]
    pub config: JsonMap,
    /// Requested resources.
    #[serde(default)]
    pub resources: Resources,
    /// Labels to keep.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Start the instance after creating it.
    #[serde(default)]
    pub start: bool,
    /// Creation time the backend stores.
    pub created_at: DateTime<Utc>,
    /// The host's operation token (1.2): progress of this create (a disk copy) is
    /// reported as [`Event::Progress`] for it, and [`crate::Backend::cancel`] with it
    /// stops the create where the backend can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// What the host asks a backend to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRequest {
    /// New resources; absent parts stay as they are.
    #[serde(default)]
    pub resources: Resources,
    /// New labels, replacing the old ones when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// How to stop an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopOptions {
    /// Stop hard at once (SIGKILL, destroy).
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for a graceful stop before stopping hard.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

fn default_timeout() -> u64 {
    30
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            force: false,
            timeout: default_timeout(),
        }
    }
}

/// CPU usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CpuUsage {
    /// Percent of the allocated cores, 0-100.
    pub usage: f64,
    /// Allocated cores.
    pub cores: u32,
}

/// Memory usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MemoryUsage {
    /// Bytes used.
    pub used: u64,
    /// Limit in bytes.
    pub limit: u64,
    /// used / limit, in percent.
    pub percentage: f64,
}

impl MemoryUsage {
    /// `used` of `limit` bytes, with the percentage (two decimals; 0 without a limit).
    pub fn new(used: u64, limit: u64) -> Self {
        let percentage = if limit > 0 {
            (used as f64 * 100.0 / limit as f64 * 100.0).round() / 100.0
        } else {
            0.0
        };
        MemoryUsage {
            used,
            limit,
            percentage,
        }
    }
}

/// Storage usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StorageUsage {
    /// Bytes used.
    pub used: u64,
    /// Size in bytes (0 when unbounded).
    pub total: u64,
}

/// Network counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkUsage {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Resource usage of an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU.
    pub cpu: CpuUsage,
    /// Memory.
    pub memory: MemoryUsage,
    /// Storage.
    pub storage: StorageUsage,
    /// Network.
    pub network: NetworkUsage,
}

/// What a backend says of itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendDescription {
    /// Version of the software behind the backend (Docker engine, libvirt).
    pub version: String,
    /// API version spoken with it.
    pub api_version: String,
    /// What it can do: `containers`, `images`, `pause`, `live-update`...
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Instance types it makes.
    #[serde(default)]
    pub supported_types: Vec<InstanceType>,
    /// Anything else worth showing (hypervisor version, storage driver...).
    #[serde(default)]
    pub extra: JsonMap,
}

/// Capacity of the host a backend runs on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostResources {
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory: u64,
}

/// An image or template a backend can create instances from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The name to put in `config.image`.
    pub name: String,
    /// Backend's id of it (digest, path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Format (`qcow2`, `raw`, `oci`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

/// What the host asks a backend to pull (1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullRequest {
    /// The image reference (`registry/repo:tag`, `repo@sha256:...`).
    pub reference: String,
    /// Registry credentials, when the registry needs them. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
    /// The host's operation token: progress goes out as [`Event::Progress`] for it,
    /// and [`crate::Backend::cancel`] with it stops the pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Credentials for a registry (1.2). Its `Debug` hides the password and the token;
/// a backend never logs it.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAuth {
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// An identity (refresh) token, instead of a user name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<String>,
    /// The registry these credentials are for (`registry.example.com:5000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_address: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("identity_token", &hidden(&self.identity_token))
            .field("server_address", &self.server_address)
            .finish()
    }
}

/// An upload of an image or template (1.2): the host streams the bytes to the
/// [`UploadTarget`] that [`crate::Backend::upload_begin`] answers, then commits or
/// aborts with the same request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadRequest {
    /// The name the image will have (what `config.image` names).
    pub name: String,
    /// The host's operation token; it names the staged file.
    pub operation: String,
    /// The size announced by the client, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Where the host writes an upload's bytes (1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTarget {
    /// An absolute path the host creates (`O_CREAT | O_EXCL`) and writes.
    pub path: String,
    /// The most bytes the backend accepts; the host stops the upload past it.
    pub max_bytes: u64,
}

/// How far an operation got (1.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// What it does now (`downloading`, `extracting`, `copying`...).
    pub stage: String,
    /// 0-100, when the total is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Bytes done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// Bytes in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

impl Progress {
    /// `done` of `total` bytes (when known) at `stage`, with the percent (one
    /// decimal, at most 100) when the total is known and not zero.
    pub fn bytes(stage: &str, done: u64, total: Option<u64>) -> Self {
        let percent = total
            .filter(|t| *t > 0)
            .map(|t| ((done as f64 * 1000.0 / t as f64).round() / 10.0).min(100.0));
        Progress {
            stage: stage.to_owned(),
            percent,
            bytes_done: Some(done),
            bytes_total: total,
        }
    }
}

/// What happened to an instance outside the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Event {
    /// The instance appeared or changed; here is its current state.
    Changed {
        /// The instance now.
        instance: Box<Instance>,
    },
    /// The instance is gone.
    Vanished {
        /// Its id.
        id: String,
    },
    /// Something changed that the plugin cannot describe precisely: resync everything.
    Resync,
    /// An operation of the host moved on (1.2): `operation` is the token the call
    /// carried. A host before 1.2 reads it as unknown and resyncs.
    Progress {
        /// The host's operation token.
        operation: String,
        /// Where it is.
        progress: Progress,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_uses_camel_case_and_type() {
        let now = Utc::now();
        let inst = Instance {
            id: "i-1".into(),
            name: "web".into(),
            uuid: "550e8400-e29b-41d4-a716-446655440000".into(),
            instance_type: InstanceType::Container,
            backend: "docker".into(),
            state: InstanceState::Running,
            status: Health::None,
            config: JsonMap::new(),
            resources: Resources {
                storage: Some(StorageResources {
                    total_space: Some(5),
                    enforced: Some(false),
                }),
                ..Default::default()
            },
            pending_resources: None,
            metadata: Metadata::default(),
            created_at: now,
            updated_at: now,
        };
        let v = serde_json::to_value(&inst).unwrap();
        assert_eq!(v["type"], "container");
        assert_eq!(v["state"], "running");
        assert_eq!(v["resources"]["storage"]["totalSpace"], 5);
        assert!(v.get("createdAt").is_some());
        assert!(v.get("pendingResources").is_none());
    }

    #[test]
    fn unknown_states_and_fields_are_tolerated() {
        let s: InstanceState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(s, InstanceState::Unknown);
        let r: Resources =
            serde_json::from_str(r#"{"cpu":{"cores":2,"shares":9},"gpu":{}}"#).unwrap();
        assert_eq!(r.cores(), Some(2));
    }

    #[test]
    fn progress_events_round_trip_without_unknowns() {
        let ev = Event::Progress {
            operation: "op-1".into(),
            progress: Progress::bytes("downloading", 25, Some(100)),
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"progress","operation":"op-1","progress":{"stage":"downloading","percent":25.0,"bytesDone":25,"bytesTotal":100}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), ev);
        let bare = Event::Progress {
            operation: "op-2".into(),
            progress: Progress {
                stage: "extracting".into(),
                ..Default::default()
            },
        };
        let json = serde_json::to_string(&bare).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"progress","operation":"op-2","progress":{"stage":"extracting"}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), bare);
        assert_eq!(Progress::bytes("x", 7, Some(0)).percent, None);
        assert_eq!(Progress::bytes("x", 9, Some(3)).percent, Some(100.0));
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let auth = RegistryAuth {
            username: Some("alice".into()),
            password: Some("s3cret-pw".into()),
            identity_token: Some("tok-abc".into()),
            server_address: Some("127.0.0.1:5000".into()),
        };
        let pull = PullRequest {
            reference: "127.0.0.1:5000/x:1".into(),
            auth: Some(auth),
            operation: Some("op".into()),
        };
        let shown = format!("{pull:?} {pull:#?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(!shown.contains("tok-abc"), "{shown}");
        assert!(
            shown.contains("alice") && shown.contains("<redacted>"),
            "{shown}"
        );
        // A request without credentials or token is the bare reference.
        let v = serde_json::to_string(&PullRequest {
            reference: "r".into(),
            auth: None,
            operation: None,
        })
        .unwrap();
        assert_eq!(v, r#"{"reference":"r"}"#);
        let back: PullRequest =
            serde_json::from_str(r#"{"reference":"r","auth":{"identityToken":"t"}}"#).unwrap();
        assert_eq!(back.auth.unwrap().identity_token.as_deref(), Some("t"));
    }

    #[test]
    fn stop_options_default_to_graceful_30s() {
        let o: StopOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(o, StopOptions::default());
        assert!(!o.force);
        assert_eq!(o.timeout, 30);
    }
}
