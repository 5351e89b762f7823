//! What each instance operation means, whatever the backend: name reservation, one
//! operation at a time per instance, the contract's state rules, backend calls off
//! the HTTP executor, and the inventory kept in step.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use unicompute_plugin_api::{
    BackendDescription, CreateRequest, ErrorCode, Image, Instance, InstanceState, JsonMap,
    Resources, StopOptions, UpdateRequest, Usage,
};

use super::ids::{new_id, valid_name};
use super::{call, Error, Lookup, Service};
use crate::events::Source;
use crate::inventory::ListFilter;
use crate::plugins::registry::BackendEntry;

/// A lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start.
    Start,
    /// Stop, graceful or forced.
    Stop(StopOptions),
    /// Stop then start.
    Restart(StopOptions),
    /// Freeze.
    Pause,
    /// Thaw.
    Unpause,
}

impl Action {
    /// `start`, `stop`...
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop(_) => "stop",
            Action::Restart(_) => "restart",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
        }
    }
}

/// What the contract's state table says of an action on an instance in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Already done: answer the instance as it is, call nothing.
    Unchanged,
    /// Refused: 409 `INVALID_STATE`.
    Refused,
    /// Ask the backend.
    Call,
}

/// The state table: start of a running instance, stop of a stopped (or never
/// started) one, pause of a paused one and unpause of a running one change nothing;
/// pause needs a running instance, unpause a paused one, and start one that is not
/// paused; the rest is the backend's.
pub fn rule(action: Action, state: InstanceState) -> Rule {
    use InstanceState::*;
    let unchanged = match action {
        Action::Start => state == Running,
        Action::Stop(_) => matches!(state, Stopped | Created),
        Action::Pause => state == Paused,
        Action::Unpause => state == Running,
        Action::Restart(_) => false,
    };
    let refused = match action {
        Action::Pause => state != Running,
        Action::Unpause => state != Paused,
        // A paused instance is unpaused, not started: the same answer on every
        // backend (Docker refuses, libvirt would answer the domain still paused).
        Action::Start => state == Paused,
        Action::Stop(_) | Action::Restart(_) => false,
    };
    if unchanged {
        Rule::Unchanged
    } else if refused {
        Rule::Refused
    } else {
        Rule::Call
    }
}

/// Whether deleting an instance in `state` needs `force`.
pub fn delete_needs_force(state: InstanceState) -> bool {
    state.is_active()
}

/// A new instance id and its creation time (milliseconds).
pub fn new_instance_id() -> (String, chrono::DateTime<Utc>) {
    let created_at = Utc::now().trunc_subsecs(3);
    (new_id(created_at.timestamp_millis()), created_at)
}

/// A create, validated by the HTTP layer.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// Name.
    pub name: String,
    /// Backend name.
    pub backend: String,
    /// Backend-specific config.
    pub config: JsonMap,
    /// Resources.
    pub resources: Resources,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Start after create.
    pub start: bool,
}

impl Service {
    /// One instance by id, from memory.
    pub fn get(&self, id: &str) -> Result<Arc<Instance>, Error> {
        self.inventory.get(id).ok_or_else(|| Error::no_id(id))
    }

    /// One instance's JSON as the API serves it, by id, from memory.
    pub fn get_json(&self, id: &str) -> Result<bytes::Bytes, Error> {
        self.inventory.get_json(id).ok_or_else(|| Error::no_id(id))
    }

    /// One instance's JSON as the API serves it, by name, from memory.
    pub fn get_json_by_name(&self, name: &str) -> Result<bytes::Bytes, Error> {
        self.inventory
            .get_json_by_name(name)
            .ok_or_else(|| Error::NotFound {
                by: Lookup::Name,
                value: name.to_owned(),
            })
    }

    /// One instance by name, from memory.
    pub fn get_by_name(&self, name: &str) -> Result<Arc<Instance>, Error> {
        self.inventory
            .get_by_name(name)
            .ok_or_else(|| Error::NotFound {
                by: Lookup::Name,
                value: name.to_owned(),
            })
    }

