//! Templates through the plugin (interface 1.2) on the real libvirtd: uploads staged,
//! checked with qemu-img and made visible only at commit; refusals leave nothing;
//! deletes refused while a domain uses the template; raw disk copies at create
//! report their bytes and can be cancelled.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{files_in, harness, libvirt, make_template, pool_volumes, unique, Harness, SYSTEM};
use serde_json::json;
use unicompute_plugin_api::{
    Backend, CreateRequest, ErrorCode, Event, Image, PluginError, Progress, UploadRequest,
};

const MAX: u64 = 4 << 30;

fn h() -> Harness {
    harness(SYSTEM, json!({"max_template_bytes": MAX}))
}

fn req(name: &str) -> UploadRequest {
    UploadRequest {
        name: name.into(),
        operation: unique("op").replace("uc-test-", ""),
        size: None,
    }
}

/// Begins an upload, writes `src` where the plugin says (as the host does: a new
/// file, O_EXCL), and commits it.
fn upload(h: &Harness, request: &UploadRequest, src: &Path) -> Result<Image, PluginError> {
    let target = h.backend.upload_begin(request.clone())?;
    assert_eq!(target.max_bytes, MAX);
    let staged = PathBuf::from(&target.path);
    assert!(staged.starts_with(h.templates.canonicalize().unwrap()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&staged)
        .expect("a new staged file");
    f.write_all(&std::fs::read(src).unwrap()).unwrap();
    drop(f);
    // Staged is not a template.
    let listed = h.backend.images().unwrap();
    assert!(!listed.iter().any(|i| i.name == request.name), "{listed:?}");
    h.backend.upload_commit(request.clone())
}

fn names(h: &Harness) -> Vec<String> {
    h.backend
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}

fn no_staged(h: &Harness) {
    let left: Vec<String> = files_in(&h.templates)
        .into_iter()
        .filter(|f| f.starts_with(".upload-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn qcow2_and_raw_uploads_become_templates_at_commit() {
    let h = h();
    let scratch = h.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let q2 = scratch.join("b.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q2)
        .arg("64M")
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = scratch.join("c.raw");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&r)
        .arg("8M")
        .output()
        .unwrap();
    assert!(out.status.success());

    let img = upload(&h, &req("up-qcow2"), &q2).expect("qcow2 upload");
    assert_eq!(img.format.as_deref(), Some("qcow2"));
    assert_eq!(img.size, Some(64 << 20));
    let img = upload(&h, &req("up-raw"), &r).expect("raw upload");
    assert_eq!(img.format.as_deref(), Some("raw"));
    assert_eq!(img.size, Some(8 << 20));
    let listed = names(&h);
    assert!(listed.contains(&"up-qcow2".to_string()) && listed.contains(&"up-raw".to_string()));
    assert!(h.templates.join("up-qcow2.qcow2").is_file());
    assert!(h.templates.join("up-raw.raw").is_file());
    no_staged(&h);
}

#[test]
fn bad_uploads_are_refused_and_leave_nothing() {
    let h = h();
    let scratch = h.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    make_template(&h.templates, "base", "16M");
    let before = files_in(&h.templates);

    // Not a disk image.
    let text = scratch.join("notes.txt");
    std::fs::write(&text, "hello, this is not a disk image\n").unwrap();
    let e = upload(&h, &req("not-image"), &text).expect_err("text");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
    assert!(e.message.contains("not a disk image"), "{}", e.message);

    // A qcow2 whose backing file is a host file.
    let overlay = scratch.join("overlay.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(h.templates.join("base.qcow2"))
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let e = upload(&h, &req("backed"), &overlay).expect_err("backing file");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
    assert!(e.message.contains("backing file"), "{}", e.message);
    assert!(
        !e.message.contains(h.templates.to_str().unwrap()),
        "{}",
        e.message
    );

    // Another format.
    let vdi = scratch.join("x.vdi");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "vdi"])
        .arg(&vdi)
        .arg("8M")
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = upload(&h, &req("vdi"), &vdi).expect_err("vdi");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
    assert!(e.message.contains("vdi"), "{}", e.message);

    // An existing name.
    let e = h.backend.upload_begin(req("base")).expect_err("exists");
    assert_eq!(e.code, ErrorCode::ImageAlreadyExists, "{e:?}");

    // Names and sizes.
    for bad in ["../x", ".hidden", "a/b", ""] {
        let e = h.backend.upload_begin(req(bad)).expect_err(bad);
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad}: {e:?}");
    }
    let e = h
        .backend
        .upload_begin(UploadRequest {
            size: Some(MAX + 1),
            ..req("huge")
        })
        .expect_err("too big");
    assert_eq!(e.code, ErrorCode::ResourceLimitExceeded, "{e:?}");
    let e = h
        .backend
        .upload_begin(UploadRequest {
            operation: "../../etc/x".into(),
            ..req("tok")
        })
        .expect_err("bad token");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");

    // A commit with nothing staged.
    let e = h
        .backend
        .upload_commit(req("nothing"))
        .expect_err("nothing");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");

    // Abort: the staged file goes; twice is fine.
    let r = req("aborted");
    let target = h.backend.upload_begin(r.clone()).unwrap();
    std::fs::write(&target.path, vec![0u8; 4096]).unwrap();
    h.backend.upload_abort(r.clone()).expect("abort");
    h.backend.upload_abort(r).expect("abort again");

    assert_eq!(files_in(&h.templates), before, "something was left");
    assert_eq!(names(&h), vec!["base".to_string()]);
}

fn create_request(
    id: &str,
    name: &str,
    image: &str,
    format: &str,
    op: Option<&str>,
) -> CreateRequest {
    CreateRequest {
        id: id.into(),
        name: name.into(),
        config: json!({"image": image, "diskFormat": format})
            .as_object()
            .cloned()
            .unwrap(),
        resources: serde_json::from_value(
            json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}}),
        )
        .unwrap(),
        labels: Default::default(),
        start: false,
        created_at: chrono::Utc::now(),
        operation: op.map(str::to_owned),
    }
}

