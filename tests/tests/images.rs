//! Images and templates through the API, black-box: pulls and uploads as operations
//! (progress on the event stream, cancel, failures), deletions, and what is refused;
//! first with the fake plugin (fast), then against a real Docker engine pulling from a
//! registry on 127.0.0.1, and a real libvirtd taking streamed template uploads.
//!
//! Uploads are sent over a raw socket (`Connection: close`), from a reader: the
//! body is never held whole in the test's memory either, and a test can send fewer
//! bytes than it announced, or send slowly.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use unicompute_tests::docker::{backend_name, docker, ContainerGuard};
use unicompute_tests::kvm::KvmFixture;
use unicompute_tests::registry::Registry;
use unicompute_tests::sse::{Frame, Sse};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";
const OPERATIONS: &str = "/api/v1/compute/operations";
const T: Duration = Duration::from_secs(20);

fn images(backend: &str) -> String {
    format!("/api/v1/compute/backends/{backend}/images")
}

/// An image's path for a delete: `/` as `%2F`.
fn image_path(backend: &str, name: &str) -> String {
    format!("{}/{}", images(backend), name.replace('/', "%2F"))
}

/// The names the backend lists.
fn listed(s: &Server, backend: &str) -> Vec<String> {
    let r = s.get(&images(backend));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// An operation once it has ended (or after 60 s).
fn wait_op(s: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = s.get(&format!("{OPERATIONS}/{id}?wait=60"));
        assert_eq!(r.status, 200, "{}", r.text);
        let status = r.json["status"].as_str().unwrap_or_default();
        if matches!(status, "succeeded" | "failed" | "cancelled") || Instant::now() > deadline {
            return r.json;
        }
    }
}

fn op_id(r: &Resp) -> String {
    r.json["id"].as_str().expect("operation id").to_owned()
}

/// The operations of a kind.
fn ops_of(s: &Server, kind: &str) -> Vec<Value> {
    let r = s.get(&format!("{OPERATIONS}?kind={kind}"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["operations"].as_array().expect("operations").clone()
}

/// The `bytesDone` of the progress events of operation `id` among `frames`.
fn bytes_done(frames: &[Frame], id: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("operation.progress"))
        .filter(|f| f.data["operation"]["id"] == json!(id))
        .filter_map(|f| f.data["operation"]["progress"]["bytesDone"].as_u64())
        .collect()
}

/// Waits for the end of operation `id` on the stream; answers the frames up to it.
fn until_finished(sub: &Sse, id: &str, limit: Duration) -> Vec<Frame> {
    sub.until(limit, |f| {
        f.event.as_deref() == Some("operation.finished") && f.data["operation"]["id"] == json!(id)
    })
    .unwrap_or_else(|| panic!("operation {id} did not finish on the stream"))
}

/// Files in a directory.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn staged_files(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| f.starts_with(".upload-"))
        .collect()
}

// ---- raw HTTP ---------------------------------------------------------------------

/// An answer read from a raw socket.
#[derive(Debug, Default)]
struct RawResp {
    status: u16,
    head: String,
    json: Value,
    text: String,
}

impl RawResp {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

fn parse(bytes: &[u8]) -> RawResp {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return RawResp {
            head: text,
            ..Default::default()
        };
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawResp {
        status,
        head: head.to_owned(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
        text: body.to_owned(),
    }
}

/// How a raw upload sends its body.
#[derive(Clone, Copy)]
struct Pace {
    /// Bytes per write.
    chunk: usize,
    /// Pause after each write.
    pause: Duration,
}

const FAST: Pace = Pace {
    chunk: 256 << 10,
    pause: Duration::ZERO,
};

/// What a body sender ends with.
enum End {
    /// Nothing more (all sent, or the body was short).
    Keep,
    /// Half-closes the socket after the body: the server sees the end of the stream.
    Close,
}

/// A request sent on its own socket; its answer read by a thread as it comes (so
/// that an early answer is read even if the server then resets the connection).
struct RawCall {
    writer: std::thread::JoinHandle<std::io::Result<u64>>,
    reader: std::thread::JoinHandle<Vec<u8>>,
}

impl RawCall {
    /// Starts `method path` with `headers`, `Content-Length: length` when given, and
    /// the bytes of `body` (stopping as soon as an answer starts arriving).
    #[allow(clippy::too_many_arguments)]
    fn start(
        base: &str,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        length: Option<u64>,
        mut body: Box<dyn Read + Send>,
        pace: Pace,
        end: End,
    ) -> RawCall {
        let addr = base.trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).expect("connect");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        let answered = Arc::new(AtomicBool::new(false));
        let mut input = stream.try_clone().expect("clone socket");
        input
            .set_read_timeout(Some(Duration::from_secs(900)))
            .expect("timeout");
        let seen = Arc::clone(&answered);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 16 << 10];
            while let Ok(n) = input.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.store(true, Ordering::SeqCst);
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let writer = std::thread::spawn(move || {
            stream.write_all(head.as_bytes())?;
            let mut sent = 0u64;
            let mut buf = vec![0u8; pace.chunk];
            loop {
                if answered.load(Ordering::SeqCst) {
                    break;
                }
                let n = body.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n])?;
                sent += n as u64;
                if !pace.pause.is_zero() {
                    std::thread::sleep(pace.pause);
                }
            }
            if let End::Close = end {
                let _ = stream.shutdown(Shutdown::Write);
            }
            Ok(sent)
        });
        RawCall { writer, reader }
    }

    /// The bytes sent (or the write error), and the answer.
    fn finish(self) -> (std::io::Result<u64>, RawResp) {
        let sent = self.writer.join().expect("writer thread");
        let got = self.reader.join().expect("reader thread");
        (sent, parse(&got))
    }
}

