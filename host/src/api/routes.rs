//! The route table: a request's method and path to a [`Route`], or the 404 or 405
//! the client gets. One table, so the OpenAPI document and the router agree.

use crate::api::error::{ApiError, Code};

/// Lifecycle actions reachable as `PUT /instances/:id/<action>`: one route inside the
/// server, five operations in the document (each [`Endpoint`] of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// `start`
    Start,
    /// `stop`
    Stop,
    /// `restart`
    Restart,
    /// `pause`
    Pause,
    /// `unpause`
    Unpause,
}

/// Every operation the server serves: its method, its path template and its
/// OpenAPI operation id. [`route`] matches requests against [`Endpoint::ALL`] and
/// nothing else, and the document lists the same operations (a test compares the
/// two), so a route cannot be served undocumented or documented unserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /healthz`
    Healthz,
    /// `GET /api/v1/openapi.json`
    OpenApi,
    /// `GET /metrics`
    Metrics,
    /// `GET /api/v1/whoami`
    WhoAmI,
    /// `GET /api/v1/compute/instances`
    ListInstances,
    /// `POST /api/v1/compute/instances`
    CreateInstance,
    /// `GET /api/v1/compute/instances/{id}`
    GetInstance,
    /// `PUT /api/v1/compute/instances/{id}`
    UpdateInstance,
    /// `DELETE /api/v1/compute/instances/{id}`
    DeleteInstance,
    /// `GET /api/v1/compute/instances/name/{name}`
    GetByName,
    /// `PUT /api/v1/compute/instances/{id}/start`
    Start,
    /// `PUT /api/v1/compute/instances/{id}/stop`
    Stop,
    /// `PUT /api/v1/compute/instances/{id}/restart`
    Restart,
    /// `PUT /api/v1/compute/instances/{id}/pause`
    Pause,
    /// `PUT /api/v1/compute/instances/{id}/unpause`
    Unpause,
    /// `GET /api/v1/compute/instances/{id}/usage`
    Usage,
    /// `GET /api/v1/compute/cluster/status`
    ClusterStatus,
    /// `GET /api/v1/compute/backends`
    Backends,
    /// `POST /api/v1/compute/backends/reload`
    Reload,
    /// `GET /api/v1/compute/backends/{backend}/info`
    BackendInfo,
    /// `GET /api/v1/compute/backends/{backend}/images`
    BackendImages,
    /// `GET /api/v1/compute/events`
    Events,
    /// `GET /api/v1/compute/operations`
    ListOperations,
    /// `GET /api/v1/compute/operations/{id}`
    GetOperation,
    /// `DELETE /api/v1/compute/operations/{id}`
    CancelOperation,
    /// `POST /api/v1/compute/backends/{backend}/images`
    AddImage,
    /// `DELETE /api/v1/compute/backends/{backend}/images/{name}`
    DeleteImage,
    /// `GET /api/v1/compute/instances/{id}/logs`
    Logs,
    /// `GET /api/v1/compute/instances/{id}/console` (a WebSocket)
    Console,
    /// `POST /api/v1/compute/instances/{id}/exec` (runs to completion)
    Exec,
    /// `GET /api/v1/compute/instances/{id}/exec` (a WebSocket: interactive)
    ExecInteractive,
}

impl Endpoint {
    /// Every endpoint, in the order the router tries them (a literal segment wins
    /// over a parameter at the first place they differ, whatever the order here).
    pub const ALL: [Endpoint; 31] = [
        Endpoint::Healthz,
        Endpoint::OpenApi,
        Endpoint::Metrics,
        Endpoint::WhoAmI,
        Endpoint::ListInstances,
        Endpoint::CreateInstance,
        Endpoint::GetInstance,
        Endpoint::UpdateInstance,
        Endpoint::DeleteInstance,
        Endpoint::GetByName,
        Endpoint::Start,
        Endpoint::Stop,
        Endpoint::Restart,
        Endpoint::Pause,
        Endpoint::Unpause,
        Endpoint::Usage,
        Endpoint::ClusterStatus,
        Endpoint::Backends,
        Endpoint::Reload,
        Endpoint::BackendInfo,
        Endpoint::BackendImages,
        Endpoint::Events,
        Endpoint::ListOperations,
        Endpoint::GetOperation,
        Endpoint::CancelOperation,
        Endpoint::AddImage,
        Endpoint::DeleteImage,
        Endpoint::Logs,
        Endpoint::Console,
        Endpoint::Exec,
        Endpoint::ExecInteractive,
    ];

