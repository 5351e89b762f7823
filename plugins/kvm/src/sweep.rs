//! Sweeps what a server killed in the middle of a create or a delete left in the
//! storage pool: files named like our instances' volumes (`<id>.qcow2`, `<id>.raw`,
//! `<id>-seed.img`, with `<id>` = `i-` and 20 hex digits, as the host makes ids)
//! that no domain refers to, older than `orphan_grace_secs`, and not of a create in
//! flight in this process. Run when a connection is (re)opened (so at start) and on
//! each list (the host's resync).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use virt::connect::Connect;
use virt::sys;

use crate::backend::Inner;
use crate::error::{KvmError, LibvirtOp};
use crate::storage;
use crate::xml::VolumeDoc;

/// The instance id in the name of a file that a create makes in the pool, when the
/// name is one: `i-` + 20 lowercase hex digits, then `.qcow2`, `.raw` or `-seed.img`.
pub fn instance_file_id(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".qcow2")
        .or_else(|| name.strip_suffix(".raw"))
        .or_else(|| name.strip_suffix("-seed.img"))?;
    let hex = id.strip_prefix("i-")?;
    (hex.len() == 20 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(id)
}

/// A file of the pool that may be swept.
struct Candidate {
    id: String,
    path: PathBuf,
    /// Modification time, seconds since the epoch.
    mtime: Option<i64>,
}

fn secs(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

impl Inner {
    /// Removes orphaned instance files from the pool; returns how many went.
    pub(crate) fn sweep_orphans(&self, conn: &Connect) -> Result<usize, KvmError> {
        // Only a pool that is there and running: a sweep makes none.
        let Ok(pool) = conn.lookup_storage_pool_by_name(&self.config.storage_pool) else {
            return Ok(0);
        };
        if !pool.is_active().unwrap_or(false) {
            return Ok(0);
        }
        let Some(dir) = storage::pool_dir(&pool) else {
            return Ok(0);
        };
        let local = storage::uri_is_local(&self.config.uri);
        // 1. The files, first: a create that makes one after this point is not
        //    looked at; one whose file is listed here is either still in flight at
        //    step 2 or has its domain defined by step 3 (the in-flight mark is
        //    dropped only after the domain is defined).
        // Fails while a volume is being built (libvirt refuses): the listing is then
        // what libvirt knew, plus the directory itself for a local pool.
        let _ = pool.refresh(0);
        let mut found: BTreeMap<String, Candidate> = BTreeMap::new();
        let vols = pool
            .list_all_volumes(0)
            .map_err(KvmError::libvirt(LibvirtOp::ListPoolVolumes))?;
        for vol in vols {
            let Ok(name) = vol.name() else { continue };
            let Some(id) = instance_file_id(&name) else {
                continue;
            };
            let Ok(path) = vol.path() else { continue };
            let mtime = vol
                .xml_desc(0)
                .ok()
                .and_then(|x| VolumeDoc::parse(&x).ok())
                .and_then(|d| d.mtime_secs());
            found.insert(
                name.clone(),
                Candidate {
                    id: id.to_owned(),
                    path: PathBuf::from(path),
                    mtime,
                },
            );
        }
        if local {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = instance_file_id(&name).map(str::to_owned) else {
                    continue;
                };
                // Regular files only (no symlinks, no directories).
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if !meta.file_type().is_file() {
                    found.remove(&name);
                    continue;
                }
                let mtime = meta.modified().ok().and_then(secs);
                let c = found.entry(name).or_insert(Candidate {
                    id,
                    path: entry.path(),
                    mtime,
                });
                // The file's own time wins over libvirt's cached one.
                c.mtime = mtime.or(c.mtime);
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        // 2. The creates in flight in this process.
        let in_flight = self.creating.ids();
        // 3. Every domain (ours or not): a file whose id appears anywhere in a
        //    domain's XML (our metadata, a disk path) is in use.
        let doms = conn
            .list_all_domains(0)
            .map_err(KvmError::libvirt(LibvirtOp::ListDomains))?;
        let mut xmls = Vec::with_capacity(doms.len());
        for dom in doms {
            for flags in [0, sys::VIR_DOMAIN_XML_INACTIVE] {
                match dom.xml_desc(flags) {
                    Ok(x) => xmls.push(x),
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => {}
                    // Unsure what is in use: sweep nothing this time.
                    Err(source) => {
                        return Err(KvmError::Libvirt {
                            op: LibvirtOp::ReadAnyDomainXml,
                            source,
                        })
                    }
                }
            }
        }
        let grace = Duration::from_secs(self.config.orphan_grace_secs);
        let now = secs(SystemTime::now()).unwrap_or(i64::MAX);
        let mut swept = 0;
        for (name, c) in found {
            let old_enough = c
                .mtime
                .is_some_and(|m| now.saturating_sub(m) >= grace.as_secs() as i64);
            if !old_enough
                || in_flight.contains(&c.id)
                || xmls.iter().any(|x| x.contains(&c.id))
                // Only files directly in the pool's directory.
                || c.path.parent() != Some(dir.as_path())
                || c.path.file_name() != Some(Path::new(&name).as_os_str())
            {
                continue;
            }
            let path = c.path.to_string_lossy();
            match storage::delete_volume(conn, &path, local) {
                Ok(()) => {
                    swept += 1;
                    tracing::info!(backend = %self.name, volume = %path, instance = %c.id, "swept an orphaned volume (no domain refers to it)");
                }
                Err(e) => {
                    tracing::warn!(backend = %self.name, volume = %path, error = %e, "cannot sweep an orphaned volume")
                }
            }
        }
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_instance_files() {
        let id = "i-0123456789abcdef0123";
        for ok in [
            format!("{id}.qcow2"),
            format!("{id}.raw"),
            format!("{id}-seed.img"),
        ] {
            assert_eq!(instance_file_id(&ok), Some(id), "{ok}");
        }
        for bad in [
            "i-0123456789abcdef012.qcow2",
            "i-0123456789abcdef01234.qcow2",
            "i-0123456789ABCDEF0123.qcow2",
            "i-0123456789abcdef0123.qcow2.bak",
            "i-0123456789abcdef0123.img",
            "x-0123456789abcdef0123.qcow2",
            "notes.qcow2",
            "uc-test-id-1-2.qcow2",
        ] {
            assert_eq!(instance_file_id(bad), None, "{bad}");
        }
    }
}
