//! Logs, exec and the console through the API, on the fake plugin (its streams are
//! described in `tests/fake-plugin/src/streams.rs`): the HTTP shapes, the WebSocket
//! protocol, the console's one-writer rule, roles and bad input. The real backends'
//! streams are tested in `docker_api.rs`, `kvm_api.rs` and the plugins' own tests.

use std::time::Duration;

use unicompute_tests::sse::Sse;
use unicompute_tests::ws::{self, Got};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// A fake instance, started unless `start` is false.
fn instance(s: &Server, labels: Value, start: bool) -> (String, String) {
    let name = unique("st");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(
            &json!({"name": name, "backend": "fake", "config": {"image": "busybox"},
            "metadata": {"labels": labels}}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    if start {
        let r = s.call("PUT", &format!("{INSTANCES}/{id}/start"), ADMIN, None);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    (id, name)
}

#[test]
fn logs_answer_text_or_events_with_tail_since_and_stream() {
    let s = Server::fake("");
    let (id, name) = instance(&s, json!({}), true);
    let logs = |q: &str| s.get(&format!("{INSTANCES}/{id}/logs{q}"));
    let r = logs("");
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type
            .as_deref()
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        r.content_type
    );
    assert_eq!(r.text, format!("hello from {name}\nwarn from {name}\n"));
    assert_eq!(logs("?stream=stderr").text, format!("warn from {name}\n"));
    assert_eq!(logs("?stream=stdout").text, format!("hello from {name}\n"));
    assert_eq!(logs("?tail=1").text, format!("warn from {name}\n"));
    assert_eq!(logs("?tail=0").text, "");
    assert_eq!(logs("?tail=all").text.lines().count(), 2);
    assert_eq!(logs("?since=2999-01-01T00:00:00Z").text, "");
    assert_eq!(logs("?since=0.5").text.lines().count(), 2);
    let r = logs("?timestamps=true");
    assert!(
        r.text.lines().all(|l| l
            .split(' ')
            .next()
            .is_some_and(|t| { t.len() > 20 && t.ends_with('Z') && t.contains('T') })),
        "{}",
        r.text
    );

    // As Server-Sent Events: one event per line, its channel as the event's type.
    let sse = Sse::open(&s.base, &format!("{INSTANCES}/{id}/logs"), VIEWER, &[]);
    assert_eq!(sse.status, 200);
    let frames = sse
        .until(Duration::from_secs(10), |f| {
            f.event.as_deref() == Some("end")
        })
        .expect("the stream ends");
    let events: Vec<(String, String)> = frames
        .iter()
        .filter_map(|f| Some((f.event.clone()?, f.text.clone())))
        .collect();
    assert_eq!(
        events,
        vec![
            ("stdout".to_owned(), format!("hello from {name}")),
            ("stderr".to_owned(), format!("warn from {name}")),
            ("end".to_owned(), "{}".to_owned()),
        ]
    );
}

#[test]
fn logs_follow_delivers_every_line_in_order_and_a_client_that_leaves_closes_the_stream() {
    let s = Server::fake("");
    let (id, _) = instance(&s, json!({"fake/log-every-ms": "2"}), true);
    let sse = Sse::open(
        &s.base,
        &format!("{INSTANCES}/{id}/logs?follow=true&stream=stdout&tail=0"),
        VIEWER,
        &[],
    );
    assert_eq!(sse.status, 200, "{:?}", sse.error);
    let mut next = 0u64;
    while next < 500 {
        let f = sse
            .next_event(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("line {next} within 10 s"));
        assert_eq!(f.event.as_deref(), Some("stdout"));
        assert_eq!(f.text, format!("line {next}"), "in order, none lost");
        next += 1;
    }
    sse.close();
    // The server goes on serving; another follow starts again from line 0.
    let again = Sse::open(
        &s.base,
        &format!("{INSTANCES}/{id}/logs?follow=1&stream=stdout&tail=0"),
        VIEWER,
        &[],
    );
    let f = again.next_event(Duration::from_secs(10)).expect("a line");
    assert_eq!(f.text, "line 0");
    // A follow ends when its instance stops (as Docker's does), whatever the backend.
    let r = s.call("PUT", &format!("{INSTANCES}/{id}/stop"), ADMIN, None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        again
            .until(Duration::from_secs(10), |f| f.event.as_deref()
                == Some("end"))
            .is_some(),
        "the follow ended with the instance"
    );
    again.close();
    assert_eq!(s.get("/healthz").status, 200);
}

#[test]
fn run_to_completion_exec_answers_exit_code_and_both_streams() {
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        env: vec![(
            "UNICOMPUTE_SERVER__EXEC_OUTPUT_LIMIT_BYTES".into(),
            "1000".into(),
        )],
        ..Default::default()
    });
    let (id, _) = instance(&s, json!({}), true);
    let path = format!("{INSTANCES}/{id}/exec");
    let exec = |body: Value| s.call("POST", &path, ADMIN, Some(&body));
    let r = exec(json!({"command": ["echo", "a", "b"]}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"exitCode": 0, "stdout": "a b\n", "stderr": "", "truncated": false, "timedOut": false})
    );
    let r = exec(json!({"command": ["fail", "3"]}));
    assert_eq!(
        (
            r.json["exitCode"].clone(),
            r.json["stdout"].clone(),
            r.json["stderr"].clone()
        ),
        (json!(3), json!(""), json!("failing\n"))
    );
    let r = exec(json!({"command": ["cat"], "stdin": "fed\nthrough\n"}));
    assert_eq!(r.json["stdout"], "fed\nthrough\n", "{}", r.text);
    assert_eq!(r.json["exitCode"], 0);
    let r = exec(json!({"command": ["nosuch"], "env": {"A": "1"}, "workdir": "/", "user": "root"}));
    assert_eq!(r.json["exitCode"], 127, "{}", r.text);
    // Output past the limit is cut; a command that does not end is given up at its
    // timeout with what it wrote.
    let r = exec(json!({"command": ["yes"], "timeout": 1}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["truncated"], true);
    assert_eq!(r.json["timedOut"], true);
    assert_eq!(r.json["exitCode"], Value::Null);
    assert_eq!(r.json["stdout"].as_str().map(str::len), Some(1000));
}

