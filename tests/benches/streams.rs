//! The streams' figures (issue 13, "Tests and figures"), on this machine:
//! - `followers`: 1,000 concurrent `logs?follow` readers on fake instances (a line a
//!   second each): the server's thread count and RSS before, with all of them open,
//!   and after they leave; how many got their first line.
//! - `slow`: a reader taking 1 byte a second from a fast logger (a line every ms) for
//!   20 s: the server's RSS over that time, and the latency of plain API calls with
//!   and without it.
//! - `docker`: a container printing a numbered line every 10 ms, followed through the
//!   API as SSE with `timestamps=true`: every line must come, in order; the delay from
//!   the engine's timestamp of each line to its arrival at the client (p50/p90/p99).
//!
//! Run: `cargo build --workspace && UCTEST_PROFILE=debug cargo bench -p
//! unicompute-tests --bench streams` (or name sections: `-- followers slow`). Prints
//! numbers; asserts only that no line is lost.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use unicompute_tests::docker::{
    backend_name, ensure_image, sweep_stale, ContainerGuard, TEST_IMAGE,
};
use unicompute_tests::sse::Sse;
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    status_field(pid, "VmRSS:") as f64 / 1024.0
}

fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn dist(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "p50 {}, p90 {}, p99 {}, max {} (n={})",
        ms(p(0.5)),
        ms(p(0.9)),
        ms(p(0.99)),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn fake_server(env: Vec<(String, String)>) -> Server {
    Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        env,
        ..Default::default()
    })
}

fn fake_instance(s: &Server, labels: Value) -> String {
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(
            &json!({"name": unique("sb"), "backend": "fake", "config": {"image": "busybox"},
            "metadata": {"labels": labels}, "start": true}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let r = s.call("PUT", &format!("{INSTANCES}/{id}/start"), ADMIN, None);
    assert_eq!(r.status, 200, "{}", r.text);
    id
}

fn bench_followers(n: usize) {
    let s = fake_server(vec![(
        "UNICOMPUTE_SERVER__MAX_CONNECTIONS".into(),
        (n + 100).to_string(),
    )]);
    let pid = s.pid();
    let ids: Vec<String> = (0..10)
        .map(|_| fake_instance(&s, json!({"fake/log-every-ms": "1000"})))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (t0, r0) = (threads(pid), rss_mib(pid));
    let started = Instant::now();
    let subs: Vec<Sse> = (0..n)
        .map(|i| {
            Sse::open(
                &s.base,
                &format!(
                    "{INSTANCES}/{}/logs?follow=true&stream=stdout&tail=0",
                    ids[i % ids.len()]
                ),
                VIEWER,
                &[],
            )
        })
        .collect();
    let opened = started.elapsed();
    let got = subs
        .iter()
        .filter(|sub| {
            sub.next_event(Duration::from_secs(15))
                .is_some_and(|f| f.text.starts_with("line "))
        })
        .count();
    std::thread::sleep(Duration::from_secs(2));
    let (t1, r1) = (threads(pid), rss_mib(pid));
    let api = Instant::now();
    assert_eq!(s.get(INSTANCES).status, 200);
    let api = api.elapsed();
    for sub in subs {
        sub.close();
    }
    std::thread::sleep(Duration::from_secs(3));
    let (t2, r2) = (threads(pid), rss_mib(pid));
    println!(
        "followers: {n} opened in {}, {got}/{n} got a line; server threads {t0} idle -> {t1} with {n} followers -> {t2} after; RSS {r0:.1} -> {r1:.1} -> {r2:.1} MiB; a list with them open: {}",
        ms(opened),
        ms(api)
    );
}

fn bench_slow(secs: u64) {
    let s = fake_server(vec![]);
    let pid = s.pid();
    let id = fake_instance(&s, json!({"fake/log-every-ms": "1"}));
    let list = |n: usize| {
        let mut v: Vec<Duration> = (0..n)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(s.get(INSTANCES).status, 200);
                t.elapsed()
            })
            .collect();
        dist(&mut v)
    };
    let idle = list(50);
    let r0 = rss_mib(pid);
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut sock = TcpStream::connect(&addr).expect("connect");
    write!(
        sock,
        "GET {INSTANCES}/{id}/logs?follow=true HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {VIEWER}\r\n\r\n"
    )
    .expect("send");
    let mut peak = r0;
    let mut byte = [0u8; 1];
    for _ in 0..secs {
        let _ = sock.read(&mut byte);
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(rss_mib(pid));
    }
    let during = list(50);
    let r1 = rss_mib(pid);
    drop(sock);
    println!(
        "slow reader (1 byte/s, {secs} s, a line a ms written): server RSS {r0:.1} MiB before, peak {peak:.1}, {r1:.1} at the end; list latency idle {idle}; with the slow reader {during}"
    );
}

fn bench_docker(lines: usize) {
    ensure_image();
    sweep_stale();
    let backend = backend_name();
    let tmp = TempDir::new("uc-bench-streams");
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!(
            "[backends.{backend}]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n",
            tmp.0.display()
        ),
        ..Default::default()
    });
    let name = unique("sbd");
    let _guard = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": backend,
            "config": {"image": TEST_IMAGE, "command": ["sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done"]},
            "start": true})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let sse = Sse::open(
        &s.base,
        &format!("{INSTANCES}/{id}/logs?follow=true&timestamps=true&tail=0"),
        VIEWER,
        &[],
    );
    assert_eq!(sse.status, 200, "{:?}", sse.error);
    let mut delays = Vec::new();
    let mut last: Option<u64> = None;
    let mut lost = 0u64;
    while delays.len() < lines {
        let f = sse.next_event(Duration::from_secs(10)).expect("a line");
        let (stamp, n) = f.text.split_once(' ').expect("timestamped");
        let n: u64 = n.trim().parse().expect("a number");
        if let Some(l) = last {
            lost += n.saturating_sub(l + 1);
            assert_eq!(n, l + 1, "in order, none lost");
        }
        last = Some(n);
        let written = chrono_parse(stamp);
        let now = std::time::SystemTime::now();
        delays.push(now.duration_since(written).unwrap_or_default());
    }
    sse.close();
    let _ = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
    println!(
        "docker follow: {lines} lines every 10 ms, {lost} lost; write -> client delay {}",
        dist(&mut delays)
    );
}

/// An RFC 3339 instant with nanoseconds (`2024-01-02T03:04:05.123456789Z`).
fn chrono_parse(s: &str) -> std::time::SystemTime {
    // Days from the civil date (Howard Hinnant's algorithm), then the time of day.
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("instant");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let (y, m, dd) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().expect("time")).collect();
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().expect("fraction");
    let secs = days * 86400 + t[0] * 3600 + t[1] * 60 + t[2];
    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_nanos(nanos)
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let on = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
    println!(
        "host binary: {} (profile {})",
        host_binary().display(),
        profile()
    );
    if on("followers") {
        bench_followers(1000);
    }
    if on("slow") {
        bench_slow(20);
    }
    if on("docker") {
        bench_docker(1000);
    }
}
