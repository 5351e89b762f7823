//! The bodies of the event stream and of operations: each domain vocabulary with its
//! wire enum and an exhaustive `From`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use unicompute_plugin_api::{Image, Instance, InstanceState};

use crate::api::error::{ApiError, ErrorEnvelope};
use crate::events::{Event, Kind, Source, Subject};
use crate::service::{OpKind, OpResult, OpStatus, Operation, Progress};

/// An event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum EventType {
    /// An instance appeared.
    #[serde(rename = "instance.created")]
    InstanceCreated,
    /// An instance changed, its state aside.
    #[serde(rename = "instance.updated")]
    InstanceUpdated,
    /// An instance's state changed (`from`, `to`).
    #[serde(rename = "instance.state-changed")]
    InstanceStateChanged,
    /// An instance is gone.
    #[serde(rename = "instance.deleted")]
    InstanceDeleted,
    /// A backend answers again.
    #[serde(rename = "backend.available")]
    BackendAvailable,
    /// A backend stopped answering.
    #[serde(rename = "backend.unavailable")]
    BackendUnavailable,
    /// A reload started, restarted, stopped or removed a backend (`reason` says which).
    #[serde(rename = "backend.reloaded")]
    BackendReloaded,
    /// A plugin file was loaded.
    #[serde(rename = "plugin.loaded")]
    PluginLoaded,
    /// A plugin file changed and was loaded again.
    #[serde(rename = "plugin.replaced")]
    PluginReplaced,
    /// A plugin file is gone or no longer loads.
    #[serde(rename = "plugin.dropped")]
    PluginDropped,
    /// An operation was accepted.
    #[serde(rename = "operation.created")]
    OperationCreated,
    /// An operation started or reported progress.
    #[serde(rename = "operation.progress")]
    OperationProgress,
    /// An operation ended.
    #[serde(rename = "operation.finished")]
    OperationFinished,
    /// The stream lost its place: list again, then follow from this event's id.
    #[serde(rename = "reset")]
    Reset,
}

impl From<Kind> for EventType {
    fn from(k: Kind) -> Self {
        match k {
            Kind::InstanceCreated => EventType::InstanceCreated,
            Kind::InstanceUpdated => EventType::InstanceUpdated,
            Kind::InstanceStateChanged => EventType::InstanceStateChanged,
            Kind::InstanceDeleted => EventType::InstanceDeleted,
            Kind::BackendAvailable => EventType::BackendAvailable,
            Kind::BackendUnavailable => EventType::BackendUnavailable,
            Kind::BackendReloaded => EventType::BackendReloaded,
            Kind::PluginLoaded => EventType::PluginLoaded,
            Kind::PluginReplaced => EventType::PluginReplaced,
            Kind::PluginDropped => EventType::PluginDropped,
            Kind::OperationCreated => EventType::OperationCreated,
            Kind::OperationProgress => EventType::OperationProgress,
            Kind::OperationFinished => EventType::OperationFinished,
        }
    }
}

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// An API call.
    Api,
    /// A backend (its events, a resync, a health check, a reload).
    Backend,
}

impl From<Source> for EventSource {
    fn from(s: Source) -> Self {
        match s {
            Source::Api => EventSource::Api,
            Source::Backend => EventSource::Backend,
        }
    }
}

/// A plugin file, in a `plugin.*` event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginFileDto {
    /// The file.
    pub file: String,
    /// `name version`, when it loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Why it did not load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One event of `GET /api/v1/compute/events` (the `data:` of an SSE message; its
/// `id:` and `event:` are this `id` and `type`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDto {
    /// Increases with every event, also across restarts.
    pub id: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the server learned of it.
    pub time: DateTime<Utc>,
    /// Who caused it.
    pub source: EventSource,
    /// The backend it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The instance it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The instance as it now is (as it last was, for `instance.deleted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    /// The state before (`instance.state-changed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<InstanceState>,
    /// The state after (`instance.state-changed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<InstanceState>,
    /// Why (a backend unavailable, what a reload did, why a stream reset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plugin file (`plugin.*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginFileDto>,
    /// The operation as it now is (`operation.*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationDto>,
}

impl EventDto {
    /// The wire form of an event.
    pub fn of(e: &Event) -> EventDto {
        let mut dto = EventDto {
            id: e.id,
            event_type: e.kind.into(),
            time: e.time,
            source: e.source.into(),
            backend: e.backend.clone(),
            instance_id: e.instance_id.clone(),
            instance: None,
            from: None,
            to: None,
            reason: None,
            plugin: None,
            operation: None,
        };
        match &e.subject {
            Subject::Instance { instance, from } => {
                dto.from = *from;
                dto.to = from.map(|_| instance.state);
                dto.instance = Some((**instance).clone());
            }
            Subject::Backend { reason } => dto.reason = reason.clone(),
            Subject::Plugin {
                file,
                plugin,
                reason,
            } => {
                dto.plugin = Some(PluginFileDto {
                    file: file.clone(),
                    plugin: plugin.clone(),
                    reason: reason.clone(),
                })
            }
            Subject::Operation(op) => dto.operation = Some(OperationDto::from(&**op)),
        }
        dto
    }

