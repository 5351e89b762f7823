#!/usr/bin/env bash
# Builds the KVM tests' guest: a small bootable raw disk made only from Debian
# packages (Debian's kernel, busybox-static, syslinux), and prints its path.
#
#   bash scripts/guest-template.sh [CACHE_DIR]     # default: $CARGO_TARGET_DIR/guest or target/guest
#
# The disk is one FAT file system over the whole disk ("superfloppy", no partition
# table) with SYSLINUX in its boot sector: SeaBIOS boots it like any disk. It holds
# the kernel of the `linux-image-amd64` package (fetched with `apt-get download`, so
# the host's /boot and its initramfs are not touched) and an initramfs of
# `busybox-static` plus the few kernel modules the guest needs. Built without root
# tricks: no loop device and no mount (mkfs.vfat -C, mtools, syslinux --install).
#
# What the guest does (its /init, below), every line it prints starting "UCGUEST ":
#   - mounts proc, sys, devtmpfs; loads virtio_pci, virtio_blk, vfat (with the
#     codepages), isofs, button, evdev and virtio_console (each with its
#     dependencies);
#   - finds the NoCloud seed (a vfat or iso9660 disk holding `user-data`) and prints
#     "UCGUEST seed DEV", "UCGUEST instance-id ID" and, for every line of user-data
#     that starts with "#uc-marker ", "UCGUEST marker REST" (a YAML comment, so a real
#     cloud-init ignores it);
#   - watches the ACPI power button (the kernel's "Power Button" input devices):
#     on a press it prints "UCGUEST acpi power button", then "UCGUEST powering off",
#     and powers off (busybox `poweroff -f`);
#   - starts the guest agent stand-in (scripts/guest-agent.awk, an awk program for
#     exec: guest-ping, guest-exec, guest-exec-status) on the virtio-serial port
#     named org.qemu.guest_agent.0 and prints "UCGUEST guest agent on /dev/vportNpM"
#     (in the background: "UCGUEST no guest agent port" after 5 s when the domain has
#     no such channel); a user-data line "#uc-agent-debug" makes it print every line
#     it reads and writes on the console ("UCGUEST agent < ..", "UCGUEST agent > ..");
#   - prints "UCGUEST ready", starts a shell on ttyS0 (busybox sh, interactive, its
#     controlling terminal the serial port; started again when it exits) and idles.
# Console on ttyS0 (the serial port). Without a seed it prints "UCGUEST no seed".
#
# Cached: the image is CACHE_DIR/uc-guest-KEY.raw, KEY a digest of this script, of
# scripts/guest-agent.awk and of the versions of the kernel, busybox-static and syslinux packages; a cached image is
# printed at once. Concurrent runs take a lock (flock) and build once. The kernel's
# .deb is kept in CACHE_DIR/debs (older ones are removed).
#
# Needs (scripts/test-env.sh installs them): apt-get, dpkg-deb, busybox-static,
# dosfstools, mtools, syslinux, syslinux-common, cpio, gzip, flock.
set -euo pipefail

log() { printf 'guest-template: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
cache=${1:-$target/guest}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

for cmd in apt-cache apt-get dpkg-deb dpkg-query mkfs.vfat mcopy syslinux cpio gzip flock sha256sum; do
  command -v "$cmd" >/dev/null 2>&1 || die "missing $cmd (run scripts/test-env.sh)"
done
busybox=/bin/busybox
[ -x "$busybox" ] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
  || die "busybox-static is not installed (run scripts/test-env.sh)"

# The kernel package the meta-package points at, and its version.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "apt knows no linux-image-amd64 (apt-get update?)"
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2; exit}')
[ -n "$kver" ] && [ "$kver" != "(none)" ] || die "no candidate for $kpkg"
bbver=$(dpkg-query -W -f='${Version}' busybox-static)
slver=$(dpkg-query -W -f='${Version}' syslinux)
agent_awk=$here/guest-agent.awk
[ -f "$agent_awk" ] || die "missing $agent_awk"
key=$( { sha256sum "${BASH_SOURCE[0]}" "$agent_awk" | cut -d' ' -f1; echo "$kpkg $kver $bbver $slver"; } \
  | sha256sum | cut -c1-16)
