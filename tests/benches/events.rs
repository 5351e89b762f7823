//! The event stream's figures (issue 12, "Tests and figures"), on this machine:
//! - `kill`: a container killed through the engine API (bollard, as `docker kill`
//!   does, without the CLI's start-up) until an SSE client reads its
//!   `instance.state-changed` to `stopped`: p50/p90/p99/max, with where the time
//!   goes (the engine's own `die` event, seen by a second engine client).
//! - `fanout`: 100 subscribers, 10,000 state changes at 1,000 a second through the
//!   fake plugin (`fake/flap`): every subscriber must get every event in order (no
//!   loss, no reset); server RSS peak, server CPU, delivered events/s, delivery delay.
//! - `stalled`: 10 readers and a flood of state changes, with and without one
//!   subscriber that never reads: the readers' completeness and delay, and the latency
//!   of plain API calls (a list, a start/stop) idle and during each flood.
//!
//! Run: `cargo build --release -p unicompute-host -p unicompute-docker &&
//! cargo bench -p unicompute-tests --bench events` (all three), or name sections:
//! `cargo bench -p unicompute-tests --bench events -- fanout stalled` (or
//! `UC_BENCH=kill`). The release binaries are used unless `UCTEST_PROFILE=debug`
//! (the fake plugin is built in that profile here). Prints numbers; asserts nothing
//! about time (only that no event is lost, which is the claim, not a timing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{EventsOptions, KillContainerOptions};
use futures_util::StreamExt;
use unicompute_tests::docker::{
    backend_name, ensure_image, sweep_stale, ContainerGuard, FileLock, TEST_IMAGE,
};
use unicompute_tests::sse::{Frame, Sse};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";
const EVENTS: &str = "/api/v1/compute/events";
const T: Duration = Duration::from_secs(10);

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `p50 …, p90 …, p99 …, max …` of `v` (sorted here).
fn dist(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort();
    format!(
        "p50 {}, p90 {}, p99 {}, max {} (n={})",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.9)),
        ms(percentile(v, 0.99)),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("load average {} {} {}", f[0], f[1], f[2])
        })
        .unwrap_or_default()
}

/// utime + stime of `pid`, as a duration.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields counted after the command name's ')': utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Samples a process's RSS every 50 ms until stopped; the peak in KiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = rss_kib(pid);
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(rss_kib(pid))
        });
        RssSampler { stop, handle }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// Milliseconds since the epoch of an RFC 3339 UTC time (`2025-01-02T03:04:05.678Z`).
fn epoch_ms(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let millis = format!("{frac:0<3}")[..3].parse::<i64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60 * 1000 + ss * 1000 + millis)
}

/// The wall-clock time of an `Instant` of this process.
struct Clock {
    at: Instant,
    wall_ms: f64,
}

impl Clock {
    fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            at: Instant::now(),
            wall_ms: wall.as_secs_f64() * 1000.0,
        }
    }

    /// How long after its `time` the client had read the event (the server's time
    /// is truncated to the millisecond: up to 1 ms more than the truth).
    fn delay(&self, f: &Frame) -> Option<Duration> {
        let sent = epoch_ms(f.data["time"].as_str()?)? as f64;
        let read = self.wall_ms + f.at.saturating_duration_since(self.at).as_secs_f64() * 1000.0;
        Some(Duration::from_secs_f64(((read - sent).max(0.0)) / 1000.0))
    }
}

