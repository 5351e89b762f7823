//! Fast tests of the kvm backend on libvirt's `test:///` driver: each test has its own
//! `node.xml`, so its own isolated libvirt state. No daemon is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use unicompute_kvm::KvmBackend;
use unicompute_plugin_api::{
    Backend, BackendContext, CreateRequest, ErrorCode, Event, EventSink, InstanceState,
    InstanceType, Resources, StopOptions, UpdateRequest,
};

struct Env {
    _dir: tempfile::TempDir,
    backend: KvmBackend,
    events: mpsc::Receiver<Event>,
}

fn qcow2_header(virtual_size: u64) -> Vec<u8> {
    let mut q = vec![0u8; 512];
    q[..4].copy_from_slice(b"QFI\xfb");
    q[4..8].copy_from_slice(&3u32.to_be_bytes());
    q[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    q
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.xml");
    // A node with the `default` network, as a libvirt host has.
    std::fs::write(
        &node,
        "<node><network><name>default</name><bridge name='virbr0'/><forward/>\
         <ip address='192.168.122.1' netmask='255.255.255.0'/></network></node>",
    )
    .unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("ubuntu-22.04.qcow2"), qcow2_header(1 << 30)).unwrap();
    std::fs::write(templates.join("tiny.raw"), vec![0u8; 1 << 20]).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let ctx = BackendContext {
        name: "kvm".into(),
        config: json!({
            "uri": format!("test://{}", node.display()),
            "templates_dir": templates,
            "storage_dir": dir.path().join("pool"),
            "storage_pool": "uc-test",
        }),
        events: EventSink::from_fn(move |e| {
            let _ = tx.lock().unwrap().send(e.clone());
        }),
    };
    let backend = KvmBackend::new(ctx).unwrap();
    Env {
        _dir: dir,
        backend,
        events: rx,
    }
}

