#!/usr/bin/env bash
# Runs the server on the shipped config: installs and starts Docker and libvirtd when
# missing (Debian 12), builds the release binary and plugins, and serves on
# 127.0.0.1:8080. The admin token is in /var/lib/unicompute/admin.token.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-env.sh
cargo build --release --workspace
exec target/release/unicompute --config config/unicompute.toml "$@"
