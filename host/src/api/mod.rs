//! The HTTP API: one warp filter that hands every request to our router, so that
//! auth, unknown routes, wrong methods, body limits and errors are answered the same
//! way everywhere, in the spec's envelope.

pub mod auth;
pub mod dto;
pub mod dto_events;
pub mod error;
pub mod handlers;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod sse;
pub mod streams;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use tracing::Instrument;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::Filter;

use crate::config::{Config, Role};
use crate::service::Service;
use auth::Auth;
use error::{ApiError, Code, RETRY_AFTER_SECS};
use handlers::Reply;
use routes::{ActionKind, Route};
use unicompute_plugin_api::sync::{read, write};

/// What every request handler shares.
pub struct AppState {
    /// The domain.
    pub service: Arc<Service>,
    /// The tokens, and the config they were read from: when a reload brings another
    /// config, the tokens are read again from it at the next request.
    auth: std::sync::RwLock<(Arc<Config>, Arc<Auth>)>,
    /// The OpenAPI document of the config in force, serialized once per config.
    openapi: std::sync::RwLock<(Arc<Config>, Arc<Vec<u8>>)>,
}

impl AppState {
    /// State over a service.
    pub fn new(service: Arc<Service>, auth: Auth) -> Self {
        let config = service.config();
        let openapi = Arc::new(openapi::served(&config));
        AppState {
            service,
            auth: std::sync::RwLock::new((Arc::clone(&config), Arc::new(auth))),
            openapi: std::sync::RwLock::new((config, openapi)),
        }
    }

    /// The OpenAPI document of the config in force (its backends, its limits).
    pub fn openapi(&self) -> Arc<Vec<u8>> {
        let config = self.service.config();
        {
            let cached = read(&self.openapi);
            if Arc::ptr_eq(&cached.0, &config) {
                return Arc::clone(&cached.1);
            }
        }
        let doc = Arc::new(openapi::served(&config));
        *write(&self.openapi) = (config, Arc::clone(&doc));
        doc
    }

    /// The tokens in force: those of the config in force.
    pub fn auth(&self) -> Arc<Auth> {
        let config = self.service.config();
        {
            let cached = read(&self.auth);
            if Arc::ptr_eq(&cached.0, &config) {
                return Arc::clone(&cached.1);
            }
        }
        let mut cached = write(&self.auth);
        if !Arc::ptr_eq(&cached.0, &config) {
            match Auth::from_config(&config.auth) {
                Ok(a) => cached.1 = Arc::new(a),
                Err(e) => tracing::warn!(error = %e, "tokens not reloaded"),
            }
            cached.0 = config;
        }
        Arc::clone(&cached.1)
    }

    /// Reloads the config and plugins (`POST /backends/reload`; SIGHUP calls the
    /// service directly). The tokens follow the new config.
    pub async fn reload(&self) -> Result<crate::service::ReloadReport, ApiError> {
        let report = self.service.reload().await?;
        let _ = self.auth();
        Ok(report)
    }
}

/// The warp filter serving the whole API (WebSocket handshakes come this way; see
/// [`Plain`] for every other request).
pub fn filter(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || Arc::clone(&state));
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    with_state
        .and(warp::method())
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(warp::ws().map(Some).or(warp::any().map(|| None)).unify())
        .then(
            |state: Arc<AppState>,
             method: Method,
             path: warp::path::FullPath,
             query: String,
             headers: HeaderMap,
             body,
             ws: Option<warp::filters::ws::Ws>| async move {
                respond(&state, &method, path.as_str(), &query, &headers, body, ws).await
            },
        )
        .or(warp::any().map(|| error_response(&ApiError::internal("request could not be read"))))
        .unify()
}

/// Every request that is not a WebSocket handshake, answered straight from hyper's
/// request by the same [`respond`] as [`filter`], without warp's filter chain (which
/// clones the headers and tries each extractor in turn: a tenth of a read's time).
#[derive(Clone)]
pub struct Plain(Arc<AppState>);

impl Plain {
    /// Over the same state as the filter.
    pub fn new(state: Arc<AppState>) -> Self {
        Plain(state)
    }

    /// Whether this path serves the request: anything but an `Upgrade` (which warp's
    /// WebSocket filter takes; without that header warp would not offer one either).
    pub fn takes<B>(request: &hyper::Request<B>) -> bool {
        !request.headers().contains_key(header::UPGRADE)
    }

