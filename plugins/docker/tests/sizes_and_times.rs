//! Against the real engine: sizes beyond what the host can hold are refused before any
//! engine call (422, never an engine error), and `updatedAt` survives a restart of the
//! server (a new backend object on the same state directory).

mod common;

use std::time::Duration;

use common::{backend_with, ensure_image, request, unique, Cleanup, Engine, FileLock};
use unicompute_docker::DockerBackend;
use unicompute_plugin_api::{
    Backend, BackendContext, CpuResources, ErrorCode, EventSink, InstanceState, MemoryResources,
    Resources, StorageResources, UpdateRequest,
};

fn memory(limit: u64) -> Resources {
    Resources {
        memory: Some(MemoryResources {
            limit: Some(limit),
            used: None,
        }),
        ..Default::default()
    }
}

fn storage(total: u64) -> Resources {
    Resources {
        storage: Some(StorageResources {
            total_space: Some(total),
            enforced: None,
        }),
        ..Default::default()
    }
}

fn sleeper() -> serde_json::Value {
    serde_json::json!({"command": ["sh", "-c", "sleep 1000"]})
}

#[test]
fn sizes_beyond_the_host_are_refused_before_the_engine() {
    let _engine = FileLock::engine_shared();
    let t = backend_with(serde_json::json!({}));
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let huge = [u64::MAX, i64::MAX as u64 + 1, i64::MAX as u64];
    for (field, res) in huge
        .iter()
        .map(|&v| ("storage.totalSpace", storage(v), v))
        .chain(huge.iter().map(|&v| ("memory.limit", memory(v), v)))
        .map(|(f, r, v)| ((f, v), r))
    {
        let name = clean.container(&unique("huge"));
        let mut req = request(&name, serde_json::json!({}));
        req.resources = res;
        let e = t.backend.create(req).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceLimitExceeded, "{field:?}: {e:?}");
        assert_eq!(e.details["field"], field.0, "{e:?}");
        assert_eq!(e.details["requested"], field.1, "{e:?}");
        assert!(
            e.details["limit"].as_u64().is_some_and(|l| l < field.1),
            "{e:?}"
        );
        assert!(!engine.exists(&name));
    }

    // A sane size is still taken; updates to huge sizes are refused the same way.
    let name = clean.container(&unique("sane"));
    let mut req = request(&name, sleeper());
    req.resources = storage(1 << 30);
    req.resources.memory = memory(64 << 20).memory;
    let inst = t.backend.create(req).unwrap();
    assert_eq!(inst.resources.total_space(), Some(1 << 30));
    for (field, res) in [
        ("memory.limit", memory(u64::MAX)),
        ("storage.totalSpace", storage(u64::MAX)),
    ] {
        let e = t
            .backend
            .update(
                &inst.id,
                UpdateRequest {
                    resources: res,
                    labels: None,
                },
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceLimitExceeded, "{field}: {e:?}");
        assert_eq!(e.details["field"], field, "{e:?}");
    }
    let host = engine.inspect(&name).host_config.unwrap();
    assert_eq!(host.memory, Some(64 << 20));
    t.backend.delete(&inst.id, true).unwrap();
}

/// A backend with a fixed name on a state directory, as a server (re)starts it.
fn backend_named(name: &str, state_dir: &std::path::Path) -> DockerBackend {
    ensure_image();
    DockerBackend::new(BackendContext {
        name: name.to_owned(),
        config: serde_json::json!({"state_dir": state_dir}),
        events: EventSink::discard(),
    })
    .unwrap()
}

#[test]
fn updated_at_survives_a_server_restart_and_never_goes_back() {
    let _engine = FileLock::engine_shared();
    let state = unicompute_tests::TempDir::new("uc-state");
    let be_name = unique("be");
    let b = backend_named(&be_name, &state.0);
    let engine = Engine::new();
    let mut clean = Cleanup::default();

    // Created and started at once: updatedAt is the start time.
    let paused_name = clean.container(&unique("paused"));
    let mut req = request(&paused_name, sleeper());
    req.start = true;
    let started = b.create(req.clone()).unwrap();
    assert_eq!(started.state, InstanceState::Running);
    assert!(started.updated_at > started.created_at);
    let started_at = engine
        .inspect(&paused_name)
        .state
        .unwrap()
        .started_at
        .unwrap();
    let started_at = chrono::DateTime::parse_from_rfc3339(&started_at).unwrap();
    assert_eq!(started.updated_at, started_at);

    std::thread::sleep(Duration::from_millis(20));
    let paused = b.pause(&started.id).unwrap();
    assert!(paused.updated_at > started.updated_at, "a pause moves it");

    let updated_name = clean.container(&unique("updated"));
    let mut req = request(&updated_name, sleeper());
    req.start = true;
    let other = b.create(req).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let updated = b
        .update(
            &other.id,
            UpdateRequest {
                resources: Resources {
                    cpu: Some(CpuResources { cores: Some(1) }),
                    ..Default::default()
                },
                labels: None,
            },
        )
        .unwrap();
    assert!(updated.updated_at > other.updated_at, "an update moves it");

    // The server restarts: a new backend object, same state directory.
    b.shutdown();
    drop(b);
    let b = backend_named(&be_name, &state.0);
    assert_eq!(b.get(&paused.id).unwrap().updated_at, paused.updated_at);
    assert_eq!(b.get(&updated.id).unwrap().updated_at, updated.updated_at);
    let listed = b.list().unwrap();
    let find = |id: &str| listed.iter().find(|i| i.id == id).unwrap().updated_at;
    assert_eq!(find(&paused.id), paused.updated_at);
    assert_eq!(find(&updated.id), updated.updated_at);

    // Every later change moves it on.
    std::thread::sleep(Duration::from_millis(20));
    let unpaused = b.unpause(&paused.id).unwrap();
    assert!(unpaused.updated_at > paused.updated_at);
    let stopped = b
        .stop(
            &paused.id,
            unicompute_plugin_api::StopOptions {
                force: true,
                timeout: 0,
            },
        )
        .unwrap();
    assert!(stopped.updated_at > unpaused.updated_at);

    // Delete forgets them: the state file no longer names them.
    b.delete(&paused.id, true).unwrap();
    b.delete(&updated.id, true).unwrap();
    let kept: String = std::fs::read_dir(&state.0)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        !kept.contains(&paused.id) && !kept.contains(&updated.id),
        "{kept}"
    );
    b.shutdown();
}
