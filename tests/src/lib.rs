//! Helpers for the black-box tests: build the fixture plugins, start the real
//! `unicompute` binary on a private config and port, and talk HTTP to it.
//!
//! The binary and the workspace plugins come from `cargo build --workspace` (the test
//! command runs it first). Plugins outside the workspace (the fake plugin, the
//! fixtures) are built here with cargo into `target/ext`, as a third party would.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

pub mod docker;
pub mod guest;
pub mod kvm;
pub mod registry;
pub mod sse;
pub mod ws;

pub use docker::FileLock;

/// Tokens every test server accepts.
pub const ADMIN: &str = "admin-token-for-tests";
/// Operator token.
pub const OPERATOR: &str = "operator-token-for-tests";
/// Viewer token.
pub const VIEWER: &str = "viewer-token-for-tests";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root().join(p) } else { p })
        .unwrap_or_else(|| root().join("target"))
}

/// The build profile the tests use: `debug`, or `release` when
/// `UCTEST_PROFILE=release` (the benchmarks set it).
pub fn profile() -> String {
    std::env::var("UCTEST_PROFILE").unwrap_or_else(|_| "debug".into())
}

/// A port free on loopback now (bound and released: another process could take it
/// before the caller does, which is fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The `unicompute` binary built by `cargo build --workspace`, or the one named by
/// `UCTEST_HOST_BINARY` (to run the tests against another build, say an older one).
/// The built one must be newer than every source it is made of: a stale binary
/// would pass or fail for code that is no longer there.
pub fn host_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("UCTEST_HOST_BINARY") {
        return PathBuf::from(p);
    }
    let p = target_dir().join(profile()).join("unicompute");
    assert_fresh(&p, &["host", "plugin-api"]);
    p
}

/// The `uc` client binary built by `cargo build --workspace`, or the one named by
/// `UCTEST_UC_BINARY`; as [`host_binary`], it must be newer than its sources.
pub fn uc_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("UCTEST_UC_BINARY") {
        return PathBuf::from(p);
    }
    let p = target_dir().join(profile()).join("uc");
    assert_fresh(&p, &["cli", "client"]);
    p
}

/// A plugin of the workspace (`docker`, `kvm`) built by `cargo build --workspace`,
/// newer than its sources (as [`host_binary`]).
pub fn workspace_plugin(name: &str) -> PathBuf {
    let p = target_dir()
        .join(profile())
        .join(format!("libunicompute_{name}.so"));
    assert_fresh(&p, &["plugin-api", &format!("plugins/{name}")]);
    p
}

/// The newest modification time of the Rust sources an artifact is built from (the
/// `*.rs` files under each crate's `src/`: what cargo's rebuild follows, so that a
/// file touched without a change that needs a build does not fail the check).
pub fn newest_source(crates: &[&str]) -> Option<(std::time::SystemTime, PathBuf)> {
    fn walk(p: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), newest);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            if let Ok(t) = meta.modified() {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    *newest = Some((t, p.to_owned()));
                }
            }
        }
    }
    let mut newest = None;
    for c in crates {
        walk(&root().join(c).join("src"), &mut newest);
    }
    newest
}

/// Fails unless `artifact` exists and is newer than the sources of `crates`.
fn assert_fresh(artifact: &Path, crates: &[&str]) {
    let built = std::fs::metadata(artifact)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run cargo build --workspace first (scripts/test.sh does)",
                artifact.display()
            )
        });
    if let Some((changed, file)) = newest_source(crates) {
        assert!(
            built >= changed,
            "{} is older than {}: run cargo build --workspace (a stale binary tests old code)",
            artifact.display(),
            file.display()
        );
    }
}

