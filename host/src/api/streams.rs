//! An instance's byte streams over HTTP: `logs` (chunked text, or Server-Sent Events),
//! `exec` (run to completion as JSON, or interactive on a WebSocket) and `console` (a
//! WebSocket). The plugin's stream is read only as fast as the client reads: nothing
//! is buffered here beyond one chunk (and one partial line for SSE).
//!
//! The WebSocket protocol (console and interactive exec): binary messages carry
//! terminal bytes both ways (output: standard output and error as a terminal shows
//! them). A text message from the client is a control message when it is a JSON object
//! with a `type`: `{"type":"resize","cols":C,"rows":R}`, `{"type":"eof"}` (end of
//! input); any other text is input. The server sends text control messages:
//! `{"type":"exit","exitCode":N}` when an exec'd command ends, and
//! `{"type":"error","error":{code,message,details}}` before closing on a failure or a
//! console taken over; then it closes (1000 normal, 1011 on an error, 4009 taken over).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use unicompute_plugin_api::stream::{ConsoleOptions, ExecOptions, LogsOptions, TermSize};
use unicompute_plugin_api::{ByteStream, Input, InstanceState, Output, StreamKind};
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};

use crate::api::error::{ApiError, Code};
use crate::api::handlers::{flag, parse_body, Reply};
use crate::api::sse::SyncStream;
use crate::events::Kind;
use crate::service::{ConsoleLease, Service};

fn pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn unknown(k: &str) -> ApiError {
    ApiError::invalid(format!("unknown query parameter {k}")).detail("parameter", k)
}

fn once(seen: &mut Vec<String>, k: &str) -> Result<(), ApiError> {
    if seen.iter().any(|s| s == k) {
        return Err(ApiError::invalid(format!(
            "query parameter {k} is given twice"
        )));
    }
    seen.push(k.to_owned());
    Ok(())
}

/// `since`: RFC 3339, or seconds since the epoch (fractions allowed).
fn parse_since(v: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "since must be an RFC 3339 instant (2024-01-02T03:04:05.123Z) or seconds since the epoch",
        )
        .detail("since", v)
    };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v.trim()) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let secs: f64 = v.trim().parse().map_err(|_| bad())?;
    if !secs.is_finite() || !(0.0..=253_402_300_799.0).contains(&secs) {
        return Err(bad());
    }
    let whole = secs.trunc() as i64;
    let nanos = ((secs - secs.trunc()) * 1e9).round() as u32;
    chrono::DateTime::from_timestamp(whole, nanos.min(999_999_999)).ok_or_else(bad)
}

fn parse_size(cols: Option<&str>, rows: Option<&str>) -> Result<Option<TermSize>, ApiError> {
    let n = |name: &str, v: &str| {
        v.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::invalid(format!("{name} must be 1 to 65535")).detail(name, v))
    };
    match (cols, rows) {
        (None, None) => Ok(None),
        (Some(c), Some(r)) => Ok(Some(TermSize {
            cols: n("cols", c)?,
            rows: n("rows", r)?,
        })),
        _ => Err(ApiError::invalid("cols and rows go together")),
    }
}

