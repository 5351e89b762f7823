//! Byte streams of a kvm instance (interface 1.3): its logs, its console, and exec
//! through the QEMU guest agent.
//!
//! - **Logs** are the serial console's output, which virtlogd keeps in the
//!   instance's console log file (`<serial><log file=.. append='on'/>`, see
//!   [`crate::console_log`]) across the guest's runs: readable in every state. `tail`
//!   is the last N lines of the file, exactly; `follow` goes on with what is appended
//!   until the client leaves. Every follower is a task of one small runtime of the
//!   plugin ([`runtime`], one worker thread) that looks at the file's size every
//!   [`FOLLOW_POLL`]: a thousand followers are a thousand parked tasks, not a thousand
//!   threads. The file has no timestamps: `since` and `timestamps` are refused
//!   (`OPERATION_NOT_SUPPORTED`). A domain without a `<log>` (made before console logs
//!   were kept) or on a remote libvirt (the file is on that host) has no logs here:
//!   `OPERATION_NOT_SUPPORTED` too, saying which. A domain that never ran has no file
//!   yet: its logs are empty.
//! - **Console** is libvirt's console stream (`virDomainOpenConsole`) of the serial
//!   port, opened by force (the host admits one writer; a console opened later takes
//!   it over and the earlier one ends). Each console has its own libvirt connection
//!   and one thread that moves bytes both ways through a non-blocking libvirt stream
//!   (a console is interactive and rare); closing it aborts the stream, which frees
//!   the console for the next one.
//! - **Exec** runs the command through the guest agent (`guest-exec`, then
//!   `guest-exec-status` until it exits) when the domain has an agent channel (new
//!   domains have one unless `config.guestAgent` is `false`) and the agent answers;
//!   else `OPERATION_NOT_SUPPORTED`, saying why. The client's input is collected until
//!   it closes it and handed over as `input-data`. The agent gives the output when the
//!   command has exited, and runs it without a terminal, as the agent's user, in the
//!   agent's directory; given an environment, it passes only that one (a `PATH` is
//!   added when the client names none). A program the agent cannot start (it does
//!   not exist) is an error, not an exit code: the agent has no process to report.

use std::fs::File;
use std::io;
use std::os::raw::c_char;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::runtime::Runtime;
use unicompute_plugin_api::stream::{
    channel, ByteStream, ExecOptions, Input, LogsOptions, Output, StreamEnd, StreamKind,
    StreamRequest, MAX_CHUNK,
};
use unicompute_plugin_api::{ErrorCode, PluginError};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::stream::Stream;
use virt::sys;

use crate::backend::Inner;
use crate::error::{lv, KvmError, LibvirtOp};
use crate::record::is_active_state;
use crate::storage;
use crate::xml::GUEST_AGENT_CHANNEL;

type PResult<T> = std::result::Result<T, PluginError>;

/// How often a log follower looks at the file's size.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How long a console waits when neither side had anything.
const CONSOLE_IDLE: Duration = Duration::from_millis(10);
/// How often an exec asks the agent whether the command has exited.
const EXEC_POLL: Duration = Duration::from_millis(100);
/// How long the guest agent may take to answer one command (seconds).
const AGENT_TIMEOUT: i32 = 10;
/// How many more times a ping is asked (a second apart) when the agent's port is
/// between openers or not open yet: an agent that has just started may take a few
/// seconds to open it on a loaded host (seen: more than 3 s under a CI run).
const PING_RETRIES: usize = 10;

/// Whether libvirt's error says the agent's port closed or is not open yet (rather
/// than that the agent is slow or absent).
fn agent_flapped(message: &str) -> bool {
    message.contains("disappeared") || message.contains("not connected")
}

/// How long the guest agent may take to answer the ping before an exec (seconds).
const PING_TIMEOUT: i32 = 5;

/// The runtime of the log followers: one worker thread, timers; started on first use.
fn runtime() -> PResult<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kvm-streams")
            .enable_time()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| PluginError::internal(format!("cannot start the kvm stream runtime: {e}")))
}

/// `OPERATION_NOT_SUPPORTED` for `operation`, with why.
fn unsupported(operation: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::OperationNotSupported, message).with_detail("operation", operation)
}

