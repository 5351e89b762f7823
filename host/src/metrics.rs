//! Prometheus metrics: `GET /metrics`, in the Prometheus text format (0.0.4), made by
//! the `prometheus` crate (TiKV's), whose output `promtool check metrics` takes as it
//! is.
//!
//! Counters and histograms are recorded as the work happens (HTTP requests by route
//! template, plugin calls by backend and operation, plugin loads, reloads); the rest
//! is read at scrape time from what the server holds in memory (backends, the
//! inventory, event subscribers, operations, the last usage sample of each instance),
//! so a scrape never waits on a backend. Label values are bounded: route templates
//! (never raw paths), known methods, backend names of the config, the plugin
//! interface's operation names and error codes; per-instance series exist only for
//! instances that exist and whose usage was read in the last
//! [`USAGE_SAMPLE_MAX_AGE`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{ErrorCode, Usage};
use warp::http::StatusCode;

use crate::plugins::registry::BackendStatus;
use crate::service::{OpStatus, Service};

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long an instance's last usage sample is shown.
pub const USAGE_SAMPLE_MAX_AGE: Duration = Duration::from_secs(600);

/// Latency buckets (seconds): from a fast read (0.5 ms) to a slow create (a minute).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    plugin_seconds: HistogramVec,
    plugin_errors: IntCounterVec,
    plugin_loads: IntCounterVec,
    reloads: IntCounterVec,
    // Read at scrape time.
    backend_up: IntGaugeVec,
    instances: IntGaugeVec,
    subscribers: IntGauge,
    operations: IntGaugeVec,
    cpu: GaugeVec,
    memory_used: GaugeVec,
    memory_limit: GaugeVec,
    storage_used: GaugeVec,
    storage_total: GaugeVec,
    network_rx: IntCounterVec,
    network_tx: IntCounterVec,
    usage_age: GaugeVec,
    /// One scrape at a time (the scrape-time series are reset and set).
    scrape: Mutex<()>,
    /// The last usage read of each instance: when, and what.
    samples: Mutex<HashMap<String, (Instant, Usage)>>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("unicompute")
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("a valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("registered once");
                m
            }};
        }
        let histogram = |name: &str, help: &str| {
            HistogramOpts::new(name, help)
                .namespace("unicompute")
                .buckets(BUCKETS.to_vec())
        };
        let instance = &["instance_id", "name", "backend"];
        Metrics {
            http_requests: reg!(IntCounterVec::new(
                opts("http_requests_total", "HTTP requests answered, by route template, method and status."),
                &["route", "method", "status"]
            )),
            http_seconds: reg!(HistogramVec::new(
                histogram("http_request_duration_seconds", "Time to answer an HTTP request (to the response head for streams), by route template and method."),
                &["route", "method"]
            )),
            plugin_seconds: reg!(HistogramVec::new(
                histogram("plugin_call_duration_seconds", "Time of a call into a backend's plugin, by backend and operation."),
                &["backend", "operation"]
            )),
            plugin_errors: reg!(IntCounterVec::new(
                opts("plugin_call_errors_total", "Plugin calls that answered an error, by backend, operation and error code."),
                &["backend", "operation", "code"]
            )),
            plugin_loads: reg!(IntCounterVec::new(
                opts("plugin_loads_total", "Plugin files loaded (at start, on reload, by the directory watch), by result."),
                &["result"]
            )),
            reloads: reg!(IntCounterVec::new(
                opts("reloads_total", "Config and plugin reloads (SIGHUP, POST /backends/reload, the directory watch), by result."),
                &["result"]
            )),
            backend_up: reg!(IntGaugeVec::new(
                opts("backend_up", "1 when the backend is enabled and its daemon answers, else 0; status: healthy, unavailable or disabled."),
                &["backend", "status"]
            )),
            instances: reg!(IntGaugeVec::new(
                opts("instances", "Instances known, by backend and state."),
                &["backend", "state"]
            )),
            subscribers: reg!(IntGauge::with_opts(opts(
                "event_subscribers",
                "Clients following the event stream."
            ))),
            operations: reg!(IntGaugeVec::new(
                opts("operations", "Operations running or kept after their end, by status."),
                &["status"]
            )),
            cpu: reg!(GaugeVec::new(
                opts("instance_cpu_usage_ratio", "Share of the instance's allocated CPU it used in its last usage sample (0 to 1)."),
                instance
            )),
            memory_used: reg!(GaugeVec::new(
                opts("instance_memory_used_bytes", "Memory used by the instance in its last usage sample."),
                instance
            )),
            memory_limit: reg!(GaugeVec::new(
                opts("instance_memory_limit_bytes", "The instance's memory limit in its last usage sample."),
                instance
            )),
            storage_used: reg!(GaugeVec::new(
                opts("instance_storage_used_bytes", "Disk used by the instance in its last usage sample."),
                instance
            )),
            storage_total: reg!(GaugeVec::new(
                opts("instance_storage_size_bytes", "The instance's disk size in its last usage sample (0: unbounded)."),
                instance
            )),
            network_rx: reg!(IntCounterVec::new(
                opts("instance_network_receive_bytes_total", "Bytes the instance received, as of its last usage sample."),
                instance
            )),
            network_tx: reg!(IntCounterVec::new(
                opts("instance_network_transmit_bytes_total", "Bytes the instance sent, as of its last usage sample."),
                instance
            )),
            usage_age: reg!(GaugeVec::new(
                opts("instance_usage_sample_age_seconds", "How old the instance's last usage sample is."),
                instance
            )),
            registry,
            scrape: Mutex::new(()),
            samples: Mutex::new(HashMap::new()),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A method label: the known ones, else `OTHER` (bounded).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// A request's series, by the addresses of its route and method texts and its status.
type SeriesKey = (usize, usize, u16);

/// Records an answered HTTP request. `route` is the matched route's template, or
/// `unmatched` for a request answered before or without a route (401 without a
/// token, 404, 405).
pub fn http_request(route: &'static str, method: &str, status: StatusCode, took: Duration) {
    let method = method_label(method);
    // The series of a (route, method, status) are looked up once per thread and kept:
    // the labels' hashing and the vectors' locks are off the request path. Routes and
    // methods are static text, compared by address; an unknown key past the cache's
    // size is looked up each time.
    thread_local! {
        static SERIES: RefCell<Vec<(SeriesKey, IntCounter, Histogram)>> =
            const { RefCell::new(Vec::new()) };
    }
    let key = (
        route.as_ptr() as usize,
        method.as_ptr() as usize,
        status.as_u16(),
    );
    SERIES.with(|series| {
        let mut series = series.borrow_mut();
        if let Some((_, count, seconds)) = series.iter().find(|(k, _, _)| *k == key) {
            count.inc();
            seconds.observe(took.as_secs_f64());
            return;
        }
        let m = metrics();
        let count = m
            .http_requests
            .with_label_values(&[route, method, status.as_str()]);
        let seconds = m.http_seconds.with_label_values(&[route, method]);
        count.inc();
        seconds.observe(took.as_secs_f64());
        if series.len() < 256 {
            series.push((key, count, seconds));
        }
    });
}

/// Records a call into a plugin, and its error code when it failed.
pub fn plugin_call(
    backend: &str,
    operation: &'static str,
    took: Duration,
    error: Option<ErrorCode>,
) {
    let m = metrics();
    m.plugin_seconds
        .with_label_values(&[backend, operation])
        .observe(took.as_secs_f64());
    if let Some(code) = error {
        m.plugin_errors
            .with_label_values(&[backend, operation, code.as_str()])
            .inc();
    }
}

/// Records a plugin file loaded, or refused.
pub fn plugin_load(ok: bool) {
    metrics()
        .plugin_loads
        .with_label_values(&[if ok { "ok" } else { "failed" }])
        .inc();
}

/// Records a reload and whether it was applied.
pub fn reload(applied: bool) {
    metrics()
        .reloads
        .with_label_values(&[if applied { "applied" } else { "refused" }])
        .inc();
}

/// Keeps an instance's usage as its last sample.
pub fn usage_sampled(id: &str, usage: &Usage) {
    lock(&metrics().samples).insert(id.to_owned(), (Instant::now(), usage.clone()));
}

/// The scrape: every metric, in the text format, from memory only.
pub fn render(service: &Service) -> Vec<u8> {
    let m = metrics();
    let _one = lock(&m.scrape);

    m.backend_up.reset();
    for b in service.backends() {
        let (up, status) = match b.status {
            BackendStatus::Healthy => (1, "healthy"),
            BackendStatus::Unavailable => (0, "unavailable"),
            BackendStatus::Disabled => (0, "disabled"),
        };
        m.backend_up
            .with_label_values(&[b.name.as_str(), status])
            .set(up);
    }

    m.instances.reset();
    for ((backend, state), n) in service.inventory.count_by_backend_state() {
        m.instances
            .with_label_values(&[backend.as_str(), state])
            .set(n as i64);
    }
    m.subscribers.set(service.hub.subscribers() as i64);
    m.operations.reset();
    for status in [
        OpStatus::Pending,
        OpStatus::Running,
        OpStatus::Succeeded,
        OpStatus::Failed,
        OpStatus::Cancelled,
    ] {
        m.operations.with_label_values(&[status.as_str()]).set(0);
    }
    for (status, n) in service.operations.count_by_status() {
        m.operations
            .with_label_values(&[status.as_str()])
            .set(n as i64);
    }

    for g in [
        &m.cpu,
        &m.memory_used,
        &m.memory_limit,
        &m.storage_used,
        &m.storage_total,
        &m.usage_age,
    ] {
        g.reset();
    }
    m.network_rx.reset();
    m.network_tx.reset();
    {
        let mut samples = lock(&m.samples);
        let now = Instant::now();
        samples.retain(|id, (at, _)| {
            now.duration_since(*at) < USAGE_SAMPLE_MAX_AGE && service.inventory.get(id).is_some()
        });
        for (id, (at, u)) in samples.iter() {
            let Some(i) = service.inventory.get(id) else {
                continue;
            };
            let labels = [id.as_str(), i.name.as_str(), i.backend.as_str()];
            m.cpu.with_label_values(&labels).set(u.cpu.usage / 100.0);
            m.memory_used
                .with_label_values(&labels)
                .set(u.memory.used as f64);
            m.memory_limit
                .with_label_values(&labels)
                .set(u.memory.limit as f64);
            m.storage_used
                .with_label_values(&labels)
                .set(u.storage.used as f64);
            m.storage_total
                .with_label_values(&labels)
                .set(u.storage.total as f64);
            m.network_rx
                .with_label_values(&labels)
                .inc_by(u.network.rx_bytes);
            m.network_tx
                .with_label_values(&labels)
                .inc_by(u.network.tx_bytes);
            m.usage_age
                .with_label_values(&labels)
                .set(now.duration_since(*at).as_secs_f64());
        }
    }

    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "metrics not encoded");
    }
    out
}
