//! A property-based fuzz of the real server from its own OpenAPI document:
//! Schemathesis (pinned, from PyPI, installed into a venv under the target
//! directory and reused) against the debug binary with the real docker and kvm
//! plugins. Generated bodies stay on this machine: a `before_call` hook replaces every
//! create's `config` with a local one (the imported busybox image, never pulled; a
//! qemu-img template in a private directory), so no image name can reach a registry,
//! no bind mount or port is asked for. Backends and the storage pool have unique names,
//! so the fuzzer sees nothing of other tests; every instance it made is deleted through
//! the API at the end and leftovers are swept by label (docker) and pool (kvm).

use std::path::PathBuf;
use std::process::Command;

use unicompute_tests::docker::{docker, ensure_image, FileLock};
use unicompute_tests::kvm::{virsh, KvmFixture};
use unicompute_tests::*;

/// The pinned Schemathesis.
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The venv with Schemathesis, made once per target directory.
fn venv() -> PathBuf {
    python_venv(SCHEMATHESIS, "st")
}

const HOOKS: &str = r#"
import schemathesis

DOCKER = {"image": "unicompute-test-busybox:latest", "command": ["sleep", "300"]}
KVM = {"image": "ubuntu-22.04", "networkType": "none"}
KVM_BACKENDS = {"@KVM@"}

@schemathesis.hook
def before_call(context, case, kwargs):
    # Every create's config is a local one, whatever was generated: no pull, no
    # bind mount, no published port.
    if case.operation.definition.raw.get("operationId") != "createInstance":
        return
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("config", {}), dict):
        backend = body.get("backend")
        kvm = isinstance(backend, str) and backend in KVM_BACKENDS
        body["config"] = dict(KVM if kvm else DOCKER)
        # The spec's example names are the README's: never collide with its test.
        if body.get("name") in ("nginx-web", "ubuntu-vm"):
            body["name"] = body["name"] + "-fz"
"#;

/// Every check, with the statuses each operation may answer to data its schema calls
/// valid (`positive_data_acceptance`): 2xx everywhere, and only what the state of the
/// server or of the host explains:
///
/// - 404 `INSTANCE_NOT_FOUND` on every operation on an instance: a well-formed id that
///   names nothing (or an instance the stateful phase deleted);
/// - 409: `INSTANCE_ALREADY_EXISTS` at create (a name taken), `INVALID_STATE` where the
///   state table refuses (pause, unpause; a delete of an active instance without `force`;
///   a start of a paused Docker container, which must be unpaused);
/// - 422 `RESOURCE_LIMIT_EXCEEDED` at create and update: a size the backend cannot give
///   (more cores or memory than the host, a disk beyond the pool or the data root; less
///   memory than the backend's minimum, a KVM disk below its template or its current
///   size), which no schema bound can say;
/// - 501 `OPERATION_NOT_SUPPORTED` at update: the contract's answer of a backend that
///   cannot do it (Docker cannot change the labels of a container).
///
/// Never 400: a 400 to schema-valid data is a gap of the document or a server defect.
///
/// `ensure_resource_availability` is off for `getInstanceByName`: the stateful phase
/// follows the create's links to `DELETE /instances/{id}` and then to
/// `GET /instances/name/{name}`, and the check (Schemathesis 4.32.5,
/// `resource_was_deleted`) counts a DELETE as removing a resource only when its path is
/// a prefix of the read's: a delete by id does not explain, to it, the 404 of a read by
/// name of the deleted instance. Every read by id is still checked. The checks are
/// chosen here, not with `--checks all` on the command line, which would override the
/// per-operation settings.
const CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "501"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx"]

[[operations]]
include-operation-id = "createInstance"
checks.positive_data_acceptance.expected-statuses = ["2xx", "409", "422"]

[[operations]]
include-operation-id = "updateInstance"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422", "501"]

[[operations]]
include-operation-id = ["deleteInstance", "startInstance", "pauseInstance", "unpauseInstance"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "409"]

[[operations]]
include-operation-id = ["getInstance", "getInstanceUsage", "stopInstance", "restartInstance"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "404"]

[[operations]]
include-operation-id = "getInstanceByName"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404"]
checks.ensure_resource_availability.enabled = false
"#;

/// Deletes every instance the server has, then sweeps what is left on the engines.
struct Sweep<'a> {
    server: &'a Server,
    docker_backend: String,
    pool: String,
}

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        let r = self.server.get("/api/v1/compute/instances?pageSize=100");
        for _ in 0..20 {
            let r = self.server.get("/api/v1/compute/instances?pageSize=100");
            let Some(list) = r.json["instances"].as_array().filter(|l| !l.is_empty()) else {
                break;
            };
            for i in list {
                let id = i["id"].as_str().unwrap_or_default();
                self.server.call(
                    "DELETE",
                    &format!("/api/v1/compute/instances/{id}?force=true"),
                    ADMIN,
                    None,
                );
            }
        }
        drop(r);
        let (_, ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.unicompute.backend={}", self.docker_backend),
        ]);
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
        let (_, names) = virsh(&["list", "--all", "--name"]);
        for d in names.lines().filter(|l| !l.is_empty()) {
            if virsh(&["dumpxml", d]).1.contains(&self.pool) {
                let _ = virsh(&["destroy", d]);
                let _ = virsh(&["undefine", d, "--nvram"]);
            }
        }
    }
}

#[test]
fn schemathesis_finds_nothing_against_the_real_backends() {
    let venv = venv();
    let _lock = FileLock::engine_shared();
    ensure_image();
    let kvm = KvmFixture::new();
    let scratch = TempDir::new("uc-fz");
    let docker_backend = unique("ucfz-docker");
    let kvm_backend = unique("ucfz-kvm");
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker"), workspace_plugin("kvm")],
        toml: format!(
            "[backends.{docker_backend}]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n[backends.{kvm_backend}]\nplugin = \"kvm\"\n{1}",
            scratch.0.display(),
            kvm.settings_toml()
        ),
        // Stops are graceful for at most 2 s (a KVM guest without an OS never
        // answers ACPI), so that every call is answered in seconds.
        env: vec![("UNICOMPUTE_SERVER__MAX_STOP_TIMEOUT_SECS".into(), "2".into())],
        ..Default::default()
    });
    let _sweep = Sweep {
        server: &s,
        docker_backend: docker_backend.clone(),
        pool: kvm.pool.clone(),
    };
    std::fs::write(
        s.dir.0.join("uc_fz_hooks.py"),
        HOOKS.replace("@KVM@", &kvm_backend),
    )
    .expect("hooks");
    std::fs::write(s.dir.0.join("schemathesis.toml"), CONFIG).expect("config");
    let started = std::time::Instant::now();
    let out = Command::new(venv.join("bin").join("st"))
        .current_dir(&s.dir.0)
        .env("SCHEMATHESIS_HOOKS", "uc_fz_hooks")
        .env("PYTHONPATH", &s.dir.0)
        .env("NO_PROXY", "127.0.0.1")
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(format!("{}/api/v1/openapi.json", s.base))
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", "3", "--seed", "1", "--max-time", "200"])
        .args([
            "--request-timeout",
            "60",
            "--no-color",
            "--generation-database",
            "none",
        ])
        .args(["--workers", "1"])
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "schemathesis ran {:?}\n{}",
        started.elapsed(),
        text.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