impl Inner {
    pub(crate) fn open_stream(&self, request: StreamRequest) -> PResult<ByteStream> {
        let id = request.id;
        match request.kind {
            StreamKind::Logs(options) => self.open_logs(&id, options),
            StreamKind::Console(_) => self.open_console(&id),
            StreamKind::Exec(options) => self.open_exec(&id, options),
        }
    }

    // ---- logs -------------------------------------------------------------------

    fn open_logs(&self, id: &str, options: LogsOptions) -> PResult<ByteStream> {
        if options.since.is_some() || options.timestamps {
            return Err(unsupported(
                "logs",
                "the serial console log of a kvm instance has no timestamps (since and timestamps are not supported)",
            ));
        }
        let conn = self.connect()?;
        let found = self.find(&conn, id)?;
        let running = is_active_state(self.state(&found)?);
        let Some(file) = found.doc.console_log() else {
            return Err(unsupported(
                "logs",
                format!("instance {id} keeps no serial console log (it was created before console logs were kept)"),
            ));
        };
        if !storage::uri_is_local(&self.config.uri) {
            return Err(unsupported(
                "logs",
                "the serial console log of an instance on a remote libvirt host is kept on that host",
            ));
        }
        let rt = runtime()?;
        let (stream, end) = channel();
        if !options.stdout {
            // The serial console is standard output: nothing else to send.
            return Ok(stream);
        }
        let follower = Follower {
            path: PathBuf::from(file),
            tail: options.tail,
            // A domain that is not running appends nothing: the stream ends after
            // what the file holds now.
            follow: options.follow && running,
        };
        rt.spawn(follower.run(end));
        Ok(stream)
    }

    // ---- console ----------------------------------------------------------------

    fn open_console(&self, id: &str) -> PResult<ByteStream> {
        let conn = self.connect()?;
        let found = self.find(&conn, id)?;
        let state = self.state(&found)?;
        if !is_active_state(state) {
            return Err(KvmError::InvalidState(format!(
                "instance {id} is not running ({}): it has no console",
                state.as_str()
            ))
            .into());
        }
        let console = Console::open(&self.config.uri, &found.doc.uuid)?;
        let (stream, end) = channel();
        std::thread::Builder::new()
            .name("kvm-console".into())
            .spawn(move || console.run(end))
            .map_err(|e| PluginError::internal(format!("cannot start a console thread: {e}")))?;
        tracing::info!(instance = %id, "console opened");
        Ok(stream)
    }

    // ---- exec -------------------------------------------------------------------

    fn open_exec(&self, id: &str, options: ExecOptions) -> PResult<ByteStream> {
        if options.command.is_empty() || options.command[0].is_empty() {
            return Err(PluginError::invalid("exec needs a command"));
        }
        let conn = self.connect()?;
        let found = self.find(&conn, id)?;
        let state = self.state(&found)?;
        if !is_active_state(state) {
            return Err(KvmError::InvalidState(format!(
                "instance {id} is not running ({}): cannot exec in it",
                state.as_str()
            ))
            .into());
        }
        if !found.doc.has_guest_agent() {
            return Err(unsupported(
                "exec",
                format!("exec needs the qemu guest agent: instance {id} has no guest agent channel ({GUEST_AGENT_CHANNEL}) in its domain (it was created with guestAgent false, or before the plugin added the channel)"),
            ));
        }
        if options.tty {
            return Err(unsupported(
                "exec",
                "the qemu guest agent runs commands without a terminal (tty is not supported)",
            ));
        }
        if options.user.is_some() || options.workdir.is_some() {
            return Err(unsupported(
                "exec",
                "the qemu guest agent runs commands as its own user in its own directory (user and workdir are not supported)",
            ));
        }
        // The ping is asked again (a few times, a second apart) when the agent's port
        // is between two openers (an agent restarting closes and opens it): only a
        // ping, which runs nothing, is ever repeated.
        let mut ping = agent(
            &found.dom,
            &serde_json::json!({"execute": "guest-ping"}),
            PING_TIMEOUT,
        );
        for _ in 0..PING_RETRIES {
            match &ping {
                Err(e) if agent_flapped(&e.message) => {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    ping = agent(
                        &found.dom,
                        &serde_json::json!({"execute": "guest-ping"}),
                        PING_TIMEOUT,
                    );
                }
                _ => break,
            }
        }
        ping.map_err(|e| {
            unsupported(
                "exec",
                format!("exec needs the qemu guest agent: the agent of instance {id} did not answer ({})", e.message),
            )
        })?;
        let (stream, end) = channel();
        let dom = found.dom;
        std::thread::Builder::new()
            .name("kvm-exec".into())
            .spawn(move || exec(&dom, options, end))
            .map_err(|e| PluginError::internal(format!("cannot start an exec thread: {e}")))?;
        Ok(stream)
    }
}

