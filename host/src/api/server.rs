//! Serving connections: the accept loop, with a cap on open connections, a deadline
//! for a request's headers, an idle deadline between requests, and a graceful end.
//!
//! hyper's own header timer starts as soon as it waits for a head, so it cannot tell
//! an idle keep-alive connection from a slow one; each connection's socket is wrapped
//! instead ([`GuardedIo`]), and the service marks when a request is in the server
//! (from its head until the last byte of its response body). While none is, the
//! socket gets `idle_timeout` without a byte, then `header_read_timeout` from the
//! first byte of the next head. An upgraded connection (101) keeps no deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::api::Plain;

/// Limits of the connection layer (`[server]` settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; the next waits in the listen backlog.
    pub max_connections: usize,
    /// Time from a request head's first byte to its last.
    pub header_read_timeout: Duration,
    /// Time a connection may stay silent with no request in the server.
    pub idle_timeout: Duration,
    /// Time a write may wait for a client that does not read (its socket full): a
    /// stalled event subscriber or download is then disconnected, and its place freed.
    pub write_timeout: Duration,
}

/// Serves `filter` on `listener` until `shutdown` resolves, then lets the requests in
/// flight finish (connections close after their current response) and returns once
/// every connection has ended. The requests [`Plain`] takes go to it instead, when
/// given (the same answers without warp's filter chain).
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    plain: Option<Plain>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    F: warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    // Said at most once a minute: a flood must not become a flood of log lines.
    let mut last_warned: Option<Instant> = None;
    loop {
        if permits.available_permits() == 0
            && last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(max, "connection limit reached; new connections wait");
            last_warned = Some(Instant::now());
        }
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = warp::service(filter.clone());
        let stop = stop_rx.clone();
        let plain = plain.clone();
        tokio::spawn(async move {
            serve_connection(stream, svc, plain, limits, stop).await;
            tracing::debug!(%peer, "connection closed");
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it ends.
    let _ = permits.acquire_many(max as u32).await;
}

async fn serve_connection<S>(
    stream: TcpStream,
    svc: S,
    plain: Option<Plain>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    S: WarpService,
{
    let state = Arc::new(ConnState::default());
    let io = GuardedIo::new(TokioIo::new(stream), Arc::clone(&state), limits);
    let service = ConnService {
        inner: svc,
        plain,
        state,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // A client that went away, a deadline, a malformed head: the client's doing.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What `warp::service(filter)` is: the service every connection serves.
pub trait WarpService:
    tower_service::Service<
        hyper::Request<Incoming>,
        Response = warp::reply::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> WarpService for S where
    S: tower_service::Service<
            hyper::Request<Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// What the service tells the socket about a connection.
#[derive(Default)]
struct ConnState {
    /// Requests in the server: from the head until the response body has ended.
    in_server: AtomicUsize,
    /// Set by a 101 answer: the connection is no longer HTTP's.
    upgraded: AtomicBool,
    /// Set when the last request leaves the server: the idle clock starts again.
    idle_again: AtomicBool,
    /// The reader waiting with no deadline while a request was in the server: woken
    /// when the last one leaves, so that its deadline starts.
    reader: AtomicWaker,
}

/// Decrements [`ConnState::in_server`] when dropped.
struct InServer(Arc<ConnState>);

impl InServer {
    fn enter(state: &Arc<ConnState>) -> Self {
        state.in_server.fetch_add(1, Ordering::SeqCst);
        InServer(Arc::clone(state))
    }
}

impl Drop for InServer {
    fn drop(&mut self) {
        if self.0.in_server.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle_again.store(true, Ordering::SeqCst);
            self.0.reader.wake();
        }
    }
}

struct ConnService<S> {
    inner: S,
    plain: Option<Plain>,
    state: Arc<ConnState>,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for ConnService<S>
where
    S: WarpService,
{
    type Response = hyper::Response<GuardedBody<warp::hyper::body::Bytes>>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let guard = InServer::enter(&self.state);
        let state = Arc::clone(&self.state);
        let fut: Pin<Box<dyn Future<Output = warp::reply::Response> + Send>> = match &self.plain {
            Some(plain) if Plain::takes(&req) => Box::pin(plain.clone().call(req)),
            _ => {
                let fut = self.inner.clone().call(req);
                Box::pin(async move {
                    let Ok(resp) = fut.await;
                    resp
                })
            }
        };
        Box::pin(async move {
            let resp = fut.await;
            if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                state.upgraded.store(true, Ordering::SeqCst);
            }
            Ok(resp.map(|body| GuardedBody {
                inner: Box::pin(body),
                _guard: guard,
            }))
        })
    }
}

type BoxedBody<D> = Pin<Box<dyn Body<Data = D, Error = warp::Error> + Send>>;

/// A response body that keeps its request "in the server" until it is dropped.
pub struct GuardedBody<D> {
    inner: BoxedBody<D>,
    _guard: InServer,
}

impl<D: hyper::body::Buf> Body for GuardedBody<D> {
    type Data = D;
    type Error = warp::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<D>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a connection with no request in the server stands.
#[derive(Clone, Copy)]
enum Wait {
    /// Silent since this instant.
    Idle(Instant),
    /// The first byte of a head came at this instant.
    Head(Instant),
}

/// A socket that fails reads with `TimedOut` when a deadline of [`Limits`] passes,
/// and writes when the client has not read for `write_timeout`.
struct GuardedIo {
    io: TokioIo<TcpStream>,
    state: Arc<ConnState>,
    limits: Limits,
    wait: Wait,
    timer: Pin<Box<Sleep>>,
    /// Since when writes wait for the client to read, if they do.
    write_stalled: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

impl GuardedIo {
    fn new(io: TokioIo<TcpStream>, state: Arc<ConnState>, limits: Limits) -> Self {
        let now = Instant::now();
        GuardedIo {
            io,
            state,
            limits,
            wait: Wait::Idle(now),
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            write_stalled: None,
            write_timer: Box::pin(tokio::time::sleep_until(now + limits.write_timeout)),
        }
    }

    /// A write's outcome, failed with `TimedOut` once writes have waited
    /// `write_timeout` for a client that does not read.
    fn guard_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_stalled = None;
            return r;
        }
        let since = *self.write_stalled.get_or_insert_with(Instant::now);
        let deadline = since + self.limits.write_timeout;
        if self.write_timer.deadline() != deadline {
            self.write_timer.as_mut().reset(deadline);
        }
        match self.write_timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The deadline in force, if any.
    fn deadline(&mut self) -> Option<Instant> {
        if self.state.upgraded.load(Ordering::SeqCst)
            || self.state.in_server.load(Ordering::SeqCst) > 0
        {
            return None;
        }
        if self.state.idle_again.swap(false, Ordering::SeqCst) {
            self.wait = Wait::Idle(Instant::now());
        }
        Some(match self.wait {
            Wait::Idle(since) => since + self.limits.idle_timeout,
            Wait::Head(first) => first + self.limits.header_read_timeout,
        })
    }
}

impl Read for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let deadline = this.deadline();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // Bytes (or the end) with no request in the server: a head begins.
                if deadline.is_some() && matches!(this.wait, Wait::Idle(_)) {
                    this.wait = Wait::Head(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = deadline else {
                    this.state.reader.register(cx.waker());
                    // The last request may have left between the look and the
                    // registration: look again.
                    if this.deadline().is_some() {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let what = match this.wait {
                            Wait::Idle(_) => "idle connection closed",
                            Wait::Head(_) => "request head not received in time",
                        };
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Write for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.guard_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard_write(cx, r)
    }
}
