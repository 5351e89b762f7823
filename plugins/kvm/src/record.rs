//! What is stored in libvirt, both directions: our metadata written into a domain
//! and read back ([`Found`]), our domains found by id, a domain read back into an
//! [`Instance`] (with the state table), and `updatedAt` stamping.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{
    CpuResources, Instance, InstanceState, InstanceType, MemoryResources, Metadata, Resources,
    StorageResources,
};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState, DomainStateEnum};
use virt::sys;

use crate::backend::Inner;
use crate::error::{lv, KvmError, LibvirtOp, Result};
use crate::xml::{DomainDoc, InstanceMeta, NAMESPACE, NS_PREFIX};

/// A domain of ours, read from libvirt.
pub(crate) struct Found {
    pub dom: Domain,
    pub doc: DomainDoc,
    pub meta: InstanceMeta,
}

/// Our id -> libvirt UUID of the domains seen, so that a lookup needs no scan of
/// every domain.
#[derive(Default)]
pub(crate) struct Ids(Mutex<HashMap<String, String>>);

impl Ids {
    fn remember(&self, id: &str, uuid: &str) {
        lock(&self.0).insert(id.to_owned(), uuid.to_owned());
    }

    fn forget(&self, id: &str) {
        lock(&self.0).remove(id);
    }

    fn uuid_of(&self, id: &str) -> Option<String> {
        lock(&self.0).get(id).cloned()
    }

    fn id_of(&self, uuid: &str) -> Option<String> {
        lock(&self.0)
            .iter()
            .find(|(_, u)| u.as_str() == uuid)
            .map(|(id, _)| id.clone())
    }
}

/// The `updatedAt` of a change made now, after one stamped `prev`: the current
/// time in whole milliseconds, and always later than `prev` (by 1 ms at least, also
/// when the clock went back), so that it never goes backwards and changes on every
/// change. Kept in the domain's metadata and returned as is.
fn next_update(prev: &str) -> String {
    let now = Utc::now();
    let now =
        now - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos() % 1_000_000));
    let prev = parse_time(prev);
    let t = if now > prev {
        now
    } else {
        prev + chrono::Duration::milliseconds(1)
    };
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The domain's state and reason, as `virDomainGetState` gives them. `virt` 0.5's
/// `Domain::state` drops the call's failure and answers "no state"; this reports it.
pub(crate) fn domain_state(
    dom: &Domain,
) -> std::result::Result<(sys::virDomainState, i32), virt::error::Error> {
    let mut state: std::os::raw::c_int = -1;
    let mut reason: std::os::raw::c_int = -1;
    // SAFETY: `dom` holds a valid domain pointer for this call; libvirt writes two
    // ints that live on this stack frame.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if rc == -1 {
        return Err(virt::error::Error::last_error());
    }
    Ok((state as sys::virDomainState, reason))
}

/// Maps a libvirt state onto an instance state.
///
/// | libvirt | instance |
/// |---|---|
/// | running, blocked, shutdown (in progress) | running |
/// | paused, pmsuspended | paused |
/// | shutoff, never started by us | created |
/// | shutoff after having run | stopped |
/// | shutoff because it crashed or failed | error |
/// | crashed | error |
/// | nostate, anything new | unknown |
/// `failed`: shut off because it crashed or failed to start, or paused by QEMU on an
/// I/O error.
pub fn map_state(state: Option<DomainState>, failed: bool, started: bool) -> InstanceState {
    match state {
        Some(DomainState::Running | DomainState::Blocked | DomainState::Shutdown) => {
            InstanceState::Running
        }
        Some(DomainState::Paused) if failed => InstanceState::Error,
        Some(DomainState::Paused | DomainState::PMSuspended) => InstanceState::Paused,
        Some(DomainState::Shutoff) if failed => InstanceState::Error,
        Some(DomainState::Shutoff) if started => InstanceState::Stopped,
        Some(DomainState::Shutoff) => InstanceState::Created,
        Some(DomainState::Crashed) => InstanceState::Error,
        Some(DomainState::NoState) | None => InstanceState::Unknown,
    }
}

