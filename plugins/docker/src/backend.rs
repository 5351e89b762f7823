//! The Docker backend: [`DockerBackend`], its construction from the host's context and
//! the state its calls share with the background tasks ([`Shared`]), and the
//! [`Backend`] trait, each operation run on the plugin's runtime and delegated to
//! `ops/`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tracing::Instrument;
use unicompute_plugin_api::ByteStream;
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, CreateRequest, EventSink, HostResources, Image,
    Instance, PluginError, PullRequest, StopOptions, StreamRequest, UpdateRequest, UploadRequest,
    UploadTarget, Usage,
};

use crate::client::{self, Engine};
use crate::settings::DockerSettings;
use crate::state::ChangeTimes;
use crate::stats::StatsCache;

type Result<T> = std::result::Result<T, PluginError>;

/// Whether the storage driver enforces `StorageOpt.size`: not known yet.
pub(crate) const QUOTA_UNKNOWN: u8 = 0;
/// It does (a create with a size went through).
pub(crate) const QUOTA_YES: u8 = 1;
/// It does not (the engine refused the size).
pub(crate) const QUOTA_NO: u8 = 2;

/// The Docker backend. Cheap to share: the state lives in an `Arc`.
pub struct DockerBackend {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

/// What the backend's calls and its background tasks share.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) engine: Engine,
    pub(crate) events: EventSink,
    pub(crate) stats: StatsCache,
    /// Instance id to container id, to skip a lookup by label.
    pub(crate) containers: Mutex<HashMap<String, String>>,
    /// The last change made through the API, kept in the state file.
    pub(crate) touched: ChangeTimes,
    pub(crate) host: Mutex<Option<HostResources>>,
    /// The largest `storage.totalSpace` taken (see [`Shared::storage_limit`]).
    pub(crate) storage_cap: Mutex<Option<u64>>,
    pub(crate) storage_quota: AtomicU8,
    /// Engine events that a call in progress causes, by instance id: the event loop
    /// skips them, since the call's result tells the host already.
    pub(crate) expected: Mutex<HashMap<String, Vec<(&'static str, Instant)>>>,
    /// Instance ids of failed creates whose container could not be removed yet (the
    /// engine went away mid-create): never listed, removed when the engine is back.
    pub(crate) abandoned: Mutex<HashMap<String, Instant>>,
    /// Instance ids whose create is under way.
    pub(crate) creating: Mutex<HashSet<String>>,
    /// The pulls under way, by operation token, for `cancel`.
    pub(crate) pulls: crate::ops::Pulls,
    /// How many stream pumps run (see [`DockerBackend::open_streams`]).
    pub(crate) streams: Arc<AtomicUsize>,
}

impl DockerBackend {
    /// Makes a backend from the host's context. Does not need the engine to be up.
    pub fn new(ctx: BackendContext) -> Result<Self> {
        let config: DockerSettings = ctx.parse_config()?;
        let endpoint = config
            .validate()
            .map_err(|e| PluginError::config(format!("backend {}: {e}", ctx.name)))?;
        let rt = client::runtime()?;
        let touched = ChangeTimes::load(&config.state_dir, &ctx.name);
        let shared = Arc::new(Shared {
            name: ctx.name,
            engine: Engine::new(config, endpoint),
            events: ctx.events,
            stats: StatsCache::default(),
            containers: Mutex::default(),
            touched,
            host: Mutex::default(),
            storage_cap: Mutex::default(),
            storage_quota: AtomicU8::new(QUOTA_UNKNOWN),
            expected: Mutex::default(),
            abandoned: Mutex::default(),
            creating: Mutex::default(),
            pulls: Default::default(),
            streams: Arc::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        rt.spawn(crate::events::run(Arc::clone(&shared), rx));
        tracing::info!(backend = %shared.name, "docker backend ready");
        Ok(DockerBackend { shared, shutdown })
    }

    /// How many streams (logs, consoles, execs) still have a pump running: a stream's
    /// pump ends soon after its client drops it, or when the backend shuts down.
    /// For diagnostics and tests.
    pub fn open_streams(&self) -> usize {
        self.shared.streams.load(Ordering::SeqCst)
    }

    /// Runs one operation on the plugin's runtime.
    fn run<T, F, Fut>(&self, op: &'static str, instance: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let span =
            tracing::debug_span!("docker", backend = %self.shared.name, op, instance = %instance);
        let fut = f(Arc::clone(&self.shared));
        client::block_on(
            async move {
                let result = fut.await;
                if let Err(e) = &result {
                    tracing::debug!(code = e.code.as_str(), error = %e, "call failed");
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Docker images come from registries: an upload is `OPERATION_NOT_SUPPORTED`.
fn upload_not_supported(op: &str) -> PluginError {
    PluginError::not_supported(op).with_detail(
        "hint",
        "docker images are pulled from a registry (pull_image), not uploaded",
    )
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.shared.stats.clear();
    }
}

impl Backend for DockerBackend {
    fn describe(&self) -> Result<BackendDescription> {
        self.run(
            "describe",
            String::new(),
            |s| async move { s.describe().await },
        )
    }

    fn health(&self) -> Result<()> {
        self.run("health", String::new(), |s| async move { s.health().await })
    }

    fn host_resources(&self) -> Result<HostResources> {
        self.run("host_resources", String::new(), |s| async move {
            s.host_resources().await
        })
    }

    fn images(&self) -> Result<Vec<Image>> {
        self.run("images", String::new(), |s| async move { s.images().await })
    }

    fn list(&self) -> Result<Vec<Instance>> {
        self.run("list", String::new(), |s| async move { s.list().await })
    }

    fn get(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run("get", id.clone(), |s| async move { s.get(&id).await })
    }

    fn create(&self, request: CreateRequest) -> Result<Instance> {
        self.run("create", request.id.clone(), |s| async move {
            s.create(request).await
        })
    }

    fn update(&self, id: &str, request: UpdateRequest) -> Result<Instance> {
        let id = id.to_owned();
        self.run("update", id.clone(), |s| async move {
            s.update(&id, request).await
        })
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let id = id.to_owned();
        self.run("delete", id.clone(), |s| async move {
            s.delete(&id, force).await
        })
    }

    fn start(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run("start", id.clone(), |s| async move { s.start(&id).await })
    }

    fn stop(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let id = id.to_owned();
        self.run(
            "stop",
            id.clone(),
            |s| async move { s.stop(&id, options).await },
        )
    }

    fn restart(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let id = id.to_owned();
        self.run("restart", id.clone(), |s| async move {
            s.restart(&id, options).await
        })
    }

    fn pause(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run("pause", id.clone(), |s| async move { s.pause(&id).await })
    }

    fn unpause(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.run(
            "unpause",
            id.clone(),
            |s| async move { s.unpause(&id).await },
        )
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        // The fast path needs no trip through the runtime.
        if let Some(u) = self.shared.stats.fresh(id) {
            return Ok(u);
        }
        let id = id.to_owned();
        self.run("usage", id.clone(), |s| async move { s.usage(&id).await })
    }

    fn pull_image(&self, request: PullRequest) -> Result<Image> {
        self.run("pull_image", String::new(), |s| async move {
            s.pull_image(request).await
        })
    }

    fn delete_image(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.run("delete_image", String::new(), |s| async move {
            s.delete_image(&name).await
        })
    }

    fn upload_begin(&self, _request: UploadRequest) -> Result<UploadTarget> {
        Err(upload_not_supported("upload_begin"))
    }

    fn upload_commit(&self, _request: UploadRequest) -> Result<Image> {
        Err(upload_not_supported("upload_commit"))
    }

    fn upload_abort(&self, _request: UploadRequest) -> Result<()> {
        Err(upload_not_supported("upload_abort"))
    }

    fn cancel(&self, operation: &str) -> Result<bool> {
        // Pulls are the only long work that stops half-way without leaving a trace.
        Ok(self.shared.pulls.cancel(operation))
    }

    fn open_stream(&self, request: StreamRequest) -> Result<ByteStream> {
        let stop = self.shutdown.subscribe();
        self.run(request.kind.name(), request.id.clone(), |s| async move {
            s.open_stream(request, stop).await
        })
    }

    fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.shared.stats.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicompute_plugin_api::ErrorCode;

    #[test]
    fn a_backend_is_made_with_the_engine_down() {
        let ctx = BackendContext {
            name: "docker-down".into(),
            config: serde_json::json!({"endpoint": "unix:///nonexistent/docker.sock"}),
            events: EventSink::discard(),
        };
        let b = DockerBackend::new(ctx).unwrap();
        // How fast: measured in the bench (`examples/bench.rs`), not asserted here.
        let e = b.list().unwrap_err();
        assert_eq!(e.code, ErrorCode::BackendUnavailable);
        let e = b.get("i-1").unwrap_err();
        assert_eq!(e.code, ErrorCode::BackendUnavailable);
        assert_eq!(b.health().unwrap_err().code, ErrorCode::BackendUnavailable);
        b.shutdown();
    }

    #[test]
    fn missing_tls_files_fail_calls_not_the_backend() {
        let ctx = BackendContext {
            name: "docker-tls".into(),
            config: serde_json::json!({
                "endpoint": "tcp://127.0.0.1:9",
                "tls": {"ca": "/nonexistent/ca.pem", "cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}
            }),
            events: EventSink::discard(),
        };
        let b = DockerBackend::new(ctx).unwrap();
        let e = b.health().unwrap_err();
        assert_eq!(e.code, ErrorCode::BackendError, "{e:?}");
        assert!(!e.message.contains("/nonexistent"), "{}", e.message);
        b.shutdown();
    }

    #[test]
    fn events_of_our_own_calls_are_skipped_once_and_only_in_order() {
        let b = DockerBackend::new(BackendContext {
            name: "docker-expect".into(),
            config: serde_json::json!({"endpoint": "unix:///nonexistent/docker.sock"}),
            events: EventSink::discard(),
        })
        .unwrap();
        let s = &b.shared;
        s.expect("i-1", &["create", "start"]);
        assert!(s.expected_event("i-1", "create"));
        assert!(s.expected_event("i-1", "start"));
        // Consumed: the next one is someone else's.
        assert!(!s.expected_event("i-1", "start"));
        // Something unexpected drops what was still expected.
        s.expect("i-1", &["start"]);
        assert!(!s.expected_event("i-1", "die"));
        assert!(!s.expected_event("i-1", "start"));
        assert!(!s.expected_event("i-2", "start"));
        s.expect("i-3", &["pause"]);
        s.unexpect("i-3");
        assert!(!s.expected_event("i-3", "pause"));
        b.shutdown();
    }

    #[test]
    fn bad_config_is_refused_at_create() {
        let ctx = BackendContext {
            name: "docker".into(),
            config: serde_json::json!({"endpoint": "ftp://x"}),
            events: EventSink::discard(),
        };
        let e = DockerBackend::new(ctx).err().unwrap();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
    }
}
