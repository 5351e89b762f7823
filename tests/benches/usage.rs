//! Docker usage from the containers' cgroups, against the engine's own one-shot stats,
//! side by side in one run, on this machine's engine. Through the docker plugin's
//! backend in this process (no HTTP), so that the process's CPU time is the sampling's.
//!
//! - N running containers (`sleep`; `UC_USAGE_N`, default 30), made through the backend;
//! - the first usage call of each (it measures a short CPU window itself): p50, p99;
//! - repeated calls (rounds over all N, 150 ms apart, so that every call measures a new
//!   window): p50, p99;
//! - the engine's one-shot stats call (bollard, `stream: false`, `one_shot: true`): p50;
//! - the CPU cost of sampling all N once: process CPU time (getrusage) over M rounds
//!   (`UC_USAGE_ROUNDS`, default 20), as percent of one core at one round every 10 s.
//!
//! Run: `cargo bench -p unicompute-tests --bench usage` (a release build of the plugin
//! comes with it). Prints numbers; asserts nothing about time. The containers are
//! removed at the end, also when the run fails.

use std::time::{Duration, Instant};

use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;
use unicompute_docker::DockerBackend;
use unicompute_plugin_api::{Backend, BackendContext, CreateRequest, EventSink};
use unicompute_tests::docker::{ensure_image, ContainerGuard, FileLock, TEST_IMAGE};
use unicompute_tests::{json, unique, TempDir};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Removes the instances through the backend when dropped (the containers' guards
/// remove what is left by name).
struct Instances<'a> {
    backend: &'a DockerBackend,
    ids: Vec<String>,
    _guards: Vec<ContainerGuard>,
}

impl Drop for Instances<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.backend.delete(id, true);
        }
    }
}

fn main() {
    let n = env_or("UC_USAGE_N", 30).max(1);
    let rounds = env_or("UC_USAGE_ROUNDS", 20).max(1);
    let _lock = FileLock::engine_shared();
    ensure_image();
    let state = TempDir::new("uc-bench-usage");
    let backend = DockerBackend::new(BackendContext {
        name: unique("ucb-usage"),
        config: json!({"state_dir": state.0}),
        events: EventSink::discard(),
    })
    .expect("backend");
    let mut set = Instances {
        backend: &backend,
        ids: Vec::new(),
        _guards: Vec::new(),
    };
    let mut names = Vec::new();
    let made = Instant::now();
    for i in 0..n {
        let name = unique(&format!("uc-bench-usage-{i}"));
        set._guards.push(ContainerGuard(name.clone()));
        let req: CreateRequest = serde_json::from_value(json!({
            "id": unique("i-bench"),
            "name": name,
            "config": {"image": TEST_IMAGE, "command": ["sleep", "100000"]},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 67108864}},
            "start": true,
            "createdAt": "2026-01-01T00:00:00Z"
        }))
        .expect("request");
        let inst = backend.create(req).expect("create");
        set.ids.push(inst.id);
        names.push(name);
    }
    println!(
        "{n} running containers made in {:.1} s",
        made.elapsed().as_secs_f64()
    );

    // First call of each instance.
    let mut first = Vec::with_capacity(n);
    for id in &set.ids {
        let t = Instant::now();
        let u = backend.usage(id).expect("usage");
        first.push(t.elapsed());
        assert!(u.memory.used > 0, "memory used of {id}");
    }

    // Repeated calls: rounds over all N, each call past the minimum window.
    let mut repeated = Vec::with_capacity(n * 5);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        for id in &set.ids {
            let t = Instant::now();
            backend.usage(id).expect("usage");
            repeated.push(t.elapsed());
        }
    }

    // The engine's one-shot stats of the same containers.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let docker = bollard::Docker::connect_with_unix_defaults().expect("docker");
    let docker = rt.block_on(docker.negotiate_version()).expect("negotiate");
    let mut one_shot = Vec::new();
    for name in names.iter().take(10) {
        let t = Instant::now();
        rt.block_on(async {
            let options = StatsOptions {
                stream: false,
                one_shot: true,
            };
            let mut s = docker.stats(name, Some(options));
            s.next().await.expect("a sample").expect("stats");
        });
        one_shot.push(t.elapsed());
    }

    // The cost of sampling all N once, M times (wall time between rounds is idle and
    // does not count: CPU time is what a 10 s period would spend).
    let mut round_wall = Vec::with_capacity(rounds);
    let before = cpu_time();
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        for id in &set.ids {
            backend.usage(id).expect("usage");
        }
        round_wall.push(t.elapsed());
    }
    let spent = cpu_time() - before;
    let per_round = spent / rounds as u32;

    println!("usage from the cgroup, {n} containers (local engine):");
    println!(
        "  first call of an instance : p50 {:8.3} ms   p99 {:8.3} ms   ({} calls)",
        ms(pct(&mut first, 0.5)),
        ms(pct(&mut first, 0.99)),
        first.len()
    );
    println!(
        "  repeated call             : p50 {:8.3} ms   p99 {:8.3} ms   ({} calls)",
        ms(pct(&mut repeated, 0.5)),
        ms(pct(&mut repeated, 0.99)),
        repeated.len()
    );
    println!(
        "  engine one-shot stats     : p50 {:8.3} ms   max {:8.3} ms   ({} calls)",
        ms(pct(&mut one_shot, 0.5)),
        ms(pct(&mut one_shot, 1.0)),
        one_shot.len()
    );
    println!(
        "  sampling all {n} once      : {:8.3} ms CPU ({:.3} ms wall p50) over {rounds} rounds",
        ms(per_round),
        ms(pct(&mut round_wall, 0.5)),
    );
    println!(
        "  at one round every 10 s   : {:.4} % of one core",
        per_round.as_secs_f64() / 10.0 * 100.0
    );
    drop(set);
}
