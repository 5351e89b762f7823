//! Black-box tests of the event stream and of operations: the real binary with the
//! fake plugin, over HTTP on loopback.

use std::time::Duration;

use unicompute_tests::sse::{Frame, Sse};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";
const EVENTS: &str = "/api/v1/compute/events";
const T: Duration = Duration::from_secs(10);

fn create(s: &Server, name: &str, labels: Value) -> String {
    let body = json!({"name": name, "backend": "fake", "config": {"image": "busybox"},
        "metadata": {"labels": labels}});
    let r = s.call("POST", INSTANCES, ADMIN, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["id"].as_str().expect("id").to_owned()
}

fn act(s: &Server, id: &str, action: &str) {
    let r = s.call("PUT", &format!("{INSTANCES}/{id}/{action}"), ADMIN, None);
    assert_eq!(r.status, 200, "{action}: {}", r.text);
}

/// The fake server with extra settings from the environment.
fn fake_with(env: &[(&str, &str)]) -> Server {
    Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

fn kinds(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.event.clone().unwrap_or_default())
        .collect()
}

#[test]
fn instance_changes_arrive_in_order_with_the_instance_as_it_now_is() {
    let s = Server::fake("");
    let sub = Sse::open(&s.base, EVENTS, VIEWER, &[]);
    assert_eq!(sub.status, 200, "{}", sub.head);
    assert!(
        sub.head.contains("content-type: text/event-stream"),
        "{}",
        sub.head
    );
    let first = sub.next_frame(T).expect("the subscribed comment");
    assert_eq!(first.comment.as_deref(), Some("subscribed"));

    let id = create(&s, "ev-order", json!({}));
    act(&s, &id, "start");
    act(&s, &id, "stop");
    let r = s.call("DELETE", &format!("{INSTANCES}/{id}"), ADMIN, None);
    assert_eq!(r.status, 204);

    let frames = sub
        .until(T, |f| f.event.as_deref() == Some("instance.deleted"))
        .expect("events up to the deletion");
    let mine: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.data["instanceId"] == json!(id))
        .collect();
    assert_eq!(
        mine.iter()
            .map(|f| f.event.clone().unwrap())
            .collect::<Vec<_>>(),
        [
            "instance.created",
            "instance.state-changed",
            "instance.state-changed",
            "instance.deleted"
        ]
    );
    // Ids increase; the SSE id is the event's id; the body says what and who.
    let ids: Vec<u64> = mine.iter().map(|f| f.id.expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for f in &mine {
        assert_eq!(f.data["id"], json!(f.id.unwrap()));
        assert_eq!(f.data["type"], json!(f.event.as_deref().unwrap()));
        assert_eq!(f.data["source"], "api");
        assert_eq!(f.data["backend"], "fake");
        assert_eq!(f.data["instance"]["id"], json!(id));
        assert!(f.data["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_eq!(mine[1].data["from"], "created");
    assert_eq!(mine[1].data["to"], "running");
    assert_eq!(mine[1].data["instance"]["state"], "running");
    assert_eq!(mine[2].data["from"], "running");
    assert_eq!(mine[2].data["to"], "stopped");
}

#[test]
fn a_backend_change_is_an_event_of_source_backend() {
    let s = Server::fake("");
    let sub = Sse::open(&s.base, &format!("{EVENTS}?type=instance"), VIEWER, &[]);
    // The fake backend vanishes this instance by itself after 300 ms and says so.
    let id = create(&s, "ev-vanish", json!({"fake/vanish-after-ms": "300"}));
    let frames = sub
        .until(T, |f| f.event.as_deref() == Some("instance.deleted"))
        .expect("the deletion");
    let last = frames.last().unwrap();
    assert_eq!(last.data["instanceId"], json!(id));
    assert_eq!(last.data["source"], "backend");
    assert_eq!(frames[0].data["source"], "api");
}

#[test]
fn a_subscriber_that_resumes_misses_nothing_and_a_too_old_id_is_reset() {
    let s = Server::fake("");
    let id = create(&s, "ev-resume", json!({}));
    let sub = Sse::open(&s.base, EVENTS, VIEWER, &[]);
    act(&s, &id, "start");
    let seen = sub.next_event(T).expect("the start");
    let last = seen.id.expect("id");
    sub.close();
    // While it is away: a stop, a start, a stop.
    act(&s, &id, "stop");
    act(&s, &id, "start");
    act(&s, &id, "stop");
    for resume in [vec![("Last-Event-ID", last.to_string())], vec![]] {
        let (path, headers): (String, Vec<(&str, &str)>) = match resume.first() {
            Some((k, v)) => (EVENTS.to_owned(), vec![(*k, v.as_str())]),
            None => (format!("{EVENTS}?since={last}"), vec![]),
        };
        let back = Sse::open(&s.base, &path, VIEWER, &headers);
        assert_eq!(back.status, 200);
        let missed: Vec<Frame> = (0..3).filter_map(|_| back.next_event(T)).collect();
        assert_eq!(
            missed.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
            [last + 1, last + 2, last + 3],
            "no gap, no duplicate"
        );
        assert_eq!(
            missed
                .iter()
                .map(|f| f.data["to"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
            ["stopped", "running", "stopped"]
        );
        // Then the live ones.
        assert!(back.next_event(Duration::from_millis(300)).is_none());
    }
    // An id before the ring (of an earlier run here: ids start at the start time in
    // microseconds) and one from the future: one reset, then the live stream.
    let mut newest = last + 3;
    for old in ["1".to_owned(), (last + 1_000_000).to_string()] {
        let back = Sse::open(&s.base, EVENTS, VIEWER, &[("Last-Event-ID", &old)]);
        let reset = back.next_event(T).expect("reset");
        assert_eq!(reset.event.as_deref(), Some("reset"), "{old}");
        assert_eq!(reset.data["type"], "reset");
        assert_eq!(
            reset.id,
            Some(newest),
            "the reset says where to follow from"
        );
        act(&s, &id, "start");
        let live = back.next_event(T).expect("live after the reset");
        assert_eq!(live.data["to"], "running");
        assert_eq!(live.id, Some(newest + 1));
        act(&s, &id, "stop");
        newest += 2;
    }
}

#[test]
fn filters_choose_and_unknown_values_are_400() {
    let s = Server::fake("");
    let a = create(&s, "ev-filter-a", json!({}));
    let b = create(&s, "ev-filter-b", json!({}));
    let only_a = Sse::open(&s.base, &format!("{EVENTS}?instance={a}"), VIEWER, &[]);
    let only_state = Sse::open(
        &s.base,
        &format!("{EVENTS}?type=instance.state-changed&type=instance.deleted&backend=fake"),
        VIEWER,
        &[],
    );
    act(&s, &b, "start");
    act(&s, &a, "start");
    let r = s.call(
        "DELETE",
        &format!("{INSTANCES}/{b}?force=true"),
        ADMIN,
        None,
    );
    assert_eq!(r.status, 204);
    let f = only_a.next_event(T).expect("a's start");
    assert_eq!(f.data["instanceId"], json!(a));
    assert!(only_a.next_event(Duration::from_millis(300)).is_none());
    let got: Vec<Frame> = (0..3).filter_map(|_| only_state.next_event(T)).collect();
    assert_eq!(
        kinds(&got),
        [
            "instance.state-changed",
            "instance.state-changed",
            "instance.deleted"
        ]
    );

    for (query, code) in [
        ("type=instance.exploded", "INVALID_REQUEST"),
        ("type=", "INVALID_REQUEST"),
        ("backend=nope", "INVALID_BACKEND"),
        ("instance=i-000000000000", "INVALID_REQUEST"),
        ("since=abc", "INVALID_REQUEST"),
        ("since=-1", "INVALID_REQUEST"),
        ("colour=red", "INVALID_REQUEST"),
    ] {
        let r = Sse::open(&s.base, &format!("{EVENTS}?{query}"), VIEWER, &[]);
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.error["error"]["code"], code, "{query}");
    }
    let r = Sse::open(&s.base, EVENTS, VIEWER, &[("Last-Event-ID", "twelve")]);
    assert_eq!(r.status, 400);
    assert_eq!(r.error["error"]["code"], "INVALID_REQUEST");
    let r = Sse::open(&s.base, EVENTS, "wrong-token", &[]);
    assert_eq!(r.status, 401);
}

#[test]
fn a_stalled_subscriber_is_reset_and_closed_and_slows_nobody() {
    // 2,048 events of slack per subscriber: two seconds at the rate below, so that a
    // reader on a busy test machine keeps up. No write timeout here: the stalled one
    // must still be there to be told.
    let s = fake_with(&[
        ("UNICOMPUTE_SERVER__EVENTS_BUFFER", "2048"),
        ("UNICOMPUTE_SERVER__WRITE_TIMEOUT_SECS", "3600"),
    ]);
    // It never reads: once the kernel's buffers are full, the server's writes stall.
    let mut stalled = Sse::open_paused(&s.base, EVENTS, VIEWER);
    let reader = Sse::open(&s.base, EVENTS, VIEWER, &[]);
    // 5,000 state changes from the backend, one a millisecond, each event some 3 kB
    // (a long label): 15 MB, more than the stalled client's socket buffers (the
    // kernel's, at most 4 MB a side here) and its slack hold.
    let count = 5000;
    let id = create(
        &s,
        "ev-flood",
        json!({"fake/flap": format!("{count}:1000"), "ballast": "x".repeat(2500)}),
    );
    let mut got = 0u64;
    let mut last = 0;
    while got < count {
        let f = reader.next_event(T).expect("the reader keeps receiving");
        assert_ne!(
            f.event.as_deref(),
            Some("reset"),
            "a reader that keeps up is never reset (after {got}: {})",
            f.data
        );
        if f.data["instanceId"] == json!(id) && f.event.as_deref() == Some("instance.state-changed")
        {
            let n = f.id.unwrap();
            assert!(n > last, "in order");
            last = n;
            got += 1;
        }
    }
    // An operation meanwhile is not held up either.
    let r = s.call("PUT", &format!("{INSTANCES}/{id}/start"), ADMIN, None);
    assert_eq!(r.status, 200);
    // The stalled one, once it reads, finds a reset and the end of its stream.
    stalled.resume();
    let t0 = std::time::Instant::now();
    let frames: Vec<Frame> =
        std::iter::from_fn(|| stalled.next_frame(Duration::from_secs(10))).collect();
    eprintln!(
        "the stalled subscriber read {} frames in {:?}",
        frames.len(),
        t0.elapsed()
    );
    let resets: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("reset"))
        .collect();
    assert_eq!(
        resets.len(),
        1,
        "one reset, then the end ({} frames)",
        frames.len()
    );
    assert!(resets[0].data["reason"]
        .as_str()
        .unwrap()
        .contains("behind"));
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("reset"));
    assert!(frames.len() < count as usize, "it did not get everything");
}

#[test]
fn heartbeats_keep_a_quiet_stream_alive() {
    let s = fake_with(&[("UNICOMPUTE_SERVER__EVENTS_HEARTBEAT_SECS", "1")]);
    let sub = Sse::open(&s.base, EVENTS, VIEWER, &[]);
    let _ = sub.next_frame(T); // subscribed
    let beat = sub.next_frame(Duration::from_secs(5)).expect("a heartbeat");
    assert_eq!(beat.comment.as_deref(), Some("heartbeat"));
}

#[test]
fn the_server_ends_its_streams_when_it_stops() {
    let s = Server::fake("");
    let sub = Sse::open(&s.base, EVENTS, VIEWER, &[]);
    let _ = sub.next_frame(T);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(sub.ended_within(Duration::from_secs(5)));
}

// ---- operations -------------------------------------------------------------------

fn wait_op(s: &Server, location: &str) -> Value {
    let r = s.get(&format!("{location}?wait=10"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[test]
fn an_async_create_answers_202_and_its_operation_holds_the_instance() {
    let s = Server::fake("");
    let sub = Sse::open(&s.base, &format!("{EVENTS}?type=operation"), VIEWER, &[]);
    let body = json!({"name": "op-create", "backend": "fake", "config": {"image": "busybox"}, "start": true});
    let r = s.call(
        "POST",
        &format!("{INSTANCES}?async=true"),
        ADMIN,
        Some(&body),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let location = r.location.clone().expect("Location");
    assert_eq!(
        location,
        format!(
            "/api/v1/compute/operations/{}",
            r.json["id"].as_str().unwrap()
        )
    );
    assert_eq!(r.json["kind"], "create");
    assert!(matches!(
        r.json["status"].as_str(),
        Some("pending" | "running" | "succeeded")
    ));
    let op = wait_op(&s, &location);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["result"]["name"], "op-create");
    assert_eq!(op["result"]["state"], "running");
    let id = op["result"]["id"].as_str().unwrap().to_owned();
    assert_eq!(op["instanceId"], json!(id));
    assert_eq!(s.get(&format!("{INSTANCES}/{id}")).status, 200);
    let frames = sub
        .until(T, |f| f.event.as_deref() == Some("operation.finished"))
        .expect("the operation's events");
    assert_eq!(frames[0].event.as_deref(), Some("operation.created"));
    assert_eq!(
        frames.last().unwrap().data["operation"]["status"],
        "succeeded"
    );

    // `Prefer: respond-async` is the same; a failure keeps the envelope.
    let bad_image = json!({"name": "op-create-2", "backend": "fake", "config": {"image": "nope"}});
    let r = request_with(
        &s,
        "POST",
        INSTANCES,
        Some(&bad_image),
        &[("Prefer", "respond-async")],
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let op = wait_op(&s, r.location.as_deref().unwrap());
    assert_eq!(op["status"], "failed");
    assert_eq!(op["error"]["error"]["code"], "INVALID_REQUEST");
    assert_eq!(s.get(&format!("{INSTANCES}/name/op-create-2")).status, 404);

    // What can be refused at once is: an unknown backend, a bad name, a taken name.
    for (bad, code) in [
        (
            json!({"name": "x", "backend": "nope", "config": {}}),
            "INVALID_BACKEND",
        ),
        (
            json!({"name": "-x", "backend": "fake", "config": {}}),
            "INVALID_REQUEST",
        ),
        (
            json!({"name": "op-create", "backend": "fake", "config": {}}),
            "INSTANCE_ALREADY_EXISTS",
        ),
    ] {
        let r = s.call(
            "POST",
            &format!("{INSTANCES}?async=true"),
            ADMIN,
            Some(&bad),
        );
        assert_eq!(r.code(), code, "{bad}");
    }
}

fn request_with(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .into();
    let mut b = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", s.base))
        .header("Authorization", format!("Bearer {ADMIN}"))
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let bytes = body
        .map(|v| serde_json::to_vec(v).unwrap())
        .unwrap_or_default();
    let mut resp = agent.run(b.body(bytes).unwrap()).expect("request");
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut resp.body_mut().as_reader(), &mut text);
    Resp {
        status: resp.status().as_u16(),
        location: resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        content_type: None,
        retry_after: None,
        allow: None,
    }
}

#[test]
fn every_mutating_call_can_be_an_operation() {
    let s = Server::fake("");
    let id = create(&s, "op-all", json!({}));
    let steps = [
        (
            "PUT",
            format!("{INSTANCES}/{id}/start?async=1"),
            None,
            "start",
            Some("running"),
        ),
        (
            "PUT",
            format!("{INSTANCES}/{id}/pause?async=true"),
            None,
            "pause",
            Some("paused"),
        ),
        (
            "PUT",
            format!("{INSTANCES}/{id}/unpause?async=true"),
            None,
            "unpause",
            Some("running"),
        ),
        (
            "PUT",
            format!("{INSTANCES}/{id}/restart?async=true"),
            Some(json!({"timeout": 1})),
            "restart",
            Some("running"),
        ),
        (
            "PUT",
            format!("{INSTANCES}/{id}?async=true"),
            Some(json!({"metadata": {"labels": {"a": "b"}}})),
            "update",
            Some("running"),
        ),
        (
            "PUT",
            format!("{INSTANCES}/{id}/stop?async=true"),
            Some(json!({"force": true})),
            "stop",
            Some("stopped"),
        ),
        (
            "DELETE",
            format!("{INSTANCES}/{id}?async=true&force=true"),
            None,
            "delete",
            None,
        ),
    ];
    let mut op_ids = Vec::new();
    for (method, path, body, kind, state) in steps {
        let r = s.call(method, &path, ADMIN, body.as_ref());
        assert_eq!(r.status, 202, "{path}: {}", r.text);
        assert_eq!(r.json["kind"], kind);
        assert_eq!(r.json["instanceId"], json!(id));
        let op = wait_op(&s, r.location.as_deref().unwrap());
        assert_eq!(op["status"], "succeeded", "{kind}: {op}");
        match state {
            Some(st) => assert_eq!(op["result"]["state"], st, "{kind}"),
            None => assert!(op.get("result").is_none(), "{op}"),
        }
        op_ids.push(op["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(s.get(&format!("{INSTANCES}/{id}")).status, 404);
    // The list: all of them, oldest first, filtered and paged.
    let r = s.get(&format!("/api/v1/compute/operations?instance={id}"));
    assert_eq!(r.status, 200);
    let listed: Vec<String> = r.json["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, op_ids);
    assert_eq!(r.json["total"], 7);
    let r = s.get(&format!(
        "/api/v1/compute/operations?instance={id}&kind=stop&status=succeeded"
    ));
    assert_eq!(r.json["total"], 1);
    let r = s.get(&format!(
        "/api/v1/compute/operations?instance={id}&page=2&pageSize=5"
    ));
    assert_eq!(r.json["operations"].as_array().unwrap().len(), 2);
    // Ended: not cancellable.
    let r = s.call(
        "DELETE",
        &format!("/api/v1/compute/operations/{}", op_ids[0]),
        ADMIN,
        None,
    );
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
    // Roles: a viewer reads operations, cannot cancel; an operator cannot create.
    let r = s.call(
        "GET",
        &format!("/api/v1/compute/operations/{}", op_ids[0]),
        VIEWER,
        None,
    );
    assert_eq!(r.status, 200);
    let r = s.call(
        "DELETE",
        &format!("/api/v1/compute/operations/{}", op_ids[0]),
        OPERATOR,
        None,
    );
    assert_eq!(r.status, 403);
    let body = json!({"name": "op-role", "backend": "fake", "config": {"image": "busybox"}});
    let r = s.call(
        "POST",
        &format!("{INSTANCES}?async=true"),
        OPERATOR,
        Some(&body),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn operation_bad_input_is_400_or_404() {
    let s = Server::fake("");
    let id = create(&s, "op-bad", json!({}));
    let r = s.call(
        "PUT",
        &format!("{INSTANCES}/{id}/start?async=true"),
        ADMIN,
        None,
    );
    let loc = r.location.unwrap();
    for q in [
        "wait=-1",
        "wait=abc",
        "wait=99999999999999999999",
        "wait=301",
        "wait=1&wait=2",
        "colour=red",
    ] {
        let r = s.get(&format!("{loc}?{q}"));
        assert_eq!(
            (r.status, r.code()),
            (400, "INVALID_REQUEST"),
            "{q}: {}",
            r.text
        );
    }
    let r = s.get("/api/v1/compute/operations/op-nope");
    assert_eq!((r.status, r.code()), (404, "OPERATION_NOT_FOUND"));
    let r = s.call("DELETE", "/api/v1/compute/operations/op-nope", ADMIN, None);
    assert_eq!((r.status, r.code()), (404, "OPERATION_NOT_FOUND"));
    for q in [
        "status=done",
        "kind=explode",
        "backend=nope",
        "page=0",
        "pageSize=101",
        "x=1",
    ] {
        let r = s.get(&format!("/api/v1/compute/operations?{q}"));
        assert_eq!(r.status, 400, "{q}");
    }
    for q in ["async=maybe", "colour=red"] {
        let r = s.call("PUT", &format!("{INSTANCES}/{id}/stop?{q}"), ADMIN, None);
        assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{q}");
    }
    // An async action on an unknown instance is 404 at once, not a failed operation.
    let r = s.call(
        "PUT",
        &format!("{INSTANCES}/i-nope/start?async=true"),
        ADMIN,
        None,
    );
    assert_eq!((r.status, r.code()), (404, "INSTANCE_NOT_FOUND"));
    // A lifecycle action cannot be stopped midway: 409.
    let r = s.call(
        "PUT",
        &format!("{INSTANCES}/{id}/stop?async=true"),
        ADMIN,
        None,
    );
    let op_id = r.json["id"].as_str().unwrap().to_owned();
    let r = s.call(
        "DELETE",
        &format!("/api/v1/compute/operations/{op_id}"),
        ADMIN,
        None,
    );
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"), "{}", r.text);
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let s = fake_with(&[("UNICOMPUTE_SERVER__WRITE_TIMEOUT_SECS", "2")]);
    let stalled = Sse::open_paused(&s.base, EVENTS, VIEWER);
    assert_eq!(stalled.server_side_state().as_deref(), Some("01"));
    // Some 15 MB of events: the stalled client's socket is full long before the end.
    let id = create(
        &s,
        "ev-write-timeout",
        json!({"fake/flap": "5000:200", "ballast": "x".repeat(2500)}),
    );
    // The flood takes a second; then the server's writes wait two more, and it
    // hangs up: its end of the connection leaves ESTABLISHED (the kernel still holds
    // the bytes it could not send, in FIN-WAIT-1), while the client has read nothing.
    let closed = wait_for(Duration::from_secs(60), || {
        stalled
            .server_side_state()
            .filter(|st| st != "01")
            .or_else(|| stalled.server_side_state().is_none().then(String::new))
    });
    assert!(
        closed.is_some(),
        "the server hung up on a client that does not read"
    );
    stalled.close();
    // Its place is free and the server serves on.
    assert_eq!(s.get(&format!("{INSTANCES}/{id}")).status, 200);
}
