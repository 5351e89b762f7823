//! Black-box tests of the whole REST surface: the real `unicompute` binary, the fake
//! plugin built as a third party would build it, over HTTP on loopback.

use std::time::Duration;

use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

fn create(s: &Server, name: &str, extra: Value) -> Resp {
    let mut body = json!({"name": name, "backend": "fake", "config": {"image": "busybox"}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    s.call("POST", INSTANCES, ADMIN, Some(&body))
}

/// A log without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn created_id(r: &Resp) -> String {
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["id"].as_str().expect("id").to_owned()
}

#[test]
fn healthz_needs_no_token_and_api_needs_one() {
    let s = Server::fake("");
    let r = s.raw("GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "ok");

    let r = s.raw("GET", INSTANCES, None, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "UNAUTHORIZED");
    assert_eq!(r.content_type.as_deref(), Some("application/json"));

    let r = s.raw("GET", INSTANCES, Some("not-a-token"), None);
    assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED"));

    let r = s.raw("GET", "/api/v1/compute/cluster/status", Some(VIEWER), None);
    assert_eq!(r.status, 200);
}

#[test]
fn roles_viewer_operator_admin() {
    let s = Server::fake("");
    let id = created_id(&create(&s, &unique("roles"), json!({})));
    let one = format!("{INSTANCES}/{id}");

    // viewer: GET only
    assert_eq!(s.call("GET", &one, VIEWER, None).status, 200);
    let r = s.call("PUT", &format!("{one}/stop"), VIEWER, None);
    assert_eq!((r.status, r.code()), (403, "FORBIDDEN"));
    assert_eq!(
        s.call("PUT", &format!("{one}/start"), VIEWER, None).status,
        403
    );
    let r = s.call(
        "POST",
        INSTANCES,
        VIEWER,
        Some(&json!({"name": unique("v"), "backend": "fake", "config": {"image": "busybox"}})),
    );
    assert_eq!(r.status, 403);

    // operator: lifecycle, not create/update/delete
    let r = s.call("PUT", &format!("{one}/start"), OPERATOR, None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["state"], "running");
    assert_eq!(
        s.call("PUT", &format!("{one}/pause"), OPERATOR, None)
            .status,
        200
    );
    assert_eq!(
        s.call("PUT", &format!("{one}/unpause"), OPERATOR, None)
            .status,
        200
    );
    assert_eq!(
        s.call(
            "PUT",
            &format!("{one}/stop"),
            OPERATOR,
            Some(&json!({"force": true}))
        )
        .status,
        200
    );
    assert_eq!(s.call("DELETE", &one, OPERATOR, None).status, 403);
    assert_eq!(
        s.call(
            "PUT",
            &one,
            OPERATOR,
            Some(&json!({"resources": {"cpu": {"cores": 2}}}))
        )
        .status,
        403
    );

    // admin: everything
    assert_eq!(
        s.call(
            "PUT",
            &one,
            ADMIN,
            Some(&json!({"resources": {"cpu": {"cores": 2}}}))
        )
        .status,
        200
    );
    assert_eq!(s.call("DELETE", &one, ADMIN, None).status, 204);
}

#[test]
fn malformed_json_wrong_types_unknown_fields_are_400() {
    let s = Server::fake("");
    for body in [
        &b"{not json"[..],
        br#"{"name": 5, "backend": "fake"}"#,
        br#"{"name": "a", "backend": "fake", "colour": "red"}"#,
        br#"{"name": "a", "backend": "fake", "resources": {"cpu": {"cores": "two"}}}"#,
        br#"{"name": "a", "backend": "fake", "resources": {"cpu": {"cores": 0}}}"#,
        b"",
    ] {
        let r = s.raw("POST", INSTANCES, Some(ADMIN), Some(body));
        assert_eq!(
            (r.status, r.code()),
            (400, "INVALID_REQUEST"),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(r.json["error"]["details"].is_object());
    }
    let r = s.raw(
        "POST",
        INSTANCES,
        Some(ADMIN),
        Some(br#"{"name":"a","backend":"fake","colour":1}"#),
    );
    assert!(r.text.contains("colour"), "{}", r.text);
    // bad names
    for name in ["-x", "has space", "a/b", &"n".repeat(64)] {
        let r = create(&s, name, json!({}));
        assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{name}");
    }
    // stop with a malformed body
    let id = created_id(&create(&s, &unique("stopbody"), json!({})));
    let r = s.raw(
        "PUT",
        &format!("{INSTANCES}/{id}/stop"),
        Some(ADMIN),
        Some(b"{\"force\": tru"),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"));
}

#[test]
fn oversized_body_is_413() {
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        env: vec![("UNICOMPUTE_SERVER__MAX_BODY_BYTES".into(), "4096".into())],
        ..Default::default()
    });
    let big = format!(
        r#"{{"name":"big","backend":"fake","config":{{"image":"busybox","env":["X={}"]}}}}"#,
        "x".repeat(8000)
    );
    let r = s.raw("POST", INSTANCES, Some(ADMIN), Some(big.as_bytes()));
    assert_eq!((r.status, r.code()), (413, "PAYLOAD_TOO_LARGE"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    // a small one still passes
    assert_eq!(create(&s, &unique("small"), json!({})).status, 201);
}

#[test]
fn unknown_route_404_and_wrong_method_405_in_the_envelope() {
    let s = Server::fake("");
    let r = s.raw("GET", "/api/v1/compute/nothing", Some(ADMIN), None);
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let r = s.raw("GET", "/elsewhere", None, None);
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"));
    let r = s.raw("PATCH", INSTANCES, Some(ADMIN), None);
    assert_eq!((r.status, r.code()), (405, "METHOD_NOT_ALLOWED"));
    assert_eq!(r.allow.as_deref(), Some("GET, POST"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let r = s.get(&format!("{INSTANCES}/i-doesnotexist"));
    assert_eq!((r.status, r.code()), (404, "INSTANCE_NOT_FOUND"));
    let r = s.get(&format!("{INSTANCES}/name/nobody"));
    assert_eq!((r.status, r.code()), (404, "INSTANCE_NOT_FOUND"));
    for action in ["start", "stop", "restart", "pause", "unpause"] {
        let r = s.call("PUT", &format!("{INSTANCES}/i-nope/{action}"), ADMIN, None);
        assert_eq!(
            (r.status, r.code()),
            (404, "INSTANCE_NOT_FOUND"),
            "{action}"
        );
    }
    assert_eq!(s.get(&format!("{INSTANCES}/i-nope/usage")).status, 404);
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/i-nope"), ADMIN, None)
            .status,
        404
    );
}

#[test]
fn paging_bounds_order_and_total() {
    let s = Server::fake("");
    let prefix = unique("page");
    let mut made = Vec::new();
    for n in 0..7 {
        let r = create(&s, &format!("{prefix}-{n}"), json!({}));
        let at = r.json["createdAt"].as_str().expect("createdAt");
        // RFC 3339 with milliseconds; a whole second may come without them.
        let at = if at.contains('.') {
            at.to_owned()
        } else {
            at.replacen('Z', ".000Z", 1)
        };
        made.push((at, created_id(&r)));
    }
    // The contract's order is createdAt, then id; ids sort in creation order, so
    // that is the creation order, also for creates in one millisecond.
    let mut by_contract = made.clone();
    by_contract.sort();
    assert_eq!(by_contract, made, "list order is creation order");
    let ids: Vec<String> = made.into_iter().map(|(_, id)| id).collect();
    let r = s.get(&format!("{INSTANCES}?pageSize=3&page=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json["total"], 7);
    assert_eq!(r.json["page"], 1);
    assert_eq!(r.json["pageSize"], 3);
    let mut seen = Vec::new();
    for page in 1..=3 {
        let r = s.get(&format!("{INSTANCES}?pageSize=3&page={page}"));
        for i in r.json["instances"].as_array().expect("array") {
            seen.push(i["id"].as_str().expect("id").to_owned());
        }
    }
    assert_eq!(seen, ids, "stable order by createdAt then id, all pages");
    let r = s.get(&format!("{INSTANCES}?pageSize=3&page=4"));
    assert_eq!(r.json["instances"].as_array().map(Vec::len), Some(0));
    assert_eq!(r.json["total"], 7);
    let r = s.get(INSTANCES);
    assert_eq!(r.json["pageSize"], 50);
    assert_eq!(s.get(&format!("{INSTANCES}?pageSize=100")).status, 200);
    for q in [
        "page=0",
        "page=-2",
        "page=abc",
        "pageSize=0",
        "pageSize=101",
        "pageSize=x",
        "state=sleeping",
        "label=novalue",
        "unknown=1",
        "state=running&state=stopped",
        "page=1&page=2",
    ] {
        let r = s.get(&format!("{INSTANCES}?{q}"));
        assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{q}");
    }
}

#[test]
fn backend_state_and_label_filters() {
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n[backends.other]\nplugin = \"fake\"\n".into(),
        ..Default::default()
    });
    let a = created_id(&create(
        &s,
        &unique("fa"),
        json!({"metadata": {"labels": {"app": "web", "env": "prod"}}}),
    ));
    let b = created_id(&create(
        &s,
        &unique("fb"),
        json!({"metadata": {"labels": {"app": "web", "env": "dev"}}, "start": true}),
    ));
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": unique("ob"), "backend": "other", "config": {"image": "alpine"}})),
    );
    let c = created_id(&r);
    assert_eq!(r.json["backend"], "other");

    let ids = |q: &str| -> Vec<String> {
        let r = s.get(&format!("{INSTANCES}?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        r.json["instances"]
            .as_array()
            .expect("array")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect::<Vec<_>>()
    };
    // Creates in one millisecond tie on createdAt and go by (random) id: compare sets
    // where more than one instance matches.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(ids("backend=fake")),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(ids("backend=other"), vec![c.clone()]);
    assert_eq!(ids("state=running"), vec![b.clone()]);
    assert_eq!(ids("state=created&backend=fake"), vec![a.clone()]);
    assert_eq!(
        sorted(ids("label=app%3Dweb")),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(ids("label=app=web&label=env=prod"), vec![a.clone()]);
    assert_eq!(ids("label=app=db"), Vec::<String>::new());
    // the spec's example
    assert_eq!(ids("state=running"), vec![b]);
    let r = s.get(&format!("{INSTANCES}?backend=nosuch"));
    assert_eq!((r.status, r.code()), (400, "INVALID_BACKEND"));
}

#[test]
fn fifty_concurrent_creates_of_one_name_give_one_201() {
    let s = Server::fake("");
    let name = unique("race");
    let body = serde_json::to_vec(
        &json!({"name": name, "backend": "fake", "config": {"image": "busybox"}}),
    )
    .expect("json");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| scope.spawn(|| s.raw("POST", INSTANCES, Some(ADMIN), Some(&body))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").status)
            .collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        49,
        "{statuses:?}"
    );
    let r = s.get(&format!("{INSTANCES}?pageSize=100"));
    assert_eq!(r.json["total"], 1);
    let r = create(&s, &name, json!({}));
    assert_eq!((r.status, r.code()), (409, "INSTANCE_ALREADY_EXISTS"));
}

#[test]
fn whole_lifecycle_through_the_api() {
    let s = Server::fake("");
    let name = unique("life");
    let r = create(
        &s,
        &name,
        json!({"resources": {"cpu": {"cores": 2}, "memory": {"limit": 536870912}, "storage": {"totalSpace": 10737418240u64}},
               "metadata": {"labels": {"app": "web"}}}),
    );
    let id = created_id(&r);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("{INSTANCES}/{id}").as_str())
    );
    assert_eq!(r.json["state"], "created");
    assert_eq!(r.json["type"], "container");
    assert_eq!(r.json["backend"], "fake");
    assert_eq!(r.json["name"], name.as_str());
    assert_eq!(r.json["resources"]["cpu"]["cores"], 2);
    assert_eq!(r.json["resources"]["memory"]["limit"], 536870912);
    assert_eq!(r.json["metadata"]["labels"]["app"], "web");
    assert!(r.json["uuid"].as_str().is_some_and(|u| u.len() == 36));
    let created_at = r.json["createdAt"].as_str().expect("createdAt").to_owned();
    let one = format!("{INSTANCES}/{id}");

    assert_eq!(s.get(&one).json, r.json);
    assert_eq!(
        s.get(&format!("{INSTANCES}/name/{name}")).json["id"],
        id.as_str()
    );

    // pause of a created instance is refused
    let r = s.call("PUT", &format!("{one}/pause"), ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"));

    // A create answers updatedAt == createdAt; each change moves it (RFC 3339 UTC
    // with milliseconds: strings of one length compare as times). A pause between
    // changes lets a millisecond pass, so that a move shows.
    assert_eq!(
        s.get(&one).json["updatedAt"].as_str(),
        Some(created_at.as_str())
    );
    let mut last = created_at.clone();
    let mut moved = |r: &Resp, what: &str| {
        let now = r.json["updatedAt"].as_str().expect("updatedAt").to_owned();
        assert!(
            now > last,
            "{what}: updatedAt {now} did not move from {last}"
        );
        assert_eq!(r.json["createdAt"].as_str(), Some(created_at.as_str()));
        last = now;
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(5));
    let r = s.call("PUT", &format!("{one}/start"), ADMIN, None);
    assert_eq!((r.status, r.json["state"].as_str()), (200, Some("running")));
    moved(&r, "start");
    let updated = r.json["updatedAt"].as_str().expect("updatedAt").to_owned();
    // start of a running one changes nothing
    let r = s.call("PUT", &format!("{one}/start"), ADMIN, None);
    assert_eq!((r.status, r.json["state"].as_str()), (200, Some("running")));
    assert_eq!(r.json["updatedAt"].as_str(), Some(updated.as_str()));

    // delete without force refused while running
    let r = s.call("DELETE", &one, ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"));

    let r = s.call("PUT", &format!("{one}/pause"), ADMIN, None);
    assert_eq!(r.json["state"], "paused");
    moved(&r, "pause");
    assert_eq!(s.get(&format!("{INSTANCES}?state=paused")).json["total"], 1);
    let r = s.call("PUT", &format!("{one}/unpause"), ADMIN, None);
    assert_eq!(r.json["state"], "running");
    moved(&r, "unpause");
    // what a change answers is what later reads show
    assert_eq!(s.get(&one).json["updatedAt"], r.json["updatedAt"]);

    let r = s.get(&format!("{one}/usage"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json["cpu"]["cores"], 2);
    assert_eq!(r.json["memory"]["limit"], 536870912);
    assert!(r.json["memory"]["used"].as_u64().is_some_and(|u| u > 0));
    assert!(r.json["network"]["rxBytes"].is_u64());
    assert_eq!(r.json["storage"]["total"], 10737418240u64);

    // update: cpu and memory live; storage for the next start
    let r = s.call("PUT", &one, ADMIN, Some(&json!({"resources": {"cpu": {"cores": 4}, "memory": {"limit": 4294967296u64}, "storage": {"totalSpace": 21474836480u64}}})));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["resources"]["cpu"]["cores"], 4);
    assert_eq!(r.json["resources"]["memory"]["limit"], 4294967296u64);
    assert_eq!(
        r.json["pendingResources"]["storage"]["totalSpace"],
        21474836480u64
    );
    moved(&r, "update");
    assert_eq!(s.get(&one).json["updatedAt"], r.json["updatedAt"]);
    let r = s.call("PUT", &one, ADMIN, Some(&json!({})));
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"));
    let r = s.call(
        "PUT",
        &one,
        ADMIN,
        Some(&json!({"resources": {"cpu": {"cores": 1000}}})),
    );
    assert_eq!((r.status, r.code()), (422, "RESOURCE_LIMIT_EXCEEDED"));

    // the spec's graceful stop example
    let r = s.call(
        "PUT",
        &format!("{one}/stop"),
        ADMIN,
        Some(&json!({"force": false, "timeout": 60})),
    );
    assert_eq!((r.status, r.json["state"].as_str()), (200, Some("stopped")));
    moved(&r, "stop");
    let stopped_at = r.json["updatedAt"].clone();
    let r = s.call("PUT", &format!("{one}/stop"), ADMIN, None);
    assert_eq!((r.status, r.json["state"].as_str()), (200, Some("stopped")));
    assert_eq!(
        r.json["updatedAt"], stopped_at,
        "a stop of a stopped one changes nothing"
    );
    let r = s.call("PUT", &format!("{one}/pause"), ADMIN, None);
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE"));

    let r = s.call("PUT", &format!("{one}/restart"), ADMIN, None);
    assert_eq!((r.status, r.json["state"].as_str()), (200, Some("running")));
    moved(&r, "restart");
    assert_eq!(
        r.json["resources"]["storage"]["totalSpace"], 21474836480u64,
        "pending applied at start"
    );
    assert!(r.json.get("pendingResources").is_none());

    let r = s.call("DELETE", &format!("{one}?force=true"), ADMIN, None);
    assert_eq!(r.status, 204);
    assert!(r.text.is_empty());
    assert_eq!(s.get(&one).status, 404);
    assert_eq!(s.get(&format!("{INSTANCES}/name/{name}")).status, 404);
    // the name is free again
    assert_eq!(create(&s, &name, json!({})).status, 201);
}

#[test]
fn create_errors_unknown_backend_image_and_limits() {
    let s = Server::fake("");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": unique("x"), "backend": "nosuch", "config": {}})),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_BACKEND"));
    let r = create(&s, &unique("img"), json!({"config": {"image": "nope"}}));
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"));
    assert_eq!(r.json["error"]["details"]["backend"], "fake");
    let r = create(
        &s,
        &unique("big"),
        json!({"resources": {"cpu": {"cores": 999}}}),
    );
    assert_eq!((r.status, r.code()), (422, "RESOURCE_LIMIT_EXCEEDED"));
    // nothing was left behind
    assert_eq!(s.get(INSTANCES).json["total"], 0);
}

#[test]
fn start_true_creates_running() {
    let s = Server::fake("");
    let r = create(&s, &unique("st"), json!({"start": true}));
    assert_eq!(r.status, 201);
    assert_eq!(r.json["state"], "running");
}

#[test]
fn a_panicking_plugin_answers_an_error_and_the_server_keeps_serving() {
    let s = Server::fake("");
    let id = created_id(&create(
        &s,
        &unique("boom"),
        json!({"metadata": {"labels": {"fake/panic": "usage"}}}),
    ));
    let r = s.get(&format!("{INSTANCES}/{id}/usage"));
    assert_eq!((r.status, r.code()), (500, "INTERNAL_ERROR"));
    assert!(
        !r.text.contains("panicked at"),
        "no stack trace leaks: {}",
        r.text
    );
    assert_eq!(s.raw("GET", "/healthz", None, None).status, 200);
    assert_eq!(s.get(&format!("{INSTANCES}/{id}")).status, 200);
    let r = s.call("PUT", &format!("{INSTANCES}/{id}/start"), ADMIN, None);
    assert_eq!(r.status, 200);
    // a panic during create leaves nothing and the name free
    let name = unique("boomc");
    let r = create(
        &s,
        &name,
        json!({"metadata": {"labels": {"fake/panic": "create"}}}),
    );
    assert_eq!((r.status, r.code()), (500, "INTERNAL_ERROR"));
    assert_eq!(s.get(&format!("{INSTANCES}/name/{name}")).status, 404);
    assert_eq!(create(&s, &name, json!({})).status, 201);
    // The plugin's own line, tagged with the plugin and the operation (Rust's bare
    // "panicked at" message would not do).
    let log = plain(&s.log());
    for op in ["usage", "create"] {
        assert!(
            log.lines()
                .any(|l| l.contains("ERROR plugin: operation panicked")
                    && l.contains(&format!("op={op} panic=fake panic in {op}"))
                    && l.contains("plugin=fake")),
            "no tagged panic line for {op}:\n{log}"
        );
    }
}

#[test]
fn plugin_events_and_logs_reach_the_host() {
    let s = Server::fake("");
    assert!(
        s.log().contains("fake backend ready"),
        "plugin log line in the host log"
    );
    // The plugin's own line, tagged with its name (colours taken out).
    let plain: String = {
        let log = s.log();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // an SGR sequence: ESC [ ... m
                for d in chars.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    assert!(
        plain
            .lines()
            .any(|l| l.contains("fake backend ready") && l.contains("plugin=fake")),
        "tagged with the plugin's name: {plain}"
    );
    let name = unique("vanish");
    let id = created_id(&create(
        &s,
        &name,
        json!({"metadata": {"labels": {"fake/vanish-after-ms": "300"}}}),
    ));
    let gone = wait_for(Duration::from_secs(10), || {
        (s.get(&format!("{INSTANCES}/{id}")).status == 404).then_some(())
    });
    assert!(gone.is_some(), "the vanished event removed the instance");
    assert_eq!(s.get(INSTANCES).json["total"], 0);
}

#[test]
fn junk_and_incompatible_plugins_are_skipped_and_logged() {
    let incompatible = build_external(
        "tests/fixtures/incompatible-plugin",
        "incompatible_plugin",
        "",
    );
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin(), incompatible],
        junk: vec![
            ("README.txt".into(), b"not a plugin".to_vec()),
            ("garbage.so".into(), b"\x7fELF but not really".to_vec()),
        ],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        ..Default::default()
    });
    let log = s.log();
    for file in ["README.txt", "garbage.so", "libincompatible_plugin.so"] {
        let line = log
            .lines()
            .find(|l| l.contains("plugin file skipped") && l.contains(file))
            .unwrap_or_else(|| panic!("no skip line for {file} in:\n{log}"));
        assert!(line.contains("reason"), "{line}");
    }
    assert_eq!(
        s.get("/api/v1/compute/backends/fake/info").json["status"],
        "running"
    );
}

#[test]
fn missing_plugin_and_down_backend_are_unavailable_and_the_rest_serves() {
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n[backends.ghost]\nplugin = \"nonexistent\"\n[backends.down]\nplugin = \"fake\"\navailable = false\n[backends.off]\nplugin = \"fake\"\nenabled = false\n".into(),
        ..Default::default()
    });
    let r = s.get("/api/v1/compute/cluster/status");
    assert_eq!(r.status, 200);
    assert_eq!(r.json["health"], "degraded");
    assert_eq!(r.json["backends"]["fake"]["status"], "healthy");
    assert_eq!(r.json["backends"]["ghost"]["status"], "unavailable");
    assert_eq!(r.json["backends"]["down"]["status"], "unavailable");
    assert!(
        r.json["backends"].get("off").is_none(),
        "disabled backends are not in cluster status"
    );
    assert_eq!(r.json["backends"]["fake"]["resources"]["cpu"]["total"], 64);

    for backend in ["ghost", "down", "off"] {
        let r = s.call(
            "POST",
            INSTANCES,
            ADMIN,
            Some(&json!({"name": unique("u"), "backend": backend, "config": {"image": "busybox"}})),
        );
        assert_eq!(
            (r.status, r.code()),
            (503, "BACKEND_UNAVAILABLE"),
            "{backend}: {}",
            r.text
        );
        assert_eq!(r.retry_after.as_deref(), Some("5"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.json["error"]["details"]["backend"], backend);
    }
    let r = s.get("/api/v1/compute/backends");
    let list = r.json["backends"].as_array().expect("array");
    let status = |n: &str| {
        list.iter()
            .find(|b| b["name"] == n)
            .map(|b| b["status"].clone())
    };
    assert_eq!(status("off"), Some(json!("disabled")));
    assert_eq!(status("ghost"), Some(json!("unavailable")));
    assert_eq!(status("fake"), Some(json!("healthy")));
    let r = s.get("/api/v1/compute/backends/ghost/info");
    assert_eq!(r.json["status"], "unavailable");
    assert_eq!(r.json["healthCheck"]["status"], "unhealthy");
    let r = s.get("/api/v1/compute/backends/nosuch/info");
    assert_eq!((r.status, r.code()), (400, "INVALID_BACKEND"));
    let r = s.get("/api/v1/compute/backends/down/images");
    assert_eq!(r.status, 503);
    assert_eq!(create(&s, &unique("ok"), json!({})).status, 201);
}

#[test]
fn backend_info_images_cluster_and_openapi() {
    let s = Server::fake("");
    let r = s.get("/api/v1/compute/backends/fake/info");
    assert_eq!(r.status, 200);
    for key in [
        "type",
        "version",
        "apiVersion",
        "status",
        "capabilities",
        "supportedTypes",
        "healthCheck",
        "plugin",
    ] {
        assert!(r.json.get(key).is_some(), "{key} in {}", r.text);
    }
    assert_eq!(r.json["type"], "fake");
    assert_eq!(r.json["plugin"]["name"], "fake");
    assert_eq!(r.json["plugin"]["interfaceVersion"], "1.3");
    assert!(r.json["plugin"]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("libunicompute_fake.so")));
    assert_eq!(r.json["healthCheck"]["status"], "healthy");

    let r = s.get("/api/v1/compute/backends/fake/images");
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r.json["images"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["busybox", "alpine"]);

    create(
        &s,
        &unique("c1"),
        json!({"start": true, "resources": {"cpu": {"cores": 3}, "memory": {"limit": 1073741824}}}),
    );
    create(
        &s,
        &unique("c2"),
        json!({"resources": {"cpu": {"cores": 5}}}),
    );
    let r = s.get("/api/v1/compute/cluster/status");
    assert_eq!(r.json["totalInstances"], 2);
    assert_eq!(r.json["health"], "healthy");
    assert_eq!(r.json["backends"]["fake"]["instances"], 2);
    assert_eq!(
        r.json["backends"]["fake"]["resources"]["cpu"]["used"], 3,
        "only running instances count"
    );
    assert_eq!(
        r.json["backends"]["fake"]["resources"]["memory"]["used"],
        1073741824
    );

    let r = s.get("/api/v1/openapi.json");
    assert_eq!(r.status, 200);
    let paths = r.json["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/compute/instances",
        "/api/v1/compute/instances/{id}",
        "/api/v1/compute/instances/{id}/usage",
        "/api/v1/compute/cluster/status",
        "/api/v1/compute/backends/{backend}/info",
    ] {
        assert!(paths.contains_key(p), "{p} in openapi");
    }
    assert!(r.json["components"]["schemas"]["Instance"].is_object());
}

#[test]
fn graceful_shutdown_on_sigterm() {
    let s = Server::fake("");
    assert_eq!(s.raw("GET", "/healthz", None, None).status, 200);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn generated_admin_token_and_env_tokens() {
    // no tokens: one is made, written 0600, and works
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        tokens: false,
        ..Default::default()
    });
    let file = s.dir.0.join("admin.token");
    let token = std::fs::read_to_string(&file).expect("token file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        s.raw("GET", INSTANCES, Some(token.trim()), None).status,
        200
    );
    // printed once
    let printed = wait_for(Duration::from_secs(5), || {
        (s.stdout().matches(token.trim()).count() == 1).then_some(())
    });
    assert!(printed.is_some(), "the token printed once: {}", s.stdout());
    // The next start with that token file reuses it, and does not print it again.
    let kept = TempDir::new("tokenfile");
    std::fs::copy(&file, kept.0.join("admin.token")).expect("copy");
    drop(s);
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        tokens: false,
        env: vec![(
            "UNICOMPUTE_AUTH__TOKEN_FILE".into(),
            kept.0.join("admin.token").display().to_string(),
        )],
        ..Default::default()
    });
    assert_eq!(
        s.raw("GET", INSTANCES, Some(token.trim()), None).status,
        200,
        "the token of the first start works on the second"
    );
    assert_eq!(
        std::fs::read_to_string(kept.0.join("admin.token")).expect("token file"),
        token
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !s.stdout().contains(token.trim()),
        "printed again: {}",
        s.stdout()
    );
    drop(s);

    // tokens from the environment, as a list
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(b"from-env"));
    let s = Server::start_with(ServerOptions {
        plugins: vec![fake_plugin()],
        toml: "[backends.fake]\nplugin = \"fake\"\n".into(),
        tokens: false,
        env: vec![(
            "UNICOMPUTE_AUTH__TOKENS".into(),
            format!("[{{name=\"ci\",sha256=\"{digest}\",role=\"viewer\"}}]"),
        )],
        ..Default::default()
    });
    assert_eq!(s.raw("GET", INSTANCES, Some("from-env"), None).status, 200);
    assert_eq!(
        s.raw("POST", INSTANCES, Some("from-env"), Some(b"{}"))
            .status,
        403
    );
}