/// An upload of `body` (of `length` bytes) as `name`, answered.
fn upload(
    s: &Server,
    backend: &str,
    query: &str,
    token: &str,
    body: impl Read + Send + 'static,
    length: u64,
) -> RawResp {
    let (sent, r) = RawCall::start(
        &s.base,
        "POST",
        &format!("{}?{query}", images(backend)),
        token,
        &[("Content-Type", "application/octet-stream")],
        Some(length),
        Box::new(body),
        FAST,
        End::Keep,
    )
    .finish();
    // A refusal may come before all is sent (the rest is then not written).
    if r.status < 400 {
        assert_eq!(sent.expect("sent"), length, "{}", r.text);
    }
    r
}

fn upload_bytes(s: &Server, backend: &str, query: &str, token: &str, data: Vec<u8>) -> RawResp {
    let n = data.len() as u64;
    upload(s, backend, query, token, std::io::Cursor::new(data), n)
}

/// Random bytes (not all zeros, so nothing is skipped as sparse).
fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("urandom");
    v
}

// ---- the fake plugin --------------------------------------------------------------

fn fake(extra: &str) -> Server {
    Server::fake(extra)
}

#[test]
fn an_async_pull_is_an_operation_with_increasing_progress_and_the_image_at_the_end() {
    let s = fake("pull_steps = 8\npull_step_ms = 40\npull_step_bytes = 1048576\n");
    let sub = Sse::open(
        &s.base,
        "/api/v1/compute/events?type=operation",
        VIEWER,
        &[],
    );
    assert_eq!(sub.status, 200, "{}", sub.head);
    let r = s.call(
        "POST",
        &format!("{}?async=true", images("fake")),
        ADMIN,
        Some(&json!({"reference": "nginx:pulled"})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = op_id(&r);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("{OPERATIONS}/{id}").as_str())
    );
    assert_eq!(r.json["kind"], "image-pull");
    assert_eq!(r.json["backend"], "fake");
    let frames = until_finished(&sub, &id, T);
    let done = bytes_done(&frames, &id);
    eprintln!(
        "fake pull: {} progress events with bytes: {done:?}",
        done.len()
    );
    assert_eq!(done.len(), 8, "one event per step: {done:?}");
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    assert_eq!(*done.last().unwrap(), 8 << 20);
    let last = &frames.last().unwrap().data["operation"];
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["progress"]["bytesTotal"], 8u64 << 20);
    let op = wait_op(&s, &id);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["image"]["name"], "nginx:pulled");
    assert!(listed(&s, "fake").contains(&"nginx:pulled".to_owned()));
    let pulls = ops_of(&s, "image-pull");
    assert!(pulls.iter().any(|o| o["id"] == json!(id)), "{pulls:?}");

    // Without async: 201 and the image.
    let r = s.call(
        "POST",
        &images("fake"),
        ADMIN,
        Some(&json!({"reference": "redis:7"})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["name"], "redis:7");
    assert_eq!(r.json["size"], 8u64 << 20);

    // A missing image: 404 at once, or a failed operation.
    let r = s.call(
        "POST",
        &images("fake"),
        ADMIN,
        Some(&json!({"reference": "missing:1"})),
    );
    assert_eq!((r.status, r.code()), (404, "IMAGE_NOT_FOUND"), "{}", r.text);
    let r = s.call(
        "POST",
        &format!("{}?async=true", images("fake")),
        ADMIN,
        Some(&json!({"reference": "missing:2"})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let op = wait_op(&s, &op_id(&r));
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(op["error"]["error"]["code"], "IMAGE_NOT_FOUND", "{op}");
    assert!(!listed(&s, "fake").iter().any(|n| n.starts_with("missing")));

    // Refused at once: an empty reference, unknown fields, an unknown backend, roles.
    for (body, code) in [
        (json!({"reference": ""}), "INVALID_REQUEST"),
        (json!({"reference": "a", "colour": 1}), "INVALID_REQUEST"),
    ] {
        let r = s.call("POST", &images("fake"), ADMIN, Some(&body));
        assert_eq!((r.status, r.code()), (400, code), "{body}: {}", r.text);
    }
    let r = s.call(
        "POST",
        &images("nope"),
        ADMIN,
        Some(&json!({"reference": "a"})),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_BACKEND"), "{}", r.text);
    for token in [VIEWER, OPERATOR] {
        let r = s.call(
            "POST",
            &images("fake"),
            token,
            Some(&json!({"reference": "a"})),
        );
        assert_eq!((r.status, r.code()), (403, "FORBIDDEN"), "{}", r.text);
    }
    assert!(!listed(&s, "fake").contains(&"a".to_owned()));
}

#[test]
fn a_cancelled_pull_ends_cancelled_and_lists_nothing() {
    let s = fake("pull_steps = 200\npull_step_ms = 50\n");
    let sub = Sse::open(
        &s.base,
        "/api/v1/compute/events?type=operation",
        VIEWER,
        &[],
    );
    let r = s.call(
        "POST",
        &format!("{}?async=1", images("fake")),
        ADMIN,
        Some(&json!({"reference": "slow:1"})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = op_id(&r);
    // Once it reports bytes, it is under way.
    sub.until(T, |f| {
        f.data["operation"]["id"] == json!(id)
            && f.data["operation"]["progress"]["bytesDone"].as_u64() > Some(0)
    })
    .expect("a first progress event");
    let asked = Instant::now();
    let r = s.call("DELETE", &format!("{OPERATIONS}/{id}"), ADMIN, None);
    eprintln!("fake pull cancel answered in {:?}", asked.elapsed());
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "cancelled", "{}", r.text);
    assert_eq!(r.json["error"]["error"]["code"], "OPERATION_CANCELLED");
    assert!(!listed(&s, "fake").contains(&"slow:1".to_owned()));
    // Ended: a second cancel is refused.
    let r = s.call("DELETE", &format!("{OPERATIONS}/{id}"), ADMIN, None);
    assert_eq!(r.status, 409, "{}", r.text);

    // A pull waited for is cancelled the same way: its client gets the error.
    let base = s.base.clone();
    let client = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .build()
            .into();
        let body = serde_json::to_vec(&json!({"reference": "slow:2"})).unwrap();
        request(
            &agent,
            &base,
            "POST",
            &images("fake"),
            Some(ADMIN),
            Some(&body),
        )
    });
    let running = wait_for(T, || {
        ops_of(&s, "image-pull")
            .into_iter()
            .find(|o| o["status"] == "running" && o["progress"]["bytesDone"].as_u64() > Some(0))
            .and_then(|o| o["id"].as_str().map(str::to_owned))
    })
    .expect("the waited pull runs");
    let r = s.call("DELETE", &format!("{OPERATIONS}/{running}"), ADMIN, None);
    assert_eq!(r.json["status"], "cancelled", "{}", r.text);
    let answer = client.join().expect("client");
    assert_eq!(
        (answer.status, answer.code()),
        (409, "OPERATION_CANCELLED"),
        "{}",
        answer.text
    );
    assert!(!listed(&s, "fake").contains(&"slow:2".to_owned()));
}

#[test]
fn uploads_sync_and_async_and_what_is_refused_leaves_nothing() {
    let dir = TempDir::new("uc-fake-up");
    let up = dir.0.join("uploads");
    let s = fake(&format!(
        "upload_dir = \"{}\"\nmax_upload_bytes = 1048576\n",
        up.display()
    ));
    let sub = Sse::open(
        &s.base,
        "/api/v1/compute/events?type=operation",
        VIEWER,
        &[],
    );

    // Without async: 201 and the image.
    let data = random(300 << 10);
    let r = upload_bytes(&s, "fake", "name=up-sync", ADMIN, data);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["name"], "up-sync");
    assert_eq!(r.json["size"], 300u64 << 10);
    // With async: 202 once the bytes are in, then the operation.
    let r = upload_bytes(
        &s,
        "fake",
        "name=up-async&async=true",
        ADMIN,
        random(1 << 20),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["kind"], "image-upload");
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("{OPERATIONS}/{id}")),
        "{}",
        r.head
    );
    let op = wait_op(&s, &id);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["image"]["name"], "up-async");
    assert_eq!(op["progress"]["bytesDone"], 1u64 << 20, "{op}");
    assert_eq!(op["progress"]["bytesTotal"], 1u64 << 20, "{op}");
    let frames = until_finished(&sub, &id, T);
    let done = bytes_done(&frames, &id);
    assert!(
        !done.is_empty() && done.windows(2).all(|w| w[0] <= w[1]),
        "{done:?}"
    );
    let names = listed(&s, "fake");
    assert!(
        names.contains(&"up-sync".to_owned()) && names.contains(&"up-async".to_owned()),
        "{names:?}"
    );
    assert_eq!(files(&up), ["up-async.img", "up-sync.img"]);
    assert_eq!(ops_of(&s, "image-upload").len(), 2);

    // Refused, and nothing left in the upload directory.
    let r = upload_bytes(&s, "fake", "name=up-sync", ADMIN, random(1024));
    assert_eq!(
        (r.status, r.code()),
        (409, "IMAGE_ALREADY_EXISTS"),
        "{}",
        r.text
    );
    // Past the limit, announced.
    let r = upload_bytes(&s, "fake", "name=big", ADMIN, random((1 << 20) + 1));
    assert_eq!(
        (r.status, r.code()),
        (413, "PAYLOAD_TOO_LARGE"),
        "{}",
        r.text
    );
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    // Past the limit, not announced (chunked): found while streaming.
    let (_, r) = RawCall::start(
        &s.base,
        "POST",
        &format!("{}?name=big2", images("fake")),
        ADMIN,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked"),
        ],
        None,
        Box::new(std::io::Cursor::new(chunked(&random(3 << 20), 64 << 10))),
        FAST,
        End::Keep,
    )
    .finish();
    assert_eq!(
        (r.status, r.code()),
        (413, "PAYLOAD_TOO_LARGE"),
        "{}",
        r.text
    );
    // Not an image (the fake's check at commit), empty.
    let mut junk = b"not an image".to_vec();
    junk.extend(random(4096));
    let r = upload_bytes(&s, "fake", "name=junk", ADMIN, junk);
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
    let r = upload_bytes(&s, "fake", "name=empty", ADMIN, Vec::new());
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
    // No name, a bad name, a body that is neither JSON nor octets.
    for query in [
        "",
        "nam=x",
        "name=",
        "name=..%2Fescape",
        "name=-x",
        "name=a%20b",
    ] {
        let r = upload_bytes(&s, "fake", query, ADMIN, random(1024));
        assert_eq!(
            (r.status, r.code()),
            (400, "INVALID_REQUEST"),
            "{query}: {}",
            r.text
        );
    }
    let (_, r) = RawCall::start(
        &s.base,
        "POST",
        &format!("{}?name=text", images("fake")),
        ADMIN,
        &[("Content-Type", "text/plain")],
        Some(5),
        Box::new(std::io::Cursor::new(b"hello".to_vec())),
        FAST,
        End::Keep,
    )
    .finish();
    assert_eq!(
        (r.status, r.code()),
        (415, "UNSUPPORTED_MEDIA_TYPE"),
        "{}",
        r.text
    );
    // An unknown backend, a role below admin.
    let r = upload_bytes(&s, "nope", "name=x", ADMIN, random(1024));
    assert_eq!((r.status, r.code()), (400, "INVALID_BACKEND"), "{}", r.text);
    for token in [VIEWER, OPERATOR] {
        let r = upload_bytes(&s, "fake", "name=x", token, random(1024));
        assert_eq!((r.status, r.code()), (403, "FORBIDDEN"), "{}", r.text);
    }
    assert_eq!(files(&up), ["up-async.img", "up-sync.img"]);
    let names = listed(&s, "fake");
    for n in ["big", "big2", "junk", "empty", "x", "text"] {
        assert!(!names.contains(&n.to_owned()), "{n} listed: {names:?}");
    }
    // The failed ones are operations that failed, with their reason.
    let failed: Vec<Value> = ops_of(&s, "image-upload")
        .into_iter()
        .filter(|o| o["status"] == "failed")
        .collect();
    assert!(failed.len() >= 4, "{failed:?}");

    // Deletions: sync, async, unknown, in use.
    let r = s.call("DELETE", &image_path("fake", "up-sync"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s.call(
        "DELETE",
        &format!("{}?async=true", image_path("fake", "up-async")),
        ADMIN,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["kind"], "image-delete");
    let op = wait_op(&s, &op_id(&r));
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(files(&up), Vec::<String>::new());
    let r = s.call("DELETE", &image_path("fake", "up-sync"), ADMIN, None);
    assert_eq!((r.status, r.code()), (404, "IMAGE_NOT_FOUND"), "{}", r.text);
    let r = s.call("DELETE", &image_path("fake", "no/such:image"), ADMIN, None);
    assert_eq!((r.status, r.code()), (404, "IMAGE_NOT_FOUND"), "{}", r.text);
    let r = s.call("DELETE", &image_path("fake", "busybox"), OPERATOR, None);
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": "img-user", "backend": "fake", "config": {"image": "busybox"}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let inst = r.json["id"].as_str().unwrap().to_owned();
    let r = s.call("DELETE", &image_path("fake", "busybox"), ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "IMAGE_IN_USE"), "{}", r.text);
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/{inst}"), ADMIN, None)
            .status,
        204
    );
    let r = s.call("DELETE", &image_path("fake", "busybox"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
}

/// `data` in the chunked transfer coding.
fn chunked(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / size * 16 + 8);
    for c in data.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn a_truncated_upload_fails_clearly_and_leaves_nothing() {
    let dir = TempDir::new("uc-fake-up");
    let up = dir.0.join("uploads");
    let s = fake(&format!("upload_dir = \"{}\"\n", up.display()));
    for (n, query) in [(1, "name=cut1"), (2, "name=cut2&async=true")] {
        // 1 MiB announced, 300 KiB sent, then the socket closed.
        let (sent, r) = RawCall::start(
            &s.base,
            "POST",
            &format!("{}?{query}", images("fake")),
            ADMIN,
            &[("Content-Type", "application/octet-stream")],
            Some(1 << 20),
            Box::new(std::io::Cursor::new(random(300 << 10))),
            FAST,
            End::Close,
        )
        .finish();
        assert_eq!(sent.expect("sent"), 300 << 10);
        eprintln!("truncated upload {n}: answered {} {}", r.status, r.text);
        // Whatever the client saw (the server may answer a half-closed socket or not),
        // the operation failed, saying why, and nothing is left.
        let op = wait_for(T, || {
            (ops_seen(&s) == n).then(|| ops_of(&s, "image-upload").pop())?
        })
        .expect("the upload's operation ended");
        assert_eq!(op["status"], "failed", "{op}");
        assert_eq!(op["error"]["error"]["code"], "INVALID_REQUEST", "{op}");
        let message = op["error"]["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("ended") && message.contains("bytes"),
            "a clear reason: {message}"
        );
        if r.status != 0 {
            assert!(r.status == 400 || r.status == 202, "{}", r.text);
        }
        assert_eq!(files(&up), Vec::<String>::new(), "nothing left");
    }
    assert!(!listed(&s, "fake").iter().any(|n| n.starts_with("cut")));
}

/// How many upload operations have ended.
fn ops_seen(s: &Server) -> usize {
    ops_of(s, "image-upload")
        .iter()
        .filter(|o| {
            matches!(
                o["status"].as_str(),
                Some("failed" | "cancelled" | "succeeded")
            )
        })
        .count()
}

// ---- a real Docker engine and a registry on loopback ------------------------------

/// A server with a docker backend of its own name.
fn docker_server(dir: &Path) -> (Server, FileLock, String) {
    let lock = FileLock::engine_shared();
    unicompute_tests::docker::ensure_image();
    unicompute_tests::docker::sweep_stale();
    let backend = backend_name();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!(
            "[backends.{backend}]\nplugin = \"docker\"\nallowed_host_paths = [\"{0}\"]\npin_dir = \"{0}/.pins\"\nstate_dir = \"{0}/.state\"\n",
            dir.display()
        ),
        ..Default::default()
    });
    (s, lock, backend)
}

