//! The host side of the boundary: loading a plugin file and calling its backends
//! through the same [`Backend`] trait the plugin implemented.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::{
    library::{lib_header_from_path, RootModule},
    sabi_trait::TD_Opaque,
    std_types::{RResult, RStr},
};
use serde::de::DeserializeOwned;

use crate::backend::{Backend, EventSink, Result};
use crate::call::{
    Call, CancelArgs, DeleteArgs, ImageArgs, PullArgs, StopArgs, Target, UpdateArgs, UploadArgs,
};
use crate::error::PluginError;
use crate::ffi::{
    BackendFfiBox, EventSinkFfi, EventSinkFfi_TO, HostLoggerFfi, HostLoggerFfi_TO, PluginModRef,
    StreamsEntry, StreamsExtFfi, STREAMS_SYMBOL,
};
use crate::model::{
    BackendDescription, CreateRequest, Event, HostResources, Image, Instance, PullRequest,
    StopOptions, UpdateRequest, UploadRequest, UploadTarget, Usage,
};
use crate::stream::{ByteStream, Remote, StreamRequest};
use crate::Handshake;

/// Why a file could not be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a loadable library, or not an abi_stable library, or the ABI does not match.
    #[error("not a compatible unicompute plugin: {0}")]
    Library(String),
    /// The handshake could not be read.
    #[error("unreadable handshake: {0}")]
    Handshake(String),
    /// The plugin was built against an interface this host does not speak.
    #[error("plugin {name} speaks interface {found}, this host speaks {supported}")]
    Incompatible {
        /// The plugin's name.
        name: String,
        /// The plugin's interface version.
        found: String,
        /// The host's interface version.
        supported: String,
    },
}

/// Receives a plugin's log events: level (1 error .. 5 trace), target, message.
pub type LogFn = Arc<dyn Fn(u8, &str, &str) + Send + Sync>;

struct HostLogger(LogFn);

impl HostLoggerFfi for HostLogger {
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>) {
        (self.0)(level, target.as_str(), message.as_str())
    }
}

struct Sink(EventSink);

impl EventSinkFfi for Sink {
    fn emit(&self, event: RStr<'_>) {
        match serde_json::from_str::<Event>(event.as_str()) {
            Ok(ev) => self.0.emit(&ev),
            Err(_) => self.0.emit(&Event::Resync),
        }
    }
}

/// A loaded plugin library. Libraries are never unloaded.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// What the plugin said of itself.
    pub handshake: Handshake,
    /// The file it was loaded from.
    pub path: PathBuf,
    module: PluginModRef,
    /// The streams extension, when the plugin exports one this host can use.
    streams: Option<&'static StreamsExtFfi>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("handshake", &self.handshake)
            .field("path", &self.path)
            .finish()
    }
}

/// Whether a plugin's interface version is one this host accepts: the same major.
pub fn interface_compatible(version: &str) -> bool {
    let major = |v: &str| v.split('.').next().map(str::to_owned);
    major(version).is_some() && major(version) == major(crate::INTERFACE_VERSION)
}

/// Loads a plugin file: checks the ABI, reads the handshake, checks the interface
/// version, and hands the plugin the logger that `logger` makes from the handshake.
/// Each distinct path is a distinct library; to load a newer build of the same file,
/// copy it to a new path first.
pub fn load_plugin(
    path: &Path,
    logger: impl FnOnce(&Handshake) -> LogFn,
) -> std::result::Result<LoadedPlugin, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| LoadError::Library(e.to_string()))?;
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| LoadError::Library(e.to_string()))?;
    let raw = (module.handshake())();
    let handshake: Handshake =
        serde_json::from_str(raw.as_str()).map_err(|e| LoadError::Handshake(e.to_string()))?;
    if !interface_compatible(&handshake.interface_version) {
        return Err(LoadError::Incompatible {
            name: handshake.name,
            found: handshake.interface_version,
            supported: crate::INTERFACE_VERSION.to_owned(),
        });
    }
    let logger = logger(&handshake);
    (module.init())(HostLoggerFfi_TO::from_value(HostLogger(logger), TD_Opaque));
    let streams = streams_entry(path);
    Ok(LoadedPlugin {
        handshake,
        path: path.to_owned(),
        module,
        streams,
    })
}

/// The plugin's streams extension (1.3): its [`STREAMS_SYMBOL`] if it exports one,
/// of a version and a layout this host checks. Anything else is no streams (501), and
/// the plugin loads all the same.
fn streams_entry(path: &Path) -> Option<&'static StreamsExtFfi> {
    // The library is open already (the root module): this takes another reference to
    // it, never released, as libraries are never unloaded.
    let lib = abi_stable::library::RawLibrary::load_at(path).ok()?;
    let lib: &'static abi_stable::library::RawLibrary = Box::leak(Box::new(lib));
    let mut name = STREAMS_SYMBOL.as_bytes().to_vec();
    name.push(0);
    // SAFETY: the symbol of this name is a `StreamsEntry` static (`export_plugin!`);
    // its `version` field, first, says which layout follows.
    let entry: &'static StreamsEntry = unsafe {
        let sym = lib.get::<*const StreamsEntry>(&name).ok()?;
        let ptr: *const StreamsEntry = *sym;
        if ptr.is_null() || (*ptr.cast::<u32>()) != 1 {
            return None;
        }
        &*ptr
    };
    let ours = <StreamsExtFfi as abi_stable::StableAbi>::LAYOUT;
    match abi_stable::abi_stability::abi_checking::check_layout_compatibility(ours, entry.layout) {
        Ok(()) => Some(&entry.ext),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the plugin's streams extension is not usable");
            None
        }
    }
}

