//! The plugin's errors, the libvirt operations they name ([`LibvirtOp`]), and
//! their one mapping onto the API's error codes and messages.

use unicompute_plugin_api::{ErrorCode, PluginError};
use virt::sys;

/// The result of the plugin's own functions.
pub type Result<T> = std::result::Result<T, KvmError>;

/// What can go wrong in the kvm backend.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// libvirtd cannot be reached.
    #[error("libvirt at {} is unavailable", display_uri(.uri))]
    Unavailable {
        /// The connection URI.
        uri: String,
        /// libvirt's reason.
        #[source]
        source: virt::error::Error,
    },
    /// Another call is opening the connection right now.
    #[error("libvirt at {} is being connected to; try again", display_uri(.uri))]
    Connecting {
        /// The connection URI.
        uri: String,
    },
    /// A libvirt call failed.
    #[error("libvirt {op} failed")]
    Libvirt {
        /// What we asked libvirt to do.
        op: LibvirtOp,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// The client's config is not acceptable.
    #[error("{0}")]
    InvalidRequest(String),
    /// `config.image` names no template.
    #[error("template {name} does not exist")]
    UnknownTemplate {
        /// The asked name.
        name: String,
        /// The templates there are.
        available: Vec<String>,
    },
    /// No instance with this id.
    #[error("instance {0} not found")]
    NotFound(String),
    /// The name is taken by a libvirt domain.
    #[error("a domain named {0} exists")]
    NameTaken(String),
    /// The instance's state forbids the operation.
    #[error("{0}")]
    InvalidState(String),
    /// More than the host or the storage pool can give.
    #[error("{field} {requested} is more than {of} ({limit})")]
    ResourceLimit {
        /// The request's field (`storage.totalSpace`, `memory.limit`, `cpu.cores`).
        field: &'static str,
        /// The value asked.
        requested: u64,
        /// The most there is.
        limit: u64,
        /// What sets the limit (`the host's memory`...).
        of: &'static str,
    },
    /// Less than the backend can give: memory below what a guest needs, a disk
    /// smaller than its template.
    #[error("{field} {requested} is less than {of} ({limit})")]
    TooSmall {
        /// The request's field (`memory.limit`, `storage.totalSpace`).
        field: &'static str,
        /// The value asked.
        requested: u64,
        /// The least there can be.
        limit: u64,
        /// What sets the limit (`the template ubuntu's size`...).
        of: String,
    },
    /// An update asked for a smaller disk than the instance has: never shrunk.
    #[error("storage.totalSpace cannot shrink ({requested} < {current})")]
    DiskShrink {
        /// The size asked.
        requested: u64,
        /// The disk's size now.
        current: u64,
    },
    /// A file operation failed.
    #[error("{what} failed")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An external tool (qemu-img) failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its stderr, trimmed.
        message: String,
    },
    /// XML could not be written or read.
    #[error("domain xml: {0}")]
    Xml(String),
    /// No template of that name (delete_image).
    #[error("template {0} does not exist")]
    ImageNotFound(String),
    /// Instances of this backend use the template.
    #[error("template {name} is used by {} instance(s)", .instances.len())]
    ImageInUse {
        /// The template.
        name: String,
        /// The ids of the instances using it.
        instances: Vec<String>,
    },
    /// A template of that name exists.
    #[error("a template named {0} exists")]
    ImageExists(String),
    /// The operation was cancelled.
    #[error("operation {0} was cancelled")]
    Cancelled(String),
}

