//! Operations: long work run in the background, followed by id. A mutating call made
//! with `async` becomes one; its progress, end and result are kept for
//! `server.operations_retained_secs` after it ends, and every change is an event.
//!
//! An operation's work is the very same service call a synchronous request makes; it
//! only runs in its own task, with the operation's id in a task-local
//! ([`current`]) so that a backend call can pass it on (progress, cancel).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::watch;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{Image, Instance};

use super::{Error, Service};
use crate::events::{Kind, Source, Subject};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Create an instance.
    Create,
    /// Change resources or labels.
    Update,
    /// Delete an instance.
    Delete,
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Restart.
    Restart,
    /// Pause.
    Pause,
    /// Unpause.
    Unpause,
    /// Pull an image.
    ImagePull,
    /// Upload a template.
    ImageUpload,
    /// Delete an image or template.
    ImageDelete,
}

impl OpKind {
    /// Every kind.
    pub const ALL: [OpKind; 11] = [
        OpKind::Create,
        OpKind::Update,
        OpKind::Delete,
        OpKind::Start,
        OpKind::Stop,
        OpKind::Restart,
        OpKind::Pause,
        OpKind::Unpause,
        OpKind::ImagePull,
        OpKind::ImageUpload,
        OpKind::ImageDelete,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
            OpKind::Start => "start",
            OpKind::Stop => "stop",
            OpKind::Restart => "restart",
            OpKind::Pause => "pause",
            OpKind::Unpause => "unpause",
            OpKind::ImagePull => "image-pull",
            OpKind::ImageUpload => "image-upload",
            OpKind::ImageDelete => "image-delete",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpStatus {
    /// Accepted, not started.
    Pending,
    /// Running.
    Running,
    /// Done.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl OpStatus {
    /// Every status.
    pub const ALL: [OpStatus; 5] = [
        OpStatus::Pending,
        OpStatus::Running,
        OpStatus::Succeeded,
        OpStatus::Failed,
        OpStatus::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Pending => "pending",
            OpStatus::Running => "running",
            OpStatus::Succeeded => "succeeded",
            OpStatus::Failed => "failed",
            OpStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<OpStatus> {
        OpStatus::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether it has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OpStatus::Succeeded | OpStatus::Failed | OpStatus::Cancelled
        )
    }
}

/// How far an operation got, as its backend or the server measures it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// What it is doing (`downloading`, `copying`...).
    pub stage: String,
    /// 0 to 100, when known.
    pub percent: Option<f64>,
    /// Bytes done, when it moves bytes.
    pub bytes_done: Option<u64>,
    /// Bytes in all, when known.
    pub bytes_total: Option<u64>,
}

/// What a finished operation made.
#[derive(Debug, Clone)]
pub enum OpResult {
    /// The instance after it.
    Instance(Arc<Instance>),
    /// The image it made.
    Image(Image),
    /// Nothing (a deletion).
    Nothing,
}

/// An operation as it is at one moment (each change makes a new one).
#[derive(Debug, Clone)]
pub struct Operation {
    /// `op-...`
    pub id: String,
    /// What it does.
    pub kind: OpKind,
    /// The instance it concerns, if any.
    pub instance_id: Option<String>,
    /// The backend it runs on, if known.
    pub backend: Option<String>,
    /// Where it is.
    pub status: OpStatus,
    /// How far it got.
    pub progress: Option<Progress>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
    /// What it made, once succeeded.
    pub result: Option<OpResult>,
    /// Why it failed or was cancelled.
    pub error: Option<Error>,
}

/// How an operation's work is stopped on request.
pub enum Canceller {
    /// Not at all: a cancel is refused.
    None,
    /// By a call (the backend's `cancel` with the operation's id), run on the
    /// blocking pool; it answers whether the work was told to stop.
    Call(Arc<dyn Fn(&str) -> bool + Send + Sync>),
    /// By the server itself (an upload it streams): the flag is raised.
    Flag(Arc<std::sync::atomic::AtomicBool>),
}

struct Entry {
    now: watch::Sender<Arc<Operation>>,
    canceller: Canceller,
    cancel_asked: bool,
    ended_at: Option<std::time::Instant>,
}

/// Every operation known, running or recently ended.
#[derive(Default)]
pub struct Operations {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Operations {
    /// How many operations are kept in each status.
    pub fn count_by_status(&self) -> Vec<(OpStatus, usize)> {
        let mut out: Vec<(OpStatus, usize)> = Vec::new();
        for e in lock(&self.entries).values() {
            let status = e.now.borrow().status;
            match out.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => out.push((status, 1)),
            }
        }
        out
    }
}

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the operation the calling task works for, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

fn new_op_id() -> String {
    let full = super::ids::new_id(Utc::now().timestamp_millis());
    format!("op-{}", full.trim_start_matches("i-"))
}

/// The work of an operation: what it made, or why not.
pub type Work = std::pin::Pin<Box<dyn Future<Output = Result<OpResult, Error>> + Send>>;

impl Service {
    /// Starts `work` as an operation and answers it (pending) at once.
    pub fn spawn_operation(
        self: &Arc<Self>,
        kind: OpKind,
        backend: Option<String>,
        instance_id: Option<String>,
        canceller: Canceller,
        work: Work,
    ) -> Arc<Operation> {
        let now = Utc::now().trunc_subsecs(3);
        let op = Arc::new(Operation {
            id: new_op_id(),
            kind,
            instance_id,
            backend,
            status: OpStatus::Pending,
            progress: None,
            created_at: now,
            updated_at: now,
            result: None,
            error: None,
        });
        {
            let mut entries = lock(&self.operations.entries);
            self.sweep_operations(&mut entries);
            entries.insert(
                op.id.clone(),
                Entry {
                    now: watch::channel(Arc::clone(&op)).0,
                    canceller,
                    cancel_asked: false,
                    ended_at: None,
                },
            );
        }
        self.publish_operation(Kind::OperationCreated, &op);
        let svc = Arc::clone(self);
        let id = op.id.clone();
        tokio::spawn(CURRENT.scope(id.clone(), async move {
            svc.change_operation(&id, Kind::OperationProgress, |o| {
                o.status = OpStatus::Running;
            });
            // A panic in the work is a failed operation, not a lost one.
            let result = tokio::spawn(CURRENT.scope(id.clone(), work))
                .await
                .unwrap_or_else(|_| Err(Error::Internal("the operation's task failed".into())));
            let cancelled = svc.cancel_was_asked(&id);
            svc.change_operation(&id, Kind::OperationFinished, |o| match result {
                Ok(r) => {
                    o.status = OpStatus::Succeeded;
                    if let OpResult::Instance(i) = &r {
                        o.backend.get_or_insert_with(|| i.backend.clone());
                        o.instance_id.get_or_insert_with(|| i.id.clone());
                    }
                    o.result = Some(r);
                }
                Err(e) => {
                    o.status = if cancelled && is_cancelled(&e) {
                        OpStatus::Cancelled
                    } else {
                        OpStatus::Failed
                    };
                    o.error = Some(e);
                }
            });
        }));
        op
    }

