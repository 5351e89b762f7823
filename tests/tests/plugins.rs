//! Third-party plugins: the conformance check, `plugins list`, and adding, enabling
//! and replacing a plugin while the server runs (one process throughout).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// `unicompute plugins check` with a temp dir of its own: the fake's and the example's
/// default records go there (and go with it), never shared by two runs at once.
fn check_cmd(tmp: &TempDir) -> Command {
    let mut cmd = Command::new(host_binary());
    cmd.env("TMPDIR", &tmp.0);
    cmd
}

fn check(file: &Path, config: Option<&Path>) -> (bool, String) {
    let tmp = TempDir::new("uc-check");
    let mut cmd = check_cmd(&tmp);
    cmd.arg("plugins").arg("check").arg(file);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().expect("run plugins check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn example_plugin(features: &str) -> std::path::PathBuf {
    build_external("examples/plugin-example", "unicompute_example", features)
}

#[test]
fn check_passes_on_the_fake_and_example_plugins() {
    for so in [fake_plugin(), example_plugin("")] {
        let (ok, out) = check(&so, None);
        assert!(ok, "{}: {out}", so.display());
        assert!(out.contains("PASS  load"), "{out}");
        assert!(out.contains("PASS  stop (graceful"), "{out}");
        assert!(out.contains("PASS  nothing is left"), "{out}");
        assert!(
            out.lines().any(|l| l.ends_with(" passed, 0 failed")),
            "{out}"
        );
    }
}

#[test]
fn check_covers_streams_where_a_plugin_offers_them() {
    let (ok, out) = check(&fake_plugin(), None);
    assert!(ok, "{out}");
    for step in [
        "PASS  logs without follow end",
        "PASS  logs of an unknown id are INSTANCE_NOT_FOUND",
        "PASS  a logs follow opens and closes",
        "PASS  exec echo: its output and exit code 0",
        "PASS  console opens and closes",
        "PASS  console of a stopped instance is INVALID_STATE",
        "PASS  exec of a stopped instance is INVALID_STATE",
    ] {
        assert!(out.contains(step), "{step} in: {out}");
    }
    // A plugin without streams (built before 1.3 or offering none) is told so.
    let (ok, out) = check(&example_plugin(""), None);
    assert!(ok, "{out}");
    assert!(
        out.contains("SKIP  logs: not offered by this backend"),
        "{out}"
    );
    assert!(!out.contains("PASS  logs"), "{out}");
}

#[test]
fn check_fails_on_a_broken_plugin_naming_the_step() {
    let broken = build_external("tests/fake-plugin", "unicompute_fake", "broken-stop");
    let (ok, out) = check(&broken, None);
    assert!(!ok, "{out}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line: {out}"));
    assert!(fail.contains("stop (graceful"), "{fail}");
    assert!(fail.contains("state is running"), "{fail}");
    // a file that is not a plugin fails at load
    let dir = TempDir::new("notplugin");
    let junk = dir.0.join("junk.so");
    std::fs::write(&junk, b"nope").expect("write");
    let (ok, out) = check(&junk, None);
    assert!(!ok);
    assert!(out.contains("FAIL  load"), "{out}");
}

#[test]
fn check_reads_its_config_table() {
    let dir = TempDir::new("checkcfg");
    let cfg = dir.0.join("check.toml");
    std::fs::write(&cfg, "[backend]\nprograms = [\"sleep\"]\n[instance]\nconfig = { image = \"sleep\", args = [\"300\"] }\nstop_timeout = 2\n").expect("write");
    let (ok, out) = check(&example_plugin(""), Some(&cfg));
    assert!(ok, "{out}");
    assert!(out.contains("PASS  stop (graceful, 2 s timeout)"), "{out}");
    std::fs::write(&cfg, "[backend]\nprogramz = [\"sleep\"]\n").expect("write");
    let (ok, out) = check(&example_plugin(""), Some(&cfg));
    assert!(!ok);
    assert!(
        out.contains("FAIL  create backend") && out.contains("programz"),
        "{out}"
    );
}

