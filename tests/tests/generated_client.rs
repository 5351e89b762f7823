//! A client generated from the served OpenAPI document works: openapi-python-client
//! (pinned, from PyPI, installed into a venv under the target directory and reused)
//! generates a Python package from `GET /api/v1/openapi.json`, and a script drives
//! create -> start -> usage -> update -> stop -> delete with it against the real binary
//! and the fake plugin. The generator must not warn (a warning means a part of the
//! document it skipped or loosened). The server's own view is checked at the end.

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
from unicompute_client.api.instances import (
    create_instance, delete_instance, get_instance_usage, update_instance)
from unicompute_client.api.lifecycle import start_instance, stop_instance
from unicompute_client.models import (
    CreateInstanceRequest, Instance, ResourcesRequest, StopRequest, UpdateInstanceRequest)

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
# The update body is one typed model (its "at least one change" rule is a `not`).
upd = UpdateInstanceRequest.from_dict(
    {"resources": {"memory": {"limit": 536870912}}, "metadata": {"labels": {"gen": "client"}}})
assert isinstance(upd.resources, ResourcesRequest), type(upd.resources)
d = update_instance.sync(inst.id, client=c, body=upd).to_dict()
print("updated", d["resources"]["memory"]["limit"], d["metadata"]["labels"]["gen"])
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
    // Its post-hooks (`ruff check --fix`, `ruff format`) use the ruff installed with
    // it: the venv's bin first on PATH, else it warns "ruff is not in PATH".
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![venv.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let out = Command::new(venv.join("bin").join("openapi-python-client"))
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .arg("generate")
        .arg("--path")
        .arg(&doc_path)
        .arg("--output-path")
        .arg(work.0.join("client"))
        .arg("--overwrite")
        .output()
        .expect("openapi-python-client");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "generation failed:\n{said}");
    // Every schema became a model: the generator had nothing to warn about (it warns,
    // and still succeeds, when it has to skip or loosen a part of the document).
    assert!(
        !said.to_ascii_lowercase().contains("warning"),
        "the generator warned:\n{said}"
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
    assert_eq!(lines.len(), 6, "{text}");
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
            "updated 536870912 client",
            "stopped stopped",
            "deleted 204"
        ]
    );
    // The server agrees: the instance is gone.
    let r = s.get(&format!("/api/v1/compute/instances/{id}"));
    assert_eq!((r.status, r.code()), (404, "INSTANCE_NOT_FOUND"));
}