    /// The answer.
    pub async fn call(
        self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> warp::reply::Response {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("");
        let body = http_body_util::BodyDataStream::new(body);
        respond(
            &self.0,
            &parts.method,
            path,
            query,
            &parts.headers,
            body,
            None,
        )
        .await
    }
}

/// Answers a request: the handler's reply or the error's envelope, with the span, the
/// metrics and the headers every answer gets.
async fn respond<S, B, E>(
    state: &AppState,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: S,
    ws: Option<warp::filters::ws::Ws>,
) -> warp::reply::Response
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: Buf + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let started = Instant::now();
    // Reads log nothing at info: their span (whose fields the log layer formats when
    // it is made) is made only when debug is on.
    let span = if method == Method::GET || method == Method::HEAD {
        tracing::debug_span!("request", method = %method, path = %path)
    } else {
        tracing::info_span!("request", method = %method, path = %path)
    };
    let request = Request {
        method,
        path,
        query,
        headers,
        ws,
    };
    let mut matched = None;
    let result = handle(state, request, body, &mut matched)
        .instrument(span.clone())
        .await;
    let mut response = match result {
        Ok(Answer::Reply(reply)) => reply_response(reply),
        Ok(Answer::Raw(r)) => r,
        Err(e) => {
            let mut r = error_response(&e);
            // An error may be answered before the body was read (401, 404, 413...):
            // the connection is not reused, so that the unread rest is never taken
            // for the next request and the client does not send its next request on
            // a closing socket.
            if declares_body(headers) {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    // A browser that offered its token as a subprotocol gets ours chosen (it fails a
    // handshake that chooses none of those it offered).
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && ws_protocols(headers).any(|p| p == WS_PROTOCOL)
    {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_PROTOCOL),
        );
    }
    let took = started.elapsed();
    crate::metrics::http_request(
        matched.unwrap_or("unmatched"),
        method.as_str(),
        response.status(),
        took,
    );
    let _enter = span.enter();
    tracing::debug!(
        status = response.status().as_u16(),
        micros = took.as_micros() as u64,
        "answered"
    );
    response
}

/// Whether the request says a body follows.
fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// The WebSocket subprotocol a browser offers with its token (a page cannot set
/// `Authorization` on a WebSocket): `unicompute.bearer.<the token's UTF-8 bytes in
/// hex>`, beside [`WS_PROTOCOL`], which the server then answers as the protocol.
const WS_BEARER_PREFIX: &str = "unicompute.bearer.";
/// The subprotocol the server selects when a client offered its token that way.
const WS_PROTOCOL: &str = "unicompute";

/// The offered WebSocket subprotocols.
fn ws_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The token a WebSocket handshake carries as a subprotocol, when it has no
/// `Authorization` header.
fn ws_bearer(headers: &HeaderMap) -> Option<String> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade || headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let mut offered = ws_protocols(headers).filter_map(|p| p.strip_prefix(WS_BEARER_PREFIX));
    let (Some(hexed), None) = (offered.next(), offered.next()) else {
        return None;
    };
    hex::decode(hexed)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The bearer token. Two `Authorization` headers are refused rather than resolved one
/// way or the other.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(first), None) = (all.next(), all.next()) else {
        return Err(match headers.contains_key(header::AUTHORIZATION) {
            true => ApiError::new(Code::Unauthorized, "more than one Authorization header"),
            false => ApiError::new(Code::Unauthorized, "missing bearer token"),
        });
    };
    parse_bearer(first).ok_or_else(|| ApiError::new(Code::Unauthorized, "missing bearer token"))
}

fn parse_bearer(v: &HeaderValue) -> Option<&str> {
    let v = v.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn read_body<S, B, E>(headers: &HeaderMap, body: S, limit: usize) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
        .detail("limit", limit)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    futures_util::pin_mut!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::invalid(format!("cannot read body: {e}")))?;
        if buf.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            let n = c.len();
            buf.extend_from_slice(c);
            chunk.advance(n);
        }
    }
    if !buf.is_empty() {
        check_json_content_type(headers)?;
    }
    Ok(buf.to_vec())
}

