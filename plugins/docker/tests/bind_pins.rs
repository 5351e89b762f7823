//! Bind mounts stay inside the allowlist whatever happens to their host paths after
//! create, against the real engine: one instance's symlink cannot lead another's mount
//! to the host's `/etc`, neither at an API start nor at the engine's own restart by
//! restart policy; sources are pinned, and the pins are gone with the instance.
//!
//! Every check of what a container sees is made inside it (`docker exec`); each test
//! has its own allowed directory and pin directory, removed (pins unmounted first)
//! even when the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{backend_with, request, unique, Cleanup, Engine, FileLock, TestBackend};
use unicompute_plugin_api::{Backend, ErrorCode, InstanceState};

/// The directories of one test: `allowed` (the allowlist) and `pins` (the plugin's
/// pin directory). Dropped in order: every mount under `pins` is detached before
/// anything is removed, so a removal can never reach through a pin.
struct Dirs {
    root: PathBuf,
    allowed: PathBuf,
    pins: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let root = std::env::temp_dir().join(unique("pins"));
        let allowed = root.join("allowed");
        let pins = root.join("pins");
        std::fs::create_dir_all(&allowed).unwrap();
        Dirs {
            root,
            allowed,
            pins,
        }
    }

    fn backend(&self) -> TestBackend {
        backend_with(serde_json::json!({
            "allowed_host_paths": [self.allowed],
            "pin_dir": self.pins,
        }))
    }
}

