//! Plugins: finding and loading plugin files, and the registry of configured backends.

pub mod loader;
pub mod registry;
