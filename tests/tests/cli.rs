//! `uc`, the command-line client, run as a user would (the built binary, the token in
//! the environment) against a real server: the fake plugin for most, the real
//! Docker backend for one. Loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use unicompute_tests::docker::{ensure_image, sweep_stale, FileLock, TEST_IMAGE};
use unicompute_tests::*;

/// `uc` with a clean environment: the server's URL and `token` (none: no token) in
/// the environment, never in argv; no proxy.
fn uc_cmd(base: &str, token: Option<&str>) -> Command {
    let mut cmd = Command::new(uc_binary());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("UNICOMPUTE_")
            || k.to_ascii_lowercase().ends_with("_proxy")
            || k == "NO_COLOR"
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("UNICOMPUTE_URL", base).stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("UNICOMPUTE_TOKEN", t);
    }
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_with(base: &str, token: Option<&str>, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = uc_cmd(base, token).args(args).output().expect("run uc");
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(!r.stderr.contains("panicked"), "uc panicked: {}", r.stderr);
    r
}

/// `uc ARGS` as admin.
fn uc(s: &Server, args: &[&str]) -> Run {
    run_with(&s.base, Some(ADMIN), args)
}

/// `uc ARGS` as admin, which must succeed.
fn ok(s: &Server, args: &[&str]) -> String {
    let r = uc(s, args);
    assert_eq!(r.code, 0, "uc {args:?}: {}{}", r.stdout, r.stderr);
    r.stdout
}

#[test]
fn every_operation_of_the_served_document_has_a_client_method() {
    let s = Server::fake("");
    let c = unicompute_client::Client::new(&s.base, Some(ADMIN.into())).expect("client");
    let doc = c.openapi().expect("the document");
    let mut served = std::collections::BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                served.insert(id.to_owned());
            }
        }
    }
    let client: std::collections::BTreeSet<String> = unicompute_client::OPERATIONS
        .iter()
        .map(|(_, id)| id.to_string())
        .collect();
    let missing: Vec<_> = served.difference(&client).collect();
    let unknown: Vec<_> = client.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "operations without a client method: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "client methods of no served operation: {unknown:?}"
    );
    // And the client reads what the server answers.
    assert_eq!(c.list_backends().expect("backends")[0].name, "fake");
    assert!(c
        .cluster_status()
        .expect("status")
        .backends
        .contains_key("fake"));
    let err = c.get_instance("i-00000000000000000000").expect_err("none");
    assert_eq!(
        (err.status(), err.code()),
        (Some(404), Some("INSTANCE_NOT_FOUND"))
    );
}

/// The columns of an aligned table: each header word's start, and every row has a
/// cell starting there, after at least three spaces (or at the line start).
fn columns(out: &str, header: &[&str]) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let head = lines.next().expect("a header");
    let starts: Vec<usize> = header
        .iter()
        .map(|h| head.find(h).unwrap_or_else(|| panic!("{h} in {head}")))
        .collect();
    let spaced: Vec<&str> = head
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(spaced, header, "header");
    lines
        .map(|l| {
            starts
                .iter()
                .enumerate()
                .map(|(n, &at)| {
                    assert!(
                        at == 0 || &l[at - 3..at] == "   " || l[..at].ends_with("   "),
                        "column {n} of {l:?}"
                    );
                    let end = starts.get(n + 1).map_or(l.len(), |&e| e);
                    let cell = l[at..end].trim().to_owned();
                    assert!(
                        !cell.is_empty() && !l[at..].starts_with(' '),
                        "cell {n} of {l:?}"
                    );
                    cell
                })
                .collect()
        })
        .collect()
}

const LS: [&str; 9] = [
    "ID", "NAME", "BACKEND", "TYPE", "STATE", "IMAGE", "CPUS", "MEMORY", "CREATED",
];

#[test]
fn ls_is_an_aligned_table_and_json_for_scripts() {
    let s = Server::fake("");
    let tag = unique("t");
    let (a, b) = (unique("web"), unique("a-much-longer-name"));
    let label = format!("test={tag}");
    let id_a = ok(
        &s,
        &[
            "create", &a, "--image", "busybox", "--memory", "512M", "--cpus", "2", "--label",
            &label, "--start",
        ],
    );
    let id_b = ok(
        &s,
        &[
            "create", "--name", &b, "-i", "alpine", "-l", &label, "-e", "K=V", "-p", "8080:80",
        ],
    );
    let (id_a, id_b) = (id_a.trim(), id_b.trim());
    assert!(id_a.starts_with("i-") && id_a.len() == 22, "{id_a}");

    // Without -a: running ones only, as docker ps.
    let rows = columns(&ok(&s, &["ls", "--label", &label]), &LS);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0][..8],
        [
            id_a,
            &a,
            "fake",
            "container",
            "running",
            "busybox",
            "2",
            "512M"
        ]
    );
    assert!(rows[0][8].ends_with("ago"), "{}", rows[0][8]);

    let out = ok(&s, &["ps", "-a", "--label", &label]);
    let rows = columns(&out, &LS);
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(
        rows[1][..6],
        [id_b, &b, "fake", "container", "created", "alpine"]
    );
    // No colour when stdout is not a terminal.
    assert!(!out.contains('\x1b'));

    assert_eq!(
        ok(&s, &["ls", "-aq", "--label", &label]),
        format!("{id_a}\n{id_b}\n")
    );
    assert_eq!(
        ok(&s, &["ls", "-q", "--state", "created", "--label", &label]),
        format!("{id_b}\n")
    );

    let json: Value = serde_json::from_str(&ok(&s, &["ls", "-a", "-o", "json", "--label", &label]))
        .expect("json");
    let list = json.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], a.as_str());
    assert_eq!(list[0]["resources"]["memory"]["limit"], 512u64 << 20);
    assert_eq!(list[1]["config"]["env"], json!(["K=V"]));
    assert_eq!(list[1]["config"]["ports"], json!(["8080:80"]));
    assert_eq!(list[1]["metadata"]["labels"]["test"], tag.as_str());

    // get by name or id; one argument is an object, several an array.
    let one: Value = serde_json::from_str(&ok(&s, &["get", &a, "-o", "json"])).expect("json");
    assert_eq!(one["id"], id_a);
    let two: Value =
        serde_json::from_str(&ok(&s, &["inspect", id_a, &b, "-o", "json"])).expect("json");
    assert_eq!(two.as_array().map(Vec::len), Some(2));
    let human = ok(&s, &["get", &b]);
    assert!(
        human.contains(&format!("Name:    {b}\n")) && human.contains("State:   created\n"),
        "{human}"
    );

    ok(&s, &["rm", "-f", &a, &b]);
}

