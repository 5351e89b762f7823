//! The operations of the plugin interface, declared once: [`Call`] names each
//! operation with its own arguments. The host sends one ([`crate::load::RemoteBackend`]
//! builds it from a [`Backend`] method), the plugin's dispatcher decodes it and
//! [`Call::run`] answers it through the author's [`Backend`]. Both matches are
//! exhaustive, so an operation added to one side and not the other does not compile.
//!
//! On the wire a call is the operation's name (`"start"`) and its arguments as one
//! JSON document, exactly as in interface 1.0: no arguments is `null`, `create` sends
//! the [`CreateRequest`], and operations on one instance send
//! `{"id", "force", "options"?, "update"?}`.

use abi_stable::std_types::RString;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::PluginError;
use crate::model::{CreateRequest, PullRequest, StopOptions, UpdateRequest, UploadRequest};

/// One operation with its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum Call {
    /// [`Backend::describe`]
    Describe,
    /// [`Backend::health`]
    Health,
    /// [`Backend::host_resources`]
    HostResources,
    /// [`Backend::images`]
    Images,
    /// [`Backend::list`]
    List,
    /// [`Backend::get`]
    Get(Target),
    /// [`Backend::create`]
    Create(CreateRequest),
    /// [`Backend::update`]
    Update(UpdateArgs),
    /// [`Backend::delete`]
    Delete(DeleteArgs),
    /// [`Backend::start`]
    Start(Target),
    /// [`Backend::stop`]
    Stop(StopArgs),
    /// [`Backend::restart`]
    Restart(StopArgs),
    /// [`Backend::pause`]
    Pause(Target),
    /// [`Backend::unpause`]
    Unpause(Target),
    /// [`Backend::usage`]
    Usage(Target),
    /// [`Backend::pull_image`] (1.2)
    PullImage(PullArgs),
    /// [`Backend::delete_image`] (1.2)
    DeleteImage(ImageArgs),
    /// [`Backend::upload_begin`] (1.2)
    UploadBegin(UploadArgs),
    /// [`Backend::upload_commit`] (1.2)
    UploadCommit(UploadArgs),
    /// [`Backend::upload_abort`] (1.2)
    UploadAbort(UploadArgs),
    /// [`Backend::cancel`] (1.2)
    Cancel(CancelArgs),
}

/// [`Call::PullImage`]'s arguments: the [`PullRequest`] itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PullArgs(pub PullRequest);

/// [`Call::DeleteImage`]'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageArgs {
    /// The image's name, as [`Backend::images`] lists it.
    pub name: String,
}

/// The arguments of [`Call::UploadBegin`], [`Call::UploadCommit`] and
/// [`Call::UploadAbort`]: the [`UploadRequest`] itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UploadArgs(pub UploadRequest);

/// [`Call::Cancel`]'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelArgs {
    /// The host's operation token.
    pub operation: String,
}

/// The arguments of an operation on one instance that takes nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The host's instance id.
    pub id: String,
    /// Always false here; sent since 1.0 with every instance operation.
    #[serde(default)]
    force: bool,
}

impl Target {
    /// The instance `id`.
    pub fn new(id: &str) -> Self {
        Target {
            id: id.to_owned(),
            force: false,
        }
    }
}

/// [`Call::Delete`]'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteArgs {
    /// The host's instance id.
    pub id: String,
    /// Stop it hard first when it runs.
    #[serde(default)]
    pub force: bool,
}

/// [`Call::Stop`]'s and [`Call::Restart`]'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopArgs {
    /// The host's instance id.
    pub id: String,
    /// Always false here (the force that counts is in `options`); sent since 1.0.
    #[serde(default)]
    force: bool,
    /// How to stop; the defaults when absent.
    #[serde(default)]
    pub options: StopOptions,
}

impl StopArgs {
    /// Stop `id` as `options` say.
    pub fn new(id: &str, options: StopOptions) -> Self {
        StopArgs {
            id: id.to_owned(),
            force: false,
            options,
        }
    }
}

