//! Templates (files in `templates_dir`) and instance volumes (in a libvirt `dir`
//! storage pool over `storage_dir`): the pool made and kept track of, disks and
//! cloud-init seeds made, volumes deleted.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::Image;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use crate::error::{KvmError, LibvirtOp};
use crate::xml::{PoolDoc, PoolXml, VolumeXml};

/// Template file extensions, in order of preference.
pub const EXTENSIONS: [&str; 3] = ["qcow2", "img", "raw"];

/// A template image.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its name (the file name less the extension).
    pub name: String,
    /// Its file in the templates directory (`<name>.<ext>`).
    pub file: String,
    /// Where it really is (symlinks resolved, inside the templates directory).
    pub path: PathBuf,
    /// `qcow2` or `raw`, from the file's header.
    pub format: &'static str,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Size of the file.
    pub file_size: u64,
    /// Modification time.
    pub modified: Option<DateTime<Utc>>,
}

impl Template {
    /// As an image of the images endpoint.
    pub fn to_image(&self) -> Image {
        Image {
            name: self.name.clone(),
            id: Some(self.file.clone()),
            size: Some(self.virtual_size),
            format: Some(self.format.to_owned()),
            created_at: self.modified,
        }
    }
}

/// Whether `name` is a plain template name (no path, no dot-dot, no hidden file).
pub fn check_template_name(name: &str) -> Result<(), KvmError> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.contains("..");
    if plain {
        Ok(())
    } else {
        Err(KvmError::InvalidRequest(format!(
            "image must be a plain template name, not {name:?}"
        )))
    }
}

/// Reads a template's format and virtual size from its header.
fn probe(path: &Path) -> std::io::Result<(&'static str, u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut head = [0u8; 32];
    let n = f.read(&mut head)?;
    if n >= 32 && head[..4] == *b"QFI\xfb" {
        let mut size = [0u8; 8];
        size.copy_from_slice(&head[24..32]);
        Ok(("qcow2", u64::from_be_bytes(size), meta.len()))
    } else {
        Ok(("raw", meta.len(), meta.len()))
    }
}

fn template_at(name: &str, file: String, path: PathBuf) -> Option<Template> {
    let (format, virtual_size, file_size) = probe(&path).ok()?;
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .map(DateTime::<Utc>::from);
    Some(Template {
        name: name.to_owned(),
        file,
        path,
        format,
        virtual_size,
        file_size,
        modified,
    })
}

/// Where `path` (a name in the templates directory) really is, when that is a
/// regular file inside the (canonical) templates directory `dir`: symlinks are
/// followed, and one that leads out of the directory (`../secret`, `/etc/x`) is no
/// template. A link to another file inside the directory (an alias) is one; the
/// canonical path is what the instance's disk is made from, so a link changed later
/// does not change existing overlays' backing file.
pub fn resolve_inside(dir: &Path, path: &Path) -> Option<PathBuf> {
    let real = path.canonicalize().ok()?;
    (real.starts_with(dir) && real.is_file()).then_some(real)
}

/// Every template in `dir`, by name. A missing directory has none. The one rule of
/// [`find_template`] decides what is listed.
pub fn list_templates(dir: &Path) -> Result<Vec<Template>, KvmError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KvmError::Io {
                what: "listing templates",
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let (stem, ext) = file.rsplit_once('.')?;
            (EXTENSIONS.contains(&ext) && check_template_name(stem).is_ok())
                .then(|| stem.to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names
        .iter()
        .filter_map(|n| find_in(dir, n))
        .collect::<Vec<_>>())
}

/// The template `name` in `dir`: the first of `<name>.qcow2`, `.img`, `.raw` that
/// resolves to a regular file inside the directory ([`resolve_inside`]).
fn find_in(dir: &Path, name: &str) -> Option<Template> {
    let dir = dir.canonicalize().ok()?;
    EXTENSIONS
        .iter()
        .find_map(|ext| {
            let file = format!("{name}.{ext}");
            resolve_inside(&dir, &dir.join(&file)).map(|p| (file, p))
        })
        .and_then(|(file, p)| template_at(name, file, p))
}

/// The template called `name`, or an error listing what exists.
pub fn find_template(dir: &Path, name: &str) -> Result<Template, KvmError> {
    check_template_name(name)?;
    find_in(dir, name).ok_or_else(|| KvmError::UnknownTemplate {
        name: name.to_owned(),
        available: list_templates(dir)
            .map(|t| t.into_iter().map(|t| t.name).collect())
            .unwrap_or_default(),
    })
}

