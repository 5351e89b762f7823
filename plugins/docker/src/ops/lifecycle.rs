//! Start, stop, restart, pause, unpause and delete of an instance: the engine's calls
//! with the state rules of the API (a start of a running instance changes nothing, a
//! stop thaws a paused one first, ...), and the events each call is expected to cause.

use std::time::Duration;

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{RemoveContainerOptions, StopContainerOptions};
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{Instance, PluginError, StopOptions};

use super::{state_of, Result};
use crate::backend::Shared;
use crate::error::Error;
use crate::record;

/// Why a start of a paused instance is refused.
const IS_PAUSED: &str = "the instance is paused; unpause it";
/// Why a delete without `force` is refused.
const STILL_RUNNING: &str = "the instance is running; stop it or delete with force";

impl Shared {
    pub(crate) async fn start(&self, id: &str) -> Result<Instance> {
        // A local engine's instance may have pinned bind mounts to check first: the
        // checked way below. A remote one's goes straight to the engine.
        let cached = (!self.engine.is_local())
            .then(|| lock(&self.containers).get(id).cloned())
            .flatten();
        if let Some(cid) = cached {
            // Straight to the engine: starting a running container changes nothing
            // there either. Anything unusual takes the checked way below.
            self.expect(id, &["start"]);
            match self.start_container(&cid).await {
                Ok(()) => return Ok(self.noted(self.instance(id, &cid).await?)),
                // Gone or replaced: look it up by its label below.
                Err(e) if e.status() == Some(404) => {
                    self.unexpect(id);
                    lock(&self.containers).remove(id);
                }
                Err(e) => {
                    self.unexpect(id);
                    if !e.is_unavailable() {
                        if let Ok((_, c)) = self.resolve(id).await {
                            if state_of(&c) == Some(ContainerStateStatusEnum::PAUSED) {
                                return Err(PluginError::invalid_state(IS_PAUSED));
                            }
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        let (container, c) = self.resolve(id).await?;
        match state_of(&c) {
            // Already running: nothing changes.
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::RESTARTING) => return self.instance_of(id, &c),
            Some(ContainerStateStatusEnum::PAUSED) => {
                return Err(PluginError::invalid_state(IS_PAUSED))
            }
            _ => {
                self.check_pins(&c)?;
                self.expect(id, &["start"]);
                self.start_container(&container)
                    .await
                    .inspect_err(|_| self.unexpect(id))?;
            }
        }
        Ok(self.noted(self.instance(id, &container).await?))
    }

    pub(crate) async fn stop(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let (container, c) = self.resolve(id).await?;
        match state_of(&c) {
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::RESTARTING)
            | Some(ContainerStateStatusEnum::PAUSED) => {}
            // Created, exited, dead: nothing runs.
            _ => return self.instance_of(id, &c),
        }
        self.expect(id, &["die"]);
        if state_of(&c) == Some(ContainerStateStatusEnum::PAUSED) {
            // A frozen process cannot handle (or die of) a signal.
            self.expect(id, &["unpause"]);
            self.unpause_container(&container)
                .await
                .inspect_err(|_| self.unexpect(id))?;
        }
        // `force` is a stop with no grace period: Docker kills at once and, as for any
        // stop, does not apply the restart policy.
        let grace = if options.force { 0 } else { options.timeout };
        let grace_i32 = i32::try_from(grace).unwrap_or(i32::MAX);
        let timeout =
            Duration::from_secs(grace).saturating_add(self.engine.config().request_timeout());
        let cid = container.clone();
        let stop = StopContainerOptions {
            t: Some(grace_i32),
            signal: None,
        };
        self.engine
            .call("stop", timeout, |d| async move {
                d.stop_container(&cid, Some(stop)).await
            })
            .await
            .inspect_err(|_| self.unexpect(id))?;
        self.stats.forget(id);
        Ok(self.noted(self.instance(id, &container).await?))
    }

    /// Stop (same options), then start.
    pub(crate) async fn restart(&self, id: &str, options: StopOptions) -> Result<Instance> {
        self.stop(id, options).await?;
        self.start(id).await
    }

    pub(crate) async fn pause(&self, id: &str) -> Result<Instance> {
        self.set_paused(id, true).await
    }

    pub(crate) async fn unpause(&self, id: &str) -> Result<Instance> {
        self.set_paused(id, false).await
    }

    /// Pauses (`paused`) or unpauses an instance; one already so changes nothing, one
    /// neither running nor paused is `INVALID_STATE`.
    async fn set_paused(&self, id: &str, paused: bool) -> Result<Instance> {
        use ContainerStateStatusEnum::{PAUSED, RUNNING};
        let (verb, from, to) = if paused {
            ("pause", RUNNING, PAUSED)
        } else {
            ("unpause", PAUSED, RUNNING)
        };
        let (container, c) = self.resolve(id).await?;
        let state = state_of(&c);
        if state == Some(to) {
            return self.instance_of(id, &c);
        }
        if state != Some(from) {
            return Err(PluginError::invalid_state(format!(
                "cannot {verb} an instance that is {}",
                record::map_state(state, false, false, "").as_str()
            )));
        }
        self.expect(id, &[verb]);
        let done = if paused {
            let cid = container.as_str();
            self.engine
                .quick("pause", |d| async move { d.pause_container(cid).await })
                .await
                .map_err(PluginError::from)
        } else {
            self.unpause_container(&container).await
        };
        done.inspect_err(|_| self.unexpect(id))?;
        self.touch(id);
        self.instance(id, &container).await
    }

    pub(crate) async fn unpause_container(&self, container: &str) -> Result<()> {
        match self
            .engine
            .quick("unpause", |d| async move {
                d.unpause_container(container).await
            })
            .await
        {
            // Not paused (any more): nothing to do.
            Err(e) if e.status() == Some(409) => Ok(()),
            other => Ok(other?),
        }
    }

    pub(crate) async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let cached = lock(&self.containers).get(id).cloned();
        if let (Some(cid), true) = (cached, force) {
            // Our own cache says which container it is: no need to look first.
            match self.remove_container(&cid, true).await {
                Ok(()) => {
                    self.forget(id);
                    self.unpin(id);
                    return Ok(());
                }
                // Gone or replaced meanwhile: look it up by its label.
                Err(e) if e.status() == Some(404) => {
                    lock(&self.containers).remove(id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (container, c) = self.resolve(id).await?;
        let active = matches!(
            state_of(&c),
            Some(ContainerStateStatusEnum::RUNNING)
                | Some(ContainerStateStatusEnum::PAUSED)
                | Some(ContainerStateStatusEnum::RESTARTING)
        );
        if active && !force {
            return Err(PluginError::invalid_state(STILL_RUNNING));
        }
        // Not forced: if it was started by hand since the check, the engine refuses.
        self.remove_with(&container, force).await.map_err(|e| {
            if e.status() == Some(409) {
                PluginError::invalid_state(STILL_RUNNING)
            } else {
                e.into()
            }
        })?;
        self.forget(id);
        self.unpin(id);
        Ok(())
    }

    pub(crate) async fn remove(&self, container: &str) -> std::result::Result<(), Error> {
        self.remove_with(container, true).await
    }

    /// Removes a container and its anonymous volumes (one already gone is fine);
    /// without `force` the engine refuses a running one (409).
    pub(crate) async fn remove_with(
        &self,
        container: &str,
        force: bool,
    ) -> std::result::Result<(), Error> {
        match self.remove_container(container, force).await {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => other,
        }
    }

    /// The engine's remove of a container and its anonymous volumes, as it answers.
    async fn remove_container(
        &self,
        container: &str,
        force: bool,
    ) -> std::result::Result<(), Error> {
        let options = RemoveContainerOptions {
            force,
            v: true,
            ..Default::default()
        };
        self.engine
            .quick("remove", |d| async move {
                d.remove_container(container, Some(options)).await
            })
            .await
    }

    /// The engine's start of a container, as it answers.
    pub(crate) async fn start_container(&self, container: &str) -> std::result::Result<(), Error> {
        self.engine
            .quick("start", |d| async move {
                d.start_container(container, None).await
            })
            .await
    }
}
