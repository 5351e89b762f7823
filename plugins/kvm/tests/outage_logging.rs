//! A libvirtd outage is logged as state changes, not once per failed call: one WARN
//! when libvirt cannot be reached (with its first cause), one INFO when it is back,
//! failed calls in between at DEBUG.
//!
//! The outage is a socket path that does not exist yet
//! (`qemu+unix:///system?socket=...`); it ends when the path becomes a symlink to the
//! system libvirtd's socket, which is never disturbed.
//!
//! Its own test binary: it installs a global log collector.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use unicompute_kvm::KvmBackend;
use unicompute_plugin_api::{Backend, BackendContext, ErrorCode, EventSink};

const SYSTEM_SOCKET: &str = "/run/libvirt/libvirt-sock";

/// Every event: its level and its message with its fields.
#[derive(Clone, Default)]
struct Collector {
    lines: Arc<Mutex<Vec<(Level, String)>>>,
    next: Arc<AtomicU64>,
}

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl Subscriber for Collector {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((*event.metadata().level(), text.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Collector {
    fn at(&self, level: Level) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

#[test]
fn an_outage_logs_one_warning_and_one_recovery() {
    assert!(
        Path::new(SYSTEM_SOCKET).exists(),
        "the system libvirtd runs (scripts/test-env.sh)"
    );
    let logs = Collector::default();
    tracing::subscriber::set_global_default(logs.clone()).expect("collector");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("libvirt-sock");
    let backend = KvmBackend::new(BackendContext {
        name: "kvm".into(),
        config: json!({
            "uri": format!("qemu+unix:///system?socket={}", socket.display()),
            "templates_dir": dir.path().join("templates"),
            "storage_dir": dir.path().join("pool"),
            "storage_pool": format!("uc-test-outage-{}", std::process::id()),
        }),
        events: EventSink::from_fn(|_| {}),
    })
    .expect("backend");

    // Down: many failed calls (and the event worker's own retries) for 3 s.
    let start = Instant::now();
    let mut failed = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let e = backend.health().expect_err("libvirt is down");
        assert_eq!(e.code, ErrorCode::BackendUnavailable, "{e:?}");
        assert!(backend.list().is_err());
        failed += 2;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(failed > 50, "{failed}");
    let warns = logs.at(Level::WARN);
    let errors = logs.at(Level::ERROR);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(warns.len(), 1, "{failed} failed calls: {warns:#?}");
    // The first cause is in it.
    assert!(warns[0].contains("reason="), "{}", warns[0]);

    // Back.
    std::os::unix::fs::symlink(SYSTEM_SOCKET, &socket).expect("symlink");
    let deadline = Instant::now() + Duration::from_secs(30);
    while backend.health().is_err() {
        assert!(
            Instant::now() < deadline,
            "not back: {:#?}",
            logs.at(Level::INFO)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let back: Vec<String> = logs
        .at(Level::INFO)
        .into_iter()
        .filter(|l| l.contains("libvirt is back"))
        .collect();
    assert_eq!(back.len(), 1, "{back:#?}");
    assert_eq!(logs.at(Level::WARN).len(), 1, "{:#?}", logs.at(Level::WARN));
    backend.shutdown();
}
