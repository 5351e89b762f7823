//! KVM fixtures: a private templates directory with a small template made by
//! qemu-img, a private storage pool, and cleanup of every domain, volume and pool the
//! test made (also on failure), checked through virsh.

use std::path::PathBuf;
use std::process::Command;

use crate::{dead_owner, owned, FileLock, TempDir};

/// Runs virsh on qemu:///system; returns (success, stdout).
pub fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .expect("run virsh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// A private kvm backend setup: templates, pool, names. Cleans up on drop.
pub struct KvmFixture {
    /// Holds templates and the pool's directory.
    pub dir: TempDir,
    /// The storage pool name.
    pub pool: String,
    /// Domain names made by the test start with this.
    pub prefix: String,
    // The system libvirtd is not restarted while a fixture lives.
    _libvirtd: FileLock,
}

const DOMAIN_PREFIX: &str = "ucvm";
const POOL_PREFIX: &str = "uc-pool";

/// Removes the domains and pools of fixtures whose test process is gone (a killed
/// run, whose drop never ran).
pub fn sweep_stale() {
    for d in virsh(&["list", "--all", "--name"]).1.lines() {
        if dead_owner(d, DOMAIN_PREFIX) {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", d, "--nvram"]);
        }
    }
    for p in virsh(&["pool-list", "--all", "--name"]).1.lines() {
        if dead_owner(p, POOL_PREFIX) {
            let _ = virsh(&["pool-destroy", p]);
            let _ = virsh(&["pool-undefine", p]);
        }
    }
}

impl KvmFixture {
    /// Makes a templates dir with `ubuntu-22.04.qcow2` (64 MiB, empty: no OS).
    pub fn new() -> KvmFixture {
        let libvirtd = FileLock::libvirtd_shared();
        sweep_stale();
        let dir = TempDir::new("uc-kvm");
        let templates = dir.0.join("templates");
        std::fs::create_dir_all(&templates).expect("dir");
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(templates.join("ubuntu-22.04.qcow2"))
            .arg("64M")
            .status()
            .expect("qemu-img");
        assert!(ok.success(), "qemu-img create");
        KvmFixture {
            dir,
            pool: owned(POOL_PREFIX),
            prefix: owned(DOMAIN_PREFIX),
            _libvirtd: libvirtd,
        }
    }

    /// The templates directory.
    pub fn templates(&self) -> PathBuf {
        self.dir.0.join("templates")
    }

    /// The pool's directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.0.join("pool")
    }

    /// The `[backends.NAME]` settings for this fixture, as TOML lines.
    pub fn settings_toml(&self) -> String {
        format!(
            "uri = \"qemu:///system\"\ntemplates_dir = \"{}\"\nstorage_dir = \"{}\"\nstorage_pool = \"{}\"\n",
            self.templates().display(),
            self.storage().display(),
            self.pool
        )
    }

    /// A server with the kvm plugin as backend `kvm` on this fixture, with the domain
    /// type the test guest boots with.
    pub fn guest_server(&self) -> crate::Server {
        crate::Server::start_with(crate::ServerOptions {
            plugins: vec![crate::workspace_plugin("kvm")],
            toml: format!(
                "[backends.kvm]\nplugin = \"kvm\"\n{}domain_type = \"{}\"\n",
                self.settings_toml(),
                crate::guest::domain_type()
            ),
            ..Default::default()
        })
    }

    /// Domains whose name starts with the prefix.
    pub fn domains(&self) -> Vec<String> {
        virsh(&["list", "--all", "--name"])
            .1
            .lines()
            .filter(|l| l.starts_with(&self.prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Files in the pool directory.
    pub fn volumes(&self) -> Vec<String> {
        std::fs::read_dir(self.storage())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The serial console's log file named in a domain's XML, as virsh prints it.
fn console_log(xml: &str) -> Option<String> {
    let serial = &xml[xml.find("<serial ")?..];
    let serial = &serial[..serial.find("</serial>")?];
    let rest = &serial[serial.find("<log file='")? + "<log file='".len()..];
    Some(rest[..rest.find('\'')?].to_owned())
}

impl Default for KvmFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KvmFixture {
    fn drop(&mut self) {
        // The test's own domains, and any other made on this fixture's pool (a
        // `plugins check` run names its domain `uc-check-...`), also after a failure.
        let storage = self.storage().to_string_lossy().into_owned();
        let on_pool: Vec<String> = virsh(&["list", "--all", "--name"])
            .1
            .lines()
            .filter(|d| !d.is_empty() && !d.starts_with(&self.prefix))
            .filter(|d| virsh(&["dumpxml", d]).1.contains(&storage))
            .map(str::to_owned)
            .collect();
        for d in self.domains().into_iter().chain(on_pool) {
            // Its console log (`<log file='...'/>` on the serial port), which only
            // the backend's delete removes.
            if let Some(log) = console_log(&virsh(&["dumpxml", &d]).1) {
                let _ = std::fs::remove_file(log);
            }
            let _ = virsh(&["destroy", &d]);
            let _ = virsh(&["undefine", &d, "--nvram"]);
        }
        let _ = virsh(&["pool-destroy", &self.pool]);
        let _ = virsh(&["pool-undefine", &self.pool]);
    }
}
