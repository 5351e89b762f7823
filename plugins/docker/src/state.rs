//! What the backend keeps beside the engine: the time of the last change made through
//! the API to each instance (Docker labels cannot change after create, and the engine
//! records no time for a pause or an update), so that `updatedAt` never goes back,
//! also across a restart of the server.
//!
//! One JSON file per backend, `<state_dir>/<backend>.json`: `{"updatedAt": {"<id>":
//! "<RFC 3339>"}}`, rewritten whole on each change (write to a temporary file, sync,
//! rename). An unreadable file is logged and treated as empty; a failed write is
//! logged and the time kept in memory.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use unicompute_plugin_api::sync::lock;

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    updated_at: HashMap<String, DateTime<Utc>>,
}

/// The last change made through the API, per instance, kept in a file.
pub struct ChangeTimes {
    path: PathBuf,
    map: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// A backend's name as a file name.
fn file_name(backend: &str) -> String {
    let safe: String = backend
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.json")
}

impl ChangeTimes {
    /// Reads what is kept for `backend` under `dir`.
    pub fn load(dir: &Path, backend: &str) -> ChangeTimes {
        let path = dir.join(file_name(backend));
        let map = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f.updated_at,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable docker state file; starting empty");
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the docker state file");
                HashMap::new()
            }
        };
        ChangeTimes {
            path,
            map: Mutex::new(map),
        }
    }

    /// The last change recorded for `id`.
    pub fn get(&self, id: &str) -> Option<DateTime<Utc>> {
        lock(&self.map).get(id).copied()
    }

    /// Records a change of `id` at `at` (never moving the record back).
    pub fn record(&self, id: &str, at: DateTime<Utc>) {
        let mut map = lock(&self.map);
        let e = map.entry(id.to_owned()).or_insert(at);
        if *e < at {
            *e = at;
        }
        self.save(&map);
    }

    /// Forgets `id` (deleted).
    pub fn remove(&self, id: &str) {
        let mut map = lock(&self.map);
        if map.remove(id).is_some() {
            self.save(&map);
        }
    }

    /// Keeps only the ids for which `keep` holds.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|k, _| keep(k));
        if map.len() != before {
            self.save(&map);
        }
    }

    /// Writes the file whole: a temporary file, synced, renamed over the old one. Called
    /// with the map locked, so writes do not interleave.
    fn save(&self, map: &HashMap<String, DateTime<Utc>>) {
        if let Err(e) = self.try_save(map) {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot write the docker state file");
        }
    }

    fn try_save(&self, map: &HashMap<String, DateTime<Utc>>) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let body = serde_json::to_vec(&File {
            updated_at: map.clone(),
        })
        .map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_survive_a_reload_never_go_back_and_are_removed() {
        let dir = std::env::temp_dir().join(format!("uc-state-{}", uuid::Uuid::new_v4().simple()));
        let t = ChangeTimes::load(&dir, "docker/x");
        let now = Utc::now();
        t.record("i-1", now);
        t.record("i-1", now - chrono::Duration::seconds(5));
        t.record("i-2", now);
        let again = ChangeTimes::load(&dir, "docker/x");
        assert_eq!(again.get("i-1"), Some(now));
        again.remove("i-2");
        assert_eq!(ChangeTimes::load(&dir, "docker/x").get("i-2"), None);
        std::fs::write(dir.join("docker_x.json"), "not json").unwrap();
        assert_eq!(ChangeTimes::load(&dir, "docker/x").get("i-1"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
