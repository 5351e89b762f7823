//! Domain XML, written and read through serde (quick-xml), never by string
//! concatenation: every value from a client is escaped by the serializer.
//!
//! Our own data (id, labels, timestamps, the applied config) lives in the domain's
//! `<metadata>` as `<unicompute:instance xmlns:unicompute="NAMESPACE">`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::InstanceConfig;
use crate::error::KvmError;

/// Our XML namespace inside `<metadata>`.
pub const NAMESPACE: &str = "https://unicompute.dev/xmlns/kvm/instance/1";
/// The prefix (libvirt's "key") bound to [`NAMESPACE`].
pub const NS_PREFIX: &str = "unicompute";

/// What we keep in a domain's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMeta {
    /// The namespace binding, written when embedded in a full domain XML.
    #[serde(
        rename = "@xmlns:unicompute",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub xmlns: Option<String>,
    /// The host's id of the instance.
    pub id: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change made through the API.
    pub updated_at: String,
    /// Whether the domain was ever started by us (`created` vs `stopped`).
    #[serde(default)]
    pub started: bool,
    /// Labels.
    #[serde(default)]
    pub labels: LabelsXml,
    /// The applied instance config.
    pub config: InstanceConfig,
    /// The storage pool of the backend that made it: a backend manages only the
    /// domains of its own pool.
    #[serde(default)]
    pub pool: String,
    /// Path of the instance's disk volume.
    pub disk: String,
    /// Size of that disk in bytes.
    #[serde(default)]
    pub disk_size: u64,
    /// Path of the cloud-init seed volume, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

/// `<labels><label key="k">v</label>...</labels>`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelsXml {
    /// The labels.
    #[serde(default, rename = "label")]
    pub label: Vec<LabelXml>,
}

/// One label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelXml {
    /// The key.
    #[serde(rename = "@key")]
    pub key: String,
    /// The value.
    #[serde(rename = "$text", default)]
    pub value: String,
}

impl LabelsXml {
    /// From a map.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        LabelsXml {
            label: map
                .iter()
                .map(|(k, v)| LabelXml {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }
    /// To a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.label
            .iter()
            .map(|l| (l.key.clone(), l.value.clone()))
            .collect()
    }
}

impl InstanceMeta {
    /// The element handed to `virDomainSetMetadata` (libvirt adds the prefix).
    pub fn to_metadata_element(&self) -> Result<String, KvmError> {
        let mut plain = self.clone();
        plain.xmlns = None;
        quick_xml::se::to_string_with_root("instance", &plain)
            .map_err(|e| KvmError::Xml(e.to_string()))
    }
}

// ---- writing ----------------------------------------------------------------------

/// A new domain.
#[derive(Debug, Serialize)]
#[serde(rename = "domain")]
pub struct DomainXml {
    #[serde(rename = "@type")]
    kind: String,
    name: String,
    metadata: MetadataXml,
    memory: Amount,
    #[serde(rename = "currentMemory")]
    current_memory: Amount,
    vcpu: VcpuXml,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<CpuXml>,
    os: OsXml,
    features: FeaturesXml,
    clock: ClockXml,
    on_poweroff: &'static str,
    on_reboot: &'static str,
    on_crash: &'static str,
    devices: DevicesXml,
}

#[derive(Debug, Serialize)]
struct MetadataXml {
    #[serde(rename = "unicompute:instance")]
    instance: InstanceMeta,
}

#[derive(Debug, Serialize, Deserialize)]
struct Amount {
    #[serde(rename = "@unit", default)]
    unit: Option<String>,
    #[serde(rename = "$text")]
    value: u64,
}

impl Amount {
    fn kib(bytes: u64) -> Self {
        Amount {
            unit: Some("KiB".into()),
            value: bytes.div_ceil(1024),
        }
    }
    fn bytes(&self) -> u64 {
        let mult: u64 = match self.unit.as_deref().unwrap_or("KiB") {
            "b" | "bytes" => 1,
            "KB" => 1000,
            "k" | "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "M" | "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "G" | "GiB" => 1 << 30,
            "TB" => 1_000_000_000_000,
            "T" | "TiB" => 1 << 40,
            _ => 1 << 10,
        };
        self.value.saturating_mul(mult)
    }
}

