//! Hardening rules on the real `qemu:///system` libvirtd (`bash scripts/test-env.sh`):
//! templates reached through symlinks, sizes beyond what the pool or the host can
//! hold, volumes that a killed server left in the pool, and `updatedAt`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use common::{files_in, harness, libvirt, make_template, pool_volumes, unique, Harness, SYSTEM};
use serde_json::json;
use unicompute_kvm::xml::VolumeDoc;
use unicompute_kvm::KvmBackend;
use unicompute_plugin_api::{
    Backend, BackendContext, CreateRequest, ErrorCode, EventSink, InstanceState, StopOptions,
    UpdateRequest,
};

fn request(id: &str, name: &str, config: serde_json::Value) -> CreateRequest {
    CreateRequest {
        id: id.into(),
        name: name.into(),
        config: config.as_object().cloned().unwrap_or_default(),
        resources: serde_json::from_value(
            json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}}),
        )
        .unwrap(),
        labels: BTreeMap::new(),
        start: false,
        created_at: Utc::now(),
        operation: None,
    }
}

fn resources(v: serde_json::Value) -> UpdateRequest {
    UpdateRequest {
        resources: serde_json::from_value(v).unwrap(),
        labels: None,
    }
}

/// An id as the host makes them: `i-` and 20 hex digits, unique to this run.
fn host_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "i-{:06x}{:010x}{:04x}",
        std::process::id() & 0xff_ffff,
        nanos & 0xff_ffff_ffff,
        N.fetch_add(1, Ordering::SeqCst) & 0xffff
    )
}

/// Another backend object on the same settings, as after a server restart.
fn second_backend(h: &Harness) -> KvmBackend {
    KvmBackend::new(BackendContext {
        name: "kvm".into(),
        config: json!({
            "uri": SYSTEM,
            "templates_dir": h.templates,
            "storage_dir": h.storage,
            "storage_pool": h.pool,
        }),
        events: EventSink::from_fn(|_| {}),
    })
    .expect("second backend")
}

fn set_mtime(path: &Path, ago: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to set mtime");
    f.set_modified(SystemTime::now() - ago).expect("set mtime");
}

#[test]
fn templates_must_resolve_inside_templates_dir() {
    let h = harness(SYSTEM, json!({}));
    let blank = make_template(&h.templates, "blank", "64M");
    let conn = libvirt(SYSTEM);
    let b = &h.backend;
    // Outside the templates dir: a raw "secret" and a qcow2.
    let secret = h.dir.path().join("secret.raw");
    std::fs::write(&secret, b"SECRET-OUTSIDE-THE-TEMPLATES-DIR".repeat(4096)).unwrap();
    let outside_q = make_template(&h.dir.path().join("outside"), "outq", "64M");
    symlink(&secret, h.templates.join("evil.raw")).unwrap();
    symlink("../outside/outq.qcow2", h.templates.join("evilq.qcow2")).unwrap();
    symlink(&outside_q, h.templates.join("evilabs.img")).unwrap();
    // Inside: fine, as an alias.
    symlink("blank.qcow2", h.templates.join("alias.qcow2")).unwrap();

    let names: Vec<String> = b.images().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["alias", "blank"], "the image list");

    for (image, format) in [("evil", "raw"), ("evilq", "qcow2"), ("evilabs", "qcow2")] {
        let name = h.cleanup.domain(&unique("evil"));
        let e = b
            .create(request(
                &unique("id"),
                &name,
                json!({"image": image, "diskFormat": format, "networkType": "none"}),
            ))
            .expect_err("a template outside templates_dir must be refused");
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{image}: {e:?}");
        assert_eq!(e.message, format!("template {image} does not exist"));
        assert_eq!(e.details["image"], image);
        assert_eq!(e.details["available"], json!(["alias", "blank"]));
        assert!(
            conn.lookup_domain_by_name(&name).is_err(),
            "{image}: domain"
        );
        assert!(files_in(&h.storage).is_empty(), "{image}: file left");
    }

    let name = h.cleanup.domain(&unique("alias"));
    let id = unique("id");
    b.create(request(
        &id,
        &name,
        json!({"image": "alias", "networkType": "none"}),
    ))
    .expect("a symlink inside templates_dir is a template");
    let vols = pool_volumes(&conn, &h.pool);
    assert_eq!(vols.len(), 1, "{vols:?}");
    let pool = conn.lookup_storage_pool_by_name(&h.pool).unwrap();
    let vol = pool.lookup_storage_vol_by_name(&vols[0]).unwrap();
    let vdoc = VolumeDoc::parse(&vol.xml_desc(0).unwrap()).unwrap();
    assert_eq!(
        vdoc.backing_path(),
        Some(blank.canonicalize().unwrap().to_string_lossy().as_ref()),
        "the overlay is backed by the file the link resolves to"
    );
    b.delete(&id, true).unwrap();
}

