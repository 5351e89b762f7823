//! `GET /metrics`: the Prometheus text format, checked with `promtool check metrics`
//! (Debian's `prometheus` package) and scraped by a real Prometheus server started
//! on loopback, whose query API then answers the series. The real binary, the fake
//! plugin and the real Docker backend.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use unicompute_tests::docker::{ensure_image, sweep_stale, FileLock, TEST_IMAGE};
use unicompute_tests::sse::Sse;
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// One sample: its labels and value.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of the text format by metric name (comments skipped).
fn parse(text: &str) -> BTreeMap<String, Vec<Sample>> {
    let mut out: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here hold no `",`.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
            map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
        }
        out.entry(name.to_owned()).or_default().push(Sample {
            labels: map,
            value: value.parse().expect("a number"),
        });
    }
    out
}

/// The value of the one sample of `name` whose labels include `want`.
fn value(all: &BTreeMap<String, Vec<Sample>>, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = all
        .get(name)?
        .iter()
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {want:?}: {found:?}");
    found.first().map(|s| s.value)
}

/// `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test-env.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn scrape(s: &Server) -> String {
    let r = s.raw("GET", "/metrics", Some(VIEWER), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text
}

#[test]
fn metrics_need_a_token_pass_promtool_and_count_what_happened() {
    let s = Server::fake("");
    // No token: 401 in the envelope; a viewer's is enough.
    let r = s.raw("GET", "/metrics", None, None);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json["error"]["code"], "UNAUTHORIZED");

    let sub = Sse::open(&s.base, "/api/v1/compute/events", VIEWER, &[]);
    let a = unique("ma");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": a, "backend": "fake", "start": true,
            "config": {"image": "busybox"},
            "resources": {"memory": {"limit": 64u64 << 20}}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id_a = r.json["id"].as_str().expect("id").to_owned();
    // A create as an operation, and a start that panics in the plugin.
    let b = unique("mb");
    let r = s.call(
        "POST",
        &format!("{INSTANCES}?async=true"),
        ADMIN,
        Some(
            &json!({"name": b, "backend": "fake", "config": {"image": "busybox"},
            "metadata": {"labels": {"fake/panic": "start"}}}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.json["id"].as_str().expect("op").to_owned();
    let r = s.get(&format!("/api/v1/compute/operations/{op}?wait=30"));
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    let id_b = r.json["result"]["id"].as_str().expect("id").to_owned();
    let r = s.call("PUT", &format!("{INSTANCES}/{id_b}/start"), ADMIN, None);
    assert_eq!(r.status, 500, "{}", r.text);
    // A usage sample of a.
    let r = s.get(&format!("{INSTANCES}/{id_a}/usage"));
    assert_eq!(r.status, 200, "{}", r.text);
    // Ids that do not exist: one series for the route template, no id anywhere.
    let missing: Vec<String> = (0..40).map(|n| format!("i-nothere{n:013}")).collect();
    for m in &missing {
        assert_eq!(s.get(&format!("{INSTANCES}/{m}")).status, 404);
    }
    assert_eq!(s.get("/no/such/route").status, 404);

    let text = scrape(&s);
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    for m in &missing {
        assert!(!text.contains(m.as_str()), "{m} in the metrics");
    }
    assert!(!text.contains("/no/such/route"));
    let all = parse(&text);

    let requests = "unicompute_http_requests_total";
    let one_id = "/api/v1/compute/instances/{id}";
    assert_eq!(
        value(
            &all,
            requests,
            &[("route", one_id), ("method", "GET"), ("status", "404")]
        ),
        Some(40.0)
    );
    assert_eq!(
        value(
            &all,
            requests,
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &all,
            requests,
            &[("route", "/metrics"), ("method", "GET"), ("status", "401")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &all,
            requests,
            &[
                ("route", "/api/v1/compute/instances"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        Some(1.0)
    );
    let latency = "unicompute_http_request_duration_seconds_count";
    assert!(value(&all, latency, &[("route", one_id), ("method", "GET")]) >= Some(40.0));

    let calls = "unicompute_plugin_call_duration_seconds_count";
    assert_eq!(
        value(&all, calls, &[("backend", "fake"), ("operation", "create")]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &all,
            "unicompute_plugin_call_errors_total",
            &[
                ("backend", "fake"),
                ("operation", "start"),
                ("code", "INTERNAL_ERROR")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &all,
            "unicompute_backend_up",
            &[("backend", "fake"), ("status", "healthy")]
        ),
        Some(1.0)
    );
    let instances = "unicompute_instances";
    assert_eq!(
        value(
            &all,
            instances,
            &[("backend", "fake"), ("state", "running")]
        ),
        Some(1.0)
    );
    assert!(value(
        &all,
        instances,
        &[("backend", "fake"), ("state", "created")]
    )
    .is_some());
    assert!(value(&all, "unicompute_event_subscribers", &[]) >= Some(1.0));
    assert!(value(&all, "unicompute_operations", &[("status", "succeeded")]) >= Some(1.0));
    assert_eq!(
        value(&all, "unicompute_operations", &[("status", "cancelled")]),
        Some(0.0)
    );
    assert!(value(&all, "unicompute_plugin_loads_total", &[("result", "ok")]) >= Some(1.0));
    let who = [
        ("instance_id", id_a.as_str()),
        ("name", a.as_str()),
        ("backend", "fake"),
    ];
    assert_eq!(
        value(&all, "unicompute_instance_memory_limit_bytes", &who),
        Some((64u64 << 20) as f64)
    );
    assert!(value(&all, "unicompute_instance_cpu_usage_ratio", &who).is_some());
    assert!(value(
        &all,
        "unicompute_instance_network_receive_bytes_total",
        &who
    )
    .is_some());
    // Only the sampled one has usage series.
    assert!(!text.contains(&format!("instance_id=\"{id_b}\"")));

    // A reload is counted; a deleted instance's series go.
    let r = s.call("POST", "/api/v1/compute/backends/reload", ADMIN, None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id_a}?force=true"),
        ADMIN,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text);
    let text = scrape(&s);
    let all = parse(&text);
    assert_eq!(
        value(&all, "unicompute_reloads_total", &[("result", "applied")]),
        Some(1.0)
    );
    assert!(!text.contains(&format!("instance_id=\"{id_a}\"")), "{text}");
    assert_eq!(
        value(
            &all,
            instances,
            &[("backend", "fake"), ("state", "running")]
        ),
        None
    );
    drop(sub);
    let r = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id_b}?force=true"),
        ADMIN,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text);
}

#[test]
fn public_metrics_need_no_token_and_the_document_says_so() {
    let s = Server::fake("[metrics]\npublic = true\n");
    let r = s.raw("GET", "/metrics", None, None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("unicompute_backend_up"), "{}", r.text);
    let doc = s.get("/api/v1/openapi.json").json;
    let op = &doc["paths"]["/metrics"]["get"];
    assert_eq!(op["security"], json!([]), "{op}");
    assert!(op["responses"].get("401").is_none(), "{op}");
    // Not public (the default): the document asks for the bearer token.
    let s = Server::fake("");
    let doc = s.get("/api/v1/openapi.json").json;
    let op = &doc["paths"]["/metrics"]["get"];
    assert_eq!(op["x-required-role"], "viewer");
    assert!(op["responses"].get("401").is_some(), "{op}");
}

/// A Prometheus server, on loopback, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `target` (host:port) every second with the viewer's
/// token.
fn prometheus(target: &str) -> Prometheus {
    let dir = TempDir::new("uc-prom");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: unicompute\n    metrics_path: /metrics\n    authorization:\n      credentials: {VIEWER}\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian's prometheus package)");
    Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// The result of an instant query, once it has one (within 60 s).
fn query(p: &Prometheus, q: &str) -> Vec<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    wait_for(Duration::from_secs(60), || {
        let mut r = agent
            .get(format!("{}/api/v1/query", p.base))
            .query("query", q)
            .call()
            .ok()?;
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        let result = v["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    })
    .unwrap_or_else(|| panic!("Prometheus at {} answered nothing for {q}", p.base))
}

#[test]
fn a_real_prometheus_scrapes_it() {
    let s = Server::fake("");
    let name = unique("prom");
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": "fake", "start": true, "config": {"image": "busybox"}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    assert_eq!(s.get(&format!("{INSTANCES}/{id}/usage")).status, 200);
    let target = s.base.trim_start_matches("http://").to_owned();
    let p = prometheus(&target);
    let up = query(&p, "up{job=\"unicompute\"} == 1");
    assert_eq!(up[0]["metric"]["instance"], target.as_str(), "{up:?}");
    let running = query(
        &p,
        "unicompute_instances{backend=\"fake\",state=\"running\"}",
    );
    assert_eq!(running[0]["value"][1], "1", "{running:?}");
    let mem = query(
        &p,
        &format!("unicompute_instance_memory_used_bytes{{instance_id=\"{id}\"}}"),
    );
    assert_eq!(mem[0]["metric"]["name"], name.as_str(), "{mem:?}");
    let rate = query(
        &p,
        "sum by (route) (unicompute_http_requests_total{route=\"/metrics\",status=\"200\"})",
    );
    assert!(
        rate[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            >= Some(1.0),
        "{rate:?}"
    );
    let r = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text);
}

/// A real container's usage read once: its figures are series of its own, and the
/// scrape still passes promtool.
#[test]
fn a_docker_containers_usage_is_in_the_metrics() {
    let lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let tmp = TempDir::new("uc-metrics-dock");
    let (s, backend) = unicompute_tests::docker::server(&tmp.0);
    let name = unique("uc-metr");
    let _guard = unicompute_tests::docker::ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({"name": name, "backend": backend, "start": true,
            "config": {"image": TEST_IMAGE, "command": ["sleep", "300"]},
            "resources": {"memory": {"limit": 64u64 << 20}}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let u = s.get(&format!("{INSTANCES}/{id}/usage"));
    assert_eq!(u.status, 200, "{}", u.text);
    let text = scrape(&s);
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
    let all = parse(&text);
    let who = [
        ("instance_id", id.as_str()),
        ("name", name.as_str()),
        ("backend", backend.as_str()),
    ];
    assert_eq!(
        value(&all, "unicompute_instance_memory_used_bytes", &who),
        u.json["memory"]["used"].as_f64()
    );
    assert_eq!(
        value(&all, "unicompute_instance_memory_limit_bytes", &who),
        Some((64u64 << 20) as f64)
    );
    assert_eq!(
        value(
            &all,
            "unicompute_instances",
            &[("backend", backend.as_str()), ("state", "running")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &all,
            "unicompute_plugin_call_duration_seconds_count",
            &[("backend", backend.as_str()), ("operation", "usage")]
        ) >= Some(1.0)
    );
    let r = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text);
    drop(lock);
}
