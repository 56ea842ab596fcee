"""A small bootable installer ISO for the lab: what "install a VM from an ISO" is tested with.

The panel attaches an ISO image, exported read-only over AoE, to a VM as an IDE CD-ROM (bus ide,
target hdc, QEMU's i440fx `pc` machine), beside the VM's two empty virtio disks (vda, vdb), and
boots CD first. The operator installs through the VNC and serial consoles, then ejects the CD; the
next boot comes from the disk. This ISO plays the installer and the installed system both:

- GRUB (grub-mkrescue, i386-pc only: a hybrid image, MBR + ISO9660, so that the same bytes boot
  from a CD and, written raw onto a hard disk, from that disk), 1 s timeout, one entry: the
  machine's Debian kernel (linux-image-amd64) with an initramfs written here in Python
  (busybox-static, the kernel's virtio and PIIX IDE / ATAPI modules), `console=tty0 console=ttyS0`:
  the messages are on the VGA screen (what VNC shows) and on the serial console.
- Its /init: with a CD in the drive (/dev/sr0, size > 0) it is the installer: prints INSTALLING,
  copies the whole CD onto every virtio disk present (`dd ... conv=fsync`), prints INSTALLED.
  Without one (no CD drive, or an empty one) it is the installed system: prints BOOTED_FROM_DISK.
  Either way it then hands over to busybox init, which runs a shell (prompt PROMPT) on ttyS0 and
  on tty1, respawned when it exits; `poweroff` and `reboot` work as usual. It never powers off by
  itself.

Built once per content (kernel, busybox, modules, GRUB, the scripts here) and cached under the
directory given, the fingerprint of its inputs in the file name.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from images.initramfs import Cpio, module_bytes, modules_in_load_order
from lab.guests.mirror_guest import GuestBuildError, debian_kernel, ensure_packages

INSTALLING = "xenaoe-lab-installer: installing"
INSTALLED = "xenaoe-lab-installer: installed"
BOOTED_FROM_DISK = "xenaoe-lab-system: booted from disk"
PROMPT = "xenaoe-lab# "

# Debian packages the ISO is built from (scripts/apt-packages.txt lists them too).
PACKAGES = ("linux-image-amd64", "busybox-static", "grub-pc-bin", "grub-common", "xorriso")
BUSYBOX = Path("/bin/busybox")
GRUB_PC = Path("/usr/lib/grub/i386-pc")
# What /init loads (their dependencies come from the kernel's modules.dep, loaded first): virtio
# disks, and the CD on QEMU's PIIX IDE controller (ata_piix, libata, scsi, sr_mod, cdrom).
MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "ata_piix", "sr_mod", "edd")
# GRUB modules on the ISO (with their dependencies); the rest of GRUB is left out, so are its
# fonts, locales and themes.
GRUB_MODULES = ("normal", "linux16", "biosdisk", "iso9660", "search", "serial", "terminal", "echo")
CMDLINE = "console=tty0 console=ttyS0,115200"
VOLUME_ID = "XENAOE_LAB_INSTALLER"
BUILD_TIMEOUT_S = 300

GRUB_CFG = r"""# GRUB of the lab's installer ISO (lab/guests/installer_iso.py)
serial --unit=0 --speed=115200
# The menu on the screen and the serial console both; keys from the keyboard (VNC) only: a byte
# arriving on the serial line (a console client connecting) would stop the countdown for good.
terminal_input console
terminal_output console serial
set timeout=1
set timeout_style=menu
set default=0
menuentry "XenAoE lab installer" {
  # linux16: the kernel's real-mode setup runs, which records the BIOS drives (EDD); and under TCG
  # the kernel decompresses itself in ~7 s this way against ~12 s from the 32-bit entry of `linux`.
  echo "Loading the kernel..."
  linux16 /boot/vmlinuz @CMDLINE@ xenaoe.boot=$cmdpath
  echo "Loading the initramfs..."
  initrd16 /boot/initrd.img
  echo "Starting the kernel (root $root)..."
}
"""

INITTAB = """\
ttyS0::respawn:-/bin/sh
tty1::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
"""

PROFILE = """\
export PATH=/sbin:/bin
export PS1='@PROMPT@'
cd /root
"""

INIT = r"""#!/bin/busybox sh
# /init of the lab's installer ISO (lab/guests/installer_iso.py): installs the CD onto the virtio
# disks when there is a CD, says it booted from disk when there is none; then busybox init.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /root
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
# Onto both consoles: a process's /dev/console is only the last console= of the command line.
say() {
  for tty in /dev/ttyS0 /dev/tty1; do { echo "$*" > $tty; } 2> /dev/null; done
}
diag() { say "xenaoe-lab-init: $*"; }

