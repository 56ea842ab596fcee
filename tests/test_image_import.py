"""Importing disk images (raw and qcow2, whole filesystems and partitioned disks) and the operators'
upload, on small images made here with mkfs.ext4 -d: the same tools, no real kernel needed."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from hosts.models import DiskServer
from images import importer
from images.models import Image
from jobs.models import Job
from jobs.runner import run_job

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("debugfs") is None,
                                reason="needs qemu-utils and e2fsprogs")
KERNEL = "6.1.0-test"


def _tree(root: Path, *, login_user: str = "alice") -> Path:
    """A minimal root filesystem: init, a kernel, its modules, os-release, a user."""
    (root / "sbin").mkdir(parents=True)
    (root / "sbin/init").write_text("#!/bin/sh\n")
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{KERNEL}").write_bytes(b"MZ fake kernel " * 64)
    modules = root / "lib/modules" / KERNEL
    deps = {"virtio_pci": [], "virtio_blk": [], "raid1": ["md-mod"], "md-mod": []}
    lines = []
    for name, needs in deps.items():
        (modules / "kernel").mkdir(parents=True, exist_ok=True)
        (modules / "kernel" / f"{name}.ko").write_bytes(b"\x7fELF" + name.encode())
        lines.append(f"kernel/{name}.ko: " + " ".join(f"kernel/{n}.ko" for n in needs))
    (modules / "modules.dep").write_text("\n".join(lines) + "\n")
    (modules / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('NAME="Testix"\nVERSION="7 (lab)"\nVERSION_ID="7"\n')
    (root / "etc/passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{login_user}:x:1000:1000::/home/{login_user}:/bin/sh\n")
    return root


def _filesystem(tmp_path: Path, size_mib: int = 16) -> Path:
    image = tmp_path / "fs.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(_tree(tmp_path / "tree")), str(image), f"{size_mib}M"],
                   check=True)
    return image


def _partitioned(tmp_path: Path) -> Path:
    """A disk with an MBR: a small FAT-less first partition, the root filesystem in the second."""
    fs = _filesystem(tmp_path)
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as out:
        out.truncate(20 << 20)
    subprocess.run(["sfdisk", "-q", str(disk)], input="start=2048,size=2048,type=83\nstart=4096,type=83\n",
                   text=True, check=True)
    subprocess.run(["dd", f"if={fs}", f"of={disk}", "bs=512", "seek=4096", "conv=notrunc", "status=none"], check=True)
    return disk


def _qcow2(raw: Path) -> Path:
    target = raw.with_suffix(".qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(target)], check=True)
    return target


@pytest.mark.parametrize("kind", ["raw", "qcow2", "partitioned-qcow2"])
def test_an_image_file_becomes_a_root_filesystem_its_kernel_and_an_initramfs(tmp_path, kind):
    source = {"raw": lambda: _filesystem(tmp_path), "qcow2": lambda: _qcow2(_filesystem(tmp_path)),
              "partitioned-qcow2": lambda: _qcow2(_partitioned(tmp_path))}[kind]()
    steps: list[str] = []
    found = importer.import_file(source, tmp_path / "out", lambda _p, message: steps.append(message))
    assert found.source_format == ("raw" if kind == "raw" else "qcow2")
    assert (found.os_name, found.os_version, found.login_user, found.kernel_version) == (
        "Testix", "7 (lab)", "alice", KERNEL)
    assert found.kernel.read_bytes() == b"MZ fake kernel " * 64
    assert found.size_mib == (18 if kind.startswith("partitioned") else 16)  # the partition, or the file
    assert found.sha256 == hashlib.sha256(found.disk.read_bytes()).hexdigest()
    blkid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(found.disk)], capture_output=True,
                           text=True, check=True)
    assert blkid.stdout.strip() == "ext4"  # the root filesystem alone, at offset 0
    listing = subprocess.run(["sh", "-c", f"gzip -dc {found.initrd} | cpio -t --quiet"], capture_output=True,
                             text=True, check=False)
    if listing.returncode == 0:
        assert {"lib/modules/raid1.ko", "lib/modules/md-mod.ko", "init"} <= set(listing.stdout.split())
    assert "no qemu-guest-agent: the panel cannot see its mirror from inside" in found.warnings


def test_what_is_not_an_image_is_refused_with_the_reason(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a disk")
    with pytest.raises(importer.ImportError_, match="no ext4 root filesystem"):  # qemu-img calls any file raw
        importer.import_file(text, tmp_path / "out", lambda *_: None)
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "16M"], check=True)
    with pytest.raises(importer.ImportError_, match="is a vmdk image; the panel imports raw and qcow2"):
        importer.import_file(vmdk, tmp_path / "out", lambda *_: None)
    empty = tmp_path / "empty.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(empty), "8M"], check=True)
    with pytest.raises(importer.ImportError_, match="no ext4 root filesystem"):
        importer.import_file(empty, tmp_path / "out", lambda *_: None)


@pytest.mark.django_db(transaction=True)
def test_an_operator_uploads_an_image_and_it_is_imported(tmp_path, settings, django_user_model):
    settings.IMAGE_STORE = tmp_path / "store"
    DiskServer.objects.create(name="disk1", address="192.0.2.11", aoe_shelf=1, capacity_mib=1000)
    operator = django_user_model.objects.create_user("op", password="op-password-1", is_staff=True)
    client = Client()
    client.force_login(operator)
    data = _qcow2(_filesystem(tmp_path)).read_bytes()
    response = client.post("/images/upload/", {"file": SimpleUploadedFile("testix.qcow2", data), "name": "testix",
                                                "sha256": hashlib.sha256(data).hexdigest()})
    assert response.status_code == 302, response.content[:500]
    job = Job.objects.get(kind="image.import")
    assert response.url == job.get_absolute_url()
    run_job(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded", job.message
    image = Image.objects.get(name="testix")
    assert (image.os_name, image.login_user, image.source_format) == ("Testix", "alice", "qcow2")
    assert (image.store_dir / "initrd.img").is_file()
    assert not list((tmp_path / "store" / "uploads").glob("*.upload"))  # the upload is not kept twice
    # Then it is copied to the disk servers (a job of its own; this disk server is not reachable).
    assert Job.objects.get(kind="image.copy").params["disk_servers"] == ["disk1"]


@pytest.mark.django_db
def test_an_upload_with_the_wrong_checksum_or_over_the_limit_changes_nothing(tmp_path, settings,
                                                                            django_user_model):
    settings.IMAGE_STORE = tmp_path / "store"
    settings.IMAGE_UPLOAD_MAX_MIB = 1
    operator = django_user_model.objects.create_user("op", password="op-password-1", is_staff=True)
    client = Client()
    client.force_login(operator)
    page = client.post("/images/upload/", {"file": SimpleUploadedFile("a.raw", b"x" * 1000), "name": "a",
                                           "sha256": "0" * 64})
    assert page.status_code == 200 and b"the file&#x27;s SHA-256 is" in page.content
    big = client.post("/images/upload/", {"file": SimpleUploadedFile("b.raw", b"x" * (2 << 20)), "name": "b"})
    assert big.status_code == 413
    assert not Job.objects.exists() and not Image.objects.exists()
    assert not list((tmp_path / "store").rglob("*.upload"))
