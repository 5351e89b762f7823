//! One function per route: parse, call the service, shape the answer. Nothing here
//! knows a backend.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use unicompute_plugin_api::{Instance, InstanceState, UpdateRequest, Usage};
use warp::http::StatusCode;

use crate::api::dto::{
    validate_labels, BackendInfo, BackendList, BackendSummaryDto, ClusterBackend, ClusterResources,
    ClusterStatus, CreateInstanceRequest, HealthCheck, ImageList, InstanceList, PluginInfo,
    ReloadAnswer, StopRequest, UpdateInstanceRequest, UsedTotal,
};
use crate::api::dto_events::OperationDto;
use crate::api::error::ApiError;
use crate::inventory::ListFilter;
use crate::plugins::registry::BackendStatus;
use crate::service::{
    new_instance_id, Action, Canceller, NewInstance, OpKind, OpResult, Operation, Service, Work,
};

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// JSON body, if any.
    pub body: Option<Bytes>,
    /// `Location` header, if any.
    pub location: Option<String>,
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
    Ok(Reply {
        status,
        body: Some(body.into()),
        location: None,
    })
}

/// 200 with JSON made beforehand (an instance's, cached by the inventory); empty
/// bytes mean it could not be encoded.
fn cached_json(body: Bytes) -> Result<Reply, ApiError> {
    if body.is_empty() {
        return Err(ApiError::internal("cannot encode the answer"));
    }
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(body),
        location: None,
    })
}

/// Parses a JSON body; malformed JSON and wrong types are 400 with serde's message.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let kind = if e.is_syntax() || e.is_eof() {
            "malformed JSON"
        } else {
            "invalid request body"
        };
        ApiError::invalid(format!("{kind}: {e}"))
    })
}

fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// How a mutating call is answered: when done (as always), or at once with an
/// operation (`?async=true`, or `Prefer: respond-async`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer when done.
    Sync,
    /// Answer 202 with the operation at once.
    Async,
}

pub(crate) fn flag(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid(format!("{name} must be true or false")).detail(name, v)),
    }
}

/// The query of a mutating call: `async`, and the `extra` flags it takes (`force`
/// for a delete). Anything else is 400.
pub fn mutation_query(
    query: &str,
    headers: &warp::http::HeaderMap,
    extra: &[&str],
) -> Result<(Mode, Vec<(String, bool)>), ApiError> {
    let prefer_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    let mut mode = if prefer_async {
        Mode::Async
    } else {
        Mode::Sync
    };
    let mut flags = Vec::new();
    for (k, v) in query_pairs(query) {
        if k == "async" {
            mode = if flag("async", &v)? {
                Mode::Async
            } else {
                Mode::Sync
            };
        } else if extra.contains(&k.as_str()) {
            let on = flag(&k, &v)?;
            flags.push((k, on));
        } else {
            return Err(ApiError::invalid(format!("unknown query parameter {k}"))
                .detail("parameter", k.as_str()));
        }
    }
    Ok((mode, flags))
}

/// 202 with the operation and its `Location`.
pub fn accepted(op: &Operation) -> Result<Reply, ApiError> {
    let mut reply = json(StatusCode::ACCEPTED, &OperationDto::from(op))?;
    reply.location = Some(format!("/api/v1/compute/operations/{}", op.id));
    Ok(reply)
}

/// Parses the list query: `page`, `pageSize`, `backend`, `state`, `label=k=v`.
pub fn parse_list_query(query: &str) -> Result<(ListFilter, usize, usize), ApiError> {
    let mut filter = ListFilter::default();
    let (mut page, mut page_size) = (1usize, 50usize);
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in query_pairs(query) {
        // Only `label` may repeat (all must match); a second page or state is a
        // contradiction, not a choice to make for the client.
        if k != "label" {
            if seen.contains(&k) {
                return Err(
                    ApiError::invalid(format!("query parameter {k} is given twice"))
                        .detail("parameter", k.as_str()),
                );
            }
            seen.push(k.clone());
        }
        match k.as_str() {
            "page" => {
                page = v.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
                    ApiError::invalid("page must be an integer >= 1").detail("page", v.as_str())
                })?
            }
            "pageSize" => {
                page_size = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .ok_or_else(|| {
                        ApiError::invalid("pageSize must be an integer from 1 to 100")
                            .detail("pageSize", v.as_str())
                    })?
            }
            "backend" => filter.backend = Some(v),
            "state" => {
                filter.state = Some(InstanceState::parse(&v).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "state must be one of {}",
                        InstanceState::ALL.map(|s| s.as_str()).join(", ")
                    ))
                    .detail("state", v.as_str())
                })?)
            }
            "label" => {
                let (lk, lv) = v.split_once('=').ok_or_else(|| {
                    ApiError::invalid("label must be key=value").detail("label", v.as_str())
                })?;
                filter.labels.push((lk.to_owned(), lv.to_owned()));
            }
            other => {
                return Err(
                    ApiError::invalid(format!("unknown query parameter {other}"))
                        .detail("parameter", other),
                )
            }
        }
    }
    Ok((filter, page, page_size))
}