for m in @MODULES@; do insmod /lib/modules/$m.ko || diag "insmod $m failed"; done

# insmod returns once the devices it found are probed; wait a little anyway (bounded) until every
# virtio block device has its disk and every SCSI CD-ROM (type 5) its sr device.
settled() {
  for d in /sys/bus/virtio/devices/*; do
    [ "$(cat $d/device 2> /dev/null)" = 0x0002 ] && ! ls $d/block/* > /dev/null 2>&1 && return 1
  done
  for d in /sys/bus/scsi/devices/*:*:*:*; do
    [ "$(cat $d/type 2> /dev/null)" = 5 ] && ! ls $d/block/* > /dev/null 2>&1 && return 1
  done
  return 0
}
n=0
until settled; do
  n=$((n + 1)); [ $n -ge 50 ] && { diag "block devices still missing after 5 s"; break; }; sleep 0.1
done
# From here on only errors from the kernel on the consoles: its notices would land in the middle
# of the lines below, which the panel's tests read.
dmesg -n 4

disks=""
for d in /sys/block/vd*; do [ -e "$d" ] && disks="$disks ${d##*/}"; done
disks=${disks# }
cd=""
for d in /sys/block/sr*; do
  [ -e "$d" ] || continue
  # A drive without media still has a size (sr's guess when it cannot read the capacity): what
  # tells is whether its first block can be read. Opening it also makes the kernel look again.
  dd if=/dev/${d##*/} of=/dev/null bs=2048 count=1 2> /dev/null && { cd=${d##*/}; break; }
done

arg() {  # arg NAME: the value of NAME=... on the kernel command line
  for word in $(cat /proc/cmdline); do case "$word" in "$1="*) echo "${word#*=}"; return;; esac; done
}

# Which disk the BIOS booted: GRUB passes its $cmdpath, e.g. "(hd1)": BIOS drive 0x81. The kernel's
# EDD data (filled by its real-mode setup: linux16) names the PCI device of each BIOS drive.
boot_disk() {
  bios=$(arg xenaoe.boot); bios=${bios#(}; bios=${bios%)}; bios=${bios%%,*}
  case "$bios" in hd[0-9]*) ;; *) echo "unknown (GRUB booted from ${bios:-?})"; return;; esac
  drive=$(printf %x $((0x80 + ${bios#hd})))
  pci=$(readlink -f /sys/firmware/edd/int13_dev$drive/pci_dev 2> /dev/null)
  for d in $disks; do
    if [ -n "$pci" ] && [ "$(readlink -f /sys/block/$d/device/..)" = "$pci" ]; then
      echo "$d (serial $(cat /sys/block/$d/serial 2> /dev/null), BIOS $bios)"; return
    fi
  done
  echo "unknown (BIOS $bios, EDD PCI device ${pci:-none})"
}

if [ -n "$cd" ]; then
  sectors=$(($(blockdev --getsize64 /dev/$cd) / 512))
  say "@INSTALLING@ /dev/$cd ($((sectors / 2048)) MiB) onto ${disks:-no disk}"
  written=""
  for d in $disks; do
    if [ "$(cat /sys/block/$d/size)" -lt "$sectors" ]; then
      say "xenaoe-lab-installer: $d is smaller than the CD, not written"
    elif dd if=/dev/$cd of=/dev/$d bs=1M conv=fsync 2> /tmp/dd.err; then
      written="$written $d"
    else
      say "xenaoe-lab-installer: writing $d failed: $(tail -n 1 /tmp/dd.err)"
    fi
  done
  if [ -n "$written" ]; then
    say "@INSTALLED@ onto${written}; eject the CD and reboot"
  else
    say "xenaoe-lab-installer: nothing installed (virtio disks: ${disks:-none})"
  fi
else
  say "@BOOTED_FROM_DISK@ $(boot_disk); no CD media (virtio disks: ${disks:-none})"
fi

exec /bin/busybox init
"""


def _render(text: str) -> str:
    for name, value in (("@INSTALLING@", INSTALLING), ("@INSTALLED@", INSTALLED),
                        ("@BOOTED_FROM_DISK@", BOOTED_FROM_DISK), ("@PROMPT@", PROMPT), ("@CMDLINE@", CMDLINE)):
        text = text.replace(name, value)
    return text


def build_initramfs(modules: Path) -> bytes:
    archive = Cpio()
    for directory in ("/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/bin", "/sbin", "/root"):
        archive.directory(directory)
    archive.char_device("/dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs exists
    archive.char_device("/dev/null", 1, 3)
    ordered = modules_in_load_order(modules, MODULES)
    names = [path.name.split(".ko")[0] for path in ordered]
    archive.file("/init", _render(INIT).replace("@MODULES@", " ".join(names)).encode())
    archive.file("/etc/inittab", INITTAB.encode(), mode=0o644)
    archive.file("/etc/profile", _render(PROFILE).encode(), mode=0o644)
    archive.file("/bin/busybox", BUSYBOX.resolve().read_bytes())
    for name, path in zip(names, ordered, strict=True):
        archive.file(f"/lib/modules/{name}.ko", module_bytes(path), mode=0o644)
    # mtime=0: the same inputs give the same bytes.
    return gzip.compress(archive.finish(), compresslevel=9, mtime=0)


def _fingerprint(kernel: Path, modules: Path) -> str:
    texts = (_render(INIT), INITTAB, _render(PROFILE), _render(GRUB_CFG), VOLUME_ID, *MODULES, "|", *GRUB_MODULES)
    digest = hashlib.sha256("\0".join(texts).encode())
    for path in (kernel, BUSYBOX, GRUB_PC / "kernel.img", GRUB_PC / "linux.mod", Path("/usr/bin/grub-mkrescue"),
                 Path("/usr/bin/xorriso")):
        info = path.resolve().stat()
        digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}".encode())
    digest.update(modules.name.encode())
    return digest.hexdigest()[:12]


def iso_name(kernel: Path, modules: Path) -> str:
    return f"xenaoe-lab-installer-{modules.name}-{_fingerprint(kernel, modules)}.iso"


def build(cache_dir: Path, *, install_packages: bool = True) -> Path:
    """The path of the installer ISO under `cache_dir`, built on the first call for these inputs
    (later calls return at once). Installs the Debian packages it needs if missing and allowed."""
    cache_dir = cache_dir.resolve()
    try:  # built already: no need to ask dpkg about the packages
        kernel, modules = debian_kernel()
        iso = cache_dir / iso_name(kernel, modules)
        if iso.is_file():
            return iso
    except (GuestBuildError, OSError):
        pass
    if install_packages:
        ensure_packages(PACKAGES)
    for tool in ("grub-mkrescue", "xorriso"):
        if shutil.which(tool) is None:
            raise GuestBuildError(f"{tool} is missing: install grub-common and xorriso")
    if not (GRUB_PC / "boot_hybrid.img").is_file():
        raise GuestBuildError(f"{GRUB_PC} is missing: install grub-pc-bin")
    kernel, modules = debian_kernel()
    iso = cache_dir / iso_name(kernel, modules)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="installer-iso-", dir=cache_dir) as work:
        tree = Path(work) / "tree"
        (tree / "boot" / "grub").mkdir(parents=True)
        shutil.copyfile(kernel, tree / "boot" / "vmlinuz")
        (tree / "boot" / "initrd.img").write_bytes(build_initramfs(modules))
        (tree / "boot" / "grub" / "grub.cfg").write_text(_render(GRUB_CFG))
        partial = Path(work) / "installer.iso"
        command = ["grub-mkrescue", "--directory", str(GRUB_PC), "--output", str(partial),
                   "--install-modules", " ".join(GRUB_MODULES), "--locales=", "--fonts=", "--themes=",
                   "--compress=xz", str(tree), "--", "-volid", VOLUME_ID]
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        if result.returncode != 0 or not partial.is_file():
            raise GuestBuildError(f"grub-mkrescue failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        partial.chmod(0o644)
        partial.replace(iso)  # atomic: a concurrent build or reader sees the old file or the whole new one
    return iso
