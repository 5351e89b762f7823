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
/// The shortest window between two usage calls that makes a new figure; a closer call
/// answers the last measured window again.
const MIN_WINDOW: Duration = Duration::from_millis(100);
/// The longest: an older previous sample would average over history.
const MAX_WINDOW: Duration = Duration::from_secs(60);

/// The CPU state of one domain: its previous sample and the last measured window.
#[derive(Clone, Copy)]
struct Window {
    base: (Instant, u64),
    /// The last measured window: (start sample, end sample).
    last: Option<((Instant, u64), (Instant, u64))>,
}

/// The last CPU-time sample of each running domain, by UUID.
#[derive(Default)]
pub struct CpuSamples {
    last: Mutex<HashMap<String, Window>>,
}

impl CpuSamples {
    /// Drops the sample of a domain.
    pub fn forget(&self, uuid: &str) {
        lock(&self.last).remove(uuid);
    }

    /// The window to answer for a sample, if the previous one makes one: the time
    /// since it when that is neither so short that the numbers are noise nor so long
    /// that they are history (the sample becomes the base); the last window again when
    /// the call is too close to the previous one.
    fn advance(
        &self,
        uuid: &str,
        sample: (Instant, u64),
    ) -> Option<((Instant, u64), (Instant, u64))> {
        let mut map = lock(&self.last);
        let w = map.get_mut(uuid)?;
        let since = sample.0.saturating_duration_since(w.base.0);
        if w.base.1 <= sample.1 && (MIN_WINDOW..=MAX_WINDOW).contains(&since) {
            let window = (w.base, sample);
            w.base = sample;
            w.last = Some(window);
            return Some(window);
        }
        match w.last {
            Some(last)
                if since < MIN_WINDOW
                    && w.base.1 <= sample.1
                    && sample.0.saturating_duration_since(last.1 .0) <= MAX_WINDOW =>
            {
                Some(last)
            }
            _ => None,
        }
    }

    /// The CPU percent of a running domain's `vcpus` at `sample` (when, its cpu
    /// time), over the window since the previous call's sample (see [`Self::advance`]);
    /// without one (a first call), the cpu time is read again (`read_again`) after
    /// [`FIRST_SAMPLE`] and that window measured.
    pub(crate) fn percent(
        &self,
        uuid: &str,
        sample: (Instant, u64),
        vcpus: u32,
        read_again: impl FnOnce() -> Result<u64, KvmError>,
    ) -> Result<f64, KvmError> {
        if let Some((from, to)) = self.advance(uuid, sample) {
            return Ok(cpu_percent(from, to, vcpus));
        }
        std::thread::sleep(FIRST_SAMPLE);
        let cpu_time = read_again()?;
        let next = (Instant::now(), cpu_time);
        lock(&self.last).insert(
            uuid.to_owned(),
            Window {
                base: next,
                last: Some((sample, next)),
            },
        );
        Ok(cpu_percent(sample, next, vcpus))
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
    fn the_first_call_measures_a_window_later_calls_the_time_since() {
        let samples = CpuSamples::default();
        let t0 = Instant::now();
        // First call: a window of FIRST_SAMPLE measured at once (one vCPU busy of 2).
        let started = Instant::now();
        let p = samples
            .percent("u", (t0, 0), 2, || Ok(50_000_000))
            .expect("percent");
        assert!(started.elapsed() >= FIRST_SAMPLE);
        assert!(p > 0.0 && p <= 25.0, "{p}");
        let base = lock(&samples.last).get("u").expect("kept").base;
        // A call right after answers the same window, without sleeping or reading.
        let again = samples
            .percent(
                "u",
                (base.0 + Duration::from_millis(5), base.1 + 1),
                2,
                || panic!("no second read"),
            )
            .expect("percent");
        assert_eq!(again, p);
        // A call 1 s later measures the second since: one full vCPU of two.
        let later = (base.0 + Duration::from_secs(1), base.1 + 1_000_000_000);
        let p = samples
            .percent("u", later, 2, || panic!("no second read"))
            .expect("percent");
        assert_eq!(p, 50.0);
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
