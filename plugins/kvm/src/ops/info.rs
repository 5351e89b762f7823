//! What the backend says about itself and its host: the description (libvirt and
//! hypervisor versions, capabilities), the health check, the host's resources and
//! the templates as images.

use unicompute_plugin_api::{BackendDescription, HostResources, Image, InstanceType};

use crate::backend::Inner;
use crate::error::{lv, LibvirtOp, Result};
use crate::storage;

/// A libvirt version number (`major * 1_000_000 + minor * 1000 + micro`) as text.
fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

impl Inner {
    pub(crate) fn describe(&self) -> Result<BackendDescription> {
        let conn = self.connect()?;
        let lib = conn
            .lib_version()
            .map_err(lv(LibvirtOp::ReadLibvirtVersion))?;
        let hyp = conn
            .hyp_version()
            .map_err(lv(LibvirtOp::ReadHypervisorVersion))?;
        let driver = conn.driver_type().map_err(lv(LibvirtOp::ReadDriverType))?;
        let mut extra = serde_json::Map::new();
        extra.insert("hypervisor".into(), driver.into());
        extra.insert("hypervisorVersion".into(), version_string(hyp).into());
        extra.insert("libvirtVersion".into(), version_string(lib).into());
        extra.insert("uri".into(), self.config.uri.clone().into());
        extra.insert("domainType".into(), self.domain_type.clone().into());
        extra.insert(
            "storagePool".into(),
            self.config.storage_pool.clone().into(),
        );
        Ok(BackendDescription {
            version: version_string(lib),
            api_version: version_string(lib),
            capabilities: [
                "vms",
                "templates",
                "pause",
                "live-update",
                "cloud-init",
                "events",
                "logs",
                "console",
                "exec",
            ]
            .map(String::from)
            .to_vec(),
            supported_types: vec![InstanceType::Vm],
            extra,
        })
    }

    pub(crate) fn health(&self) -> Result<()> {
        let conn = self.connect()?;
        conn.lib_version().map_err(lv(LibvirtOp::Ping))?;
        Ok(())
    }

    pub(crate) fn host_resources(&self) -> Result<HostResources> {
        let conn = self.connect()?;
        self.host(&conn)
    }

    pub(crate) fn images(&self) -> Result<Vec<Image>> {
        Ok(storage::list_templates(&self.config.templates_dir)?
            .iter()
            .map(storage::Template::to_image)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_as_dotted() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }
}
