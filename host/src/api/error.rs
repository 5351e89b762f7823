//! The API's error: a code, a message and details, in the spec's envelope. The one
//! place where error codes become HTTP statuses ([`Code::status`]), and where the
//! domain's errors ([`crate::service::Error`]) and the plugins' codes become API
//! errors.

use serde::Serialize;
use unicompute_plugin_api::error::scrub_paths;
use unicompute_plugin_api::{ErrorCode, PluginError};
use warp::http::StatusCode;

/// Seconds a client should wait before retrying a `BACKEND_UNAVAILABLE`.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The longest error message answered, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// The longest string detail answered, in characters.
pub const MAX_DETAIL_CHARS: usize = 256;

/// `s` cut to `max` characters, saying how long it was when cut.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}... ({} bytes in all)", &s[..at], s.len()),
    }
}

/// Every error code the API answers, with its one HTTP status. A new code does not
/// compile until [`Code::status`] and [`Code::as_str`] say what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// Malformed JSON, wrong types, a bad query or name (400).
    InvalidRequest,
    /// A backend name that is not configured (400).
    InvalidBackend,
    /// No token, an unknown one, or more than one (401).
    Unauthorized,
    /// The token's role is too weak, or a path is outside an allowlist (403).
    Forbidden,
    /// No instance of that id or name (404).
    InstanceNotFound,
    /// No such route (404).
    NotFound,
    /// The route exists, the method does not (405).
    MethodNotAllowed,
    /// The name is taken (409).
    InstanceAlreadyExists,
    /// The instance's state does not allow the operation (409).
    InvalidState,
    /// The body is over the limit (413).
    PayloadTooLarge,
    /// The body is declared as something other than JSON (415).
    UnsupportedMediaType,
    /// More than the backend can give (422).
    ResourceLimitExceeded,
    /// A bug (500).
    InternalError,
    /// The backend cannot do this (501).
    OperationNotSupported,
    /// The backend's daemon failed the call (502).
    BackendError,
    /// The backend's daemon cannot be reached (503).
    BackendUnavailable,
    /// No operation of that id, or it ended too long ago (404).
    OperationNotFound,
    /// The operation was cancelled (409; the error of a cancelled operation).
    OperationCancelled,
    /// No image or template of that name (404).
    ImageNotFound,
    /// The image or template is used by an instance (409).
    ImageInUse,
    /// An image or template of that name exists (409).
    ImageAlreadyExists,
    /// Another client holds the instance's console (409; `?force=true` takes it).
    ConsoleInUse,
    /// A WebSocket endpoint asked without `Upgrade: websocket` (426).
    UpgradeRequired,
}

impl Code {
    /// Every code, for tests and documentation.
    pub const ALL: [Code; 23] = [
        Code::InvalidRequest,
        Code::InvalidBackend,
        Code::Unauthorized,
        Code::Forbidden,
        Code::InstanceNotFound,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::InstanceAlreadyExists,
        Code::InvalidState,
        Code::PayloadTooLarge,
        Code::UnsupportedMediaType,
        Code::ResourceLimitExceeded,
        Code::InternalError,
        Code::OperationNotSupported,
        Code::BackendError,
        Code::BackendUnavailable,
        Code::OperationNotFound,
        Code::OperationCancelled,
        Code::ImageNotFound,
        Code::ImageInUse,
        Code::ImageAlreadyExists,
        Code::ConsoleInUse,
        Code::UpgradeRequired,
    ];

