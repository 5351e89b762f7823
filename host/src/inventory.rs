//! The in-memory inventory: every known instance, by id and by name, in list order.
//!
//! List and get are answered from here and never wait on a backend. It is filled at
//! start, updated from each operation's result, from backend events, and by periodic
//! resyncs. It also reserves names, so that two creates of one name, even on two
//! backends at once, cannot both succeed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use unicompute_plugin_api::sync::{read, write};
use unicompute_plugin_api::{Instance, InstanceState};

use crate::events::{Hub, Source};

type Key = (DateTime<Utc>, String);

/// An instance, and its JSON as the API serves it, made at its first read after a
/// change and then served as is: a read copies bytes instead of serializing.
struct Entry {
    instance: Arc<Instance>,
    /// Shared with the instance's [`Slot`], so that a list page reads it from there.
    json: Arc<OnceLock<Bytes>>,
    /// `seq` of its last upsert: a resync only overrides what changed before it began.
    touched: u64,
}

impl Entry {
    fn new(instance: Arc<Instance>, touched: u64) -> Self {
        Entry {
            instance,
            json: Arc::default(),
            touched,
        }
    }

    /// The instance's JSON (empty if it could not be encoded, which a struct of
    /// strings, numbers and string-keyed maps cannot fail).
    fn json(&self) -> Bytes {
        json_of(&self.json, &self.instance)
    }
}

/// The JSON in `cell`, made from `instance` if it is not there yet.
fn json_of(cell: &OnceLock<Bytes>, instance: &Instance) -> Bytes {
    cell.get_or_init(|| {
        serde_json::to_vec(instance)
            .map(Bytes::from)
            .unwrap_or_default()
    })
    .clone()
}

/// What a list walks, in list order, for each instance: its state and a summary of
/// its labels and backend inline, so that a filter rules most instances out without
/// reading them (the instance itself is elsewhere in memory: one cache miss each).
/// The slots of the whole list are one array ([`Inner::slots`]), read in sequence.
struct Slot {
    state: InstanceState,
    /// The bits of [`bits`] for each label and the backend: a filter needing a bit
    /// that is not here cannot match. Set bits prove nothing: a match is always
    /// checked on the instance.
    bloom: u64,
    instance: Arc<Instance>,
    /// The entry's JSON cell: a page of the list needs no lookup by id.
    json: Arc<OnceLock<Bytes>>,
}

impl Slot {
    fn of(entry: &Entry) -> Self {
        let instance = &entry.instance;
        let mut bloom = bits(BACKEND, &instance.backend, "");
        for (k, v) in &instance.metadata.labels {
            bloom |= bits(LABEL, k, v);
        }
        Slot {
            state: instance.state,
            bloom,
            instance: Arc::clone(instance),
            json: Arc::clone(&entry.json),
        }
    }

    fn json(&self) -> Bytes {
        json_of(&self.json, &self.instance)
    }
}

const BACKEND: u8 = 0;
const LABEL: u8 = 1;

/// Two of 64 bits for a label `k=v` (or a backend), from a hash that is the same
/// for the same input within the process.
fn bits(tag: u8, k: &str, v: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (tag, k, v).hash(&mut h);
    let h = h.finish();
    (1 << (h & 63)) | (1 << ((h >> 6) & 63))
}

/// How many instances a resync applies per hold of the write lock: readers wait
/// for one batch at most, not for the whole list.
const RESYNC_BATCH: usize = 256;

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    /// name -> id (of an instance, or of a create in progress)
    names: HashMap<String, String>,
    /// list order: createdAt, then id
    order: BTreeSet<Key>,
    /// The list order as one array of [`Slot`]s, made at the first list after a
    /// change (of the order, or of an instance), then read by every list until the
    /// next: a page without a filter is a slice of it, a filter's walk reads memory in
    /// sequence. A resync that changes nothing keeps it.
    slots: OnceLock<Vec<Slot>>,
    /// Counts every change; a resync only overrides what changed before it began.
    seq: u64,
    /// id -> `seq` and time of its removal, for [`GONE_FOR`]
    gone: HashMap<String, (u64, Instant)>,
}

