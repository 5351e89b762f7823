//! Plugin logging: `tracing` events inside a plugin go to the host's log.
//!
//! A `cdylib` has its own copy of `tracing`'s globals, so the host's subscriber never
//! sees a plugin's events. At load the host hands the plugin a logger; this module
//! installs a subscriber in the plugin that forwards every event to it. The host tags
//! each line with the plugin's name. Plugin authors just use `tracing::info!` and co.

use std::fmt::Write as _;
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::ffi::HostLoggerBox;

static LOGGER: OnceLock<HostLoggerBox> = OnceLock::new();

/// Level numbers on the wire: 1 error .. 5 trace.
pub fn level_to_u8(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

struct HostLayer;

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        }
    }
}

impl<S: Subscriber> Layer<S> for HostLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(logger) = LOGGER.get() else { return };
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields.message.push_str(&fields.rest);
        let meta = event.metadata();
        logger.log(
            level_to_u8(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(&fields.message),
        );
    }
}

/// Installs the host's logger as this plugin's `tracing` subscriber, and a panic hook
/// that logs panics through it. Called by the host at load, once per library.
pub(crate) fn install(plugin: &'static str, logger: HostLoggerBox) {
    if LOGGER.set(logger).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::registry().with(HostLayer);
    let _ = tracing::subscriber::set_global_default(subscriber);
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(plugin, "panic: {info}");
    }));
}