image=$cache/uc-guest-$key.raw

if [ -f "$image" ]; then echo "$image"; exit 0; fi
exec 9>"$cache/.lock"
flock 9
if [ -f "$image" ]; then echo "$image"; exit 0; fi

start=$(date +%s.%N)
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The kernel's .deb, from the Debian mirror apt is configured with.
debs=$cache/debs
mkdir -p "$debs"
deb=$(ls "$debs/${kpkg}_"*.deb 2>/dev/null | grep -F "_${kver//:/%3a}_" | head -n1 || true)
if [ -z "$deb" ]; then
  log "downloading $kpkg $kver"
  rm -f "$debs"/linux-image-*.deb
  # apt's sandbox user cannot write into the cache: download in a dir it can.
  (cd "$work" && apt-get download -q "$kpkg=$kver" >/dev/null 2>"$work/apt.err") \
    || { cat "$work/apt.err" >&2; die "apt-get download $kpkg failed"; }
  mv "$work"/"${kpkg}"_*.deb "$debs/"
  deb=$(ls "$debs/${kpkg}_"*.deb | head -n1)
fi
log "kernel package $(basename "$deb")"
mkdir -p "$work/pkg"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/pkg" --wildcards \
  './boot/vmlinuz-*' './lib/modules/*/modules.builtin' './lib/modules/*/kernel/drivers/*' \
  './lib/modules/*/kernel/fs/*'
vmlinuz=$(ls "$work"/pkg/boot/vmlinuz-* | head -n1)
moddir=$(ls -d "$work"/pkg/lib/modules/* | head -n1)

# The modules the guest loads, each after its dependencies (read from the module's
# .modinfo section: the package has no modules.dep); built-in ones are skipped.
order=()
add_module() { # name
  local name=${1//-/_} file dep deps
  for m in "${order[@]+"${order[@]}"}"; do [ "$m" = "$name" ] && return 0; done
  if grep -Eq "/${name//_/[-_]}\.ko\$" "$moddir/modules.builtin"; then return 0; fi
  file=$(find "$moddir/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)
  [ -n "$file" ] || die "module $name not found in $kpkg"
  deps=$(grep -a -o 'depends=[a-z0-9_,-]*' "$file" | head -n1 | cut -d= -f2 | tr ',' ' ')
  for dep in $deps; do add_module "$dep"; done
  order+=("$name")
  cp "$file" "$work/initramfs/lib/modules/$name.ko"
}
mkdir -p "$work/initramfs"/{bin,dev,proc,sys,mnt,lib/modules,etc}
# virtio_console: the virtio-serial ports (the guest agent's channel).
for m in virtio_pci virtio_blk fat vfat nls_cp437 nls_ascii nls_utf8 isofs button evdev virtio_console; do
  add_module "$m"
done
printf '%s\n' "${order[@]}" >"$work/initramfs/etc/modules"

cp "$busybox" "$work/initramfs/bin/busybox"
cp "$agent_awk" "$work/initramfs/etc/uc-agent.awk"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$work/initramfs/bin/$applet"
done

cat >"$work/initramfs/init" <<'EOF'
#!/bin/busybox sh
# The unicompute test guest's init (scripts/guest-template.sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
say() { echo "UCGUEST $*"; }
say "booted $(uname -r)"
while read -r m; do insmod "/lib/modules/$m.ko" || say "insmod $m failed"; done </etc/modules

# The ACPI power button: the button driver's input devices, read through evdev. Any
# event on one is a press.
watch_power() {
  i=0
  while [ $i -lt 100 ]; do
    found=
    for ev in /sys/class/input/event*; do
      [ -e "$ev/device/name" ] || continue
      [ "$(cat "$ev/device/name")" = "Power Button" ] || continue
      found=1
      dev=/dev/input/${ev##*/}
      (
        # One input_event (24 bytes on x86-64): evdev refuses shorter reads.
        dd if="$dev" of=/dev/null bs=24 count=1 2>/dev/null
        say "acpi power button"
        sync
        say "powering off"
        poweroff -f
      ) &
    done
    [ -n "$found" ] && { say "power button watched"; return; }
    i=$((i + 1)); sleep 0.1
  done
  say "no power button"
}
watch_power

