//! The connection to the engine: the plugin's own tokio runtime, the lazily
//! (re)connected client, every engine call with its timeout and error classification,
//! and the `filters` of list and event calls.
//!
//! The runtime is a static that is never dropped: the host calls the synchronous
//! [`unicompute_plugin_api::Backend`] methods on its blocking threads, and each call
//! runs its async work here and waits for it. The client is made on first use and
//! dropped when the engine looks gone, so a call while the engine is down fails within
//! the connect timeout and the first call after it returns reconnects by itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};
use tokio::runtime::Runtime;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::PluginError;

use crate::error::Error;
use crate::settings::{DockerSettings, Endpoint};

/// bollard's own request timeout: it only bounds the time to the response headers,
/// and every call here has its own, tighter timeout. A stop waits for the container.
const CLIENT_TIMEOUT_SECS: u64 = 24 * 3600;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The plugin's runtime, made on first use and never dropped.
pub fn runtime() -> Result<&'static Runtime, PluginError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("unicompute-docker")
        .enable_all()
        .build()
        .map_err(|e| PluginError::internal(format!("cannot start the docker runtime: {e}")))?;
    // Another thread may have won the race; its runtime is used and ours dropped here,
    // outside any runtime context.
    let _ = RUNTIME.set(rt);
    RUNTIME
        .get()
        .ok_or_else(|| PluginError::internal("the docker runtime is missing"))
}

/// Runs `fut` on the plugin's runtime and waits for it on this (non-async) thread.
///
/// The future is spawned rather than driven with `block_on`, so this works on any
/// thread, even one inside another runtime.
pub fn block_on<T, F>(fut: F) -> Result<T, PluginError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, PluginError>> + Send + 'static,
{
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| PluginError::internal("a docker task ended without an answer"))?
}

/// The engine connection of one backend.
pub struct Engine {
    config: DockerSettings,
    endpoint: Endpoint,
    client: Mutex<Option<Docker>>,
}

impl Engine {
    /// A connection that connects on first use.
    pub fn new(config: DockerSettings, endpoint: Endpoint) -> Self {
        Engine {
            config,
            endpoint,
            client: Mutex::new(None),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DockerSettings {
        &self.config
    }

    /// Whether the engine is on this machine (host paths can be checked locally).
    pub fn is_local(&self) -> bool {
        matches!(self.endpoint, Endpoint::Unix(_))
    }

    fn make_client(&self) -> Result<Docker, Error> {
        let made = match (&self.endpoint, &self.config.tls) {
            (Endpoint::Unix(path), _) => {
                Docker::connect_with_unix(path, CLIENT_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            (Endpoint::Tcp(addr), Some(tls)) => Docker::connect_with_ssl(
                addr,
                &tls.key,
                &tls.cert,
                &tls.ca,
                CLIENT_TIMEOUT_SECS,
                API_DEFAULT_VERSION,
            ),
            (Endpoint::Tcp(addr), None) => {
                Docker::connect_with_http(addr, CLIENT_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
        };
        made.map_err(|e| Error::from_bollard("connect", e))
    }

    /// The client, negotiating the API version on first use (within the connect
    /// timeout).
    pub async fn client(&self) -> Result<Docker, Error> {
        if let Some(c) = lock(&self.client).as_ref() {
            return Ok(c.clone());
        }
        let fresh = self.make_client()?;
        let negotiated =
            tokio::time::timeout(self.config.connect_timeout(), fresh.negotiate_version())
                .await
                .map_err(|_| Error::Unavailable {
                    reason: "the engine did not answer".to_owned(),
                })?
                .map_err(|e| Error::from_bollard("version", e))?;
        tracing::info!(api = %negotiated.client_version(), "connected to the docker engine");
        *lock(&self.client) = Some(negotiated.clone());
        Ok(negotiated)
    }

    /// Forgets the client after the engine looked gone: the next call reconnects.
    pub fn reset(&self) {
        if lock(&self.client).take().is_some() {
            tracing::warn!("lost the docker engine; will reconnect");
        }
    }

    /// Runs one engine call with a timeout, classifying its error. A call that finds
    /// the engine gone resets the connection.
    pub async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        let docker = self.client().await?;
        let result = self
            .watched(operation, timeout, docker.clone(), f(docker))
            .await;
        if let Err(e) = &result {
            if e.is_unavailable() {
                self.reset();
            }
        }
        result
    }

    /// Waits for a call; when it is slow, checks that the engine still answers at all,
    /// so that a hung engine fails the call within the connect timeout rather than the
    /// call's own (a stop may rightly take a minute).
    async fn watched<T, Fut>(
        &self,
        operation: &'static str,
        timeout: Duration,
        docker: Docker,
        fut: Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        // After a quarter of the connect timeout the call counts as slow; the ping gets
        // the rest of it, so that a hung engine fails the call within the connect
        // timeout, while a merely busy one has most of it to answer a ping.
        let connect = self.config.connect_timeout();
        let slow = connect / 4;
        let start = tokio::time::Instant::now();
        // A huge timeout (a stop with a very long grace) waits "forever", never overflows.
        let deadline = start
            .checked_add(timeout)
            .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400));
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => return r.map_err(|e| Error::from_bollard(operation, e)),
            _ = tokio::time::sleep_until((start + slow).min(deadline)) => {}
        }
        let ping_until = (start + connect).min(deadline);
        let alive = tokio::select! {
            r = &mut fut => return r.map_err(|e| Error::from_bollard(operation, e)),
            ping = tokio::time::timeout_at(ping_until, docker.ping()) => matches!(ping, Ok(Ok(_))),
        };
        if !alive {
            return Err(Error::Unavailable {
                reason: "the engine does not answer".to_owned(),
            });
        }
        match tokio::time::timeout_at(deadline, fut).await {
            Ok(r) => r.map_err(|e| Error::from_bollard(operation, e)),
            Err(_) => Err(Error::Timeout { operation }),
        }
    }

    /// [`Engine::call`] with the ordinary request timeout.
    pub async fn quick<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, Error>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        self.call(operation, self.config.request_timeout(), f).await
    }
}

/// The `filters` of a list or events call, from `(key, value)` pairs (a key may repeat).
pub fn filters(pairs: &[(&str, String)]) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        map.entry((*k).to_owned()).or_default().push(v.clone());
    }
    map
}
