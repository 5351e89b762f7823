//! The backend: a map of instances, each with an optional child process, and one
//! record per instance in `state_dir` so that a new backend (a reload, a restart of
//! the server) finds them again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, CpuUsage, CreateRequest, EventSink, HostResources,
    Image, Instance, InstanceState, InstanceType, MemoryUsage, Metadata, NetworkUsage, PluginError,
    PullRequest, StopOptions, StorageUsage, UpdateRequest, UploadRequest, UploadTarget, Usage,
};

/// The backend's settings. `deny_unknown_fields`: a mistyped key fails the server's
/// start-up with a message naming it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_programs")]
    programs: Vec<String>,
    /// Where the instances' records are kept, one JSON file per instance. The server
    /// hands settings over as written: a relative path is taken from the server's
    /// working directory. Set it for real use (`/var/lib/unicompute/process`); the
    /// default, a directory under the system's temp dir for the server's working
    /// directory and the backend's name, lets the example run with no setup.
    #[serde(default)]
    state_dir: Option<PathBuf>,
}

fn default_programs() -> Vec<String> {
    vec!["sleep".into()]
}

/// The default `state_dir` (see [`Settings::state_dir`]).
fn default_state_dir(backend: &str) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    // FNV-1a of the working directory: stable from one build to the next.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cwd.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    std::env::temp_dir()
        .join("unicompute-process")
        .join(format!("{h:016x}"))
        .join(backend)
}

/// What is kept of an instance: the instance as answered (`Instance` is
/// serde-serializable, so it is its own record) and how to run it.
#[derive(Serialize, Deserialize)]
struct Record {
    instance: Instance,
    program: String,
    args: Vec<String>,
}

/// The instance's `config`, as the user sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessConfig {
    image: String,
    #[serde(default)]
    args: Vec<String>,
}

struct Entry {
    instance: Instance,
    program: String,
    args: Vec<String>,
    child: Option<Child>,
    /// (when, cpu ticks) of the last usage sample, for cpu percent.
    last_cpu: Option<(Instant, u64)>,
}

/// The `process` backend.
pub struct ProcessBackend {
    settings: Settings,
    /// The absolute `state_dir`.
    state_dir: PathBuf,
    instances: Mutex<HashMap<String, Entry>>,
    events: EventSink,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The window the first usage call of an instance measures CPU over.
const FIRST_WINDOW: Duration = Duration::from_millis(200);

/// CPU ticks (user and system) a process has used, from `/proc/PID/stat`; 0 when
/// it is gone.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th and
    // stime the 13th after ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

impl ProcessBackend {
    /// Makes the backend from the host's context. Must not fail because a daemon is
    /// down (this one has none); fails on bad settings.
    pub fn new(ctx: BackendContext) -> Result<Self, PluginError> {
        let settings: Settings = ctx.parse_config()?;
        let dir = settings
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&ctx.name));
        let state_dir = std::path::absolute(&dir)
            .map_err(|e| PluginError::config(format!("state_dir {}: {e}", dir.display())))?;
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            PluginError::config(format!("state_dir {}: cannot make it: {e}", dir.display()))
        })?;
        let instances = load(&state_dir);
        tracing::info!(backend = %ctx.name, programs = ?settings.programs, instances = instances.len(), state_dir = %state_dir.display(), "process backend ready");
        Ok(ProcessBackend {
            settings,
            state_dir,
            instances: Mutex::new(instances),
            events: ctx.events,
        })
    }

    /// Keeps the record of `e`: written to a temporary file, flushed, then renamed
    /// over the old one, so that a crash leaves the old record or the new one, never
    /// half of one.
    fn save(&self, e: &Entry) -> Result<(), PluginError> {
        let id = &e.instance.id;
        if !plain_name(id) {
            return Err(PluginError::invalid(format!(
                "id {id:?} is not a plain name"
            )));
        }
        let record = Record {
            instance: e.instance.clone(),
            program: e.program.clone(),
            args: e.args.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|err| PluginError::internal(format!("record of {id}: {err}")))?;
        let tmp = self.state_dir.join(format!(".{id}.json.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.state_dir.join(format!("{id}.json")))
        };
        write().map_err(|err| {
            let _ = std::fs::remove_file(&tmp);
            PluginError::backend(format!("cannot keep the record of {id}: {err}"))
        })
    }

    /// Removes the record of `id`.
    fn forget(&self, id: &str) {
        if plain_name(id) {
            let _ = std::fs::remove_file(self.state_dir.join(format!("{id}.json")));
        }
    }

    /// Runs `f` on one entry as [`Self::with`], then keeps its record.
    fn with_mut<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Entry) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        self.with(id, |e| {
            let out = f(e)?;
            self.save(e)?;
            Ok(out)
        })
    }

    /// Runs `f` on one entry, after noticing a process that exited by itself.
    fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Entry) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        let mut map = lock(&self.instances);
        let e = map.get_mut(id).ok_or_else(|| PluginError::not_found(id))?;
        if reap(e) {
            let _ = self.save(e);
            // Tell the host at once, as a daemon's event stream would.
            self.events.emit(&unicompute_plugin_api::Event::Changed {
                instance: Box::new(e.instance.clone()),
            });
        }
        f(e)
    }
}

