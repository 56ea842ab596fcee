"""A real lab guest whose disk is an md RAID1 over its two legs, with a QEMU guest agent.

What the panel's mirror health (storage/guest_health.py) reads on real hosts is `/proc/mdstat`
inside the guest, through the guest agent. This guest gives the lab the same thing: Debian's own
kernel, booted directly (`<os><kernel>` + `<initrd>`), and an initramfs built here from the
machine's packages (busybox-static, mdadm, qemu-guest-agent and the kernel's modules; no
`cpio` or `initramfs-tools` needed: the archive is written by Python). Its `/init`:

1. loads the virtio, md and virtio_console modules and waits for /dev/vda and /dev/vdb;
2. assembles md0 over them, or on first boot (neither leg has an md superblock) creates it:
   RAID1, metadata 1.2, `--bitmap=internal` (a returning leg is re-added and only the regions
   written meanwhile are copied; docs/storage.md);
3. runs `qemu-ga` on the `org.qemu.guest_agent.0` virtio port (respawned if it exits);
4. keeps writing numbered, checksummed records spread over the whole array (so that a leg that
   was away really has something to catch up on; the fault suite, tests/chaos/, reads every
   acknowledged one back), and every few seconds re-adds a leg that came back (a block device
   not in the array: what a hot-plug rule does in a real guest).

Kernel command line knobs (read by /init): `mirror.resync_kbps=N` caps md's resync speed so that a
test can watch the progress; `mirror.write_interval=S` the pause between records.

Built once per content and cached under the lab's directory (the kernel, the initramfs and its
inputs' fingerprint in the name), at an absolute path that every CPU host sees (lab hosts share the
machine's file system). Boots to a running /init in ~12 s under TCG (`type='qemu'`).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from images.initramfs import Cpio, binary_files

# Debian packages the guest is built from (scripts/apt-packages.txt lists them too).
PACKAGES = ("linux-image-amd64", "busybox-static", "mdadm", "qemu-guest-agent")
BUSYBOX = Path("/bin/busybox")
BINARIES = (Path("/sbin/mdadm"), Path("/usr/sbin/qemu-ga"))
# Load order matters: insmod does not resolve dependencies.
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "virtio_blk", "virtio_console", "md-mod", "raid1")
DEFAULT_CMDLINE = "console=ttyS0 panic=-1"
APT_TIMEOUT_S = 900

INIT = r"""#!/bin/busybox sh
# /init of the lab's mirror guest (lab/guests/mirror_guest.py): md RAID1 over vda+vdb, qemu-ga.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /var /etc
/bin/busybox --install -s /bin
export PATH=/sbin:/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
ln -sfn /run /var/run
mkdir -p /run/mdadm /run/qga
say() { echo "mirror-guest: $*" > /dev/console; }
for m in @MODULES@; do insmod /lib/modules/$m.ko || say "insmod $m failed"; done

arg() {  # arg NAME DEFAULT: the value of NAME=... on the kernel command line
  for word in $(cat /proc/cmdline); do case "$word" in "$1="*) echo "${word#*=}"; return;; esac; done
  echo "$2"
}
RESYNC_KBPS=$(arg mirror.resync_kbps "")
WRITE_INTERVAL=$(arg mirror.write_interval 1)

n=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
  n=$((n + 1)); [ $n -gt 100 ] && { say "vda/vdb missing"; break; }; sleep 0.1
done
if [ -n "$RESYNC_KBPS" ]; then
  echo "$RESYNC_KBPS" > /proc/sys/dev/raid/speed_limit_max
  echo "$RESYNC_KBPS" > /proc/sys/dev/raid/speed_limit_min
fi

if ! mdadm --assemble --run /dev/md0 /dev/vda /dev/vdb < /dev/null; then
  if ! mdadm --examine /dev/vda > /dev/null 2>&1 && ! mdadm --examine /dev/vdb > /dev/null 2>&1; then
    # Both legs are new volumes, all zeros (the panel creates them so): already in sync.
    mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --bitmap=internal \
      --assume-clean /dev/vda /dev/vdb < /dev/null && say "created md0"
  else
    # One leg alone (the other is away): run degraded on whatever has a superblock.
    mdadm --assemble --run --force /dev/md0 /dev/vda /dev/vdb < /dev/null \
      || mdadm --assemble --run /dev/md0 /dev/vda < /dev/null \
      || mdadm --assemble --run /dev/md0 /dev/vdb < /dev/null
  fi
fi
say "md0: $(grep -A1 '^md0' /proc/mdstat | tr '\n' ' ')"

port=""
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
done
if [ -n "$port" ]; then
  ( while true; do qemu-ga -m virtio-serial -p "$port" -t /run/qga -f /run/qemu-ga.pid -l /run/qga.log
      sleep 1; done ) &
  say "qemu-ga on $port"
else
  say "no org.qemu.guest_agent.0 port"
fi

