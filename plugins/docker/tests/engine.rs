//! Tests against the real Docker engine (started by `scripts/test-env.sh`). Each test
//! drives the backend in-process, as the host does, and checks the containers through
//! the engine's own API. Names are unique and everything is removed, even on failure.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, RemoveContainerOptions,
};
use common::{backend, backend_with, request, unique, Cleanup, Engine, FileLock, TEST_IMAGE};
use unicompute_plugin_api::{
    Backend, CpuResources, ErrorCode, Event, Health, InstanceState, InstanceType, MemoryResources,
    Resources, StopOptions, StorageResources, UpdateRequest,
};

const EVENT_WAIT: Duration = Duration::from_secs(10);

fn resources(cores: Option<u32>, memory: Option<u64>, storage: Option<u64>) -> Resources {
    Resources {
        cpu: cores.map(|c| CpuResources { cores: Some(c) }),
        memory: memory.map(|m| MemoryResources {
            limit: Some(m),
            used: None,
        }),
        storage: storage.map(|s| StorageResources {
            total_space: Some(s),
            enforced: None,
        }),
    }
}

fn sleeper() -> serde_json::Value {
    serde_json::json!({"command": ["sh", "-c", "sleep 1000"]})
}

#[test]
fn the_specs_docker_create_example() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("nginx-web"));
    // The spec's example, with our local image in place of nginx:alpine.
    let mut req = request(
        &name,
        serde_json::json!({
            "image": TEST_IMAGE,
            "ports": ["8080:80"],
            "env": ["NGINX_HOST=example.com"]
        }),
    );
    req.resources = resources(Some(1), Some(536_870_912), None);
    let inst = t.backend.create(req.clone()).unwrap();
    assert_eq!(inst.id, req.id);
    assert_eq!(inst.name, name);
    assert_eq!(inst.instance_type, InstanceType::Container);
    assert_eq!(inst.state, InstanceState::Created);
    assert_eq!(inst.status, Health::None);
    assert!(uuid::Uuid::parse_str(&inst.uuid).is_ok(), "{}", inst.uuid);
    assert_eq!(inst.resources.cores(), Some(1));
    assert_eq!(inst.resources.memory_limit(), Some(536_870_912));
    assert_eq!(inst.config["image"], TEST_IMAGE);
    assert_eq!(inst.config["ports"], serde_json::json!(["8080:80"]));
    assert_eq!(inst.config["networkMode"], "bridge");
    assert_eq!(inst.config["restartPolicy"], "no");
    assert_eq!(inst.config["command"], serde_json::json!(["/bin/sh"]));

    let c = engine.inspect(&name);
    let host = c.host_config.unwrap();
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.memory, Some(536_870_912));
    let bindings = host.port_bindings.unwrap();
    let b = bindings["80/tcp"].as_ref().unwrap();
    assert_eq!(b[0].host_port.as_deref(), Some("8080"));
    let config = c.config.unwrap();
    assert!(config
        .env
        .unwrap()
        .contains(&"NGINX_HOST=example.com".to_owned()));
    assert_eq!(config.labels.unwrap()["io.unicompute.id"], req.id);

    // Read back the same through get and list.
    assert_eq!(t.backend.get(&req.id).unwrap(), inst);
    let list = t.backend.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, req.id);
    t.backend.delete(&req.id, false).unwrap();
    assert!(!engine.exists(&name));
}

