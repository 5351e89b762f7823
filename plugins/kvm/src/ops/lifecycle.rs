//! The lifecycle operations: start, stop (graceful, then hard), restart, pause,
//! unpause and delete (the domain undefined, then its volumes removed).

use std::path::Path;
use std::time::{Duration, Instant};

use unicompute_plugin_api::{Instance, InstanceState, StopOptions};
use virt::domain::Domain;
use virt::sys;

use super::{remove_console_log, remove_qemu_log, undefine};
use crate::backend::Inner;
use crate::error::{lv, KvmError, LibvirtOp, Result};
use crate::record::{domain_state, is_active_state, Found};
use crate::storage;

/// How often a graceful stop checks whether the guest is off.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Destroys (powers off) an active domain; one that went off meanwhile is fine.
fn destroy(dom: &Domain) -> Result<()> {
    if let Err(source) = dom.destroy() {
        // It may have shut down between the check and the destroy.
        if dom.is_active().unwrap_or(true) {
            return Err(KvmError::Libvirt {
                op: LibvirtOp::DestroyDomain,
                source,
            });
        }
    }
    Ok(())
}

impl Inner {
    pub(crate) fn start(&self, id: &str) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        if is_active_state(self.state(&found)?) {
            return self.instance(&found);
        }
        let was_started = found.meta.started;
        if !was_started {
            // Before the start, so that the STARTED event already reads `started`.
            found.meta.started = true;
            self.write_meta(&found.dom, &found.meta)?;
        }
        if let Err(source) = found.dom.create() {
            // Started meanwhile by someone else (virsh): that is what was asked.
            if found.dom.is_active().unwrap_or(false) {
                return self.reread(&conn, id, &found.dom);
            }
            // Never ran: keep it `created` rather than `stopped`.
            if !was_started {
                found.meta.started = false;
                let _ = self.write_meta(&found.dom, &found.meta);
            }
            return Err(KvmError::Libvirt {
                op: LibvirtOp::StartDomain,
                source,
            });
        }
        self.touch(&mut found)?;
        tracing::info!(instance = %id, "started");
        self.reread(&conn, id, &found.dom)
    }

    pub(crate) fn stop(&self, id: &str, options: StopOptions) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        let state = self.state(&found)?;
        if !is_active_state(state) {
            return self.instance(&found);
        }
        let dom = &found.dom;
        let mut graceful = !options.force && options.timeout > 0;
        if graceful && state == InstanceState::Paused {
            // A frozen guest cannot see the ACPI button: thaw it first.
            graceful = dom.resume().is_ok();
        }
        if graceful {
            let deadline = Instant::now() + Duration::from_secs(options.timeout);
            // The ACPI power button: libvirt's default would ask the guest agent
            // first when the domain has one (new domains do, for exec). A driver
            // that takes no flags (test:///) gets the default.
            if dom
                .shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                .or_else(|_| dom.shutdown())
                .is_ok()
            {
                while Instant::now() < deadline && dom.is_active().unwrap_or(false) {
                    std::thread::sleep(STOP_POLL);
                }
            }
        }
        if dom.is_active().unwrap_or(false) {
            destroy(dom)?;
            tracing::info!(instance = %id, graceful, "stopped hard");
        } else {
            tracing::info!(instance = %id, "stopped gracefully");
        }
        self.touch(&mut found)?;
        self.reread(&conn, id, &found.dom)
    }

    pub(crate) fn restart(&self, id: &str, options: StopOptions) -> Result<Instance> {
        self.stop(id, options)?;
        self.start(id)
    }

    /// For pause and unpause: the instance as it is when it is in `done` already
    /// (nothing to do), nothing when it is in `from` (go on), else the refusal.
    fn toggle_from(
        &self,
        found: &Found,
        from: InstanceState,
        done: InstanceState,
        verb: &str,
    ) -> Result<Option<Instance>> {
        match self.state(found)? {
            s if s == done => self.instance(found).map(Some),
            s if s == from => Ok(None),
            other => Err(KvmError::InvalidState(format!(
                "cannot {verb} an instance that is {}",
                other.as_str()
            ))),
        }
    }

    pub(crate) fn pause(&self, id: &str) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        let (from, done) = (InstanceState::Running, InstanceState::Paused);
        if let Some(instance) = self.toggle_from(&found, from, done, "pause")? {
            return Ok(instance);
        }
        found.dom.suspend().map_err(lv(LibvirtOp::SuspendDomain))?;
        self.touch(&mut found)?;
        self.reread(&conn, id, &found.dom)
    }

    pub(crate) fn unpause(&self, id: &str) -> Result<Instance> {
        let conn = self.connect()?;
        let mut found = self.find(&conn, id)?;
        let (from, done) = (InstanceState::Paused, InstanceState::Running);
        if let Some(instance) = self.toggle_from(&found, from, done, "unpause")? {
            return Ok(instance);
        }
        // A guest suspended by its own power management wakes up; one paused by us
        // (or libvirt) resumes.
        let pm_suspended =
            domain_state(&found.dom).is_ok_and(|(state, _)| state == sys::VIR_DOMAIN_PMSUSPENDED);
        if pm_suspended {
            found.dom.pm_wakeup(0).map_err(lv(LibvirtOp::WakeDomain))?;
        } else {
            found.dom.resume().map_err(lv(LibvirtOp::ResumeDomain))?;
        }
        self.touch(&mut found)?;
        self.reread(&conn, id, &found.dom)
    }

    pub(crate) fn delete(&self, id: &str, force: bool) -> Result<()> {
        let conn = self.connect()?;
        let found = self.find(&conn, id)?;
        let state = self.state(&found)?;
        if found.dom.is_active().unwrap_or(false) {
            if !force {
                return Err(KvmError::InvalidState(format!(
                    "instance is {}; delete it with force",
                    state.as_str()
                )));
            }
            destroy(&found.dom)?;
        }
        undefine(&found.dom)?;
        // The id stays known until the worker sees the UNDEFINED event, so that the
        // host gets a Vanished event after any late Changed event of this domain.
        self.cpu.forget(&found.doc.uuid);
        // The domain is gone: from here on every volume is tried, and a failure is
        // logged rather than answered (a retry would find no instance to delete).
        // Only files inside this backend's pool are removed, whatever the metadata
        // says (a domain copied by hand carries our metadata too).
        let pool_dir = self.pool(&conn).map(|(_, dir)| dir);
        let mut volumes = vec![found.meta.disk.clone()];
        volumes.extend(found.meta.seed.clone());
        for path in volumes {
            // Directly in the pool's directory: `<pool>/../x` is not.
            let inside = pool_dir
                .as_ref()
                .is_ok_and(|dir| Path::new(&path).parent() == Some(dir.as_path()));
            if !inside {
                tracing::warn!(instance = %id, volume = %path, "volume outside the pool left in place");
                continue;
            }
            if let Err(e) =
                storage::delete_volume(&conn, &path, storage::uri_is_local(&self.config.uri))
            {
                tracing::error!(instance = %id, volume = %path, error = %e, "volume of a deleted instance not removed");
            }
        }
        remove_console_log(&self.config, id, found.doc.console_log());
        remove_qemu_log(&self.config, id, &found.doc.name);
        tracing::info!(instance = %id, "deleted");
        Ok(())
    }
}
