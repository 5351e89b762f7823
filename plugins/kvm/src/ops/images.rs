//! Templates through the API (interface 1.2): uploads staged in the templates
//! directory, checked with `qemu-img info` and made visible without replacing
//! anything; deletes refused while a domain of this backend uses the template; and
//! the cancel flags of raw disk copies at create ([`Cancels`]).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::{Image, UploadRequest, UploadTarget};

use crate::backend::Inner;
use crate::error::{KvmError, Result};
use crate::storage::{self, EXTENSIONS};

/// The cancel flags of the work running under an operation token.
#[derive(Default)]
pub(crate) struct Cancels(Mutex<HashMap<String, Arc<AtomicBool>>>);

impl Cancels {
    /// A flag for `operation`, listed until the guard is dropped.
    pub(crate) fn register(&self, operation: &str) -> Cancellable<'_> {
        let flag = Arc::new(AtomicBool::new(false));
        lock(&self.0).insert(operation.to_owned(), Arc::clone(&flag));
        Cancellable {
            cancels: self,
            operation: operation.to_owned(),
            flag,
        }
    }

    /// Sets the flag of `operation`; whether there was one.
    pub(crate) fn cancel(&self, operation: &str) -> bool {
        match lock(&self.0).get(operation) {
            Some(flag) => {
                flag.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

/// A registered cancel flag.
pub(crate) struct Cancellable<'a> {
    cancels: &'a Cancels,
    operation: String,
    pub(crate) flag: Arc<AtomicBool>,
}

impl Cancellable<'_> {
    /// Unlists the flag, then answers whether it was set: once unlisted, a cancel
    /// answers `false`, so a `true` answer always means the work failed `CANCELLED`.
    pub(crate) fn finish(self) -> Result<()> {
        lock(&self.cancels.0).remove(&self.operation);
        if self.flag.load(Ordering::SeqCst) {
            Err(KvmError::Cancelled(self.operation.clone()))
        } else {
            Ok(())
        }
    }
}

impl Drop for Cancellable<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.cancels.0);
        if map
            .get(&self.operation)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flag))
        {
            map.remove(&self.operation);
        }
    }
}

/// Whether an operation token is safe in a file name: 1-128 of `[A-Za-z0-9_-]`.
fn check_operation(operation: &str) -> Result<()> {
    let ok = !operation.is_empty()
        && operation.len() <= 128
        && operation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KvmError::InvalidRequest(
            "the operation token must be 1-128 letters, digits, '-' or '_'".into(),
        ))
    }
}

/// The staged file of an upload: hidden (`.upload-<operation>.part`), so neither
/// the templates listing, nor a template lookup, nor the orphan sweep sees it.
pub fn staged_name(operation: &str) -> String {
    format!(".upload-{operation}.part")
}

/// What `qemu-img info --output=json` says that counts here.
#[derive(Debug, serde::Deserialize)]
struct Info {
    format: String,
    #[serde(rename = "backing-filename", default)]
    backing: Option<String>,
    #[serde(rename = "full-backing-filename", default)]
    full_backing: Option<String>,
    #[serde(rename = "format-specific", default)]
    specific: Option<serde_json::Value>,
}

