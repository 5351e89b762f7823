//! Real tests on `qemu:///system`: they need a running libvirtd with QEMU/KVM
//! (`bash scripts/test-env.sh` installs and starts it). The guests have no OS: their
//! disk is an empty qcow2, which is all these tests need. No traffic is ever sent to a
//! guest; networking is checked through the domain XML.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{files_in, harness, libvirt, make_template, pool_volumes, unique, SYSTEM};
use serde_json::json;
use unicompute_kvm::xml::{DomainDoc, VolumeDoc};
use unicompute_plugin_api::{
    Backend, CreateRequest, ErrorCode, Event, InstanceState, StopOptions, UpdateRequest,
};
use virt::domain::{DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;

const GIB: u64 = 1 << 30;

fn request(
    id: &str,
    name: &str,
    config: serde_json::Value,
    resources: serde_json::Value,
) -> CreateRequest {
    CreateRequest {
        id: id.into(),
        name: name.into(),
        config: config.as_object().cloned().unwrap_or_default(),
        resources: serde_json::from_value(resources).unwrap(),
        labels: BTreeMap::from([("suite".to_string(), "kvm-real".to_string())]),
        start: false,
        created_at: chrono::Utc::now(),
        operation: None,
    }
}

fn small() -> serde_json::Value {
    json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}})
}

#[test]
fn spec_kvm_example() {
    let h = harness(SYSTEM, json!({}));
    let template = make_template(&h.templates, "ubuntu-22.04", "1G");
    let name = h.cleanup.domain(&unique("ubuntu-vm"));
    let id = unique("id");
    let user_data = "#cloud-config\npackages:\n  - nginx\n";
    let inst = h
        .backend
        .create(request(
            &id,
            &name,
            json!({
                "image": "ubuntu-22.04",
                "diskFormat": "qcow2",
                "cloudInit": {"userData": user_data}
            }),
            json!({
                "cpu": {"cores": 2},
                "memory": {"limit": 2147483648u64},
                "storage": {"totalSpace": 21474836480u64}
            }),
        ))
        .expect("create");
    assert_eq!(inst.state, InstanceState::Created);
    assert_eq!(inst.resources.cores(), Some(2));
    assert_eq!(inst.resources.memory_limit(), Some(2 * GIB));
    assert_eq!(inst.resources.total_space(), Some(20 * GIB));

    // What libvirt itself says.
    let conn = libvirt(SYSTEM);
    let dom = conn.lookup_domain_by_name(&name).expect("domain defined");
    assert_eq!(dom.uuid_string().unwrap(), inst.uuid);
    let info = dom.info().unwrap();
    assert_eq!(info.nr_virt_cpu, 2);
    assert_eq!(info.max_mem, 2 * 1024 * 1024, "KiB");
    let xml = dom.xml_desc(0).unwrap();
    let doc = DomainDoc::parse(&xml).unwrap();
    assert_eq!(doc.meta().unwrap().id, id);
    // The user-data (secrets, often) is in the seed only; the domain XML, readable
    // through libvirt's read-only socket, and the instance show its digest.
    assert!(!xml.contains("packages:"), "{xml}");
    let shown = inst.config["cloudInit"]["userData"]
        .as_str()
        .unwrap_or_default();
    assert!(
        shown.starts_with("sha256:") && shown.ends_with(&format!("({} bytes)", user_data.len())),
        "{shown}"
    );
    let iface = &doc.interfaces()[0];
    assert_eq!(iface.kind, "network");
    assert_eq!(iface.source(), Some("default"));

    let disk = doc.disks()[0].file().expect("disk file").to_owned();
    let vol = conn
        .lookup_storage_vol_by_path(&disk)
        .expect("disk is a volume");
    assert_eq!(vol.info().unwrap().capacity, 20 * GIB);
    let vdoc = VolumeDoc::parse(&vol.xml_desc(0).unwrap()).unwrap();
    assert_eq!(vdoc.format(), Some("qcow2"));
    assert_eq!(vdoc.capacity(), 20 * GIB);
    assert_eq!(
        vdoc.backing_path(),
        Some(template.to_string_lossy().as_ref())
    );

    let seed = doc.disks()[1].file().expect("seed file").to_owned();
    let image = std::fs::read(&seed).expect("seed readable");
    let (label, ud) = unicompute_kvm::cloud_init::read_seed_file(&image, "user-data").unwrap();
    assert_eq!(label, "CIDATA");
    assert_eq!(ud, user_data);
    let (_, md) = unicompute_kvm::cloud_init::read_seed_file(&image, "meta-data").unwrap();
    assert!(md.contains(&id) && md.contains(&name), "{md}");

    h.backend.delete(&id, false).expect("delete");
    assert!(conn.lookup_domain_by_name(&name).is_err());
    assert!(conn.lookup_storage_vol_by_path(&disk).is_err());
    assert!(!std::path::Path::new(&seed).exists());
    assert!(pool_volumes(&conn, &h.pool).is_empty());
}