#[test]
fn plugins_list_reports_every_plugin_candidate() {
    let dir = TempDir::new("list");
    let plugins = dir.0.join("plugins");
    std::fs::create_dir_all(&plugins).expect("dir");
    std::fs::copy(fake_plugin(), plugins.join("libunicompute_fake.so")).expect("copy");
    std::fs::write(plugins.join("notes.txt"), b"hello").expect("write");
    std::fs::write(plugins.join("libjunk.so"), b"not a library").expect("write");
    let cfg = dir.0.join("c.toml");
    std::fs::write(&cfg, "[plugins]\ndirs = [\"plugins\"]\n").expect("write");
    let out = Command::new(host_binary())
        .args(["plugins", "list", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("libunicompute_fake.so")
            && l.contains("loaded")
            && l.contains("fake 0.1.0")),
        "{text}"
    );
    // A junk `.so` is a candidate that could not load; other files are not plugins.
    assert!(
        text.lines()
            .any(|l| l.contains("libjunk.so") && l.contains("skipped")),
        "{text}"
    );
    assert!(!text.contains("notes.txt"), "{text}");
}

fn sighup(s: &Server) {
    // SAFETY: kill(2) on the server we started.
    unsafe {
        libc::kill(s.pid() as i32, libc::SIGHUP);
    }
}

fn backend_field(s: &Server, backend: &str, field: &str) -> Value {
    let r = s.get(&format!("/api/v1/compute/backends/{backend}/info"));
    if r.status != 200 {
        return Value::Null;
    }
    field.split('.').fold(r.json, |v, k| v[k].clone())
}

#[test]
fn add_enable_and_replace_a_plugin_without_a_restart() {
    // SIGHUP and the reload endpoint alone (no directory watch), so that what they
    // report is theirs.
    let mut s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        watch_interval_secs: Some(0),
        ..Default::default()
    });
    let process = s.identity();
    let config_path = s.dir.0.join("unicompute.toml");
    let plugin_dir = s.dir.0.join("plugins");
    // an instance of another backend, to see that nothing touches it
    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({"name": unique("keep"), "backend": "fake", "config": {"image": "busybox"}, "start": true})));
    assert_eq!(r.status, 201);
    let kept = r.json.clone();

    // build the example plugin now, while the server runs, and drop it in
    let so = example_plugin("");
    std::fs::copy(&so, plugin_dir.join("libunicompute_example.so")).expect("copy");
    // enable it with a config change and SIGHUP
    let mut config = std::fs::read_to_string(&config_path).expect("config");
    config.push_str("\n[backends.proc]\nplugin = \"process\"\nprograms = [\"sleep\"]\n");
    std::fs::write(&config_path, &config).expect("config");
    sighup(&s);
    let up = wait_for(Duration::from_secs(20), || {
        (backend_field(&s, "proc", "status") == "running").then_some(())
    });
    assert!(up.is_some(), "proc backend did not come up: {}", s.log());
    assert_eq!(backend_field(&s, "proc", "plugin.version"), "0.1.0");

    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({"name": unique("proc"), "backend": "proc", "config": {"image": "sleep", "args": ["300"]}, "start": true})));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["state"], "running");
    let pid_id = r.json["id"].as_str().expect("id").to_owned();
    let r = s.call(
        "PUT",
        &format!("{INSTANCES}/{pid_id}/stop"),
        ADMIN,
        Some(&json!({"timeout": 5})),
    );
    assert_eq!(r.json["state"], "stopped");

    // replace the file with a newer build; reload through the API this time
    let v2 = example_plugin("v2");
    let tmp = plugin_dir.join(".incoming.tmp");
    std::fs::copy(&v2, &tmp).expect("copy");
    std::fs::rename(&tmp, plugin_dir.join("libunicompute_example.so")).expect("rename");
    let r = s.call("POST", "/api/v1/compute/backends/reload", ADMIN, None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["backends"]["proc"], "restarted");
    assert_eq!(r.json["backends"]["fake"], "kept");
    assert_eq!(backend_field(&s, "proc", "plugin.version"), "0.2.0");
    assert_eq!(backend_field(&s, "proc", "version"), "0.2.0");
    // only admins may reload
    assert_eq!(
        s.call("POST", "/api/v1/compute/backends/reload", OPERATOR, None)
            .status,
        403
    );

    // the other backend's instance was not touched
    let now = s.get(&format!("{INSTANCES}/{}", kept["id"].as_str().expect("id")));
    assert_eq!(now.json, kept);
    // The same process (alive, same pid and start time) still answers on its port.
    assert_eq!(s.identity(), process, "the server was restarted");
    assert_eq!(s.raw("GET", "/healthz", None, None).status, 200);
}

