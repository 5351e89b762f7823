//! The event hub: every change the server learns of, numbered, kept in a bounded ring
//! for resuming, and fanned out to subscribers.
//!
//! - Ids increase monotonically, also across restarts: a run starts numbering at the
//!   time it started, in microseconds (a run would need to publish a million events
//!   a second to catch up with the next run's start). So an id from an earlier run is
//!   always older than the ring, and a resume from it is a [`Start::Reset`], never a
//!   replay of unrelated events.
//! - Publishing takes one short lock (the ring and the fan-out happen together, so a
//!   subscriber that joins with a backlog gets the backlog then the live events, with
//!   no gap and no duplicate) and never waits on a subscriber: the fan-out is one
//!   `tokio::sync::broadcast` channel whose capacity bounds how far a subscriber may
//!   fall behind. One that falls further behind loses its place: it gets `reset` and
//!   is closed, and the others do not notice.
//! - The hub knows no HTTP: the API encodes each event once, on first use, into the
//!   event's [`Event::encoded`] cell.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::broadcast;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{Instance, InstanceState};

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An API call of this server.
    Api,
    /// A backend: its events, a resync, a health check, a reload.
    Backend,
}

impl Source {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Backend => "backend",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An instance appeared.
    InstanceCreated,
    /// An instance changed, its state aside (resources, labels, health...).
    InstanceUpdated,
    /// An instance's state changed (`from`, `to`).
    InstanceStateChanged,
    /// An instance is gone.
    InstanceDeleted,
    /// A backend answers again.
    BackendAvailable,
    /// A backend stopped answering.
    BackendUnavailable,
    /// A reload started, restarted, stopped or removed a backend.
    BackendReloaded,
    /// A plugin file was loaded for the first time.
    PluginLoaded,
    /// A plugin file changed and was loaded again.
    PluginReplaced,
    /// A plugin file is gone, or no longer loads.
    PluginDropped,
    /// An operation was accepted.
    OperationCreated,
    /// An operation reported progress.
    OperationProgress,
    /// An operation ended (succeeded, failed or cancelled).
    OperationFinished,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 13] = [
        Kind::InstanceCreated,
        Kind::InstanceUpdated,
        Kind::InstanceStateChanged,
        Kind::InstanceDeleted,
        Kind::BackendAvailable,
        Kind::BackendUnavailable,
        Kind::BackendReloaded,
        Kind::PluginLoaded,
        Kind::PluginReplaced,
        Kind::PluginDropped,
        Kind::OperationCreated,
        Kind::OperationProgress,
        Kind::OperationFinished,
    ];

    /// The wire name (the SSE `event:` field and the event's `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InstanceCreated => "instance.created",
            Kind::InstanceUpdated => "instance.updated",
            Kind::InstanceStateChanged => "instance.state-changed",
            Kind::InstanceDeleted => "instance.deleted",
            Kind::BackendAvailable => "backend.available",
            Kind::BackendUnavailable => "backend.unavailable",
            Kind::BackendReloaded => "backend.reloaded",
            Kind::PluginLoaded => "plugin.loaded",
            Kind::PluginReplaced => "plugin.replaced",
            Kind::PluginDropped => "plugin.dropped",
            Kind::OperationCreated => "operation.created",
            Kind::OperationProgress => "operation.progress",
            Kind::OperationFinished => "operation.finished",
        }
    }

    /// The part before the dot: `instance`, `backend`, `plugin`, `operation`.
    pub fn category(self) -> &'static str {
        let s = self.as_str();
        &s[..s.find('.').unwrap_or(s.len())]
    }
}

/// What a `type=` filter names: one kind, or a whole category (`instance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindFilter {
    /// Exactly this kind.
    One(Kind),
    /// Every kind of this category.
    Category(&'static str),
}

impl KindFilter {
    /// Parses `instance.created` or `instance`; `None` for anything else.
    pub fn parse(s: &str) -> Option<KindFilter> {
        if let Some(k) = Kind::ALL.into_iter().find(|k| k.as_str() == s) {
            return Some(KindFilter::One(k));
        }
        Kind::ALL
            .into_iter()
            .map(Kind::category)
            .find(|c| *c == s)
            .map(KindFilter::Category)
    }

    fn matches(self, k: Kind) -> bool {
        match self {
            KindFilter::One(one) => one == k,
            KindFilter::Category(c) => k.category() == c,
        }
    }
}

/// What an event is about.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An instance, as it now is (as it last was, for a deletion); `from` is the
    /// state before a state change.
    Instance {
        /// The instance.
        instance: Arc<Instance>,
        /// The state before, for [`Kind::InstanceStateChanged`].
        from: Option<InstanceState>,
    },
    /// A backend; `reason` says why it is unavailable, or what a reload did.
    Backend {
        /// Why, in words.
        reason: Option<String>,
    },
    /// A plugin file.
    Plugin {
        /// The file.
        file: String,
        /// `name version`, when it loaded.
        plugin: Option<String>,
        /// Why it did not load.
        reason: Option<String>,
    },
    /// An operation, as it now is.
    Operation(Arc<crate::service::Operation>),
}