#[test]
fn bad_stream_requests_get_the_right_code() {
    let s = Server::fake("");
    let (id, _) = instance(&s, json!({}), true);
    let (stopped, _) = instance(&s, json!({}), false);
    let check =
        |method: &str, path: String, token: &str, body: Option<Value>, want: (u16, &str)| {
            let r = s.call(method, &path, token, body.as_ref());
            assert_eq!((r.status, r.code()), want, "{method} {path}: {}", r.text);
        };
    let logs = |i: &str, q: &str| format!("{INSTANCES}/{i}/logs{q}");
    check(
        "GET",
        logs("nope", ""),
        ADMIN,
        None,
        (404, "INSTANCE_NOT_FOUND"),
    );
    check(
        "GET",
        logs(&id, "?since=yesterday"),
        ADMIN,
        None,
        (400, "INVALID_REQUEST"),
    );
    check(
        "GET",
        logs(&id, "?tail=-1"),
        ADMIN,
        None,
        (400, "INVALID_REQUEST"),
    );
    check(
        "GET",
        logs(&id, "?stream=both"),
        ADMIN,
        None,
        (400, "INVALID_REQUEST"),
    );
    check(
        "GET",
        logs(&id, "?follow=maybe"),
        ADMIN,
        None,
        (400, "INVALID_REQUEST"),
    );
    check(
        "GET",
        logs(&id, "?colour=1"),
        ADMIN,
        None,
        (400, "INVALID_REQUEST"),
    );
    check(
        "GET",
        logs(&id, "?tail=1&tail=2"),
        ADMIN,
        None,
        (400, "INVALID_REQUEST"),
    );
    let exec = format!("{INSTANCES}/{id}/exec");
    for body in [
        json!({"command": []}),
        json!({"command": [""]}),
        json!({}),
        json!({"command": "ls"}),
        json!({"command": ["ls"], "env": ["NOEQUALS"]}),
        json!({"command": ["ls"], "timeout": 0}),
        json!({"command": ["ls"], "timeout": 999999}),
        json!({"command": ["ls"], "bogus": 1}),
    ] {
        check(
            "POST",
            exec.clone(),
            ADMIN,
            Some(body),
            (400, "INVALID_REQUEST"),
        );
    }
    check(
        "POST",
        format!("{INSTANCES}/{stopped}/exec"),
        ADMIN,
        Some(json!({"command": ["echo"]})),
        (409, "INVALID_STATE"),
    );
    check(
        "POST",
        format!("{INSTANCES}/nope/exec"),
        ADMIN,
        Some(json!({"command": ["echo"]})),
        (404, "INSTANCE_NOT_FOUND"),
    );
    // A WebSocket endpoint without the upgrade.
    let r = s.call("GET", &format!("{INSTANCES}/{id}/console"), ADMIN, None);
    assert_eq!(
        (r.status, r.code()),
        (426, "UPGRADE_REQUIRED"),
        "{}",
        r.text
    );
    let r = s.call(
        "GET",
        &format!("{INSTANCES}/{id}/exec?command=sh"),
        ADMIN,
        None,
    );
    assert_eq!(
        (r.status, r.code()),
        (426, "UPGRADE_REQUIRED"),
        "{}",
        r.text
    );
    // Roles: logs are a viewer's, the console and exec an admin's.
    assert_eq!(s.call("GET", &logs(&id, ""), VIEWER, None).status, 200);
    for token in [VIEWER, OPERATOR] {
        check(
            "POST",
            exec.clone(),
            token,
            Some(json!({"command": ["echo"]})),
            (403, "FORBIDDEN"),
        );
        let e = ws::connect(&s.base, &format!("{INSTANCES}/{id}/console"), token)
            .err()
            .expect("refused");
        assert_eq!(
            (e.0, e.1["error"]["code"].as_str()),
            (403, Some("FORBIDDEN"))
        );
    }
    // Through a WebSocket handshake: unknown, not running, a bad query.
    let refused = |path: String| {
        ws::connect(&s.base, &path, ADMIN)
            .err()
            .map(|(st, body)| (st, body["error"]["code"].as_str().unwrap_or("").to_owned()))
    };
    assert_eq!(
        refused(format!("{INSTANCES}/nope/console")),
        Some((404, "INSTANCE_NOT_FOUND".into()))
    );
    assert_eq!(
        refused(format!("{INSTANCES}/{stopped}/console")),
        Some((409, "INVALID_STATE".into()))
    );
    assert_eq!(
        refused(format!("{INSTANCES}/{stopped}/exec?command=sh")),
        Some((409, "INVALID_STATE".into()))
    );
    assert_eq!(
        refused(format!("{INSTANCES}/{id}/exec?tty=false")),
        Some((400, "INVALID_REQUEST".into())),
        "options in the query but no command"
    );
    assert_eq!(
        refused(format!("{INSTANCES}/{id}/console?cols=80")),
        Some((400, "INVALID_REQUEST".into()))
    );
}

