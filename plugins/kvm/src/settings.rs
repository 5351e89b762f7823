//! The backend's own settings (`[backends.NAME]` in the host config): their
//! defaults, the domain type they resolve to, and their validation.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use unicompute_plugin_api::PluginError;

/// Settings of one kvm backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmConfig {
    /// libvirt connection URI (`qemu:///system`, `qemu+ssh://host/system`, `test:///...`).
    #[serde(default = "default_uri")]
    pub uri: String,
    /// Directory holding the templates (`<name>.qcow2`, `.img`, `.raw`).
    #[serde(default = "default_templates_dir")]
    pub templates_dir: PathBuf,
    /// Directory of the libvirt `dir` storage pool holding instance disks and seeds;
    /// created when missing.
    #[serde(default = "default_storage_dir")]
    pub storage_dir: PathBuf,
    /// Name of that storage pool.
    #[serde(default = "default_storage_pool")]
    pub storage_pool: String,
    /// libvirt domain type; `kvm` when `/dev/kvm` is usable, else `qemu`.
    #[serde(default)]
    pub domain_type: Option<String>,
    /// libvirt network used when `networkType` is `network` without a source.
    #[serde(default = "default_network")]
    pub default_network: String,
    /// The guest CPU model: none (QEMU's default, `qemu64`, works everywhere,
    /// also nested), `host-passthrough` (the host's CPU, fastest; some nested
    /// hypervisors refuse it), `host-model`, or `maximum`. Distributions built for
    /// x86-64-v2 and later need one of the last three.
    #[serde(default)]
    pub cpu_mode: Option<CpuMode>,
    /// How old (by its modification time) a file in the pool named like one of our
    /// instances' volumes, with no domain, must be before it is swept as the
    /// leftover of a create or delete that a killed server did not finish.
    #[serde(default = "default_orphan_grace_secs")]
    pub orphan_grace_secs: u64,
    /// The largest template an upload may write, in bytes (64 GiB by default).
    #[serde(default = "default_max_template_bytes")]
    pub max_template_bytes: u64,
    /// Directory (on the libvirt host) where each instance's serial console output is
    /// kept, as `<id>-serial.log` (written by virtlogd; removed with the instance).
    /// Unset: libvirt's own log directory, `/var/log/libvirt/qemu`, for a system URI
    /// (`qemu:///system`, `qemu+ssh://host/system`); none for others (a session
    /// daemon cannot write there), so no console log is kept.
    #[serde(default)]
    pub console_log_dir: Option<PathBuf>,
}

/// `<cpu mode="...">`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuMode {
    /// The host CPU as it is.
    HostPassthrough,
    /// A named model closest to the host CPU.
    HostModel,
    /// Every feature the hypervisor can give.
    Maximum,
}

impl CpuMode {
    /// libvirt's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuMode::HostPassthrough => "host-passthrough",
            CpuMode::HostModel => "host-model",
            CpuMode::Maximum => "maximum",
        }
    }
}

fn default_uri() -> String {
    "qemu:///system".into()
}
fn default_templates_dir() -> PathBuf {
    "/var/lib/unicompute/templates".into()
}
fn default_storage_dir() -> PathBuf {
    "/var/lib/unicompute/instances".into()
}
fn default_storage_pool() -> String {
    "unicompute".into()
}
fn default_network() -> String {
    "default".into()
}
fn default_orphan_grace_secs() -> u64 {
    600
}
fn default_max_template_bytes() -> u64 {
    64 << 30
}
/// libvirt's own log directory for QEMU domains of a system daemon.
pub const SYSTEM_CONSOLE_LOG_DIR: &str = "/var/log/libvirt/qemu";

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig {
            uri: default_uri(),
            templates_dir: default_templates_dir(),
            storage_dir: default_storage_dir(),
            storage_pool: default_storage_pool(),
            domain_type: None,
            default_network: default_network(),
            cpu_mode: None,
            orphan_grace_secs: default_orphan_grace_secs(),
            max_template_bytes: default_max_template_bytes(),
            console_log_dir: None,
        }
    }
}

