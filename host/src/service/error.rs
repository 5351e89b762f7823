//! What can go wrong in the domain, in the domain's words. `api/` decides what each
//! case is on the wire (`From<service::Error> for ApiError`).

use unicompute_plugin_api::{InstanceState, PluginError};

/// How an instance was looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// By id.
    Id,
    /// By name.
    Name,
}

impl Lookup {
    /// `id` or `name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Id => "id",
            Lookup::Name => "name",
        }
    }
}

/// A refused or failed operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The name breaks the naming rule.
    #[error("name must be 1-63 characters of [a-zA-Z0-9_.-], starting with a letter or digit")]
    InvalidName(String),
    /// No instance of that id or name.
    #[error("instance {value} not found")]
    NotFound {
        /// How it was looked for.
        by: Lookup,
        /// The id or name.
        value: String,
    },
    /// Another instance has the name.
    #[error("an instance named {0} already exists")]
    NameTaken(String),
    /// The instance's state does not allow the operation.
    #[error("{message}")]
    InvalidState {
        /// What was refused and why.
        message: String,
        /// The state it is in.
        state: InstanceState,
    },
    /// No backend of that name is configured.
    #[error("backend {0} is not configured")]
    InvalidBackend(String),
    /// The backend is configured but cannot be used now.
    #[error("backend {backend} is not available")]
    Unavailable {
        /// The backend.
        backend: String,
        /// Why.
        reason: String,
    },
    /// The backend answered with an error.
    #[error("{}", error.message)]
    Plugin {
        /// The backend.
        backend: String,
        /// Its error, code and details as the plugin gave them.
        error: PluginError,
    },
    /// A reload was refused; the running config is kept.
    #[error("reload refused, nothing changed: {0}")]
    ReloadRefused(String),
    /// No operation of that id (or it ended too long ago).
    #[error("operation {0} not found")]
    OperationNotFound(String),
    /// A cancel of an operation that has ended or cannot be stopped.
    #[error("operation {id} cannot be cancelled: {why}")]
    NotCancellable {
        /// The operation.
        id: String,
        /// Why not.
        why: String,
    },
    /// The work was stopped on request.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A request the domain refuses (a truncated upload).
    #[error("{0}")]
    Invalid(String),
    /// More bytes than allowed.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
        /// What.
        what: String,
    },
    /// Another client holds the instance's console.
    #[error(
        "the console of instance {0} is in use by another client (take it over with ?force=true)"
    )]
    ConsoleBusy(String),
    /// The server itself failed (a task that could not run).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Not found by id.
    pub fn no_id(id: &str) -> Self {
        Error::NotFound {
            by: Lookup::Id,
            value: id.to_owned(),
        }
    }
}
