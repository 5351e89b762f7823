//! API benchmark through the fake plugin, on this machine: get-by-id requests per
//! second, and p50/p99 latency of listing 1,000 instances at pageSize 100.
//!
//! Run: `cargo build --release -p unicompute-host && cargo bench -p unicompute-tests --bench api`
//! (the release host binary is used; the fake plugin is built in release here).
//! Prints numbers; asserts nothing about time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use unicompute_tests::*;

fn main() {
    std::env::set_var("UCTEST_PROFILE", "release");
    let s = Server::fake("");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Loopback only: never through a proxy from the environment.
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .into();
    let n = 1000;
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = serde_json::to_vec(&json!({
            "name": format!("bench-{i}"), "backend": "fake",
            "config": {"image": "busybox", "env": ["A=1", "B=2"]},
            "resources": {"cpu": {"cores": 2}, "memory": {"limit": 1073741824}},
            "metadata": {"labels": {"app": "bench", "n": i.to_string()}}
        }))
        .expect("json");
        let r = request(
            &agent,
            &s.base,
            "POST",
            "/api/v1/compute/instances",
            Some(ADMIN),
            Some(&body),
        );
        assert_eq!(r.status, 201);
        ids.push(r.json["id"].as_str().expect("id").to_owned());
    }
    println!(
        "created {n} instances in {:?} ({:.0} creates/s, one client)",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );

    // get-by-id throughput: several keep-alive clients for a fixed time
    for clients in [1usize, 4, 8] {
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        let dur = Duration::from_secs(4);
        std::thread::scope(|scope| {
            for c in 0..clients {
                let (ids, stop, count, base) = (&ids, &stop, &count, &s.base);
                scope.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        // Loopback only: never through a proxy from the environment.
                        .proxy(None)
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let id = &ids[i % ids.len()];
                        let r = request(
                            &agent,
                            base,
                            "GET",
                            &format!("/api/v1/compute/instances/{id}"),
                            Some(ADMIN),
                            None,
                        );
                        assert_eq!(r.status, 200);
                        count.fetch_add(1, Ordering::Relaxed);
                        i += 7;
                    }
                });
            }
            std::thread::sleep(dur);
            stop.store(true, Ordering::Relaxed);
        });
        let total = count.load(Ordering::Relaxed);
        println!(
            "get-by-id, {clients} clients: {:.0} requests/s ({total} in {dur:?})",
            total as f64 / dur.as_secs_f64()
        );
    }

    // list latency, one client, pageSize 100 over 1,000 instances
    let mut lat = Vec::new();
    for i in 0..3000 {
        let page = i % 10 + 1;
        let t = Instant::now();
        let r = request(
            &agent,
            &s.base,
            "GET",
            &format!("/api/v1/compute/instances?pageSize=100&page={page}"),
            Some(ADMIN),
            None,
        );
        lat.push(t.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.json["total"], n);
    }
    lat.sort();
    println!(
        "list of {n} at pageSize 100 (3000 requests, one client, includes JSON parse in the client): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    let mut lat = Vec::new();
    for i in 0..3000 {
        let t = Instant::now();
        let r = request(
            &agent,
            &s.base,
            "GET",
            &format!(
                "/api/v1/compute/instances?pageSize=100&page={}&label=app%3Dbench&state=created",
                i % 10 + 1
            ),
            Some(ADMIN),
            None,
        );
        lat.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    lat.sort();
    println!(
        "filtered list (label+state), pageSize 100: p50 {:?}, p99 {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
        .ok()
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    println!("server memory with {n} instances: {rss}");
}