/// The instance pool: found, started when inactive, or defined over `dir`.
pub fn ensure_pool(conn: &Connect, name: &str, dir: &Path) -> Result<StoragePool, KvmError> {
    match conn.lookup_storage_pool_by_name(name) {
        Ok(pool) => {
            if !pool
                .is_active()
                .map_err(KvmError::libvirt(LibvirtOp::CheckPool))?
            {
                // Its directory may be gone (a cleaned /var/tmp): make it again first.
                let _ = pool.build(0);
                pool.create(0)
                    .map_err(KvmError::libvirt(LibvirtOp::StartPool))?;
            }
            Ok(pool)
        }
        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => {
            std::fs::create_dir_all(dir).map_err(|source| KvmError::Io {
                what: "creating the storage directory",
                source,
            })?;
            let xml = PoolXml::dir(name, &dir.to_string_lossy()).to_xml()?;
            let pool = conn
                .define_storage_pool_xml(&xml, 0)
                .map_err(KvmError::libvirt(LibvirtOp::DefinePool))?;
            let _ = pool.build(0);
            pool.create(0)
                .map_err(KvmError::libvirt(LibvirtOp::StartPool))?;
            let _ = pool.set_autostart(true);
            tracing::info!(pool = %name, "storage pool created");
            Ok(pool)
        }
        Err(source) => Err(KvmError::Libvirt {
            op: LibvirtOp::LookUpPool,
            source,
        }),
    }
}

/// The instance pool as last made sure of: the connection generation for which it
/// is known to be there, and its directory.
#[derive(Default)]
pub(crate) struct KnownPool(Mutex<Option<(u64, PathBuf)>>);

impl KnownPool {
    /// The pool `name` and its directory (which is `dir` unless the pool existed
    /// before with another one), made or started when needed: checked again on a
    /// new connection (`generation`) or when it was stopped.
    pub(crate) fn get(
        &self,
        conn: &Connect,
        generation: u64,
        name: &str,
        dir: &Path,
    ) -> Result<(StoragePool, PathBuf), KvmError> {
        let mut known = lock(&self.0);
        if let Some((g, known_dir)) = &*known {
            if *g == generation {
                if let Ok(pool) = conn.lookup_storage_pool_by_name(name) {
                    // Stopped by hand (virsh pool-destroy): started again below.
                    if pool.is_active().unwrap_or(false) {
                        return Ok((pool, known_dir.clone()));
                    }
                }
            }
        }
        let pool = ensure_pool(conn, name, dir)?;
        let pool_dir = pool_dir(&pool).unwrap_or_else(|| dir.to_owned());
        if pool_dir != dir {
            tracing::warn!(pool = %name, "the storage pool exists with another directory than storage_dir; using the pool's");
        }
        *known = Some((generation, pool_dir.clone()));
        Ok((pool, pool_dir))
    }
}

/// A pool's directory, from its XML.
pub fn pool_dir(pool: &StoragePool) -> Option<PathBuf> {
    pool.xml_desc(0)
        .ok()
        .and_then(|x| PoolDoc::parse(&x).ok())
        .and_then(|d| d.path().map(PathBuf::from))
}

/// The path of a volume just made. When libvirt cannot say, the volume is deleted
/// (nothing else knows of it) and `op` fails.
pub(crate) fn volume_path(vol: &StorageVol, op: LibvirtOp) -> Result<String, KvmError> {
    vol.path().map_err(|source| {
        let _ = vol.delete(0);
        KvmError::Libvirt { op, source }
    })
}

/// What a raw copy reports to and listens to: a create with an operation token.
pub struct CopyWatch<'a> {
    /// The operation token, for the error when cancelled.
    pub operation: &'a str,
    /// Called with bytes done and bytes in all, at most every
    /// [`PROGRESS_EVERY`] and once at the end.
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
    /// Set by `cancel`: the copy stops and the create fails with `CANCELLED`.
    pub cancel: &'a AtomicBool,
}

/// The least time between two progress reports of a copy.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The percentage in a line of `qemu-img convert -p`'s output (`    (42.17/100%)`).
pub fn parse_progress(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
}

