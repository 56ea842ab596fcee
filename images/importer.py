"""Turn a disk image file (raw or qcow2) into an image of the library: its root filesystem as
`disk.raw`, its kernel, and the panel's initramfs for that kernel.

A VM's legs hold one ext4 filesystem at offset 0 (the RAID1 superblock, md metadata 1.0, sits at the
end), and the VM boots by direct kernel boot, so whatever bootloader and partition table the file
had are not needed: qemu-img converts it to raw, the root filesystem is taken out of its partition
(or used whole), and the kernel and its modules are read out of it with debugfs, without mounting
anything. docs/images.md.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from images import initramfs
from images.build import MIB, file_sha256

Progress = Callable[[int, str], None]
FORMATS = ("raw", "qcow2")
SECTOR = 512
TIMEOUT_S = 3600


class ImportError_(Exception):  # noqa: N801 - "ImportError" is Python's own
    """The file is not an image the panel can boot (and says why)."""


@dataclass(frozen=True)
class Imported:
    disk: Path
    kernel: Path | None  # None for an ISO: it boots itself from the VM's CD drive
    initrd: Path | None
    size_mib: int
    sha256: str
    kernel_version: str
    source_format: str
    os_name: str
    os_version: str
    login_user: str  # "" when the image has no obvious one
    warnings: tuple[str, ...]
    kind: str = "disk"  # images.choices.ImageKind


# An ISO 9660 filesystem: its primary volume descriptor at 32 KiB starts with type 1 and "CD001";
# the volume label follows at byte 40 of it (32 characters, space-padded).
ISO_MAGIC_OFFSET = 0x8001
ISO_LABEL = slice(0x8028 - 0x8001, 0x8028 - 0x8001 + 32)


def iso_label(path: Path) -> str | None:
    """The volume label if `path` is an ISO 9660 image (a CD or a hybrid installer image), else None."""
    with path.open("rb") as f:
        f.seek(ISO_MAGIC_OFFSET)
        head = f.read(ISO_LABEL.stop)
    if head[:5] != b"CD001":
        return None
    return head[ISO_LABEL].decode("ascii", "replace").strip()


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise ImportError_(f"{what}: {result.stderr.strip() or result.stdout.strip() or result.returncode}")
    return result


def probe_format(path: Path) -> str:
    if shutil.which("qemu-img") is None:
        raise ImportError_("qemu-img is not installed (Debian package qemu-utils)")
    info = json.loads(_run(["qemu-img", "info", "--output=json", str(path)], f"{path} is not a disk image").stdout)
    fmt = info.get("format", "")
    if fmt not in FORMATS:
        raise ImportError_(f"{path} is a {fmt or 'unknown'} image; the panel imports {' and '.join(FORMATS)}")
    if info.get("backing-filename"):
        raise ImportError_(f"{path} has a backing file: convert it to a standalone image first")
    return fmt


def _fs_type(path: Path) -> str:
    result = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(path)], capture_output=True,
                            text=True, check=False)
    return result.stdout.strip()


def _partitions(path: Path) -> list[tuple[int, int]]:
    """(start byte, size in bytes) of each partition in the file's table, if it has one."""
    result = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return []
    table = json.loads(result.stdout).get("partitiontable", {})
    unit = int(table.get("sectorsize", SECTOR))
    return [(int(p["start"]) * unit, int(p["size"]) * unit) for p in table.get("partitions", [])]


def _extract(source: Path, start: int, size: int, target: Path) -> None:
    """Bytes [start, start+size) of `source` into a new sparse file."""
    chunk = 4 * MIB
    zero = bytes(chunk)
    with source.open("rb") as src, target.open("wb") as out:
        src.seek(start)
        left = size
        while left:
            data = src.read(min(chunk, left))
            if not data:
                break
            if data == zero[:len(data)]:
                out.seek(len(data), 1)
            else:
                out.write(data)
            left -= len(data)
        out.truncate(size)


def debugfs(fs: Path, request: str) -> str:
    return _run(["debugfs", "-R", request, str(fs)], f"debugfs {request!r} on {fs.name}").stdout


