//! The Docker `config` of an instance: parsing, validation (bind mounts against the
//! allowlist, resolved on this host for a local engine; ports, restart policy) and the
//! mapping onto the engine's create body. Pinning the resolved sources is `pin.rs`'s.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use bollard::models::{
    Mount, MountBindOptions, MountType, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use serde::{Deserialize, Serialize};
use unicompute_plugin_api::{ErrorCode, JsonMap, PluginError};

/// The `config` object of a Docker instance, as the user sends it and as it is
/// returned (defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerSpec {
    /// Image reference (`busybox`, `nginx:alpine`, `registry:5000/app@sha256:...`).
    pub image: String,
    /// Overrides the image's command. Returned as the command in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// `/host:/container[:opts]` bind mounts, `name:/container[:opts]` named volumes, or
    /// `/container` anonymous volumes.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `container[/proto]`, `host:container[/proto]` or `ip:host:container[/proto]`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// `bridge`, `host`, `none`, `container:<name>` or a network's name.
    #[serde(default = "default_network_mode")]
    pub network_mode: String,
    /// `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`.
    #[serde(default = "default_restart_policy")]
    pub restart_policy: String,
    /// A health check, which gives the instance its `status`. Without one, the image's
    /// own (if any) applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthcheckSpec>,
}

/// A container health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthcheckSpec {
    /// A shell command (`"curl -f localhost"`), or `["CMD", ...]`, `["CMD-SHELL", "..."]`
    /// or `["NONE"]` as Docker takes it.
    pub test: HealthTest,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub interval: f64,
    /// Seconds a check may take.
    #[serde(default = "default_interval")]
    pub timeout: f64,
    /// Failures in a row that make the instance unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    #[serde(default)]
    pub start_period: f64,
}

/// The test of a health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HealthTest {
    /// Run by the container's shell.
    Shell(String),
    /// Docker's form.
    Exec(Vec<String>),
}

fn default_interval() -> f64 {
    30.0
}
fn default_retries() -> u32 {
    3
}

impl HealthcheckSpec {
    /// The engine's health config.
    pub fn to_engine(&self) -> Result<bollard::models::HealthConfig, SpecError> {
        let invalid = |message: String| SpecError::Invalid {
            field: "healthcheck",
            message,
        };
        let test = match &self.test {
            HealthTest::Shell(cmd) if !cmd.trim().is_empty() => {
                vec!["CMD-SHELL".to_owned(), cmd.clone()]
            }
            HealthTest::Exec(v)
                if matches!(v.first().map(String::as_str), Some("CMD" | "CMD-SHELL"))
                    && v.len() > 1 =>
            {
                v.clone()
            }
            HealthTest::Exec(v) if v.len() == 1 && v[0] == "NONE" => v.clone(),
            _ => return Err(invalid("test must be a command".to_owned())),
        };
        let ns = |secs: f64, what: &str| {
            if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
                Ok((secs * 1e9) as i64)
            } else {
                Err(invalid(format!(
                    "{what} must be between 0 and 86400 seconds"
                )))
            }
        };
        let interval = ns(self.interval, "interval")?;
        let timeout = ns(self.timeout, "timeout")?;
        if interval < 1_000_000 || timeout < 1_000_000 {
            return Err(invalid(
                "interval and timeout must be at least 1 ms".to_owned(),
            ));
        }
        Ok(bollard::models::HealthConfig {
            test: Some(test),
            interval: Some(interval),
            timeout: Some(timeout),
            retries: Some(i64::from(self.retries)),
            start_period: Some(ns(self.start_period, "startPeriod")?),
            ..Default::default()
        })
    }
}

fn default_network_mode() -> String {
    "bridge".to_owned()
}
fn default_restart_policy() -> String {
    "no".to_owned()
}

/// Why a spec is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// The config object does not parse.
    #[error("invalid docker config: {0}")]
    Malformed(String),
    /// A field has a bad value.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The offending entry and why.
        message: String,
    },
    /// A bind mount outside the allowlist.
    #[error("bind mount of {host_path} is not allowed")]
    ForbiddenPath {
        /// The volume entry.
        volume: String,
        /// The normalized host path.
        host_path: String,
        /// The allowed prefixes.
        allowed: Vec<String>,
    },
}

