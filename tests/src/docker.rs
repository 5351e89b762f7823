//! Docker fixtures shared with the docker plugin's own tests: the local test image
//! (`FROM scratch` with busybox-static, imported, never pulled) and the engine lock
//! (the engine restart test takes it exclusively; everyone else shares it).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

/// The local image the tests use.
pub const TEST_IMAGE: &str = "unicompute-test-busybox:latest";
const ENGINE_LOCK: &str = "/tmp/unicompute-docker-engine.lock";
const IMAGE_LOCK: &str = "/tmp/unicompute-docker-image.lock";
const LIBVIRTD_LOCK: &str = "/tmp/unicompute-libvirtd.lock";

/// The prefix of the backend names of the black-box Docker servers ([`backend_name`]).
pub const BACKEND_PREFIX: &str = "uct";

/// An flock held until dropped.
pub struct FileLock(File);

impl FileLock {
    fn take(path: &str, op: libc::c_int) -> FileLock {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("open lock file");
        // SAFETY: flock on a file descriptor we own, with a valid operation.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        assert_eq!(rc, 0, "flock {path}");
        FileLock(f)
    }

    /// A shared hold of the engine: it is not restarted meanwhile.
    pub fn engine_shared() -> FileLock {
        Self::take(ENGINE_LOCK, libc::LOCK_SH)
    }

    /// The engine to oneself (to stop and restart it).
    pub fn engine_exclusive() -> FileLock {
        Self::take(ENGINE_LOCK, libc::LOCK_EX)
    }

    /// A shared hold of the system libvirtd: it is not restarted meanwhile.
    pub fn libvirtd_shared() -> FileLock {
        Self::take(LIBVIRTD_LOCK, libc::LOCK_SH)
    }

    /// The system libvirtd to oneself (to stop and restart it).
    pub fn libvirtd_exclusive() -> FileLock {
        Self::take(LIBVIRTD_LOCK, libc::LOCK_EX)
    }

    /// Any lock file to oneself (for example for a name that cannot be unique).
    pub fn exclusive(path: &str) -> FileLock {
        Self::take(path, libc::LOCK_EX)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as in take.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Runs the docker CLI; returns (success, stdout).
pub fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// Makes the test image if missing: a tarball of busybox and its applet links,
/// imported. Idempotent and safe from parallel processes.
pub fn ensure_image() {
    let _lock = FileLock::take(IMAGE_LOCK, libc::LOCK_EX);
    if docker(&["image", "inspect", TEST_IMAGE]).0 {
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static is installed");
    let dir = crate::TempDir::new("uc-image");
    let root = dir.0.join("root");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("dir");
    std::fs::create_dir_all(root.join("tmp")).expect("dir");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    let tar = dir.0.join("image.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success(), "tar");
    let tar_s = tar.to_string_lossy().into_owned();
    let (ok, _) = docker(&[
        "import",
        "--change",
        r#"CMD ["/bin/sh"]"#,
        &tar_s,
        TEST_IMAGE,
    ]);
    assert!(ok, "docker import failed");
}

/// Removes a container by name when dropped (a test's cleanup, also on failure).
pub struct ContainerGuard(pub String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

/// A backend name of its own for a black-box server, so that servers in parallel
/// (and other runs on the engine) do not list each other's containers.
pub fn backend_name() -> String {
    crate::owned(BACKEND_PREFIX)
}

/// Removes the containers of black-box servers whose test process is gone (a killed
/// run): their backend label names a dead process (see [`backend_name`]).
pub fn sweep_stale() {
    let (_, out) = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=io.unicompute.backend",
        "--format",
        "{{.ID}} {{.Label \"io.unicompute.backend\"}}",
    ]);
    for line in out.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(id), Some(backend)) = (parts.next(), parts.next()) {
            if crate::dead_owner(backend, BACKEND_PREFIX) {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
        }
    }
    // The spec examples keep the backend name `docker` as the spec writes it; their
    // instance (container) names carry the test process instead.
    let (_, out) = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=io.unicompute.backend=docker",
        "--format",
        "{{.ID}} {{.Names}}",
    ]);
    for line in out.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(id), Some(name)) = (parts.next(), parts.next()) {
            if crate::dead_owner(name, SPEC_EXAMPLE_NAME) {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
        }
    }
}

/// The spec's Docker example's instance name, made unique with [`crate::owned`].
pub const SPEC_EXAMPLE_NAME: &str = "nginx-web";

/// A server with the docker plugin as a backend named by [`backend_name`] (answered
/// with the server), its pins and state in `dir`, bind mounts allowed under `dir`.
pub fn server(dir: &std::path::Path) -> (crate::Server, String) {
    let backend = backend_name();
    let s = crate::Server::start_with(crate::ServerOptions {
        plugins: vec![crate::workspace_plugin("docker")],
        toml: format!(
            "[backends.{backend}]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n",
            dir.display()
        ),
        ..Default::default()
    });
    (s, backend)
}