#[test]
fn bad_config_fails_startup_naming_the_key() {
    let dir = TempDir::new("badconfig");
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n", "lisen"),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = \"lots\"\n",
            "max_body_bytes",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\n[plugins]\ndirs = [\"plugins\"]\n[backends.fake]\nplugin = \"fake\"\ncpuz = 4\n",
            "cpuz",
        ),
    ];
    let plugins = dir.0.join("plugins");
    std::fs::create_dir_all(&plugins).expect("dir");
    std::fs::copy(fake_plugin(), plugins.join("libunicompute_fake.so")).expect("copy");
    for (config, key) in cases {
        let path = dir.0.join("c.toml");
        std::fs::write(&path, config).expect("write");
        let mut cmd = std::process::Command::new(host_binary());
        // Only our UNICOMPUTE_* variables (the server refuses unknown ones).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UNICOMPUTE_") {
                cmd.env_remove(k);
            }
        }
        // Should a case start after all (a regression), it listens on a free port
        // and is killed, so the test fails instead of hanging.
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .env("UNICOMPUTE_AUTH__TOKEN_FILE", dir.0.join("t"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        let ended = wait_for(Duration::from_secs(30), || child.try_wait().ok().flatten());
        if ended.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("output");
        assert!(ended.is_some(), "{config}: the server started");
        assert!(!out.status.success(), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key} named in: {stderr}");
    }
}

