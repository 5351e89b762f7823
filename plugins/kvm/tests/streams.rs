//! Byte streams of a kvm instance on the real `qemu:///system`, with the real test
//! guest (`scripts/guest-template.sh`): logs (the serial console log, its tail, a
//! follow that sees what the guest prints later and pins no thread), the console
//! (a round trip through the guest's shell, twice: a closed console frees it), exec
//! through the guest agent (the guest's stand-in, `scripts/guest-agent.awk`: output,
//! exit code, input, a missing program), and the refusals (unknown id, stopped
//! domain, timestamps, a domain without an agent channel, an agent that does not
//! answer).
//! Nothing is ever sent to the guest's network (it has none).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{harness, libvirt, make_template, unique, workdir, SYSTEM};
use serde_json::json;
use unicompute_plugin_api::stream::{
    ByteStream, ConsoleOptions, ExecOptions, Input, LogsOptions, Output, StreamKind, StreamRequest,
};
use unicompute_plugin_api::{Backend, CreateRequest, ErrorCode, StopOptions};
use unicompute_tests::guest;

/// Generous: the emulator (no KVM) boots the guest in tens of seconds.
const BOOT: Duration = Duration::from_secs(300);

/// The tests of this file one at a time: one counts the process's threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

fn logs(id: &str, options: LogsOptions) -> StreamRequest {
    StreamRequest {
        id: id.into(),
        kind: StreamKind::Logs(options),
    }
}

fn console(id: &str) -> StreamRequest {
    StreamRequest {
        id: id.into(),
        kind: StreamKind::Console(ConsoleOptions::default()),
    }
}

