#!/usr/bin/env bash
# Builds the Debian package of unicompute (server, `uc`, the docker and kvm plugins,
# the config as a conffile, the systemd unit, completions and man pages) with
# dpkg-deb from binaries already built.
#
#   scripts/build-deb.sh [PROFILE] [OUTDIR]
#
# PROFILE is a directory under target/ (`release`, the default, after `cargo build
# --release --workspace`; the tests package the `debug` build they already have).
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
out="${2:-target/deb}"
bin="${CARGO_TARGET_DIR:-target}/$profile"
for f in unicompute uc libunicompute_docker.so libunicompute_kvm.so; do
    [ -f "$bin/$f" ] || { echo "build-deb: $bin/$f is missing (cargo build --workspace${profile:+ --profile $profile})" >&2; exit 1; }
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin/unicompute" "$root/usr/bin/unicompute"
install -D -m 0755 "$bin/uc" "$root/usr/bin/uc"
install -D -m 0644 "$bin/libunicompute_docker.so" "$root/usr/lib/unicompute/plugins/libunicompute_docker.so"
install -D -m 0644 "$bin/libunicompute_kvm.so" "$root/usr/lib/unicompute/plugins/libunicompute_kvm.so"
install -D -m 0644 packaging/unicompute.toml "$root/etc/unicompute/unicompute.toml"
install -D -m 0644 packaging/unicompute.service "$root/lib/systemd/system/unicompute.service"
for d in README.md docs/api.md docs/cli.md docs/plugins.md; do
    install -D -m 0644 "$d" "$root/usr/share/doc/unicompute/$(basename "$d")"
done
"$bin/uc" completion bash > "$root/uc.bash"
install -D -m 0644 "$root/uc.bash" "$root/usr/share/bash-completion/completions/uc"
"$bin/uc" completion zsh > "$root/_uc"
install -D -m 0644 "$root/_uc" "$root/usr/share/zsh/vendor-completions/_uc"
"$bin/uc" completion fish > "$root/uc.fish"
install -D -m 0644 "$root/uc.fish" "$root/usr/share/fish/vendor_completions.d/uc.fish"
rm -f "$root/uc.bash" "$root/_uc" "$root/uc.fish"
mkdir -p "$root/usr/share/man/man1"
"$bin/uc" man "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
mkdir -p "$root/DEBIAN"
install -m 0755 packaging/postinst packaging/prerm packaging/postrm "$root/DEBIAN/"
echo "/etc/unicompute/unicompute.toml" > "$root/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<CONTROL
Package: unicompute
Version: $version
Architecture: $arch
Maintainer: unicompute developers <unicompute@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), libgcc-s1, libvirt0
Recommends: docker.io, libvirt-daemon-system, qemu-system-x86, qemu-utils
Suggests: qemu-guest-agent
Section: admin
Priority: optional
Homepage: https://github.com/unicompute/unicompute
Description: one REST API for KVM virtual machines and Docker containers
 unicompute serves Docker containers and KVM virtual machines as compute
 instances through one REST API, with one auth and one error format. Each
 backend is a plugin loaded from /usr/lib/unicompute/plugins. The package has
 the server (unicompute, a systemd service), the command-line client (uc), and
 the docker and kvm plugins.
CONTROL
mkdir -p "$out"
deb="$out/unicompute_${version}_${arch}.deb"
# UC_DEB_FAST=1 (the tests): gzip -1 instead of xz, for a large debug build.
if [ "${UC_DEB_FAST:-}" = 1 ]; then compress=(-Zgzip -z1); else compress=(-Zxz); fi
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
