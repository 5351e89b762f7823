//! Reloading: the config and the plugin directories read again (SIGHUP, the reload
//! endpoint) or only the plugin directories (the watch), and what each backend
//! becomes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use unicompute_plugin_api::sync::{lock, write};

use super::{Error, Service, StartError};
use crate::config::Config;
use crate::events::{Kind, Source, Subject};
use crate::plugins::loader;
use crate::plugins::registry::Registry;

/// What a reload did to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Same settings and plugin: the same live backend, untouched.
    Kept,
    /// Enabled now, not there before.
    Started,
    /// Enabled before and now, with other settings or another plugin load.
    Restarted,
    /// Running before, disabled now.
    Stopped,
    /// Not running before or after.
    Disabled,
    /// Gone from the config.
    Removed,
}

impl Verdict {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::Started => "started",
            Verdict::Restarted => "restarted",
            Verdict::Stopped => "stopped",
            Verdict::Disabled => "disabled",
            Verdict::Removed => "removed",
        }
    }

    /// The verdict for a backend that was enabled or not (`None`: not configured)
    /// before and after, `kept` when the same live object carries on.
    pub fn of(before: Option<bool>, after: Option<bool>, kept: bool) -> Verdict {
        match (before, after) {
            _ if kept => Verdict::Kept,
            (Some(_), None) => Verdict::Removed,
            (Some(_), Some(true)) => Verdict::Restarted,
            (None, Some(true)) => Verdict::Started,
            (Some(true), Some(false)) => Verdict::Stopped,
            (Some(false), Some(false)) | (None, Some(false)) | (None, None) => Verdict::Disabled,
        }
    }
}

/// What a reload did: the plugin files and what loading them gave, and each
/// backend's [`Verdict`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Plugin files and what loading them gave.
    pub plugins: Vec<PluginFileReport>,
    /// Backends and what happened to them.
    pub backends: BTreeMap<String, Verdict>,
}

/// One plugin file in a [`ReloadReport`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginFileReport {
    /// The file.
    pub file: String,
    /// The plugin name and version, when loaded.
    pub plugin: Option<String>,
    /// Why skipped.
    pub skipped: Option<String>,
}

impl Service {
    /// Publishes what a rescan did to each plugin file, against the `previous` scan.
    fn plugin_events(&self, previous: &[loader::ScanEntry]) {
        let now = lock(&self.scanned).clone();
        let name = |e: &loader::ScanEntry| {
            e.outcome
                .as_ref()
                .ok()
                .map(|p| format!("{} {}", p.handshake.name, p.handshake.version))
        };
        for e in &now {
            let before = previous.iter().find(|p| p.path == e.path);
            let loaded_before = before.is_some_and(|b| b.outcome.is_ok());
            let kind = match (&e.outcome, before) {
                (Ok(_), None) => Kind::PluginLoaded,
                (Ok(_), Some(b)) if b.load_id != e.load_id => match loaded_before {
                    true => Kind::PluginReplaced,
                    false => Kind::PluginLoaded,
                },
                (Err(_), Some(_)) if loaded_before => Kind::PluginDropped,
                _ => continue,
            };
            self.hub.publish(
                kind,
                None,
                None,
                Source::Backend,
                Subject::Plugin {
                    file: e.path.display().to_string(),
                    plugin: name(e),
                    reason: e.outcome.as_ref().err().cloned(),
                },
            );
        }
        for b in previous {
            if b.outcome.is_ok() && !now.iter().any(|e| e.path == b.path) {
                self.hub.publish(
                    Kind::PluginDropped,
                    None,
                    None,
                    Source::Backend,
                    Subject::Plugin {
                        file: b.path.display().to_string(),
                        plugin: name(b),
                        reason: Some("the file is gone".into()),
                    },
                );
            }
        }
    }

