//! libvirt's domain lifecycle events, from the callback libvirt calls (registered
//! by the connection on each connect) to the host's events; and the worker that
//! keeps the connection up so that they flow: after a reconnect the host is told
//! to resync. Each new connection (the first one included) also sweeps orphaned
//! volumes.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Weak;
use std::time::Duration;

use unicompute_plugin_api::Event;
use virt::connect::Connect;
use virt::sys;

use crate::backend::Inner;
use crate::error::{KvmError, LibvirtOp};

/// A domain lifecycle event, as libvirt reported it.
#[derive(Debug, Clone)]
pub struct DomainEvent {
    /// The domain's UUID.
    pub uuid: String,
    /// The domain's name.
    pub name: String,
    /// `VIR_DOMAIN_EVENT_*`.
    pub kind: c_int,
}

/// How often the worker checks the connection when no event comes.
const TICK: Duration = Duration::from_millis(500);

/// Starts the worker of a backend. It ends when the backend is dropped or shut down.
pub(crate) fn spawn_worker(inner: Weak<Inner>, rx: Receiver<DomainEvent>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kvm-events".into())
        .spawn(move || run(inner, rx))
        .map(|_| ())
}

fn run(weak: Weak<Inner>, rx: Receiver<DomainEvent>) {
    let mut seen_generation = 0;
    loop {
        let msg = rx.recv_timeout(TICK);
        let Some(inner) = weak.upgrade() else { return };
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        match msg {
            Ok(event) => handle(&inner, &event),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !inner.conn.is_connected() {
            // libvirtd may be back: reconnecting re-registers our callback.
            let _ = inner.conn.get();
        }
        let generation = inner.conn.generation();
        if generation != seen_generation {
            // At start and after each reconnect: leftovers of a killed server.
            if let Ok(conn) = inner.connect() {
                inner.sweep(&conn);
            }
            if seen_generation != 0 {
                tracing::info!(backend = %inner.name, "reconnected to libvirt; asking for a resync");
                inner.sink.emit(&Event::Resync);
            }
            seen_generation = generation;
        }
    }
}

fn handle(inner: &Inner, event: &DomainEvent) {
    tracing::debug!(domain = %event.name, kind = event.kind, "domain event");
    if event.kind == sys::VIR_DOMAIN_EVENT_UNDEFINED as i32 {
        if let Some(id) = inner.forget_uuid(&event.uuid) {
            inner.sink.emit(&Event::Vanished { id });
        }
        return;
    }
    let Ok(conn) = inner.connect() else { return };
    match conn.lookup_domain_by_uuid_string(&event.uuid) {
        Ok(dom) => {
            if let Ok(Some(mut found)) = inner.read(dom) {
                // Started outside the API (virsh, autostart): from now on a stop
                // makes it `stopped`, not `created`.
                if event.kind == sys::VIR_DOMAIN_EVENT_STARTED as i32 && !found.meta.started {
                    found.meta.started = true;
                    if let Err(e) = inner.write_meta(&found.dom, &found.meta) {
                        tracing::debug!(error = %e, "cannot mark a domain as started");
                    }
                }
                match inner.instance(&found) {
                    Ok(instance) => inner.sink.emit(&Event::Changed {
                        instance: Box::new(instance),
                    }),
                    Err(e) => tracing::debug!(error = %e, "cannot read an instance after an event"),
                }
            }
        }
        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => {
            if let Some(id) = inner.forget_uuid(&event.uuid) {
                inner.sink.emit(&Event::Vanished { id });
            }
        }
        Err(_) => {}
    }
}

/// The lifecycle callback libvirt calls on its event thread. It must not block or
/// panic: it reads the domain's UUID and name (local, no RPC) and hands them on.
unsafe extern "C" fn lifecycle_callback(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if opaque.is_null() || dom.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the boxed Sender registered with this callback; libvirt
    // keeps it alive until it calls `free_sender`.
    let tx = unsafe { &*(opaque as *const Sender<DomainEvent>) };
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid for the duration of the callback; the buffer has the
    // size libvirt documents for a UUID string.
    let uuid = unsafe {
        if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) < 0 {
            return 0;
        }
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    };
    // SAFETY: as above; the name string is owned by the domain object.
    let name = unsafe {
        let p = sys::virDomainGetName(dom);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let _ = tx.send(DomainEvent {
        uuid,
        name,
        kind: event,
    });
    0
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from Box::into_raw in `register_lifecycle`, and libvirt
        // calls this once.
        drop(unsafe { Box::from_raw(opaque as *mut Sender<DomainEvent>) });
    }
}

type LifecycleFn =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type GenericFn = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

pub(crate) fn register_lifecycle(
    conn: &Connect,
    tx: Sender<DomainEvent>,
) -> Result<c_int, KvmError> {
    let opaque = Box::into_raw(Box::new(tx)) as *mut c_void;
    // SAFETY: libvirt's API takes the generic callback type and calls it with the
    // signature of the event id (VIR_DOMAIN_EVENT_CALLBACK in C does the same cast).
    let cb = unsafe { std::mem::transmute::<LifecycleFn, GenericFn>(lifecycle_callback) };
    // SAFETY: valid connection; callback and free function match the contract above.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(cb),
            opaque,
            Some(free_sender),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take the box.
        unsafe { free_sender(opaque) };
        return Err(KvmError::Libvirt {
            op: LibvirtOp::RegisterEvents,
            source: virt::error::Error::last_error(),
        });
    }
    Ok(id)
}