/// List the health of the server.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "server", security(()),
    responses((status = 200, description = "The server is up", body = inline(Object), example = json!({"status": "ok"}))))]
pub fn healthz() -> Result<Reply, ApiError> {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Prometheus metrics.
///
/// The Prometheus text format (0.0.4): HTTP requests and their latency by route
/// template, plugin calls by backend and operation (latency, errors by code), plugin
/// loads and reloads, backends up, instances by backend and state, event
/// subscribers, operations by status, and the last usage sample of each instance
/// whose usage was read in the last 10 minutes. Answered from memory: a scrape never
/// waits on a backend. Needs a viewer's token unless `metrics.public` is set.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "server",
    responses((status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String,
        example = json!("# HELP unicompute_instances Instances known, by backend and state.\n# TYPE unicompute_instances gauge\nunicompute_instances{backend=\"docker\",state=\"running\"} 3\n"))),
    security(("bearer" = [])))]
pub fn metrics(service: &Service) -> warp::reply::Response {
    let mut r = warp::reply::Response::new(crate::metrics::render(service).into());
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

/// Who the token is.
///
/// The token's name and role (`viewer`, `operator` or `admin`): a client (the
/// dashboard) shows only what the role may do.
#[utoipa::path(get, path = "/api/v1/whoami", operation_id = "whoAmI", tag = "server",
    responses((status = 200, description = "The token's name and role", body = inline(Object),
        example = json!({"name": "admin", "role": "admin"}))),
    security(("bearer" = [])))]
pub fn whoami(who: Option<(&str, crate::config::Role)>) -> Result<Reply, ApiError> {
    let (name, role) =
        who.ok_or_else(|| ApiError::internal("no token on an authenticated route"))?;
    json(
        StatusCode::OK,
        &serde_json::json!({"name": name, "role": format!("{role:?}").to_lowercase()}),
    )
}

/// List compute instances.
#[utoipa::path(get, path = "/api/v1/compute/instances",
    operation_id = "listInstances", tag = "instances",
    params(
        ("backend" = Option<String>, Query, description = "Only this backend (a configured backend's name)"),
        ("state" = Option<InstanceState>, Query, description = "Only this state"),
        ("label" = Option<Vec<String>>, Query, explode = true, description = "`key=value`; repeatable, all must match"),
        ("page" = Option<u64>, Query, minimum = 1, description = "From 1 (default 1)"),
        ("pageSize" = Option<u64>, Query, minimum = 1, maximum = 100, description = "1 to 100 (default 50)"),
    ),
    responses((status = 200, description = "A page of instances, in creation order", body = InstanceList)),
    security(("bearer" = [])))]
pub fn list(svc: &Service, query: &str) -> Result<Reply, ApiError> {
    let (filter, page, page_size) = parse_list_query(query)?;
    let (items, total) = svc.list_json(&filter, page, page_size)?;
    cached_json(list_body(&items, total, page, page_size))
}

/// The JSON of [`InstanceList`], made from each instance's cached JSON: the same
/// bytes `serde_json` writes for it (a test holds them equal). Empty if an instance's
/// JSON is (it could not be encoded).
fn list_body(items: &[Bytes], total: usize, page: usize, page_size: usize) -> Bytes {
    if items.iter().any(Bytes::is_empty) {
        return Bytes::new();
    }
    let len: usize = items.iter().map(|b| b.len() + 1).sum();
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"{\"instances\":[");
    for (i, b) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b);
    }
    // Plain numbers: written as serde_json writes a usize.
    use std::io::Write as _;
    let _ = write!(
        out,
        "],\"total\":{total},\"page\":{page},\"pageSize\":{page_size}}}"
    );
    out.into()
}

/// Create a compute instance (not started unless `"start": true`).
#[utoipa::path(post, path = "/api/v1/compute/instances", request_body = CreateInstanceRequest,
    operation_id = "createInstance", tag = "instances",
    responses((status = 201, description = "Created (stopped unless `start` was true)", body = Instance,
        headers(("Location" = String, description = "The instance's path")))),
    security(("bearer" = [])))]