/// The format of an uploaded file, when it is an acceptable template: a qcow2
/// without a backing file or an external data file, or raw (a whole number of
/// 512-byte sectors). Anything else is `INVALID_REQUEST` saying why.
fn check_image(path: &Path) -> Result<&'static str> {
    let len = std::fs::symlink_metadata(path)
        .map_err(|source| KvmError::Io {
            what: "reading the uploaded file",
            source,
        })?
        .len();
    if len == 0 {
        return Err(KvmError::InvalidRequest(
            "the upload is empty, not a disk image".into(),
        ));
    }
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .map_err(|source| KvmError::Io {
            what: "running qemu-img",
            source,
        })?;
    if !out.status.success() {
        return Err(KvmError::InvalidRequest(format!(
            "the upload is not a readable disk image: {}",
            storage_message(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    let info: Info = serde_json::from_slice(&out.stdout).map_err(|e| KvmError::Tool {
        tool: "qemu-img",
        message: format!("unreadable info: {e}"),
    })?;
    match info.format.as_str() {
        "qcow2" => {
            if info.backing.is_some() || info.full_backing.is_some() {
                return Err(KvmError::InvalidRequest(
                    "the upload is a qcow2 image with a backing file; only standalone images \
                     are accepted (qemu-img convert -O qcow2 makes one)"
                        .into(),
                ));
            }
            let data_file = info
                .specific
                .as_ref()
                .and_then(|s| s.pointer("/data/data-file"))
                .is_some();
            if data_file {
                return Err(KvmError::InvalidRequest(
                    "the upload is a qcow2 image with an external data file; only standalone \
                     images are accepted"
                        .into(),
                ));
            }
            Ok("qcow2")
        }
        "raw" if len % 512 == 0 => Ok("raw"),
        "raw" => Err(KvmError::InvalidRequest(format!(
            "the upload is not a disk image: neither qcow2 nor a raw image (its {len} bytes \
             are not a whole number of 512-byte sectors)"
        ))),
        other => Err(KvmError::InvalidRequest(format!(
            "the upload is a {other} image; only qcow2 and raw templates are accepted"
        ))),
    }
}

/// qemu-img's complaint without the file's path.
fn storage_message(stderr: &str) -> String {
    crate::error::scrub_paths(stderr.trim())
}

/// Removes a file; missing is fine.
fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KvmError::Io {
            what: "removing a staged upload",
            source,
        }),
    }
}

impl Inner {
    /// The templates directory, canonical (made when missing).
    fn templates_dir(&self) -> Result<PathBuf> {
        let dir = &self.config.templates_dir;
        std::fs::create_dir_all(dir).map_err(|source| KvmError::Io {
            what: "making the templates directory",
            source,
        })?;
        dir.canonicalize().map_err(|source| KvmError::Io {
            what: "reading the templates directory",
            source,
        })
    }

    /// Whether any file of the template `name` is there (also a dangling link).
    fn template_taken(dir: &Path, name: &str) -> bool {
        EXTENSIONS
            .iter()
            .any(|ext| std::fs::symlink_metadata(dir.join(format!("{name}.{ext}"))).is_ok())
    }

    /// Checks an upload's name and token; answers the templates directory and the
    /// staged file's path.
    fn staged(&self, request: &UploadRequest) -> Result<(PathBuf, PathBuf)> {
        storage::check_template_name(&request.name)?;
        check_operation(&request.operation)?;
        let dir = self.templates_dir()?;
        let staged = dir.join(staged_name(&request.operation));
        Ok((dir, staged))
    }

    pub(crate) fn upload_begin(&self, request: &UploadRequest) -> Result<UploadTarget> {
        let (dir, staged) = self.staged(request)?;
        if Self::template_taken(&dir, &request.name) {
            return Err(KvmError::ImageExists(request.name.clone()));
        }
        let max_bytes = self.config.max_template_bytes;
        if let Some(size) = request.size.filter(|s| *s > max_bytes) {
            return Err(KvmError::ResourceLimit {
                field: "size",
                requested: size,
                limit: max_bytes,
                of: "max_template_bytes",
            });
        }
        tracing::info!(template = %request.name, operation = %request.operation, "upload begins");
        Ok(UploadTarget {
            path: staged.to_string_lossy().into_owned(),
            max_bytes,
        })
    }

    pub(crate) fn upload_commit(&self, request: &UploadRequest) -> Result<Image> {
        let (dir, staged) = self.staged(request)?;
        let result = self.commit_staged(request, &dir, &staged);
        // Whatever happened, the staged name is gone (it is the final file's second
        // link after a commit).
        let _ = remove(&staged);
        if let Err(e) = &result {
            tracing::info!(template = %request.name, error = %e, "upload refused");
        }
        result
    }

    fn commit_staged(&self, request: &UploadRequest, dir: &Path, staged: &Path) -> Result<Image> {
        match std::fs::symlink_metadata(staged) {
            Ok(m) if m.file_type().is_file() => {
                if m.len() > self.config.max_template_bytes {
                    return Err(KvmError::ResourceLimit {
                        field: "size",
                        requested: m.len(),
                        limit: self.config.max_template_bytes,
                        of: "max_template_bytes",
                    });
                }
            }
            Ok(_) => {
                return Err(KvmError::InvalidRequest(
                    "the staged upload is not a regular file".into(),
                ))
            }
            Err(_) => {
                return Err(KvmError::InvalidRequest(
                    "no upload is staged for this operation".into(),
                ))
            }
        }
        let format = check_image(staged)?;
        if Self::template_taken(dir, &request.name) {
            return Err(KvmError::ImageExists(request.name.clone()));
        }
        let _ = std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o644));
        let target = dir.join(format!("{}.{format}", request.name));
        // A second link, then the staged name removed (by the caller): never
        // replaces a file that appeared in the meantime.
        std::fs::hard_link(staged, &target).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KvmError::ImageExists(request.name.clone())
            } else {
                KvmError::Io {
                    what: "keeping the uploaded template",
                    source,
                }
            }
        })?;
        // Another extension of the same name made between the check and the link:
        // ours goes, the first one stays.
        let others = EXTENSIONS.iter().filter(|ext| **ext != format).any(|ext| {
            std::fs::symlink_metadata(dir.join(format!("{}.{ext}", request.name))).is_ok()
        });
        if others {
            let _ = std::fs::remove_file(&target);
            return Err(KvmError::ImageExists(request.name.clone()));
        }
        self.refresh_template_pool(dir);
        tracing::info!(template = %request.name, format, "template uploaded");
        storage::find_template(dir, &request.name).map(|t| t.to_image())
    }

    /// Refreshes a libvirt pool over the templates directory, when there is one.
    fn refresh_template_pool(&self, dir: &Path) {
        let Ok(conn) = self.connect() else { return };
        let Ok(pools) = conn.list_all_storage_pools(0) else {
            return;
        };
        for pool in pools {
            let over = storage::pool_dir(&pool)
                .and_then(|d| d.canonicalize().ok())
                .is_some_and(|d| d == dir);
            if over && pool.is_active().unwrap_or(false) {
                let _ = pool.refresh(0);
            }
        }
    }

    pub(crate) fn upload_abort(&self, request: &UploadRequest) -> Result<()> {
        let (_, staged) = self.staged(request)?;
        remove(&staged)
    }

    pub(crate) fn delete_image(&self, name: &str) -> Result<()> {
        storage::check_template_name(name)?;
        let dir = self.templates_dir()?;
        let template = match storage::find_template(&dir, name) {
            Ok(t) => t,
            Err(KvmError::UnknownTemplate { .. }) => {
                return Err(KvmError::ImageNotFound(name.to_owned()))
            }
            Err(e) => return Err(e),
        };
        // In use: a domain of this backend made from this name, or from another name
        // (an alias) of the same file.
        let conn = self.connect()?;
        let users: Vec<String> = self
            .scan(&conn)?
            .into_iter()
            .filter(|f| {
                f.meta.config.image == name
                    || storage::find_template(&dir, &f.meta.config.image)
                        .is_ok_and(|t| t.path == template.path)
            })
            .map(|f| f.meta.id)
            .collect();
        if !users.is_empty() {
            return Err(KvmError::ImageInUse {
                name: name.to_owned(),
                instances: users,
            });
        }
        std::fs::remove_file(dir.join(&template.file)).map_err(|source| KvmError::Io {
            what: "removing the template",
            source,
        })?;
        self.refresh_template_pool(&dir);
        tracing::info!(template = %name, "template deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_tokens_are_plain() {
        for good in ["op-1", "0123abcd", "a_b"] {
            assert!(check_operation(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", "a.b", "x y", &"a".repeat(129)] {
            assert!(check_operation(bad).is_err(), "{bad}");
        }
        assert_eq!(staged_name("op-1"), ".upload-op-1.part");
        // Hidden: no template name can be it.
        assert!(storage::check_template_name(&staged_name("op-1")).is_err());
    }

    #[test]
    fn a_cancel_after_the_work_finished_is_no_cancel() {
        let c = Cancels::default();
        let reg = c.register("op");
        assert!(c.cancel("op"));
        assert!(matches!(reg.finish(), Err(KvmError::Cancelled(_))));
        assert!(!c.cancel("op"));
        let reg = c.register("op2");
        assert!(reg.finish().is_ok());
        assert!(!c.cancel("op2"));
    }
}
