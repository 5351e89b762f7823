//! In-process tests of the service's rules: the fake plugin as a plain Rust library
//! behind a recorder, a registry made from it, no plugin file and no HTTP.

use std::collections::BTreeMap;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use unicompute_fake::FakeBackend;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{
    Backend, BackendContext, BackendDescription, CreateRequest, ErrorCode, EventSink,
    HostResources, Image, Instance, InstanceState, JsonMap, PullRequest, Resources, StopOptions,
    UpdateRequest, UploadRequest, UploadTarget, Usage,
};

use super::*;
use crate::config::Config;

/// The service's error, under a name that `InstanceState::*` does not shadow.
type E = super::Error;

/// The fake backend, recording which operations reach it; `list` can be held at a
/// gate (taken, then answered only when the test says).
struct Recorder {
    /// The fake's records, removed with it.
    state_dir: std::path::PathBuf,
    inner: FakeBackend,
    calls: Mutex<Vec<&'static str>>,
    gate: Mutex<Option<Gate>>,
}

/// A held `list`: it tells `taken` once it has read the instances, then waits for
/// `release` before answering what it read.
struct Gate {
    taken: std_mpsc::Sender<()>,
    release: std_mpsc::Receiver<()>,
}

impl Recorder {
    fn new(config: serde_json::Value) -> Arc<Recorder> {
        // A records directory of its own: the tests of this process run at once.
        let state_dir = std::env::temp_dir().join(format!(
            "unicompute-service-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut config = match config {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        config
            .entry("state_dir")
            .or_insert_with(|| state_dir.to_string_lossy().into_owned().into());
        let inner = FakeBackend::new(BackendContext {
            name: "fake".into(),
            config: serde_json::Value::Object(config),
            events: EventSink::discard(),
        })
        .expect("fake backend");
        Arc::new(Recorder {
            state_dir,
            inner,
            calls: Mutex::default(),
            gate: Mutex::default(),
        })
    }

    fn note(&self, op: &'static str) {
        lock(&self.calls).push(op);
    }

    fn calls(&self) -> Vec<&'static str> {
        lock(&self.calls).clone()
    }

    fn forget_calls(&self) {
        lock(&self.calls).clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Backend for Recorder {
    fn describe(&self) -> unicompute_plugin_api::Result<BackendDescription> {
        self.inner.describe()
    }
    fn health(&self) -> unicompute_plugin_api::Result<()> {
        self.inner.health()
    }
    fn host_resources(&self) -> unicompute_plugin_api::Result<HostResources> {
        self.inner.host_resources()
    }
    fn images(&self) -> unicompute_plugin_api::Result<Vec<Image>> {
        self.inner.images()
    }
    fn list(&self) -> unicompute_plugin_api::Result<Vec<Instance>> {
        self.note("list");
        let read = self.inner.list();
        if let Some(gate) = lock(&self.gate).take() {
            let _ = gate.taken.send(());
            let _ = gate.release.recv();
        }
        read
    }
    fn get(&self, id: &str) -> unicompute_plugin_api::Result<Instance> {
        self.note("get");
        self.inner.get(id)
    }
    fn create(&self, request: CreateRequest) -> unicompute_plugin_api::Result<Instance> {
        self.note("create");
        self.inner.create(request)
    }
    fn update(&self, id: &str, r: UpdateRequest) -> unicompute_plugin_api::Result<Instance> {
        self.note("update");
        self.inner.update(id, r)
    }
    fn delete(&self, id: &str, force: bool) -> unicompute_plugin_api::Result<()> {
        self.note("delete");
        self.inner.delete(id, force)
    }
    fn start(&self, id: &str) -> unicompute_plugin_api::Result<Instance> {
        self.note("start");
        self.inner.start(id)
    }
    fn stop(&self, id: &str, o: StopOptions) -> unicompute_plugin_api::Result<Instance> {
        self.note("stop");
        self.inner.stop(id, o)
    }
    fn restart(&self, id: &str, o: StopOptions) -> unicompute_plugin_api::Result<Instance> {
        self.note("restart");
        self.inner.restart(id, o)
    }
    fn pause(&self, id: &str) -> unicompute_plugin_api::Result<Instance> {
        self.note("pause");
        self.inner.pause(id)
    }
    fn unpause(&self, id: &str) -> unicompute_plugin_api::Result<Instance> {
        self.note("unpause");
        self.inner.unpause(id)
    }
    fn usage(&self, id: &str) -> unicompute_plugin_api::Result<Usage> {
        self.note("usage");
        self.inner.usage(id)
    }
    fn pull_image(&self, r: PullRequest) -> unicompute_plugin_api::Result<Image> {
        self.note("pull_image");
        self.inner.pull_image(r)
    }
    fn delete_image(&self, name: &str) -> unicompute_plugin_api::Result<()> {
        self.note("delete_image");
        self.inner.delete_image(name)
    }
    fn upload_begin(&self, r: UploadRequest) -> unicompute_plugin_api::Result<UploadTarget> {
        self.note("upload_begin");
        self.inner.upload_begin(r)
    }
    fn upload_commit(&self, r: UploadRequest) -> unicompute_plugin_api::Result<Image> {
        self.note("upload_commit");
        self.inner.upload_commit(r)
    }
    fn upload_abort(&self, r: UploadRequest) -> unicompute_plugin_api::Result<()> {
        self.note("upload_abort");
        self.inner.upload_abort(r)
    }
    fn cancel(&self, operation: &str) -> unicompute_plugin_api::Result<bool> {
        self.note("cancel");
        self.inner.cancel(operation)
    }
}

/// A service with one in-process backend `fake`.
fn service_with(config: serde_json::Value) -> (Arc<Service>, Arc<Recorder>) {
    let recorder = Recorder::new(config);
    let backend: Arc<dyn Backend> = Arc::clone(&recorder) as Arc<dyn Backend>;
    let (svc, _tx, _rx) = Service::in_process(Config::default(), vec![("fake".into(), backend)]);
    (svc, recorder)
}

fn new_instance(name: &str) -> NewInstance {
    let mut config = JsonMap::new();
    config.insert("image".into(), "busybox".into());
    NewInstance {
        name: name.into(),
        backend: "fake".into(),
        config,
        resources: Resources::default(),
        labels: BTreeMap::new(),
        start: false,
    }
}

/// An instance of the fake backend brought into `state` through the service.
async fn instance_in(svc: &Service, name: &str, state: InstanceState) -> String {
    let id = svc
        .create(new_instance(name))
        .await
        .expect("create")
        .id
        .clone();
    let stop = StopOptions {
        force: true,
        timeout: 1,
    };
    let steps: &[Action] = match state {
        InstanceState::Created => &[],
        InstanceState::Running => &[Action::Start],
        InstanceState::Paused => &[Action::Start, Action::Pause],
        InstanceState::Stopped => &[Action::Start, Action::Stop(stop)],
        other => panic!("the fake cannot be put in {other:?}"),
    };
    for step in steps {
        svc.act(&id, *step).await.expect("step");
    }
    assert_eq!(svc.get(&id).expect("get").state, state);
    id
}

const STOP: StopOptions = StopOptions {
    force: false,
    timeout: 1,
};

#[test]
fn the_state_table() {
    use InstanceState::*;
    use Rule::*;
    let actions = [
        Action::Start,
        Action::Stop(STOP),
        Action::Restart(STOP),
        Action::Pause,
        Action::Unpause,
    ];
    // Rows: state; columns: start, stop, restart, pause, unpause.
    let table = [
        (Created, [Call, Unchanged, Call, Refused, Refused]),
        (Running, [Unchanged, Call, Call, Call, Unchanged]),
        (Paused, [Refused, Call, Call, Unchanged, Call]),
        (Stopped, [Call, Unchanged, Call, Refused, Refused]),
        (Restarting, [Call, Call, Call, Refused, Refused]),
        (Error, [Call, Call, Call, Refused, Refused]),
        (Unknown, [Call, Call, Call, Refused, Refused]),
    ];
    for (state, row) in table {
        for (action, want) in actions.iter().zip(row) {
            assert_eq!(rule(*action, state), want, "{} of {state:?}", action.name());
        }
    }
    for (state, force) in [
        (Created, false),
        (Running, true),
        (Paused, true),
        (Stopped, false),
        (Restarting, true),
        (Error, false),
        (Unknown, false),
    ] {
        assert_eq!(delete_needs_force(state), force, "delete of {state:?}");
    }
}

#[test]
fn reload_verdicts() {
    use Verdict::*;
    // (enabled before, enabled after, same live object) -> verdict
    let table = [
        (Some(true), Some(true), true, Kept),
        (Some(false), Some(false), true, Kept),
        (Some(true), Some(true), false, Restarted),
        (Some(false), Some(true), false, Restarted),
        (None, Some(true), false, Started),
        (Some(true), Some(false), false, Stopped),
        (Some(false), Some(false), false, Disabled),
        (None, Some(false), false, Disabled),
        (Some(true), None, false, Removed),
        (Some(false), None, false, Removed),
    ];
    for (before, after, kept, want) in table {
        assert_eq!(
            Verdict::of(before, after, kept),
            want,
            "{before:?} -> {after:?}, kept {kept}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_follow_the_table_and_call_the_backend_only_when_it_says_so() {
    use InstanceState::*;
    let (svc, rec) = service_with(serde_json::json!({}));
    let cases = [
        (Running, Action::Start, Ok(Running), false),
        (Created, Action::Stop(STOP), Ok(Created), false),
        (Stopped, Action::Stop(STOP), Ok(Stopped), false),
        (Paused, Action::Pause, Ok(Paused), false),
        (Running, Action::Unpause, Ok(Running), false),
        (Stopped, Action::Pause, Err(Stopped), false),
        (Created, Action::Unpause, Err(Created), false),
        (Created, Action::Start, Ok(Running), true),
        (Running, Action::Stop(STOP), Ok(Stopped), true),
        (Running, Action::Pause, Ok(Paused), true),
        (Paused, Action::Unpause, Ok(Running), true),
        (Stopped, Action::Restart(STOP), Ok(Running), true),
    ];
    for (i, (from, action, want, calls_backend)) in cases.into_iter().enumerate() {
        let id = instance_in(&svc, &format!("t{i}"), from).await;
        rec.forget_calls();
        let got = svc.act(&id, action).await;
        let what = format!("{} of {from:?}", action.name());
        match want {
            Ok(state) => assert_eq!(got.expect(&what).state, state, "{what}"),
            Err(state) => match got {
                Err(E::InvalidState { state: s, .. }) => assert_eq!(s, state, "{what}"),
                other => panic!("{what}: {other:?}"),
            },
        }
        // The fresh read before acting is always there; the action itself only
        // when the table says to call.
        let acted = rec.calls().iter().any(|c| *c == action.name());
        assert_eq!(acted, calls_backend, "{what}: {:?}", rec.calls());
        if let Ok(state) = want {
            assert_eq!(
                svc.get(&id).expect("known").state,
                state,
                "{what}: the inventory follows"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rules() {
    let (svc, rec) = service_with(serde_json::json!({}));
    // A bad name never reaches the backend.
    match svc.create(new_instance("-bad")).await {
        Err(Error::InvalidName(n)) => assert_eq!(n, "-bad"),
        other => panic!("{other:?}"),
    }
    assert!(rec.calls().is_empty(), "{:?}", rec.calls());
    // An unknown backend.
    let mut other = new_instance("elsewhere");
    other.backend = "nope".into();
    assert!(matches!(
        svc.create(other).await,
        Err(Error::InvalidBackend(b)) if b == "nope"
    ));
    // A taken name, also on a second try at once: exactly one of the racers wins.
    svc.create(new_instance("web")).await.expect("first");
    assert!(matches!(
        svc.create(new_instance("web")).await,
        Err(Error::NameTaken(n)) if n == "web"
    ));
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { svc.create(new_instance("race")).await })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.expect("task") {
            Ok(_) => won += 1,
            Err(Error::NameTaken(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(won, 1);
    // A failed create releases the name: the fake refuses an unknown image.
    let mut bad = new_instance("again");
    bad.config.insert("image".into(), "no-such-image".into());
    assert!(matches!(svc.create(bad).await, Err(Error::Plugin { .. })));
    svc.create(new_instance("again"))
        .await
        .expect("name free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_rules() {
    use InstanceState::*;
    let (svc, rec) = service_with(serde_json::json!({}));
    for (i, state) in [Created, Running, Paused, Stopped].into_iter().enumerate() {
        let id = instance_in(&svc, &format!("d{i}"), state).await;
        rec.forget_calls();
        if delete_needs_force(state) {
            match svc.delete(&id, false).await {
                Err(E::InvalidState { state: s, .. }) => assert_eq!(s, state),
                other => panic!("{state:?}: {other:?}"),
            }
            assert!(!rec.calls().contains(&"delete"), "{state:?}");
            assert!(svc.get(&id).is_ok(), "{state:?}: still there");
        }
        svc.delete(&id, true).await.expect("forced delete");
        assert!(matches!(svc.get(&id), Err(E::NotFound { .. })), "{state:?}");
        assert!(matches!(
            rec.inner.get(&id).map_err(|e| e.code),
            Err(ErrorCode::InstanceNotFound)
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_read_before_an_operation_ended_does_not_undo_it() {
    let (svc, rec) = service_with(serde_json::json!({}));
    let id = instance_in(&svc, "raced", InstanceState::Created).await;
    // The resync reads the instance as created, then is held.
    let release = held_resync(&svc, &rec).await;
    // Meanwhile the instance is started through the service.
    let started = svc.act(&id, Action::Start).await.expect("start");
    assert_eq!(started.state, InstanceState::Running);
    // The stale list arrives: it must not bring back `created`.
    release.finish().await;
    assert_eq!(svc.get(&id).expect("known").state, InstanceState::Running);
    // A deleted instance is not brought back by a stale list either.
    let release = held_resync(&svc, &rec).await;
    svc.delete(&id, true).await.expect("delete");
    release.finish().await;
    assert!(matches!(svc.get(&id), Err(Error::NotFound { .. })));
}

/// A resync in flight whose list has been read and is held until [`HeldResync::finish`].
struct HeldResync {
    release: std_mpsc::Sender<()>,
    resync: tokio::task::JoinHandle<()>,
}

impl HeldResync {
    /// Lets the held list through and waits for the resync to apply it.
    async fn finish(self) {
        self.release.send(()).expect("release");
        self.resync.await.expect("resync");
    }
}

/// Starts a resync of `fake` and returns once its list has been read.
async fn held_resync(svc: &Arc<Service>, rec: &Recorder) -> HeldResync {
    let (entry, backend) = svc.backend("fake").expect("backend");
    let (taken_tx, taken_rx) = std_mpsc::channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    *lock(&rec.gate) = Some(Gate {
        taken: taken_tx,
        release: release_rx,
    });
    let resync = {
        let svc = Arc::clone(svc);
        tokio::spawn(async move { svc.resync(&entry, &backend).await })
    };
    tokio::task::spawn_blocking(move || taken_rx.recv())
        .await
        .expect("join")
        .expect("the resync has read");
    HeldResync {
        release: release_tx,
        resync,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_backend_is_noted_and_said() {
    let (svc, _rec) = service_with(serde_json::json!({"available": false}));
    let (entry, backend) = svc.backend("fake").expect("made");
    assert!(!svc.check(&entry, &backend).await);
    assert_eq!(
        entry.status(),
        crate::plugins::registry::BackendStatus::Unavailable
    );
    match svc.create(new_instance("nowhere")).await {
        Err(Error::Plugin { backend, error }) => {
            assert_eq!(backend, "fake");
            assert_eq!(error.code, ErrorCode::BackendUnavailable);
        }
        other => panic!("{other:?}"),
    }
    let view = svc.cluster();
    assert_eq!(view.health, ClusterHealth::Unhealthy);
    assert_eq!(view.backends.len(), 1);
}

/// The events published after `since`, as `(type, source, from, to)`.
fn events_after(
    svc: &Service,
    since: u64,
) -> Vec<(String, &'static str, Option<InstanceState>, InstanceState)> {
    let crate::events::Start::Backlog(b) = svc.hub.subscribe(Some(since)).start else {
        panic!("reset")
    };
    b.iter()
        .filter_map(|e| match &e.subject {
            crate::events::Subject::Instance { instance, from } => Some((
                e.kind.as_str().to_owned(),
                e.source.as_str(),
                *from,
                instance.state,
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_through_the_service_is_one_event_in_order() {
    use InstanceState::*;
    let (svc, _rec) = service_with(serde_json::json!({}));
    let since = svc.hub.last_id();
    let id = svc.create(new_instance("ev")).await.unwrap().id.clone();
    svc.act(&id, Action::Start).await.unwrap();
    // Unchanged by the table: no event.
    svc.act(&id, Action::Start).await.unwrap();
    svc.update(
        &id,
        UpdateRequest {
            labels: Some(BTreeMap::from([("a".into(), "b".into())])),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    svc.act(&id, Action::Stop(STOP)).await.unwrap();
    svc.delete(&id, false).await.unwrap();
    let got = events_after(&svc, since);
    let want = vec![
        ("instance.created".to_owned(), "api", None, Created),
        (
            "instance.state-changed".to_owned(),
            "api",
            Some(Created),
            Running,
        ),
        ("instance.updated".to_owned(), "api", None, Running),
        (
            "instance.state-changed".to_owned(),
            "api",
            Some(Running),
            Stopped,
        ),
        ("instance.deleted".to_owned(), "api", None, Stopped),
    ];
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_news_is_an_event_of_the_backend_and_a_quiet_resync_is_none() {
    use InstanceState::*;
    let recorder = Recorder::new(serde_json::json!({}));
    let backend: Arc<dyn Backend> = Arc::clone(&recorder) as Arc<dyn Backend>;
    let (svc, tx, rx) = Service::in_process(Config::default(), vec![("fake".into(), backend)]);
    tokio::spawn(Arc::clone(&svc).run_events(rx));
    let id = svc.create(new_instance("bk")).await.unwrap().id.clone();
    let (entry, b) = svc.backend("fake").unwrap();
    let since = svc.hub.last_id();
    // A resync that finds nothing new publishes nothing.
    svc.resync(&entry, &b).await;
    assert_eq!(events_after(&svc, since), vec![]);
    // The backend says the instance runs (as a `docker start` outside the API would).
    let mut running = (*svc.get(&id).unwrap()).clone();
    running.state = Running;
    let sink = Service::event_sink(tx)("fake");
    sink.emit(&Event::Changed {
        instance: Box::new(running),
    });
    sink.emit(&Event::Vanished { id: id.clone() });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while events_after(&svc, since).len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        events_after(&svc, since),
        vec![
            (
                "instance.state-changed".to_owned(),
                "backend",
                Some(Created),
                Running
            ),
            ("instance.deleted".to_owned(), "backend", None, Running),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_runs_the_same_work_and_keeps_its_result() {
    let (svc, _rec) = service_with(serde_json::json!({}));
    let since = svc.hub.last_id();
    let (id, at) = new_instance_id();
    let s = Arc::clone(&svc);
    let created_id = id.clone();
    let op = svc.spawn_operation(
        OpKind::Create,
        Some("fake".into()),
        None,
        Canceller::None,
        Box::pin(async move {
            s.create_as(new_instance("op"), created_id, at)
                .await
                .map(OpResult::Instance)
        }),
    );
    assert_eq!(op.status, OpStatus::Pending);
    let done = svc
        .wait_operation(&op.id, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, OpStatus::Succeeded);
    assert_eq!(done.instance_id.as_deref(), Some(id.as_str()));
    let Some(OpResult::Instance(inst)) = &done.result else {
        panic!("no instance in {done:?}")
    };
    assert_eq!(inst.name, "op");
    assert!(svc.get(&id).is_ok());
    // Not cancellable once ended, nor a work that cannot be stopped.
    assert!(matches!(
        svc.cancel_operation(&op.id).await,
        Err(E::NotCancellable { .. })
    ));
    assert!(matches!(
        svc.cancel_operation("op-nope").await,
        Err(E::OperationNotFound(_))
    ));
    // created, running, finished: in order, about the same operation.
    let crate::events::Start::Backlog(b) = svc.hub.subscribe(Some(since)).start else {
        panic!("reset")
    };
    let ops: Vec<(&str, OpStatus)> = b
        .iter()
        .filter_map(|e| match &e.subject {
            crate::events::Subject::Operation(o) => Some((e.kind.as_str(), o.status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("operation.created", OpStatus::Pending),
            ("operation.progress", OpStatus::Running),
            ("operation.finished", OpStatus::Succeeded),
        ]
    );
    // A failed operation keeps its error.
    let s = Arc::clone(&svc);
    let op = svc.spawn_operation(
        OpKind::Start,
        Some("fake".into()),
        Some("i-missing".into()),
        Canceller::None,
        Box::pin(async move {
            s.act("i-missing", Action::Start)
                .await
                .map(OpResult::Instance)
        }),
    );
    let done = svc
        .wait_operation(&op.id, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, OpStatus::Failed);
    assert!(matches!(done.error, Some(E::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_raises_the_flag_and_the_work_ends_cancelled() {
    let (svc, _rec) = service_with(serde_json::json!({}));
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    let op = svc.spawn_operation(
        OpKind::ImageUpload,
        Some("fake".into()),
        None,
        Canceller::Flag(flag),
        Box::pin(async move {
            while !seen.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(E::Cancelled("upload stopped".into()))
        }),
    );
    svc.cancel_operation(&op.id).await.unwrap();
    let done = svc
        .wait_operation(&op.id, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, OpStatus::Cancelled);
    assert_eq!(svc.operations(|o| o.id == op.id).len(), 1);
}