#[test]
fn several_names_at_once_and_the_exit_codes() {
    let s = Server::fake("");
    let (a, b) = (unique("m"), unique("m"));
    ok(&s, &["create", &a, "--image", "busybox"]);
    ok(&s, &["create", &b, "--image", "busybox"]);
    assert_eq!(ok(&s, &["start", &a, &b]), format!("{a}\n{b}\n"));
    let json: Value =
        serde_json::from_str(&ok(&s, &["pause", &a, &b, "-o", "json"])).expect("json");
    assert_eq!(json[1]["state"], "paused");
    ok(&s, &["unpause", &a, &b]);
    ok(&s, &["stop", "--timeout", "5", &a]);

    // 409: a running instance without -f; the name taken; pause of a stopped one.
    let r = uc(&s, &["rm", &b]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("Error: ") && r.stderr.contains("(INVALID_STATE)"),
        "{}",
        r.stderr
    );
    assert_eq!(uc(&s, &["create", &a, "--image", "busybox"]).code, 4);
    assert_eq!(uc(&s, &["pause", &a]).code, 4);

    // 404.
    let gone = unique("gone");
    let r = uc(&s, &["get", &gone]);
    assert_eq!(r.code, 3);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("(INSTANCE_NOT_FOUND)"), "{}", r.stderr);
    assert_eq!(uc(&s, &["get", "i-00000000000000000000"]).code, 3);

    // Usage errors: clap's, and a bad size.
    let r = uc(&s, &["ls", "--no-such-flag"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = uc(&s, &["create", &unique("q"), "--memory", "12Q"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("invalid size '12Q'"), "{}", r.stderr);
    assert_eq!(uc(&s, &["update", &a]).code, 2);

    // update by name: labels merge, resources change.
    ok(
        &s,
        &[
            "update", &a, "--memory", "1G", "--label", "x=1", "--label", "y=2",
        ],
    );
    ok(&s, &["update", &a, "--unlabel", "x"]);
    let i: Value = serde_json::from_str(&ok(&s, &["get", &a, "-o", "json"])).expect("json");
    assert_eq!(i["resources"]["memory"]["limit"], 1u64 << 30);
    assert_eq!(i["metadata"]["labels"], json!({"y": "2"}));

    // Removing several, one unknown: the others go, the exit code says not found.
    let r = uc(&s, &["rm", "-f", &a, &gone, &b]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{a}\n{b}\n"));
    assert_eq!(uc(&s, &["get", &a]).code, 3);
    assert_eq!(uc(&s, &["get", &b]).code, 3);

    // Auth: a viewer cannot create (403), no token is 401 with a hint.
    let r = run_with(
        &s.base,
        Some(VIEWER),
        &["create", &unique("v"), "--image", "busybox"],
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = run_with(&s.base, None, &["ls"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("Error: ") && r.stderr.contains("(UNAUTHORIZED)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("UNICOMPUTE_TOKEN"), "{}", r.stderr);
    assert!(!r.stderr.contains(ADMIN));
}

#[test]
fn an_unreachable_url_or_a_server_that_is_not_unicompute_fails_clearly() {
    // A closed port on loopback.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    let r = run_with(&url, Some(ADMIN), &["ls"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!(
            "Error: cannot connect to {url}: connection refused (is the server running there?)\n"
        )
    );

    // Something that answers HTML.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = "<html><body>It works!</body></html>";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let r = run_with(&url, Some(ADMIN), &["ls"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, format!("Error: {url} answered HTTP 200 with text/html, not the unicompute API (is the URL right?)\n"));

    // A bad URL is a usage error.
    assert_eq!(run_with("localhost:8080", Some(ADMIN), &["ls"]).code, 2);
}

#[test]
fn events_print_a_line_each_and_end_cleanly_on_sigint() {
    let s = Server::fake("");
    let name = unique("ev");
    let mut child = uc_cmd(&s.base, Some(ADMIN))
        .args(["events", "-o", "json", "--type", "instance"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("uc events");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The subscription may not be open yet at the first create: create until a line comes.
    let mut first = None;
    for n in 0..50 {
        ok(
            &s,
            &["create", &format!("{name}-{n}"), "--image", "busybox"],
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            first = Some(line);
            break;
        }
    }
    let first: Value =
        serde_json::from_str(&first.expect("an event line")).expect("one JSON a line");
    assert_eq!(first["type"], "instance.created");
    assert!(first["id"].as_u64().is_some());
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "uc events did not end on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(matches!(status.code(), Some(0 | 130)), "{status:?}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_pull_follows_its_operation_and_ops_show_it() {
    let s = Server::fake("pull_steps = 4\npull_step_ms = 50\n");
    let reference = unique("img");
    let r = uc(&s, &["images", "pull", &reference]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), reference);
    // Not a terminal: plain progress lines on stderr.
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("downloading") && l.contains("/4.0M")),
        "{}",
        r.stderr
    );
    assert!(ok(&s, &["images", "ls", "-q"])
        .lines()
        .any(|l| l == reference));

    let ops: Value = serde_json::from_str(&ok(
        &s,
        &["ops", "ls", "--kind", "image-pull", "-o", "json"],
    ))
    .expect("json");
    let op = &ops.as_array().expect("array")[0];
    assert_eq!(op["status"], "succeeded");
    let id = op["id"].as_str().expect("id");
    assert!(ok(&s, &["ops", "wait", id]).contains("succeeded"));
    let got: Value =
        serde_json::from_str(&ok(&s, &["ops", "get", id, "-o", "json"])).expect("json");
    assert_eq!(got["kind"], "image-pull");
    // An ended operation cannot be cancelled: 409.
    assert_eq!(uc(&s, &["ops", "cancel", id]).code, 4);
    assert_eq!(uc(&s, &["ops", "get", "op-nothing"]).code, 3);

    // A reference the registry lacks: the operation's error, exit 3.
    let r = uc(&s, &["images", "pull", &format!("missing-{reference}")]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("(IMAGE_NOT_FOUND)"), "{}", r.stderr);

    assert_eq!(ok(&s, &["images", "rm", &reference]).trim(), reference);
    assert!(ok(&s, &["backends", "ls"]).contains("fake   fake"));
    assert!(ok(&s, &["cluster", "status"]).starts_with("Health: healthy"));
}

#[test]
fn uc_drives_a_real_docker_container() {
    let lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let tmp = TempDir::new("uc-cli-dock");
    let (s, backend) = unicompute_tests::docker::server(&tmp.0);
    let name = unique("uc-dock");
    let _guard = unicompute_tests::docker::ContainerGuard(name.clone());
    let id = ok(
        &s,
        &[
            "create", &name, "--image", TEST_IMAGE, "--memory", "64M", "--start", "--", "sleep",
            "300",
        ],
    );
    let rows = columns(&ok(&s, &["ls"]), &LS);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0][..8],
        [
            id.trim(),
            &name,
            &backend,
            "container",
            "running",
            TEST_IMAGE,
            "-",
            "64M"
        ]
    );
    let usage = ok(&s, &["usage", &name]);
    assert!(
        usage
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(&name) && l.contains("/ 64M")),
        "{usage}"
    );
    assert_eq!(
        ok(&s, &["stop", "--timeout", "1", &name]),
        format!("{name}\n")
    );
    assert_eq!(uc(&s, &["ls", "-q"]).stdout, "");
    ok(&s, &["rm", &name]);
    assert_eq!(uc(&s, &["get", &name]).code, 3);
    drop(lock);
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions_without_a_server() {
    // No server at all: a closed port.
    let nowhere = "http://127.0.0.1:9";
    for shell in ["bash", "zsh", "fish"] {
        let r = run_with(nowhere, None, &["completion", shell]);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        for word in ["create", "events", "images", "memory"] {
            assert!(r.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script is valid bash, and completes the commands.
    let r = run_with(nowhere, None, &["completion", "bash"]);
    let script = TempDir::new("uc-completion");
    let file = script.0.join("uc.bash");
    std::fs::write(&file, &r.stdout).expect("write");
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(uc cre) COMP_CWORD=1 && _uc uc cre uc && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .expect("bash");
    let words = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        words.lines().any(|w| w == "create"),
        "bash completes `uc cre` to: {words}"
    );
    let r = run_with(nowhere, None, &["completion", "tcsh"]);
    assert_eq!(r.code, 2, "an unknown shell is a usage error");

    let dir = TempDir::new("uc-man");
    let r = run_with(nowhere, None, &["man", dir.0.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let page = |name: &str| std::fs::read_to_string(dir.0.join(name)).unwrap_or_default();
    assert!(
        page("uc.1").starts_with(".ie") || page("uc.1").contains(".TH UC"),
        "{}",
        page("uc.1")
    );
    let create = page("uc-create.1");
    assert!(create.contains(".TH UC-CREATE 1"), "{create}");
    for option in ["memory", "publish", "cloud"] {
        assert!(create.contains(option), "uc-create.1 lacks --{option}");
    }
    assert!(!page("uc-images-pull.1").is_empty());
    assert!(!page("uc-ops-cancel.1").is_empty());
    for (page_name, option) in [
        ("uc-logs.1", "follow"),
        ("uc-exec.1", "interactive"),
        ("uc-console.1", "force"),
    ] {
        assert!(
            page(page_name).contains(option),
            "{page_name} lacks --{option}"
        );
    }
    // One page for uc, each command and each subcommand; the count printed is the
    // files written.
    let written = std::fs::read_dir(&dir.0).expect("dir").count();
    assert_eq!(
        r.stdout,
        format!("{written} man pages written to {}\n", dir.0.display())
    );
}

/// `uc ARGS` as admin with `input` on its standard input (a pipe, closed after it).
fn uc_input(s: &Server, args: &[&str], input: &[u8]) -> Run {
    let mut child = uc_cmd(&s.base, Some(ADMIN))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run uc");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write the input");
    drop(stdin);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for uc");
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(!r.stderr.contains("panicked"), "uc panicked: {}", r.stderr);
    r
}

/// A spawned `uc` whose output lines come on a channel; killed if still running
/// when dropped.
struct Spawned {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Spawned {
    fn new(mut cmd: Command) -> Spawned {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn uc");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Spawned { child, lines }
    }

    /// Lines until one satisfies `f` (within 10 s), all of them.
    fn until(&self, f: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let done = f(&l);
                seen.push(l);
                if done {
                    return seen;
                }
            }
        }
        panic!("no such line in {seen:?}");
    }

    /// Waits (10 s at most) for the end: the exit code and standard error.
    fn wait(&mut self) -> (i32, String) {
        let t = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "uc did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).expect("stderr");
        }
        assert!(!err.contains("panicked"), "{err}");
        (status.code().unwrap_or(-1), err)
    }

    fn sigint(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_print_the_output_follow_it_and_end_cleanly() {
    let s = Server::fake("");
    let (x, y) = (unique("logs"), unique("logs-f"));
    ok(&s, &["create", &x, "--image", "busybox", "--start"]);
    let id_y = ok(
        &s,
        &[
            "create",
            &y,
            "--image",
            "busybox",
            "-l",
            "fake/log-every-ms=20",
            "--start",
        ],
    );
    assert_eq!(
        ok(&s, &["logs", &x]),
        format!("hello from {x}\nwarn from {x}\n")
    );
    assert_eq!(
        ok(&s, &["logs", "--tail", "1", &x]),
        format!("warn from {x}\n")
    );
    assert_eq!(ok(&s, &["logs", "-n", "all", &x]).lines().count(), 2);
    assert_eq!(
        ok(&s, &["logs", "--stderr", &x]),
        format!("warn from {x}\n")
    );
    assert_eq!(
        ok(&s, &["logs", "--stdout", &x]),
        format!("hello from {x}\n")
    );
    let stamped = ok(&s, &["logs", "-t", "--stdout", &x]);
    assert!(
        stamped.starts_with("20") && stamped.ends_with(&format!("Z hello from {x}\n")),
        "{stamped}"
    );
    // A duration ago: the fake's lines were written at its creation, just now.
    assert_eq!(ok(&s, &["logs", "--since", "1h", &x]).lines().count(), 2);
    assert_eq!(uc(&s, &["logs", "--stdout", "--stderr", &x]).code, 2);
    assert_eq!(uc(&s, &["logs", "--tail", "-1", &x]).code, 2);
    let r = uc(&s, &["logs", &unique("nosuch")]);
    assert_eq!(r.code, 3, "{}", r.stderr);

    // A follow, by id: the numbered lines as they come, then 130 on Ctrl-C.
    let mut cmd = uc_cmd(&s.base, Some(ADMIN));
    cmd.args(["logs", "-f", id_y.trim()]);
    let mut follow = Spawned::new(cmd);
    let seen = follow.until(|l| l == "line 3");
    assert_eq!(
        seen[..2],
        [format!("hello from {y}"), format!("warn from {y}")]
    );
    assert_eq!(seen[2], "line 0");
    follow.sigint();
    let (code, err) = follow.wait();
    assert_eq!(code, 130, "{err}");

    // A closed pipe ends a follow quietly.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' logs -f {y} | head -3", uc_binary().display()))
        .env("UNICOMPUTE_URL", &s.base)
        .env("UNICOMPUTE_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello from {y}\nwarn from {y}\nline 0\n")
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    ok(&s, &["rm", "-f", &x, &y]);
}

#[test]
fn exec_exits_with_the_commands_status() {
    let s = Server::fake("");
    let (x, stopped) = (unique("exec"), unique("exec-stopped"));
    ok(&s, &["create", &x, "--image", "busybox", "--start"]);
    ok(&s, &["create", &stopped, "--image", "busybox"]);

    let r = uc(&s, &["exec", &x, "--", "echo", "a", "b"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "a b\n", "")
    );
    // Without --, as docker: the command's own flags are its.
    assert_eq!(ok(&s, &["exec", &x, "echo", "-n", "c"]), "-n c\n");
    let r = uc(&s, &["exec", &x, "--", "fail", "3"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "", "failing\n")
    );
    let r = uc(&s, &["exec", &x, "--", "nosuch"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
    assert!(r.stderr.contains("nosuch: not found"), "{}", r.stderr);
    let json: Value =
        serde_json::from_str(&uc(&s, &["exec", "-o", "json", &x, "--", "fail", "4"]).stdout)
            .expect("json");
    assert_eq!(json["exitCode"], 4);
    assert_eq!(json["stderr"], "failing\n");
    // Without -i the command gets no input, even from a pipe (cat ends at once).
    let r = uc_input(&s, &["exec", &x, "--", "cat"], b"ignored\n");
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);

    // -i: the input to the command, its end an end of file.
    let r = uc_input(&s, &["exec", "-i", &x, "--", "cat"], b"hi\nthere\n");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hi\nthere\n"),
        "{}",
        r.stderr
    );
    let r = uc_input(&s, &["exec", "-i", &x, "--", "fail", "5"], b"");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (5, "failing\n"),
        "{}",
        r.stderr
    );
    let r = uc_input(
        &s,
        &["exec", "-it", &x, "--", "echo", "on", "a", "tty"],
        b"",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "on a tty\n"),
        "{}",
        r.stderr
    );

    // Timeouts: 124, as timeout(1), the server's and uc's own.
    let t = Instant::now();
    let r = uc(&s, &["exec", "--timeout", "1", &x, "--", "sleep", "30"]);
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(r.stderr.contains("did not end within 1 s"), "{}", r.stderr);
    let r = uc_input(
        &s,
        &["exec", "-i", "--timeout", "1", &x, "--", "sleep", "30"],
        b"",
    );
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(t.elapsed() < Duration::from_secs(20));

    // Not running: a conflict, said clearly.
    for args in [
        vec!["exec", stopped.as_str(), "--", "echo", "x"],
        vec!["exec", "-i", stopped.as_str(), "--", "cat"],
    ] {
        let r = uc(&s, &args);
        assert_eq!(r.code, 4, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("Error: ") && r.stderr.contains("(INVALID_STATE)"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(uc(&s, &["exec", &unique("nosuch"), "--", "echo"]).code, 3);
    assert_eq!(uc(&s, &["exec", &x]).code, 2, "a command is needed");
    ok(&s, &["rm", "-f", &x, &stopped]);
}

#[test]
fn console_echoes_is_one_clients_and_force_takes_it_over() {
    let s = Server::fake("");
    let x = unique("console");
    ok(&s, &["create", &x, "--image", "busybox", "--start"]);

    // Piped input: sent, the echo printed, then uc leaves once the console is quiet.
    let r = uc_input(&s, &["console", &x], b"hello console\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello console\n");
    assert!(
        r.stderr.contains(&format!(
            "Connected to the console of {x}; Ctrl-] to detach"
        )),
        "{}",
        r.stderr
    );

    // A first client holds it (its input open)...
    let mut cmd = uc_cmd(&s.base, Some(ADMIN));
    cmd.args(["console", &x]).stdin(Stdio::piped());
    let mut first = Spawned::new(cmd);
    let mut input = first.child.stdin.take().expect("stdin");
    input.write_all(b"first\n").expect("write");
    first.until(|l| l == "first");
    // ... so a second is refused: a conflict, with the way out.
    let r = uc(&s, &["console", &x]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("(CONSOLE_IN_USE)"), "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    // --force takes it over; the first says so and ends with the conflict code.
    let r = uc_input(&s, &["console", "--force", &x], b"second\n");
    assert_eq!((r.code, r.stdout.as_str()), (0, "second\n"), "{}", r.stderr);
    let (code, err) = first.wait();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("took the console over"), "{err}");
    drop(input);

    // Ctrl-] detaches at once, even with the input still open; what follows it is
    // not sent.
    let mut cmd = uc_cmd(&s.base, Some(ADMIN));
    cmd.args(["console", &x]).stdin(Stdio::piped());
    let mut third = Spawned::new(cmd);
    let mut input = third.child.stdin.take().expect("stdin");
    input.write_all(b"bye\n\x1dnot sent\n").expect("write");
    let (code, err) = third.wait();
    assert_eq!(code, 0, "{err}");
    drop(input);
    // Free again after the detach.
    let r = uc_input(&s, &["console", &x], b"again\n");
    assert_eq!((r.code, r.stdout.as_str()), (0, "again\n"), "{}", r.stderr);

    // Not running: a conflict.
    ok(&s, &["stop", "-f", &x]);
    assert_eq!(uc(&s, &["console", &x]).code, 4);
    ok(&s, &["rm", "-f", &x]);
}

#[test]
fn uc_exec_runs_in_a_real_docker_container() {
    let lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let tmp = TempDir::new("uc-cli-exec");
    let (s, _) = unicompute_tests::docker::server(&tmp.0);
    let name = unique("uc-exec");
    let _guard = unicompute_tests::docker::ContainerGuard(name.clone());
    ok(
        &s,
        &[
            "create", &name, "--image", TEST_IMAGE, "--start", "--", "sleep", "300",
        ],
    );
    let r = uc(
        &s,
        &[
            "exec",
            "-e",
            "WHO=uc",
            "-w",
            "/tmp",
            &name,
            "--",
            "sh",
            "-c",
            "echo out $WHO $(pwd); echo err >&2; exit 7",
        ],
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (7, "out uc /tmp\n", "err\n")
    );
    let r = uc_input(&s, &["exec", "-i", &name, "--", "cat"], b"through docker\n");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "through docker\n"),
        "{}",
        r.stderr
    );
    let r = uc(&s, &["exec", &name, "--", "/no/such/program"]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    ok(&s, &["rm", "-f", &name]);
    drop(lock);
}

/// A shell command line run on a pseudo-terminal made by script(1), with the
/// server's URL and the admin token in its environment; what it prints is gathered
/// as it comes, and what the test writes is typed on the terminal.
struct Pty {
    input: std::process::ChildStdin,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    child: std::process::Child,
}

impl Pty {
    fn spawn(base: &str, inner: &str) -> Pty {
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", inner, "/dev/null"]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UNICOMPUTE_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("UNICOMPUTE_URL", base)
            .env("UNICOMPUTE_TOKEN", ADMIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script");
        let input = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Pty { input, seen, child }
    }

    /// Waits for `what` to appear `nth` times (1: once); answers the output so far.
    fn wait_for(&self, what: &str, nth: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&self.seen.lock().expect("lock")).into_owned();
            if text.matches(what).count() >= nth {
                return text;
            }
            assert!(Instant::now() < deadline, "no {what:?} in {text:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `keys` on the terminal.
    fn write(&mut self, keys: &[u8]) {
        self.input.write_all(keys).expect("write");
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `uc` on a terminal: a pty made by script(1). The console is in raw mode (a key
/// goes at once, without a newline; Ctrl-] detaches), follows the window's size, and
/// the terminal's settings are back after a detach, after `exec -it`, and after a
/// SIGTERM.
#[test]
fn on_a_terminal_the_console_is_raw_and_the_terminal_restored() {
    let s = Server::fake("");
    let x = unique("pty");
    ok(&s, &["create", &x, "--image", "busybox", "--start"]);
    let tmp = TempDir::new("uc-pty");
    let (dir, uc) = (tmp.0.display(), uc_binary());
    let uc = uc.display();
    let inner = format!(
        "stty -g > {dir}/before; \
         '{uc}' exec -it {x} -- fail 3; echo \"exec-status $?\"; stty -g > {dir}/after-exec; \
         (while [ ! -e {dir}/go ]; do sleep 0.05; done; stty cols 91 rows 33 </dev/tty) & \
         '{uc}' console {x}; echo \"console-status $?\"; stty -g > {dir}/after-console; \
         '{uc}' console {x} </dev/tty & echo \"pid $!\"; wait $!; echo \"term-status $?\"; \
         stty -g > {dir}/after-term"
    );
    let mut pty = Pty::spawn(&s.base, &inner);
    // A file the shell writes after the line the test waits for: once it is whole.
    let read = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(tmp.0.join(name)).unwrap_or_default();
            if text.ends_with('\n') || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    pty.wait_for("exec-status 3", 1);
    assert_eq!(read("after-exec"), read("before"), "exec -it restored it");

    pty.wait_for(&format!("Connected to the console of {x}"), 1);
    std::fs::write(tmp.0.join("go"), "").expect("go");
    pty.wait_for("resized 91x33", 1);
    // No newline: only raw mode lets it through now.
    pty.write(b"raw-key");
    pty.wait_for("raw-key", 1);
    pty.write(b"\x1d");
    let text = pty.wait_for("console-status 0", 1);
    assert!(text.contains("Detached from the console"), "{text:?}");
    assert_eq!(
        read("after-console"),
        read("before"),
        "the detach restored it"
    );

    // SIGTERM while raw: restored, 143.
    let text = pty.wait_for(&format!("Connected to the console of {x}"), 2);
    let pid: i32 = text
        .split("pid ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("the pid");
    pty.write(b"typed");
    pty.wait_for("typed", 1);
    // SAFETY: kill(2) on the uc this test started (through script and sh).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    pty.wait_for("term-status 143", 1);
    assert!(!read("before").is_empty());
    assert_eq!(read("after-term"), read("before"), "SIGTERM restored it");
    ok(&s, &["rm", "-f", &x]);
}

/// Long work on a terminal: a pull draws a bar from its operation's progress, and
/// Ctrl-C (typed on the terminal) offers to cancel it: `y` cancels the operation in
/// the server. An upload draws its bytes as they go.
#[test]
fn on_a_terminal_long_work_draws_a_bar_and_ctrl_c_offers_to_cancel_it() {
    // 400 steps of 50 ms: the pull runs 20 s unless cancelled.
    let s = Server::fake("pull_steps = 400\npull_step_ms = 50\n");
    let reference = unique("slow");
    let tmp = TempDir::new("uc-bar");
    let disk = tmp.0.join("disk.raw");
    std::fs::write(&disk, vec![0x5a_u8; 8 << 20]).expect("write the file");
    let template = unique("tpl");
    let uc = uc_binary();
    // The shell traps SIGINT (a trapped signal is the default again in uc), so that
    // the Ctrl-C meant for uc does not end the shell too.
    let inner = format!(
        "trap 'echo shell-interrupted' INT; \
         '{uc}' images pull {reference}; echo \"pull-status $?\"; \
         '{uc}' images upload --name {template} '{disk}'; echo \"upload-status $?\"",
        uc = uc.display(),
        disk = disk.display()
    );
    let mut pty = Pty::spawn(&s.base, &inner);
    // The bar, redrawn in place.
    let text = pty.wait_for("\x1b[2Kdownloading  [", 3);
    assert!(text.contains("/400M"), "{text:?}");
    pty.write(b"\x03");
    let text = pty.wait_for("[y/N] ", 1);
    let id = text
        .split("(operation ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .expect("the prompt names the operation")
        .to_owned();
    assert!(
        text.contains(&format!(
            "Cancel the pull of {reference} (operation {id})? [y/N] "
        )),
        "{text:?}"
    );
    pty.write(b"y\n");
    let text = pty.wait_for("pull-status 130", 1);
    assert!(
        text.contains(&format!("Cancelled: operation {id}")),
        "{text:?}"
    );
    let op: Value =
        serde_json::from_str(&ok(&s, &["ops", "get", &id, "-o", "json"])).expect("json");
    assert_eq!(op["status"], "cancelled", "{op}");
    assert!(!ok(&s, &["images", "ls", "-q"])
        .lines()
        .any(|l| l == reference));

    let text = pty.wait_for("upload-status 0", 1);
    let full = format!("[{}] uploading 8.0M/8.0M", "#".repeat(30));
    assert!(text.contains(&full), "{text:?}");
    assert!(ok(&s, &["images", "ls", "-q"])
        .lines()
        .any(|l| l == template));
    ok(&s, &["images", "rm", &template]);
}

/// Ctrl-C on a pull that is not on a terminal: no question, the pull goes on in the
/// server, and uc says how to cancel it.
#[test]
fn off_a_terminal_ctrl_c_leaves_a_pull_running_and_says_how_to_cancel_it() {
    let s = Server::fake("pull_steps = 400\npull_step_ms = 50\n");
    let reference = unique("slow");
    let mut child = uc_cmd(&s.base, Some(ADMIN))
        .args(["images", "pull", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run uc");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    // Progress lines: the operation runs.
    while !line.contains("downloading") {
        line.clear();
        assert!(err.read_line(&mut line).expect("read") > 0, "no progress");
    }
    // SAFETY: kill(2) on the uc this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("read");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{rest}");
    let id = line.split(':').next().expect("op id").to_owned();
    assert!(
        rest.contains(&format!(
            "interrupted: the pull of {reference} goes on in the server as operation {id}; cancel it with: uc ops cancel {id}"
        )),
        "{rest}"
    );
    let op: Value =
        serde_json::from_str(&ok(&s, &["ops", "get", &id, "-o", "json"])).expect("json");
    assert_eq!(op["status"], "running", "{op}");
    let cancelled = ok(&s, &["ops", "cancel", &id]);
    assert!(cancelled.contains("cancelled"), "{cancelled}");
}

/// `uc` with the client config `config` and no URL in its environment (only `env`).
fn uc_config(config: &std::path::Path, env: &[(&str, &str)], args: &[&str], input: &[u8]) -> Run {
    let mut cmd = uc_cmd("", None);
    cmd.env_remove("UNICOMPUTE_URL")
        .env("UNICOMPUTE_CLIENT_CONFIG", config)
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run uc");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write the input");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for uc");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!r.stderr.contains("panicked"), "uc panicked: {}", r.stderr);
    r
}

/// Remotes, as incus's: `remote add` checks the URL and the token and keeps them in
/// the client config (mode 0600; a token file by its path), `ls` never shows a
/// token, `use` picks the current one; --remote and UNICOMPUTE_REMOTE name another;
/// --url goes elsewhere without any remote's token.
#[test]
fn remotes_live_in_the_client_config_and_a_token_goes_only_to_its_own_url() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::fake("");
    let tmp = TempDir::new("uc-remote");
    let config = tmp.0.join("cfg").join("client.toml");
    let viewer_file = tmp.0.join("viewer.token");
    std::fs::write(&viewer_file, format!("{VIEWER}\n")).expect("token file");
    let run =
        |env: &[(&str, &str)], args: &[&str], input: &[u8]| uc_config(&config, env, args, input);

    // Nothing configured: the default URL, and a remote that is not there is named.
    let r = run(&[], &["--remote", "nope", "ls"], b"");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no remote named 'nope'"), "{}", r.stderr);

    // A wrong token or an unreachable URL: refused, nothing kept.
    let r = run(
        &[],
        &["remote", "add", "a", &s.base, "--token-stdin"],
        b"wrong\n",
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("the remote was not added"),
        "{}",
        r.stderr
    );
    let r = run(&[], &["remote", "add", "gone", "http://127.0.0.1:9"], b"");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!config.exists());
    let r = run(&[], &["remote", "add", "bad name", &s.base], b"");
    assert_eq!(r.code, 2, "{}", r.stderr);

    let r = run(
        &[],
        &["remote", "add", "a", &s.base, "--token-stdin"],
        ADMIN.as_bytes(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Remote a added (now the current remote)\n");
    let mode = std::fs::metadata(&config)
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let r = run(
        &[],
        &[
            "remote",
            "add",
            "v",
            &s.base,
            "--token-file",
            viewer_file.to_str().expect("utf-8"),
        ],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Remote v added\n");
    let kept = std::fs::read_to_string(&config).expect("config");
    assert!(kept.contains(ADMIN), "{kept}");
    assert!(
        !kept.contains(VIEWER),
        "a token file is kept by its path: {kept}"
    );
    // Taken: a conflict.
    let r = run(&[], &["remote", "add", "a", &s.base, "--no-check"], b"");
    assert_eq!(r.code, 4, "{}", r.stderr);
    // Unreachable but forced.
    let r = run(
        &[],
        &["remote", "add", "gone", "http://127.0.0.1:9", "--no-check"],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    let r = run(&[], &["remote", "ls"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stdout.contains(ADMIN) && !r.stdout.contains(VIEWER),
        "{}",
        r.stdout
    );
    let rows = columns(&r.stdout, &["NAME", "URL", "AUTH"]);
    assert_eq!(rows.len(), 3, "{}", r.stdout);
    assert_eq!(
        rows[0],
        vec!["a (current)".to_owned(), s.base.clone(), "token".into()]
    );
    assert_eq!(rows[1][0], "gone");
    assert_eq!(rows[1][2], "none");
    assert_eq!(rows[2][2], format!("token file {}", viewer_file.display()));
    let list: Value =
        serde_json::from_str(&run(&[], &["remote", "ls", "-o", "json"], b"").stdout).expect("json");
    assert_eq!(list[0]["name"], "a");
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[2]["auth"], "token-file");

    // The current remote (admin) is used with no URL and no token given.
    let x = unique("rmt");
    let r = run(&[], &["create", &x, "--image", "busybox"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // --remote and UNICOMPUTE_REMOTE: the viewer's remote cannot create.
    let r = run(
        &[],
        &[
            "--remote",
            "v",
            "create",
            &unique("rmt"),
            "--image",
            "busybox",
        ],
        b"",
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = run(&[("UNICOMPUTE_REMOTE", "v")], &["rm", &x], b"");
    assert_eq!(r.code, 5, "{}", r.stderr);
    // use: the viewer's is current now; it reads.
    let r = run(&[], &["remote", "use", "v"], b"");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Current remote: v\n"),
        "{}",
        r.stderr
    );
    let r = run(&[], &["ls", "-a", "-q"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.lines().count() >= 1, "{}", r.stdout);
    assert_eq!(run(&[], &["rm", &x], b"").code, 5);
    // A token given on the command line or in the environment wins over the remote's.
    let r = run(&[("UNICOMPUTE_TOKEN", ADMIN)], &["rm", &x], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(run(&[], &["remote", "use", "nope"], b"").code, 3);

    // --url (or UNICOMPUTE_URL) goes to another server: no remote's token with it.
    for via_env in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            let mut head = String::new();
            let mut reader = BufReader::new(&conn);
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                head.push_str(&l);
            }
            let mut w = &conn;
            let _ = w.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            head
        });
        let r = if via_env {
            run(&[("UNICOMPUTE_URL", &url)], &["ls"], b"")
        } else {
            run(&[], &["--url", &url, "ls"], b"")
        };
        assert_ne!(r.code, 0);
        let head = seen.join().expect("the request");
        assert!(head.starts_with("GET /api/v1/compute/instances"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }

    // rm: the current one goes, and nothing is current.
    let r = run(&[], &["remote", "rm", "v"], b"");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Remote v removed\n"),
        "{}",
        r.stderr
    );
    assert_eq!(run(&[], &["remote", "rm", "v"], b"").code, 3);
    let list: Value =
        serde_json::from_str(&run(&[], &["remote", "ls", "-o", "json"], b"").stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert!(list
        .as_array()
        .expect("list")
        .iter()
        .all(|r| r["current"] == false));

    // A config that is not TOML, or has an unknown key: named, exit 2.
    std::fs::write(
        &config,
        "current = \"a\"\n[remotes.a]\nurl = \"x\"\ntokn = \"t\"\n",
    )
    .expect("write");
    let r = run(&[], &["ls"], b"");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&config.display().to_string()) && r.stderr.contains("tokn"),
        "{}",
        r.stderr
    );
}

/// `-o yaml` prints what `-o json` prints, as YAML; `create -f` takes a YAML spec.
#[test]
fn yaml_out_and_a_yaml_spec_in() {
    let s = Server::fake("");
    let tmp = TempDir::new("uc-yaml");
    let name = unique("yml");
    let spec = tmp.0.join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            "# a comment, as YAML allows\nname: {name}\nconfig:\n  image: busybox\n  env:\n    - MODE=yaml\nresources:\n  cpu:\n    cores: 2\nmetadata:\n  labels:\n    team: infra\n"
        ),
    )
    .expect("spec");
    let id = ok(&s, &["create", "-f", spec.to_str().expect("utf-8")]);
    let id = id.trim();
    let yaml: Value = yaml_serde::from_str(&ok(&s, &["get", id, "-o", "yaml"])).expect("yaml");
    let json: Value = serde_json::from_str(&ok(&s, &["get", id, "-o", "json"])).expect("json");
    assert_eq!(yaml, json);
    assert_eq!(yaml["name"], name.as_str());
    assert_eq!(yaml["resources"]["cpu"]["cores"], 2);
    assert_eq!(yaml["metadata"]["labels"]["team"], "infra");
    let list: Value = yaml_serde::from_str(&ok(&s, &["ls", "-a", "-o", "yaml"])).expect("yaml");
    assert!(list
        .as_array()
        .expect("a sequence")
        .iter()
        .any(|i| i["id"] == id));

    // A spec that is neither: exit 2, the file named.
    std::fs::write(&spec, "name: [unclosed\n").expect("spec");
    let r = uc(&s, &["create", "-f", spec.to_str().expect("utf-8")]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("spec.yaml: not YAML"), "{}", r.stderr);
    std::fs::write(&spec, "- a\n- list\n").expect("spec");
    let r = uc(&s, &["create", "-f", spec.to_str().expect("utf-8")]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not an object"), "{}", r.stderr);
    ok(&s, &["rm", id]);
}

/// `uc` against the real kvm backend and the bootable test guest: the guest is
/// uploaded as a template, created from a YAML spec that flags complete, listed,
/// read (logs), entered (exec through its agent, the console from a pipe), stopped
/// by its own power-off, removed, and its template removed. Nothing is sent to the
/// guest's address.
#[test]
fn uc_drives_a_real_kvm_guest() {
    use unicompute_tests::guest;
    use unicompute_tests::kvm::KvmFixture;
    let f = KvmFixture::new();
    let s = f.guest_server();
    let template = format!("{}-up.raw", f.prefix);
    let image = guest::template();
    let up = ok(
        &s,
        &[
            "images",
            "upload",
            "--name",
            &template,
            image.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(up, format!("{template}\n"));
    let rows = columns(
        &ok(&s, &["images", "ls", "-b", "kvm"]),
        &["BACKEND", "NAME", "ID", "FORMAT", "SIZE", "CREATED"],
    );
    let row = rows
        .iter()
        .find(|r| r[1] == template)
        .unwrap_or_else(|| panic!("{template} in {rows:?}"));
    assert_eq!(
        (row[0].as_str(), row[3].as_str()),
        ("kvm", "raw"),
        "{row:?}"
    );

    let tmp = TempDir::new("uc-kvm-cli");
    let name = format!("{}-cli", f.prefix);
    let token = format!("{name}-{}", uuid::Uuid::new_v4());
    let spec = tmp.0.join("vm.yaml");
    std::fs::write(&spec, "config:\n  networkType: none\n").expect("spec");
    let user_data = tmp.0.join("user-data");
    std::fs::write(&user_data, guest::user_data(&token)).expect("user-data");
    let id = ok(
        &s,
        &[
            "create",
            &name,
            "-f",
            spec.to_str().expect("utf-8"),
            "--image",
            &template,
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--cloud-init",
            user_data.to_str().expect("utf-8"),
            "--start",
        ],
    );
    let id = id.trim().to_owned();
    let _log = RemoveOnDrop(
        std::path::Path::new("/var/log/libvirt/qemu").join(format!("{id}-serial.log")),
    );
    let rows = columns(&ok(&s, &["ls"]), &LS);
    let row = rows.iter().find(|r| r[0] == id).expect("listed");
    assert_eq!(
        row[..8],
        [
            id.as_str(),
            &name,
            "kvm",
            "vm",
            "running",
            &template,
            "1",
            "256M"
        ]
    );

    // Its boot in the logs: the user-data's marker, then the agent and ready.
    let marker = format!("{}{token}", guest::MARKER_SEEN);
    let deadline = Instant::now() + Duration::from_secs(300);
    let logs = loop {
        let logs = ok(&s, &["logs", &name]);
        if logs.contains(guest::READY) && logs.contains(guest::AGENT) {
            break logs;
        }
        assert!(Instant::now() < deadline, "not ready in 300 s:\n{logs}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(logs.contains(&marker), "{logs}");
    let tail = ok(&s, &["logs", "--tail", "2", &name]);
    assert_eq!(tail.lines().count(), 2, "{tail}");

    // exec through the guest agent: its status, both streams.
    let r = uc(
        &s,
        &[
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "echo out-$((6*7)); echo err >&2; exit 3",
        ],
    );
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str()),
        ("out-42\n", "err\n")
    );

    // The console from a pipe: typed into the guest's shell, its answer printed.
    let r = uc_input(
        &s,
        &["console", &name],
        format!("echo cons-$((40+2))-{token}\n").as_bytes(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("cons-42-{token}")),
        "{}",
        r.stdout
    );

    // A graceful stop: the guest powers itself off on the ACPI button.
    assert_eq!(ok(&s, &["stop", &name]), format!("{name}\n"));
    let got: Value = serde_json::from_str(&ok(&s, &["get", &name, "-o", "json"])).expect("json");
    assert_eq!(got["state"], "stopped", "{got}");
    assert!(ok(&s, &["logs", &name]).contains(guest::POWERING_OFF));
    // The template is in use while the instance lives.
    assert_eq!(uc(&s, &["images", "rm", "-b", "kvm", &template]).code, 4);
    // libvirt's own log of the domain (written at its start) goes with it.
    let qemu_log = std::path::Path::new("/var/log/libvirt/qemu").join(format!("{name}.log"));
    assert!(qemu_log.exists(), "{} after a start", qemu_log.display());
    assert_eq!(ok(&s, &["rm", &name]), format!("{name}\n"));
    assert!(
        !qemu_log.exists(),
        "{} left after the delete",
        qemu_log.display()
    );
    assert_eq!(uc(&s, &["get", &name]).code, 3);
    assert_eq!(
        ok(&s, &["images", "rm", "-b", "kvm", &template]),
        format!("{template}\n")
    );
    assert!(f.domains().is_empty(), "left: {:?}", f.domains());
}

/// Removes a file when dropped (a serial log, also on failure).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `usage --watch` redraws its table until Ctrl-C, then ends with 130 and nothing on
/// stderr; `-o yaml` gives a document per refresh.
#[test]
fn usage_watch_refreshes_until_ctrl_c() {
    let s = Server::fake("");
    let name = unique("w");
    ok(&s, &["create", &name, "--image", "busybox", "--start"]);
    let mut cmd = uc_cmd(&s.base, Some(ADMIN));
    cmd.args(["usage", "--watch", "--interval", "1", &name]);
    let mut w = Spawned::new(cmd);
    let seen = w.until(|l| l.starts_with("ID "));
    assert_eq!(seen.len(), 1, "{seen:?}");
    let seen = w.until(|l| l.starts_with("ID "));
    // The row of the first refresh, then the header of the second.
    assert!(seen[0].contains(&name) && seen[0].contains('%'), "{seen:?}");
    w.sigint();
    let (code, err) = w.wait();
    assert_eq!(code, 130, "{err}");
    assert_eq!(err, "");

    let mut cmd = uc_cmd(&s.base, Some(ADMIN));
    cmd.args(["usage", "-w", "--interval", "1", "-o", "yaml", &name]);
    let mut w = Spawned::new(cmd);
    w.until(|l| l == "---");
    let doc = w.until(|l| l == "---");
    let doc: Value = yaml_serde::from_str(&doc[..doc.len() - 1].join("\n")).expect("yaml");
    assert_eq!(doc[0]["name"], name.as_str(), "{doc}");
    assert!(
        doc[0]["usage"]["memory"]["limit"].as_u64().is_some(),
        "{doc}"
    );
    w.sigint();
    assert_eq!(w.wait().0, 130);
    ok(&s, &["rm", "-f", &name]);
}
