//! Scale benchmark: a release server over the fake plugin seeded with N instances
//! (`seed_instances = N`, made in the plugin's memory at start), for N in 1,000,
//! 10,000 and 100,000 (`UC_BENCH_SCALE="1000,100000"` to choose). One row per N:
//!
//! - `ready`: spawn to the server listening and its list reporting `total == N`;
//! - RSS (`VmRSS`) after start, and after every page was listed once (the host
//!   makes each instance's JSON at its first read);
//! - list p50/p99 at pageSize 100 over random pages (`UC_BENCH_REQUESTS`, default
//!   2,000, one keep-alive client; the client reads the bytes, parses nothing);
//! - the same for two filters (`label=app=seed&label=n=7`: 1% match; `state=running`:
//!   20%), and get by id over random ids;
//! - a resync's cost: the server's CPU time (utime + stime) over an idle window
//!   (`UC_BENCH_WINDOW_SECS`, default 5) with `resync_interval_secs = 1`, less the
//!   same window with 3600 (health checks only), divided by the resyncs the window
//!   saw (the `list` calls counted by `/metrics`); and the mean wall time of that
//!   `list` plugin call (the boundary and the JSON, not the inventory's update).
//!
//! Then the RSS per instance, `(RSS at N - RSS at the smallest N) / (N - smallest)`,
//! and how much of it is the fake plugin's own copy of its instances (it keeps them
//! in the server's process, where a real plugin asks its engine): the RSS this
//! process gains when it loads the fake through the host's loader and makes a
//! backend seeded with the largest N. Last, the inventory alone, in this process
//! (`unicompute_host::inventory`, the same instances): the list's own time, without
//! HTTP, the client or the scheduler.
//!
//! Run: `cargo build --release -p unicompute-host && cargo bench -p unicompute-tests --bench scale`
//! (the release host binary; the fake plugin is built in release here). Prints
//! numbers; asserts nothing about time.

use std::io::Read;
use std::time::{Duration, Instant};

use unicompute_host::plugins::loader;
use unicompute_plugin_api::EventSink;
use unicompute_tests::*;

const LIST: &str = "/api/v1/compute/instances";

/// A small PRNG (xorshift64*): random pages and ids, the same each run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// GET as admin: the status and the body's bytes (not parsed).
fn get(agent: &ureq::Agent, base: &str, path: &str, body: &mut Vec<u8>) -> u16 {
    let req = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{base}{path}"))
        .header("Authorization", format!("Bearer {ADMIN}"))
        .body(())
        .expect("request");
    let mut resp = agent.run(req).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    body.clear();
    resp.body_mut()
        .as_reader()
        .read_to_end(body)
        .expect("read the body");
    resp.status().as_u16()
}

fn get_json(agent: &ureq::Agent, base: &str, path: &str) -> Value {
    let mut body = Vec::new();
    let status = get(agent, base, path, &mut body);
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON")
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // The command name (field 2) may hold spaces: fields are counted after ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("a number"))
        .collect();
    f[0] + f[1]
}

/// The `list` plugin calls so far: (count, seconds in all), from `/metrics`.
fn list_calls(agent: &ureq::Agent, base: &str) -> (u64, f64) {
    let mut body = Vec::new();
    assert_eq!(get(agent, base, "/metrics", &mut body), 200);
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("operation=\"list\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    (
        value("unicompute_plugin_call_duration_seconds_count") as u64,
        value("unicompute_plugin_call_duration_seconds_sum"),
    )
}

/// Random pages (or ids) of one query: p50 and p99 of `requests` GETs.
fn latencies(
    agent: &ureq::Agent,
    base: &str,
    requests: usize,
    mut path: impl FnMut() -> String,
) -> (Duration, Duration) {
    let mut body = Vec::new();
    let mut lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let p = path();
        let t = Instant::now();
        let status = get(agent, base, &p, &mut body);
        lat.push(t.elapsed());
        assert_eq!(status, 200, "GET {p}");
    }
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

