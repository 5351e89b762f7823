//! What the backend tells of itself and its engine: `describe` (versions,
//! capabilities, driver), `health` (a ping within the connect timeout) and the local
//! images.

use std::sync::atomic::Ordering;

use bollard::query_parameters::ListImagesOptions;
use chrono::{TimeZone, Utc};
use unicompute_plugin_api::{BackendDescription, Image, InstanceType};

use super::Result;
use crate::backend::{Shared, QUOTA_YES};

impl Shared {
    pub(crate) async fn describe(&self) -> Result<BackendDescription> {
        let version = self
            .engine
            .quick("version", |d| async move { d.version().await })
            .await?;
        let info = self
            .engine
            .quick("info", |d| async move { d.info().await })
            .await?;
        let negotiated = self.engine.client().await?.client_version().to_string();
        let mut capabilities: Vec<String> = [
            "containers",
            "images",
            "networks",
            "volumes",
            "pause",
            "live-update",
            "events",
            "usage",
            "logs",
            "console",
            "exec",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if self.storage_quota.load(Ordering::Relaxed) == QUOTA_YES {
            capabilities.push("storage-quota".into());
        }
        let mut extra = unicompute_plugin_api::JsonMap::new();
        extra.insert("negotiatedApiVersion".into(), negotiated.into());
        if let Some(v) = version.min_api_version {
            extra.insert("minApiVersion".into(), v.into());
        }
        for (key, value) in [
            ("storageDriver", info.driver),
            ("operatingSystem", info.operating_system),
            ("kernelVersion", info.kernel_version),
            ("os", version.os),
            ("arch", version.arch),
        ] {
            if let Some(v) = value {
                extra.insert(key.into(), v.into());
            }
        }
        if let Some(v) = info.cgroup_version {
            extra.insert("cgroupVersion".into(), v.to_string().into());
        }
        Ok(BackendDescription {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            capabilities,
            supported_types: vec![InstanceType::Container],
            extra,
        })
    }

    pub(crate) async fn health(&self) -> Result<()> {
        let timeout = self.engine.config().connect_timeout();
        self.engine
            .call("ping", timeout, |d| async move { d.ping().await })
            .await?;
        Ok(())
    }

    pub(crate) async fn images(&self) -> Result<Vec<Image>> {
        let options = ListImagesOptions::default();
        let images = self
            .engine
            .quick(
                "images",
                |d| async move { d.list_images(Some(options)).await },
            )
            .await?;
        let mut out = Vec::new();
        for img in images {
            let created_at = Utc.timestamp_opt(img.created, 0).single();
            let names: Vec<String> = img
                .repo_tags
                .iter()
                .filter(|t| t.as_str() != "<none>:<none>")
                .cloned()
                .collect();
            let names = if names.is_empty() {
                vec![img.id.clone()]
            } else {
                names
            };
            for name in names {
                out.push(Image {
                    name,
                    id: Some(img.id.clone()),
                    size: Some(img.size.max(0) as u64),
                    format: Some("oci".into()),
                    created_at,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