fn image_exists(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).0
}

/// Removes an image from the engine when dropped (also on failure).
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

#[test]
fn docker_a_pull_through_the_api_reports_bytes_and_an_image_in_use_is_kept() {
    let tmp = TempDir::new("uc-dock-img");
    let (s, _lock, backend) = docker_server(&tmp.0);
    let mut registry = Registry::start();
    let reference = registry.push_image(&unique("ucpull"), 40);
    let _image = ImageGuard(reference.clone());
    assert!(!image_exists(&reference));
    let sub = Sse::open(
        &s.base,
        "/api/v1/compute/events?type=operation",
        VIEWER,
        &[],
    );
    let started = Instant::now();
    let r = s.call(
        "POST",
        &format!("{}?async=true", images(&backend)),
        ADMIN,
        Some(&json!({"reference": reference})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = op_id(&r);
    let frames = until_finished(&sub, &id, Duration::from_secs(300));
    let took = started.elapsed();
    let done = bytes_done(&frames, &id);
    eprintln!(
        "docker pull of a 40 MiB layer: {} progress events with bytes in {took:?}; first {:?}, last {:?}",
        done.len(),
        done.first(),
        done.last()
    );
    assert!(done.len() >= 2, "progress with bytes: {done:?}");
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    assert!(
        done.last().copied().unwrap_or(0) >= 40 << 20,
        "the layer's bytes: {done:?}"
    );
    let op = wait_op(&s, &id);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert!(image_exists(&reference));
    let names = listed(&s, &backend);
    assert!(names.contains(&reference), "{reference} in {names:?}");

    // A container made from it keeps it.
    let name = unique("ucimg-user");
    let _container = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": backend, "config": {"image": reference}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let inst = r.json["id"].as_str().unwrap().to_owned();
    let r = s.call("DELETE", &image_path(&backend, &reference), ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "IMAGE_IN_USE"), "{}", r.text);
    assert!(image_exists(&reference));
    let r = s.call("DELETE", &format!("{INSTANCES}/{inst}"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s.call("DELETE", &image_path(&backend, &reference), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!image_exists(&reference));
    let r = s.call("DELETE", &image_path(&backend, &reference), ADMIN, None);
    assert_eq!((r.status, r.code()), (404, "IMAGE_NOT_FOUND"), "{}", r.text);
    // A tag the registry does not have.
    let missing = registry.reference("ucpull-none", "1");
    let r = s.call(
        "POST",
        &images(&backend),
        ADMIN,
        Some(&json!({"reference": missing})),
    );
    assert_eq!((r.status, r.code()), (404, "IMAGE_NOT_FOUND"), "{}", r.text);
}

#[test]
fn docker_a_cancelled_pull_leaves_no_image() {
    let tmp = TempDir::new("uc-dock-img");
    let (s, _lock, backend) = docker_server(&tmp.0);
    let mut registry = Registry::start();
    let reference = registry.push_image(&unique("uccancel"), 40);
    let _image = ImageGuard(reference.clone());
    let sub = Sse::open(
        &s.base,
        "/api/v1/compute/events?type=operation",
        VIEWER,
        &[],
    );
    // The cancel may come after a fast pull has ended: then it is refused, the image
    // is removed, and another try is made.
    for attempt in 0..4 {
        let started = Instant::now();
        let r = s.call(
            "POST",
            &format!("{}?async=true", images(&backend)),
            ADMIN,
            Some(&json!({"reference": reference})),
        );
        assert_eq!(r.status, 202, "{}", r.text);
        let id = op_id(&r);
        sub.until(Duration::from_secs(120), |f| {
            f.data["operation"]["id"] == json!(id)
                && (f.data["operation"]["progress"]["bytesDone"].as_u64() > Some(0)
                    || f.event.as_deref() == Some("operation.finished"))
        })
        .expect("a first progress event");
        let asked = Instant::now();
        let r = s.call("DELETE", &format!("{OPERATIONS}/{id}"), ADMIN, None);
        if r.status == 409 {
            eprintln!("attempt {attempt}: the pull ended before the cancel");
            let _ = docker(&["rmi", "-f", &reference]);
            continue;
        }
        eprintln!(
            "docker pull cancelled after {:?}, the cancel answered in {:?}",
            asked - started,
            asked.elapsed()
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["status"], "cancelled", "{}", r.text);
        assert_eq!(r.json["error"]["error"]["code"], "OPERATION_CANCELLED");
        assert!(!image_exists(&reference), "a cancelled pull left the image");
        assert!(!listed(&s, &backend).contains(&reference));
        return;
    }
    panic!("every pull ended before its cancel");
}

// ---- a real libvirtd --------------------------------------------------------------

fn kvm_server(f: &KvmFixture, extra: &str) -> Server {
    Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("kvm")],
        toml: format!(
            "[backends.kvm]\nplugin = \"kvm\"\n{}{extra}",
            f.settings_toml()
        ),
        ..Default::default()
    })
}

