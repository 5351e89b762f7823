//! Byte streams against the real engine: logs (follow, tail, since, timestamps,
//! stdout and stderr apart), exec (exit codes, input, a terminal and its resize),
//! the console (a TTY container's shell), the errors of a stream that cannot open, and
//! what closing a stream leaves (the container runs on, the pump ends). The backend is
//! driven in-process; every read has a time limit, so a bug fails rather than hangs.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{backend, request, unique, Cleanup, Engine, FileLock, TestBackend};
use unicompute_plugin_api::stream::{ConsoleOptions, ExecOptions, LogsOptions, TermSize};
use unicompute_plugin_api::{
    Backend, ByteStream, ErrorCode, Input, Output, PluginError, StreamKind, StreamRequest,
};

/// The longest a test waits for one piece of output.
const READ_LIMIT: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What a stream delivered.
#[derive(Debug, Default)]
struct Got {
    out: Vec<u8>,
    err: Vec<u8>,
    exit: Option<i64>,
    errors: Vec<PluginError>,
    ended: bool,
}

impl Got {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.err).into_owned()
    }
}

/// Reads until `done` holds or the stream ends; panics (with what came) when nothing
/// satisfies it within [`READ_LIMIT`].
fn read_until(
    rt: &tokio::runtime::Runtime,
    stream: &ByteStream,
    done: impl Fn(&Got) -> bool,
) -> Got {
    let mut got = Got::default();
    let deadline = Instant::now() + READ_LIMIT;
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = rt.block_on(async { tokio::time::timeout(left, stream.next()).await });
        match next {
            Err(_) => panic!("the stream stalled; it gave {got:?}"),
            Ok(None) => {
                got.ended = true;
                break;
            }
            Ok(Some(Output::Stdout(d))) => got.out.extend(d),
            Ok(Some(Output::Stderr(d))) => got.err.extend(d),
            Ok(Some(Output::Exit(c))) => {
                assert!(got.exit.is_none(), "a second exit: {got:?}");
                got.exit = Some(c);
            }
            Ok(Some(Output::Error(e))) => got.errors.push(e),
        }
    }
    got
}

/// Reads to the end of the stream.
fn read_all(rt: &tokio::runtime::Runtime, stream: &ByteStream) -> Got {
    let got = read_until(rt, stream, |_| false);
    assert!(got.errors.is_empty(), "{got:?}");
    got
}

fn send(rt: &tokio::runtime::Runtime, stream: &ByteStream, input: Input) -> bool {
    rt.block_on(async { tokio::time::timeout(READ_LIMIT, stream.send(input)).await })
        .expect("the plugin did not take input")
}

fn open(t: &TestBackend, id: &str, kind: StreamKind) -> Result<ByteStream, PluginError> {
    t.backend.open_stream(StreamRequest {
        id: id.to_owned(),
        kind,
    })
}

fn logs(o: LogsOptions) -> StreamKind {
    StreamKind::Logs(o)
}