#[test]
fn a_plugin_built_against_interface_1_0_loads_and_works() {
    let legacy = build_external("tests/fixtures/legacy-plugin", "legacy_plugin", "");
    let s = Server::start_with(ServerOptions {
        plugins: vec![legacy],
        toml: "[backends.old]\nplugin = \"legacy\"\n".into(),
        ..Default::default()
    });
    let r = s.get("/api/v1/compute/backends/old/info");
    assert_eq!(r.json["status"], "running", "{}", r.text);
    assert_eq!(r.json["plugin"]["interfaceVersion"], "1.0");
    let name = unique("old");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": "old"})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    // fields the 1.0 plugin never sent have their defaults
    assert_eq!(r.json["status"], "none");
    assert_eq!(r.json["backend"], "old");
    assert!(r.json["metadata"]["labels"].is_object());
    assert!(r.json.get("pendingResources").is_none());
    let id = r.json["id"].as_str().expect("id").to_owned();
    assert_eq!(s.get(&format!("{INSTANCES}?backend=old")).json["total"], 1);
    // an operation it does not know is a clean 501
    let r = s.get(&format!("{INSTANCES}/{id}/usage"));
    assert_eq!((r.status, r.code()), (501, "OPERATION_NOT_SUPPORTED"));
    // so are the streams of 1.3: its vtable (built against the frozen 1.0-1.2 ABI)
    // has no stream entry, and the host's default answers for it
    let r = s.get(&format!("{INSTANCES}/{id}/logs"));
    assert_eq!(
        (r.status, r.code()),
        (501, "OPERATION_NOT_SUPPORTED"),
        "{}",
        r.text
    );
    assert_eq!(
        s.call("DELETE", &format!("{INSTANCES}/{id}"), ADMIN, None)
            .status,
        204
    );
}

