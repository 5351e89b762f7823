//! `unicompute plugins check FILE.so [--config TABLE.toml] [--json]`: loads a plugin
//! file as the host would and runs the standard conformance scenario against a
//! backend made from the given settings. One PASS/FAIL/SKIP line per step (with
//! `--json`, one JSON document: the steps with their verdict, time and message, and a
//! summary); false when any step failed.
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
//! lists. Ids are made as the host makes them (`i-` and 20 hex digits), names follow
//! the name rules (`uc-check-...`). Besides the lifecycle (create, start, pause, stop
//! of a running and of a paused instance, restart, update, delete) it checks a label
//! round trip, a create with `start: true`, that a delete without force of a running
//! instance is `INVALID_STATE`, and **durability**: after the lifecycle, the backend
//! is dropped (its `shutdown`) and a new one made from the same settings must list
//! and get the instance with the same id, name, labels, `createdAt`, state and
//! resources (a plugin that keeps its instances in memory only fails there).
//!
//! Streams (interface 1.3) are checked when the backend offers them: logs end
//! without follow, a follow opens and closes, `exec echo` answers its output and exit
//! code 0, the console opens; the console and exec of a stopped instance are
//! `INVALID_STATE`; a stream refused while `describe` lists it is a SKIP saying so.
//!
//! Each step's time is the time of its calls to the backend, including a call made
//! before the step to tell a SKIP from a PASS (`pause`, the streams' opening).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
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

/// One step's outcome, as printed and as `--json` reports it.
#[derive(Debug, serde::Serialize)]
struct StepRecord {
    name: String,
    verdict: &'static str,
    ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

struct Runner<'a, W: Write> {
    out: &'a mut W,
    /// One JSON document at the end instead of lines as the steps go.
    json: bool,
    steps: Vec<StepRecord>,
    /// What `--json` reports besides the steps (`plugin`, `names`).
    info: serde_json::Map<String, serde_json::Value>,
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
    /// Runs a step, timed from now.
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Check<T>) -> Option<T> {
        self.step_since(name, Instant::now(), f)
    }

    /// Runs a step whose first call was made at `started` (a call made before the
    /// step to decide whether it is a SKIP): its time counts.
    fn step_since<T>(
        &mut self,
        name: &str,
        started: Instant,
        f: impl FnOnce() -> Check<T>,
    ) -> Option<T> {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err("the step panicked".into()));
        let ms = started.elapsed().as_millis();
        match result {
            Ok(v) => {
                self.record(name, "PASS", ms, None);
                self.passed += 1;
                Some(v)
            }
            Err(why) => {
                self.record(name, "FAIL", ms, Some(why));
                self.failed.push(name.to_owned());
                None
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.record(name, "SKIP", 0, Some(why.to_owned()));
    }

    fn record(&mut self, name: &str, verdict: &'static str, ms: u128, message: Option<String>) {
        if !self.json {
            let _ = match (verdict, &message) {
                ("SKIP", Some(m)) => writeln!(self.out, "SKIP  {name}: {m}"),
                (v, Some(m)) => writeln!(self.out, "{v}  {name}: {m} ({ms} ms)"),
                (v, None) => writeln!(self.out, "{v}  {name} ({ms} ms)"),
            };
        }
        self.steps.push(StepRecord {
            name: name.to_owned(),
            verdict,
            ms,
            message,
        });
    }

    /// A line of information (human output only; `--json` has it under `key`).
    fn say(&mut self, line: &str, key: &str, value: serde_json::Value) {
        if !self.json {
            let _ = writeln!(self.out, "{line}");
        }
        self.info.insert(key.to_owned(), value);
    }
}

