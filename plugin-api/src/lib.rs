//! The stable boundary between the unicompute host and its backend plugins, and the
//! SDK for writing a plugin.
//!
//! A plugin is a `cdylib` crate that depends on this crate alone, implements
//! [`Backend`], and exports it with [`export_plugin!`]:
//!
//! ```ignore
//! use unicompute_plugin_api::{Backend, BackendContext, PluginError};
//!
//! pub struct MyBackend { /* ... */ }
//! impl MyBackend {
//!     pub fn new(ctx: BackendContext) -> Result<Self, PluginError> { /* ... */ }
//! }
//! impl Backend for MyBackend { /* ... */ }
//!
//! unicompute_plugin_api::export_plugin! {
//!     name: "mine", kind: "mine", version: env!("CARGO_PKG_VERSION"),
//!     create: MyBackend::new,
//! }
//! ```
//!
//! The host loads it with [`load::load_plugin`] and sees the same [`Backend`] trait.
//! The ABI ([`ffi`]) is frozen for all of interface 1.x: operations and data cross as
//! JSON documents whose new fields always have defaults, so a plugin built against any
//! 1.x interface loads in any 1.x host.
#![warn(missing_docs)]

pub mod backend;
pub mod call;
pub mod error;
pub mod export;
pub mod ffi;
pub mod load;
pub mod log;
pub mod model;
pub mod stream;
pub mod sync;

pub use backend::{Backend, BackendContext, EventSink, Result};
pub use error::{ErrorCode, PluginError};
pub use model::*;
pub use stream::{ByteStream, Input, Output, StreamEnd, StreamKind, StreamRequest};

use serde::{Deserialize, Serialize};

/// The interface version this crate implements. A host accepts plugins with the same
/// major version, older or newer minor.
///
/// - 1.0: the frozen ABI ([`ffi`]); instances with the seed's fields; operations
///   describe, health, host_resources, images, list, get, create, update, delete,
///   start, stop, restart, pause, unpause, usage.
/// - 1.1: `pendingResources`, `resources.storage.enforced`, labels in updates, the
///   `resync` event. A 1.0 plugin never sends them; the host reads their defaults.
/// - 1.2: images and long work: operations pull_image, delete_image, upload_begin,
///   upload_commit, upload_abort and cancel; the operation token in
///   `CreateRequest.operation` and `PullRequest.operation`; the `progress` event;
///   error codes IMAGE_NOT_FOUND, IMAGE_IN_USE, IMAGE_ALREADY_EXISTS, CANCELLED. A 1.0
///   or 1.1 plugin answers the new operations OPERATION_NOT_SUPPORTED and reports no
///   progress.
/// - 1.3: byte streams ([`stream`]): logs, console and exec through
///   [`Backend::open_stream`], an added, defaulted entry of the ABI's backend vtable.
///   A plugin built before 1.3 lacks the entry and answers OPERATION_NOT_SUPPORTED.
pub const INTERFACE_VERSION: &str = "1.3";

/// What a plugin says of itself at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The plugin's name, referenced by `plugin = "..."` in the config.
    pub name: String,
    /// The backend kind (`docker`, `kvm`...).
    pub kind: String,
    /// The plugin's own version.
    pub version: String,
    /// The interface version it was built against.
    pub interface_version: String,
}

#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_symbol_matches_abi_stable_mangling() {
        assert_eq!(
            abi_stable_shared::mangled_root_module_loader_name(),
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn memory_usage_is_a_percentage_of_the_limit() {
        use crate::MemoryUsage;
        assert_eq!(MemoryUsage::new(50, 100).percentage, 50.0);
        assert_eq!(MemoryUsage::new(1, 3).percentage, 33.33);
        assert_eq!(MemoryUsage::new(7, 0).percentage, 0.0);
        assert_eq!(MemoryUsage::new(7, 0).used, 7);
    }

    #[test]
    fn interface_compatibility_is_by_major() {
        use crate::load::interface_compatible;
        assert!(interface_compatible("1.0"));
        assert!(interface_compatible("1.7"));
        assert!(!interface_compatible("2.0"));
        assert!(!interface_compatible("0.9"));
        assert!(!interface_compatible(""));
    }
}
