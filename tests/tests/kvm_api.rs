//! The KVM backend end to end: the real binary, the real kvm plugin, libvirtd with
//! QEMU/KVM. Guests have no OS (an empty template); networking is checked in the
//! domain XML only. Also: a server killed in the middle of a create leaves a volume
//! that the next server sweeps.

use std::process::Command;
use std::time::{Duration, Instant};

use unicompute_tests::kvm::{virsh, KvmFixture};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

fn server(f: &KvmFixture) -> Server {
    server_with(f, "")
}

fn server_with(f: &KvmFixture, extra: &str) -> Server {
    Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("kvm")],
        toml: format!(
            "[backends.kvm]\nplugin = \"kvm\"\n{}{extra}",
            f.settings_toml()
        ),
        ..Default::default()
    })
}

/// Whether a pool file is named like an instance's (`i-` + 20 hex digits).
fn instance_file(name: &str) -> bool {
    name.starts_with("i-") && name.len() > 22 && name[2..22].bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn volumes_left_by_a_server_killed_during_a_create_are_swept() {
    let f = KvmFixture::new();
    // A template with data (not zeros, which qemu-img skips), so that a raw copy
    // takes a while.
    std::fs::write(f.templates().join("data.raw"), vec![0x5au8; 256 << 20])
        .expect("write the template");
    // SIGKILL the server while it makes a raw disk (qemu-img convert), before the
    // domain is defined. The kill can come too late (the domain exists then):
    // another try, with a new server.
    let mut leftover = None;
    for attempt in 0..8 {
        let s = server(&f);
        let name = format!("{}-crash{attempt}", f.prefix);
        let base = s.base.clone();
        let body = json!({
            "name": name, "backend": "kvm",
            "config": {"image": "data", "diskFormat": "raw", "networkType": "none"},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728u64}}
        });
        let before = f.volumes();
        // The request dies with the server: this thread panics then, and that is
        // expected (its join is ignored).
        let client = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .proxy(None)
                .http_status_as_error(false)
                .build()
                .into();
            let bytes = serde_json::to_vec(&body).expect("json");
            request(&agent, &base, "POST", INSTANCES, Some(ADMIN), Some(&bytes));
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let seen = loop {
            let new = f
                .volumes()
                .into_iter()
                .find(|v| instance_file(v) && !before.contains(v));
            if new.is_some() || Instant::now() > deadline {
                break new;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        // SAFETY: kill(2) on the server we started.
        unsafe {
            libc::kill(s.pid() as i32, libc::SIGKILL);
        }
        let _ = client.join();
        drop(s);
        let Some(file) = seen else { continue };
        if f.domains().is_empty() {
            eprintln!("attempt {attempt}: the kill left {file} with no domain");
            leftover = Some(file);
            break;
        }
        // Too late: the create got through. Remove it by hand and try again.
        for d in f.domains() {
            let _ = virsh(&["undefine", &d]);
        }
        let _ = std::fs::remove_file(f.storage().join(&file));
    }
    let leftover = leftover.expect("no kill landed during a create in 8 tries");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        f.volumes().contains(&leftover),
        "the killed create left {leftover}: {:?}",
        f.volumes()
    );
    // A file that is not ours stays whatever its age.
    std::fs::write(f.storage().join("keep-me.qcow2"), b"not an instance").expect("write");

    // The next server (a small grace) sweeps it, and not what is in use.
    let s = server_with(&f, "orphan_grace_secs = 1\n");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": format!("{}-live", f.prefix), "backend": "kvm",
            "config": {"image": "ubuntu-22.04", "networkType": "none"},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728u64}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let live_id = r.json["id"].as_str().expect("id").to_owned();
    // Gone, and logged at info (the log is written asynchronously).
    let gone = wait_for(Duration::from_secs(60), || {
        let logged = s
            .log()
            .lines()
            .any(|l| l.contains("swept an orphaned volume") && l.contains(&leftover));
        (!f.volumes().contains(&leftover) && logged).then_some(())
    });
    assert!(
        gone.is_some(),
        "{leftover} still in the pool or not logged: {:?}\n{}",
        f.volumes(),
        s.log()
    );
    // Past the grace: the live instance's disk and the foreign file stay.
    std::thread::sleep(Duration::from_secs(2));
    let r = s.get(&format!("{INSTANCES}/{live_id}"));
    assert_eq!(r.status, 200, "{}", r.text);
    let vols = f.volumes();
    assert!(vols.contains(&format!("{live_id}.qcow2")), "{vols:?}");
    assert!(vols.contains(&"keep-me.qcow2".to_string()), "{vols:?}");
    let r = s.call("DELETE", &format!("{INSTANCES}/{live_id}"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
}

#[test]
fn the_spec_kvm_example_through_the_api() {
    let f = KvmFixture::new();
    let s = server(&f);
    let name = format!("{}-ubuntu-vm", f.prefix);
    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({
        "name": name, "backend": "kvm",
        "config": {"image": "ubuntu-22.04", "diskFormat": "qcow2",
                   "cloudInit": {"userData": "#cloud-config\npackages:\n  - nginx\n"}},
        "resources": {"cpu": {"cores": 2}, "memory": {"limit": 2147483648u64}, "storage": {"totalSpace": 21474836480u64}}
    })));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["type"], "vm");
    assert_eq!(r.json["state"], "created");
    assert_eq!(r.json["resources"]["cpu"]["cores"], 2);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let uuid = r.json["uuid"].as_str().expect("uuid").to_owned();

    // libvirt's own view
    let (ok, info) = virsh(&["dominfo", &name]);
    assert!(ok, "dominfo");
    assert!(
        info.lines()
            .any(|l| l.starts_with("CPU(s):") && l.ends_with(" 2")),
        "{info}"
    );
    assert!(
        info.lines()
            .any(|l| l.starts_with("Max memory:") && l.contains("2097152 KiB")),
        "{info}"
    );
    assert!(info.contains(&uuid), "uuid is the domain's: {info}");
    let (_, xml) = virsh(&["dumpxml", &name]);
    assert!(
        xml.contains("<readonly/>"),
        "seed attached read-only: {xml}"
    );
    let disk = f
        .volumes()
        .into_iter()
        .map(|v| f.storage().join(v))
        .find(|p| {
            xml.contains(p.to_string_lossy().as_ref()) && !p.to_string_lossy().contains("seed")
        })
        .expect("the instance disk is in the pool and the XML");
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&disk)
        .output()
        .expect("qemu-img");
    let info: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 21474836480u64);
    assert!(
        info["backing-filename"]
            .as_str()
            .is_some_and(|b| b.contains("ubuntu-22.04")),
        "{info}"
    );

    let one = format!("{INSTANCES}/{id}");
    let r = s.call("PUT", &format!("{one}/start"), OPERATOR, None);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    assert_eq!(virsh(&["domstate", &name]).1, "running");
    let r = s.call("PUT", &format!("{one}/pause"), OPERATOR, None);
    assert_eq!(r.json["state"], "paused", "{}", r.text);
    let r = s.call("PUT", &format!("{one}/unpause"), OPERATOR, None);
    assert_eq!(r.json["state"], "running");
    let r = s.get(&format!("{one}/usage"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["cpu"]["cores"], 2);
    // no OS to answer ACPI: the graceful stop ends hard at the timeout
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        OPERATOR,
        Some(&json!({"timeout": 2})),
    );
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    assert_eq!(virsh(&["domstate", &name]).1, "shut off");

    assert_eq!(s.call("DELETE", &one, ADMIN, None).status, 204);
    assert!(f.domains().is_empty(), "domain left: {:?}", f.domains());
    assert!(f.volumes().is_empty(), "volumes left: {:?}", f.volumes());
}

#[test]
fn kvm_plugins_check_and_info() {
    let f = KvmFixture::new();
    {
        let s = server(&f);
        let r = s.get("/api/v1/compute/backends/kvm/info");
        assert_eq!(r.json["status"], "running", "{}", r.text);
        assert_eq!(r.json["supportedTypes"], json!(["vm"]));
        let r = s.get("/api/v1/compute/backends/kvm/images");
        assert!(r.text.contains("ubuntu-22.04"), "{}", r.text);
    }
    let cfg = f.dir.0.join("check.toml");
    std::fs::write(
        &cfg,
        format!(
            "[backend]\n{}[instance]\nconfig = {{ image = \"ubuntu-22.04\" }}\nresources = {{ cpu = {{ cores = 1 }}, memory = {{ limit = 268435456 }} }}\nstop_timeout = 2\n",
            f.settings_toml()
        ),
    )
    .expect("write");
    let out = Command::new(host_binary())
        .args(["plugins", "check"])
        .arg(workspace_plugin("kvm"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{text}"
    );
    let left: Vec<String> = virsh(&["list", "--all", "--name"])
        .1
        .lines()
        .filter(|l| l.starts_with("uc-check-"))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "check left {left:?}");
}
