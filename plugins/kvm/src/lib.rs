//! The kvm backend plugin of unicompute: KVM virtual machines as compute instances,
//! through libvirt (the `virt` crate).

pub mod config;
pub mod error;
pub mod xml;
