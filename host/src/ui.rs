//! The dashboard at `/ui/`: three files embedded in the binary (`host/ui/`), served
//! without a token (they hold no data; every call they make needs one) and with a
//! Content-Security-Policy that lets the page load and call nothing but this server.

use warp::http::{header, HeaderValue, Method, StatusCode};

use crate::api::error::{ApiError, Code};

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The answer for a `/ui` path, or `None` for any other path.
pub fn serve(method: &Method, path: &str) -> Option<Result<warp::reply::Response, ApiError>> {
    if path != "/ui" && !path.starts_with("/ui/") {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(Err(ApiError::new(
            Code::MethodNotAllowed,
            format!("method {method} is not allowed here"),
        )
        .detail("allowed", "GET, HEAD")));
    }
    let (body, kind) = match path {
        "/ui" => {
            let mut r = warp::reply::Response::new(Vec::new().into());
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            return Some(Ok(r));
        }
        "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return Some(Err(crate::api::routes::not_found(path))),
    };
    let mut r = warp::reply::Response::new(body.into());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(Ok(r))
}
