//! `uc logs`, `uc exec` and `uc console`: an instance's streams.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use unicompute_client::{Client, Error, ExecRequest, LogsQuery, TermEvent, Terminal};

use crate::{exit, exit_on_sigint, report, term, ConsoleArgs, ExecArgs, Failure, LogsArgs, Output};

type R = Result<(), Failure>;

/// The key that leaves a console: Ctrl-] (as telnet, virsh and `incus console`).
const DETACH: u8 = 0x1d;

/// How long a console with a piped input that has ended stays to show the answers.
const QUIET: Duration = Duration::from_secs(1);

/// `--tail`: a number of lines, or `all`.
pub fn parse_tail(s: &str) -> Result<String, String> {
    if s == "all" || s.parse::<u64>().is_ok() {
        Ok(s.to_owned())
    } else {
        Err(format!("'{s}' is neither a number of lines nor 'all'"))
    }
}

/// `--since`: an RFC 3339 instant and epoch seconds go as they are; a duration
/// (`90s`, `10m`, `1h30m`, `2d`) is that long ago, in epoch seconds.
pub fn since(s: &str, now: i64) -> String {
    let mut total = 0i64;
    let mut digits = String::new();
    let mut units = 0;
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return s.to_owned(),
        };
        let Ok(n) = digits.parse::<i64>() else {
            return s.to_owned();
        };
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
        units += 1;
    }
    if units == 0 || !digits.is_empty() {
        return s.to_owned();
    }
    (now - total).max(0).to_string()
}

pub fn logs(c: &Client, a: &LogsArgs) -> R {
    let id = c.resolve(&a.name)?.id;
    let q = LogsQuery {
        follow: a.follow,
        tail: a.tail.as_deref().and_then(|t| t.parse().ok()),
        since: a
            .since
            .as_deref()
            .map(|s| since(s, chrono::Utc::now().timestamp())),
        timestamps: a.timestamps,
        stream: match (a.stdout, a.stderr) {
            (true, false) => Some("stdout".into()),
            (false, true) => Some("stderr".into()),
            _ => None,
        },
    };
    let mut body = c.logs(&id, &q)?;
    // Ctrl-C ends a follow (or a long read) with 130; what came is already out.
    exit_on_sigint(None);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Connect {
                    url: c.url().to_owned(),
                    message: format!("the logs stream broke: {e}"),
                }
                .into())
            }
        };
        // A closed pipe (`uc logs x | head -1`) ends the process quietly by SIGPIPE
        // (its default disposition, set in main); any other write error is reported.
        if let Err(e) = out.write_all(&buf[..n]).and_then(|()| out.flush()) {
            eprintln!("Error: writing the logs: {e}");
            return Err(Failure::Printed(exit::OTHER));
        }
    }
}

/// An exit status as a process can end with: 0 to 255 as they are, anything else
/// (a negative or unknown status) 1.
fn status_code(code: i64) -> u8 {
    u8::try_from(code).unwrap_or(exit::OTHER)
}

fn ended(code: u8) -> R {
    match code {
        0 => Ok(()),
        c => Err(Failure::Printed(c)),
    }
}