impl KvmConfig {
    /// Checks what serde cannot: a plain pool name and absolute directories.
    /// `backend` is the backend's name, for the message.
    pub fn validate(&self, backend: &str) -> Result<(), PluginError> {
        if self.storage_pool.is_empty() || self.storage_pool.contains('/') {
            return Err(PluginError::config(format!(
                "backend {backend}: storage_pool must be a plain name"
            )));
        }
        // At least one sector; at most what a file offset holds.
        if self.max_template_bytes < 512 || self.max_template_bytes > i64::MAX as u64 {
            return Err(PluginError::config(format!(
                "backend {backend}: max_template_bytes must be between 512 and {}",
                i64::MAX
            )));
        }
        for (key, dir) in [
            ("templates_dir", Some(&self.templates_dir)),
            ("storage_dir", Some(&self.storage_dir)),
            ("console_log_dir", self.console_log_dir.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, dir)| Some((key, dir?)))
        {
            // libvirtd resolves paths from its own working directory, not ours.
            if !dir.is_absolute() {
                return Err(PluginError::config(format!(
                    "backend {backend}: {key} must be an absolute path, not {}",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Where console logs are kept: `console_log_dir`, else libvirt's log directory
    /// for a system URI, else nowhere.
    pub fn resolved_console_log_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.console_log_dir {
            return Some(dir.clone());
        }
        uri_is_system(&self.uri).then(|| SYSTEM_CONSOLE_LOG_DIR.into())
    }

    /// The domain type to write into domain XML.
    pub fn resolved_domain_type(&self) -> String {
        if let Some(t) = &self.domain_type {
            return t.clone();
        }
        if self.uri.starts_with("test:") {
            return "test".into();
        }
        if kvm_usable(Path::new("/dev/kvm")) {
            "kvm".into()
        } else {
            "qemu".into()
        }
    }
}

/// Whether a libvirt URI names a system daemon: its path is `/system`
/// (`qemu:///system`, `qemu+ssh://user@host/system?keyfile=...`).
pub(crate) fn uri_is_system(uri: &str) -> bool {
    let Some((_, rest)) = uri.split_once("://") else {
        return false;
    };
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_end_matches('/') == "/system"
}

/// Whether the KVM device can be opened for reading and writing.
fn kvm_usable(dev: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: KvmConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c.uri, "qemu:///system");
        assert_eq!(c.storage_pool, "unicompute");
        assert_eq!(c.max_template_bytes, 64 << 30);
        assert!(serde_json::from_value::<KvmConfig>(json!({"urii": "x"})).is_err());
        let t = KvmConfig {
            uri: "test:///default".into(),
            ..Default::default()
        };
        assert_eq!(t.resolved_domain_type(), "test");
        let set = KvmConfig {
            domain_type: Some("qemu".into()),
            ..Default::default()
        };
        assert_eq!(set.resolved_domain_type(), "qemu");
    }

    #[test]
    fn console_logs_go_to_libvirts_log_dir_on_a_system_daemon_only() {
        let on = |uri: &str| {
            KvmConfig {
                uri: uri.into(),
                ..Default::default()
            }
            .resolved_console_log_dir()
        };
        let system = Some(PathBuf::from("/var/log/libvirt/qemu"));
        assert_eq!(on("qemu:///system"), system);
        assert_eq!(on("qemu+ssh://root@h/system?keyfile=/k"), system);
        assert_eq!(on("qemu+tls://h/system"), system);
        assert_eq!(on("qemu:///session"), None);
        assert_eq!(on("qemu+unix:///session?socket=/tmp/s"), None);
        assert_eq!(on("test:///default"), None);
        assert_eq!(on("qemu:///systemd"), None);
        let set = KvmConfig {
            uri: "qemu:///session".into(),
            console_log_dir: Some("/srv/logs".into()),
            ..Default::default()
        };
        assert_eq!(
            set.resolved_console_log_dir(),
            Some(PathBuf::from("/srv/logs"))
        );
    }

    #[test]
    fn pool_names_are_plain_and_directories_absolute() {
        assert!(KvmConfig::default().validate("kvm").is_ok());
        for bad in [
            KvmConfig {
                storage_pool: String::new(),
                ..Default::default()
            },
            KvmConfig {
                storage_pool: "a/b".into(),
                ..Default::default()
            },
            KvmConfig {
                templates_dir: "templates".into(),
                ..Default::default()
            },
            KvmConfig {
                storage_dir: "./instances".into(),
                ..Default::default()
            },
            KvmConfig {
                max_template_bytes: 0,
                ..Default::default()
            },
            KvmConfig {
                console_log_dir: Some("logs".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.validate("kvm").is_err(), "{bad:?}");
        }
    }
}