impl From<SpecError> for PluginError {
    fn from(e: SpecError) -> Self {
        match &e {
            SpecError::Malformed(_) => PluginError::invalid(e.to_string()),
            SpecError::Invalid { field, .. } => {
                PluginError::invalid(e.to_string()).with_detail("field", *field)
            }
            SpecError::ForbiddenPath {
                volume,
                host_path,
                allowed,
            } => PluginError::new(ErrorCode::Forbidden, e.to_string())
                .with_detail("volume", volume.as_str())
                .with_detail("hostPath", host_path.as_str())
                .with_detail("allowedHostPaths", allowed.clone()),
        }
    }
}

/// A volume entry, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Volume {
    /// A host path.
    Bind(BindSpec),
    /// A named volume: the `Binds` entry to pass.
    Named(String),
    /// An anonymous volume at this container path.
    Anonymous(String),
}

/// A bind mount: the host path (resolved for a local engine), the container path and
/// the options as given.
#[derive(Debug, Clone, PartialEq)]
pub struct BindSpec {
    /// The host path: lexically normalized, and resolved (symlinks followed, it
    /// exists) for a local engine.
    pub source: PathBuf,
    /// The container path.
    pub target: String,
    /// The options (`ro`, `rshared`, ...), as given.
    pub options: Vec<String>,
}

impl BindSpec {
    /// The `Binds` form, `source:target[:options]` (also what `config.volumes` shows).
    pub fn entry(&self) -> String {
        let mut e = format!("{}:{}", self.source.display(), self.target);
        if !self.options.is_empty() {
            e.push(':');
            e.push_str(&self.options.join(","));
        }
        e
    }

    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// The engine's mount of this bind from its pin (a local engine's way, see
    /// `pin.rs`): options as asked.
    pub fn pinned_mount(&self, pin: &Path) -> Mount {
        Mount {
            target: Some(self.target.clone()),
            source: Some(pin.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(self.read_only()),
            bind_options: self.propagation().and_then(|o| o.parse().ok()).map(|p| {
                MountBindOptions {
                    propagation: Some(p),
                    ..Default::default()
                }
            }),
            ..Default::default()
        }
    }

    /// The propagation option, if any.
    pub fn propagation(&self) -> Option<&str> {
        self.options
            .iter()
            .map(String::as_str)
            .find(|o| o.ends_with("private") || o.ends_with("shared") || o.ends_with("slave"))
    }
}

/// What the engine needs to create the container, derived from a [`DockerSpec`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prepared {
    /// `Binds` entries of named volumes.
    pub binds: Vec<String>,
    /// Bind mounts of host paths: `Binds` entries for a remote engine, pinned mounts
    /// for a local one.
    pub bind_mounts: Vec<BindSpec>,
    /// Anonymous volumes (container paths).
    pub anonymous: Vec<String>,
    /// Exposed ports (`80/tcp`).
    pub exposed: Vec<String>,
    /// Port bindings.
    pub bindings: HashMap<String, Option<Vec<PortBinding>>>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Health check.
    pub healthcheck: Option<bollard::models::HealthConfig>,
}

impl DockerSpec {
    /// Parses the `config` object of a create request.
    pub fn from_config(config: &JsonMap) -> Result<Self, SpecError> {
        let spec: DockerSpec = serde_json::from_value(serde_json::Value::Object(config.clone()))
            .map_err(|e| SpecError::Malformed(e.to_string()))?;
        Ok(spec)
    }