/// The logs query: `follow`, `tail` (lines, or `all`), `since`, `timestamps`, `stream`
/// (`stdout`, `stderr` or `all`).
pub fn parse_logs(query: &str) -> Result<LogsOptions, ApiError> {
    let mut o = LogsOptions::default();
    let mut seen = Vec::new();
    for (k, v) in pairs(query) {
        once(&mut seen, &k)?;
        match k.as_str() {
            "follow" => o.follow = flag("follow", &v)?,
            "timestamps" => o.timestamps = flag("timestamps", &v)?,
            "tail" => {
                o.tail = match v.as_str() {
                    "all" => None,
                    n => Some(n.parse::<u64>().map_err(|_| {
                        ApiError::invalid("tail must be a number of lines (0 or more) or all")
                            .detail("tail", n)
                    })?),
                }
            }
            "since" => o.since = Some(parse_since(&v)?),
            "stream" => {
                (o.stdout, o.stderr) = match v.as_str() {
                    "stdout" => (true, false),
                    "stderr" => (false, true),
                    "all" => (true, true),
                    _ => {
                        return Err(ApiError::invalid("stream must be stdout, stderr or all")
                            .detail("stream", v.as_str()))
                    }
                }
            }
            other => return Err(unknown(other)),
        }
    }
    Ok(o)
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// What the instance printed: a container's standard output and error, a VM's
/// serial console. Without `follow` the answer ends with what was written so far; with
/// it, new output arrives as it is written, until the client leaves (or the instance
/// stops, for a backend that ends the stream then). As `text/plain` (the bytes as
/// written, both streams mixed in order), or as Server-Sent Events when the client
/// accepts `text/event-stream`: one `stdout` or `stderr` event per line (its `data:`
/// the line), `end` at the end, `error` (the error envelope) on a failure. Works in
/// every state: a stopped instance's logs stay readable.
#[utoipa::path(get, path = "/api/v1/compute/instances/{id}/logs", operation_id = "getInstanceLogs", tag = "streams",
    params(
        ("id" = String, Path, min_length = 1, description = "The instance's id"),
        ("follow" = Option<bool>, Query, description = "Keep the answer open and send new output as it is written"),
        ("tail" = Option<String>, Query, description = "Only the last N lines written before (a whole number), or `all` (the default)"),
        ("since" = Option<String>, Query, description = "Only output written at or after this instant: RFC 3339, or seconds since the epoch (fractions allowed). Not on a backend whose log has no timestamps (KVM: 501)"),
        ("timestamps" = Option<bool>, Query, description = "Prefix each line with the RFC 3339 instant it was written (not on KVM: 501)"),
        ("stream" = Option<String>, Query, description = "`stdout`, `stderr` or `all` (the default)"),
    ),
    responses((status = 200, description = "The output: `text/plain`, or `text/event-stream` when asked by `Accept`", content_type = "text/plain", body = String)),
    security(("bearer" = [])))]
