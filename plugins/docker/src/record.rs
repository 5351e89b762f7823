//! What is stored in the engine, both ways: the labels a container gets at create
//! (the instance's id, uuid, backend, creation time, applied config, user labels,
//! storage size), and an inspected container read back into an [`Instance`] (the
//! state table, health, limits, timestamps).

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use chrono::{DateTime, SecondsFormat, Utc};
use unicompute_plugin_api::{
    CpuResources, CreateRequest, Health, Instance, InstanceState, InstanceType, JsonMap,
    MemoryResources, Metadata, PluginError, Resources, StorageResources,
};

use crate::spec::DockerSpec;

/// Label prefix reserved for the plugin; user labels may not use it.
pub const LABEL_PREFIX: &str = "io.unicompute.";
/// The host's instance id. Only containers with it are instances.
pub const LABEL_ID: &str = "io.unicompute.id";
/// The instance's RFC 4122 UUID.
pub const LABEL_UUID: &str = "io.unicompute.uuid";
/// The name of the backend that made it.
pub const LABEL_BACKEND: &str = "io.unicompute.backend";
/// Creation time, RFC 3339.
pub const LABEL_CREATED_AT: &str = "io.unicompute.created-at";
/// The applied config, JSON.
pub const LABEL_CONFIG: &str = "io.unicompute.config";
/// The user's labels, JSON (they are also set as plain Docker labels).
pub const LABEL_LABELS: &str = "io.unicompute.labels";
/// The requested storage size in bytes.
pub const LABEL_STORAGE: &str = "io.unicompute.storage";
/// The pinned bind mounts (resolved source, device, inode, pin path), JSON; a local
/// engine's only (see `pin.rs`).
pub const LABEL_BINDS: &str = "io.unicompute.binds";
/// The instance's name, when the container's name cannot be it (see
/// [`container_name`]).
pub const LABEL_NAME: &str = "io.unicompute.name";

/// The container's name for an instance name. Docker wants at least two characters;
/// a one-character instance name `a` becomes the container `a.unicompute` (its name
/// kept in [`LABEL_NAME`]).
pub fn container_name(name: &str) -> String {
    if name.chars().count() < 2 {
        format!("{name}.unicompute")
    } else {
        name.to_owned()
    }
}

/// Refuses user labels that use the plugin's prefix.
pub fn check_user_labels(labels: &BTreeMap<String, String>) -> Result<(), PluginError> {
    match labels.keys().find(|k| k.starts_with(LABEL_PREFIX)) {
        Some(k) => Err(PluginError::invalid(format!(
            "label {k}: the prefix {LABEL_PREFIX} is reserved"
        ))
        .with_detail("label", k.as_str())),
        None => Ok(()),
    }
}

/// The labels of a new instance's container: the user's, and the plugin's own that
/// keep the instance (all but [`LABEL_BINDS`], added once the binds are pinned).
pub fn create_labels(
    req: &CreateRequest,
    backend: &str,
    applied: &DockerSpec,
) -> Result<HashMap<String, String>, PluginError> {
    let applied = serde_json::to_string(applied)
        .map_err(|e| PluginError::internal(format!("cannot store the config: {e}")))?;
    let user_labels = serde_json::to_string(&req.labels)
        .map_err(|e| PluginError::internal(format!("cannot store the labels: {e}")))?;
    let mut labels: HashMap<String, String> = req.labels.clone().into_iter().collect();
    labels.insert(LABEL_ID.into(), req.id.clone());
    labels.insert(LABEL_UUID.into(), uuid::Uuid::new_v4().to_string());
    labels.insert(LABEL_BACKEND.into(), backend.to_owned());
    labels.insert(
        LABEL_CREATED_AT.into(),
        req.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    );
    labels.insert(LABEL_CONFIG.into(), applied);
    labels.insert(LABEL_LABELS.into(), user_labels);
    if let Some(s) = req.resources.total_space() {
        labels.insert(LABEL_STORAGE.into(), s.to_string());
    }
    if container_name(&req.name) != req.name {
        labels.insert(LABEL_NAME.into(), req.name.clone());
    }
    Ok(labels)
}

/// The labels of an inspected container.
pub fn labels_of(c: &ContainerInspectResponse) -> Option<&HashMap<String, String>> {
    c.config.as_ref()?.labels.as_ref()
}

/// The limits in force on a container.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Cores (fractional, see [`cores_of`]), `None` without a limit.
    pub cores: Option<f64>,
    /// Memory in bytes, `None` without a limit.
    pub memory: Option<u64>,
    /// The storage size asked at create ([`LABEL_STORAGE`]).
    pub storage: Option<u64>,
}

