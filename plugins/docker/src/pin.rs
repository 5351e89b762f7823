//! Bind-mount sources pinned for a local engine, so that a mount stays what was
//! checked against the allowlist whatever happens to its host path later.
//!
//! At create, a resolved source (see [`crate::spec::parse_volume`]) is opened without
//! following any symlink, and that very directory (or file) is bind-mounted from its
//! descriptor onto a private pin path, `<pin_dir>/<instance id>/<n>` (directories
//! 0700, root's). The container mounts the pin, never the host path: swapping the path
//! for a symlink afterwards cannot change what the pin (and so the container, also at
//! the engine's own restarts) sees. Its device and inode go into a label; every start
//! through the API checks the path again (still itself, no symlink, inside the
//! allowlist, same device and inode) and makes a missing pin again (after a reboot).
//! Delete and failed creates detach and remove the pins.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

/// What the `io.unicompute.binds` label keeps of one pinned bind mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pinned {
    /// The resolved host path.
    pub source: PathBuf,
    /// Its device at create.
    pub dev: u64,
    /// Its inode at create.
    pub ino: u64,
    /// Where it is pinned (the container's mount source).
    pub pin: PathBuf,
}

/// Why a pin cannot be (re)made.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The host path is no longer what was checked at create (or now lies outside the
    /// allowlist).
    #[error("bind source {}: {reason}", source_path.display())]
    Changed {
        /// The resolved path.
        source_path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// The pin could not be made (no `CAP_SYS_ADMIN`, another mount namespace, ...).
    #[error("cannot pin the bind source {}: {error}", source_path.display())]
    Mount {
        /// The resolved path.
        source_path: PathBuf,
        /// The system's error.
        error: io::Error,
    },
}

/// Whether an instance id can name a directory (host ids are `i-...`).
pub fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Opens an absolute path as `O_PATH`, one component at a time, never following a
/// symlink (a symlink anywhere, the last component included, is `ELOOP`).
pub fn open_nofollow(path: &Path) -> io::Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open("/", flags | OFlags::DIRECTORY, Mode::empty())?;
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => {
                let next = rustix::fs::openat(&fd, name, flags, Mode::empty())?;
                let st = rustix::fs::fstat(&next)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    return Err(io::Error::from_raw_os_error(
                        rustix::io::Errno::LOOP.raw_os_error(),
                    ));
                }
                fd = next;
            }
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
    Ok(fd)
}

/// Device and inode of an open file.
pub fn identity(fd: impl AsFd) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Makes `dir` (and missing parents) a directory of this user's, mode 0700; refuses a
/// symlink or someone else's directory.
fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory of this user's", dir.display()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Detaches whatever is mounted on `path` (stacked mounts too).
fn detach(path: &Path) {
    for _ in 0..16 {
        if rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).is_err() {
            return;
        }
    }
}

/// Bind-mounts what `fd` refers to onto `pin`, made for it in a private directory.
pub fn pin_fd(fd: &OwnedFd, pin: &Path) -> io::Result<()> {
    let parent = pin
        .parent()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    private_dir(parent)?;
    detach(pin);
    let is_dir = FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode) == FileType::Directory;
    match std::fs::symlink_metadata(pin) {
        Ok(m) if m.is_dir() == is_dir && !m.file_type().is_symlink() => {}
        Ok(m) => {
            if m.is_dir() {
                std::fs::remove_dir(pin)?;
            } else {
                std::fs::remove_file(pin)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if !pin.exists() {
        if is_dir {
            std::fs::DirBuilder::new().mode(0o700).create(pin)?;
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(pin)?;
        }
    }
    let from = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::mount::mount_bind_recursive(from.as_str(), pin)?;
    let want = identity(fd)?;
    let meta = std::fs::symlink_metadata(pin)?;
    if (meta.dev(), meta.ino()) != want {
        detach(pin);
        return Err(io::Error::other("the pin does not show its source"));
    }
    Ok(())
}

/// Opens a resolved source and pins it at `pin`: what the label keeps.
pub fn pin_new(source: &Path, pin: &Path) -> Result<Pinned, PinError> {
    let fd = open_nofollow(source).map_err(|e| PinError::Changed {
        source_path: source.to_owned(),
        reason: format!("changed while it was checked ({e})"),
    })?;
    let (dev, ino) = identity(&fd).map_err(|error| PinError::Mount {
        source_path: source.to_owned(),
        error,
    })?;
    pin_fd(&fd, pin).map_err(|error| PinError::Mount {
        source_path: source.to_owned(),
        error,
    })?;
    Ok(Pinned {
        source: source.to_owned(),
        dev,
        ino,
        pin: pin.to_owned(),
    })
}

/// Checks a pinned source before a start: the path is still itself (no symlink on
/// the way), inside the allowlist, the same device and inode; then makes its pin
/// again if it is missing or shows something else.
pub fn ensure(p: &Pinned, allowed: &[PathBuf]) -> Result<(), PinError> {
    let changed = |reason: String| PinError::Changed {
        source_path: p.source.clone(),
        reason,
    };
    if !crate::spec::inside_resolved(&p.source, allowed) {
        return Err(changed("no longer inside allowed_host_paths".to_owned()));
    }
    let fd = open_nofollow(&p.source)
        .map_err(|e| changed(format!("is no longer the path it was at create ({e})")))?;
    let id = identity(&fd).map_err(|e| changed(e.to_string()))?;
    if id != (p.dev, p.ino) {
        return Err(changed(
            "was replaced since create (another device or inode)".to_owned(),
        ));
    }
    match std::fs::symlink_metadata(&p.pin) {
        Ok(m) if (m.dev(), m.ino()) == id => Ok(()),
        _ => pin_fd(&fd, &p.pin).map_err(|error| PinError::Mount {
            source_path: p.source.clone(),
            error,
        }),
    }
}

/// Detaches and removes every pin in `dir` and the directory itself. Never removes
/// recursively: a pin still mounted stays (and is logged).
pub fn unpin_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        detach(&path);
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::warn!(pin = %path.display(), error = %e, "cannot remove a bind-mount pin");
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a pin directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_never_followed() {
        let root = std::env::temp_dir().join(format!("uc-pin-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        assert!(open_nofollow(&root.join("real/sub")).is_ok());
        for p in ["link", "link/sub"] {
            let e = open_nofollow(&root.join(p)).unwrap_err();
            assert!(e.raw_os_error().is_some(), "{p}: {e}");
        }
        assert!(open_nofollow(Path::new("relative")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn ids_that_name_directories() {
        assert!(usable_id("i-0190a1b2c3-0001-abcd"));
        for bad in ["", ".", "..", "a/b", ".hidden", "a\nb"] {
            assert!(!usable_id(bad), "{bad:?}");
        }
    }
}