    /// A page of instances, from memory. The filter's backend must be configured.
    pub fn list(
        &self,
        filter: &ListFilter,
        page: usize,
        page_size: usize,
    ) -> Result<(Vec<Arc<Instance>>, usize), Error> {
        self.check_filter(filter)?;
        Ok(self.inventory.list(filter, page, page_size))
    }

    /// [`Service::list`], each instance as the JSON the API serves (made once per
    /// change of the instance).
    pub fn list_json(
        &self,
        filter: &ListFilter,
        page: usize,
        page_size: usize,
    ) -> Result<(Vec<bytes::Bytes>, usize), Error> {
        self.check_filter(filter)?;
        Ok(self.inventory.list_json(filter, page, page_size))
    }

    /// A list filter's backend must be configured.
    fn check_filter(&self, filter: &ListFilter) -> Result<(), Error> {
        match &filter.backend {
            Some(b) if self.registry().get(b).is_none() => Err(Error::InvalidBackend(b.clone())),
            _ => Ok(()),
        }
    }

    /// Creates an instance.
    pub async fn create(&self, new: NewInstance) -> Result<Arc<Instance>, Error> {
        let (id, created_at) = new_instance_id();
        self.create_as(new, id, created_at).await
    }

    /// Creates an instance with an id made beforehand by [`new_instance_id`] (an
    /// asynchronous create answers the id before the work begins).
    pub async fn create_as(
        &self,
        new: NewInstance,
        id: String,
        created_at: chrono::DateTime<Utc>,
    ) -> Result<Arc<Instance>, Error> {
        if !valid_name(&new.name) {
            return Err(Error::InvalidName(new.name));
        }
        let (entry, backend) = self.backend(&new.backend)?;
        let reservation = self
            .inventory
            .reserve_name(&new.name, &id)
            .ok_or_else(|| Error::NameTaken(new.name.clone()))?;
        let _busy = self.mark_busy(&id);
        let request = CreateRequest {
            id: id.clone(),
            name: new.name.clone(),
            config: new.config,
            resources: new.resources,
            labels: new.labels,
            start: new.start,
            created_at,
            // The operation this create works for, if any: the backend reports the
            // progress of long work (a disk copy) under it, and can be told to stop.
            operation: super::operations::current(),
        };
        tracing::info!(instance = %id, name = %new.name, backend = %entry.name, "creating");
        let created = call(&entry, "create", &backend, move |b| b.create(request))
            .await
            .map_err(|e| self.fail(&entry, e))?;
        let created = self.adopt(&entry, created);
        tracing::info!(instance = %id, state = created.state.as_str(), "created");
        Ok(reservation.commit(created))
    }

    /// Refreshes an instance from its backend; forgets it if the backend lost it.
    async fn fresh(
        &self,
        entry: &BackendEntry,
        backend: &Arc<dyn unicompute_plugin_api::Backend>,
        id: &str,
    ) -> Result<Instance, Error> {
        let owned = id.to_owned();
        match call(entry, "get", backend, move |b| b.get(&owned)).await {
            Ok(inst) => {
                let inst = self.adopt(entry, inst);
                self.inventory.upsert(inst.clone(), Source::Backend);
                Ok(inst)
            }
            Err(e) if e.code == ErrorCode::InstanceNotFound => {
                self.inventory.remove(id, Source::Backend);
                Err(Error::no_id(id))
            }
            Err(e) => Err(self.fail(entry, e)),
        }
    }