    /// The wire name (`INSTANCE_NOT_FOUND`).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "INVALID_REQUEST",
            Code::InvalidBackend => "INVALID_BACKEND",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Forbidden => "FORBIDDEN",
            Code::InstanceNotFound => "INSTANCE_NOT_FOUND",
            Code::NotFound => "NOT_FOUND",
            Code::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Code::InstanceAlreadyExists => "INSTANCE_ALREADY_EXISTS",
            Code::InvalidState => "INVALID_STATE",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Code::ResourceLimitExceeded => "RESOURCE_LIMIT_EXCEEDED",
            Code::InternalError => "INTERNAL_ERROR",
            Code::OperationNotSupported => "OPERATION_NOT_SUPPORTED",
            Code::BackendError => "BACKEND_ERROR",
            Code::BackendUnavailable => "BACKEND_UNAVAILABLE",
            Code::OperationNotFound => "OPERATION_NOT_FOUND",
            Code::OperationCancelled => "OPERATION_CANCELLED",
            Code::ImageNotFound => "IMAGE_NOT_FOUND",
            Code::ImageInUse => "IMAGE_IN_USE",
            Code::ImageAlreadyExists => "IMAGE_ALREADY_EXISTS",
            Code::ConsoleInUse => "CONSOLE_IN_USE",
            Code::UpgradeRequired => "UPGRADE_REQUIRED",
        }
    }

    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest | Code::InvalidBackend => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::InstanceNotFound
            | Code::NotFound
            | Code::OperationNotFound
            | Code::ImageNotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::InstanceAlreadyExists
            | Code::InvalidState
            | Code::OperationCancelled
            | Code::ImageInUse
            | Code::ImageAlreadyExists
            | Code::ConsoleInUse => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::ResourceLimitExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            Code::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Code::OperationNotSupported => StatusCode::NOT_IMPLEMENTED,
            Code::BackendError => StatusCode::BAD_GATEWAY,
            Code::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidRequest => Code::InvalidRequest,
            ErrorCode::Forbidden => Code::Forbidden,
            ErrorCode::InstanceNotFound => Code::InstanceNotFound,
            ErrorCode::InstanceAlreadyExists => Code::InstanceAlreadyExists,
            ErrorCode::InvalidState => Code::InvalidState,
            ErrorCode::ResourceLimitExceeded => Code::ResourceLimitExceeded,
            ErrorCode::OperationNotSupported => Code::OperationNotSupported,
            ErrorCode::BackendError => Code::BackendError,
            ErrorCode::BackendUnavailable => Code::BackendUnavailable,
            // A plugin's config error at request time is the plugin's bug.
            ErrorCode::InvalidConfig => Code::InternalError,
            ErrorCode::InternalError => Code::InternalError,
            ErrorCode::ImageNotFound => Code::ImageNotFound,
            ErrorCode::ImageInUse => Code::ImageInUse,
            ErrorCode::ImageAlreadyExists => Code::ImageAlreadyExists,
            ErrorCode::Cancelled => Code::OperationCancelled,
        }
    }
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The API error code (`INSTANCE_NOT_FOUND`...).
    pub code: Code,
    /// For the user.
    pub message: String,
    /// Structured details.
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The error envelope: `{"error":{"code","message","details"}}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The error itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Error code, for example `INSTANCE_NOT_FOUND`.
    pub code: Code,
    /// For the user.
    pub message: String,
    /// Structured details.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Adds a detail.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// 400 `INVALID_REQUEST`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }
    /// 400 `INVALID_BACKEND`.
    pub fn invalid_backend(name: &str) -> Self {
        Self::new(
            Code::InvalidBackend,
            format!("backend {name} is not configured"),
        )
        .detail("backend", name)
    }
    /// 404 `INSTANCE_NOT_FOUND`.
    pub fn instance_not_found(what: &str) -> Self {
        Self::new(Code::InstanceNotFound, format!("instance {what} not found"))
    }
    /// 409 `INSTANCE_ALREADY_EXISTS`.
    pub fn already_exists(name: &str) -> Self {
        Self::new(
            Code::InstanceAlreadyExists,
            format!("an instance named {name} already exists"),
        )
        .detail("name", name)
    }
    /// 409 `INVALID_STATE`.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidState, message)
    }
    /// 503 `BACKEND_UNAVAILABLE`.
    pub fn unavailable(backend: &str, reason: &str) -> Self {
        Self::new(
            Code::BackendUnavailable,
            format!("backend {backend} is not available"),
        )
        .detail("backend", backend)
        .detail("reason", reason)
    }
    /// 500 `INTERNAL_ERROR`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::InternalError, message)
    }

    /// The HTTP status of this error's code.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON envelope. Long input echoed back (a 10 kB name, a huge label key) is
    /// clipped: the message to [`MAX_MESSAGE_CHARS`], string details to
    /// [`MAX_DETAIL_CHARS`].
    pub fn envelope(&self) -> ErrorEnvelope {
        let mut details = self.details.clone();
        for v in details.values_mut() {
            if let serde_json::Value::String(s) = v {
                *s = clip(s, MAX_DETAIL_CHARS);
            }
        }
        ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: clip(&self.message, MAX_MESSAGE_CHARS),
                details,
            },
        }
    }

    /// A backend's error, tagged with the backend's name.
    pub fn from_plugin(backend: &str, e: PluginError) -> Self {
        let code = Code::from(e.code);
        let mut err = ApiError {
            code,
            message: e.message,
            details: e.details,
        };
        // A server-side failure never shows the server's paths, whatever the plugin
        // put in its message (engine and libvirt errors often name files).
        if code.status().is_server_error() {
            err.message = scrub_paths(&err.message);
            for v in err.details.values_mut() {
                if let serde_json::Value::String(s) = v {
                    *s = scrub_paths(s);
                }
            }
        }
        if code == Code::BackendUnavailable {
            let reason = err.message.clone();
            err.details.entry("reason").or_insert_with(|| reason.into());
        }
        // The configured backend's name, whatever the plugin said (a plugin knows
        // its kind, not the name it serves under: `docker-remote`, a test's own).
        err.details.insert("backend".into(), backend.into());
        err
    }
}

impl From<crate::service::Error> for ApiError {
    fn from(e: crate::service::Error) -> Self {
        use crate::service::Error as E;
        let message = e.to_string();
        match e {
            E::InvalidName(name) => ApiError::invalid(message).detail("name", name),
            E::NotFound { by, value } => {
                ApiError::instance_not_found(&value).detail(by.as_str(), value)
            }
            E::NameTaken(name) => ApiError::already_exists(&name),
            E::InvalidState { state, .. } => {
                ApiError::invalid_state(message).detail("state", state.as_str())
            }
            E::InvalidBackend(name) => ApiError::invalid_backend(&name),
            E::Unavailable { backend, reason } => ApiError::unavailable(&backend, &reason),
            E::Plugin { backend, error } => ApiError::from_plugin(&backend, error),
            E::ReloadRefused(_) => ApiError::invalid(message),
            E::OperationNotFound(id) => {
                ApiError::new(Code::OperationNotFound, message).detail("operation", id)
            }
            E::NotCancellable { id, .. } => {
                ApiError::invalid_state(message).detail("operation", id)
            }
            E::Cancelled(_) => ApiError::new(Code::OperationCancelled, message),
            E::Invalid(_) => ApiError::invalid(message),
            E::TooLarge { limit, .. } => {
                ApiError::new(Code::PayloadTooLarge, message).detail("limit", limit)
            }
            E::Internal(_) => ApiError::internal(message),
            E::ConsoleBusy(id) => ApiError::new(Code::ConsoleInUse, message).detail("id", id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        let table = [
            ("INVALID_REQUEST", 400),
            ("INVALID_BACKEND", 400),
            ("UNAUTHORIZED", 401),
            ("FORBIDDEN", 403),
            ("INSTANCE_NOT_FOUND", 404),
            ("NOT_FOUND", 404),
            ("METHOD_NOT_ALLOWED", 405),
            ("INSTANCE_ALREADY_EXISTS", 409),
            ("INVALID_STATE", 409),
            ("PAYLOAD_TOO_LARGE", 413),
            ("UNSUPPORTED_MEDIA_TYPE", 415),
            ("RESOURCE_LIMIT_EXCEEDED", 422),
            ("INTERNAL_ERROR", 500),
            ("OPERATION_NOT_SUPPORTED", 501),
            ("BACKEND_ERROR", 502),
            ("BACKEND_UNAVAILABLE", 503),
            ("OPERATION_NOT_FOUND", 404),
            ("OPERATION_CANCELLED", 409),
            ("IMAGE_NOT_FOUND", 404),
            ("IMAGE_IN_USE", 409),
            ("IMAGE_ALREADY_EXISTS", 409),
            ("CONSOLE_IN_USE", 409),
            ("UPGRADE_REQUIRED", 426),
        ];
        for (code, status) in table {
            let c = Code::ALL
                .into_iter()
                .find(|c| c.as_str() == code)
                .unwrap_or_else(|| panic!("{code} is not a code"));
            assert_eq!(c.status().as_u16(), status, "{code}");
            assert_eq!(serde_json::to_value(c).unwrap(), code);
        }
        // Every code has its row.
        assert_eq!(table.len(), Code::ALL.len());
    }

    #[test]
    fn plugin_errors_keep_code_and_gain_backend() {
        let e = ApiError::from_plugin(
            "docker",
            PluginError::new(ErrorCode::Forbidden, "path /etc is not allowed"),
        );
        assert_eq!(e.code, "FORBIDDEN");
        assert_eq!(e.status().as_u16(), 403);
        assert_eq!(e.details["backend"], "docker");
        let e = ApiError::from_plugin("kvm", PluginError::config("bad"));
        assert_eq!(e.status().as_u16(), 500);
        // 4xx keeps its paths (the client's own input); 5xx loses the server's
        assert_eq!(e_message("/etc"), "path /etc is not allowed");
        let e = ApiError::from_plugin(
            "docker",
            PluginError::new(
                ErrorCode::BackendError,
                "mkdir /var/lib/docker/overlay2/x: no space left",
            ),
        );
        assert_eq!(e.message, "mkdir <path>: no space left");
        let e = ApiError::from_plugin(
            "kvm",
            PluginError::new(ErrorCode::BackendUnavailable, "libvirt is down"),
        );
        assert_eq!(e.status().as_u16(), 503);
        assert_eq!(e.details["reason"], "libvirt is down");
        assert_eq!(e.details["backend"], "kvm");
        // the backend's configured name, not the plugin's kind
        let e = ApiError::from_plugin(
            "docker-remote",
            PluginError::new(ErrorCode::BackendUnavailable, "engine down")
                .with_detail("backend", "docker"),
        );
        assert_eq!(e.details["backend"], "docker-remote");
    }

    #[test]
    fn long_echoes_are_clipped() {
        let long = "x".repeat(10_000);
        let e = ApiError::invalid(format!("name {long} is bad")).detail("name", long.as_str());
        let env = e.envelope();
        assert!(
            env.error.message.len() < MAX_MESSAGE_CHARS + 40,
            "{}",
            env.error.message.len()
        );
        assert!(env.error.message.ends_with("(10012 bytes in all)"));
        let d = env.error.details["name"].as_str().unwrap();
        assert!(d.starts_with(&"x".repeat(MAX_DETAIL_CHARS)));
        assert!(d.ends_with("... (10000 bytes in all)"), "{d}");
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééé", 2), "éé... (6 bytes in all)");
    }

    fn e_message(path: &str) -> String {
        ApiError::from_plugin(
            "docker",
            PluginError::new(ErrorCode::Forbidden, format!("path {path} is not allowed")),
        )
        .message
    }
}