fn exec(command: &[&str]) -> ExecOptions {
    ExecOptions {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Creates and starts an instance running `command`; answers its id.
fn run(t: &TestBackend, clean: &mut Cleanup, prefix: &str, config: serde_json::Value) -> String {
    let name = clean.container(&unique(prefix));
    let mut req = request(&name, config);
    req.start = true;
    t.backend.create(req).unwrap().id
}

fn sh(script: &str) -> serde_json::Value {
    serde_json::json!({"command": ["sh", "-c", script]})
}

fn container_of(t: &TestBackend, id: &str) -> String {
    t.backend.get(id).unwrap().name
}

/// Waits until the instance's container has exited.
fn wait_exited(t: &TestBackend, engine: &Engine, id: &str) {
    let name = container_of(t, id);
    let deadline = Instant::now() + READ_LIMIT;
    while engine
        .inspect(&name)
        .state
        .and_then(|s| s.running)
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "{name} does not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until no pump of the backend runs.
fn wait_pumps_end(t: &TestBackend) {
    let deadline = Instant::now() + READ_LIMIT;
    while t.backend.open_streams() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} stream pumps still run after their clients left",
            t.backend.open_streams()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn running(engine: &Engine, name: &str) -> bool {
    engine
        .inspect(name)
        .state
        .and_then(|s| s.running)
        .unwrap_or(false)
}

#[test]
fn logs_follow_delivers_every_line_in_order_and_closing_ends_the_pump() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let id = run(
        &t,
        &mut clean,
        "counter",
        sh("i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done"),
    );
    let rt = rt();
    let stream = open(
        &t,
        &id,
        logs(LogsOptions {
            follow: true,
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(t.backend.open_streams(), 1);
    let start = Instant::now();
    let mut text = Vec::new();
    while start.elapsed() < Duration::from_millis(2500) {
        let got = rt
            .block_on(async { tokio::time::timeout(READ_LIMIT, stream.next()).await })
            .expect("the follow stalled");
        match got {
            Some(Output::Stdout(d)) => text.extend(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    let text = String::from_utf8(text).unwrap();
    // The last line may be cut by the chunking: only whole lines count.
    let whole = &text[..text.rfind('\n').unwrap() + 1];
    let numbers: Vec<u64> = whole.lines().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.len() > 20, "too few lines: {numbers:?}");
    let expected: Vec<u64> = (0..numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "lines lost, duplicated or out of order");

    // The client leaves: the pump ends, the container runs on.
    drop(stream);
    wait_pumps_end(&t);
    assert!(running(&engine, &container_of(&t, &id)));
}

#[test]
fn logs_tail_since_timestamps_and_the_two_outputs() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let rt = rt();

    // Tail: the last 3 of 10 lines; with follow on an exited container the stream ends
    // after what was written.
    let ten = run(
        &t,
        &mut clean,
        "ten",
        sh("i=1; while [ $i -le 10 ]; do echo $i; i=$((i+1)); done"),
    );
    wait_exited(&t, &engine, &ten);
    for follow in [false, true] {
        let s = open(
            &t,
            &ten,
            logs(LogsOptions {
                tail: Some(3),
                follow,
                ..Default::default()
            }),
        )
        .unwrap();
        let got = read_all(&rt, &s);
        assert_eq!(got.out(), "8\n9\n10\n", "follow {follow}");
        assert!(got.err.is_empty());
    }
    let all = read_all(&rt, &open(&t, &ten, logs(LogsOptions::default())).unwrap());
    assert_eq!(all.out(), "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n");

    // Timestamps: each line is prefixed with its RFC 3339 instant.
    let stamped = read_all(
        &rt,
        &open(
            &t,
            &ten,
            logs(LogsOptions {
                timestamps: true,
                tail: Some(2),
                ..Default::default()
            }),
        )
        .unwrap(),
    );
    let lines: Vec<&str> = stamped
        .out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stamped:?}");
    for (line, n) in lines.iter().zip(["9", "10"]) {
        let (at, rest) = line.split_once(' ').unwrap();
        DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(rest, n);
    }

    // Since, to the nanosecond: a line every 100 ms; from the instant of one line
    // whose second holds earlier lines, exactly that line and those after it.
    let ticker = run(
        &t,
        &mut clean,
        "ticker",
        sh("i=0; while [ $i -lt 25 ]; do echo $i; i=$((i+1)); sleep 0.1; done"),
    );
    wait_exited(&t, &engine, &ticker);
    let stamped = read_all(
        &rt,
        &open(
            &t,
            &ticker,
            logs(LogsOptions {
                timestamps: true,
                ..Default::default()
            }),
        )
        .unwrap(),
    );
    let times: Vec<(DateTime<Utc>, String)> = stamped
        .out()
        .lines()
        .map(|l| {
            let (at, rest) = l.split_once(' ').unwrap();
            (
                DateTime::parse_from_rfc3339(at)
                    .unwrap()
                    .with_timezone(&Utc),
                rest.to_owned(),
            )
        })
        .collect();
    assert_eq!(times.len(), 25);
    let k = (1..times.len())
        .find(|&k| {
            times[k - 1].0.timestamp() == times[k].0.timestamp() && times[k - 1].0 < times[k].0
        })
        .expect("two lines in one second");
    for (since, first) in [
        (times[k].0, k),
        (times[k].0 + chrono::Duration::nanoseconds(1), k + 1),
    ] {
        let got = read_all(
            &rt,
            &open(
                &t,
                &ticker,
                logs(LogsOptions {
                    since: Some(since),
                    ..Default::default()
                }),
            )
            .unwrap(),
        );
        let expected: String = times[first..]
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        assert_eq!(got.out(), expected, "since {since} (line {first})");
        // With timestamps asked for, they stay.
        let got = read_all(
            &rt,
            &open(
                &t,
                &ticker,
                logs(LogsOptions {
                    since: Some(since),
                    timestamps: true,
                    ..Default::default()
                }),
            )
            .unwrap(),
        );
        assert_eq!(got.out().lines().count(), times.len() - first);
        assert!(got.out().lines().all(|l| l.contains("Z ")), "{}", got.out());
    }

    // Standard output and error stay apart; each can be left out.
    let both = run(&t, &mut clean, "outerr", sh("echo out; echo err >&2"));
    wait_exited(&t, &engine, &both);
    let got = read_all(&rt, &open(&t, &both, logs(LogsOptions::default())).unwrap());
    assert_eq!((got.out().as_str(), got.err().as_str()), ("out\n", "err\n"));
    let got = read_all(
        &rt,
        &open(
            &t,
            &both,
            logs(LogsOptions {
                stdout: false,
                ..Default::default()
            }),
        )
        .unwrap(),
    );
    assert_eq!((got.out().as_str(), got.err().as_str()), ("", "err\n"));
    let got = read_all(
        &rt,
        &open(
            &t,
            &both,
            logs(LogsOptions {
                stderr: false,
                ..Default::default()
            }),
        )
        .unwrap(),
    );
    assert_eq!((got.out().as_str(), got.err().as_str()), ("out\n", ""));
    wait_pumps_end(&t);
}

#[test]
fn exec_output_exit_codes_input_and_terminal() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let mut clean = Cleanup::default();
    let rt = rt();
    let id = run(&t, &mut clean, "exec", sh("sleep 1000"));

    // Output apart, then the exit code, then the end.
    let s = open(
        &t,
        &id,
        StreamKind::Exec(exec(&["sh", "-c", "echo o; echo e >&2; exit 3"])),
    )
    .unwrap();
    let got = read_all(&rt, &s);
    assert_eq!((got.out().as_str(), got.err().as_str()), ("o\n", "e\n"));
    assert_eq!(got.exit, Some(3));
    // Without stdin or a terminal the stream takes no input.
    assert!(!send(&rt, &s, Input::Data(b"x".to_vec())));

    // Env, working directory and user.
    let mut o = exec(&["sh", "-c", "echo $FOO; pwd; id -u"]);
    o.env = vec!["FOO=bar".into()];
    o.workdir = Some("/tmp".into());
    o.user = Some("1234".into());
    let got = read_all(&rt, &open(&t, &id, StreamKind::Exec(o)).unwrap());
    assert_eq!(got.out(), "bar\n/tmp\n1234\n");
    assert_eq!(got.exit, Some(0));

    // A command that does not exist: the engine's exit code comes through.
    let got = read_all(
        &rt,
        &open(&t, &id, StreamKind::Exec(exec(&["no-such-command"]))).unwrap(),
    );
    assert!(matches!(got.exit, Some(126 | 127)), "{got:?}");

    // Input: cat echoes it back and ends with the end of input.
    let mut o = exec(&["cat"]);
    o.stdin = true;
    let s = open(&t, &id, StreamKind::Exec(o)).unwrap();
    assert!(send(&rt, &s, Input::Data(b"hello ".to_vec())));
    assert!(send(&rt, &s, Input::Data(b"cat\n".to_vec())));
    let got = read_until(&rt, &s, |g| g.out() == "hello cat\n");
    assert_eq!(got.out(), "hello cat\n");
    assert!(send(&rt, &s, Input::CloseStdin));
    let got = read_all(&rt, &s);
    assert_eq!((got.out.len(), got.exit), (0, Some(0)), "{got:?}");

    // A terminal: its size from the options, then a resize (stty prints rows cols).
    let mut o = exec(&["sh"]);
    o.stdin = true;
    o.tty = true;
    o.size = Some(TermSize { cols: 91, rows: 21 });
    let s = open(&t, &id, StreamKind::Exec(o)).unwrap();
    assert!(send(&rt, &s, Input::Data(b"stty size\n".to_vec())));
    read_until(&rt, &s, |g| g.out().contains("21 91"));
    assert!(send(
        &rt,
        &s,
        Input::Resize(TermSize {
            cols: 100,
            rows: 40
        })
    ));
    assert!(send(&rt, &s, Input::Data(b"stty size\n".to_vec())));
    let got = read_until(&rt, &s, |g| g.out().contains("40 100"));
    assert!(got.err.is_empty(), "a terminal has one output: {got:?}");
    assert!(send(&rt, &s, Input::Data(b"exit 5\n".to_vec())));
    let got = read_all(&rt, &s);
    assert_eq!(got.exit, Some(5), "{got:?}");

    // A client that leaves an exec while nothing is written: its pump ends (cat sees
    // the end of its input); so does a follow of a silent container.
    let mut o = exec(&["cat"]);
    o.stdin = true;
    let s = open(&t, &id, StreamKind::Exec(o)).unwrap();
    drop(s);
    let s = open(
        &t,
        &id,
        logs(LogsOptions {
            follow: true,
            ..Default::default()
        }),
    )
    .unwrap();
    drop(s);
    wait_pumps_end(&t);

    // The backend shutting down ends its streams.
    let s = open(
        &t,
        &id,
        logs(LogsOptions {
            follow: true,
            ..Default::default()
        }),
    )
    .unwrap();
    t.backend.shutdown();
    let got = read_all(&rt, &s);
    assert!(got.ended && got.out.is_empty(), "{got:?}");
    wait_pumps_end(&t);
}

#[test]
fn console_of_a_tty_container_takes_input_resizes_and_detaches() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let engine = Engine::new();
    let mut clean = Cleanup::default();
    let rt = rt();
    let id = run(
        &t,
        &mut clean,
        "console",
        serde_json::json!({"command": ["sh"], "tty": true, "openStdin": true}),
    );
    let inst = t.backend.get(&id).unwrap();
    assert_eq!(inst.config["tty"], true);
    assert_eq!(inst.config["openStdin"], true);
    let marker = unique("m");
    for round in 0..2 {
        let s = open(
            &t,
            &id,
            StreamKind::Console(ConsoleOptions {
                size: Some(TermSize { cols: 77, rows: 19 }),
            }),
        )
        .unwrap();
        // `$((6*7))` is expanded by the shell: the terminal's echo of the line does not
        // match, only the command's output does.
        let line = format!("stty size; echo hello-$((6*7))-{marker}-{round}\n");
        assert!(send(&rt, &s, Input::Data(line.into_bytes())));
        let got = read_until(&rt, &s, |g| {
            g.out().contains(&format!("hello-42-{marker}-{round}"))
        });
        assert!(got.out().contains("19 77"), "{}", got.out());
        assert!(send(
            &rt,
            &s,
            Input::Resize(TermSize {
                cols: 132,
                rows: 43
            })
        ));
        assert!(send(&rt, &s, Input::Data(b"stty size\n".to_vec())));
        read_until(&rt, &s, |g| g.out().contains("43 132"));
        // Closing detaches (the first time by dropping the stream, the second by the
        // end of input, which the engine takes as a detach); the container runs on
        // and can be attached again.
        if round == 1 {
            assert!(send(&rt, &s, Input::CloseStdin));
            assert!(read_all(&rt, &s).ended);
        }
        drop(s);
        wait_pumps_end(&t);
        assert!(running(&engine, &container_of(&t, &id)));
    }
    // The logs of a terminal are all standard output.
    let got = read_all(&rt, &open(&t, &id, logs(LogsOptions::default())).unwrap());
    assert!(
        got.out().contains(&format!("hello-42-{marker}-1")),
        "{got:?}"
    );
    assert!(got.err.is_empty(), "{got:?}");
}

#[test]
fn console_without_open_stdin_shows_output_and_takes_no_input() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let mut clean = Cleanup::default();
    let rt = rt();
    let id = run(
        &t,
        &mut clean,
        "plain",
        sh("i=0; while true; do echo $i; echo e$i >&2; i=$((i+1)); sleep 0.05; done"),
    );
    let s = open(&t, &id, StreamKind::Console(ConsoleOptions::default())).unwrap();
    // Only new output (no logs), on both outputs.
    let got = read_until(&rt, &s, |g| {
        g.out().lines().count() >= 3 && !g.err.is_empty()
    });
    assert!(got.errors.is_empty() && !got.ended, "{got:?}");
    assert!(got.err().starts_with('e'), "{got:?}");
    assert!(!send(&rt, &s, Input::Data(b"ignored\n".to_vec())));
    drop(s);
    wait_pumps_end(&t);
}

#[test]
fn streams_that_cannot_open() {
    let _engine = FileLock::engine_shared();
    let t = backend();
    let mut clean = Cleanup::default();
    let rt = rt();
    let name = clean.container(&unique("stopped"));
    let id = t
        .backend
        .create(request(&name, sh("echo never")))
        .unwrap()
        .id;
    for kind in [
        StreamKind::Console(ConsoleOptions::default()),
        StreamKind::Exec(exec(&["true"])),
    ] {
        let e = open(&t, &id, kind.clone()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidState, "{kind:?}: {e:?}");
        assert!(e.message.contains("not running"), "{e:?}");
    }
    // Logs work in every state: a created container has none.
    let got = read_all(&rt, &open(&t, &id, logs(LogsOptions::default())).unwrap());
    assert!(got.out.is_empty() && got.err.is_empty() && got.ended);

    let e = open(&t, &id, StreamKind::Exec(exec(&[]))).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");

    let unknown = unique("nobody");
    for kind in [
        logs(LogsOptions::default()),
        StreamKind::Console(ConsoleOptions::default()),
        StreamKind::Exec(exec(&["true"])),
    ] {
        let e = open(&t, &unknown, kind.clone()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InstanceNotFound, "{kind:?}: {e:?}");
    }
    assert_eq!(t.backend.open_streams(), 0);
}
