//! The domain knows no HTTP: nothing under `src/service/`, `src/plugins/`, nor the
//! inventory and config, names warp, hyper, http status codes, utoipa or the `api`
//! module. `api/` is the one place that does.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_domain_does_not_speak_http() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("service"), &mut files);
    rust_files(&src.join("plugins"), &mut files);
    files.push(src.join("inventory.rs"));
    files.push(src.join("config.rs"));
    assert!(files.len() >= 8, "{files:?}");
    let forbidden = [
        "warp",
        "hyper",
        "utoipa",
        "StatusCode",
        "http::",
        "crate::api",
        "super::api",
    ];
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable");
        for (n, line) in text.lines().enumerate() {
            for word in forbidden {
                if line.contains(word) {
                    found.push(format!("{}:{}: {word}: {line}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the domain names HTTP:\n{}",
        found.join("\n")
    );
}
