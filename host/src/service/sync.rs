//! Keeping the inventory in step with the backends: health checks, full resyncs,
//! the plugins' events, and the maintenance loop that runs them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{Backend, Event, EventSink, Instance};

use super::{call, Service};
use crate::events::{Kind, Source};
use crate::plugins::registry::BackendEntry;

impl Service {
    /// The event sink factory for [`Registry::build`]: events go into `tx`.
    pub fn event_sink(tx: mpsc::UnboundedSender<(String, Event)>) -> impl Fn(&str) -> EventSink {
        move |backend: &str| {
            let tx = tx.clone();
            let backend = backend.to_owned();
            EventSink::from_fn(move |ev: &Event| {
                let _ = tx.send((backend.clone(), ev.clone()));
            })
        }
    }

    /// Checks one backend's health; on a change to healthy, reads its capacity and
    /// description. Returns whether it is available.
    pub async fn check(&self, entry: &Arc<BackendEntry>, backend: &Arc<dyn Backend>) -> bool {
        let was = entry.health();
        let result = call(entry, "health", backend, |b| b.health()).await;
        let now = Some(Utc::now());
        match result {
            Ok(()) => {
                let refresh = !was.available || was.host.is_none() || was.description.is_none();
                let (host, description) = if refresh {
                    (
                        call(entry, "host_resources", backend, |b| b.host_resources())
                            .await
                            .ok(),
                        call(entry, "describe", backend, |b| b.describe())
                            .await
                            .ok(),
                    )
                } else {
                    (was.host.clone(), was.description.clone())
                };
                entry.set_health(|h| {
                    h.available = true;
                    h.reason = None;
                    h.last_check = now;
                    h.host = host.or(h.host.take());
                    h.description = description.or(h.description.take());
                });
                if !was.available {
                    tracing::info!(backend = %entry.name, "backend available");
                    self.backend_event(Kind::BackendAvailable, &entry.name, None);
                }
                true
            }
            Err(e) => {
                if was.available || was.last_check.is_none() {
                    tracing::warn!(backend = %entry.name, reason = %e.message, "backend unavailable");
                    self.backend_event(
                        Kind::BackendUnavailable,
                        &entry.name,
                        Some(e.message.clone()),
                    );
                }
                entry.set_health(|h| {
                    h.available = false;
                    h.reason = Some(e.message);
                    h.last_check = now;
                });
                false
            }
        }
    }

    /// Reads every instance of one backend into the inventory.
    pub async fn resync(&self, entry: &Arc<BackendEntry>, backend: &Arc<dyn Backend>) {
        let since = self.inventory.seq();
        match call(entry, "list", backend, |b| b.list()).await {
            Ok(list) => {
                let list: Vec<Instance> = list.into_iter().map(|i| self.adopt(entry, i)).collect();
                let busy: BTreeSet<String> = lock(&self.busy).keys().cloned().collect();
                tracing::debug!(backend = %entry.name, instances = list.len(), "resynced");
                self.inventory
                    .replace_backend(&entry.name, list, &busy, since);
            }
            Err(e) => {
                let _ = self.fail(entry, e);
            }
        }
    }

    /// Checks and resyncs every live backend, at most `limit` each.
    pub async fn sync_all(self: &Arc<Self>, limit: Duration) {
        let mut tasks = Vec::new();
        for (entry, backend) in self.registry().live() {
            let (svc, entry, backend) = (Arc::clone(self), Arc::clone(entry), Arc::clone(backend));
            tasks.push(tokio::spawn(async move {
                let work = async {
                    if svc.check(&entry, &backend).await {
                        svc.resync(&entry, &backend).await;
                    }
                };
                if tokio::time::timeout(limit, work).await.is_err() {
                    tracing::warn!(backend = %entry.name, "backend did not answer in time at sync");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Applies plugin events to the inventory until the channel closes.
    pub async fn run_events(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, Event)>) {
        while let Some((backend, event)) = rx.recv().await {
            match event {
                Event::Changed { instance } => {
                    let Some(entry) = self.registry().get(&backend) else {
                        continue;
                    };
                    let inst = self.adopt(&entry, *instance);
                    tracing::debug!(backend = %backend, instance = %inst.id, state = inst.state.as_str(), "event: changed");
                    if self.inventory.upsert_reported(inst).is_none() {
                        tracing::debug!(backend = %backend, "event about a removed instance ignored");
                    }
                }
                Event::Vanished { id } => {
                    if self
                        .inventory
                        .get(&id)
                        .is_some_and(|i| i.backend == backend)
                    {
                        tracing::info!(backend = %backend, instance = %id, "event: vanished");
                        self.inventory.remove(&id, Source::Backend);
                    }
                }
                Event::Resync => {
                    if let Some(entry) = self.registry().get(&backend) {
                        if let Some(b) = entry.backend.clone() {
                            let svc = Arc::clone(&self);
                            tokio::spawn(async move { svc.resync(&entry, &b).await });
                        }
                    }
                }
                // A marker of `events_applied`: what came before it is applied.
                Event::Progress { operation, .. }
                    if lock(&self.barriers).contains_key(&operation) =>
                {
                    if let Some(done) = lock(&self.barriers).remove(&operation) {
                        let _ = done.send(());
                    }
                }
                // Progress of an operation: the operation's, and an event.
                Event::Progress {
                    operation,
                    progress,
                } => self.operation_progress(
                    &operation,
                    super::Progress {
                        stage: progress.stage,
                        percent: progress.percent,
                        bytes_done: progress.bytes_done,
                        bytes_total: progress.bytes_total,
                    },
                ),
            }
        }
    }

    /// Waits (at most `limit`) until the plugin events sent before this call have
    /// been applied: the progress a backend reported before its call returned is then
    /// the operation's before the operation ends (an operation that has ended takes no
    /// more progress).
    pub(super) async fn events_applied(&self, limit: Duration) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // No operation id holds a NUL.
        let key = format!(
            "\0barrier-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.barriers).insert(key.clone(), tx);
        let marker = Event::Progress {
            operation: key.clone(),
            progress: Default::default(),
        };
        if self.events.send((String::new(), marker)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        lock(&self.barriers).remove(&key);
    }

    /// Health checks and resyncs, forever.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut last_resync = tokio::time::Instant::now();
        loop {
            // Read each round, so that a reload changes them.
            let server = self.config().server.clone();
            let health = Duration::from_secs(server.health_interval_secs.max(1));
            let resync = Duration::from_secs(server.resync_interval_secs.max(1));
            tokio::time::sleep(health).await;
            let full = last_resync.elapsed() >= resync;
            if full {
                last_resync = tokio::time::Instant::now();
            }
            for (entry, backend) in self.registry().live() {
                let (svc, entry, backend) =
                    (Arc::clone(&self), Arc::clone(entry), Arc::clone(backend));
                tokio::spawn(async move {
                    let was = entry.health().available;
                    let now = svc.check(&entry, &backend).await;
                    if now && (full || !was) {
                        svc.resync(&entry, &backend).await;
                    }
                });
            }
        }
    }
}
