//! The `volumes` of a Docker instance's config: bind mounts (checked against the
//! allowlist, lexically, and resolved on this host for a local engine), named and
//! anonymous volumes.

use std::path::{Component, Path, PathBuf};

use bollard::models::{Mount, MountBindOptions, MountType};

use super::SpecError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::allowed;
    use unicompute_plugin_api::{ErrorCode, PluginError};

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
}
