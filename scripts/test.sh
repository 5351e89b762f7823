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
cleanup() {
    flock -n -x /tmp/unicompute-docker-engine.lock \
        docker rmi -f unicompute-test-busybox:latest >/dev/null 2>&1 || true
}
trap cleanup EXIT
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Build the binary and the plugins once; the black-box tests use these artifacts.
cargo build --workspace
cargo test --workspace --no-fail-fast -- --test-threads="${UC_TEST_THREADS:-4}"
