//! The KVM backend end to end: the real binary, the real kvm plugin, libvirtd with
//! QEMU/KVM. Guests have no OS (an empty template); networking is checked in the
//! domain XML only.

use std::process::Command;

use unicompute_tests::kvm::{virsh, KvmFixture};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

fn server(f: &KvmFixture) -> Server {
    Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("kvm")],
        toml: format!("[backends.kvm]\nplugin = \"kvm\"\n{}", f.settings_toml()),
        ..Default::default()
    })
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
