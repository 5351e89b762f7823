//! The unicompute host: config, plugin loading, the backend registry, the inventory,
//! the service (what each operation means) and the HTTP API. The binary
//! `unicompute` (`main.rs`) wires these together.

pub mod api;
pub mod check;
pub mod config;
pub mod events;
pub mod inventory;
pub mod memory;
pub mod metrics;
pub mod plugins;
pub mod service;
pub mod ui;