    fn sweep_operations(&self, entries: &mut HashMap<String, Entry>) {
        let keep = Duration::from_secs(self.config().server.operations_retained_secs);
        entries.retain(|_, e| e.ended_at.is_none_or(|t| t.elapsed() < keep));
    }

    fn cancel_was_asked(&self, id: &str) -> bool {
        lock(&self.operations.entries)
            .get(id)
            .is_some_and(|e| e.cancel_asked)
    }

    /// Applies `f` to an operation and publishes the change as `kind`.
    fn change_operation(&self, id: &str, kind: Kind, f: impl FnOnce(&mut Operation)) {
        {
            let mut entries = lock(&self.operations.entries);
            let Some(entry) = entries.get_mut(id) else {
                return;
            };
            let mut op = (**entry.now.borrow()).clone();
            if op.status.is_final() {
                return;
            }
            f(&mut op);
            op.updated_at = Utc::now().trunc_subsecs(3);
            if op.status.is_final() {
                entry.ended_at = Some(std::time::Instant::now());
                entry.canceller = Canceller::None;
            }
            let op = Arc::new(op);
            // Published under the lock, before a waiter can see the change: the
            // events of one operation are in the order of its changes, and one that
            // has ended has its `operation.finished` in the stream (the hub takes no
            // lock of ours).
            self.publish_operation(kind, &op);
            entry.now.send_replace(op);
        }
    }

