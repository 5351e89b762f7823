//! `GET /api/v1/compute/events`: the hub's events as Server-Sent Events.
//!
//! Each message is `id: N`, `event: TYPE`, `data: JSON` (one line). A subscriber
//! resumes with `Last-Event-ID` (or `?since=`): it gets the retained events after
//! that id, then the live ones, with no gap. An id the ring no longer holds (or of
//! another run) gets one `reset` first. A subscriber that falls `server.events_buffer`
//! events behind gets `reset` and the stream ends. A comment line every
//! `server.events_heartbeat_secs` keeps proxies and clients from taking a quiet
//! stream for a dead one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use warp::http::{header, HeaderMap, HeaderValue};

use crate::api::dto_events::EventDto;
use crate::api::error::ApiError;
use crate::events::{Event, Filter, KindFilter, Start};
use crate::service::Service;

/// The parsed query and `Last-Event-ID` of a subscription.
#[derive(Debug, Default)]
pub struct Request {
    /// Which events.
    pub filter: Filter,
    /// Resume after this id.
    pub since: Option<u64>,
}

fn parse_id(what: &str, v: &str) -> Result<u64, ApiError> {
    v.trim().parse::<u64>().map_err(|_| {
        ApiError::invalid(format!("{what} must be an event id (a whole number)")).detail(what, v)
    })
}

/// Parses `backend=`, `instance=`, `type=` (each repeatable: any of them), `since=`,
/// and the `Last-Event-ID` header (`since` wins when both are given). Unknown
/// parameters, backends, instances and types are 400.
pub fn parse(svc: &Service, query: &str, headers: &HeaderMap) -> Result<Request, ApiError> {
    let mut req = Request::default();
    let mut since_seen = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "backend" => {
                if svc.registry().get(&v).is_none() {
                    return Err(ApiError::invalid_backend(&v));
                }
                req.filter.backends.push(v.into_owned());
            }
            "instance" => {
                if svc.inventory.get(&v).is_none() && !svc.hub.knows_instance(&v) {
                    return Err(ApiError::invalid(format!("unknown instance {v}"))
                        .detail("instance", v.as_ref()));
                }
                req.filter.instances.push(v.into_owned());
            }
            "type" => {
                let kind = KindFilter::parse(&v).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "unknown event type {v}: one of {}, or a category (instance, backend, plugin, operation)",
                        crate::events::Kind::ALL.map(|k| k.as_str()).join(", ")
                    ))
                    .detail("type", v.as_ref())
                })?;
                req.filter.kinds.push(kind);
            }
            "since" => {
                if since_seen {
                    return Err(ApiError::invalid("query parameter since is given twice"));
                }
                since_seen = true;
                req.since = Some(parse_id("since", &v)?);
            }
            other => {
                return Err(
                    ApiError::invalid(format!("unknown query parameter {other}"))
                        .detail("parameter", other),
                )
            }
        }
    }
    if !since_seen {
        let mut all = headers.get_all("last-event-id").iter();
        if let Some(v) = all.next() {
            if all.next().is_some() {
                return Err(ApiError::invalid("more than one Last-Event-ID header"));
            }
            let v = v
                .to_str()
                .map_err(|_| ApiError::invalid("Last-Event-ID must be an event id"))?;
            req.since = Some(parse_id("Last-Event-ID", v)?);
        }
    }
    Ok(req)
}

/// The SSE bytes of an event, made once per event whoever sends it.
fn frame(e: &Event) -> Bytes {
    e.encoded
        .get_or_init(|| {
            let json = serde_json::to_string(&EventDto::of(e)).unwrap_or_else(|_| "{}".into());
            Bytes::from(format!(
                "id: {}\nevent: {}\ndata: {json}\n\n",
                e.id,
                e.kind.as_str()
            ))
        })
        .clone()
}

fn reset_frame(id: u64, reason: &str) -> Bytes {
    let json = serde_json::to_string(&EventDto::reset(id, reason)).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("id: {id}\nevent: reset\ndata: {json}\n\n"))
}

struct Subscriber {
    svc: Arc<Service>,
    filter: Filter,
    backlog: VecDeque<Arc<Event>>,
    live: tokio::sync::broadcast::Receiver<Arc<Event>>,
    /// A reset to send before anything else (an id older than the ring).
    reset_first: Option<u64>,
    heartbeat: tokio::time::Interval,
    closed: tokio::sync::watch::Receiver<bool>,
    opened: bool,
    done: bool,
}

impl Subscriber {
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.opened {
            self.opened = true;
            // Sent at once, so that a client knows it is subscribed (and a proxy
            // flushes the headers).
            return Some(Bytes::from_static(b": subscribed\n\n"));
        }
        if let Some(id) = self.reset_first.take() {
            return Some(reset_frame(
                id,
                "the event id asked for is older than the events kept (or of an earlier run): list again, then follow from this id",
            ));
        }
        while let Some(e) = self.backlog.pop_front() {
            if self.filter.matches(&e) {
                return Some(frame(&e));
            }
        }
        loop {
            tokio::select! {
                biased;
                _ = self.closed.wait_for(|c| *c) => {
                    self.done = true;
                    return None;
                }
                r = self.live.recv() => match r {
                    Ok(e) if self.filter.matches(&e) => return Some(frame(&e)),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        self.done = true;
                        tracing::info!(behind = n, "an event subscriber fell behind: reset and closed");
                        return Some(reset_frame(
                            self.svc.hub.last_id(),
                            &format!("this subscriber fell {n} events behind: list again, then follow from this id"),
                        ));
                    }
                    Err(RecvError::Closed) => {
                        self.done = true;
                        return None;
                    }
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": heartbeat\n\n")),
            }
        }
    }
}

/// A stream that is `Sync` because only one poller can reach it at a time (warp's
/// body wants `Sync`; the subscriber's futures are `Send` only).
pub(crate) struct SyncStream<S>(pub(crate) Mutex<Pin<Box<S>>>);

impl<S: Stream> Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        match self.0.lock() {
            Ok(mut s) => s.as_mut().poll_next(cx),
            Err(_) => Poll::Ready(None),
        }
    }
}

/// The streaming response for a subscription.
pub fn respond(svc: &Arc<Service>, req: Request) -> warp::reply::Response {
    let sub = svc.hub.subscribe(req.since);
    let (backlog, reset_first) = match sub.start {
        Start::Backlog(b) => (VecDeque::from(b), None),
        Start::Reset => (VecDeque::new(), Some(sub.last_id)),
    };
    let every = Duration::from_secs(svc.config().server.events_heartbeat_secs.max(1));
    let subscriber = Subscriber {
        svc: Arc::clone(svc),
        filter: req.filter,
        backlog,
        live: sub.live,
        reset_first,
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        closed: svc.hub.closed(),
        opened: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(subscriber, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((Ok::<Bytes, Infallible>(frame), s))
    });
    let body = warp::reply::stream(SyncStream(Mutex::new(Box::pin(stream))));
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
