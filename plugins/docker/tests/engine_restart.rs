//! The engine stops and comes back in the middle of a run: calls fail fast with
//! `BACKEND_UNAVAILABLE` meanwhile, and the backend recovers by itself (calls and the
//! event stream) with nothing lost.
//!
//! This stops the machine's `dockerd` (by its pid) and starts it again the way
//! `scripts/test-env.sh` does. It is its own test binary, so it never runs beside the
//! other engine tests of this crate, and it takes the engine lock exclusively, so it
//! waits for any of them running in another process. Set
//! `UNICOMPUTE_SKIP_ENGINE_RESTART=1` to skip it on a shared engine (only `1` skips;
//! under `CI=true` a skip fails).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{backend, request, unique, Cleanup, FileLock};
use unicompute_plugin_api::{Backend, ErrorCode, Event, InstanceState, StopOptions};

const PID_FILE: &str = "/var/run/docker.pid";
const LOG_FILE: &str = "/var/log/unicompute-dockerd.log";

fn engine_up() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn dockerd_pid() -> Option<i32> {
    if let Ok(s) = std::fs::read_to_string(PID_FILE) {
        if let Ok(pid) = s.trim().parse::<i32>() {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Some(pid);
            }
        }
    }
    let out = Command::new("pgrep")
        .args(["-x", "dockerd"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn stop_engine() {
    let pid = dockerd_pid().expect("dockerd is running");
    // SAFETY: sending a signal to a pid has no memory-safety requirements.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill dockerd");
    assert!(
        wait_until(Duration::from_secs(60), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "dockerd did not stop"
    );
}

fn start_engine() {
    if engine_up() {
        return;
    }
    if dockerd_pid().is_none() {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(LOG_FILE)
            .expect("open the dockerd log");
        Command::new("setsid")
            .args(["-f", "dockerd"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .status()
            .expect("start dockerd");
    }
    assert!(
        wait_until(Duration::from_secs(60), engine_up),
        "dockerd did not come back"
    );
}

/// Brings the engine back even when the test fails half-way.
struct EngineBack;

impl Drop for EngineBack {
    fn drop(&mut self) {
        if let Some(pid) = dockerd_pid() {
            // SAFETY: as in stop_engine.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        start_engine();
    }
}

/// A frozen engine (it accepts connections but never answers): calls fail within the
/// connect timeout instead of hanging, and work again once it thaws.
fn frozen_engine_phase(t: &common::TestBackend, id: &str) {
    let pid = dockerd_pid().expect("dockerd is running");
    // SAFETY: as in stop_engine.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    let get = t.backend.get(id);
    let stop = t.backend.stop(id, StopOptions::default());
    let elapsed = started.elapsed();
    // SAFETY: as in stop_engine.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    eprintln!("two calls on a frozen engine failed in {elapsed:?}");
    assert_eq!(get.unwrap_err().code, ErrorCode::BackendUnavailable);
    assert_eq!(stop.unwrap_err().code, ErrorCode::BackendUnavailable);
    assert!(
        wait_until(Duration::from_secs(30), || t
            .backend
            .get(id)
            .is_ok_and(|i| i.state == InstanceState::Running)),
        "the backend did not recover from a frozen engine"
    );
}

#[test]
fn the_backend_recovers_from_an_engine_restart() {
    if unicompute_tests::skip_requested("UNICOMPUTE_SKIP_ENGINE_RESTART", "the engine restart test")
    {
        return;
    }
    let _engine = FileLock::engine_exclusive();
    let t = backend();
    let mut clean = Cleanup::default();
    let keeps = clean.container(&unique("keeps"));
    let mut req = request(
        &keeps,
        serde_json::json!({
            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
            "restartPolicy": "unless-stopped"
        }),
    );
    req.start = true;
    let id = req.id.clone();
    let before = t.backend.create(req).unwrap();
    assert_eq!(before.state, InstanceState::Running);
    let idle = clean.container(&unique("idle"));
    let idle_id = t
        .backend
        .create(request(&idle, serde_json::json!({})))
        .unwrap()
        .id;

    let back = EngineBack;
    frozen_engine_phase(&t, &id);
    stop_engine();
    for (what, result) in [
        ("get", t.backend.get(&id).map(|_| ())),
        ("list", t.backend.list().map(|_| ())),
        ("health", t.backend.health()),
        ("usage", t.backend.usage(&id).map(|_| ())),
        (
            "stop",
            t.backend.stop(&id, StopOptions::default()).map(|_| ()),
        ),
        (
            "create",
            t.backend
                .create(request(
                    &clean.container(&unique("while-down")),
                    serde_json::json!({}),
                ))
                .map(|_| ()),
        ),
    ] {
        let e = result.expect_err(what);
        assert_eq!(e.code, ErrorCode::BackendUnavailable, "{what}: {e:?}");
    }
    let started = Instant::now();
    let e = t.backend.get(&id).unwrap_err();
    eprintln!(
        "get with the engine down failed in {:?}: {}",
        started.elapsed(),
        e.message
    );

    start_engine();
    drop(back);
    // The backend reconnects by itself, with no new backend made.
    assert!(
        wait_until(Duration::from_secs(30), || t.backend.health().is_ok()),
        "the backend did not recover"
    );
    let after = t.backend.get(&id).unwrap();
    assert_eq!(after.uuid, before.uuid);
    assert_eq!(after.name, before.name);
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(after.config, before.config);
    // unless-stopped: the engine starts it again.
    assert!(
        wait_until(Duration::from_secs(30), || t
            .backend
            .get(&id)
            .is_ok_and(|i| i.state == InstanceState::Running)),
        "the instance did not come back running"
    );
    let mut ids: Vec<String> = t
        .backend
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    ids.sort();
    let mut want = vec![id.clone(), idle_id.clone()];
    want.sort();
    assert_eq!(ids, want);

    // The event stream came back too: a resync, then a removal by hand is seen.
    assert!(t
        .events
        .wait_for(Duration::from_secs(30), |e| matches!(e, Event::Resync))
        .is_some());
    let rm = Command::new("docker")
        .args(["rm", "-f", &idle])
        .output()
        .unwrap();
    assert!(rm.status.success());
    assert!(
        t.events
            .wait_for(
                Duration::from_secs(10),
                |e| matches!(e, Event::Vanished { id } if *id == idle_id)
            )
            .is_some(),
        "no event after the engine came back"
    );
    t.backend.delete(&id, true).unwrap();
}