#[test]
fn every_lifecycle_call_update_and_usage() {
    let h = harness(SYSTEM, json!({}));
    make_template(&h.templates, "blank", "64M");
    let name = h.cleanup.domain(&unique("life"));
    let id = unique("id");
    let b = &h.backend;
    let conn = libvirt(SYSTEM);
    b.create(request(
        &id,
        &name,
        json!({"image": "blank", "networkType": "none"}),
        small(),
    ))
    .expect("create");
    let dom = conn.lookup_domain_by_name(&name).unwrap();

    let i = b.start(&id).expect("start");
    assert_eq!(i.state, InstanceState::Running);
    assert!(dom.is_active().unwrap());
    assert_eq!(
        b.start(&id).unwrap().state,
        InstanceState::Running,
        "idempotent"
    );

    assert_eq!(b.pause(&id).unwrap().state, InstanceState::Paused);
    assert_eq!(dom.state().unwrap().0.known(), Some(DomainState::Paused));
    assert_eq!(b.unpause(&id).unwrap().state, InstanceState::Running);

    // Usage while it runs: repeated calls work from the kept sample.
    for _ in 0..2 {
        let u = b.usage(&id).expect("usage");
        assert_eq!(u.cpu.cores, 1);
        assert!((0.0..=100.0).contains(&u.cpu.usage), "{u:?}");
        assert_eq!(u.memory.limit, 128 << 20);
        assert!(
            u.memory.used > 0 && u.memory.used <= u.memory.limit,
            "{u:?}"
        );
        assert!(u.storage.total >= 64 << 20, "{u:?}");
    }

    // Update while running: always in the persistent config, live where possible.
    let updated = b
        .update(
            &id,
            UpdateRequest {
                resources: serde_json::from_value(
                    json!({"cpu": {"cores": 2}, "memory": {"limit": 192u64 << 20}}),
                )
                .unwrap(),
                labels: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
            },
        )
        .expect("update");
    assert_eq!(updated.metadata.labels["k"], "v");
    let cfg = DomainDoc::parse(&dom.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).unwrap()).unwrap();
    assert_eq!(cfg.vcpus(), 2);
    assert_eq!(cfg.memory(), 192 << 20);
    let cores_now = updated.resources.cores() == Some(2);
    let cores_pending = updated.pending_resources.as_ref().and_then(|p| p.cores()) == Some(2);
    assert!(cores_now || cores_pending, "{updated:?}");
    let mem_now = updated.resources.memory_limit() == Some(192 << 20);
    let mem_pending = updated
        .pending_resources
        .as_ref()
        .and_then(|p| p.memory_limit())
        == Some(192 << 20);
    assert!(mem_now || mem_pending, "{updated:?}");

    // The disk grows live (block resize), never shrinks.
    let disk_path = DomainDoc::parse(&dom.xml_desc(0).unwrap()).unwrap().disks()[0]
        .file()
        .unwrap()
        .to_owned();
    let grown = b
        .update(
            &id,
            UpdateRequest {
                resources: serde_json::from_value(json!({"storage": {"totalSpace": 96u64 << 20}}))
                    .unwrap(),
                labels: None,
            },
        )
        .expect("grow the disk");
    assert_eq!(grown.resources.total_space(), Some(96 << 20));
    let vol = conn.lookup_storage_vol_by_path(&disk_path).unwrap();
    assert_eq!(vol.info().unwrap().capacity, 96 << 20);
    let shrink = b.update(
        &id,
        UpdateRequest {
            resources: serde_json::from_value(json!({"storage": {"totalSpace": 64u64 << 20}}))
                .unwrap(),
            labels: None,
        },
    );
    assert_eq!(shrink.unwrap_err().code, ErrorCode::ResourceLimitExceeded);

    // A guest without an OS ignores ACPI: the graceful stop reaches its timeout and
    // ends hard.
    let stopped = b
        .stop(
            &id,
            StopOptions {
                force: false,
                timeout: 2,
            },
        )
        .expect("graceful stop");
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert!(!dom.is_active().unwrap());
    // Ended hard: libvirt records the domain as destroyed, not shut down.
    let (state, reason) = dom.state().unwrap();
    assert_eq!(state.known(), Some(DomainState::Shutoff));
    assert!(
        matches!(
            reason,
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                DomainShutoffReason::Destroyed
            )))
        ),
        "{reason:?}"
    );
    assert_eq!(
        b.stop(&id, StopOptions::default()).unwrap().state,
        InstanceState::Stopped,
        "stop of a stopped one"
    );
    assert_eq!(b.pause(&id).unwrap_err().code, ErrorCode::InvalidState);
    // Offline, the volume itself grows.
    let grown = b
        .update(
            &id,
            UpdateRequest {
                resources: serde_json::from_value(json!({"storage": {"totalSpace": 128u64 << 20}}))
                    .unwrap(),
                labels: None,
            },
        )
        .expect("grow the stopped disk");
    assert_eq!(grown.resources.total_space(), Some(128 << 20));
    assert_eq!(grown.state, InstanceState::Stopped);
    assert_eq!(vol.info().unwrap().capacity, 128 << 20);

    // At the next start the pending change is in force.
    let i = b.start(&id).expect("start again");
    assert_eq!(i.resources.cores(), Some(2));
    assert_eq!(i.resources.memory_limit(), Some(192 << 20));
    assert!(i.pending_resources.is_none(), "{i:?}");

    let i = b
        .restart(
            &id,
            StopOptions {
                force: true,
                timeout: 0,
            },
        )
        .expect("restart");
    assert_eq!(i.state, InstanceState::Running);
    let i = b
        .stop(
            &id,
            StopOptions {
                force: true,
                timeout: 30,
            },
        )
        .expect("force stop");
    assert_eq!(i.state, InstanceState::Stopped);
    let i = b
        .restart(
            &id,
            StopOptions {
                force: false,
                timeout: 1,
            },
        )
        .expect("restart from stopped");
    assert_eq!(i.state, InstanceState::Running);

    assert_eq!(
        b.delete(&id, false).unwrap_err().code,
        ErrorCode::InvalidState
    );
    b.delete(&id, true).expect("delete with force");
    assert_eq!(b.get(&id).unwrap_err().code, ErrorCode::InstanceNotFound);
    assert!(conn.lookup_domain_by_name(&name).is_err());
    assert!(pool_volumes(&conn, &h.pool).is_empty());
}

