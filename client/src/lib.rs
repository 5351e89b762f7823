//! A typed blocking client for the unicompute HTTP API (`/api/v1`): instances,
//! their actions and usage, backends, images, the cluster status, operations and
//! the event stream. It speaks only the public API; errors carry the server's
//! envelope.
//!
//! ```no_run
//! let c = unicompute_client::Client::new("http://127.0.0.1:8080", Some("TOKEN".into()))?;
//! for i in c.list_all_instances(&Default::default())? {
//!     println!("{} {} {}", i.id, i.name, i.state);
//! }
//! # Ok::<(), unicompute_client::Error>(())
//! ```

mod error;
mod events;
mod streams;
mod types;

use std::io::Read;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use error::Error;
pub use events::EventStream;
pub use streams::{ExecRequest, ExecResult, LogsQuery, TermEvent, Terminal};
pub use types::*;

/// Each public method of [`Client`] and the operation (its `operationId` in the
/// served OpenAPI document) it calls. A test compares this table with the document
/// of a real server: every operation has a method.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("healthz", "healthz"),
    ("openapi", "getOpenApi"),
    ("metrics", "getMetrics"),
    ("whoami", "whoAmI"),
    ("list_instances", "listInstances"),
    ("list_all_instances", "listInstances"),
    ("create_instance", "createInstance"),
    ("get_instance", "getInstance"),
    ("get_instance_by_name", "getInstanceByName"),
    ("update_instance", "updateInstance"),
    ("delete_instance", "deleteInstance"),
    ("start", "startInstance"),
    ("stop", "stopInstance"),
    ("restart", "restartInstance"),
    ("pause", "pauseInstance"),
    ("unpause", "unpauseInstance"),
    ("usage", "getInstanceUsage"),
    ("cluster_status", "getClusterStatus"),
    ("list_backends", "listBackends"),
    ("reload_backends", "reloadBackends"),
    ("backend_info", "getBackendInfo"),
    ("list_images", "listBackendImages"),
    ("pull_image", "addBackendImage"),
    ("upload_image", "addBackendImage"),
    ("delete_image", "deleteBackendImage"),
    ("events", "streamEvents"),
    ("list_operations", "listOperations"),
    ("get_operation", "getOperation"),
    ("wait_operation", "getOperation"),
    ("cancel_operation", "cancelOperation"),
    ("logs", "getInstanceLogs"),
    ("exec", "execInstance"),
    ("console", "openInstanceConsole"),
    ("exec_interactive", "execInstanceInteractive"),
];

/// An instance action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// start
    Start,
    /// stop
    Stop,
    /// restart
    Restart,
    /// pause
    Pause,
    /// unpause
    Unpause,
}

impl Action {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
        }
    }
}

/// What a mutating call answered: the result at once, or (asked with
/// `async`) the operation doing it.
#[derive(Debug, Clone)]
pub enum Answer<T> {
    /// Done.
    Done(T),
    /// Accepted: follow the operation.
    Accepted(Box<Operation>),
}

/// A connection to one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Percent-encodes one path segment or query value (everything but the unreserved
/// characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const API: &str = "/api/v1/compute";

