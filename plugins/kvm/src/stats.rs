//! Resource usage of an instance: CPU percent from cpu-time deltas, memory from the
//! balloon, storage from the disk, network from the interface counters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use unicompute_plugin_api::{CpuUsage, MemoryUsage, NetworkUsage, StorageUsage, Usage};
use virt::domain::DomainState;
use virt::sys;

use crate::backend::{Found, Inner};
use crate::error::KvmError;

/// How long the first usage call of a domain samples its CPU time.
const FIRST_SAMPLE: Duration = Duration::from_millis(100);

/// The last CPU-time sample of each running domain, by UUID.
#[derive(Default)]
pub struct CpuSamples {
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl CpuSamples {
    /// Stores a sample and returns the previous one.
    fn swap(&self, uuid: &str, sample: (Instant, u64)) -> Option<(Instant, u64)> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uuid.to_owned(), sample)
    }

    /// Drops the sample of a domain.
    pub fn forget(&self, uuid: &str) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uuid);
    }
}

/// Percent of `vcpus` cores used between two samples, 0-100.
pub fn cpu_percent(prev: (Instant, u64), now: (Instant, u64), vcpus: u32) -> f64 {
    let wall = now.0.saturating_duration_since(prev.0).as_nanos() as f64;
    if wall <= 0.0 || now.1 < prev.1 || vcpus == 0 {
        return 0.0;
    }
    let used = (now.1 - prev.1) as f64;
    (used * 100.0 / (wall * f64::from(vcpus))).clamp(0.0, 100.0)
}

/// Guest memory in use (bytes) from balloon stats (KiB), if they say.
pub fn balloon_used(stats: &[(u32, u64)]) -> Option<u64> {
    let get = |tag: u32| stats.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    if let (Some(avail), Some(unused)) = (
        get(sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE),
        get(sys::VIR_DOMAIN_MEMORY_STAT_UNUSED),
    ) {
        return Some(avail.saturating_sub(unused).saturating_mul(1024));
    }
    get(sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON).map(|v| v.saturating_mul(1024))
}

/// The shortest window between two usage calls that is used as it is.
const MIN_WINDOW: Duration = Duration::from_millis(50);
/// The longest: an older previous sample would average over history.
const MAX_WINDOW: Duration = Duration::from_secs(60);

/// The usage of one instance.
pub(crate) fn usage(inner: &Inner, found: &Found) -> Result<Usage, KvmError> {
    let dom = &found.dom;
    let uuid = &found.doc.uuid;
    let info = dom
        .info()
        .map_err(KvmError::libvirt("reading domain info"))?;
    let active = !matches!(
        info.state.known(),
        Some(DomainState::Shutoff | DomainState::Crashed | DomainState::NoState) | None
    );
    let vcpus = found.doc.vcpus();
    let cpu = if active {
        let sample = (Instant::now(), info.cpu_time);
        match inner.cpu.swap(uuid, sample) {
            // The previous call's sample makes the window when it is neither so
            // recent that the numbers are noise nor so old that they are history.
            Some(prev)
                if prev.1 <= sample.1
                    && (MIN_WINDOW..=MAX_WINDOW).contains(&sample.0.duration_since(prev.0)) =>
            {
                cpu_percent(prev, sample, vcpus)
            }
            _ => {
                std::thread::sleep(FIRST_SAMPLE);
                let again = dom
                    .info()
                    .map_err(KvmError::libvirt("reading domain info"))?;
                let next = (Instant::now(), again.cpu_time);
                inner.cpu.swap(uuid, next);
                cpu_percent(sample, next, vcpus)
            }
        }
    } else {
        inner.cpu.forget(uuid);
        0.0
    };

    let limit = found.doc.memory();
    let used = if active {
        let stats: Vec<(u32, u64)> = dom
            .memory_stats(0)
            .map(|s| s.into_iter().map(|m| (m.tag, m.val)).collect())
            .unwrap_or_default();
        balloon_used(&stats).unwrap_or(info.memory.saturating_mul(1024))
    } else {
        0
    };

    // From the volume, not `Domain::block_info`: `virt` 0.5 ignores that call's
    // failure and reads an uninitialised struct.
    let (total, allocated) = inner
        .connect()
        .and_then(|c| {
            c.lookup_storage_vol_by_path(&found.meta.disk)
                .and_then(|v| v.info())
                .map_err(KvmError::libvirt("reading the disk volume"))
        })
        .map(|i| (i.capacity, i.allocation))
        .unwrap_or((found.meta.disk_size, 0));

    let mut network = NetworkUsage::default();
    if active {
        for iface in found.doc.interfaces() {
            if let Some(dev) = iface.target_dev() {
                if let Ok(s) = dom.interface_stats(dev) {
                    network.rx_bytes += u64::try_from(s.rx_bytes).unwrap_or(0);
                    network.tx_bytes += u64::try_from(s.tx_bytes).unwrap_or(0);
                }
            }
        }
    }

    Ok(Usage {
        cpu: CpuUsage {
            usage: cpu,
            cores: vcpus,
        },
        memory: MemoryUsage {
            used,
            limit,
            percentage: if limit > 0 {
                used as f64 * 100.0 / limit as f64
            } else {
                0.0
            },
        },
        storage: StorageUsage {
            used: allocated,
            total,
        },
        network,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_over_all_vcpus() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(cpu_percent((t0, 0), (t1, 1_000_000_000), 2), 50.0);
        assert_eq!(cpu_percent((t0, 0), (t1, 4_000_000_000), 2), 100.0);
        assert_eq!(cpu_percent((t0, 5), (t1, 1), 2), 0.0);
        assert_eq!(cpu_percent((t1, 0), (t0, 1), 2), 0.0);
    }

    #[test]
    fn balloon_prefers_guest_view() {
        let a = sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE;
        let u = sys::VIR_DOMAIN_MEMORY_STAT_UNUSED;
        let b = sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON;
        assert_eq!(
            balloon_used(&[(a, 1000), (u, 400), (b, 2000)]),
            Some(600 * 1024)
        );
        assert_eq!(balloon_used(&[(b, 2000)]), Some(2000 * 1024));
        assert_eq!(balloon_used(&[]), None);
    }
}
