//! The Docker backend end to end: the real binary, the real docker plugin, the real
//! engine. Only the local busybox image; no traffic to containers or published ports
//! (networking is checked by inspecting the container).

use std::time::Duration;

use unicompute_tests::docker::{docker, ensure_image, ContainerGuard, FileLock, TEST_IMAGE};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// A server whose docker backend allows bind mounts under `allowed` and keeps its
/// pins and state in `allowed/.pins` and `allowed/.state`.
fn server(allowed: &std::path::Path) -> (Server, FileLock) {
    // The engine lock first: the engine restart test may have dockerd down.
    let lock = FileLock::engine_shared();
    ensure_image();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!(
            "[backends.docker]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n",
            allowed.display()
        ),
        ..Default::default()
    });
    (s, lock)
}

/// Detaches whatever is still mounted under a pin directory when dropped (a failed
/// test), before the directory holding it is removed.
struct PinGuard(std::path::PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = format!("{}/", self.0.display());
        for m in table.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(&prefix) {
                let _ = std::process::Command::new("umount")
                    .args(["-l", m])
                    .status();
            }
        }
    }
}

fn inspect(name: &str) -> Value {
    let (ok, out) = docker(&["inspect", name]);
    assert!(ok, "docker inspect {name}");
    serde_json::from_str::<Value>(&out).expect("json")[0].clone()
}

#[test]
fn the_spec_docker_example_creates_the_container_as_asked() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock) = server(&tmp.0);
    let name = unique("nginx-web");
    let _guard = ContainerGuard(name.clone());
    // The spec's example with the local image in place of nginx:alpine.
    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({
        "name": name, "backend": "docker",
        "config": {"image": TEST_IMAGE, "ports": ["8080:80"], "env": ["NGINX_HOST=example.com"]},
        "resources": {"cpu": {"cores": 1}, "memory": {"limit": 536870912}}
    })));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["type"], "container");
    assert_eq!(r.json["backend"], "docker");
    assert_eq!(r.json["state"], "created");
    let id = r.json["id"].as_str().expect("id").to_owned();
    let c = inspect(&name);
    assert_eq!(c["HostConfig"]["NanoCpus"], 1_000_000_000u64);
    assert_eq!(c["HostConfig"]["Memory"], 536870912u64);
    assert_eq!(
        c["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
        "8080"
    );
    assert!(c["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .any(|e| e == "NGINX_HOST=example.com"));
    let labels = c["Config"]["Labels"].as_object().expect("labels");
    assert!(
        labels.values().any(|v| v == id.as_str()),
        "our id is a label: {labels:?}"
    );

    // listed and found by name through the API
    assert_eq!(
        s.get(&format!("{INSTANCES}/name/{name}")).json["id"],
        id.as_str()
    );
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/{id}"), ADMIN, None)
            .status,
        204
    );
    assert!(!docker(&["inspect", &name]).0, "container removed");
}

#[test]
fn the_spec_general_example_with_volumes_labels_and_storage() {
    let tmp = TempDir::new("uc-dock");
    let _pins = PinGuard(tmp.0.join(".pins"));
    let (s, _lock) = server(&tmp.0);
    let name = unique("my-instance");
    let _guard = ContainerGuard(name.clone());
    let data = tmp.0.join("data");
    std::fs::create_dir_all(&data).expect("dir");
    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({
        "name": name, "backend": "docker",
        "config": {"image": TEST_IMAGE, "env": ["KEY=value"], "volumes": [format!("{}:/data", data.display())]},
        "resources": {"cpu": {"cores": 2}, "memory": {"limit": 2147483648u64}, "storage": {"totalSpace": 10737418240u64}},
        "metadata": {"labels": {"app": "web", "env": "prod"}}
    })));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["resources"]["storage"]["totalSpace"], 10737418240u64);
    assert_eq!(r.json["metadata"]["labels"]["app"], "web");
    let c = inspect(&name);
    assert_eq!(c["Config"]["Labels"]["app"], "web");
    assert_eq!(c["HostConfig"]["NanoCpus"], 2_000_000_000u64);
    // The engine mounts the directory's pin (bind sources are pinned); the API shows
    // the path that was asked.
    let mounts = c["Mounts"].as_array().expect("mounts");
    let pin = tmp
        .0
        .join(".pins")
        .join(r.json["id"].as_str().expect("id"))
        .join("0");
    assert!(
        mounts
            .iter()
            .any(|m| m["Destination"] == "/data" && m["Source"] == pin.to_string_lossy().as_ref()),
        "{mounts:?}"
    );
    assert_eq!(
        r.json["config"]["volumes"][0],
        format!("{}:/data", data.display())
    );
    let id = r.json["id"].as_str().expect("id").to_owned();
    assert_eq!(
        s.get(&format!("{INSTANCES}?label=env=prod&backend=docker"))
            .json["total"],
        1
    );

    // a bind mount outside the allowlist is refused and leaves nothing
    let other = unique("escape");
    let _g2 = ContainerGuard(other.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": other, "backend": "docker",
            "config": {"image": TEST_IMAGE, "volumes": ["/etc:/host-etc"]}
        })),
    );
    assert_eq!((r.status, r.code()), (403, "FORBIDDEN"), "{}", r.text);
    assert!(!docker(&["inspect", &other]).0);

    // a bind source that does not exist is refused, naming it; so is a newline in it
    let missing = tmp.0.join("missing");
    for path in [
        missing.display().to_string(),
        format!("{}\nx", data.display()),
    ] {
        let r = s.call(
            "POST",
            INSTANCES,
            ADMIN,
            Some(&json!({
                "name": other, "backend": "docker",
                "config": {"image": TEST_IMAGE, "volumes": [format!("{path}:/m")]}
            })),
        );
        assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
        assert!(!docker(&["inspect", &other]).0);
        if !path.contains('\n') {
            assert!(r.text.contains(&path), "names the path: {}", r.text);
        }
    }

    // sizes beyond the host: 422 naming the field, never an engine error
    for resources in [
        json!({"storage": {"totalSpace": u64::MAX}}),
        json!({"memory": {"limit": u64::MAX}}),
        json!({"memory": {"limit": i64::MAX as u64 + 1}}),
    ] {
        let r = s.call(
            "POST",
            INSTANCES,
            ADMIN,
            Some(&json!({
                "name": other, "backend": "docker",
                "config": {"image": TEST_IMAGE}, "resources": resources
            })),
        );
        assert_eq!(
            (r.status, r.code()),
            (422, "RESOURCE_LIMIT_EXCEEDED"),
            "{resources}: {}",
            r.text
        );
        assert!(!docker(&["inspect", &other]).0);
    }

    // delete leaves no pin behind
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/{id}"), ADMIN, None)
            .status,
        204
    );
    assert!(!pin.exists(), "{} removed", pin.display());
}