#[test]
fn the_general_create_example_with_storage_and_labels() {
    let _engine = FileLock::engine_shared();
    // The example mounts /data: here a directory of the test's own (a bind source must
    // exist), allowed and pinned in directories of the test's own.
    let dir = unicompute_tests::TempDir::new("uc-general");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let t = backend_with(serde_json::json!({
        "allowed_host_paths": [data],
        "pin_dir": dir.0.join("pins"),
    }));
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("my-instance"));
    let mut req = request(
        &name,
        serde_json::json!({
            "image": TEST_IMAGE,
            "env": ["KEY=value"],
            "volumes": [format!("{}:/data", data.display())]
        }),
    );
    req.resources = resources(Some(2), Some(2_147_483_648), Some(10_737_418_240));
    req.labels = BTreeMap::from([
        ("app".to_owned(), "web".to_owned()),
        ("env".to_owned(), "prod".to_owned()),
    ]);
    let inst = t.backend.create(req.clone()).unwrap();
    assert_eq!(inst.metadata.labels, req.labels);
    assert_eq!(inst.resources.cores(), Some(2));
    assert_eq!(inst.resources.memory_limit(), Some(2_147_483_648));
    let storage = inst.resources.storage.clone().unwrap();
    assert_eq!(storage.total_space, Some(10_737_418_240));
    let c = engine.inspect(&name);
    let host = c.host_config.unwrap();
    let enforced = host
        .storage_opt
        .as_ref()
        .is_some_and(|o| o.get("size").map(String::as_str) == Some("10737418240"));
    // overlay2 on ext4 has no quota: kept and reported as not enforced.
    assert_eq!(storage.enforced, if enforced { None } else { Some(false) });
    // The engine mounts the pin of the directory (a type=bind mount), not the path.
    assert_eq!(host.binds.unwrap_or_default(), Vec::<String>::new());
    let mounts = host.mounts.unwrap();
    assert_eq!(mounts[0].target.as_deref(), Some("/data"));
    assert_eq!(
        mounts[0].source.as_deref(),
        Some(&*dir.0.join("pins").join(&req.id).join("0").to_string_lossy())
    );
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels["app"], "web");
    assert_eq!(labels["env"], "prod");
    assert_eq!(labels["io.unicompute.storage"], "10737418240");
    t.backend.delete(&req.id, true).unwrap();
}

#[test]
fn limits_ports_env_volumes_and_restart_policy_reach_the_engine() {
    let _engine = FileLock::engine_shared();
    // Removed when dropped, also when the test fails.
    let shared_dir = unicompute_tests::TempDir::new("uc-shared");
    let shared = shared_dir.0.clone();
    std::fs::create_dir_all(shared.join("sub")).unwrap();
    let pins = unicompute_tests::TempDir::new("uc-pins");
    let t = backend_with(serde_json::json!({"allowed_host_paths": [shared], "pin_dir": pins.0}));
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("limits"));
    let volume = clean.volume(&unique("vol"));
    let bind = format!("{}/./sub:/mnt/sub:ro", shared.display());
    let mut req = request(
        &name,
        serde_json::json!({
            "command": ["sh", "-c", "sleep 1000"],
            "env": ["A=1", "B=two words"],
            "volumes": [bind, format!("{volume}:/cache"), "/scratch"],
            "ports": ["127.0.0.1::80/tcp", "53/udp", "127.0.0.1::70-71"],
            "restartPolicy": "on-failure:3"
        }),
    );
    req.resources = resources(Some(1), Some(64 << 20), None);
    req.labels = BTreeMap::from([("team".to_owned(), "infra".to_owned())]);
    req.start = true;
    let inst = t.backend.create(req.clone()).unwrap();
    assert_eq!(inst.state, InstanceState::Running);
    assert_eq!(
        inst.config["volumes"][0],
        format!("{}/sub:/mnt/sub:ro", shared.display())
    );

    let c = engine.inspect(&name);
    let host = c.host_config.clone().unwrap();
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.memory, Some(64 << 20));
    let binds = host.binds.unwrap();
    // The bind mount is a pin of the directory; the named volume stays in Binds.
    assert_eq!(binds, vec![format!("{volume}:/cache")]);
    let bind = &host.mounts.as_ref().unwrap()[0];
    assert_eq!(bind.target.as_deref(), Some("/mnt/sub"));
    assert_eq!(bind.read_only, Some(true));
    assert!(bind
        .source
        .as_deref()
        .is_some_and(|s| s.starts_with(&*pins.0.to_string_lossy())));
    let policy = host.restart_policy.unwrap();
    assert_eq!(policy.name, Some(RestartPolicyNameEnum::ON_FAILURE));
    assert_eq!(policy.maximum_retry_count, Some(3));
    let ports = host.port_bindings.unwrap();
    assert_eq!(
        ports["80/tcp"].as_ref().unwrap()[0].host_ip.as_deref(),
        Some("127.0.0.1")
    );
    // No host port: published on one the engine picks, as `docker run -p 53/udp`.
    assert_eq!(
        ports["53/udp"].as_ref().unwrap()[0].host_port.as_deref(),
        Some("")
    );
    // A range is one binding per port.
    for p in ["70/tcp", "71/tcp"] {
        let b = &ports[p].as_ref().unwrap()[0];
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"), "{p}");
    }
    let config = c.config.clone().unwrap();
    let env = config.env.unwrap();
    assert!(env.contains(&"A=1".to_owned()) && env.contains(&"B=two words".to_owned()));
    assert!(config.exposed_ports.unwrap().contains(&"53/udp".to_owned()));
    assert!(config.volumes.unwrap().contains(&"/scratch".to_owned()));
    assert_eq!(config.labels.unwrap()["team"], "infra");
    let mounts = c.mounts.unwrap();
    let ro = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/mnt/sub"))
        .unwrap();
    assert_eq!(ro.rw, Some(false));
    assert!(mounts
        .iter()
        .any(|m| m.name.as_deref() == Some(volume.as_str())));

    t.backend.delete(&req.id, true).unwrap();
}