#[derive(Debug, Serialize)]
struct VcpuXml {
    #[serde(rename = "@placement")]
    placement: &'static str,
    #[serde(rename = "@current")]
    current: u32,
    #[serde(rename = "$text")]
    max: u32,
}

/// `<cpu mode="..."/>` (see `cpu_mode` in the backend's settings).
#[derive(Debug, Serialize)]
struct CpuXml {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Debug, Serialize)]
struct OsXml {
    #[serde(rename = "type")]
    os_type: &'static str,
    boot: BootXml,
}

#[derive(Debug, Serialize)]
struct BootXml {
    #[serde(rename = "@dev")]
    dev: &'static str,
}

#[derive(Debug, Serialize)]
struct FeaturesXml {
    acpi: (),
    apic: (),
}

#[derive(Debug, Serialize)]
struct ClockXml {
    #[serde(rename = "@offset")]
    offset: &'static str,
}

#[derive(Debug, Serialize)]
struct DevicesXml {
    disk: Vec<DiskXml>,
    interface: Vec<InterfaceXml>,
    serial: SerialXml,
    memballoon: BalloonXml,
}

#[derive(Debug, Serialize)]
struct DiskXml {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: DriverXml,
    source: FileSourceXml,
    target: TargetXml,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<()>,
}

#[derive(Debug, Serialize)]
struct DriverXml {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    format: String,
}

#[derive(Debug, Serialize)]
struct FileSourceXml {
    #[serde(rename = "@file")]
    file: String,
}

#[derive(Debug, Serialize)]
struct TargetXml {
    #[serde(rename = "@dev")]
    dev: &'static str,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Debug, Serialize)]
struct InterfaceXml {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<IfaceSourceXml>,
    model: ModelXml,
}

#[derive(Debug, Serialize)]
struct IfaceSourceXml {
    #[serde(rename = "@network", skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(rename = "@bridge", skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
}

#[derive(Debug, Serialize)]
struct ModelXml {
    #[serde(rename = "@type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct SerialXml {
    #[serde(rename = "@type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct BalloonXml {
    #[serde(rename = "@model")]
    model: &'static str,
    stats: BalloonStatsXml,
}

#[derive(Debug, Serialize)]
struct BalloonStatsXml {
    #[serde(rename = "@period")]
    period: u32,
}

/// What a new domain is made of.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    /// libvirt domain type (`kvm`, `qemu`, `test`).
    pub domain_type: String,
    /// Domain name = instance name.
    pub name: String,
    /// vCPUs at start.
    pub vcpus: u32,
    /// Most vCPUs the domain can be given live.
    pub max_vcpus: u32,
    /// `<cpu mode>`, when set.
    pub cpu_mode: Option<&'static str>,
    /// Memory in bytes.
    pub memory: u64,
    /// Disk path and format.
    pub disk: (String, String),
    /// Seed image path.
    pub seed: Option<String>,
    /// Our metadata.
    pub meta: InstanceMeta,
}