    /// Runs a lifecycle action.
    pub async fn act(&self, id: &str, action: Action) -> Result<Arc<Instance>, Error> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let _guard = self.lock(id).await;
        let _busy = self.mark_busy(id);
        let current = self.fresh(&entry, &backend, id).await?;
        let state = current.state;
        match rule(action, state) {
            Rule::Unchanged => return Ok(self.inventory.upsert(current, Source::Backend)),
            Rule::Refused => {
                return Err(Error::InvalidState {
                    message: format!(
                        "cannot {} an instance that is {}",
                        action.name(),
                        state.as_str()
                    ),
                    state,
                })
            }
            Rule::Call => {}
        }
        tracing::info!(instance = %id, action = action.name(), "acting");
        let owned = id.to_owned();
        let after = call(&entry, action.name(), &backend, move |b| match action {
            Action::Start => b.start(&owned),
            Action::Stop(o) => b.stop(&owned, o),
            Action::Restart(o) => b.restart(&owned, o),
            Action::Pause => b.pause(&owned),
            Action::Unpause => b.unpause(&owned),
        })
        .await
        .map_err(|e| self.fail(&entry, e))?;
        let after = self.adopt(&entry, after);
        Ok(self.inventory.upsert(after, Source::Api))
    }

    /// Changes resources or labels.
    pub async fn update(&self, id: &str, request: UpdateRequest) -> Result<Arc<Instance>, Error> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let _guard = self.lock(id).await;
        let _busy = self.mark_busy(id);
        let owned = id.to_owned();
        let after = call(&entry, "update", &backend, move |b| {
            b.update(&owned, request)
        })
        .await
        .map_err(|e| self.fail(&entry, e))?;
        let after = self.adopt(&entry, after);
        tracing::info!(instance = %id, "updated");
        Ok(self.inventory.upsert(after, Source::Api))
    }

    /// Deletes an instance.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let guard = self.lock(id).await;
        let _busy = self.mark_busy(id);
        let current = self.fresh(&entry, &backend, id).await?;
        if delete_needs_force(current.state) && !force {
            return Err(Error::InvalidState {
                message: format!(
                    "instance is {}; stop it first or delete with ?force=true",
                    current.state.as_str()
                ),
                state: current.state,
            });
        }
        let owned = id.to_owned();
        match call(&entry, "delete", &backend, move |b| b.delete(&owned, force)).await {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::InstanceNotFound => {}
            Err(e) => return Err(self.fail(&entry, e)),
        }
        self.inventory.remove(id, Source::Api);
        drop(guard);
        self.forget_lock(id);
        tracing::info!(instance = %id, "deleted");
        Ok(())
    }

    /// Resource usage, live from the backend.
    pub async fn usage(&self, id: &str) -> Result<Usage, Error> {
        let known = self.get(id)?;
        let (entry, backend) = self.backend(&known.backend)?;
        let owned = id.to_owned();
        match call(&entry, "usage", &backend, move |b| b.usage(&owned)).await {
            Ok(u) => {
                crate::metrics::usage_sampled(id, &u);
                Ok(u)
            }
            Err(e) if e.code == ErrorCode::InstanceNotFound => {
                self.inventory.remove(id, Source::Backend);
                Err(Error::no_id(id))
            }
            Err(e) => Err(self.fail(&entry, e)),
        }
    }

    /// A backend's description, live; falls back to the last one read when the
    /// backend does not answer.
    pub async fn describe(
        &self,
        name: &str,
    ) -> Result<(Arc<BackendEntry>, Option<BackendDescription>), Error> {
        let entry = self
            .registry()
            .get(name)
            .ok_or_else(|| Error::InvalidBackend(name.to_owned()))?;
        let Some(backend) = entry.backend.clone() else {
            return Ok((entry, None));
        };
        if self.check(&entry, &backend).await {
            match call(&entry, "describe", &backend, |b| b.describe()).await {
                Ok(d) => {
                    let fresh = d.clone();
                    entry.set_health(|h| h.description = Some(fresh));
                    return Ok((entry, Some(d)));
                }
                Err(e) => {
                    let _ = self.fail(&entry, e);
                }
            }
        }
        let cached = entry.health().description;
        Ok((entry, cached))
    }

    /// The images or templates of a backend, live.
    pub async fn images(&self, name: &str) -> Result<Vec<Image>, Error> {
        let (entry, backend) = self.backend(name)?;
        call(&entry, "images", &backend, |b| b.images())
            .await
            .map_err(|e| self.fail(&entry, e))
    }
}