/// What we asked libvirt to do, when a libvirt call fails: named in the message
/// (`libvirt starting the domain failed`) and in `details.operation`, and deciding
/// what some libvirt errors mean (see [`LibvirtOp::when_invalid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibvirtOp {
    /// checking the storage pool.
    CheckPool,
    /// creating the disk volume.
    CreateDiskVolume,
    /// creating the seed volume.
    CreateSeedVolume,
    /// defining the domain.
    DefineDomain,
    /// defining the storage pool.
    DefinePool,
    /// deleting a volume.
    DeleteVolume,
    /// destroying the domain.
    DestroyDomain,
    /// growing the disk.
    GrowDisk,
    /// growing the disk volume.
    GrowDiskVolume,
    /// listing domains.
    ListDomains,
    /// listing the pool's volumes.
    ListPoolVolumes,
    /// looking up the disk volume.
    LookUpDiskVolume,
    /// opening the console.
    OpenConsole,
    /// looking up the storage pool.
    LookUpPool,
    /// pinging libvirt.
    Ping,
    /// raising the vcpu maximum.
    RaiseVcpuMaximum,
    /// reading a domain's xml.
    ReadAnyDomainXml,
    /// reading the disk volume.
    ReadDiskVolume,
    /// reading the disk volume path.
    ReadDiskVolumePath,
    /// reading the domain config.
    ReadDomainConfig,
    /// reading domain info.
    ReadDomainInfo,
    /// reading the domain state.
    ReadDomainState,
    /// reading the domain xml.
    ReadDomainXml,
    /// reading the driver type.
    ReadDriverType,
    /// reading the hypervisor version.
    ReadHypervisorVersion,
    /// reading the libvirt version.
    ReadLibvirtVersion,
    /// reading the node info.
    ReadNodeInfo,
    /// reading the storage pool's capacity.
    ReadPoolCapacity,
    /// reading the seed volume path.
    ReadSeedVolumePath,
    /// refreshing the storage pool.
    RefreshPool,
    /// registering domain events.
    RegisterEvents,
    /// resuming the domain.
    ResumeDomain,
    /// setting memory.
    SetMemory,
    /// setting the memory maximum.
    SetMemoryMaximum,
    /// setting vcpus.
    SetVcpus,
    /// starting the domain.
    StartDomain,
    /// starting the storage pool.
    StartPool,
    /// suspending the domain.
    SuspendDomain,
    /// undefining the domain.
    UndefineDomain,
    /// uploading the seed image.
    UploadSeed,
    /// waking the domain up.
    WakeDomain,
    /// writing the domain metadata.
    WriteMetadata,
}

