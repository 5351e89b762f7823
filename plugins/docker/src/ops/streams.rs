//! Byte streams (interface 1.3): a container's logs, its console (an attach) and a
//! command run in it (an exec), each pumped between the engine and a
//! [`unicompute_plugin_api::stream::channel`] by tasks of the plugin's runtime.
//!
//! [`Shared::open_stream`] makes the engine calls that can fail (inspect, the exec's
//! create and start, the attach) before it answers, so that their errors are the call's;
//! then one task moves the engine's output to the client and, for the console and exec,
//! a second one moves the client's input to the engine (two, so that a command that
//! stops reading its input while its output is not read cannot stall both). Output
//! waits while the client does not read (the engine's connection then fills, and the
//! engine waits in turn). When the client goes, or the backend shuts down, the tasks
//! end and the engine's connection is dropped: a follow stops, a console detaches (the
//! container runs on), an exec's connection closes (its standard input ends; the
//! engine offers no way to kill an exec'd command, so one that reads no input runs to
//! its own end, as after `docker exec` loses its client).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, ExecConfig};
use bollard::query_parameters::{
    AttachContainerOptions, LogsOptions as EngineLogsOptions, ResizeContainerTTYOptions,
    ResizeExecOptions,
};
use bollard::Docker;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use unicompute_plugin_api::stream::{
    channel, ConsoleOptions, ExecOptions, LogsOptions, StreamSender, TermSize,
};
use unicompute_plugin_api::{ByteStream, Input, Output, PluginError, StreamKind, StreamRequest};

use super::{state_of, Result};
use crate::backend::Shared;
use crate::error::Error;

/// How long a resize or the exec's inspection at its end may take.
const SMALL_CALL: Duration = Duration::from_secs(10);
/// How long the engine may go on reporting an exec as running once its output ended.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// What the engine answers as output: the multiplexed frames of a log, an attach or an
/// exec (or the raw bytes of a terminal, as [`LogOutput::Console`]).
type EngineOutput =
    Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>>;
/// The writing half of an attach or an exec's connection.
type EngineInput = Pin<Box<dyn AsyncWrite + Send>>;

/// Counts a pump while it runs ([`crate::DockerBackend::open_streams`]).
pub(crate) struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(count))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the pumps of one stream need besides their engine connection.
struct Pump {
    out: StreamSender,
    stop: watch::Receiver<bool>,
    _live: Live,
}

/// Resolves when the backend shuts down (or is dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Where resizes go.
#[derive(Clone)]
enum Tty {
    Container(String),
    Exec(String),
}

/// How an engine output ended.
enum Flow {
    /// The engine ended it.
    Ended,
    /// It failed (the client was told) or the client or the backend went.
    Over,
}

impl Pump {
    /// Sends one chunk; `false` when the client or the backend went.
    async fn deliver(&mut self, output: Output) -> bool {
        tokio::select! {
            sent = self.out.send(output) => sent.is_ok(),
            _ = stopped(&mut self.stop) => false,
        }
    }

    /// Moves the engine's output to the client, each chunk through `filter`.
    async fn output(
        &mut self,
        operation: &'static str,
        mut engine: EngineOutput,
        mut filter: impl FnMut(Output) -> Option<Output>,
    ) -> Flow {
        loop {
            let item = tokio::select! {
                item = engine.next() => item,
                _ = self.out.closed() => return Flow::Over,
                _ = stopped(&mut self.stop) => return Flow::Over,
            };
            let chunk = match item {
                None => return Flow::Ended,
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    Output::Stdout(message.to_vec())
                }
                Some(Ok(LogOutput::StdErr { message })) => Output::Stderr(message.to_vec()),
                Some(Ok(LogOutput::StdIn { .. })) => continue,
                Some(Err(e)) => {
                    let e = Error::from_bollard(operation, e);
                    tracing::debug!(error = %e, "a stream's engine output failed");
                    self.deliver(Output::Error(e.into())).await;
                    return Flow::Over;
                }
            };
            if let Some(chunk) = filter(chunk) {
                if !self.deliver(chunk).await {
                    return Flow::Over;
                }
            }
        }
    }
}

