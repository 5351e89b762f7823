//! Helpers of the real-libvirt tests: unique names, templates made with qemu-img, a
//! backend driven in-process with an event collector, and guards that remove what a
//! test made even when it fails.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use unicompute_kvm::KvmBackend;
use unicompute_plugin_api::{BackendContext, Event, EventSink};
use virt::connect::Connect;

pub use unicompute_tests::FileLock;

pub const SYSTEM: &str = "qemu:///system";

/// A name no other test (or run) uses.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "uc-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A temporary directory that QEMU (running as another user) can traverse.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("uc-kvm-test-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Makes an empty qcow2 template `dir/<name>.qcow2` of `size` (e.g. "1G").
pub fn make_template(dir: &Path, name: &str, size: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("templates dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.join(format!("{name}.qcow2"));
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(size)
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "qemu-img: {out:?}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

/// A backend and the events it emitted.
pub struct Harness {
    pub backend: KvmBackend,
    pub events: mpsc::Receiver<Event>,
    pub cleanup: Cleanup,
    pub templates: PathBuf,
    pub storage: PathBuf,
    pub pool: String,
    pub dir: tempfile::TempDir,
    // Last: released after everything above is cleaned up.
    _libvirtd: Option<FileLock>,
}

/// The pid in a name made by [`unique`], when that process is gone.
fn dead_owner(name: &str) -> bool {
    if !name.starts_with("uc-test-") && !name.starts_with("uc-bench-") {
        return false;
    }
    let parts: Vec<&str> = name.rsplitn(3, '-').collect();
    match parts.get(1).and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// Removes what killed test runs left on `uri` (their guards never ran).
pub fn sweep_stale(uri: &str) {
    let Ok(conn) = Connect::open(Some(uri)) else {
        return;
    };
    for dom in conn.list_all_domains(0).unwrap_or_default() {
        if dom.name().is_ok_and(|n| dead_owner(&n)) {
            let _ = dom.destroy();
            if dom
                .undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM)
                .is_err()
            {
                let _ = dom.undefine();
            }
        }
    }
    for pool in conn.list_all_storage_pools(0).unwrap_or_default() {
        if pool.name().is_ok_and(|n| dead_owner(&n)) {
            let _ = pool.refresh(0);
            for v in pool.list_all_volumes(0).unwrap_or_default() {
                let _ = v.delete(0);
            }
            let _ = pool.destroy();
            let _ = pool.undefine();
        }
    }
}

/// A backend on `uri` with its own templates dir, storage dir and pool. On the
/// system libvirtd it holds the shared libvirtd lock: the restart test, which takes
/// it exclusively, does not stop the daemon under it.
pub fn harness(uri: &str, extra: serde_json::Value) -> Harness {
    let lock = (uri == SYSTEM).then(FileLock::libvirtd_shared);
    harness_held(uri, extra, lock)
}

/// [`harness`] with the caller's hold of the libvirtd lock (or none).
pub fn harness_held(uri: &str, extra: serde_json::Value, lock: Option<FileLock>) -> Harness {
    unicompute_kvm::init_libvirt();
    sweep_stale(uri);
    let dir = workdir();
    let templates = dir.path().join("templates");
    let storage = dir.path().join("pool");
    let pool = unique("pool");
    let mut config = json!({
        "uri": uri,
        "templates_dir": templates,
        "storage_dir": storage,
        "storage_pool": pool,
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = KvmBackend::new(BackendContext {
        name: "kvm".into(),
        config,
        events: EventSink::from_fn(move |e| {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(e.clone());
        }),
    })
    .expect("backend");
    Harness {
        backend,
        events: rx,
        cleanup: Cleanup {
            uri: uri.to_owned(),
            domains: Mutex::default(),
            pool: pool.clone(),
        },
        templates,
        storage,
        pool,
        dir,
        _libvirtd: lock,
    }
}

impl Harness {
    /// Waits (up to `within`) for an event matching `pred`.
    pub fn wait_event(&self, within: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(e) if pred(&e) => return Some(e),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

/// Removes, on drop, the domains named and the pool with every volume in it.
pub struct Cleanup {
    pub uri: String,
    pub domains: Mutex<Vec<String>>,
    pub pool: String,
}

impl Cleanup {
    /// Remembers a domain name to remove.
    pub fn domain(&self, name: &str) -> String {
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_owned());
        name.to_owned()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(conn) = Connect::open(Some(&self.uri)) else {
            return;
        };
        for name in self
            .domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Ok(dom) = conn.lookup_domain_by_name(name) {
                // Its console log, which only the backend's delete removes.
                let log = dom.xml_desc(0).ok().and_then(|xml| {
                    unicompute_kvm::xml::DomainDoc::parse(&xml)
                        .ok()?
                        .console_log()
                        .map(str::to_owned)
                });
                if let Some(log) = log {
                    let _ = std::fs::remove_file(log);
                }
                let _ = dom.destroy();
                if dom
                    .undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM)
                    .is_err()
                {
                    let _ = dom.undefine();
                }
            }
        }
        if let Ok(pool) = conn.lookup_storage_pool_by_name(&self.pool) {
            let _ = pool.refresh(0);
            if let Ok(vols) = pool.list_all_volumes(0) {
                for v in vols {
                    let _ = v.delete(0);
                }
            }
            let _ = pool.destroy();
            let _ = pool.undefine();
        }
    }
}

/// A connection of the test's own, to check what libvirt says.
pub fn libvirt(uri: &str) -> Connect {
    unicompute_kvm::init_libvirt();
    Connect::open(Some(uri)).expect("libvirt is up (run scripts/test-env.sh)")
}

#[test]
fn dead_owners_are_recognised() {
    assert!(dead_owner("uc-test-pool-999999999-3"));
    assert!(!dead_owner(&unique("pool")));
    assert!(!dead_owner("someone-elses-vm"));
    assert!(!dead_owner("uc-test-x-notapid-1"));
}

/// Volume names in a pool.
pub fn pool_volumes(conn: &Connect, pool: &str) -> Vec<String> {
    let Ok(p) = conn.lookup_storage_pool_by_name(pool) else {
        return Vec::new();
    };
    let _ = p.refresh(0);
    p.list_volumes().unwrap_or_default()
}

/// Files in a directory.
pub fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