fn create(s: &Server, name: &str, backend: &str, labels: Value) -> String {
    let body = json!({"name": name, "backend": backend, "config": {"image": "busybox"},
        "metadata": {"labels": labels}});
    let r = s.call("POST", INSTANCES, ADMIN, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["id"].as_str().expect("id").to_owned()
}

/// `server.events_buffer` for the fake servers: `UC_BENCH_EVENTS_BUFFER`, else the
/// server's default.
fn buffer() -> String {
    std::env::var("UC_BENCH_EVENTS_BUFFER").unwrap_or_else(|_| "1024".into())
}

fn fake_server(env: &[(&str, &str)]) -> Server {
    Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------
// kill → SSE

fn bench_kill(runs: usize) {
    println!("== docker kill -> SSE instance.state-changed ({runs} kills) ==");
    let _lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let tmp = TempDir::new("uc-bench-dock");
    let backend = backend_name();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!(
            "[backends.{backend}]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n",
            tmp.0.display()
        ),
        ..Default::default()
    });
    let name = unique("bench-kill");
    let _guard = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": backend,
                     "config": {"image": TEST_IMAGE, "command": ["sleep", "100000"]}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let one = format!("{INSTANCES}/{id}");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let docker = bollard::Docker::connect_with_unix_defaults().expect("docker");
    let docker = rt.block_on(docker.negotiate_version()).expect("negotiate");
    // The engine's own `die` events for this container, as a second engine client
    // sees them: how much of the delay is the engine's.
    let (die_tx, die_rx) = mpsc::channel::<(Instant, Instant)>();
    let watcher = docker.clone();
    let filter_name = name.clone();
    rt.spawn(async move {
        let mut filters = std::collections::HashMap::new();
        filters.insert("type".to_owned(), vec!["container".to_owned()]);
        filters.insert("container".to_owned(), vec![filter_name.clone()]);
        filters.insert("event".to_owned(), vec!["die".to_owned()]);
        let mut stream = watcher.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        while let Some(Ok(_)) = stream.next().await {
            let die = Instant::now();
            // What the plugin does next: inspect the container (the engine answers
            // once it let go of the container).
            let _ = watcher.inspect_container(&filter_name, None).await;
            if die_tx.send((die, Instant::now())).is_err() {
                return;
            }
        }
    });

    let sub = Sse::open(
        &s.base,
        &format!("{EVENTS}?instance={id}&type=instance.state-changed"),
        VIEWER,
        &[],
    );
    assert_eq!(sub.status, 200, "{}", sub.head);
    let mut total = Vec::new();
    let mut kill_call = Vec::new();
    let mut engine = Vec::new();
    let mut after_engine = Vec::new();
    let mut inspect = Vec::new();
    let mut ours = Vec::new();
    for i in 0..runs {
        let r = s.call("PUT", &format!("{one}/start"), OPERATOR, None);
        assert_eq!(r.json["state"], "running", "{}", r.text);
        // The start's own event (source api) first: the stream is then quiet.
        sub.until(T, |f| f.data["to"] == "running")
            .expect("the start's event");
        while die_rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        rt.block_on(docker.kill_container(
            &name,
            Some(KillContainerOptions {
                signal: "KILL".into(),
            }),
        ))
        .expect("kill");
        let returned = t0.elapsed();
        let frames = sub
            .until(Duration::from_secs(30), |f| f.data["to"] == "stopped")
            .unwrap_or_else(|| panic!("kill {i}: no state change to stopped"));
        let f = frames.last().expect("frame");
        assert_eq!(f.data["source"], "backend", "{}", f.data);
        assert_eq!(f.data["from"], "running", "{}", f.data);
        let seen = f.at.duration_since(t0);
        total.push(seen);
        kill_call.push(returned);
        if let Ok((die, inspected)) = die_rx.recv_timeout(T) {
            let die = die.saturating_duration_since(t0);
            engine.push(die);
            after_engine.push(seen.saturating_sub(die));
            let inspected = inspected.saturating_duration_since(t0);
            inspect.push(inspected);
            ours.push(seen.saturating_sub(inspected));
        }
    }
    println!(
        "  kill request sent -> SSE event read:      {}",
        dist(&mut total)
    );
    println!(
        "  of which: kill request returned after:    {}",
        dist(&mut kill_call)
    );
    println!(
        "            engine `die` event seen after:  {}",
        dist(&mut engine)
    );
    println!(
        "            `die` seen -> SSE event read:   {}",
        dist(&mut after_engine)
    );
    println!(
        "            an inspect after `die` answered: {}",
        dist(&mut inspect)
    );
    println!(
        "            that inspect -> SSE event read: {}",
        dist(&mut ours)
    );
    println!("  {}", uptime());
    drop(sub);
    let r = s.call("DELETE", &format!("{one}?force=true"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    drop(rt);
}

// ---------------------------------------------------------------------------------
// fan-out

/// What one subscriber got of one instance's flood.
#[derive(Default)]
struct Tally {
    got: u64,
    out_of_order: u64,
    resets: u64,
    ended: bool,
    delays: Vec<Duration>,
    last_at: Option<Instant>,
}

/// Reads `sub` until it has `count` state changes of `id` (or stalls for 10 s, or is
/// reset, or ends).
fn tally(sub: &Sse, id: &str, count: u64, clock: &Clock) -> Tally {
    let mut t = Tally::default();
    let mut last = 0;
    while t.got < count {
        let Some(f) = sub.next_event(T) else {
            t.ended = true;
            break;
        };
        if f.event.as_deref() == Some("reset") {
            t.resets += 1;
            continue;
        }
        if f.event.as_deref() != Some("instance.state-changed") || f.data["instanceId"] != id {
            continue;
        }
        let n = f.id.unwrap_or(0);
        if n <= last {
            t.out_of_order += 1;
        }
        last = n;
        t.got += 1;
        if let Some(d) = clock.delay(&f) {
            t.delays.push(d);
        }
        t.last_at = Some(f.at);
    }
    t
}

/// A lean subscriber for the fan-out: [`Sse`] parses every event's JSON and hands
/// each over to another thread, which for 100 subscribers at 1,000 events a second
/// costs this bench about a core of a small machine, taken from the server it
/// measures. This one reads the chunks on one thread and looks only at the fields it
/// checks (`id:`, `event:`, and `instanceId` and `time` in the data).
struct Lean(std::io::BufReader<std::net::TcpStream>);

impl Lean {
    /// Subscribes to `path` and waits for the `subscribed` comment.
    fn open(base: &str, path: &str) -> Lean {
        use std::io::{BufRead, Write};
        let addr = base.trim_start_matches("http://");
        let socket = std::net::TcpStream::connect(addr).expect("connect");
        socket.set_read_timeout(Some(T)).expect("read timeout");
        write!(
            &socket,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {VIEWER}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send");
        let mut r = std::io::BufReader::with_capacity(1 << 16, socket);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let mut lean = Lean(r);
        let first = lean.chunk().expect("the subscribed comment");
        assert!(first.starts_with(b": subscribed"), "{first:?}");
        lean
    }

    /// The next chunk of the body; None at its end or after 10 s without one.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        use std::io::{BufRead, Read};
        let mut line = String::new();
        self.0.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            return None;
        }
        let mut buf = vec![0; size + 2];
        self.0.read_exact(&mut buf).ok()?;
        buf.truncate(size);
        Some(buf)
    }

    /// As [`tally`].
    fn tally(mut self, id: &str, count: u64) -> Tally {
        let mut t = Tally::default();
        let mut last = 0;
        let mut pending: Vec<u8> = Vec::new();
        let needle = format!("\"instanceId\":\"{id}\"");
        while t.got < count {
            let Some(bytes) = self.chunk() else {
                t.ended = true;
                break;
            };
            pending.extend_from_slice(&bytes);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let (mut n, mut kind, mut data) = (None, "", "");
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        n = v.parse::<u64>().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = v;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = v;
                    }
                }
                if kind == "reset" {
                    t.resets += 1;
                    continue;
                }
                if kind != "instance.state-changed" || !data.contains(&needle) {
                    continue;
                }
                let n = n.unwrap_or(0);
                if n <= last {
                    t.out_of_order += 1;
                }
                last = n;
                t.got += 1;
                let now = Instant::now();
                t.last_at = Some(now);
                let sent = data
                    .split_once("\"time\":\"")
                    .and_then(|(_, rest)| rest.split('"').next())
                    .and_then(epoch_ms);
                if let Some(sent) = sent {
                    let read = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as i64;
                    t.delays
                        .push(Duration::from_millis((read - sent).max(0) as u64));
                }
            }
        }
        t
    }
}