/// [`Call::Update`]'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateArgs {
    /// The host's instance id.
    pub id: String,
    /// Always false here; sent since 1.0.
    #[serde(default)]
    force: bool,
    /// What to change; nothing when absent.
    #[serde(default)]
    pub update: UpdateRequest,
}

impl UpdateArgs {
    /// Change `id` as `update` says.
    pub fn new(id: &str, update: UpdateRequest) -> Self {
        UpdateArgs {
            id: id.to_owned(),
            force: false,
            update,
        }
    }
}

impl Call {
    /// The operation's name on the wire (`"start"`).
    pub fn op(&self) -> &'static str {
        match self {
            Call::Describe => "describe",
            Call::Health => "health",
            Call::HostResources => "host_resources",
            Call::Images => "images",
            Call::List => "list",
            Call::Get(_) => "get",
            Call::Create(_) => "create",
            Call::Update(_) => "update",
            Call::Delete(_) => "delete",
            Call::Start(_) => "start",
            Call::Stop(_) => "stop",
            Call::Restart(_) => "restart",
            Call::Pause(_) => "pause",
            Call::Unpause(_) => "unpause",
            Call::Usage(_) => "usage",
            Call::PullImage(_) => "pull_image",
            Call::DeleteImage(_) => "delete_image",
            Call::UploadBegin(_) => "upload_begin",
            Call::UploadCommit(_) => "upload_commit",
            Call::UploadAbort(_) => "upload_abort",
            Call::Cancel(_) => "cancel",
        }
    }

    /// The name and the arguments document, as sent to a plugin (field order as
    /// declared: the bytes interface 1.0 sent).
    pub fn encode(&self) -> Result<(&'static str, String), PluginError> {
        let args = match self {
            Call::Describe | Call::Health | Call::HostResources | Call::Images | Call::List => {
                Ok("null".to_owned())
            }
            Call::Get(t) | Call::Start(t) | Call::Pause(t) | Call::Unpause(t) | Call::Usage(t) => {
                serde_json::to_string(t)
            }
            Call::Create(request) => serde_json::to_string(request),
            Call::Update(a) => serde_json::to_string(a),
            Call::Delete(a) => serde_json::to_string(a),
            Call::Stop(a) | Call::Restart(a) => serde_json::to_string(a),
            Call::PullImage(a) => serde_json::to_string(a),
            Call::DeleteImage(a) => serde_json::to_string(a),
            Call::UploadBegin(a) | Call::UploadCommit(a) | Call::UploadAbort(a) => {
                serde_json::to_string(a)
            }
            Call::Cancel(a) => serde_json::to_string(a),
        }
        .map_err(|e| {
            PluginError::internal(format!("cannot encode {} arguments: {e}", self.op()))
        })?;
        Ok((self.op(), args))
    }

    /// The call a plugin received as `op` and `payload`. An operation this build
    /// does not know (from a newer host) is `OPERATION_NOT_SUPPORTED`.
    pub fn decode(op: &str, payload: &str) -> Result<Call, PluginError> {
        // The tag first, then the arguments as they came: serde reads the arguments
        // straight into the operation's own type, without an intermediate value.
        let op_json = serde_json::to_string(op)
            .map_err(|e| PluginError::invalid(format!("bad operation name: {e}")))?;
        let payload = if payload.trim().is_empty() {
            "null"
        } else {
            payload
        };
        let tagged = format!(r#"{{"op":{op_json},"args":{payload}}}"#);
        serde_json::from_str(&tagged).map_err(|e| {
            if e.to_string().starts_with("unknown variant") {
                PluginError::not_supported(op)
            } else {
                PluginError::invalid(format!("bad arguments for {op}: {e}"))
            }
        })
    }

    /// Answers the call through `backend`, as the JSON the host reads back.
    pub fn run(self, backend: &dyn Backend) -> Result<RString, PluginError> {
        match self {
            Call::Describe => json(backend.describe()?),
            Call::Health => json(backend.health()?),
            Call::HostResources => json(backend.host_resources()?),
            Call::Images => json(backend.images()?),
            Call::List => json(backend.list()?),
            Call::Get(t) => json(backend.get(&t.id)?),
            Call::Create(request) => json(backend.create(request)?),
            Call::Update(a) => json(backend.update(&a.id, a.update)?),
            Call::Delete(a) => json(backend.delete(&a.id, a.force)?),
            Call::Start(t) => json(backend.start(&t.id)?),
            Call::Stop(a) => json(backend.stop(&a.id, a.options)?),
            Call::Restart(a) => json(backend.restart(&a.id, a.options)?),
            Call::Pause(t) => json(backend.pause(&t.id)?),
            Call::Unpause(t) => json(backend.unpause(&t.id)?),
            Call::Usage(t) => json(backend.usage(&t.id)?),
            Call::PullImage(a) => json(backend.pull_image(a.0)?),
            Call::DeleteImage(a) => json(backend.delete_image(&a.name)?),
            Call::UploadBegin(a) => json(backend.upload_begin(a.0)?),
            Call::UploadCommit(a) => json(backend.upload_commit(a.0)?),
            Call::UploadAbort(a) => json(backend.upload_abort(a.0)?),
            Call::Cancel(a) => json(backend.cancel(&a.operation)?),
        }
    }
}