pub async fn create(svc: &Arc<Service>, body: &[u8], mode: Mode) -> Result<Reply, ApiError> {
    let req: CreateInstanceRequest = parse_body(body)?;
    let resources = req.resources.validate().map_err(ApiError::invalid)?;
    validate_labels(&req.metadata.labels).map_err(ApiError::invalid)?;
    let new = NewInstance {
        name: req.name,
        backend: req.backend,
        config: req.config,
        resources,
        labels: req.metadata.labels,
        start: req.start,
    };
    if mode == Mode::Async {
        // What can be refused at once is refused at once; the rest is the operation's.
        if !crate::service::valid_name(&new.name) {
            return Err(crate::service::Error::InvalidName(new.name).into());
        }
        let (_, plugin) = svc.backend(&new.backend)?;
        if svc.inventory.get_by_name(&new.name).is_some() {
            return Err(crate::service::Error::NameTaken(new.name).into());
        }
        let (id, at) = new_instance_id();
        let backend = new.backend.clone();
        let s = Arc::clone(svc);
        let work: Work =
            Box::pin(async move { s.create_as(new, id, at).await.map(OpResult::Instance) });
        // A long part of a create (a KVM raw disk copy) can be stopped by its backend.
        let op = svc.spawn_operation(
            OpKind::Create,
            Some(backend),
            None,
            Service::backend_canceller(plugin),
            work,
        );
        return accepted(&op);
    }
    let inst = svc.create(new).await?;
    let mut reply = json(StatusCode::CREATED, &*inst)?;
    reply.location = Some(format!("/api/v1/compute/instances/{}", inst.id));
    Ok(reply)
}

/// Get a compute instance.
#[utoipa::path(get, path = "/api/v1/compute/instances/{id}", params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    operation_id = "getInstance", tag = "instances",
    responses((status = 200, description = "The instance", body = Instance)),
    security(("bearer" = [])))]
pub fn get(svc: &Service, id: &str) -> Result<Reply, ApiError> {
    cached_json(svc.get_json(id)?)
}

/// Get a compute instance by name.
#[utoipa::path(get, path = "/api/v1/compute/instances/name/{name}", params(("name" = String, Path, min_length = 1, description = "The instance's name")),
    operation_id = "getInstanceByName", tag = "instances",
    responses((status = 200, description = "The instance", body = Instance)),
    security(("bearer" = [])))]
pub fn get_by_name(svc: &Service, name: &str) -> Result<Reply, ApiError> {
    cached_json(svc.get_json_by_name(name)?)
}

/// Update resources (live where the backend can; the rest in `pendingResources`).
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}", params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    request_body = UpdateInstanceRequest, operation_id = "updateInstance", tag = "instances",
    responses((status = 200, description = "The instance as updated", body = Instance)),
    security(("bearer" = [])))]
pub async fn update(
    svc: &Arc<Service>,
    id: &str,
    body: &[u8],
    mode: Mode,
) -> Result<Reply, ApiError> {
    let req: UpdateInstanceRequest = parse_body(body)?;
    let resources = req.resources.validate().map_err(ApiError::invalid)?;
    let labels = req.metadata.and_then(|m| m.labels);
    if let Some(l) = &labels {
        validate_labels(l).map_err(ApiError::invalid)?;
    }
    if resources.is_empty() && labels.is_none() {
        return Err(ApiError::invalid(
            "nothing to update: give resources or metadata.labels",
        ));
    }
    let request = UpdateRequest { resources, labels };
    if mode == Mode::Async {
        let known = svc.get(id)?;
        let (s, owned) = (Arc::clone(svc), id.to_owned());
        let work: Work =
            Box::pin(async move { s.update(&owned, request).await.map(OpResult::Instance) });
        let op = svc.spawn_operation(
            OpKind::Update,
            Some(known.backend.clone()),
            Some(id.to_owned()),
            Canceller::None,
            work,
        );
        return accepted(&op);
    }
    let inst = svc.update(id, request).await?;
    json(StatusCode::OK, &*inst)
}

/// Delete an instance; a running or paused one needs `force=true`.
#[utoipa::path(delete, path = "/api/v1/compute/instances/{id}",
    params(("id" = String, Path, min_length = 1, description = "The instance's id"),
        ("force" = Option<bool>, Query, description = "Delete a running, paused or restarting instance too (default false)")),
    operation_id = "deleteInstance", tag = "instances",
    responses((status = 204, description = "Deleted, with everything it had")),
    security(("bearer" = [])))]
pub async fn delete(
    svc: &Arc<Service>,
    id: &str,
    query: &str,
    headers: &warp::http::HeaderMap,
) -> Result<Reply, ApiError> {
    let (mode, flags) = mutation_query(query, headers, &["force"])?;
    let force = flags
        .iter()
        .rev()
        .find(|(k, _)| k == "force")
        .is_some_and(|(_, v)| *v);
    if mode == Mode::Async {
        let known = svc.get(id)?;
        let (s, owned) = (Arc::clone(svc), id.to_owned());
        let work: Work =
            Box::pin(async move { s.delete(&owned, force).await.map(|()| OpResult::Nothing) });
        let op = svc.spawn_operation(
            OpKind::Delete,
            Some(known.backend.clone()),
            Some(id.to_owned()),
            Canceller::None,
            work,
        );
        return accepted(&op);
    }
    svc.delete(id, force).await?;
    Ok(Reply {
        status: StatusCode::NO_CONTENT,
        body: None,
        location: None,
    })
}