impl DomainSpec {
    /// The domain XML.
    pub fn to_xml(&self) -> Result<String, KvmError> {
        let mut disks = vec![DiskXml {
            kind: "file",
            device: "disk",
            driver: DriverXml {
                name: "qemu",
                format: self.disk.1.clone(),
            },
            source: FileSourceXml {
                file: self.disk.0.clone(),
            },
            target: TargetXml {
                dev: "vda",
                bus: "virtio",
            },
            readonly: None,
        }];
        if let Some(seed) = &self.seed {
            disks.push(DiskXml {
                kind: "file",
                device: "disk",
                driver: DriverXml {
                    name: "qemu",
                    format: "raw".into(),
                },
                source: FileSourceXml { file: seed.clone() },
                target: TargetXml {
                    dev: "vdb",
                    bus: "virtio",
                },
                readonly: Some(()),
            });
        }
        let config = &self.meta.config;
        use crate::config::NetworkType;
        let source = config.network_source.clone();
        let interface = match config.network_type {
            NetworkType::Network => Some((
                "network",
                Some(IfaceSourceXml {
                    network: source,
                    bridge: None,
                }),
            )),
            NetworkType::Bridge => Some((
                "bridge",
                Some(IfaceSourceXml {
                    network: None,
                    bridge: source,
                }),
            )),
            NetworkType::User => Some(("user", None)),
            NetworkType::None => None,
        };
        let mut meta = self.meta.clone();
        meta.xmlns = Some(NAMESPACE.to_owned());
        let doc = DomainXml {
            kind: self.domain_type.clone(),
            name: self.name.clone(),
            metadata: MetadataXml { instance: meta },
            memory: Amount::kib(self.memory),
            current_memory: Amount::kib(self.memory),
            vcpu: VcpuXml {
                placement: "static",
                current: self.vcpus,
                max: self.max_vcpus.max(self.vcpus),
            },
            cpu: self.cpu_mode.map(|mode| CpuXml { mode }),
            os: OsXml {
                os_type: "hvm",
                boot: BootXml { dev: "hd" },
            },
            features: FeaturesXml { acpi: (), apic: () },
            clock: ClockXml { offset: "utc" },
            on_poweroff: "destroy",
            on_reboot: "restart",
            on_crash: "destroy",
            devices: DevicesXml {
                disk: disks,
                interface: interface
                    .into_iter()
                    .map(|(kind, source)| InterfaceXml {
                        kind,
                        source,
                        model: ModelXml { kind: "virtio" },
                    })
                    .collect(),
                serial: SerialXml { kind: "pty" },
                memballoon: BalloonXml {
                    model: "virtio",
                    stats: BalloonStatsXml { period: 5 },
                },
            },
        };
        quick_xml::se::to_string(&doc).map_err(|e| KvmError::Xml(e.to_string()))
    }
}

// ---- storage ----------------------------------------------------------------------

/// A `dir` storage pool.
#[derive(Debug, Serialize)]
#[serde(rename = "pool")]
pub struct PoolXml {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: String,
    target: PathTargetXml,
}

#[derive(Debug, Serialize)]
struct PathTargetXml {
    path: String,
}

impl PoolXml {
    /// A `dir` pool at `path`.
    pub fn dir(name: &str, path: &str) -> Self {
        PoolXml {
            kind: "dir",
            name: name.to_owned(),
            target: PathTargetXml {
                path: path.to_owned(),
            },
        }
    }
    /// The XML.
    pub fn to_xml(&self) -> Result<String, KvmError> {
        quick_xml::se::to_string(self).map_err(|e| KvmError::Xml(e.to_string()))
    }
}

/// The parts of a pool's XML we read back.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolDoc {
    #[serde(default)]
    target: Option<PoolTargetDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct PoolTargetDoc {
    #[serde(default)]
    path: Option<String>,
}

impl PoolDoc {
    /// Parses a pool XML.
    pub fn parse(xml: &str) -> Result<Self, KvmError> {
        quick_xml::de::from_str(xml).map_err(|e| KvmError::Xml(e.to_string()))
    }
    /// The pool's directory.
    pub fn path(&self) -> Option<&str> {
        self.target.as_ref()?.path.as_deref()
    }
}

/// A volume, optionally backed by another image.
#[derive(Debug, Serialize)]
#[serde(rename = "volume")]
pub struct VolumeXml {
    name: String,
    capacity: Amount,
    target: VolTargetXml,
    #[serde(rename = "backingStore", skip_serializing_if = "Option::is_none")]
    backing_store: Option<BackingXml>,
}

#[derive(Debug, Serialize)]
struct VolTargetXml {
    format: FormatXml,
}

#[derive(Debug, Serialize)]
struct FormatXml {
    #[serde(rename = "@type")]
    kind: String,
}

#[derive(Debug, Serialize)]
struct BackingXml {
    path: String,
    format: FormatXml,
}