/// An image request: `application/octet-stream` with `?name=` is an upload, streamed;
/// anything else is a pull's JSON body (415 for other media types).
async fn image_request<S, B, E>(
    headers: &HeaderMap,
    query: &str,
    body: S,
    limit: usize,
) -> Result<handlers::ImageRequest, ApiError>
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: Buf + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() != Some("application/octet-stream") {
        let body = read_body(headers, body, limit).await?;
        if body.is_empty() {
            return Err(ApiError::invalid(
                "a JSON body {\"reference\": ...} (a pull), or application/octet-stream with ?name= (an upload)",
            ));
        }
        return Ok(handlers::ImageRequest::Pull(body));
    }
    let name = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| ApiError::invalid("an upload needs ?name= (the template's name)"))?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = body.map(|chunk| {
        chunk
            .map(|mut b| b.copy_to_bytes(b.remaining()))
            .map_err(|e| crate::service::BodyError::Broken(e.to_string()))
    });
    Ok(handlers::ImageRequest::Upload {
        name,
        declared,
        body: Box::pin(body),
    })
}

/// A body declared as something other than JSON is 415; no `Content-Type` at all is
/// taken as JSON (as curl's `-d` users and most scripts expect).
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let declared = v.to_str().unwrap_or("");
    let media = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"));
    if json {
        return Ok(());
    }
    Err(ApiError::new(
        Code::UnsupportedMediaType,
        "the request body must be JSON (Content-Type: application/json)",
    )
    .detail("contentType", declared))
}

/// A handler's answer: a JSON reply, or a response of its own (a stream).
enum Answer {
    Reply(Reply),
    Raw(warp::reply::Response),
}

/// A request as the router sees it (its body apart).
struct Request<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
    /// The WebSocket handshake, when the request asks for one.
    ws: Option<warp::filters::ws::Ws>,
}

