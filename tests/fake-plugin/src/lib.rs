//! `fake`: a pretend compute backend with every operation, for tests and as a
//! reference for plugin authors. Its instances are kept as one JSON record each in
//! `state_dir` (see [`store`]); built with the `memory-only` feature it keeps none,
//! and fails the conformance check's durability step.
//!
//! Test hooks, set through labels at create time:
//! - `fake/panic=<op>`: that operation panics inside the plugin;
//! - `fake/ignore-sigterm=true`: a graceful stop waits for the whole timeout;
//! - `fake/vanish-after-ms=<n>`: the instance disappears by itself after n ms, and
//!   the plugin pushes a `vanished` event.
//!
//! Images (interface 1.2), in memory: `pull_image` emits `pull_steps` progress events
//! (`pull_step_bytes` each, `pull_step_ms` apart) for its operation token and stops
//! with `CANCELLED` when `cancel` comes; a reference starting with `missing` is
//! `IMAGE_NOT_FOUND`. Uploads are staged in `upload_dir` (a temp dir when unset) as
//! `.upload-<operation>.part` (the token must be a plain name), limited to
//! `max_upload_bytes`; a commit refuses an empty file or one starting with
//! `not an image` (`INVALID_REQUEST`) and removes it. `delete_image` is `IMAGE_IN_USE`
//! while an instance's `config.image` names the image.
//!
//! Streams (interface 1.3): see [`streams`].
//!
//! Scale: `seed_instances = N` makes N instances in memory at start, not written to
//! `state_dir` (see [`seeded`]), for `tests/benches/scale.rs`.

mod backend;
mod store;
pub mod streams;

pub use backend::{seeded, FakeBackend, FakeConfig};

unicompute_plugin_api::export_plugin! {
    name: "fake",
    kind: "fake",
    version: backend::VERSION,
    create: FakeBackend::new,
}
