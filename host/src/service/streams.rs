//! Byte streams of an instance (logs, console, exec): the state rules, the backend's
//! `open_stream` off the HTTP executor, and the console's one-writer rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{ByteStream, ErrorCode, InstanceState, StreamKind, StreamRequest};

use super::{call, Error, Service};
use crate::events::Source;

impl Service {
    /// Opens a stream on an instance. Logs are there in every state; the console and
    /// exec need a running instance (409 `INVALID_STATE` otherwise).
    pub async fn open_stream(&self, id: &str, kind: StreamKind) -> Result<ByteStream, Error> {
        let known = self.get(id)?;
        if !matches!(kind, StreamKind::Logs(_)) && known.state != InstanceState::Running {
            return Err(Error::InvalidState {
                message: format!(
                    "instance {id} is {}: {} needs a running instance",
                    known.state.as_str(),
                    kind.name()
                ),
                state: known.state,
            });
        }
        let (entry, backend) = self.backend(&known.backend)?;
        let request = StreamRequest {
            id: id.to_owned(),
            kind,
        };
        match call(&entry, "open_stream", &backend, move |b| {
            b.open_stream(request)
        })
        .await
        {
            Ok(s) => Ok(s),
            Err(e) if e.code == ErrorCode::InstanceNotFound => {
                self.inventory.remove(id, Source::Backend);
                Err(Error::no_id(id))
            }
            Err(e) => Err(self.fail(&entry, e)),
        }
    }

    /// Takes an instance's console: one holder at a time. Another holder makes it
    /// `ConsoleBusy`, unless `force`, which ends the other holder's session (its
    /// [`ConsoleLease::kicked`] resolves) and takes over.
    pub fn take_console(&self, id: &str, force: bool) -> Result<ConsoleLease, Error> {
        self.consoles.take(id, force)
    }
}

/// Who holds each instance's console.
#[derive(Default)]
pub struct Consoles {
    held: Mutex<HashMap<String, (u64, Arc<Notify>)>>,
    next: AtomicU64,
}

impl Consoles {
    fn take(self: &Arc<Self>, id: &str, force: bool) -> Result<ConsoleLease, Error> {
        let mut held = lock(&self.held);
        if let Some((_, kick)) = held.get(id) {
            if !force {
                return Err(Error::ConsoleBusy(id.to_owned()));
            }
            kick.notify_one();
        }
        let session = self.next.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        held.insert(id.to_owned(), (session, Arc::clone(&kick)));
        Ok(ConsoleLease {
            consoles: Arc::clone(self),
            id: id.to_owned(),
            session,
            kick,
        })
    }
}

/// A held console; dropping it frees the console (unless another session took it
/// over since).
pub struct ConsoleLease {
    consoles: Arc<Consoles>,
    id: String,
    session: u64,
    kick: Arc<Notify>,
}

impl ConsoleLease {
    /// Resolves when another session takes the console over (`force`).
    pub async fn kicked(&self) {
        self.kick.notified().await
    }
}

impl Drop for ConsoleLease {
    fn drop(&mut self) {
        let mut held = lock(&self.consoles.held);
        if held.get(&self.id).is_some_and(|(s, _)| *s == self.session) {
            held.remove(&self.id);
        }
    }
}
