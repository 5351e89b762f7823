//! What a call can fail with.

use serde_json::Value;

/// A failed call.
#[derive(Debug, Clone)]
pub enum Error {
    /// The server answered with its error envelope.
    Api {
        /// The HTTP status.
        status: u16,
        /// `INSTANCE_NOT_FOUND`...
        code: String,
        /// The server's message.
        message: String,
        /// `details`.
        details: Value,
    },
    /// The server could not be reached (refused, unknown host, timeout, TLS).
    Connect {
        /// The base URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Something answered, but not the unicompute API (an HTML page, a proxy's
    /// error, a body that does not parse).
    Protocol {
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        message: String,
    },
    /// An operation that was waited for failed or was cancelled: its error.
    Operation {
        /// The operation.
        id: String,
        /// Its error code.
        code: String,
        /// Its error message.
        message: String,
        /// `details`.
        details: Value,
    },
}

impl Error {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Protocol { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of the envelope (of the operation's error).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } | Error::Operation { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The message alone.
    pub fn message(&self) -> &str {
        match self {
            Error::Api { message, .. }
            | Error::Connect { message, .. }
            | Error::Protocol { message, .. }
            | Error::Operation { message, .. } => message,
        }
    }

    /// Whether this is a 404 (or an operation's `*_NOT_FOUND`).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404) || self.code().is_some_and(|c| c.ends_with("NOT_FOUND"))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Api { code, message, .. } | Error::Operation { code, message, .. } => {
                write!(f, "{message} ({code})")
            }
            Error::Connect { url, message } => write!(f, "cannot connect to {url}: {message}"),
            Error::Protocol { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}