pub fn exec(c: &Client, a: &ExecArgs, out: Output) -> R {
    let inst = c.resolve(&a.name)?;
    let mut req = ExecRequest {
        command: a.command.clone(),
        env: a.env.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        stdin: None,
        timeout: None,
        attach_stdin: None,
    };
    if a.interactive || a.tty {
        req.attach_stdin = Some(a.interactive);
        return exec_interactive(c, &inst.id, &req, a);
    }
    // As `docker exec` without -i: the command gets no input.
    req.timeout = a.timeout;
    let r = c.exec(&inst.id, &req)?;
    if out.structured() {
        crate::cmd::print_value(
            out,
            &json!({
                "exitCode": r.exit_code,
                "stdout": r.stdout,
                "stderr": r.stderr,
                "truncated": r.truncated,
                "timedOut": r.timed_out,
            }),
        );
    } else {
        let _ = std::io::stdout().write_all(r.stdout.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(r.stderr.as_bytes());
    }
    if r.truncated {
        eprintln!(
            "Warning: the output was cut at the server's limit (server.exec_output_limit_bytes)"
        );
    }
    match r.exit_code {
        Some(code) if !r.timed_out => ended(status_code(code)),
        _ => {
            let after = a
                .timeout
                .map_or("the server's timeout".to_owned(), |t| format!("{t} s"));
            eprintln!("Error: the command did not end within {after}; the server stopped waiting (exit 124)");
            Err(Failure::Printed(exit::TIMED_OUT))
        }
    }
}

fn exec_interactive(c: &Client, id: &str, req: &ExecRequest, a: &ExecArgs) -> R {
    let stdin_tty = term::stdin_is_tty();
    let size = if a.tty { term::size() } else { None };
    let mut t = c.exec_interactive(id, req, size)?;
    let session = Session {
        console: false,
        read_input: a.interactive,
        resize: a.tty,
        timeout: a.timeout.map(Duration::from_secs),
    };
    // Raw mode as docker: a terminal asked (-t) for input from a terminal (-i).
    let end = with_terminal(a.tty && a.interactive && stdin_tty, || session.pump(&mut t));
    t.close();
    match end {
        End::Exit(code) => ended(status_code(code)),
        End::TimedOut => {
            eprintln!(
                "Error: the command did not end within {} s; uc stopped waiting (exit 124)",
                a.timeout.unwrap_or_default()
            );
            Err(Failure::Printed(exit::TIMED_OUT))
        }
        End::Failed(e) => Err(Failure::Printed(report(&e, c.has_token()))),
        End::OutputClosed => Err(Failure::Printed(exit::OTHER)),
        End::Closed | End::Detached | End::Quiet => {
            eprintln!("Error: the session ended before the command did");
            Err(Failure::Printed(exit::OTHER))
        }
    }
}

pub fn console(c: &Client, a: &ConsoleArgs) -> R {
    let inst = c.resolve(&a.name)?;
    let stdin_tty = term::stdin_is_tty();
    let size = term::size();
    let mut t = match c.console(&inst.id, a.force, size) {
        Ok(t) => t,
        Err(e) => {
            let code = report(&e, c.has_token());
            if e.code() == Some("CONSOLE_IN_USE") {
                eprintln!(
                    "(another client holds the console; take it over with: uc console --force {})",
                    a.name
                );
            }
            return Err(Failure::Printed(code));
        }
    };
    eprintln!(
        "Connected to the console of {}; Ctrl-] to detach",
        inst.name
    );
    let session = Session {
        console: true,
        read_input: true,
        resize: true,
        timeout: None,
    };
    let end = with_terminal(stdin_tty, || session.pump(&mut t));
    t.close();
    match end {
        End::Detached => {
            if stdin_tty {
                eprintln!("\nDetached from the console of {}", inst.name);
            }
            Ok(())
        }
        End::Quiet | End::Closed | End::Exit(_) => Ok(()),
        End::Failed(e) => {
            let code = report(&e, c.has_token());
            Err(Failure::Printed(code))
        }
        End::OutputClosed => Err(Failure::Printed(exit::OTHER)),
        End::TimedOut => Err(Failure::Printed(exit::TIMED_OUT)),
    }
}

/// Runs `f` with the handlers of a session installed and, when `raw`, the terminal
/// in raw mode (restored when `f` returns, panics or a signal ends the process).
fn with_terminal(raw: bool, f: impl FnOnce() -> End) -> End {
    term::install_handlers();
    let guard = if raw {
        match term::RawMode::enter() {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("Warning: cannot put the terminal in raw mode: {e}");
                None
            }
        }
    } else {
        None
    };
    let end = f();
    drop(guard);
    end
}

/// How a session ended.
enum End {
    /// The command ended with this status.
    Exit(i64),
    /// Ctrl-] on a console.
    Detached,
    /// The input ended and the console has been quiet since.
    Quiet,
    /// The server closed the session.
    Closed,
    /// The server ended the session with an error (a console taken over).
    Failed(Error),
    /// `--timeout` passed.
    TimedOut,
    /// Standard output was closed.
    OutputClosed,
}

