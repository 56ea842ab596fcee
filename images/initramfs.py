"""The initramfs that boots a VM's root from its RAID1, built by the panel for each image.

Why the panel builds it (docs/storage.md, "A mirrored root that boots"): the guest's root sits on
an md RAID1 over its two AoE legs, and the array must come up from either leg alone when one disk
server is down at boot. A small archive of our own does exactly that and nothing else: busybox,
mdadm and the handful of kernel modules the image's kernel needs for virtio disks and md, taken
from the image itself (their dependencies from its modules.dep). Its /init (images/guest/init)
assembles the array by the UUID the panel gave it, creates it on the VM's very first boot, mounts
it and hands over to the image's own /sbin/init. Booting in ~2 s under TCG, against ~10 s and a
degraded-boot wait of 20 s for Debian's generic initramfs.

The archive is written here in Python (cpio "newc", gzip with mtime 0): the same inputs give the
same bytes, so its checksum names it.
"""
from __future__ import annotations

import gzip
import io
import re
import stat
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # busybox-static: no libraries to carry
MDADM = Path("/sbin/mdadm")
GUEST_FILES = Path(__file__).resolve().parent / "guest"
# What the root needs before /sbin/init: virtio disks, md RAID1, ext4 (built in on some kernels).
ROOT_MODULES = ("virtio_pci", "virtio_blk", "raid1", "ext4")


class InitramfsError(Exception):
    """The inputs for an initramfs are missing or wrong (no such module, no mdadm, ...)."""


class Cpio:
    """An initramfs archive: cpio "newc" format, which the kernel unpacks into its rootfs."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1
        self.seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/")
        if name in self.seen:
            return
        self.seen.add(name)
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self.out.write(b"070701" + b"".join(f"{value:08x}".encode() for value in fields) + encoded)
        self._pad()
        self.out.write(data)
        self._pad()
        self.ino += 1

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name: str) -> None:
        parts = Path(name.lstrip("/")).parts
        for depth in range(1, len(parts) + 1):
            self._entry("/".join(parts[:depth]), stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self.directory(str(Path(name).parent))
        self._entry(name, stat.S_IFREG | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self.directory(str(Path(name).parent))
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries `binary` loads, the dynamic loader included, as ldd resolves them."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InitramfsError(f"ldd {binary} failed: {result.stderr.strip()}")
    libraries = []
    for line in result.stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libraries.append(Path(match.group(1)))
    return libraries


def binary_files(binary: Path, guest_dir: str = "/sbin") -> dict[str, Path]:
    """{path in the guest: path here} for a binary and its libraries. The loader keeps the path
    compiled into the binary; the other libraries go to the one directory LD_LIBRARY_PATH names."""
    files = {f"{guest_dir}/{binary.name}": binary}
    for library in shared_libraries(binary):
        guest = str(library) if library.name.startswith("ld-linux") else f"/lib/x86_64-linux-gnu/{library.name}"
        files[guest] = library
    return files


def _key(name: str) -> str:
    return name.replace("-", "_")


def modules_in_load_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for `wanted` and everything they depend on, dependencies first, from the
    kernel's own modules.dep; modules built into the kernel (modules.builtin) are skipped."""
    deps: dict[str, tuple[Path, list[str]]] = {}
    dep_file = modules_dir / "modules.dep"
    if not dep_file.is_file():
        raise InitramfsError(f"{dep_file} is missing: not a kernel's modules directory")
    for line in dep_file.read_text().splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        name = _key(Path(path).name.split(".ko")[0])
        deps[name] = (modules_dir / path, [_key(Path(d).name.split(".ko")[0]) for d in rest.split()])
    builtin_file = modules_dir / "modules.builtin"
    builtin = {_key(Path(line).name.split(".ko")[0]) for line in builtin_file.read_text().splitlines()} \
        if builtin_file.is_file() else set()
    ordered: list[Path] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in builtin:
            return
        if name not in deps:
            raise InitramfsError(f"kernel module {name} is neither in {dep_file} nor built in")
        if name in chain:
            raise InitramfsError(f"kernel modules depend on each other in a loop: {' -> '.join(chain)}")
        path, needs = deps[name]
        for need in needs:
            visit(need, (*chain, name))
        done.add(name)
        ordered.append(path)

    for name in wanted:
        visit(_key(name), ())
    return ordered


def module_bytes(path: Path) -> bytes:
    """A module's bytes, uncompressed: insmod of busybox reads plain .ko only."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        import lzma

        return lzma.decompress(data)
    if path.suffix == ".zst":
        raise InitramfsError(f"{path}: zstd-compressed modules are not supported yet")
    return data


def build(modules_dir: Path, *, init: Path = GUEST_FILES / "init") -> bytes:
    """The gzipped initramfs for the kernel whose modules are in `modules_dir`."""
    if not BUSYBOX.is_file() or not MDADM.is_file():
        raise InitramfsError(f"{BUSYBOX} and {MDADM} are needed (Debian packages busybox-static and mdadm)")
    archive = Cpio()
    for directory in ("/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/bin", "/sbin", "/root"):  # noqa: S108 - in the guest
        archive.directory(directory)
    archive.char_device("/dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs exists
    archive.char_device("/dev/null", 1, 3)
    modules = modules_in_load_order(modules_dir, ROOT_MODULES)
    names = [Path(p.name.split(".ko")[0]).name for p in modules]
    archive.file("/init", init.read_bytes())
    archive.file("/etc/modules", ("\n".join(names) + "\n").encode(), mode=0o644)
    archive.file("/bin/busybox", BUSYBOX.read_bytes())
    for guest, source in sorted(binary_files(MDADM).items()):
        archive.file(guest, source.resolve().read_bytes())
    for name, path in zip(names, modules, strict=True):
        archive.file(f"/lib/modules/{name}.ko", module_bytes(path), mode=0o644)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)
