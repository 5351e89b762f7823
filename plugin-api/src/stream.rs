//! Byte streams between an instance and the host (interface 1.3): logs, the console
//! and exec.
//!
//! A plugin opens a stream in [`crate::Backend::open_stream`] and answers a
//! [`ByteStream`], the host's end of a bounded channel; it keeps the other end, a
//! [`StreamEnd`], and pumps the instance's output into it (from a task of its own
//! runtime or from a thread) while it reads what the client typed.
//!
//! - **Backpressure** both ways: the channel holds [`StreamEnd::CAPACITY`] chunks of at
//!   most [`MAX_CHUNK`] bytes. [`StreamEnd::send`] waits while the host has not read
//!   (the host reads only as fast as its client does), so neither side buffers
//!   without bound.
//! - **Closing**: when the client goes, the host drops its [`ByteStream`]:
//!   [`StreamEnd::send`] then fails, [`StreamEnd::closed`] resolves and
//!   [`StreamEnd::recv`] answers `None`. The plugin stops its pump and releases what it
//!   held (the engine's log request, the console). When the plugin drops its
//!   [`StreamEnd`] the host sees the end of the stream.
//! - **Panics** stay in the stream: a pump that panics drops its [`StreamEnd`] (the
//!   stream ends for that client only); the host's reads run no plugin code but the
//!   channel's.
//!
//! Across the boundary the host's end is a [`crate::ffi::StreamFfi`] trait object whose
//! reads and writes are FFI-safe futures (`async-ffi`): a thousand idle followers are a
//! thousand parked futures, not a thousand blocked threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};

use crate::error::PluginError;

/// The largest chunk a stream carries; [`StreamEnd::send`] splits longer data.
pub const MAX_CHUNK: usize = 64 * 1024;

/// What stream to open, and on which instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRequest {
    /// The host's instance id.
    pub id: String,
    /// The stream and its options.
    #[serde(flatten)]
    pub kind: StreamKind,
}

/// The three streams an instance offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "options", rename_all = "camelCase")]
pub enum StreamKind {
    /// What the instance printed (container stdout/stderr; a VM's serial console).
    /// Output only.
    Logs(LogsOptions),
    /// The instance's console (a container's TTY; a VM's serial console): output,
    /// input and resize.
    Console(ConsoleOptions),
    /// A command run inside the instance: output, input when `stdin`, resize when
    /// `tty`, and its [`Output::Exit`] before the end.
    Exec(ExecOptions),
}

impl StreamKind {
    /// `logs`, `console` or `exec`.
    pub fn name(&self) -> &'static str {
        match self {
            StreamKind::Logs(_) => "logs",
            StreamKind::Console(_) => "console",
            StreamKind::Exec(_) => "exec",
        }
    }
}

/// [`StreamKind::Logs`]'s options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsOptions {
    /// Keep the stream open and send new output as it is written.
    #[serde(default)]
    pub follow: bool,
    /// Only the last `tail` lines of what was written before (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Only output written at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Prefix each line with the RFC 3339 instant it was written.
    #[serde(default)]
    pub timestamps: bool,
    /// Include standard output.
    #[serde(default = "yes")]
    pub stdout: bool,
    /// Include standard error.
    #[serde(default = "yes")]
    pub stderr: bool,
}

fn yes() -> bool {
    true
}

impl Default for LogsOptions {
    fn default() -> Self {
        LogsOptions {
            follow: false,
            tail: None,
            since: None,
            timestamps: false,
            stdout: true,
            stderr: true,
        }
    }
}

/// [`StreamKind::Console`]'s options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleOptions {
    /// The terminal's size at the start, when the client knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TermSize>,
}

/// [`StreamKind::Exec`]'s options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecOptions {
    /// The program and its arguments; never empty.
    pub command: Vec<String>,
    /// Added environment, `NAME=value` each.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory (the instance's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The user (the instance's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run it on a terminal (output is one stream, resize applies).
    #[serde(default)]
    pub tty: bool,
    /// Feed it the client's input.
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's size at the start, with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TermSize>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// What a stream carries to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Standard output (and everything a terminal or a console prints).
    Stdout(Vec<u8>),
    /// Standard error.
    Stderr(Vec<u8>),
    /// The exec'd command ended with this code; the stream ends after it.
    Exit(i64),
    /// The stream failed; it ends after this.
    Error(PluginError),
}

