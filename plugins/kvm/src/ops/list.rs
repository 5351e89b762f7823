//! List (every instance of ours; also the host's resync, so it sweeps orphaned
//! volumes) and get.

use unicompute_plugin_api::Instance;
use virt::sys;

use crate::backend::Inner;
use crate::error::Result;

impl Inner {
    pub(crate) fn list(&self) -> Result<Vec<Instance>> {
        let conn = self.connect()?;
        let mut out = Vec::new();
        for found in self.scan(&conn)? {
            match self.instance(&found) {
                Ok(i) => out.push(i),
                // Gone between the scan and the read.
                Err(e) if e.libvirt_code() == Some(sys::VIR_ERR_NO_DOMAIN) => {}
                Err(e) => return Err(e),
            }
        }
        // A list is the host's resync: leftovers of a killed server go now.
        self.sweep(&conn);
        Ok(out)
    }

    pub(crate) fn get(&self, id: &str) -> Result<Instance> {
        let conn = self.connect()?;
        let found = self.find(&conn, id)?;
        self.instance(&found)
    }
}