    /// The `reset` event: the stream lost its place at `id`.
    pub fn reset(id: u64, reason: &str) -> EventDto {
        EventDto {
            id,
            event_type: EventType::Reset,
            time: chrono::SubsecRound::trunc_subsecs(Utc::now(), 3),
            source: EventSource::Api,
            backend: None,
            instance_id: None,
            instance: None,
            from: None,
            to: None,
            reason: Some(reason.to_owned()),
            plugin: None,
            operation: None,
        }
    }
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// Create an instance.
    Create,
    /// Change resources or labels.
    Update,
    /// Delete an instance.
    Delete,
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Restart.
    Restart,
    /// Pause.
    Pause,
    /// Unpause.
    Unpause,
    /// Pull an image (Docker).
    ImagePull,
    /// Upload a template (KVM).
    ImageUpload,
    /// Delete an image or template.
    ImageDelete,
}

impl From<OpKind> for OperationKind {
    fn from(k: OpKind) -> Self {
        match k {
            OpKind::Create => OperationKind::Create,
            OpKind::Update => OperationKind::Update,
            OpKind::Delete => OperationKind::Delete,
            OpKind::Start => OperationKind::Start,
            OpKind::Stop => OperationKind::Stop,
            OpKind::Restart => OperationKind::Restart,
            OpKind::Pause => OperationKind::Pause,
            OpKind::Unpause => OperationKind::Unpause,
            OpKind::ImagePull => OperationKind::ImagePull,
            OpKind::ImageUpload => OperationKind::ImageUpload,
            OpKind::ImageDelete => OperationKind::ImageDelete,
        }
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationStatus {
    /// Accepted, not started.
    Pending,
    /// Running.
    Running,
    /// Done: `result` holds what it made.
    Succeeded,
    /// Ended with an error: `error` holds it.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl From<OpStatus> for OperationStatus {
    fn from(s: OpStatus) -> Self {
        match s {
            OpStatus::Pending => OperationStatus::Pending,
            OpStatus::Running => OperationStatus::Running,
            OpStatus::Succeeded => OperationStatus::Succeeded,
            OpStatus::Failed => OperationStatus::Failed,
            OpStatus::Cancelled => OperationStatus::Cancelled,
        }
    }
}

/// How far an operation got.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressDto {
    /// What it is doing (`downloading`, `extracting`, `copying`, `uploading`...).
    pub stage: String,
    /// 0 to 100, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Bytes done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// Bytes in all, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

impl From<&Progress> for ProgressDto {
    fn from(p: &Progress) -> Self {
        ProgressDto {
            stage: p.stage.clone(),
            percent: p.percent,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        }
    }
}

/// An operation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationDto {
    /// `op-...`
    pub id: String,
    /// What it does.
    pub kind: OperationKind,
    /// Where it is.
    pub status: OperationStatus,
    /// The instance it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The backend it runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// How far it got, when the work reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressDto>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
    /// The instance after it, once succeeded (an operation on an instance but a
    /// deletion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Instance>,
    /// The image it made, once succeeded (a pull, an upload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Why it failed or was cancelled: the API's error envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEnvelope>,
}

impl From<&Operation> for OperationDto {
    fn from(o: &Operation) -> Self {
        OperationDto {
            id: o.id.clone(),
            kind: o.kind.into(),
            status: o.status.into(),
            instance_id: o.instance_id.clone(),
            backend: o.backend.clone(),
            progress: o.progress.as_ref().map(ProgressDto::from),
            created_at: o.created_at,
            updated_at: o.updated_at,
            result: match &o.result {
                Some(OpResult::Instance(i)) => Some((**i).clone()),
                _ => None,
            },
            image: match &o.result {
                Some(OpResult::Image(i)) => Some(i.clone()),
                _ => None,
            },
            error: o
                .error
                .as_ref()
                .map(|e| ApiError::from(e.clone()).envelope()),
        }
    }
}

/// `GET /api/v1/compute/operations`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationList {
    /// The page, oldest first.
    pub operations: Vec<OperationDto>,
    /// How many match in all.
    pub total: usize,
    /// The page number.
    pub page: usize,
    /// The page size.
    pub page_size: usize,
}

/// `POST /api/v1/compute/backends/{backend}/images` as JSON: pull an image (Docker).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PullImageRequest {
    /// The image reference (`nginx:alpine`, `registry.example:5000/team/app:1.2`).
    #[schema(min_length = 1, max_length = 1024)]
    pub reference: String,
    /// Registry credentials; passed to the backend only, never logged or kept.
    #[serde(default)]
    pub auth: Option<RegistryAuthRequest>,
}

/// Registry credentials of a pull.
#[derive(Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryAuthRequest {
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// An identity (refresh) token, instead of a user name and password.
    #[serde(default)]
    pub identity_token: Option<String>,
    /// The registry the credentials are for.
    #[serde(default)]
    pub server_address: Option<String>,
}

impl std::fmt::Debug for RegistryAuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuthRequest")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

impl From<RegistryAuthRequest> for unicompute_plugin_api::RegistryAuth {
    fn from(a: RegistryAuthRequest) -> Self {
        unicompute_plugin_api::RegistryAuth {
            username: a.username,
            password: a.password,
            identity_token: a.identity_token,
            server_address: a.server_address,
        }
    }
}