#[test]
fn the_console_echoes_resizes_and_has_one_writer_unless_forced() {
    let s = Server::fake("");
    let (id, _) = instance(&s, json!({}), true);
    let path = format!("{INSTANCES}/{id}/console");
    let mut first = ws::connect(&s.base, &path, ADMIN).expect("console");
    let marker = unique("rt");
    first.send_bytes(format!("echo {marker}\n").as_bytes());
    let mut seen = Vec::new();
    assert!(
        first.read_until(&marker, Duration::from_secs(10), &mut seen),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    first.send_control(json!({"type": "resize", "cols": 100, "rows": 40}));
    assert!(first.read_until("resized 100x40", Duration::from_secs(10), &mut seen));
    // Text that is no control message is input.
    first.send_control(json!("plain text"));
    assert!(first.read_until("plain text", Duration::from_secs(10), &mut seen));

    // A second client is refused while the first holds it...
    let e = ws::connect(&s.base, &path, ADMIN).err().expect("busy");
    assert_eq!(
        (e.0, e.1["error"]["code"].as_str()),
        (409, Some("CONSOLE_IN_USE"))
    );
    // ...and takes it over with force: the first is told and closed.
    let mut second = ws::connect(&s.base, &format!("{path}?force=true"), ADMIN).expect("force");
    let mut told = None;
    while let Some(got) = first.next(Duration::from_secs(10)) {
        match got {
            Got::Control(v) => told = Some(v),
            Got::Closed(code) => {
                assert_eq!(code, Some(4009));
                break;
            }
            Got::Bytes(_) => {}
        }
    }
    assert_eq!(
        told.as_ref().map(|v| v["error"]["code"].clone()),
        Some(json!("CONSOLE_IN_USE")),
        "{told:?}"
    );
    let mut seen = Vec::new();
    second.send_bytes(b"second\n");
    assert!(second.read_until("second", Duration::from_secs(10), &mut seen));
    second.close();
    // Once the holder leaves, a plain connect works again.
    let free = wait_for(Duration::from_secs(10), || {
        ws::connect(&s.base, &path, ADMIN).ok()
    });
    free.expect("the console is free again").close();
}

#[test]
fn interactive_exec_carries_input_and_ends_with_the_exit_code() {
    let s = Server::fake("");
    let (id, _) = instance(&s, json!({}), true);
    let mut w = ws::connect(
        &s.base,
        &format!("{INSTANCES}/{id}/exec?command=cat&tty=false"),
        ADMIN,
    )
    .expect("exec");
    let mut seen = Vec::new();
    w.send_bytes(b"ping\n");
    assert!(w.read_until("ping", Duration::from_secs(10), &mut seen));
    w.send_control(json!({"type": "eof"}));
    let mut exit = None;
    let mut closed = None;
    while let Some(got) = w.next(Duration::from_secs(10)) {
        match got {
            Got::Control(v) => exit = Some(v),
            Got::Closed(code) => {
                closed = Some(code);
                break;
            }
            Got::Bytes(_) => {}
        }
    }
    assert_eq!(exit, Some(json!({"type": "exit", "exitCode": 0})));
    assert_eq!(closed, Some(Some(1000)));

    let mut w = ws::connect(
        &s.base,
        &format!("{INSTANCES}/{id}/exec?command=fail&command=4"),
        ADMIN,
    )
    .expect("exec");
    let mut seen = Vec::new();
    assert!(w.read_until("failing", Duration::from_secs(10), &mut seen));
    assert_eq!(
        w.next(Duration::from_secs(10)),
        Some(Got::Control(json!({"type": "exit", "exitCode": 4})))
    );
}

#[test]
fn interactive_exec_takes_its_options_as_the_first_message_when_the_query_has_none() {
    let s = Server::fake("");
    let (id, _) = instance(&s, json!({}), true);
    let path = format!("{INSTANCES}/{id}/exec");
    let mut w = ws::connect(&s.base, &path, ADMIN).expect("exec");
    w.send_control(json!({"command": ["cat"], "tty": false}));
    let mut seen = Vec::new();
    w.send_bytes(b"first-message\n");
    assert!(w.read_until("first-message", Duration::from_secs(10), &mut seen));
    w.send_control(json!({"type": "eof"}));
    assert_eq!(
        w.next(Duration::from_secs(10)),
        Some(Got::Control(json!({"type": "exit", "exitCode": 0})))
    );
    // Bad options: said in an error message, then the close (1008).
    let mut w = ws::connect(&s.base, &path, ADMIN).expect("exec");
    w.send_control(json!({"command": []}));
    let got = w.next(Duration::from_secs(10));
    let Some(Got::Control(v)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["code"], "INVALID_REQUEST");
    assert_eq!(
        w.next(Duration::from_secs(10)),
        Some(Got::Closed(Some(1008)))
    );
}

#[test]
fn a_stream_that_panics_in_the_plugin_ends_alone() {
    let s = Server::fake("");
    let (bad, name) = instance(&s, json!({"fake/panic": "stream"}), true);
    let (good, good_name) = instance(&s, json!({}), true);
    // The pump panics after its first line: the answer ends there.
    let r = s.get(&format!("{INSTANCES}/{bad}/logs"));
    assert_eq!(r.text, format!("hello from {name}\n"));
    let r = s.call(
        "POST",
        &format!("{INSTANCES}/{bad}/exec"),
        ADMIN,
        Some(&json!({"command": ["echo", "x"]})),
    );
    assert_eq!((r.status, r.code()), (502, "BACKEND_ERROR"), "{}", r.text);
    // Everything else goes on.
    let r = s.get(&format!("{INSTANCES}/{good}/logs"));
    assert_eq!(
        r.text,
        format!("hello from {good_name}\nwarn from {good_name}\n")
    );
    assert_eq!(s.get("/healthz").status, 200);
}

#[test]
fn the_client_library_reads_logs_runs_exec_and_drives_a_console() {
    use std::io::Read;
    use unicompute_client::{Client, ExecRequest, LogsQuery, TermEvent};
    let s = Server::fake("");
    let (id, name) = instance(&s, json!({}), true);
    let c = Client::new(&s.base, Some(ADMIN.into())).expect("client");
    let mut text = String::new();
    c.logs(
        &id,
        &LogsQuery {
            tail: Some(1),
            ..Default::default()
        },
    )
    .expect("logs")
    .read_to_string(&mut text)
    .expect("read");
    assert_eq!(text, format!("warn from {name}\n"));
    let r = c
        .exec(
            &id,
            &ExecRequest {
                command: vec!["echo".into(), "hi".into()],
                ..Default::default()
            },
        )
        .expect("exec");
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "hi\n"));
    let e = c
        .exec(&id, &ExecRequest::default())
        .expect_err("an empty command");
    assert!(
        matches!(&e, unicompute_client::Error::Api { code, .. } if code == "INVALID_REQUEST"),
        "{e:?}"
    );
    let mut t = c.console(&id, false, Some((80, 24))).expect("console");
    t.send(b"via-client\n").expect("send");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("via-client")
        && std::time::Instant::now() < deadline
    {
        match t.recv() {
            TermEvent::Output(b) => seen.extend(b),
            TermEvent::Idle => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(String::from_utf8_lossy(&seen).contains("via-client"));
    let busy = c.console(&id, false, None).err().expect("busy");
    assert!(
        matches!(&busy, unicompute_client::Error::Api { status: 409, code, .. } if code == "CONSOLE_IN_USE"),
        "{busy:?}"
    );
    t.close();
}

/// A page in a browser cannot set `Authorization` on a WebSocket: it offers its token
/// as the subprotocol `unicompute.bearer.<hex>` beside `unicompute`, which the server
/// then chooses. The same roles apply; a bad, doubled or unmatched token is refused;
/// only a handshake may carry it that way.
#[test]
fn a_websocket_may_carry_its_token_as_a_subprotocol() {
    let s = Server::fake("");
    let (id, _) = instance(&s, json!({}), true);
    let path = format!("{INSTANCES}/{id}/console");
    let offer = |token: &str| {
        vec![(
            "sec-websocket-protocol",
            format!("unicompute, unicompute.bearer.{}", hex::encode(token)),
        )]
    };
    let mut c = ws::connect_with(&s.base, &path, &offer(ADMIN)).expect("console");
    assert_eq!(c.protocol.as_deref(), Some("unicompute"));
    let marker = unique("sp");
    c.send_bytes(format!("echo {marker}\n").as_bytes());
    let mut seen = Vec::new();
    assert!(
        c.read_until(&marker, Duration::from_secs(10), &mut seen),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    c.close();
    let code = |r: Result<ws::Ws, (u16, Value)>| {
        r.err()
            .map(|(st, b)| (st, b["error"]["code"].as_str().unwrap_or("").to_owned()))
    };
    let free = |s: &Server| {
        wait_for(Duration::from_secs(10), || {
            ws::connect(&s.base, &path, ADMIN).ok()
        })
        .expect("free")
        .close()
    };
    free(&s);
    // The console is an admin's: a viewer's token that way is 403.
    assert_eq!(
        code(ws::connect_with(&s.base, &path, &offer(VIEWER))),
        Some((403, "FORBIDDEN".into()))
    );
    // A token the server does not know; not hex; two tokens: 401.
    assert_eq!(
        code(ws::connect_with(&s.base, &path, &offer("wrong"))),
        Some((401, "UNAUTHORIZED".into()))
    );
    let bad = vec![(
        "sec-websocket-protocol",
        "unicompute, unicompute.bearer.zz".to_owned(),
    )];
    assert_eq!(
        code(ws::connect_with(&s.base, &path, &bad)),
        Some((401, "UNAUTHORIZED".into()))
    );
    let two = vec![(
        "sec-websocket-protocol",
        format!(
            "unicompute, unicompute.bearer.{}, unicompute.bearer.{}",
            hex::encode(ADMIN),
            hex::encode(VIEWER)
        ),
    )];
    assert_eq!(
        code(ws::connect_with(&s.base, &path, &two)),
        Some((401, "UNAUTHORIZED".into()))
    );
    // An Authorization header wins: a wrong one is not rescued by the subprotocol.
    let mut both = offer(ADMIN);
    both.push(("authorization", "Bearer wrong".to_owned()));
    assert_eq!(
        code(ws::connect_with(&s.base, &path, &both)),
        Some((401, "UNAUTHORIZED".into()))
    );
    // Not a handshake: the header carries no token.
    let plain = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!(
                "Sec-WebSocket-Protocol: unicompute, unicompute.bearer.{}",
                hex::encode(ADMIN)
            ),
            &format!("{}{INSTANCES}/{id}", s.base),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "401");
}
