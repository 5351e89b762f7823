//! `process`: an example unicompute backend that runs host programs as instances.
//!
//! An instance is one process: `config.image` names a program from the backend's
//! `programs` setting, `config.args` its arguments. Start spawns it, stop sends
//! SIGTERM and SIGKILL at the timeout, pause and unpause send SIGSTOP and SIGCONT,
//! usage reads `/proc`. Each instance is kept as a JSON record (the `Instance` itself,
//! which is serde-serializable, with its program) in `state_dir`, written atomically,
//! so that a reload or a restart of the server finds it again; its process does not
//! outlive the backend (`shutdown` ends it), so it comes back `stopped`. A backend
//! over a daemon keeps its records in the daemon instead, as the Docker (container
//! labels) and KVM (domain metadata) ones do.
//!
//! Settings (`[backends.NAME]`):
//! ```toml
//! plugin = "process"
//! programs = ["sleep"]                          # what `config.image` may name (looked up in PATH)
//! state_dir = "/var/lib/unicompute/process"     # where the records are kept
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