impl LibvirtOp {
    /// The wording in messages and in `details.operation`.
    pub fn as_str(self) -> &'static str {
        match self {
            LibvirtOp::CheckPool => "checking the storage pool",
            LibvirtOp::CreateDiskVolume => "creating the disk volume",
            LibvirtOp::CreateSeedVolume => "creating the seed volume",
            LibvirtOp::DefineDomain => "defining the domain",
            LibvirtOp::DefinePool => "defining the storage pool",
            LibvirtOp::DeleteVolume => "deleting a volume",
            LibvirtOp::DestroyDomain => "destroying the domain",
            LibvirtOp::GrowDisk => "growing the disk",
            LibvirtOp::GrowDiskVolume => "growing the disk volume",
            LibvirtOp::ListDomains => "listing domains",
            LibvirtOp::ListPoolVolumes => "listing the pool's volumes",
            LibvirtOp::LookUpDiskVolume => "looking up the disk volume",
            LibvirtOp::OpenConsole => "opening the console",
            LibvirtOp::LookUpPool => "looking up the storage pool",
            LibvirtOp::Ping => "pinging libvirt",
            LibvirtOp::RaiseVcpuMaximum => "raising the vcpu maximum",
            LibvirtOp::ReadAnyDomainXml => "reading a domain's xml",
            LibvirtOp::ReadDiskVolume => "reading the disk volume",
            LibvirtOp::ReadDiskVolumePath => "reading the disk volume path",
            LibvirtOp::ReadDomainConfig => "reading the domain config",
            LibvirtOp::ReadDomainInfo => "reading domain info",
            LibvirtOp::ReadDomainState => "reading the domain state",
            LibvirtOp::ReadDomainXml => "reading the domain xml",
            LibvirtOp::ReadDriverType => "reading the driver type",
            LibvirtOp::ReadHypervisorVersion => "reading the hypervisor version",
            LibvirtOp::ReadLibvirtVersion => "reading the libvirt version",
            LibvirtOp::ReadNodeInfo => "reading the node info",
            LibvirtOp::ReadPoolCapacity => "reading the storage pool's capacity",
            LibvirtOp::ReadSeedVolumePath => "reading the seed volume path",
            LibvirtOp::RefreshPool => "refreshing the storage pool",
            LibvirtOp::RegisterEvents => "registering domain events",
            LibvirtOp::ResumeDomain => "resuming the domain",
            LibvirtOp::SetMemory => "setting memory",
            LibvirtOp::SetMemoryMaximum => "setting the memory maximum",
            LibvirtOp::SetVcpus => "setting vcpus",
            LibvirtOp::StartDomain => "starting the domain",
            LibvirtOp::StartPool => "starting the storage pool",
            LibvirtOp::SuspendDomain => "suspending the domain",
            LibvirtOp::UndefineDomain => "undefining the domain",
            LibvirtOp::UploadSeed => "uploading the seed image",
            LibvirtOp::WakeDomain => "waking the domain up",
            LibvirtOp::WriteMetadata => "writing the domain metadata",
        }
    }

    /// What libvirt's "operation invalid" (`VIR_ERR_OPERATION_INVALID`) means when
    /// this operation gets it. Every operation says, so that a new one cannot be
    /// added without that decision.
    pub fn when_invalid(self) -> ErrorCode {
        match self {
            // A domain that cannot start for what it is attached to (an inactive
            // network) fails for the host's setup, not for the instance's state.
            LibvirtOp::StartDomain => ErrorCode::BackendError,
            LibvirtOp::CheckPool
            | LibvirtOp::CreateDiskVolume
            | LibvirtOp::CreateSeedVolume
            | LibvirtOp::DefineDomain
            | LibvirtOp::DefinePool
            | LibvirtOp::DeleteVolume
            | LibvirtOp::DestroyDomain
            | LibvirtOp::GrowDisk
            | LibvirtOp::GrowDiskVolume
            | LibvirtOp::ListDomains
            | LibvirtOp::ListPoolVolumes
            | LibvirtOp::LookUpDiskVolume
            | LibvirtOp::OpenConsole
            | LibvirtOp::LookUpPool
            | LibvirtOp::Ping
            | LibvirtOp::RaiseVcpuMaximum
            | LibvirtOp::ReadAnyDomainXml
            | LibvirtOp::ReadDiskVolume
            | LibvirtOp::ReadDiskVolumePath
            | LibvirtOp::ReadDomainConfig
            | LibvirtOp::ReadDomainInfo
            | LibvirtOp::ReadDomainState
            | LibvirtOp::ReadDomainXml
            | LibvirtOp::ReadDriverType
            | LibvirtOp::ReadHypervisorVersion
            | LibvirtOp::ReadLibvirtVersion
            | LibvirtOp::ReadNodeInfo
            | LibvirtOp::ReadPoolCapacity
            | LibvirtOp::ReadSeedVolumePath
            | LibvirtOp::RefreshPool
            | LibvirtOp::RegisterEvents
            | LibvirtOp::ResumeDomain
            | LibvirtOp::SetMemory
            | LibvirtOp::SetMemoryMaximum
            | LibvirtOp::SetVcpus
            | LibvirtOp::StartPool
            | LibvirtOp::SuspendDomain
            | LibvirtOp::UndefineDomain
            | LibvirtOp::UploadSeed
            | LibvirtOp::WakeDomain
            | LibvirtOp::WriteMetadata => ErrorCode::InvalidState,
        }
    }
}

