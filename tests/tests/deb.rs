//! The Debian package: built from this build's binaries by `scripts/build-deb.sh`,
//! installed on this machine with dpkg, served as its systemd unit would serve it (the
//! unit's own `ExecStart`; systemd does not run here), used with the installed `uc`,
//! reloaded with the unit's `ExecReload` signal, then removed and purged cleanly.
//! Skipped (with a line saying so) when not root, without dpkg, or when a unicompute
//! package is already installed here (a real install is never touched).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use unicompute_tests::docker::{ensure_image, ContainerGuard, FileLock, TEST_IMAGE};
use unicompute_tests::kvm::KvmFixture;
use unicompute_tests::*;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Purges the package when dropped (also when the test fails).
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "unicompute"]);
    }
}

/// Kills the installed server when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_debian_package_installs_serves_as_its_unit_reloads_and_purges_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !run("dpkg", &["--version"]).0 {
        eprintln!("SKIP: the package test needs root and dpkg");
        return;
    }
    if run("dpkg-query", &["-W", "-f=${Status}", "unicompute"])
        .1
        .contains("installed")
    {
        eprintln!("SKIP: a unicompute package is installed on this machine; not touching it");
        return;
    }
    let out = TempDir::new("uc-deb");
    let build = Command::new("bash")
        .arg(root().join("scripts/build-deb.sh"))
        .arg(profile())
        .arg(&out.0)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("UC_DEB_FAST", "1")
        .current_dir(root())
        .output()
        .expect("build-deb");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let deb = String::from_utf8_lossy(&build.stdout).trim().to_owned();
    assert!(deb.ends_with("_amd64.deb"), "{deb}");

    // What it holds, as dpkg reads it.
    let (ok, info) = run("dpkg-deb", &["--info", &deb]);
    assert!(ok, "{info}");
    assert!(info.contains("Package: unicompute"), "{info}");
    assert!(
        info.contains("Depends:") && info.contains("libvirt0"),
        "{info}"
    );
    assert!(
        info.contains("Recommends: docker.io, libvirt-daemon-system"),
        "{info}"
    );
    let (_, contents) = run("dpkg-deb", &["--contents", &deb]);
    for path in [
        "./usr/bin/unicompute",
        "./usr/bin/uc",
        "./usr/lib/unicompute/plugins/libunicompute_docker.so",
        "./usr/lib/unicompute/plugins/libunicompute_kvm.so",
        "./etc/unicompute/unicompute.toml",
        "./lib/systemd/system/unicompute.service",
        "./usr/share/bash-completion/completions/uc",
        "./usr/share/man/man1/uc.1.gz",
    ] {
        assert!(contents.contains(path), "{path} in the package");
    }

    // Installed.
    let _purge = Purge;
    let (ok, text) = run("dpkg", &["--install", &deb]);
    assert!(ok, "dpkg -i: {text}");
    let (_, conffiles) = run("dpkg-query", &["-W", "-f=${Conffiles}", "unicompute"]);
    assert!(
        conffiles.contains("/etc/unicompute/unicompute.toml"),
        "the config is a conffile: {conffiles}"
    );
    assert!(
        Path::new("/var/lib/unicompute").is_dir(),
        "the state directory"
    );

    // Served as the unit serves it: its ExecStart, with the test's own port, token
    // file, docker state and libvirt pool (so nothing of this machine's is used).
    let unit = std::fs::read_to_string("/lib/systemd/system/unicompute.service").expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        unit.lines()
            .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    let mut argv = exec.split_whitespace();
    let program = argv.next().expect("program");
    assert_eq!(program, "/usr/bin/unicompute");
    let _engine = FileLock::engine_shared();
    ensure_image();
    let kvm = KvmFixture::new();
    let state = TempDir::new("uc-deb-state");
    let token_file = state.0.join("admin.token");
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("UNICOMPUTE_") {
            cmd.env_remove(k);
        }
    }
    let dir = |p: &str| state.0.join(p).display().to_string();
    cmd.args(argv)
        .env("UNICOMPUTE_SERVER__LISTEN", "127.0.0.1:0")
        .env("UNICOMPUTE_AUTH__TOKEN_FILE", &token_file)
        .env("UNICOMPUTE_BACKENDS__DOCKER__STATE_DIR", dir("docker"))
        .env("UNICOMPUTE_BACKENDS__DOCKER__PIN_DIR", dir("pins"))
        .env("UNICOMPUTE_BACKENDS__KVM__STORAGE_POOL", &kvm.pool)
        .env(
            "UNICOMPUTE_BACKENDS__KVM__STORAGE_DIR",
            kvm.dir.0.join("pool").display().to_string(),
        )
        .env(
            "UNICOMPUTE_BACKENDS__KVM__TEMPLATES_DIR",
            kvm.templates().display().to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Child(cmd.spawn().expect("the installed server"));
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("unicompute: listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the installed server listens");
    let token = std::fs::read_to_string(&token_file).expect("the admin token");
    let uc = |args: &[&str]| {
        let out = Command::new("/usr/bin/uc")
            .args(args)
            .env("UNICOMPUTE_URL", &base)
            .env("UNICOMPUTE_TOKEN", token.trim())
            .env("NO_COLOR", "1")
            .output()
            .expect("uc");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // The installed client drives the installed server and its installed plugins.
    let (code, text, err) = uc(&["backends", "ls", "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let backends: Value = serde_json::from_str(&text).expect("json");
    let status = |name: &str| {
        backends
            .as_array()
            .and_then(|a| a.iter().find(|b| b["name"] == name))
            .map(|b| b["status"].clone())
    };
    assert_eq!(status("docker"), Some(json!("healthy")), "{text}");
    assert_eq!(status("kvm"), Some(json!("healthy")), "{text}");
    let name = unique("deb");
    let _guard = ContainerGuard(name.clone());
    let (code, id, err) = uc(&[
        "create", &name, "-b", "docker", "--image", TEST_IMAGE, "--start", "--", "sleep", "600",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, text, err) = uc(&["ls", "--backend", "docker"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains(&name) && text.contains("running"), "{text}");

    // ExecReload: SIGHUP reloads; the server goes on serving.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (code, text, err) = uc(&["get", id.trim(), "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains(&name), "{text}");
    let (code, _, err) = uc(&["rm", "-f", &name]);
    assert_eq!(code, Some(0), "{err}");
    drop(child);

    // Removed: the program goes, the conffile stays; purged: it goes too.
    let (ok, text) = run("dpkg", &["--remove", "unicompute"]);
    assert!(ok, "{text}");
    assert!(!Path::new("/usr/bin/unicompute").exists());
    assert!(!Path::new("/usr/lib/unicompute/plugins/libunicompute_kvm.so").exists());
    assert!(
        Path::new("/etc/unicompute/unicompute.toml").exists(),
        "a removed package keeps its conffile"
    );
    let (ok, text) = run("dpkg", &["--purge", "unicompute"]);
    assert!(ok, "{text}");
    assert!(!Path::new("/etc/unicompute").exists(), "purged");
    assert!(
        run("dpkg-query", &["-W", "-f=${Status}", "unicompute"])
            .1
            .trim()
            .is_empty()
            || !run("dpkg-query", &["-W", "-f=${Status}", "unicompute"]).0,
        "no trace in dpkg's database"
    );
}
