//! The KVM tests' real guest: a small Linux built from Debian packages by
//! `scripts/guest-template.sh` (cached under `target/guest`), installed as a raw
//! template. It prints `UCGUEST ...` lines on its serial console: the cloud-init
//! user-data's marker lines (`#uc-marker X` → `UCGUEST marker X`) and its own power-off
//! when the ACPI power button is pressed (`UCGUEST acpi power button`, then
//! `UCGUEST powering off`), and where its QEMU guest agent stand-in serves exec
//! (`UCGUEST guest agent on ...`). See the script for the whole list.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{root, target_dir, FileLock};

/// The prefix of a user-data line that the guest prints back (a YAML comment).
pub const MARKER_PREFIX: &str = "#uc-marker ";
/// What the guest prints for such a line, before the rest of it.
pub const MARKER_SEEN: &str = "UCGUEST marker ";
/// Printed once the guest watches the ACPI power button.
pub const POWER_WATCHED: &str = "UCGUEST power button watched";
/// Printed by the guest when its power button is pressed.
pub const POWER_BUTTON: &str = "UCGUEST acpi power button";
/// Printed by the guest right before it powers itself off.
pub const POWERING_OFF: &str = "UCGUEST powering off";
/// Printed (before the port's path) once the guest's agent stand-in serves the QEMU
/// guest agent channel (`scripts/guest-agent.awk`).
pub const AGENT: &str = "UCGUEST guest agent on ";
/// Printed when the guest has done everything at boot.
pub const READY: &str = "UCGUEST ready";

/// The memory the guest is given (it runs from its initramfs).
pub const MEMORY: u64 = 256 << 20;

/// The built (or cached) image; the first call per process runs the builder.
pub fn template() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let started = Instant::now();
            let out = Command::new("bash")
                .arg(root().join("scripts/guest-template.sh"))
                .arg(target_dir().join("guest"))
                .env("CARGO_TARGET_DIR", target_dir())
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/guest-template.sh");
            assert!(
                out.status.success(),
                "scripts/guest-template.sh failed (run scripts/test-env.sh first)"
            );
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            assert!(path.is_file(), "no guest image at {}", path.display());
            eprintln!(
                "guest template {} ready in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
            path
        })
        .clone()
}

/// Puts the guest into `templates_dir` as `<name>.raw` (a copy: a template must be a
/// file inside the directory) readable by QEMU; answers its path.
pub fn install(templates_dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(templates_dir).expect("templates dir");
    let path = templates_dir.join(format!("{name}.raw"));
    std::fs::copy(template(), &path).expect("copy the guest template");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

/// cloud-init user-data whose marker line the guest prints back.
pub fn user_data(token: &str) -> String {
    format!("#cloud-config\n{MARKER_PREFIX}{token}\n")
}

/// The libvirt domain type to run the guest with: `kvm` when KVM boots it on this
/// host, else `qemu` (TCG). Some nested hypervisors give a `/dev/kvm` that cannot
/// run it (an emulation failure in the boot loader, a kernel that never prints):
/// the guest is booted once with `qemu-system-x86_64 -enable-kvm` to find out, and
/// the answer is kept per host boot. `UC_GUEST_DOMAIN_TYPE=kvm|qemu` decides instead.
pub fn domain_type() -> &'static str {
    static TYPE: OnceLock<&'static str> = OnceLock::new();
    TYPE.get_or_init(|| {
        if let Ok(t) = std::env::var("UC_GUEST_DOMAIN_TYPE") {
            return if t == "kvm" { "kvm" } else { "qemu" };
        }
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !kvm {
            return "qemu";
        }
        let image = template();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let stem = image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cached = target_dir()
            .join("guest")
            .join(format!("{stem}.kvm-probe-{boot_id}"));
        let _lock = FileLock::exclusive(&format!("{}.lock", cached.display()));
        if let Ok(t) = std::fs::read_to_string(&cached) {
            return if t.trim() == "kvm" { "kvm" } else { "qemu" };
        }
        let boots = kvm_boots(&image);
        let answer = if boots { "kvm" } else { "qemu" };
        eprintln!("guest: KVM boots the guest on this host: {boots}; domain type {answer}");
        let _ = std::fs::write(&cached, answer);
        answer
    })
}

/// Whether the guest prints its first line under KVM within 30 s.
fn kvm_boots(image: &Path) -> bool {
    let dir = std::env::temp_dir().join(format!("uc-guest-probe-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let serial = dir.join("serial.log");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-enable-kvm",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-drive"])
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            image.display()
        ))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let booted = wait_for_line(&serial, "UCGUEST booted", Duration::from_secs(30)).is_some();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    booted
}

/// The file's text (lossy), empty when it cannot be read.
pub fn read_log(file: &Path) -> String {
    std::fs::read(file)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits (up to `within`) for a line of `file` holding `needle`; answers how long
/// that took.
pub fn wait_for_line(file: &Path, needle: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if read_log(file).lines().any(|l| l.contains(needle)) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