/// The limits in force on an inspected container.
pub fn limits_of(c: &ContainerInspectResponse) -> Limits {
    let host = c.host_config.as_ref();
    Limits {
        cores: cores_of(
            host.and_then(|h| h.nano_cpus),
            host.and_then(|h| h.cpu_quota),
            host.and_then(|h| h.cpu_period),
        ),
        memory: host
            .and_then(|h| h.memory)
            .filter(|m| *m > 0)
            .map(|m| m as u64),
        storage: labels_of(c)
            .and_then(|l| l.get(LABEL_STORAGE))
            .and_then(|s| s.parse().ok()),
    }
}

/// Docker's zero time, used for "never".
const ZERO_TIME_PREFIX: &str = "0001-01-01";

/// Maps a Docker container state onto the API's states.
///
/// | Docker | API |
/// |---|---|
/// | `created` | `created`; `error` when a start failed (the runtime left an error) |
/// | `running` | `running` (`restarting` while a restart policy restarts it) |
/// | `paused` | `paused` |
/// | `restarting` | `restarting` |
/// | `exited` | `stopped`; `error` when killed for lack of memory or the runtime failed to start it |
/// | `removing` | `stopped` |
/// | `dead` | `error` |
/// | anything else | `unknown` |
pub fn map_state(
    status: Option<ContainerStateStatusEnum>,
    restarting: bool,
    oom_killed: bool,
    error: &str,
) -> InstanceState {
    use ContainerStateStatusEnum as S;
    match status {
        Some(S::CREATED) if !error.is_empty() => InstanceState::Error,
        Some(S::CREATED) => InstanceState::Created,
        Some(S::RUNNING) if restarting => InstanceState::Restarting,
        Some(S::RUNNING) => InstanceState::Running,
        Some(S::PAUSED) => InstanceState::Paused,
        Some(S::RESTARTING) => InstanceState::Restarting,
        Some(S::EXITED) if oom_killed || !error.is_empty() => InstanceState::Error,
        Some(S::EXITED) | Some(S::REMOVING) => InstanceState::Stopped,
        Some(S::DEAD) => InstanceState::Error,
        _ => InstanceState::Unknown,
    }
}