/// Answers a request; `matched` gets the template of the route it matched (for the
/// metrics).
async fn handle<S, B, E>(
    state: &AppState,
    request: Request<'_>,
    body: S,
    matched: &mut Option<&'static str>,
) -> Result<Answer, ApiError>
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: Buf + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let Request {
        method,
        path,
        query,
        headers,
        ws,
    } = request;
    // Who first (401), then what (404, 405), then whether they may (403). The path is
    // decoded before anything looks at it: `/%61pi/...` is `/api/...` and needs a
    // token like it.
    if let Some(page) = crate::ui::serve(method, path) {
        *matched = Some("/ui");
        return page.map(Answer::Raw);
    }
    let path = routes::decode_path(path)?;
    // Routed first (its template names the request in the metrics, a 401 too), but
    // answered in this order: who (401), then what (404, 405).
    let routed = routes::route_endpoint(method.as_str(), &path);
    if let Ok((endpoint, _)) = &routed {
        *matched = Some(endpoint.path());
    }
    let config = state.service.config();
    let public_metrics = config.metrics.public;
    let ws_token = ws_bearer(headers);
    let who = if path.starts_with("/api/") || (path == "/metrics" && !public_metrics) {
        let token = match &ws_token {
            Some(t) => t.as_str(),
            None => bearer(headers)?,
        };
        let auth = state.auth();
        let Some((name, role)) = auth.check(token) else {
            return Err(ApiError::new(Code::Unauthorized, "invalid token"));
        };
        Some((name.to_owned(), role))
    } else {
        None
    };
    let (_, route) = routed?;
    // Every route but /healthz (and /metrics when public) needs a token, whatever the
    // path looked like.
    let open = match route {
        Route::Healthz => true,
        Route::Metrics => public_metrics,
        _ => false,
    };
    if !open {
        let Some((name, role)) = &who else {
            return Err(ApiError::new(Code::Unauthorized, "missing bearer token"));
        };
        let (name, role) = (name.as_str(), *role);
        let needed = auth::required_role(&route);
        if role < needed {
            let role_name = |r: Role| format!("{r:?}").to_lowercase();
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "token {name} has role {}, this needs {}",
                    role_name(role),
                    role_name(needed)
                ),
            )
            .detail("role", role_name(role))
            .detail("required", role_name(needed)));
        }
    }
    let arc = &state.service;
    let svc = &**arc;
    let limit = config.server.max_body_bytes;
    let mutation = |extra: &[&str]| handlers::mutation_query(query, headers, extra);
    let reply = match route {
        Route::Healthz => handlers::healthz(),
        Route::OpenApi => handlers::openapi(&state.openapi()),
        Route::Metrics => return Ok(Answer::Raw(handlers::metrics(svc))),
        Route::WhoAmI => handlers::whoami(who.as_ref().map(|(n, r)| (n.as_str(), *r))),
        Route::ListInstances => handlers::list(svc, query),
        Route::CreateInstance => {
            let (mode, _) = mutation(&[])?;
            let body = read_body(headers, body, limit).await?;
            handlers::create(arc, &body, mode).await
        }
        Route::GetInstance(id) => handlers::get(svc, id),
        Route::GetByName(name) => handlers::get_by_name(svc, name),
        Route::UpdateInstance(id) => {
            let (mode, _) = mutation(&[])?;
            let body = read_body(headers, body, limit).await?;
            handlers::update(arc, id, &body, mode).await
        }
        Route::DeleteInstance(id) => handlers::delete(arc, id, query, headers).await,
        Route::Action(id, kind) => {
            let (mode, _) = mutation(&[])?;
            let body = read_body(headers, body, limit).await?;
            let max_timeout = config.server.max_stop_timeout_secs;
            match kind {
                ActionKind::Start => handlers::start(arc, id, mode).await,
                ActionKind::Stop => handlers::stop(arc, id, &body, max_timeout, mode).await,
                ActionKind::Restart => handlers::restart(arc, id, &body, max_timeout, mode).await,
                ActionKind::Pause => handlers::pause(arc, id, mode).await,
                ActionKind::Unpause => handlers::unpause(arc, id, mode).await,
            }
        }
        Route::Usage(id) => handlers::usage(svc, id).await,
        Route::ClusterStatus => handlers::cluster_status(svc),
        Route::Backends => handlers::backends(svc),
        Route::BackendInfo(b) => handlers::backend_info(svc, b).await,
        Route::BackendImages(b) => handlers::backend_images(svc, b).await,
        Route::Reload => handlers::reload(state).await,
        Route::Events => return handlers::events(arc, query, headers).map(Answer::Raw),
        Route::ListOperations => handlers::list_operations(svc, query),
        Route::GetOperation(id) => handlers::get_operation(svc, id, query).await,
        Route::CancelOperation(id) => handlers::cancel_operation(svc, id).await,
        Route::AddImage(b) => {
            // `name` (an upload's template name, read by `image_request`) is a value,
            // not a flag: only the rest is the mutation's query.
            let rest = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "name"))
                .finish();
            let (mode, _) = handlers::mutation_query(&rest, headers, &[])?;
            let request = image_request(headers, query, body, limit).await?;
            handlers::add_image(arc, b, request, mode).await
        }
        Route::DeleteImage(b, name) => {
            let (mode, _) = mutation(&[])?;
            handlers::delete_image(arc, b, name, mode).await
        }
        Route::Logs(id) => {
            return streams::logs(arc, id, query, headers)
                .await
                .map(Answer::Raw)
        }
        Route::Exec(id) => {
            let body = read_body(headers, body, limit).await?;
            streams::exec(arc, id, &body).await
        }
        Route::Console(id) => return streams::console(arc, id, query, ws).await.map(Answer::Raw),
        Route::ExecInteractive(id) => {
            return streams::exec_interactive(arc, id, query, ws)
                .await
                .map(Answer::Raw)
        }
    };
    reply.map(Answer::Reply)
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

fn reply_response(reply: Reply) -> warp::reply::Response {
    let mut resp = match reply.body {
        Some(b) => {
            let mut r = warp::reply::Response::new(b.into());
            r.headers_mut().insert(header::CONTENT_TYPE, JSON);
            r
        }
        None => warp::reply::Response::new(Vec::new().into()),
    };
    *resp.status_mut() = reply.status;
    if let Some(loc) = reply.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

/// The response for an error: the envelope, the status of its code, and
/// `Retry-After`, `WWW-Authenticate` or `Allow` where they apply.
pub fn error_response(e: &ApiError) -> warp::reply::Response {
    let body = serde_json::to_vec(&e.envelope()).unwrap_or_default();
    let mut resp = warp::reply::Response::new(body.into());
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON);
    match e.status() {
        StatusCode::SERVICE_UNAVAILABLE => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        StatusCode::UNAUTHORIZED => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::UPGRADE_REQUIRED => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            if let Some(v) = e
                .details
                .get("allowed")
                .and_then(|a| a.as_str())
                .and_then(|a| HeaderValue::from_str(a).ok())
            {
                h.insert(header::ALLOW, v);
            }
        }
        _ => {}
    }
    if e.status().is_server_error() && e.status() != StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(code = %e.code, message = %e.message, "request failed");
    }
    resp
}