/// What the client sends into a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Bytes for the program's standard input or the console.
    Data(Vec<u8>),
    /// The client's terminal changed size.
    Resize(TermSize),
    /// The client has no more input (end of file on standard input).
    CloseStdin,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How the host's end reads and writes; a channel in the plugin, a trait object of the
/// plugin seen from the host.
pub(crate) trait StreamObject: Send + Sync {
    fn next(&self) -> BoxFuture<Option<Output>>;
    fn send(&self, input: Input) -> BoxFuture<bool>;
}

/// The host's end of a stream: what [`crate::Backend::open_stream`] answers. Dropping
/// it closes the stream.
pub struct ByteStream {
    inner: Box<dyn StreamObject>,
}

impl std::fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteStream")
    }
}

impl ByteStream {
    pub(crate) fn from_object(inner: impl StreamObject + 'static) -> Self {
        ByteStream {
            inner: Box::new(inner),
        }
    }

    /// The next chunk, or `None` at the end of the stream. Waits without blocking a
    /// thread.
    pub fn next(&self) -> impl Future<Output = Option<Output>> + Send + 'static {
        self.inner.next()
    }

    /// Sends the client's input; `false` when the plugin no longer reads it (the
    /// stream takes no input, or has ended). Waits while the plugin's side is full.
    pub fn send(&self, input: Input) -> impl Future<Output = bool> + Send + 'static {
        self.inner.send(input)
    }
}

/// The plugin's end of a stream. See the [module](self) for the rules.
#[derive(Debug)]
pub struct StreamEnd {
    out: mpsc::Sender<Output>,
    input: mpsc::Receiver<Input>,
}

/// The stream's client is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream was closed by its client")]
pub struct Closed;

impl StreamEnd {
    /// How many chunks wait in each direction before the writer waits.
    pub const CAPACITY: usize = 8;

