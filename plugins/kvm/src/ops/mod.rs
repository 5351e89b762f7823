//! The backend's operations, one file per group, each an `impl Inner` block that
//! `backend.rs` calls; and the undefine of a domain, which create (its rollback)
//! and delete share.

mod create;
mod images;
mod info;
mod lifecycle;
mod limits;
mod list;
mod update;
mod usage;

pub(crate) use create::Creating;
pub(crate) use images::Cancels;

use virt::domain::Domain;
use virt::sys;

use crate::error::{lv, LibvirtOp, Result};

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