/// Starts an instance; one that runs already is answered as it is.
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/start",
    params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    operation_id = "startInstance", tag = "lifecycle",
    responses((status = 200, description = "The instance after the start", body = Instance)),
    security(("bearer" = [])))]
pub async fn start(svc: &Arc<Service>, id: &str, mode: Mode) -> Result<Reply, ApiError> {
    act(svc, id, Action::Start, mode).await
}

/// Stops an instance: graceful first (SIGTERM, ACPI), hard at the timeout; `force`
/// is hard at once. One that is stopped already is answered as it is.
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/stop",
    params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    request_body(content = Option<StopRequest>, description = "Optional"),
    operation_id = "stopInstance", tag = "lifecycle",
    responses((status = 200, description = "The instance after the stop", body = Instance)),
    security(("bearer" = [])))]
pub async fn stop(
    svc: &Arc<Service>,
    id: &str,
    body: &[u8],
    max_timeout: u64,
    mode: Mode,
) -> Result<Reply, ApiError> {
    let options = stop_options(&stop_request(body, max_timeout)?, max_timeout);
    act(svc, id, Action::Stop(options), mode).await
}

/// Restarts an instance (a stop as `stop` does it, then a start).
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/restart",
    params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    request_body(content = Option<StopRequest>, description = "Optional: how to stop"),
    operation_id = "restartInstance", tag = "lifecycle",
    responses((status = 200, description = "The instance after the restart", body = Instance)),
    security(("bearer" = [])))]
pub async fn restart(
    svc: &Arc<Service>,
    id: &str,
    body: &[u8],
    max_timeout: u64,
    mode: Mode,
) -> Result<Reply, ApiError> {
    let options = stop_options(&stop_request(body, max_timeout)?, max_timeout);
    act(svc, id, Action::Restart(options), mode).await
}

/// Pauses a running instance (a paused one is answered as it is).
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/pause",
    params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    operation_id = "pauseInstance", tag = "lifecycle",
    responses((status = 200, description = "The instance after the pause", body = Instance)),
    security(("bearer" = [])))]
pub async fn pause(svc: &Arc<Service>, id: &str, mode: Mode) -> Result<Reply, ApiError> {
    act(svc, id, Action::Pause, mode).await
}

/// Unpauses a paused instance (a running one is answered as it is).
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/unpause",
    params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    operation_id = "unpauseInstance", tag = "lifecycle",
    responses((status = 200, description = "The instance after the unpause", body = Instance)),
    security(("bearer" = [])))]
pub async fn unpause(svc: &Arc<Service>, id: &str, mode: Mode) -> Result<Reply, ApiError> {
    act(svc, id, Action::Unpause, mode).await
}

async fn act(svc: &Arc<Service>, id: &str, action: Action, mode: Mode) -> Result<Reply, ApiError> {
    if mode == Mode::Async {
        let known = svc.get(id)?;
        let kind = match action {
            Action::Start => OpKind::Start,
            Action::Stop(_) => OpKind::Stop,
            Action::Restart(_) => OpKind::Restart,
            Action::Pause => OpKind::Pause,
            Action::Unpause => OpKind::Unpause,
        };
        let (s, owned) = (Arc::clone(svc), id.to_owned());
        let work: Work =
            Box::pin(async move { s.act(&owned, action).await.map(OpResult::Instance) });
        let op = svc.spawn_operation(
            kind,
            Some(known.backend.clone()),
            Some(id.to_owned()),
            Canceller::None,
            work,
        );
        return accepted(&op);
    }
    json(StatusCode::OK, &*svc.act(id, action).await?)
}

/// The optional body of stop and restart: empty (or blank) is the defaults.
fn stop_request(body: &[u8], max_timeout: u64) -> Result<StopRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StopRequest::default());
    }
    // `null` is no body too (the document's optional body).
    let req: StopRequest = parse_body::<Option<StopRequest>>(body)?.unwrap_or_default();
    if req.timeout.is_some_and(|t| t > max_timeout) {
        return Err(ApiError::invalid(format!(
            "timeout must be at most {max_timeout} seconds"
        )));
    }
    Ok(req)
}

/// The stop options of a request: the default timeout never beyond the configured
/// maximum (a server whose maximum is below 30 s stops by its maximum).
fn stop_options(req: &StopRequest, max_timeout: u64) -> unicompute_plugin_api::StopOptions {
    let mut options = req.options();
    options.timeout = options.timeout.min(max_timeout);
    options
}

/// Resource usage now.
#[utoipa::path(get, path = "/api/v1/compute/instances/{id}/usage", params(("id" = String, Path, min_length = 1, description = "The instance's id")),
    operation_id = "getInstanceUsage", tag = "instances",
    responses((status = 200, description = "Usage now", body = Usage)),
    security(("bearer" = [])))]