#[test]
fn bind_mounts_outside_the_allowlist_are_forbidden() {
    let _engine = FileLock::engine_shared();
    let t = backend_with(serde_json::json!({"allowed_host_paths": ["/data"]}));
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    for volume in ["/etc:/host-etc", "/data/../etc:/x", "/database:/x"] {
        let name = clean.container(&unique("forbidden"));
        let req = request(&name, serde_json::json!({"volumes": [volume]}));
        let e = t.backend.create(req).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{volume}: {e:?}");
        assert_eq!(e.details["allowedHostPaths"], serde_json::json!(["/data"]));
        assert!(!engine.exists(&name));
    }
    // Named volumes are always allowed.
    let name = clean.container(&unique("named"));
    let volume = clean.volume(&unique("vol"));
    let req = request(
        &name,
        serde_json::json!({"volumes": [format!("{volume}:/v")]}),
    );
    let inst = t.backend.create(req).unwrap();
    t.backend.delete(&inst.id, true).unwrap();
}

#[test]
fn a_failing_create_leaves_no_container() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();

    // Fails half-way: the container is made, its start fails.
    let name = clean.container(&unique("fails"));
    let mut req = request(&name, serde_json::json!({"command": ["/no/such/binary"]}));
    req.start = true;
    let e = t.backend.create(req.clone()).unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::InvalidRequest | ErrorCode::BackendError),
        "{e:?}"
    );
    assert!(!engine.exists(&name), "a half-made container was left");
    assert_eq!(
        t.backend.get(&req.id).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );

    // A network that does not exist: the client's mistake, no pull is tried.
    let name = clean.container(&unique("nonet"));
    let e = t
        .backend
        .create(request(
            &name,
            serde_json::json!({"networkMode": "uc-no-such-network"}),
        ))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
    assert!(e.message.contains("uc-no-such-network"), "{e:?}");
    assert!(!engine.exists(&name));

    // Refused before anything is made.
    for config in [
        serde_json::json!({"ports": ["http"]}),
        serde_json::json!({"restartPolicy": "sometimes"}),
        serde_json::json!({"bogus": true}),
        serde_json::json!({"env": ["ONLY_A_KEY"]}),
    ] {
        let name = clean.container(&unique("bad"));
        let e = t
            .backend
            .create(request(&name, config.clone()))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{config}: {e:?}");
        assert!(!engine.exists(&name));
    }
    let name = clean.container(&unique("huge"));
    let mut req = request(&name, serde_json::json!({}));
    req.resources = resources(Some(4096), None, None);
    assert_eq!(
        t.backend.create(req).unwrap_err().code,
        ErrorCode::ResourceLimitExceeded
    );
    assert!(!engine.exists(&name));

    // A name that is taken.
    let name = clean.container(&unique("taken"));
    let first = t
        .backend
        .create(request(&name, serde_json::json!({})))
        .unwrap();
    let e = t
        .backend
        .create(request(&name, serde_json::json!({})))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InstanceAlreadyExists);
    assert_eq!(t.backend.list().unwrap().len(), 1);
    t.backend.delete(&first.id, false).unwrap();
}

