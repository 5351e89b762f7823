//! Scans plugin directories and loads every plugin file found.
//!
//! Each file is copied to a private path and loaded from there, then the copy is
//! removed (the mapping stays). So a file replaced by a newer build loads as a new
//! library, and a build in progress never changes a library in use. Libraries are
//! never unloaded.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use unicompute_plugin_api::load::{load_plugin, LoadedPlugin, LogFn};
use unicompute_plugin_api::Handshake;

/// A file and its modification time and size (none when it cannot be read).
pub type Fingerprinted = (PathBuf, Option<(std::time::SystemTime, u64)>);

/// What loading one file gave.
#[derive(Debug, Clone)]
pub struct ScanEntry {
    /// The file in the plugin directory.
    pub path: PathBuf,
    /// Modification time and size when loaded: a changed file is loaded again.
    pub fingerprint: Option<(std::time::SystemTime, u64)>,
    /// Unique per load: a backend whose plugin has a new load id is made anew.
    pub load_id: u64,
    /// The plugin, or why the file was skipped.
    pub outcome: Result<LoadedPlugin, String>,
}

fn fingerprint(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

static COPY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The log a plugin writes to: the host's, each line tagged with the plugin's name.
fn host_logger(handshake: &Handshake) -> LogFn {
    let plugin = handshake.name.clone();
    Arc::new(move |level: u8, target: &str, message: &str| match level {
        1 => tracing::error!(target: "plugin", plugin = %plugin, module = %target, "{message}"),
        2 => tracing::warn!(target: "plugin", plugin = %plugin, module = %target, "{message}"),
        3 => tracing::info!(target: "plugin", plugin = %plugin, module = %target, "{message}"),
        4 => tracing::debug!(target: "plugin", plugin = %plugin, module = %target, "{message}"),
        _ => tracing::trace!(target: "plugin", plugin = %plugin, module = %target, "{message}"),
    })
}

/// Whether a file is a candidate plugin (`*.so`); other files in a plugin directory
/// are skipped quietly.
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "so")
}

/// Loads one plugin file through a private copy.
pub fn load_file(path: &Path) -> Result<LoadedPlugin, String> {
    if !is_plugin_file(path) {
        return Err("not a shared library (*.so)".into());
    }
    let private = std::env::temp_dir().join(format!(
        "unicompute-{}-{}-{}",
        std::process::id(),
        COPY_COUNTER.fetch_add(1, Ordering::Relaxed),
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin.so")
    ));
    std::fs::copy(path, &private).map_err(|e| format!("cannot copy for loading: {e}"))?;
    let result = load_plugin(&private, host_logger);
    let _ = std::fs::remove_file(&private);
    crate::metrics::plugin_load(result.is_ok());
    result
        .map(|mut p| {
            p.path = path.to_owned();
            p
        })
        .map_err(|e| {
            // One line, naming the file the user put there rather than our copy.
            let text = e
                .to_string()
                .replace(&*private.to_string_lossy(), &path.to_string_lossy());
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        })
}

/// The files of the directories as [`rescan`] takes them (directory order, then
/// file-name order), each with its fingerprint.
pub fn listing(dirs: &[PathBuf]) -> Vec<Fingerprinted> {
    dirs.iter()
        .flat_map(|dir| files_of(dir))
        .map(|path| {
            let fp = fingerprint(&path);
            (path, fp)
        })
        .collect()
}

/// The files of one directory, sorted; none when it cannot be read.
fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "plugin directory not readable");
            return Vec::new();
        }
    };
    files.sort();
    files
}

/// Loads every file of the directories, in directory order then file-name order. A
/// plugin name already loaded from an earlier file is skipped.
pub fn scan(dirs: &[PathBuf]) -> Vec<ScanEntry> {
    rescan(dirs, &[])
}

/// As [`scan`], reusing what `previous` loaded from files that have not changed since.
/// A new or changed file is loaded (through a new private copy).
pub fn rescan(dirs: &[PathBuf], previous: &[ScanEntry]) -> Vec<ScanEntry> {
    let mut out: Vec<ScanEntry> = Vec::new();
    for dir in dirs {
        for path in files_of(dir) {
            let fp = fingerprint(&path);
            if let Some(old) = previous
                .iter()
                .find(|e| e.path == path && e.fingerprint == fp && fp.is_some())
            {
                out.push(old.clone());
                continue;
            }
            let outcome = load_file(&path).and_then(|p| {
                match out.iter().find_map(|e| {
                    e.outcome
                        .as_ref()
                        .ok()
                        .filter(|q| q.handshake.name == p.handshake.name)
                }) {
                    Some(first) => Err(format!(
                        "plugin {} is already loaded from {}",
                        p.handshake.name,
                        first.path.display()
                    )),
                    None => Ok(p),
                }
            });
            match &outcome {
                Ok(p) => tracing::info!(
                    file = %path.display(),
                    plugin = %p.handshake.name,
                    kind = %p.handshake.kind,
                    version = %p.handshake.version,
                    interface = %p.handshake.interface_version,
                    "plugin loaded"
                ),
                // Other files beside the plugins (a build's target directory) are
                // normal: said, not warned about.
                Err(reason) if !is_plugin_file(&path) => {
                    tracing::info!(file = %path.display(), %reason, "plugin file skipped")
                }
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "plugin file skipped")
                }
            }
            out.push(ScanEntry {
                path,
                fingerprint: fp,
                load_id: COPY_COUNTER.fetch_add(1, Ordering::Relaxed),
                outcome,
            });
        }
    }
    out
}