pub async fn usage(svc: &Service, id: &str) -> Result<Reply, ApiError> {
    json(StatusCode::OK, &svc.usage(id).await?)
}

/// Status of every enabled backend and the whole.
#[utoipa::path(get, path = "/api/v1/compute/cluster/status", operation_id = "getClusterStatus", tag = "cluster",
    responses((status = 200, description = "The enabled backends and the whole", body = ClusterStatus)), security(("bearer" = [])))]
pub fn cluster_status(svc: &Service) -> Result<Reply, ApiError> {
    let view = svc.cluster();
    let backends = view
        .backends
        .into_iter()
        .map(|b| {
            (
                b.name,
                ClusterBackend {
                    status: b.status.into(),
                    instances: b.instances,
                    resources: ClusterResources {
                        cpu: UsedTotal {
                            used: b.cpu_used,
                            total: b.cpu_total,
                        },
                        memory: UsedTotal {
                            used: b.memory_used,
                            total: b.memory_total,
                        },
                    },
                },
            )
        })
        .collect();
    json(
        StatusCode::OK,
        &ClusterStatus {
            backends,
            total_instances: view.total_instances,
            health: view.health.into(),
        },
    )
}

/// Every configured backend with its status.
#[utoipa::path(get, path = "/api/v1/compute/backends", operation_id = "listBackends", tag = "backends",
    responses((status = 200, description = "Every configured backend", body = BackendList)), security(("bearer" = [])))]
pub fn backends(svc: &Service) -> Result<Reply, ApiError> {
    let backends = svc
        .backends()
        .into_iter()
        .map(|b| BackendSummaryDto {
            name: b.name,
            plugin: b.plugin,
            kind: b.kind,
            enabled: b.enabled,
            status: b.status.into(),
            reason: b.reason,
            instances: b.instances,
        })
        .collect();
    json(StatusCode::OK, &BackendList { backends })
}

/// Versions, capabilities and health of one backend.
#[utoipa::path(get, path = "/api/v1/compute/backends/{backend}/info", params(("backend" = String, Path, description = "A configured backend's name")),
    operation_id = "getBackendInfo", tag = "backends",
    responses((status = 200, description = "The backend", body = BackendInfo)),
    security(("bearer" = [])))]
pub async fn backend_info(svc: &Service, name: &str) -> Result<Reply, ApiError> {
    let detail = svc.backend_detail(name).await?;
    let entry = &detail.entry;
    let healthy = detail.status == BackendStatus::Healthy;
    let desc = detail.description.unwrap_or_default();
    let info = BackendInfo {
        name: entry.name.clone(),
        kind: entry
            .plugin
            .as_ref()
            .map(|p| p.kind.clone())
            .unwrap_or_else(|| entry.config.plugin.clone()),
        version: desc.version,
        api_version: desc.api_version,
        status: detail.status.into(),
        capabilities: desc.capabilities,
        supported_types: desc
            .supported_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect(),
        health_check: HealthCheck {
            status: detail.status.into(),
            last_check: detail.health.last_check,
            reason: if healthy { None } else { detail.health.reason },
        },
        plugin: entry.plugin.as_ref().map(PluginInfo::from),
        extra: desc.extra,
    };
    json(StatusCode::OK, &info)
}

/// Images or templates a backend can create from.
#[utoipa::path(get, path = "/api/v1/compute/backends/{backend}/images", params(("backend" = String, Path, description = "A configured backend's name")),
    operation_id = "listBackendImages", tag = "backends",
    responses((status = 200, description = "Images or templates", body = ImageList)),
    security(("bearer" = [])))]
pub async fn backend_images(svc: &Service, name: &str) -> Result<Reply, ApiError> {
    let images = svc.images(name).await?;
    json(
        StatusCode::OK,
        &ImageList {
            backend: name.to_owned(),
            images,
        },
    )
}

/// Re-reads the config and the plugin directories: new plugin files are loaded,
/// changed ones loaded anew, backends enabled, disabled or changed, the rest untouched.
#[utoipa::path(post, path = "/api/v1/compute/backends/reload", operation_id = "reloadBackends", tag = "backends",
    responses((status = 200, description = "What the reload did", body = ReloadAnswer)),
    security(("bearer" = [])))]
pub async fn reload(state: &crate::api::AppState) -> Result<Reply, ApiError> {
    let report = state.reload().await?;
    json(StatusCode::OK, &ReloadAnswer::from(report))
}

/// The OpenAPI document, generated from the code.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "getOpenApi", tag = "server",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = inline(Object))), security(("bearer" = [])))]
pub fn openapi(doc: &Arc<Vec<u8>>) -> Result<Reply, ApiError> {
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(Bytes::copy_from_slice(doc)),
        location: None,
    })
}

