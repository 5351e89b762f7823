//! The plugin side of the boundary: what [`crate::export_plugin!`] expands to.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Weak};

use crate::sync::lock;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RStr, RString},
};
use serde::Serialize;

use crate::backend::{Backend, BackendContext, EventSink};
use crate::call::Call;
use crate::error::PluginError;
use crate::ffi::{
    BackendFfi, BackendFfiBox, BackendFfi_TO, EventSinkBox, HostLoggerBox, StreamFfiBox,
    StreamFfi_TO, StreamsEntry, StreamsExtFfi,
};
use crate::model::Event;
use crate::stream::{Exported, StreamRequest};
use crate::Handshake;

/// What a plugin declares; implemented by [`crate::export_plugin!`].
pub trait Plugin: 'static {
    /// The plugin's name (`docker`, `kvm`, `podman`...).
    const NAME: &'static str;
    /// The backend kind it provides (`docker`, `kvm`...).
    const KIND: &'static str;
    /// The plugin's own version.
    const VERSION: &'static str;
    /// Makes one backend. Must not need the backend's daemon to be up: connect lazily,
    /// and answer `BACKEND_UNAVAILABLE` while it is down.
    fn create(ctx: BackendContext) -> Result<Box<dyn Backend>, PluginError>;
}

fn to_json<T: Serialize>(value: &T) -> RString {
    // Serializing our own plain data types to JSON cannot fail (no maps with
    // non-string keys, no failing Serialize impls).
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!("{{\"code\":\"INTERNAL_ERROR\",\"message\":\"{e}\"}}"))
        .into()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[doc(hidden)]
pub extern "C" fn handshake<P: Plugin>() -> RString {
    to_json(&Handshake {
        name: P::NAME.to_owned(),
        kind: P::KIND.to_owned(),
        version: P::VERSION.to_owned(),
        interface_version: crate::INTERFACE_VERSION.to_owned(),
    })
}

#[doc(hidden)]
pub extern "C" fn init<P: Plugin>(logger: HostLoggerBox) {
    // Installing a subscriber cannot panic in a way we could report; guard anyway so
    // nothing unwinds across the boundary.
    let _ = catch_unwind(AssertUnwindSafe(|| crate::log::install(P::NAME, logger)));
}

#[doc(hidden)]
pub extern "C" fn create_backend<P: Plugin>(
    name: RStr<'_>,
    config: RStr<'_>,
    events: EventSinkBox,
) -> RResult<BackendFfiBox, RString> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let config: serde_json::Value = serde_json::from_str(config.as_str())
            .map_err(|e| PluginError::config(format!("config is not valid JSON: {e}")))?;
        let sink = EventSink::from_fn(move |event: &Event| {
            let json = to_json(event);
            events.emit(json.as_rstr());
        });
        let ctx = BackendContext {
            name: name.as_str().to_owned(),
            config,
            events: sink,
        };
        P::create(ctx)
    }));
    match result {
        Ok(Ok(backend)) => {
            let backend: Arc<dyn Backend> = Arc::from(backend);
            lock(&BACKENDS).insert(name.as_str().to_owned(), Arc::downgrade(&backend));
            ROk(BackendFfi_TO::from_value(Dispatcher { backend }, TD_Opaque))
        }
        Ok(Err(e)) => RErr(to_json(&e)),
        Err(panic) => RErr(to_json(&PluginError::internal(format!(
            "plugin {} panicked while creating backend: {}",
            P::NAME,
            panic_message(&*panic)
        )))),
    }
}

/// Turns `(op, payload)` calls into calls of the author's [`Backend`].
struct Dispatcher {
    backend: Arc<dyn Backend>,
}

/// The backends this plugin made, by the host's name (the newest of a name), for the
/// streams extension: its entry names a backend, not a vtable.
static BACKENDS: Mutex<BTreeMap<String, Weak<dyn Backend>>> = Mutex::new(BTreeMap::new());