/// A request body: bytes (sent with their `Content-Length`) or a stream.
enum Body {
    Bytes(Vec<u8>),
    Reader(ureq::SendBody<'static>),
}

struct Raw {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

fn agent(read_timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_body(read_timeout)
        .user_agent(concat!("unicompute-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

impl Client {
    /// A client of the server at `url` (`http://host:port`, `https://...`), with a
    /// bearer token.
    pub fn new(url: &str, token: Option<String>) -> Result<Client, Error> {
        let base = url.trim_end_matches('/').to_owned();
        let ok = (base.starts_with("http://") || base.starts_with("https://"))
            && base.split("://").nth(1).is_some_and(|h| !h.is_empty());
        if !ok {
            return Err(Error::Connect {
                url: url.to_owned(),
                message: "not an http:// or https:// URL".into(),
            });
        }
        Ok(Client {
            base,
            token,
            agent: agent(None),
            stream_agent: agent(None),
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Whether a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Option<(&str, Body)>,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let mut uri = format!("{}{path}", self.base);
        for (n, (k, v)) in query.iter().enumerate() {
            uri.push(if n == 0 { '?' } else { '&' });
            uri.push_str(k);
            uri.push('=');
            uri.push_str(&encode(v));
        }
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(&uri)
            .header("Accept", "application/json");
        if let Some(t) = &self.token {
            b = b.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let agent = if path.ends_with("/events") || path.ends_with("/logs") {
            &self.stream_agent
        } else {
            &self.agent
        };
        let result = match body {
            Some((ct, Body::Bytes(bytes))) => {
                let req = b
                    .header("Content-Type", ct)
                    .body(bytes)
                    .map_err(|e| Error::Connect {
                        url: self.base.clone(),
                        message: e.to_string(),
                    })?;
                agent.run(req)
            }
            Some((ct, Body::Reader(body))) => {
                let req = b
                    .header("Content-Type", ct)
                    .body(body)
                    .map_err(|e| Error::Connect {
                        url: self.base.clone(),
                        message: e.to_string(),
                    })?;
                agent.run(req)
            }
            None => {
                let req = b.body(()).map_err(|e| Error::Connect {
                    url: self.base.clone(),
                    message: e.to_string(),
                })?;
                agent.run(req)
            }
        };
        result.map_err(|e| self.transport(e))
    }

    fn transport(&self, e: ureq::Error) -> Error {
        let message = match &e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is the server running there?)".to_owned()
            }
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::Timeout(_) => "timed out".to_owned(),
            other => other.to_string(),
        };
        Error::Connect {
            url: self.base.clone(),
            message,
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        json: Option<Vec<u8>>,
    ) -> Result<Raw, Error> {
        let body = json.map(|b| ("application/json", Body::Bytes(b)));
        let resp = self.request(method, path, query, &[], body)?;
        self.read(resp)
    }

    fn read(&self, mut resp: ureq::http::Response<ureq::Body>) -> Result<Raw, Error> {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| self.transport(e))?;
        let raw = Raw {
            status,
            content_type,
            body,
        };
        if status >= 400 {
            return Err(self.envelope(&raw));
        }
        Ok(raw)
    }

    /// The error of a non-2xx answer: the envelope, or what the body was instead.
    fn envelope(&self, raw: &Raw) -> Error {
        if let Ok(e) = serde_json::from_slice::<ErrorEnvelope>(&raw.body) {
            return Error::Api {
                status: raw.status,
                code: e.error.code,
                message: e.error.message,
                details: e.error.details,
            };
        }
        self.not_api(raw)
    }

    fn not_api(&self, raw: &Raw) -> Error {
        let what = if raw.content_type.is_empty() {
            "no content type".to_owned()
        } else {
            raw.content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        Error::Protocol {
            status: raw.status,
            message: format!(
                "{} answered HTTP {} with {what}, not the unicompute API (is the URL right?)",
                self.base, raw.status
            ),
        }
    }

    fn parse<T: DeserializeOwned>(&self, raw: &Raw) -> Result<T, Error> {
        serde_json::from_slice(&raw.body).map_err(|e| {
            if raw.content_type.starts_with("application/json") {
                Error::Protocol {
                    status: raw.status,
                    message: format!(
                        "{} answered a body this client does not understand: {e}",
                        self.base
                    ),
                }
            } else {
                self.not_api(raw)
            }
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, Error> {
        let raw = self.send("GET", path, query, None)?;
        self.parse(&raw)
    }

    fn json<B: Serialize>(b: &B) -> Vec<u8> {
        serde_json::to_vec(b).expect("request bodies serialize")
    }

    /// A mutating call with `async` as asked: 2xx with `T`, or 202 with an operation.
    fn mutate<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        mut query: Vec<(&str, String)>,
        body: Option<Vec<u8>>,
        asynchronous: bool,
    ) -> Result<Answer<T>, Error> {
        if asynchronous {
            query.push(("async", "true".into()));
        }
        let raw = self.send(method, path, &query, body)?;
        if raw.status == 202 {
            return Ok(Answer::Accepted(Box::new(self.parse(&raw)?)));
        }
        Ok(Answer::Done(self.parse(&raw)?))
    }

    fn done<T>(a: Answer<T>) -> Result<T, Error> {
        match a {
            Answer::Done(t) => Ok(t),
            Answer::Accepted(op) => Err(Error::Protocol {
                status: 202,
                message: format!("the server made operation {} of a synchronous call", op.id),
            }),
        }
    }

    /// `GET /healthz`.
    pub fn healthz(&self) -> Result<Value, Error> {
        self.get("/healthz", &[])
    }

    /// `GET /api/v1/openapi.json`: the served OpenAPI document.
    pub fn openapi(&self) -> Result<Value, Error> {
        self.get("/api/v1/openapi.json", &[])
    }

    /// `GET /api/v1/whoami`: the token's name and role.
    pub fn whoami(&self) -> Result<Value, Error> {
        self.get("/api/v1/whoami", &[])
    }

    /// `GET /metrics`: the Prometheus text, as served.
    pub fn metrics(&self) -> Result<String, Error> {
        let raw = self.send("GET", "/metrics", &[], None)?;
        if !raw.content_type.starts_with("text/plain") {
            return Err(self.not_api(&raw));
        }
        String::from_utf8(raw.body).map_err(|e| Error::Protocol {
            status: 200,
            message: format!("the metrics are not UTF-8: {e}"),
        })
    }

    /// One page of instances (`page` from 1, `page_size` 1-100).
    pub fn list_instances(
        &self,
        filter: &InstanceFilter,
        page: u64,
        page_size: u64,
    ) -> Result<InstanceList, Error> {
        let mut q = vec![
            ("page", page.to_string()),
            ("pageSize", page_size.to_string()),
        ];
        if let Some(b) = &filter.backend {
            q.push(("backend", b.clone()));
        }
        if let Some(s) = &filter.state {
            q.push(("state", s.clone()));
        }
        for l in &filter.labels {
            q.push(("label", l.clone()));
        }
        self.get(&format!("{API}/instances"), &q)
    }

    /// Every matching instance, page after page.
    pub fn list_all_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>, Error> {
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let l = self.list_instances(filter, page, 100)?;
            let n = l.instances.len();
            all.extend(l.instances);
            if n == 0 || all.len() as u64 >= l.total {
                return Ok(all);
            }
            page += 1;
        }
    }

    /// `POST /instances`.
    pub fn create_instance(
        &self,
        req: &CreateInstance,
        asynchronous: bool,
    ) -> Result<Answer<Instance>, Error> {
        self.mutate(
            "POST",
            &format!("{API}/instances"),
            vec![],
            Some(Self::json(req)),
            asynchronous,
        )
    }

    /// `POST /instances` from a body as is (a spec file).
    pub fn create_instance_raw(
        &self,
        body: &Value,
        asynchronous: bool,
    ) -> Result<Answer<Instance>, Error> {
        self.mutate(
            "POST",
            &format!("{API}/instances"),
            vec![],
            Some(Self::json(body)),
            asynchronous,
        )
    }

    /// `GET /instances/{id}`.
    pub fn get_instance(&self, id: &str) -> Result<Instance, Error> {
        self.get(&format!("{API}/instances/{}", encode(id)), &[])
    }

    /// `GET /instances/name/{name}`.
    pub fn get_instance_by_name(&self, name: &str) -> Result<Instance, Error> {
        self.get(&format!("{API}/instances/name/{}", encode(name)), &[])
    }

    /// An instance by id or name: an `i-` argument is tried as an id first, then
    /// as a name; anything else is a name.
    pub fn resolve(&self, id_or_name: &str) -> Result<Instance, Error> {
        if id_or_name.starts_with("i-") {
            match self.get_instance(id_or_name) {
                Err(e) if e.status() == Some(404) => {}
                other => return other,
            }
        }
        self.get_instance_by_name(id_or_name)
    }

    /// `PUT /instances/{id}`.
    pub fn update_instance(
        &self,
        id: &str,
        req: &UpdateInstance,
        asynchronous: bool,
    ) -> Result<Answer<Instance>, Error> {
        self.mutate(
            "PUT",
            &format!("{API}/instances/{}", encode(id)),
            vec![],
            Some(Self::json(req)),
            asynchronous,
        )
    }

    /// `DELETE /instances/{id}` (`force`: also a running one). `None` when done,
    /// the operation when asked `async`.
    pub fn delete_instance(
        &self,
        id: &str,
        force: bool,
        asynchronous: bool,
    ) -> Result<Option<Operation>, Error> {
        let mut q = vec![];
        if force {
            q.push(("force", "true".to_owned()));
        }
        if asynchronous {
            q.push(("async", "true".to_owned()));
        }
        let raw = self.send(
            "DELETE",
            &format!("{API}/instances/{}", encode(id)),
            &q,
            None,
        )?;
        if raw.status == 202 {
            return Ok(Some(self.parse(&raw)?));
        }
        Ok(None)
    }

    /// `PUT /instances/{id}/{action}`; `stop` is the body of a stop or restart.
    pub fn action(
        &self,
        id: &str,
        action: Action,
        stop: Option<&StopOptions>,
        asynchronous: bool,
    ) -> Result<Answer<Instance>, Error> {
        let body = stop.map(Self::json);
        self.mutate(
            "PUT",
            &format!("{API}/instances/{}/{}", encode(id), action.as_str()),
            vec![],
            body,
            asynchronous,
        )
    }

    /// Start.
    pub fn start(&self, id: &str) -> Result<Instance, Error> {
        Self::done(self.action(id, Action::Start, None, false)?)
    }

    /// Stop.
    pub fn stop(&self, id: &str, opts: &StopOptions) -> Result<Instance, Error> {
        Self::done(self.action(id, Action::Stop, Some(opts), false)?)
    }

    /// Restart.
    pub fn restart(&self, id: &str, opts: &StopOptions) -> Result<Instance, Error> {
        Self::done(self.action(id, Action::Restart, Some(opts), false)?)
    }

    /// Pause.
    pub fn pause(&self, id: &str) -> Result<Instance, Error> {
        Self::done(self.action(id, Action::Pause, None, false)?)
    }

    /// Unpause.
    pub fn unpause(&self, id: &str) -> Result<Instance, Error> {
        Self::done(self.action(id, Action::Unpause, None, false)?)
    }

    /// `GET /instances/{id}/usage`.
    pub fn usage(&self, id: &str) -> Result<Usage, Error> {
        self.get(&format!("{API}/instances/{}/usage", encode(id)), &[])
    }

    /// `GET /cluster/status`.
    pub fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        self.get(&format!("{API}/cluster/status"), &[])
    }

    /// `GET /backends`.
    pub fn list_backends(&self) -> Result<Vec<BackendSummary>, Error> {
        Ok(self
            .get::<BackendList>(&format!("{API}/backends"), &[])?
            .backends)
    }

    /// `POST /backends/reload`: the server's answer (plugins, verdicts).
    pub fn reload_backends(&self) -> Result<Value, Error> {
        let raw = self.send("POST", &format!("{API}/backends/reload"), &[], None)?;
        self.parse(&raw)
    }

    /// `GET /backends/{b}/info`.
    pub fn backend_info(&self, backend: &str) -> Result<BackendInfo, Error> {
        self.get(&format!("{API}/backends/{}/info", encode(backend)), &[])
    }

    /// `GET /backends/{b}/images`.
    pub fn list_images(&self, backend: &str) -> Result<Vec<Image>, Error> {
        Ok(self
            .get::<ImageList>(&format!("{API}/backends/{}/images", encode(backend)), &[])?
            .images)
    }

    /// `POST /backends/{b}/images` (a pull): the image, or the operation when
    /// asked `async`.
    pub fn pull_image(
        &self,
        backend: &str,
        req: &PullImage,
        asynchronous: bool,
    ) -> Result<Answer<Image>, Error> {
        self.mutate(
            "POST",
            &format!("{API}/backends/{}/images", encode(backend)),
            vec![],
            Some(Self::json(req)),
            asynchronous,
        )
    }

    /// `POST /backends/{b}/images?name=` (an upload of `size` bytes from `file`).
    pub fn upload_image(
        &self,
        backend: &str,
        name: &str,
        file: impl Read + 'static,
        size: Option<u64>,
        asynchronous: bool,
    ) -> Result<Answer<Image>, Error> {
        let mut q = vec![("name", name.to_owned())];
        if asynchronous {
            q.push(("async", "true".into()));
        }
        let headers: Vec<(&str, String)> = size
            .map(|n| ("Content-Length", n.to_string()))
            .into_iter()
            .collect();
        let body = Body::Reader(ureq::SendBody::from_owned_reader(file));
        let resp = self.request(
            "POST",
            &format!("{API}/backends/{}/images", encode(backend)),
            &q,
            &headers,
            Some(("application/octet-stream", body)),
        )?;
        let raw = self.read(resp)?;
        if raw.status == 202 {
            return Ok(Answer::Accepted(Box::new(self.parse(&raw)?)));
        }
        Ok(Answer::Done(self.parse(&raw)?))
    }

    /// `DELETE /backends/{b}/images/{name}`.
    pub fn delete_image(
        &self,
        backend: &str,
        name: &str,
        asynchronous: bool,
    ) -> Result<Option<Operation>, Error> {
        let q: Vec<(&str, String)> = if asynchronous {
            vec![("async", "true".into())]
        } else {
            vec![]
        };
        let raw = self.send(
            "DELETE",
            &format!("{API}/backends/{}/images/{}", encode(backend), encode(name)),
            &q,
            None,
        )?;
        if raw.status == 202 {
            return Ok(Some(self.parse(&raw)?));
        }
        Ok(None)
    }

    /// `GET /events`: the stream, resumed after `last_event_id` when given. The
    /// stream reconnects by itself after a dropped connection, with
    /// `Last-Event-ID`.
    pub fn events(
        &self,
        filter: &EventFilter,
        last_event_id: Option<u64>,
    ) -> Result<EventStream, Error> {
        EventStream::open(self.clone(), filter.clone(), last_event_id)
    }

    pub(crate) fn open_events(
        &self,
        filter: &EventFilter,
        last_event_id: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let mut q = vec![];
        for b in &filter.backends {
            q.push(("backend", b.clone()));
        }
        for i in &filter.instances {
            q.push(("instance", i.clone()));
        }
        for t in &filter.types {
            q.push(("type", t.clone()));
        }
        let mut h = vec![("Accept", "text/event-stream".to_owned())];
        if let Some(id) = last_event_id {
            h.push(("Last-Event-ID", id.to_string()));
        }
        let resp = self.request("GET", &format!("{API}/events"), &q, &h, None)?;
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if status >= 400 || !ct.starts_with("text/event-stream") {
            let raw = self.read(resp);
            return Err(match raw {
                Err(e) => e,
                Ok(raw) => self.not_api(&raw),
            });
        }
        Ok(resp)
    }

    /// One page of operations, oldest first.
    pub fn list_operations(
        &self,
        filter: &OperationFilter,
        page: u64,
        page_size: u64,
    ) -> Result<OperationList, Error> {
        let mut q = vec![
            ("page", page.to_string()),
            ("pageSize", page_size.to_string()),
        ];
        for (k, v) in [
            ("status", &filter.status),
            ("kind", &filter.kind),
            ("instance", &filter.instance),
            ("backend", &filter.backend),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        self.get(&format!("{API}/operations"), &q)
    }

    /// `GET /operations/{id}`, waiting up to `wait` seconds for its end.
    pub fn get_operation(&self, id: &str, wait: Option<u64>) -> Result<Operation, Error> {
        let q: Vec<(&str, String)> = wait.map(|w| ("wait", w.to_string())).into_iter().collect();
        self.get(&format!("{API}/operations/{}", encode(id)), &q)
    }

    /// Waits for the operation's end (at most `limit`, forever when None), and
    /// answers it whatever its status; `Error::Operation` is for callers to make of
    /// a failed one ([`Operation::error`]).
    pub fn wait_operation(&self, id: &str, limit: Option<Duration>) -> Result<Operation, Error> {
        let deadline = limit.map(|l| Instant::now() + l);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs());
            let wait = left.map_or(60, |l| l.min(60));
            let op = self.get_operation(id, Some(wait))?;
            if op.ended() || left.is_some_and(|l| l == 0) {
                return Ok(op);
            }
        }
    }

    /// `DELETE /operations/{id}`: the operation (ended, or still ending after 10
    /// seconds).
    pub fn cancel_operation(&self, id: &str) -> Result<Operation, Error> {
        let raw = self.send(
            "DELETE",
            &format!("{API}/operations/{}", encode(id)),
            &[],
            None,
        )?;
        self.parse(&raw)
    }
}

/// The error of an ended operation that did not succeed.
pub fn operation_error(op: &Operation) -> Option<Error> {
    if op.status == "succeeded" {
        return None;
    }
    let (code, message, details) = match &op.error {
        Some(e) => (
            e.error.code.clone(),
            e.error.message.clone(),
            e.error.details.clone(),
        ),
        None => (
            "INTERNAL_ERROR".into(),
            format!("operation {}", op.status),
            Value::Null,
        ),
    };
    Some(Error::Operation {
        id: op.id.clone(),
        code,
        message,
        details,
    })
}
