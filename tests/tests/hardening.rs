//! Black-box tests of what a hostile or unlucky client tries against the host: slow
//! and idle connections, too many connections, ambiguous credentials, bodies that are
//! not JSON, huge echoes, reserved labels. The real binary, the fake plugin, loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// A server with the fake backend and the given `[server]` settings from the
/// environment (the harness writes its own `[server]` table).
fn server_with(settings: &[(&str, &str)]) -> Server {
    Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        env: settings
            .iter()
            .map(|(k, v)| {
                (
                    format!("UNICOMPUTE_SERVER__{}", k.to_uppercase()),
                    v.to_string(),
                )
            })
            .collect(),
        ..Default::default()
    })
}

fn connect(s: &Server) -> TcpStream {
    let addr = s.base.trim_start_matches("http://");
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    c
}

/// Whether the server has closed `c` (a read gives 0 bytes or a reset).
fn closed(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response to an earlier request
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Sends `request` on a fresh connection and reads until the server closes it.
fn raw_exchange(s: &Server, request: &str) -> String {
    let mut c = connect(s);
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    c.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let s = server_with(&[
        ("header_read_timeout_secs", "2"),
        ("idle_timeout_secs", "30"),
    ]);
    let mut c = connect(&s);
    c.write_all(b"GET /healthz HTTP/1.1\r\n").expect("write");
    // One header byte every 200 ms, as a slowloris client sends them: the server must
    // give up long before 20 s (the head deadline is 2 s from its first byte).
    let started = Instant::now();
    let mut gone = false;
    while started.elapsed() < Duration::from_secs(20) {
        if c.write_all(b"X").is_err() || closed(&mut c) {
            gone = true;
            break;
        }
    }
    assert!(
        gone,
        "a connection sending one header byte at a time was kept for 20 s"
    );
    // The abandoned connection is the client's doing: no error in the server's log.
    let log = s.log();
    assert!(
        !log.lines().any(|l| l.contains("ERROR")),
        "error lines for a client's slow connection:\n{log}"
    );
    // The server still answers.
    assert_eq!(s.raw("GET", "/healthz", None, None).status, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_but_a_slow_request_is_not() {
    let s = server_with(&[
        ("header_read_timeout_secs", "2"),
        ("idle_timeout_secs", "2"),
    ]);
    // Idle: one request, then silence.
    let mut idle = connect(&s);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let gone = wait_for(Duration::from_secs(20), || closed(&mut idle).then_some(()));
    assert!(gone.is_some(), "an idle connection was kept for 20 s");

    // Slow: a request the server works on for longer than the idle deadline (a
    // graceful stop of an instance that ignores SIGTERM waits its 5 s timeout) is
    // answered on the same connection, and the connection serves another request.
    let name = unique("slow");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(
            &json!({"name": name, "backend": "fake", "config": {"image": "busybox"},
            "metadata": {"labels": {"fake/ignore-sigterm": "true"}}, "start": true}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let body = r#"{"timeout":5}"#;
    let mut c = connect(&s);
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let req = format!(
        "PUT {INSTANCES}/{id}/stop HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).expect("write");
    let mut buf = vec![0u8; 65536];
    let n = c.read(&mut buf).expect("the slow request is answered");
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("\"stopped\""), "{head}");
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let n = c
        .read(&mut buf)
        .expect("a second request on the same connection");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn connections_beyond_the_cap_wait_for_a_free_place() {
    let s = server_with(&[("max_connections", "3"), ("idle_timeout_secs", "60")]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(&s)).collect();
    // Each held connection has been served once, so all three are in the server.
    for c in &mut held {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).expect("answered");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    let mut extra = connect(&s);
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    assert!(
        extra.read(&mut buf).is_err(),
        "a fourth connection was served while three were open and the cap is 3"
    );
    drop(held.pop());
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = extra.read(&mut buf).expect("served once a place is free");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn two_authorization_headers_are_refused() {
    let s = Server::fake("");
    for (first, second) in [
        (ADMIN, VIEWER),
        (VIEWER, ADMIN),
        ("wrong", ADMIN),
        (ADMIN, ADMIN),
    ] {
        let out = raw_exchange(
            &s,
            &format!(
                "GET {INSTANCES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\nAuthorization: Bearer {second}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(out.starts_with("HTTP/1.1 401"), "{first}/{second}: {out}");
        assert!(out.contains("more than one Authorization header"), "{out}");
    }
    // One header still works.
    assert_eq!(s.call("GET", INSTANCES, ADMIN, None).status, 200);
}

#[test]
fn a_body_declared_as_something_else_than_json_is_415() {
    let s = Server::fake("");
    let name = unique("ctype");
    let body = json!({"name": name, "backend": "fake", "config": {"image": "busybox"}}).to_string();
    for ctype in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let out = raw_exchange(
            &s,
            &format!(
                "POST {INSTANCES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(out.starts_with("HTTP/1.1 415"), "{ctype}: {out}");
        assert!(out.contains("UNSUPPORTED_MEDIA_TYPE"), "{out}");
    }
    // Nothing was made.
    let r = s.get(&format!("{INSTANCES}/name/{name}"));
    assert_eq!(r.status, 404, "{}", r.text);
    // JSON with parameters, a +json type and no Content-Type at all are taken.
    for ctype in [
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
        Some("application/vnd.unicompute+json"),
        None,
    ] {
        let name = unique("ctype-ok");
        let body =
            json!({"name": name, "backend": "fake", "config": {"image": "busybox"}}).to_string();
        let header = ctype
            .map(|c| format!("Content-Type: {c}\r\n"))
            .unwrap_or_default();
        let out = raw_exchange(
            &s,
            &format!(
                "POST {INSTANCES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n{header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(out.starts_with("HTTP/1.1 201"), "{ctype:?}: {out}");
    }
    // A body-less action with a form type (curl -X PUT without -d) is fine.
    let out = raw_exchange(
        &s,
        &format!("GET {INSTANCES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn a_huge_invalid_name_is_not_echoed_whole() {
    let s = Server::fake("");
    let name = "a".repeat(10_000) + "!";
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": "fake", "config": {"image": "busybox"}})),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
    assert!(r.text.len() < 2048, "{} bytes answered", r.text.len());
    let shown = r.json["error"]["details"]["name"]
        .as_str()
        .expect("name detail");
    assert!(
        shown.starts_with("aaaa") && shown.contains("10001 bytes"),
        "{shown}"
    );
    // A label key of 10 kB likewise.
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(
            &json!({"name": unique("big-label"), "backend": "fake", "config": {"image": "busybox"},
            "metadata": {"labels": {"k".repeat(10_000): "v"}}}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.len() < 2048, "{} bytes answered", r.text.len());
}

#[test]
fn the_reserved_label_prefix_is_refused_on_every_backend() {
    let s = Server::fake("");
    let name = unique("reserved");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(
            &json!({"name": name, "backend": "fake", "config": {"image": "busybox"},
            "metadata": {"labels": {"io.unicompute.id": "i-0"}}}),
        ),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
    assert!(r.text.contains("io.unicompute."), "{}", r.text);
    assert_eq!(s.get(&format!("{INSTANCES}/name/{name}")).status, 404);
    // Nor can an update bring one in.
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": "fake", "config": {"image": "busybox"}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id");
    let r = s.call(
        "PUT",
        &format!("{INSTANCES}/{id}"),
        ADMIN,
        Some(&json!({"metadata": {"labels": {"io.unicompute.backend": "x"}}})),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
}
