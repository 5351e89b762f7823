//! Reads side by side with the framework's own limit: unicompute's get by id, list of
//! 100 and `HEAD`, each against a bare warp server started in this process that
//! serves the very same bytes (fetched from unicompute first) on the same paths,
//! under the same load, in the same run. Prints requests/s of both and the ratio.
//!
//! Run: `cargo build --release -p unicompute-host && cargo bench -p unicompute-tests --bench reads`
//! (the release host binary; the fake plugin is built in release here). The load is
//! wrk (`apt-get install wrk`), 2 threads and 8 connections by default
//! (`UC_BENCH_WRK="-t2 -c8"`, `UC_BENCH_SECS=5`); `HEAD` is loaded by 8 plain threads
//! with a connection each (wrk waits for the body a `HEAD` answer announces). Each pair is measured in
//! alternation, `UC_BENCH_ROUNDS` times (default 3), and the best round of each side
//! is kept. Prints numbers; asserts nothing about time.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use unicompute_tests::*;
use warp::http::{header, HeaderValue, StatusCode};
use warp::Filter;

/// What the bare server answers: the bytes of a get and of a list page.
struct Bodies {
    get: Vec<u8>,
    list: Vec<u8>,
}

/// A bare warp server on 127.0.0.1: the same two routes, the same bytes, with
/// `Content-Type: application/json`, and nothing else (no auth, no envelope).
fn bare_server(bodies: Arc<Bodies>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let json = |b: &[u8]| {
                let mut r = warp::reply::Response::new(b.to_vec().into());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            };
            let b = Arc::clone(&bodies);
            let get = warp::path!("api" / "v1" / "compute" / "instances" / String)
                .and(warp::get().or(warp::head()).unify())
                .map(move |_id: String| json(&b.get));
            let b = Arc::clone(&bodies);
            let list = warp::path!("api" / "v1" / "compute" / "instances")
                .and(warp::get())
                .and(warp::query::raw().or(warp::any().map(String::new)).unify())
                .map(move |_q: String| json(&b.list));
            let routes = get.or(list).unify().or(warp::any().map(|| {
                let mut r = warp::reply::Response::new(Vec::new().into());
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }));
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            warp::serve(routes).incoming(listener).run().await;
        });
    });
    addr
}

/// Requests/s that wrk measured, and its latency line.
fn wrk(url: &str, method: &str, token: Option<&str>) -> (f64, String) {
    let secs = std::env::var("UC_BENCH_SECS").unwrap_or_else(|_| "5".into());
    let shape = std::env::var("UC_BENCH_WRK").unwrap_or_else(|_| "-t2 -c8".into());
    let dir = TempDir::new("uc-bench-reads");
    let script = dir.0.join("method.lua");
    std::fs::write(&script, format!("wrk.method = \"{method}\"\n")).expect("lua");
    let mut cmd = Command::new("wrk");
    cmd.args(shape.split_whitespace())
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(&script);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.arg(url).output().unwrap_or_else(|e| {
        panic!("wrk could not run ({e}): this benchmark needs it, `apt-get install wrk`")
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw answers that are not 2xx:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let latency = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .unwrap_or_default();
    (rps, latency)
}

/// Requests/s of `HEAD path` over `conns` keep-alive connections for `secs`, from
/// plain threads (wrk cannot: it waits for the body a `HEAD` answer announces).
fn head_load(base: &str, path: &str, token: Option<&str>) -> (f64, String) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let secs: u64 = std::env::var("UC_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let conns = 8;
    let addr = base.trim_start_matches("http://").to_owned();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").into_bytes();
    let (stop, count) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|scope| {
        for _ in 0..conns {
            scope.spawn(|| {
                let stream = std::net::TcpStream::connect(&addr).expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let mut w = stream.try_clone().expect("clone");
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    w.write_all(&req).expect("write");
                    line.clear();
                    r.read_line(&mut line).expect("status line");
                    assert!(line.starts_with("HTTP/1.1 200"), "HEAD answered {line:?}");
                    loop {
                        line.clear();
                        r.read_line(&mut line).expect("header");
                        if line == "\r\n" {
                            break;
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    (
        count.load(Ordering::Relaxed) as f64 / secs as f64,
        "n/a".to_owned(),
    )
}

fn main() {
    std::env::set_var("UCTEST_PROFILE", "release");
    let s = Server::fake("");
    // 100 instances, as a list of pageSize 100 shows them.
    let mut ids = Vec::new();
    for i in 0..100 {
        let r = s.call(
            "POST",
            "/api/v1/compute/instances",
            ADMIN,
            Some(&json!({
                "name": format!("reads-{i}"), "backend": "fake",
                "config": {"image": "busybox", "env": ["A=1", "B=2"]},
                "resources": {"cpu": {"cores": 2}, "memory": {"limit": 1073741824}},
                "metadata": {"labels": {"app": "bench", "n": i.to_string()}}
            })),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.json["id"].as_str().expect("id").to_owned());
    }
    let get_path = format!("/api/v1/compute/instances/{}", ids[0]);
    let list_path = "/api/v1/compute/instances?pageSize=100".to_owned();
    let get = s.get(&get_path);
    let list = s.get(&list_path);
    assert_eq!(get.status, 200);
    assert_eq!(list.status, 200);
    assert_eq!(list.json["instances"].as_array().map(Vec::len), Some(100));
    let bodies = Arc::new(Bodies {
        get: get.text.into_bytes(),
        list: list.text.into_bytes(),
    });
    println!(
        "bodies: get {} bytes, list of 100 {} bytes",
        bodies.get.len(),
        bodies.list.len()
    );
    let bare = format!("http://{}", bare_server(Arc::clone(&bodies)));
    // The bare server serves what unicompute serves.
    let same = request(&agent(), &bare, "GET", &get_path, None, None);
    assert_eq!(same.text.as_bytes(), &bodies.get[..]);

    let rounds: usize = std::env::var("UC_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "load: wrk {} for {}s per run, {rounds} alternating rounds, best of each side",
        std::env::var("UC_BENCH_WRK").unwrap_or_else(|_| "-t2 -c8".into()),
        std::env::var("UC_BENCH_SECS").unwrap_or_else(|_| "5".into())
    );
    for (what, method, path, goal) in [
        ("get by id", "GET", &get_path, 0.8),
        ("list of 100", "GET", &list_path, 0.6),
        ("HEAD by id", "HEAD", &get_path, 0.8),
    ] {
        let (mut ours, mut theirs) = ((0.0f64, String::new()), (0.0f64, String::new()));
        for _ in 0..rounds {
            let (o, t) = if method == "HEAD" {
                (
                    head_load(&s.base, path, Some(ADMIN)),
                    head_load(&bare, path, None),
                )
            } else {
                (
                    wrk(&format!("{}{path}", s.base), method, Some(ADMIN)),
                    wrk(&format!("{bare}{path}"), method, None),
                )
            };
            if o.0 > ours.0 {
                ours = o;
            }
            if t.0 > theirs.0 {
                theirs = t;
            }
        }
        println!(
            "{what:<12} unicompute {:>8.0}/s (p99 {}) | bare warp {:>8.0}/s (p99 {}) | ratio {:.2}x (goal >= {goal}x)",
            ours.0,
            ours.1,
            theirs.0,
            theirs.1,
            ours.0 / theirs.0
        );
    }
    println!("server after the runs: VmRSS {} kB", rss_kib(s.pid()));
}
