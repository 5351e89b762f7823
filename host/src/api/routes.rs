//! The route table: a request's method and path to a [`Route`], or the 404 or 405
//! the client gets. One table, so the OpenAPI document and the router agree.

use crate::api::error::{ApiError, Code};

/// Lifecycle actions reachable as `PUT /instances/:id/<action>`.
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

/// A matched route with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`
    Healthz,
    /// `GET /api/v1/openapi.json`
    OpenApi,
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
}

fn not_allowed(method: &str, allowed: &str) -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        format!("method {method} is not allowed here"),
    )
    .detail("allowed", allowed)
}

/// Matches a request. Errors are `NOT_FOUND` (unknown path) or `METHOD_NOT_ALLOWED`
/// (known path, other method; `details.allowed` lists the methods).
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, ApiError> {
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let m = method;
    let r = match segs.as_slice() {
        ["healthz"] => match m {
            "GET" | "HEAD" => Route::Healthz,
            _ => return Err(not_allowed(m, "GET")),
        },
        ["api", "v1", "openapi.json"] => match m {
            "GET" | "HEAD" => Route::OpenApi,
            _ => return Err(not_allowed(m, "GET")),
        },
        ["api", "v1", "compute", "instances"] => match m {
            "GET" | "HEAD" => Route::ListInstances,
            "POST" => Route::CreateInstance,
            _ => return Err(not_allowed(m, "GET, POST")),
        },
        ["api", "v1", "compute", "instances", "name", name] if !name.is_empty() => match m {
            "GET" | "HEAD" => Route::GetByName(name),
            _ => return Err(not_allowed(m, "GET")),
        },
        ["api", "v1", "compute", "instances", id] if !id.is_empty() => match m {
            "GET" | "HEAD" => Route::GetInstance(id),
            "PUT" => Route::UpdateInstance(id),
            "DELETE" => Route::DeleteInstance(id),
            _ => return Err(not_allowed(m, "GET, PUT, DELETE")),
        },
        ["api", "v1", "compute", "instances", id, "usage"] if !id.is_empty() => match m {
            "GET" | "HEAD" => Route::Usage(id),
            _ => return Err(not_allowed(m, "GET")),
        },
        ["api", "v1", "compute", "instances", id, action] if !id.is_empty() => {
            let kind = match *action {
                "start" => ActionKind::Start,
                "stop" => ActionKind::Stop,
                "restart" => ActionKind::Restart,
                "pause" => ActionKind::Pause,
                "unpause" => ActionKind::Unpause,
                _ => return Err(not_found(path)),
            };
            match m {
                "PUT" => Route::Action(id, kind),
                _ => return Err(not_allowed(m, "PUT")),
            }
        }
        ["api", "v1", "compute", "cluster", "status"] => match m {
            "GET" | "HEAD" => Route::ClusterStatus,
            _ => return Err(not_allowed(m, "GET")),
        },
        ["api", "v1", "compute", "backends"] => match m {
            "GET" | "HEAD" => Route::Backends,
            _ => return Err(not_allowed(m, "GET")),
        },
        ["api", "v1", "compute", "backends", "reload"] => match m {
            "POST" => Route::Reload,
            _ => return Err(not_allowed(m, "POST")),
        },
        ["api", "v1", "compute", "backends", b, "info"] if !b.is_empty() => match m {
            "GET" | "HEAD" => Route::BackendInfo(b),
            _ => return Err(not_allowed(m, "GET")),
        },
        ["api", "v1", "compute", "backends", b, "images"] if !b.is_empty() => match m {
            "GET" | "HEAD" => Route::BackendImages(b),
            _ => return Err(not_allowed(m, "GET")),
        },
        _ => return Err(not_found(path)),
    };
    Ok(r)
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
        if decoded.contains('/') {
            return Err(not_found(path));
        }
        out.push(decoded.into_owned());
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
