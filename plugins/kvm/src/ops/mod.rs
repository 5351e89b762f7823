//! The backend's operations, one file per group, each an `impl Inner` block that
//! `backend.rs` calls; and the undefine of a domain, which create (its rollback)
//! and delete share.

mod create;
mod images;
mod info;
mod lifecycle;
mod limits;
mod list;
pub(crate) mod streams;
mod update;
mod usage;

pub(crate) use create::Creating;
pub(crate) use images::Cancels;

use std::path::Path;

use virt::domain::Domain;
use virt::sys;

use crate::error::{lv, LibvirtOp, Result};
use crate::settings::KvmConfig;
use crate::{console_log, storage};

/// Undefines a domain with its managed save, snapshots, checkpoints and NVRAM.
fn undefine(dom: &Domain) -> Result<()> {
    let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
    match dom.undefine_flags(flags) {
        Ok(()) => Ok(()),
        // Drivers without some of these flags (test:///) take a plain undefine.
        Err(_) => dom.undefine().map_err(lv(LibvirtOp::UndefineDomain)),
    }
}

/// Removes instance `id`'s console log file (`file`, as its domain's XML names it),
/// and only when it is the one this backend names (`<id>-serial.log` in
/// `console_log_dir`) on a local libvirt (a remote one keeps it on its own host).
/// Failures are logged: the instance is gone by then.
/// Removes libvirt's own log of a deleted domain (`<name>.log` and its rotated
/// copies in libvirt's qemu log directory, written by QEMU and virtlogd at each
/// start): libvirt leaves it when a domain is undefined, and a host that creates and
/// deletes many instances would keep one file per instance forever. Only for a local
/// system URI (whose directory is known), and only a plain file name.
fn remove_qemu_log(config: &KvmConfig, id: &str, domain: &str) {
    if !storage::uri_is_local(&config.uri) || !crate::settings::uri_is_system(&config.uri) {
        return;
    }
    let plain = !domain.is_empty()
        && !domain.starts_with('.')
        && Path::new(domain).file_name() == Some(std::ffi::OsStr::new(domain));
    if !plain {
        return;
    }
    let file = Path::new(crate::settings::SYSTEM_CONSOLE_LOG_DIR).join(format!("{domain}.log"));
    for (f, e) in console_log::remove(&file) {
        tracing::warn!(instance = %id, file = %f.display(), error = %e, "libvirt's log of a deleted instance not removed");
    }
}

fn remove_console_log(config: &KvmConfig, id: &str, file: Option<&str>) {
    let Some(file) = file else { return };
    if !storage::uri_is_local(&config.uri) {
        tracing::debug!(instance = %id, file, "console log on a remote libvirt host left in place");
        return;
    }
    let ours = config
        .resolved_console_log_dir()
        .is_some_and(|dir| console_log::is_ours(&dir, id, Path::new(file)));
    if !ours {
        tracing::warn!(instance = %id, file, "console log outside console_log_dir left in place");
        return;
    }
    for (f, e) in console_log::remove(Path::new(file)) {
        tracing::error!(instance = %id, file = %f.display(), error = %e, "console log of a deleted instance not removed");
    }
}
