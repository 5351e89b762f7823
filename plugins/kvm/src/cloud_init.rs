//! The cloud-init NoCloud seed: a small FAT image labelled `CIDATA` holding
//! `user-data`, `meta-data` (and `network-config` when given), built in memory.

use std::io::{Cursor, Read, Write};

use crate::error::KvmError;
use crate::spec::CloudInit;

/// The volume label cloud-init's NoCloud source looks for.
pub const LABEL: [u8; 11] = *b"CIDATA     ";

/// The `meta-data` used when the client gives none.
pub fn default_meta_data(instance_id: &str, hostname: &str) -> String {
    // A YAML document built through serde_json: JSON is YAML, and the values are
    // quoted and escaped by the serializer.
    let doc = serde_json::json!({
        "instance-id": instance_id,
        "local-hostname": hostname,
    });
    doc.to_string()
}

/// The files of a seed, in order.
pub fn seed_files(
    cloud_init: &CloudInit,
    instance_id: &str,
    hostname: &str,
) -> Vec<(&'static str, String)> {
    let mut files = vec![
        (
            "user-data",
            cloud_init.user_data.clone().unwrap_or_default(),
        ),
        (
            "meta-data",
            cloud_init
                .meta_data
                .clone()
                .unwrap_or_else(|| default_meta_data(instance_id, hostname)),
        ),
    ];
    if let Some(net) = &cloud_init.network_config {
        files.push(("network-config", net.clone()));
    }
    files
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> KvmError {
    move |source| KvmError::Io { what, source }
}

/// Builds the seed image.
pub fn build_seed(files: &[(&str, String)]) -> Result<Vec<u8>, KvmError> {
    let content: usize = files.iter().map(|(_, c)| c.len()).sum();
    // Room for the FAT, the root directory and each file's cluster slack; at least
    // 1 MiB, in whole MiB.
    let size = (content * 2 + (512 << 10)).max(1 << 20).div_ceil(1 << 20) << 20;
    let mut disk = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new().volume_label(LABEL),
    )
    .map_err(io("formatting the seed image"))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(io("opening the seed image"))?;
        for (name, data) in files {
            let root = fs.root_dir();
            let mut f = root.create_file(name).map_err(io("writing the seed"))?;
            f.truncate().map_err(io("writing the seed"))?;
            f.write_all(data.as_bytes())
                .map_err(io("writing the seed"))?;
            f.flush().map_err(io("writing the seed"))?;
        }
        fs.unmount().map_err(io("closing the seed image"))?;
    }
    Ok(disk.into_inner())
}

/// Reads one file back from a seed image (for checks and tests), with the label.
pub fn read_seed_file(image: &[u8], name: &str) -> Result<(String, String), KvmError> {
    let mut disk = Cursor::new(image.to_vec());
    let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
        .map_err(io("opening the seed image"))?;
    let label = fs.volume_label();
    let mut out = String::new();
    fs.root_dir()
        .open_file(name)
        .map_err(io("opening a seed file"))?
        .read_to_string(&mut out)
        .map_err(io("reading a seed file"))?;
    Ok((label, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_holds_user_and_meta_data() {
        let ci = CloudInit {
            user_data: Some("#cloud-config\npackages:\n  - nginx\n".into()),
            meta_data: None,
            network_config: None,
        };
        let files = seed_files(&ci, "i-123", "ubuntu-vm");
        let img = build_seed(&files).unwrap();
        assert_eq!(img.len(), 1 << 20);
        let (label, ud) = read_seed_file(&img, "user-data").unwrap();
        assert_eq!(label, "CIDATA");
        assert_eq!(ud, "#cloud-config\npackages:\n  - nginx\n");
        let (_, md) = read_seed_file(&img, "meta-data").unwrap();
        let v: serde_json::Value = serde_json::from_str(&md).unwrap();
        assert_eq!(v["instance-id"], "i-123");
        assert_eq!(v["local-hostname"], "ubuntu-vm");
        assert!(read_seed_file(&img, "network-config").is_err());
    }

    #[test]
    fn large_user_data_grows_the_image() {
        let ci = CloudInit {
            user_data: Some("x".repeat(3 << 20)),
            meta_data: Some("instance-id: a\n".into()),
            network_config: Some("version: 2\n".into()),
        };
        let img = build_seed(&seed_files(&ci, "a", "b")).unwrap();
        assert!(img.len() > 3 << 20);
        assert_eq!(read_seed_file(&img, "user-data").unwrap().1.len(), 3 << 20);
        assert_eq!(
            read_seed_file(&img, "network-config").unwrap().1,
            "version: 2\n"
        );
    }
}