/// Whether every subscriber got every event in order.
fn bench_fanout(subscribers: usize, count: u64, every_us: u64) -> bool {
    let buffer = buffer();
    println!(
        "== fan-out: {subscribers} subscribers, {count} events at one per {every_us} µs, server.events_buffer {buffer} =="
    );
    let s = fake_server(&[("UNICOMPUTE_SERVER__EVENTS_BUFFER", &buffer)]);
    let pid = s.pid();
    let subs: Vec<Lean> = (0..subscribers)
        .map(|_| Lean::open(&s.base, &format!("{EVENTS}?type=instance")))
        .collect();
    let rss_before = rss_kib(pid);
    let sampler = RssSampler::start(pid);
    let cpu0 = cpu_time(pid);
    let me = std::process::id();
    let cpu_me0 = cpu_time(me);
    let t0 = Instant::now();
    let id = create(
        &s,
        "bench-fanout",
        "fake",
        json!({"fake/flap": format!("{count}:{every_us}")}),
    );
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = subs
            .into_iter()
            .map(|sub| {
                let id = &id;
                scope.spawn(move || sub.tally(id, count))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("subscriber"))
            .collect()
    });
    let wall = t0.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    let cpu_me = cpu_time(me).saturating_sub(cpu_me0);
    let peak = sampler.peak();
    let delivered: u64 = tallies.iter().map(|t| t.got).sum();
    let lost = subscribers as u64 * count - delivered;
    let complete = tallies
        .iter()
        .filter(|t| t.got == count && t.out_of_order == 0 && t.resets == 0)
        .count();
    let last = tallies.iter().filter_map(|t| t.last_at).max().unwrap_or(t0);
    let span = last.saturating_duration_since(t0);
    println!(
        "  subscribers complete and in order: {complete}/{subscribers}; events lost: {lost}; out of order: {}; resets: {}",
        tallies.iter().map(|t| t.out_of_order).sum::<u64>(),
        tallies.iter().map(|t| t.resets).sum::<u64>()
    );
    println!(
        "  delivered {delivered} events in {:.2} s (create to the last read): {:.0} events/s in total",
        span.as_secs_f64(),
        delivered as f64 / span.as_secs_f64()
    );
    println!(
        "  server RSS: {} MiB with the subscribers idle, peak {} MiB during the run",
        rss_before / 1024,
        peak / 1024
    );
    println!(
        "  server CPU: {:.2} s in {:.2} s = {:.0}% of one core",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    println!(
        "  (the subscribers, in this process: {:.2} s = {:.0}% of one core)",
        cpu_me.as_secs_f64(),
        cpu_me.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    let mut delays: Vec<Duration> = tallies.into_iter().flat_map(|t| t.delays).collect();
    println!(
        "  delivery delay (event time, ms-truncated, to client read): {}",
        dist(&mut delays)
    );
    println!("  {}", uptime());
    drop(s);
    // The claim (not a timing): every subscriber got every event, in order.
    lost == 0 && complete == subscribers
}

// ---------------------------------------------------------------------------------
// a stalled subscriber

/// Plain API calls in a loop until `stop`: the latencies of a list and of a start or
/// stop (alternately) on the instance `probe`.
fn probe_api(s: &Server, probe: &str, stop: &AtomicBool) -> (Vec<Duration>, Vec<Duration>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Loopback only: never through a proxy from the environment.
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .into();
    let (mut list, mut action) = (Vec::new(), Vec::new());
    let mut running = false;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let r = request(&agent, &s.base, "GET", INSTANCES, Some(ADMIN), None);
        list.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.text);
        let verb = if running { "stop" } else { "start" };
        let t = Instant::now();
        let r = request(
            &agent,
            &s.base,
            "PUT",
            &format!("{INSTANCES}/{probe}/{verb}"),
            Some(ADMIN),
            None,
        );
        action.push(t.elapsed());
        assert_eq!(r.status, 200, "{verb}: {}", r.text);
        running = !running;
        std::thread::sleep(Duration::from_millis(5));
    }
    (list, action)
}