    /// Re-reads the config file (and environment), loads new or changed plugin files,
    /// and swaps in the new set of backends. Backends whose settings and plugin are
    /// unchanged are kept as they are; requests in flight finish on the backend they
    /// started on. On an invalid config nothing changes.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadReport, Error> {
        let result = self.reload_with(true).await.map_err(|e| {
            tracing::warn!(error = %e, "reload refused; the running config is kept");
            Error::ReloadRefused(e.to_string())
        });
        // What the old plugins and config held is freed: give it back to the system.
        crate::memory::release_freed();
        result
    }

    /// As [`Service::reload`], with the configuration in force: only the plugin files
    /// are looked at again (what the directory watch does).
    pub async fn reload_plugins(self: &Arc<Self>) -> Result<ReloadReport, StartError> {
        self.reload_with(false).await
    }

    /// Watches the plugin directories every `plugins.watch_interval_secs` (read anew
    /// each round, so a reload can change it; `0` pauses the watch). A `*.so` file
    /// added, replaced or removed is acted on once it has stayed the same for one more round,
    /// so that a file still being written is not loaded half-made.
    pub async fn watch_plugins(self: Arc<Self>) {
        let mut pending: Option<Vec<loader::Fingerprinted>> = None;
        // A listing whose reload failed (a plugin refused the settings in force) is
        // not tried again until the directory changes: no reload loop, no new copy of
        // the same library every round.
        let mut failed: Option<Vec<loader::Fingerprinted>> = None;
        loop {
            let config = self.config();
            let secs = config.plugins.watch_interval_secs;
            tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
            if secs == 0 {
                pending = None;
                continue;
            }
            let dirs = config.plugins.dirs.clone();
            // Only `*.so` files count: a build's target directory changes all the time.
            let Ok(now) = tokio::task::spawn_blocking(move || {
                let mut files = loader::listing(&dirs);
                files.retain(|(p, _)| loader::is_plugin_file(p));
                files
            })
            .await
            else {
                continue;
            };
            let known: Vec<loader::Fingerprinted> = lock(&self.scanned)
                .iter()
                .filter(|e| loader::is_plugin_file(&e.path))
                .map(|e| (e.path.clone(), e.fingerprint))
                .collect();
            if now == known || failed.as_ref() == Some(&now) {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&now) {
                // Changed since the last look: wait one more round for it to settle.
                pending = Some(now);
                continue;
            }
            pending = None;
            tracing::info!("plugin directory changed: loading the plugins again");
            match self.reload_plugins().await {
                Ok(_) => failed = None,
                Err(e) => {
                    tracing::warn!(error = %e, "plugins not reloaded; the running set is kept");
                    failed = Some(now);
                }
            }
        }
    }

    async fn reload_with(self: &Arc<Self>, read_config: bool) -> Result<ReloadReport, StartError> {
        let r = self.reload_once(read_config).await;
        crate::metrics::reload(r.is_ok());
        r
    }

    async fn reload_once(self: &Arc<Self>, read_config: bool) -> Result<ReloadReport, StartError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let svc = Arc::clone(self);
        let (new_config, new_registry, scanned) = tokio::task::spawn_blocking(move || {
            let config = if read_config {
                Config::load(svc.config_path.as_deref())?
            } else {
                (*svc.config()).clone()
            };
            let previous = lock(&svc.scanned).clone();
            let scanned = loader::rescan(&config.plugins.dirs, &previous);
            let old = svc.registry();
            let registry = Registry::rebuild(
                Some(&old),
                &config.backends,
                &scanned,
                Self::event_sink(svc.events.clone()),
            )?;
            Ok::<_, StartError>((config, registry, scanned))
        })
        .await
        .unwrap_or_else(|_| {
            Err(StartError::Config(crate::config::ConfigError::Invalid(
                "reload failed".into(),
            )))
        })?;
        let old = self.registry();
        let new_registry = Arc::new(new_registry);
        let mut report = ReloadReport {
            plugins: scanned
                .iter()
                .map(|e| PluginFileReport {
                    file: e.path.display().to_string(),
                    plugin: e
                        .outcome
                        .as_ref()
                        .ok()
                        .map(|p| format!("{} {}", p.handshake.name, p.handshake.version)),
                    skipped: e.outcome.as_ref().err().cloned(),
                })
                .collect(),
            backends: BTreeMap::new(),
        };
        if new_config.server.listen != self.config().server.listen {
            tracing::warn!(
                listen = %new_config.server.listen,
                "server.listen changed: it takes effect at the next start"
            );
        }
        let previous = std::mem::replace(&mut *lock(&self.scanned), scanned);
        self.plugin_events(&previous);
        self.hub.set_retained(new_config.server.events_retained);
        *write(&self.config) = Arc::new(new_config);
        *write(&self.registry) = Arc::clone(&new_registry);

        for entry in new_registry.all() {
            let before = old.get(&entry.name);
            let kept = before.as_ref().is_some_and(|o| Arc::ptr_eq(o, entry));
            let verdict = Verdict::of(
                before.map(|o| o.config.enabled),
                Some(entry.config.enabled),
                kept,
            );
            report.backends.insert(entry.name.clone(), verdict);
        }
        for o in old.all() {
            if new_registry.get(&o.name).is_none() {
                let verdict = Verdict::of(Some(o.config.enabled), None, false);
                report.backends.insert(o.name.clone(), verdict);
            }
        }
        // Old backends that were replaced or dropped: stop their background work,
        // forget their instances unless the new backend of the same name lists them.
        for o in old.all() {
            let replaced = !new_registry
                .get(&o.name)
                .is_some_and(|n| Arc::ptr_eq(&n, o));
            if !replaced {
                continue;
            }
            if let Some(b) = o.backend.clone() {
                tokio::task::spawn_blocking(move || b.shutdown());
            }
            let still_served = new_registry
                .get(&o.name)
                .is_some_and(|n| n.backend.is_some());
            if !still_served {
                for i in self.inventory.of_backend(&o.name) {
                    self.inventory.remove(&i.id, Source::Backend);
                }
            }
        }
        for (entry, backend) in new_registry.live() {
            if report.backends.get(&entry.name) != Some(&Verdict::Kept)
                && self.check(entry, backend).await
            {
                self.resync(entry, backend).await;
            }
        }
        for (name, verdict) in &report.backends {
            if *verdict != Verdict::Kept {
                self.backend_event(
                    Kind::BackendReloaded,
                    name,
                    Some(verdict.as_str().to_owned()),
                );
            }
        }
        tracing::info!(backends = ?report.backends, "reloaded");
        Ok(report)
    }
}
