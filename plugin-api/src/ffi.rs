//! The frozen ABI: an abi_stable root module and four small trait objects.
//!
//! Nothing here changes within interface 1.x: abi_stable refuses a library whose root
//! module or vtables have fewer fields than the host's, so nothing is ever added to
//! them. What 1.3 added (streams) is a separate, optional, versioned entry:
//! [`StreamsEntry`], exported as the symbol [`STREAMS_SYMBOL`] and checked on its own,
//! so a plugin without it loads as before and answers 501 for streams. Operations and their data cross as
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
    std_types::{RBox, ROption, RResult, RStr, RString, RVec},
    StableAbi,
};
use async_ffi::FfiFuture;

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

/// One chunk of a stream as it crosses the boundary (1.3).
///
/// From the plugin: `kind` 1 standard output, 2 standard error (`data`), 3 exit
/// (`code`), 4 error (`data` is a JSON [`crate::PluginError`]). From the host: `kind` 0
/// input (`data`), 5 resize (`code` = columns << 16 | rows), 6 end of input.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct FrameFfi {
    /// What the frame is.
    pub kind: u8,
    /// The exit code, or the packed terminal size.
    pub code: i64,
    /// The bytes.
    pub data: RVec<u8>,
}

/// The host's end of a byte stream, owned by the plugin (1.3). Dropping it closes the
/// stream. Both methods answer FFI-safe futures that the host polls on its own
/// runtime: they run no code of the plugin but its channel's, so they need no runtime
/// of the plugin's.
#[sabi_trait]
pub trait StreamFfi: Send + Sync {
    /// The next frame, `None` at the end.
    fn next(&self) -> FfiFuture<ROption<FrameFfi>>;

    /// Hands the plugin one frame of input: `false` when it no longer reads input.
    #[sabi(last_prefix_field)]
    fn send(&self, frame: FrameFfi) -> FfiFuture<bool>;
}

/// A stream trait object, owned.
pub type StreamFfiBox = StreamFfi_TO<'static, RBox<()>>;

/// The streams extension of a plugin (1.3).
#[repr(C)]
#[derive(StableAbi)]
pub struct StreamsExtFfi {
    /// Opens a stream on the plugin's backend named `backend` (as the host named it
    /// in `create_backend`): `request` is a JSON [`crate::stream::StreamRequest`], the
    /// error a JSON [`crate::PluginError`].
    pub open: extern "C" fn(backend: RStr<'_>, request: RStr<'_>) -> RResult<StreamFfiBox, RString>,
}

/// The symbol a plugin with streams exports: a [`StreamsEntry`].
pub const STREAMS_SYMBOL: &str = "unicompute_streams_v1";

/// What [`STREAMS_SYMBOL`] holds. Its own layout is frozen (`version` says which);
/// the layout of `ext` is checked by the host with abi_stable's checker against
/// `layout` before the first use.
#[repr(C)]
pub struct StreamsEntry {
    /// 1.
    pub version: u32,
    /// The layout of [`StreamsExtFfi`] as the plugin was built.
    pub layout: &'static abi_stable::type_layout::TypeLayout,
    /// The extension.
    pub ext: StreamsExtFfi,
}

// SAFETY: a `'static` layout description and a function pointer, never written.
unsafe impl Sync for StreamsEntry {}

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
