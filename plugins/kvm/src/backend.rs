//! The kvm backend: its state ([`Inner`], shared with the event worker), its
//! construction from the host's context, and the [`Backend`] implementation, which
//! opens a span per call and hands each operation to `crate::ops`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use unicompute_plugin_api::stream::{ByteStream, StreamRequest};
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, CreateRequest, EventSink, HostResources, Image,
    Instance, PluginError, PullRequest, StopOptions, UpdateRequest, UploadRequest, UploadTarget,
    Usage,
};
use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use crate::client::Connection;
use crate::error::Result;
use crate::ops::{Cancels, Creating};
use crate::record::Ids;
use crate::settings::KvmConfig;
use crate::stats::CpuSamples;
use crate::storage::KnownPool;

/// The kvm backend.
pub struct KvmBackend {
    inner: Arc<Inner>,
}

/// What the backend, its event worker and its stats share.
pub(crate) struct Inner {
    pub name: String,
    pub config: KvmConfig,
    pub domain_type: String,
    pub conn: Connection,
    pub sink: EventSink,
    /// Our id -> libvirt UUID, so a lookup needs no scan of every domain.
    pub ids: Ids,
    pub cpu: CpuSamples,
    /// The storage pool, as last made sure of.
    pub known_pool: KnownPool,
    /// Ids whose create runs now in this process: the orphan sweep leaves their
    /// files alone.
    pub creating: Creating,
    /// The cancel flags of raw disk copies under an operation token.
    pub(crate) cancels: Cancels,
    pub stopping: AtomicBool,
}

impl KvmBackend {
    /// Makes a backend from the host's context. Does not connect: libvirtd may be down.
    pub fn new(ctx: BackendContext) -> std::result::Result<Self, PluginError> {
        let config: KvmConfig = ctx.parse_config()?;
        config.validate(&ctx.name)?;
        let domain_type = config.resolved_domain_type();
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            name: ctx.name.clone(),
            conn: Connection::new(&config.uri, tx),
            domain_type,
            config,
            sink: ctx.events,
            ids: Ids::default(),
            cpu: CpuSamples::default(),
            known_pool: KnownPool::default(),
            creating: Creating::default(),
            cancels: Cancels::default(),
            stopping: AtomicBool::new(false),
        });
        crate::events::spawn_worker(Arc::downgrade(&inner), rx).map_err(|e| {
            PluginError::internal(format!("cannot start the kvm event worker: {e}"))
        })?;
        tracing::info!(backend = %ctx.name, uri = %inner.config.uri, domain_type = %inner.domain_type, "kvm backend ready");
        Ok(KvmBackend { inner })
    }

    /// The span of an operation on one instance.
    fn span(&self, op: &'static str, id: &str) -> tracing::span::EnteredSpan {
        tracing::info_span!("kvm", backend = %self.inner.name, op, instance = %id).entered()
    }
}

impl Inner {
    /// The live connection to libvirt (see [`Connection::get`]).
    pub fn connect(&self) -> Result<Connect> {
        self.conn.get()
    }

    /// The instance pool and its directory (which is `storage_dir` unless the pool
    /// existed before with another one).
    pub(crate) fn pool(&self, conn: &Connect) -> Result<(StoragePool, PathBuf)> {
        self.known_pool.get(
            conn,
            self.conn.generation(),
            &self.config.storage_pool,
            &self.config.storage_dir,
        )
    }

    /// Sweeps orphaned volumes, logging rather than failing.
    pub(crate) fn sweep(&self, conn: &Connect) {
        if let Err(e) = self.sweep_orphans(conn) {
            tracing::debug!(backend = %self.name, error = %e, "orphan sweep skipped");
        }
    }
}

impl Backend for KvmBackend {
    fn describe(&self) -> std::result::Result<BackendDescription, PluginError> {
        Ok(self.inner.describe()?)
    }

    fn health(&self) -> std::result::Result<(), PluginError> {
        Ok(self.inner.health()?)
    }

    fn host_resources(&self) -> std::result::Result<HostResources, PluginError> {
        Ok(self.inner.host_resources()?)
    }

    fn images(&self) -> std::result::Result<Vec<Image>, PluginError> {
        Ok(self.inner.images()?)
    }

    fn list(&self) -> std::result::Result<Vec<Instance>, PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "list").entered();
        Ok(self.inner.list()?)
    }

    fn get(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("get", id);
        Ok(self.inner.get(id)?)
    }

    fn create(&self, request: CreateRequest) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("create", &request.id);
        Ok(self.inner.create(request)?)
    }

    fn update(
        &self,
        id: &str,
        request: UpdateRequest,
    ) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("update", id);
        Ok(self.inner.update(id, request)?)
    }

    fn delete(&self, id: &str, force: bool) -> std::result::Result<(), PluginError> {
        let _span = self.span("delete", id);
        Ok(self.inner.delete(id, force)?)
    }

    fn start(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("start", id);
        Ok(self.inner.start(id)?)
    }

    fn stop(&self, id: &str, options: StopOptions) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("stop", id);
        Ok(self.inner.stop(id, options)?)
    }

    fn restart(
        &self,
        id: &str,
        options: StopOptions,
    ) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("restart", id);
        Ok(self.inner.restart(id, options)?)
    }

    fn pause(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("pause", id);
        Ok(self.inner.pause(id)?)
    }

    fn unpause(&self, id: &str) -> std::result::Result<Instance, PluginError> {
        let _span = self.span("unpause", id);
        Ok(self.inner.unpause(id)?)
    }

    fn usage(&self, id: &str) -> std::result::Result<Usage, PluginError> {
        let _span = self.span("usage", id);
        Ok(self.inner.usage(id)?)
    }

    fn pull_image(&self, _request: PullRequest) -> std::result::Result<Image, PluginError> {
        // Templates come by upload: there is no registry to pull from.
        Err(PluginError::not_supported("pull_image").with_detail(
            "hint",
            "kvm templates are uploaded (upload_begin, upload_commit), not pulled",
        ))
    }

    fn delete_image(&self, name: &str) -> std::result::Result<(), PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "delete_image", template = %name).entered();
        Ok(self.inner.delete_image(name)?)
    }

    fn upload_begin(
        &self,
        request: UploadRequest,
    ) -> std::result::Result<UploadTarget, PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "upload_begin", template = %request.name).entered();
        Ok(self.inner.upload_begin(&request)?)
    }

    fn upload_commit(&self, request: UploadRequest) -> std::result::Result<Image, PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "upload_commit", template = %request.name).entered();
        Ok(self.inner.upload_commit(&request)?)
    }

    fn upload_abort(&self, request: UploadRequest) -> std::result::Result<(), PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "upload_abort", template = %request.name).entered();
        Ok(self.inner.upload_abort(&request)?)
    }

    fn cancel(&self, operation: &str) -> std::result::Result<bool, PluginError> {
        let cancelled = self.inner.cancels.cancel(operation);
        if cancelled {
            tracing::info!(backend = %self.inner.name, operation, "disk copy cancelled");
        }
        Ok(cancelled)
    }

    fn open_stream(&self, request: StreamRequest) -> std::result::Result<ByteStream, PluginError> {
        let _span = tracing::info_span!("kvm", backend = %self.inner.name, op = "open_stream", stream = request.kind.name(), instance = %request.id).entered();
        self.inner.open_stream(request)
    }

    fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.conn.close();
    }
}

impl Drop for KvmBackend {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }
}
