//! The built `libunicompute_kvm.so` loads through the host's loader and works across
//! the plugin boundary (on libvirt's `test:///` driver), beside this process's own
//! copy of the crate: the libvirt event loop is registered once.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use unicompute_plugin_api::load::load_plugin;
use unicompute_plugin_api::{Backend, CreateRequest, EventSink, InstanceState, InstanceType};

fn plugin_file() -> PathBuf {
    // Integration tests live in target/<profile>/deps beside the library they test.
    let exe = std::env::current_exe().expect("test exe");
    let deps = exe.parent().expect("deps dir");
    let candidates = [
        deps.join("libunicompute_kvm.so"),
        deps.join("../libunicompute_kvm.so"),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("libunicompute_kvm.so is built with the tests")
}

#[test]
fn the_shared_library_loads_and_serves() {
    // This process's own copy registers the event loop first.
    unicompute_kvm::init_libvirt();
    let dir = tempfile::tempdir().unwrap();
    // A private copy, as the host loads it.
    let so = dir.path().join("libunicompute_kvm.so");
    std::fs::copy(plugin_file(), &so).unwrap();
    let plugin = load_plugin(&so, |_| Arc::new(|_, _, _| {})).expect("loads");
    assert_eq!(plugin.handshake.name, "kvm");
    assert_eq!(plugin.handshake.kind, "kvm");

    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node/>").unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("tiny.raw"), vec![0u8; 4096]).unwrap();
    let backend = plugin
        .create_backend(
            "kvm",
            &json!({
                "uri": format!("test://{}", node.display()),
                "templates_dir": templates,
                "storage_dir": dir.path().join("pool"),
                "storage_pool": "uc-so",
            }),
            EventSink::discard(),
        )
        .expect("backend");
    let d = backend.describe().expect("describe");
    assert_eq!(d.supported_types, vec![InstanceType::Vm]);
    let inst = backend
        .create(CreateRequest {
            id: "i-so".into(),
            name: "vm-so".into(),
            config: json!({"image": "tiny", "networkType": "none"})
                .as_object()
                .cloned()
                .unwrap(),
            resources: Default::default(),
            labels: Default::default(),
            start: true,
            created_at: chrono::Utc::now(),
            operation: None,
        })
        .expect("create");
    assert_eq!(inst.state, InstanceState::Running);
    assert_eq!(backend.list().unwrap().len(), 1);
    backend.delete("i-so", true).expect("delete");
    assert!(backend.list().unwrap().is_empty());
    let e = backend.get("i-so").unwrap_err();
    assert_eq!(e.code, unicompute_plugin_api::ErrorCode::InstanceNotFound);
}