struct Row {
    n: usize,
    listening: Duration,
    ready: Duration,
    rss_start: u64,
    rss_listed: u64,
    list: (Duration, Duration),
    label: (Duration, Duration),
    state: (Duration, Duration),
    get: (Duration, Duration),
    resync_cpu_ms: f64,
    resyncs: u64,
    list_call_ms: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(n: usize, requests: usize, window: Duration) -> Row {
    let agent = agent();
    let plugin = fake_plugin();
    let t = Instant::now();
    let mut s = Server::start_with(ServerOptions {
        plugins: vec![plugin],
        toml: format!("[backends.fake]\nplugin = \"fake\"\nseed_instances = {n}\n"),
        server: "resync_interval_secs = 3600\n".into(),
        ..Default::default()
    });
    let listening = t.elapsed();
    let pid = s.pid();
    let total = |s: &Server| {
        get_json(&agent, &s.base, &format!("{LIST}?pageSize=1"))["total"]
            .as_u64()
            .unwrap_or(0) as usize
    };
    wait_for(Duration::from_secs(300), || (total(&s) == n).then_some(()))
        .unwrap_or_else(|| panic!("the list never reported {n} instances"));
    let ready = t.elapsed();
    // What the start left behind settles (the blocking pool's threads, the allocator).
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = rss_kib(pid);

    // Every page once: each instance's JSON is made; keep the ids.
    let mut ids = Vec::with_capacity(n);
    for page in 1..=n.div_ceil(100) {
        let v = get_json(&agent, &s.base, &format!("{LIST}?pageSize=100&page={page}"));
        for i in v["instances"].as_array().expect("instances") {
            ids.push(i["id"].as_str().expect("id").to_owned());
        }
    }
    assert_eq!(ids.len(), n);
    let rss_listed = rss_kib(pid);

    let mut rng = Rng(0x5eed_0000_0000_0001 ^ n as u64);
    let pages = n.div_ceil(100);
    let list = latencies(&agent, &s.base, requests, || {
        format!("{LIST}?pageSize=100&page={}", rng.below(pages) + 1)
    });
    let pages = n.div_ceil(100 * 100);
    let label = latencies(&agent, &s.base, requests, || {
        format!(
            "{LIST}?pageSize=100&page={}&label=app%3Dseed&label=n%3D7",
            rng.below(pages) + 1
        )
    });
    let pages = (n / 5).div_ceil(100);
    let state = latencies(&agent, &s.base, requests, || {
        format!(
            "{LIST}?pageSize=100&page={}&state=running",
            rng.below(pages) + 1
        )
    });
    let get = latencies(&agent, &s.base, requests, || {
        format!("{LIST}/{}", ids[rng.below(ids.len())])
    });

    // Idle with health checks only, then with a resync every second (the config
    // changed and reloaded; the backend is kept).
    let idle = |s: &Server| {
        let (c0, w0) = (cpu_ticks(pid), list_calls(&agent, &s.base));
        std::thread::sleep(window);
        let (c1, w1) = (cpu_ticks(pid), list_calls(&agent, &s.base));
        (c1 - c0, w1.0 - w0.0, w1.1 - w0.1)
    };
    let (base_ticks, base_lists, _) = idle(&s);
    let config = s.dir.0.join("unicompute.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("resync_interval_secs = 3600", "resync_interval_secs = 1"),
    )
    .expect("config");
    let r = s.call("POST", "/api/v1/compute/backends/reload", ADMIN, None);
    assert_eq!(r.status, 200, "{}", r.text);
    // The maintenance loop reads the interval at its next round.
    let before = list_calls(&agent, &s.base).0;
    wait_for(Duration::from_secs(60), || {
        (list_calls(&agent, &s.base).0 > before).then_some(())
    })
    .expect("a resync after the reload");
    let (ticks, lists, list_secs) = idle(&s);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let resyncs = lists.saturating_sub(base_lists);
    let resync_cpu_ms = (ticks as f64 - base_ticks as f64) * 1000.0 / hz / resyncs.max(1) as f64;
    let list_call_ms = list_secs * 1000.0 / lists.max(1) as f64;
    assert_eq!(total(&s), n, "the resyncs kept every instance");
    let _ = s.identity();
    Row {
        n,
        listening,
        ready,
        rss_start,
        rss_listed,
        list,
        label,
        state,
        get,
        resync_cpu_ms,
        resyncs,
        list_call_ms,
    }
}

/// The RSS a fake backend seeded with `n` instances adds to this process, in
/// bytes per instance; and the time of one `list` of it through the ABI (the plugin
/// copies and encodes, the host decodes), with the list.
fn fake_share(n: usize) -> (f64, Duration, Vec<unicompute_plugin_api::Instance>) {
    let plugin = loader::load_file(&fake_plugin()).expect("the fake plugin loads");
    let state = TempDir::new("uc-bench-scale");
    let settings = json!({"seed_instances": n, "state_dir": state.0.join("records")});
    let before = rss_kib(std::process::id());
    let backend = plugin
        .create_backend("fake", &settings, EventSink::discard())
        .expect("a fake backend");
    let after = rss_kib(std::process::id());
    let t = Instant::now();
    let list = unicompute_plugin_api::Backend::list(&backend).expect("list");
    let took = t.elapsed();
    drop(backend);
    (
        (after as f64 - before as f64) * 1024.0 / n as f64,
        took,
        list,
    )
}

/// The inventory alone, `n` seeded instances: p50/p99 of `requests` random pages of
/// each query, as the server's handler asks them.
fn inventory_alone(n: usize, requests: usize, listed: Vec<unicompute_plugin_api::Instance>) {
    use unicompute_host::events::Source;
    use unicompute_host::inventory::{Inventory, ListFilter};
    use unicompute_plugin_api::InstanceState;
    let inv = Inventory::default();
    for i in 0..n {
        let mut inst = unicompute_fake::seeded(i as u32);
        inst.backend = "fake".into();
        inv.upsert(inst, Source::Backend);
    }
    // Each instance's JSON made once, as after the server's first pass.
    for page in 1..=n.div_ceil(100) {
        inv.list_json(&ListFilter::default(), page, 100);
    }
    let label = ListFilter {
        labels: vec![("app".into(), "seed".into()), ("n".into(), "7".into())],
        ..Default::default()
    };
    let running = ListFilter {
        state: Some(InstanceState::Running),
        ..Default::default()
    };
    let mut rng = Rng(7);
    for (name, filter, pages) in [
        ("list", ListFilter::default(), n.div_ceil(100)),
        ("label", label, n.div_ceil(100 * 100)),
        ("state", running, (n / 5).div_ceil(100)),
    ] {
        let mut lat: Vec<Duration> = (0..requests)
            .map(|_| {
                let page = rng.below(pages) + 1;
                let t = Instant::now();
                let (items, _) = inv.list_json(&filter, page, 100);
                let took = t.elapsed();
                assert!(!items.is_empty());
                took
            })
            .collect();
        lat.sort();
        println!(
            "inventory alone, {n} instances, {name}: p50 {:?}, p99 {:?}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    // A resync's own part: the backend's list (as the service adopts it) replacing
    // what is known, nothing changed.
    let listed: Vec<_> = listed
        .into_iter()
        .map(|mut i| {
            i.backend = "fake".into();
            i
        })
        .collect();
    let t = Instant::now();
    inv.replace_backend("fake", listed, &Default::default(), inv.seq());
    println!(
        "inventory alone, {n} instances: a resync's replace of an unchanged list: {:?}",
        t.elapsed()
    );
    assert_eq!(inv.len(), n);
}

fn main() {
    std::env::set_var("UCTEST_PROFILE", "release");
    let sizes: Vec<usize> = std::env::var("UC_BENCH_SCALE")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|v| {
            v.trim()
                .replace('_', "")
                .parse()
                .expect("UC_BENCH_SCALE: numbers")
        })
        .collect();
    let requests = env_or("UC_BENCH_REQUESTS", 2000) as usize;
    let window = Duration::from_secs(env_or("UC_BENCH_WINDOW_SECS", 5));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pair = |(a, b): (Duration, Duration)| format!("{:.2}/{:.2}", ms(a), ms(b));
    println!(
        "{requests} requests per query (one keep-alive client), pageSize 100, times in ms; RSS in MB; resync window {window:?}"
    );
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8} {:>11}",
        "N",
        "listen",
        "ready",
        "RSS start",
        "RSS listed",
        "list p50/99",
        "label p50/99",
        "state p50/99",
        "get p50/99",
        "resync CPU",
        "resyncs",
        "list call"
    );
    let mut rows = Vec::new();
    for n in sizes {
        let r = run(n, requests, window);
        println!(
            "{:>7} {:>9.0} {:>9.0} {:>9.1} {:>10.1} {:>12} {:>12} {:>12} {:>12} {:>12.1} {:>8} {:>11.1}",
            r.n,
            ms(r.listening),
            ms(r.ready),
            r.rss_start as f64 / 1024.0,
            r.rss_listed as f64 / 1024.0,
            pair(r.list),
            pair(r.label),
            pair(r.state),
            pair(r.get),
            r.resync_cpu_ms,
            r.resyncs,
            r.list_call_ms
        );
        rows.push(r);
    }
    rows.sort_by_key(|r| r.n);
    if let Some((first, rest)) = rows.split_first() {
        for r in rest {
            let per = |a: u64, b: u64| (a as f64 - b as f64) * 1024.0 / (r.n - first.n) as f64;
            println!(
                "RSS per instance, {} to {}: {:.0} bytes after start, {:.0} bytes after listing",
                first.n,
                r.n,
                per(r.rss_start, first.rss_start),
                per(r.rss_listed, first.rss_listed)
            );
        }
    }
    if let Some(last) = rows.last() {
        let (share, list_took, listed) = fake_share(last.n);
        println!(
            "of which the fake plugin's own copy of its instances: {share:.0} bytes per instance (seeded with {} in this process)",
            last.n
        );
        println!(
            "one list of {} instances through the ABI, in this process (the fake copies and encodes, the host decodes): {list_took:?}",
            last.n
        );
        inventory_alone(last.n, requests, listed);
    }
}
