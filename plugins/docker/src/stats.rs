//! Usage of instances, by one of two paths:
//!
//! - **cgroup** (a local engine): the figures are read where the engine itself reads
//!   them (see `cgroup.rs`): the container's cgroup files and its network namespace's
//!   `/proc/<pid>/net/dev`, found once from the pid of the engine's inspect and kept per
//!   instance ([`LocalSampler`]). CPU percent is the CPU time delta over the wall time
//!   delta between two readings, divided by the allocated cores. The previous reading of
//!   each instance is kept: a call at least [`MIN_WINDOW`] after it measures over the
//!   time since; a closer one answers the last measured window; the first call (or one
//!   more than [`MAX_WINDOW`] after the last) reads twice [`FIRST_WINDOW`] apart, so it
//!   answers a measured figure at once. Nothing is held open on the engine.
//! - **engine stats stream** (a remote engine, or cgroup files that cannot be read): a
//!   stats stream per watched instance keeps the latest sample, so that a repeated
//!   usage call answers from memory at once instead of waiting the second that Docker's
//!   own stats call takes. The first usage call opens the stream and waits for the
//!   first sample that has a CPU delta (about one to two seconds). Later calls read the
//!   latest sample (at most about a second old). A stream closes by itself when the
//!   container stops, when nobody asked for the instance's usage for
//!   `stats_idle_secs`, or when an event says the instance changed (an update of its
//!   limits, a pause, a stop).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::Path;

use crate::cgroup::{self, read_cgroup, CgroupReading, Layout, CGROUP_ROOT};
use bollard::models::{ContainerInspectResponse, ContainerStatsResponse};
use bollard::query_parameters::{InspectContainerOptions, StatsOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::watch;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{CpuUsage, MemoryUsage, NetworkUsage, StorageUsage, Usage};

/// How old the latest sample may be for a fast answer. The engine sends one a second.
const FRESH: Duration = Duration::from_secs(4);
/// How long a first usage call waits for a sample with a CPU delta.
const FIRST_SAMPLE: Duration = Duration::from_secs(4);
/// How often the size of the container's writable layer is measured again.
const STORAGE_REFRESH: Duration = Duration::from_secs(30);
/// A stream that sends nothing for this long is closed.
const STREAM_SILENCE: Duration = Duration::from_secs(10);

/// One stats sample, reduced to what usage needs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Container CPU time since the previous sample (ns).
    pub cpu_delta: u64,
    /// Host CPU time since the previous sample (ns, all CPUs).
    pub system_delta: u64,
    /// CPUs online on the host.
    pub online_cpus: u32,
    /// Memory in use, less the inactive page cache (as `docker stats` shows it).
    pub memory_used: u64,
    /// The memory limit the kernel applies (host memory when unlimited).
    pub memory_limit: u64,
    /// Bytes received over every network.
    pub rx_bytes: u64,
    /// Bytes sent over every network.
    pub tx_bytes: u64,
    /// Whether the sample had a previous one to compute CPU from.
    pub has_cpu_delta: bool,
}