/// Mount points under `dir`, from this process's mount table.
fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for m in mounts_under(&self.pins) {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        if mounts_under(&self.pins).is_empty() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Runs a shell command in a container; true when it exits 0.
fn exec(container: &str, script: &str) -> bool {
    Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn sleeper() -> serde_json::Value {
    serde_json::json!(["sh", "-c", "sleep 1000"])
}

#[test]
fn a_symlink_made_by_one_instance_cannot_expose_the_hosts_etc_to_another() {
    let _engine = FileLock::engine_shared();
    let dirs = Dirs::new();
    let t = dirs.backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let allowed = dirs.allowed.display().to_string();

    // A may write in the allowed directory.
    let a = clean.container(&unique("attacker"));
    let mut req = request(
        &a,
        serde_json::json!({"command": sleeper(), "volumes": [format!("{allowed}:/w")]}),
    );
    req.start = true;
    let inst_a = t.backend.create(req).unwrap();
    assert_eq!(inst_a.state, InstanceState::Running);

    // B asks for a path under it that does not exist yet.
    let b = clean.container(&unique("victim"));
    let escape = format!("{allowed}/esc");
    let req_b = request(
        &b,
        serde_json::json!({"command": sleeper(), "volumes": [format!("{escape}:/host")]}),
    );
    let created = t.backend.create(req_b.clone());
    // A makes that path a symlink to the host's /etc, from inside its container.
    assert!(exec(&a, "ln -s /etc /w/esc"), "ln -s in A");
    match created {
        Ok(inst_b) => {
            // Accepted: then starting B must not mount the host's /etc.
            let started = t.backend.start(&inst_b.id);
            let sees_etc = started.is_ok() && exec(&b, "test -f /host/passwd");
            assert!(
                !sees_etc,
                "B, created with {escape} (missing at create), sees the host's /etc through A's symlink"
            );
        }
        Err(e) => {
            // A missing source is refused at create, naming it.
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
            assert!(e.message.contains(&escape), "{}", e.message);
            assert!(!engine.exists(&b));
        }
    }
    // Now that the path exists (a symlink leading out), it is refused as forbidden.
    let b2 = clean.container(&unique("victim"));
    let mut req = request(
        &b2,
        serde_json::json!({"command": sleeper(), "volumes": [format!("{escape}:/host")]}),
    );
    req.id = unique("id");
    let e = t.backend.create(req).unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
    assert!(!engine.exists(&b2));
    t.backend.delete(&inst_a.id, true).unwrap();
    assert!(
        mounts_under(&dirs.pins).is_empty(),
        "pins left: {:?}",
        mounts_under(&dirs.pins)
    );
}

#[test]
fn an_allowed_directory_replaced_by_a_symlink_is_refused_at_start_and_pinned_meanwhile() {
    let _engine = FileLock::engine_shared();
    let dirs = Dirs::new();
    let t = dirs.backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let allowed = dirs.allowed.display().to_string();
    std::fs::create_dir_all(dirs.allowed.join("sub")).unwrap();
    std::fs::write(dirs.allowed.join("sub/marker"), "original").unwrap();

    let a = clean.container(&unique("attacker"));
    let mut req = request(
        &a,
        serde_json::json!({"command": sleeper(), "volumes": [format!("{allowed}:/w")]}),
    );
    req.start = true;
    let inst_a = t.backend.create(req).unwrap();

    let b = clean.container(&unique("victim"));
    let req_b = request(
        &b,
        serde_json::json!({"command": sleeper(), "volumes": [format!("{allowed}/sub:/host")]}),
    );
    let inst_b = t.backend.create(req_b).unwrap();
    assert_eq!(inst_b.config["volumes"][0], format!("{allowed}/sub:/host"));

    // A swaps the directory for a symlink to the host's /etc.
    assert!(
        exec(&a, "mv /w/sub /w/sub.old && ln -s /etc /w/sub"),
        "swap in A"
    );
    match t.backend.start(&inst_b.id) {
        Ok(_) => {
            let sees_etc = exec(&b, "test -f /host/passwd");
            panic!("B started after the swap (sees the host's /etc: {sees_etc})");
        }
        Err(e) => assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}"),
    }
    let c = engine.inspect(&b);
    assert_ne!(c.state.unwrap().running, Some(true));
    // The engine mounts the pin, not the path itself.
    let mounts = c.host_config.unwrap().mounts.unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let pin = mounts[0].source.clone().unwrap();
    assert!(
        pin.starts_with(&dirs.pins.display().to_string()),
        "{pin} is under the pin dir"
    );

    // Started by hand all the same, B sees the directory it was created with.
    assert!(Command::new("docker")
        .args(["start", &b])
        .output()
        .unwrap()
        .status
        .success());
    assert!(exec(&b, "test \"$(cat /host/marker)\" = original"));
    assert!(!exec(&b, "test -e /host/passwd"));

    // Delete leaves no pin behind.
    t.backend.delete(&inst_b.id, true).unwrap();
    assert!(!Path::new(&pin).exists(), "{pin} removed");
    assert!(!dirs.pins.join(&inst_b.id).exists());
    t.backend.delete(&inst_a.id, true).unwrap();
    assert!(
        mounts_under(&dirs.pins).is_empty(),
        "pins left: {:?}",
        mounts_under(&dirs.pins)
    );
}

#[test]
fn an_engine_restart_by_restart_policy_after_the_swap_keeps_the_original_directory() {
    let _engine = FileLock::engine_shared();
    let dirs = Dirs::new();
    let t = dirs.backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let allowed = dirs.allowed.display().to_string();
    std::fs::create_dir_all(dirs.allowed.join("sub")).unwrap();
    std::fs::write(dirs.allowed.join("sub/marker"), "original").unwrap();

    let a = clean.container(&unique("attacker"));
    let mut req = request(
        &a,
        serde_json::json!({"command": sleeper(), "volumes": [format!("{allowed}:/w")]}),
    );
    req.start = true;
    let inst_a = t.backend.create(req).unwrap();

    // B exits after 3 s; the engine restarts it every time.
    let b = clean.container(&unique("victim"));
    let mut req_b = request(
        &b,
        serde_json::json!({
            "command": ["sh", "-c", "sleep 3"],
            "restartPolicy": "always",
            "volumes": [format!("{allowed}/sub:/host")]
        }),
    );
    req_b.start = true;
    let inst_b = t.backend.create(req_b).unwrap();
    assert!(exec(&b, "test \"$(cat /host/marker)\" = original"));

    assert!(
        exec(&a, "mv /w/sub /w/sub.old && ln -s /etc /w/sub"),
        "swap in A"
    );
    let before = engine.inspect(&b).restart_count.unwrap_or(0);
    // Wait for a restart by the engine after the swap, then look inside B.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut looked = None;
    while Instant::now() < deadline && looked.is_none() {
        let c = engine.inspect(&b);
        let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
        if running && c.restart_count.unwrap_or(0) > before {
            let marker = exec(&b, "test \"$(cat /host/marker)\" = original");
            let etc = exec(&b, "test -e /host/passwd");
            // An exec that raced the container's exit tells nothing: look again.
            if marker || etc {
                looked = Some((marker, etc));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (marker, etc) = looked.expect("B was restarted by the engine and looked into");
    assert!(!etc, "B sees the host's /etc after a restart by the engine");
    assert!(marker, "B sees its original directory");

    t.backend.delete(&inst_b.id, true).unwrap();
    t.backend.delete(&inst_a.id, true).unwrap();
    assert!(
        mounts_under(&dirs.pins).is_empty(),
        "pins left: {:?}",
        mounts_under(&dirs.pins)
    );
}

#[test]
fn control_characters_in_host_paths_are_refused() {
    let _engine = FileLock::engine_shared();
    let dirs = Dirs::new();
    let t = dirs.backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let allowed = dirs.allowed.display().to_string();
    for bad in ["a\nb", "a\u{1}b", "a\u{7f}b", "a\u{0}b"] {
        let dir = format!("{allowed}/{bad}");
        if !bad.contains('\0') {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let name = clean.container(&unique("ctl"));
        let req = request(&name, serde_json::json!({"volumes": [format!("{dir}:/m")]}));
        let e = t.backend.create(req).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad:?}: {e:?}");
        assert!(!engine.exists(&name));
    }
}
