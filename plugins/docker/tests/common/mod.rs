//! Shared helpers of the tests that need a real Docker engine: the local test image,
//! the backend as the host makes it, an event recorder, direct engine access and
//! cleanup guards.
#![allow(dead_code)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::ContainerInspectResponse;
use bollard::Docker;
use unicompute_docker::DockerBackend;
use unicompute_plugin_api::{BackendContext, CreateRequest, Event, EventSink, Resources};

// The local test image (`FROM scratch` with busybox-static) and the engine lock are
// the black-box tests' own, shared rather than kept twice.
#[allow(unused_imports)] // not every user of this module takes every helper
pub use unicompute_tests::docker::{ensure_image, FileLock, TEST_IMAGE};

/// A unique name for something a test makes.
pub fn unique(prefix: &str) -> String {
    format!(
        "uc-{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Events a backend pushed.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn sink(&self) -> EventSink {
        let events = Arc::clone(&self.0);
        EventSink::from_fn(move |e| events.lock().unwrap().push(e.clone()))
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// Waits (up to `limit`) for an event matching `pred`.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.0.lock().unwrap().iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A backend made as the host makes it, with its own name (so that tests do not see
/// each other's instances), its own state and pin directories (unless the config
/// names them) and a recorder of its events.
pub struct TestBackend {
    pub backend: DockerBackend,
    pub name: String,
    pub events: Recorder,
    /// Holds the state and pin directories; removed after the backend.
    pub dir: unicompute_tests::TempDir,
}

pub fn backend_with(config: serde_json::Value) -> TestBackend {
    ensure_image();
    let name = unique("be");
    let dir = unicompute_tests::TempDir::new("uc-be");
    let mut config = config;
    if config.get("state_dir").is_none() {
        config["state_dir"] = dir.0.join("state").to_string_lossy().into_owned().into();
    }
    if config.get("pin_dir").is_none() {
        config["pin_dir"] = dir.0.join("pins").to_string_lossy().into_owned().into();
    }
    let events = Recorder::default();
    let backend = DockerBackend::new(BackendContext {
        name: name.clone(),
        config,
        events: events.sink(),
    })
    .expect("make the backend");
    TestBackend {
        backend,
        name,
        events,
        dir,
    }
}

pub fn backend() -> TestBackend {
    backend_with(serde_json::json!({}))
}

/// A create request for the test image.
pub fn request(name: &str, config: serde_json::Value) -> CreateRequest {
    let mut config = config;
    if config.get("image").is_none() {
        config["image"] = TEST_IMAGE.into();
    }
    CreateRequest {
        id: unique("id"),
        name: name.to_owned(),
        config: config.as_object().cloned().unwrap_or_default(),
        resources: Resources::default(),
        labels: Default::default(),
        start: false,
        created_at: chrono::Utc::now(),
        operation: None,
    }
}

/// Direct access to the engine, for checks and for changes "by hand".
pub struct Engine {
    rt: tokio::runtime::Runtime,
    pub docker: Docker,
}

impl Engine {
    pub fn new() -> Engine {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let docker = rt
            .block_on(
                Docker::connect_with_unix_defaults()
                    .unwrap()
                    .negotiate_version(),
            )
            .unwrap();
        Engine { rt, docker }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn inspect(&self, name: &str) -> ContainerInspectResponse {
        self.rt
            .block_on(self.docker.inspect_container(name, None))
            .unwrap_or_else(|e| panic!("inspect {name}: {e}"))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.rt
            .block_on(self.docker.inspect_container(name, None))
            .is_ok()
    }
}

/// Removes containers and volumes by name when dropped, even if the test failed.
#[derive(Default)]
pub struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Cleanup {
    pub fn container(&mut self, name: &str) -> String {
        self.containers.push(name.to_owned());
        name.to_owned()
    }
    pub fn volume(&mut self, name: &str) -> String {
        self.volumes.push(name.to_owned());
        name.to_owned()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
        for v in &self.volumes {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}
