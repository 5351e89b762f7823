//! Errors of engine calls, and the one place that maps them onto the API's codes.

use unicompute_plugin_api::{ErrorCode, PluginError};

/// What went wrong talking to the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine cannot be reached (socket missing, connection refused, no answer).
    #[error("docker engine is not available")]
    Unavailable {
        /// Why, without host paths or addresses.
        reason: String,
    },
    /// The engine did not answer in time.
    #[error("docker engine did not answer {operation} in time")]
    Timeout {
        /// The call that timed out.
        operation: &'static str,
    },
    /// The engine answered with an HTTP error status.
    #[error("docker engine refused {operation}: {message}")]
    Engine {
        /// The call that failed.
        operation: &'static str,
        /// The engine's HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// The engine answered something we could not read, or the client failed.
    #[error("docker {operation} failed: {message}")]
    Client {
        /// The call that failed.
        operation: &'static str,
        /// What the client said.
        message: String,
    },
}

impl Error {
    /// Classifies a bollard error of `operation`.
    pub fn from_bollard(operation: &'static str, e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match e {
            B::DockerResponseServerError {
                status_code,
                message,
            } => Error::Engine {
                operation,
                status: status_code,
                message: message.trim().to_owned(),
            },
            B::RequestTimeoutError => Error::Timeout { operation },
            B::HyperResponseError { err } => Error::Unavailable {
                reason: connection_reason(&err.to_string()),
            },
            B::HyperLegacyError { err } => Error::Unavailable {
                reason: connection_reason(&format!("{err:?}")),
            },
            B::IOError { err } => Error::Unavailable {
                reason: connection_reason(&err.to_string()),
            },
            B::SocketNotFoundError(_) => Error::Unavailable {
                reason: "the engine's socket does not exist".to_owned(),
            },
            // These name files of the server: say what is wrong, not where.
            B::CertPathError { .. }
            | B::CertMultipleKeys { .. }
            | B::CertParseError { .. }
            | B::NoNativeCertsError { .. }
            | B::LoadNativeCertsErrors { .. } => Error::Client {
                operation,
                message: "the backend's TLS certificates cannot be read".to_owned(),
            },
            other => Error::Client {
                operation,
                message: other.to_string(),
            },
        }
    }

    /// Whether the engine looks gone (the client should reconnect).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// The engine's HTTP status, if it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Engine { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The engine's message, if it answered with one.
    pub fn engine_message(&self) -> &str {
        match self {
            Error::Engine { message, .. } => message,
            _ => "",
        }
    }
}

/// A short, path-free reason for a connection failure.
fn connection_reason(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if lower.contains("refused") {
        "connection refused".to_owned()
    } else if lower.contains("no such file") || lower.contains("not found") {
        "the engine's socket does not exist".to_owned()
    } else if lower.contains("reset") || lower.contains("closed") || lower.contains("eof") {
        "the connection was closed".to_owned()
    } else if lower.contains("timed out") {
        "the connection timed out".to_owned()
    } else {
        "the engine could not be reached".to_owned()
    }
}

/// Whether an engine message says the container does not exist.
pub fn is_no_such_container(message: &str) -> bool {
    message.to_ascii_lowercase().contains("no such container")
}

/// Whether an engine message says the image does not exist locally.
pub fn is_no_such_image(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no such image") || (m.contains("image") && m.contains("not found"))
}

/// The API code of an engine error: the one place where engine statuses become codes.
pub fn code_of(e: &Error) -> ErrorCode {
    match e {
        Error::Unavailable { .. } | Error::Timeout { .. } => ErrorCode::BackendUnavailable,
        Error::Engine {
            status, message, ..
        } => match status {
            400 => ErrorCode::InvalidRequest,
            403 => ErrorCode::Forbidden,
            // Only a missing container is a missing instance; a missing network or
            // image under an existing container is the engine's trouble.
            404 if is_no_such_container(message) => ErrorCode::InstanceNotFound,
            404 => ErrorCode::BackendError,
            409 => ErrorCode::InvalidState,
            _ => ErrorCode::BackendError,
        },
        Error::Client { .. } => ErrorCode::BackendError,
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        let code = code_of(&e);
        let mut err = PluginError::new(code, e.to_string()).with_detail("backend", "docker");
        match &e {
            Error::Unavailable { reason } => err = err.with_detail("reason", reason.as_str()),
            Error::Timeout { operation } => {
                err = err
                    .with_detail("reason", "timeout")
                    .with_detail("operation", *operation)
            }
            Error::Engine {
                operation, status, ..
            } => {
                err = err
                    .with_detail("operation", *operation)
                    .with_detail("engineStatus", *status)
            }
            Error::Client { operation, .. } => err = err.with_detail("operation", *operation),
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(status: u16) -> Error {
        Error::Engine {
            operation: "inspect",
            status,
            message: "No such container: x".into(),
        }
    }

    #[test]
    fn every_row_maps_to_its_code() {
        let rows = [
            (
                Error::Unavailable {
                    reason: "connection refused".into(),
                },
                ErrorCode::BackendUnavailable,
            ),
            (
                Error::Timeout { operation: "stop" },
                ErrorCode::BackendUnavailable,
            ),
            (engine(400), ErrorCode::InvalidRequest),
            (engine(403), ErrorCode::Forbidden),
            (engine(404), ErrorCode::InstanceNotFound),
            (engine(409), ErrorCode::InvalidState),
            (engine(500), ErrorCode::BackendError),
            (
                Error::Engine {
                    operation: "start",
                    status: 404,
                    message: "network uc-gone not found".into(),
                },
                ErrorCode::BackendError,
            ),
            (engine(502), ErrorCode::BackendError),
            (
                Error::Client {
                    operation: "stats",
                    message: "bad json".into(),
                },
                ErrorCode::BackendError,
            ),
        ];
        for (e, code) in rows {
            assert_eq!(code_of(&e), code, "{e}");
            assert_eq!(PluginError::from(e).code, code);
        }
    }

    #[test]
    fn connection_errors_are_unavailable_and_name_no_path() {
        let io = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory: /var/run/docker.sock",
        );
        let e = Error::from_bollard("ping", bollard::errors::Error::IOError { err: io });
        assert!(e.is_unavailable());
        let p = PluginError::from(e);
        assert_eq!(p.code, ErrorCode::BackendUnavailable);
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("/var/run"), "{text}");
    }

    #[test]
    fn certificate_errors_name_no_path() {
        let e = Error::from_bollard(
            "connect",
            bollard::errors::Error::CertPathError {
                path: "/etc/secret/key.pem".into(),
            },
        );
        let text = serde_json::to_string(&PluginError::from(e)).unwrap();
        assert!(!text.contains("/etc/secret"), "{text}");
        assert!(text.contains("TLS"), "{text}");
    }

    #[test]
    fn engine_answers_keep_status_and_message() {
        let e = Error::from_bollard(
            "create",
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message: "Conflict. The container name is already in use\n".into(),
            },
        );
        assert_eq!(e.status(), Some(409));
        assert!(e.engine_message().ends_with("in use"));
        assert!(!e.is_unavailable());
    }
}