/// The resident set of a process, bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// A raw disk image of `mib` MiB whose first `data_mib` MiB are random.
fn make_raw(path: &Path, mib: u64, data_mib: u64) {
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(path)
        .arg(format!("{mib}M"))
        .status()
        .expect("qemu-img");
    assert!(ok.success(), "qemu-img create");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    let mut random = std::fs::File::open("/dev/urandom").expect("urandom");
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..data_mib {
        random.read_exact(&mut chunk).expect("random");
        file.write_all(&chunk).expect("write");
    }
}

#[test]
fn kvm_a_large_upload_is_streamed_to_disk_and_the_template_is_usable() {
    let f = KvmFixture::new();
    let s = kvm_server(&f, "");
    let work = TempDir::new("uc-kvm-up");
    let source = work.0.join("big.raw");
    const MIB: u64 = 320;
    make_raw(&source, MIB, 160);
    let size = std::fs::metadata(&source).expect("source").len();
    assert_eq!(size, MIB << 20);
    let name = unique("uctpl");
    let sub = Sse::open(
        &s.base,
        "/api/v1/compute/events?type=operation",
        VIEWER,
        &[],
    );
    let pid = s.pid();
    let baseline = rss(pid);
    let call = RawCall::start(
        &s.base,
        "POST",
        &format!("{}?name={name}", images("kvm")),
        ADMIN,
        &[("Content-Type", "application/octet-stream")],
        Some(size),
        Box::new(std::fs::File::open(&source).expect("open source")),
        FAST,
        End::Keep,
    );
    let started = Instant::now();
    let mut peak = baseline;
    while !call.writer.is_finished() || !call.reader.is_finished() {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    let (sent, r) = call.finish();
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(sent.expect("sent"), size);
    eprintln!(
        "kvm upload of {} MiB in {took:?}: server RSS baseline {} KiB, peak {} KiB (growth {} KiB)",
        size >> 20,
        baseline >> 10,
        peak >> 10,
        peak.saturating_sub(baseline) >> 10
    );
    // The body is streamed to disk, not buffered: the server's memory does not grow
    // with the upload (a generous bound, far below the upload's size).
    assert!(
        peak.saturating_sub(baseline) < 64 << 20,
        "RSS grew by {} MiB for a {} MiB upload",
        peak.saturating_sub(baseline) >> 20,
        size >> 20
    );
    assert_eq!(r.json["name"], json!(name));
    assert_eq!(r.json["size"], size);
    let op = ops_of(&s, "image-upload")
        .pop()
        .expect("the upload's operation");
    let id = op["id"].as_str().unwrap().to_owned();
    assert_eq!(op["status"], "succeeded", "{op}");
    let frames = until_finished(&sub, &id, T);
    let done = bytes_done(&frames, &id);
    eprintln!("kvm upload: {} progress events", done.len());
    assert!(done.len() >= 2, "{done:?}");
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    assert_eq!(done.last().copied(), Some(size));
    assert!(listed(&s, "kvm").contains(&name));
    let kept = f.templates().join(format!("{name}.raw"));
    let same = Command::new("cmp")
        .arg("-s")
        .arg(&source)
        .arg(&kept)
        .status()
        .expect("cmp");
    assert!(same.success(), "the template kept is the file sent");
    assert!(staged_files(&f.templates()).is_empty());

    // Usable: an instance made from it; then the template is in use.
    let vm = format!("{}-up", f.prefix);
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": vm, "backend": "kvm",
            "config": {"image": name, "networkType": "none"},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728u64}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let inst = r.json["id"].as_str().unwrap().to_owned();
    let r = s.call("DELETE", &image_path("kvm", &name), ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "IMAGE_IN_USE"), "{}", r.text);
    let r = s.call("DELETE", &format!("{INSTANCES}/{inst}"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s.call("DELETE", &image_path("kvm", &name), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!f.templates().join(format!("{name}.raw")).exists());
}

/// A reader of `n` random-looking bytes, made as read (never held whole).
struct Endless(u64);

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.0) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        self.0 -= n as u64;
        Ok(n)
    }
}