    /// Sends output to the client, waiting while the host has not read what was sent
    /// before; splits data longer than [`MAX_CHUNK`]. Fails when the client is gone.
    pub async fn send(&self, output: Output) -> Result<(), Closed> {
        for chunk in split(output) {
            self.out.send(chunk).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// [`StreamEnd::send`] from a plain thread (never from inside an async runtime).
    pub fn blocking_send(&self, output: Output) -> Result<(), Closed> {
        for chunk in split(output) {
            self.out.blocking_send(chunk).map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// The client's next input; `None` when the client is gone.
    pub async fn recv(&mut self) -> Option<Input> {
        self.input.recv().await
    }

    /// [`StreamEnd::recv`] from a plain thread.
    pub fn blocking_recv(&mut self) -> Option<Input> {
        self.input.blocking_recv()
    }

    /// The client's next input if one waits: `Ok(None)` when none does, `Err` when the
    /// client is gone.
    pub fn try_recv(&mut self) -> Result<Option<Input>, Closed> {
        match self.input.try_recv() {
            Ok(input) => Ok(Some(input)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(Closed),
        }
    }

    /// Resolves when the client is gone.
    pub async fn closed(&self) {
        self.out.closed().await
    }

    /// Whether the client is gone.
    pub fn is_closed(&self) -> bool {
        self.out.is_closed()
    }

    /// Splits this end into its output half (cheap to clone) and its input half, for
    /// a pump that writes from one task and reads from another.
    pub fn split(self) -> (StreamSender, mpsc::Receiver<Input>) {
        (StreamSender { out: self.out }, self.input)
    }
}

/// The output half of a [`StreamEnd`].
#[derive(Debug, Clone)]
pub struct StreamSender {
    out: mpsc::Sender<Output>,
}

impl StreamSender {
    /// As [`StreamEnd::send`].
    pub async fn send(&self, output: Output) -> Result<(), Closed> {
        for chunk in split(output) {
            self.out.send(chunk).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// As [`StreamEnd::blocking_send`].
    pub fn blocking_send(&self, output: Output) -> Result<(), Closed> {
        for chunk in split(output) {
            self.out.blocking_send(chunk).map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// As [`StreamEnd::closed`].
    pub async fn closed(&self) {
        self.out.closed().await
    }

    /// As [`StreamEnd::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.out.is_closed()
    }
}

fn split(output: Output) -> Vec<Output> {
    let chunks = |data: Vec<u8>, make: fn(Vec<u8>) -> Output| -> Vec<Output> {
        if data.len() <= MAX_CHUNK {
            vec![make(data)]
        } else {
            data.chunks(MAX_CHUNK).map(|c| make(c.to_vec())).collect()
        }
    };
    match output {
        Output::Stdout(d) => chunks(d, Output::Stdout),
        Output::Stderr(d) => chunks(d, Output::Stderr),
        other => vec![other],
    }
}

/// A new stream: the [`ByteStream`] to answer to the host, and the [`StreamEnd`] the
/// plugin pumps.
pub fn channel() -> (ByteStream, StreamEnd) {
    let (out_tx, out_rx) = mpsc::channel(StreamEnd::CAPACITY);
    let (in_tx, in_rx) = mpsc::channel(StreamEnd::CAPACITY);
    let host = Local {
        out: Arc::new(Mutex::new(out_rx)),
        input: in_tx,
    };
    (
        ByteStream::from_object(host),
        StreamEnd {
            out: out_tx,
            input: in_rx,
        },
    )
}

/// The host's end of a [`channel`], in the plugin's memory.
struct Local {
    out: Arc<Mutex<mpsc::Receiver<Output>>>,
    input: mpsc::Sender<Input>,
}

impl StreamObject for Local {
    fn next(&self) -> BoxFuture<Option<Output>> {
        let out = self.out.clone();
        Box::pin(async move { out.lock().await.recv().await })
    }

    fn send(&self, input: Input) -> BoxFuture<bool> {
        let tx = self.input.clone();
        Box::pin(async move { tx.send(input).await.is_ok() })
    }
}

// ---- across the boundary -------------------------------------------------------

use abi_stable::std_types::{ROption, RVec};
use async_ffi::{FfiFuture, FutureExt as _};

use crate::ffi::{FrameFfi, StreamFfi, StreamFfiBox};

const OUT_STDOUT: u8 = 1;
const OUT_STDERR: u8 = 2;
const OUT_EXIT: u8 = 3;
const OUT_ERROR: u8 = 4;
const IN_DATA: u8 = 0;
const IN_RESIZE: u8 = 5;
const IN_EOF: u8 = 6;

fn frame(kind: u8, code: i64, data: Vec<u8>) -> FrameFfi {
    FrameFfi {
        kind,
        code,
        data: RVec::from(data),
    }
}

pub(crate) fn encode_output(output: Output) -> FrameFfi {
    match output {
        Output::Stdout(d) => frame(OUT_STDOUT, 0, d),
        Output::Stderr(d) => frame(OUT_STDERR, 0, d),
        Output::Exit(code) => frame(OUT_EXIT, code, vec![]),
        Output::Error(e) => frame(OUT_ERROR, 0, serde_json::to_vec(&e).unwrap_or_default()),
    }
}

pub(crate) fn decode_output(f: FrameFfi) -> Output {
    match f.kind {
        OUT_STDOUT => Output::Stdout(f.data.into_vec()),
        OUT_STDERR => Output::Stderr(f.data.into_vec()),
        OUT_EXIT => Output::Exit(f.code),
        OUT_ERROR => Output::Error(serde_json::from_slice(&f.data).unwrap_or_else(|_| {
            PluginError::internal("the plugin's stream failed with an unreadable error")
        })),
        other => Output::Error(PluginError::internal(format!(
            "the plugin sent a stream frame of unknown kind {other}"
        ))),
    }
}

pub(crate) fn encode_input(input: Input) -> FrameFfi {
    match input {
        Input::Data(d) => frame(IN_DATA, 0, d),
        Input::Resize(s) => frame(
            IN_RESIZE,
            (i64::from(s.cols) << 16) | i64::from(s.rows),
            vec![],
        ),
        Input::CloseStdin => frame(IN_EOF, 0, vec![]),
    }
}

pub(crate) fn decode_input(f: FrameFfi) -> Option<Input> {
    match f.kind {
        IN_DATA => Some(Input::Data(f.data.into_vec())),
        IN_RESIZE => Some(Input::Resize(TermSize {
            cols: ((f.code >> 16) & 0xffff) as u16,
            rows: (f.code & 0xffff) as u16,
        })),
        IN_EOF => Some(Input::CloseStdin),
        // A newer host's input this plugin does not know: ignored.
        _ => None,
    }
}

/// The plugin's side: a [`ByteStream`] offered to the host as a [`StreamFfi`].
pub(crate) struct Exported(pub(crate) Arc<ByteStream>);

impl StreamFfi for Exported {
    fn next(&self) -> FfiFuture<ROption<FrameFfi>> {
        let fut = self.0.next();
        async move { ROption::from(fut.await.map(encode_output)) }.into_ffi()
    }

    fn send(&self, frame: FrameFfi) -> FfiFuture<bool> {
        let stream = self.0.clone();
        async move {
            match decode_input(frame) {
                Some(input) => stream.send(input).await,
                None => true,
            }
        }
        .into_ffi()
    }
}

/// The host's side: a plugin's [`StreamFfi`] seen as a [`StreamObject`]. A panic while
/// polling it ends the stream with an error; the host goes on.
pub(crate) struct Remote(pub(crate) Arc<StreamFfiBox>);

impl StreamObject for Remote {
    fn next(&self) -> BoxFuture<Option<Output>> {
        let fut = self.0.next();
        Box::pin(async move {
            match CatchUnwind(fut).await {
                Ok(frame) => Option::from(frame).map(decode_output),
                Err(()) => Some(Output::Error(PluginError::internal(
                    "the plugin panicked in a stream",
                ))),
            }
        })
    }

    fn send(&self, input: Input) -> BoxFuture<bool> {
        let fut = self.0.send(encode_input(input));
        Box::pin(async move { CatchUnwind(fut).await.unwrap_or(false) })
    }
}

/// Polls `fut`, turning a panic into `Err` (the host's guard around a plugin's future).
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(fut).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_cross_as_tagged_json() {
        let req = StreamRequest {
            id: "i-1".into(),
            kind: StreamKind::Logs(LogsOptions {
                follow: true,
                tail: Some(5),
                ..LogsOptions::default()
            }),
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"id":"i-1","kind":"logs","options":{"follow":true,"tail":5,"timestamps":false,"stdout":true,"stderr":true}}"#
        );
        assert_eq!(serde_json::from_str::<StreamRequest>(&json).unwrap(), req);
        let exec: StreamRequest =
            serde_json::from_str(r#"{"id":"i","kind":"exec","options":{"command":["ls"]}}"#)
                .unwrap();
        assert_eq!(
            exec.kind,
            StreamKind::Exec(ExecOptions {
                command: vec!["ls".into()],
                ..Default::default()
            })
        );
    }

    #[tokio::test]
    async fn a_channel_carries_both_ways_with_backpressure_and_closes() {
        let (host, mut end) = channel();
        // Output beyond the capacity waits until the host reads.
        let pump = tokio::spawn(async move {
            for i in 0..(StreamEnd::CAPACITY * 3) {
                end.send(Output::Stdout(vec![i as u8])).await.unwrap();
            }
            let got = end.recv().await;
            end.send(Output::Exit(3)).await.unwrap();
            (end, got)
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!pump.is_finished(), "the pump waits for the host to read");
        for i in 0..(StreamEnd::CAPACITY * 3) {
            assert_eq!(host.next().await, Some(Output::Stdout(vec![i as u8])));
        }
        assert!(host.send(Input::Data(b"hi".to_vec())).await);
        assert_eq!(host.next().await, Some(Output::Exit(3)));
        let (end, got) = pump.await.unwrap();
        assert_eq!(got, Some(Input::Data(b"hi".to_vec())));
        drop(end);
        assert_eq!(
            host.next().await,
            None,
            "the plugin's end dropped: the stream ends"
        );

        let (host, end) = channel();
        drop(host);
        assert!(end.is_closed());
        assert_eq!(end.send(Output::Stdout(b"x".to_vec())).await, Err(Closed));
    }

    #[tokio::test]
    async fn long_output_is_split_into_bounded_chunks() {
        let (host, end) = channel();
        tokio::spawn(async move {
            end.send(Output::Stderr(vec![7; MAX_CHUNK * 2 + 1]))
                .await
                .unwrap();
        });
        let mut sizes = vec![];
        while let Some(Output::Stderr(d)) = host.next().await {
            sizes.push(d.len());
        }
        assert_eq!(sizes, vec![MAX_CHUNK, MAX_CHUNK, 1]);
    }
}