/// Runs the check; prints to `out` (lines, or one JSON document with `json`); true
/// when every step passed.
pub fn run(file: &Path, config: Option<&Path>, json: bool, out: &mut impl Write) -> bool {
    let mut r = Runner {
        out,
        json,
        steps: Vec::new(),
        info: serde_json::Map::new(),
        passed: 0,
        failed: Vec::new(),
    };
    let cfg: CheckConfig = match config {
        None => CheckConfig::default(),
        Some(p) => match Figment::from(Toml::file_exact(p)).extract() {
            Ok(c) => c,
            Err(e) => {
                r.record("config", "FAIL", 0, Some(e.to_string()));
                r.failed.push("config".into());
                return finish(r);
            }
        },
    };
    let Some(plugin) = r.step("load", || loader::load_file(file)) else {
        return finish(r);
    };
    let h = &plugin.handshake;
    let line = format!(
        "      plugin {} {} (kind {}, interface {}) from {}",
        h.name,
        h.version,
        h.kind,
        h.interface_version,
        file.display()
    );
    let about = serde_json::json!({
        "name": h.name.to_string(),
        "version": h.version.to_string(),
        "kind": h.kind.to_string(),
        "interface": h.interface_version.to_string(),
        "file": file.display().to_string(),
    });
    r.say(&line, "plugin", about);
    let settings = serde_json::Value::Object(cfg.backend.clone());
    let make = || -> Result<Box<dyn Backend>, PluginError> {
        let b = plugin.create_backend("check", &settings, EventSink::discard())?;
        Ok(Box::new(b))
    };
    let Some(mut backend) = r.step("create backend", || make().map_err(|e| code(&e))) else {
        return finish(r);
    };
    scenario(&mut r, &mut backend, &make, &cfg.instance);
    backend.shutdown();
    finish(r)
}

fn finish<W: Write>(r: Runner<'_, W>) -> bool {
    let ok = r.failed.is_empty();
    if r.json {
        let skipped = r.steps.iter().filter(|s| s.verdict == "SKIP").count();
        let mut doc = r.info;
        doc.insert(
            "steps".into(),
            serde_json::to_value(&r.steps).unwrap_or_default(),
        );
        doc.insert(
            "summary".into(),
            serde_json::json!({
                "passed": r.passed,
                "failed": r.failed.len(),
                "skipped": skipped,
                "failedSteps": r.failed,
                "ok": ok,
            }),
        );
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(doc))
            .unwrap_or_else(|_| "{}".into());
        let _ = writeln!(r.out, "{text}");
        return ok;
    }
    let _ = writeln!(r.out, "{} passed, {} failed", r.passed, r.failed.len());
    if !ok {
        let _ = writeln!(r.out, "failed steps: {}", r.failed.join(", "));
    }
    ok
}

/// A fresh id in the documented format (`i-` and 20 hex digits), as the host makes
/// them, with its creation time (milliseconds).
fn new_id() -> (String, chrono::DateTime<Utc>) {
    crate::service::new_instance_id()
}

