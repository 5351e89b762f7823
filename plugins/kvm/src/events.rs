//! Turns libvirt domain lifecycle events into the host's events, and keeps the
//! connection up so that they flow: after a reconnect the host is told to resync.
//! Each new connection (the first one included) also sweeps orphaned volumes.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Weak;
use std::time::Duration;

use unicompute_plugin_api::Event;
use virt::sys;

use crate::backend::Inner;
use crate::connection::DomainEvent;

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