// ---- logs: the follower ------------------------------------------------------

/// One logs stream: what it sends of the file, and whether it goes on.
struct Follower {
    path: PathBuf,
    tail: Option<u64>,
    follow: bool,
}

/// Why a pump stopped early.
enum Halt {
    /// The client is gone.
    Closed,
    /// Reading failed: the client is told.
    Failed(PluginError),
}

impl From<io::Error> for Halt {
    fn from(e: io::Error) -> Self {
        Halt::Failed(PluginError::backend(format!(
            "reading the serial console log failed: {e}"
        )))
    }
}

/// The identity of a file (device, inode): a rotated log is another file.
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// The file's metadata; `None` when there is no file (yet).
fn stat(path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Follower {
    async fn run(self, end: StreamEnd) {
        if let Err(Halt::Failed(e)) = self.pump(&end).await {
            let _ = end.send(Output::Error(e)).await;
        }
    }

    async fn pump(&self, end: &StreamEnd) -> std::result::Result<(), Halt> {
        let meta = stat(&self.path)?;
        let mut ident = meta.as_ref().map(identity);
        let len = meta.map_or(0, |m| m.len());
        let start = match self.tail {
            Some(n) => tail_offset(&self.path, n, len)?,
            None => 0,
        };
        let mut offset = copy(&self.path, start, len, end).await?;
        if !self.follow {
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = end.closed() => return Err(Halt::Closed),
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            // Gone (the instance was deleted, or virtlogd is rotating it): wait for it.
            let Some(meta) = stat(&self.path)? else {
                continue;
            };
            // Another file (rotated: virtlogd made a new one) or a shorter one
            // (truncated): from its start.
            if ident != Some(identity(&meta)) || meta.len() < offset {
                ident = Some(identity(&meta));
                offset = 0;
            }
            if meta.len() > offset {
                offset = copy(&self.path, offset, meta.len(), end).await?;
            }
        }
    }
}

/// Sends the bytes of `path` from `from` up to `to` in chunks of at most
/// [`MAX_CHUNK`]; answers where it stopped (earlier when the file is shorter).
async fn copy(path: &Path, from: u64, to: u64, end: &StreamEnd) -> std::result::Result<u64, Halt> {
    if from >= to {
        return Ok(from);
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(from),
        Err(e) => return Err(e.into()),
    };
    let mut offset = from;
    let mut buf = vec![0u8; MAX_CHUNK];
    while offset < to {
        let want = usize::try_from(to - offset)
            .unwrap_or(MAX_CHUNK)
            .min(MAX_CHUNK);
        let n = file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        end.send(Output::Stdout(buf[..n].to_vec()))
            .await
            .map_err(|_| Halt::Closed)?;
    }
    Ok(offset)
}

/// Where the last `n` lines of the first `len` bytes of `path` begin. A line ends
/// at `\n`; a last line without one counts as a line; the final `\n` of the file
/// starts no line. A missing file is empty.
pub fn tail_offset(path: &Path, n: u64, len: u64) -> io::Result<u64> {
    if n == 0 || len == 0 {
        return Ok(len);
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut pos = len;
    let mut newlines = 0;
    while pos > 0 {
        let start = pos.saturating_sub(MAX_CHUNK as u64);
        let chunk = &mut buf[..(pos - start) as usize];
        file.read_exact_at(chunk, start)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *b == b'\n' && at != len - 1 {
                newlines += 1;
                if newlines == n {
                    return Ok(at + 1);
                }
            }
        }
        pos = start;
    }
    Ok(0)
}

// ---- console -------------------------------------------------------------------

/// An open console: its own connection and the libvirt stream of the serial port.
struct Console {
    stream: Stream,
    // Dropped after the stream (fields drop in order): closes the connection.
    _conn: Connect,
}

/// How a console ended.
enum ConsoleEnd {
    /// The client left.
    Closed,
    /// libvirt ended the stream: the domain stopped, or another console took it.
    Eof,
    /// The stream failed.
    Failed(PluginError),
}

/// The error libvirt left for the last failed call on this thread.
fn last_error(op: LibvirtOp) -> PluginError {
    KvmError::Libvirt {
        op,
        source: virt::error::Error::last_error(),
    }
    .into()
}

/// A console's stream failed: most often another console took it over (libvirt
/// ends the earlier one's stream with an I/O failure).
fn console_lost() -> PluginError {
    let cause = virt::error::Error::last_error();
    PluginError::backend(format!(
        "the console was closed by libvirt (another console took it over, or the connection failed): {}",
        unicompute_plugin_api::error::scrub_paths(cause.message())
    ))
    .with_detail("libvirtCode", cause.code().to_raw())
}

impl Console {
    fn open(uri: &str, uuid: &str) -> PResult<Console> {
        crate::client::init_libvirt();
        let conn = Connect::open(Some(uri)).map_err(|source| KvmError::Unavailable {
            uri: uri.to_owned(),
            source,
        })?;
        let dom = conn
            .lookup_domain_by_uuid_string(uuid)
            .map_err(lv(LibvirtOp::OpenConsole))?;
        // Non-blocking: a blocked receive would hold the connection's lock and keep
        // the client's input waiting. libvirt's event loop (crate::client) fills the
        // stream's queue.
        let stream =
            Stream::new(&conn, sys::VIR_STREAM_NONBLOCK).map_err(lv(LibvirtOp::OpenConsole))?;
        dom.open_console(None, &stream, sys::VIR_DOMAIN_CONSOLE_FORCE)
            .map_err(lv(LibvirtOp::OpenConsole))?;
        Ok(Console {
            stream,
            _conn: conn,
        })
    }

    /// Moves bytes both ways until the client leaves or libvirt ends the stream,
    /// then releases the console.
    ///
    /// Input: [`Input::Data`] is written to the serial line. [`Input::Resize`] is
    /// ignored: a serial line has no window size to tell the guest (a shell there
    /// reads its size with `stty`/`resize` itself). [`Input::CloseStdin`] is ignored
    /// too: a serial line has no end of input.
    fn run(self, mut end: StreamEnd) {
        let ended = self.pump(&mut end);
        let Console { stream, _conn } = self;
        match ended {
            ConsoleEnd::Eof => {
                let _ = stream.finish();
            }
            ConsoleEnd::Closed => {
                let _ = stream.abort();
            }
            ConsoleEnd::Failed(e) => {
                let _ = stream.abort();
                let _ = end.blocking_send(Output::Error(e));
            }
        }
        tracing::debug!("console closed");
    }

    fn pump(&self, end: &mut StreamEnd) -> ConsoleEnd {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let mut idle = true;
            loop {
                match end.try_recv() {
                    Ok(Some(Input::Data(data))) => {
                        idle = false;
                        if let Err(e) = self.send_all(&data, end) {
                            return e;
                        }
                    }
                    Ok(Some(Input::Resize(_) | Input::CloseStdin)) => {}
                    Ok(None) => break,
                    Err(_) => return ConsoleEnd::Closed,
                }
            }
            // SAFETY: the stream is alive (owned by self); the buffer is ours and its
            // length is passed.
            let n = unsafe {
                sys::virStreamRecv(
                    self.stream.as_ptr(),
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len(),
                )
            };
            match n {
                n if n > 0 => {
                    idle = false;
                    if end
                        .blocking_send(Output::Stdout(buf[..n as usize].to_vec()))
                        .is_err()
                    {
                        return ConsoleEnd::Closed;
                    }
                }
                0 => return ConsoleEnd::Eof,
                -2 => {}
                // What the stream of a console that another one took over gets.
                _ => return ConsoleEnd::Failed(console_lost()),
            }
            if idle {
                if end.is_closed() {
                    return ConsoleEnd::Closed;
                }
                std::thread::sleep(CONSOLE_IDLE);
            }
        }
    }

    /// Writes all of `data` to the console, waiting while libvirt's side is full.
    fn send_all(&self, mut data: &[u8], end: &StreamEnd) -> std::result::Result<(), ConsoleEnd> {
        while !data.is_empty() {
            // SAFETY: as in `pump`; libvirt only reads `data`.
            let n = unsafe {
                sys::virStreamSend(
                    self.stream.as_ptr(),
                    data.as_ptr() as *const c_char,
                    data.len(),
                )
            };
            match n {
                n if n > 0 => data = &data[n as usize..],
                -2 => {
                    if end.is_closed() {
                        return Err(ConsoleEnd::Closed);
                    }
                    std::thread::sleep(CONSOLE_IDLE);
                }
                _ => return Err(ConsoleEnd::Failed(last_error(LibvirtOp::OpenConsole))),
            }
        }
        Ok(())
    }
}