impl std::fmt::Display for LibvirtOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wraps a libvirt error of `op` (for `map_err`).
pub(crate) fn lv(op: LibvirtOp) -> impl FnOnce(virt::error::Error) -> KvmError {
    KvmError::libvirt(op)
}

impl KvmError {
    /// Wraps a libvirt error of an operation.
    pub fn libvirt(op: LibvirtOp) -> impl FnOnce(virt::error::Error) -> KvmError {
        move |source| KvmError::Libvirt { op, source }
    }

    /// The libvirt error number, when the error comes from libvirt.
    pub fn libvirt_code(&self) -> Option<sys::virErrorNumber> {
        match self {
            KvmError::Libvirt { source, .. } | KvmError::Unavailable { source, .. } => {
                Some(source.code().to_raw())
            }
            _ => None,
        }
    }

    /// The API error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            KvmError::Unavailable { .. } | KvmError::Connecting { .. } => {
                ErrorCode::BackendUnavailable
            }
            // A call cut by a dying daemon fails in the RPC layer, whatever its number.
            KvmError::Libvirt { source, .. } if source.domain().to_raw() == sys::VIR_FROM_RPC => {
                ErrorCode::BackendUnavailable
            }
            KvmError::Libvirt { op, source } => match source.code().to_raw() {
                sys::VIR_ERR_OPERATION_INVALID => op.when_invalid(),
                number => libvirt_code(number),
            },
            KvmError::InvalidRequest(_) | KvmError::UnknownTemplate { .. } => {
                ErrorCode::InvalidRequest
            }
            KvmError::NotFound(_) => ErrorCode::InstanceNotFound,
            KvmError::NameTaken(_) => ErrorCode::InstanceAlreadyExists,
            KvmError::InvalidState(_) => ErrorCode::InvalidState,
            // A size the backend cannot give, above or below: the request is well
            // formed, only not here (as the contract's 422, not a 400).
            KvmError::ResourceLimit { .. }
            | KvmError::TooSmall { .. }
            | KvmError::DiskShrink { .. } => ErrorCode::ResourceLimitExceeded,
            KvmError::Io { .. } | KvmError::Tool { .. } => ErrorCode::BackendError,
            KvmError::Xml(_) => ErrorCode::InternalError,
            KvmError::ImageNotFound(_) => ErrorCode::ImageNotFound,
            KvmError::ImageInUse { .. } => ErrorCode::ImageInUse,
            KvmError::ImageExists(_) => ErrorCode::ImageAlreadyExists,
            KvmError::Cancelled(_) => ErrorCode::Cancelled,
        }
    }
}

pub use unicompute_plugin_api::error::scrub_paths;

/// A connection URI as shown to clients: no user name, no query (which can name a
/// socket path or a key file): `qemu+ssh://root@h/system?keyfile=/k` is
/// `qemu+ssh://h/system`.
pub fn display_uri(uri: &str) -> String {
    let no_query = uri.split('?').next().unwrap_or(uri);
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => no_query.to_owned(),
    }
}

/// Maps a libvirt error number onto an API code.
fn libvirt_code(code: sys::virErrorNumber) -> ErrorCode {
    match code {
        sys::VIR_ERR_NO_CONNECT | sys::VIR_ERR_INVALID_CONN | sys::VIR_ERR_RPC => {
            ErrorCode::BackendUnavailable
        }
        sys::VIR_ERR_NO_DOMAIN => ErrorCode::InstanceNotFound,
        sys::VIR_ERR_DOM_EXIST => ErrorCode::InstanceAlreadyExists,
        sys::VIR_ERR_OPERATION_INVALID => ErrorCode::InvalidState,
        _ => ErrorCode::BackendError,
    }
}