    /// Validates every field and computes what the engine needs. Volumes come back
    /// normalized in `self`.
    pub fn prepare(
        &mut self,
        allowed: &[PathBuf],
        canonicalize: bool,
    ) -> Result<Prepared, SpecError> {
        let mut p = Prepared::default();
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(SpecError::Invalid {
                field: "image",
                message: format!("{:?} is not an image reference", self.image),
            });
        }
        if let Some(cmd) = &self.command {
            if cmd.is_empty() {
                return Err(SpecError::Invalid {
                    field: "command",
                    message: "an empty command; leave it out to use the image's".to_owned(),
                });
            }
        }
        for e in &self.env {
            // `KEY` alone would unset KEY for the engine, not set it: refused.
            let key = e.split_once('=').map(|(k, _)| k).unwrap_or_default();
            if key.is_empty() || e.contains('\0') {
                return Err(SpecError::Invalid {
                    field: "env",
                    message: format!("{e:?} is not KEY=value"),
                });
            }
        }
        let mut normalized = Vec::with_capacity(self.volumes.len());
        for v in &self.volumes {
            match parse_volume(v, allowed, canonicalize)? {
                Volume::Bind(b) => {
                    normalized.push(b.entry());
                    p.bind_mounts.push(b);
                }
                Volume::Named(b) => {
                    normalized.push(b.clone());
                    p.binds.push(b);
                }
                Volume::Anonymous(a) => {
                    normalized.push(a.clone());
                    p.anonymous.push(a);
                }
            }
        }
        self.volumes = normalized;
        for (key, binding) in self
            .ports
            .iter()
            .map(|port| parse_ports(port))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
        {
            if !p.exposed.contains(&key) {
                p.exposed.push(key.clone());
            }
            if let Some(b) = binding {
                p.bindings
                    .entry(key)
                    .or_insert_with(|| Some(Vec::new()))
                    .get_or_insert_with(Vec::new)
                    .push(b);
            }
        }
        if self.network_mode.trim().is_empty() {
            return Err(SpecError::Invalid {
                field: "networkMode",
                message: "an empty network mode".to_owned(),
            });
        }
        p.restart = parse_restart_policy(&self.restart_policy)?;
        p.healthcheck = self
            .healthcheck
            .as_ref()
            .map(HealthcheckSpec::to_engine)
            .transpose()?;
        Ok(p)
    }
}

/// `cpu.cores` and `memory.limit` as the engine takes them: `NanoCpus`, and bytes as a
/// signed count (also `MemorySwap`: no swap beyond the limit).
pub fn engine_limits(cores: Option<u32>, memory: Option<u64>) -> (Option<i64>, Option<i64>) {
    (
        cores.map(|c| i64::from(c) * 1_000_000_000),
        memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
    )
}

/// Lexically normalizes an absolute path: drops `.` and repeated slashes, refuses `..`.
pub fn normalize_absolute(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn is_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

const VOLUME_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "consistent",
    "cached",
    "delegated",
];

