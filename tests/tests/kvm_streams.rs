//! Logs and the console of a real guest through the API: the real binary, the real
//! kvm plugin, libvirtd, and the bootable test guest (`scripts/guest-template.sh`; TCG
//! where KVM cannot boot it). Nothing is sent to the guest's address.

use std::time::Duration;

use unicompute_tests::guest;
use unicompute_tests::kvm::KvmFixture;
use unicompute_tests::sse::Sse;
use unicompute_tests::ws;
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// Removes a file when dropped (the serial log, also on failure).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_real_guest_shows_its_boot_in_logs_answers_on_its_console_and_follow_sees_its_power_off() {
    let f = KvmFixture::new();
    guest::install(&f.templates(), "guest");
    let s = f.guest_server();
    let name = format!("{}-strm", f.prefix);
    let token = format!("{name}-{}", uuid::Uuid::new_v4());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": "kvm", "start": true,
            "config": {"image": "guest", "networkType": "none",
                       "cloudInit": {"userData": guest::user_data(&token)}},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": guest::MEMORY}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let one = format!("{INSTANCES}/{id}");
    let _log = RemoveOnDrop(
        std::path::Path::new("/var/log/libvirt/qemu").join(format!("{id}-serial.log")),
    );

    // Follow from the start (as SSE): the boot, the user-data's marker, then ready.
    let sse = Sse::open(&s.base, &format!("{one}/logs?follow=true"), VIEWER, &[]);
    assert_eq!(sse.status, 200, "{:?}", sse.error);
    let marker = format!("{}{token}", guest::MARKER_SEEN);
    let seen = sse.until(Duration::from_secs(300), |f| f.text.contains(guest::READY));
    let seen = seen.expect("the guest became ready within 300 s");
    assert!(
        seen.iter().any(|f| f.text.contains(&marker)),
        "the marker in the followed log"
    );

    // Without follow the answer ends, and holds the marker; tail is the end of it.
    let r = s.get(&format!("{one}/logs"));
    assert_eq!(r.status, 200);
    assert!(r.text.contains(&marker), "{}", r.text);
    let tail = s.get(&format!("{one}/logs?tail=2")).text;
    assert_eq!(tail.lines().count(), 2, "{tail}");
    // The guest may print more between two reads (its prompt): the tail is in the log
    // read after it (the plugin's tests compare it with the file byte for byte).
    let after = s.get(&format!("{one}/logs")).text;
    assert!(after.contains(&tail), "{tail:?} in the log");
    // The serial log has no timestamps: said so.
    let r = s.get(&format!("{one}/logs?timestamps=true"));
    assert_eq!(
        (r.status, r.code()),
        (501, "OPERATION_NOT_SUPPORTED"),
        "{}",
        r.text
    );

    // The console: a round trip through the guest's shell (the answer is computed by
    // the guest, so the echo of the typed line cannot pass for it), twice.
    let path = format!("{one}/console");
    for round in 0..2 {
        let mut c = wait_for(Duration::from_secs(10), || {
            ws::connect(&s.base, &path, ADMIN).ok()
        })
        .expect("console");
        let mut out = Vec::new();
        let want = format!("rt-{}-{round}", 40 + 2);
        c.send_bytes(format!("\necho rt-$((40+2))-{round}\n").as_bytes());
        assert!(
            c.read_until(&want, Duration::from_secs(60), &mut out),
            "{}",
            String::from_utf8_lossy(&out)
        );
        c.close();
    }
    // A viewer may read logs, never take the console.
    let e = ws::connect(&s.base, &path, VIEWER).err().expect("refused");
    assert_eq!(e.0, 403);

    // A graceful stop: the follow sees the guest power itself off.
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        OPERATOR,
        Some(&json!({"force": false})),
    );
    assert_eq!(r.json["state"], "stopped", "{}", r.text);
    assert!(
        sse.until(Duration::from_secs(60), |f| f
            .text
            .contains(guest::POWERING_OFF))
            .is_some(),
        "the power-off line reached the follower"
    );
    assert!(
        sse.until(Duration::from_secs(10), |f| f.event.as_deref()
            == Some("end"))
            .is_some(),
        "the follow ended with the guest"
    );
    sse.close();
    // Stopped: the logs stay readable, the console is refused.
    assert!(s
        .get(&format!("{one}/logs"))
        .text
        .contains(guest::POWERING_OFF));
    let e = ws::connect(&s.base, &path, ADMIN).err().expect("refused");
    assert_eq!(
        (e.0, e.1["error"]["code"].as_str()),
        (409, Some("INVALID_STATE"))
    );
    assert_eq!(s.call("DELETE", &one, ADMIN, None).status, 204);
    assert!(f.domains().is_empty(), "domain left: {:?}", f.domains());
}