#[test]
fn sighup_disables_a_backend_without_dropping_requests_in_flight() {
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n[backends.extra]\nplugin = \"fake\"\n".into(),
        ..Default::default()
    });
    let config_path = s.dir.0.join("unicompute.toml");
    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({"name": unique("slow"), "backend": "fake", "config": {"image": "busybox"}, "start": true, "metadata": {"labels": {"fake/ignore-sigterm": "true"}}})));
    let id = r.json["id"].as_str().expect("id").to_owned();
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": unique("x"), "backend": "extra", "config": {"image": "busybox"}})),
    );
    assert_eq!(r.status, 201);

    std::thread::scope(|scope| {
        // a graceful stop that takes 2 s, in flight during the reload
        let stop = scope.spawn(|| {
            s.call(
                "PUT",
                &format!("{INSTANCES}/{id}/stop"),
                ADMIN,
                Some(&json!({"timeout": 2})),
            )
        });
        // The stop is in flight once the plugin says it waits.
        let waiting = wait_for(Duration::from_secs(10), || {
            s.log()
                .contains("graceful stop waits for its timeout")
                .then_some(())
        });
        assert!(waiting.is_some(), "the stop never began: {}", s.log());
        let config = std::fs::read_to_string(&config_path)
            .expect("config")
            .replace(
                "[backends.extra]\nplugin = \"fake\"\n",
                "[backends.extra]\nplugin = \"fake\"\nenabled = false\n",
            );
        std::fs::write(&config_path, config).expect("config");
        sighup(&s);
        let r = stop.join().expect("thread");
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["state"], "stopped");
    });
    let off = wait_for(Duration::from_secs(10), || {
        let r = s.get("/api/v1/compute/backends");
        r.json["backends"]
            .as_array()?
            .iter()
            .find(|b| b["name"] == "extra" && b["status"] == "disabled")
            .map(|_| ())
    });
    assert!(off.is_some(), "extra not disabled: {}", s.log());
    assert_eq!(
        s.get(&format!("{INSTANCES}?backend=extra")).json["total"],
        0
    );
    assert_eq!(s.get(&format!("{INSTANCES}?backend=fake")).json["total"], 1);

    // a bad config is refused and the running one kept
    std::fs::write(&config_path, "[server]\nbogus = 1\n").expect("config");
    let r = s.call("POST", "/api/v1/compute/backends/reload", ADMIN, None);
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"));
    assert!(r.text.contains("bogus"), "{}", r.text);
    assert_eq!(s.get(&format!("{INSTANCES}?backend=fake")).json["total"], 1);
}