/// Follow every change as Server-Sent Events: instances created, updated, state
/// changed and deleted; backends available, unavailable and reloaded; plugins loaded,
/// replaced and dropped; operations created, progressing and finished. Each message's
/// `id:` is the event's id, `event:` its type, `data:` the event as JSON. Resume with
/// `Last-Event-ID` (or `since`): the retained events after it come first; an id older
/// than those gets one `reset` (list again, then follow from its id). A subscriber
/// that falls too far behind gets `reset` and the stream ends. A comment line every 15
/// seconds while quiet.
#[utoipa::path(get, path = "/api/v1/compute/events", operation_id = "streamEvents", tag = "events",
    params(
        ("backend" = Option<Vec<String>>, Query, explode = true, description = "Only these backends (configured names); repeatable"),
        ("instance" = Option<Vec<String>>, Query, explode = true, description = "Only these instance ids; repeatable"),
        ("type" = Option<Vec<String>>, Query, explode = true, description = "Only these event types (`instance.state-changed`) or categories (`instance`, `backend`, `plugin`, `operation`); repeatable"),
        ("since" = Option<u64>, Query, description = "Resume after this event id (as `Last-Event-ID`)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
    ),
    responses((status = 200, description = "The event stream (never ends by itself); each `data:` is an `EventDto`", content_type = "text/event-stream", body = String)),
    security(("bearer" = [])))]
pub fn events(
    svc: &Arc<Service>,
    query: &str,
    headers: &warp::http::HeaderMap,
) -> Result<warp::reply::Response, ApiError> {
    let req = crate::api::sse::parse(svc, query, headers)?;
    Ok(crate::api::sse::respond(svc, req))
}

/// List operations, running and recently ended, oldest first.
#[utoipa::path(get, path = "/api/v1/compute/operations", operation_id = "listOperations", tag = "operations",
    params(
        ("status" = Option<crate::api::dto_events::OperationStatus>, Query, description = "Only this status"),
        ("kind" = Option<crate::api::dto_events::OperationKind>, Query, description = "Only this kind"),
        ("instance" = Option<String>, Query, description = "Only operations on this instance id"),
        ("backend" = Option<String>, Query, description = "Only this backend"),
        ("page" = Option<u64>, Query, minimum = 1, description = "From 1 (default 1)"),
        ("pageSize" = Option<u64>, Query, minimum = 1, maximum = 100, description = "1 to 100 (default 50)"),
    ),
    responses((status = 200, description = "A page of operations", body = crate::api::dto_events::OperationList)),
    security(("bearer" = [])))]
pub fn list_operations(svc: &Service, query: &str) -> Result<Reply, ApiError> {
    use crate::service::OpStatus;
    let (mut status, mut kind, mut instance, mut backend) = (None, None, None, None);
    let (mut page, mut page_size) = (1usize, 50usize);
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in query_pairs(query) {
        if seen.contains(&k) {
            return Err(
                ApiError::invalid(format!("query parameter {k} is given twice"))
                    .detail("parameter", k.as_str()),
            );
        }
        seen.push(k.clone());
        match k.as_str() {
            "status" => {
                status = Some(OpStatus::parse(&v).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "status must be one of {}",
                        OpStatus::ALL.map(|s| s.as_str()).join(", ")
                    ))
                    .detail("status", v.as_str())
                })?)
            }
            "kind" => {
                kind = Some(OpKind::parse(&v).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "kind must be one of {}",
                        OpKind::ALL.map(|s| s.as_str()).join(", ")
                    ))
                    .detail("kind", v.as_str())
                })?)
            }
            "instance" => instance = Some(v),
            "backend" => {
                if svc.registry().get(&v).is_none() {
                    return Err(ApiError::invalid_backend(&v));
                }
                backend = Some(v)
            }
            "page" => {
                page = v.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
                    ApiError::invalid("page must be an integer >= 1").detail("page", v.as_str())
                })?
            }
            "pageSize" => {
                page_size = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .ok_or_else(|| {
                        ApiError::invalid("pageSize must be an integer from 1 to 100")
                            .detail("pageSize", v.as_str())
                    })?
            }
            other => {
                return Err(
                    ApiError::invalid(format!("unknown query parameter {other}"))
                        .detail("parameter", other),
                )
            }
        }
    }
    let all = svc.operations(|o| {
        status.is_none_or(|s| o.status == s)
            && kind.is_none_or(|k| o.kind == k)
            && instance
                .as_deref()
                .is_none_or(|i| o.instance_id.as_deref() == Some(i))
            && backend
                .as_deref()
                .is_none_or(|b| o.backend.as_deref() == Some(b))
    });
    let total = all.len();
    let skip = (page - 1).saturating_mul(page_size);
    json(
        StatusCode::OK,
        &crate::api::dto_events::OperationList {
            operations: all
                .iter()
                .skip(skip)
                .take(page_size)
                .map(|o| OperationDto::from(&**o))
                .collect(),
            total,
            page,
            page_size,
        },
    )
}

