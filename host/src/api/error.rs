//! The API's error: a code, a message and details, in the spec's envelope. The one
//! place where error codes become HTTP statuses.

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

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The API error code (`INSTANCE_NOT_FOUND`...).
    pub code: &'static str,
    /// For the user.
    pub message: String,
    /// Structured details.
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The error envelope: `{"error":{"code","message","details"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The error itself.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Error code, for example `INSTANCE_NOT_FOUND`.
    pub code: String,
    /// For the user.
    pub message: String,
    /// Structured details.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
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
        Self::new("INVALID_REQUEST", message)
    }
    /// 400 `INVALID_BACKEND`.
    pub fn invalid_backend(name: &str) -> Self {
        Self::new(
            "INVALID_BACKEND",
            format!("backend {name} is not configured"),
        )
        .detail("backend", name)
    }
    /// 404 `INSTANCE_NOT_FOUND`.
    pub fn instance_not_found(what: &str) -> Self {
        Self::new("INSTANCE_NOT_FOUND", format!("instance {what} not found"))
    }
    /// 409 `INSTANCE_ALREADY_EXISTS`.
    pub fn already_exists(name: &str) -> Self {
        Self::new(
            "INSTANCE_ALREADY_EXISTS",
            format!("an instance named {name} already exists"),
        )
        .detail("name", name)
    }
    /// 409 `INVALID_STATE`.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new("INVALID_STATE", message)
    }
    /// 503 `BACKEND_UNAVAILABLE`.
    pub fn unavailable(backend: &str, reason: &str) -> Self {
        Self::new(
            "BACKEND_UNAVAILABLE",
            format!("backend {backend} is not available"),
        )
        .detail("backend", backend)
        .detail("reason", reason)
    }
    /// 500 `INTERNAL_ERROR`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("INTERNAL_ERROR", message)
    }

    /// The HTTP status of this error's code.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
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
                code: self.code.to_owned(),
                message: clip(&self.message, MAX_MESSAGE_CHARS),
                details,
            },
        }
    }

    /// A backend's error, tagged with the backend's name.
    pub fn from_plugin(backend: &str, e: PluginError) -> Self {
        let code = match e.code {
            // A plugin's config error at request time is the plugin's bug.
            ErrorCode::InvalidConfig => "INTERNAL_ERROR",
            other => other.as_str(),
        };
        let mut err = ApiError {
            code,
            message: e.message,
            details: e.details,
        };
        // A server-side failure never shows the server's paths, whatever the plugin
        // put in its message (engine and libvirt errors often name files).
        if status_of(code).is_server_error() {
            err.message = scrub_paths(&err.message);
            for v in err.details.values_mut() {
                if let serde_json::Value::String(s) = v {
                    *s = scrub_paths(s);
                }
            }
        }
        if code == "BACKEND_UNAVAILABLE" {
            let reason = err.message.clone();
            err.details.entry("reason").or_insert_with(|| reason.into());
        }
        err.details
            .entry("backend")
            .or_insert_with(|| backend.into());
        err
    }
}

/// Code to status. Unknown codes are 500.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "INVALID_REQUEST" | "INVALID_BACKEND" => StatusCode::BAD_REQUEST,
        "UNAUTHORIZED" => StatusCode::UNAUTHORIZED,
        "FORBIDDEN" => StatusCode::FORBIDDEN,
        "INSTANCE_NOT_FOUND" | "NOT_FOUND" => StatusCode::NOT_FOUND,
        "METHOD_NOT_ALLOWED" => StatusCode::METHOD_NOT_ALLOWED,
        "INSTANCE_ALREADY_EXISTS" | "INVALID_STATE" => StatusCode::CONFLICT,
        "PAYLOAD_TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
        "UNSUPPORTED_MEDIA_TYPE" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "RESOURCE_LIMIT_EXCEEDED" => StatusCode::UNPROCESSABLE_ENTITY,
        "OPERATION_NOT_SUPPORTED" => StatusCode::NOT_IMPLEMENTED,
        "BACKEND_ERROR" => StatusCode::BAD_GATEWAY,
        "BACKEND_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
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
            ("SOMETHING_ELSE", 500),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
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
