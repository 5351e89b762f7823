//! The settings of one Docker backend: the `[backends.NAME]` table of the host's config
//! (unknown keys refused), their defaults, and their validation (the endpoint parsed,
//! paths absolute, timeouts in range).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The engine's default local socket.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// Settings of a Docker backend.
///
/// ```toml
/// [backends.docker]
/// plugin = "docker"
/// endpoint = "unix:///var/run/docker.sock"
/// allowed_host_paths = ["/data", "/srv/shared"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSettings {
    /// Where the engine listens: `unix:///path`, `tcp://host:port` or `http://host:port`.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// TLS client settings for a `tcp://` endpoint; without them `tcp://` is plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Host path prefixes that bind mounts may use. Empty: no bind mounts at all.
    /// Named volumes are always allowed.
    #[serde(default)]
    pub allowed_host_paths: Vec<PathBuf>,
    /// How long to wait for the engine to answer a first request (milliseconds).
    /// Calls fail with `BACKEND_UNAVAILABLE` after this while the engine is down.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Timeout of ordinary engine calls (seconds). Stops add their own grace period;
    /// image pulls get ten times this.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Seconds a stats stream is kept open after the last usage call of an instance.
    #[serde(default = "default_stats_idle_secs")]
    pub stats_idle_secs: u64,
    /// Where bind-mount sources are pinned for a local engine: `<pin_dir>/<instance
    /// id>/<n>`, directories made root-only (0700). A tmpfs is fine: missing pins are
    /// made again at start.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Where the backend keeps what the engine cannot (the time of the last change made
    /// through the API, for `updatedAt`): one JSON file per backend.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

/// Client certificates for a TLS endpoint (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA that signed the engine's certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// The client key.
    pub key: PathBuf,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}
fn default_connect_timeout_ms() -> u64 {
    800
}
fn default_request_timeout_secs() -> u64 {
    60
}
fn default_stats_idle_secs() -> u64 {
    120
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/run/unicompute/docker-pins")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/unicompute/docker")
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            endpoint: default_endpoint(),
            tls: None,
            allowed_host_paths: Vec::new(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_secs: default_request_timeout_secs(),
            stats_idle_secs: default_stats_idle_secs(),
            pin_dir: default_pin_dir(),
            state_dir: default_state_dir(),
        }
    }
}

/// The kind of endpoint, parsed from [`DockerSettings::endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A local Unix socket at this path.
    Unix(String),
    /// A TCP address (`host:port`), with or without TLS.
    Tcp(String),
}

impl DockerSettings {
    /// Checks the settings and parses the endpoint.
    pub fn validate(&self) -> Result<Endpoint, String> {
        let endpoint = if let Some(path) = self.endpoint.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "endpoint {}: a unix socket path must be absolute",
                    self.endpoint
                ));
            }
            Endpoint::Unix(path.to_owned())
        } else if let Some(addr) = self
            .endpoint
            .strip_prefix("tcp://")
            .or_else(|| self.endpoint.strip_prefix("http://"))
            .or_else(|| self.endpoint.strip_prefix("https://"))
        {
            if addr.is_empty() {
                return Err(format!("endpoint {}: no address", self.endpoint));
            }
            Endpoint::Tcp(addr.trim_end_matches('/').to_owned())
        } else {
            return Err(format!(
                "endpoint {}: expected unix://, tcp://, http:// or https://",
                self.endpoint
            ));
        };
        if self.tls.is_some() && matches!(endpoint, Endpoint::Unix(_)) {
            return Err("tls settings need a tcp:// endpoint".to_owned());
        }
        for p in &self.allowed_host_paths {
            if !p.is_absolute() {
                return Err(format!(
                    "allowed_host_paths: {} is not an absolute path",
                    p.display()
                ));
            }
        }
        for (key, p) in [("pin_dir", &self.pin_dir), ("state_dir", &self.state_dir)] {
            if !p.is_absolute() || p.to_string_lossy().chars().any(char::is_control) {
                return Err(format!("{key}: {} is not an absolute path", p.display()));
            }
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_secs == 0 {
            return Err("timeouts must be positive".to_owned());
        }
        // A day at most: anything longer is a typo, and keeps the arithmetic small.
        if self.connect_timeout_ms > 86_400_000 || self.request_timeout_secs > 86_400 {
            return Err("timeouts must be at most a day".to_owned());
        }
        if self.stats_idle_secs == 0 {
            return Err("stats_idle_secs must be positive".to_owned());
        }
        if self.endpoint.starts_with("https://") && self.tls.is_none() {
            return Err(format!(
                "endpoint {}: https needs the [tls] settings (or use tcp:// for plain HTTP)",
                self.endpoint
            ));
        }
        Ok(endpoint)
    }

    /// [`DockerSettings::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`DockerSettings::request_timeout_secs`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<DockerSettings, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn defaults_to_the_local_socket() {
        let c = parse(serde_json::json!({})).unwrap();
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(
            c.validate().unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert!(c.allowed_host_paths.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = parse(serde_json::json!({"endpiont": "x"})).unwrap_err();
        assert!(e.to_string().contains("endpiont"), "{e}");
    }

    #[test]
    fn tcp_with_tls() {
        let c = parse(serde_json::json!({
            "endpoint": "tcp://10.0.0.5:2376",
            "tls": {"ca": "/c/ca.pem", "cert": "/c/cert.pem", "key": "/c/key.pem"}
        }))
        .unwrap();
        assert_eq!(c.validate().unwrap(), Endpoint::Tcp("10.0.0.5:2376".into()));
    }

    #[test]
    fn bad_settings_are_refused() {
        for json in [
            serde_json::json!({"endpoint": "ftp://x"}),
            serde_json::json!({"endpoint": "unix://relative.sock"}),
            serde_json::json!({"allowed_host_paths": ["data"]}),
            serde_json::json!({"tls": {"ca": "/a", "cert": "/b", "key": "/c"}}),
            serde_json::json!({"connect_timeout_ms": 0}),
            serde_json::json!({"pin_dir": "pins"}),
            serde_json::json!({"state_dir": "state"}),
        ] {
            let c = parse(json.clone()).unwrap();
            assert!(c.validate().is_err(), "{json}");
        }
    }
}