/// One event.
#[derive(Debug)]
pub struct Event {
    /// Its number.
    pub id: u64,
    /// What happened.
    pub kind: Kind,
    /// When the server learned of it.
    pub time: DateTime<Utc>,
    /// The backend it concerns, if any.
    pub backend: Option<String>,
    /// The instance it concerns, if any.
    pub instance_id: Option<String>,
    /// Who caused it.
    pub source: Source,
    /// What it is about.
    pub subject: Subject,
    /// The event as the API sends it, made once by the first subscriber that sends it.
    pub encoded: OnceLock<bytes::Bytes>,
}

/// Which events a subscriber wants: each list that is not empty must match (any of
/// its members).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Backends.
    pub backends: Vec<String>,
    /// Instance ids.
    pub instances: Vec<String>,
    /// Kinds or categories.
    pub kinds: Vec<KindFilter>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        let any = |list: &[String], v: &Option<String>| {
            list.is_empty() || v.as_ref().is_some_and(|v| list.iter().any(|x| x == v))
        };
        any(&self.backends, &e.backend)
            && any(&self.instances, &e.instance_id)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k.matches(e.kind)))
    }
}

/// How a subscription begins.
#[derive(Debug)]
pub enum Start {
    /// The retained events after the id asked for (empty without one).
    Backlog(Vec<Arc<Event>>),
    /// The id asked for is older than the ring (or from another run, or from the
    /// future): the subscriber must list again, then follow from [`Subscription::last_id`].
    Reset,
}

/// A subscriber's place in the stream.
#[derive(Debug)]
pub struct Subscription {
    /// Where it begins.
    pub start: Start,
    /// The live events after the backlog.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The id of the last event published when it joined (0 before the first).
    pub last_id: u64,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// The id the next event gets.
    next: u64,
    retained: usize,
}

/// The hub.
pub struct Hub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Event>>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("last_id", &self.last_id())
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(10_000, 4096)
    }
}

impl Hub {
    /// A hub keeping `retained` events for resuming, letting a subscriber fall
    /// `buffer` events behind before it is reset.
    pub fn new(retained: usize, buffer: usize) -> Hub {
        let base = u64::try_from(Utc::now().timestamp_micros())
            .unwrap_or(1)
            .max(1);
        Hub::starting_at(base, retained, buffer)
    }

    /// As [`Hub::new`], numbering from `first` (tests).
    pub fn starting_at(first: u64, retained: usize, buffer: usize) -> Hub {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Hub {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(retained.min(1 << 16)),
                next: first.max(1),
                retained: retained.max(1),
            }),
            tx,
            closed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Keeps `n` events from now on (a reload may change it).
    pub fn set_retained(&self, n: usize) {
        let mut ring = lock(&self.ring);
        ring.retained = n.max(1);
        while ring.events.len() > ring.retained {
            ring.events.pop_front();
        }
    }

    /// Publishes one event; returns its id.
    pub fn publish(
        &self,
        kind: Kind,
        backend: Option<&str>,
        instance_id: Option<&str>,
        source: Source,
        subject: Subject,
    ) -> u64 {
        let mut ring = lock(&self.ring);
        let id = ring.next;
        ring.next += 1;
        let event = Arc::new(Event {
            id,
            kind,
            time: Utc::now().trunc_subsecs(3),
            backend: backend.map(str::to_owned),
            instance_id: instance_id.map(str::to_owned),
            source,
            subject,
            encoded: OnceLock::new(),
        });
        if ring.events.len() >= ring.retained {
            ring.events.pop_front();
        }
        ring.events.push_back(Arc::clone(&event));
        // No receiver is not an error: nobody is listening.
        let _ = self.tx.send(event);
        id
    }

    /// Publishes what a change of an instance means: created (`old` is `None`),
    /// state changed, updated, or nothing when nothing changed.
    pub fn instance_changed(&self, old: Option<&Instance>, new: &Arc<Instance>, source: Source) {
        let (kind, from) = match old {
            None => (Kind::InstanceCreated, None),
            Some(o) if o.state != new.state => (Kind::InstanceStateChanged, Some(o.state)),
            Some(o) if o != &**new => (Kind::InstanceUpdated, None),
            Some(_) => return,
        };
        self.publish(
            kind,
            Some(&new.backend),
            Some(&new.id),
            source,
            Subject::Instance {
                instance: Arc::clone(new),
                from,
            },
        );
    }

    /// Publishes an instance's removal.
    pub fn instance_deleted(&self, old: &Arc<Instance>, source: Source) {
        self.publish(
            Kind::InstanceDeleted,
            Some(&old.backend),
            Some(&old.id),
            source,
            Subject::Instance {
                instance: Arc::clone(old),
                from: None,
            },
        );
    }

    /// The id of the last event published (0 before the first).
    pub fn last_id(&self) -> u64 {
        lock(&self.ring).next - 1
    }