#[test]
fn roles_follow_the_matched_route_and_paths_are_decoded() {
    let s = Server::fake("");
    let name = unique("Dec");
    let r = create(
        &s,
        &name,
        json!({"metadata": {"labels": {"app": "web", "k": "a=b"}}}),
    );
    let one = format!("{INSTANCES}/{}", created_id(&r));

    // An id that reads like an action is an update: admin only, whoever asks.
    let r = s.call(
        "PUT",
        &format!("{INSTANCES}/start"),
        OPERATOR,
        Some(&json!({"resources": {"cpu": {"cores": 1}}})),
    );
    assert_eq!((r.status, r.code()), (403, "FORBIDDEN"), "{}", r.text);
    // What does not exist is 404/405 for every role, not 403.
    let r = s.call("POST", "/api/v1/compute/nonexistent", VIEWER, None);
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"));
    let r = s.call("DELETE", "/api/v1/compute/cluster/status", VIEWER, None);
    assert_eq!((r.status, r.code()), (405, "METHOD_NOT_ALLOWED"));
    // Still 401 first.
    assert_eq!(
        s.raw("POST", "/api/v1/compute/nonexistent", None, None)
            .status,
        401
    );
    // An encoded path is the path it decodes to: no way around the token.
    for path in [
        "/%61pi/v1/compute/instances",
        "/%61%70%69/v1/compute/cluster/status",
        "/api%2Fv1/compute/instances",
    ] {
        let r = s.raw("GET", path, None, None);
        assert!(
            matches!(r.status, 401 | 404),
            "{path}: {} {}",
            r.status,
            r.text
        );
    }
    let r = s.raw("GET", "/%61pi/v1/compute/instances", None, None);
    assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED"));
    let victim = created_id(&create(&s, &unique("kept"), json!({})));
    let r = s.raw(
        "DELETE",
        &format!("/%61pi/v1/compute/instances/{victim}?force=true"),
        None,
        None,
    );
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(s.get(&format!("{INSTANCES}/{victim}")).status, 200);

    // Percent-encoded path segments are decoded.
    let encoded = format!("{INSTANCES}/name/{}", name.replacen('D', "%44", 1));
    let r = s.get(&encoded);
    assert_eq!(r.status, 200, "{encoded}: {}", r.text);
    assert_eq!(r.json["name"], name.as_str());
    assert_eq!(s.get(&format!("{INSTANCES}/name/a%2Fb")).status, 404);
    // HEAD is a GET without a body.
    assert_eq!(s.raw("HEAD", "/healthz", None, None).status, 200);

    // metadata without labels changes no label.
    let r = s.call(
        "PUT",
        &one,
        ADMIN,
        Some(&json!({"resources": {"cpu": {"cores": 2}}, "metadata": {}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["metadata"]["labels"]["app"], "web");
    // Label keys: no '=', no blanks, not empty.
    for key in ["a=b", "", "has space"] {
        let r = s.call(
            "PUT",
            &one,
            ADMIN,
            Some(&json!({"metadata": {"labels": {key: "v"}}})),
        );
        assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{key:?}");
    }
    let r = create(
        &s,
        &unique("badlabel"),
        json!({"metadata": {"labels": {"x=y": "1"}}}),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"));
    let r = create(
        &s,
        &unique("ctl"),
        json!({"metadata": {"labels": {"k": "bell\u{7}"}}}),
    );
    assert_eq!((r.status, r.code()), (400, "INVALID_REQUEST"), "{}", r.text);
}