/// Moves the client's input to the engine until the client goes: data to standard
/// input (dropped without one), resizes to the terminal (ignored without one), the end
/// of input as a shutdown of the connection's writing half.
async fn pump_input(
    docker: Docker,
    mut input: mpsc::Receiver<Input>,
    mut stdin: Option<EngineInput>,
    tty: Option<Tty>,
) {
    while let Some(i) = input.recv().await {
        match i {
            Input::Data(data) => {
                let Some(w) = stdin.as_mut() else { continue };
                if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                    // The command or the container no longer reads: drop what follows.
                    stdin = None;
                }
            }
            Input::Resize(size) => {
                if let Some(tty) = &tty {
                    resize(&docker, tty, size).await;
                }
            }
            Input::CloseStdin => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
        }
    }
}

async fn resize(docker: &Docker, tty: &Tty, size: TermSize) {
    let (h, w) = (i32::from(size.rows), i32::from(size.cols));
    let done = match tty {
        Tty::Container(c) => {
            tokio::time::timeout(
                SMALL_CALL,
                docker.resize_container_tty(c, ResizeContainerTTYOptions { h, w }),
            )
            .await
        }
        Tty::Exec(e) => {
            tokio::time::timeout(
                SMALL_CALL,
                docker.resize_exec(e, ResizeExecOptions { h, w }),
            )
            .await
        }
    };
    match done {
        Ok(Ok(())) => {}
        // A resize racing the end of the command fails harmlessly.
        Ok(Err(e)) => tracing::debug!(error = %e, "resize failed"),
        Err(_) => tracing::debug!("resize timed out"),
    }
}

/// `INVALID_STATE` unless the container runs (and is not paused).
fn require_running(id: &str, c: &ContainerInspectResponse) -> Result<()> {
    match state_of(c) {
        Some(ContainerStateStatusEnum::RUNNING) => Ok(()),
        Some(ContainerStateStatusEnum::PAUSED) => Err(PluginError::invalid_state(format!(
            "instance {id} is paused, not running"
        ))),
        _ => Err(PluginError::invalid_state(format!(
            "instance {id} is not running"
        ))),
    }
}

impl Shared {
    /// Opens a stream (see the module). `stop` turns true when the backend shuts down.
    pub(crate) async fn open_stream(
        &self,
        request: StreamRequest,
        stop: watch::Receiver<bool>,
    ) -> Result<ByteStream> {
        let StreamRequest { id, kind } = request;
        if let StreamKind::Exec(o) = &kind {
            check_exec(o)?;
        }
        let (container, c) = self.resolve(&id).await?;
        let docker = self.engine.client().await?;
        let (stream, end) = channel();
        let (out, input) = end.split();
        let pump = Pump {
            out,
            stop,
            _live: Live::new(&self.streams),
        };
        match kind {
            StreamKind::Logs(o) => {
                drop(input);
                tokio::spawn(logs(docker, container, o, pump));
            }
            StreamKind::Console(o) => {
                require_running(&id, &c)?;
                self.console(docker, &container, &c, o, pump, input).await?;
            }
            StreamKind::Exec(o) => {
                require_running(&id, &c)?;
                self.exec(docker, &container, o, pump, input).await?;
            }
        }
        Ok(stream)
    }

    async fn console(
        &self,
        docker: Docker,
        container: &str,
        c: &ContainerInspectResponse,
        o: ConsoleOptions,
        pump: Pump,
        input: mpsc::Receiver<Input>,
    ) -> Result<()> {
        let config = c.config.as_ref();
        let tty = config.and_then(|c| c.tty).unwrap_or(false);
        let open_stdin = config.and_then(|c| c.open_stdin).unwrap_or(false);
        let options = AttachContainerOptions {
            stream: true,
            logs: false,
            stdin: open_stdin,
            stdout: true,
            stderr: true,
            detach_keys: None,
        };
        let target = container.to_owned();
        let attached = self
            .engine
            .quick("attach", move |d| async move {
                d.attach_container(&target, Some(options)).await
            })
            .await?;
        let tty = tty.then(|| Tty::Container(container.to_owned()));
        if let (Some(t), Some(size)) = (&tty, o.size) {
            resize(&docker, t, size).await;
        }
        let stdin = open_stdin.then_some(attached.input);
        spawn_attached(docker, attached.output, stdin, tty, input, pump, None);
        Ok(())
    }