    /// The method (a `GET` endpoint also answers `HEAD`).
    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Healthz
            | Endpoint::OpenApi
            | Endpoint::Metrics
            | Endpoint::WhoAmI
            | Endpoint::ListInstances
            | Endpoint::GetInstance
            | Endpoint::GetByName
            | Endpoint::Usage
            | Endpoint::ClusterStatus
            | Endpoint::Backends
            | Endpoint::BackendInfo
            | Endpoint::BackendImages
            | Endpoint::Events
            | Endpoint::ListOperations
            | Endpoint::GetOperation
            | Endpoint::Logs
            | Endpoint::Console
            | Endpoint::ExecInteractive => "GET",
            Endpoint::CreateInstance | Endpoint::Reload | Endpoint::AddImage | Endpoint::Exec => {
                "POST"
            }
            Endpoint::UpdateInstance
            | Endpoint::Start
            | Endpoint::Stop
            | Endpoint::Restart
            | Endpoint::Pause
            | Endpoint::Unpause => "PUT",
            Endpoint::DeleteInstance | Endpoint::CancelOperation | Endpoint::DeleteImage => {
                "DELETE"
            }
        }
    }

    /// The path template, as the document writes it (`{id}` is one segment).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Healthz => "/healthz",
            Endpoint::OpenApi => "/api/v1/openapi.json",
            Endpoint::Metrics => "/metrics",
            Endpoint::WhoAmI => "/api/v1/whoami",
            Endpoint::ListInstances | Endpoint::CreateInstance => "/api/v1/compute/instances",
            Endpoint::GetInstance | Endpoint::UpdateInstance | Endpoint::DeleteInstance => {
                "/api/v1/compute/instances/{id}"
            }
            Endpoint::GetByName => "/api/v1/compute/instances/name/{name}",
            Endpoint::Start => "/api/v1/compute/instances/{id}/start",
            Endpoint::Stop => "/api/v1/compute/instances/{id}/stop",
            Endpoint::Restart => "/api/v1/compute/instances/{id}/restart",
            Endpoint::Pause => "/api/v1/compute/instances/{id}/pause",
            Endpoint::Unpause => "/api/v1/compute/instances/{id}/unpause",
            Endpoint::Usage => "/api/v1/compute/instances/{id}/usage",
            Endpoint::ClusterStatus => "/api/v1/compute/cluster/status",
            Endpoint::Backends => "/api/v1/compute/backends",
            Endpoint::Reload => "/api/v1/compute/backends/reload",
            Endpoint::BackendInfo => "/api/v1/compute/backends/{backend}/info",
            Endpoint::BackendImages | Endpoint::AddImage => {
                "/api/v1/compute/backends/{backend}/images"
            }
            Endpoint::DeleteImage => "/api/v1/compute/backends/{backend}/images/{name}",
            Endpoint::Events => "/api/v1/compute/events",
            Endpoint::ListOperations => "/api/v1/compute/operations",
            Endpoint::GetOperation | Endpoint::CancelOperation => "/api/v1/compute/operations/{id}",
            Endpoint::Logs => "/api/v1/compute/instances/{id}/logs",
            Endpoint::Console => "/api/v1/compute/instances/{id}/console",
            Endpoint::Exec | Endpoint::ExecInteractive => "/api/v1/compute/instances/{id}/exec",
        }
    }

    /// The OpenAPI operation id (the name a generated client gives the call).
    pub fn operation_id(self) -> &'static str {
        match self {
            Endpoint::Healthz => "healthz",
            Endpoint::OpenApi => "getOpenApi",
            Endpoint::Metrics => "getMetrics",
            Endpoint::WhoAmI => "whoAmI",
            Endpoint::ListInstances => "listInstances",
            Endpoint::CreateInstance => "createInstance",
            Endpoint::GetInstance => "getInstance",
            Endpoint::UpdateInstance => "updateInstance",
            Endpoint::DeleteInstance => "deleteInstance",
            Endpoint::GetByName => "getInstanceByName",
            Endpoint::Start => "startInstance",
            Endpoint::Stop => "stopInstance",
            Endpoint::Restart => "restartInstance",
            Endpoint::Pause => "pauseInstance",
            Endpoint::Unpause => "unpauseInstance",
            Endpoint::Usage => "getInstanceUsage",
            Endpoint::ClusterStatus => "getClusterStatus",
            Endpoint::Backends => "listBackends",
            Endpoint::Reload => "reloadBackends",
            Endpoint::BackendInfo => "getBackendInfo",
            Endpoint::BackendImages => "listBackendImages",
            Endpoint::Events => "streamEvents",
            Endpoint::ListOperations => "listOperations",
            Endpoint::GetOperation => "getOperation",
            Endpoint::CancelOperation => "cancelOperation",
            Endpoint::AddImage => "addBackendImage",
            Endpoint::DeleteImage => "deleteBackendImage",
            Endpoint::Logs => "getInstanceLogs",
            Endpoint::Console => "openInstanceConsole",
            Endpoint::Exec => "execInstance",
            Endpoint::ExecInteractive => "execInstanceInteractive",
        }
    }

    /// Whether the server reads a request body for it (and so may answer 413, 415).
    pub fn reads_body(self) -> bool {
        match self {
            Endpoint::CreateInstance
            | Endpoint::UpdateInstance
            | Endpoint::Start
            | Endpoint::Stop
            | Endpoint::Restart
            | Endpoint::Pause
            | Endpoint::Unpause
            | Endpoint::AddImage
            | Endpoint::Exec => true,
            Endpoint::Logs | Endpoint::Console | Endpoint::ExecInteractive => false,
            Endpoint::Healthz
            | Endpoint::OpenApi
            | Endpoint::Metrics
            | Endpoint::WhoAmI
            | Endpoint::ListInstances
            | Endpoint::GetInstance
            | Endpoint::DeleteInstance
            | Endpoint::DeleteImage
            | Endpoint::GetByName
            | Endpoint::Usage
            | Endpoint::ClusterStatus
            | Endpoint::Backends
            | Endpoint::Reload
            | Endpoint::BackendInfo
            | Endpoint::BackendImages
            | Endpoint::Events
            | Endpoint::ListOperations
            | Endpoint::GetOperation
            | Endpoint::CancelOperation => false,
        }
    }

    /// Whether it takes `?async=true` (a mutating call that may become an operation).
    pub fn can_be_async(self) -> bool {
        match self {
            Endpoint::CreateInstance
            | Endpoint::UpdateInstance
            | Endpoint::DeleteInstance
            | Endpoint::Start
            | Endpoint::Stop
            | Endpoint::Restart
            | Endpoint::Pause
            | Endpoint::Unpause
            | Endpoint::AddImage
            | Endpoint::DeleteImage => true,
            Endpoint::Logs | Endpoint::Console | Endpoint::Exec | Endpoint::ExecInteractive => {
                false
            }
            Endpoint::Healthz
            | Endpoint::OpenApi
            | Endpoint::Metrics
            | Endpoint::WhoAmI
            | Endpoint::ListInstances
            | Endpoint::GetInstance
            | Endpoint::GetByName
            | Endpoint::Usage
            | Endpoint::ClusterStatus
            | Endpoint::Backends
            | Endpoint::Reload
            | Endpoint::BackendInfo
            | Endpoint::BackendImages
            | Endpoint::Events
            | Endpoint::ListOperations
            | Endpoint::GetOperation
            | Endpoint::CancelOperation => false,
        }
    }

    /// The route of this endpoint with its path parameters (in template order).
    fn route<'a>(self, params: &[&'a str]) -> Route<'a> {
        let p = |i: usize| params.get(i).copied().unwrap_or("");
        match self {
            Endpoint::Healthz => Route::Healthz,
            Endpoint::OpenApi => Route::OpenApi,
            Endpoint::Metrics => Route::Metrics,
            Endpoint::WhoAmI => Route::WhoAmI,
            Endpoint::ListInstances => Route::ListInstances,
            Endpoint::CreateInstance => Route::CreateInstance,
            Endpoint::GetInstance => Route::GetInstance(p(0)),
            Endpoint::UpdateInstance => Route::UpdateInstance(p(0)),
            Endpoint::DeleteInstance => Route::DeleteInstance(p(0)),
            Endpoint::GetByName => Route::GetByName(p(0)),
            Endpoint::Start => Route::Action(p(0), ActionKind::Start),
            Endpoint::Stop => Route::Action(p(0), ActionKind::Stop),
            Endpoint::Restart => Route::Action(p(0), ActionKind::Restart),
            Endpoint::Pause => Route::Action(p(0), ActionKind::Pause),
            Endpoint::Unpause => Route::Action(p(0), ActionKind::Unpause),
            Endpoint::Usage => Route::Usage(p(0)),
            Endpoint::ClusterStatus => Route::ClusterStatus,
            Endpoint::Backends => Route::Backends,
            Endpoint::Reload => Route::Reload,
            Endpoint::BackendInfo => Route::BackendInfo(p(0)),
            Endpoint::BackendImages => Route::BackendImages(p(0)),
            Endpoint::Events => Route::Events,
            Endpoint::ListOperations => Route::ListOperations,
            Endpoint::GetOperation => Route::GetOperation(p(0)),
            Endpoint::CancelOperation => Route::CancelOperation(p(0)),
            Endpoint::AddImage => Route::AddImage(p(0)),
            Endpoint::DeleteImage => Route::DeleteImage(p(0), p(1)),
            Endpoint::Logs => Route::Logs(p(0)),
            Endpoint::Console => Route::Console(p(0)),
            Endpoint::Exec => Route::Exec(p(0)),
            Endpoint::ExecInteractive => Route::ExecInteractive(p(0)),
        }
    }
}

