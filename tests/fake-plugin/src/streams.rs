//! The fake backend's streams (interface 1.3), driven by a small runtime of its own.
//!
//! - logs: two lines written at create (`hello from NAME` on stdout, `warn from NAME`
//!   on stderr); with `follow` on a running instance labelled `fake/log-every-ms=N`, a
//!   numbered line `line I` every N ms, until the client leaves; without the label a
//!   follow stays open, quiet, until the client leaves (a thousand idle followers).
//! - console: echoes its input; a resize prints `resized COLSxROWS`.
//! - exec: `echo ARGS...` (stdout), `fail CODE` (stderr `failing`, exit CODE), `cat`
//!   (echoes stdin until its end; at once 0 when asked without input, as a real `cat`
//!   whose stdin is not attached), `yes` (output without end, for limits), `sleep
//!   SECS`, anything else exit 127 with `NAME: not found` on stderr.
//! - label `fake/panic=stream`: the pump panics after the first output (the stream ends
//!   for that client only).

use std::sync::OnceLock;
use std::time::Duration;

use unicompute_plugin_api::stream::{channel, ExecOptions, LogsOptions, StreamEnd};
use unicompute_plugin_api::{ByteStream, Input, Instance, InstanceState, Output, PluginError};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-streams")
            .enable_time()
            .build()
            .expect("the fake plugin's runtime")
    })
}

fn panics(inst: &Instance) -> bool {
    inst.metadata.labels.get("fake/panic").map(String::as_str) == Some("stream")
}

/// Opens a logs stream on `inst`.
pub fn logs(inst: &Instance, o: LogsOptions) -> ByteStream {
    let (stream, end) = channel();
    let mut history = vec![
        (false, format!("hello from {}\n", inst.name)),
        (true, format!("warn from {}\n", inst.name)),
    ];
    if o.since.is_some_and(|s| s > inst.created_at) {
        history.clear();
    }
    history.retain(|(err, _)| if *err { o.stderr } else { o.stdout });
    if let Some(t) = o.tail {
        let skip = history.len().saturating_sub(t as usize);
        history.drain(..skip);
    }
    let stamp = |line: &str| match o.timestamps {
        true => format!(
            "{} {line}",
            inst.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        ),
        false => line.to_owned(),
    };
    let history: Vec<(bool, String)> = history.into_iter().map(|(e, l)| (e, stamp(&l))).collect();
    let every = inst
        .metadata
        .labels
        .get("fake/log-every-ms")
        .and_then(|v| v.parse::<u64>().ok());
    let follow = o.follow && inst.state == InstanceState::Running;
    let panic = panics(inst);
    let out = o.stdout;
    runtime().spawn(async move {
        for (err, line) in history {
            let o = match err {
                true => Output::Stderr(line.into_bytes()),
                false => Output::Stdout(line.into_bytes()),
            };
            if end.send(o).await.is_err() {
                return;
            }
            if panic {
                panic!("fake panic in a stream, as asked by label");
            }
        }
        if !follow {
            return;
        }
        match every {
            Some(ms) if out => {
                let mut tick = tokio::time::interval(Duration::from_millis(ms.max(1)));
                for i in 0u64.. {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = end.closed() => return,
                    }
                    let line = format!("line {i}\n");
                    if end.send(Output::Stdout(line.into_bytes())).await.is_err() {
                        return;
                    }
                }
            }
            _ => end.closed().await,
        }
    });
    stream
}

/// Opens the console of `inst`: an echo.
pub fn console(_inst: &Instance) -> ByteStream {
    let (stream, mut end) = channel();
    runtime().spawn(async move {
        while let Some(input) = end.recv().await {
            let out = match input {
                Input::Data(d) => d,
                Input::Resize(s) => format!("resized {}x{}\r\n", s.cols, s.rows).into_bytes(),
                Input::CloseStdin => continue,
            };
            if end.send(Output::Stdout(out)).await.is_err() {
                return;
            }
        }
    });
    stream
}

/// Runs a fake command in `inst`.
pub fn exec(inst: &Instance, o: ExecOptions) -> Result<ByteStream, PluginError> {
    if o.command.is_empty() {
        return Err(PluginError::invalid("an exec needs a command"));
    }
    let (stream, end) = channel();
    let panic = panics(inst);
    runtime().spawn(async move {
        let _ = run(end, o, panic).await;
    });
    Ok(stream)
}

async fn run(mut end: StreamEnd, o: ExecOptions, panic: bool) -> Result<(), ()> {
    let args = &o.command[1..];
    let err = |e| {
        let _ = e;
    };
    let code = match o.command[0].as_str() {
        "echo" => {
            let line = format!("{}\n", args.join(" "));
            end.send(Output::Stdout(line.into_bytes()))
                .await
                .map_err(err)?;
            if panic {
                panic!("fake panic in a stream, as asked by label");
            }
            0
        }
        "fail" => {
            end.send(Output::Stderr(b"failing\n".to_vec()))
                .await
                .map_err(err)?;
            args.first().and_then(|c| c.parse().ok()).unwrap_or(1)
        }
        "cat" if !o.stdin => 0,
        "cat" => {
            while let Some(input) = end.recv().await {
                match input {
                    Input::Data(d) => end.send(Output::Stdout(d)).await.map_err(err)?,
                    Input::CloseStdin => break,
                    Input::Resize(_) => {}
                }
            }
            0
        }
        "yes" => loop {
            end.send(Output::Stdout(b"y\n".repeat(4096)))
                .await
                .map_err(err)?;
        },
        "sleep" => {
            let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(1.0);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = end.closed() => return Err(()),
            }
            0
        }
        other => {
            let msg = format!("{other}: not found\n");
            end.send(Output::Stderr(msg.into_bytes()))
                .await
                .map_err(err)?;
            127
        }
    };
    end.send(Output::Exit(code)).await.map_err(err)
}