static BUILDS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Builds a plugin project outside the workspace (relative to the workspace root)
/// with cargo, as its author would, and returns the `.so`. `features` may be empty.
/// Each (project, features) is built once per test process. Every project and
/// feature set shares one target directory (`target/ext`: the dependencies are
/// built once, not once per feature set); the library is then copied to a path of
/// its own per feature set, so a later build does not overwrite a library a
/// server has loaded.
pub fn build_external(project: &str, lib: &str, features: &str) -> PathBuf {
    let release = profile() == "release";
    let key = format!("{project}#{features}#{release}");
    // A test that panicked while building leaves the list as it was.
    let mut builds = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = builds.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let dir = target_dir().join("ext");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(root().join(project).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&dir);
    if !features.is_empty() {
        cmd.arg("--features").arg(features);
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building {project} failed");
    let built = dir.join(profile()).join(format!("lib{lib}.so"));
    assert!(built.exists(), "{} not built", built.display());
    let out = dir
        .join("libs")
        .join(profile())
        .join(if features.is_empty() {
            "default"
        } else {
            features
        });
    std::fs::create_dir_all(&out).expect("make target/ext/libs");
    let so = out.join(format!("lib{lib}.so"));
    // A copy then a rename: a server of an earlier test run that still maps the old
    // file keeps its inode.
    let part = out.join(format!(".lib{lib}.so.{}", std::process::id()));
    std::fs::copy(&built, &part).expect("copy the built library");
    std::fs::rename(&part, &so).expect("put the built library in place");
    builds.push((key, so.clone()));
    so
}

/// The fake plugin (`tests/fake-plugin`).
pub fn fake_plugin() -> PathBuf {
    build_external("tests/fake-plugin", "unicompute_fake", "")
}

/// Whether a test that `var` can skip is skipped. Only `var=1` skips; under
/// `CI=true` a skip is a failure (a green CI run has run everything). A skip, and a
/// value that does not skip, are written to the terminal (not captured by the test
/// harness), so that the run's output shows them.
pub fn skip_requested(var: &str, what: &str) -> bool {
    use std::io::Write;
    let Some(value) = std::env::var_os(var) else {
        return false;
    };
    let value = value.to_string_lossy().into_owned();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let line = if value != "1" {
        format!("NOT SKIPPED: {what}: {var}={value} (only 1 skips)\n")
    } else {
        assert!(!ci, "{var}=1 under CI=true: {what} must run in CI");
        format!("SKIPPED: {what} ({var}=1)\n")
    };
    let _ = std::io::stderr().write_all(line.as_bytes());
    value == "1"
}

/// A name made of `prefix`, this process's id and a random part: things named so
/// that outlive their process (a killed run) are recognised by [`dead_owner`].
pub fn owned(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Whether `name` was made by [`owned`] with `prefix` in a process that is gone.
pub fn dead_owner(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    match rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// Removes, when dropped, what a `plugins check` run made: its output names it in a
/// `NAME` line, and `remove` is called with that name (also when the test failed).
pub struct CheckLeftovers<F: FnMut(&str)> {
    /// The check's output.
    pub output: String,
    /// Removes everything named with the given prefix.
    pub remove: F,
}

impl<F: FnMut(&str)> Drop for CheckLeftovers<F> {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .output
            .lines()
            .filter_map(|l| l.strip_prefix("NAME  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with("uc-check-"))
            .map(str::to_owned)
            .collect();
        for n in names {
            (self.remove)(&n);
        }
    }
}

/// A unique name for things a test creates.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn sha(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The `[auth]` table with the three test tokens.
pub fn auth_toml() -> String {
    let mut s = String::new();
    for (name, token, role) in [
        ("admin", ADMIN, "admin"),
        ("operator", OPERATOR, "operator"),
        ("viewer", VIEWER, "viewer"),
    ] {
        s.push_str(&format!(
            "[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
            sha(token)
        ));
    }
    s
}

/// A private directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes one.
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its private directory (config, plugins, log).
    pub dir: TempDir,
    agent: ureq::Agent,
    stdout: std::sync::Arc<Mutex<Vec<String>>>,
}

/// A response: status, headers we look at, body as JSON (Null when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Body as JSON.
    pub json: Value,
    /// Raw body.
    pub text: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Location`.
    pub location: Option<String>,
    /// `Retry-After`.
    pub retry_after: Option<String>,
    /// `Allow`.
    pub allow: Option<String>,
}

impl Resp {
    /// The error code of an error envelope.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// Options for [`Server::start_with`].
pub struct ServerOptions {
    /// Plugin files to copy into the plugin directory.
    pub plugins: Vec<PathBuf>,
    /// Extra files `(name, contents)` to put in the plugin directory.
    pub junk: Vec<(String, Vec<u8>)>,
    /// Extra TOML appended to the config (backends...).
    pub toml: String,
    /// Extra keys of the config's `[server]` table (`resync_interval_secs = 1\n`).
    pub server: String,
    /// Whether to write the test tokens into the config.
    pub tokens: bool,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// `plugins.watch_interval_secs`; the server's default when none.
    pub watch_interval_secs: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            plugins: vec![],
            junk: vec![],
            toml: String::new(),
            server: String::new(),
            tokens: true,
            env: vec![],
            watch_interval_secs: None,
        }
    }
}

/// An HTTP agent for loopback: no proxy, statuses as answers, a 120 s limit.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        // Loopback only: never through a proxy from the environment.
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// The value at fraction `p` (0..=1) of sorted durations (a benchmark's p50, p99).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `VmRSS` of a process, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

impl Server {
    /// A server with the fake plugin and one backend `fake` (plus `extra` TOML).
    pub fn fake(extra: &str) -> Server {
        Server::start_with(ServerOptions {
            plugins: vec![fake_plugin()],
            toml: format!("[backends.fake]\nplugin = \"fake\"\n{extra}"),
            ..Default::default()
        })
    }

    /// Writes a config and starts the binary; returns once it listens.
    pub fn start_with(opts: ServerOptions) -> Server {
        let dir = TempDir::new("unicompute-test");
        let plugins = dir.0.join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugin dir");
        for p in &opts.plugins {
            std::fs::copy(p, plugins.join(p.file_name().expect("file name"))).expect("copy plugin");
        }
        for (name, contents) in &opts.junk {
            std::fs::write(plugins.join(name), contents).expect("junk");
        }
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nhealth_interval_secs = 1\n{}[plugins]\ndirs = [\"plugins\"]\n{}{}\n{}",
            opts.server,
            opts.watch_interval_secs.map(|n| format!("watch_interval_secs = {n}\n")).unwrap_or_default(),
            if opts.tokens { auth_toml() } else { format!("[auth]\ntoken_file = \"{}\"\n", dir.0.join("admin.token").display()) },
            opts.toml
        );
        std::fs::write(dir.0.join("unicompute.toml"), &config).expect("config");
        let log = std::fs::File::create(dir.0.join("server.log")).expect("log");
        let mut cmd = Command::new(host_binary());
        // The server refuses unknown UNICOMPUTE_* variables: pass only ours.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UNICOMPUTE_") {
                cmd.env_remove(k);
            }
        }
        // Its temp dir inside the test's: the plugins' private copies and the fake's
        // default records go with the test's directory, and no two servers share them.
        let tmp = dir.0.join("tmp");
        std::fs::create_dir_all(&tmp).expect("the server's temp dir");
        cmd.arg("--config")
            .arg(dir.0.join("unicompute.toml"))
            .current_dir(&dir.0)
            .env("TMPDIR", &tmp)
            .env("UNICOMPUTE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        // Its own process group: what its plugins start (the example plugin's
        // processes) is killed with it when the test ends, also on failure.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start unicompute");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let printed = std::sync::Arc::new(Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&printed);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("unicompute: listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                keep.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.0.join("server.log")).unwrap_or_default();
                panic!("server did not start; its log:\n{log}");
            }
        };
        Server {
            child,
            base,
            dir,
            agent: agent(),
            stdout: printed,
        }
    }

    /// What the server printed on its standard output so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process as the kernel knows it: its id and its start time (clock ticks
    /// since boot, `/proc/PID/stat` field 22). Panics when the process has exited:
    /// a server that died (and whose pid could be reused) is not "the same process".
    pub fn identity(&mut self) -> (u32, u64) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the server exited: {:?}",
            self.child.try_wait()
        );
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
        // The command name (field 2) may hold spaces: fields are counted after ')'.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let start = after
            .split_whitespace()
            .nth(19)
            .and_then(|f| f.parse().ok())
            .expect("start time in /proc stat");
        (pid, start)
    }

    /// Sends a request. `token` may be None; `body` is sent as is.
    pub fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Resp {
        request(&self.agent, &self.base, method, path, token, body)
    }

    /// Sends a request with a token and an optional JSON body.
    pub fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("json"));
        self.raw(method, path, Some(token), bytes.as_deref())
    }

    /// GET as admin.
    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, ADMIN, None)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP request with an agent.
pub fn request(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Resp {
    let uri = format!("{base}{path}");
    let mut builder = ureq::http::Request::builder().method(method).uri(&uri);
    if let Some(t) = token {
        builder = builder.header("Authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        builder = builder.header("Content-Type", "application/json");
    }
    let result = match body {
        Some(b) => agent.run(builder.body(b.to_vec()).expect("request")),
        None => agent.run(builder.body(()).expect("request")),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, location, retry_after, allow) = (
        header("content-type"),
        header("location"),
        header("retry-after"),
        header("allow"),
    );
    let status = resp.status().as_u16();
    let mut text = String::new();
    let _ = resp.body_mut().as_reader().read_to_string(&mut text);
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        json,
        text,
        content_type,
        location,
        retry_after,
        allow,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the process group of our own running child.
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ({}) ---\n{}", self.base, self.log());
        }
    }
}

/// Polls `f` until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A venv under the target directory with one pinned PyPI package (`name==version`),
/// made once and reused; `bin` is a script the package installs, whose presence
/// says the venv is complete.
pub fn python_venv(pinned: &str, bin: &str) -> PathBuf {
    let dir = target_dir().join(format!("pyvenv-{}", pinned.replace("==", "-")));
    if dir.join("bin").join(bin).exists() {
        return dir;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .expect("python3");
    assert!(ok.success(), "python3 -m venv {}", dir.display());
    let ok = Command::new(dir.join("bin").join("pip"))
        .args(["install", "-q", "--disable-pip-version-check", pinned])
        .status()
        .expect("pip");
    assert!(ok.success(), "pip install {pinned}");
    dir
}
