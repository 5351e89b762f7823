//! Storage XML: the `dir` pool and the volumes we define ([`PoolXml`], [`VolumeXml`])
//! and the parts of them we read back ([`PoolDoc`], [`VolumeDoc`]).

use serde::{Deserialize, Serialize};

use super::Amount;
use crate::error::KvmError;

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
        super::to_xml(self)
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
        super::parse(xml)
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
        super::to_xml(self)
    }
}

/// The parts of a volume's XML we read back.
#[derive(Debug, Clone, Deserialize)]
pub struct VolumeDoc {
    /// Capacity.
    capacity: Amount,
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
        super::parse(xml)
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity.bytes()
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
