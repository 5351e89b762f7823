//! Images through the plugin (interface 1.2) against the real engine and a private
//! registry on 127.0.0.1 (`docker-registry`, started per test): a pull reports
//! increasing layer bytes and ends at the total, a cancelled pull answers CANCELLED
//! and leaves no image, a missing tag is IMAGE_NOT_FOUND, a delete is refused while a
//! container uses the image, and credentials never reach a log line or a Debug.
//!
//! Its own test binary: it installs a global log collector.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Metadata, Subscriber};
use unicompute_docker::DockerBackend;
use unicompute_plugin_api::{
    Backend, BackendContext, ErrorCode, Event, EventSink, Progress, PullRequest, RegistryAuth,
    UploadRequest,
};
use unicompute_tests::docker::docker;
use unicompute_tests::registry::Registry;

const PASSWORD: &str = "pw-never-logged-7c1f";
const TOKEN: &str = "tok-never-logged-93ab";

/// Every log line and span field of the process, as text.
#[derive(Clone, Default)]
struct Collector {
    lines: Arc<Mutex<Vec<String>>>,
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
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut text = Text(String::new());
        attrs.record(&mut text);
        self.lines.lock().unwrap().push(text.0);
        Id::from_u64(self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut text = Text(String::new());
        values.record(&mut text);
        self.lines.lock().unwrap().push(text.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.lines.lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn logs() -> &'static Collector {
    static LOGS: OnceLock<Collector> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Collector::default();
        tracing::subscriber::set_global_default(c.clone()).expect("one global subscriber");
        c
    })
}

/// A backend whose progress events go to a channel.
fn backend() -> (
    DockerBackend,
    mpsc::Receiver<(String, Progress)>,
    unicompute_tests::TempDir,
) {
    logs();
    let dir = unicompute_tests::TempDir::new("uc-img");
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let b = DockerBackend::new(BackendContext {
        name: unique("img"),
        config: serde_json::json!({
            "state_dir": dir.0.join("state"),
            "pin_dir": dir.0.join("pins"),
        }),
        events: EventSink::from_fn(move |e| {
            if let Event::Progress {
                operation,
                progress,
            } = e
            {
                let _ = tx
                    .lock()
                    .unwrap()
                    .send((operation.clone(), progress.clone()));
            }
        }),
    })
    .expect("backend");
    (b, rx, dir)
}

fn image_exists(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).0
}

#[test]
fn a_pull_reports_increasing_bytes_and_lists_the_image() {
    let _engine = FileLock::engine_shared();
    let mut registry = Registry::start();
    let reference = registry.push_image(&unique("pull"), 40);
    let (b, rx, _dir) = backend();
    let op = unique("op");
    let auth = RegistryAuth {
        username: Some("tester".into()),
        password: Some(PASSWORD.into()),
        identity_token: Some(TOKEN.into()),
        server_address: Some(registry.addr.clone()),
    };
    let request = PullRequest {
        reference: reference.clone(),
        auth: Some(auth),
        operation: Some(op.clone()),
    };
    let shown = format!("{request:?}");
    assert!(
        !shown.contains(PASSWORD) && !shown.contains(TOKEN),
        "{shown}"
    );
    let started = Instant::now();
    let image = b.pull_image(request).expect("pull");
    let took = started.elapsed();
    assert!(image.name == reference, "{image:?}");
    let events: Vec<Progress> = rx
        .try_iter()
        .filter(|(o, _)| *o == op)
        .map(|(_, p)| p)
        .collect();
    let with_bytes: Vec<&Progress> = events.iter().filter(|p| p.bytes_done.is_some()).collect();
    eprintln!(
        "pull of a 40 MiB layer: {} progress events in {took:?}; stages {:?}",
        events.len(),
        events.iter().map(|p| p.stage.as_str()).collect::<Vec<_>>()
    );
    assert!(with_bytes.len() >= 2, "{events:?}");
    for w in with_bytes.windows(2) {
        assert!(w[1].bytes_done >= w[0].bytes_done, "{events:?}");
    }
    let last = events.last().expect("a last event");
    assert_eq!(last.stage, "complete");
    assert_eq!(last.bytes_done, last.bytes_total, "{last:?}");
    assert!(last.bytes_total.unwrap_or(0) >= 40 << 20, "{last:?}");
    assert_eq!(last.percent, Some(100.0));
    assert!(
        b.images().unwrap().iter().any(|i| i.name == reference),
        "listed after the pull"
    );
    // Again: already there, still a success.
    b.pull_image(PullRequest {
        reference: reference.clone(),
        auth: None,
        operation: None,
    })
    .expect("pull again");
    let lines = logs().lines.lock().unwrap().join("\n");
    assert!(lines.contains(&reference), "the pull is logged");
    assert!(
        !lines.contains(PASSWORD) && !lines.contains(TOKEN),
        "credentials in the logs"
    );
    b.delete_image(&reference).expect("delete");
    assert!(!image_exists(&reference));
}

