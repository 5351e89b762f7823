//! `docker`: the Docker backend plugin of unicompute. Docker containers become compute
//! instances, through the engine's API (bollard), on the plugin's own tokio runtime.
//!
//! See the crate's README for its settings and the state table.

pub mod backend;
pub mod cgroup;
mod client;
pub mod error;
mod events;
mod ops;
pub mod pin;
pub mod record;
pub mod settings;
pub mod spec;
pub mod state;
pub mod stats;

pub use backend::DockerBackend;

unicompute_plugin_api::export_plugin! {
    name: "docker",
    kind: "docker",
    version: env!("CARGO_PKG_VERSION"),
    create: DockerBackend::new,
}