impl From<KvmError> for PluginError {
    fn from(e: KvmError) -> Self {
        let code = e.code();
        // Errors of the daemon and the file system are logged in full; the client
        // gets them without host paths.
        // An unreachable libvirt is logged by the connection when the outage begins
        // and ends (WARN, INFO); each call failing for it only at DEBUG.
        let message = match &e {
            KvmError::Libvirt { source, .. } if code == ErrorCode::BackendUnavailable => {
                tracing::debug!(error = %e, reason = %source.message(), "libvirt call failed: libvirt unreachable");
                format!("{e}: {}", scrub_paths(source.message()))
            }
            KvmError::Libvirt { source, .. } => {
                tracing::warn!(error = %e, reason = %source.message(), "libvirt call failed");
                format!("{e}: {}", scrub_paths(source.message()))
            }
            KvmError::Unavailable { source, .. } => {
                tracing::debug!(error = %e, reason = %source.message(), "libvirt unavailable");
                e.to_string()
            }
            KvmError::Io { source, .. } => {
                tracing::warn!(error = %e, reason = %source, "i/o failed");
                format!("{e}: {}", scrub_paths(&source.to_string()))
            }
            KvmError::Tool { .. } => scrub_paths(&e.to_string()),
            _ => e.to_string(),
        };
        let mut out = PluginError::new(code, message);
        match e {
            KvmError::UnknownTemplate { name, available } => {
                out = out
                    .with_detail("image", name)
                    .with_detail("available", available);
            }
            KvmError::NotFound(id) => out = out.with_detail("id", id),
            KvmError::ImageNotFound(name) | KvmError::ImageExists(name) => {
                out = out.with_detail("image", name)
            }
            KvmError::ImageInUse { name, instances } => {
                out = out
                    .with_detail("image", name)
                    .with_detail("instances", instances)
            }
            KvmError::Cancelled(op) => out = out.with_detail("operation", op),
            KvmError::ResourceLimit {
                field,
                requested,
                limit,
                ..
            }
            | KvmError::TooSmall {
                field,
                requested,
                limit,
                ..
            } => {
                out = out
                    .with_detail("field", field)
                    .with_detail("requested", requested)
                    .with_detail("limit", limit);
            }
            KvmError::DiskShrink { requested, current } => {
                out = out
                    .with_detail("field", "storage.totalSpace")
                    .with_detail("requested", requested)
                    .with_detail("limit", current)
                    .with_detail("current", current);
            }
            KvmError::Unavailable { uri, .. } | KvmError::Connecting { uri } => {
                out = out.with_detail("uri", display_uri(&uri))
            }
            KvmError::Libvirt { op, source } => {
                out = out
                    .with_detail("operation", op.as_str())
                    .with_detail("libvirtCode", source.code().to_raw());
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_code() {
        let cases: Vec<(KvmError, ErrorCode)> = vec![
            (
                KvmError::InvalidRequest("x".into()),
                ErrorCode::InvalidRequest,
            ),
            (
                KvmError::UnknownTemplate {
                    name: "a".into(),
                    available: vec!["b".into()],
                },
                ErrorCode::InvalidRequest,
            ),
            (KvmError::NotFound("i".into()), ErrorCode::InstanceNotFound),
            (
                KvmError::ImageNotFound("t".into()),
                ErrorCode::ImageNotFound,
            ),
            (
                KvmError::ImageInUse {
                    name: "t".into(),
                    instances: vec!["i".into()],
                },
                ErrorCode::ImageInUse,
            ),
            (
                KvmError::ImageExists("t".into()),
                ErrorCode::ImageAlreadyExists,
            ),
            (KvmError::Cancelled("op".into()), ErrorCode::Cancelled),
            (
                KvmError::NameTaken("n".into()),
                ErrorCode::InstanceAlreadyExists,
            ),
            (KvmError::InvalidState("s".into()), ErrorCode::InvalidState),
            (
                KvmError::ResourceLimit {
                    field: "cpu.cores",
                    requested: 9,
                    limit: 8,
                    of: "the host's cpus",
                },
                ErrorCode::ResourceLimitExceeded,
            ),
            (
                KvmError::TooSmall {
                    field: "memory.limit",
                    requested: 1,
                    limit: 2,
                    of: "what a guest needs".into(),
                },
                ErrorCode::ResourceLimitExceeded,
            ),
            (
                KvmError::DiskShrink {
                    requested: 1,
                    current: 2,
                },
                ErrorCode::ResourceLimitExceeded,
            ),
            (
                KvmError::Io {
                    what: "w",
                    source: std::io::Error::other("x"),
                },
                ErrorCode::BackendError,
            ),
            (
                KvmError::Tool {
                    tool: "qemu-img",
                    message: "m".into(),
                },
                ErrorCode::BackendError,
            ),
            (KvmError::Xml("x".into()), ErrorCode::InternalError),
        ];
        for (e, code) in cases {
            assert_eq!(PluginError::from(e).code, code);
        }
    }

    #[test]
    fn libvirt_numbers_map() {
        assert_eq!(
            libvirt_code(sys::VIR_ERR_NO_CONNECT),
            ErrorCode::BackendUnavailable
        );
        assert_eq!(
            libvirt_code(sys::VIR_ERR_RPC),
            ErrorCode::BackendUnavailable
        );
        assert_eq!(
            libvirt_code(sys::VIR_ERR_NO_DOMAIN),
            ErrorCode::InstanceNotFound
        );
        assert_eq!(
            libvirt_code(sys::VIR_ERR_DOM_EXIST),
            ErrorCode::InstanceAlreadyExists
        );
        assert_eq!(
            libvirt_code(sys::VIR_ERR_OPERATION_INVALID),
            ErrorCode::InvalidState
        );
        assert_eq!(
            libvirt_code(sys::VIR_ERR_INTERNAL_ERROR),
            ErrorCode::BackendError
        );
    }

    #[test]
    fn an_invalid_start_is_the_hosts_setup_and_other_invalid_calls_the_state() {
        assert_eq!(
            LibvirtOp::StartDomain.when_invalid(),
            ErrorCode::BackendError
        );
        for op in [
            LibvirtOp::SuspendDomain,
            LibvirtOp::ResumeDomain,
            LibvirtOp::DestroyDomain,
            LibvirtOp::GrowDisk,
        ] {
            assert_eq!(op.when_invalid(), ErrorCode::InvalidState, "{op}");
        }
        assert_eq!(
            LibvirtOp::StartDomain.to_string(),
            "starting the domain",
            "the wording is the wire's"
        );
    }

    #[test]
    fn paths_are_scrubbed() {
        assert_eq!(
            scrub_paths("Cannot access storage file '/var/lib/x.qcow2': No such file"),
            "Cannot access storage file '<path>': No such file"
        );
        assert_eq!(scrub_paths("/a/b failed at /c"), "<path> failed at <path>");
        assert_eq!(scrub_paths("1/2 and and/or"), "1/2 and and/or");
        assert_eq!(
            display_uri("qemu+ssh://root@h.example/system?keyfile=/root/.ssh/k"),
            "qemu+ssh://h.example/system"
        );
        assert_eq!(
            display_uri("qemu:///system?socket=/run/x.sock"),
            "qemu:///system"
        );
        assert_eq!(display_uri("test:///default"), "test:///default");
        let e = PluginError::from(KvmError::Connecting {
            uri: "qemu+tls://u@h/system?pkipath=/etc/pki".into(),
        });
        assert_eq!(e.code, ErrorCode::BackendUnavailable);
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("/etc/pki") && !text.contains("u@"), "{text}");
    }

    #[test]
    fn unknown_template_lists_what_exists() {
        let e = PluginError::from(KvmError::UnknownTemplate {
            name: "nope".into(),
            available: vec!["ubuntu-22.04".into()],
        });
        assert_eq!(e.details["available"][0], "ubuntu-22.04");
        assert!(e.message.contains("nope"));
    }
}