#[test]
fn sizes_beyond_the_pool_or_host_are_refused_and_disks_never_shrink() {
    let h = harness(SYSTEM, json!({}));
    make_template(&h.templates, "blank", "64M");
    let conn = libvirt(SYSTEM);
    let b = &h.backend;

    // Create: 422 with the field, the asked value and the limit; nothing is made.
    for (res, field) in [
        (
            json!({"storage": {"totalSpace": u64::MAX}}),
            "storage.totalSpace",
        ),
        (json!({"memory": {"limit": u64::MAX}}), "memory.limit"),
        (json!({"cpu": {"cores": 1_000_000}}), "cpu.cores"),
    ] {
        for format in ["qcow2", "raw"] {
            let name = h.cleanup.domain(&unique("huge"));
            let mut req = request(
                &unique("id"),
                &name,
                json!({"image": "blank", "diskFormat": format, "networkType": "none"}),
            );
            req.resources = serde_json::from_value(res.clone()).unwrap();
            let e = b.create(req).expect_err("too big");
            assert_eq!(e.code, ErrorCode::ResourceLimitExceeded, "{res}: {e:?}");
            assert_eq!(e.details["field"], field, "{e:?}");
            assert!(e.details["requested"].is_u64(), "{e:?}");
            assert!(
                e.details["limit"].as_u64().unwrap() < e.details["requested"].as_u64().unwrap(),
                "{e:?}"
            );
            assert!(conn.lookup_domain_by_name(&name).is_err());
            assert!(files_in(&h.storage).is_empty(), "{res}: file left");
        }
    }

    let name = h.cleanup.domain(&unique("sizes"));
    let id = unique("id");
    b.create(request(
        &id,
        &name,
        json!({"image": "blank", "networkType": "none"}),
    ))
    .expect("create");
    let disk = h.storage.join(format!("{id}.qcow2"));
    let vol = conn
        .lookup_storage_vol_by_path(disk.to_str().unwrap())
        .unwrap();
    let capacity = || vol.info().unwrap().capacity;
    assert_eq!(capacity(), 64 << 20);

    for running in [false, true] {
        if running {
            b.start(&id).expect("start");
        }
        let e = b
            .update(&id, resources(json!({"storage": {"totalSpace": u64::MAX}})))
            .expect_err("beyond the pool");
        assert_eq!(e.code, ErrorCode::ResourceLimitExceeded, "{e:?}");
        assert_eq!(e.details["field"], "storage.totalSpace");
        assert_eq!(e.details["requested"], u64::MAX);
        let e = b
            .update(&id, resources(json!({"memory": {"limit": u64::MAX}})))
            .expect_err("beyond the host");
        assert_eq!(e.code, ErrorCode::ResourceLimitExceeded, "{e:?}");
        assert_eq!(e.details["field"], "memory.limit");
        // A shrink is refused, and nothing of the same request is applied.
        let e = b
            .update(
                &id,
                resources(json!({"cpu": {"cores": 2}, "storage": {"totalSpace": 32u64 << 20}})),
            )
            .expect_err("shrink");
        assert_eq!(e.code, ErrorCode::ResourceLimitExceeded, "{e:?}");
        assert_eq!(e.details["field"], "storage.totalSpace");
        assert_eq!(e.details["current"], 64u64 << 20);
        assert_eq!(capacity(), 64 << 20, "the disk is untouched");
        let i = b.get(&id).unwrap();
        assert_eq!(i.resources.cores(), Some(1), "{i:?}");
        assert!(i.pending_resources.is_none(), "{i:?}");
        assert_eq!(i.resources.total_space(), Some(64 << 20));
    }
    b.delete(&id, true).unwrap();
}

fn ms_precision(t: DateTime<Utc>) -> bool {
    t.timestamp_subsec_nanos() % 1_000_000 == 0
}

