#!/usr/bin/env bash
# Installs the Debian packages hablock's tests, demo and benchmarks use:
# user-space iSCSI initiators (libiscsi, QEMU), the reference target tgt,
# FUSE and ext4 tools, and for the failover rig (failover/rig) nftables,
# arping and PostgreSQL (server binaries in /usr/lib/postgresql/*/bin;
# the rig starts its own instance, the distribution's service is not used).
# Idempotent; needs root (or sudo).
set -euo pipefail
PKGS=(tgt libiscsi-bin qemu-utils qemu-block-extra qemu-system-common fuse3 e2fsprogs iproute2 util-linux procps mount nftables iputils-arping postgresql postgresql-client)
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q
	$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