/// Whether an instance in this state runs (a start changes nothing, a stop does).
pub(crate) fn is_active_state(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Running | InstanceState::Paused | InstanceState::Restarting
    )
}

/// The domain's persistent config (what the next start uses).
pub(crate) fn config_doc(dom: &Domain) -> Result<DomainDoc> {
    dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
        .map_err(lv(LibvirtOp::ReadDomainConfig))
        .and_then(|x| DomainDoc::parse(&x))
}

impl Inner {
    /// Our id of a libvirt UUID seen before.
    pub fn id_of_uuid(&self, uuid: &str) -> Option<String> {
        self.ids.id_of(uuid)
    }

    /// Forgets a UUID (its domain vanished); returns our id of it.
    pub fn forget_uuid(&self, uuid: &str) -> Option<String> {
        let id = self.id_of_uuid(uuid)?;
        self.ids.forget(&id);
        self.cpu.forget(uuid);
        Some(id)
    }

    /// Reads a domain; `None` when it is not one of ours.
    pub fn read(&self, dom: Domain) -> Result<Option<Found>> {
        let xml = dom.xml_desc(0).map_err(lv(LibvirtOp::ReadDomainXml))?;
        let Ok(doc) = DomainDoc::parse(&xml) else {
            return Ok(None);
        };
        let Some(meta) = doc.meta().cloned() else {
            return Ok(None);
        };
        if meta.pool != self.config.storage_pool {
            return Ok(None);
        }
        self.ids.remember(&meta.id, &doc.uuid);
        Ok(Some(Found { dom, doc, meta }))
    }

    /// Every domain of ours.
    pub(crate) fn scan(&self, conn: &Connect) -> Result<Vec<Found>> {
        let doms = conn
            .list_all_domains(0)
            .map_err(lv(LibvirtOp::ListDomains))?;
        let mut out = Vec::new();
        for dom in doms {
            // A domain may vanish between the listing and the read.
            if let Ok(Some(found)) = self.read(dom) {
                out.push(found);
            }
        }
        Ok(out)
    }

    /// Our domain of an instance id.
    pub fn find(&self, conn: &Connect, id: &str) -> Result<Found> {
        if let Some(uuid) = self.ids.uuid_of(id) {
            if let Ok(dom) = conn.lookup_domain_by_uuid_string(&uuid) {
                if let Ok(Some(found)) = self.read(dom) {
                    if found.meta.id == id {
                        return Ok(found);
                    }
                }
            }
            self.ids.forget(id);
        }
        self.scan(conn)?
            .into_iter()
            .find(|f| f.meta.id == id)
            .ok_or_else(|| KvmError::NotFound(id.to_owned()))
    }

    /// The instance state of a domain (see [`map_state`]).
    pub fn state(&self, found: &Found) -> Result<InstanceState> {
        let (state, reason) = domain_state(&found.dom).map_err(lv(LibvirtOp::ReadDomainState))?;
        let failed = (state == sys::VIR_DOMAIN_SHUTOFF
            && matches!(
                reason as sys::virDomainShutoffReason,
                sys::VIR_DOMAIN_SHUTOFF_CRASHED | sys::VIR_DOMAIN_SHUTOFF_FAILED
            ))
            // Paused by QEMU on an I/O error (a full pool under a thin disk).
            || (state == sys::VIR_DOMAIN_PAUSED
                && reason as sys::virDomainPausedReason == sys::VIR_DOMAIN_PAUSED_IOERROR);
        let state = DomainStateEnum::from_raw(state).known();
        Ok(map_state(state, failed, found.meta.started))
    }

