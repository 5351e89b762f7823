//! A `tcp://` endpoint, through a loopback proxy to the engine's socket that the test
//! can cut and restore: the engine "goes away" without touching `dockerd`, calls fail
//! with `BACKEND_UNAVAILABLE`, and the backend (calls and event stream) recovers when
//! the proxy is back.

mod common;

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{backend_with, request, unique, Cleanup, FileLock};
use unicompute_plugin_api::{Backend, ErrorCode, Event, InstanceState};

const SOCKET: &str = "/var/run/docker.sock";

/// Forwards loopback TCP connections to the engine's Unix socket.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(port: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (s, o) = (Arc::clone(&stop), Arc::clone(&open));
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false).unwrap();
                        let Ok(unix) = UnixStream::connect(SOCKET) else {
                            continue;
                        };
                        o.lock().unwrap().push(tcp.try_clone().unwrap());
                        let (mut t1, mut u1) =
                            (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
                        let (mut t2, mut u2) = (tcp, unix);
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut t1, &mut u1);
                            let _ = u1.shutdown(Shutdown::Write);
                        });
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut u2, &mut t2);
                            let _ = t2.shutdown(Shutdown::Both);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Proxy {
            port,
            stop,
            open,
            accept: Some(accept),
        }
    }

    /// Closes the listener and every connection.
    fn cut(mut self) -> u16 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.port
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn a_tcp_engine_that_goes_away_and_comes_back() {
    let _engine = FileLock::engine_shared();
    let proxy = Proxy::start(0);
    let t =
        backend_with(serde_json::json!({"endpoint": format!("tcp://127.0.0.1:{}", proxy.port)}));
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("tcp"));
    let mut req = request(
        &name,
        serde_json::json!({"command": ["sh", "-c", "sleep 1000"]}),
    );
    req.start = true;
    let id = req.id.clone();
    assert_eq!(t.backend.create(req).unwrap().state, InstanceState::Running);
    assert!(t.backend.describe().unwrap().api_version.starts_with("1."));

    let port = proxy.cut();
    for (what, result) in [
        ("get", t.backend.get(&id).map(|_| ())),
        ("list", t.backend.list().map(|_| ())),
        ("health", t.backend.health()),
    ] {
        assert_eq!(
            result.expect_err(what).code,
            ErrorCode::BackendUnavailable,
            "{what}"
        );
    }

    let proxy = Proxy::start(port);
    assert!(
        wait_until(Duration::from_secs(20), || t.backend.health().is_ok()),
        "no recovery"
    );
    assert_eq!(t.backend.get(&id).unwrap().state, InstanceState::Running);
    assert!(t
        .events
        .wait_for(Duration::from_secs(20), |e| matches!(e, Event::Resync))
        .is_some());
    let rm = std::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .unwrap();
    assert!(rm.status.success());
    assert!(
        t.events
            .wait_for(
                Duration::from_secs(10),
                |e| matches!(e, Event::Vanished { id: v } if *v == id)
            )
            .is_some(),
        "the event stream did not come back"
    );
    proxy.cut();
}

/// A remote (`tcp://`) engine's usage comes from its stats stream: the cgroup of a
/// container on another machine cannot be read. The first call waits for the engine's
/// sample with a CPU delta (its stats tick is a second; the cgroup path answers in
/// milliseconds), and a spinning container shows on its one core.
#[test]
fn a_tcp_engines_usage_comes_from_its_stats_stream() {
    let _engine = FileLock::engine_shared();
    let proxy = Proxy::start(0);
    let t =
        backend_with(serde_json::json!({"endpoint": format!("tcp://127.0.0.1:{}", proxy.port)}));
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("tcp-usage"));
    let mut req = request(
        &name,
        serde_json::json!({"command": ["sh", "-c", "while :; do :; done"]}),
    );
    req.resources = serde_json::from_value(
        serde_json::json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}}),
    )
    .unwrap();
    req.start = true;
    let id = req.id.clone();
    t.backend.create(req).unwrap();
    let started = Instant::now();
    let first = t.backend.usage(&id).unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "a first usage call of {took:?} cannot have waited for the engine's stats"
    );
    assert!(first.memory.used > 0, "{first:?}");
    assert_eq!(first.memory.limit, 128 << 20);
    let mut seen = vec![first.cpu.usage];
    let busy = wait_until(Duration::from_secs(10), || {
        let u = t.backend.usage(&id).unwrap();
        seen.push(u.cpu.usage);
        u.cpu.usage > 50.0 && u.cpu.usage <= 100.0
    });
    assert!(busy, "cpu of a spinning container: {seen:?}");
    t.backend.delete(&id, true).unwrap();
    proxy.cut();
}
