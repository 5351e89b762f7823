//! Benchmark: create + start + delete of a VM through the kvm backend, against the
//! same work done through libvirt (the `virt` crate) directly, side by side.
//!
//! `cargo run --release -p unicompute-kvm --example bench -- [RUNS] [URI]`
//! (default 10 runs on `qemu:///system`). Guests have no OS: the disk is an empty
//! qcow2 overlay of a 64 MiB template, no network.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use unicompute_kvm::xml::{DomainSpec, InstanceMeta, LabelsXml, VolumeXml};
use unicompute_kvm::KvmBackend;
use unicompute_plugin_api::{Backend, BackendContext, CreateRequest, EventSink};
use virt::connect::Connect;
use virt::storage_vol::StorageVol;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10)
        .max(1);
    let uri = args.next().unwrap_or_else(|| "qemu:///system".into());
    unicompute_kvm::init_libvirt();

    let dir = tempfile::Builder::new()
        .prefix("uc-kvm-bench-")
        .tempdir_in("/var/tmp")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates)?;
    std::fs::set_permissions(&templates, std::fs::Permissions::from_mode(0o755))?;
    let template = templates.join("blank.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&template)
        .arg("64M")
        .status()?
        .success();
    if !ok {
        return Err("qemu-img failed".into());
    }
    std::fs::set_permissions(&template, std::fs::Permissions::from_mode(0o644))?;
    let pool_name = format!("uc-bench-{}", std::process::id());
    let storage = dir.path().join("pool");

    let backend = KvmBackend::new(BackendContext {
        name: "kvm".into(),
        config: json!({
            "uri": uri,
            "templates_dir": templates,
            "storage_dir": storage,
            "storage_pool": pool_name,
        }),
        events: EventSink::discard(),
    })?;
    // Warm up: connect and create the pool once.
    backend.health()?;
    backend.images()?;

    let conn = Connect::open(Some(&uri))?;
    let domain_type = unicompute_kvm::KvmConfig {
        uri: uri.clone(),
        ..Default::default()
    }
    .resolved_domain_type();
    let host_cpus = conn.node_info()?.cpus;

    let mut ours = Vec::new();
    let mut direct = Vec::new();
    let mut failure: Option<String> = None;
    for i in 0..runs {
        // Ours.
        let id = format!("bench-{}-{i}", std::process::id());
        let name = format!("uc-bench-ours-{}-{i}", std::process::id());
        let req = CreateRequest {
            id: id.clone(),
            name,
            config: json!({"image": "blank", "networkType": "none"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            resources: serde_json::from_value(
                json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}}),
            )?,
            labels: Default::default(),
            start: true,
            created_at: chrono::Utc::now(),
            operation: None,
        };
        let t = Instant::now();
        let r = backend.create(req).and_then(|_| backend.delete(&id, true));
        ours.push(t.elapsed());
        if let Err(e) = r {
            failure = Some(format!("ours: {e}"));
            break;
        }

        // Directly through virt: the same volume, the same domain XML.
        let name = format!("uc-bench-virt-{}-{i}", std::process::id());
        let t = Instant::now();
        let r = (|| -> Result<(), Box<dyn std::error::Error>> {
            let pool = conn.lookup_storage_pool_by_name(&pool_name)?;
            let vol_xml = VolumeXml::new(
                &format!("{name}.qcow2"),
                64 << 20,
                "qcow2",
                Some((&template.to_string_lossy(), "qcow2")),
            )
            .to_xml()?;
            let vol = StorageVol::create_xml(&pool, &vol_xml, 0)?;
            let spec = DomainSpec {
                domain_type: domain_type.clone(),
                name: name.clone(),
                vcpus: 1,
                max_vcpus: host_cpus,
                cpu_mode: None,
                memory: 128 << 20,
                disk: (vol.path()?, "qcow2".into()),
                seed: None,
                nic: None,
                console_log: None,
                // As the plugin makes them (a guest agent channel by default).
                guest_agent: true,
                meta: InstanceMeta {
                    xmlns: None,
                    id: name.clone(),
                    created_at: String::new(),
                    updated_at: String::new(),
                    started: true,
                    labels: LabelsXml::default(),
                    config: serde_json::from_value(
                        json!({"image": "blank", "networkType": "none"}),
                    )?,
                    pool: String::from("none"),
                    disk: String::new(),
                    disk_size: 0,
                    seed: None,
                },
            };
            let dom = conn.define_domain_xml(&spec.to_xml()?)?;
            dom.create()?;
            dom.destroy()?;
            dom.undefine()?;
            vol.delete(0)?;
            Ok(())
        })();
        direct.push(t.elapsed());
        if let Err(e) = r {
            failure = Some(format!("virt: {e}"));
            break;
        }
    }

    if let Ok(pool) = conn.lookup_storage_pool_by_name(&pool_name) {
        for v in pool.list_all_volumes(0).unwrap_or_default() {
            let _ = v.delete(0);
        }
        let _ = pool.destroy();
        let _ = pool.undefine();
    }
    if let Some(f) = failure {
        return Err(f.into());
    }
    let (o, d) = (median(ours), median(direct));
    println!("create+start+delete, median of {runs} runs on {uri} ({domain_type}):");
    println!("  unicompute kvm backend: {:8.1} ms", ms(o));
    println!("  virt directly:          {:8.1} ms", ms(d));
    println!("  ratio:                  {:8.3}", ms(o) / ms(d));
    Ok(())
}
