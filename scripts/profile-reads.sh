#!/usr/bin/env bash
# Profiles the read path: a release server (frame pointers and line tables, in
# target/profile) with the fake plugin and 100 instances, loaded by wrk with
# `GET /api/v1/compute/instances/{id}` (or the path given) while perf samples it.
# Writes target/profile/reads-top.txt (the hottest functions, self time) and, when
# inferno is installed (`cargo install inferno`), target/profile/reads.svg (a
# flamegraph). Needs perf (linux-perf), wrk and curl; loopback only.
#
#   scripts/profile-reads.sh [SECONDS] [PATH]     e.g. scripts/profile-reads.sh 10 '/api/v1/compute/instances?pageSize=100'
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
path="${2:-}"
for cmd in perf wrk curl; do
  command -v "$cmd" >/dev/null || { echo "profile-reads: needs $cmd" >&2; exit 1; }
done
out="$PWD/target/profile"
mkdir -p "$out"
export CARGO_TARGET_DIR="$out/build"
RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release -q -p unicompute-host
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release -q \
  --manifest-path tests/fake-plugin/Cargo.toml

dir="$(mktemp -d /tmp/uc-profile-XXXXXX)"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/plugins" "$dir/tmp"
cp "$CARGO_TARGET_DIR/release/libunicompute_fake.so" "$dir/plugins/"
token="profile-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
sha="$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$dir/unicompute.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[plugins]
dirs = ["$dir/plugins"]
[[auth.tokens]]
name = "profile"
sha256 = "$sha"
role = "admin"
[backends.fake]
plugin = "fake"
state_dir = "$dir/state"
EOF
TMPDIR="$dir/tmp" "$CARGO_TARGET_DIR/release/unicompute" --config "$dir/unicompute.toml" \
  >"$dir/server.out" 2>"$dir/server.log" &
server=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -sf "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
id=""
for i in $(seq 100); do
  body="{\"name\":\"profile-$i\",\"backend\":\"fake\",\"config\":{\"image\":\"busybox\",\"env\":[\"A=1\"]},\"resources\":{\"cpu\":{\"cores\":2},\"memory\":{\"limit\":1073741824}},\"metadata\":{\"labels\":{\"app\":\"profile\"}}}"
  got="$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$body" "$base/api/v1/compute/instances")"
  [ -z "$id" ] && id="$(printf '%s' "$got" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
done
[ -n "$path" ] || path="/api/v1/compute/instances/$id"
echo "profile-reads: wrk -t2 -c8 -d${secs}s $path, perf at 999 Hz with frame pointers" >&2
wrk -t2 -c8 -d"$((secs + 2))s" -H "Authorization: Bearer $token" "$base$path" >"$out/reads-wrk.txt" &
load=$!
sleep 1
perf record -q -F 999 -g --call-graph fp -p "$server" -o "$out/reads.perf.data" -- sleep "$secs" 2>/dev/null
wait "$load"
perf report -i "$out/reads.perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
  grep -v '^#' | grep '%' | sed 's/  */ /g' | sed -n '1,60p' >"$out/reads-top.txt"
if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
  perf script -i "$out/reads.perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph >"$out/reads.svg"
  echo "profile-reads: flamegraph $out/reads.svg" >&2
fi
grep -E 'Requests/sec' "$out/reads-wrk.txt" >&2 || true
echo "profile-reads: hottest functions in $out/reads-top.txt" >&2
head -25 "$out/reads-top.txt"