fn labels_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn scenario<W: Write>(
    r: &mut Runner<'_, W>,
    backend: &mut Box<dyn Backend>,
    make: &dyn Fn() -> Result<Box<dyn Backend>, PluginError>,
    spec: &InstanceSpec,
) {
    use InstanceState::*;
    let b: &dyn Backend = backend.as_ref();
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
    let (id, created_at) = new_id();
    let name = format!("uc-check-{suffix}");
    // Said first, so that whoever runs the check can remove what a failed run left.
    r.say(
        &format!("NAME  {name} (what the check makes is named {name}*)"),
        "names",
        format!("{name}*").into(),
    );

    r.step(
        "create with an invalid config is refused and leaves nothing",
        || {
            let bad_name = format!("{name}-bad");
            let (bad_id, at) = new_id();
            let res = b.create(CreateRequest {
                id: bad_id.clone(),
                name: bad_name.clone(),
                config: JsonMap::new(),
                resources: resources.clone(),
                labels: Default::default(),
                start: false,
                created_at: at,
                operation: None,
            });
            match res {
                Ok(_) => {
                    let _ = b.delete(&bad_id, true);
                    Err("a create with an empty config succeeded".into())
                }
                Err(e) if e.code == ErrorCode::InternalError => {
                    Err(format!("internal error: {}", e.message))
                }
                Err(_) => {
                    let left = b.list().map_err(|e| code(&e))?;
                    if left.iter().any(|i| i.name == bad_name || i.id == bad_id) {
                        return Err("the failed create left an instance".into());
                    }
                    Ok(())
                }
            }
        },
    );

    // Keys and values of the kinds people use: dotted, a DNS prefix with a slash,
    // spaces and non-ASCII in a value.
    let labels = labels_of(&[
        ("unicompute.check", "1"),
        ("example.com/role", "conformance check"),
        ("note", "h\u{e9}llo w\u{f6}rld"),
    ]);
    let created = r.step("create", || {
        let i = b
            .create(CreateRequest {
                id: id.clone(),
                name: name.clone(),
                config: config.clone(),
                resources: resources.clone(),
                labels: labels.clone(),
                start: false,
                created_at,
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
        if i.created_at != created_at {
            return Err(format!(
                "createdAt is {}, the request's was {}",
                i.created_at, created_at
            ));
        }
        Ok(i)
    });
    if created.is_none() {
        return;
    }
    r.step(
        "labels round trip: create, get and list answer them as given",
        || {
            let got = b.get(&id).map_err(|e| code(&e))?;
            if got.metadata.labels != labels {
                return Err(format!(
                    "get answers labels {:?}, created with {labels:?}",
                    got.metadata.labels
                ));
            }
            let list = b.list().map_err(|e| code(&e))?;
            let listed = list
                .iter()
                .find(|i| i.id == id)
                .ok_or_else(|| "not in list".to_owned())?;
            if listed.metadata.labels != labels {
                return Err(format!(
                    "list answers labels {:?}, created with {labels:?}",
                    listed.metadata.labels
                ));
            }
            Ok(())
        },
    );
    let caps = desc.map(|d| d.capabilities).unwrap_or_default();
    steps_on(r, b, &id, &name, spec.stop_timeout, &caps);
    create_started(r, b, &name, &config, &resources);
    let kept = durability(r, backend, make, &id, &name);
    let b: &dyn Backend = backend.as_ref();
    if !kept {
        r.skip(
            "delete (force)",
            "the instance was lost at the restart of the backend",
        );
        return;
    }
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

/// A create with `start: true` answers a running instance; deleting it without
/// `force` is `INVALID_STATE`; with `force` it goes.
fn create_started<W: Write>(
    r: &mut Runner<'_, W>,
    b: &dyn Backend,
    name: &str,
    config: &JsonMap,
    resources: &Resources,
) {
    let (id, created_at) = new_id();
    let name = format!("{name}-s");
    let made = r.step("create with start: true answers it running", || {
        let i = b
            .create(CreateRequest {
                id: id.clone(),
                name: name.clone(),
                config: config.clone(),
                resources: resources.clone(),
                labels: labels_of(&[("unicompute.check", "started")]),
                start: true,
                created_at,
                operation: None,
            })
            .map_err(|e| code(&e))?;
        expect_state(&i, &[InstanceState::Running])?;
        let got = b.get(&id).map_err(|e| code(&e))?;
        expect_state(&got, &[InstanceState::Running])
            .map_err(|e| format!("get after the create: {e}"))
    });
    if made.is_none() {
        // Whatever it made goes.
        let _ = b.delete(&id, true);
        return;
    }
    r.step(
        "delete of a running instance without force is INVALID_STATE",
        || match b.delete(&id, false) {
            Err(e) if e.code == ErrorCode::InvalidState => {
                let i = b
                    .get(&id)
                    .map_err(|e| format!("after the refusal: {}", code(&e)))?;
                expect_state(&i, &[InstanceState::Running])
                    .map_err(|e| format!("after the refusal: {e}"))
            }
            Err(e) => Err(format!("got {}", code(&e))),
            Ok(()) => Err("the running instance was deleted".into()),
        },
    );
    r.step("delete (force) of the started one", || {
        b.delete(&id, true).map_err(|e| code(&e))?;
        expect_not_found(b.get(&id), "get of the deleted instance")
    });
}

/// What a restart of the backend must keep of an instance.
#[derive(Debug, PartialEq)]
struct Kept {
    name: String,
    labels: BTreeMap<String, String>,
    created_at: chrono::DateTime<Utc>,
    state: InstanceState,
    resources: [Option<u64>; 3],
    pending: Option<[Option<u64>; 3]>,
}

fn sizes(r: &Resources) -> [Option<u64>; 3] {
    [r.cores().map(u64::from), r.memory_limit(), r.total_space()]
}

fn kept(i: &Instance) -> Kept {
    Kept {
        name: i.name.clone(),
        labels: i.metadata.labels.clone(),
        created_at: i.created_at,
        state: i.state,
        resources: sizes(&i.resources),
        pending: i.pending_resources.as_ref().map(sizes),
    }
}

/// What changed between two views of an instance, said in words.
fn changes(before: &Kept, after: &Kept) -> Vec<String> {
    let mut out = Vec::new();
    if before.name != after.name {
        out.push(format!("name {} became {}", before.name, after.name));
    }
    if before.labels != after.labels {
        out.push(format!(
            "labels {:?} became {:?}",
            before.labels, after.labels
        ));
    }
    if before.created_at != after.created_at {
        out.push(format!(
            "createdAt {} became {}",
            before.created_at, after.created_at
        ));
    }
    if before.state != after.state {
        out.push(format!(
            "state {} became {}",
            before.state.as_str(),
            after.state.as_str()
        ));
    }
    let show =
        |s: &[Option<u64>; 3]| format!("cores {:?}, memory {:?}, storage {:?}", s[0], s[1], s[2]);
    if before.resources != after.resources {
        out.push(format!(
            "resources ({}) became ({})",
            show(&before.resources),
            show(&after.resources)
        ));
    }
    if before.pending != after.pending {
        out.push(format!(
            "pendingResources {:?} became {:?}",
            before.pending.as_ref().map(show),
            after.pending.as_ref().map(show)
        ));
    }
    out
}

/// Stops the instance, drops the backend (its `shutdown`), makes a new one from the
/// same settings, and compares what `list` and `get` answer. The new backend
/// replaces the old one for the rest of the scenario. False when the instance was
/// lost.
fn durability<W: Write>(
    r: &mut Runner<'_, W>,
    backend: &mut Box<dyn Backend>,
    make: &dyn Fn() -> Result<Box<dyn Backend>, PluginError>,
    id: &str,
    name: &str,
) -> bool {
    use InstanceState::*;
    let hard = StopOptions {
        force: true,
        timeout: 0,
    };
    let before = r.step(
        "stop (force, timeout 0) before a restart of the backend",
        || {
            let i = backend.stop(id, hard).map_err(|e| code(&e))?;
            expect_state(&i, &[Stopped])?;
            let got = backend.get(id).map_err(|e| code(&e))?;
            let list = backend.list().map_err(|e| code(&e))?;
            let listed = list
                .iter()
                .find(|i| i.id == id)
                .ok_or_else(|| "not in list".to_owned())?;
            Ok((kept(&got), kept(listed)))
        },
    );
    let Some((before_get, before_list)) = before else {
        return true;
    };
    let mut lost = false;
    let step = "a new backend from the same settings keeps the instance (durability)";
    r.step(step, || {
        backend.shutdown();
        let fresh = make().map_err(|e| format!("a new backend: {}", code(&e)))?;
        *backend = fresh;
        let mut problems = Vec::new();
        let list = backend
            .list()
            .map_err(|e| format!("list of the new backend: {}", code(&e)))?;
        match list.iter().find(|i| i.id == id) {
            None => {
                lost = true;
                problems.push(format!("list lost {id} (name {name})"));
            }
            Some(i) => {
                let c = changes(&before_list, &kept(i));
                if !c.is_empty() {
                    problems.push(format!("list changed {id}: {}", c.join("; ")));
                }
            }
        }
        match backend.get(id) {
            Err(e) if e.code == ErrorCode::InstanceNotFound => {
                lost = true;
                problems.push(format!("get of {id} is INSTANCE_NOT_FOUND"));
            }
            Err(e) => problems.push(format!("get of {id}: {}", code(&e))),
            Ok(i) => {
                let c = changes(&before_get, &kept(&i));
                if !c.is_empty() {
                    problems.push(format!("get changed {id}: {}", c.join("; ")));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let mut why = format!("after a restart of the backend, {}", problems.join("; "));
        if lost {
            why.push_str(
                " (keep every instance's record where it survives the backend: \
                 your daemon, or a file per instance)",
            );
        }
        Err(why)
    });
    !lost
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
    let (unknown, _) = new_id();
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
        expect_not_found(b.get(&unknown), "get of an unknown id")
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
    streams_running(r, b, id, &unknown, caps);
    let started = Instant::now();
    let pausable = match b.pause(id) {
        Err(e) if e.code == ErrorCode::OperationNotSupported => {
            r.skip("pause", "not offered by this backend");
            false
        }
        res => {
            r.step_since("pause", started, || ok(res, &[Paused]));
            r.step("unpause", || ok(b.unpause(id), &[Running]));
            true
        }
    };
    r.step(&format!("stop (graceful, {timeout} s timeout)"), || {
        ok(b.stop(id, graceful), &[Stopped])
    });
    r.step("stop again changes nothing", || {
        ok(b.stop(id, graceful), &[Stopped])
    });
    streams_stopped(r, b, id, caps);
    r.step("start after stop", || ok(b.start(id), &[Running]));
    r.step(
        "delete without force of a running instance is INVALID_STATE",
        || match b.delete(id, false) {
            Err(e) if e.code == ErrorCode::InvalidState => {
                ok(b.get(id), &[Running]).map_err(|e| format!("after the refusal: {e}"))
            }
            Err(e) => Err(format!("got {}", code(&e))),
            Ok(()) => Err("the running instance was deleted".into()),
        },
    );
    if pausable {
        r.step("pause before a stop", || ok(b.pause(id), &[Paused]));
        r.step(
            &format!("stop of a paused instance (graceful, {timeout} s timeout)"),
            || ok(b.stop(id, graceful), &[Stopped]),
        );
        r.step("start after the stop of a paused instance", || {
            ok(b.start(id), &[Running])
        });
    } else {
        r.skip("stop of a paused instance", "pause is not offered");
    }
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
    let started = Instant::now();
    let new_labels = labels_of(&[("unicompute.check", "2"), ("updated", "yes")]);
    let update = b.update(
        id,
        UpdateRequest {
            resources: Resources::default(),
            labels: Some(new_labels.clone()),
        },
    );
    match update {
        Err(e) if e.code == ErrorCode::OperationNotSupported => r.skip(
            "labels replaced by an update",
            &format!("refused by this backend: {}", e.message),
        ),
        res => {
            r.step_since("labels replaced by an update", started, || {
                let i = res.map_err(|e| code(&e))?;
                if i.metadata.labels != new_labels {
                    return Err(format!(
                        "update answers labels {:?}, asked {new_labels:?} (labels in an update replace them all)",
                        i.metadata.labels
                    ));
                }
                let got = b.get(id).map_err(|e| code(&e))?;
                if got.metadata.labels != new_labels {
                    return Err(format!(
                        "get answers labels {:?} after the update, asked {new_labels:?}",
                        got.metadata.labels
                    ));
                }
                Ok(())
            });
        }
    }
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
fn streams_running<W: Write>(
    r: &mut Runner<'_, W>,
    b: &dyn Backend,
    id: &str,
    unknown: &str,
    caps: &[String],
) {
    let started = Instant::now();
    let logs = open(b, id, StreamKind::Logs(LogsOptions::default()));
    if offered(r, "logs", caps, &logs) {
        r.step_since("logs without follow end", started, || {
            drain(logs.map_err(|e| code(&e))?, Duration::from_secs(30)).map(|_| ())
        });
        r.step("logs of an unknown id are INSTANCE_NOT_FOUND", || {
            expect_not_found(
                open(b, unknown, StreamKind::Logs(LogsOptions::default())),
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
    let started = Instant::now();
    let exec = open(
        b,
        id,
        StreamKind::Exec(ExecOptions {
            command: vec!["echo".into(), marker.clone()],
            ..ExecOptions::default()
        }),
    );
    if offered(r, "exec", caps, &exec) {
        r.step_since("exec echo: its output and exit code 0", started, || {
            let (out, exit) = drain(exec.map_err(|e| code(&e))?, Duration::from_secs(60))?;
            let text = String::from_utf8_lossy(&out);
            if !text.contains(&marker) || exit != Some(0) {
                return Err(format!("output {text:?}, exit {exit:?}"));
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let console = open(b, id, StreamKind::Console(ConsoleOptions::default()));
    if offered(r, "console", caps, &console) {
        r.step_since("console opens and closes", started, || {
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
