//! The kvm backend plugin (in progress).