pub async fn logs(
    svc: &Arc<Service>,
    id: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<warp::reply::Response, ApiError> {
    let options = parse_logs(query)?;
    let follow = options.follow;
    // Subscribed before the stream opens: a stop in between is not missed.
    let stop = follow.then(|| stopped(svc, id));
    let stream = svc.open_stream(id, StreamKind::Logs(options)).await?;
    let stream = Followed {
        stream,
        stop,
        until: None,
    };
    if wants_sse(headers) {
        let heartbeat = Duration::from_secs(svc.config().server.events_heartbeat_secs.max(1));
        return Ok(sse_response(stream, follow.then_some(heartbeat)));
    }
    let body = futures_util::stream::unfold(Some(stream), |s| async move {
        let mut stream = s?;
        loop {
            match stream.next().await {
                Some(Output::Stdout(d)) | Some(Output::Stderr(d)) => {
                    return Some((Ok(Bytes::from(d)), Some(stream)))
                }
                Some(Output::Exit(_)) => continue,
                Some(Output::Error(e)) => {
                    // The status is sent: cut the answer so the client sees it fail
                    // rather than end.
                    tracing::warn!(error = %e, "a log stream failed");
                    return Some((Err(std::io::Error::other(e.message)), None));
                }
                None => return None,
            }
        }
    });
    let body = warp::reply::stream(SyncStream(std::sync::Mutex::new(Box::pin(body))));
    let mut resp = warp::reply::Reply::into_response(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Splits output into lines per channel, for SSE (a line longer than this is sent in
/// pieces).
const MAX_LINE: usize = 64 * 1024;

/// How long a follow goes on reading after its instance stopped: what it printed last
/// may still be on its way (a serial log is read every 100 ms).
const DRAIN_AFTER_STOP: Duration = Duration::from_millis(500);

/// Resolves when instance `id` stops running or is deleted (a follow then ends, as
/// Docker's does, whatever the backend).
fn stopped(svc: &Arc<Service>, id: &str) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut live = svc.hub.subscribe(None).live;
    let svc = Arc::clone(svc);
    let id = id.to_owned();
    Box::pin(async move {
        let ended = |svc: &Service| {
            svc.get(&id)
                .map(|i| {
                    !matches!(
                        i.state,
                        InstanceState::Running | InstanceState::Paused | InstanceState::Restarting
                    )
                })
                .unwrap_or(true)
        };
        if ended(&svc) {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) if e.instance_id.as_deref() == Some(id.as_str()) => {
                    if matches!(e.kind, Kind::InstanceDeleted) || ended(&svc) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if ended(&svc) {
                        return;
                    }
                }
                // The server is stopping: its streams end.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// A logs stream that ends, for a follow, once its instance has stopped and what it
/// printed last has come.
struct Followed {
    stream: ByteStream,
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Once stopped: the end of the drain.
    until: Option<tokio::time::Instant>,
}

impl Followed {
    async fn next(&mut self) -> Option<Output> {
        if let Some(until) = self.until {
            return tokio::time::timeout_at(until, self.stream.next())
                .await
                .ok()
                .flatten();
        }
        let Some(stop) = &mut self.stop else {
            return self.stream.next().await;
        };
        tokio::select! {
            out = self.stream.next() => out,
            _ = stop => {
                self.stop = None;
                let until = tokio::time::Instant::now() + DRAIN_AFTER_STOP;
                self.until = Some(until);
                tokio::time::timeout_at(until, self.stream.next())
                    .await
                    .ok()
                    .flatten()
            }
        }
    }
}

struct Lines {
    stream: Followed,
    partial: [Vec<u8>; 2],
    ready: std::collections::VecDeque<Bytes>,
    heartbeat: Option<tokio::time::Interval>,
    opened: bool,
    done: bool,
}

fn sse_event(event: &str, data: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(data);
    let text = text.trim_end_matches('\r').replace('\r', "");
    Bytes::from(format!("event: {event}\ndata: {text}\n\n"))
}

impl Lines {
    fn push(&mut self, channel: usize, data: &[u8]) {
        let name = ["stdout", "stderr"][channel];
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial[channel]);
                self.ready.push_back(sse_event(name, &line));
            } else {
                self.partial[channel].push(b);
                if self.partial[channel].len() >= MAX_LINE {
                    let line = std::mem::take(&mut self.partial[channel]);
                    self.ready.push_back(sse_event(name, &line));
                }
            }
        }
    }

    fn flush(&mut self) {
        for channel in 0..2 {
            if !self.partial[channel].is_empty() {
                let line = std::mem::take(&mut self.partial[channel]);
                self.ready
                    .push_back(sse_event(["stdout", "stderr"][channel], &line));
            }
        }
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            return Some(Bytes::from_static(b": open\n\n"));
        }
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            let next = self.stream.next();
            let out = match &mut self.heartbeat {
                Some(h) => tokio::select! {
                    out = next => out,
                    _ = h.tick() => return Some(Bytes::from_static(b": heartbeat\n\n")),
                },
                None => next.await,
            };
            match out {
                Some(Output::Stdout(d)) => self.push(0, &d),
                Some(Output::Stderr(d)) => self.push(1, &d),
                Some(Output::Exit(_)) => {}
                Some(Output::Error(e)) => {
                    self.flush();
                    let env = ApiError::from_plugin("", e).envelope();
                    let json = serde_json::to_vec(&env).unwrap_or_default();
                    self.ready.push_back(sse_event("error", &json));
                    self.done = true;
                }
                None => {
                    self.flush();
                    self.ready.push_back(sse_event("end", b"{}"));
                    self.done = true;
                }
            }
        }
    }
}

fn sse_response(stream: Followed, heartbeat: Option<Duration>) -> warp::reply::Response {
    let lines = Lines {
        stream,
        partial: [Vec::new(), Vec::new()],
        ready: Default::default(),
        heartbeat: heartbeat
            .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every)),
        opened: false,
        done: false,
    };
    let body = futures_util::stream::unfold(lines, |mut l| async move {
        let b = l.next_frame().await?;
        Some((Ok::<Bytes, Infallible>(b), l))
    });
    let body = warp::reply::stream(SyncStream(std::sync::Mutex::new(Box::pin(body))));
    let mut resp = warp::reply::Reply::into_response(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Environment for exec: `["NAME=value", ...]` or `{"NAME": "value"}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ExecEnv {
    /// `NAME=value` each.
    List(Vec<String>),
    /// Name to value.
    Map(BTreeMap<String, String>),
}

/// Standard input for a run-to-completion exec: text fed to the command, then end of
/// file; `false` (the default) or `true` for none.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ExecStdin {
    /// Whether the command gets an (empty) standard input.
    Flag(bool),
    /// The text fed to the command.
    Text(String),
}

/// `POST /instances/{id}/exec`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecRequest {
    /// The program and its arguments (not run through a shell).
    #[schema(min_items = 1)]
    pub command: Vec<String>,
    /// Added environment.
    #[serde(default)]
    pub env: Option<ExecEnv>,
    /// Working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// User (name or uid[:gid]).
    #[serde(default)]
    pub user: Option<String>,
    /// Run it on a terminal (its output is then all `stdout`).
    #[serde(default)]
    pub tty: bool,
    /// Text fed to its standard input.
    #[serde(default)]
    pub stdin: Option<ExecStdin>,
    /// Seconds before the server stops waiting (1 to `server.max_exec_timeout_secs`,
    /// which is also the default); the answer then has `timedOut: true`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout: Option<u64>,
}

/// What a run-to-completion exec answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// The command's exit code; `null` when the server stopped waiting (`timedOut`).
    pub exit_code: Option<i64>,
    /// Its standard output (UTF-8, invalid bytes replaced).
    pub stdout: String,
    /// Its standard error (empty with `tty`).
    pub stderr: String,
    /// Whether output beyond `server.exec_output_limit_bytes` was cut.
    pub truncated: bool,
    /// Whether the timeout passed before the command ended.
    pub timed_out: bool,
}

fn check_command(command: &[String]) -> Result<(), ApiError> {
    if command.first().is_none_or(|c| c.is_empty()) {
        return Err(ApiError::invalid(
            "command must name a program: a non-empty array, [\"ls\", \"-l\"]",
        )
        .detail("field", "command"));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid("command must not hold NUL bytes").detail("field", "command"));
    }
    Ok(())
}

fn env_list(env: Option<ExecEnv>) -> Result<Vec<String>, ApiError> {
    let list = match env {
        None => vec![],
        Some(ExecEnv::List(l)) => l,
        Some(ExecEnv::Map(m)) => m.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
    };
    for e in &list {
        let ok = e
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && !k.contains('\0'))
            && !e.contains('\0');
        if !ok {
            return Err(ApiError::invalid(format!(
                "env entries are NAME=value with a non-empty name: {e:?}"
            ))
            .detail("field", "env"));
        }
    }
    Ok(list)
}

/// Run a command in a running instance, to completion: its exit code, standard output
/// and standard error (each up to `server.exec_output_limit_bytes`; `truncated` when
/// cut). Docker: the engine's exec. KVM: the QEMU guest agent's `guest-exec`, when the
/// domain has an agent that answers (else 501, saying why). For an interactive
/// command, open the same path as a WebSocket (`GET`).
#[utoipa::path(post, path = "/api/v1/compute/instances/{id}/exec", operation_id = "execInstance", tag = "streams",
    params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    request_body = ExecRequest,
    responses((status = 200, description = "The command ran (or the timeout passed)", body = ExecResult)),
    security(("bearer" = [])))]
pub async fn exec(svc: &Arc<Service>, id: &str, body: &[u8]) -> Result<Reply, ApiError> {
    let req: ExecRequest = parse_body(body)?;
    check_command(&req.command)?;
    let env = env_list(req.env)?;
    let config = svc.config();
    let max = config.server.max_exec_timeout_secs.max(1);
    let timeout = match req.timeout {
        None => max,
        Some(t) if (1..=max).contains(&t) => t,
        Some(t) => {
            return Err(
                ApiError::invalid(format!("timeout must be 1 to {max} seconds"))
                    .detail("field", "timeout")
                    .detail("timeout", t),
            )
        }
    };
    let input = match req.stdin {
        None | Some(ExecStdin::Flag(false)) => None,
        Some(ExecStdin::Flag(true)) => Some(Vec::new()),
        Some(ExecStdin::Text(t)) => Some(t.into_bytes()),
    };
    let options = ExecOptions {
        command: req.command,
        env,
        workdir: req.workdir,
        user: req.user,
        tty: req.tty,
        stdin: input.is_some(),
        size: None,
    };
    let stream = svc.open_stream(id, StreamKind::Exec(options)).await?;
    let stream = Arc::new(stream);
    // Fed alongside the reads (a command may write before it reads everything), and
    // stopped with the answer: a command that never reads must not keep the stream.
    let _feeder = input.map(|data| {
        let s = Arc::clone(&stream);
        AbortOnDrop(tokio::spawn(async move {
            for chunk in data.chunks(unicompute_plugin_api::stream::MAX_CHUNK) {
                if !s.send(Input::Data(chunk.to_vec())).await {
                    return;
                }
            }
            let _ = s.send(Input::CloseStdin).await;
        }))
    });
    let limit = config.server.exec_output_limit_bytes;
    let (mut out, mut err, mut truncated) = (Vec::new(), Vec::new(), false);
    let mut keep = |buf: &mut Vec<u8>, d: Vec<u8>| {
        let room = limit.saturating_sub(buf.len());
        if d.len() > room {
            truncated = true;
        }
        buf.extend_from_slice(&d[..d.len().min(room)]);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut exit_code = None;
    let mut timed_out = false;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        match next {
            Err(_) => {
                timed_out = true;
                break;
            }
            Ok(Some(Output::Stdout(d))) => keep(&mut out, d),
            Ok(Some(Output::Stderr(d))) => keep(&mut err, d),
            Ok(Some(Output::Exit(code))) => exit_code = Some(code),
            Ok(Some(Output::Error(e))) => {
                let backend = svc.get(id).map(|i| i.backend.clone()).unwrap_or_default();
                return Err(ApiError::from_plugin(&backend, e));
            }
            Ok(None) => break,
        }
    }
    if exit_code.is_none() && !timed_out {
        return Err(ApiError::new(
            Code::BackendError,
            "the command's output ended without its exit code",
        ));
    }
    let result = ExecResult {
        exit_code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        truncated,
        timed_out,
    };
    let body = serde_json::to_vec(&result)
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(body.into()),
        location: None,
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn upgrade_required() -> ApiError {
    ApiError::new(
        Code::UpgradeRequired,
        "this endpoint is a WebSocket: connect with GET and the headers Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13, Sec-WebSocket-Key",
    )
}

fn must_run(svc: &Service, id: &str, what: &str) -> Result<(), ApiError> {
    let inst = svc.get(id)?;
    if inst.state != InstanceState::Running {
        return Err(ApiError::invalid_state(format!(
            "instance {id} is {}: {what} needs a running instance",
            inst.state.as_str()
        ))
        .detail("state", inst.state.as_str()));
    }
    Ok(())
}

/// The instance's console as a WebSocket (protocol in the module documentation of
/// `docs/api.md`, Streams). Docker: attached to the container's main process
/// (keyboard input needs a container made with `config.openStdin`; a TTY with
/// `config.tty`); KVM: the serial console. One client at a time: another gets 409
/// `CONSOLE_IN_USE` unless it asks `force=true`, which closes the first (close code
/// 4009) and takes over.
#[utoipa::path(get, path = "/api/v1/compute/instances/{id}/console", operation_id = "openInstanceConsole", tag = "streams",
    params(
        ("id" = String, Path, min_length = 1, description = "The instance's id"),
        ("force" = Option<bool>, Query, description = "Take the console over from the client that holds it"),
        ("cols" = Option<u16>, Query, minimum = 1, description = "The terminal's columns (with rows)"),
        ("rows" = Option<u16>, Query, minimum = 1, description = "The terminal's rows (with cols)"),
    ),
    responses((status = 101, description = "Switching to the WebSocket protocol")),
    security(("bearer" = [])))]
pub async fn console(
    svc: &Arc<Service>,
    id: &str,
    query: &str,
    ws: Option<Ws>,
) -> Result<warp::reply::Response, ApiError> {
    let (mut force, mut cols, mut rows) = (false, None, None);
    let mut seen = Vec::new();
    let q = pairs(query);
    for (k, v) in &q {
        once(&mut seen, k)?;
        match k.as_str() {
            "force" => force = flag("force", v)?,
            "cols" => cols = Some(v.as_str()),
            "rows" => rows = Some(v.as_str()),
            other => return Err(unknown(other)),
        }
    }
    let size = parse_size(cols, rows)?;
    svc.get(id)?;
    let ws = ws.ok_or_else(upgrade_required)?;
    must_run(svc, id, "the console")?;
    let lease = svc.take_console(id, force)?;
    let stream = svc
        .open_stream(id, StreamKind::Console(ConsoleOptions { size }))
        .await?;
    tracing::info!(instance = %id, force, "console opened");
    Ok(upgrade(ws, stream, Some(lease)))
}

/// Run a command interactively, on a WebSocket (protocol in `docs/api.md`, Streams):
/// the command's output as binary messages, then `{"type":"exit","exitCode":N}`. The
/// options are in the query, or, when the query has none, the first (text) message is
/// them as JSON: the run-to-completion body, `{"command": [..], "env", "workdir",
/// "user", "tty", "stdin", "cols", "rows"}` (`tty` and `stdin` default to true).
#[utoipa::path(get, path = "/api/v1/compute/instances/{id}/exec", operation_id = "execInstanceInteractive", tag = "streams",
    params(
        ("id" = String, Path, min_length = 1, description = "The instance's id"),
        ("command" = Option<Vec<String>>, Query, explode = true, description = "The program, then each argument: repeated (`command=sh&command=-c&command=ls`); without it, the first message holds the options as JSON"),
        ("env" = Option<Vec<String>>, Query, explode = true, description = "`NAME=value`, repeatable"),
        ("workdir" = Option<String>, Query, description = "Working directory"),
        ("user" = Option<String>, Query, description = "User"),
        ("tty" = Option<bool>, Query, description = "Run it on a terminal (default true)"),
        ("stdin" = Option<bool>, Query, description = "Feed it the client's input (default true)"),
        ("cols" = Option<u16>, Query, minimum = 1, description = "The terminal's columns (with rows)"),
        ("rows" = Option<u16>, Query, minimum = 1, description = "The terminal's rows (with cols)"),
    ),
    responses((status = 101, description = "Switching to the WebSocket protocol")),
    security(("bearer" = [])))]
