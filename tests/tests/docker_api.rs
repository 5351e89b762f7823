//! The Docker backend end to end: the real binary, the real docker plugin, the real
//! engine. Only the local busybox image; no traffic to containers or published ports
//! (networking is checked by inspecting the container).

use std::time::{Duration, Instant};

use unicompute_tests::docker::{
    backend_name, docker, ensure_image, sweep_stale, ContainerGuard, FileLock, TEST_IMAGE,
};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// A server whose docker backend, named `backend`, allows bind mounts under
/// `allowed` and keeps its pins and state in `allowed/.pins` and `allowed/.state`;
/// `extra` is more config.
fn server_named(allowed: &std::path::Path, backend: &str, extra: &str) -> (Server, FileLock) {
    // The engine lock first: the engine restart test may have dockerd down.
    let lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!(
            "[backends.{backend}]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n{extra}",
            allowed.display()
        ),
        ..Default::default()
    });
    (s, lock)
}

/// The spec's examples use the backend name `docker`.
fn server(allowed: &std::path::Path) -> (Server, FileLock) {
    server_named(allowed, "docker", "")
}

/// A server with a docker backend of its own name (servers in parallel do not see
/// each other's containers): the server, the lock, the backend's name.
fn own_server(allowed: &std::path::Path, extra: &str) -> (Server, FileLock, String) {
    let backend = backend_name();
    let (s, lock) = server_named(allowed, &backend, extra);
    (s, lock, backend)
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

fn started_at(name: &str) -> String {
    inspect(name)["State"]["StartedAt"]
        .as_str()
        .expect("StartedAt")
        .to_owned()
}

#[test]
fn lifecycle_usage_and_a_container_removed_by_hand() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock, backend) = own_server(&tmp.0, "");
    let name = unique("life");
    let _guard = ContainerGuard(name.clone());
    // Busy for 20 s (the usage check), then `sleep` as PID 1, which ignores SIGTERM.
    let busy = "t=$(($(date +%s)+20)); while [ $(date +%s) -lt $t ]; do :; done; exec sleep 1000";
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": backend, "start": true,
            "config": {"image": TEST_IMAGE, "command": ["sh", "-c", busy]},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["state"], "running");
    let id = r.json["id"].as_str().expect("id").to_owned();
    let one = format!("{INSTANCES}/{id}");
    assert_eq!(
        r.location.as_deref(),
        Some(one.as_str()),
        "Location of the create"
    );
    assert_eq!(
        s.get(r.location.as_deref().expect("location")).json["id"],
        id.as_str()
    );
    assert_eq!(inspect(&name)["State"]["Running"], true);

    // cluster status: this backend's one running instance and its core
    let c = s.get("/api/v1/compute/cluster/status");
    assert_eq!(c.json["backends"][&backend]["instances"], 1, "{}", c.text);
    assert_eq!(
        c.json["backends"][&backend]["resources"]["cpu"]["used"], 1,
        "{}",
        c.text
    );
    assert_eq!(
        c.json["backends"][&backend]["resources"]["memory"]["used"], 134217728u64,
        "{}",
        c.text
    );
    assert_eq!(c.json["totalInstances"], 1, "{}", c.text);

    let u = s.get(&format!("{one}/usage"));
    assert_eq!(u.status, 200, "{}", u.text);
    assert!(
        u.json["memory"]["used"].as_u64().is_some_and(|m| m > 0),
        "{}",
        u.text
    );
    assert!(u.json["network"]["rxBytes"].is_u64());
    // The busy loop shows: cpu.usage (percent of the one core) moves well above idle.
    let mut seen = Vec::new();
    let busy_seen = wait_for(Duration::from_secs(15), || {
        let u = s.get(&format!("{one}/usage"));
        let cpu = u.json["cpu"]["usage"].as_f64()?;
        seen.push(cpu);
        (cpu > 20.0 && cpu <= 100.0).then_some(())
    });
    assert!(busy_seen.is_some(), "cpu.usage under load: {seen:?}");

    let r = s.call("PUT", &format!("{one}/pause"), OPERATOR, None);
    assert_eq!(r.json["state"], "paused");
    assert_eq!(inspect(&name)["State"]["Paused"], true);
    // a paused container is not deleted without force
    let r = s.call("DELETE", &one, ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    let r = s.call("PUT", &format!("{one}/unpause"), OPERATOR, None);
    assert_eq!(r.json["state"], "running");
    let r = s.call(
        "PUT",
        &one,
        ADMIN,
        Some(&json!({"resources": {"cpu": {"cores": 2}, "memory": {"limit": 268435456}}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["resources"]["cpu"]["cores"], 2);
    let c = inspect(&name);
    assert_eq!(c["HostConfig"]["Memory"], 268435456u64);
    assert_eq!(c["HostConfig"]["NanoCpus"], 2_000_000_000u64);
    // labels cannot change on a container: 501, and nothing changed
    let r = s.call(
        "PUT",
        &one,
        ADMIN,
        Some(&json!({"metadata": {"labels": {"new": "label"}}})),
    );
    assert_eq!(
        (r.status, r.code()),
        (501, "OPERATION_NOT_SUPPORTED"),
        "{}",
        r.text
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    // sleep as PID 1 ignores SIGTERM: the graceful stop ends hard at the timeout
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        OPERATOR,
        Some(&json!({"timeout": 1})),
    );
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    assert_eq!(inspect(&name)["State"]["Running"], false);
    let c = s.get("/api/v1/compute/cluster/status");
    assert_eq!(
        c.json["backends"][&backend]["resources"]["cpu"]["used"], 0,
        "{}",
        c.text
    );
    assert_eq!(c.json["backends"][&backend]["instances"], 1, "{}", c.text);
    let before = started_at(&name);
    let r = s.call("PUT", &format!("{one}/restart"), OPERATOR, None);
    assert_eq!(r.json["state"], "running");
    let after = started_at(&name);
    assert!(
        after > before,
        "the engine started it again: {before} -> {after}"
    );
    // and a restart of a running one restarts it in the engine too
    let r = s.call(
        "PUT",
        &format!("{one}/restart"),
        OPERATOR,
        Some(&json!({"timeout": 1})),
    );
    assert_eq!(r.json["state"], "running", "{}", r.text);
    let again = started_at(&name);
    assert!(
        again > after,
        "restart of a running container: {after} -> {again}"
    );
    let r = s.call("DELETE", &one, ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    assert_eq!(inspect(&name)["State"]["Running"], true);

    // removed by hand: the API sees it through the engine's events
    assert!(docker(&["rm", "-f", &name]).0);
    let gone = wait_for(Duration::from_secs(5), || {
        (s.get(&one).status == 404).then_some(())
    });
    assert!(gone.is_some(), "still listed after docker rm");
}

#[test]
fn a_graceful_stop_ends_by_the_containers_own_exit() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock, backend) = own_server(&tmp.0, "");
    let name = unique("trap");
    let _guard = ContainerGuard(name.clone());
    let body = json!({
        "name": name, "backend": backend,
        "config": {"image": TEST_IMAGE,
                   "command": ["sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done"]}
    });
    let r = s.call("POST", INSTANCES, ADMIN, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text);
    let one = format!("{INSTANCES}/{}", r.json["id"].as_str().expect("id"));
    // the name is taken
    let r = s.call("POST", INSTANCES, ADMIN, Some(&body));
    assert_eq!(
        (r.status, r.code()),
        (409, "INSTANCE_ALREADY_EXISTS"),
        "{}",
        r.text
    );
    // a created container cannot be paused
    let r = s.call("PUT", &format!("{one}/pause"), OPERATOR, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    let r = s.call("PUT", &format!("{one}/start"), OPERATOR, None);
    assert_eq!(r.json["state"], "running", "{}", r.text);

    // The trap answers SIGTERM with exit 42: the stop ends then, long before the
    // 30 s timeout (a wide margin, not a benchmark).
    let t = Instant::now();
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        OPERATOR,
        Some(&json!({"timeout": 30})),
    );
    let took = t.elapsed();
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    assert!(
        took < Duration::from_secs(15),
        "the graceful stop took {took:?}"
    );
    let state = &inspect(&name)["State"];
    assert_eq!(state["ExitCode"], 42, "ended by its own exit: {state}");
    assert_eq!(state["OOMKilled"], false);

    // a running container is deleted with force=true only
    let r = s.call("PUT", &format!("{one}/start"), OPERATOR, None);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    let r = s.call("DELETE", &one, ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    assert!(docker(&["inspect", &name]).0);
    let r = s.call("DELETE", &format!("{one}?force=true"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!docker(&["inspect", &name]).0, "container removed");
    assert_eq!(s.get(&one).status, 404);
}

#[test]
fn a_stop_without_a_body_waits_30_seconds_then_stops_hard() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock, backend) = own_server(&tmp.0, "");
    let name = unique("deaf");
    let _guard = ContainerGuard(name.clone());
    // sleep as PID 1 ignores SIGTERM: only the hard stop ends it
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": backend, "start": true,
                     "config": {"image": TEST_IMAGE, "command": ["sleep", "1000"]}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let one = format!("{INSTANCES}/{}", r.json["id"].as_str().expect("id"));
    let t = Instant::now();
    let r = s.call("PUT", &format!("{one}/stop"), OPERATOR, None);
    let took = t.elapsed();
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    // the default timeout is 30 s: not much sooner, not much later (wide margins)
    assert!(
        took >= Duration::from_secs(25) && took < Duration::from_secs(60),
        "the hard stop came after {took:?}"
    );
    assert_eq!(inspect(&name)["State"]["ExitCode"], 137, "killed");
}

#[test]
fn a_container_killed_by_hand_reaches_a_subscriber_as_a_state_change() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock, backend) = own_server(&tmp.0, "");
    let name = unique("killed");
    let _guard = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": backend,
                     "config": {"image": TEST_IMAGE, "command": ["sleep", "1000"]}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let one = format!("{INSTANCES}/{id}");
    let r = s.call("PUT", &format!("{one}/start"), OPERATOR, None);
    assert_eq!(r.json["state"], "running", "{}", r.text);

    let sub = unicompute_tests::sse::Sse::open(
        &s.base,
        &format!("/api/v1/compute/events?instance={id}"),
        VIEWER,
        &[],
    );
    assert_eq!(sub.status, 200, "{}", sub.head);
    // The subscription is in place once its first comment arrived.
    let first = sub.next_frame(Duration::from_secs(10)).expect("subscribed");
    assert_eq!(first.comment.as_deref(), Some("subscribed"));
    // By hand, behind the server's back: SIGKILL, exit code 137, no error.
    assert!(docker(&["kill", &name]).0, "docker kill");
    // A liveness bound, not a timing: the engine's event comes in well under a second.
    let frames = sub
        .until(Duration::from_secs(30), |f| {
            f.event.as_deref() == Some("instance.state-changed") && f.data["source"] == "backend"
        })
        .expect("a state change from the backend after docker kill");
    let e = &frames.last().expect("the event").data;
    assert_eq!(e["instanceId"], id.as_str(), "{e}");
    assert_eq!(e["backend"], backend.as_str(), "{e}");
    assert_eq!(e["from"], "running", "{e}");
    // A container killed by a signal has exited without an engine error: stopped.
    assert_eq!(e["to"], "stopped", "{e}");
    assert_eq!(e["instance"]["state"], "stopped", "{e}");
    // What the event says is what the API says.
    assert_eq!(s.get(&one).json["state"], "stopped");
    assert_eq!(inspect(&name)["State"]["ExitCode"], 137, "killed");
    let r = s.call("DELETE", &one, ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!docker(&["inspect", &name]).0, "container removed");
}

