//! The frozen ABI: an abi_stable root module and three small trait objects.
//!
//! Nothing here changes within interface 1.x. Operations and their data cross as
//! `(operation name, JSON document)`, so new operations and new fields are added
//! without touching the layout that abi_stable checks. A plugin author never uses this
//! module directly: [`crate::export_plugin!`] builds the module, and
//! [`crate::load::load_plugin`] reads it.

#![allow(non_local_definitions)] // abi_stable's sabi_trait expansion
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString},
    StableAbi,
};

/// A backend as the ABI sees it: one call taking an operation name and a JSON payload,
/// answering a JSON result or a JSON [`crate::PluginError`].
#[sabi_trait]
pub trait BackendFfi: Send + Sync {
    /// Runs one operation.
    fn call(&self, op: RStr<'_>, payload: RStr<'_>) -> RResult<RString, RString>;

    /// Stops background work; the backend gets no more calls.
    #[sabi(last_prefix_field)]
    fn shutdown(&self);
}

/// A backend trait object, owned.
pub type BackendFfiBox = BackendFfi_TO<'static, RBox<()>>;

/// The host's log, handed to a plugin at load.
#[sabi_trait]
pub trait HostLoggerFfi: Send + Sync {
    /// Logs one event: level 1 (error) to 5 (trace), the target, the formatted message.
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);
}

/// A host logger trait object, owned.
pub type HostLoggerBox = HostLoggerFfi_TO<'static, RBox<()>>;

/// The host's inventory, handed to each backend to push events into.
#[sabi_trait]
pub trait EventSinkFfi: Send + Sync {
    /// Pushes one [`crate::Event`] as JSON.
    #[sabi(last_prefix_field)]
    fn emit(&self, event: RStr<'_>);
}

/// An event sink trait object, owned.
pub type EventSinkBox = EventSinkFfi_TO<'static, RBox<()>>;

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The handshake as JSON: name, kind, version, interfaceVersion.
    pub handshake: extern "C" fn() -> RString,
    /// Hands the host's logger to the plugin; called once, before anything else.
    pub init: extern "C" fn(logger: HostLoggerBox),
    /// Makes a backend from its name and JSON config. The error is a JSON
    /// [`crate::PluginError`].
    #[sabi(last_prefix_field)]
    pub create_backend: extern "C" fn(
        name: RStr<'_>,
        config: RStr<'_>,
        events: EventSinkBox,
    ) -> RResult<BackendFfiBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "unicompute_plugin";
    const NAME: &'static str = "unicompute_plugin";
    // Frozen on purpose: abi_stable refuses a library whose root module has an older
    // minor version than the loader's (abi_stable issue #118). Our compatibility is
    // carried by the handshake's interfaceVersion, not by this string.
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}