fn request(id: &str, name: &str, config: serde_json::Value) -> CreateRequest {
    CreateRequest {
        id: id.into(),
        name: name.into(),
        config: config.as_object().cloned().unwrap(),
        resources: serde_json::from_value(json!({
            "cpu": {"cores": 2},
            "memory": {"limit": 2147483648u64},
            "storage": {"totalSpace": 21474836480u64}
        }))
        .unwrap(),
        labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        start: false,
        created_at: chrono::Utc::now(),
        operation: None,
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn create_get_list_and_every_lifecycle_call() {
    let env = env();
    let b = &env.backend;
    let inst = b
        .create(request(
            "i-1",
            "vm-1",
            json!({"image": "ubuntu-22.04", "cloudInit": {"userData": "#cloud-config\n"}}),
        ))
        .unwrap();
    assert_eq!(inst.id, "i-1");
    assert_eq!(inst.name, "vm-1");
    assert_eq!(inst.instance_type, InstanceType::Vm);
    assert_eq!(inst.state, InstanceState::Created);
    assert_eq!(inst.resources.cores(), Some(2));
    assert_eq!(inst.resources.memory_limit(), Some(2 << 30));
    assert_eq!(inst.resources.total_space(), Some(20 << 30));
    assert_eq!(inst.config["networkType"], "network");
    assert_eq!(inst.config["networkSource"], "default");
    assert_eq!(inst.metadata.labels["app"], "web");
    assert_eq!(inst.uuid.len(), 36);

    assert_eq!(b.get("i-1").unwrap(), inst);
    assert_eq!(b.list().unwrap().len(), 1);

    let started = b.start("i-1").unwrap();
    assert_eq!(started.state, InstanceState::Running);
    assert_eq!(b.start("i-1").unwrap().state, InstanceState::Running);
    assert_eq!(b.pause("i-1").unwrap().state, InstanceState::Paused);
    assert_eq!(b.pause("i-1").unwrap().state, InstanceState::Paused);
    assert_eq!(b.unpause("i-1").unwrap().state, InstanceState::Running);
    let stopped = b
        .stop(
            "i-1",
            StopOptions {
                force: true,
                timeout: 0,
            },
        )
        .unwrap();
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(
        b.stop("i-1", StopOptions::default()).unwrap().state,
        InstanceState::Stopped
    );
    assert_eq!(
        b.pause("i-1").unwrap_err().code,
        ErrorCode::InvalidState,
        "pause of a stopped instance"
    );
    assert_eq!(
        b.restart(
            "i-1",
            StopOptions {
                force: false,
                timeout: 1
            }
        )
        .unwrap()
        .state,
        InstanceState::Running
    );
    assert_eq!(
        b.delete("i-1", false).unwrap_err().code,
        ErrorCode::InvalidState
    );
    b.delete("i-1", true).unwrap();
    assert_eq!(b.get("i-1").unwrap_err().code, ErrorCode::InstanceNotFound);
    assert!(b.list().unwrap().is_empty());
    let left = files_in(&env._dir.path().join("pool"));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bad_requests_are_refused_and_leave_nothing() {
    let env = env();
    let b = &env.backend;
    for (config, code) in [
        (json!({"image": "../etc/passwd"}), ErrorCode::InvalidRequest),
        (json!({"image": "a/b"}), ErrorCode::InvalidRequest),
        (json!({"image": "nope"}), ErrorCode::InvalidRequest),
        (
            json!({"image": "tiny", "bogus": 1}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"image": "tiny", "networkType": "bridge"}),
            ErrorCode::InvalidRequest,
        ),
    ] {
        let e = b
            .create(request("i-x", "vm-x", config.clone()))
            .unwrap_err();
        assert_eq!(e.code, code, "{config}: {e:?}");
    }
    let e = b
        .create(request("i-x", "vm-x", json!({"image": "nope"})))
        .unwrap_err();
    assert_eq!(e.details["available"], json!(["tiny", "ubuntu-22.04"]));

    let mut big = request("i-x", "vm-x", json!({"image": "tiny"}));
    big.resources = serde_json::from_value(json!({"cpu": {"cores": 4096}})).unwrap();
    assert_eq!(
        b.create(big).unwrap_err().code,
        ErrorCode::ResourceLimitExceeded
    );
    let mut small = request("i-x", "vm-x", json!({"image": "ubuntu-22.04"}));
    small.resources = serde_json::from_value(json!({"storage": {"totalSpace": 1024}})).unwrap();
    assert_eq!(
        b.create(small).unwrap_err().code,
        ErrorCode::ResourceLimitExceeded
    );

    b.create(request(
        "i-1",
        "taken",
        json!({"image": "tiny", "networkType": "none"}),
    ))
    .unwrap();
    let e = b
        .create(request(
            "i-2",
            "taken",
            json!({"image": "tiny", "cloudInit": {"userData": "x"}}),
        ))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InstanceAlreadyExists);
    assert_eq!(b.list().unwrap().len(), 1);
    let files = files_in(&env._dir.path().join("pool"));
    assert!(
        files.iter().all(|f| f.starts_with("i-1")),
        "left behind: {files:?}"
    );
}

#[test]
fn update_applies_to_the_config_and_reports() {
    let env = env();
    let b = &env.backend;
    let created = b
        .create(request(
            "i-1",
            "vm-1",
            json!({"image": "tiny", "networkType": "user"}),
        ))
        .unwrap();
    // updatedAt has millisecond steps: let one pass, so that a move shows.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut labels = BTreeMap::new();
    labels.insert("tier".to_string(), "db".to_string());
    let updated = b
        .update(
            "i-1",
            UpdateRequest {
                resources: serde_json::from_value::<Resources>(
                    json!({"cpu": {"cores": 4}, "memory": {"limit": 1073741824u64}}),
                )
                .unwrap(),
                labels: Some(labels.clone()),
            },
        )
        .unwrap();
    assert_eq!(updated.resources.cores(), Some(4));
    assert_eq!(updated.resources.memory_limit(), Some(1 << 30));
    assert_eq!(updated.metadata.labels, labels);
    assert_eq!(created.updated_at, created.created_at);
    assert!(
        updated.updated_at > created.updated_at,
        "updatedAt moves on update: {} -> {}",
        created.updated_at,
        updated.updated_at
    );
    assert_eq!(updated.created_at, created.created_at);
    // and later reads show the value the update answered
    assert_eq!(b.get("i-1").unwrap().updated_at, updated.updated_at);
    assert!(updated.pending_resources.is_none());
    let e = b
        .update(
            "i-1",
            UpdateRequest {
                resources: serde_json::from_value(json!({"cpu": {"cores": 100000}})).unwrap(),
                labels: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ResourceLimitExceeded);
    let e = b
        .update(
            "i-1",
            UpdateRequest {
                resources: serde_json::from_value(json!({"storage": {"totalSpace": 1u64 << 30}}))
                    .unwrap(),
                labels: None,
            },
        )
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::ResourceLimitExceeded,
        "disks never shrink"
    );
    assert_eq!(
        b.update("missing", UpdateRequest::default())
            .unwrap_err()
            .code,
        ErrorCode::InstanceNotFound
    );
}

#[test]
fn describe_images_and_host() {
    let env = env();
    let b = &env.backend;
    let d = b.describe().unwrap();
    assert!(d.capabilities.iter().any(|c| c == "pause"));
    assert_eq!(d.supported_types, vec![InstanceType::Vm]);
    assert_eq!(d.extra["hypervisor"], "TEST");
    b.health().unwrap();
    let h = b.host_resources().unwrap();
    assert!(h.cpus > 0 && h.memory > 0);
    let images = b.images().unwrap();
    let names: Vec<_> = images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["tiny", "ubuntu-22.04"]);
    assert_eq!(images[1].format.as_deref(), Some("qcow2"));
}