/// Get an operation; with `wait`, once it has ended or `wait` seconds have passed.
#[utoipa::path(get, path = "/api/v1/compute/operations/{id}", operation_id = "getOperation", tag = "operations",
    params(("id" = String, Path, min_length = 1, description = "The operation's id"),
        ("wait" = Option<u64>, Query, minimum = 0, maximum = 300, description = "Seconds to wait for the operation to end (0 to `server.max_operation_wait_secs`, default 0)")),
    responses((status = 200, description = "The operation", body = OperationDto)),
    security(("bearer" = [])))]
pub async fn get_operation(svc: &Service, id: &str, query: &str) -> Result<Reply, ApiError> {
    let max = svc.config().server.max_operation_wait_secs;
    let mut wait = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "wait" if wait.is_none() => {
                wait = Some(v.parse::<u64>().ok().filter(|w| *w <= max).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "wait must be a whole number of seconds from 0 to {max}"
                    ))
                    .detail("wait", v.as_str())
                })?)
            }
            "wait" => return Err(ApiError::invalid("query parameter wait is given twice")),
            other => {
                return Err(
                    ApiError::invalid(format!("unknown query parameter {other}"))
                        .detail("parameter", other),
                )
            }
        }
    }
    let op = match wait {
        Some(w) if w > 0 => {
            svc.wait_operation(id, std::time::Duration::from_secs(w))
                .await?
        }
        _ => svc.operation(id)?,
    };
    json(StatusCode::OK, &OperationDto::from(&*op))
}

/// Cancel a running operation where its work can be stopped (an image pull, a disk
/// copy, an upload); 409 for one that has ended or cannot be stopped. Answers the
/// operation once it has ended (200), or after 10 seconds while it is still ending
/// (202).
#[utoipa::path(delete, path = "/api/v1/compute/operations/{id}", operation_id = "cancelOperation", tag = "operations",
    params(("id" = String, Path, min_length = 1, description = "The operation's id")),
    responses(
        (status = 200, description = "Cancelled: the operation as it ended", body = OperationDto),
        (status = 202, description = "Asked to stop, still ending", body = OperationDto)),
    security(("bearer" = [])))]
pub async fn cancel_operation(svc: &Service, id: &str) -> Result<Reply, ApiError> {
    svc.cancel_operation(id).await?;
    let op = svc
        .wait_operation(id, std::time::Duration::from_secs(10))
        .await?;
    let status = if op.status.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    json(status, &OperationDto::from(&*op))
}

/// Add an image or template to a backend. As JSON (`{"reference": ...}`), a pull
/// (Docker); as `application/octet-stream` with `?name=`, an upload of a disk image
/// (KVM: qcow2 or raw, checked before it becomes visible; at most the backend's
/// `max_template_bytes`). Either runs as an operation with progress, and can be
/// cancelled; without `async` the answer waits for its end. An async upload is
/// answered once its bytes are received.
#[utoipa::path(post, path = "/api/v1/compute/backends/{backend}/images", operation_id = "addBackendImage", tag = "images",
    params(("backend" = String, Path, description = "A configured backend's name"),
        ("name" = Option<String>, Query, description = "The template's name (uploads)")),
    request_body(content(
        (crate::api::dto_events::PullImageRequest = "application/json"),
        (Vec<u8> = "application/octet-stream"))),
    responses((status = 201, description = "The image, pulled or uploaded", body = unicompute_plugin_api::Image)),
    security(("bearer" = [])))]
pub async fn add_image(
    svc: &Arc<Service>,
    backend: &str,
    request: ImageRequest,
    mode: Mode,
) -> Result<Reply, ApiError> {
    let (op, received) = match request {
        ImageRequest::Pull(body) => {
            let req: crate::api::dto_events::PullImageRequest = parse_body(&body)?;
            if req.reference.trim().is_empty() || req.reference.len() > 1024 {
                return Err(ApiError::invalid("reference must be 1 to 1024 characters"));
            }
            let op = svc.pull_image(backend, req.reference, req.auth.map(Into::into))?;
            (op, None)
        }
        ImageRequest::Upload {
            name,
            declared,
            body,
        } => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let op = svc.upload_image(backend, name, declared, body, tx)?;
            (op, Some(rx))
        }
    };
    if mode == Mode::Async {
        if let Some(rx) = received {
            let _ = rx.await;
        }
        let now = svc.operation(&op.id).unwrap_or(op);
        return accepted(&now);
    }
    let done = svc
        .wait_operation(&op.id, std::time::Duration::from_secs(7 * 24 * 3600))
        .await?;
    match (&done.result, &done.error) {
        (Some(OpResult::Image(image)), _) => json(StatusCode::CREATED, image),
        (_, Some(e)) => Err(e.clone().into()),
        _ => Err(ApiError::internal("the operation ended without a result")),
    }
}

