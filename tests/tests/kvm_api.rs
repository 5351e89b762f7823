//! The KVM backend end to end: the real binary, the real kvm plugin, libvirtd with
//! QEMU/KVM. Guests have no OS (an empty template), except in the real-guest test
//! (`scripts/guest-template.sh`, exec through its guest agent stand-in); networking
//! is checked in the domain XML only. Also:
//! a server killed in the middle of a create leaves a volume that the next server
//! sweeps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use unicompute_tests::guest;
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
    // libvirt keeps the domain and its metadata: a new backend finds it as it was.
    assert!(
        text.contains("PASS  a new backend from the same settings keeps the instance (durability)"),
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

/// A libvirt network defined and never started; undefined on drop.
struct InactiveNetwork(String);

impl InactiveNetwork {
    fn define(f: &KvmFixture) -> InactiveNetwork {
        let name = format!("{}-net", f.prefix);
        let xml = f.dir.0.join("net.xml");
        std::fs::write(&xml, format!("<network><name>{name}</name></network>")).expect("write");
        let (ok, out) = virsh(&["net-define", &xml.to_string_lossy()]);
        assert!(ok, "net-define: {out}");
        InactiveNetwork(name)
    }
}

impl Drop for InactiveNetwork {
    fn drop(&mut self) {
        let _ = virsh(&["net-destroy", &self.0]);
        let _ = virsh(&["net-undefine", &self.0]);
    }
}

/// Whether this host can run KVM guests (then new domains must be `kvm`, not the
/// `qemu` emulator).
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn dominfo(name: &str, key: &str) -> String {
    let (ok, info) = virsh(&["dominfo", name]);
    assert!(ok, "dominfo {name}");
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim_start_matches(':').trim().to_owned())
        .unwrap_or_else(|| panic!("no {key} in {info}"))
}

