//! `unicompute plugins check FILE.so [--config TABLE.toml]`: loads a plugin file as the
//! host would and runs the standard conformance scenario against a backend made from
//! the given settings. One PASS/FAIL/SKIP line per step; false when any step failed.
//!
//! The config file has two tables, both optional:
//!
//! ```toml
//! [backend]            # the backend's settings, as in [backends.NAME]
//! endpoint = "unix:///var/run/docker.sock"
//! [instance]           # what the scenario creates
//! config = { image = "busybox" }
//! resources = { cpu = { cores = 1 }, memory = { limit = 268435456 } }
//! stop_timeout = 5     # seconds for the graceful stop step
//! ```
//!
//! Without `instance.config`, the scenario creates from the first image the backend
//! lists. Streams (interface 1.3) are checked when the backend offers them: logs end
//! without follow, a follow opens and closes, `exec echo` answers its output and exit
//! code 0, the console opens; the console and exec of a stopped instance are
//! `INVALID_STATE`; a stream refused while `describe` lists it fails.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;
use unicompute_plugin_api::stream::{ConsoleOptions, ExecOptions, LogsOptions};
use unicompute_plugin_api::{
    Backend, ByteStream, CreateRequest, ErrorCode, EventSink, Instance, InstanceState, JsonMap,
    Output, PluginError, Resources, StopOptions, StreamKind, StreamRequest, UpdateRequest,
};

use crate::plugins::loader;

/// The check's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// The backend's settings.
    pub backend: serde_json::Map<String, serde_json::Value>,
    /// What to create.
    pub instance: InstanceSpec,
}

/// What the scenario creates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceSpec {
    /// Backend-specific config; default `{ image = <first image> }`.
    pub config: Option<JsonMap>,
    /// Resources; default 1 core, 256 MiB.
    pub resources: Option<Resources>,
    /// Seconds for the graceful stop step.
    pub stop_timeout: u64,
}

impl Default for InstanceSpec {
    fn default() -> Self {
        InstanceSpec {
            config: None,
            resources: None,
            stop_timeout: 5,
        }
    }
}

struct Runner<'a, W: Write> {
    out: &'a mut W,
    passed: usize,
    failed: Vec<String>,
}

type Check<T> = Result<T, String>;

fn code(e: &PluginError) -> String {
    format!("{}: {}", e.code.as_str(), e.message)
}

/// Passes when `res` is `INSTANCE_NOT_FOUND`.
fn expect_not_found<T>(res: Result<T, PluginError>, what: &str) -> Check<()> {
    match res {
        Err(e) if e.code == ErrorCode::InstanceNotFound => Ok(()),
        Err(e) => Err(format!("got {}", code(&e))),
        Ok(_) => Err(format!("{what} succeeded")),
    }
}

fn expect_state(i: &Instance, want: &[InstanceState]) -> Check<()> {
    if want.contains(&i.state) {
        Ok(())
    } else {
        Err(format!(
            "state is {}, expected {}",
            i.state.as_str(),
            want.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    }
}

impl<W: Write> Runner<'_, W> {
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Check<T>) -> Option<T> {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err("the step panicked".into()));
        let ms = started.elapsed().as_millis();
        match result {
            Ok(v) => {
                let _ = writeln!(self.out, "PASS  {name} ({ms} ms)");
                self.passed += 1;
                Some(v)
            }
            Err(why) => {
                let _ = writeln!(self.out, "FAIL  {name}: {why} ({ms} ms)");
                self.failed.push(name.to_owned());
                None
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        let _ = writeln!(self.out, "SKIP  {name}: {why}");
    }
}

/// Runs the check; prints to `out`; true when every step passed.
pub fn run(file: &Path, config: Option<&Path>, out: &mut impl Write) -> bool {
    let mut r = Runner {
        out,
        passed: 0,
        failed: Vec::new(),
    };
    let cfg: CheckConfig = match config {
        None => CheckConfig::default(),
        Some(p) => match Figment::from(Toml::file_exact(p)).extract() {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(r.out, "FAIL  config: {e}");
                return false;
            }
        },
    };
    let Some(plugin) = r.step("load", || loader::load_file(file)) else {
        return finish(r);
    };
    let h = &plugin.handshake;
    let _ = writeln!(
        r.out,
        "      plugin {} {} (kind {}, interface {}) from {}",
        h.name,
        h.version,
        h.kind,
        h.interface_version,
        file.display()
    );
    let settings = serde_json::Value::Object(cfg.backend.clone());
    let Some(backend) = r.step("create backend", || {
        plugin
            .create_backend("check", &settings, EventSink::discard())
            .map_err(|e| code(&e))
    }) else {
        return finish(r);
    };
    scenario(&mut r, &backend, &cfg.instance);
    backend.shutdown();
    finish(r)
}