    /// Joins the stream after event `since` (or now, without one).
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = lock(&self.ring);
        let last_id = ring.next - 1;
        let live = self.tx.subscribe();
        let start = match since {
            None => Start::Backlog(Vec::new()),
            Some(s) => {
                let first = ring.events.front().map_or(ring.next, |e| e.id);
                if s > last_id || s.saturating_add(1) < first {
                    Start::Reset
                } else {
                    // Ids are consecutive in the ring: the first after `s` is at
                    // index `s + 1 - first`.
                    let skip = usize::try_from(s + 1 - first).unwrap_or(usize::MAX);
                    Start::Backlog(ring.events.iter().skip(skip).cloned().collect())
                }
            }
        };
        Subscription {
            start,
            live,
            last_id,
        }
    }

    /// Whether a retained event concerns instance `id` (a deleted instance can still be
    /// followed from before its deletion).
    pub fn knows_instance(&self, id: &str) -> bool {
        lock(&self.ring)
            .events
            .iter()
            .any(|e| e.instance_id.as_deref() == Some(id))
    }

    /// Ends every subscription (the server is stopping).
    pub fn close(&self) {
        let _ = self.closed.send(true);
    }

    /// Resolves when [`Hub::close`] was called.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// How many subscribers there are now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend_event(hub: &Hub, b: &str) -> u64 {
        hub.publish(
            Kind::BackendAvailable,
            Some(b),
            None,
            Source::Backend,
            Subject::Backend { reason: None },
        )
    }

    #[test]
    fn ids_increase_and_a_resume_gets_what_followed() {
        let hub = Hub::starting_at(100, 10, 16);
        let ids: Vec<u64> = (0..5).map(|_| backend_event(&hub, "a")).collect();
        assert_eq!(ids, [100, 101, 102, 103, 104]);
        let sub = hub.subscribe(Some(102));
        let Start::Backlog(b) = sub.start else {
            panic!("reset")
        };
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), [103, 104]);
        assert_eq!(sub.last_id, 104);
        let Start::Backlog(b) = hub.subscribe(Some(104)).start else {
            panic!("reset")
        };
        assert!(b.is_empty());
    }

    #[test]
    fn too_old_future_and_foreign_ids_reset() {
        let hub = Hub::starting_at(100, 3, 16);
        for _ in 0..5 {
            backend_event(&hub, "a");
        }
        // Retained: 102, 103, 104. Resuming after 101 misses nothing.
        assert!(matches!(hub.subscribe(Some(101)).start, Start::Backlog(b) if b.len() == 3));
        assert!(matches!(hub.subscribe(Some(100)).start, Start::Reset));
        assert!(matches!(hub.subscribe(Some(7)).start, Start::Reset));
        assert!(matches!(hub.subscribe(Some(105)).start, Start::Reset));
        // A fresh hub (a restart) resets any id of the previous run.
        let fresh = Hub::starting_at(1_000, 3, 16);
        assert!(matches!(fresh.subscribe(Some(104)).start, Start::Reset));
        assert!(matches!(fresh.subscribe(Some(999)).start, Start::Backlog(b) if b.is_empty()));
    }

    #[tokio::test]
    async fn live_events_follow_the_backlog_without_gap_and_a_laggard_is_told() {
        let hub = Hub::starting_at(1, 100, 4);
        backend_event(&hub, "a");
        let mut sub = hub.subscribe(Some(0));
        backend_event(&hub, "b");
        let Start::Backlog(b) = &sub.start else {
            panic!("reset")
        };
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), [1]);
        assert_eq!(sub.live.recv().await.unwrap().id, 2);
        for _ in 0..10 {
            backend_event(&hub, "c");
        }
        assert!(matches!(
            sub.live.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[test]
    fn filters_match_backends_instances_and_kinds() {
        let hub = Hub::starting_at(1, 10, 16);
        backend_event(&hub, "a");
        let Start::Backlog(b) = hub.subscribe(Some(0)).start else {
            panic!()
        };
        let e = &b[0];
        let f = |backends: &[&str], kinds: &[&str]| Filter {
            backends: backends.iter().map(|s| s.to_string()).collect(),
            instances: vec![],
            kinds: kinds
                .iter()
                .map(|k| KindFilter::parse(k).unwrap())
                .collect(),
        };
        assert!(f(&[], &[]).matches(e));
        assert!(f(&["a", "z"], &["backend"]).matches(e));
        assert!(f(&["a"], &["backend.available"]).matches(e));
        assert!(!f(&["z"], &[]).matches(e));
        assert!(!f(&[], &["instance", "backend.unavailable"]).matches(e));
        let only_instance = Filter {
            instances: vec!["i-1".into()],
            ..Filter::default()
        };
        assert!(!only_instance.matches(e));
        assert!(KindFilter::parse("instance.exploded").is_none());
        assert!(KindFilter::parse("reset").is_none());
    }

    #[test]
    fn publishing_with_nobody_listening_keeps_the_ring_bounded() {
        let hub = Hub::starting_at(1, 5, 2);
        for _ in 0..50 {
            backend_event(&hub, "a");
        }
        assert_eq!(hub.last_id(), 50);
        let Start::Backlog(b) = hub.subscribe(Some(45)).start else {
            panic!()
        };
        assert_eq!(b.len(), 5);
    }
}