pub async fn exec_interactive(
    svc: &Arc<Service>,
    id: &str,
    query: &str,
    ws: Option<Ws>,
) -> Result<warp::reply::Response, ApiError> {
    let mut options = ExecOptions {
        tty: true,
        stdin: true,
        ..Default::default()
    };
    let (mut env, mut cols, mut rows) = (Vec::new(), None, None);
    let mut seen = Vec::new();
    let q = pairs(query);
    for (k, v) in &q {
        match k.as_str() {
            "command" => options.command.push(v.clone()),
            "env" => env.push(v.clone()),
            "workdir" | "user" | "tty" | "stdin" | "cols" | "rows" => {
                once(&mut seen, k)?;
                match k.as_str() {
                    "workdir" => options.workdir = Some(v.clone()),
                    "user" => options.user = Some(v.clone()),
                    "tty" => options.tty = flag("tty", v)?,
                    "stdin" => options.stdin = flag("stdin", v)?,
                    "cols" => cols = Some(v.as_str()),
                    _ => rows = Some(v.as_str()),
                }
            }
            other => return Err(unknown(other)),
        }
    }
    options.env = env_list(Some(ExecEnv::List(env)))?;
    options.size = parse_size(cols, rows)?;
    if options.command.is_empty() && seen.is_empty() && options.env.is_empty() {
        // No options in the query: they come as the first message (below).
        svc.get(id)?;
        let ws = ws.ok_or_else(upgrade_required)?;
        must_run(svc, id, "exec")?;
        let (svc, id) = (Arc::clone(svc), id.to_owned());
        let reply = ws
            .max_message_size(1 << 20)
            .on_upgrade(move |socket| exec_first_message(svc, id, socket));
        return Ok(warp::reply::Reply::into_response(reply));
    }
    check_command(&options.command)?;
    svc.get(id)?;
    let ws = ws.ok_or_else(upgrade_required)?;
    must_run(svc, id, "exec")?;
    let stream = svc.open_stream(id, StreamKind::Exec(options)).await?;
    Ok(upgrade(ws, stream, None))
}