impl VolumeXml {
    /// A volume of `capacity` bytes in `format`, backed by `backing` (path, format).
    pub fn new(name: &str, capacity: u64, format: &str, backing: Option<(&str, &str)>) -> Self {
        VolumeXml {
            name: name.to_owned(),
            capacity: Amount {
                unit: Some("bytes".into()),
                value: capacity,
            },
            target: VolTargetXml {
                format: FormatXml {
                    kind: format.to_owned(),
                },
            },
            backing_store: backing.map(|(path, fmt)| BackingXml {
                path: path.to_owned(),
                format: FormatXml {
                    kind: fmt.to_owned(),
                },
            }),
        }
    }
    /// The XML.
    pub fn to_xml(&self) -> Result<String, KvmError> {
        quick_xml::se::to_string(self).map_err(|e| KvmError::Xml(e.to_string()))
    }
}

/// The parts of a volume's XML we read back.
#[derive(Debug, Clone, Deserialize)]
pub struct VolumeDoc {
    /// Capacity.
    capacity: AmountDoc,
    /// Format.
    target: VolTargetDoc,
    /// Backing image.
    #[serde(rename = "backingStore", default)]
    backing_store: Option<BackingDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct VolTargetDoc {
    #[serde(default)]
    format: Option<FormatDoc>,
    #[serde(default)]
    timestamps: Option<TimestampsDoc>,
}

/// `<timestamps><mtime>1700000000.123456789</mtime>...` of a volume's target.
#[derive(Debug, Clone, Deserialize)]
struct TimestampsDoc {
    #[serde(default)]
    mtime: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct FormatDoc {
    #[serde(rename = "@type")]
    kind: String,
}

#[derive(Debug, Clone, Deserialize)]
struct BackingDoc {
    #[serde(default)]
    path: Option<String>,
}

impl VolumeDoc {
    /// Parses a volume XML.
    pub fn parse(xml: &str) -> Result<Self, KvmError> {
        quick_xml::de::from_str(xml).map_err(|e| KvmError::Xml(e.to_string()))
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        Amount {
            unit: self.capacity.unit.clone(),
            value: self.capacity.value,
        }
        .bytes()
    }
    /// Format (`qcow2`, `raw`).
    pub fn format(&self) -> Option<&str> {
        self.target.format.as_ref().map(|f| f.kind.as_str())
    }
    /// Path of the backing image.
    pub fn backing_path(&self) -> Option<&str> {
        self.backing_store.as_ref()?.path.as_deref()
    }
    /// The file's modification time, in whole seconds since the epoch, when libvirt
    /// reports it (`dir` pools do).
    pub fn mtime_secs(&self) -> Option<i64> {
        let t = self.target.timestamps.as_ref()?.mtime.as_deref()?;
        t.split('.').next()?.trim().parse().ok()
    }
}

// ---- reading ----------------------------------------------------------------------

/// The parts of a domain's XML we read back.
#[derive(Debug, Clone, Deserialize)]
pub struct DomainDoc {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    #[serde(default)]
    metadata: Option<MetadataDoc>,
    memory: Option<AmountDoc>,
    #[serde(rename = "currentMemory", default)]
    current_memory: Option<AmountDoc>,
    vcpu: Option<VcpuDoc>,
    #[serde(default)]
    devices: DevicesDoc,
}

#[derive(Debug, Clone, Deserialize)]
struct AmountDoc {
    #[serde(rename = "@unit", default)]
    unit: Option<String>,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
struct MetadataDoc {
    // Other applications' metadata is skipped: only an element whose namespace is
    // ours is taken (see `DomainDoc::meta`). Matching is on the local name.
    #[serde(default)]
    instance: Option<InstanceMeta>,
}

#[derive(Debug, Clone, Deserialize)]
struct VcpuDoc {
    #[serde(rename = "@current", default)]
    current: Option<u32>,
    #[serde(rename = "$text")]
    max: u32,
}

#[derive(Debug, Clone, Deserialize, Default)]
struct DevicesDoc {
    #[serde(default)]
    disk: Vec<DiskDoc>,
    #[serde(default)]
    interface: Vec<InterfaceDoc>,
}

/// A disk of a domain.
#[derive(Debug, Clone, Deserialize)]
pub struct DiskDoc {
    /// `disk`, `cdrom`...
    #[serde(rename = "@device", default)]
    pub device: Option<String>,
    #[serde(default)]
    source: Option<DiskSourceDoc>,
    #[serde(default)]
    target: Option<DevDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct DiskSourceDoc {
    #[serde(rename = "@file", default)]
    file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct DevDoc {
    #[serde(rename = "@dev", default)]
    dev: Option<String>,
}

/// A network interface of a domain.
#[derive(Debug, Clone, Deserialize)]
pub struct InterfaceDoc {
    /// `network`, `bridge`, `user`...
    #[serde(rename = "@type")]
    pub kind: String,
    #[serde(default)]
    source: Option<IfaceSourceDoc>,
    #[serde(default)]
    target: Option<DevDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct IfaceSourceDoc {
    #[serde(rename = "@network", default)]
    network: Option<String>,
    #[serde(rename = "@bridge", default)]
    bridge: Option<String>,
}

impl InterfaceDoc {
    /// The network or bridge name.
    pub fn source(&self) -> Option<&str> {
        let s = self.source.as_ref()?;
        s.network.as_deref().or(s.bridge.as_deref())
    }
    /// The host-side device (`vnet3`) of a running domain.
    pub fn target_dev(&self) -> Option<&str> {
        self.target.as_ref()?.dev.as_deref()
    }
}

impl DiskDoc {
    /// The source file.
    pub fn file(&self) -> Option<&str> {
        self.source.as_ref()?.file.as_deref()
    }
    /// The guest device name (`vda`).
    pub fn target_dev(&self) -> Option<&str> {
        self.target.as_ref()?.dev.as_deref()
    }
}

impl DomainDoc {
    /// Parses a domain XML.
    pub fn parse(xml: &str) -> Result<Self, KvmError> {
        quick_xml::de::from_str(xml).map_err(|e| KvmError::Xml(e.to_string()))
    }

    /// Our metadata, when the domain is one of ours.
    pub fn meta(&self) -> Option<&InstanceMeta> {
        let m = self.metadata.as_ref()?.instance.as_ref()?;
        (m.xmlns.as_deref() == Some(NAMESPACE)).then_some(m)
    }

    /// Current vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.vcpu
            .as_ref()
            .map(|v| v.current.unwrap_or(v.max))
            .unwrap_or(1)
    }

    /// Most vCPUs.
    pub fn max_vcpus(&self) -> u32 {
        self.vcpu.as_ref().map(|v| v.max).unwrap_or(1)
    }

    /// Current memory in bytes.
    pub fn memory(&self) -> u64 {
        self.current_memory
            .as_ref()
            .or(self.memory.as_ref())
            .map(|a| {
                Amount {
                    unit: a.unit.clone(),
                    value: a.value,
                }
                .bytes()
            })
            .unwrap_or(0)
    }

    /// Maximum memory in bytes.
    pub fn max_memory(&self) -> u64 {
        self.memory
            .as_ref()
            .map(|a| {
                Amount {
                    unit: a.unit.clone(),
                    value: a.value,
                }
                .bytes()
            })
            .unwrap_or(0)
    }

    /// Disks.
    pub fn disks(&self) -> &[DiskDoc] {
        &self.devices.disk
    }

    /// Network interfaces.
    pub fn interfaces(&self) -> &[InterfaceDoc] {
        &self.devices.interface
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CloudInit, DiskFormat, NetworkType};

    fn meta() -> InstanceMeta {
        InstanceMeta {
            xmlns: None,
            id: "i-1".into(),
            created_at: "2024-06-04T10:00:00Z".into(),
            updated_at: "2024-06-04T10:00:00Z".into(),
            started: false,
            labels: LabelsXml::from_map(&BTreeMap::from([
                ("app".to_string(), "<web & \"x\">".to_string()),
                ("empty".to_string(), String::new()),
            ])),
            config: InstanceConfig {
                image: "ubuntu-22.04".into(),
                disk_format: DiskFormat::Qcow2,
                network_type: NetworkType::Bridge,
                network_source: Some("br0'\"><evil/>".into()),
                cloud_init: Some(CloudInit {
                    user_data: Some("#cloud-config\n</instance>\n".into()),
                    meta_data: None,
                    network_config: None,
                }),
            },
            pool: "unicompute".into(),
            disk: "/p/i-1.qcow2".into(),
            disk_size: 20 << 30,
            seed: Some("/p/i-1-seed.img".into()),
        }
    }

    fn spec() -> DomainSpec {
        DomainSpec {
            domain_type: "kvm".into(),
            name: "vm<1>".into(),
            vcpus: 2,
            max_vcpus: 4,
            cpu_mode: Some("host-passthrough"),
            memory: 2 << 30,
            disk: ("/p/i-1.qcow2".into(), "qcow2".into()),
            seed: Some("/p/i-1-seed.img".into()),
            meta: meta(),
        }
    }

    #[test]
    fn domain_xml_round_trips_and_escapes() {
        let xml = spec().to_xml().unwrap();
        assert!(xml.starts_with("<domain type=\"kvm\">"), "{xml}");
        assert!(!xml.contains("<evil/>"), "{xml}");
        assert!(xml.contains("<readonly/>"), "{xml}");
        assert!(xml.contains("<acpi/>"), "{xml}");
        assert!(xml.contains("<cpu mode=\"host-passthrough\"/>"), "{xml}");
        let default = DomainSpec {
            cpu_mode: None,
            ..spec()
        };
        assert!(!default.to_xml().unwrap().contains("<cpu"));
        let doc = DomainDoc::parse(&xml.replace(
            "<domain type=\"kvm\">",
            "<domain type=\"kvm\"><uuid>u-1</uuid>",
        ))
        .unwrap();
        assert_eq!(doc.name, "vm<1>");
        assert_eq!(doc.vcpus(), 2);
        assert_eq!(doc.max_vcpus(), 4);
        assert_eq!(doc.memory(), 2 << 30);
        let m = doc.meta().unwrap();
        let mut expected = meta();
        expected.xmlns = Some(NAMESPACE.into());
        assert_eq!(m, &expected);
        assert_eq!(doc.disks().len(), 2);
        assert_eq!(doc.disks()[0].file(), Some("/p/i-1.qcow2"));
        assert_eq!(doc.interfaces()[0].kind, "bridge");
        assert_eq!(doc.interfaces()[0].source(), Some("br0'\"><evil/>"));
    }

    #[test]
    fn foreign_metadata_is_not_ours() {
        let xml = r#"<domain type="kvm"><name>n</name><uuid>u</uuid>
            <metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>x</nova:name></nova:instance></metadata>
            <memory unit="KiB">1024</memory><vcpu>1</vcpu><devices/></domain>"#;
        // Either it fails to parse as ours or parses without our namespace.
        if let Ok(doc) = DomainDoc::parse(xml) {
            assert!(doc.meta().is_none());
        }
    }

    #[test]
    fn metadata_element_has_no_prefix() {
        let s = meta().to_metadata_element().unwrap();
        assert!(s.starts_with("<instance>"), "{s}");
    }

    #[test]
    fn pool_xml_round_trips() {
        let xml = PoolXml::dir("p", "/var/lib/x").to_xml().unwrap();
        assert_eq!(
            xml,
            "<pool type=\"dir\"><name>p</name><target><path>/var/lib/x</path></target></pool>"
        );
        assert_eq!(PoolDoc::parse(&xml).unwrap().path(), Some("/var/lib/x"));
    }

    #[test]
    fn memory_units() {
        let a = Amount {
            unit: Some("MiB".into()),
            value: 3,
        };
        assert_eq!(a.bytes(), 3 << 20);
    }
}