/// Parses one `volumes` entry; bind mounts are checked against `allowed`. With
/// `resolve` (a local engine), a host path must exist: it is resolved (symlinks
/// followed) and the result must lie inside the resolved allowlist.
pub fn parse_volume(entry: &str, allowed: &[PathBuf], resolve: bool) -> Result<Volume, SpecError> {
    let invalid = |message: String| SpecError::Invalid {
        field: "volumes",
        message,
    };
    // NUL, newlines and the like have no business in a path, and would confuse the
    // engine's parsing and anyone reading its logs.
    if entry.chars().any(char::is_control) {
        return Err(invalid(format!("{entry:?}: control characters in a path")));
    }
    let parts: Vec<&str> = entry.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, o] => (Some(*s), *t, Some(*o)),
        _ => return Err(invalid(format!("{entry:?} is not source:target[:options]"))),
    };
    let target = normalize_absolute(target).ok_or_else(|| {
        invalid(format!(
            "{entry:?}: the container path must be absolute, without '..'"
        ))
    })?;
    let target = target.to_string_lossy().into_owned();
    if let Some(o) = options {
        if o.is_empty() || o.split(',').any(|opt| !VOLUME_OPTIONS.contains(&opt)) {
            return Err(invalid(format!("{entry:?}: unknown option in {o:?}")));
        }
    }
    let options: Vec<String> = options
        .map(|o| o.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    match source {
        None => {
            if !options.is_empty() {
                return Err(invalid(format!("{entry:?}: options need a source")));
            }
            Ok(Volume::Anonymous(target))
        }
        Some(s) if s.starts_with('/') => {
            let allowed_list = || {
                allowed
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            };
            let host = normalize_absolute(s).ok_or_else(|| SpecError::ForbiddenPath {
                volume: entry.to_owned(),
                host_path: s.to_owned(),
                allowed: allowed_list(),
            })?;
            let permitted = |p: &Path| {
                allowed.iter().any(|a| {
                    normalize_absolute(&a.to_string_lossy()).is_some_and(|a| p.starts_with(a))
                })
            };
            let forbidden = || SpecError::ForbiddenPath {
                volume: entry.to_owned(),
                host_path: host.to_string_lossy().into_owned(),
                allowed: allowed_list(),
            };
            if !permitted(&host) {
                return Err(forbidden());
            }
            let mut source = host.clone();
            // A symlink under an allowed prefix must not lead outside it: the path must
            // exist (as for `docker run --mount`), and its resolved form, which is what
            // gets mounted (pinned), must lie inside the resolved allowlist.
            if resolve {
                source = match std::fs::canonicalize(&host) {
                    Ok(real) => real,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(invalid(format!(
                            "{entry:?}: the host path {} does not exist",
                            host.display()
                        )))
                    }
                    Err(e) => {
                        return Err(invalid(format!(
                            "{entry:?}: the host path {} cannot be resolved: {e}",
                            host.display()
                        )))
                    }
                };
                if !inside_resolved(&source, allowed) {
                    return Err(forbidden());
                }
                if options.iter().any(|o| o == "z" || o == "Z") {
                    return Err(invalid(format!(
                        "{entry:?}: relabeling (z, Z) is not done for bind mounts"
                    )));
                }
            }
            Ok(Volume::Bind(BindSpec {
                source,
                target,
                options,
            }))
        }
        Some(s) if is_volume_name(s) => {
            let suffix = if options.is_empty() {
                String::new()
            } else {
                format!(":{}", options.join(","))
            };
            Ok(Volume::Named(format!("{s}:{target}{suffix}")))
        }
        Some(s) => Err(invalid(format!(
            "{entry:?}: {s:?} is neither an absolute host path nor a volume name"
        ))),
    }
}

/// Whether a resolved path lies inside one of the allowed prefixes, themselves
/// resolved (an allowed prefix that does not exist allows nothing).
pub fn inside_resolved(real: &Path, allowed: &[PathBuf]) -> bool {
    allowed
        .iter()
        .any(|a| std::fs::canonicalize(a).is_ok_and(|ra| real.starts_with(ra)))
}

fn parse_port_number(s: &str, entry: &str) -> Result<u16, SpecError> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(SpecError::Invalid {
            field: "ports",
            message: format!("{entry:?}: {s:?} is not a port number"),
        }),
    }
}

/// The most ports one `ports` entry may name with a range.
const MAX_RANGE: u32 = 1024;

/// Parses a port or a range (`8000-8010`) into its first port and length.
fn parse_port_range(s: &str, entry: &str) -> Result<(u16, u16), SpecError> {
    let Some((a, b)) = s.split_once('-') else {
        return Ok((parse_port_number(s, entry)?, 1));
    };
    let (a, b) = (parse_port_number(a, entry)?, parse_port_number(b, entry)?);
    if b < a || u32::from(b - a) >= MAX_RANGE {
        return Err(SpecError::Invalid {
            field: "ports",
            message: format!("{entry:?}: a range goes up, over at most {MAX_RANGE} ports"),
        });
    }
    Ok((a, b - a + 1))
}

