//! Where the fake keeps its instances: one JSON file per instance (`<id>.json`, the
//! serialized [`Instance`]) in its `state_dir`, written atomically (a temporary file,
//! then a rename), so that a new backend made from the same settings (a reload, a
//! restart of the server) finds them again. Built with the `memory-only` feature, the
//! fake keeps nothing: the deliberate mistake that the conformance check's
//! durability step must catch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use unicompute_plugin_api::{Instance, PluginError};

/// The records of one backend.
pub(crate) struct Store {
    /// None when built `memory-only`.
    dir: Option<PathBuf>,
}

/// A name safe as a file name (the host's ids are `i-` and hex digits).
fn plain(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The default `state_dir`: under the system's temp dir, one per working directory
/// of the server (a hash of it) and backend name, so that two servers started in
/// different directories (the tests') never share records, and a server restarted in
/// the same directory finds its own.
pub(crate) fn default_dir(backend: &str) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cwd.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    std::env::temp_dir()
        .join("unicompute-fake")
        .join(format!("{h:016x}"))
        .join(backend)
}

impl Store {
    /// Opens (makes) `dir`; `dir` relative is taken from the working directory.
    pub(crate) fn open(dir: &Path) -> Result<Store, PluginError> {
        if cfg!(feature = "memory-only") {
            return Ok(Store { dir: None });
        }
        let dir = std::path::absolute(dir)
            .map_err(|e| PluginError::config(format!("state_dir {}: {e}", dir.display())))?;
        std::fs::create_dir_all(&dir).map_err(|e| {
            PluginError::config(format!("state_dir {}: cannot make it: {e}", dir.display()))
        })?;
        Ok(Store { dir: Some(dir) })
    }

    /// Every record kept; a file that does not parse is skipped with a warning.
    pub(crate) fn load(&self) -> HashMap<String, Instance> {
        let mut out = HashMap::new();
        let Some(dir) = &self.dir else {
            return out;
        };
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Instance>(&b).map_err(|e| e.to_string()))
            {
                Ok(i) => {
                    out.insert(i.id.clone(), i);
                }
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "record skipped"),
            }
        }
        out
    }

    /// Keeps `inst` (replacing its earlier record).
    pub(crate) fn save(&self, inst: &Instance) -> Result<(), PluginError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if !plain(&inst.id) {
            return Err(PluginError::invalid(format!(
                "id {:?} is not a plain name",
                inst.id
            )));
        }
        let bytes = serde_json::to_vec_pretty(inst)
            .map_err(|e| PluginError::internal(format!("record of {}: {e}", inst.id)))?;
        let tmp = dir.join(format!(".{}.json.{}.tmp", inst.id, std::process::id()));
        let done = dir.join(format!("{}.json", inst.id));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &done))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                PluginError::backend(format!("cannot keep the record of {}: {e}", inst.id))
            })
    }

    /// Forgets the record of `id`.
    pub(crate) fn remove(&self, id: &str) {
        if let (Some(dir), true) = (&self.dir, plain(id)) {
            let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
        }
    }
}
