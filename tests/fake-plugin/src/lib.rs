//! `fake`: an in-memory compute backend with every operation, for tests and as a
//! reference for plugin authors.
//!
//! Test hooks, set through labels at create time:
//! - `fake/panic=<op>`: that operation panics inside the plugin;
//! - `fake/ignore-sigterm=true`: a graceful stop waits for the whole timeout;
//! - `fake/vanish-after-ms=<n>`: the instance disappears by itself after n ms, and
//!   the plugin pushes a `vanished` event.

mod backend;

pub use backend::{FakeBackend, FakeConfig};

unicompute_plugin_api::export_plugin! {
    name: "fake",
    kind: "fake",
    version: backend::VERSION,
    create: FakeBackend::new,
}
