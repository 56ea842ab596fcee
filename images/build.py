"""Build an image from Debian packages: mmdebstrap into a directory, the panel's guest files on
top, then an ext4 filesystem image of it (mkfs.ext4 -d: no loop mount, no root filesystem tricks),
the image's kernel and the panel's initramfs for it beside it (images/initramfs.py).

An image is three files: `disk.raw` (an ext4 filesystem, written at offset 0 of each leg; the
RAID1 superblock goes at the end of the leg, metadata 1.0), `vmlinuz` (the image's kernel) and
`initrd.img`. Built once per recipe fingerprint and kept in the build cache, so a second `make
demo` or CI run reuses it (docs/images.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from images import initramfs

Progress = Callable[[int, str], None]
GUEST_FILES = initramfs.GUEST_FILES
MIB = 1 << 20
BUILD_TIMEOUT_S = 1800
# Filesystem headroom over what the files take: the image is grown to the VM's disk on first boot.
HEADROOM = 1.25
EXTRA_MIB = 96


@dataclass(frozen=True)
class Recipe:
    name: str
    os_name: str
    os_version: str
    suite: str
    packages: tuple[str, ...]
    login_user: str
    # Units that only slow a VM's boot down (and timers that wake it for nothing).
    masked_units: tuple[str, ...]


RECIPES = {
    "debian-12": Recipe(
        name="debian-12", os_name="Debian", os_version="12 (bookworm)", suite="bookworm",
        packages=("linux-image-cloud-amd64", "systemd-sysv", "udev", "dbus", "mdadm", "qemu-guest-agent",
                  "openssh-server", "iproute2", "e2fsprogs", "sudo", "iputils-ping", "zstd"),
        login_user="debian",
        masked_units=("e2scrub_reap.service", "e2scrub_all.timer", "systemd-networkd-wait-online.service",
                      "apt-daily.timer", "apt-daily-upgrade.timer", "fstrim.timer", "mdcheck_start.timer",
                      "mdcheck_continue.timer", "mdmonitor-oneshot.timer", "dpkg-db-backup.timer",
                      "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
                      "systemd-journald-audit.socket", "modprobe@drm.service", "modprobe@efi_pstore.service",
                      "modprobe@fuse.service", "modprobe@dm_mod.service", "modprobe@loop.service",
                      "sys-fs-fuse-connections.mount", "sys-kernel-config.mount", "modprobe@configfs.service"),
    ),
}


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class BuiltImage:
    directory: Path
    recipe: Recipe
    disk: Path
    kernel: Path
    initrd: Path
    size_mib: int
    sha256: str
    kernel_version: str

    def manifest(self) -> dict[str, object]:
        return {"recipe": self.recipe.name, "size_mib": self.size_mib, "sha256": self.sha256,
                "kernel_version": self.kernel_version}


def fingerprint(recipe: Recipe) -> str:
    """What the build depends on: the recipe and the panel's guest files. A change to either is
    a new image; a new package version upstream is not (rebuild with --refresh)."""
    digest = hashlib.sha256(json.dumps(recipe.__dict__, sort_keys=True).encode())
    for path in sorted(GUEST_FILES.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:12]


def cached(cache_dir: Path, recipe: Recipe) -> BuiltImage | None:
    directory = cache_dir / f"{recipe.name}-{fingerprint(recipe)}"
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    return BuiltImage(directory, recipe, directory / "disk.raw", directory / "vmlinuz", directory / "initrd.img",
                      int(data["size_mib"]), str(data["sha256"]), str(data["kernel_version"]))


def build(recipe: Recipe, cache_dir: Path, progress: Progress, *, refresh: bool = False) -> BuiltImage:
    """The image for `recipe`, from the cache or built now (needs root and the apt sources)."""
    if not refresh and (hit := cached(cache_dir, recipe)) is not None:
        progress(100, f"{recipe.name}: cached build {hit.directory.name}")
        return hit
    if os.geteuid() != 0:
        raise BuildError("building an image needs root (mmdebstrap --mode=root, device nodes in the image)")
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is not installed (Debian package mmdebstrap)")
    final = cache_dir / f"{recipe.name}-{fingerprint(recipe)}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{recipe.name}-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        _debootstrap(recipe, rootfs, progress)
        progress(70, "adding the panel's guest files")
        customise(rootfs, recipe)
        kernel_version = _kernel_version(rootfs)
        progress(75, f"initramfs for kernel {kernel_version}")
        (work / "initrd.img").write_bytes(initramfs.build(rootfs / "lib" / "modules" / kernel_version))
        shutil.copyfile(rootfs / "boot" / f"vmlinuz-{kernel_version}", work / "vmlinuz")
        progress(80, "ext4 filesystem image")
        size_mib = make_filesystem(rootfs, work / "disk.raw")
        progress(95, "checksum")
        sha256 = file_sha256(work / "disk.raw")
        shutil.rmtree(rootfs)
        built = BuiltImage(final, recipe, final / "disk.raw", final / "vmlinuz", final / "initrd.img",
                           size_mib, sha256, kernel_version)
        (work / "manifest.json").write_text(json.dumps(built.manifest(), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        progress(100, f"{recipe.name}: {size_mib} MiB, sha256 {sha256[:12]}")
        return built
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


# mmdebstrap's phases, in order, and how far along the build is when each starts.
PHASES = (("running apt-get update", 5), ("downloading packages", 15), ("extracting archives", 35),
          ("installing essential packages", 45), ("installing remaining packages", 55),
          ("cleaning package lists", 68))


def _debootstrap(recipe: Recipe, rootfs: Path, progress: Progress) -> None:
    command = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
               "--dpkgopt=force-unsafe-io", f"--include={','.join(recipe.packages)}", recipe.suite, str(rootfs)]
    progress(1, " ".join(command[:2]) + f" {recipe.suite} ({len(recipe.packages)} packages)")
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive")) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-40:], line.rstrip()]
            for phase, percent in PHASES:
                if phase in line:
                    progress(percent, phase)
        code = proc.wait(timeout=BUILD_TIMEOUT_S)
    if code != 0:
        raise BuildError(f"mmdebstrap failed ({code}):\n" + "\n".join(tail))


def _kernel_version(rootfs: Path) -> str:
    versions = sorted(p.name for p in (rootfs / "lib" / "modules").iterdir() if (p / "modules.dep").is_file())
    if len(versions) != 1:
        raise BuildError(f"expected one kernel in the image, found {versions or 'none'}")
    return versions[0]


def _install(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def customise(rootfs: Path, recipe: Recipe) -> None:
    """The panel's part of the image: root on /dev/md0, its first-boot agent and leg watcher, a
    login user with sudo, no identity of its own (machine-id, SSH host keys: made on first boot),
    a quiet, fast boot."""
    for name in ("xenaoe-firstboot", "xenaoe-mdwatch"):
        _install(GUEST_FILES / name, rootfs / "usr/local/sbin" / name, 0o755)
    units = rootfs / "etc/systemd/system"
    for name in ("xenaoe-firstboot.service", "xenaoe-mdwatch.service"):
        _install(GUEST_FILES / name, units / name, 0o644)
    (rootfs / "etc/fstab").write_text("# the root RAID1, assembled by the panel's initramfs\n"
                                      "/dev/md0 / ext4 errors=remount-ro 0 1\n")
    (rootfs / "etc/mdadm").mkdir(exist_ok=True)
    (rootfs / "etc/mdadm/mdadm.conf").write_text(
        "# The root array is assembled by the initramfs (xenaoe.md=UUID on the kernel command line).\n"
        "HOMEHOST <ignore>\nMAILADDR root\n")
    (rootfs / "etc/hostname").write_text("localhost\n")
    (rootfs / "etc/machine-id").write_text("")  # systemd makes one on first boot
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/sudoers.d").mkdir(exist_ok=True)
    sudoers = rootfs / "etc/sudoers.d/90-xenaoe"
    sudoers.write_text(f"{recipe.login_user} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    _chroot(rootfs, ["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", recipe.login_user])
    _chroot(rootfs, ["passwd", "--lock", recipe.login_user])
    _chroot(rootfs, ["systemctl", "enable", "xenaoe-firstboot.service", "xenaoe-mdwatch.service",
                     "systemd-networkd.service"])
    _chroot(rootfs, ["systemctl", "mask", *recipe.masked_units])
    _chroot(rootfs, ["systemctl", "set-default", "multi-user.target"])
    # Only the host keys xenaoe-firstboot makes (no RSA: see there).
    (rootfs / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/ssh/sshd_config.d/xenaoe.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\nPasswordAuthentication no\n")
    # qemu-ga as soon as its port exists: the panel reads the mirror's health through it.
    dropin = units / "qemu-guest-agent.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "early.conf").write_text("[Unit]\nDefaultDependencies=no\n")
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def _chroot(rootfs: Path, argv: list[str]) -> None:
    result = subprocess.run(["chroot", str(rootfs), *argv], capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    if result.returncode != 0:
        raise BuildError(f"in the image: {' '.join(argv)} failed: {result.stderr.strip()}")


def make_filesystem(rootfs: Path, output: Path) -> int:
    """An ext4 filesystem image of `rootfs` sized to what it holds plus headroom; its size in MiB."""
    used = int(subprocess.run(["du", "-sx", "--block-size=1", str(rootfs)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    size_mib = -(-int(used * HEADROOM / MIB + EXTRA_MIB) // 64) * 64  # whole 64 MiB
    result = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(output), f"{size_mib}M"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"mkfs.ext4 failed: {result.stderr.strip()}")
    return size_mib


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


