//! A client generated from the served OpenAPI document works: openapi-python-client
//! (pinned, from PyPI, installed into a venv under the target directory and reused)
//! generates a Python package from `GET /api/v1/openapi.json`, and a script drives
//! create -> start -> usage -> stop -> delete with it against the real binary and the
//! fake plugin. The server's own view is checked after each step.

use std::path::PathBuf;
use std::process::Command;

use unicompute_tests::*;

/// The pinned generator.
const GENERATOR: &str = "openapi-python-client==0.29.1";

fn venv() -> PathBuf {
    python_venv(GENERATOR, "openapi-python-client")
}

const SCRIPT: &str = r#"
import sys
from unicompute_client import AuthenticatedClient
from unicompute_client.api.instances import create_instance, delete_instance, get_instance_usage
from unicompute_client.api.lifecycle import start_instance, stop_instance
from unicompute_client.models import CreateInstanceRequest, Instance, StopRequest

base, token, name = sys.argv[1], sys.argv[2], sys.argv[3]
c = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)
body = CreateInstanceRequest.from_dict(
    {"name": name, "backend": "fake", "config": {"image": "busybox"},
     "resources": {"cpu": {"cores": 2}, "memory": {"limit": 268435456}}})
r = create_instance.sync_detailed(client=c, body=body)
assert r.status_code == 201, r.status_code
inst = r.parsed
assert isinstance(inst, Instance), type(inst)
print("created", inst.id, inst.state)
print("started", start_instance.sync(inst.id, client=c).state)
u = get_instance_usage.sync(inst.id, client=c)
print("usage", u.cpu.cores, u.memory.limit)
stop = StopRequest.from_dict({"force": False, "timeout": 5})
print("stopped", stop_instance.sync(inst.id, client=c, body=stop).state)
r = delete_instance.sync_detailed(inst.id, client=c)
print("deleted", r.status_code)
"#;

#[test]
fn a_python_client_generated_from_the_document_drives_an_instance() {
    let venv = venv();
    let s = Server::fake("");
    let doc = s.get("/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    let work = TempDir::new("gen-client");
    let doc_path = work.0.join("openapi.json");
    std::fs::write(&doc_path, &doc.text).expect("write the document");
    let out = Command::new(venv.join("bin").join("openapi-python-client"))
        .arg("generate")
        .arg("--path")
        .arg(&doc_path)
        .arg("--output-path")
        .arg(work.0.join("client"))
        .arg("--overwrite")
        .output()
        .expect("openapi-python-client");
    assert!(
        out.status.success(),
        "generation failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let name = unique("gen-client");
    let out = Command::new(venv.join("bin").join("python"))
        .arg("-c")
        .arg(SCRIPT)
        .arg(&s.base)
        .arg(ADMIN)
        .arg(&name)
        .env("PYTHONPATH", work.0.join("client"))
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the generated client failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let id = lines[0]
        .strip_prefix("created ")
        .and_then(|l| l.strip_suffix(" created"))
        .expect("created ID created");
    assert!(id.starts_with("i-"), "{id}");
    assert_eq!(
        &lines[1..],
        [
            "started running",
            "usage 2 268435456",
            "stopped stopped",
            "deleted 204"
        ]
    );
    // The server agrees: the instance is gone.
    let r = s.get(&format!("/api/v1/compute/instances/{id}"));
    assert_eq!((r.status, r.code()), (404, "INSTANCE_NOT_FOUND"));
}