#[test]
fn domain_destroyed_with_virsh_is_seen_by_an_event() {
    // The domain is undefined behind the backend's back, so neither its delete nor
    // the cleanup guard (which finds logs through the domain) removes its console
    // log: it goes to a directory of the test's own, removed with it (also when the
    // test fails), not to libvirt's log directory.
    let logs = common::workdir();
    let h = harness(SYSTEM, json!({"console_log_dir": logs.path()}));
    make_template(&h.templates, "blank", "64M");
    let name = h.cleanup.domain(&unique("virsh"));
    let id = unique("id");
    let req = request(
        &id,
        &name,
        json!({"image": "blank", "networkType": "none"}),
        small(),
    );
    assert_eq!(h.backend.create(req).unwrap().state, InstanceState::Created);

    // Started with virsh, not through the API: seen, and remembered as having run.
    let out = Command::new("virsh")
        .args(["-c", SYSTEM, "start", &name])
        .output()
        .expect("virsh");
    assert!(out.status.success(), "{out:?}");
    let seen = h.wait_event(Duration::from_secs(10), |e| {
        matches!(e, Event::Changed { instance } if instance.id == id && instance.state == InstanceState::Running)
    });
    assert!(
        seen.is_some(),
        "no running event for the domain started with virsh"
    );

    let out = Command::new("virsh")
        .args(["-c", SYSTEM, "destroy", &name])
        .output()
        .expect("virsh");
    assert!(out.status.success(), "{out:?}");
    let seen = h.wait_event(Duration::from_secs(10), |e| {
        matches!(e, Event::Changed { instance } if instance.id == id && instance.state == InstanceState::Stopped)
    });
    assert!(seen.is_some(), "no stopped event for the destroyed domain");

    let out = Command::new("virsh")
        .args(["-c", SYSTEM, "undefine", &name])
        .output()
        .expect("virsh");
    assert!(out.status.success(), "{out:?}");
    let seen = h.wait_event(
        Duration::from_secs(10),
        |e| matches!(e, Event::Vanished { id: gone } if *gone == id),
    );
    assert!(seen.is_some(), "no vanished event for the undefined domain");
    assert_eq!(
        h.backend.get(&id).unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    assert!(
        unicompute_kvm::console_log::path(logs.path(), &id).exists(),
        "the run's console log is in the test's directory"
    );
}

/// A libvirt network that is defined but never started; undefined when dropped.
struct InactiveNetwork {
    name: String,
}

impl InactiveNetwork {
    fn define() -> Self {
        let name = unique("ucnet");
        let suffix: String = uuid_suffix();
        let xml = format!("<network><name>{name}</name><bridge name='ucbr{suffix}'/></network>");
        let file = std::env::temp_dir().join(format!("{name}.xml"));
        std::fs::write(&file, xml).expect("network xml");
        let out = Command::new("virsh")
            .args(["-c", SYSTEM, "net-define"])
            .arg(&file)
            .output()
            .expect("virsh");
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "{out:?}");
        InactiveNetwork { name }
    }
}