/// An instance id as the host makes them (`i-` and 20 hex digits).
fn instance_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!(
        "i-{:012x}{:08x}",
        nanos & 0xffff_ffff_ffff,
        (std::process::id() as u64) << 8 | (n & 0xff)
    )
}

#[test]
fn a_template_in_use_is_not_deleted() {
    let h = h();
    make_template(&h.templates, "used", "16M");
    let name = h.cleanup.domain(&unique("user"));
    let id = instance_id();
    h.backend
        .create(create_request(&id, &name, "used", "qcow2", None))
        .expect("create");
    let e = h.backend.delete_image("used").expect_err("in use");
    assert_eq!(e.code, ErrorCode::ImageInUse, "{e:?}");
    assert!(h.templates.join("used.qcow2").is_file());
    h.backend.delete(&id, true).expect("delete the instance");
    h.backend.delete_image("used").expect("delete the template");
    assert!(!h.templates.join("used.qcow2").exists());
    let e = h.backend.delete_image("used").expect_err("gone");
    assert_eq!(e.code, ErrorCode::ImageNotFound, "{e:?}");
    let e = h
        .backend
        .delete_image("../etc/passwd")
        .expect_err("bad name");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
}

/// A raw template of `mib` MiB of random bytes (so that the copy takes a while).
fn random_raw(dir: &Path, name: &str, mib: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{name}.raw"));
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("count={mib}"))
        .arg(format!("of={}", path.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    path
}

fn progress_of(h: &Harness, op: &str, within: Duration) -> Option<Progress> {
    h.wait_event(
        within,
        |e| matches!(e, Event::Progress { operation, .. } if operation == op),
    )
    .and_then(|e| match e {
        Event::Progress { progress, .. } => Some(progress),
        _ => None,
    })
}

#[test]
fn a_raw_copy_at_create_reports_its_bytes() {
    let h = h();
    random_raw(&h.templates, "rnd", 256);
    let name = h.cleanup.domain(&unique("copy"));
    let id = instance_id();
    let op = unique("op");
    let started = Instant::now();
    h.backend
        .create(create_request(&id, &name, "rnd", "raw", Some(&op)))
        .expect("create");
    let took = started.elapsed();
    let mut seen = Vec::new();
    while let Some(p) = progress_of(&h, &op, Duration::from_millis(100)) {
        seen.push(p);
    }
    eprintln!(
        "raw copy of 256 MiB: {} progress events in {took:?}: {:?}",
        seen.len(),
        seen.iter().map(|p| p.bytes_done).collect::<Vec<_>>()
    );
    assert!(!seen.is_empty());
    for w in seen.windows(2) {
        assert!(w[1].bytes_done > w[0].bytes_done, "{seen:?}");
    }
    let last = seen.last().unwrap();
    assert_eq!(last.stage, "copying");
    assert_eq!(last.bytes_done, Some(256 << 20));
    assert_eq!(last.bytes_total, Some(256 << 20));
    // Nothing runs under the token any more.
    assert!(!h.backend.cancel(&op).unwrap());
    h.backend.delete(&id, true).expect("delete");
}

#[test]
fn a_cancelled_raw_copy_fails_the_create_and_leaves_nothing() {
    let h = h();
    random_raw(&h.templates, "big", 512);
    let name = h.cleanup.domain(&unique("cancel"));
    let id = instance_id();
    let op = unique("op");
    std::thread::scope(|s| {
        let creating = s.spawn(|| {
            h.backend
                .create(create_request(&id, &name, "big", "raw", Some(&op)))
        });
        let first = progress_of(&h, &op, Duration::from_secs(120));
        let cancelled = h.backend.cancel(&op).expect("cancel");
        let result = creating.join().expect("create thread");
        eprintln!("first progress {first:?}; cancel answered {cancelled}");
        if cancelled {
            let e = result.expect_err("a cancelled create fails");
            assert_eq!(e.code, ErrorCode::Cancelled, "{e:?}");
        } else {
            // The copy ended before the cancel came: the create stands.
            eprintln!("the copy finished before the cancel; nothing to check");
            let _ = h.backend.delete(&id, true);
        }
    });
    let conn = libvirt(SYSTEM);
    assert!(conn.lookup_domain_by_name(&name).is_err(), "no domain");
    assert!(pool_volumes(&conn, &h.pool).is_empty(), "no volume");
    assert!(
        files_in(&h.storage).is_empty(),
        "{:?}",
        files_in(&h.storage)
    );
}