/// A name safe as a file name (the server's ids are `i-` and 20 hex digits).
fn plain_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Reads every record of `dir`. A process does not outlive the backend that started
/// it (`shutdown` ends them), so an instance recorded running or paused is stopped
/// now. `created` stays `created`: the state kept tells a never-started instance
/// from a stopped one.
fn load(dir: &Path) -> HashMap<String, Entry> {
    let mut out = HashMap::new();
    for file in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = file.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let record = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()));
        match record {
            Ok(mut r) => {
                if r.instance.state.is_active() {
                    r.instance.state = InstanceState::Stopped;
                }
                out.insert(
                    r.instance.id.clone(),
                    Entry {
                        instance: r.instance,
                        program: r.program,
                        args: r.args,
                        child: None,
                        last_cpu: None,
                    },
                );
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "record skipped"),
        }
    }
    out
}

/// Notices an exited child; true when the state changed.
fn reap(e: &mut Entry) -> bool {
    let exited = e
        .child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
    if exited {
        e.child = None;
        e.instance.state = InstanceState::Stopped;
    }
    exited
}

fn touch(i: &mut Instance, state: InstanceState) -> Instance {
    i.state = state;
    i.updated_at = Utc::now();
    i.clone()
}

impl Backend for ProcessBackend {
    fn describe(&self) -> Result<BackendDescription, PluginError> {
        Ok(BackendDescription {
            version: crate::VERSION.into(),
            api_version: "1".into(),
            capabilities: vec!["processes".into(), "pause".into()],
            supported_types: vec![InstanceType::Container],
            extra: Default::default(),
        })
    }

    fn health(&self) -> Result<(), PluginError> {
        Ok(())
    }