#[test]
fn kvm_a_cancelled_or_refused_upload_leaves_nothing() {
    let f = KvmFixture::new();
    let s = kvm_server(&f, "max_template_bytes = 134217728\n");
    let templates: PathBuf = f.templates();
    let before = files(&templates);

    // Sent slowly; cancelled midway.
    let total: u64 = 96 << 20;
    let call = RawCall::start(
        &s.base,
        "POST",
        &format!("{}?name=slow", images("kvm")),
        ADMIN,
        &[("Content-Type", "application/octet-stream")],
        Some(total),
        Box::new(Endless(total)),
        Pace {
            chunk: 64 << 10,
            pause: Duration::from_millis(20),
        },
        End::Keep,
    );
    let id = wait_for(T, || {
        ops_of(&s, "image-upload")
            .into_iter()
            .find(|o| o["status"] == "running" && o["progress"]["bytesDone"].as_u64() > Some(0))
            .and_then(|o| o["id"].as_str().map(str::to_owned))
    })
    .expect("the upload runs");
    assert!(
        !staged_files(&templates).is_empty(),
        "staged while it runs: {:?}",
        files(&templates)
    );
    let asked = Instant::now();
    let r = s.call("DELETE", &format!("{OPERATIONS}/{id}"), ADMIN, None);
    eprintln!("kvm upload cancel answered in {:?}", asked.elapsed());
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "cancelled", "{}", r.text);
    assert_eq!(r.json["error"]["error"]["code"], "OPERATION_CANCELLED");
    let (sent, answer) = call.finish();
    let sent = sent.unwrap_or(0);
    assert!(sent < total, "stopped midway: {sent}");
    assert_eq!(
        (answer.status, answer.code()),
        (409, "OPERATION_CANCELLED"),
        "{}",
        answer.text
    );
    assert_eq!(files(&templates), before, "nothing left");
    assert!(!listed(&s, "kvm").contains(&"slow".to_owned()));

    // Past the backend's max_template_bytes: 413, before a byte is written.
    let r = upload(
        &s,
        "kvm",
        "name=huge",
        ADMIN,
        Endless((128 << 20) + 512),
        (128 << 20) + 512,
    );
    assert_eq!(
        (r.status, r.code()),
        (413, "PAYLOAD_TOO_LARGE"),
        "{}",
        r.text
    );
    assert_eq!(
        r.json["error"]["details"]["limit"], 134217728u64,
        "{}",
        r.text
    );
    // Not a disk image: 400.
    let r = upload_bytes(
        &s,
        "kvm",
        "name=junk",
        ADMIN,
        b"not a disk image\n".repeat(100),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
    // A qcow2 with a backing file: 400.
    let work = TempDir::new("uc-kvm-up");
    let backed = work.0.join("backed.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(templates.join("ubuntu-22.04.qcow2"))
        .arg(&backed)
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    let data = std::fs::read(&backed).expect("read");
    let r = upload_bytes(&s, "kvm", "name=backed", ADMIN, data);
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
    // A name taken: 409.
    let r = upload_bytes(&s, "kvm", "name=ubuntu-22.04", ADMIN, vec![0u8; 1 << 20]);
    assert_eq!(
        (r.status, r.code()),
        (409, "IMAGE_ALREADY_EXISTS"),
        "{}",
        r.text
    );
    assert_eq!(files(&templates), before, "nothing left");

    // A small qcow2 goes in; a template used by a domain cannot be deleted.
    let small = work.0.join("small.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&small)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    let len = std::fs::metadata(&small).unwrap().len();
    let r = upload(
        &s,
        "kvm",
        "name=small&async=true",
        ADMIN,
        std::fs::File::open(&small).unwrap(),
        len,
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let op = wait_op(&s, r.json["id"].as_str().unwrap());
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["image"]["format"], "qcow2", "{op}");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": format!("{}-small", f.prefix), "backend": "kvm",
            "config": {"image": "small", "networkType": "none"},
            "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728u64}}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let inst = r.json["id"].as_str().unwrap().to_owned();
    let r = s.call("DELETE", &image_path("kvm", "small"), ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "IMAGE_IN_USE"), "{}", r.text);
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/{inst}"), ADMIN, None)
            .status,
        204
    );
    let r = s.call("DELETE", &image_path("kvm", "small"), ADMIN, None);
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s.call("DELETE", &image_path("kvm", "small"), ADMIN, None);
    assert_eq!((r.status, r.code()), (404, "IMAGE_NOT_FOUND"), "{}", r.text);
    assert_eq!(files(&templates), before);
}

