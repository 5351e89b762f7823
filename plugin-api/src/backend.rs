//! The trait a plugin author implements, and what the host hands a backend.

use crate::error::PluginError;
use crate::model::{
    BackendDescription, CreateRequest, Event, HostResources, Image, Instance, PullRequest,
    StopOptions, UpdateRequest, UploadRequest, UploadTarget, Usage,
};
use crate::stream::{ByteStream, StreamRequest};

/// The result of a backend operation.
pub type Result<T> = std::result::Result<T, PluginError>;

/// A compute backend: the one trait a plugin implements.
///
/// Calls are synchronous and may block: the host runs them on a blocking thread pool,
/// many at once, so an implementation must be thread-safe. A plugin that needs async
/// I/O owns its runtime (for example a static tokio runtime) and blocks on it here.
///
/// The host serializes operations on one instance, enforces the state rules of the
/// contract before calling (delete of a running instance without force, pause of a
/// stopped one) and keeps the inventory. The backend must still be idempotent: `start`
/// of a running instance and `stop` of a stopped one succeed and change nothing.
///
/// Every method that returns an [`Instance`] returns it as it is after the operation.
///
/// No method has a default (but [`Backend::open_stream`] and [`Backend::shutdown`]): each is one operation of the
/// plugin interface ([`crate::call::Call`]), and the host's side of the boundary
/// must send every one of them.
pub trait Backend: Send + Sync + 'static {
    /// Versions and capabilities of the backend.
    fn describe(&self) -> Result<BackendDescription>;

    /// `Ok` when the backend's daemon answers; `BACKEND_UNAVAILABLE` otherwise.
    fn health(&self) -> Result<()>;

    /// Capacity of the host (CPUs, memory).
    fn host_resources(&self) -> Result<HostResources>;

    /// Images or templates the backend can create from.
    fn images(&self) -> Result<Vec<Image>>;

    /// Every instance this backend manages (and nothing it does not).
    fn list(&self) -> Result<Vec<Instance>>;

    /// One instance by the host's id; `INSTANCE_NOT_FOUND` if there is none.
    fn get(&self, id: &str) -> Result<Instance>;

    /// Creates an instance with the host's id and name; starts it when asked. A
    /// failed create leaves nothing behind.
    fn create(&self, request: CreateRequest) -> Result<Instance>;

    /// Changes resources: live where possible, always for the next start. What only
    /// takes effect at the next start is reported in `pendingResources`.
    fn update(&self, id: &str, request: UpdateRequest) -> Result<Instance>;

    /// Removes the instance and everything that belongs to it (disks, seeds). With
    /// `force`, stops it hard first.
    fn delete(&self, id: &str, force: bool) -> Result<()>;

    /// Starts the instance.
    fn start(&self, id: &str) -> Result<Instance>;

    /// Stops the instance: gracefully, then hard when the timeout passes; hard at once
    /// with `force`.
    fn stop(&self, id: &str, options: StopOptions) -> Result<Instance>;

    /// Stops (as [`Backend::stop`]) and starts the instance.
    fn restart(&self, id: &str, options: StopOptions) -> Result<Instance>;

    /// Freezes the instance. A backend that cannot answers
    /// `Err(PluginError::not_supported("pause"))`.
    fn pause(&self, id: &str) -> Result<Instance>;

    /// Thaws the instance. A backend that cannot answers
    /// `Err(PluginError::not_supported("unpause"))`.
    fn unpause(&self, id: &str) -> Result<Instance>;

    /// Resource usage now.
    fn usage(&self, id: &str) -> Result<Usage>;

    /// Pulls an image (1.2) and answers it as [`Backend::images`] lists it. Blocks
    /// until the pull ends; reports [`Event::Progress`] for `request.operation`
    /// through the backend's [`EventSink`] as it goes, and fails with `CANCELLED`
    /// when [`Backend::cancel`] stops it (leaving no image). A backend without
    /// pulls answers `Err(PluginError::not_supported("pull_image"))`.
    fn pull_image(&self, request: PullRequest) -> Result<Image>;

    /// Removes an image or template (1.2): `IMAGE_NOT_FOUND` when there is none,
    /// `IMAGE_IN_USE` while an instance of this backend uses it.
    fn delete_image(&self, name: &str) -> Result<()>;

    /// Starts an upload (1.2): checks the name (`IMAGE_ALREADY_EXISTS` when taken)
    /// and answers where the host writes the bytes (a new file it creates with
    /// `O_EXCL`, invisible to [`Backend::images`]) and how many it may write.
    fn upload_begin(&self, request: UploadRequest) -> Result<UploadTarget>;

    /// Ends an upload (1.2): validates the staged file and makes it an image
    /// atomically, never replacing one; on any error removes the staged file.
    fn upload_commit(&self, request: UploadRequest) -> Result<Image>;

    /// Drops an upload (1.2): removes the staged file. Idempotent.
    fn upload_abort(&self, request: UploadRequest) -> Result<()>;

    /// Stops the running work of an operation token (1.2): `true` when work ran under
    /// it and was told to stop (that call then fails with `CANCELLED`), `false` when
    /// nothing cancellable runs under it.
    fn cancel(&self, operation: &str) -> Result<bool>;

    /// Opens a byte stream on an instance (1.3): its logs, its console or a command run
    /// in it (see [`crate::stream`]). Answers quickly: the work of the stream runs in
    /// the plugin's own task or thread, pumping the [`crate::StreamEnd`] of a
    /// [`crate::stream::channel`]. `INSTANCE_NOT_FOUND` for an unknown instance,
    /// `INVALID_STATE` when the stream needs a running instance and it is not,
    /// `OPERATION_NOT_SUPPORTED` (the default) for a stream the backend does not offer.
    fn open_stream(&self, request: StreamRequest) -> Result<ByteStream> {
        Err(PluginError::not_supported(request.kind.name()))
    }

    /// Called once when the host drops the backend (config reload, shutdown). Stop
    /// background work here.
    fn shutdown(&self) {}
}

/// Sends events to the host's inventory. Cheap to clone; safe from any thread.
#[derive(Clone)]
pub struct EventSink {
    pub(crate) inner: std::sync::Arc<dyn Fn(&Event) + Send + Sync>,
}

impl EventSink {
    /// A sink calling `f` for every event (for tests and in-process use).
    pub fn from_fn(f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        EventSink {
            inner: std::sync::Arc::new(f),
        }
    }

    /// A sink dropping everything.
    pub fn discard() -> Self {
        Self::from_fn(|_| {})
    }

    /// Tells the host about an instance that changed, appeared or vanished.
    pub fn emit(&self, event: &Event) {
        (self.inner)(event)
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

/// What the host hands a plugin to make a backend.
#[derive(Debug, Clone)]
pub struct BackendContext {
    /// The backend's name in the host's config (`docker`, `kvm`, `docker-remote`...).
    pub name: String,
    /// The backend's table of the config, less `plugin` and `enabled`.
    pub config: serde_json::Value,
    /// Where to push events.
    pub events: EventSink,
}

impl BackendContext {
    /// Reads the config table into the plugin's own config type. Use
    /// `#[serde(deny_unknown_fields)]` on it so a mistyped key is an error that names it.
    pub fn parse_config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let value = if self.config.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            self.config.clone()
        };
        serde_json::from_value(value)
            .map_err(|e| PluginError::config(format!("backend {}: {e}", self.name)))
    }
}