/// An interactive exec's options as its first WebSocket message: the body of the
/// run-to-completion exec (`stdin` and `tty` are flags here, both true by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InteractiveExec {
    command: Vec<String>,
    #[serde(default)]
    env: Option<ExecEnv>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default = "yes")]
    tty: bool,
    #[serde(default = "yes")]
    stdin: bool,
    #[serde(default)]
    cols: Option<u16>,
    #[serde(default)]
    rows: Option<u16>,
}

fn yes() -> bool {
    true
}

/// How long a client has to send an interactive exec's first message.
const FIRST_MESSAGE_WITHIN: Duration = Duration::from_secs(30);

async fn exec_first_message(svc: Arc<Service>, id: String, socket: WebSocket) {
    let (tx, mut rx) = socket.split();
    let first = tokio::time::timeout(FIRST_MESSAGE_WITHIN, rx.next()).await;
    let options = match first {
        Ok(Some(Ok(m))) if m.is_text() => parse_first(m.to_str().unwrap_or("")),
        Ok(Some(Ok(_))) => Err(ApiError::invalid(
            "the first message of an exec without a query is its JSON options, as text",
        )),
        Err(_) => Err(ApiError::invalid(format!(
            "no exec options within {} s: send them as the first message, or in the query",
            FIRST_MESSAGE_WITHIN.as_secs()
        ))),
        _ => return,
    };
    let opened = match options {
        Ok(o) => svc
            .open_stream(&id, StreamKind::Exec(o))
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match (opened, tx.reunite(rx)) {
        (Ok(stream), Ok(socket)) => pump(socket, stream, None).await,
        (Err(e), Ok(socket)) => {
            let (mut tx, _) = socket.split();
            let env = e.envelope();
            let _ = tx
                .send(control_text(
                    serde_json::json!({"type": "error", "error": env.error}),
                ))
                .await;
            let _ = tx
                .send(Message::close_with(1008u16, "bad exec options"))
                .await;
            let _ = tx.close().await;
        }
        (_, Err(_)) => {}
    }
}

fn parse_first(text: &str) -> Result<ExecOptions, ApiError> {
    let req: InteractiveExec = parse_body(text.as_bytes())?;
    check_command(&req.command)?;
    let size = match (req.cols, req.rows) {
        (Some(c), Some(r)) => parse_size(Some(&c.to_string()), Some(&r.to_string()))?,
        (None, None) => None,
        _ => return Err(ApiError::invalid("cols and rows go together")),
    };
    Ok(ExecOptions {
        command: req.command,
        env: env_list(req.env)?,
        workdir: req.workdir,
        user: req.user,
        tty: req.tty,
        stdin: req.stdin,
        size,
    })
}

fn upgrade(ws: Ws, stream: ByteStream, lease: Option<ConsoleLease>) -> warp::reply::Response {
    let reply = ws
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| pump(socket, stream, lease));
    warp::reply::Reply::into_response(reply)
}

