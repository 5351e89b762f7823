//! The operations of the backend, as methods of [`Shared`] (one file per group, called
//! by `backend.rs`), and what they all use: finding an instance's container, reading
//! it back as an instance, and the bookkeeping of what the backend remembers (container
//! ids, change times, the engine events its own calls cause).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::ListContainersOptions;
use chrono::{DateTime, Utc};
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{Instance, InstanceState, PluginError};

use crate::backend::{Shared, QUOTA_UNKNOWN};
use crate::client::filters;
use crate::error::Error;
use crate::record::{self, LABEL_BACKEND, LABEL_ID};

mod create;
mod images;
mod info;
mod lifecycle;
mod limits;
mod list;
mod pins;
mod streams;
mod update;
mod usage;

pub(crate) use images::Pulls;

pub(crate) type Result<T> = std::result::Result<T, PluginError>;

/// How long an API call's own engine events are expected.
const EXPECT_WINDOW: Duration = Duration::from_secs(5);

/// The engine's state of an inspected container.
fn state_of(c: &ContainerInspectResponse) -> Option<ContainerStateStatusEnum> {
    c.state.as_ref().and_then(|s| s.status)
}

impl Shared {
    pub(crate) async fn inspect(
        &self,
        container: &str,
    ) -> std::result::Result<ContainerInspectResponse, Error> {
        self.engine
            .quick("inspect", |d| async move {
                d.inspect_container(container, None).await
            })
            .await
    }

    pub(crate) fn touched_at(&self, id: &str) -> Option<DateTime<Utc>> {
        self.touched.get(id)
    }

    /// Records a change made through the API now.
    pub(crate) fn touch(&self, id: &str) {
        self.touched.record(id, Utc::now());
    }

    /// Records the instance's `updatedAt` as answered (after a start or a stop, whose
    /// times the engine also keeps), so that it never goes back.
    pub(crate) fn noted(&self, inst: Instance) -> Instance {
        self.touched.record(&inst.id, inst.updated_at);
        inst
    }

    /// Drops what is remembered of an instance that is gone (its pins are
    /// [`Shared::unpin`]'s).
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.containers).remove(id);
        self.touched.remove(id);
        lock(&self.expected).remove(id);
        self.stats.forget(id);
    }

    /// The engine came back: it may be another one (or another version) now.
    pub(crate) fn reconnected(&self) {
        *lock(&self.host) = None;
        *lock(&self.storage_cap) = None;
        self.storage_quota.store(QUOTA_UNKNOWN, Ordering::Relaxed);
        lock(&self.expected).clear();
        self.stats.clear();
    }

    /// Notes that a call is about to cause these engine events.
    pub(crate) fn expect(&self, id: &str, actions: &[&'static str]) {
        let now = Instant::now();
        lock(&self.expected)
            .entry(id.to_owned())
            .or_default()
            .extend(actions.iter().map(|a| (*a, now)));
    }

    /// The call failed: its events may not come.
    pub(crate) fn unexpect(&self, id: &str) {
        lock(&self.expected).remove(id);
    }

    /// Whether an engine event was caused by a call of ours (and is consumed). Any
    /// other event for the instance means someone else acts on it: then nothing more
    /// is skipped.
    pub(crate) fn expected_event(&self, id: &str, action: &str) -> bool {
        let mut map = lock(&self.expected);
        let Some(list) = map.get_mut(id) else {
            return false;
        };
        list.retain(|(_, at)| at.elapsed() < EXPECT_WINDOW);
        let found = list.iter().position(|(a, _)| *a == action);
        match found {
            Some(i) => {
                list.remove(i);
                if list.is_empty() {
                    map.remove(id);
                }
                true
            }
            None => {
                map.remove(id);
                false
            }
        }
    }

    pub(crate) fn mine(&self, c: &ContainerInspectResponse) -> bool {
        record::labels_of(c)
            .and_then(|l| l.get(LABEL_BACKEND))
            .is_some_and(|b| *b == self.name)
    }

    pub(crate) fn to_instance(&self, c: &ContainerInspectResponse) -> Option<Instance> {
        if !self.mine(c) {
            return None;
        }
        let id = record::instance_id(record::labels_of(c))?;
        let mut inst = record::from_inspect(c, self.touched_at(id))?;
        inst.backend = self.name.clone();
        // Memory in use is cheap to report only for a watched instance.
        if inst.state == InstanceState::Running {
            if let Some(used) = self.stats.memory_used(&inst.id) {
                inst.resources
                    .memory
                    .get_or_insert_with(Default::default)
                    .used = Some(used);
            }
        }
        Some(inst)
    }

    /// Inspects a container and reads it as an instance (`None`: not one of ours).
    pub(crate) async fn inspect_instance(
        &self,
        container: &str,
    ) -> std::result::Result<Option<Instance>, Error> {
        let c = self.inspect(container).await?;
        let inst = self.to_instance(&c);
        if let (Some(i), Some(cid)) = (&inst, &c.id) {
            lock(&self.containers).insert(i.id.clone(), cid.clone());
        }
        Ok(inst)
    }

    /// Finds the container of an instance.
    pub(crate) async fn resolve(&self, id: &str) -> Result<(String, ContainerInspectResponse)> {
        let cached = lock(&self.containers).get(id).cloned();
        if let Some(cid) = cached {
            match self.inspect(&cid).await {
                Ok(c)
                    if self.mine(&c) && record::instance_id(record::labels_of(&c)) == Some(id) =>
                {
                    return Ok((cid, c));
                }
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
            lock(&self.containers).remove(id);
        }
        for cid in self.containers_of(Some(id)).await? {
            match self.inspect(&cid).await {
                Ok(c) => {
                    lock(&self.containers).insert(id.to_owned(), cid.clone());
                    return Ok((cid, c));
                }
                Err(e) if e.status() == Some(404) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PluginError::not_found(id))
    }

    /// The instance from an inspection already made.
    pub(crate) fn instance_of(&self, id: &str, c: &ContainerInspectResponse) -> Result<Instance> {
        self.to_instance(c)
            .ok_or_else(|| PluginError::not_found(id))
    }

    /// The instance, inspected now.
    pub(crate) async fn instance(&self, id: &str, container: &str) -> Result<Instance> {
        match self.inspect_instance(container).await {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(PluginError::not_found(id)),
            Err(e) if e.status() == Some(404) => {
                self.forget(id);
                self.unpin_if_gone(id).await;
                Err(PluginError::not_found(id))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The containers of this backend that carry instance `id`'s label, or any
    /// instance's with `None` (by label, never by name: a container of that name may
    /// be someone else's).
    pub(crate) async fn containers_of(
        &self,
        id: Option<&str>,
    ) -> std::result::Result<Vec<String>, Error> {
        let id_label = match id {
            Some(id) => format!("{LABEL_ID}={id}"),
            None => LABEL_ID.to_owned(),
        };
        self.containers_labelled(&[id_label, format!("{LABEL_BACKEND}={}", self.name)])
            .await
    }

    /// The containers (of any backend) that carry every one of these labels
    /// (`key` or `key=value`), stopped ones included.
    pub(crate) async fn containers_labelled(
        &self,
        labels: &[String],
    ) -> std::result::Result<Vec<String>, Error> {
        let pairs: Vec<(&str, String)> = labels.iter().map(|l| ("label", l.clone())).collect();
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters(&pairs)),
            ..Default::default()
        };
        let found = self
            .engine
            .quick(
                "list",
                |d| async move { d.list_containers(Some(options)).await },
            )
            .await?;
        Ok(found.into_iter().filter_map(|c| c.id).collect())
    }
}