/// `qemu-img convert` of `template` into the raw file `dest`; with a watch, with
/// `-p`, its percentage turned into bytes of the template's virtual size, and
/// killed when the watch's cancel flag is set.
fn convert(
    template: &Template,
    dest: &Path,
    watch: Option<&CopyWatch<'_>>,
) -> Result<(), KvmError> {
    let mut cmd = Command::new("qemu-img");
    cmd.arg("convert");
    if watch.is_some() {
        cmd.arg("-p");
    }
    cmd.args(["-f", template.format, "-O", "raw"])
        .arg(&template.path)
        .arg(dest);
    let Some(watch) = watch else {
        return run(&mut cmd);
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| KvmError::Io {
            what: "running qemu-img",
            source,
        })?;
    let (tx, rx) = mpsc::channel::<f64>();
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let Some(out) = stdout.as_mut() else { return };
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while let Ok(1) = out.read(&mut byte) {
            if byte[0] == b'\r' || byte[0] == b'\n' {
                if let Some(p) = parse_progress(&String::from_utf8_lossy(&line)) {
                    let _ = tx.send(p);
                }
                line.clear();
            } else {
                line.push(byte[0]);
            }
        }
    });
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let total = template.virtual_size;
    let mut last: Option<Instant> = None;
    let mut latest = 0.0f64;
    let status = loop {
        if watch.cancel.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            let _ = errors.join();
            return Err(KvmError::Cancelled(watch.operation.to_owned()));
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(p) => latest = p,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20))
            }
        }
        if last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) && latest > 0.0 && latest < 100.0 {
            (watch.progress)((latest / 100.0 * total as f64) as u64, total);
            last = Some(Instant::now());
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KvmError::Io {
                    what: "waiting for qemu-img",
                    source,
                });
            }
        }
    };
    let _ = reader.join();
    let message = errors.join().unwrap_or_default();
    if status.success() {
        (watch.progress)(total, total);
        Ok(())
    } else {
        Err(KvmError::Tool {
            tool: "qemu-img",
            message: message.trim().to_owned(),
        })
    }
}

/// Makes an instance's disk volume from a template: a qcow2 overlay or a raw copy
/// (reporting to `watch`, and stopped by it, when there is one).
pub fn create_disk(
    pool: &StoragePool,
    pool_dir: &Path,
    vol_name: &str,
    template: &Template,
    format: &str,
    size: u64,
    watch: Option<&CopyWatch<'_>>,
) -> Result<StorageVol, KvmError> {
    if format == "qcow2" {
        let path = template.path.to_string_lossy();
        let xml =
            VolumeXml::new(vol_name, size, "qcow2", Some((&path, template.format))).to_xml()?;
        return StorageVol::create_xml(pool, &xml, 0)
            .map_err(KvmError::libvirt(LibvirtOp::CreateDiskVolume));
    }
    let dest = pool_dir.join(vol_name);
    let result = (|| {
        convert(template, &dest, watch)?;
        run(Command::new("qemu-img")
            .args(["resize", "-f", "raw"])
            .arg(&dest)
            .arg(size.to_string()))?;
        pool.refresh(0)
            .map_err(KvmError::libvirt(LibvirtOp::RefreshPool))?;
        pool.lookup_storage_vol_by_name(vol_name)
            .map_err(KvmError::libvirt(LibvirtOp::LookUpDiskVolume))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&dest);
    }
    result
}