/// Parses one `ports` entry, `[ip:][host:]container[/proto]`, ranges included
/// (`8000-8002:80-82` is three ports, as `docker run -p` takes it), into exposed keys
/// (`80/tcp`) with their bindings. As `docker run -p`, a port with no host port is
/// published on a free host port the engine picks (the instance's inspect shows which),
/// and one container port on a host range gets one port of that range.
pub fn parse_ports(entry: &str) -> Result<Vec<(String, Option<PortBinding>)>, SpecError> {
    let invalid = |message: String| SpecError::Invalid {
        field: "ports",
        message,
    };
    let (rest, proto) = match entry.rsplit_once('/') {
        Some((r, p)) => (r, p),
        None => (entry, "tcp"),
    };
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(invalid(format!(
            "{entry:?}: protocol must be tcp, udp or sctp"
        )));
    }
    // An IPv6 host address is written in brackets: [::1]:8080:80.
    let (ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r
            .split_once("]:")
            .ok_or_else(|| invalid(format!("{entry:?}: unclosed IPv6 address")))?;
        (Some(ip.to_owned()), r)
    } else {
        (None, rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [i, h, c]) => (Some((*i).to_owned()), Some(*h), *c),
        (Some(i), [h, c]) => (Some(i), Some(*h), *c),
        _ => {
            return Err(invalid(format!(
                "{entry:?} is not [ip:]host:container[/proto]"
            )))
        }
    };
    let (c_first, c_len) = parse_port_range(container, entry)?;
    if let Some(ip) = &ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!("{entry:?}: {ip:?} is not an IP address")));
        }
    }
    let host = match host {
        Some("") | None => None,
        Some(h) => Some(parse_port_range(h, entry)?),
    };
    if let Some((_, h_len)) = host {
        if h_len != c_len && c_len != 1 {
            return Err(invalid(format!(
                "{entry:?}: the host and container ranges differ in length"
            )));
        }
    }
    Ok((0..c_len)
        .map(|i| {
            let host_port = match host {
                None => String::new(),
                Some((h, h_len)) if c_len == 1 && h_len > 1 => format!("{h}-{}", h + h_len - 1),
                Some((h, _)) => (h + i).to_string(),
            };
            let binding = PortBinding {
                host_ip: ip.clone(),
                host_port: Some(host_port),
            };
            (format!("{}/{proto}", c_first + i), Some(binding))
        })
        .collect())
}

/// Parses a `ports` entry that names one port (see [`parse_ports`]).
pub fn parse_port(entry: &str) -> Result<(String, Option<PortBinding>), SpecError> {
    match parse_ports(entry)?.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(SpecError::Invalid {
            field: "ports",
            message: format!("{entry:?} names more than one port"),
        }),
    }
}

