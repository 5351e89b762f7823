//! The built `libunicompute_docker.so` loads through the host's loader and serves
//! calls made the way the host makes them: from blocking threads of the host's own
//! tokio runtime, which the plugin never uses.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{request, unique, Cleanup, FileLock, Recorder};
use unicompute_plugin_api::load::load_plugin;
use unicompute_plugin_api::stream::{ExecOptions, StreamKind, StreamRequest};
use unicompute_plugin_api::{Backend, ErrorCode, Event, Input, InstanceState, Output, StopOptions};

fn plugin_path() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/libunicompute_docker.so
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    dir.join("libunicompute_docker.so")
}

#[test]
fn the_cdylib_loads_and_serves_the_hosts_calls() {
    let _engine = FileLock::engine_shared();
    common::ensure_image();
    let path = plugin_path();
    assert!(path.exists(), "{} was not built", path.display());
    let plugin = load_plugin(&path, |_| Arc::new(|_, _, _| {})).expect("load the plugin");
    assert_eq!(plugin.handshake.name, "docker");
    assert_eq!(plugin.handshake.kind, "docker");

    let bad = plugin.create_backend(
        "docker",
        &serde_json::json!({"endpoint": "unix:///x.sock", "bogus": 1}),
        Recorder::default().sink(),
    );
    let e = bad.err().unwrap();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.contains("bogus"), "{}", e.message);

    let events = Recorder::default();
    let state = unicompute_tests::TempDir::new("uc-so-state");
    let backend = Arc::new(
        plugin
            .create_backend(
                &unique("so"),
                &serde_json::json!({"state_dir": state.0}),
                events.sink(),
            )
            .expect("create the backend"),
    );
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("so"));
    let mut req = request(
        &name,
        serde_json::json!({"command": ["sh", "-c", "sleep 1000"]}),
    );
    req.start = true;
    let id = req.id.clone();

    // The host's runtime calls the plugin on its blocking pool.
    let host_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = Arc::clone(&backend);
    let inst = host_rt
        .block_on(async move { tokio::task::spawn_blocking(move || b.create(req)).await })
        .unwrap()
        .unwrap();
    assert_eq!(inst.state, InstanceState::Running);
    let b = Arc::clone(&backend);
    let (desc, list) = host_rt
        .block_on(
            async move { tokio::task::spawn_blocking(move || (b.describe(), b.list())).await },
        )
        .unwrap();
    assert!(!desc.unwrap().version.is_empty());
    assert_eq!(list.unwrap().len(), 1);

    let usage = backend.usage(&id).unwrap();
    assert!(usage.memory.used > 0);

    // Streams cross the boundary: output apart, input, the exit code, then the end.
    let exec = |command: &[&str], stdin: bool| StreamRequest {
        id: id.clone(),
        kind: StreamKind::Exec(ExecOptions {
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin,
            ..Default::default()
        }),
    };
    let b = Arc::clone(&backend);
    let req = exec(&["sh", "-c", "read x; echo o$x; echo e >&2; exit 3"], true);
    let stream = host_rt
        .block_on(async move { tokio::task::spawn_blocking(move || b.open_stream(req)).await })
        .unwrap()
        .unwrap();
    let got = host_rt.block_on(async move {
        assert!(stream.send(Input::Data(b"k\n".to_vec())).await);
        let mut got = Vec::new();
        loop {
            let next = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next());
            match next.await.expect("the stream stalled") {
                Some(o) => got.push(o),
                None => break got,
            }
        }
    });
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), Vec::new());
    for o in got {
        match o {
            Output::Stdout(d) => out.extend(d),
            Output::Stderr(d) => err.extend(d),
            Output::Exit(c) => exit.push(c),
            Output::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        (&out[..], &err[..], &exit[..]),
        (&b"ok\n"[..], &b"e\n"[..], &[3][..])
    );
    let mut unknown = exec(&["true"], false);
    unknown.id = unique("nobody");
    assert_eq!(
        backend.open_stream(unknown).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    // Events cross the boundary as well: a kill by hand is reported.
    let kill = std::process::Command::new("docker")
        .args(["kill", &name])
        .output()
        .unwrap();
    assert!(kill.status.success());
    assert!(events
        .wait_for(std::time::Duration::from_secs(10), |e| matches!(
            e,
            Event::Changed { instance } if instance.id == id && instance.state == InstanceState::Stopped
        ))
        .is_some());
    let started = backend.start(&id).unwrap();
    assert_eq!(started.state, InstanceState::Running);
    let stopped = backend
        .stop(
            &id,
            StopOptions {
                force: true,
                timeout: 0,
            },
        )
        .unwrap();
    assert_eq!(stopped.state, InstanceState::Stopped);
    backend.delete(&id, false).unwrap();
    assert_eq!(
        backend.get(&id).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    backend.shutdown();
}