#[test]
fn a_stalled_upload_is_cancelled_at_once_and_its_client_answered() {
    let dir = TempDir::new("uc-fake-up");
    let up = dir.0.join("uploads");
    let s = fake(&format!("upload_dir = \"{}\"\n", up.display()));
    for query in ["name=stalled", "name=stalled2&async=true"] {
        // 1 MiB announced, 200 KiB sent, then nothing more on an open socket.
        let call = RawCall::start(
            &s.base,
            "POST",
            &format!("{}?{query}", images("fake")),
            ADMIN,
            &[("Content-Type", "application/octet-stream")],
            Some(1 << 20),
            Box::new(std::io::Cursor::new(random(200 << 10))),
            FAST,
            End::Keep,
        );
        let id = wait_for(T, || {
            ops_of(&s, "image-upload")
                .into_iter()
                .find(|o| o["status"] == "running")
                .and_then(|o| o["id"].as_str().map(str::to_owned))
        })
        .expect("the upload runs");
        // Its bytes are in the staged file before the cancel.
        wait_for(T, || {
            (std::fs::metadata(up.join(format!(".upload-{id}.part")))
                .map(|m| m.len())
                .unwrap_or(0)
                == 200 << 10)
                .then_some(())
        })
        .expect("the bytes sent are staged");
        // ... and its progress says so, though no more bytes come.
        wait_for(T, || {
            (s.get(&format!("{OPERATIONS}/{id}")).json["progress"]["bytesDone"] == json!(200 << 10))
                .then_some(())
        })
        .expect("the progress of a stalled upload");
        let asked = Instant::now();
        let r = s.call("DELETE", &format!("{OPERATIONS}/{id}"), ADMIN, None);
        eprintln!(
            "{query}: a stalled upload's cancel answered {} in {:?}",
            r.status,
            asked.elapsed()
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["status"], "cancelled", "{}", r.text);
        assert_eq!(staged_files(&up), Vec::<String>::new(), "nothing left");
        if !query.contains("async") {
            // The client waiting for the end gets the error.
            let (_, answer) = call.finish();
            assert_eq!(
                (answer.status, answer.code()),
                (409, "OPERATION_CANCELLED"),
                "{}",
                answer.text
            );
        }
    }
    assert!(!listed(&s, "fake").iter().any(|n| n.starts_with("stalled")));
}

#[test]
fn curl_uploads_a_file_with_expect_continue() {
    let dir = TempDir::new("uc-fake-up");
    let up = dir.0.join("uploads");
    let s = fake(&format!("upload_dir = \"{}\"\n", up.display()));
    // Over 1 MiB: curl asks `Expect: 100-continue` and waits for the 100.
    let file = dir.0.join("disk.img");
    std::fs::write(&file, random(3 << 20)).expect("write");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}{}?name=curled", s.base, images("fake")))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    assert_eq!(status, "201", "{text}");
    let image: Value = serde_json::from_str(body).expect("json");
    assert_eq!(image["name"], "curled");
    assert_eq!(image["size"], 3u64 << 20);
    assert_eq!(
        std::fs::read(up.join("curled.img")).expect("kept"),
        std::fs::read(&file).expect("sent"),
        "the bytes kept are the bytes sent"
    );
}