    fn host_resources(&self) -> Result<HostResources, PluginError> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let memory = proc_kib("/proc/meminfo", "MemTotal:") * 1024;
        Ok(HostResources { cpus, memory })
    }

    fn images(&self) -> Result<Vec<Image>, PluginError> {
        Ok(self
            .settings
            .programs
            .iter()
            .map(|p| Image {
                name: p.clone(),
                format: Some("program".into()),
                ..Default::default()
            })
            .collect())
    }

    fn list(&self) -> Result<Vec<Instance>, PluginError> {
        let mut map = lock(&self.instances);
        Ok(map
            .values_mut()
            .map(|e| {
                if reap(e) {
                    let _ = self.save(e);
                }
                e.instance.clone()
            })
            .collect())
    }

    fn get(&self, id: &str) -> Result<Instance, PluginError> {
        self.with(id, |e| Ok(e.instance.clone()))
    }

    fn create(&self, req: CreateRequest) -> Result<Instance, PluginError> {
        // Validate everything before keeping anything: a failed create leaves nothing.
        let cfg: ProcessConfig =
            serde_json::from_value(serde_json::Value::Object(req.config.clone()))
                .map_err(|e| PluginError::invalid(format!("config: {e}")))?;
        if !self.settings.programs.contains(&cfg.image) {
            return Err(
                PluginError::invalid(format!("program {} is not allowed", cfg.image))
                    .with_detail("allowed", self.settings.programs.clone()),
            );
        }
        let mut resources = req.resources.clone();
        resources
            .cpu
            .get_or_insert_with(Default::default)
            .cores
            .get_or_insert(1);
        let instance = Instance {
            id: req.id.clone(),
            name: req.name.clone(),
            uuid: format!(
                "00000000-0000-4000-8000-{:012x}",
                Utc::now().timestamp_micros()
            ),
            instance_type: InstanceType::Container,
            backend: String::new(),
            state: InstanceState::Created,
            status: Default::default(),
            config: req.config.clone(),
            resources,
            pending_resources: None,
            metadata: Metadata {
                labels: req.labels.clone(),
            },
            created_at: req.created_at,
            updated_at: req.created_at,
        };
        let args = if cfg.args.is_empty() {
            vec!["infinity".into()]
        } else {
            cfg.args
        };
        let entry = Entry {
            instance,
            program: cfg.image,
            args,
            child: None,
            last_cpu: None,
        };
        // The record first: an instance the backend answers is one it keeps.
        self.save(&entry)?;
        lock(&self.instances).insert(req.id.clone(), entry);
        if req.start {
            return self.start(&req.id).inspect_err(|_| {
                lock(&self.instances).remove(&req.id);
                self.forget(&req.id);
            });
        }
        self.get(&req.id)
    }

    fn update(&self, id: &str, req: UpdateRequest) -> Result<Instance, PluginError> {
        // A process has no limits to change live here; record them as asked.
        self.with_mut(id, |e| {
            if let Some(c) = req.resources.cores() {
                e.instance
                    .resources
                    .cpu
                    .get_or_insert_with(Default::default)
                    .cores = Some(c);
            }
            if let Some(m) = req.resources.memory_limit() {
                e.instance
                    .resources
                    .memory
                    .get_or_insert_with(Default::default)
                    .limit = Some(m);
            }
            if let Some(l) = req.labels {
                e.instance.metadata.labels = l;
            }
            e.instance.updated_at = Utc::now();
            Ok(e.instance.clone())
        })
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), PluginError> {
        self.with(id, |e| {
            if e.child.is_some() && !force {
                return Err(PluginError::invalid_state(
                    "the process runs; stop it or use force",
                ));
            }
            if let Some(mut c) = e.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            Ok(())
        })?;
        lock(&self.instances).remove(id);
        self.forget(id);
        Ok(())
    }

    fn start(&self, id: &str) -> Result<Instance, PluginError> {
        self.with(id, |e| {
            if e.child.is_some() {
                return Ok(e.instance.clone()); // running or paused: nothing to do
            }
            let child = Command::new(&e.program)
                .args(&e.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|err| PluginError::backend(format!("cannot run {}: {err}", e.program)))?;
            e.child = Some(child);
            e.last_cpu = None;
            let now = touch(&mut e.instance, InstanceState::Running);
            self.save(e)?;
            Ok(now)
        })
    }

    fn stop(&self, id: &str, options: StopOptions) -> Result<Instance, PluginError> {
        // Take the child out so the lock is not held while waiting for it.
        let child = self.with(id, |e| Ok(e.child.take()))?;
        if let Some(mut child) = child {
            signal(&child, libc::SIGCONT); // a paused process must see the signal
            if !options.force {
                signal(&child, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(options.timeout);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill(); // SIGKILL when still there
            let _ = child.wait();
        }
        self.with_mut(id, |e| match e.instance.state {
            InstanceState::Created => Ok(e.instance.clone()),
            InstanceState::Stopped => Ok(e.instance.clone()),
            _ => Ok(touch(&mut e.instance, InstanceState::Stopped)),
        })
    }

    fn restart(&self, id: &str, options: StopOptions) -> Result<Instance, PluginError> {
        self.stop(id, options)?;
        self.start(id)
    }

    fn pause(&self, id: &str) -> Result<Instance, PluginError> {
        self.with_mut(id, |e| match (&e.child, e.instance.state) {
            (Some(_), InstanceState::Paused) => Ok(e.instance.clone()),
            (Some(c), _) => {
                signal(c, libc::SIGSTOP);
                Ok(touch(&mut e.instance, InstanceState::Paused))
            }
            (None, _) => Err(PluginError::invalid_state("the process is not running")),
        })
    }

    fn unpause(&self, id: &str) -> Result<Instance, PluginError> {
        self.with_mut(id, |e| match (&e.child, e.instance.state) {
            (Some(c), InstanceState::Paused) => {
                signal(c, libc::SIGCONT);
                Ok(touch(&mut e.instance, InstanceState::Running))
            }
            (Some(_), _) => Ok(e.instance.clone()),
            (None, _) => Err(PluginError::invalid_state("the process is not paused")),
        })
    }

    fn usage(&self, id: &str) -> Result<Usage, PluginError> {
        // CPU percent is CPU time over wall time between two samples, of the
        // allocated cores. A later call measures from the sample the previous call
        // kept (fast); the first call, with no earlier sample, takes a second one
        // itself after a short window (outside the lock).
        let (pid, cores, limit, last) = self.with(id, |e| {
            Ok((
                e.child.as_ref().map(Child::id),
                e.instance.resources.cores().unwrap_or(1).max(1),
                e.instance.resources.memory_limit().unwrap_or(0),
                e.last_cpu,
            ))
        })?;
        let (mut cpu, mut rss) = (0.0, 0);
        if let Some(pid) = pid {
            let (then, before) = match last {
                Some(sample) => sample,
                None => {
                    let first = (Instant::now(), cpu_ticks(pid));
                    std::thread::sleep(FIRST_WINDOW);
                    first
                }
            };
            let (now, ticks) = (Instant::now(), cpu_ticks(pid));
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                let used = ticks.saturating_sub(before) as f64 / ticks_per_sec();
                cpu = (used / secs / f64::from(cores) * 100.0).clamp(0.0, 100.0);
            }
            // Kept only while the same process runs (a restart resets the sample).
            self.with(id, |e| {
                if e.child.as_ref().map(Child::id) == Some(pid) {
                    e.last_cpu = Some((now, ticks));
                }
                Ok(())
            })?;
            rss = proc_kib(&format!("/proc/{pid}/status"), "VmRSS:") * 1024;
        }
        Ok(Usage {
            cpu: CpuUsage { usage: cpu, cores },
            memory: MemoryUsage::new(rss, limit),
            storage: StorageUsage::default(),
            network: NetworkUsage::default(),
        })
    }

    // Images (interface 1.2): programs are the config's allowlist, not images, so
    // there is nothing to pull, upload or delete, and no long work to cancel. Every
    // operation still has its method: answering OPERATION_NOT_SUPPORTED is the
    // minimum (the server answers 501).

    fn pull_image(&self, _request: PullRequest) -> Result<Image, PluginError> {
        Err(PluginError::not_supported("pull_image"))
    }

    fn delete_image(&self, _name: &str) -> Result<(), PluginError> {
        Err(PluginError::not_supported("delete_image"))
    }

    fn upload_begin(&self, _request: UploadRequest) -> Result<UploadTarget, PluginError> {
        Err(PluginError::not_supported("upload_begin"))
    }

    fn upload_commit(&self, _request: UploadRequest) -> Result<Image, PluginError> {
        Err(PluginError::not_supported("upload_commit"))
    }

    fn upload_abort(&self, _request: UploadRequest) -> Result<(), PluginError> {
        Err(PluginError::not_supported("upload_abort"))
    }

    fn cancel(&self, _operation: &str) -> Result<bool, PluginError> {
        // Nothing here runs long enough to cancel (as a 1.0 or 1.1 plugin answers).
        Err(PluginError::not_supported("cancel"))
    }

    fn shutdown(&self) {
        // The server is dropping this backend: leave no process behind.
        let mut map = lock(&self.instances);
        for e in map.values_mut() {
            if let Some(mut c) = e.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A `Key:   123 kB` field of a `/proc` file, in KiB (0 when absent).
fn proc_kib(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