#[test]
fn lifecycle_usage_and_a_container_removed_by_hand() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock) = server(&tmp.0);
    let name = unique("life");
    let _guard = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": "docker", "start": true,
            "config": {"image": TEST_IMAGE, "command": ["sleep", "1000"]},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["state"], "running");
    let one = format!("{INSTANCES}/{}", r.json["id"].as_str().expect("id"));
    assert_eq!(inspect(&name)["State"]["Running"], true);

    let u = s.get(&format!("{one}/usage"));
    assert_eq!(u.status, 200, "{}", u.text);
    assert!(
        u.json["memory"]["used"].as_u64().is_some_and(|m| m > 0),
        "{}",
        u.text
    );
    assert!(u.json["network"]["rxBytes"].is_u64());

    let r = s.call("PUT", &format!("{one}/pause"), OPERATOR, None);
    assert_eq!(r.json["state"], "paused");
    assert_eq!(inspect(&name)["State"]["Paused"], true);
    let r = s.call("PUT", &format!("{one}/unpause"), OPERATOR, None);
    assert_eq!(r.json["state"], "running");
    let r = s.call(
        "PUT",
        &one,
        ADMIN,
        Some(&json!({"resources": {"cpu": {"cores": 2}, "memory": {"limit": 268435456}}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(inspect(&name)["HostConfig"]["Memory"], 268435456u64);
    // sleep as PID 1 ignores SIGTERM: the graceful stop ends hard at the timeout
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        OPERATOR,
        Some(&json!({"timeout": 1})),
    );
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    assert_eq!(inspect(&name)["State"]["Running"], false);
    let r = s.call("PUT", &format!("{one}/restart"), OPERATOR, None);
    assert_eq!(r.json["state"], "running");

    // removed by hand: the API sees it through the engine's events
    assert!(docker(&["rm", "-f", &name]).0);
    let gone = wait_for(Duration::from_secs(5), || {
        (s.get(&one).status == 404).then_some(())
    });
    assert!(gone.is_some(), "still listed after docker rm");
}

#[test]
fn a_failed_create_leaves_no_container() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock) = server(&tmp.0);
    let name = unique("nopull");
    let _guard = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": "docker",
            // A registry on a closed loopback port: the pull fails without leaving
            // the host.
            "config": {"image": "127.0.0.1:9/unicompute-test-no-such-image:never"}
        })),
    );
    // The registry cannot be reached: the engine failed (502), not the request.
    assert_eq!((r.status, r.code()), (502, "BACKEND_ERROR"), "{}", r.text);
    assert!(
        r.text.contains("unicompute-test-no-such-image"),
        "the error names the image: {}",
        r.text
    );
    assert!(!docker(&["inspect", &name]).0);
    assert_eq!(s.get(&format!("{INSTANCES}/name/{name}")).status, 404);
    // the name is free again
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": "docker", "config": {"image": TEST_IMAGE}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/{id}"), ADMIN, None)
            .status,
        204
    );
}

#[test]
fn backend_info_cluster_status_and_plugins_check() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock) = server(&tmp.0);
    let r = s.get("/api/v1/compute/backends/docker/info");
    assert_eq!(r.json["status"], "running", "{}", r.text);
    assert_eq!(r.json["type"], "docker");
    assert!(r.json["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(r.json["supportedTypes"], json!(["container"]));
    let r = s.get("/api/v1/compute/cluster/status");
    assert_eq!(r.json["backends"]["docker"]["status"], "healthy");
    assert!(r.json["backends"]["docker"]["resources"]["cpu"]["total"]
        .as_u64()
        .is_some_and(|c| c >= 1));
    let r = s.get("/api/v1/compute/backends/docker/images");
    assert!(r.text.contains("unicompute-test-busybox"), "{}", r.text);

    let cfg = tmp.0.join("check.toml");
    std::fs::write(&cfg, format!("[instance]\nconfig = {{ image = \"{TEST_IMAGE}\", command = [\"sleep\", \"1000\"] }}\nstop_timeout = 2\n")).expect("write");
    let out = std::process::Command::new(host_binary())
        .args(["plugins", "check"])
        .arg(workspace_plugin("docker"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{text}"
    );
    let (_, left) = docker(&[
        "ps",
        "-a",
        "--filter",
        "name=uc-check-",
        "--format",
        "{{.Names}}",
    ]);
    assert!(left.is_empty(), "check left {left}");
}