fn finish<W: Write>(r: Runner<'_, W>) -> bool {
    let _ = writeln!(r.out, "{} passed, {} failed", r.passed, r.failed.len());
    if !r.failed.is_empty() {
        let _ = writeln!(r.out, "failed steps: {}", r.failed.join(", "));
    }
    r.failed.is_empty()
}

fn scenario<W: Write>(r: &mut Runner<'_, W>, b: &dyn Backend, spec: &InstanceSpec) {
    use InstanceState::*;
    if r.step("health", || b.health().map_err(|e| code(&e)))
        .is_none()
    {
        return;
    }
    let desc = r.step("describe", || {
        let d = b.describe().map_err(|e| code(&e))?;
        if d.supported_types.is_empty() {
            return Err("supportedTypes is empty".into());
        }
        Ok(d)
    });
    r.step("host resources", || {
        let h = b.host_resources().map_err(|e| code(&e))?;
        if h.cpus == 0 || h.memory == 0 {
            return Err(format!(
                "cpus {} and memory {} must be > 0",
                h.cpus, h.memory
            ));
        }
        Ok(())
    });
    let images = r.step("images", || b.images().map_err(|e| code(&e)));
    let config = match (&spec.config, images.as_ref().and_then(|i| i.first())) {
        (Some(c), _) => c.clone(),
        (None, Some(img)) => {
            let mut m = JsonMap::new();
            m.insert("image".into(), img.name.clone().into());
            m
        }
        (None, None) => {
            r.step("pick an image", || -> Check<()> {
                Err("no image listed and no [instance] config given".into())
            });
            return;
        }
    };
    let resources = spec.resources.clone().unwrap_or_else(|| {
        serde_json::from_value(
            serde_json::json!({"cpu": {"cores": 1}, "memory": {"limit": 268435456u64}}),
        )
        .unwrap_or_default()
    });
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let id = format!("chk-{suffix}");
    let name = format!("uc-check-{suffix}");
    // Said first, so that whoever runs the check can remove what a failed run left.
    let _ = writeln!(
        r.out,
        "NAME  {name} (what the check makes is named {name}*)"
    );

    r.step(
        "create with an invalid config is refused and leaves nothing",
        || {
            let bad_name = format!("{name}-bad");
            let res = b.create(CreateRequest {
                id: format!("{id}-bad"),
                name: bad_name.clone(),
                config: JsonMap::new(),
                resources: resources.clone(),
                labels: Default::default(),
                start: false,
                created_at: Utc::now().trunc_subsecs(3),
                operation: None,
            });
            match res {
                Ok(_) => {
                    let _ = b.delete(&format!("{id}-bad"), true);
                    Err("a create with an empty config succeeded".into())
                }
                Err(e) if e.code == ErrorCode::InternalError => {
                    Err(format!("internal error: {}", e.message))
                }
                Err(_) => {
                    let left = b.list().map_err(|e| code(&e))?;
                    if left.iter().any(|i| i.name == bad_name) {
                        return Err("the failed create left an instance".into());
                    }
                    Ok(())
                }
            }
        },
    );

    let created = r.step("create", || {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("unicompute.check".to_owned(), "1".to_owned());
        let i = b
            .create(CreateRequest {
                id: id.clone(),
                name: name.clone(),
                config: config.clone(),
                resources: resources.clone(),
                labels,
                start: false,
                created_at: Utc::now().trunc_subsecs(3),
                operation: None,
            })
            .map_err(|e| code(&e))?;
        if i.id != id || i.name != name {
            return Err(format!(
                "got id {} name {}, asked {id} {name}",
                i.id, i.name
            ));
        }
        expect_state(&i, &[Created, Stopped])?;
        if let Some(d) = &desc {
            if !d.supported_types.contains(&i.instance_type) {
                return Err(format!(
                    "type {} not in supportedTypes",
                    i.instance_type.as_str()
                ));
            }
        }
        if i.metadata
            .labels
            .get("unicompute.check")
            .map(String::as_str)
            != Some("1")
        {
            return Err("labels were not kept".into());
        }
        Ok(i)
    });
    if created.is_none() {
        return;
    }
    let caps = desc.map(|d| d.capabilities).unwrap_or_default();
    steps_on(r, b, &id, &name, spec.stop_timeout, &caps);
    let deleted = r.step("delete (force)", || {
        b.delete(&id, true).map_err(|e| code(&e))
    });
    if deleted.is_none() {
        return;
    }
    r.step("get after delete is INSTANCE_NOT_FOUND", || {
        expect_not_found(b.get(&id), "get of a deleted instance")
    });
    r.step("start after delete is INSTANCE_NOT_FOUND", || {
        expect_not_found(b.start(&id), "start of a deleted instance")
    });
    r.step("nothing is left", || {
        let list = b.list().map_err(|e| code(&e))?;
        if list.iter().any(|i| i.id == id || i.name.starts_with(&name)) {
            return Err("list still shows the instance".into());
        }
        Ok(())
    });
}

