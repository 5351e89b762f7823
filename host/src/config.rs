//! The server's configuration: built-in defaults < the config file < `UNICOMPUTE_*`
//! environment variables (`__` nests: `UNICOMPUTE_SERVER__LISTEN=0.0.0.0:8080`).
//!
//! Every table but a backend's own settings refuses unknown keys, so a mistyped key
//! fails start-up with a message that names it. A backend's settings (everything in
//! `[backends.NAME]` but `plugin` and `enabled`) go to its plugin, which refuses
//! unknown keys in turn.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown, mistyped or missing.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The config file named on the command line does not exist.
    #[error("config file {0} not found")]
    Missing(PathBuf),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Where plugins are found.
    pub plugins: PluginsConfig,
    /// API tokens.
    pub auth: AuthConfig,
    /// Configured backends by name.
    pub backends: BTreeMap<String, BackendConfig>,
    /// `GET /metrics`.
    pub metrics: MetricsConfig,
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether a scrape needs no token (for a Prometheus on the same host, with the
    /// server listening on loopback). Default false: a viewer's token is needed.
    pub public: bool,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Seconds between backend health checks.
    pub health_interval_secs: u64,
    /// Seconds between full inventory resyncs from each backend.
    pub resync_interval_secs: u64,
    /// Seconds to wait for requests in flight at shutdown.
    pub shutdown_grace_secs: u64,
    /// Largest stop timeout a client may ask, in seconds.
    pub max_stop_timeout_secs: u64,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Seconds from the first byte of a request head to its last; a slower client
    /// is disconnected.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay silent between requests before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds the server's writes may wait for a client that does not read (a stalled
    /// event subscriber) before the connection is closed.
    pub write_timeout_secs: u64,
    /// Events kept for subscribers that resume (`Last-Event-ID`).
    pub events_retained: usize,
    /// Events a subscriber may fall behind before it is sent `reset` and closed
    /// (read at start).
    pub events_buffer: usize,
    /// Seconds between heartbeat comments on an idle event stream.
    pub events_heartbeat_secs: u64,
    /// Seconds a finished operation stays readable.
    pub operations_retained_secs: u64,
    /// Longest `?wait=` on an operation, in seconds.
    pub max_operation_wait_secs: u64,
    /// Bytes of stdout, and of stderr, a run-to-completion exec answers; more is cut
    /// (`truncated: true`).
    pub exec_output_limit_bytes: usize,
    /// Longest `timeout` of a run-to-completion exec, in seconds (also its default).
    pub max_exec_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            health_interval_secs: 5,
            resync_interval_secs: 30,
            shutdown_grace_secs: 30,
            max_stop_timeout_secs: 3600,
            max_connections: 512,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            write_timeout_secs: 60,
            events_retained: 10_000,
            events_buffer: 1024,
            events_heartbeat_secs: 15,
            operations_retained_secs: 300,
            max_operation_wait_secs: 300,
            exec_output_limit_bytes: 1 << 20,
            max_exec_timeout_secs: 300,
        }
    }
}

/// `[plugins]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directories scanned for plugin files (`*.so`), in order. Relative paths are
    /// taken from the config file's directory.
    pub dirs: Vec<PathBuf>,
    /// Seconds between looks at the plugin directories: a `*.so` added, replaced or
    /// removed there is loaded (or dropped) once it has stayed the same for one more
    /// look, without a SIGHUP. `0` turns the watch off.
    pub watch_interval_secs: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dirs: vec![PathBuf::from("/usr/lib/unicompute/plugins")],
            watch_interval_secs: 2,
        }
    }
}

/// A token's role.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET only.
    Viewer,
    /// Viewer, plus start, stop, restart, pause, unpause.
    Operator,
    /// Everything.
    Admin,
}

/// One API token, stored as the SHA-256 of the token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs.
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// What the token may do.
    pub role: Role,
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted tokens. When empty, the server makes an admin token at first start.
    pub tokens: Vec<TokenConfig>,
    /// Where the generated admin token is written (mode 0600) and read back at later
    /// starts. Relative paths are taken from the working directory.
    pub token_file: PathBuf,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens: Vec::new(),
            token_file: PathBuf::from(".unicompute/admin.token"),
        }
    }
}

/// `[backends.NAME]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendConfig {
    /// The plugin's name (from its handshake).
    pub plugin: String,
    /// Whether the backend is started.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Everything else: the plugin's own settings.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

fn enabled_default() -> bool {
    true
}

