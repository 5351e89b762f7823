//! The client side of libvirt: the process-wide event loop, and a lazy,
//! self-healing connection that registers our domain lifecycle callback each time
//! it (re)connects, and logs an outage as its beginning (WARN) and end (INFO) only.

use std::os::raw::{c_int, c_void};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use unicompute_plugin_api::sync::lock;
use virt::connect::Connect;
use virt::sys;

use crate::error::KvmError;
use crate::events::{register_lifecycle, DomainEvent};

static LIBVIRT_INIT: Once = Once::new();

/// Prepares libvirt for this process, once: no error printing to stderr, the default
/// event loop registered (before any connection is opened, as libvirt requires) and a
/// thread running it. Call it before opening any connection of your own.
pub fn init_libvirt() {
    LIBVIRT_INIT.call_once(|| {
        virt::error::clear_error_callback();
        if event_loop_registered() {
            // Another copy of this library (the host loads each plugin file through a
            // private copy) or the application did it: registering twice would reset
            // the loop under the thread that runs it.
            tracing::info!("libvirt event loop already registered in this process");
            return;
        }
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!(error = %e, "cannot register the libvirt event loop");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt event thread");
        }
    });
}

unsafe extern "C" fn noop_timer(_timer: c_int, _opaque: *mut c_void) {}

/// Whether an event loop implementation is registered with libvirt in this process:
/// only then can a timer be added.
fn event_loop_registered() -> bool {
    // SAFETY: a disabled timer (-1) with a callback that does nothing and no opaque
    // data; removed at once when it was added.
    unsafe {
        let id = sys::virEventAddTimeout(-1, Some(noop_timer), std::ptr::null_mut(), None);
        if id >= 0 {
            sys::virEventRemoveTimeout(id);
            true
        } else {
            false
        }
    }
}

/// Whether libvirt is reachable, as far as the calls have seen: so that an outage
/// is logged as two state changes (one WARN when it begins, with its first cause;
/// one INFO when it ends), not once per failed call.
#[derive(Debug, Default)]
pub struct Outage {
    /// When the outage began, if libvirt is down now.
    since: Option<Instant>,
    /// Failed calls (connection attempts) during it.
    failures: u64,
}

impl Outage {
    /// A call found libvirt unreachable: true when this begins an outage (log it at
    /// WARN); false while one goes on (DEBUG).
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            true
        } else {
            false
        }
    }

    /// libvirt answered: how long the outage lasted and how many calls failed, when
    /// this ends one (log it at INFO).
    pub fn ended(&mut self) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        let failures = std::mem::take(&mut self.failures);
        Some((since.elapsed(), failures))
    }

    /// Whether libvirt is down now.
    pub fn is_down(&self) -> bool {
        self.since.is_some()
    }
}

struct Slot {
    conn: Option<Connect>,
    callback: Option<c_int>,
    generation: u64,
    /// A thread is opening a connection (outside the lock).
    connecting: bool,
    /// Closed for good (the backend shut down): no new connection is made.
    closed: bool,
    outage: Outage,
}

/// The connection to one libvirt URI.
pub struct Connection {
    uri: String,
    slot: Mutex<Slot>,
    events: Sender<DomainEvent>,
}

impl Connection {
    /// A connection to `uri`, not opened yet. Lifecycle events go to `events`.
    pub fn new(uri: &str, events: Sender<DomainEvent>) -> Self {
        init_libvirt();
        Connection {
            uri: uri.to_owned(),
            slot: Mutex::new(Slot {
                conn: None,
                callback: None,
                generation: 0,
                connecting: false,
                closed: false,
                outage: Outage::default(),
            }),
            events,
        }
    }