#[test]
fn a_cancelled_pull_answers_cancelled_and_leaves_no_image() {
    let _engine = FileLock::engine_shared();
    let mut registry = Registry::start();
    let reference = registry.push_image(&unique("cancel"), 40);
    let (b, rx, _dir) = backend();
    let b = Arc::new(b);
    let op = unique("op");
    // Nothing runs under the token yet.
    assert!(!b.cancel(&op).unwrap());
    let puller = {
        let b = Arc::clone(&b);
        let request = PullRequest {
            reference: reference.clone(),
            auth: None,
            operation: Some(op.clone()),
        };
        std::thread::spawn(move || {
            let started = Instant::now();
            (b.pull_image(request), started)
        })
    };
    let (_, first) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a first progress event");
    let cancelled_at = Instant::now();
    assert!(b.cancel(&op).expect("cancel"), "the pull runs: {first:?}");
    let (result, started) = puller.join().expect("pull thread");
    let e = result.expect_err("a cancelled pull fails");
    eprintln!(
        "cancel: first event after {:?}, pull answered {:?} after the cancel",
        cancelled_at - started,
        cancelled_at.elapsed()
    );
    assert_eq!(e.code, ErrorCode::Cancelled, "{e:?}");
    assert!(!image_exists(&reference), "a cancelled pull left the image");
    assert!(
        !b.cancel(&op).unwrap(),
        "nothing runs under the token after"
    );
}

#[test]
fn a_missing_tag_is_image_not_found() {
    let _engine = FileLock::engine_shared();
    let mut registry = Registry::start();
    let reference = registry.reference(&unique("missing"), "nope");
    let (b, _rx, _dir) = backend();
    let e = b
        .pull_image(PullRequest {
            reference: reference.clone(),
            auth: None,
            operation: Some(unique("op")),
        })
        .expect_err("nothing to pull");
    assert_eq!(e.code, ErrorCode::ImageNotFound, "{e:?}");
    assert!(e.message.contains(&reference), "{}", e.message);
    let e = b
        .pull_image(PullRequest {
            reference: "  ".into(),
            auth: None,
            operation: None,
        })
        .expect_err("empty");
    assert_eq!(e.code, ErrorCode::InvalidRequest);
}

#[test]
fn a_delete_is_refused_while_a_container_uses_the_image() {
    let _engine = FileLock::engine_shared();
    ensure_image();
    let (b, _rx, _dir) = backend();
    // A tag of our own on the test image, with a container made from it.
    let tag = format!("{}:1", unique("inuse"));
    assert!(docker(&["tag", TEST_IMAGE, &tag]).0);
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = docker(&["rmi", "-f", &self.0]);
        }
    }
    let _untag = Untag(tag.clone());
    let mut cleanup = Cleanup::default();
    let name = cleanup.container(&unique("user"));
    let req = request(&name, serde_json::json!({"image": tag}));
    let id = req.id.clone();
    b.create(req).expect("create");
    let e = b.delete_image(&tag).expect_err("in use");
    assert_eq!(e.code, ErrorCode::ImageInUse, "{e:?}");
    assert!(image_exists(&tag));
    b.delete(&id, true).expect("delete the container");
    b.delete_image(&tag).expect("delete once unused");
    assert!(!image_exists(&tag));
    let e = b.delete_image(&tag).expect_err("gone");
    assert_eq!(e.code, ErrorCode::ImageNotFound, "{e:?}");
    // Uploads are not for docker.
    let e = b
        .upload_begin(UploadRequest {
            name: "x".into(),
            operation: "op".into(),
            size: None,
        })
        .expect_err("no uploads");
    assert_eq!(e.code, ErrorCode::OperationNotSupported);
    assert!(e.message.contains("upload_begin"), "{}", e.message);
}