fn steps_on<W: Write>(
    r: &mut Runner<'_, W>,
    b: &dyn Backend,
    id: &str,
    name: &str,
    timeout: u64,
    caps: &[String],
) {
    use InstanceState::*;
    let graceful = StopOptions {
        force: false,
        timeout,
    };
    let hard = StopOptions {
        force: true,
        timeout,
    };
    let ok = |res: Result<Instance, PluginError>, want: &[InstanceState]| -> Check<Instance> {
        let i = res.map_err(|e| code(&e))?;
        expect_state(&i, want)?;
        Ok(i)
    };
    r.step("get", || {
        let i = b.get(id).map_err(|e| code(&e))?;
        (i.name == name)
            .then_some(())
            .ok_or_else(|| "wrong name".to_owned())
    });
    r.step("list shows it", || {
        let list = b.list().map_err(|e| code(&e))?;
        list.iter()
            .any(|i| i.id == id)
            .then_some(())
            .ok_or_else(|| "not in list".to_owned())
    });
    r.step("get of an unknown id is INSTANCE_NOT_FOUND", || {
        expect_not_found(b.get("chk-does-not-exist"), "get of an unknown id")
    });
    r.step("start", || ok(b.start(id), &[Running]));
    r.step("start again changes nothing", || {
        ok(b.start(id), &[Running])
    });
    r.step("usage", || {
        let u = b.usage(id).map_err(|e| code(&e))?;
        if !(0.0..=100.0).contains(&u.cpu.usage) {
            return Err(format!("cpu.usage {} is not 0-100", u.cpu.usage));
        }
        if u.cpu.cores == 0 {
            return Err("cpu.cores is 0".into());
        }
        Ok(())
    });
    streams_running(r, b, id, caps);
    match b.pause(id) {
        Err(e) if e.code == ErrorCode::OperationNotSupported => {
            r.skip("pause", "not offered by this backend");
        }
        res => {
            r.step("pause", || ok(res, &[Paused]));
            r.step("unpause", || ok(b.unpause(id), &[Running]));
        }
    }
    r.step(&format!("stop (graceful, {timeout} s timeout)"), || {
        ok(b.stop(id, graceful), &[Stopped])
    });
    r.step("stop again changes nothing", || {
        ok(b.stop(id, graceful), &[Stopped])
    });
    streams_stopped(r, b, id, caps);
    r.step("start after stop", || ok(b.start(id), &[Running]));
    r.step("stop (force)", || ok(b.stop(id, hard), &[Stopped]));
    r.step("restart", || ok(b.restart(id, hard), &[Running]));
    r.step("update cpu and memory", || {
        let want_mem = 512u64 << 20;
        let req: UpdateRequest = serde_json::from_value(serde_json::json!({
            "resources": {"cpu": {"cores": 2}, "memory": {"limit": want_mem}}
        }))
        .map_err(|e| e.to_string())?;
        let i = b.update(id, req).map_err(|e| code(&e))?;
        let pending = i.pending_resources.clone().unwrap_or_default();
        let cores = pending.cores().or(i.resources.cores());
        let mem = pending.memory_limit().or(i.resources.memory_limit());
        if cores != Some(2) || mem != Some(want_mem) {
            return Err(format!(
                "resources now {cores:?} cores, {mem:?} bytes; asked 2 and {want_mem}"
            ));
        }
        Ok(())
    });
}

