//! What a create request asks for, turned into what gets defined: the instance
//! `config` parsed and checked (disk format, network, cloud-init), the id and
//! labels checked, the template and sizes resolved ([`Plan`]), and from that the
//! domain definition ([`DomainSpec`]) with our metadata.

use std::path::Path;

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use unicompute_plugin_api::CreateRequest;
use virt::connect::Connect;

use crate::error::{KvmError, Result};
use crate::settings::KvmConfig;
use crate::storage::{self, Template};
use crate::xml::{DomainSpec, InstanceMeta, LabelsXml, Nic};

/// Memory of an instance when the request names none: 1 GiB.
const DEFAULT_MEMORY: u64 = 1 << 30;

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
    /// Whether the domain gets a QEMU guest agent channel (`org.qemu.guest_agent.0`),
    /// which exec needs: `true` unless the client says `false`. `None` only in the
    /// metadata of domains made before the field existed (they have no channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<bool>,
}

impl InstanceConfig {
    /// Reads the client's config, checks it and fills in defaults.
    pub fn from_request(
        config: &serde_json::Map<String, serde_json::Value>,
        default_network: &str,
    ) -> std::result::Result<Self, String> {
        let mut parsed: InstanceConfig =
            serde_json::from_value(serde_json::Value::Object(config.clone()))
                .map_err(|e| format!("invalid kvm config: {e}"))?;
        // On by default: a cloud image with qemu-guest-agent then has exec.
        parsed.guest_agent = Some(parsed.guest_agent.unwrap_or(true));
        match parsed.network_type {
            NetworkType::Network => {
                if parsed.network_source.as_deref().unwrap_or("").is_empty() {
                    parsed.network_source = Some(default_network.to_owned());
                }
            }
            NetworkType::Bridge => {
                if parsed.network_source.as_deref().unwrap_or("").is_empty() {
                    return Err("networkType bridge needs networkSource (a host bridge or a libvirt network)".into());
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

    /// Whether the domain gets a guest agent channel.
    pub fn wants_guest_agent(&self) -> bool {
        self.guest_agent != Some(false)
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

/// Checks that an id can name volumes (`<id>.qcow2`).
pub(crate) fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(KvmError::InvalidRequest(format!(
            "invalid instance id {id:?}"
        )))
    }
}

/// A create request checked without libvirt: its config, its template and the
/// sizes it asks for (defaults filled in).
pub(crate) struct Plan {
    /// The applied config.
    pub config: InstanceConfig,
    /// The template the disk is made from.
    pub template: Template,
    /// vCPUs.
    pub cores: u32,
    /// Memory in bytes.
    pub memory: u64,
    /// Disk size in bytes.
    pub size: u64,
    /// What the interface attaches to: set by [`Plan::resolve_network`].
    pub nic: Option<Nic>,
}

impl Plan {
    /// Reads and checks a create request's config, labels and sizes against the
    /// templates in `settings.templates_dir`.
    pub(crate) fn new(req: &CreateRequest, settings: &KvmConfig) -> Result<Plan> {
        let config = InstanceConfig::from_request(&req.config, &settings.default_network)
            .map_err(KvmError::InvalidRequest)?;
        if let Some(field) = config.xml_illegal() {
            return Err(KvmError::InvalidRequest(format!(
                "{field} holds control characters"
            )));
        }
        let xml_bad = has_control_chars;
        if let Some((k, _)) = req.labels.iter().find(|(k, v)| xml_bad(k) || xml_bad(v)) {
            return Err(KvmError::InvalidRequest(format!(
                "label {k:?} holds control characters"
            )));
        }
        let template = storage::find_template(&settings.templates_dir, &config.image)?;
        let cores = req.resources.cores().unwrap_or(1);
        let memory = req.resources.memory_limit().unwrap_or(DEFAULT_MEMORY);
        let size = req.resources.total_space().unwrap_or(template.virtual_size);
        if size < template.virtual_size {
            return Err(KvmError::TooSmall {
                field: "storage.totalSpace",
                requested: size,
                limit: template.virtual_size,
                of: format!("the size of template {}", template.name),
            });
        }
        Ok(Plan {
            config,
            template,
            cores,
            memory,
            size,
            nic: None,
        })
    }

    /// Resolves what the interface attaches to, refusing a network that libvirt would only
    /// refuse at start: a libvirt network that does not exist, or a bridge source
    /// that is neither a bridge on this host (local libvirt) nor a libvirt network.
    ///
    /// A `bridge` source that is not a host bridge but names a libvirt network (the
    /// spec's own example: `"networkType": "bridge", "networkSource": "default"`)
    /// attaches to that network, which is how libvirt puts a guest on the network's
    /// bridge. A host bridge of that name wins over a network.
    pub(crate) fn resolve_network(&mut self, conn: &Connect, uri: &str) -> Result<()> {
        self.nic = self.nic_on(conn, uri)?;
        Ok(())
    }

    fn nic_on(&self, conn: &Connect, uri: &str) -> Result<Option<Nic>> {
        let sys_net = Path::new("/sys/class/net");
        let is_network = |name: &str| conn.lookup_network_by_name(name).is_ok();
        let source = self.config.network_source.clone().unwrap_or_default();
        match self.config.network_type {
            NetworkType::Network if !is_network(&source) => Err(KvmError::InvalidRequest(format!(
                "libvirt network {source} does not exist"
            ))),
            NetworkType::Network => Ok(Some(Nic::Network(source))),
            NetworkType::Bridge => {
                // On this host the bridges can be seen; a remote one shows it at start.
                let sees_bridges = storage::uri_is_local(uri) && sys_net.is_dir();
                if sees_bridges && sys_net.join(&source).join("bridge").is_dir() {
                    Ok(Some(Nic::Bridge(source)))
                } else if is_network(&source) {
                    Ok(Some(Nic::Network(source)))
                } else if sees_bridges {
                    Err(KvmError::InvalidRequest(format!(
                        "{source} is neither a bridge on this host nor a libvirt network"
                    )))
                } else {
                    Ok(Some(Nic::Bridge(source)))
                }
            }
            NetworkType::User => Ok(Some(Nic::User)),
            NetworkType::None => Ok(None),
        }
    }

    /// The domain to define: `disk` and `seed` are the volumes made for it,
    /// `host_cpus` the most vCPUs it can be given live.
    pub(crate) fn domain(
        &self,
        req: &CreateRequest,
        settings: &KvmConfig,
        domain_type: String,
        host_cpus: u32,
        disk: String,
        seed: Option<String>,
    ) -> DomainSpec {
        let created = req.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let format = self.config.disk_format.as_str();
        DomainSpec {
            domain_type,
            name: req.name.clone(),
            vcpus: self.cores,
            max_vcpus: self.cores.max(host_cpus),
            cpu_mode: settings.cpu_mode.map(|m| m.as_str()),
            memory: self.memory,
            disk: (disk.clone(), format.to_owned()),
            seed: seed.clone(),
            nic: self.nic.clone(),
            guest_agent: self.config.wants_guest_agent(),
            console_log: settings.resolved_console_log_dir().map(|dir| {
                crate::console_log::path(&dir, &req.id)
                    .to_string_lossy()
                    .into_owned()
            }),
            meta: InstanceMeta {
                xmlns: None,
                id: req.id.clone(),
                created_at: created.clone(),
                updated_at: created,
                started: req.start,
                labels: LabelsXml::from_map(&req.labels),
                config: self.config.redacted(),
                pool: settings.storage_pool.clone(),
                disk,
                disk_size: self.size,
                seed,
            },
        }
    }
}

/// The domain type for a new domain: as configured, else as probed at start
/// (`probed`) for a local libvirt, else (a remote one) `kvm` when its
/// capabilities offer it.
pub(crate) fn domain_type_on(settings: &KvmConfig, probed: &str, conn: &Connect) -> String {
    if settings.domain_type.is_some() || storage::uri_is_local(&settings.uri) {
        return probed.to_owned();
    }
    match conn.capabilities() {
        Ok(caps)
            if caps.contains("<domain type='kvm'") || caps.contains("<domain type=\"kvm\"") =>
        {
            "kvm".into()
        }
        Ok(_) => "qemu".into(),
        Err(_) => probed.to_owned(),
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
    fn instance_config_fills_defaults() {
        let c = InstanceConfig::from_request(&obj(json!({"image": "u"})), "default").unwrap();
        assert_eq!(c.disk_format, DiskFormat::Qcow2);
        assert_eq!(c.network_type, NetworkType::Network);
        assert_eq!(c.network_source.as_deref(), Some("default"));
        assert_eq!(c.guest_agent, Some(true));
        assert!(c.wants_guest_agent());
        let j = c.to_json();
        assert_eq!(j["diskFormat"], "qcow2");
        assert_eq!(j["networkSource"], "default");
        assert_eq!(j["guestAgent"], true);
        // The opt-out is kept and shown.
        let c = InstanceConfig::from_request(
            &obj(json!({"image": "u", "guestAgent": false})),
            "default",
        )
        .unwrap();
        assert_eq!(c.guest_agent, Some(false));
        assert!(!c.wants_guest_agent());
        assert_eq!(c.to_json()["guestAgent"], false);
        // A domain made before the field existed: nothing is claimed.
        let old: InstanceConfig = serde_json::from_value(json!({"image": "u"})).unwrap();
        assert_eq!(old.guest_agent, None);
        assert!(!old.to_json().contains_key("guestAgent"));
    }

    #[test]
    fn ids_must_be_volume_safe() {
        assert!(check_id("inst-1a2b_3.x").is_ok());
        for bad in ["", "../x", "a/b", ".x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
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
            json!({"image": "u", "guestAgent": "no"}),
            json!({"image": "u", "guestAgent": 0}),
            json!({"image": "u", "guest_agent": false}),
        ] {
            assert!(
                InstanceConfig::from_request(&obj(bad.clone()), "default").is_err(),
                "{bad}"
            );
        }
    }
}