/// Whether every reader got every event in order, in both floods.
fn bench_stalled(readers: usize, count: u64, every_us: u64) -> bool {
    let buffer = buffer();
    println!(
        "== a stalled subscriber: {readers} readers, {count} events at one per {every_us} µs, each ~3 kB, server.events_buffer {buffer} =="
    );
    let s = fake_server(&[("UNICOMPUTE_SERVER__EVENTS_BUFFER", &buffer)]);
    let mut ok = true;
    let probe = create(&s, "bench-probe", "fake", json!({}));
    // Idle: the API alone.
    let stop = AtomicBool::new(false);
    let (mut list, mut action) = std::thread::scope(|scope| {
        let h = scope.spawn(|| probe_api(&s, &probe, &stop));
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        h.join().expect("probe")
    });
    println!("  idle:");
    println!("    GET {INSTANCES}:        {}", dist(&mut list));
    println!("    PUT start/stop (fake):  {}", dist(&mut action));
    for (round, stalled) in [(0, false), (1, true)] {
        let clock = Clock::new();
        let subs: Vec<Sse> = (0..readers)
            .map(|_| {
                let sub = Sse::open(&s.base, EVENTS, VIEWER, &[]);
                assert_eq!(sub.status, 200, "{}", sub.head);
                assert!(sub.next_frame(T).is_some_and(|f| f.comment.is_some()));
                sub
            })
            .collect();
        // It never reads, and its socket buffers are small: the server's writes to
        // it stall at once.
        let mut quiet = stalled.then(|| Sse::open_paused(&s.base, EVENTS, VIEWER));
        let stop = AtomicBool::new(false);
        let id = create(
            &s,
            &format!("bench-flood-{round}"),
            "fake",
            // ~3 kB an event (a long label): the flood is some 15 MB per
            // subscriber, more than a stalled socket's buffers hold.
            json!({"fake/flap": format!("{count}:{every_us}"), "ballast": "x".repeat(2500)}),
        );
        let (tallies, (mut list, mut action)) = std::thread::scope(|scope| {
            let p = scope.spawn(|| probe_api(&s, &probe, &stop));
            let handles: Vec<_> = subs
                .into_iter()
                .map(|sub| {
                    let (id, clock) = (&id, &clock);
                    scope.spawn(move || tally(&sub, id, count, clock))
                })
                .collect();
            let tallies: Vec<Tally> = handles
                .into_iter()
                .map(|h| h.join().expect("reader"))
                .collect();
            stop.store(true, Ordering::Relaxed);
            (tallies, p.join().expect("probe"))
        });
        let delivered: u64 = tallies.iter().map(|t| t.got).sum();
        ok &= delivered == readers as u64 * count
            && tallies.iter().all(|t| t.out_of_order == 0 && t.resets == 0);
        println!(
            "  flood {} a stalled subscriber:",
            if stalled { "WITH" } else { "without" }
        );
        println!(
            "    readers: {delivered}/{} events delivered, out of order {}, resets {}",
            readers as u64 * count,
            tallies.iter().map(|t| t.out_of_order).sum::<u64>(),
            tallies.iter().map(|t| t.resets).sum::<u64>(),
        );
        let mut delays: Vec<Duration> = tallies.into_iter().flat_map(|t| t.delays).collect();
        println!("    readers' delivery delay: {}", dist(&mut delays));
        println!("    GET {INSTANCES}:        {}", dist(&mut list));
        println!("    PUT start/stop (fake):  {}", dist(&mut action));
        if let Some(q) = quiet.as_mut() {
            q.resume();
            // The server's probes of a zero window back off exponentially: the
            // first bytes after a long stall may take seconds to come.
            let t = Instant::now();
            let frames: Vec<Frame> =
                std::iter::from_fn(|| q.next_frame(Duration::from_secs(20))).collect();
            let took = t.elapsed();
            let resets = frames
                .iter()
                .filter(|f| f.event.as_deref() == Some("reset"))
                .count();
            println!(
                "    the stalled one, once it read: {} frames, {resets} reset, then {} (after {took:.1?})",
                frames.len(),
                if q.ended_within(Duration::from_millis(100)) {
                    "the end of its stream"
                } else {
                    "no end within 20 s"
                }
            );
        }
        println!("    {}", uptime());
    }
    drop(s);
    ok
}

fn main() {
    if std::env::var_os("UCTEST_PROFILE").is_none() {
        std::env::set_var("UCTEST_PROFILE", "release");
    }
    // Sections named as arguments (cargo passes `--bench`) or in UC_BENCH; all when none.
    let mut wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Ok(v) = std::env::var("UC_BENCH") {
        wanted.extend(v.split(',').map(str::to_owned));
    }
    let all = wanted.is_empty();
    let on = |s: &str| all || wanted.iter().any(|w| w == s);
    println!(
        "host binary: {} (profile {}); {}",
        host_binary().display(),
        profile(),
        uptime()
    );
    if on("kill") {
        bench_kill(30);
    }
    let mut ok = true;
    if on("fanout") {
        ok &= bench_fanout(100, 10_000, 1_000);
    }
    if on("stalled") {
        ok &= bench_stalled(10, 5_000, 1_000);
    }
    assert!(ok, "events were lost (see above)");
}