/// Reads stdout until `needle` is in what was read (answers all of it), or fails
/// after `within`.
fn read_until(
    rt: &tokio::runtime::Runtime,
    s: &ByteStream,
    needle: &str,
    within: Duration,
) -> String {
    let mut got = Vec::new();
    let found = rt.block_on(async {
        tokio::time::timeout(within, async {
            loop {
                if String::from_utf8_lossy(&got).contains(needle) {
                    return true;
                }
                match s.next().await {
                    Some(Output::Stdout(d)) => got.extend(d),
                    Some(other) => panic!("unexpected {other:?}"),
                    None => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    });
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        found,
        "no {needle:?} in the stream within {within:?}:\n{text}"
    );
    text
}

/// Reads the whole stream (it must end within `within`).
fn read_all(rt: &tokio::runtime::Runtime, s: &ByteStream, within: Duration) -> Vec<u8> {
    rt.block_on(async {
        tokio::time::timeout(within, async {
            let mut got = Vec::new();
            while let Some(out) = s.next().await {
                match out {
                    Output::Stdout(d) => got.extend(d),
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        })
        .await
        .expect("the stream ends")
    })
}

/// What an exec gave: its stdout, its stderr, its exit code.
type Ran = (String, String, i64);

/// Runs `command` through exec to its end, feeding it `input` (then the end of its
/// input) when there is some.
fn run(
    rt: &tokio::runtime::Runtime,
    b: &unicompute_kvm::KvmBackend,
    id: &str,
    command: &[&str],
    input: Option<&[u8]>,
) -> Result<Ran, unicompute_plugin_api::PluginError> {
    let s = b.open_stream(StreamRequest {
        id: id.into(),
        kind: StreamKind::Exec(ExecOptions {
            command: command.iter().map(|c| c.to_string()).collect(),
            stdin: input.is_some(),
            ..ExecOptions::default()
        }),
    })?;
    rt.block_on(async {
        if let Some(input) = input {
            // In two pieces: the plugin collects them until the end of input.
            let (a, z) = input.split_at(input.len() / 2);
            assert!(s.send(Input::Data(a.to_vec())).await);
            assert!(s.send(Input::Data(z.to_vec())).await);
            assert!(s.send(Input::CloseStdin).await);
        }
        tokio::time::timeout(Duration::from_secs(60), async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            loop {
                match s.next().await {
                    Some(Output::Stdout(d)) => out.extend(d),
                    Some(Output::Stderr(d)) => err.extend(d),
                    Some(Output::Exit(code)) => {
                        assert!(s.next().await.is_none(), "the exec ends after its exit");
                        return Ok((
                            String::from_utf8_lossy(&out).into_owned(),
                            String::from_utf8_lossy(&err).into_owned(),
                            code,
                        ));
                    }
                    Some(Output::Error(e)) => return Err(e),
                    None => panic!("the exec ended without an exit code"),
                }
            }
        })
        .await
        .expect("the exec ends within 60 s")
    })
}

/// The threads of this process.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: in /proc/self/status")
}

/// Types `command` into the console until its output holds `expect` (the shell may
/// not be up yet when it is first typed); answers what the console printed.
fn round_trip(rt: &tokio::runtime::Runtime, s: &ByteStream, command: &str, expect: &str) -> String {
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < BOOT {
        assert!(
            rt.block_on(s.send(Input::Data(format!("{command}\n").into_bytes()))),
            "the console takes input"
        );
        let seen = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.next().await {
                        Some(Output::Stdout(d)) => {
                            got.extend(d);
                            // The output line, not the echo of the typed command.
                            if String::from_utf8_lossy(&got)
                                .lines()
                                .any(|l| l.trim_end() == expect)
                            {
                                return true;
                            }
                        }
                        other => panic!("the console ended: {other:?}"),
                    }
                }
            })
            .await
            .unwrap_or(false)
        });
        if seen {
            return String::from_utf8_lossy(&got).into_owned();
        }
    }
    panic!(
        "no {expect:?} from the console:\n{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn logs_and_console_of_the_real_guest() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rt = rt();
    let domain_type = guest::domain_type();
    let dir = tempfile::Builder::new()
        .prefix("uc-kvm-streams-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let h = harness(
        SYSTEM,
        json!({"domain_type": domain_type, "console_log_dir": dir.path()}),
    );
    guest::install(&h.templates, "guest");
    let name = h.cleanup.domain(&unique("streams"));
    let id = unique("id");
    let token = format!("{}", chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
    let b = &h.backend;
    b.create(CreateRequest {
        id: id.clone(),
        name: name.clone(),
        config: json!({
            "image": "guest",
            "networkType": "none",
            "cloudInit": {"userData": guest::user_data(&token)}
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        resources: serde_json::from_value(
            json!({"cpu": {"cores": 1}, "memory": {"limit": guest::MEMORY}}),
        )
        .unwrap(),
        labels: BTreeMap::new(),
        start: false,
        created_at: chrono::Utc::now(),
        operation: None,
    })
    .expect("create");
    let log = unicompute_kvm::console_log::path(dir.path(), &id);

    // Before the first start there is no file: logs are empty; a follow ends at once
    // (nothing runs to append); the console is refused.
    for follow in [false, true] {
        let s = b
            .open_stream(logs(
                &id,
                LogsOptions {
                    follow,
                    ..LogsOptions::default()
                },
            ))
            .expect("logs of a created instance");
        assert!(read_all(&rt, &s, Duration::from_secs(10)).is_empty());
    }
    let e = b
        .open_stream(console(&id))
        .expect_err("console when created");
    assert_eq!(e.code, ErrorCode::InvalidState, "{e:?}");
    assert!(e.message.contains("not running"), "{e:?}");

    // A follow opened at the start sees what the guest prints later.
    let started = Instant::now();
    b.start(&id).expect("start");
    let follow = b
        .open_stream(logs(
            &id,
            LogsOptions {
                follow: true,
                ..LogsOptions::default()
            },
        ))
        .expect("logs follow");
    let marker = format!("{}{token}", guest::MARKER_SEEN);
    let text = read_until(&rt, &follow, guest::READY, BOOT);
    let booted = started.elapsed();
    assert!(text.contains(&marker), "{text}");

    // Without follow: the file as it is, marker included; the stream ends.
    let all = read_all(
        &rt,
        &b.open_stream(logs(&id, LogsOptions::default())).unwrap(),
        Duration::from_secs(10),
    );
    let all = String::from_utf8_lossy(&all);
    assert!(all.lines().any(|l| l.trim_end() == marker), "{all}");

    // The console: a round trip through the guest's shell. The shell computes the
    // answer, so the echo of the typed line cannot pass for it.
    let c1 = b.open_stream(console(&id)).expect("console");
    let t = Instant::now();
    round_trip(
        &rt,
        &c1,
        &format!("echo rt-$((40+2))-{token}"),
        &format!("rt-42-{token}"),
    );
    let first_rt = t.elapsed();
    // A resize is accepted (and has no effect on a serial line).
    assert!(rt.block_on(
        c1.send(Input::Resize(unicompute_plugin_api::stream::TermSize {
            cols: 100,
            rows: 40
        }))
    ));
    drop(c1);
    // The follower saw the shell's answer too: it is in the log.
    read_until(
        &rt,
        &follow,
        &format!("rt-42-{token}"),
        Duration::from_secs(30),
    );

    // A second console after the first was closed works just as well.
    let c2 = b.open_stream(console(&id)).expect("a second console");
    let t = Instant::now();
    round_trip(
        &rt,
        &c2,
        &format!("echo rt-$((40+3))-{token}"),
        &format!("rt-43-{token}"),
    );
    let second_rt = t.elapsed();
    // A third one takes the console over (by force): the second one ends.
    let c3 = b.open_stream(console(&id)).expect("a third console");
    let ended = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut last = None;
            while let Some(out) = c2.next().await {
                last = Some(out);
            }
            last
        })
        .await
        .expect("the console taken over ends")
    });
    // libvirt ends it with an I/O failure, told to its client as such.
    if let Some(Output::Error(e)) = ended {
        assert!(e.message.contains("another console took it over"), "{e:?}");
    }
    drop(c2);
    round_trip(
        &rt,
        &c3,
        &format!("echo rt-$((40+4))-{token}"),
        &format!("rt-44-{token}"),
    );

    // Followers are tasks, not threads: 200 of them add (almost) no thread.
    let before = threads();
    let many: Vec<ByteStream> = (0..200)
        .map(|_| {
            b.open_stream(logs(
                &id,
                LogsOptions {
                    follow: true,
                    tail: Some(0),
                    ..LogsOptions::default()
                },
            ))
            .expect("a follower")
        })
        .collect();
    // Give them time to be running (each has polled the file a few times).
    std::thread::sleep(Duration::from_millis(500));
    let with = threads();
    eprintln!("threads: {before} before 200 follows, {with} with them");
    assert!(
        with < before + 10,
        "{before} -> {with} threads with 200 followers"
    );
    // They are live: each one gets what the guest prints now.
    round_trip(
        &rt,
        &c3,
        &format!("echo rt-$((40+5))-{token}"),
        &format!("rt-45-{token}"),
    );
    for s in &many {
        read_until(&rt, s, &format!("rt-45-{token}"), Duration::from_secs(30));
    }
    drop(many);

    // The refusals on a running instance.
    let e = b
        .open_stream(logs(
            &id,
            LogsOptions {
                since: Some(chrono::Utc::now()),
                ..LogsOptions::default()
            },
        ))
        .expect_err("since");
    assert_eq!(e.code, ErrorCode::OperationNotSupported, "{e:?}");
    assert!(e.message.contains("has no timestamps"), "{e:?}");
    let e = b
        .open_stream(logs(
            &id,
            LogsOptions {
                timestamps: true,
                ..LogsOptions::default()
            },
        ))
        .expect_err("timestamps");
    assert_eq!(e.code, ErrorCode::OperationNotSupported, "{e:?}");

    // Exec through the guest agent (the domain has its channel by default; the
    // guest's stand-in serves it once it printed where).
    assert!(
        guest::wait_for_line(&log, guest::AGENT, BOOT).is_some(),
        "the guest agent did not start:\n{}",
        guest::read_log(&log)
    );
    let t = Instant::now();
    let ran = run(
        &rt,
        b,
        &id,
        &["sh", "-c", "echo o; echo e >&2; exit 3"],
        None,
    )
    .expect("exec");
    let exec_rt = t.elapsed();
    assert_eq!(ran, ("o\n".into(), "e\n".into(), 3));
    // Input: collected until its end, then handed to the command (input-data).
    let input = format!("fed {token}\nthrough the agent\n");
    let ran = run(&rt, b, &id, &["cat"], Some(input.as_bytes())).expect("exec cat");
    assert_eq!(ran, (input, String::new(), 0));
    // Arguments reach the program as they are (quotes, spaces, non-ASCII).
    let arg = "it's \"quoted\" \\ $(not run) é";
    let ran = run(&rt, b, &id, &["printf", "[%s]", arg], None).expect("exec printf");
    assert_eq!(ran, (format!("[{arg}]"), String::new(), 0));
    // A program that does not exist: the agent cannot start it (qemu-ga's spawn
    // fails; there is no process and so no exit code): an error that says so.
    let e = run(&rt, b, &id, &["uc-no-such-program"], None).expect_err("a missing program");
    assert_eq!(e.code, ErrorCode::BackendError, "{e:?}");
    assert!(
        e.message.contains("could not start uc-no-such-program")
            && e.message.contains("No such file or directory"),
        "{e:?}"
    );
    // A shell's own "not found" is an exit code like any other.
    let ran = run(&rt, b, &id, &["sh", "-c", "uc-no-such-program"], None).expect("exec sh");
    assert_eq!(ran.2, 127, "{ran:?}");
    // What the agent cannot do.
    for (options, what) in [
        (
            ExecOptions {
                tty: true,
                ..ExecOptions::default()
            },
            "tty",
        ),
        (
            ExecOptions {
                user: Some("root".into()),
                ..ExecOptions::default()
            },
            "user",
        ),
        (
            ExecOptions {
                workdir: Some("/".into()),
                ..ExecOptions::default()
            },
            "workdir",
        ),
    ] {
        let e = b
            .open_stream(StreamRequest {
                id: id.clone(),
                kind: StreamKind::Exec(ExecOptions {
                    command: vec!["true".into()],
                    ..options
                }),
            })
            .expect_err(what);
        assert_eq!(e.code, ErrorCode::OperationNotSupported, "{what}: {e:?}");
        assert!(
            e.message.contains("guest agent") && e.message.contains(what),
            "{what}: {e:?}"
        );
    }

    // A graceful stop: the follower sees the guest power itself off; the open
    // console ends.
    b.stop(&id, StopOptions::default()).expect("stop");
    read_until(&rt, &follow, guest::POWERING_OFF, Duration::from_secs(30));
    drop(follow);
    read_all(&rt, &c3, Duration::from_secs(30));

    // Stopped: the console is refused; logs still read, their tail exactly the
    // file's last lines; a follow ends after the content; stdout=false is empty.
    let e = b
        .open_stream(console(&id))
        .expect_err("console when stopped");
    assert_eq!(e.code, ErrorCode::InvalidState, "{e:?}");
    let file = std::fs::read(&log).expect("the console log");
    assert!(!file.is_empty());
    for n in [0u64, 1, 3, 10, 1_000_000] {
        let got = read_all(
            &rt,
            &b.open_stream(logs(
                &id,
                LogsOptions {
                    tail: Some(n),
                    ..LogsOptions::default()
                },
            ))
            .unwrap(),
            Duration::from_secs(10),
        );
        let lines: Vec<&[u8]> = file.split_inclusive(|b| *b == b'\n').collect();
        let want: Vec<u8> = lines[lines.len().saturating_sub(n as usize)..].concat();
        assert_eq!(got, want, "tail {n}");
    }
    let got = read_all(
        &rt,
        &b.open_stream(logs(
            &id,
            LogsOptions {
                follow: true,
                ..LogsOptions::default()
            },
        ))
        .unwrap(),
        Duration::from_secs(10),
    );
    assert_eq!(
        got, file,
        "a follow on a stopped instance: the file, then the end"
    );
    let got = read_all(
        &rt,
        &b.open_stream(logs(
            &id,
            LogsOptions {
                stdout: false,
                ..LogsOptions::default()
            },
        ))
        .unwrap(),
        Duration::from_secs(10),
    );
    assert!(got.is_empty());

    eprintln!(
        "streams ({domain_type}): start to ready {:.1} s, console round trips {:.2} s and {:.2} s, exec round trip {:.2} s, {} bytes of log",
        booted.as_secs_f64(),
        first_rt.as_secs_f64(),
        second_rt.as_secs_f64(),
        exec_rt.as_secs_f64(),
        file.len()
    );
    b.delete(&id, false).expect("delete");
    assert!(!log.exists());
}