impl Config {
    /// Reads the configuration: defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        // UNICOMPUTE_LOG is the log filter, not a config key.
        Self::load_with_env(
            file,
            Env::prefixed("UNICOMPUTE_").ignore(&["log"]).split("__"),
        )
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env);
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        if let Some(dir) = file.and_then(Path::parent) {
            for d in &mut config.plugins.dirs {
                if d.is_relative() {
                    *d = dir.join(&*d);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        for (key, value) in [
            ("max_connections", s.max_connections as u64),
            ("header_read_timeout_secs", s.header_read_timeout_secs),
            ("idle_timeout_secs", s.idle_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "server.{key}: must be at least 1"
                )));
            }
        }
        for t in &self.auth.tokens {
            let ok = t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "auth.tokens: token {} has a sha256 that is not 64 hex digits",
                    t.name
                )));
            }
        }
        for name in self.backends.keys() {
            if !crate::service::valid_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "backends.{name}: a backend name is 1-63 characters of [a-zA-Z0-9_.-]"
                )));
            }
        }
        Ok(())
    }
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let path = err.path.join(".");
            let source = err
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if path.is_empty() {
                format!("{}{source}", err.kind)
            } else {
                format!("{path}: {}{source}", err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(contents: &str) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new("toml");
        std::fs::File::create(&f.path)
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
        f
    }

    /// A tiny temp file helper, to avoid a dependency for three tests.
    mod tempfile_lite {
        pub struct TempFile {
            pub path: std::path::PathBuf,
        }
        impl TempFile {
            pub fn new(ext: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "unicompute-config-test-{}.{ext}",
                    uuid::Uuid::new_v4()
                ));
                TempFile { path }
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    fn no_env() -> Env {
        Env::prefixed("UNICOMPUTE_TEST_NOTHING_SET_")
    }

    #[test]
    fn defaults() {
        let c = Config::load_with_env(None, no_env()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert!(c.auth.tokens.is_empty());
        assert_eq!(c.plugins.watch_interval_secs, 2);
    }

    #[test]
    fn file_with_backends_and_settings() {
        let f = file(
            r#"
            [server]
            listen = "127.0.0.1:9000"
            [plugins]
            dirs = ["plugins"]
            [backends.docker]
            plugin = "docker"
            endpoint = "unix:///var/run/docker.sock"
            [backends.kvm]
            plugin = "kvm"
            enabled = false
            "#,
        );
        let c = Config::load_with_env(Some(&f.path), no_env()).unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.plugins.dirs[0], f.path.parent().unwrap().join("plugins"));
        let d = &c.backends["docker"];
        assert!(d.enabled);
        assert_eq!(d.settings["endpoint"], "unix:///var/run/docker.sock");
        assert!(!d.settings.contains_key("plugin"));
        assert!(!c.backends["kvm"].enabled);
    }

    #[test]
    fn unknown_key_is_named() {
        let f = file("[server]\nlisen = \"127.0.0.1:1\"\n");
        let e = Config::load_with_env(Some(&f.path), no_env()).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn mistyped_value_is_named() {
        let f = file("[server]\nmax_body_bytes = \"lots\"\n");
        let e = Config::load_with_env(Some(&f.path), no_env()).unwrap_err();
        assert!(e.to_string().contains("max_body_bytes"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn environment_overrides_file_and_takes_lists() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nlisten = \"127.0.0.1:9000\"\n")?;
            jail.set_env("UNICOMPUTE_SERVER__LISTEN", "127.0.0.1:9100");
            jail.set_env(
                "UNICOMPUTE_AUTH__TOKENS",
                format!(
                    "[{{name=\"ci\",sha256=\"{}\",role=\"admin\"}}]",
                    "a".repeat(64)
                ),
            );
            jail.set_env("UNICOMPUTE_BACKENDS__FAKE__PLUGIN", "fake");
            jail.set_env("UNICOMPUTE_BACKENDS__FAKE__CPUS", "4");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen.port(), 9100);
            assert_eq!(c.auth.tokens.len(), 1);
            assert_eq!(c.auth.tokens[0].role, Role::Admin);
            assert_eq!(c.backends["fake"].plugin, "fake");
            assert_eq!(c.backends["fake"].settings["cpus"], 4);
            Ok(())
        });
    }

    #[test]
    fn bad_token_digest_is_refused() {
        let f = file("[[auth.tokens]]\nname = \"x\"\nsha256 = \"abc\"\nrole = \"admin\"\n");
        let e = Config::load_with_env(Some(&f.path), no_env()).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
    }
}