#[test]
fn lifecycle_events_reach_the_sink() {
    let env = env();
    let b = &env.backend;
    b.create(request(
        "i-1",
        "vm-ev",
        json!({"image": "tiny", "networkType": "none"}),
    ))
    .unwrap();
    b.start("i-1").unwrap();
    let running =
        (0..100).find_map(
            |_| match env.events.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::Changed { instance }) if instance.state == InstanceState::Running => {
                    Some(instance)
                }
                _ => None,
            },
        );
    assert_eq!(running.expect("a running event").id, "i-1");
    b.delete("i-1", true).unwrap();
    let vanished =
        (0..100).find_map(
            |_| match env.events.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::Vanished { id }) => Some(id),
                _ => None,
            },
        );
    assert_eq!(vanished.as_deref(), Some("i-1"));
}

#[test]
fn usage_reports_cores_memory_and_disk() {
    let env = env();
    let b = &env.backend;
    b.create(request(
        "i-1",
        "vm-u",
        json!({"image": "tiny", "networkType": "none"}),
    ))
    .unwrap();
    let idle = b.usage("i-1").unwrap();
    assert_eq!(idle.cpu.cores, 2);
    assert_eq!(idle.cpu.usage, 0.0);
    assert_eq!(idle.memory.limit, 2 << 30);
    b.start("i-1").unwrap();
    let u = b.usage("i-1").unwrap();
    assert!((0.0..=100.0).contains(&u.cpu.usage));
    assert!(u.memory.used <= u.memory.limit);
    let again = b.usage("i-1").unwrap();
    assert!((0.0..=100.0).contains(&again.cpu.usage));
}

#[test]
fn unreachable_libvirt_is_backend_unavailable() {
    let ctx = BackendContext {
        name: "kvm".into(),
        config: json!({"uri": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"}),
        events: EventSink::discard(),
    };
    let b = KvmBackend::new(ctx).expect("creating the backend needs no daemon");
    for e in [
        b.list().unwrap_err(),
        b.health().unwrap_err(),
        b.get("x").unwrap_err(),
        b.describe().unwrap_err(),
    ] {
        assert_eq!(e.code, ErrorCode::BackendUnavailable, "{e:?}");
        assert!(!e.message.contains("Failed to connect"), "{}", e.message);
    }
}

#[test]
fn unknown_config_keys_are_refused() {
    let ctx = BackendContext {
        name: "kvm".into(),
        config: json!({"uri": "test:///default", "storage_dri": "/x"}),
        events: EventSink::discard(),
    };
    let e = KvmBackend::new(ctx).err().unwrap();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.contains("storage_dri"));
}

#[test]
fn relative_directories_and_unknown_cpu_modes_are_refused() {
    for (config, named) in [
        (
            json!({"uri": "test:///default", "storage_dir": "pool"}),
            "storage_dir",
        ),
        (
            json!({"uri": "test:///default", "templates_dir": "t"}),
            "templates_dir",
        ),
        (
            json!({"uri": "test:///default", "cpu_mode": "host"}),
            "host-passthrough",
        ),
    ] {
        let ctx = BackendContext {
            name: "kvm".into(),
            config,
            events: EventSink::discard(),
        };
        let e = KvmBackend::new(ctx).err().unwrap();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.message.contains(named), "{named}: {}", e.message);
    }
}