/// Our own plain data as JSON.
pub(crate) fn json<T: Serialize>(value: T) -> Result<RString, PluginError> {
    serde_json::to_string(&value)
        .map(RString::from)
        .map_err(|e| PluginError::internal(format!("cannot encode a result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;

    /// What the host sent in interface 1.0 and 1.1, byte for byte.
    #[test]
    fn the_wire_is_what_1_0_sent() {
        let stop = StopOptions {
            force: true,
            timeout: 7,
        };
        let cases: Vec<(Call, &str, &str)> = vec![
            (Call::Describe, "describe", "null"),
            (Call::Health, "health", "null"),
            (Call::HostResources, "host_resources", "null"),
            (Call::Images, "images", "null"),
            (Call::List, "list", "null"),
            (
                Call::Get(Target::new("i-1")),
                "get",
                r#"{"id":"i-1","force":false}"#,
            ),
            (
                Call::Start(Target::new("i-1")),
                "start",
                r#"{"id":"i-1","force":false}"#,
            ),
            (
                Call::Pause(Target::new("i-1")),
                "pause",
                r#"{"id":"i-1","force":false}"#,
            ),
            (
                Call::Unpause(Target::new("i-1")),
                "unpause",
                r#"{"id":"i-1","force":false}"#,
            ),
            (
                Call::Usage(Target::new("i-1")),
                "usage",
                r#"{"id":"i-1","force":false}"#,
            ),
            (
                Call::Delete(DeleteArgs {
                    id: "i-1".into(),
                    force: true,
                }),
                "delete",
                r#"{"id":"i-1","force":true}"#,
            ),
            (
                Call::Stop(StopArgs::new("i-1", stop)),
                "stop",
                r#"{"id":"i-1","force":false,"options":{"force":true,"timeout":7}}"#,
            ),
            (
                Call::Restart(StopArgs::new("i-1", stop)),
                "restart",
                r#"{"id":"i-1","force":false,"options":{"force":true,"timeout":7}}"#,
            ),
            (
                Call::Update(UpdateArgs::new("i-1", UpdateRequest::default())),
                "update",
                r#"{"id":"i-1","force":false,"update":{"resources":{}}}"#,
            ),
        ];
        for (call, op, args) in cases {
            let (o, a) = call.encode().expect("encode");
            assert_eq!((o, a.as_str()), (op, args), "{call:?}");
            assert_eq!(Call::decode(op, args).expect("decode"), call, "{op}");
        }
    }

    /// What the host sends for the operations of interface 1.2, byte for byte.
    #[test]
    fn the_wire_of_1_2() {
        use crate::model::RegistryAuth;
        let upload = UploadRequest {
            name: "debian-12".into(),
            operation: "op-7".into(),
            size: Some(1024),
        };
        let cases: Vec<(Call, &str, &str)> = vec![
            (
                Call::PullImage(PullArgs(PullRequest {
                    reference: "127.0.0.1:5000/x:1".into(),
                    auth: None,
                    operation: Some("op-1".into()),
                })),
                "pull_image",
                r#"{"reference":"127.0.0.1:5000/x:1","operation":"op-1"}"#,
            ),
            (
                Call::PullImage(PullArgs(PullRequest {
                    reference: "r:1".into(),
                    auth: Some(RegistryAuth {
                        username: Some("u".into()),
                        password: Some("p".into()),
                        identity_token: None,
                        server_address: Some("reg:5000".into()),
                    }),
                    operation: None,
                })),
                "pull_image",
                r#"{"reference":"r:1","auth":{"username":"u","password":"p","serverAddress":"reg:5000"}}"#,
            ),
            (
                Call::DeleteImage(ImageArgs {
                    name: "busybox:1".into(),
                }),
                "delete_image",
                r#"{"name":"busybox:1"}"#,
            ),
            (
                Call::UploadBegin(UploadArgs(upload.clone())),
                "upload_begin",
                r#"{"name":"debian-12","operation":"op-7","size":1024}"#,
            ),
            (
                Call::UploadCommit(UploadArgs(UploadRequest {
                    size: None,
                    ..upload.clone()
                })),
                "upload_commit",
                r#"{"name":"debian-12","operation":"op-7"}"#,
            ),
            (
                Call::UploadAbort(UploadArgs(upload)),
                "upload_abort",
                r#"{"name":"debian-12","operation":"op-7","size":1024}"#,
            ),
            (
                Call::Cancel(CancelArgs {
                    operation: "op-1".into(),
                }),
                "cancel",
                r#"{"operation":"op-1"}"#,
            ),
        ];
        for (call, op, args) in cases {
            let (o, a) = call.encode().expect("encode");
            assert_eq!((o, a.as_str()), (op, args), "{call:?}");
            assert_eq!(Call::decode(op, args).expect("decode"), call, "{op}");
        }
        // A create carries the operation token only when there is one: without it,
        // the bytes are those of 1.0.
        let at = chrono::DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut create = CreateRequest {
            id: "i-1".into(),
            name: "n".into(),
            config: Default::default(),
            resources: Resources::default(),
            labels: Default::default(),
            start: false,
            created_at: at,
            operation: None,
        };
        let (_, a) = Call::Create(create.clone()).encode().unwrap();
        assert_eq!(
            a,
            r#"{"id":"i-1","name":"n","config":{},"resources":{},"labels":{},"start":false,"createdAt":"2024-01-02T03:04:05Z"}"#
        );
        create.operation = Some("op-9".into());
        let (_, a) = Call::Create(create.clone()).encode().unwrap();
        assert!(a.ends_with(r#","operation":"op-9"}"#), "{a}");
        assert_eq!(Call::decode("create", &a).unwrap(), Call::Create(create));
    }

    #[test]
    fn what_1_0_hosts_left_out_takes_its_default() {
        // An instance operation with only an id, a stop with no options.
        assert_eq!(
            Call::decode("start", r#"{"id":"i-1"}"#).expect("decode"),
            Call::Start(Target::new("i-1"))
        );
        assert_eq!(
            Call::decode("stop", r#"{"id":"i-1"}"#).expect("decode"),
            Call::Stop(StopArgs::new(
                "i-1",
                StopOptions {
                    force: false,
                    timeout: 30
                }
            ))
        );
        assert_eq!(
            Call::decode("update", r#"{"id":"i-1"}"#).expect("decode"),
            Call::Update(UpdateArgs::new(
                "i-1",
                UpdateRequest {
                    resources: Resources::default(),
                    labels: None
                }
            ))
        );
    }

    #[test]
    fn unknown_operations_and_bad_arguments_are_told_apart() {
        let e = Call::decode("logs", r#"{"id":"i-1"}"#).expect_err("unknown");
        assert_eq!(e.code, crate::ErrorCode::OperationNotSupported);
        let e = Call::decode("start", r#"{"name":"x"}"#).expect_err("no id");
        assert_eq!(e.code, crate::ErrorCode::InvalidRequest);
        let e = Call::decode("start", "not json").expect_err("not json");
        assert_eq!(e.code, crate::ErrorCode::InvalidRequest);
    }
}