/// Parses a restart policy.
pub fn parse_restart_policy(s: &str) -> Result<RestartPolicy, SpecError> {
    let (name, retries) = match s.split_once(':') {
        Some(("on-failure", n)) => match n.parse::<i64>() {
            Ok(n) if n >= 0 => (RestartPolicyNameEnum::ON_FAILURE, Some(n)),
            _ => {
                return Err(SpecError::Invalid {
                    field: "restartPolicy",
                    message: format!("{s:?}: the retry count must be a number"),
                })
            }
        },
        None if s == "no" || s.is_empty() => (RestartPolicyNameEnum::NO, None),
        None if s == "always" => (RestartPolicyNameEnum::ALWAYS, None),
        None if s == "unless-stopped" => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
        None if s == "on-failure" => (RestartPolicyNameEnum::ON_FAILURE, None),
        _ => {
            return Err(SpecError::Invalid {
                field: "restartPolicy",
                message: format!(
                    "{s:?}: expected no, always, unless-stopped, on-failure or on-failure:N"
                ),
            })
        }
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count: retries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<PathBuf> {
        vec![PathBuf::from("/data"), PathBuf::from("/srv/shared/")]
    }

    #[test]
    fn spec_defaults_are_filled_in() {
        let cfg = serde_json::json!({"image": "nginx:alpine", "ports": ["8080:80"]});
        let spec = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap();
        assert_eq!(spec.network_mode, "bridge");
        assert_eq!(spec.restart_policy, "no");
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["networkMode"], "bridge");
        assert_eq!(v["restartPolicy"], "no");
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let cfg = serde_json::json!({"image": "x", "restartPolcy": "no"});
        let e = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap_err();
        assert!(e.to_string().contains("restartPolcy"), "{e}");
    }

    fn bind(entry: &str, a: &[PathBuf], resolve: bool) -> String {
        match parse_volume(entry, a, resolve).unwrap() {
            Volume::Bind(b) => b.entry(),
            other => panic!("{entry}: {other:?}"),
        }
    }

    #[test]
    fn bind_mounts_follow_the_allowlist() {
        let a = allowed();
        assert_eq!(bind("/data:/data", &a, false), "/data:/data");
        assert_eq!(bind("/data//x/./y:/mnt:ro", &a, false), "/data/x/y:/mnt:ro");
        assert_eq!(bind("/srv/shared/a:/a", &a, false), "/srv/shared/a:/a");
        for bad in ["/etc:/etc", "/data/../etc:/x", "/database:/x", "/:/host"] {
            let e = parse_volume(bad, &a, false).unwrap_err();
            assert!(matches!(e, SpecError::ForbiddenPath { .. }), "{bad}: {e:?}");
            assert_eq!(PluginError::from(e).code, ErrorCode::Forbidden);
        }
        assert!(matches!(
            parse_volume("/data:/data", &[], false),
            Err(SpecError::ForbiddenPath { .. })
        ));
    }

    #[test]
    fn control_characters_are_refused_in_volumes() {
        for bad in [
            "/data/a\nb:/m",
            "/data/a\0b:/m",
            "/data/\u{1b}:/m",
            "/data:/m\t",
        ] {
            let e = parse_volume(bad, &allowed(), false).unwrap_err();
            assert!(matches!(e, SpecError::Invalid { .. }), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn a_symlink_cannot_lead_a_bind_mount_out_and_a_missing_path_is_refused() {
        let root = std::env::temp_dir().join(format!("uc-spec-{}", uuid::Uuid::new_v4().simple()));
        let (inside, outside) = (root.join("allowed"), root.join("outside"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("link")).unwrap();
        let a = vec![inside.clone()];
        let v = format!("{}:/m", inside.join("link").display());
        let e = parse_volume(&v, &a, true).unwrap_err();
        assert!(matches!(e, SpecError::ForbiddenPath { .. }), "{v}: {e:?}");
        // A missing path is refused (the engine would make it, following links),
        // naming it.
        for target in ["link/missing/deeper", "new/dir"] {
            let path = inside.join(target);
            let v = format!("{}:/m", path.display());
            let e = parse_volume(&v, &a, true).unwrap_err();
            assert!(matches!(e, SpecError::Invalid { .. }), "{v}: {e:?}");
            assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        }
        // An existing path is mounted as resolved.
        std::fs::create_dir_all(inside.join("real")).unwrap();
        std::os::unix::fs::symlink(inside.join("real"), inside.join("inner")).unwrap();
        let v = format!("{}:/m:ro", inside.join("inner").display());
        let real = std::fs::canonicalize(&inside).unwrap().join("real");
        assert_eq!(bind(&v, &a, true), format!("{}:/m:ro", real.display()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn named_and_anonymous_volumes_are_always_allowed() {
        assert_eq!(
            parse_volume("cache:/var/cache:ro", &[], false).unwrap(),
            Volume::Named("cache:/var/cache:ro".into())
        );
        assert_eq!(
            parse_volume("/scratch", &[], false).unwrap(),
            Volume::Anonymous("/scratch".into())
        );
        for bad in [
            "cache:relative",
            "cache:/x:bogus",
            "../x:/y",
            "a:b:c:d",
            "/x/../y",
        ] {
            assert!(parse_volume(bad, &[], false).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_parse_every_form() {
        let (k, b) = parse_port("8080:80").unwrap();
        assert_eq!(k, "80/tcp");
        assert_eq!(b.unwrap().host_port.as_deref(), Some("8080"));
        let (k, b) = parse_port("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(k, "53/udp");
        let b = b.unwrap();
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b.host_port.as_deref(), Some("5353"));
        let (k, b) = parse_port("9000").unwrap();
        assert_eq!(k, "9000/tcp");
        assert_eq!(
            b.unwrap().host_port.as_deref(),
            Some(""),
            "a free host port"
        );
        let (_, b) = parse_port("[::1]:8443:443").unwrap();
        assert_eq!(b.unwrap().host_ip.as_deref(), Some("::1"));
        let (_, b) = parse_port("127.0.0.1::80").unwrap();
        assert_eq!(b.unwrap().host_port.as_deref(), Some(""));
        // Ranges, as `docker run -p` takes them.
        let r = parse_ports("8000-8002:80-82/udp").unwrap();
        let got: Vec<(String, String)> = r
            .iter()
            .map(|(k, b)| (k.clone(), b.clone().unwrap().host_port.unwrap()))
            .collect();
        assert_eq!(
            got,
            [("80/udp", "8000"), ("81/udp", "8001"), ("82/udp", "8002")]
                .map(|(k, h)| (k.to_owned(), h.to_owned()))
        );
        let r = parse_ports("127.0.0.1:9000-9001:90-91").unwrap();
        let b = r[1].1.clone().unwrap();
        assert_eq!(
            (
                r[1].0.as_str(),
                b.host_ip.as_deref(),
                b.host_port.as_deref()
            ),
            ("91/tcp", Some("127.0.0.1"), Some("9001"))
        );
        let r = parse_ports("7000-7001").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1.clone().unwrap().host_port.as_deref(), Some(""));
        let r = parse_ports("8000-8010:80").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].1.clone().unwrap().host_port.as_deref(),
            Some("8000-8010")
        );
        for bad in ["8000-8002:80-81", "90-80", "1-2000", "a-b:80"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
        for bad in [
            "http",
            "80:0",
            "1:2:3:4",
            "x:80",
            "80/icmp",
            "999.1.1.1:1:1",
            "70000:80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn healthchecks() {
        let cfg =
            serde_json::json!({"image": "x", "healthcheck": {"test": "true", "interval": 0.5}});
        let mut spec = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap();
        let p = spec.prepare(&[], false).unwrap();
        let h = p.healthcheck.unwrap();
        assert_eq!(h.test.unwrap(), vec!["CMD-SHELL", "true"]);
        assert_eq!(h.interval, Some(500_000_000));
        assert_eq!(h.timeout, Some(30_000_000_000));
        assert_eq!(h.retries, Some(3));
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["healthcheck"]["retries"], 3);
        for bad in [
            serde_json::json!({"test": ""}),
            serde_json::json!({"test": ["ls"]}),
            serde_json::json!({"test": "true", "interval": -1}),
            serde_json::json!({"test": "true", "interval": 0}),
        ] {
            let cfg = serde_json::json!({"image": "x", "healthcheck": bad});
            let mut spec = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap();
            assert!(spec.prepare(&[], false).is_err(), "{cfg}");
        }
    }

    #[test]
    fn restart_policies() {
        let p = parse_restart_policy("on-failure:3").unwrap();
        assert_eq!(p.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(p.maximum_retry_count, Some(3));
        for (s, n) in [
            ("no", RestartPolicyNameEnum::NO),
            ("always", RestartPolicyNameEnum::ALWAYS),
            ("unless-stopped", RestartPolicyNameEnum::UNLESS_STOPPED),
            ("on-failure", RestartPolicyNameEnum::ON_FAILURE),
        ] {
            assert_eq!(parse_restart_policy(s).unwrap().name, Some(n));
        }
        for bad in ["sometimes", "on-failure:x", "always:2", "on-failure:-1"] {
            assert!(parse_restart_policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prepare_collects_everything() {
        let cfg = serde_json::json!({
            "image": "busybox",
            "env": ["A=1"],
            "volumes": ["/data/./x:/x", "named:/n", "/anon"],
            "ports": ["8080:80", "127.0.0.1:8081:80", "53/udp"],
            "restartPolicy": "on-failure:2"
        });
        let mut spec = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap();
        let p = spec.prepare(&allowed(), false).unwrap();
        assert_eq!(spec.volumes, vec!["/data/x:/x", "named:/n", "/anon"]);
        assert_eq!(p.binds, vec!["named:/n"]);
        assert_eq!(p.bind_mounts[0].entry(), "/data/x:/x");
        assert_eq!(p.anonymous, vec!["/anon"]);
        assert_eq!(p.exposed, vec!["80/tcp", "53/udp"]);
        assert_eq!(p.bindings["80/tcp"].as_ref().unwrap().len(), 2);
        assert_eq!(p.restart.maximum_retry_count, Some(2));
        let bad_env = serde_json::json!({"image": "busybox", "env": ["=x"]});
        let mut spec = DockerSpec::from_config(bad_env.as_object().unwrap()).unwrap();
        assert!(spec.prepare(&[], false).is_err());
    }
}
