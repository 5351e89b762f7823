//! The kvm backend plugin of unicompute: KVM virtual machines as compute instances,
//! through libvirt (the `virt` crate). See the crate's README for its config.

pub mod backend;
pub mod cloud_init;
pub mod config;
pub mod connection;
pub mod error;
mod events;
pub mod stats;
pub mod storage;
pub mod sweep;
pub mod xml;

pub use backend::KvmBackend;
pub use config::KvmConfig;
pub use connection::init_libvirt;

unicompute_plugin_api::export_plugin! {
    name: "kvm",
    kind: "kvm",
    version: env!("CARGO_PKG_VERSION"),
    create: KvmBackend::new,
}