impl Drop for InactiveNetwork {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-c", SYSTEM, "net-undefine", &self.name])
            .output();
    }
}

/// 8 random hex digits (a bridge name has at most 15 characters).
fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

#[test]
fn failed_creates_leave_nothing_behind() {
    let h = harness(SYSTEM, json!({}));
    make_template(&h.templates, "blank", "64M");
    let conn = libvirt(SYSTEM);
    let b = &h.backend;
    let inactive = InactiveNetwork::define();
    // A real template one directory up: `../blank` must be refused for its form,
    // not because nothing is there.
    make_template(h.templates.parent().expect("parent"), "blank", "64M");
    // (config, start, expected code)
    let cases = [
        // The network does not exist: refused at create, even without a start.
        (
            json!({"image": "blank", "networkType": "network", "networkSource": unique("nonet"),
                   "cloudInit": {"userData": "#cloud-config\n"}}),
            false,
            ErrorCode::InvalidRequest,
        ),
        // The bridge does not exist on this host: refused at create.
        (
            json!({"image": "blank", "networkType": "bridge", "networkSource": "ucnobr0",
                   "cloudInit": {"userData": "#cloud-config\n"}}),
            true,
            ErrorCode::InvalidRequest,
        ),
        // The network exists but is not started: libvirt refuses to start the domain,
        // the create rolls back (disk, seed and domain).
        (
            json!({"image": "blank", "networkType": "network", "networkSource": inactive.name.as_str(),
                   "cloudInit": {"userData": "#cloud-config\n"}}),
            true,
            ErrorCode::BackendError,
        ),
        // Refused before anything is made.
        (
            json!({"image": "missing", "cloudInit": {"userData": "x"}}),
            true,
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"image": "../blank"}),
            true,
            ErrorCode::InvalidRequest,
        ),
    ];
    for (config, start, code) in cases {
        let name = h.cleanup.domain(&unique("fail"));
        let mut req = request(&unique("id"), &name, config.clone(), small());
        req.start = start;
        let e = b.create(req).expect_err("create must fail");
        assert_eq!(e.code, code, "{config}: {e:?}");
        assert!(
            conn.lookup_domain_by_name(&name).is_err(),
            "{config}: domain left"
        );
        assert!(
            pool_volumes(&conn, &h.pool).is_empty(),
            "{config}: volume left"
        );
        assert!(files_in(&h.storage).is_empty(), "{config}: file left");
    }
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn a_pool_stopped_by_hand_is_started_again() {
    let h = harness(SYSTEM, json!({}));
    make_template(&h.templates, "blank", "64M");
    let b = &h.backend;
    let first = request(
        &unique("id"),
        &h.cleanup.domain(&unique("pool1")),
        json!({"image": "blank", "networkType": "none"}),
        small(),
    );
    let first_id = first.id.clone();
    b.create(first).expect("create");
    let out = Command::new("virsh")
        .args(["-c", SYSTEM, "pool-destroy", &h.pool])
        .output()
        .expect("virsh");
    assert!(out.status.success(), "{out:?}");
    let second = request(
        &unique("id"),
        &h.cleanup.domain(&unique("pool2")),
        json!({"image": "blank", "networkType": "none"}),
        small(),
    );
    let second_id = second.id.clone();
    b.create(second)
        .expect("create with the pool stopped by hand");
    b.delete(&first_id, true).expect("delete");
    b.delete(&second_id, true).expect("delete");
    let conn = libvirt(SYSTEM);
    assert!(pool_volumes(&conn, &h.pool).is_empty());
}