#[doc(hidden)]
pub extern "C" fn open_stream(
    backend: RStr<'_>,
    request: RStr<'_>,
) -> RResult<StreamFfiBox, RString> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let target = lock(&BACKENDS)
            .get(backend.as_str())
            .and_then(Weak::upgrade);
        let Some(target) = target else {
            return Err(PluginError::unavailable(format!(
                "backend {} is not running in this plugin",
                backend.as_str()
            )));
        };
        let request: StreamRequest = serde_json::from_str(request.as_str())
            .map_err(|e| PluginError::invalid(format!("bad stream request: {e}")))?;
        target.open_stream(request)
    }));
    match result {
        Ok(Ok(stream)) => ROk(StreamFfi_TO::from_value(
            Exported(Arc::new(stream)),
            TD_Opaque,
        )),
        Ok(Err(e)) => RErr(to_json(&e)),
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(panic = %message, "open_stream panicked");
            RErr(to_json(&PluginError::internal(
                "the plugin panicked opening a stream",
            )))
        }
    }
}

/// The streams entry [`crate::export_plugin!`] exports.
#[doc(hidden)]
pub const STREAMS_ENTRY: StreamsEntry = StreamsEntry {
    version: 1,
    layout: <StreamsExtFfi as abi_stable::StableAbi>::LAYOUT,
    ext: StreamsExtFfi { open: open_stream },
};

/// Runs one operation on a backend, as the plugin's dispatcher does (decode, then
/// [`Call::run`]). Public for in-process tests of plugins.
pub fn dispatch(backend: &dyn Backend, op: &str, payload: &str) -> Result<RString, PluginError> {
    Call::decode(op, payload)?.run(backend)
}

impl BackendFfi for Dispatcher {
    fn call(&self, op: RStr<'_>, payload: RStr<'_>) -> RResult<RString, RString> {
        let op = op.as_str();
        match catch_unwind(AssertUnwindSafe(|| {
            dispatch(&*self.backend, op, payload.as_str())
        })) {
            Ok(Ok(json)) => ROk(json),
            Ok(Err(e)) => RErr(to_json(&e)),
            Err(panic) => {
                let message = panic_message(&*panic);
                tracing::error!(op, panic = %message, "operation panicked");
                RErr(to_json(
                    &PluginError::internal(format!("the plugin panicked during {op}"))
                        .with_detail("operation", op),
                ))
            }
        }
    }

    fn shutdown(&self) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.backend.shutdown()));
    }
}

/// Exports a backend plugin. Put it once in the `lib.rs` of a `cdylib` crate.
///
/// ```ignore
/// unicompute_plugin_api::export_plugin! {
///     name: "fake",
///     kind: "fake",
///     version: env!("CARGO_PKG_VERSION"),
///     create: my_backend::FakeBackend::new, // fn(BackendContext) -> Result<FakeBackend, PluginError>
/// }
/// ```
///
/// Every call into the plugin catches panics and returns them as `INTERNAL_ERROR`.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, kind: $kind:expr, version: $version:expr, create: $create:expr $(,)?) => {
        #[doc(hidden)]
        pub struct __UnicomputePlugin;

        impl $crate::export::Plugin for __UnicomputePlugin {
            const NAME: &'static str = $name;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = $version;
            fn create(
                ctx: $crate::BackendContext,
            ) -> ::std::result::Result<::std::boxed::Box<dyn $crate::Backend>, $crate::PluginError>
            {
                let backend = ($create)(ctx)?;
                ::std::result::Result::Ok(::std::boxed::Box::new(backend))
            }
        }

        #[doc(hidden)]
        pub fn __unicompute_root_module() -> $crate::ffi::PluginModRef {
            $crate::export::module::<__UnicomputePlugin>()
        }

        // The streams extension (interface 1.3), an entry of its own: see
        // `unicompute_plugin_api::ffi::StreamsEntry`.
        #[no_mangle]
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        pub static unicompute_streams_v1: $crate::ffi::StreamsEntry = $crate::export::STREAMS_ENTRY;

        // What abi_stable's #[export_root_module] expands to, spelled through our
        // re-export so that plugin crates need no abi_stable dependency of their own.
        // The symbol name is checked by a test in plugin-api.
        #[no_mangle]
        #[doc(hidden)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn __erased_module(
            ) -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    __unicompute_root_module,
                )
            }
            // SAFETY: the constructor returns the PrefixRef of a PluginModRef, as
            // from_constructor requires.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::ffi::PluginModRef,
                >(
                    __erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[doc(hidden)]
pub fn module<P: Plugin>() -> crate::ffi::PluginModRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    crate::ffi::PluginMod {
        handshake: handshake::<P>,
        init: init::<P>,
        create_backend: create_backend::<P>,
    }
    .leak_into_prefix()
}