// ---- exec ----------------------------------------------------------------------

/// A guest agent command and its `return`.
fn agent(dom: &Domain, command: &serde_json::Value, timeout: i32) -> PResult<serde_json::Value> {
    let reply = dom
        .qemu_agent_command(&command.to_string(), timeout, 0)
        .map_err(|e| PluginError::backend(format!("the guest agent failed: {}", e.message())))?;
    let mut reply: serde_json::Value = serde_json::from_str(&reply).map_err(|e| {
        PluginError::backend(format!(
            "the guest agent answered something unreadable: {e}"
        ))
    })?;
    if let Some(error) = reply.get("error") {
        return Err(PluginError::backend(format!(
            "the guest agent refused: {}",
            error
                .get("desc")
                .and_then(|d| d.as_str())
                .unwrap_or("no reason given")
        )));
    }
    Ok(reply
        .get_mut("return")
        .map(serde_json::Value::take)
        .unwrap_or_default())
}

/// The `PATH` given to a command whose client sets an environment without one: the
/// agent passes only the given variables (qemu-ga replaces its own environment), and
/// the API's `env` adds to the environment.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `env` with [`DEFAULT_PATH`] first when it sets no `PATH`.
fn with_path(env: Vec<String>) -> Vec<String> {
    if env.iter().any(|e| e.starts_with("PATH=")) {
        return env;
    }
    std::iter::once(DEFAULT_PATH.to_owned())
        .chain(env)
        .collect()
}

