//! The backend's side of pinned bind mounts (the mechanism is `pin.rs`'s): the pins of
//! a new instance made, checked again before every start, removed with the instance,
//! and swept when their container went away while the server was not there.

use std::collections::HashSet;
use std::path::PathBuf;

use bollard::models::ContainerInspectResponse;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{ErrorCode, PluginError};

use super::create::ABANDONED_FOR;
use super::Result;
use crate::backend::Shared;
use crate::pin::{self, PinError, Pinned};
use crate::record::{self, LABEL_BINDS, LABEL_ID};
use crate::spec::BindSpec;

impl Shared {
    /// The directory of an instance's pins (`None`: an id that cannot name one).
    pub(crate) fn pin_dir(&self, id: &str) -> Option<PathBuf> {
        pin::usable_id(id).then(|| self.engine.config().pin_dir.join(id))
    }

    /// Pins the bind sources of a new instance; on failure nothing is left.
    pub(crate) fn pin_all(&self, id: &str, binds: &[BindSpec]) -> Result<Vec<Pinned>> {
        let dir = self.pin_dir(id).ok_or_else(|| {
            PluginError::invalid(format!("instance id {id:?} cannot name a pin directory"))
        })?;
        let mut out = Vec::with_capacity(binds.len());
        for (n, b) in binds.iter().enumerate() {
            match pin::pin_new(&b.source, &dir.join(n.to_string())) {
                Ok(p) => out.push(p),
                Err(e) => {
                    pin::unpin_dir(&dir);
                    return Err(self.pin_error(e));
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn pin_error(&self, e: PinError) -> PluginError {
        match &e {
            PinError::Changed { source_path, .. } => {
                PluginError::new(ErrorCode::Forbidden, e.to_string())
                    .with_detail("hostPath", source_path.to_string_lossy().into_owned())
                    .with_detail(
                        "allowedHostPaths",
                        self.engine
                            .config()
                            .allowed_host_paths
                            .iter()
                            .map(|a| a.to_string_lossy().into_owned())
                            .collect::<Vec<_>>(),
                    )
            }
            PinError::Mount { .. } => PluginError::backend(format!(
                "{e} (pinning bind mounts needs CAP_SYS_ADMIN in the engine's mount namespace)"
            )),
        }
    }

    /// Before a start through the API: every pinned bind source is still what it was
    /// at create and inside the allowlist (else `FORBIDDEN`), and its pin is there
    /// (made again if missing).
    pub(crate) fn check_pins(&self, c: &ContainerInspectResponse) -> Result<()> {
        if !self.engine.is_local() {
            return Ok(());
        }
        let Some(label) = record::labels_of(c).and_then(|l| l.get(LABEL_BINDS)) else {
            return Ok(());
        };
        let pinned: Vec<Pinned> = serde_json::from_str(label)
            .map_err(|e| PluginError::internal(format!("unreadable {LABEL_BINDS} label: {e}")))?;
        let allowed = &self.engine.config().allowed_host_paths;
        for p in &pinned {
            pin::ensure(p, allowed).map_err(|e| self.pin_error(e))?;
        }
        Ok(())
    }

    /// Detaches and removes the pins of an instance.
    pub(crate) fn unpin(&self, id: &str) {
        if !self.engine.is_local() {
            return;
        }
        if let Some(dir) = self.pin_dir(id) {
            pin::unpin_dir(&dir);
        }
    }

    /// Removes the pins of an instance whose container was seen gone (an event, a
    /// 404), unless a create of it is under way (the engine removes a container it
    /// failed to set up, and the create tries again) or a container of it is still
    /// there.
    pub(crate) async fn unpin_if_gone(&self, id: &str) {
        if !self.engine.is_local() || lock(&self.creating).contains(id) {
            return;
        }
        if matches!(self.containers_of(Some(id)).await, Ok(v) if v.is_empty()) {
            self.unpin(id);
        }
    }

    /// Removes the pins of instances that have no container any more (removed by hand
    /// while the server was away). A pin directory is left alone while a create may
    /// still be making its container (younger than [`ABANDONED_FOR`]) and while any
    /// container, of any backend, carries its id.
    pub(crate) async fn sweep_pins(&self, listed: &HashSet<&str>) {
        if !self.engine.is_local() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.engine.config().pin_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_FOR));
            if listed.contains(id.as_str())
                || !old
                || !pin::usable_id(&id)
                || lock(&self.creating).contains(&id)
            {
                continue;
            }
            let found = self
                .containers_labelled(&[format!("{LABEL_ID}={id}")])
                .await;
            if matches!(found, Ok(v) if v.is_empty()) {
                tracing::info!(backend = %self.name, instance = %id, "removing the pins of a container gone");
                self.unpin(&id);
            }
        }
    }
}
