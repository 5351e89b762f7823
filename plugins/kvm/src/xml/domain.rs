//! A domain's XML: the one we define for a new instance ([`DomainSpec`] written as
//! [`DomainXml`]) and the parts we read back from libvirt ([`DomainDoc`]).

use serde::{Deserialize, Serialize};

use super::{Amount, InstanceMeta, NAMESPACE};
use crate::error::KvmError;

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
    channel: Vec<ChannelXml>,
    memballoon: BalloonXml,
}

/// `<channel type="unix"><source mode="bind"/><target type="virtio" name=".."/>`:
/// a virtio-serial port whose host end is a unix socket that QEMU listens on
/// (libvirt picks its path, under its own state directory, and connects to it).
#[derive(Debug, Serialize)]
struct ChannelXml {
    #[serde(rename = "@type")]
    kind: &'static str,
    source: ChannelSourceXml,
    target: ChannelTargetXml,
}

#[derive(Debug, Serialize)]
struct ChannelSourceXml {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Debug, Serialize)]
struct ChannelTargetXml {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@name")]
    name: &'static str,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogXml>,
}

/// `<log file="..." append="on"/>` on a character device: what the guest writes to
/// it is also kept in that file (by virtlogd), across restarts of the guest (append).
#[derive(Debug, Serialize)]
struct LogXml {
    #[serde(rename = "@file")]
    file: String,
    #[serde(rename = "@append")]
    append: &'static str,
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

/// What a new domain's network interface attaches to, as resolved at create (a
/// `bridge` source that names a libvirt network rather than a host bridge becomes
/// [`Nic::Network`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// A libvirt virtual network, by name.
    Network(String),
    /// A host bridge, by name.
    Bridge(String),
    /// QEMU user-mode networking.
    User,
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
    /// The network interface, if any.
    pub nic: Option<Nic>,
    /// The file the serial console's output is kept in, if any.
    pub console_log: Option<String>,
    /// Whether the domain gets a QEMU guest agent channel ([`GUEST_AGENT_CHANNEL`]).
    pub guest_agent: bool,
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
        let interface = self.nic.as_ref().map(|nic| match nic {
            Nic::Network(net) => (
                "network",
                Some(IfaceSourceXml {
                    network: Some(net.clone()),
                    bridge: None,
                }),
            ),
            Nic::Bridge(br) => (
                "bridge",
                Some(IfaceSourceXml {
                    network: None,
                    bridge: Some(br.clone()),
                }),
            ),
            Nic::User => ("user", None),
        });
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
                serial: SerialXml {
                    kind: "pty",
                    log: self
                        .console_log
                        .clone()
                        .map(|file| LogXml { file, append: "on" }),
                },
                channel: self
                    .guest_agent
                    .then_some(ChannelXml {
                        kind: "unix",
                        source: ChannelSourceXml { mode: "bind" },
                        target: ChannelTargetXml {
                            kind: "virtio",
                            name: GUEST_AGENT_CHANNEL,
                        },
                    })
                    .into_iter()
                    .collect(),
                memballoon: BalloonXml {
                    model: "virtio",
                    stats: BalloonStatsXml { period: 5 },
                },
            },
        };
        super::to_xml(&doc)
    }
}

/// The name of the QEMU guest agent's virtio-serial channel.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// The parts of a domain's XML we read back.
#[derive(Debug, Clone, Deserialize)]
pub struct DomainDoc {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    #[serde(default)]
    metadata: Option<MetadataDoc>,
    memory: Option<Amount>,
    #[serde(rename = "currentMemory", default)]
    current_memory: Option<Amount>,
    vcpu: Option<VcpuDoc>,
    #[serde(default)]
    devices: DevicesDoc,
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
    #[serde(default)]
    serial: Vec<SerialDoc>,
    #[serde(default)]
    channel: Vec<ChannelDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct ChannelDoc {
    #[serde(rename = "@type", default)]
    kind: Option<String>,
    #[serde(default)]
    target: Option<ChannelTargetDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct ChannelTargetDoc {
    #[serde(rename = "@type", default)]
    kind: Option<String>,
    #[serde(rename = "@name", default)]
    name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct SerialDoc {
    #[serde(default)]
    log: Option<LogDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct LogDoc {
    #[serde(rename = "@file", default)]
    file: Option<String>,
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
    /// Parses a domain XML. Other applications' elements in `<metadata>` are left
    /// out first: serde matches on the local name, so a `<nova:instance>` would
    /// otherwise be read as (or clash with) ours and fail the whole domain.
    pub fn parse(xml: &str) -> Result<Self, KvmError> {
        super::parse(&without_foreign_metadata(xml)?)
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
            .map(Amount::bytes)
            .unwrap_or(0)
    }

    /// Maximum memory in bytes.
    pub fn max_memory(&self) -> u64 {
        self.memory.as_ref().map(Amount::bytes).unwrap_or(0)
    }

    /// Disks.
    pub fn disks(&self) -> &[DiskDoc] {
        &self.devices.disk
    }

    /// Network interfaces.
    pub fn interfaces(&self) -> &[InterfaceDoc] {
        &self.devices.interface
    }

    /// Whether the domain has a QEMU guest agent channel: `<channel type='unix'>`
    /// with `<target type='virtio' name='org.qemu.guest_agent.0'/>`.
    pub fn has_guest_agent(&self) -> bool {
        self.devices.channel.iter().any(|c| {
            c.kind.as_deref() == Some("unix")
                && c.target.as_ref().is_some_and(|t| {
                    t.kind.as_deref() == Some("virtio")
                        && t.name.as_deref() == Some(GUEST_AGENT_CHANNEL)
                })
        })
    }

    /// The file the first serial port's output is kept in (`<serial><log file>`).
    pub fn console_log(&self) -> Option<&str> {
        self.devices
            .serial
            .iter()
            .find_map(|s| s.log.as_ref()?.file.as_deref())
    }
}

/// The domain XML without the children of `/domain/metadata` that are not in our
/// namespace (bound to [`super::NS_PREFIX`] as libvirt writes it).
fn without_foreign_metadata(xml: &str) -> Result<String, KvmError> {
    use quick_xml::events::Event;
    let err = |e: &dyn std::fmt::Display| KvmError::Xml(e.to_string());
    let ours = |e: &quick_xml::events::BytesStart<'_>| {
        e.attributes().flatten().any(|a| {
            a.key.into_inner() == format!("xmlns:{}", super::NS_PREFIX) && *a.value == *NAMESPACE
        })
    };
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(xml.len()));
    // The open elements' local names, and the depth of a skipped element.
    let mut path: Vec<String> = Vec::new();
    let mut skipping: Option<usize> = None;
    loop {
        let event = reader.read_event().map_err(|e| err(&e))?;
        let in_metadata = path.len() == 2 && path[0] == "domain" && path[1] == "metadata";
        match &event {
            Event::Eof => break,
            Event::Start(e) => {
                if skipping.is_none() && in_metadata && !ours(e) {
                    skipping = Some(path.len());
                }
                path.push(e.local_name().into_inner().to_owned());
                if skipping.is_some() {
                    continue;
                }
            }
            Event::Empty(e) if skipping.is_some() || (in_metadata && !ours(e)) => continue,
            Event::End(_) => {
                path.pop();
                if let Some(depth) = skipping {
                    if path.len() == depth {
                        skipping = None;
                    }
                    continue;
                }
            }
            _ if skipping.is_some() => continue,
            _ => {}
        }
        writer.write_event(event).map_err(|e| err(&e))?;
    }
    String::from_utf8(writer.into_inner()).map_err(|e| err(&e))
}