/// Maps Docker health onto the API's.
pub fn map_health(status: Option<HealthStatusEnum>) -> Health {
    match status {
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        _ => Health::None,
    }
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let s = s?;
    if s.is_empty() || s.starts_with(ZERO_TIME_PREFIX) {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Cores in force from the host config: NanoCpus, or a CFS quota, rounded up.
pub fn cores_of(nano_cpus: Option<i64>, quota: Option<i64>, period: Option<i64>) -> Option<f64> {
    match (nano_cpus, quota, period) {
        (Some(n), _, _) if n > 0 => Some(n as f64 / 1e9),
        (_, Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
        _ => None,
    }
}

/// Whether a container is one of ours (any backend), from its labels.
pub fn instance_id(labels: Option<&HashMap<String, String>>) -> Option<&str> {
    labels?.get(LABEL_ID).map(String::as_str)
}

/// Reads an instance from an inspected container. `None` if it is not an instance.
/// `touched` is the last change made through the API that Docker does not record
/// (an update, a pause).
pub fn from_inspect(
    c: &ContainerInspectResponse,
    touched: Option<DateTime<Utc>>,
) -> Option<Instance> {
    let config = c.config.as_ref()?;
    let labels = config.labels.as_ref()?;
    let id = labels.get(LABEL_ID)?.clone();
    let state = c.state.as_ref();
    let host = c.host_config.as_ref();

    let created_at = parse_time(labels.get(LABEL_CREATED_AT).map(String::as_str))
        .or_else(|| parse_time(c.created.as_deref()))
        .unwrap_or_else(Utc::now);
    let mut updated_at = created_at;
    for t in [
        parse_time(state.and_then(|s| s.started_at.as_deref())),
        parse_time(state.and_then(|s| s.finished_at.as_deref())),
        touched,
    ]
    .into_iter()
    .flatten()
    {
        updated_at = updated_at.max(t);
    }

    let mut applied: JsonMap = labels
        .get(LABEL_CONFIG)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    if !applied.contains_key("command") {
        if let Some(cmd) = &config.cmd {
            applied.insert("command".into(), serde_json::json!(cmd));
        }
    }
    let user_labels: BTreeMap<String, String> = labels
        .get(LABEL_LABELS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();

    let Limits {
        cores,
        memory,
        storage: storage_total,
    } = limits_of(c);
    let storage_enforced = host
        .and_then(|h| h.storage_opt.as_ref())
        .is_some_and(|o| o.contains_key("size"));
    let resources = Resources {
        cpu: cores.map(|c| CpuResources {
            cores: Some(c.ceil() as u32),
        }),
        memory: memory.map(|m| MemoryResources {
            limit: Some(m),
            used: None,
        }),
        storage: storage_total.map(|t| StorageResources {
            total_space: Some(t),
            enforced: if storage_enforced { None } else { Some(false) },
        }),
    };

    Some(Instance {
        id,
        name: labels.get(LABEL_NAME).cloned().unwrap_or_else(|| {
            c.name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned()
        }),
        uuid: labels.get(LABEL_UUID).cloned().unwrap_or_default(),
        instance_type: InstanceType::Container,
        backend: String::new(),
        state: map_state(
            state.and_then(|s| s.status),
            state.and_then(|s| s.restarting).unwrap_or(false),
            state.and_then(|s| s.oom_killed).unwrap_or(false),
            state.and_then(|s| s.error.as_deref()).unwrap_or_default(),
        ),
        status: map_health(state.and_then(|s| s.health.as_ref()).and_then(|h| h.status)),
        config: applied,
        resources,
        pending_resources: None,
        metadata: Metadata {
            labels: user_labels,
        },
        created_at,
        updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, HostConfig};

    #[test]
    fn state_table() {
        use ContainerStateStatusEnum as S;
        let rows = [
            (Some(S::CREATED), false, false, "", InstanceState::Created),
            (Some(S::RUNNING), false, false, "", InstanceState::Running),
            (Some(S::RUNNING), true, false, "", InstanceState::Restarting),
            (Some(S::PAUSED), false, false, "", InstanceState::Paused),
            (
                Some(S::RESTARTING),
                true,
                false,
                "",
                InstanceState::Restarting,
            ),
            (Some(S::EXITED), false, false, "", InstanceState::Stopped),
            (Some(S::EXITED), false, true, "", InstanceState::Error),
            (
                Some(S::EXITED),
                false,
                false,
                "exec failed",
                InstanceState::Error,
            ),
            (
                Some(S::CREATED),
                false,
                false,
                "exec: \"nope\": not found",
                InstanceState::Error,
            ),
            (Some(S::REMOVING), false, false, "", InstanceState::Stopped),
            (Some(S::DEAD), false, false, "", InstanceState::Error),
            (Some(S::EMPTY), false, false, "", InstanceState::Unknown),
            (None, false, false, "", InstanceState::Unknown),
        ];
        for (status, restarting, oom, err, want) in rows {
            assert_eq!(map_state(status, restarting, oom, err), want, "{status:?}");
        }
    }

    #[test]
    fn health_table() {
        assert_eq!(map_health(Some(HealthStatusEnum::HEALTHY)), Health::Healthy);
        assert_eq!(
            map_health(Some(HealthStatusEnum::UNHEALTHY)),
            Health::Unhealthy
        );
        assert_eq!(
            map_health(Some(HealthStatusEnum::STARTING)),
            Health::Starting
        );
        assert_eq!(map_health(Some(HealthStatusEnum::NONE)), Health::None);
        assert_eq!(map_health(None), Health::None);
    }

    #[test]
    fn reads_an_instance_back_from_labels() {
        let mut labels = HashMap::new();
        labels.insert(LABEL_ID.to_owned(), "i-1".to_owned());
        labels.insert(LABEL_UUID.to_owned(), "u".to_owned());
        labels.insert(
            LABEL_CREATED_AT.to_owned(),
            "2024-06-04T10:00:00Z".to_owned(),
        );
        labels.insert(LABEL_CONFIG.to_owned(), r#"{"image":"busybox"}"#.to_owned());
        labels.insert(LABEL_LABELS.to_owned(), r#"{"app":"web"}"#.to_owned());
        labels.insert(LABEL_STORAGE.to_owned(), "1024".to_owned());
        let c = ContainerInspectResponse {
            name: Some("/web".into()),
            config: Some(ContainerConfig {
                labels: Some(labels),
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            }),
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                started_at: Some("2024-06-04T10:05:00.5Z".into()),
                finished_at: Some("0001-01-01T00:00:00Z".into()),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                nano_cpus: Some(1_500_000_000),
                memory: Some(1 << 29),
                ..Default::default()
            }),
            ..Default::default()
        };
        let i = from_inspect(&c, None).unwrap();
        assert_eq!(i.id, "i-1");
        assert_eq!(i.name, "web");
        assert_eq!(i.state, InstanceState::Running);
        assert_eq!(i.resources.cores(), Some(2));
        assert_eq!(i.resources.memory_limit(), Some(1 << 29));
        assert_eq!(i.resources.total_space(), Some(1024));
        assert_eq!(i.resources.storage.unwrap().enforced, Some(false));
        assert_eq!(i.config["command"], serde_json::json!(["sh"]));
        assert_eq!(i.metadata.labels["app"], "web");
        assert_eq!(i.created_at.to_rfc3339(), "2024-06-04T10:00:00+00:00");
        assert!(i.updated_at > i.created_at);
        let mut other = c.clone();
        other
            .config
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .remove(LABEL_ID);
        assert!(from_inspect(&other, None).is_none());
    }
}