/// What an image request carries.
pub enum ImageRequest {
    /// A pull: the JSON body.
    Pull(Vec<u8>),
    /// An upload: its name, announced size and bytes.
    Upload {
        /// `?name=`
        name: String,
        /// `Content-Length`, when sent.
        declared: Option<u64>,
        /// The bytes.
        body: std::pin::Pin<
            Box<
                dyn futures_util::Stream<Item = Result<bytes::Bytes, crate::service::BodyError>>
                    + Send,
            >,
        >,
    },
}

/// Delete an image or template; refused (409 `IMAGE_IN_USE`) while an instance uses
/// it. A name holding `/` is sent with `%2F`.
#[utoipa::path(delete, path = "/api/v1/compute/backends/{backend}/images/{name}", operation_id = "deleteBackendImage", tag = "images",
    params(("backend" = String, Path, description = "A configured backend's name"),
        ("name" = String, Path, min_length = 1, description = "The image or template, as listed (`/` as `%2F`)")),
    responses((status = 204, description = "Deleted")),
    security(("bearer" = [])))]
pub async fn delete_image(
    svc: &Arc<Service>,
    backend: &str,
    name: &str,
    mode: Mode,
) -> Result<Reply, ApiError> {
    let name = name.replace("%2F", "/");
    if mode == Mode::Async {
        svc.backend(backend)?;
        let (s, b) = (Arc::clone(svc), backend.to_owned());
        let work: Work =
            Box::pin(async move { s.delete_image(&b, &name).await.map(|()| OpResult::Nothing) });
        let op = svc.spawn_operation(
            OpKind::ImageDelete,
            Some(backend.to_owned()),
            None,
            Canceller::None,
            work,
        );
        return accepted(&op);
    }
    svc.delete_image(backend, &name).await?;
    Ok(Reply {
        status: StatusCode::NO_CONTENT,
        body: None,
        location: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_bounds() {
        assert!(parse_list_query("").is_ok());
        let (f, p, s) =
            parse_list_query("page=2&pageSize=100&state=running&label=a%3Db&label=c=d&backend=kvm")
                .unwrap();
        assert_eq!((p, s), (2, 100));
        assert_eq!(f.state, Some(InstanceState::Running));
        assert_eq!(
            f.labels,
            vec![("a".into(), "b".into()), ("c".into(), "d".into())]
        );
        assert_eq!(f.backend.as_deref(), Some("kvm"));
        for bad in [
            "page=0",
            "page=-1",
            "page=x",
            "pageSize=0",
            "pageSize=101",
            "state=asleep",
            "label=nokey",
            "pagesize=10",
        ] {
            let e = parse_list_query(bad).unwrap_err();
            assert_eq!(e.code, "INVALID_REQUEST", "{bad}");
        }
    }

    #[test]
    fn list_body_is_what_serde_writes() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap();
        let mut a = Instance {
            id: "i-1".into(),
            name: "a".into(),
            uuid: String::new(),
            instance_type: unicompute_plugin_api::InstanceType::Container,
            backend: "docker".into(),
            state: InstanceState::Running,
            status: Default::default(),
            config: Default::default(),
            resources: Default::default(),
            pending_resources: None,
            metadata: Default::default(),
            created_at: t,
            updated_at: t,
        };
        a.metadata.labels.insert("k".into(), "v\u{e9} \"q\"".into());
        let mut b = a.clone();
        b.id = "i-2".into();
        b.name = "b".into();
        for (items, total, page, size) in [
            (vec![], 0, 1, 20),
            (vec![&a], 1, 1, 20),
            (vec![&a, &b], 57, 3, 100),
        ] {
            let cached: Vec<Bytes> = items
                .iter()
                .map(|i| serde_json::to_vec(i).unwrap().into())
                .collect();
            let expected = serde_json::to_vec(&InstanceList {
                instances: items,
                total,
                page,
                page_size: size,
            })
            .unwrap();
            assert_eq!(
                list_body(&cached, total, page, size),
                expected,
                "{}",
                String::from_utf8_lossy(&expected)
            );
        }
        // An instance that could not be encoded: no half list.
        assert!(list_body(&[Bytes::new()], 1, 1, 20).is_empty());
    }

    #[test]
    fn body_errors_are_invalid_request() {
        let e = parse_body::<CreateInstanceRequest>(b"{not json").unwrap_err();
        assert_eq!(e.code, "INVALID_REQUEST");
        assert!(e.message.starts_with("malformed JSON"));
        let e = parse_body::<CreateInstanceRequest>(br#"{"name":"a","backend":"b","colour":1}"#)
            .unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
        let e = parse_body::<CreateInstanceRequest>(br#"{"name":5,"backend":"b"}"#).unwrap_err();
        assert!(e.message.starts_with("invalid request body"));
    }
}
