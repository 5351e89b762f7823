#!/usr/bin/env bash
# The whole test suite: installs and starts Docker and libvirtd when missing, then
# format check, clippy with -D warnings, and every test (unit, black-box, real backends).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-env.sh
# The tests' local image (imported from busybox-static, never pulled) goes at the end,
# unless a test of another run still holds the engine (every test that uses the image
# holds /tmp/unicompute-docker-engine.lock shared): removing it under that run would
# make its next create try to pull it.
# Free disk is sampled while the suite runs and its lowest point is printed at the
# end (a CI machine once ran out of it: the numbers say how close a run comes).
target_fs="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_fs"
free_mib() { df -Pm "$target_fs" /var/lib 2>/dev/null | awk 'NR>1 {print $4}' | sort -n | head -1; }
disk_log="$(mktemp /tmp/unicompute-disk.XXXXXX)"
free_mib >"$disk_log"
( while sleep 5; do free_mib >>"$disk_log"; done ) &
sampler=$!
cleanup() {
    kill "$sampler" 2>/dev/null || true
    flock -n -x /tmp/unicompute-docker-engine.lock \
        docker rmi -f unicompute-test-busybox:latest >/dev/null 2>&1 || true
    printf 'test: free disk at the start %s MiB, lowest %s MiB, at the end %s MiB; target %s\n' \
        "$(head -1 "$disk_log")" "$(sort -n "$disk_log" | head -1)" "$(free_mib)" \
        "$(du -sh "$target_fs" 2>/dev/null | cut -f1)" >&2
    rm -f "$disk_log"
}
trap cleanup EXIT
# A CI run builds once from nothing: incremental caches would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Build the binary and the plugins once; the black-box tests use these artifacts.
cargo build --workspace
cargo test --workspace --no-fail-fast -- --test-threads="${UC_TEST_THREADS:-4}"