    async fn exec(
        &self,
        docker: Docker,
        container: &str,
        o: ExecOptions,
        pump: Pump,
        input: mpsc::Receiver<Input>,
    ) -> Result<()> {
        let size = o.size.filter(|_| o.tty);
        let config = ExecConfig {
            attach_stdin: Some(o.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(o.tty),
            console_size: size.map(|s| vec![usize::from(s.rows), usize::from(s.cols)]),
            env: (!o.env.is_empty()).then_some(o.env),
            cmd: Some(o.command),
            user: o.user,
            working_dir: o.workdir,
            ..Default::default()
        };
        let target = container.to_owned();
        let made = self
            .engine
            .quick("create_exec", move |d| async move {
                d.create_exec(&target, config).await
            })
            .await?;
        let exec = made.id;
        let start = StartExecOptions {
            detach: false,
            tty: o.tty,
            output_capacity: None,
        };
        let exec_id = exec.clone();
        let started = self
            .engine
            .quick("start_exec", move |d| async move {
                d.start_exec(&exec_id, Some(start)).await
            })
            .await?;
        let StartExecResults::Attached {
            output,
            input: writer,
        } = started
        else {
            return Err(PluginError::internal(
                "the engine started an attached exec detached",
            ));
        };
        let tty = o.tty.then(|| Tty::Exec(exec.clone()));
        // The engine takes the initial size at the start, which bollard does not send:
        // resize before the client can type anything.
        if let (Some(t), Some(size)) = (&tty, size) {
            resize(&docker, t, size).await;
        }
        let stdin = o.stdin.then_some(writer);
        spawn_attached(docker, output, stdin, tty, input, pump, Some(exec));
        Ok(())
    }
}

/// Refuses an exec the engine would refuse less clearly.
fn check_exec(o: &ExecOptions) -> Result<()> {
    if o.command.is_empty() || o.command[0].is_empty() {
        return Err(PluginError::invalid("exec needs a command").with_detail("field", "command"));
    }
    if o.command.iter().any(|a| a.contains('\0')) {
        return Err(
            PluginError::invalid("the exec's command contains a NUL byte")
                .with_detail("field", "command"),
        );
    }
    for e in &o.env {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or_default();
        if key.is_empty() || e.contains('\0') {
            return Err(
                PluginError::invalid(format!("exec env {e:?} is not KEY=value"))
                    .with_detail("field", "env"),
            );
        }
    }
    Ok(())
}

/// Runs the pumps of a console or an exec: output (and the exit code of `exec`) in one
/// task, input in another that ends with it.
fn spawn_attached(
    docker: Docker,
    output: EngineOutput,
    stdin: Option<EngineInput>,
    tty: Option<Tty>,
    input: mpsc::Receiver<Input>,
    mut pump: Pump,
    exec: Option<String>,
) {
    // Without standard input or a terminal the stream takes no input: the client's
    // `send` answers false.
    let writer = if stdin.is_some() || tty.is_some() {
        Some(tokio::spawn(pump_input(docker.clone(), input, stdin, tty)))
    } else {
        drop(input);
        drop(stdin);
        None
    };
    let operation = if exec.is_some() { "exec" } else { "attach" };
    tokio::spawn(async move {
        let flow = pump.output(operation, output, Some).await;
        if let Some(w) = &writer {
            w.abort();
        }
        if let (Flow::Ended, Some(exec)) = (flow, exec) {
            let last = match exit_code(&docker, &exec).await {
                Ok(code) => Output::Exit(code),
                Err(e) => Output::Error(e),
            };
            pump.deliver(last).await;
        }
    });
}

/// The exit code of an exec whose output ended (the engine may report it running a
/// moment longer).
async fn exit_code(docker: &Docker, exec: &str) -> Result<i64> {
    let until = tokio::time::Instant::now() + EXIT_WAIT;
    loop {
        let inspected = tokio::time::timeout(SMALL_CALL, docker.inspect_exec(exec))
            .await
            .map_err(|_| {
                PluginError::from(Error::Timeout {
                    operation: "inspect_exec",
                })
            })?
            .map_err(|e| PluginError::from(Error::from_bollard("inspect_exec", e)))?;
        match (inspected.running, inspected.exit_code) {
            (Some(true), _) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (Some(true), _) | (_, None) => {
                return Err(PluginError::backend(
                    "the engine did not tell the exec's exit code",
                ))
            }
            (_, Some(code)) => return Ok(code),
        }
    }
}

/// The logs pump.
async fn logs(docker: Docker, container: String, o: LogsOptions, mut pump: Pump) {
    // The engine's `since` is whole seconds: ask from the second before (with
    // timestamps) and drop what is older here.
    let since_secs = o
        .since
        .map(|s| s.timestamp().clamp(0, i64::from(i32::MAX)) as i32)
        .unwrap_or(0);
    let options = EngineLogsOptions {
        follow: o.follow,
        stdout: o.stdout,
        stderr: o.stderr,
        since: since_secs,
        until: 0,
        timestamps: o.timestamps || o.since.is_some(),
        tail: o.tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
    };
    let engine = Box::pin(docker.logs(&container, Some(options)));
    let mut filter = SinceFilter {
        since: o.since,
        strip: !o.timestamps,
    };
    pump.output("logs", engine, |chunk| filter.apply(chunk))
        .await;
}

/// Drops log lines written before `since` (by the timestamp each line starts with), and
/// strips those timestamps again when the client did not ask for them.
struct SinceFilter {
    since: Option<DateTime<Utc>>,
    strip: bool,
}

impl SinceFilter {
    fn apply(&mut self, chunk: Output) -> Option<Output> {
        let Some(since) = self.since else {
            return Some(chunk);
        };
        let (data, stderr) = match chunk {
            Output::Stdout(d) => (d, false),
            Output::Stderr(d) => (d, true),
            other => return Some(other),
        };
        let mut kept = Vec::with_capacity(data.len());
        for line in data.split_inclusive(|b| *b == b'\n') {
            match split_timestamp(line) {
                Some((at, _)) if at < since => {}
                Some((_, rest)) if self.strip => kept.extend_from_slice(rest),
                // A line without a timestamp (a log line the engine split) goes through.
                _ => kept.extend_from_slice(line),
            }
        }
        match (kept.is_empty(), stderr) {
            (true, _) => None,
            (false, true) => Some(Output::Stderr(kept)),
            (false, false) => Some(Output::Stdout(kept)),
        }
    }
}

/// A log line's leading RFC 3339 timestamp and the rest of the line after its space.
fn split_timestamp(line: &[u8]) -> Option<(DateTime<Utc>, &[u8])> {
    let space = line.iter().take(40).position(|b| *b == b' ')?;
    let text = std::str::from_utf8(&line[..space]).ok()?;
    let at = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    Some((at, &line[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_filter_drops_older_lines_and_strips_timestamps() {
        let since = DateTime::parse_from_rfc3339("2024-01-01T00:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut f = SinceFilter {
            since: Some(since),
            strip: true,
        };
        let chunk = b"2024-01-01T00:00:00.400000000Z a\n2024-01-01T00:00:00.500000000Z b\n2024-01-01T00:00:01.000000000Z c\n";
        assert_eq!(
            f.apply(Output::Stderr(chunk.to_vec())),
            Some(Output::Stderr(b"b\nc\n".to_vec()))
        );
        assert_eq!(
            f.apply(Output::Stdout(
                b"2024-01-01T00:00:00.100000000Z old\n".to_vec()
            )),
            None
        );
        let mut keep = SinceFilter {
            since: Some(since),
            strip: false,
        };
        assert_eq!(
            keep.apply(Output::Stdout(
                b"2024-01-01T00:00:00.900000000Z x\nno stamp\n".to_vec()
            )),
            Some(Output::Stdout(
                b"2024-01-01T00:00:00.900000000Z x\nno stamp\n".to_vec()
            ))
        );
        let mut none = SinceFilter {
            since: None,
            strip: true,
        };
        assert_eq!(
            none.apply(Output::Stdout(b"as is\n".to_vec())),
            Some(Output::Stdout(b"as is\n".to_vec()))
        );
    }

    #[test]
    fn exec_requests_are_checked() {
        let ok = ExecOptions {
            command: vec!["ls".into()],
            env: vec!["A=1".into()],
            ..Default::default()
        };
        assert!(check_exec(&ok).is_ok());
        for bad in [
            ExecOptions::default(),
            ExecOptions {
                command: vec![String::new()],
                ..Default::default()
            },
            ExecOptions {
                command: vec!["ls".into()],
                env: vec!["=1".into()],
                ..Default::default()
            },
            ExecOptions {
                command: vec!["ls".into()],
                env: vec!["A".into()],
                ..Default::default()
            },
        ] {
            assert!(check_exec(&bad).is_err(), "{bad:?}");
        }
    }
}