impl Inner {
    /// The list order's slots (made now if a change dropped them).
    fn slots(&self) -> &[Slot] {
        self.slots.get_or_init(|| {
            self.order
                .iter()
                .filter_map(|(_, id)| self.by_id.get(id))
                .map(Slot::of)
                .collect()
        })
    }

    /// Whether `id` was upserted or removed after change `since`.
    fn newer(&self, id: &str, since: u64) -> bool {
        self.by_id.get(id).is_some_and(|e| e.touched > since)
            || self.gone.get(id).is_some_and(|(s, _)| *s > since)
    }
}

/// How long a removed id is remembered: a late event about it, or a resync that
/// listed the backend before the removal, does not bring it back meanwhile.
const GONE_FOR: Duration = Duration::from_secs(300);

/// The inventory. Every change it takes is published on its [`Hub`], under its lock,
/// so that the events of one instance are in the order of its changes.
#[derive(Default)]
pub struct Inventory {
    inner: RwLock<Inner>,
    hub: Arc<Hub>,
}

/// A filter for [`Inventory::list`].
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this backend.
    pub backend: Option<String>,
    /// Only this state.
    pub state: Option<InstanceState>,
    /// Every label must match.
    pub labels: Vec<(String, String)>,
}

impl ListFilter {
    /// Whether it lets every instance through.
    fn is_empty(&self) -> bool {
        self.backend.is_none() && self.state.is_none() && self.labels.is_empty()
    }

    /// The bits a [`Slot`] must have to match.
    fn bloom(&self) -> u64 {
        let mut need = self.backend.as_deref().map_or(0, |b| bits(BACKEND, b, ""));
        for (k, v) in &self.labels {
            need |= bits(LABEL, k, v);
        }
        need
    }

    /// Whether an instance of this slot can match (`need` is [`ListFilter::bloom`]).
    fn may_match(&self, slot: &Slot, need: u64) -> bool {
        slot.bloom & need == need && self.state.is_none_or(|s| slot.state == s)
    }

    fn matches(&self, i: &Instance) -> bool {
        self.backend.as_deref().is_none_or(|b| i.backend == b)
            && self.state.is_none_or(|s| i.state == s)
            && self
                .labels
                .iter()
                .all(|(k, v)| i.metadata.labels.get(k) == Some(v))
    }
}

/// A name held for a create in progress; released on drop unless the create committed.
pub struct NameReservation<'a> {
    inventory: &'a Inventory,
    name: String,
    id: String,
    committed: bool,
}

impl NameReservation<'_> {
    /// Puts the created instance in the inventory; the name now belongs to it.
    pub fn commit(mut self, instance: Instance) -> Arc<Instance> {
        self.committed = true;
        self.inventory.upsert(instance, Source::Api)
    }
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let mut inner = self.inventory.write();
            if inner.names.get(&self.name) == Some(&self.id) {
                inner.names.remove(&self.name);
            }
        }
    }
}

impl Inventory {
    /// An empty inventory publishing on `hub`.
    pub fn with_hub(hub: Arc<Hub>) -> Self {
        Inventory {
            inner: RwLock::default(),
            hub,
        }
    }

    /// Where its changes are published.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the data is plain maps that
        // every writer leaves consistent before anything can panic, so keep going.
        read(&self.inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        write(&self.inner)
    }