fn run(cmd: &mut Command) -> Result<(), KvmError> {
    let out = cmd.output().map_err(|source| KvmError::Io {
        what: "running qemu-img",
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KvmError::Tool {
            tool: "qemu-img",
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Makes the seed volume: a raw volume of the image's size, its bytes uploaded over a
/// libvirt stream (so that a remote libvirt works too). Drivers without uploads
/// (`test:///`) get the file written in place. Returns the volume's path.
pub fn create_seed(
    conn: &Connect,
    pool: &StoragePool,
    vol_name: &str,
    image: &[u8],
) -> Result<String, KvmError> {
    let xml = VolumeXml::new(vol_name, image.len() as u64, "raw", None).to_xml()?;
    let vol = StorageVol::create_xml(pool, &xml, 0)
        .map_err(KvmError::libvirt(LibvirtOp::CreateSeedVolume))?;
    let path = volume_path(&vol, LibvirtOp::ReadSeedVolumePath)?;
    let result = match upload(conn, &vol, image) {
        Ok(()) => Ok(()),
        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SUPPORT => std::fs::write(&path, image)
            .map_err(|source| KvmError::Io {
                what: "writing the seed image",
                source,
            }),
        Err(source) => Err(KvmError::Libvirt {
            op: LibvirtOp::UploadSeed,
            source,
        }),
    };
    match result {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = vol.delete(0);
            Err(e)
        }
    }
}

fn upload(conn: &Connect, vol: &StorageVol, data: &[u8]) -> Result<(), virt::error::Error> {
    let stream = Stream::new(conn, 0)?;
    if let Err(e) = vol.upload(&stream, 0, data.len() as u64, 0) {
        let _ = stream.abort();
        return Err(e);
    }
    for chunk in data.chunks(256 << 10) {
        let mut sent = 0;
        while sent < chunk.len() {
            match stream.send(&chunk[sent..]) {
                Ok(n) if n > 0 => sent += n as usize,
                Ok(_) => {
                    let _ = stream.abort();
                    return Err(virt::error::Error::last_error());
                }
                Err(e) => {
                    let _ = stream.abort();
                    return Err(e);
                }
            }
        }
    }
    stream.finish()
}

/// Whether a libvirt URI names this host (`qemu:///system`, `test:///...`), so that
/// volume paths are local files.
pub fn uri_is_local(uri: &str) -> bool {
    match uri.split_once("://") {
        Some((_, rest)) => rest.starts_with('/'),
        None => true,
    }
}

/// Deletes a volume by path through libvirt; with `local` files, also the file (a
/// driver like `test:///` keeps volumes in memory only). Missing is fine.
pub fn delete_volume(conn: &Connect, path: &str, local: bool) -> Result<(), KvmError> {
    match conn.lookup_storage_vol_by_path(path) {
        Ok(vol) => match vol.delete(0) {
            Ok(()) => {}
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_VOL => {}
            Err(source) => {
                return Err(KvmError::Libvirt {
                    op: LibvirtOp::DeleteVolume,
                    source,
                })
            }
        },
        Err(_) if !local => return Ok(()),
        Err(_) => {}
    }
    if local {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KvmError::Io {
                    what: "removing a volume file",
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_uris() {
        assert!(uri_is_local("qemu:///system"));
        assert!(uri_is_local("test:///tmp/node.xml"));
        assert!(uri_is_local("qemu+unix:///session?socket=/x"));
        assert!(!uri_is_local("qemu+ssh://root@host/system"));
        assert!(!uri_is_local("qemu+tls://host/system"));
    }

    #[test]
    fn qemu_img_progress_lines() {
        assert_eq!(parse_progress("    (42.17/100%)"), Some(42.17));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100.0));
        assert_eq!(parse_progress("(0.00/100%)"), Some(0.0));
        assert_eq!(parse_progress("qemu-img: error"), None);
        assert_eq!(parse_progress("(300.00/100%)"), None);
    }

    #[test]
    fn template_names_must_be_plain() {
        for bad in ["", "../x", "a/b", "..", ".hidden", "a\\b", "x..y"] {
            assert!(check_template_name(bad).is_err(), "{bad}");
        }
        for good in ["ubuntu-22.04", "debian_12", "alpine"] {
            assert!(check_template_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn lists_and_finds_templates() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = vec![0u8; 512];
        q[..4].copy_from_slice(b"QFI\xfb");
        q[24..32].copy_from_slice(&(5u64 << 30).to_be_bytes());
        std::fs::write(dir.path().join("ubuntu-22.04.qcow2"), &q).unwrap();
        std::fs::write(dir.path().join("tiny.raw"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let names: Vec<String> = list_templates(dir.path())
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["tiny", "ubuntu-22.04"]);
        let t = find_template(dir.path(), "ubuntu-22.04").unwrap();
        assert_eq!((t.format, t.virtual_size), ("qcow2", 5 << 30));
        let t = find_template(dir.path(), "tiny").unwrap();
        assert_eq!((t.format, t.virtual_size), ("raw", 4096));
        match find_template(dir.path(), "nope") {
            Err(KvmError::UnknownTemplate { available, .. }) => {
                assert_eq!(available, vec!["tiny", "ubuntu-22.04"])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            find_template(dir.path(), "../etc/passwd"),
            Err(KvmError::InvalidRequest(_))
        ));
        // Symlinks: an alias inside is a template, a way out is none.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.raw"), b"secret").unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap()
        };
        link(&outside.path().join("secret.raw"), "evil.raw");
        link(Path::new("../../etc/passwd"), "rel.raw");
        link(Path::new("tiny.raw"), "alias.img");
        link(Path::new("missing.raw"), "dangling.raw");
        let names: Vec<String> = list_templates(dir.path())
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["alias", "tiny", "ubuntu-22.04"]);
        for bad in ["evil", "rel", "dangling"] {
            assert!(
                matches!(
                    find_template(dir.path(), bad),
                    Err(KvmError::UnknownTemplate { .. })
                ),
                "{bad}"
            );
        }
        let alias = find_template(dir.path(), "alias").unwrap();
        assert_eq!(
            alias.path,
            dir.path().join("tiny.raw").canonicalize().unwrap()
        );
        assert_eq!(alias.to_image().id.as_deref(), Some("alias.img"));
        assert!(list_templates(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }
}