    fn publish_operation(&self, kind: Kind, op: &Arc<Operation>) {
        self.hub.publish(
            kind,
            op.backend.as_deref(),
            op.instance_id.as_deref(),
            Source::Api,
            Subject::Operation(Arc::clone(op)),
        );
    }

    /// Records progress of the operation `id` (from its backend or the server).
    pub fn operation_progress(&self, id: &str, progress: Progress) {
        self.change_operation(id, Kind::OperationProgress, |o| {
            o.progress = Some(progress);
        });
    }

    /// One operation.
    pub fn operation(&self, id: &str) -> Result<Arc<Operation>, Error> {
        let mut entries = lock(&self.operations.entries);
        self.sweep_operations(&mut entries);
        entries
            .get(id)
            .map(|e| Arc::clone(&e.now.borrow()))
            .ok_or_else(|| Error::OperationNotFound(id.to_owned()))
    }

    /// One operation, once it has ended or `wait` has passed.
    pub async fn wait_operation(&self, id: &str, wait: Duration) -> Result<Arc<Operation>, Error> {
        let mut rx = {
            let entries = lock(&self.operations.entries);
            entries
                .get(id)
                .map(|e| e.now.subscribe())
                .ok_or_else(|| Error::OperationNotFound(id.to_owned()))?
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|o| o.status.is_final())).await;
        let now = Arc::clone(&rx.borrow());
        Ok(now)
    }

    /// Operations matching `keep`, oldest first.
    pub fn operations(&self, keep: impl Fn(&Operation) -> bool) -> Vec<Arc<Operation>> {
        let mut entries = lock(&self.operations.entries);
        self.sweep_operations(&mut entries);
        let mut all: Vec<Arc<Operation>> = entries
            .values()
            .map(|e| Arc::clone(&e.now.borrow()))
            .filter(|o| keep(o))
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// Asks a running operation to stop. Refused (`InvalidState`-like
    /// [`Error::NotCancellable`]) when it has ended or its work cannot be stopped.
    pub async fn cancel_operation(&self, id: &str) -> Result<Arc<Operation>, Error> {
        let (how, op) = {
            let mut entries = lock(&self.operations.entries);
            let entry = entries
                .get_mut(id)
                .ok_or_else(|| Error::OperationNotFound(id.to_owned()))?;
            let op = Arc::clone(&entry.now.borrow());
            if op.status.is_final() {
                return Err(Error::NotCancellable {
                    id: id.to_owned(),
                    why: format!("it has already ended ({})", op.status.as_str()),
                });
            }
            let how = match &entry.canceller {
                Canceller::None => None,
                Canceller::Call(c) => Some(Canceller::Call(Arc::clone(c))),
                Canceller::Flag(f) => Some(Canceller::Flag(Arc::clone(f))),
            };
            if how.is_some() {
                entry.cancel_asked = true;
            }
            (how, op)
        };
        let refused = || Error::NotCancellable {
            id: id.to_owned(),
            why: format!("a {} cannot be stopped midway", op.kind.as_str()),
        };
        let stopped = match how {
            None => false,
            Some(Canceller::Flag(f)) => {
                f.store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            Some(Canceller::Call(c)) => {
                let owned = id.to_owned();
                tokio::task::spawn_blocking(move || c(&owned))
                    .await
                    .unwrap_or(false)
            }
            Some(Canceller::None) => false,
        };
        if !stopped {
            if let Some(e) = lock(&self.operations.entries).get_mut(id) {
                e.cancel_asked = false;
            }
            return Err(refused());
        }
        Ok(op)
    }
}

/// Whether an error says the work was cancelled.
fn is_cancelled(e: &Error) -> bool {
    match e {
        Error::Cancelled(_) => true,
        Error::Plugin { error, .. } => error.code == unicompute_plugin_api::ErrorCode::Cancelled,
        _ => false,
    }
}
