//! The arithmetic of usage: CPU percent from cpu-time deltas (with the last sample
//! of each domain kept, so that only a first call waits) and guest memory from
//! balloon stats. The libvirt reads are in `ops::usage`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use unicompute_plugin_api::sync::lock;
use virt::sys;

use crate::error::KvmError;

/// How long the first usage call of a domain samples its CPU time.
const FIRST_SAMPLE: Duration = Duration::from_millis(100);
/// The shortest window between two usage calls that is used as it is.
const MIN_WINDOW: Duration = Duration::from_millis(50);
/// The longest: an older previous sample would average over history.
const MAX_WINDOW: Duration = Duration::from_secs(60);

/// The last CPU-time sample of each running domain, by UUID.
#[derive(Default)]
pub struct CpuSamples {
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl CpuSamples {
    /// Stores a sample and returns the previous one.
    fn swap(&self, uuid: &str, sample: (Instant, u64)) -> Option<(Instant, u64)> {
        lock(&self.last).insert(uuid.to_owned(), sample)
    }

    /// Drops the sample of a domain.
    pub fn forget(&self, uuid: &str) {
        lock(&self.last).remove(uuid);
    }

    /// The CPU percent of a running domain's `vcpus` at `sample` (when, its cpu
    /// time). The previous call's sample makes the window when it is neither so
    /// recent that the numbers are noise nor so old that they are history; else the
    /// cpu time is read again (`read_again`) after [`FIRST_SAMPLE`].
    pub(crate) fn percent(
        &self,
        uuid: &str,
        sample: (Instant, u64),
        vcpus: u32,
        read_again: impl FnOnce() -> Result<u64, KvmError>,
    ) -> Result<f64, KvmError> {
        match self.swap(uuid, sample) {
            Some(prev)
                if prev.1 <= sample.1
                    && (MIN_WINDOW..=MAX_WINDOW).contains(&sample.0.duration_since(prev.0)) =>
            {
                Ok(cpu_percent(prev, sample, vcpus))
            }
            _ => {
                std::thread::sleep(FIRST_SAMPLE);
                let cpu_time = read_again()?;
                let next = (Instant::now(), cpu_time);
                self.swap(uuid, next);
                Ok(cpu_percent(sample, next, vcpus))
            }
        }
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