struct Session {
    /// A console: Ctrl-] detaches, and a piped input's end leaves once it is quiet.
    console: bool,
    /// Standard input goes to the remote side.
    read_input: bool,
    /// Window size changes (SIGWINCH, so only with a terminal here) go to the
    /// remote side.
    resize: bool,
    timeout: Option<Duration>,
}

impl Session {
    fn pump(&self, t: &mut Terminal) -> End {
        // Short waits for the server, so that input goes out at once.
        let _ = t.set_read_timeout(Some(Duration::from_millis(20)));
        let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
        if self.read_input {
            std::thread::spawn(move || read_input(&tx));
        }
        let started = Instant::now();
        let mut input_ended: Option<Instant> = None;
        let mut last_output = Instant::now();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        loop {
            if self.resize && term::take_resized() {
                if let Some((cols, rows)) = term::size() {
                    let _ = t.resize(cols, rows);
                }
            }
            while let Ok(chunk) = rx.try_recv() {
                match chunk {
                    Some(mut data) => {
                        let detach = self.console && data.contains(&DETACH);
                        if detach {
                            let at = data.iter().position(|&b| b == DETACH).unwrap_or(0);
                            data.truncate(at);
                        }
                        // A failed send shows as the session's end on the next read.
                        if !data.is_empty() {
                            let _ = t.send(&data);
                        }
                        if detach {
                            return End::Detached;
                        }
                    }
                    None => {
                        let _ = t.eof();
                        input_ended = Some(Instant::now());
                    }
                }
            }
            match t.recv() {
                TermEvent::Output(b) => {
                    last_output = Instant::now();
                    if out.write_all(&b).and_then(|()| out.flush()).is_err() {
                        return End::OutputClosed;
                    }
                }
                TermEvent::Exit(code) => return End::Exit(code),
                TermEvent::Failed(e) => return End::Failed(e),
                TermEvent::Closed => return End::Closed,
                TermEvent::Idle => {}
            }
            if self.timeout.is_some_and(|d| started.elapsed() >= d) {
                return End::TimedOut;
            }
            if let Some(at) = input_ended.filter(|_| self.console) {
                if at.max(last_output).elapsed() >= QUIET {
                    return End::Quiet;
                }
            }
        }
    }
}

/// Standard input, chunk by chunk as it comes (a key at a time in raw mode); `None`
/// at its end.
fn read_input(tx: &mpsc::Sender<Option<Vec<u8>>>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Some(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = tx.send(None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit_code;

    #[test]
    fn since_takes_durations_ago_and_passes_instants() {
        assert_eq!(since("10m", 1000), "400");
        assert_eq!(since("1h30m", 10_000), "4600");
        assert_eq!(since("2d", 1_000_000), "827200");
        assert_eq!(since("45s", 100), "55");
        assert_eq!(since("1700000000", 5), "1700000000");
        assert_eq!(since("2024-01-02T03:04:05Z", 5), "2024-01-02T03:04:05Z");
        assert_eq!(since("10x", 5), "10x");
        assert_eq!(since("10m5", 5000), "10m5");
    }

    #[test]
    fn tail_is_a_count_or_all_and_statuses_fit_a_byte() {
        assert!(parse_tail("3").is_ok() && parse_tail("all").is_ok());
        assert!(parse_tail("-1").is_err() && parse_tail("x").is_err());
        assert_eq!(status_code(3), 3);
        assert_eq!(status_code(255), 255);
        assert_eq!(status_code(256), 1);
        assert_eq!(status_code(-1), 1);
    }

    #[test]
    fn the_exit_code_of_a_stream_error_comes_from_its_code() {
        let taken = Error::Api {
            status: 0,
            code: "CONSOLE_IN_USE".into(),
            message: "another client took the console over".into(),
            details: serde_json::Value::Null,
        };
        assert_eq!(exit_code(&taken), exit::CONFLICT);
    }
}
