//! The spec's curl examples, as the README gives them, run with curl and `$TOKEN`
//! against the real binary with the real docker and kvm plugins.
//!
//! Two changes are made to the text, and only these: the server's address (the test
//! server listens on a free port, not 8080), and the instance names `nginx-web` and
//! `ubuntu-vm`, made unique so that runs in parallel do not collide on the engine's and
//! libvirt's global names. The stop example is run as written (an id that does not
//! exist) and again with the id of a running instance. The image `nginx:alpine` is the
//! local busybox test image under that tag when the engine does not have it (no
//! registry is reached); the tag is removed afterwards.

use std::process::Command;

use unicompute_tests::docker::{docker, ensure_image, ContainerGuard, FileLock, TEST_IMAGE};
use unicompute_tests::kvm::KvmFixture;
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// The shell commands of the README's examples block, comments left out.
fn readme_examples() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("## Examples (the spec's, as written)")
        .nth(1)
        .expect("the examples section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the examples block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            if !current.trim().is_empty() {
                commands.push(std::mem::take(&mut current));
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    if !current.trim().is_empty() {
        commands.push(current);
    }
    commands
}

/// Runs one example with bash, `$TOKEN` set; curl adds the status code as a last line.
fn run(command: &str, base: &str) -> (u16, Value) {
    let script = format!(
        "curl() {{ command curl -sS -w '\\n%{{http_code}}' \"$@\"; }}\n{}",
        command.replace("http://localhost:8080", base)
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("TOKEN", ADMIN)
        // Loopback only: curl must not go through a proxy from the environment.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = text.trim_end().rsplit_once('\n').expect("status line");
    let status = status.trim().parse().expect("status code");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// `nginx:alpine` as the local test image, unless the engine has the real one.
struct NginxTag(bool);

impl NginxTag {
    fn ensure() -> NginxTag {
        ensure_image();
        if docker(&["image", "inspect", "nginx:alpine"]).0 {
            return NginxTag(false);
        }
        assert!(docker(&["tag", TEST_IMAGE, "nginx:alpine"]).0, "docker tag");
        NginxTag(true)
    }
}

impl Drop for NginxTag {
    fn drop(&mut self) {
        if self.0 {
            let _ = docker(&["rmi", "nginx:alpine"]);
        }
    }
}

#[test]
fn the_spec_curl_examples_work_as_written() {
    let examples = readme_examples();
    assert_eq!(examples.len(), 4, "{examples:#?}");
    assert!(examples.iter().all(|c| c.starts_with("curl ")));

    let _engine = FileLock::engine_shared();
    unicompute_tests::docker::sweep_stale();
    let _tag = NginxTag::ensure();
    let kvm = KvmFixture::new();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker"), workspace_plugin("kvm")],
        toml: format!(
            "[backends.docker]\nplugin = \"docker\"\n[backends.kvm]\nplugin = \"kvm\"\n{}",
            kvm.settings_toml()
        ),
        ..Default::default()
    });
    let web = owned(unicompute_tests::docker::SPEC_EXAMPLE_NAME);
    let _web_guard = ContainerGuard(web.clone());
    let vm = format!("{}-ubuntu-vm", kvm.prefix);

    // Create a Docker container.
    let (status, c) = run(
        &examples[0].replace("\"nginx-web\"", &format!("\"{web}\"")),
        &s.base,
    );
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["name"], web.as_str());
    assert_eq!(c["backend"], "docker");
    assert_eq!(c["type"], "container");
    assert_eq!(c["state"], "created");
    assert_eq!(c["config"]["image"], "nginx:alpine");
    assert_eq!(c["resources"]["memory"]["limit"], 536870912u64);
    let (ok, inspect) = docker(&["inspect", &web]);
    assert!(ok, "the container exists");
    let inspect: Value = serde_json::from_str(&inspect).expect("inspect");
    assert_eq!(inspect[0]["HostConfig"]["NanoCpus"], 1_000_000_000u64);

    // Create a KVM virtual machine.
    let (status, v) = run(
        &examples[1].replace("\"ubuntu-vm\"", &format!("\"{vm}\"")),
        &s.base,
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["name"], vm.as_str());
    assert_eq!(v["type"], "vm");
    assert_eq!(v["resources"]["storage"]["totalSpace"], 21474836480u64);
    assert_eq!(kvm.domains(), vec![vm.clone()]);

    // A running instance for the list and stop examples: a shell that ends on SIGTERM.
    let runner = unique("runner");
    let _runner_guard = ContainerGuard(runner.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": runner, "backend": "docker", "start": true,
            "config": {"image": TEST_IMAGE,
                       "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let runner_id = r.json["id"].as_str().expect("id").to_owned();

    // List all running instances: ours that runs is there, the two created ones are
    // not, and everything listed runs. (Other running containers of a backend named
    // `docker` on this engine, from another server, would be listed too: not asserted
    // away.)
    let running_names = |list: &Value| -> Vec<String> {
        let items = list["instances"].as_array().expect("instances");
        assert!(items.iter().all(|i| i["state"] == "running"), "{list}");
        items
            .iter()
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (status, list) = run(&examples[2], &s.base);
    assert_eq!(status, 200, "{list}");
    let names = running_names(&list);
    assert!(names.contains(&runner), "{list}");
    assert!(!names.contains(&web) && !names.contains(&vm), "{list}");

    // Stop an instance gracefully: as written, the id does not exist.
    let (status, e) = run(&examples[3], &s.base);
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["code"], "INSTANCE_NOT_FOUND");
    // With a real id: stopped by SIGTERM, well before the 60 s timeout.
    let (status, stopped) = run(&examples[3].replace("instance-123", &runner_id), &s.base);
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped");
    let (_, list) = run(&examples[2], &s.base);
    assert!(!running_names(&list).contains(&runner), "{list}");

    // Clean up through the API, then check nothing is left.
    for id in [&c["id"], &v["id"], &json!(runner_id)] {
        let path = format!("{INSTANCES}/{}", id.as_str().expect("id"));
        assert_eq!(s.call("DELETE", &path, ADMIN, None).status, 204);
    }
    assert!(!docker(&["inspect", &web]).0);
    assert!(kvm.domains().is_empty());
}
