//! The backend's own settings (`[backends.NAME]` in the host config) and the
//! per-instance `config` object a client sends at create time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
        }
    }
}

impl KvmConfig {
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

/// Whether the KVM device can be opened for reading and writing.
fn kvm_usable(dev: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .is_ok()
}

/// How an instance's disk is made from its template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A thin qcow2 overlay backed by the template.
    #[default]
    Qcow2,
    /// A full raw copy of the template.
    Raw,
}

impl DiskFormat {
    /// The libvirt / qemu-img format name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// How an instance is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    /// A libvirt virtual network (source: its name).
    #[default]
    Network,
    /// A host bridge (source: the bridge's name).
    Bridge,
    /// QEMU user-mode networking.
    User,
    /// No network interface.
    None,
}

impl NetworkType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Network => "network",
            NetworkType::Bridge => "bridge",
            NetworkType::User => "user",
            NetworkType::None => "none",
        }
    }
}

/// Whether text holds characters XML cannot carry: control characters other than
/// tab, newline and carriage return.
pub fn has_control_chars(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// How stored user-data begins: `sha256:<hex> (<n> bytes)`.
pub const REDACTED_PREFIX: &str = "sha256:";

/// cloud-init NoCloud data.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudInit {
    /// The `user-data` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The `meta-data` file; defaults to our id and the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<String>,
    /// The `network-config` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

/// The `config` object of a kvm instance, as applied (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceConfig {
    /// Template name.
    pub image: String,
    /// Disk format.
    #[serde(default)]
    pub disk_format: DiskFormat,
    /// Network type.
    #[serde(default)]
    pub network_type: NetworkType,
    /// Network or bridge name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_source: Option<String>,
    /// cloud-init seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
}

impl InstanceConfig {
    /// Reads the client's config, checks it and fills in defaults.
    pub fn from_request(
        config: &serde_json::Map<String, serde_json::Value>,
        default_network: &str,
    ) -> Result<Self, String> {
        let mut parsed: InstanceConfig =
            serde_json::from_value(serde_json::Value::Object(config.clone()))
                .map_err(|e| format!("invalid kvm config: {e}"))?;
        match parsed.network_type {
            NetworkType::Network => {
                if parsed.network_source.as_deref().unwrap_or("").is_empty() {
                    parsed.network_source = Some(default_network.to_owned());
                }
            }
            NetworkType::Bridge => {
                if parsed.network_source.as_deref().unwrap_or("").is_empty() {
                    return Err("networkType bridge needs networkSource (the bridge name)".into());
                }
            }
            NetworkType::User | NetworkType::None => {
                if parsed.network_source.is_some() {
                    return Err(format!(
                        "networkSource is not used with networkType {}",
                        parsed.network_type.as_str()
                    ));
                }
            }
        }
        Ok(parsed)
    }

    /// The config as kept in the domain's metadata and shown in the instance: the
    /// user-data (often holding passwords and keys) only as its SHA-256 and size,
    /// since the domain XML is readable through libvirt's read-only socket. The
    /// seed image holds the data itself.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        if let Some(ud) = c.cloud_init.as_mut().and_then(|ci| ci.user_data.as_mut()) {
            if !ud.starts_with(REDACTED_PREFIX) {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(ud.as_bytes());
                *ud = format!(
                    "{REDACTED_PREFIX}{} ({} bytes)",
                    hex::encode(digest),
                    ud.len()
                );
            }
        }
        c
    }

    /// Text that cannot go into XML (control characters other than tab, newline and
    /// carriage return), named, if the metadata would hold any.
    pub fn xml_illegal(&self) -> Option<&'static str> {
        let bad = has_control_chars;
        let ci = self.cloud_init.as_ref();
        if ci.and_then(|c| c.meta_data.as_deref()).is_some_and(bad) {
            return Some("cloudInit.metaData");
        }
        if ci
            .and_then(|c| c.network_config.as_deref())
            .is_some_and(bad)
        {
            return Some("cloudInit.networkConfig");
        }
        if self.network_source.as_deref().is_some_and(bad) {
            return Some("networkSource");
        }
        None
    }

    /// The config as the JSON object shown in an instance.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c: KvmConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c.uri, "qemu:///system");
        assert_eq!(c.storage_pool, "unicompute");
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
    fn instance_config_fills_defaults() {
        let c = InstanceConfig::from_request(&obj(json!({"image": "u"})), "default").unwrap();
        assert_eq!(c.disk_format, DiskFormat::Qcow2);
        assert_eq!(c.network_type, NetworkType::Network);
        assert_eq!(c.network_source.as_deref(), Some("default"));
        let j = c.to_json();
        assert_eq!(j["diskFormat"], "qcow2");
        assert_eq!(j["networkSource"], "default");
    }

    #[test]
    fn instance_config_rejects_bad_input() {
        for bad in [
            json!({}),
            json!({"image": "u", "diskFormat": "vmdk"}),
            json!({"image": "u", "networkType": "bridge"}),
            json!({"image": "u", "networkType": "none", "networkSource": "x"}),
            json!({"image": "u", "volumes": []}),
            json!({"image": "u", "cloudInit": {"userdata": "x"}}),
        ] {
            assert!(
                InstanceConfig::from_request(&obj(bad.clone()), "default").is_err(),
                "{bad}"
            );
        }
    }
}
