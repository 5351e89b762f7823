//! `process`: an example unicompute backend that runs host programs as instances.
//!
//! An instance is one process: `config.image` names a program from the backend's
//! `programs` setting, `config.args` its arguments. Start spawns it, stop sends
//! SIGTERM and SIGKILL at the timeout, pause and unpause send SIGSTOP and SIGCONT,
//! usage reads `/proc`. Instances live in memory only: they are gone when the server
//! restarts (a real backend keeps them in its daemon, as the Docker and KVM ones do).
//!
//! Settings (`[backends.NAME]`):
//! ```toml
//! plugin = "process"
//! programs = ["sleep"]   # what `config.image` may name (looked up in PATH)
//! ```

mod backend;

pub use backend::ProcessBackend;

#[cfg(not(feature = "v2"))]
const VERSION: &str = "0.1.0";
#[cfg(feature = "v2")]
const VERSION: &str = "0.2.0";

// One macro exports the plugin: its name (used by `plugin = "..."` in the config),
// its kind, its version, and the function that makes a backend from its settings.
unicompute_plugin_api::export_plugin! {
    name: "process",
    kind: "process",
    version: VERSION,
    create: ProcessBackend::new,
}