/// Reads a stream to its end within `limit`: its output and exit code, or why not.
fn drain(stream: ByteStream, limit: Duration) -> Check<(Vec<u8>, Option<i64>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut out = Vec::new();
        let mut exit = None;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Err(format!("the stream did not end within {limit:?}")),
                Ok(None) => return Ok((out, exit)),
                Ok(Some(Output::Stdout(d))) | Ok(Some(Output::Stderr(d))) => out.extend(d),
                Ok(Some(Output::Exit(c))) => exit = Some(c),
                Ok(Some(Output::Error(e))) => {
                    return Err(format!("the stream failed: {}", code(&e)))
                }
            }
        }
    })
}

fn open(b: &dyn Backend, id: &str, kind: StreamKind) -> Result<ByteStream, PluginError> {
    b.open_stream(StreamRequest {
        id: id.to_owned(),
        kind,
    })
}

/// Whether the backend offers `what` on this instance (a refusal is a SKIP line with
/// its reason).
fn offered<W: Write>(
    r: &mut Runner<'_, W>,
    what: &str,
    caps: &[String],
    res: &Result<ByteStream, PluginError>,
) -> bool {
    let listed = caps.iter().any(|c| c == what);
    match res {
        Err(e) if e.code == ErrorCode::OperationNotSupported => {
            // Listed but refused can be right for one instance (exec through a
            // guest agent that this guest does not run): said, not failed.
            let why = match listed {
                true => format!(
                    "listed in capabilities, refused for this instance: {}",
                    e.message
                ),
                false => "not offered by this backend".to_owned(),
            };
            r.skip(what, &why);
            false
        }
        _ => true,
    }
}

/// Streams of a running instance (interface 1.3), when the backend offers them.
fn streams_running<W: Write>(r: &mut Runner<'_, W>, b: &dyn Backend, id: &str, caps: &[String]) {
    let logs = open(b, id, StreamKind::Logs(LogsOptions::default()));
    if offered(r, "logs", caps, &logs) {
        r.step("logs without follow end", || {
            drain(logs.map_err(|e| code(&e))?, Duration::from_secs(30)).map(|_| ())
        });
        r.step("logs of an unknown id are INSTANCE_NOT_FOUND", || {
            expect_not_found(
                open(
                    b,
                    "chk-does-not-exist",
                    StreamKind::Logs(LogsOptions::default()),
                ),
                "logs of an unknown id",
            )
        });
        r.step("a logs follow opens and closes", || {
            let follow = LogsOptions {
                follow: true,
                tail: Some(0),
                ..LogsOptions::default()
            };
            drop(open(b, id, StreamKind::Logs(follow)).map_err(|e| code(&e))?);
            Ok(())
        });
    }
    let marker = format!(
        "uc-check-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let exec = open(
        b,
        id,
        StreamKind::Exec(ExecOptions {
            command: vec!["echo".into(), marker.clone()],
            ..ExecOptions::default()
        }),
    );
    if offered(r, "exec", caps, &exec) {
        r.step("exec echo: its output and exit code 0", || {
            let (out, exit) = drain(exec.map_err(|e| code(&e))?, Duration::from_secs(60))?;
            let text = String::from_utf8_lossy(&out);
            if !text.contains(&marker) || exit != Some(0) {
                return Err(format!("output {text:?}, exit {exit:?}"));
            }
            Ok(())
        });
    }
    let console = open(b, id, StreamKind::Console(ConsoleOptions::default()));
    if offered(r, "console", caps, &console) {
        r.step("console opens and closes", || {
            drop(console.map_err(|e| code(&e))?);
            Ok(())
        });
    }
}

/// Console and exec of a stopped instance are `INVALID_STATE`.
fn streams_stopped<W: Write>(r: &mut Runner<'_, W>, b: &dyn Backend, id: &str, caps: &[String]) {
    for (what, kind) in [
        ("console", StreamKind::Console(ConsoleOptions::default())),
        (
            "exec",
            StreamKind::Exec(ExecOptions {
                command: vec!["true".into()],
                ..ExecOptions::default()
            }),
        ),
    ] {
        if !caps.iter().any(|c| c == what) {
            continue;
        }
        r.step(
            &format!("{what} of a stopped instance is INVALID_STATE"),
            || match open(b, id, kind) {
                Err(e) if e.code == ErrorCode::InvalidState => Ok(()),
                Err(e) => Err(format!("got {}", code(&e))),
                Ok(_) => Err(format!("{what} of a stopped instance opened")),
            },
        );
    }
}
