//! The engine's event stream, filtered to this backend's instances, turned into the
//! host's [`Event`]s: a container stopped, killed or removed by hand is reported at
//! once. When the engine goes away the stream is reopened as soon as it returns, and a
//! `Resync` tells the host to read everything again (events may have been missed).

use std::sync::Arc;
use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use tokio::sync::watch;
use unicompute_plugin_api::Event;

use crate::backend::Shared;
use crate::client::filters;
use crate::record::{LABEL_BACKEND, LABEL_ID};

/// How long to wait before trying the engine again.
const RETRY: Duration = Duration::from_millis(250);

/// Container actions that change nothing we report.
fn ignored(action: &str) -> bool {
    action.starts_with("exec_")
        || matches!(
            action,
            "attach"
                | "detach"
                | "resize"
                | "top"
                | "archive-path"
                | "extract-to-dir"
                | "copy"
                | "export"
                | "commit"
                | "mount"
                | "unmount"
        )
}

/// Actions after which a stats stream no longer fits the instance.
fn ends_stats(action: &str) -> bool {
    matches!(
        action,
        "die" | "stop" | "kill" | "pause" | "unpause" | "update" | "destroy" | "oom"
    )
}

/// Runs until `shutdown` turns true.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut lost = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let docker = match shared.engine.client().await {
            Ok(d) => d,
            Err(_) => {
                lost = true;
                if pause(&mut shutdown, RETRY).await {
                    return;
                }
                continue;
            }
        };
        let filters = filters(&[
            ("type", "container".to_owned()),
            ("label", LABEL_ID.to_owned()),
            ("label", format!("{LABEL_BACKEND}={}", shared.name)),
        ]);
        let mut stream = docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        if lost {
            tracing::info!(backend = %shared.name, "docker event stream is back");
            shared.reconnected();
            shared.sweep_abandoned().await;
            shared.events.emit(&Event::Resync);
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.changed() => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(message)) => handle(&shared, message).await,
                Some(Err(e)) => {
                    tracing::warn!(
                        backend = %shared.name,
                        error = %e,
                        "docker event stream failed"
                    );
                    break;
                }
                None => break,
            }
        }
        // The stream ends when the engine stops: reconnect from scratch.
        shared.engine.reset();
        lost = true;
        if pause(&mut shutdown, RETRY).await {
            return;
        }
    }
}

/// Sleeps; true when shutting down.
async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
    }
}

async fn handle(shared: &Shared, message: EventMessage) {
    let Some(action) = message.action.as_deref() else {
        return;
    };
    // "health_status: healthy" and the like.
    let action = action.split(':').next().unwrap_or(action).trim();
    if ignored(action) {
        return;
    }
    let Some(actor) = message.actor else { return };
    let Some(id) = actor
        .attributes
        .as_ref()
        .and_then(|a| a.get(LABEL_ID))
        .cloned()
    else {
        return;
    };
    if ends_stats(action) {
        shared.stats.forget(&id);
    }
    // "die" follows a kill that ends the process and comes before "stop", with the
    // state already changed: inspecting again would tell nothing new.
    if matches!(action, "kill" | "stop") {
        return;
    }
    if shared.expected_event(&id, action) {
        return;
    }
    if action == "destroy" {
        shared.forget(&id);
        shared.unpin_if_gone(&id).await;
        tracing::debug!(instance = %id, "container removed");
        shared.events.emit(&Event::Vanished { id });
        return;
    }
    let Some(container) = actor.id else { return };
    match shared.inspect_instance(&container).await {
        Ok(Some(instance)) => {
            tracing::debug!(
                instance = %id,
                action,
                state = instance.state.as_str(),
                "container changed"
            );
            shared.events.emit(&Event::Changed {
                instance: Box::new(instance),
            })
        }
        Ok(None) => {}
        Err(e) if e.status() == Some(404) => {
            shared.forget(&id);
            shared.unpin_if_gone(&id).await;
            shared.events.emit(&Event::Vanished { id });
        }
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, "cannot inspect a changed container");
        }
    }
}