#[test]
fn unknown_ids_are_not_found() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let h = harness(SYSTEM, json!({}));
    let id = unique("nosuch");
    for request in [
        logs(&id, LogsOptions::default()),
        logs(
            &id,
            LogsOptions {
                follow: true,
                ..LogsOptions::default()
            },
        ),
        console(&id),
        StreamRequest {
            id: id.clone(),
            kind: StreamKind::Exec(ExecOptions {
                command: vec!["true".into()],
                ..ExecOptions::default()
            }),
        },
    ] {
        let e = h
            .backend
            .open_stream(request.clone())
            .expect_err("unknown id");
        assert_eq!(e.code, ErrorCode::InstanceNotFound, "{request:?}: {e:?}");
    }
    // The timestamps refusal comes first, for any id.
    let e = h
        .backend
        .open_stream(logs(
            &id,
            LogsOptions {
                timestamps: true,
                ..LogsOptions::default()
            },
        ))
        .expect_err("timestamps");
    assert_eq!(e.code, ErrorCode::OperationNotSupported, "{e:?}");
    let caps = h.backend.describe().expect("describe").capabilities;
    assert!(
        caps.iter().any(|c| c == "logs") && caps.iter().any(|c| c == "console"),
        "{caps:?}"
    );
    assert!(caps.iter().any(|c| c == "exec"), "{caps:?}");
}