    /// A domain of ours as an instance.
    pub fn instance(&self, found: &Found) -> Result<Instance> {
        let state = self.state(found)?;
        let doc = &found.doc;
        let meta = &found.meta;
        let mut pending = None;
        if is_active_state(state) {
            let cfg = config_doc(&found.dom)?;
            let mut p = Resources::default();
            if cfg.vcpus() != doc.vcpus() {
                p.cpu = Some(CpuResources {
                    cores: Some(cfg.vcpus()),
                });
            }
            if cfg.memory() != doc.memory() {
                p.memory = Some(MemoryResources {
                    limit: Some(cfg.memory()),
                    used: None,
                });
            }
            if !p.is_empty() {
                pending = Some(p);
            }
        }
        Ok(Instance {
            id: meta.id.clone(),
            name: doc.name.clone(),
            uuid: doc.uuid.clone(),
            instance_type: InstanceType::Vm,
            backend: self.name.clone(),
            state,
            status: Default::default(),
            config: meta.config.to_json(),
            resources: Resources {
                cpu: Some(CpuResources {
                    cores: Some(doc.vcpus()),
                }),
                memory: Some(MemoryResources {
                    limit: Some(doc.memory()),
                    used: None,
                }),
                storage: Some(StorageResources {
                    total_space: Some(meta.disk_size),
                    enforced: None,
                }),
            },
            pending_resources: pending,
            metadata: Metadata {
                labels: meta.labels.to_map(),
            },
            created_at: parse_time(&meta.created_at),
            updated_at: parse_time(&meta.updated_at),
        })
    }

    /// Re-reads a domain and returns it as an instance.
    pub(crate) fn reread(&self, conn: &Connect, id: &str, dom: &Domain) -> Result<Instance> {
        match self.read(dom.clone())? {
            Some(found) => self.instance(&found),
            None => self.instance(&self.find(conn, id)?),
        }
    }

    /// Writes our metadata into the domain (live too when it runs).
    pub(crate) fn write_meta(&self, dom: &Domain, meta: &InstanceMeta) -> Result<()> {
        let xml = meta.to_metadata_element()?;
        let live = dom.is_active().unwrap_or(false);
        let flags = if live {
            sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG
        } else {
            sys::VIR_DOMAIN_AFFECT_CONFIG
        };
        dom.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&xml),
            Some(NS_PREFIX),
            Some(NAMESPACE),
            flags,
        )
        .map_err(lv(LibvirtOp::WriteMetadata))
    }

    /// Stamps a change made through the API (see [`next_update`]) into the metadata.
    pub(crate) fn touch(&self, found: &mut Found) -> Result<()> {
        found.meta.updated_at = next_update(&found.meta.updated_at);
        self.write_meta(&found.dom, &found.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        use DomainState::*;
        let cases = [
            (Some(Running), false, false, InstanceState::Running),
            (Some(Blocked), false, true, InstanceState::Running),
            (Some(Shutdown), false, true, InstanceState::Running),
            (Some(Paused), false, true, InstanceState::Paused),
            (Some(Paused), true, true, InstanceState::Error),
            (Some(PMSuspended), false, true, InstanceState::Paused),
            (Some(Shutoff), false, false, InstanceState::Created),
            (Some(Shutoff), false, true, InstanceState::Stopped),
            (Some(Shutoff), true, true, InstanceState::Error),
            (Some(Crashed), false, true, InstanceState::Error),
            (Some(NoState), false, true, InstanceState::Unknown),
            (None, false, true, InstanceState::Unknown),
        ];
        for (s, failed, started, want) in cases {
            assert_eq!(
                map_state(s, failed, started),
                want,
                "{s:?} {failed} {started}"
            );
        }
    }

    #[test]
    fn updates_are_in_milliseconds_and_never_go_back() {
        let t = next_update("2020-01-01T00:00:00.123456789Z");
        let p = parse_time(&t);
        assert_eq!(p.timestamp_subsec_nanos() % 1_000_000, 0, "{t}");
        assert!(p > parse_time("2020-01-01T00:00:00.123456789Z"));
        // A stamp in the future (the clock went back): 1 ms after it.
        assert_eq!(
            next_update("2999-01-01T00:00:00.123Z"),
            "2999-01-01T00:00:00.124Z"
        );
        assert_eq!(
            next_update("2999-01-01T00:00:00.123456Z"),
            "2999-01-01T00:00:00.124Z"
        );
    }
}