impl Sample {
    /// Reduces the engine's stats document.
    pub fn from_stats(s: &ContainerStatsResponse) -> Self {
        let cpu = s.cpu_stats.as_ref();
        let pre = s.precpu_stats.as_ref();
        let total = |c: Option<&bollard::models::ContainerCpuStats>| {
            c.and_then(|c| c.cpu_usage.as_ref())
                .and_then(|u| u.total_usage)
                .unwrap_or(0)
        };
        let system = |c: Option<&bollard::models::ContainerCpuStats>| {
            c.and_then(|c| c.system_cpu_usage).unwrap_or(0)
        };
        let online_cpus = cpu
            .and_then(|c| c.online_cpus)
            .filter(|n| *n > 0)
            .or_else(|| {
                cpu.and_then(|c| c.cpu_usage.as_ref())
                    .and_then(|u| u.percpu_usage.as_ref())
                    .map(|p| p.len() as u32)
            })
            .unwrap_or(1)
            .max(1);
        let has_cpu_delta = system(pre) > 0 && system(cpu) > system(pre);
        let mem = s.memory_stats.as_ref();
        let usage = mem.and_then(|m| m.usage).unwrap_or(0);
        let inactive = mem
            .and_then(|m| m.stats.as_ref())
            .and_then(|st| {
                st.get("total_inactive_file")
                    .or_else(|| st.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        let memory_used = if inactive < usage {
            usage - inactive
        } else {
            usage
        };
        let (rx_bytes, tx_bytes) = s
            .networks
            .as_ref()
            .map(|n| {
                n.values().fold((0u64, 0u64), |(rx, tx), i| {
                    (rx + i.rx_bytes.unwrap_or(0), tx + i.tx_bytes.unwrap_or(0))
                })
            })
            .unwrap_or_default();
        Sample {
            cpu_delta: total(cpu).saturating_sub(total(pre)),
            system_delta: system(cpu).saturating_sub(system(pre)),
            online_cpus,
            memory_used,
            memory_limit: mem.and_then(|m| m.limit).unwrap_or(0),
            rx_bytes,
            tx_bytes,
            has_cpu_delta,
        }
    }
}

/// What usage needs besides a sample: the instance's allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Allocation {
    /// Cores allocated (fractional), or `None` for no limit (all host CPUs).
    pub cores: Option<f64>,
    /// Memory limit in bytes, or `None` for no limit.
    pub memory_limit: Option<u64>,
    /// Requested storage size, 0 when unbounded.
    pub storage_total: u64,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Usage from a sample: CPU in percent of the allocated cores (0-100).
pub fn usage_from(sample: &Sample, alloc: &Allocation, storage_used: u64) -> Usage {
    let online = f64::from(sample.online_cpus.max(1));
    let allocated = alloc
        .cores
        .filter(|c| *c > 0.0)
        .unwrap_or(online)
        .min(online);
    let cpu = if sample.has_cpu_delta && sample.system_delta > 0 {
        let of_host = sample.cpu_delta as f64 / sample.system_delta as f64 * online * 100.0;
        round2((of_host / allocated).clamp(0.0, 100.0))
    } else {
        0.0
    };
    let limit = alloc
        .memory_limit
        .filter(|l| *l > 0)
        .unwrap_or(sample.memory_limit);
    Usage {
        cpu: CpuUsage {
            usage: cpu,
            cores: alloc.cores.unwrap_or(online).ceil() as u32,
        },
        memory: MemoryUsage::new(sample.memory_used, limit),
        storage: StorageUsage {
            used: storage_used,
            total: alloc.storage_total,
        },
        network: NetworkUsage {
            rx_bytes: sample.rx_bytes,
            tx_bytes: sample.tx_bytes,
        },
    }
}

struct Watcher {
    alloc: Allocation,
    latest: watch::Receiver<Option<(Instant, Sample)>>,
    last_access: Mutex<Instant>,
    storage_used: AtomicU64,
    /// Turns true once the writable layer was measured.
    measured: watch::Sender<bool>,
    alive: AtomicBool,
}

impl Watcher {
    fn touch(&self) {
        *lock(&self.last_access) = Instant::now();
    }
    fn idle(&self) -> Duration {
        lock(&self.last_access).elapsed()
    }
}

type Watchers = Arc<Mutex<HashMap<String, Arc<Watcher>>>>;

/// The stats streams of one backend, by instance id.
#[derive(Clone, Default)]
pub struct StatsCache {
    watchers: Watchers,
    local: Arc<Mutex<HashMap<String, Arc<LocalSampler>>>>,
}

impl StatsCache {
    /// The usage of a watched instance from its cgroup (local engine) or its latest
    /// stream sample, if that answers without waiting.
    pub fn fresh(&self, id: &str) -> Option<Usage> {
        if let Some(l) = self.local(id) {
            match l.fast() {
                Ok(u) => return u,
                Err(e) => {
                    tracing::debug!(instance = %id, error = %e, "usage: cgroup files gone, inspecting again");
                    self.drop_local(id, &l);
                    return None;
                }
            }
        }
        let w = lock(&self.watchers).get(id).cloned()?;
        if !w.alive.load(Ordering::Acquire) {
            return None;
        }
        let (at, sample) = (*w.latest.borrow())?;
        if at.elapsed() > FRESH || !sample.has_cpu_delta {
            return None;
        }
        w.touch();
        Some(usage_from(
            &sample,
            &w.alloc,
            w.storage_used.load(Ordering::Relaxed),
        ))
    }

    /// Memory in use by a watched instance, from its cgroup or a fresh sample.
    pub fn memory_used(&self, id: &str) -> Option<u64> {
        if let Some(l) = self.local(id) {
            return read_cgroup(&l.layout).ok().map(|r| r.memory_used);
        }
        let w = lock(&self.watchers).get(id).cloned()?;
        if !w.alive.load(Ordering::Acquire) {
            return None;
        }
        let (at, sample) = (*w.latest.borrow())?;
        (at.elapsed() <= FRESH).then_some(sample.memory_used)
    }

    /// Stops watching an instance (its limits or state changed).
    pub fn forget(&self, id: &str) {
        lock(&self.local).remove(id);
        if let Some(w) = lock(&self.watchers).remove(id) {
            w.alive.store(false, Ordering::Release);
        }
    }

    /// Stops every stream.
    pub fn clear(&self) {
        lock(&self.local).clear();
        for (_, w) in lock(&self.watchers).drain() {
            w.alive.store(false, Ordering::Release);
        }
    }

    /// Starts (or reuses) the stream of a running instance and answers from its first
    /// sample with a CPU delta.
    pub async fn watch(
        &self,
        docker: Docker,
        id: &str,
        container: &str,
        alloc: Allocation,
        idle: Duration,
    ) -> Option<Usage> {
        let existing = lock(&self.watchers).get(id).cloned();
        let w = match existing {
            Some(w) if w.alive.load(Ordering::Acquire) && w.alloc == alloc => w,
            _ => self.spawn(docker, id, container, alloc, idle),
        };
        w.touch();
        let mut rx = w.latest.clone();
        let mut measured = w.measured.subscribe();
        // The disk is measured beside the stream; both usually take about a second.
        let (with_delta, _) = tokio::join!(
            async {
                let waited = tokio::time::timeout(
                    FIRST_SAMPLE,
                    rx.wait_for(|s| s.is_some_and(|(_, s)| s.has_cpu_delta)),
                )
                .await;
                match waited {
                    Ok(Ok(s)) => *s,
                    _ => None,
                }
            },
            async {
                let _ = tokio::time::timeout(FIRST_SAMPLE, measured.wait_for(|m| *m)).await;
            },
        );
        // No delta in time (or the stream ended): answer with what there is.
        let sample = match with_delta {
            Some((_, s)) => s,
            None => (*w.latest.borrow())?.1,
        };
        Some(usage_from(
            &sample,
            &alloc,
            w.storage_used.load(Ordering::Relaxed),
        ))
    }

    fn local(&self, id: &str) -> Option<Arc<LocalSampler>> {
        lock(&self.local).get(id).cloned()
    }

    fn drop_local(&self, id: &str, l: &Arc<LocalSampler>) {
        let mut map = lock(&self.local);
        if map.get(id).is_some_and(|cur| Arc::ptr_eq(cur, l)) {
            map.remove(id);
        }
    }

    /// The usage of a running instance of a local engine from its cgroup: the sampler
    /// is made (or its pid checked) from the inspect, and a first call measures a
    /// short CPU window. `Err`: the cgroup files cannot be read (the caller falls back
    /// to the engine's stream), with the reason.
    pub async fn local_usage(
        &self,
        docker: Docker,
        id: &str,
        c: &ContainerInspectResponse,
        alloc: Allocation,
    ) -> Result<Usage, String> {
        let pid = c
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or("the engine gives no pid")?;
        let existing = self.local(id).filter(|l| l.pid == pid && l.alloc == alloc);
        let l = match existing {
            Some(l) => l,
            None => {
                let l = Arc::new(LocalSampler::new(docker, c, pid, alloc)?);
                tracing::debug!(
                    instance = %id, pid, cgroup = l.layout.version(), path = ?l.layout,
                    "usage: read from the container's cgroup"
                );
                lock(&self.local).insert(id.to_owned(), Arc::clone(&l));
                l
            }
        };
        let result = l.measured().await;
        if result.is_err() {
            self.drop_local(id, &l);
        }
        result
    }

    fn spawn(
        &self,
        docker: Docker,
        id: &str,
        container: &str,
        alloc: Allocation,
        idle: Duration,
    ) -> Arc<Watcher> {
        let (tx, rx) = watch::channel(None);
        let w = Arc::new(Watcher {
            alloc,
            latest: rx,
            last_access: Mutex::new(Instant::now()),
            storage_used: AtomicU64::new(0),
            measured: watch::Sender::new(false),
            alive: AtomicBool::new(true),
        });
        if let Some(old) = lock(&self.watchers).insert(id.to_owned(), Arc::clone(&w)) {
            old.alive.store(false, Ordering::Release);
        }
        let watchers = Arc::clone(&self.watchers);
        let (id, container, me) = (id.to_owned(), container.to_owned(), Arc::clone(&w));
        tokio::spawn(async move {
            let options = StatsOptions {
                stream: true,
                one_shot: false,
            };
            let mut stream = docker.stats(&container, Some(options));
            let mut measured: Option<Instant> = None;
            while me.alive.load(Ordering::Acquire) && me.idle() < idle {
                if measured.is_none_or(|m| m.elapsed() > STORAGE_REFRESH) {
                    measured = Some(Instant::now());
                    let (docker, container, me) =
                        (docker.clone(), container.clone(), Arc::clone(&me));
                    tokio::spawn(async move {
                        let options = InspectContainerOptions { size: true };
                        if let Ok(Ok(c)) = tokio::time::timeout(
                            STREAM_SILENCE,
                            docker.inspect_container(&container, Some(options)),
                        )
                        .await
                        {
                            let used = c.size_rw.unwrap_or(0).max(0) as u64;
                            me.storage_used.store(used, Ordering::Relaxed);
                            me.measured.send_replace(true);
                        }
                    });
                }
                match tokio::time::timeout(STREAM_SILENCE, stream.next()).await {
                    Ok(Some(Ok(stats))) => {
                        let sample = Sample::from_stats(&stats);
                        let _ = tx.send(Some((Instant::now(), sample)));
                    }
                    _ => break,
                }
            }
            me.alive.store(false, Ordering::Release);
            let mut map = lock(&watchers);
            if map.get(&id).is_some_and(|cur| Arc::ptr_eq(cur, &me)) {
                map.remove(&id);
            }
        });
        w
    }
}

/// How long the first usage call of an instance samples its CPU time.
pub const FIRST_WINDOW: Duration = Duration::from_millis(10);
/// The shortest window between two readings that makes a new CPU figure; a closer
/// call answers the last measured window.
pub const MIN_WINDOW: Duration = Duration::from_millis(100);
/// The longest: an older previous reading would average over history, so a short
/// window is measured again.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);

/// The CPU state of one instance: the previous reading and the last measured window.
#[derive(Default)]
struct CpuWindow {
    /// When, and the cgroup's CPU time then (ns).
    base: Option<(Instant, u64)>,
    /// The last measured window: CPU time used, wall time (ns), and when it ended.
    last: Option<(u64, u64, Instant)>,
}

impl CpuWindow {
    /// Takes a reading (when, CPU time in ns); the window to answer (CPU time used,
    /// wall time in ns), if there is one that is neither too short nor too old.
    fn advance(&mut self, at: Instant, cpu_ns: u64) -> Option<(u64, u64)> {
        let window = self.base.and_then(|(t, cpu)| {
            let wall = at.saturating_duration_since(t);
            (cpu_ns >= cpu && (MIN_WINDOW..=MAX_WINDOW).contains(&wall))
                .then(|| (cpu_ns - cpu, wall.as_nanos() as u64))
        });
        if let Some((used, wall)) = window {
            self.base = Some((at, cpu_ns));
            self.last = Some((used, wall, at));
            return Some((used, wall));
        }
        match (self.base, self.last) {
            // Too close to the previous reading: the last window is still recent.
            (Some((t, _)), Some((used, wall, ended)))
                if at.saturating_duration_since(t) < MIN_WINDOW
                    && at.saturating_duration_since(ended) <= MAX_WINDOW =>
            {
                Some((used, wall))
            }
            _ => None,
        }
    }

    /// A window measured between two readings taken for it; the later one becomes the
    /// base.
    fn measure(&mut self, from: (Instant, u64), to: (Instant, u64)) -> (u64, u64) {
        let used = to.1.saturating_sub(from.1);
        let wall = to.0.saturating_duration_since(from.0).as_nanos() as u64;
        self.base = Some(to);
        self.last = Some((used, wall, to.0));
        (used, wall)
    }
}

/// The cgroup reader of one running instance of a local engine.
pub struct LocalSampler {
    docker: Docker,
    container: String,
    pid: u32,
    layout: Layout,
    /// Whether the network counters are the container's own (not the host's).
    network: bool,
    alloc: Allocation,
    host_memory: u64,
    online: u32,
    cpu: Mutex<CpuWindow>,
    storage_used: Arc<AtomicU64>,
    storage_at: Mutex<Option<Instant>>,
}

/// One reading of everything but storage.
struct Reading {
    at: Instant,
    cgroup: CgroupReading,
    net: (u64, u64),
}

impl LocalSampler {
    fn new(
        docker: Docker,
        c: &ContainerInspectResponse,
        pid: u32,
        alloc: Allocation,
    ) -> Result<Self, String> {
        let container = c.id.clone().ok_or("the engine gives no container id")?;
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| format!("/proc/{pid}/cgroup: {e}"))?;
        let layout = cgroup::locate(Path::new(CGROUP_ROOT), &proc_cgroup, &container)?;
        let network = c
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            .is_none_or(|m| m != "host");
        let l = LocalSampler {
            docker,
            container,
            pid,
            layout,
            network,
            alloc,
            host_memory: cgroup::host_memory().unwrap_or(0),
            online: cgroup::online_cpus(),
            cpu: Mutex::new(CpuWindow::default()),
            storage_used: Arc::new(AtomicU64::new(0)),
            storage_at: Mutex::new(None),
        };
        l.read()?;
        Ok(l)
    }

    fn read(&self) -> Result<Reading, String> {
        let cgroup = read_cgroup(&self.layout)?;
        let net = if self.network {
            cgroup::read_net(self.pid)?
        } else {
            (0, 0)
        };
        Ok(Reading {
            at: Instant::now(),
            cgroup,
            net,
        })
    }

    /// The answer from a reading and a CPU window (CPU time used, wall time in ns).
    fn usage(&self, r: &Reading, cpu_delta: u64, wall_ns: u64) -> Usage {
        let memory_limit = match r.cgroup.memory_limit {
            Some(l) if self.host_memory > 0 => l.min(self.host_memory),
            Some(l) => l,
            None => self.host_memory,
        };
        let sample = Sample {
            cpu_delta,
            // The host's CPU time over the window: every online CPU for its length.
            system_delta: wall_ns.saturating_mul(u64::from(self.online)),
            online_cpus: self.online,
            memory_used: r.cgroup.memory_used,
            memory_limit,
            rx_bytes: r.net.0,
            tx_bytes: r.net.1,
            has_cpu_delta: true,
        };
        usage_from(
            &sample,
            &self.alloc,
            self.storage_used.load(Ordering::Relaxed),
        )
    }

    fn advance_cpu(&self, r: &Reading) -> Option<(u64, u64)> {
        lock(&self.cpu).advance(r.at, r.cgroup.cpu_ns)
    }

    /// The answer without waiting, when there is a recent CPU window.
    fn fast(&self) -> Result<Option<Usage>, String> {
        let r = self.read()?;
        self.refresh_storage(false);
        Ok(self
            .advance_cpu(&r)
            .map(|(used, wall)| self.usage(&r, used, wall)))
    }

    /// The answer with a CPU window measured now if there is none (two readings
    /// [`FIRST_WINDOW`] apart); the writable layer is measured meanwhile the first time.
    async fn measured(&self) -> Result<Usage, String> {
        let r = self.read()?;
        if let Some((used, wall)) = self.advance_cpu(&r) {
            self.refresh_storage(false);
            return Ok(self.usage(&r, used, wall));
        }
        let first = self.refresh_storage(true);
        let (next, _) = tokio::join!(
            async {
                tokio::time::sleep(FIRST_WINDOW).await;
                self.read()
            },
            async {
                if let Some(task) = first {
                    let _ = tokio::time::timeout(FIRST_SAMPLE, task).await;
                }
            }
        );
        let next = next?;
        let (used, wall) =
            lock(&self.cpu).measure((r.at, r.cgroup.cpu_ns), (next.at, next.cgroup.cpu_ns));
        Ok(self.usage(&next, used, wall))
    }

    /// Measures the writable layer again (an inspect with sizes, in the background)
    /// when it never was or [`STORAGE_REFRESH`] ago; the task when started.
    fn refresh_storage(&self, first: bool) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut at = lock(&self.storage_at);
            match *at {
                None => {}
                Some(_) if first => return None,
                Some(t) if t.elapsed() <= STORAGE_REFRESH => return None,
                Some(_) => {}
            }
            *at = Some(Instant::now());
        }
        let rt = crate::client::runtime().ok()?;
        let (docker, container) = (self.docker.clone(), self.container.clone());
        let used = Arc::clone(&self.storage_used);
        Some(rt.spawn(async move {
            let options = InspectContainerOptions { size: true };
            if let Ok(Ok(c)) = tokio::time::timeout(
                STREAM_SILENCE,
                docker.inspect_container(&container, Some(options)),
            )
            .await
            {
                used.store(c.size_rw.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerNetworkStats,
    };

    fn stats(cpu: u64, pre_cpu: u64, sys: u64, pre_sys: u64) -> ContainerStatsResponse {
        let cpu_stats = |total, system| ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: Some(4),
            ..Default::default()
        };
        let mut networks = HashMap::new();
        networks.insert(
            "eth0".to_owned(),
            ContainerNetworkStats {
                rx_bytes: Some(100),
                tx_bytes: Some(50),
                ..Default::default()
            },
        );
        ContainerStatsResponse {
            cpu_stats: Some(cpu_stats(cpu, sys)),
            precpu_stats: Some(cpu_stats(pre_cpu, pre_sys)),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(300),
                limit: Some(1000),
                stats: Some(HashMap::from([("total_inactive_file".to_owned(), 100)])),
                ..Default::default()
            }),
            networks: Some(networks),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_is_a_percent_of_the_allocated_cores() {
        // The container used one core's worth of a 4-CPU host during the interval.
        let s = Sample::from_stats(&stats(1_500, 500, 9_000, 5_000));
        assert_eq!((s.cpu_delta, s.system_delta), (1_000, 4_000));
        assert!(s.has_cpu_delta);
        let one_core = usage_from(
            &s,
            &Allocation {
                cores: Some(1.0),
                ..Default::default()
            },
            0,
        );
        assert_eq!(one_core.cpu.usage, 100.0);
        assert_eq!(one_core.cpu.cores, 1);
        let two_cores = usage_from(
            &s,
            &Allocation {
                cores: Some(2.0),
                ..Default::default()
            },
            0,
        );
        assert_eq!(two_cores.cpu.usage, 50.0);
        let unlimited = usage_from(&s, &Allocation::default(), 0);
        assert_eq!(unlimited.cpu.usage, 25.0);
        assert_eq!(unlimited.cpu.cores, 4);
    }

    #[test]
    fn memory_network_and_storage() {
        let s = Sample::from_stats(&stats(10, 0, 20, 10));
        assert_eq!(s.memory_used, 200);
        let u = usage_from(
            &s,
            &Allocation {
                memory_limit: Some(400),
                storage_total: 1 << 20,
                ..Default::default()
            },
            7,
        );
        assert_eq!(u.memory.limit, 400);
        assert_eq!(u.memory.percentage, 50.0);
        assert_eq!(u.network.rx_bytes, 100);
        assert_eq!(u.network.tx_bytes, 50);
        assert_eq!(u.storage.used, 7);
        assert_eq!(u.storage.total, 1 << 20);
        let host = usage_from(&s, &Allocation::default(), 0);
        assert_eq!(host.memory.limit, 1000);
    }

    #[test]
    fn cpu_windows_between_readings() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = CpuWindow::default();
        // Nothing before: the caller measures a window of its own.
        assert_eq!(w.advance(t0, 1_000), None);
        assert_eq!(
            w.measure((t0, 1_000), (ms(15), 16_000_000)),
            (15_999_000, 15_000_000)
        );
        // A call right after answers that window again, without moving the base.
        assert_eq!(
            w.advance(ms(20), 17_000_000),
            Some((15_999_000, 15_000_000))
        );
        // One past the minimum window measures since the base.
        assert_eq!(
            w.advance(ms(215), 116_000_000),
            Some((100_000_000, 200_000_000))
        );
        // The percent of one allocated core of a 4-CPU host: half of it.
        let s = Sample {
            cpu_delta: 100_000_000,
            system_delta: 200_000_000 * 4,
            online_cpus: 4,
            has_cpu_delta: true,
            ..Default::default()
        };
        let one = Allocation {
            cores: Some(1.0),
            ..Default::default()
        };
        assert_eq!(usage_from(&s, &one, 0).cpu.usage, 50.0);
        // CPU time going back (another cgroup) or a base too old: measure again.
        assert_eq!(w.advance(ms(500), 1), None);
        let mut w = CpuWindow::default();
        w.measure((t0, 0), (ms(15), 1));
        assert_eq!(w.advance(t0 + MAX_WINDOW + Duration::from_secs(1), 5), None);
    }

    #[test]
    fn first_sample_has_no_cpu() {
        let s = Sample::from_stats(&stats(10, 0, 20, 0));
        assert!(!s.has_cpu_delta);
        assert_eq!(usage_from(&s, &Allocation::default(), 0).cpu.usage, 0.0);
    }
}
