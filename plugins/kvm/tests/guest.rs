//! A real guest on `qemu:///system` (`scripts/guest-template.sh`: Debian's kernel and
//! busybox, built once and cached under `target/guest`): the cloud-init user-data
//! reaches it, its serial console is kept in the console log file, a graceful stop
//! is its own ACPI power-off, and the log goes with the instance. The guest has no
//! network; nothing is ever sent to it. Runs under KVM where KVM boots it, else
//! under QEMU's emulator (see `unicompute_tests::guest::domain_type`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{files_in, harness, libvirt, unique, SYSTEM};
use serde_json::json;
use unicompute_kvm::xml::DomainDoc;
use unicompute_plugin_api::{Backend, CreateRequest, InstanceState, StopOptions};
use unicompute_tests::guest;
use virt::domain::{DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;

/// Generous: the emulator (no KVM) boots the guest in tens of seconds.
const BOOT: Duration = Duration::from_secs(300);

#[test]
fn the_guest_gets_its_user_data_and_a_graceful_stop_is_its_own_power_off() {
    let domain_type = guest::domain_type();
    let logs = tempfile::Builder::new()
        .prefix("uc-kvm-console-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let h = harness(
        SYSTEM,
        json!({"domain_type": domain_type, "console_log_dir": logs.path()}),
    );
    guest::install(&h.templates, "guest");
    let name = h.cleanup.domain(&unique("guest"));
    let id = unique("id");
    let token = format!(
        "{id}-{}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    let created = h
        .backend
        .create(CreateRequest {
            id: id.clone(),
            name: name.clone(),
            config: json!({
                "image": "guest",
                "networkType": "none",
                "cloudInit": {"userData": guest::user_data(&token)}
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            resources: serde_json::from_value(
                json!({"cpu": {"cores": 1}, "memory": {"limit": guest::MEMORY}}),
            )
            .unwrap(),
            labels: BTreeMap::new(),
            start: false,
            created_at: chrono::Utc::now(),
            operation: None,
        })
        .expect("create");
    assert_eq!(created.state, InstanceState::Created);

    // The serial port's output goes to <console_log_dir>/<id>-serial.log.
    let log = unicompute_kvm::console_log::path(logs.path(), &id);
    let conn = libvirt(SYSTEM);
    let dom = conn.lookup_domain_by_name(&name).expect("domain");
    let doc = DomainDoc::parse(&dom.xml_desc(0).unwrap()).unwrap();
    assert_eq!(doc.console_log(), Some(log.to_string_lossy().as_ref()));

    let started = Instant::now();
    let i = h.backend.start(&id).expect("start");
    assert_eq!(i.state, InstanceState::Running);
    let marker = format!("{}{token}", guest::MARKER_SEEN);
    let to_marker = guest::wait_for_line(&log, &marker, BOOT).map(|_| started.elapsed());
    let text = guest::read_log(&log);
    let to_marker =
        to_marker.unwrap_or_else(|| panic!("no {marker:?} in the console log:\n{text}"));
    // The marker came through the seed the guest mounted, not from anywhere else.
    assert!(
        text.lines().any(|l| l.starts_with("UCGUEST seed /dev/vd")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_end() == format!("UCGUEST instance-id {id}")),
        "{text}"
    );
    assert!(
        guest::wait_for_line(&log, guest::READY, BOOT).is_some(),
        "{text}"
    );
    let text = guest::read_log(&log);
    assert!(
        text.contains(guest::POWER_WATCHED),
        "the guest watches its power button: {text}"
    );
    assert!(!text.contains(guest::POWER_BUTTON), "{text}");

    // A graceful stop with the default timeout: the guest powers itself off.
    let stopping = Instant::now();
    let stopped = h
        .backend
        .stop(&id, StopOptions::default())
        .expect("graceful stop");
    let stop_took = stopping.elapsed();
    assert_eq!(stopped.state, InstanceState::Stopped);
    let text = guest::read_log(&log);
    let pressed = text.find(guest::POWER_BUTTON);
    let off = text.find(guest::POWERING_OFF);
    assert!(
        pressed.is_some() && off.is_some() && pressed < off,
        "the guest saw the ACPI power button and powered itself off: {text}"
    );
    // libvirt's own record: a shutdown by the guest, not a destroy.
    let (state, reason) = dom.state().unwrap();
    assert_eq!(state.known(), Some(DomainState::Shutoff));
    assert!(
        matches!(
            reason,
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                DomainShutoffReason::Shutdown
            )))
        ),
        "{reason:?}"
    );
    eprintln!(
        "guest ({domain_type}): start to user-data marker {:.1} s, graceful stop {:.2} s",
        to_marker.as_secs_f64(),
        stop_took.as_secs_f64()
    );

    // The instance's delete removes its console log.
    h.backend.delete(&id, false).expect("delete");
    assert!(conn.lookup_domain_by_name(&name).is_err());
    assert!(!log.exists(), "console log left: {}", log.display());
    assert!(
        files_in(logs.path()).is_empty(),
        "left in the console log dir: {:?}",
        files_in(logs.path())
    );
}