#[test]
fn the_directory_watch_loads_replaces_and_drops_plugins_without_a_signal() {
    // `proc` is enabled from the start; its plugin is not there yet.
    let mut s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n[backends.proc]\nplugin = \"process\"\nprograms = [\"sleep\"]\n".into(),
        watch_interval_secs: Some(1),
        ..Default::default()
    });
    let process = s.identity();
    let plugin_dir = s.dir.0.join("plugins");
    assert_eq!(backend_field(&s, "proc", "status"), "unavailable");
    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({"name": unique("keep"), "backend": "fake", "config": {"image": "busybox"}, "start": true})));
    assert_eq!(r.status, 201, "{}", r.text);
    let kept = r.json.clone();

    // Dropped in with a plain copy, no signal, no API call.
    let so = plugin_dir.join("libunicompute_example.so");
    std::fs::copy(example_plugin(""), &so).expect("copy");
    let up = wait_for(Duration::from_secs(20), || {
        (backend_field(&s, "proc", "status") == "running").then_some(())
    });
    assert!(up.is_some(), "proc did not come up: {}", s.log());
    assert_eq!(backend_field(&s, "proc", "plugin.version"), "0.1.0");
    let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({"name": unique("proc"), "backend": "proc", "config": {"image": "sleep", "args": ["300"]}, "start": true})));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["state"], "running");
    let one = format!("{INSTANCES}/{}", r.json["id"].as_str().expect("id"));
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        ADMIN,
        Some(&json!({"force": true})),
    );
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    assert_eq!(s.call("DELETE", &one, ADMIN, None).status, 204);

    // Overwritten in place by a newer build: the backend switches to it.
    std::fs::copy(example_plugin("v2"), &so).expect("copy");
    let v2 = wait_for(Duration::from_secs(20), || {
        (backend_field(&s, "proc", "plugin.version") == "0.2.0").then_some(())
    });
    assert!(v2.is_some(), "v2 not loaded: {}", s.log());
    assert_eq!(backend_field(&s, "proc", "status"), "running");

    // A file that is not a `*.so` is no plugin candidate: the watch does not act on
    // it (three looks pass with no reload).
    let reloads = |s: &Server| s.log().matches("plugin directory changed").count();
    let before = reloads(&s);
    std::fs::write(plugin_dir.join("README.txt"), "not a plugin").expect("junk");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(reloads(&s), before, "a README.txt reloaded: {}", s.log());
    // A `*.so` that is not a library is one, skipped with its reason, and the rest
    // serves on. Removed together with it: the backend goes with its plugin.
    std::fs::write(plugin_dir.join("libjunk.so"), "not a library").expect("junk");
    std::fs::remove_file(&so).expect("remove");
    let gone = wait_for(Duration::from_secs(20), || {
        (backend_field(&s, "proc", "status") == "unavailable").then_some(())
    });
    assert!(gone.is_some(), "proc still served: {}", s.log());
    assert!(reloads(&s) > before, "{}", s.log());
    let log = s.log();
    let skipped = wait_for(Duration::from_secs(5), || {
        s.log()
            .lines()
            .any(|l| l.contains("plugin file skipped") && l.contains("libjunk.so"))
            .then_some(())
    });
    assert!(skipped.is_some(), "no skip line for libjunk.so: {log}");

    let now = s.get(&format!("{INSTANCES}/{}", kept["id"].as_str().expect("id")));
    assert_eq!(now.json, kept, "the other backend's instance was touched");
    assert_eq!(backend_field(&s, "fake", "status"), "running");
    assert_eq!(s.identity(), process, "the server was restarted");
}

/// Runs the check with `--json` and parses its one document.
fn check_json(file: &Path, config: Option<&Path>) -> (bool, Value) {
    let tmp = TempDir::new("uc-check");
    let mut cmd = check_cmd(&tmp);
    cmd.arg("plugins").arg("check").arg(file).arg("--json");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().expect("run plugins check --json");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("--json output is not one JSON document ({e}): {text}"));
    (out.status.success(), doc)
}

const DURABILITY: &str = "a new backend from the same settings keeps the instance (durability)";

