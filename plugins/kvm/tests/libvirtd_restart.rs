//! A libvirtd restart in the middle of a run: calls fail fast with
//! `BACKEND_UNAVAILABLE` while the daemon is down, the backend reconnects by itself
//! when it is back (and asks the host to resync), nothing is lost, events flow again.
//!
//! It runs on a private libvirtd that the test starts itself (as user `nobody`, a
//! `qemu:///session` daemon on its own socket) and restarts by its process id, so the
//! shared system daemon is never disturbed by that one. The same run is then made on
//! `qemu:///system`, restarting the system libvirtd (`libvirtd -d`) and restoring it
//! even when the test fails; `UC_KVM_SKIP_SYSTEM_RESTART=1` skips that part on a
//! machine whose system daemon others are using (any other value runs it; under
//! `CI=true` a skip fails). It takes the libvirtd lock exclusively: the other tests
//! on the system daemon hold it shared.
//!
//! Its own test binary, so that nothing else runs beside a daemon restart.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{harness_held, make_template, unique, FileLock};
use serde_json::json;
use unicompute_plugin_api::{Backend, CreateRequest, ErrorCode, Event, InstanceState};

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

/// Stops a process we own by its id: TERM, then KILL if it lingers.
fn stop_pid(pid: u32) {
    signal(pid, "-TERM");
    if !wait_until(Duration::from_secs(20), || !alive(pid)) {
        signal(pid, "-KILL");
        wait_until(Duration::from_secs(5), || !alive(pid));
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A libvirtd the test owns: a session daemon of user `nobody`.
struct PrivateDaemon {
    dir: tempfile::TempDir,
    pid: Option<u32>,
}

impl PrivateDaemon {
    fn new() -> Self {
        let dir = common::workdir();
        let nobody = Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .expect("id");
        let uid: u32 = String::from_utf8_lossy(&nobody.stdout)
            .trim()
            .parse()
            .expect("uid of nobody");
        std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown");
        for sub in ["pool", "templates"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).expect("mkdir");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            std::os::unix::fs::chown(&p, Some(uid), None).expect("chown");
        }
        let mut d = PrivateDaemon { dir, pid: None };
        d.start();
        d
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn uri(&self) -> String {
        format!(
            "qemu+unix:///session?socket={}",
            self.path("libvirt/libvirt-sock").display()
        )
    }

    fn start(&mut self) {
        let d = self.dir.path();
        let status = Command::new("runuser")
            .args(["-u", "nobody", "--", "env"])
            .arg(format!("HOME={}", d.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", d.display()))
            .arg(format!("XDG_CONFIG_HOME={}", d.join("config").display()))
            .arg(format!("XDG_CACHE_HOME={}", d.join("cache").display()))
            .arg(format!("XDG_DATA_HOME={}", d.join("data").display()))
            .args(["libvirtd", "--daemon", "--pid-file"])
            .arg(d.join("libvirtd.pid"))
            .status()
            .expect("runuser libvirtd");
        assert!(status.success(), "private libvirtd did not start");
        let uri = self.uri();
        let up = wait_until(Duration::from_secs(30), || {
            Command::new("virsh")
                .args(["-c", &uri, "version"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        assert!(up, "private libvirtd does not answer");
        self.pid = read_pid(&d.join("libvirtd.pid"));
        assert!(self.pid.is_some(), "no pid file");
    }

    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            stop_pid(pid);
        }
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        self.stop();
        // QEMU processes it started outlive it: end them by their pid files.
        let run = self.path("libvirt/qemu/run");
        for entry in std::fs::read_dir(run).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                if let Some(pid) = read_pid(&entry.path()) {
                    stop_pid(pid);
                }
            }
        }
    }
}

/// The system libvirtd, restarted by the test and restored when it ends.
struct SystemDaemon;

impl SystemDaemon {
    const PID_FILE: &'static str = "/run/libvirtd.pid";

    fn stop(&self) {
        let pid = read_pid(Path::new(Self::PID_FILE)).expect("libvirtd pid file");
        stop_pid(pid);
    }

    fn start(&self) {
        let running = read_pid(Path::new(Self::PID_FILE)).is_some_and(alive);
        if !running {
            let _ = Command::new("libvirtd").arg("-d").status();
        }
        wait_until(Duration::from_secs(30), || {
            Command::new("virsh")
                .args(["-c", common::SYSTEM, "version"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
    }
}

impl Drop for SystemDaemon {
    fn drop(&mut self) {
        self.start();
    }
}

/// Starts the daemon again when dropped, unless that was done already: declared
/// after the harness, it runs first when a check panics while the daemon is down, so
/// that the harness's cleanup finds a daemon to talk to.
struct StartAgain<'a> {
    start: &'a mut dyn FnMut(),
    done: bool,
}

impl StartAgain<'_> {
    fn now(&mut self) {
        if !self.done {
            self.done = true;
            (self.start)();
        }
    }
}

impl Drop for StartAgain<'_> {
    fn drop(&mut self) {
        self.now();
    }
}

/// The run: `restart` stops the daemon, checks, and starts it again.
fn run(
    uri: &str,
    extra: serde_json::Value,
    pool_dir: Option<PathBuf>,
    templates: Option<PathBuf>,
    stop: &mut dyn FnMut(),
    start: &mut dyn FnMut(),
) {
    let mut h = harness_held(uri, extra, None);
    if let Some(p) = pool_dir {
        h.storage = p;
    }
    let templates = templates.unwrap_or_else(|| h.templates.clone());
    make_template(&templates, "blank", "64M");
    let name = h.cleanup.domain(&unique("restart"));
    let id = unique("id");
    let req = CreateRequest {
        id: id.clone(),
        name: name.clone(),
        // No guest agent channel: this private libvirtd's state directory is a long
        // temporary path, and the channel's socket under it would pass the 108 bytes
        // of a UNIX socket path (the system libvirtd's is short).
        config: json!({"image": "blank", "networkType": "none", "guestAgent": false})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        resources: serde_json::from_value(
            json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}}),
        )
        .unwrap(),
        labels: Default::default(),
        start: true,
        created_at: chrono::Utc::now(),
        operation: None,
    };
    let b = &h.backend;
    assert_eq!(b.create(req).expect("create").state, InstanceState::Running);

    stop();
    let mut again = StartAgain { start, done: false };
    let down = b.list().expect_err("libvirtd is down");
    assert_eq!(down.code, ErrorCode::BackendUnavailable, "{down:?}");
    assert_eq!(b.get(&id).unwrap_err().code, ErrorCode::BackendUnavailable);
    // Drop what came before, to see the reconnect's own resync.
    while h.events.try_recv().is_ok() {}

    again.now();
    let resync = h.wait_event(Duration::from_secs(30), |e| matches!(e, Event::Resync));
    assert!(resync.is_some(), "the backend did not reconnect by itself");
    let inst = b.get(&id).expect("get after the restart");
    assert_eq!(inst.state, InstanceState::Running, "nothing is lost");
    assert!(b.list().unwrap().iter().any(|i| i.id == id));

    // Events flow again on the new connection.
    let out = Command::new("virsh")
        .args(["-c", uri, "destroy", &name])
        .output()
        .expect("virsh");
    assert!(out.status.success(), "{out:?}");
    let seen = h.wait_event(Duration::from_secs(10), |e| {
        matches!(e, Event::Changed { instance } if instance.id == id && instance.state == InstanceState::Stopped)
    });
    assert!(seen.is_some(), "no event after the reconnect");
    b.delete(&id, true).expect("delete");
}

#[test]
fn backend_survives_a_libvirtd_restart() {
    let mut daemon = PrivateDaemon::new();
    let uri = daemon.uri();
    let pool = daemon.path("pool");
    let templates = daemon.path("templates");
    let extra = json!({
        "domain_type": "qemu",
        "storage_dir": pool,
        "templates_dir": templates,
    });
    let daemon = std::cell::RefCell::new(&mut daemon);
    run(
        &uri,
        extra,
        Some(pool.clone()),
        Some(templates),
        &mut || daemon.borrow_mut().stop(),
        &mut || daemon.borrow_mut().start(),
    );
}

#[test]
fn system_backend_survives_a_system_libvirtd_restart() {
    if unicompute_tests::skip_requested(
        "UC_KVM_SKIP_SYSTEM_RESTART",
        "the system libvirtd restart test",
    ) {
        return;
    }
    // Every other test on the system libvirtd holds it shared; declared before the
    // daemon guard so that it is released after the daemon is back.
    let _libvirtd = FileLock::libvirtd_exclusive();
    let system = SystemDaemon;
    run(
        common::SYSTEM,
        json!({}),
        None,
        None,
        &mut || system.stop(),
        &mut || system.start(),
    );
}