    /// The URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The live connection, opened (again) when there is none or it died. The
    /// opening runs outside the lock: while one caller waits on a slow or hung
    /// daemon, the others fail at once with "unavailable" instead of queueing.
    pub fn get(&self) -> Result<Connect, KvmError> {
        {
            let mut slot = lock(&self.slot);
            if let Some(c) = &slot.conn {
                if c.is_alive().unwrap_or(false) {
                    return Ok(c.clone());
                }
                if slot.outage.failed() {
                    tracing::warn!(uri = %self.uri, "libvirt connection lost");
                }
                Self::drop_conn(&mut slot);
            }
            if slot.connecting || slot.closed {
                return Err(KvmError::Connecting {
                    uri: self.uri.clone(),
                });
            }
            slot.connecting = true;
        }
        let opened = Connect::open(Some(&self.uri));
        let mut slot = lock(&self.slot);
        slot.connecting = false;
        let conn = match opened {
            Ok(c) => c,
            Err(source) => {
                if slot.outage.failed() {
                    tracing::warn!(uri = %self.uri, reason = %source.message(), "libvirt unavailable; further failures are logged at debug until it is back");
                } else {
                    tracing::debug!(uri = %self.uri, reason = %source.message(), "libvirt still unavailable");
                }
                return Err(KvmError::Unavailable {
                    uri: self.uri.clone(),
                    source,
                });
            }
        };
        if slot.closed {
            // Shut down while we were connecting: do not leave a connection behind.
            drop(conn);
            return Err(KvmError::Connecting {
                uri: self.uri.clone(),
            });
        }
        // Not every driver has keepalive (test:/// has none); it only speeds up
        // noticing a hung daemon.
        let _ = conn.set_keep_alive(5, 3);
        match register_lifecycle(&conn, self.events.clone()) {
            Ok(id) => slot.callback = Some(id),
            Err(e) => tracing::warn!(error = %e, "cannot register domain events"),
        }
        slot.generation += 1;
        match slot.outage.ended() {
            Some((down, failures)) => tracing::info!(
                uri = %self.uri,
                generation = slot.generation,
                down_ms = down.as_millis() as u64,
                failed_calls = failures,
                "libvirt is back: connected"
            ),
            None => {
                tracing::info!(uri = %self.uri, generation = slot.generation, "connected to libvirt")
            }
        }
        slot.conn = Some(conn.clone());
        Ok(conn)
    }

    /// How many times a connection was opened.
    pub fn generation(&self) -> u64 {
        lock(&self.slot).generation
    }

    /// Whether a live connection is open now (without opening one).
    pub fn is_connected(&self) -> bool {
        lock(&self.slot)
            .conn
            .as_ref()
            .map(|c| c.is_alive().unwrap_or(false))
            .unwrap_or(false)
    }

    /// Whether libvirt is known to be unreachable now (an outage was logged).
    pub fn is_down(&self) -> bool {
        lock(&self.slot).outage.is_down()
    }

    /// Closes the connection (deregistering our callback).
    pub fn close(&self) {
        let mut slot = lock(&self.slot);
        slot.closed = true;
        Self::drop_conn(&mut slot);
    }

    fn drop_conn(slot: &mut Slot) {
        if let (Some(conn), Some(id)) = (&slot.conn, slot.callback.take()) {
            // SAFETY: the connection pointer is valid while `conn` lives; the id is
            // the one libvirt returned for it. Failure (dead connection) is harmless.
            unsafe {
                sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id);
            }
        }
        slot.conn = None;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_once_when_it_begins_and_once_when_it_ends() {
        let mut o = Outage::default();
        assert!(o.ended().is_none(), "nothing to end");
        assert!(o.failed(), "the first failure begins it: WARN");
        for _ in 0..456 {
            assert!(!o.failed(), "later ones: DEBUG");
        }
        assert!(o.is_down());
        let (_, failures) = o.ended().expect("it ends: INFO");
        assert_eq!(failures, 457);
        assert!(!o.is_down());
        assert!(o.ended().is_none(), "once");
        assert!(o.failed(), "a new outage is logged again");
    }
}
