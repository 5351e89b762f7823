//! Our record inside a domain's `<metadata>`: `<unicompute:instance
//! xmlns:unicompute="NAMESPACE">` with the id, labels, timestamps, the applied config
//! and the disk paths.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::KvmError;
use crate::spec::InstanceConfig;

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
