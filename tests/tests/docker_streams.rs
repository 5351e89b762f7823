//! Logs, exec and the console of real containers through the API: the real binary,
//! the real docker plugin, the real engine (the local busybox image only; nothing is
//! sent to a container's address).

use std::time::Duration;

use unicompute_tests::docker::{
    backend_name, ensure_image, sweep_stale, ContainerGuard, FileLock, TEST_IMAGE,
};
use unicompute_tests::sse::Sse;
use unicompute_tests::ws::{self, Got};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// A server with a docker backend of its own name, the engine lock, the backend's name.
fn server(tmp: &TempDir) -> (Server, FileLock, String) {
    let lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let backend = backend_name();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!(
            "[backends.{backend}]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n",
            tmp.0.display()
        ),
        ..Default::default()
    });
    (s, lock, backend)
}

/// A started container running `script` (sh -c), with `config` merged in.
fn container(s: &Server, backend: &str, script: &str, config: Value) -> (String, ContainerGuard) {
    let name = unique("strm");
    let guard = ContainerGuard(name.clone());
    let mut cfg = json!({"image": TEST_IMAGE, "command": ["sh", "-c", script]});
    if let (Some(c), Some(extra)) = (cfg.as_object_mut(), config.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": backend, "config": cfg, "start": true})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    (r.json["id"].as_str().expect("id").to_owned(), guard)
}

#[test]
fn logs_follow_every_line_in_order_and_tail_since_and_streams_are_exact() {
    let tmp = TempDir::new("uc-dstr");
    let (s, _lock, backend) = server(&tmp);
    let (id, _g) = container(
        &s,
        &backend,
        "echo out; echo err >&2; i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done",
        json!({}),
    );
    // A follow from the start: `out`, then 0, 1, 2... none lost, none twice.
    let sse = Sse::open(
        &s.base,
        &format!("{INSTANCES}/{id}/logs?follow=true&stream=stdout"),
        VIEWER,
        &[],
    );
    assert_eq!(sse.status, 200, "{:?}", sse.error);
    let first = sse.next_event(Duration::from_secs(20)).expect("a line");
    assert_eq!(
        (first.event.as_deref(), first.text.as_str()),
        (Some("stdout"), "out")
    );
    for n in 0..300 {
        let f = sse
            .next_event(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("line {n}"));
        assert_eq!(f.text, n.to_string(), "in order, none lost");
    }
    sse.close();

    // stderr alone; tail exact; since exact (nothing before the instant).
    let logs = |q: &str| s.get(&format!("{INSTANCES}/{id}/logs{q}"));
    assert_eq!(logs("?stream=stderr").text, "err\n");
    let t = logs("?tail=3&stream=stdout").text;
    assert_eq!(t.lines().count(), 3, "{t}");
    let last: Vec<u64> = t.lines().map(|l| l.parse().expect("a number")).collect();
    assert!(last[0] + 1 == last[1] && last[1] + 1 == last[2], "{last:?}");
    let stamped = logs("?timestamps=true&stream=stdout&tail=5").text;
    let instant = stamped
        .lines()
        .nth(2)
        .and_then(|l| l.split(' ').next())
        .expect("a timestamp")
        .to_owned();
    let since = logs(&format!("?timestamps=true&stream=stdout&since={instant}")).text;
    let first_since = since.lines().next().expect("a line");
    assert!(
        first_since.starts_with(&instant),
        "{first_since} starts at {instant}"
    );
    assert!(
        since
            .lines()
            .all(|l| l.split(' ').next().is_some_and(|t| t >= instant.as_str())),
        "nothing before {instant}"
    );
    let _ = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
}

#[test]
fn exec_answers_exit_code_and_both_streams_and_runs_interactively() {
    let tmp = TempDir::new("uc-dstr");
    let (s, _lock, backend) = server(&tmp);
    let (id, _g) = container(&s, &backend, "sleep 3600", json!({}));
    let r = s.call(
        "POST",
        &format!("{INSTANCES}/{id}/exec"),
        ADMIN,
        Some(
            &json!({"command": ["sh", "-c", "echo o; echo e >&2; echo $A; pwd; exit 3"],
            "env": {"A": "from-env"}, "workdir": "/tmp"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["exitCode"], 3, "{}", r.text);
    assert_eq!(r.json["stdout"], "o\nfrom-env\n/tmp\n");
    assert_eq!(r.json["stderr"], "e\n");
    let r = s.call(
        "POST",
        &format!("{INSTANCES}/{id}/exec"),
        ADMIN,
        Some(&json!({"command": ["cat"], "stdin": "fed\n"})),
    );
    assert_eq!(
        (r.json["exitCode"].clone(), r.json["stdout"].clone()),
        (json!(0), json!("fed\n"))
    );

    // Interactive, on a terminal: a resize reaches it, input round-trips, the exit
    // code ends the session.
    let mut w = ws::connect(
        &s.base,
        &format!("{INSTANCES}/{id}/exec?command=sh&tty=true&cols=100&rows=40"),
        ADMIN,
    )
    .expect("exec");
    let mut seen = Vec::new();
    w.send_bytes(b"stty size; echo $((6*7))-marker\n");
    assert!(
        w.read_until("42-marker", Duration::from_secs(20), &mut seen),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        String::from_utf8_lossy(&seen).contains("40 100"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    w.send_control(json!({"type": "resize", "cols": 90, "rows": 30}));
    std::thread::sleep(Duration::from_millis(300));
    w.send_bytes(b"stty size; exit 5\n");
    let mut exit = None;
    let mut out = Vec::new();
    while let Some(got) = w.next(Duration::from_secs(20)) {
        match got {
            Got::Bytes(b) => out.extend(b),
            Got::Control(v) => exit = Some(v),
            Got::Closed(_) => break,
        }
    }
    assert!(
        String::from_utf8_lossy(&out).contains("30 90"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(exit, Some(json!({"type": "exit", "exitCode": 5})));
    let _ = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
}

#[test]
fn the_console_of_a_terminal_container_echoes_and_detaching_leaves_it_running() {
    let tmp = TempDir::new("uc-dstr");
    let (s, _lock, backend) = server(&tmp);
    let (id, g) = container(&s, &backend, "sh", json!({"tty": true, "openStdin": true}));
    let path = format!("{INSTANCES}/{id}/console");
    for round in 0..2 {
        // The previous session's close may still be on its way: the console is free
        // once the server has seen it.
        let mut c = wait_for(Duration::from_secs(10), || {
            ws::connect(&s.base, &path, ADMIN).ok()
        })
        .expect("console");
        let mut seen = Vec::new();
        c.send_bytes(format!("echo round-$((40+{round}))\n").as_bytes());
        assert!(
            c.read_until(
                &format!("round-{}", 40 + round),
                Duration::from_secs(20),
                &mut seen
            ),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        c.close();
    }
    let r = s.get(&format!("{INSTANCES}/{id}"));
    assert_eq!(
        r.json["state"], "running",
        "closing the console never stops it"
    );
    let (ok, out) =
        unicompute_tests::docker::docker(&["inspect", "-f", "{{.State.Running}}", &g.0]);
    assert!(ok && out.trim() == "true", "{out}");
    let _ = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
}