#[test]
fn a_memory_only_plugin_fails_the_durability_step_naming_what_was_lost() {
    let forgetful = build_external("tests/fake-plugin", "unicompute_fake", "memory-only");
    let (ok, out) = check(&forgetful, None);
    assert!(!ok, "{out}");
    let fail = out
        .lines()
        .find(|l| l.starts_with(&format!("FAIL  {DURABILITY}")))
        .unwrap_or_else(|| panic!("no durability FAIL line: {out}"));
    // What was lost: the id the check made (the host's format) and its name.
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("NAME  "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no NAME line: {out}"));
    assert!(
        fail.contains("after a restart of the backend, list lost i-")
            && fail.contains(&format!("(name {name})")),
        "{fail}"
    );
    let id = fail
        .split("list lost ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("an id");
    assert!(
        id.len() == 22 && id[2..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(fail.contains("INSTANCE_NOT_FOUND"), "{fail}");
    // Only durability fails: the rest of the scenario passed.
    assert!(out.contains(" passed, 1 failed"), "{out}");
    assert!(
        out.contains(&format!("failed steps: {DURABILITY}")),
        "{out}"
    );

    // The same in --json: one document, the step FAIL with the same message.
    let (ok, doc) = check_json(&forgetful, None);
    assert!(!ok);
    let steps = doc["steps"].as_array().expect("steps");
    let step = steps
        .iter()
        .find(|s| s["name"] == DURABILITY)
        .unwrap_or_else(|| panic!("no durability step: {doc}"));
    assert_eq!(step["verdict"], "FAIL", "{step}");
    let message = step["message"].as_str().expect("message");
    assert!(
        message.starts_with("after a restart of the backend, list lost i-"),
        "{message}"
    );
    assert!(step["ms"].is_u64(), "{step}");
    assert_eq!(doc["summary"]["ok"], false, "{doc}");
    assert_eq!(doc["summary"]["failed"], 1, "{doc}");
    assert_eq!(doc["summary"]["failedSteps"], json!([DURABILITY]), "{doc}");
    assert_eq!(doc["plugin"]["name"], "fake", "{doc}");
    assert!(steps.iter().any(|s| s["verdict"] == "PASS"));
}

#[test]
fn the_fake_and_example_plugins_pass_every_new_step() {
    for so in [fake_plugin(), example_plugin("")] {
        let (ok, out) = check(&so, None);
        assert!(ok, "{}: {out}", so.display());
        for step in [
            "PASS  labels round trip: create, get and list answer them as given",
            "PASS  delete without force of a running instance is INVALID_STATE",
            "PASS  stop of a paused instance (graceful",
            "PASS  labels replaced by an update",
            "PASS  create with start: true answers it running",
            "PASS  delete of a running instance without force is INVALID_STATE",
            &format!("PASS  {DURABILITY}"),
            "PASS  nothing is left",
        ] {
            assert!(out.contains(step), "{step} in {}: {out}", so.display());
        }
        let (ok, doc) = check_json(&so, None);
        assert!(ok, "{doc}");
        assert_eq!(doc["summary"]["ok"], true, "{doc}");
        assert_eq!(doc["summary"]["failed"], 0, "{doc}");
        let steps = doc["steps"].as_array().expect("steps");
        assert!(steps
            .iter()
            .all(|s| matches!(s["verdict"].as_str(), Some("PASS" | "SKIP"))));
        assert!(doc["names"]
            .as_str()
            .is_some_and(|n| n.starts_with("uc-check-")));
    }
}

#[test]
fn check_times_are_the_backends_calls() {
    // A freeze that takes 300 ms shows as such (the call used to be made before its
    // step's clock started, and printed 0 ms).
    let dir = TempDir::new("checktime");
    let cfg = dir.0.join("check.toml");
    std::fs::write(&cfg, "[backend]\npause_ms = 300\n").expect("write");
    let (ok, doc) = check_json(&fake_plugin(), Some(&cfg));
    assert!(ok, "{doc}");
    let ms = |name: &str| {
        doc["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["ms"].as_u64())
            .unwrap_or_else(|| panic!("no step {name}: {doc}"))
    };
    assert!(ms("pause") >= 300, "{doc}");
    assert!(ms("pause before a stop") >= 300, "{doc}");
    assert!(ms("unpause") < 300, "{doc}");
}

#[test]
fn the_fake_keeps_its_instances_across_a_server_restart() {
    // The fake's records live in its state_dir; a second server with the same
    // settings lists the instance as the first left it.
    let state = TempDir::new("fakestate");
    let toml = format!("state_dir = \"{}\"\n", state.0.display());
    let name = unique("durable");
    let made = {
        let s = Server::fake(&toml);
        let r = s.call("POST", INSTANCES, ADMIN, Some(&json!({"name": name, "backend": "fake", "config": {"image": "busybox"}, "metadata": {"labels": {"team": "web"}}})));
        assert_eq!(r.status, 201, "{}", r.text);
        r.json.clone()
    };
    let s = Server::fake(&toml);
    let id = made["id"].as_str().expect("id");
    let r = s.get(&format!("{INSTANCES}/{id}"));
    assert_eq!(r.status, 200, "{}", r.text);
    for key in ["id", "name", "state", "createdAt", "metadata", "resources"] {
        assert_eq!(r.json[key], made[key], "{key}: {}", r.text);
    }
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/{id}"), ADMIN, None)
            .status,
        204
    );
}