# The NoCloud seed: a vfat or iso9660 disk with user-data.
seed=
i=0
while [ -z "$seed" ] && [ $i -lt 50 ]; do
  for dev in /dev/vd? /dev/sr? /dev/sd?; do
    [ -b "$dev" ] || continue
    for fs in vfat iso9660; do
      if mount -t $fs -o ro "$dev" /mnt 2>/dev/null; then
        if [ -f /mnt/user-data ]; then seed=$dev; break 2; fi
        umount /mnt
      fi
    done
  done
  [ -n "$seed" ] || { i=$((i + 1)); sleep 0.1; }
done
if [ -n "$seed" ]; then
  say "seed $seed"
  id=$(sed -n 's/.*"\{0,1\}instance-id"\{0,1\}[ ]*:[ ]*"\{0,1\}\([^",}]*\).*/\1/p' /mnt/meta-data | head -n1)
  say "instance-id $id"
  grep '^#uc-marker ' /mnt/user-data | while IFS= read -r line; do
    say "marker ${line#\#uc-marker }"
  done
  grep -q '^#uc-agent-debug' /mnt/user-data && agent_debug=1
  umount /mnt
else
  say "no seed"
fi

# The guest agent stand-in (/etc/uc-agent.awk) on the virtio-serial port named
# org.qemu.guest_agent.0, when the domain has that channel. The port is opened once,
# read and written through that one descriptor (a port admits one opener); awk ends
# when the host side goes away (end of input) and the port is opened again.
agent() {
  i=0
  while [ $i -lt 50 ]; do
    for p in /sys/class/virtio-ports/*; do
      [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
      port=/dev/${p##*/}
      say "guest agent on $port"
      while :; do
        UC_AGENT_DEBUG=$agent_debug awk -f /etc/uc-agent.awk <>"$port" >&0 2>/dev/console
        sleep 1
      done
    done
    i=$((i + 1)); sleep 0.1
  done
  say "no guest agent port"
}
agent &
say "ready"
# A shell on the serial console (the console stream is typed into), started again
# whenever it exits; its prompt and what it echoes go to the console log too.
(
  while :; do
    setsid -c sh -i </dev/ttyS0 >/dev/ttyS0 2>&1
    sleep 1
  done
) &
while :; do sleep 3600; done
EOF
chmod 0755 "$work/initramfs/init"
(cd "$work/initramfs" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 >"$work/initrd.gz"

cat >"$work/syslinux.cfg" <<'EOF'
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0,115200 panic=0
EOF

# A FAT file system over the whole disk, sized for its files (in whole MiB, 16 MiB
# at least), SYSLINUX in its boot sector.
need=$(( $(stat -c %s "$vmlinuz") + $(stat -c %s "$work/initrd.gz") ))
mib=$(( (need >> 20) + 8 )); [ $mib -ge 16 ] || mib=16
mkfs.vfat -C -n UCGUEST "$work/disk.raw" $((mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -i "$work/disk.raw" "$vmlinuz" ::/vmlinuz
mcopy -i "$work/disk.raw" "$work/initrd.gz" ::/initrd.gz
mcopy -i "$work/disk.raw" "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$work/disk.raw"
chmod 0644 "$work/disk.raw"
mv "$work/disk.raw" "$image"
# Older images of this cache.
for old in "$cache"/uc-guest-*.raw; do [ "$old" = "$image" ] || rm -f "$old"; done
log "built $(basename "$image") ($mib MiB, modules: ${order[*]}) in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }") s"
echo "$image"