/// Runs one exec: the client's input first (until it closes it) when `stdin`, then
/// `guest-exec`, then `guest-exec-status` until the command exits; its output, then
/// its exit code. When the client leaves, the command is left to finish in the guest
/// (the agent cannot stop it).
fn exec(dom: &Domain, options: ExecOptions, mut end: StreamEnd) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut input = Vec::new();
    if options.stdin {
        loop {
            match end.blocking_recv() {
                Some(Input::Data(d)) => input.extend_from_slice(&d),
                Some(Input::Resize(_)) => {}
                Some(Input::CloseStdin) => break,
                None => return,
            }
        }
    }
    let mut args = serde_json::json!({
        "path": options.command[0],
        "arg": options.command[1..],
        "capture-output": true,
    });
    if !options.env.is_empty() {
        args["env"] = serde_json::json!(with_path(options.env));
    }
    if options.stdin {
        args["input-data"] = serde_json::json!(b64.encode(&input));
    }
    let fail = |end: &StreamEnd, e: PluginError| {
        let _ = end.blocking_send(Output::Error(e));
    };
    let pid = match agent(
        dom,
        &serde_json::json!({"execute": "guest-exec", "arguments": args}),
        AGENT_TIMEOUT,
    ) {
        Ok(r) => match r.get("pid").and_then(|p| p.as_i64()) {
            Some(pid) => pid,
            None => {
                return fail(
                    &end,
                    PluginError::backend("the guest agent answered guest-exec without a pid"),
                )
            }
        },
        Err(e) => {
            return fail(
                &end,
                PluginError::backend(format!(
                    "the guest agent could not start {}: {}",
                    options.command[0], e.message
                )),
            )
        }
    };
    let started = Instant::now();
    let status = loop {
        if end.is_closed() {
            tracing::debug!(pid, "exec client left; the command runs on in the guest");
            return;
        }
        match agent(
            dom,
            &serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
            AGENT_TIMEOUT,
        ) {
            Ok(s) if s.get("exited").and_then(|e| e.as_bool()) == Some(true) => break s,
            Ok(_) => std::thread::sleep(EXEC_POLL),
            Err(e) => return fail(&end, e),
        }
    };
    tracing::debug!(
        pid,
        took_ms = started.elapsed().as_millis() as u64,
        "exec ended"
    );
    for (field, make) in [
        ("out-data", Output::Stdout as fn(Vec<u8>) -> Output),
        ("err-data", Output::Stderr),
    ] {
        if let Some(data) = status.get(field).and_then(|d| d.as_str()) {
            match b64.decode(data) {
                Ok(bytes) if !bytes.is_empty() => {
                    if end.blocking_send(make(bytes)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    return fail(
                        &end,
                        PluginError::backend(format!(
                            "the guest agent's {field} is not base64: {e}"
                        )),
                    )
                }
            }
        }
    }
    // A signal ends it as a shell reports it: 128 + the signal.
    let code = match (
        status.get("exitcode").and_then(|c| c.as_i64()),
        status.get("signal").and_then(|s| s.as_i64()),
    ) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    };
    let _ = end.blocking_send(Output::Exit(code));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_without_path_gets_one() {
        assert_eq!(with_path(vec!["A=1".into()]), [DEFAULT_PATH, "A=1"]);
        let own = vec!["PATH=/opt".to_owned(), "A=1".to_owned()];
        assert_eq!(with_path(own.clone()), own);
    }

    fn tail_of(text: &[u8], n: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, text).unwrap();
        let at = tail_offset(&path, n, text.len() as u64).unwrap();
        text[at as usize..].to_vec()
    }

    #[test]
    fn tail_is_the_last_lines_exactly() {
        let text = b"one\r\ntwo\r\nthree\r\n";
        assert_eq!(tail_of(text, 0), b"");
        assert_eq!(tail_of(text, 1), b"three\r\n");
        assert_eq!(tail_of(text, 2), b"two\r\nthree\r\n");
        assert_eq!(tail_of(text, 3), text);
        assert_eq!(tail_of(text, 10), text);
        // A last line without its newline is a line.
        assert_eq!(tail_of(b"a\nb\nc", 1), b"c");
        assert_eq!(tail_of(b"a\nb\nc", 2), b"b\nc");
        // Empty lines count.
        assert_eq!(tail_of(b"a\n\n\n", 2), b"\n\n");
        assert_eq!(tail_of(b"", 3), b"");
        assert_eq!(tail_of(b"\n", 1), b"\n");
        // Across the read chunks.
        let mut long = Vec::new();
        for i in 0..20_000 {
            long.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        let want: Vec<u8> = (19_000..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        assert_eq!(tail_of(&long, 1000), want);
        assert_eq!(tail_of(&long, 20_000), long);
        // A missing file is empty.
        assert_eq!(
            tail_offset(Path::new("/nonexistent/uc-log"), 3, 0).unwrap(),
            0
        );
    }

    async fn read_until(stream: &ByteStream, got: &mut Vec<u8>, want: &[u8]) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !got.windows(want.len()).any(|w| w == want) {
                match stream.next().await {
                    Some(Output::Stdout(d)) => got.extend(d),
                    other => panic!("{other:?}"),
                }
            }
        })
        .await
        .expect("in time");
    }

    #[tokio::test]
    async fn a_follower_sends_appends_and_starts_again_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x-serial.log");
        std::fs::write(&path, b"old 1\nold 2\n").unwrap();
        let (stream, end) = channel();
        let follower = Follower {
            path: path.clone(),
            tail: Some(1),
            follow: true,
        };
        let task = tokio::spawn(follower.run(end));
        let mut got = Vec::new();
        read_until(&stream, &mut got, b"old 2\n").await;
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"new 3\n")
            .unwrap();
        read_until(&stream, &mut got, b"new 3\n").await;
        assert_eq!(got, b"old 2\nnew 3\n");
        // Truncated, then written again: from the start of the new content.
        std::fs::write(&path, b"").unwrap();
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        std::fs::write(&path, b"after\n").unwrap();
        read_until(&stream, &mut got, b"after\n").await;
        assert_eq!(got, b"old 2\nnew 3\nafter\n");
        // The client leaves: the task ends.
        drop(stream);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the follower ends when its client leaves")
            .unwrap();
    }
}