#[test]
fn a_one_character_name_works() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    // Docker wants two characters at least: the container gets a longer name, the
    // instance keeps its own. One letter cannot be unique: runs on this engine (other
    // checkouts' suites too) take turns through a lock, and a container of that name
    // found under the lock is what a killed run left.
    let _name = FileLock::exclusive("/tmp/unicompute-docker-one-letter.lock");
    let letter = "z";
    let container = clean.container("z.unicompute");
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", "-v", &container])
        .output();
    let inst = t
        .backend
        .create(request(letter, serde_json::json!({})))
        .unwrap();
    assert_eq!(inst.name, letter);
    assert!(engine.exists(&container));
    assert_eq!(t.backend.get(&inst.id).unwrap().name, letter);
    assert!(t.backend.list().unwrap().iter().any(|i| i.name == letter));
    t.backend.delete(&inst.id, false).unwrap();
    assert!(!engine.exists(&container));
}

#[test]
fn a_failed_pull_names_the_image_and_leaves_nothing() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("nopull"));
    // A registry on a closed loopback port: the pull fails without leaving the host.
    let image = "127.0.0.1:9/unicompute/missing:1";
    let e = t
        .backend
        .create(request(&name, serde_json::json!({"image": image})))
        .unwrap_err();
    // The registry cannot be reached: the engine failed, not the request (an image
    // the registry says does not exist is the client's error, 400).
    assert_eq!(e.code, ErrorCode::BackendError, "{e:?}");
    assert!(e.message.contains(image), "{}", e.message);
    assert_eq!(e.details["image"], image);
    assert!(!engine.exists(&name));
}

#[test]
fn every_lifecycle_call() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("life"));
    let req = request(&name, sleeper());
    let id = req.id.clone();
    let created = t.backend.create(req).unwrap();
    assert_eq!(created.state, InstanceState::Created);
    // Stopping what never ran changes nothing.
    let same = t.backend.stop(&id, StopOptions::default()).unwrap();
    assert_eq!(same.state, InstanceState::Created);
    assert_eq!(
        t.backend.pause(&id).unwrap_err().code,
        ErrorCode::InvalidState
    );

    let running = t.backend.start(&id).unwrap();
    assert_eq!(running.state, InstanceState::Running);
    assert!(
        running.updated_at > created.updated_at,
        "a start moves updatedAt"
    );
    let started_at = engine.inspect(&name).state.unwrap().started_at;
    // Start of a running instance succeeds and changes nothing.
    assert_eq!(t.backend.start(&id).unwrap().state, InstanceState::Running);
    assert_eq!(engine.inspect(&name).state.unwrap().started_at, started_at);

    assert_eq!(t.backend.pause(&id).unwrap().state, InstanceState::Paused);
    assert_eq!(engine.inspect(&name).state.unwrap().paused, Some(true));
    assert_eq!(t.backend.pause(&id).unwrap().state, InstanceState::Paused);
    assert_eq!(
        t.backend.start(&id).unwrap_err().code,
        ErrorCode::InvalidState
    );
    assert_eq!(
        t.backend.unpause(&id).unwrap().state,
        InstanceState::Running
    );
    assert_eq!(
        t.backend.unpause(&id).unwrap().state,
        InstanceState::Running
    );

    let restarted = t
        .backend
        .restart(
            &id,
            StopOptions {
                force: true,
                timeout: 30,
            },
        )
        .unwrap();
    assert_eq!(restarted.state, InstanceState::Running);
    assert_ne!(engine.inspect(&name).state.unwrap().started_at, started_at);

    // A graceful stop: sh as PID 1 has no TERM handler, so this is killed at the
    // timeout; a paused instance is thawed first.
    t.backend.pause(&id).unwrap();
    let stopped = t
        .backend
        .stop(
            &id,
            StopOptions {
                force: false,
                timeout: 1,
            },
        )
        .unwrap();
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(engine.inspect(&name).state.unwrap().running, Some(false));
    assert_eq!(
        t.backend.stop(&id, StopOptions::default()).unwrap().state,
        InstanceState::Stopped
    );
    assert_eq!(
        t.backend.pause(&id).unwrap_err().code,
        ErrorCode::InvalidState
    );

    t.backend.start(&id).unwrap();
    let killed = t
        .backend
        .stop(
            &id,
            StopOptions {
                force: true,
                timeout: 30,
            },
        )
        .unwrap();
    assert_eq!(killed.state, InstanceState::Stopped);
    assert_eq!(engine.inspect(&name).state.unwrap().exit_code, Some(137));

    t.backend.start(&id).unwrap();
    assert_eq!(
        t.backend.delete(&id, false).unwrap_err().code,
        ErrorCode::InvalidState
    );
    assert!(engine.exists(&name));
    t.backend.delete(&id, true).unwrap();
    assert!(!engine.exists(&name));
    assert_eq!(
        t.backend.get(&id).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    assert_eq!(
        t.backend.delete(&id, true).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
}

#[test]
fn a_graceful_stop_kills_a_process_that_ignores_sigterm_at_the_timeout() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("stubborn"));
    // sh traps TERM to nothing and waits on a child; the trap is inherited.
    let mut req = request(
        &name,
        serde_json::json!({"command": ["sh", "-c", "trap '' TERM; sleep 1000 & wait; sleep 1000"]}),
    );
    req.start = true;
    let id = req.id.clone();
    t.backend.create(req).unwrap();
    let stopped = t
        .backend
        .stop(
            &id,
            StopOptions {
                force: false,
                timeout: 2,
            },
        )
        .unwrap();
    assert_eq!(stopped.state, InstanceState::Stopped);
    let state = engine.inspect(&name).state.unwrap();
    // Killed (SIGKILL, 128 + 9), not ended by the TERM it ignored.
    assert_eq!(state.exit_code, Some(137));
    assert_eq!(state.oom_killed, Some(false));
    t.backend.delete(&id, false).unwrap();
}

