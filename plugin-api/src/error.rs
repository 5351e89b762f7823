//! The error a backend returns, with the API's error codes.

use serde::{Deserialize, Serialize};

use crate::model::JsonMap;

/// The API's error codes that a backend may return. The host maps each to an HTTP
/// status in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request is malformed or a value is invalid (400).
    InvalidRequest,
    /// Not allowed: for example a host path outside the allowlist (403).
    Forbidden,
    /// No such instance (404).
    InstanceNotFound,
    /// The name is taken (409).
    InstanceAlreadyExists,
    /// The instance is in a state that does not allow the operation (409).
    InvalidState,
    /// The request asks more than the backend can give (422).
    ResourceLimitExceeded,
    /// The backend cannot do this (501).
    OperationNotSupported,
    /// The backend's daemon failed the call (502).
    BackendError,
    /// The backend's daemon cannot be reached (503).
    BackendUnavailable,
    /// The plugin's own configuration is wrong (fails start-up).
    InvalidConfig,
    /// No such image or template (404; 1.2).
    ImageNotFound,
    /// An instance of the backend uses the image (409; 1.2).
    ImageInUse,
    /// An image or template of that name exists (409; 1.2).
    ImageAlreadyExists,
    /// The operation was cancelled ([`crate::Backend::cancel`]; 1.2).
    Cancelled,
    /// A bug in the plugin, a panic included (500).
    #[serde(other)]
    InternalError,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::InstanceNotFound => "INSTANCE_NOT_FOUND",
            ErrorCode::InstanceAlreadyExists => "INSTANCE_ALREADY_EXISTS",
            ErrorCode::InvalidState => "INVALID_STATE",
            ErrorCode::ResourceLimitExceeded => "RESOURCE_LIMIT_EXCEEDED",
            ErrorCode::OperationNotSupported => "OPERATION_NOT_SUPPORTED",
            ErrorCode::BackendError => "BACKEND_ERROR",
            ErrorCode::BackendUnavailable => "BACKEND_UNAVAILABLE",
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::ImageNotFound => "IMAGE_NOT_FOUND",
            ErrorCode::ImageInUse => "IMAGE_IN_USE",
            ErrorCode::ImageAlreadyExists => "IMAGE_ALREADY_EXISTS",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// An error from a backend: a code, a message for the user, and details.
///
/// Messages are lowercase, name what failed, and never hold secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// The API error code.
    pub code: ErrorCode,
    /// What went wrong, for the user.
    pub message: String,
    /// Structured details (the image that failed to pull, the allowed paths...).
    #[serde(default)]
    pub details: JsonMap,
}

impl PluginError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PluginError {
            code,
            message: message.into(),
            details: JsonMap::new(),
        }
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// `INVALID_REQUEST`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    /// `INSTANCE_NOT_FOUND` for an id.
    pub fn not_found(id: &str) -> Self {
        Self::new(
            ErrorCode::InstanceNotFound,
            format!("instance {id} not found"),
        )
        .with_detail("id", id)
    }
    /// `INVALID_STATE`.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }
    /// `OPERATION_NOT_SUPPORTED` for an operation.
    pub fn not_supported(operation: &str) -> Self {
        Self::new(
            ErrorCode::OperationNotSupported,
            format!("{operation} is not supported by this backend"),
        )
        .with_detail("operation", operation)
    }
    /// `BACKEND_ERROR`.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BackendError, message)
    }
    /// `BACKEND_UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BackendUnavailable, message)
    }
    /// `INVALID_CONFIG`.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidConfig, message)
    }
    /// `IMAGE_NOT_FOUND` for an image name.
    pub fn image_not_found(name: &str) -> Self {
        Self::new(ErrorCode::ImageNotFound, format!("image {name} not found"))
            .with_detail("image", name)
    }
    /// `CANCELLED` for an operation token.
    pub fn cancelled(operation: &str) -> Self {
        Self::new(
            ErrorCode::Cancelled,
            format!("operation {operation} was cancelled"),
        )
        .with_detail("operation", operation)
    }
    /// `INTERNAL_ERROR`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }
}

/// Replaces every absolute path in a message by `<path>`. A path ends at white
/// space, a quote or bracket, a comma, or a `:` that ends a word (`open /x: denied`).
pub fn scrub_paths(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len());
    let mut in_path = false;
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        if in_path {
            let word_end = c == ':' && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
            if c.is_whitespace() || matches!(c, '\'' | '"' | ',' | ')' | ']' | '`') || word_end {
                in_path = false;
                out.push(c);
            }
        } else if c == '/'
            && prev.is_none_or(|p| {
                p.is_whitespace() || matches!(p, '\'' | '"' | '=' | '(' | '[' | '`')
            })
        {
            in_path = true;
            out.push_str("<path>");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_is_internal() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::Forbidden,
            ErrorCode::InstanceNotFound,
            ErrorCode::InstanceAlreadyExists,
            ErrorCode::InvalidState,
            ErrorCode::ResourceLimitExceeded,
            ErrorCode::OperationNotSupported,
            ErrorCode::BackendError,
            ErrorCode::BackendUnavailable,
            ErrorCode::InvalidConfig,
            ErrorCode::ImageNotFound,
            ErrorCode::ImageInUse,
            ErrorCode::ImageAlreadyExists,
            ErrorCode::Cancelled,
            ErrorCode::InternalError,
        ] {
            let s = serde_json::to_string(&code).unwrap();
            assert_eq!(s, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&s).unwrap(), code);
        }
        let c: ErrorCode = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(c, ErrorCode::InternalError);
    }
}