#[test]
fn updated_at_is_durable_monotonic_and_in_milliseconds() {
    let h = harness(SYSTEM, json!({}));
    make_template(&h.templates, "blank", "64M");
    let b = &h.backend;
    let name = h.cleanup.domain(&unique("upd"));
    let id = unique("id");
    let mut req = request(&id, &name, json!({"image": "blank", "networkType": "none"}));
    req.start = true;
    let created = b.create(req).expect("create and start");
    assert_eq!(created.state, InstanceState::Running);
    assert!(
        created.updated_at > created.created_at,
        "create with start: updatedAt is the start's time ({} vs {})",
        created.updated_at,
        created.created_at
    );
    assert!(ms_precision(created.updated_at), "{}", created.updated_at);
    let mut last = created.updated_at;

    type Op<'a> = Box<dyn Fn() -> unicompute_plugin_api::Instance + 'a>;
    let ops: Vec<(&str, Op)> = vec![
        ("pause", Box::new(|| b.pause(&id).unwrap())),
        (
            "update",
            Box::new(|| {
                b.update(
                    &id,
                    UpdateRequest {
                        resources: Default::default(),
                        labels: Some(BTreeMap::from([("k".into(), "v".into())])),
                    },
                )
                .unwrap()
            }),
        ),
        ("unpause", Box::new(|| b.unpause(&id).unwrap())),
        (
            "stop",
            Box::new(|| {
                b.stop(
                    &id,
                    StopOptions {
                        force: true,
                        timeout: 0,
                    },
                )
                .unwrap()
            }),
        ),
        ("start", Box::new(|| b.start(&id).unwrap())),
        (
            "restart",
            Box::new(|| {
                b.restart(
                    &id,
                    StopOptions {
                        force: true,
                        timeout: 0,
                    },
                )
                .unwrap()
            }),
        ),
    ];
    for (op, call) in ops {
        let i = call();
        assert!(i.updated_at > last, "{op}: {} after {last}", i.updated_at);
        assert!(ms_precision(i.updated_at), "{op}: {}", i.updated_at);
        last = i.updated_at;
        // A new backend object (a server restart) reads back the very same value.
        let again = second_backend(&h).get(&id).unwrap();
        assert_eq!(again.updated_at, i.updated_at, "{op}: after a restart");
        assert_eq!(b.get(&id).unwrap().updated_at, i.updated_at, "{op}: get");
    }
    b.delete(&id, true).unwrap();
}

#[test]
fn orphan_volumes_are_swept_after_the_grace_period() {
    // The default grace (600 s): files are made to look old by their mtime.
    let h = harness(SYSTEM, json!({}));
    make_template(&h.templates, "blank", "64M");
    let conn = libvirt(SYSTEM);
    let b = &h.backend;
    let live_id = host_id();
    let name = h.cleanup.domain(&unique("live"));
    b.create(request(
        &live_id,
        &name,
        json!({"image": "blank", "networkType": "none", "cloudInit": {"userData": "#cloud-config\n"}}),
    ))
    .expect("create");
    let pool = conn.lookup_storage_pool_by_name(&h.pool).unwrap();
    let make_vol = |vol: &str, format: &str| {
        let xml = format!(
            "<volume><name>{vol}</name><capacity unit='bytes'>1048576</capacity>\
             <target><format type='{format}'/></target></volume>"
        );
        virt::storage_vol::StorageVol::create_xml(&pool, &xml, 0).expect("volume");
    };
    let (a, c, d, fresh) = (host_id(), host_id(), host_id(), host_id());
    // What a killed create leaves: a disk volume, a seed, a half-copied raw disk
    // that libvirt has not seen yet.
    make_vol(&format!("{a}.qcow2"), "qcow2");
    make_vol(&format!("{c}-seed.img"), "raw");
    std::fs::write(h.storage.join(format!("{d}.raw")), vec![0u8; 4096]).unwrap();
    // Kept: too young, not named like ours, the live instance's volumes.
    make_vol(&format!("{fresh}.qcow2"), "qcow2");
    make_vol("notes.qcow2", "qcow2");
    make_vol("i-abc.qcow2", "qcow2");
    std::fs::write(h.storage.join(format!("{a}.qcow2.bak")), b"x").unwrap();
    let old = [
        format!("{a}.qcow2"),
        format!("{c}-seed.img"),
        format!("{d}.raw"),
    ];
    let kept = [
        format!("{fresh}.qcow2"),
        "notes.qcow2".to_string(),
        "i-abc.qcow2".to_string(),
        format!("{a}.qcow2.bak"),
        format!("{live_id}.qcow2"),
        format!("{live_id}-seed.img"),
    ];
    for f in old.iter().chain(kept.iter()) {
        if !f.starts_with(&fresh) {
            set_mtime(&h.storage.join(f), Duration::from_secs(7200));
        }
    }
    // A resync lists.
    b.list().expect("list");
    let left = files_in(&h.storage);
    for f in &old {
        assert!(!left.contains(f), "orphan {f} not swept: {left:?}");
    }
    for f in &kept {
        assert!(left.contains(f), "{f} swept: {left:?}");
    }
    assert!(!pool_volumes(&conn, &h.pool).contains(&old[0]));

    // At start: a new backend object sweeps once it is connected.
    set_mtime(
        &h.storage.join(format!("{fresh}.qcow2")),
        Duration::from_secs(7200),
    );
    let _second = second_backend(&h);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while files_in(&h.storage).contains(&format!("{fresh}.qcow2"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = files_in(&h.storage);
    assert!(
        !left.contains(&format!("{fresh}.qcow2")),
        "not swept at start: {left:?}"
    );
    assert!(left.contains(&format!("{live_id}.qcow2")), "{left:?}");
    assert!(b.get(&live_id).is_ok());
    b.delete(&live_id, true).unwrap();
}