#[test]
fn raw_disks_user_and_bridge_networks() {
    let h = harness(SYSTEM, json!({}));
    make_template(&h.templates, "blank", "64M");
    let conn = libvirt(SYSTEM);
    let b = &h.backend;

    let name = h.cleanup.domain(&unique("raw"));
    let id = unique("id");
    b.create(request(
        &id,
        &name,
        json!({"image": "blank", "diskFormat": "raw", "networkType": "user"}),
        json!({"storage": {"totalSpace": 128u64 << 20}}),
    ))
    .expect("raw create");
    let dom = conn.lookup_domain_by_name(&name).unwrap();
    let doc = DomainDoc::parse(&dom.xml_desc(0).unwrap()).unwrap();
    assert_eq!(doc.interfaces()[0].kind, "user");
    let vol = conn
        .lookup_storage_vol_by_path(doc.disks()[0].file().unwrap())
        .unwrap();
    let vdoc = VolumeDoc::parse(&vol.xml_desc(0).unwrap()).unwrap();
    assert_eq!(vdoc.format(), Some("raw"));
    assert_eq!(vdoc.capacity(), 128 << 20);
    assert!(vdoc.backing_path().is_none());
    b.delete(&id, false).unwrap();

    let name = h.cleanup.domain(&unique("br"));
    let id = unique("id");
    b.create(request(
        &id,
        &name,
        json!({"image": "blank", "networkType": "bridge", "networkSource": "virbr0"}),
        small(),
    ))
    .expect("bridge create");
    let dom = conn.lookup_domain_by_name(&name).unwrap();
    let doc = DomainDoc::parse(&dom.xml_desc(0).unwrap()).unwrap();
    assert_eq!(doc.interfaces()[0].kind, "bridge");
    assert_eq!(doc.interfaces()[0].source(), Some("virbr0"));
    let images = b.images().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].name, "blank");
    let d = b.describe().unwrap();
    assert_eq!(d.extra["hypervisor"], "QEMU");
    assert!(d.capabilities.iter().any(|c| c == "pause"));
    let host = b.host_resources().unwrap();
    assert!(host.cpus >= 1 && host.memory > 0);
    b.delete(&id, false).unwrap();
    assert!(pool_volumes(&conn, &h.pool).is_empty());
}