/// A client's control message.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { cols: u16, rows: u16 },
    Eof,
}

fn control_text(value: serde_json::Value) -> Message {
    Message::text(value.to_string())
}

async fn pump(socket: WebSocket, stream: ByteStream, lease: Option<ConsoleLease>) {
    let (mut tx, mut rx) = socket.split();
    let kicked = async {
        match &lease {
            Some(l) => l.kicked().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(kicked);
    let mut input_open = true;
    loop {
        tokio::select! {
            out = stream.next() => match out {
                Some(Output::Stdout(d)) | Some(Output::Stderr(d)) => {
                    if tx.send(Message::binary(d)).await.is_err() {
                        break;
                    }
                }
                Some(Output::Exit(code)) => {
                    let _ = tx
                        .send(control_text(serde_json::json!({"type": "exit", "exitCode": code})))
                        .await;
                }
                Some(Output::Error(e)) => {
                    let env = ApiError::from_plugin("", e).envelope();
                    let _ = tx
                        .send(control_text(serde_json::json!({"type": "error", "error": env.error})))
                        .await;
                    let _ = tx.send(Message::close_with(1011u16, "the stream failed")).await;
                    break;
                }
                None => {
                    let _ = tx.send(Message::close_with(1000u16, "ended")).await;
                    break;
                }
            },
            msg = rx.next(), if input_open => match msg {
                Some(Ok(m)) if m.is_binary() => {
                    if !stream.send(Input::Data(m.into_bytes().to_vec())).await {
                        input_open = false;
                    }
                }
                Some(Ok(m)) if m.is_text() => {
                    let text = m.to_str().unwrap_or("").to_owned();
                    let input = match serde_json::from_str::<Control>(&text) {
                        Ok(Control::Resize { cols, rows }) => Input::Resize(TermSize { cols, rows }),
                        Ok(Control::Eof) => Input::CloseStdin,
                        Err(_) => Input::Data(text.into_bytes()),
                    };
                    if !stream.send(input).await {
                        input_open = false;
                    }
                }
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = &mut kicked => {
                let env = ApiError::new(Code::ConsoleInUse, "another client took the console over").envelope();
                let _ = tx
                    .send(control_text(serde_json::json!({"type": "error", "error": env.error})))
                    .await;
                let _ = tx.send(Message::close_with(4009u16, "taken over")).await;
                break;
            }
        }
    }
    let _ = tx.close().await;
    // The plugin's side closes with the stream; the console is free again once the
    // lease (borrowed by `kicked`) goes with this function.
    drop(stream);
}