# Re-add a leg that came back: a vd* block device that is not a member of md0.
readd() {
  mdadm /dev/md0 --remove failed --remove detached > /dev/null 2>&1
  for d in /sys/block/vd*; do
    name=${d##*/}
    [ -e /sys/block/md0/md/dev-$name ] && continue
    mdadm /dev/md0 --re-add /dev/$name > /dev/null 2>&1 && say "re-added $name" && continue
    mdadm /dev/md0 --add /dev/$name > /dev/null 2>&1 && say "added $name"
  done
}

say "ready"
sectors=$(cat /sys/block/md0/size 2>/dev/null || echo 0)
# Records are numbered from the clock (the RTC is the host's) and at most one a second, so that a
# later boot of the same disks (a restart elsewhere) numbers on from every earlier boot's records
# and never overwrites them; each carries this boot's id, so that a copy that ran on beside another
# shows as records of two boots interleaved. /run/records holds the last one written and synced
# (acknowledged), /run/boot this boot's id and first number.
boot=$(cat /proc/sys/kernel/random/boot_id)
n=$(date +%s)
echo "$boot $n" > /run/boot
count=0
while true; do
  if [ "$sectors" -gt 0 ]; then
    body="xarec $n $boot"
    sum=$(printf '%s' "$body" | md5sum | cut -c1-8)
    # A prime stride spreads the records over the array: every bitmap region gets written.
    printf '%s %s\n' "$body" "$sum" | dd of=/dev/md0 bs=512 count=1 seek=$(( (n * 2053) % sectors )) \
      conv=sync,notrunc,fsync 2> /dev/null && echo $n > /run/records
  fi
  count=$((count + 1))
  [ $((count % 3)) -eq 0 ] && readd
  sleep "$WRITE_INTERVAL"
  # Never faster than the clock: the numbers of the next boot must start past this one's.
  now=$(date +%s)
  n=$((n + 1))
  while [ "$n" -gt "$now" ]; do sleep 0.2; now=$(date +%s); done
done
"""


@dataclass(frozen=True)
class MirrorGuest:
    kernel: Path
    initrd: Path
    cmdline: str


class GuestBuildError(Exception):
    """The machine lacks what the guest is built from, and it could not be installed."""


def ensure_packages(packages: tuple[str, ...] = PACKAGES) -> None:
    """Install the Debian packages a lab guest is built from, if any is missing (needs root)."""
    missing = [p for p in packages if not installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise GuestBuildError(f"missing Debian packages {', '.join(missing)}: install them as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                            capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise GuestBuildError(f"apt-get install {' '.join(missing)} failed: {result.stderr.strip()[-2000:]}")


def installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                            check=False)
    return result.returncode == 0 and "install ok installed" in result.stdout


def debian_kernel() -> tuple[Path, Path]:
    """(vmlinuz, its modules directory) of the newest Debian kernel that has its modules installed."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if modules.is_dir():
            found.append((_version_key(version), image, modules))
    if not found:
        raise GuestBuildError("no Debian kernel (/boot/vmlinuz-* with /lib/modules/*): install linux-image-amd64")
    _key, image, modules = max(found)
    return image, modules


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _module_files(modules: Path) -> dict[str, Path]:
    """The .ko of each module in MODULES (names with '-' and '_' are the same to the kernel)."""
    wanted = {name.replace("-", "_"): name for name in MODULES}
    found: dict[str, Path] = {}
    for path in (modules / "kernel").rglob("*.ko"):
        key = path.name.removesuffix(".ko").replace("-", "_")
        if key in wanted:
            found[wanted[key]] = path
    missing = [name for name in MODULES if name not in found]
    if missing:
        raise GuestBuildError(f"modules not found under {modules}: {', '.join(missing)}")
    return found


def initramfs_files(modules: Path) -> dict[str, Path]:
    """Where each file of the initramfs comes from: {path in the guest: path on this machine}."""
    files = {"/bin/busybox": BUSYBOX}
    for binary in BINARIES:
        files |= binary_files(binary)
    for name, path in _module_files(modules).items():
        files[f"/lib/modules/{name}.ko"] = path
    return files


def build_initramfs(modules: Path) -> bytes:
    archive = Cpio()
    for directory in ("/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/bin", "/sbin"):
        archive.directory(directory)
    archive.char_device("/dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs exists
    archive.char_device("/dev/null", 1, 3)
    archive.file("/init", INIT.replace("@MODULES@", " ".join(MODULES)).encode())
    for guest, source in sorted(initramfs_files(modules).items()):
        archive.file(guest, source.resolve().read_bytes())
    # mtime=0: the same inputs give the same bytes, so the cache key is honest.
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def _fingerprint(kernel: Path, modules: Path) -> str:
    digest = hashlib.sha256(INIT.encode() + " ".join(MODULES).encode())
    for path in (kernel, BUSYBOX, *BINARIES):
        info = path.resolve().stat()
        digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}".encode())
    digest.update(modules.name.encode())
    return digest.hexdigest()[:12]


def install_mirror_guest(directory: Path, *, install_packages: bool = True) -> MirrorGuest:
    """Build (once) and return the guest's kernel and initramfs under `directory`, which must be
    at the same absolute path on every CPU server. Installs the Debian packages it needs if
    missing and allowed (root)."""
    if install_packages:
        ensure_packages()
    kernel_source, modules = debian_kernel()
    directory = directory.resolve() / f"mirror-{modules.name}-{_fingerprint(kernel_source, modules)}"
    kernel, initrd = directory / "vmlinuz", directory / "initrd.img"
    if not (kernel.exists() and initrd.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        for path, data in ((kernel, kernel_source.read_bytes()), (initrd, build_initramfs(modules))):
            partial = path.with_suffix(".tmp")
            partial.write_bytes(data)
            partial.chmod(0o644)
            partial.replace(path)  # another host's QEMU may be reading an older one
    return MirrorGuest(kernel=kernel, initrd=initrd, cmdline=DEFAULT_CMDLINE)