#[test]
fn a_live_update_is_seen_through_inspect() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("update"));
    let mut req = request(&name, sleeper());
    req.resources = resources(Some(1), Some(128 << 20), Some(1 << 30));
    req.start = true;
    let id = req.id.clone();
    let before = t.backend.create(req).unwrap();
    let after = t
        .backend
        .update(
            &id,
            UpdateRequest {
                resources: resources(Some(2), Some(256 << 20), None),
                labels: None,
            },
        )
        .unwrap();
    assert_eq!(after.state, InstanceState::Running);
    assert_eq!(after.resources.cores(), Some(2));
    assert_eq!(after.resources.memory_limit(), Some(256 << 20));
    assert_eq!(after.resources.total_space(), Some(1 << 30));
    assert!(after.pending_resources.is_none());
    assert!(after.updated_at > before.updated_at);
    let host = engine.inspect(&name).host_config.unwrap();
    assert_eq!(host.nano_cpus, Some(2_000_000_000));
    assert_eq!(host.memory, Some(256 << 20));
    // Memory only, smaller, then cpu only.
    t.backend
        .update(
            &id,
            UpdateRequest {
                resources: resources(None, Some(96 << 20), None),
                labels: None,
            },
        )
        .unwrap();
    assert_eq!(
        engine.inspect(&name).host_config.unwrap().memory,
        Some(96 << 20)
    );
    t.backend
        .update(
            &id,
            UpdateRequest {
                resources: resources(Some(1), None, None),
                labels: None,
            },
        )
        .unwrap();
    let host = engine.inspect(&name).host_config.unwrap();
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.memory, Some(96 << 20));
    // What Docker cannot change is refused, not faked.
    let e = t
        .backend
        .update(
            &id,
            UpdateRequest {
                resources: Resources::default(),
                labels: Some(BTreeMap::from([("x".to_owned(), "y".to_owned())])),
            },
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::OperationNotSupported);
    t.backend.delete(&id, true).unwrap();
}