#[test]
fn a_failed_create_leaves_no_container() {
    let tmp = TempDir::new("uc-dock");
    let (s, _lock, backend) = own_server(&tmp.0, "");
    let name = unique("nopull");
    let _guard = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": backend,
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
        Some(&json!({"name": name, "backend": backend, "config": {"image": TEST_IMAGE}})),
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
    // A second docker backend on a socket nobody listens on: the engine is "down".
    let dead = format!("{}-dead", backend_name());
    let (s, _lock, backend) = own_server(
        &tmp.0,
        &format!(
            "[backends.{dead}]\nplugin = \"docker\"\nendpoint = \"unix://{}/no-engine.sock\"\n",
            tmp.0.display()
        ),
    );
    let r = s.get(&format!("/api/v1/compute/backends/{backend}/info"));
    assert_eq!(r.json["status"], "running", "{}", r.text);
    assert_eq!(r.json["type"], "docker");
    assert!(r.json["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(r.json["supportedTypes"], json!(["container"]));
    // the health check runs every second: its lastCheck moves
    let first = r.json["healthCheck"]["lastCheck"]
        .as_str()
        .expect("lastCheck")
        .to_owned();
    let moved = wait_for(Duration::from_secs(10), || {
        let r = s.get(&format!("/api/v1/compute/backends/{backend}/info"));
        let now = r.json["healthCheck"]["lastCheck"].as_str()?.to_owned();
        (now > first).then_some(())
    });
    assert!(moved.is_some(), "healthCheck.lastCheck stays at {first}");
    let r = s.get("/api/v1/compute/cluster/status");
    assert_eq!(r.json["backends"][&backend]["status"], "healthy");
    assert!(r.json["backends"][&backend]["resources"]["cpu"]["total"]
        .as_u64()
        .is_some_and(|c| c >= 1));
    assert_eq!(r.json["backends"][&backend]["instances"], 0, "{}", r.text);
    // one of two backends down: degraded
    assert_eq!(
        r.json["backends"][&dead]["status"], "unavailable",
        "{}",
        r.text
    );
    assert_eq!(r.json["health"], "degraded", "{}", r.text);
    let r = s.get(&format!("/api/v1/compute/backends/{backend}/images"));
    assert!(r.text.contains("unicompute-test-busybox"), "{}", r.text);

    // the engine down: 503 in the envelope, with Retry-After, naming the backend
    let name = unique("down");
    let _guard = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": dead, "config": {"image": TEST_IMAGE}})),
    );
    assert_eq!(
        (r.status, r.code()),
        (503, "BACKEND_UNAVAILABLE"),
        "{}",
        r.text
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.retry_after.as_deref(), Some("5"));
    assert_eq!(r.json["error"]["details"]["backend"], dead.as_str());
    // the name was not kept by the failed create
    assert_eq!(s.get(&format!("{INSTANCES}/name/{name}")).status, 404);

    let cfg = tmp.0.join("check.toml");
    std::fs::write(&cfg, format!("[instance]\nconfig = {{ image = \"{TEST_IMAGE}\", command = [\"sleep\", \"1000\"] }}\nstop_timeout = 2\n")).expect("write");
    let out = std::process::Command::new(host_binary())
        .args(["plugins", "check"])
        .arg(workspace_plugin("docker"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // What the check made goes, also when an assertion below fails.
    let leftovers = CheckLeftovers {
        output: text.clone(),
        remove: |prefix: &str| {
            let (_, names) = docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("name={prefix}"),
                "--format",
                "{{.Names}}",
            ]);
            for n in names.lines() {
                let _ = docker(&["rm", "-f", "-v", n]);
            }
        },
    };
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{text}"
    );
    // The engine keeps the container: a new backend finds it as it was.
    assert!(
        text.contains("PASS  a new backend from the same settings keeps the instance (durability)"),
        "{text}"
    );
    let prefix = text
        .lines()
        .find_map(|l| l.strip_prefix("NAME  "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the check names what it makes: {text}"))
        .to_owned();
    let (_, left) = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={prefix}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(left.is_empty(), "check left {left}");
    drop(leftovers);
}

#[test]
fn a_server_whose_only_backend_is_down_is_unhealthy() {
    let tmp = TempDir::new("uc-dock");
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!(
            "[backends.gone]\nplugin = \"docker\"\nendpoint = \"unix://{}/no-engine.sock\"\n",
            tmp.0.display()
        ),
        ..Default::default()
    });
    let r = s.get("/api/v1/compute/cluster/status");
    assert_eq!(
        r.json["backends"]["gone"]["status"], "unavailable",
        "{}",
        r.text
    );
    assert_eq!(r.json["health"], "unhealthy", "{}", r.text);
    let r = s.get("/api/v1/compute/backends/gone/images");
    assert_eq!(
        (r.status, r.code()),
        (503, "BACKEND_UNAVAILABLE"),
        "{}",
        r.text
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
}
