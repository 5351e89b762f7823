//! The kvm backend plugin of unicompute: KVM virtual machines as compute instances,
//! through libvirt (the `virt` crate). See the crate's README for its config and
//! for what each module holds.

pub mod backend;
pub mod client;
pub mod cloud_init;
pub mod console_log;
pub mod error;
mod events;
mod ops;
mod record;
pub mod settings;
pub mod spec;
pub mod stats;
pub mod storage;
pub mod sweep;
pub mod xml;

pub use backend::KvmBackend;
pub use client::init_libvirt;
pub use settings::KvmConfig;

unicompute_plugin_api::export_plugin! {
    name: "kvm",
    kind: "kvm",
    version: env!("CARGO_PKG_VERSION"),
    create: KvmBackend::new,
}
