#!/usr/bin/env bash
# Installs and starts what the tests need on Debian 12: a Docker engine, libvirtd with
# QEMU/KVM, qemu-img, busybox-static, curl, docker-registry, and the tools that build the KVM tests'
# guest (dosfstools, mtools, syslinux, cpio), then builds that guest (cached, see
# scripts/guest-template.sh; UC_SKIP_GUEST=1 skips it). Idempotent: does only what is
# missing.
set -euo pipefail

log() { printf 'test-env: %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v libvirtd >/dev/null 2>&1 || need_pkgs+=(libvirt-daemon-system)
dpkg -s libvirt-dev >/dev/null 2>&1 || need_pkgs+=(libvirt-dev)
# qemu-utils is named with qemu-system-x86 even when qemu-img is there: an image may
# carry a newer qemu-utils (backports) that apt would otherwise silently remove to
# make room for bookworm's qemu-system, leaving no qemu-img behind.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  need_pkgs+=(qemu-system-x86 qemu-utils)
elif ! command -v qemu-img >/dev/null 2>&1; then
  need_pkgs+=(qemu-utils)
fi
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
# The KVM tests' guest (scripts/guest-template.sh): a FAT disk made bootable by
# SYSLINUX without a mount, and a cpio initramfs. Its kernel is fetched by that
# script with `apt-get download` (not installed on this host).
for pkg in dosfstools mtools syslinux syslinux-common cpio; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl) # the README's examples are run with it
# A private registry that the image-pull tests start on 127.0.0.1 themselves (its
# service is never enabled: the tests run `docker-registry serve` with their own config).
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry)
# promtool checks GET /metrics, and a Prometheus server started by the tests on
# 127.0.0.1 scrapes it (its own service is never used).
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
# The dashboard's browser tests: headless Chromium through chromedriver (WebDriver).
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_pkgs+=(chromium-driver)
# The read benchmark's load (tests/benches/reads.rs; benchmarks are not run by the tests).
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need_pkgs+=(python3-venv) # the OpenAPI fuzz (Schemathesis) runs in a venv

if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  if ! $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/tmp/unicompute-apt.log 2>&1; then
    # Some images carry a newer qemu-utils (backports) than bookworm's qemu-system;
    # take both from bookworm so they agree.
    log "retrying with bookworm's qemu-utils"
    $SUDO apt-get install -y -qq --allow-downgrades "${need_pkgs[@]}" qemu-utils/bookworm \
      >>/tmp/unicompute-apt.log 2>&1 || { cat /tmp/unicompute-apt.log >&2; exit 1; }
  fi
fi

# Every command the tests and the server need, after any install: a clear failure
# naming what is missing rather than a server whose KVM creates all fail later.
missing=()
for cmd in docker dockerd docker-registry virsh libvirtd qemu-system-x86_64 qemu-img pkg-config curl promtool prometheus chromium chromedriver; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "missing after install: ${missing[*]} (see /tmp/unicompute-apt.log)"
  exit 1
fi

wait_for() { # command, what, seconds
  local i
  for i in $(seq 1 "$3"); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$2 did not come up"; return 1
}

# Docker engine
if ! docker version >/dev/null 2>&1; then
  log "starting dockerd"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    $SUDO systemctl start docker || true
  fi
  if ! docker version >/dev/null 2>&1; then
    pgrep -x containerd >/dev/null || (setsid containerd >/var/log/unicompute-containerd.log 2>&1 &)
    pgrep -x dockerd >/dev/null || (setsid dockerd >/var/log/unicompute-dockerd.log 2>&1 &)
  fi
  wait_for "docker version" dockerd 60
fi

# libvirt
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  log "starting virtlogd and libvirtd"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    $SUDO systemctl start virtlogd libvirtd || true
  fi
  if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
  fi
  wait_for "virsh -c qemu:///system version" libvirtd 60
fi
# The default network, as a libvirt host has it, for tests that attach to it (they
# check the domain XML only): defined from libvirt's own file when missing, started.
if ! virsh -c qemu:///system net-info default >/dev/null 2>&1 \
  && [ -f /usr/share/libvirt/networks/default.xml ]; then
  log "defining libvirt's default network"
  virsh -c qemu:///system net-define /usr/share/libvirt/networks/default.xml >/dev/null || true
fi
virsh -c qemu:///system net-info default >/dev/null 2>&1 && \
  { virsh -c qemu:///system net-start default >/dev/null 2>&1 || true; }

# The KVM tests' guest, built once and cached under target/guest.
if [ "${UC_SKIP_GUEST:-}" != 1 ]; then
  log "KVM test guest: $(bash "$(dirname "$0")/guest-template.sh")"
fi

log "docker $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), $(virsh -c qemu:///system version | grep -i 'running hypervisor' || true), kvm: $([ -w /dev/kvm ] && echo yes || echo no)"