/// A matched route with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`
    Healthz,
    /// `GET /api/v1/openapi.json`
    OpenApi,
    /// `GET /metrics`
    Metrics,
    /// `GET /api/v1/whoami`
    WhoAmI,
    /// `GET /api/v1/compute/instances`
    ListInstances,
    /// `POST /api/v1/compute/instances`
    CreateInstance,
    /// `GET /api/v1/compute/instances/:id`
    GetInstance(&'a str),
    /// `PUT /api/v1/compute/instances/:id`
    UpdateInstance(&'a str),
    /// `DELETE /api/v1/compute/instances/:id`
    DeleteInstance(&'a str),
    /// `GET /api/v1/compute/instances/name/:name`
    GetByName(&'a str),
    /// `PUT /api/v1/compute/instances/:id/<action>`
    Action(&'a str, ActionKind),
    /// `GET /api/v1/compute/instances/:id/usage`
    Usage(&'a str),
    /// `GET /api/v1/compute/cluster/status`
    ClusterStatus,
    /// `GET /api/v1/compute/backends`
    Backends,
    /// `GET /api/v1/compute/backends/:backend/info`
    BackendInfo(&'a str),
    /// `POST /api/v1/compute/backends/reload`
    Reload,
    /// `GET /api/v1/compute/backends/:backend/images`
    BackendImages(&'a str),
    /// `GET /api/v1/compute/events`
    Events,
    /// `GET /api/v1/compute/operations`
    ListOperations,
    /// `GET /api/v1/compute/operations/:id`
    GetOperation(&'a str),
    /// `DELETE /api/v1/compute/operations/:id`
    CancelOperation(&'a str),
    /// `POST /api/v1/compute/backends/:backend/images`
    AddImage(&'a str),
    /// `DELETE /api/v1/compute/backends/:backend/images/:name` (the name may hold
    /// `/`, sent as `%2F`)
    DeleteImage(&'a str, &'a str),
    /// `GET /api/v1/compute/instances/:id/logs`
    Logs(&'a str),
    /// `GET /api/v1/compute/instances/:id/console`
    Console(&'a str),
    /// `POST /api/v1/compute/instances/:id/exec`
    Exec(&'a str),
    /// `GET /api/v1/compute/instances/:id/exec`
    ExecInteractive(&'a str),
}

fn not_allowed(method: &str, allowed: &str) -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        format!("method {method} is not allowed here"),
    )
    .detail("allowed", allowed)
}

/// Whether a path's segments match a template's; if so, which segments are literal,
/// as bits from the most significant (segment 0) down, so that comparing two masks
/// compares specificity (a literal beats a parameter at the first place they differ).
/// Allocates nothing: it runs for every template on every request.
fn matches(template: &[&str], segs: &[&str]) -> Option<u32> {
    if template.len() != segs.len() {
        return None;
    }
    let mut mask = 0u32;
    for (i, (t, s)) in template.iter().zip(segs).enumerate() {
        if t.starts_with('{') {
            if s.is_empty() {
                return None;
            }
        } else if t == s {
            mask |= 1 << (31 - i);
        } else {
            return None;
        }
    }
    Some(mask)
}

/// Each path template once, split into its segments once.
fn templates() -> &'static [(&'static str, Vec<&'static str>)] {
    static TEMPLATES: std::sync::OnceLock<Vec<(&'static str, Vec<&'static str>)>> =
        std::sync::OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for e in Endpoint::ALL {
            if !out.iter().any(|(t, _)| *t == e.path()) {
                let segs = e.path().trim_start_matches('/').split('/').collect();
                out.push((e.path(), segs));
            }
        }
        out
    })
}

/// The most segments a path of any template has (more is a 404 at once).
const MAX_SEGMENTS: usize = 16;

/// Matches a request against [`Endpoint::ALL`]. Of the templates a path matches, the
/// most specific wins (a literal segment beats a parameter at the first place they
/// differ: `/instances/name/x` is a get by name, not an action `x` on instance
/// `name`); its methods are the path's. Errors are `NOT_FOUND` (unknown path) or
/// `METHOD_NOT_ALLOWED` (known path, other method; `details.allowed` lists the
/// methods). `HEAD` is answered wherever `GET` is.
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, ApiError> {
    route_endpoint(method, path).map(|(_, r)| r)
}

/// [`route`], with the endpoint matched (its path template names the route in the
/// metrics).
pub fn route_endpoint<'a>(method: &str, path: &'a str) -> Result<(Endpoint, Route<'a>), ApiError> {
    let mut buf = [""; MAX_SEGMENTS];
    let mut count = 0;
    for seg in path.strip_prefix('/').unwrap_or(path).split('/') {
        if count == MAX_SEGMENTS {
            return Err(not_found(path));
        }
        buf[count] = seg;
        count += 1;
    }
    let segs = &buf[..count];
    let mut best: Option<(u32, &'static str)> = None;
    for (template, tsegs) in templates() {
        if let Some(literal) = matches(tsegs, segs) {
            if best.is_none_or(|(b, _)| literal > b) {
                best = Some((literal, template));
            }
        }
    }
    let Some((literal, template)) = best else {
        return Err(not_found(path));
    };
    let on_path = Endpoint::ALL.into_iter().filter(|e| e.path() == template);
    let wanted = if method == "HEAD" { "GET" } else { method };
    if let Some(e) = on_path.clone().find(|e| e.method() == wanted) {
        // The parameters are the segments that are not literal, in order.
        let mut params = [""; MAX_SEGMENTS];
        let mut n = 0;
        for (i, s) in segs.iter().enumerate() {
            if literal & (1 << (31 - i)) == 0 {
                params[n] = s;
                n += 1;
            }
        }
        let params = &params[..n];
        // No id, name or backend holds a `/` (an image name aside).
        let slash_ok = |i: usize| e == Endpoint::DeleteImage && i == 1;
        if params
            .iter()
            .enumerate()
            .any(|(i, p)| p.contains("%2F") && !slash_ok(i))
        {
            return Err(not_found(path));
        }
        return Ok((e, e.route(params)));
    }
    let allowed: Vec<&str> = on_path.map(Endpoint::method).collect();
    Err(not_allowed(method, &allowed.join(", ")))
}

/// The path with each segment percent-decoded (`/instances/name/web%31` is
/// `/instances/name/web1`), or 404 when a segment decodes to a `/` or to bytes that
/// are not UTF-8: no id, name or backend holds either.
pub fn decode_path(path: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    if !path.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let mut out = Vec::new();
    for seg in path.split('/') {
        let decoded = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| not_found(path))?;
        // A `/` inside a segment stays `%2F`: only an image name may hold one
        // (`library/nginx:alpine`), and [`route`] refuses it anywhere else.
        out.push(decoded.replace('/', "%2F"));
    }
    Ok(std::borrow::Cow::Owned(out.join("/")))
}

/// 404 `NOT_FOUND` for an unknown route.
pub fn not_found(path: &str) -> ApiError {
    ApiError::new(Code::NotFound, "no such route").detail("path", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match() {
        let p = "/api/v1/compute/instances";
        assert_eq!(route("GET", p).unwrap(), Route::ListInstances);
        assert_eq!(route("POST", p).unwrap(), Route::CreateInstance);
        assert_eq!(
            route("GET", &format!("{p}/i-1")).unwrap(),
            Route::GetInstance("i-1")
        );
        assert_eq!(
            route("PUT", &format!("{p}/i-1")).unwrap(),
            Route::UpdateInstance("i-1")
        );
        assert_eq!(
            route("DELETE", &format!("{p}/i-1")).unwrap(),
            Route::DeleteInstance("i-1")
        );
        assert_eq!(
            route("GET", &format!("{p}/name/web")).unwrap(),
            Route::GetByName("web")
        );
        assert_eq!(
            route("PUT", &format!("{p}/i-1/stop")).unwrap(),
            Route::Action("i-1", ActionKind::Stop)
        );
        assert_eq!(
            route("GET", &format!("{p}/i-1/usage")).unwrap(),
            Route::Usage("i-1")
        );
        assert_eq!(
            route("GET", "/api/v1/compute/backends/kvm/info").unwrap(),
            Route::BackendInfo("kvm")
        );
        assert_eq!(route("GET", "/healthz").unwrap(), Route::Healthz);
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(route("GET", "/nope").unwrap_err().code, "NOT_FOUND");
        assert_eq!(
            route("GET", "/api/v1/compute/instances/").unwrap_err().code,
            "NOT_FOUND"
        );
        assert_eq!(
            route("PUT", "/api/v1/compute/instances/x/explode")
                .unwrap_err()
                .code,
            "NOT_FOUND"
        );
        let e = route("PATCH", "/api/v1/compute/instances").unwrap_err();
        assert_eq!(e.code, "METHOD_NOT_ALLOWED");
        assert_eq!(e.details["allowed"], "GET, POST");
        assert_eq!(
            route("GET", "/api/v1/compute/instances/x/stop")
                .unwrap_err()
                .code,
            "METHOD_NOT_ALLOWED"
        );
    }
}