#[test]
fn exec_needs_an_agent_that_answers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let logs = workdir();
    let h = harness(SYSTEM, json!({"console_log_dir": logs.path()}));
    make_template(&h.templates, "blank", "64M");
    let name = h.cleanup.domain(&unique("agent"));
    let id = unique("id");
    let b = &h.backend;
    b.create(CreateRequest {
        id: id.clone(),
        name: name.clone(),
        config: json!({"image": "blank", "networkType": "none"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        resources: serde_json::from_value(
            json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}}),
        )
        .unwrap(),
        labels: BTreeMap::new(),
        start: false,
        created_at: chrono::Utc::now(),
        operation: None,
    })
    .expect("create");
    let exec = || StreamRequest {
        id: id.clone(),
        kind: StreamKind::Exec(ExecOptions {
            command: vec!["true".into()],
            ..ExecOptions::default()
        }),
    };
    let e = b.open_stream(exec()).expect_err("exec when created");
    assert_eq!(e.code, ErrorCode::InvalidState, "{e:?}");

    // The domain has an agent channel (the default), but nothing in the guest (a
    // blank disk) answers on it.
    let conn = libvirt(SYSTEM);
    let dom = conn.lookup_domain_by_name(&name).expect("domain");
    let xml = dom.xml_desc(0).unwrap();
    assert!(xml.contains("org.qemu.guest_agent.0"), "{xml}");
    b.start(&id).expect("start");
    let t = Instant::now();
    let e = b
        .open_stream(exec())
        .expect_err("exec without an agent answering");
    assert_eq!(e.code, ErrorCode::OperationNotSupported, "{e:?}");
    assert!(e.message.contains("did not answer"), "{e:?}");
    eprintln!(
        "exec refused in {:.2} s: {}",
        t.elapsed().as_secs_f64(),
        e.message
    );
    // Refused before anything else: an empty command.
    let e = b
        .open_stream(StreamRequest {
            id: id.clone(),
            kind: StreamKind::Exec(ExecOptions::default()),
        })
        .expect_err("no command");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
    b.delete(&id, true).expect("delete");

    // guestAgent: false: no channel; exec says so.
    let name = h.cleanup.domain(&unique("noagent"));
    let id = unique("id");
    let inst = b
        .create(CreateRequest {
            id: id.clone(),
            name: name.clone(),
            config: json!({"image": "blank", "networkType": "none", "guestAgent": false})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            resources: serde_json::from_value(
                json!({"cpu": {"cores": 1}, "memory": {"limit": 128u64 << 20}}),
            )
            .unwrap(),
            labels: BTreeMap::new(),
            start: true,
            created_at: chrono::Utc::now(),
            operation: None,
        })
        .expect("create without an agent channel");
    assert_eq!(inst.config["guestAgent"], false, "{:?}", inst.config);
    let xml = conn
        .lookup_domain_by_name(&name)
        .unwrap()
        .xml_desc(0)
        .unwrap();
    assert!(!xml.contains("<channel"), "{xml}");
    let e = b
        .open_stream(StreamRequest {
            id: id.clone(),
            kind: StreamKind::Exec(ExecOptions {
                command: vec!["true".into()],
                ..ExecOptions::default()
            }),
        })
        .expect_err("exec without an agent channel");
    assert_eq!(e.code, ErrorCode::OperationNotSupported, "{e:?}");
    assert!(
        e.message.contains("no guest agent channel") && e.message.contains("guestAgent"),
        "{e:?}"
    );
    b.delete(&id, true).expect("delete");
}
