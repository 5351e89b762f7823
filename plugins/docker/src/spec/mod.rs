//! The Docker `config` of an instance and what the engine's create request takes
//! from it: [`DockerSpec`] parsed (unknown keys refused) and checked field by field
//! into [`Prepared`], the errors of a refused spec, the restart policy and the limits
//! as the engine takes them. The larger parsers have their own files: `volumes.rs`
//! (bind mounts against the allowlist, resolved on this host for a local engine),
//! `ports.rs` and `healthcheck.rs`. Pinning the resolved sources is `pin.rs`'s.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{PortBinding, RestartPolicy, RestartPolicyNameEnum};
use serde::{Deserialize, Serialize};
use unicompute_plugin_api::{ErrorCode, JsonMap, PluginError};

mod healthcheck;
mod ports;
mod volumes;

pub use healthcheck::{HealthTest, HealthcheckSpec};
pub use ports::{parse_port, parse_ports};
pub use volumes::{inside_resolved, normalize_absolute, parse_volume, BindSpec, Volume};

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
    /// Gives the container a terminal (`docker run -t`): its console is a TTY, and
    /// its output is one stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Keeps the container's standard input open (`docker run -i`), so that its
    /// console takes input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_stdin: bool,
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

    pub(super) fn allowed() -> Vec<PathBuf> {
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
    fn tty_and_open_stdin_are_optional_booleans() {
        let cfg = serde_json::json!({"image": "x"});
        let spec = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap();
        assert!(!spec.tty && !spec.open_stdin);
        let v = serde_json::to_value(&spec).unwrap();
        assert!(
            v.get("tty").is_none() && v.get("openStdin").is_none(),
            "{v}"
        );
        let cfg = serde_json::json!({"image": "x", "tty": true, "openStdin": true});
        let spec = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap();
        assert!(spec.tty && spec.open_stdin);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!((&v["tty"], &v["openStdin"]), (&true.into(), &true.into()));
        for bad in [
            serde_json::json!({"image": "x", "tty": "yes"}),
            serde_json::json!({"image": "x", "openStdin": 1}),
            serde_json::json!({"image": "x", "open_stdin": true}),
        ] {
            assert!(
                DockerSpec::from_config(bad.as_object().unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let cfg = serde_json::json!({"image": "x", "restartPolcy": "no"});
        let e = DockerSpec::from_config(cfg.as_object().unwrap()).unwrap_err();
        assert!(e.to_string().contains("restartPolcy"), "{e}");
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