    /// Holds `name` for instance `id`, or `None` if the name is taken.
    pub fn reserve_name(&self, name: &str, id: &str) -> Option<NameReservation<'_>> {
        let mut inner = self.write();
        if inner.names.contains_key(name) {
            return None;
        }
        inner.names.insert(name.to_owned(), id.to_owned());
        Some(NameReservation {
            inventory: self,
            name: name.to_owned(),
            id: id.to_owned(),
            committed: false,
        })
    }

    /// Adds or replaces an instance. `updatedAt` never goes backwards. What changed
    /// is published, as caused by `source`.
    pub fn upsert(&self, instance: Instance, source: Source) -> Arc<Instance> {
        let mut inner = self.write();
        self.upsert_locked(&mut inner, instance, source)
    }

    fn upsert_locked(
        &self,
        inner: &mut Inner,
        mut instance: Instance,
        source: Source,
    ) -> Arc<Instance> {
        inner.seq += 1;
        let seq = inner.seq;
        inner.gone.remove(&instance.id);
        let Inner { by_id, names, .. } = inner;
        if let Some(entry) = by_id.get_mut(&instance.id) {
            let old = &entry.instance;
            if old.updated_at > instance.updated_at {
                instance.updated_at = old.updated_at;
            }
            // Unchanged (a resync lists what is known): the same entry stays, with
            // the JSON already made, in its place in the list; nothing to publish.
            if **old == instance {
                entry.touched = seq;
                if names.get(&old.name) != Some(&old.id) {
                    names.insert(old.name.clone(), old.id.clone());
                }
                return Arc::clone(old);
            }
        }
        let before = inner
            .by_id
            .get(&instance.id)
            .map(|e| Arc::clone(&e.instance));
        if let Some(old) = &before {
            inner.order.remove(&(old.created_at, old.id.clone()));
            if old.name != instance.name && inner.names.get(&old.name) == Some(&old.id) {
                inner.names.remove(&old.name);
            }
        }
        let arc = Arc::new(instance);
        inner.slots.take();
        inner.names.insert(arc.name.clone(), arc.id.clone());
        inner.order.insert((arc.created_at, arc.id.clone()));
        inner
            .by_id
            .insert(arc.id.clone(), Entry::new(Arc::clone(&arc), seq));
        self.hub.instance_changed(before.as_deref(), &arc, source);
        arc
    }

    /// An instance a backend's event reports, unless it was removed less than
    /// [`GONE_FOR`] ago (the event is older news than the removal).
    pub fn upsert_reported(&self, instance: Instance) -> Option<Arc<Instance>> {
        let recently_gone = self
            .read()
            .gone
            .get(&instance.id)
            .is_some_and(|(_, at)| at.elapsed() < GONE_FOR);
        if recently_gone {
            return None;
        }
        Some(self.upsert(instance, Source::Backend))
    }

    /// The change counter now: pass it to [`Inventory::replace_backend`] for a list
    /// taken after this point.
    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// Removes an instance; returns it if it was there. Its removal is published, as
    /// caused by `source`.
    pub fn remove(&self, id: &str, source: Source) -> Option<Arc<Instance>> {
        let mut inner = self.write();
        inner.seq += 1;
        let seq = inner.seq;
        let now = Instant::now();
        inner
            .gone
            .retain(|_, (_, at)| now.duration_since(*at) < GONE_FOR);
        inner.gone.insert(id.to_owned(), (seq, now));
        let old = inner.by_id.remove(id)?.instance;
        inner.order.remove(&(old.created_at, old.id.clone()));
        inner.slots.take();
        if inner.names.get(&old.name).map(String::as_str) == Some(id) {
            inner.names.remove(&old.name);
        }
        self.hub.instance_deleted(&old, source);
        Some(old)
    }

    /// One instance by id.
    pub fn get(&self, id: &str) -> Option<Arc<Instance>> {
        self.read().by_id.get(id).map(|e| Arc::clone(&e.instance))
    }

    /// One instance's JSON, by id.
    pub fn get_json(&self, id: &str) -> Option<Bytes> {
        self.read().by_id.get(id).map(Entry::json)
    }

    /// One instance's JSON, by name.
    pub fn get_json_by_name(&self, name: &str) -> Option<Bytes> {
        let inner = self.read();
        inner
            .names
            .get(name)
            .and_then(|id| inner.by_id.get(id))
            .map(Entry::json)
    }

    /// One instance by name.
    pub fn get_by_name(&self, name: &str) -> Option<Arc<Instance>> {
        let inner = self.read();
        inner
            .names
            .get(name)
            .and_then(|id| inner.by_id.get(id))
            .map(|e| Arc::clone(&e.instance))
    }

    /// A page of the matching instances in list order, and how many match in all.
    pub fn list(
        &self,
        filter: &ListFilter,
        page: usize,
        page_size: usize,
    ) -> (Vec<Arc<Instance>>, usize) {
        self.page(filter, page, page_size, |s| Arc::clone(&s.instance))
    }

    /// [`Inventory::list`], as each instance's JSON.
    pub fn list_json(
        &self,
        filter: &ListFilter,
        page: usize,
        page_size: usize,
    ) -> (Vec<Bytes>, usize) {
        self.page(filter, page, page_size, Slot::json)
    }

    /// The list's [`Slot`]s: without a filter, the page is a slice of them and only
    /// its instances are read; with one, every slot is looked at (the total counts
    /// them all) and only the instances that may match are read.
    fn page<T>(
        &self,
        filter: &ListFilter,
        page: usize,
        page_size: usize,
        take: impl Fn(&Slot) -> T,
    ) -> (Vec<T>, usize) {
        let inner = self.read();
        let slots = inner.slots();
        let skip = (page.saturating_sub(1)).saturating_mul(page_size);
        let mut out = Vec::with_capacity(page_size.min(slots.len()));
        if filter.is_empty() {
            let end = skip.saturating_add(page_size).min(slots.len());
            let page = slots.get(skip..end).unwrap_or_default();
            out.extend(page.iter().map(&take));
            return (out, slots.len());
        }
        let need = filter.bloom();
        // The slot says all of a filter on the state alone.
        let exact = filter.backend.is_none() && filter.labels.is_empty();
        let mut total = 0;
        for slot in slots {
            if !filter.may_match(slot, need) || !(exact || filter.matches(&slot.instance)) {
                continue;
            }
            if total >= skip && out.len() < page_size {
                out.push(take(slot));
            }
            total += 1;
        }
        (out, total)
    }

    /// Every instance of a backend.
    pub fn of_backend(&self, backend: &str) -> Vec<Arc<Instance>> {
        self.read()
            .by_id
            .values()
            .filter(|e| e.instance.backend == backend)
            .map(|e| Arc::clone(&e.instance))
            .collect()
    }

    /// Replaces what is known of one backend by a fresh full list. Instances whose id
    /// is in `busy` (an operation in progress) keep their current entry.
    /// `since` is [`Inventory::seq`] from before the list was asked for: an instance
    /// added, changed or removed after that (an operation that ended while the list
    /// was being made) keeps what it has now.
    pub fn replace_backend(
        &self,
        backend: &str,
        fresh: Vec<Instance>,
        busy: &BTreeSet<String>,
        since: u64,
    ) {
        let stale: Vec<String> = {
            let fresh_ids: HashSet<&str> = fresh.iter().map(|i| i.id.as_str()).collect();
            let inner = self.read();
            inner
                .by_id
                .values()
                .map(|e| &e.instance)
                .filter(|i| {
                    i.backend == backend
                        && !fresh_ids.contains(i.id.as_str())
                        && !busy.contains(&i.id)
                        && !inner.newer(&i.id, since)
                })
                .map(|i| i.id.clone())
                .collect()
        };
        for id in stale {
            self.remove(&id, Source::Backend);
        }
        // In batches, each under one hold of the lock: what is unchanged (most of a
        // resync) costs a lookup and a comparison, and allocates nothing.
        let mut fresh = fresh.into_iter().peekable();
        while fresh.peek().is_some() {
            let mut inner = self.write();
            for inst in fresh.by_ref().take(RESYNC_BATCH) {
                if !busy.contains(&inst.id) && !inner.newer(&inst.id, since) {
                    self.upsert_locked(&mut inner, inst, Source::Backend);
                }
            }
        }
    }

    /// How many instances each backend has in each state.
    pub fn count_by_backend_state(&self) -> BTreeMap<(String, &'static str), usize> {
        let mut out = BTreeMap::new();
        for e in self.read().by_id.values() {
            let i = &e.instance;
            *out.entry((i.backend.clone(), i.state.as_str()))
                .or_default() += 1;
        }
        out
    }

    /// Counts per backend: (instances, cores of active ones, memory of active ones).
    pub fn usage_by_backend(&self) -> BTreeMap<String, (usize, u64, u64)> {
        let mut out: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
        for entry in self.read().by_id.values() {
            let i = &entry.instance;
            let e = out.entry(i.backend.clone()).or_default();
            e.0 += 1;
            if i.state.is_active() {
                e.1 += u64::from(i.resources.cores().unwrap_or(0));
                e.2 += i.resources.memory_limit().unwrap_or(0);
            }
        }
        out
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether there is no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicompute_plugin_api::{InstanceType, Metadata};

    fn inst(id: &str, name: &str, backend: &str, secs: i64) -> Instance {
        let t = DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        Instance {
            id: id.into(),
            name: name.into(),
            uuid: String::new(),
            instance_type: InstanceType::Container,
            backend: backend.into(),
            state: InstanceState::Running,
            status: Default::default(),
            config: Default::default(),
            resources: Default::default(),
            pending_resources: None,
            metadata: Metadata::default(),
            created_at: t,
            updated_at: t,
        }
    }

    #[test]
    fn list_orders_pages_and_counts() {
        let inv = Inventory::default();
        for n in 0..10 {
            inv.upsert(
                inst(
                    &format!("i{n}"),
                    &format!("n{n}"),
                    if n % 2 == 0 { "a" } else { "b" },
                    10 - n,
                ),
                Source::Api,
            );
        }
        let (page, total) = inv.list(&ListFilter::default(), 1, 3);
        assert_eq!(total, 10);
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["i9", "i8", "i7"]
        );
        let f = ListFilter {
            backend: Some("a".into()),
            ..Default::default()
        };
        let (page, total) = inv.list(&f, 2, 2);
        assert_eq!(total, 5);
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["i4", "i2"]
        );
        let (page, total) = inv.list(&f, 9, 2);
        assert_eq!((page.len(), total), (0, 5));
    }

    /// Instances of two backends, in four states, labelled `n=<n % 7>` and, one
    /// in three, `odd=yes`.
    fn many(count: usize) -> Inventory {
        let inv = Inventory::default();
        for n in 0..count {
            let mut i = inst(
                &format!("i{n:04}"),
                &format!("n{n}"),
                if n % 5 == 0 { "b" } else { "a" },
                (n / 2) as i64,
            );
            i.state = InstanceState::ALL[n % 4];
            i.metadata.labels.insert("n".into(), (n % 7).to_string());
            if n % 3 == 0 {
                i.metadata.labels.insert("odd".into(), "yes".into());
            }
            inv.upsert(i, Source::Api);
        }
        inv
    }

    #[test]
    fn pages_and_filters_are_those_of_a_plain_scan() {
        let inv = many(500);
        let mut all: Vec<Arc<Instance>> = (0..500)
            .map(|n| inv.get(&format!("i{n:04}")).unwrap())
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let label = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let filters = [
            ListFilter::default(),
            ListFilter {
                state: Some(InstanceState::Running),
                ..Default::default()
            },
            ListFilter {
                labels: vec![label("n", "3")],
                ..Default::default()
            },
            ListFilter {
                labels: vec![label("n", "3"), label("odd", "yes")],
                state: Some(InstanceState::Created),
                ..Default::default()
            },
            ListFilter {
                backend: Some("b".into()),
                labels: vec![label("odd", "yes")],
                ..Default::default()
            },
            ListFilter {
                labels: vec![label("n", "nope")],
                ..Default::default()
            },
            ListFilter {
                backend: Some("c".into()),
                ..Default::default()
            },
        ];
        for f in &filters {
            let want: Vec<&str> = all
                .iter()
                .filter(|i| f.matches(i))
                .map(|i| i.id.as_str())
                .collect();
            for size in [1, 7, 100, 499, 500, 1000] {
                for page in 1..=(500 / size + 2) {
                    let (got, total) = inv.list(f, page, size);
                    assert_eq!(total, want.len(), "{f:?}");
                    let from = ((page - 1) * size).min(want.len());
                    let to = (from + size).min(want.len());
                    assert_eq!(
                        got.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
                        want[from..to],
                        "{f:?} page {page} of {size}"
                    );
                    let (json, _) = inv.list_json(f, page, size);
                    assert_eq!(json.len(), to - from);
                }
            }
        }
        // A change of state or labels moves the instance between filters.
        let mut i = (*inv.get("i0001").unwrap()).clone();
        i.state = InstanceState::Paused;
        i.metadata.labels.insert("n".into(), "nope".into());
        inv.upsert(i, Source::Backend);
        assert_eq!(inv.list(&filters[5], 1, 10).1, 1);
        let paused = ListFilter {
            state: Some(InstanceState::Paused),
            ..Default::default()
        };
        assert!(inv.list(&paused, 1, 500).0.iter().any(|i| i.id == "i0001"));
        inv.remove("i0001", Source::Api);
        assert_eq!(inv.list(&filters[5], 1, 10).1, 0);
        assert_eq!(inv.list(&ListFilter::default(), 1, 10).1, 499);
        assert!(inv.list(&paused, 1, 500).0.iter().all(|i| i.id != "i0001"));
    }

    #[test]
    fn an_unchanged_resync_keeps_every_entry_and_publishes_nothing() {
        let inv = many(1000);
        let listed: Vec<Instance> = inv.of_backend("a").iter().map(|i| (**i).clone()).collect();
        let json = inv.get_json("i0007").unwrap();
        let event = inv.hub().last_id();
        let since = inv.seq();
        inv.replace_backend("a", listed.clone(), &BTreeSet::new(), since);
        assert_eq!(inv.len(), 1000, "the other backend's are kept");
        assert_eq!(inv.hub().last_id(), event, "nothing changed, nothing said");
        assert_eq!(inv.get_json("i0007").unwrap().as_ptr(), json.as_ptr());
        assert!(inv.seq() > since, "each instance listed counts as touched");
        // A list taken before that resync changes nothing it touched...
        let mut stale = listed.clone();
        stale[0].state = InstanceState::Error;
        let id = stale[0].id.clone();
        inv.replace_backend("a", stale.clone(), &BTreeSet::new(), since);
        assert_ne!(inv.get(&id).unwrap().state, InstanceState::Error);
        // ...and a newer one does, and says so, once.
        inv.replace_backend("a", stale, &BTreeSet::new(), inv.seq());
        assert_eq!(inv.get(&id).unwrap().state, InstanceState::Error);
        assert_eq!(inv.hub().last_id(), event + 1);
        assert_eq!(inv.len(), 1000);
    }

    #[test]
    fn cached_json_follows_every_change() {
        let inv = Inventory::default();
        assert!(inv.get_json("i1").is_none());
        inv.upsert(inst("i1", "web", "a", 0), Source::Api);
        let first = inv.get_json("i1").unwrap();
        assert_eq!(first, serde_json::to_vec(&*inv.get("i1").unwrap()).unwrap());
        assert_eq!(inv.get_json_by_name("web").unwrap(), first);
        // The same instance again (a resync): the same bytes, not made again.
        inv.upsert(inst("i1", "web", "a", 0), Source::Backend);
        assert_eq!(inv.get_json("i1").unwrap().as_ptr(), first.as_ptr());
        // A change: new bytes.
        let mut changed = inst("i1", "web2", "a", 0);
        changed.state = InstanceState::Stopped;
        inv.upsert(changed, Source::Backend);
        let second = inv.get_json("i1").unwrap();
        assert_eq!(
            second,
            serde_json::to_vec(&*inv.get("i1").unwrap()).unwrap()
        );
        assert_ne!(second, first);
        assert!(inv.get_json_by_name("web").is_none());
        assert_eq!(inv.get_json_by_name("web2").unwrap(), second);
        let (page, total) = inv.list_json(&ListFilter::default(), 1, 10);
        assert_eq!((page, total), (vec![second], 1));
        inv.remove("i1", Source::Api);
        assert!(inv.get_json("i1").is_none());
        assert!(inv.get_json_by_name("web2").is_none());
    }

    #[test]
    fn names_are_reserved_once_and_released_on_failure() {
        let inv = Inventory::default();
        let r = inv.reserve_name("web", "i1").unwrap();
        assert!(inv.reserve_name("web", "i2").is_none());
        drop(r);
        let r = inv.reserve_name("web", "i3").unwrap();
        r.commit(inst("i3", "web", "a", 0));
        assert!(inv.reserve_name("web", "i4").is_none());
        assert_eq!(inv.get_by_name("web").unwrap().id, "i3");
        inv.remove("i3", Source::Api);
        assert!(inv.reserve_name("web", "i5").is_some());
    }

    #[test]
    fn resync_replaces_but_spares_busy_instances() {
        let inv = Inventory::default();
        inv.upsert(inst("i1", "one", "a", 0), Source::Api);
        inv.upsert(inst("i2", "two", "a", 1), Source::Api);
        inv.upsert(inst("i3", "three", "b", 2), Source::Api);
        let busy = BTreeSet::from(["i2".to_owned()]);
        let since = inv.seq();
        inv.replace_backend("a", vec![inst("i4", "four", "a", 3)], &busy, since);
        assert!(inv.get("i1").is_none());
        assert!(inv.get("i2").is_some());
        assert!(inv.get("i3").is_some());
        assert!(inv.get("i4").is_some());
        assert!(inv.get_by_name("one").is_none());
    }

    #[test]
    fn a_resync_does_not_undo_what_changed_while_it_listed() {
        let inv = Inventory::default();
        inv.upsert(inst("old", "old", "a", 0), Source::Api);
        let since = inv.seq();
        // While the backend lists: a create and a delete finish.
        inv.upsert(inst("new", "new", "a", 1), Source::Api);
        inv.remove("old", Source::Api);
        // The list was made before both: it has "old" and not "new".
        inv.replace_backend(
            "a",
            vec![inst("old", "old", "a", 0)],
            &BTreeSet::new(),
            since,
        );
        assert!(inv.get("new").is_some(), "a fresh create was dropped");
        assert!(inv.get("old").is_none(), "a delete was undone");
        // A later resync is authoritative again.
        let since = inv.seq();
        inv.replace_backend("a", vec![], &BTreeSet::new(), since);
        assert!(inv.get("new").is_none());
    }

    #[test]
    fn late_events_do_not_bring_back_a_removed_instance() {
        let inv = Inventory::default();
        inv.upsert(inst("i1", "one", "a", 0), Source::Api);
        inv.remove("i1", Source::Api);
        assert!(inv.upsert_reported(inst("i1", "one", "a", 0)).is_none());
        assert!(inv.get("i1").is_none());
        assert!(inv.upsert_reported(inst("i2", "two", "a", 0)).is_some());
    }

    #[test]
    fn updated_at_never_goes_back() {
        let inv = Inventory::default();
        let mut a = inst("i1", "one", "a", 0);
        a.updated_at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        inv.upsert(a, Source::Api);
        inv.upsert(inst("i1", "one", "a", 0), Source::Api);
        assert_eq!(inv.get("i1").unwrap().updated_at.timestamp(), 1_800_000_000);
    }
}
