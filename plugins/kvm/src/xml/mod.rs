//! The XML we hand libvirt and read back from it, written and read through serde
//! (quick-xml), never by string concatenation: every value from a client is
//! escaped by the serializer.
//!
//! - `metadata`: our record in a domain's `<metadata>` (`<unicompute:instance>`);
//! - `domain`: the domain we define and the parts of a domain we read back;
//! - `pool`: the storage pool and volumes we define and read back.

mod domain;
mod metadata;
mod pool;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use domain::{
    DiskDoc, DomainDoc, DomainSpec, DomainXml, InterfaceDoc, Nic, GUEST_AGENT_CHANNEL,
};
pub use metadata::{InstanceMeta, LabelXml, LabelsXml, NAMESPACE, NS_PREFIX};
pub use pool::{PoolDoc, PoolXml, VolumeDoc, VolumeXml};

use crate::error::KvmError;

/// An amount of memory or storage: `<memory unit="KiB">1024</memory>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A value as XML.
fn to_xml<T: Serialize>(value: &T) -> Result<String, KvmError> {
    quick_xml::se::to_string(value).map_err(|e| KvmError::Xml(e.to_string()))
}

/// XML as a value.
fn parse<T: DeserializeOwned>(xml: &str) -> Result<T, KvmError> {
    quick_xml::de::from_str(xml).map_err(|e| KvmError::Xml(e.to_string()))
}

#[cfg(test)]
mod tests;