def _exists(fs: Path, path: str) -> bool:
    result = subprocess.run(["debugfs", "-R", f"stat {path}", str(fs)], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "File not found" not in result.stderr


def _read(fs: Path, path: str) -> str:
    result = subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 and "not found" not in result.stderr else ""


def _is_root(fs: Path) -> bool:
    return _fs_type(fs) == "ext4" and any(_exists(fs, p) for p in ("/sbin/init", "/usr/sbin/init", "/usr/lib/systemd"))


def find_root(whole: Path, work: Path) -> Path:
    """The root filesystem: the file itself, or the partition that holds /sbin/init."""
    if _is_root(whole):
        return whole
    for index, (start, size) in enumerate(_partitions(whole)):
        candidate = work / f"part{index}.raw"
        _extract(whole, start, size, candidate)
        if _is_root(candidate):
            return candidate
        candidate.unlink()
    raise ImportError_("no ext4 root filesystem (with /sbin/init) in the image, whole or in a partition")


def _kernel_version(fs: Path) -> str:
    names = re.findall(r"vmlinuz-(\S+?)(?:\s|$)", debugfs(fs, "ls -p /boot").replace("/", " "))
    versions = sorted(set(names))
    if not versions:
        raise ImportError_("no kernel in the image's /boot (vmlinuz-*)")
    return versions[-1]


def _modules_dir(fs: Path, version: str) -> str:
    for base in ("/usr/lib/modules", "/lib/modules"):
        if _exists(fs, f"{base}/{version}/modules.dep"):
            return f"{base}/{version}"
    raise ImportError_(f"the modules of kernel {version} are not in the image")


def _os_release(fs: Path) -> tuple[str, str]:
    text = _read(fs, "/etc/os-release") or _read(fs, "/usr/lib/os-release")
    fields = dict(re.findall(r'^([A-Z_]+)="?(.*?)"?$', text, re.MULTILINE))
    return fields.get("NAME", "Linux"), fields.get("VERSION", fields.get("VERSION_ID", ""))


def _login_user(fs: Path) -> str:
    for line in _read(fs, "/etc/passwd").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2] == "1000":
            return fields[0]
    return ""


def import_file(source: Path, output: Path, progress: Progress) -> Imported:
    """Convert `source` into an image in the directory `output` (created)."""
    if not source.is_file():
        raise ImportError_(f"{source} is not a file")
    label = iso_label(source)
    if label is not None:
        return _import_iso(source, output, label, progress)
    fmt = probe_format(source)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output) as tmp:
        work = Path(tmp)
        whole = work / "whole.raw"
        progress(10, f"converting {fmt} to raw")
        _run(["qemu-img", "convert", "-O", "raw", str(source), str(whole)], "qemu-img convert")
        progress(40, "finding the root filesystem")
        root = find_root(whole, work)
        version = _kernel_version(root)
        progress(60, f"kernel {version} and its modules")
        modules = work / "modules"
        modules.mkdir()
        debugfs(root, f"rdump {_modules_dir(root, version)} {modules}")
        debugfs(root, f"dump /boot/vmlinuz-{version} {output / 'vmlinuz'}")
        progress(75, "initramfs")
        (output / "initrd.img").write_bytes(initramfs.build(modules / version))
        warnings = []
        if not _exists(root, "/usr/sbin/qemu-ga") and not _exists(root, "/usr/bin/qemu-ga"):
            warnings.append("no qemu-guest-agent: the panel cannot see its mirror from inside")
        if not _exists(root, "/usr/local/sbin/xenaoe-firstboot") and not _exists(root, "/usr/bin/cloud-init"):
            warnings.append("neither cloud-init nor the panel's first-boot agent: hostname, network and keys "
                            "will not be applied")
        os_name, os_version = _os_release(root)
        login_user = _login_user(root)
        progress(85, "checksum")
        root.rename(output / "disk.raw")
    disk = output / "disk.raw"
    size_mib = -(-disk.stat().st_size // MIB)
    return Imported(disk, output / "vmlinuz", output / "initrd.img", size_mib, file_sha256(disk), version, fmt,
                    os_name, os_version, login_user, tuple(warnings))


def _import_iso(source: Path, output: Path, label: str, progress: Progress) -> Imported:
    """An installer ISO is kept as it is: VMs boot it from their CD drive."""
    output.mkdir(parents=True, exist_ok=True)
    iso = output / "cdrom.iso"
    progress(20, f"ISO 9660 image {label!r}")
    _run(["cp", "--reflink=auto", str(source), str(iso)], "copying the ISO")
    progress(60, "checksum")
    size_mib = -(-iso.stat().st_size // MIB)
    return Imported(iso, None, None, size_mib, file_sha256(iso), "", "iso", label or "ISO", "", "", (), kind="iso")