#[test]
fn the_spec_kvm_config_block_verbatim_and_the_whole_lifecycle() {
    let _engine = unicompute_tests::FileLock::engine_shared();
    unicompute_tests::docker::ensure_image();
    unicompute_tests::docker::sweep_stale();
    let f = KvmFixture::new();
    let net = InactiveNetwork::define(&f);
    let dock = unicompute_tests::docker::backend_name();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("kvm"), workspace_plugin("docker")],
        toml: format!(
            "[backends.kvm]\nplugin = \"kvm\"\n{}[backends.kvm-down]\nplugin = \"kvm\"\nuri = \"qemu+unix:///system?socket={}/no-libvirtd.sock\"\ntemplates_dir = \"{}\"\n[backends.{dock}]\nplugin = \"docker\"\nstate_dir = \"{}/docker-state\"\npin_dir = \"{}/docker-pins\"\n",
            f.settings_toml(),
            f.dir.0.display(),
            f.templates().display(),
            f.dir.0.display(),
            f.dir.0.display(),
        ),
        ..Default::default()
    });
    let name = format!("{}-spec", f.prefix);
    // The spec's "KVM Configuration" block as written ("..." included).
    let config: Value = serde_json::from_str(
        r#"{
  "image": "ubuntu-22.04",
  "diskFormat": "qcow2",
  "networkType": "bridge",
  "networkSource": "default",
  "cloudInit": {
    "userData": "...",
    "metaData": "..."
  }
}"#,
    )
    .expect("json");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": "kvm", "config": config,
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 268435456u64}},
            "metadata": {"labels": {"app": "spec", "tier": "vm"}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["config"]["networkType"], "bridge");
    assert_eq!(r.json["config"]["networkSource"], "default");
    let id = r.json["id"].as_str().expect("id").to_owned();
    let one = format!("{INSTANCES}/{id}");
    let created = r.json.clone();
    // attached to the libvirt network `default` (no host bridge has that name)
    let (_, xml) = virsh(&["dumpxml", &name]);
    assert!(
        xml.contains("<interface type='network'>") && xml.contains("<source network='default'"),
        "{xml}"
    );
    if kvm_usable() {
        assert!(
            xml.starts_with("<domain type='kvm'"),
            "KVM is usable: {xml}"
        );
    }
    // a bridge source that is neither a host bridge nor a network is refused
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": format!("{}-nobr", f.prefix), "backend": "kvm",
            "config": {"image": "ubuntu-22.04", "networkType": "bridge", "networkSource": "ucnobr0"}
        })),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);

    // by id and by name, the same instance
    assert_eq!(s.get(&one).json, created);
    assert_eq!(s.get(&format!("{INSTANCES}/name/{name}")).json, created);

    // error codes from the kvm backend
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": "kvm", "config": {"image": "ubuntu-22.04"}
        })),
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "INSTANCE_ALREADY_EXISTS"),
        "{}",
        r.text
    );
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": format!("{}-big", f.prefix), "backend": "kvm",
            "config": {"image": "ubuntu-22.04", "networkType": "none"},
            "resources": {"cpu": {"cores": 100000}}
        })),
    );
    assert_eq!(
        (r.status, r.code()),
        (422, "RESOURCE_LIMIT_EXCEEDED"),
        "{}",
        r.text
    );
    let r = s.call("PUT", &format!("{one}/pause"), OPERATOR, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": format!("{}-down", f.prefix), "backend": "kvm-down",
            "config": {"image": "ubuntu-22.04"}
        })),
    );
    assert_eq!(
        (r.status, r.code()),
        (503, "BACKEND_UNAVAILABLE"),
        "{}",
        r.text
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.json["error"]["details"]["backend"], "kvm-down");
    // a network that is defined but not started: libvirt refuses the start, 502
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": format!("{}-inactive", f.prefix), "backend": "kvm", "start": true,
            "config": {"image": "ubuntu-22.04", "networkType": "network", "networkSource": net.0}
        })),
    );
    assert_eq!((r.status, r.code()), (502, "BACKEND_ERROR"), "{}", r.text);
    assert_eq!(
        f.domains(),
        vec![name.clone()],
        "the failed create rolled back"
    );
    // names are unique across backends: a container's name is taken for a VM
    let shared = format!("{}-shared", f.prefix);
    let _container = unicompute_tests::docker::ContainerGuard(shared.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": shared, "backend": dock,
            "config": {"image": unicompute_tests::docker::TEST_IMAGE}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let container_id = r.json["id"].as_str().expect("id").to_owned();
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": shared, "backend": "kvm", "config": {"image": "ubuntu-22.04"}
        })),
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "INSTANCE_ALREADY_EXISTS"),
        "{}",
        r.text
    );
    assert_eq!(f.domains(), vec![name.clone()]);
    let r = s.call(
        "DELETE",
        &format!("{INSTANCES}/{container_id}"),
        ADMIN,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text);

    // update, checked in libvirt; updatedAt moves
    std::thread::sleep(Duration::from_millis(5));
    let r = s.call(
        "PUT",
        &one,
        ADMIN,
        Some(&json!({"resources": {"cpu": {"cores": 2}, "memory": {"limit": 536870912u64}}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["resources"]["cpu"]["cores"], 2);
    assert!(
        r.json["updatedAt"].as_str() > created["updatedAt"].as_str(),
        "{}",
        r.text
    );
    assert_eq!(dominfo(&name, "CPU(s)"), "2");
    assert_eq!(dominfo(&name, "Max memory"), "524288 KiB");
    let mut last = r.json["updatedAt"].as_str().expect("updatedAt").to_owned();
    let mut moved = |r: &Resp, what: &str| {
        let now = r.json["updatedAt"].as_str().expect("updatedAt").to_owned();
        assert!(
            now > last,
            "{what}: updatedAt {now} did not move from {last}"
        );
        last = now;
        std::thread::sleep(Duration::from_millis(5));
    };

    let r = s.call("PUT", &format!("{one}/start"), OPERATOR, None);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    moved(&r, "start");
    assert_eq!(virsh(&["domstate", &name]).1, "running");
    let c = s.get("/api/v1/compute/cluster/status");
    assert_eq!(c.json["backends"]["kvm"]["instances"], 1, "{}", c.text);
    assert_eq!(
        c.json["backends"]["kvm"]["resources"]["cpu"]["used"], 2,
        "{}",
        c.text
    );
    assert_eq!(
        c.json["backends"]["kvm"]["resources"]["memory"]["used"], 536870912u64,
        "{}",
        c.text
    );
    assert_eq!(
        c.json["backends"]["kvm-down"]["status"], "unavailable",
        "{}",
        c.text
    );
    assert_eq!(c.json["health"], "degraded", "{}", c.text);
    let u = s.get(&format!("{one}/usage"));
    assert_eq!(u.status, 200, "{}", u.text);
    assert_eq!(u.json["cpu"]["cores"], 2, "{}", u.text);
    assert!(
        u.json["cpu"]["usage"]
            .as_f64()
            .is_some_and(|c| (0.0..=100.0).contains(&c)),
        "{}",
        u.text
    );
    assert_eq!(u.json["memory"]["limit"], 536870912u64, "{}", u.text);
    assert!(
        u.json["memory"]["used"].as_u64().is_some_and(|m| m > 0),
        "{}",
        u.text
    );
    assert!(
        u.json["storage"]["total"]
            .as_u64()
            .is_some_and(|t| t >= 64 << 20),
        "{}",
        u.text
    );
    assert!(u.json["storage"]["used"].is_u64(), "{}", u.text);
    assert!(
        u.json["network"]["rxBytes"].is_u64() && u.json["network"]["txBytes"].is_u64(),
        "{}",
        u.text
    );

    let r = s.call("PUT", &format!("{one}/pause"), OPERATOR, None);
    assert_eq!(r.json["state"], "paused", "{}", r.text);
    moved(&r, "pause");
    assert_eq!(virsh(&["domstate", &name]).1, "paused");
    let r = s.call("DELETE", &one, ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    let r = s.call("PUT", &format!("{one}/unpause"), OPERATOR, None);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    moved(&r, "unpause");
    assert_eq!(virsh(&["domstate", &name]).1, "running");
    let r = s.call("DELETE", &one, ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    // no OS to answer ACPI: the restart's stop ends hard at its timeout
    let r = s.call(
        "PUT",
        &format!("{one}/restart"),
        OPERATOR,
        Some(&json!({"timeout": 1})),
    );
    assert_eq!(r.json["state"], "running", "{}", r.text);
    moved(&r, "restart");
    assert_eq!(virsh(&["domstate", &name]).1, "running");
    let before = s.get(&one).json;
    assert_eq!(before["updatedAt"].as_str(), Some(last.as_str()));

    // A new server reads the same instance back from libvirt.
    drop(s);
    let s = server(&f);
    let after = s.get(&one).json;
    for key in [
        "id",
        "uuid",
        "name",
        "createdAt",
        "updatedAt",
        "metadata",
        "state",
    ] {
        assert_eq!(after[key], before[key], "{key} after a server restart");
    }

    let r = s.call("DELETE", &format!("{one}?force=true"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(f.domains().is_empty(), "domain left: {:?}", f.domains());
    assert!(f.volumes().is_empty(), "volumes left: {:?}", f.volumes());
}

/// Removes a file on drop: a console log the test expects gone, also after a failure.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The kvm backend's default `console_log_dir`.
const CONSOLE_LOG_DIR: &str = "/var/log/libvirt/qemu";

#[test]
fn a_real_guest_gets_its_user_data_stops_by_its_own_power_off_and_its_console_log_outlives_a_server_restart(
) {
    let f = KvmFixture::new();
    guest::install(&f.templates(), "guest");
    let domain_type = guest::domain_type();
    let extra = format!("domain_type = \"{domain_type}\"\n");
    let s = server_with(&f, &extra);
    let name = format!("{}-guest", f.prefix);
    let token = format!("{name}-{}", uuid::Uuid::new_v4());
    let started = Instant::now();
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": "kvm", "start": true,
            "config": {"image": "guest", "networkType": "none",
                       "cloudInit": {"userData": guest::user_data(&token)}},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": guest::MEMORY}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let one = format!("{INSTANCES}/{id}");
    let log = Path::new(CONSOLE_LOG_DIR).join(format!("{id}-serial.log"));
    let _log_guard = RemoveOnDrop(log.clone());
    let (_, xml) = virsh(&["dumpxml", &name]);
    assert!(
        xml.contains(&format!("<log file='{}' append='on'/>", log.display())),
        "{xml}"
    );

    // The user-data reached the guest: it printed the marker on its serial console.
    let marker = format!("{}{token}", guest::MARKER_SEEN);
    let to_marker = guest::wait_for_line(&log, &marker, Duration::from_secs(300))
        .map(|_| started.elapsed())
        .unwrap_or_else(|| {
            panic!(
                "no {marker:?} in {}:\n{}",
                log.display(),
                guest::read_log(&log)
            )
        });
    assert!(
        guest::wait_for_line(&log, guest::READY, Duration::from_secs(300)).is_some(),
        "{}",
        guest::read_log(&log)
    );

    // A server restart: the instance runs on and its console log is still there.
    drop(s);
    let s = server_with(&f, &extra);
    let r = s.get(&one);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    let text = guest::read_log(&log);
    assert!(text.contains(&marker), "{text}");

    // Exec to completion through the guest agent (the guest's stand-in serves the
    // channel the plugin gave the domain).
    assert!(xml.contains("org.qemu.guest_agent.0"), "{xml}");
    assert!(
        guest::wait_for_line(&log, guest::AGENT, Duration::from_secs(300)).is_some(),
        "the guest agent did not start:\n{}",
        guest::read_log(&log)
    );
    let exec = format!("{one}/exec");
    let t = Instant::now();
    let r = s.call(
        "POST",
        &exec,
        ADMIN,
        Some(&json!({"command": ["sh", "-c", "echo o; echo e >&2; exit 3"]})),
    );
    let exec_took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"exitCode": 3, "stdout": "o\n", "stderr": "e\n", "truncated": false, "timedOut": false})
    );
    let r = s.call(
        "POST",
        &exec,
        ADMIN,
        Some(&json!({"command": ["sh", "-c", "cat; echo \"$A\""], "stdin": "fed\n", "env": {"A": "1"}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (&r.json["stdout"], &r.json["exitCode"]),
        (&json!("fed\n1\n"), &json!(0)),
        "{}",
        r.text
    );
    // What the agent cannot do is 501, saying so.
    let r = s.call(
        "POST",
        &exec,
        ADMIN,
        Some(&json!({"command": ["true"], "user": "root"})),
    );
    assert_eq!(r.status, 501, "{}", r.text);
    assert!(r.text.contains("guest agent"), "{}", r.text);

    // A graceful stop (no force, the default timeout): the guest's own power-off.
    let stopping = Instant::now();
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        OPERATOR,
        Some(&json!({"force": false})),
    );
    let stop_took = stopping.elapsed();
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    let text = guest::read_log(&log);
    let pressed = text.find(guest::POWER_BUTTON);
    let off = text.find(guest::POWERING_OFF);
    assert!(
        pressed.is_some() && off.is_some() && pressed < off,
        "the guest saw the ACPI power button and powered itself off: {text}"
    );
    // libvirt's record of how it ended: shut down by the guest, not destroyed.
    assert_eq!(
        virsh(&["domstate", "--reason", &name]).1,
        "shut off (shutdown)"
    );
    eprintln!(
        "real guest through the API ({domain_type}): create+start to marker {:.1} s, exec {:.2} s, graceful stop {:.2} s",
        to_marker.as_secs_f64(),
        exec_took.as_secs_f64(),
        stop_took.as_secs_f64()
    );

    // The delete takes the console log with it.
    assert_eq!(s.call("DELETE", &one, ADMIN, None).status, 204);
    assert!(!log.exists(), "console log left: {}", log.display());
    let rotated: Vec<String> = std::fs::read_dir(CONSOLE_LOG_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&id))
                .collect()
        })
        .unwrap_or_default();
    assert!(rotated.is_empty(), "left: {rotated:?}");
    assert!(f.domains().is_empty(), "domain left: {:?}", f.domains());
    assert!(f.volumes().is_empty(), "volumes left: {:?}", f.volumes());
}

#[test]
fn an_async_raw_create_reports_its_copy_and_a_cancel_leaves_nothing() {
    let f = KvmFixture::new();
    // Data, not zeros (which qemu-img skips): the copy takes a while.
    std::fs::write(f.templates().join("big.raw"), vec![0x5au8; 1 << 30])
        .expect("write the template");
    let s = server(&f);
    let volumes_before = f.volumes();
    // The copy can end before the cancel comes on a fast disk: a few tries.
    let mut cancelled = None;
    for attempt in 0..4 {
        let name = format!("{}-copy{attempt}", f.prefix);
        let body = json!({
            "name": name, "backend": "kvm",
            "config": {"image": "big", "diskFormat": "raw", "networkType": "none"},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728u64}}
        });
        let r = s.call(
            "POST",
            &format!("{INSTANCES}?async=true"),
            ADMIN,
            Some(&body),
        );
        assert_eq!(r.status, 202, "{}", r.text);
        let op = r.location.expect("Location");

        // Progress: the bytes of the copy (or an end, when the copy was quicker).
        let ended = |o: &Value| {
            matches!(
                o["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        };
        let progress = wait_for(Duration::from_secs(120), || {
            let o = s.get(&op).json;
            (o["progress"]["stage"] == "copying" || ended(&o)).then_some(o)
        })
        .expect("progress or an end");
        if ended(&progress) {
            let done = s.get(&format!("{op}?wait=60")).json;
            if let Some(id) = done["result"]["id"].as_str() {
                let r = s.call(
                    "DELETE",
                    &format!("{INSTANCES}/{id}?force=true"),
                    ADMIN,
                    None,
                );
                assert_eq!(r.status, 204, "{}", r.text);
            }
            continue;
        }
        assert!(
            progress["progress"]["bytesTotal"].as_u64() >= Some(1 << 30),
            "{progress}"
        );
        let c = s.call("DELETE", &op, ADMIN, None);
        if c.status == 409 {
            // The copy ended first: the create stands; remove it, try again.
            let done = s.get(&format!("{op}?wait=60")).json;
            assert_eq!(done["status"], "succeeded", "{done}");
            let id = done["result"]["id"].as_str().unwrap_or_default().to_owned();
            let r = s.call(
                "DELETE",
                &format!("{INSTANCES}/{id}?force=true"),
                ADMIN,
                None,
            );
            assert_eq!(r.status, 204, "{}", r.text);
            continue;
        }
        assert_eq!(c.status, 200, "{}", c.text);
        cancelled = Some(c.json);
        break;
    }
    let op = cancelled.expect("a copy was cancelled in one of the tries");
    assert_eq!(op["status"], "cancelled", "{op}");
    assert_eq!(op["error"]["error"]["code"], "OPERATION_CANCELLED");
    assert_eq!(s.get(INSTANCES).json["total"], 0, "no instance");
    assert!(f.domains().is_empty(), "no domain: {:?}", f.domains());
    assert_eq!(f.volumes(), volumes_before, "no volume left");
}
