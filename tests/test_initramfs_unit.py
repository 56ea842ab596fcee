"""The initramfs the panel builds for an image's kernel: modules in dependency order, taken from
the kernel's own modules.dep, built-ins skipped; an archive the kernel can unpack."""
from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from images import initramfs


def _kernel(tmp_path: Path, deps: dict[str, list[str]], builtin: tuple[str, ...] = ()) -> Path:
    modules = tmp_path / "6.1.0-test"
    lines = []
    for name, needs in deps.items():
        path = f"kernel/drivers/{name}.ko"
        (modules / path).parent.mkdir(parents=True, exist_ok=True)
        (modules / path).write_bytes(b"\x7fELF" + name.encode())
        lines.append(f"{path}: " + " ".join(f"kernel/drivers/{n}.ko" for n in needs))
    (modules / "modules.dep").write_text("\n".join(lines) + "\n")
    (modules / "modules.builtin").write_text("".join(f"kernel/fs/{b}.ko\n" for b in builtin))
    return modules


def test_dependencies_come_first_and_built_ins_are_left_out(tmp_path):
    modules = _kernel(tmp_path, {
        "virtio_pci": ["virtio_pci_modern_dev", "virtio_ring", "virtio"], "virtio_pci_modern_dev": [],
        "virtio_ring": [], "virtio": [], "virtio_blk": ["virtio_ring", "virtio"], "raid1": ["md-mod"], "md-mod": [],
    }, builtin=("ext4",))
    order = [p.name for p in initramfs.modules_in_load_order(modules, initramfs.ROOT_MODULES)]
    assert set(order) == {"virtio_pci.ko", "virtio_pci_modern_dev.ko", "virtio_ring.ko", "virtio.ko",
                          "virtio_blk.ko", "raid1.ko", "md-mod.ko"}
    assert len(order) == len(set(order))
    pairs = (("virtio_pci.ko", "virtio.ko"), ("raid1.ko", "md-mod.ko"), ("virtio_blk.ko", "virtio_ring.ko"))
    for module, needs in pairs:
        assert order.index(needs) < order.index(module)


def test_a_missing_module_is_named(tmp_path):
    modules = _kernel(tmp_path, {"virtio_pci": [], "virtio_blk": [], "raid1": []})
    with pytest.raises(initramfs.InitramfsError, match="ext4 is neither in"):
        initramfs.modules_in_load_order(modules, initramfs.ROOT_MODULES)


def test_the_archive_holds_init_busybox_mdadm_and_the_modules(tmp_path):
    modules = _kernel(tmp_path, {"virtio_pci": [], "virtio_blk": [], "raid1": ["md-mod"], "md-mod": []},
                      builtin=("ext4",))
    archive = tmp_path / "initrd.cpio"
    data = initramfs.build(modules)
    assert initramfs.build(modules) == data  # the same inputs, the same bytes: its checksum names it
    archive.write_bytes(gzip.decompress(data))
    listing = subprocess.run(["cpio", "-t", "--quiet", "-F", str(archive)], capture_output=True, text=True,
                             check=False)
    if listing.returncode != 0:
        pytest.skip("cpio is not installed")
    names = set(listing.stdout.split())
    assert {"init", "bin/busybox", "sbin/mdadm", "etc/modules", "lib/modules/raid1.ko",
            "lib/modules/md-mod.ko"} <= names
    assert any(name.startswith("lib64/ld-linux") or "/ld-linux" in name for name in names)
