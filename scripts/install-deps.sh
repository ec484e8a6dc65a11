#!/usr/bin/env bash
# Installs the Debian packages banger needs on a host: qemu (the VMM that works
# everywhere), busybox-static and e2fsprogs (image builders), nftables and iproute2 (the
# root helper), dnsutils and socat (tests and debugging), debootstrap (debian builder),
# containerd (the runtime shim's e2e test runs a private containerd),
# containernetworking-plugins (the CNI bridge and loopback of that containerd's CRI pods),
# qemu-system-common (named for its virtiofsd, /usr/lib/qemu/virtiofsd on Debian 12,
# which serves --mount's shared folders; Debian 12 has no separate virtiofsd package,
# Debian 13's installs /usr/libexec/virtiofsd), and linux-source with the kernel build
# tools (`image build tiny --kernel microvm` compiles a kernel from Debian's source;
# unversioned metapackage, whatever kernel it depends on now).
set -euo pipefail
pkgs=(qemu-system-x86 qemu-system-common busybox-static e2fsprogs nftables iproute2 dnsutils socat cpio kmod debootstrap ca-certificates git make containerd containernetworking-plugins
  linux-source bc bison flex gcc libc6-dev libelf-dev libssl-dev xz-utils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