#[test]
fn usage_of_a_running_container() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("usage"));
    let mut req = request(
        &name,
        serde_json::json!({"command": ["sh", "-c", "head -c 8000000 /dev/zero > /tmp/blob; sleep 1000"]}),
    );
    req.resources = resources(Some(1), Some(128 << 20), Some(1 << 30));
    req.start = true;
    let id = req.id.clone();
    t.backend.create(req).unwrap();
    let first = t.backend.usage(&id).unwrap();
    assert!(first.memory.used > 0, "{first:?}");
    assert_eq!(first.memory.limit, 128 << 20);
    assert!(first.memory.percentage > 0.0 && first.memory.percentage <= 100.0);
    assert!((0.0..=100.0).contains(&first.cpu.usage));
    assert_eq!(first.cpu.cores, 1);
    assert_eq!(first.storage.total, 1 << 30);
    let json = serde_json::to_value(&first).unwrap();
    assert!(json["network"]["rxBytes"].is_u64() && json["network"]["txBytes"].is_u64());
    // Repeated calls answer from the kept samples, with the same shape.
    for _ in 0..20 {
        let again = t.backend.usage(&id).unwrap();
        assert!(again.memory.used > 0);
        assert_eq!(again.memory.limit, 128 << 20);
        assert!((0.0..=100.0).contains(&again.cpu.usage));
    }
    // After an update the numbers follow the new allocation.
    t.backend
        .update(
            &id,
            UpdateRequest {
                resources: resources(Some(2), Some(256 << 20), None),
                labels: None,
            },
        )
        .unwrap();
    let updated = t.backend.usage(&id).unwrap();
    assert_eq!(updated.memory.limit, 256 << 20);
    assert_eq!(updated.cpu.cores, 2);
    // A stopped instance uses nothing but its disk: once the blob is written.
    let written = (0..100).any(|_| {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--size", "-f", "{{.SizeRw}}", &name])
            .output()
            .expect("docker inspect");
        let size: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        size > 0 || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(written, "the container never wrote its blob");
    t.backend
        .stop(
            &id,
            StopOptions {
                force: true,
                timeout: 0,
            },
        )
        .unwrap();
    let stopped = t.backend.usage(&id).unwrap();
    assert_eq!(stopped.memory.used, 0);
    assert_eq!(stopped.cpu.usage, 0.0);
    assert!(stopped.storage.used > 0, "{stopped:?}");
    t.backend.delete(&id, false).unwrap();
}

#[test]
fn containers_changed_or_removed_by_hand_are_reported() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("byhand"));
    let mut req = request(&name, sleeper());
    req.start = true;
    let id = req.id.clone();
    t.backend.create(req).unwrap();

    engine
        .block_on(
            engine
                .docker
                .kill_container(&name, None::<KillContainerOptions>),
        )
        .unwrap();
    let changed = t.events.wait_for(EVENT_WAIT, |e| {
        matches!(e, Event::Changed { instance } if instance.id == id && instance.state == InstanceState::Stopped)
    });
    assert!(changed.is_some(), "no event for a container killed by hand");
    assert_eq!(t.backend.get(&id).unwrap().state, InstanceState::Stopped);

    engine
        .block_on(engine.docker.remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        ))
        .unwrap();
    let vanished = t.events.wait_for(
        EVENT_WAIT,
        |e| matches!(e, Event::Vanished { id: v } if *v == id),
    );
    assert!(
        vanished.is_some(),
        "no event for a container removed by hand"
    );
    assert_eq!(
        t.backend.get(&id).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    assert!(t.backend.list().unwrap().is_empty());
}