/// Never fails for a well-formed root module; separate so tests can name the type.
impl LoadedPlugin {
    /// Makes a backend from its name and config table.
    pub fn create_backend(
        &self,
        name: &str,
        config: &serde_json::Value,
        events: EventSink,
    ) -> Result<RemoteBackend> {
        let config = serde_json::to_string(config)
            .map_err(|e| PluginError::config(format!("backend {name}: {e}")))?;
        let sink = EventSinkFfi_TO::from_value(Sink(events), TD_Opaque);
        match (self.module.create_backend())(RStr::from_str(name), RStr::from_str(&config), sink) {
            RResult::ROk(ffi) => Ok(RemoteBackend {
                ffi,
                name: name.to_owned(),
                streams: self.streams,
            }),
            RResult::RErr(e) => Err(decode_error(e.as_str())),
        }
    }
}

fn decode_error(json: &str) -> PluginError {
    serde_json::from_str(json)
        .unwrap_or_else(|_| PluginError::internal("the plugin returned an unreadable error"))
}

/// A backend living in a plugin, seen through the [`Backend`] trait.
pub struct RemoteBackend {
    ffi: BackendFfiBox,
    name: String,
    streams: Option<&'static StreamsExtFfi>,
}

impl RemoteBackend {
    /// Sends one call and reads its answer.
    fn send<T: DeserializeOwned>(&self, call: Call) -> Result<T> {
        let (op, payload) = call.encode()?;
        match self.ffi.call(RStr::from_str(op), RStr::from_str(&payload)) {
            RResult::ROk(json) => serde_json::from_str(json.as_str()).map_err(|e| {
                PluginError::internal(format!(
                    "the plugin returned an unreadable {op} result: {e}"
                ))
            }),
            RResult::RErr(e) => Err(decode_error(e.as_str())),
        }
    }
}

/// Every method is one [`Call`]; the trait has no default methods, so an operation
/// added to it does not compile until it is sent here.
impl Backend for RemoteBackend {
    fn describe(&self) -> Result<BackendDescription> {
        self.send(Call::Describe)
    }
    fn health(&self) -> Result<()> {
        self.send(Call::Health)
    }
    fn host_resources(&self) -> Result<HostResources> {
        self.send(Call::HostResources)
    }
    fn images(&self) -> Result<Vec<Image>> {
        self.send(Call::Images)
    }
    fn list(&self) -> Result<Vec<Instance>> {
        self.send(Call::List)
    }
    fn get(&self, id: &str) -> Result<Instance> {
        self.send(Call::Get(Target::new(id)))
    }
    fn create(&self, request: CreateRequest) -> Result<Instance> {
        self.send(Call::Create(request))
    }
    fn update(&self, id: &str, request: UpdateRequest) -> Result<Instance> {
        self.send(Call::Update(UpdateArgs::new(id, request)))
    }
    fn delete(&self, id: &str, force: bool) -> Result<()> {
        self.send(Call::Delete(DeleteArgs {
            id: id.to_owned(),
            force,
        }))
    }
    fn start(&self, id: &str) -> Result<Instance> {
        self.send(Call::Start(Target::new(id)))
    }
    fn stop(&self, id: &str, options: StopOptions) -> Result<Instance> {
        self.send(Call::Stop(StopArgs::new(id, options)))
    }
    fn restart(&self, id: &str, options: StopOptions) -> Result<Instance> {
        self.send(Call::Restart(StopArgs::new(id, options)))
    }
    fn pause(&self, id: &str) -> Result<Instance> {
        self.send(Call::Pause(Target::new(id)))
    }
    fn unpause(&self, id: &str) -> Result<Instance> {
        self.send(Call::Unpause(Target::new(id)))
    }
    fn usage(&self, id: &str) -> Result<Usage> {
        self.send(Call::Usage(Target::new(id)))
    }
    fn pull_image(&self, request: PullRequest) -> Result<Image> {
        self.send(Call::PullImage(PullArgs(request)))
    }
    fn delete_image(&self, name: &str) -> Result<()> {
        self.send(Call::DeleteImage(ImageArgs {
            name: name.to_owned(),
        }))
    }
    fn upload_begin(&self, request: UploadRequest) -> Result<UploadTarget> {
        self.send(Call::UploadBegin(UploadArgs(request)))
    }
    fn upload_commit(&self, request: UploadRequest) -> Result<Image> {
        self.send(Call::UploadCommit(UploadArgs(request)))
    }
    fn upload_abort(&self, request: UploadRequest) -> Result<()> {
        self.send(Call::UploadAbort(UploadArgs(request)))
    }
    fn cancel(&self, operation: &str) -> Result<bool> {
        self.send(Call::Cancel(CancelArgs {
            operation: operation.to_owned(),
        }))
    }
    fn open_stream(&self, request: StreamRequest) -> Result<ByteStream> {
        let json = serde_json::to_string(&request)
            .map_err(|e| PluginError::internal(format!("cannot encode a stream request: {e}")))?;
        let Some(ext) = self.streams else {
            return Err(PluginError::not_supported(request.kind.name()).with_detail(
                "reason",
                "the plugin offers no streams (built before interface 1.3)",
            ));
        };
        match (ext.open)(RStr::from_str(&self.name), RStr::from_str(&json)) {
            RResult::ROk(ffi) => Ok(ByteStream::from_object(Remote(Arc::new(ffi)))),
            RResult::RErr(e) => Err(decode_error(e.as_str())),
        }
    }
    fn shutdown(&self) {
        self.ffi.shutdown()
    }
}

/// Keeps the `RootModule` import used (its methods are called through the trait).
#[allow(dead_code)]
fn _root_module_is_used(m: PluginModRef) -> &'static str {
    let _ = m;
    PluginModRef::NAME
}
