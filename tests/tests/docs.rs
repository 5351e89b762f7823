//! The plugin guide's own commands: every ```bash block of docs/plugins.md, run in
//! order from the repository root with the built `unicompute` on the PATH.

use std::process::Command;

use unicompute_tests::*;

fn bash_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```bash") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn the_plugin_guide_commands_work() {
    let guide = std::fs::read_to_string(root().join("docs/plugins.md")).expect("guide");
    let blocks = bash_blocks(&guide);
    assert!(blocks.len() >= 2, "the guide has runnable blocks");
    let bin_dir = host_binary().parent().expect("dir").to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // What the guide's commands make in target/, removed also when they fail.
    struct Made;
    impl Drop for Made {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(root().join("target/doc-plugins"));
            let _ = std::fs::remove_file(root().join("target/doc-plugins.toml"));
        }
    }
    let _made = Made;
    let script = format!("set -euo pipefail\n{}", blocks.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root())
        // A plugin author's shell: the guide's paths are the project's own target/,
        // whatever target directory this test run builds into.
        .env_remove("CARGO_TARGET_DIR")
        .env("PATH", path)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "guide commands failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{stdout}"
    );
    assert!(
        stdout.contains("libunicompute_example.so\tloaded\tprocess"),
        "{stdout}"
    );
}