#[test]
fn other_containers_are_never_instances() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let foreign = clean.container(&unique("foreign"));
    engine
        .block_on(engine.docker.create_container(
            Some(CreateContainerOptions {
                name: Some(foreign.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(TEST_IMAGE.to_owned()),
                ..Default::default()
            },
        ))
        .unwrap();
    let name = clean.container(&unique("ours"));
    let inst = t
        .backend
        .create(request(&name, serde_json::json!({})))
        .unwrap();
    let list = t.backend.list().unwrap();
    assert_eq!(
        list.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        vec![name.as_str()]
    );
    assert_eq!(
        t.backend.get(&foreign).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    t.backend.delete(&inst.id, false).unwrap();
    assert!(engine.exists(&foreign));
}

#[test]
fn backend_info_host_resources_and_images() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    t.backend.health().unwrap();
    let d = t.backend.describe().unwrap();
    assert!(!d.version.is_empty());
    assert!(d.api_version.starts_with("1."), "{}", d.api_version);
    assert_eq!(d.supported_types, vec![InstanceType::Container]);
    for cap in [
        "containers",
        "images",
        "networks",
        "volumes",
        "logs",
        "console",
        "exec",
    ] {
        assert!(d.capabilities.iter().any(|c| c == cap), "{cap}");
    }
    assert!(d.extra.contains_key("negotiatedApiVersion"));
    let h = t.backend.host_resources().unwrap();
    assert!(h.cpus > 0 && h.memory > 0);
    let images = t.backend.images().unwrap();
    assert!(images.iter().any(|i| i.name == TEST_IMAGE), "{images:?}");
}

#[test]
fn health_checks_give_the_status() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let mut ids = Vec::new();
    for (test, want) in [("true", Health::Healthy), ("false", Health::Unhealthy)] {
        let name = clean.container(&unique("health"));
        let mut req = request(
            &name,
            serde_json::json!({
                "command": ["sh", "-c", "sleep 1000"],
                "healthcheck": {"test": test, "interval": 0.2, "timeout": 2, "retries": 1}
            }),
        );
        req.start = true;
        let id = req.id.clone();
        let inst = t.backend.create(req).unwrap();
        assert_eq!(inst.config["healthcheck"]["retries"], 1);
        let h = engine.inspect(&name).config.unwrap().healthcheck.unwrap();
        assert_eq!(
            h.test.unwrap(),
            vec!["CMD-SHELL".to_owned(), test.to_owned()]
        );
        let seen = t.events.wait_for(EVENT_WAIT, |e| {
            matches!(e, Event::Changed { instance } if instance.id == id && instance.status == want)
        });
        assert!(seen.is_some(), "no {want:?} status event");
        assert_eq!(t.backend.get(&id).unwrap().status, want);
        ids.push(id);
    }
    for id in ids {
        t.backend.delete(&id, true).unwrap();
    }
}

#[test]
fn cpu_usage_follows_a_busy_process() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("busy"));
    let mut req = request(
        &name,
        serde_json::json!({"command": ["sh", "-c", "while :; do :; done"]}),
    );
    req.resources = resources(Some(1), None, None);
    req.start = true;
    let id = req.id.clone();
    t.backend.create(req).unwrap();
    // One core spinning on its one allocated core: near 100 %, less on a loaded host.
    let mut best = 0.0f64;
    for _ in 0..40 {
        let u = t.backend.usage(&id).unwrap();
        assert!((0.0..=100.0).contains(&u.cpu.usage), "{u:?}");
        assert_eq!(u.cpu.cores, 1);
        best = best.max(u.cpu.usage);
        if best > 10.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("a spinning process on 1 core shows {best} % cpu");
    assert!(best > 10.0, "a spinning process shows {best} % cpu");
    t.backend.delete(&id, true).unwrap();
}

#[test]
fn hand_changes_right_after_api_calls_are_still_reported() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let mut clean = Cleanup::default();
    let name = clean.container(&unique("mixed"));
    let mut req = request(&name, sleeper());
    req.start = true;
    let id = req.id.clone();
    t.backend.create(req).unwrap();
    // A start of a running instance through the API causes no engine event...
    t.backend.start(&id).unwrap();
    // ...so the events of what is done by hand right after must all come through.
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {args:?}");
    };
    docker(&["kill", &name]);
    let stopped = t.events.wait_for(EVENT_WAIT, |e| {
        matches!(e, Event::Changed { instance } if instance.id == id && instance.state == InstanceState::Stopped)
    });
    assert!(stopped.is_some(), "the kill by hand was not reported");
    docker(&["start", &name]);
    let running = t.events.wait_for(EVENT_WAIT, |e| {
        matches!(e, Event::Changed { instance } if instance.id == id && instance.state == InstanceState::Running)
    });
    assert!(running.is_some(), "the start by hand was not reported");
    t.backend.delete(&id, true).unwrap();
}
