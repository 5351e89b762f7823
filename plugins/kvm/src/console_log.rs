//! The file each instance's serial console output is kept in: `<id>-serial.log` in
//! the backend's `console_log_dir`, written by virtlogd through the `<log>` of the
//! domain's serial port (appended to across the guest's restarts), and removed with
//! the instance (with virtlogd's rotated copies, `<file>.0`, `<file>.1`, ...).

use std::path::{Path, PathBuf};

/// The console log file of instance `id` in `dir`.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}-serial.log"))
}

/// Whether `file` is instance `id`'s console log directly in `dir`, as [`path`] names
/// it: nothing else is ever removed, whatever a domain's XML says.
pub fn is_ours(dir: &Path, id: &str, file: &Path) -> bool {
    file == path(dir, id)
}

/// Removes a console log file and its rotated copies (missing ones are fine).
/// Answers the files that could not be removed, with why.
pub fn remove(file: &Path) -> Vec<(PathBuf, std::io::Error)> {
    let mut failed = Vec::new();
    let mut candidates = vec![file.to_path_buf()];
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let (Some(dir), false) = (file.parent(), name.is_empty()) {
        // virtlogd's rotation: `<name>.0` up to `<name>.<max_backups - 1>`.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let other = entry.file_name().to_string_lossy().into_owned();
                let rotated = other
                    .strip_prefix(&name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if rotated {
                    candidates.push(entry.path());
                }
            }
        }
    }
    for f in candidates {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failed.push((f, e)),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_by_id_in_the_dir() {
        let dir = Path::new("/var/log/libvirt/qemu");
        let p = path(dir, "i-0123");
        assert_eq!(p, Path::new("/var/log/libvirt/qemu/i-0123-serial.log"));
        assert!(is_ours(dir, "i-0123", &p));
        assert!(!is_ours(dir, "i-0124", &p));
        assert!(!is_ours(dir, "i-0123", Path::new("/etc/passwd")));
        assert!(!is_ours(
            dir,
            "i-0123",
            Path::new("/var/log/libvirt/qemu/../i-0123-serial.log")
        ));
    }

    #[test]
    fn removes_the_file_and_its_rotations_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "i-1");
        for name in [
            "i-1-serial.log",
            "i-1-serial.log.0",
            "i-1-serial.log.2",
            "i-1-serial.log.bak",
            "i-1-serial.log.",
            "i-10-serial.log",
            "i-1.log",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert!(remove(&file).is_empty());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "i-1-serial.log.",
                "i-1-serial.log.bak",
                "i-1.log",
                "i-10-serial.log"
            ]
        );
        // Already gone: nothing to report.
        assert!(remove(&file).is_empty());
    }
}
