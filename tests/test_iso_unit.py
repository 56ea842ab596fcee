"""Installing from an ISO, without hosts: what the import recognises, what registering reserves
(a read-only export per disk server, from the top of its shelf), what creating a VM with an ISO
checks, the domain's CD drive and boot order, and eject's refusals. The lab test
(tests/integration/test_install_from_iso.py) drives the same paths on real hosts."""
from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from drivers import hypervisor
from drivers.errors import DriverError
from hosts.models import CpuServer, DiskServer
from images import importer
from images.choices import ImageKind, ImageState
from images.models import Image, ImageCopy
from images.services import ImageFiles, ImageRequest, delete_image, register_image, set_default
from jobs.models import Job
from storage.models import AoEExport
from tenants.services import add_user, create_tenant
from vms import guest_setup
from vms.guest_setup import domain_spec
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, eject_cd

pytestmark = pytest.mark.django_db


def _iso_file(tmp_path: Path, label: str = "LAB_INSTALLER") -> Path:
    if shutil.which("xorriso") is None:
        pytest.skip("needs xorriso")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "README").write_text("an installer\n")
    iso = tmp_path / "cd.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", label, "-o", str(iso), str(tree)], check=True,
                   capture_output=True)
    return iso


@pytest.fixture
def cluster(settings, tmp_path):
    settings.IMAGE_STORE = str(tmp_path / "store")
    for i in (1, 2):
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=4096, vcpus=4)
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000)


def _ready_iso(name: str = "installer", **fields) -> Image:
    return Image.objects.create(**{"name": name, "kind": ImageKind.ISO, "os_name": "Installer", "size_mib": 30,
                                   "sha256": "d" * 64, "state": ImageState.READY, **fields})


def test_an_iso_is_recognised_and_kept_as_it_is(tmp_path):
    iso = _iso_file(tmp_path)
    assert importer.iso_label(iso) == "LAB_INSTALLER"
    found = importer.import_file(iso, tmp_path / "out", lambda percent, message: None)
    assert (found.kind, found.kernel, found.initrd, found.os_name) == ("iso", None, None, "LAB_INSTALLER")
    assert found.disk.read_bytes() == iso.read_bytes()
    raw = tmp_path / "not-an-iso.raw"
    raw.write_bytes(bytes(64 * 1024))
    assert importer.iso_label(raw) is None


def test_registering_an_iso_reserves_a_read_only_export_per_disk_server_from_the_top(cluster, tmp_path):
    iso = _iso_file(tmp_path)
    files = ImageFiles(iso, None, None, 1, "", kind=ImageKind.ISO)
    job = register_image(ImageRequest(name="installer", os_name="Installer", os_version="", login_user="",
                                      source="test"), files)
    image = Image.objects.get(name="installer")
    assert image.is_iso and not image.is_default  # an ISO never becomes the default by being first
    assert (image.store_dir / "cdrom.iso").read_bytes() == iso.read_bytes()
    assert job.kind == "image.copy"
    exports = AoEExport.objects.filter(image_copy__image=image).order_by("shelf")
    assert [(e.shelf, e.slot) for e in exports] == [(1, 254), (2, 254)]
    assert all(e.backing_path.endswith(".iso") and e.backing_path == e.image_copy.path for e in exports)
    # A second ISO takes the next slot down; VMs keep taking theirs from the bottom.
    second = _ready_iso("second")
    from images.services import copy_to_disk_servers

    copy_to_disk_servers(second)
    assert sorted(AoEExport.objects.filter(image_copy__image=second).values_list("slot", flat=True)) == [253, 253]
    with pytest.raises(ValidationError, match="ISO"):
        set_default("installer")


def test_an_iso_with_default_requested_or_a_bad_name_changes_nothing(cluster, tmp_path):
    iso = _iso_file(tmp_path)
    files = ImageFiles(iso, None, None, 1, "", kind=ImageKind.ISO)
    with pytest.raises(ValidationError, match="default"):
        register_image(ImageRequest(name="installer", os_name="Installer", os_version="", login_user="",
                                    source="test", make_default=True), files)
    assert (Image.objects.count(), AoEExport.objects.count(), Job.objects.count()) == (0, 0, 0)


@pytest.mark.parametrize("overrides, field, text", [
    ({"iso": "nope"}, "iso", "no ISO named"),
    ({"iso": "installer", "image": "debian-12"}, "iso", "empty disk"),
    ({"iso": "installer", "kernel_path": "/boot/vmlinuz"}, "iso", "not both"),
    ({"iso": "installer", "password": "a-long-password-1"}, "iso", "installer asks for its own"),
    ({"iso": "pending"}, "iso", "not ready"),
])
def test_a_bad_iso_request_is_refused_and_creates_nothing(cluster, overrides, field, text):
    _ready_iso()
    _ready_iso("pending", state=ImageState.PENDING)
    request = VmRequest(**{"name": "vm1", "vcpus": 1, "memory_mib": 128, "disk_mib": 256, **overrides})
    with pytest.raises(ValidationError) as caught:
        create_vm(request)
    assert text in str(caught.value.message_dict.get(field, caught.value.message_dict)), caught.value.message_dict
    assert (VirtualMachine.objects.count(), Job.objects.count()) == (0, 0)


def test_a_tenants_user_installs_only_with_the_console_permission(cluster):
    _ready_iso()
    without = add_user(create_tenant("acme", allowed_actions=["start"]), "alice", password="alice-password-1")
    with pytest.raises(ValidationError, match="console"):
        create_vm(VmRequest(name="vm1", vcpus=1, memory_mib=128, disk_mib=256, iso="installer"), user=without)
    allowed = add_user(create_tenant("globex", allowed_actions=["console"]), "bob", password="bob-password-12")
    job = create_vm(VmRequest(name="vm2", vcpus=1, memory_mib=128, disk_mib=256, iso="installer"), user=allowed)
    vm = VirtualMachine.objects.get(name="vm2")
    assert (vm.iso.name, vm.image, job.params["iso"]) == ("installer", None, "installer")
    with pytest.raises(ValidationError, match="eject it first"):
        delete_image("installer")


def test_the_domain_boots_the_cd_then_the_disk_and_without_it_only_the_disk(cluster):
    iso = _ready_iso()
    create_vm(VmRequest(name="vm1", vcpus=1, memory_mib=128, disk_mib=256, iso=iso.name))
    vm = VirtualMachine.objects.select_related("cpu_server").get(name="vm1")
    legs = list(AoEExport.objects.filter(mirror__vm=vm).order_by("leg"))
    copy = ImageCopy.objects.create(image=iso, disk_server=DiskServer.objects.get(name="disk1"), path="/srv/i.iso")
    cdrom = AoEExport.objects.create(disk_server=copy.disk_server, image_copy=copy, leg=0, shelf=1, slot=254,
                                     backing_path=copy.path, size_mib=30)
    with pytest.raises(DriverError, match="no copy of it is attached"):
        domain_spec(vm, legs)
    root = ET.fromstring(hypervisor.domain_xml(domain_spec(vm, legs, cdrom)))
    assert [b.get("dev") for b in root.findall("os/boot")] == ["cdrom", "hd"]
    drive = root.find("devices/disk[@device='cdrom']")
    assert drive.find("source").get("dev") == "/dev/etherd/e1.254" and drive.find("readonly") is not None
    assert drive.find("target").attrib == {"dev": "hdc", "bus": "ide"}
    assert root.find("os/kernel") is None

    VirtualMachine.objects.filter(pk=vm.pk).update(iso=None)
    vm.refresh_from_db()
    root = ET.fromstring(hypervisor.domain_xml(domain_spec(vm, legs)))
    assert [b.get("dev") for b in root.findall("os/boot")] == ["hd"]
    assert root.find("devices/disk[@device='cdrom']") is None
    assert guest_setup.iso_exports(vm) == []


def test_a_cd_and_a_kernel_exclude_each_other_in_the_driver():
    spec = hypervisor.DomainSpec(name="x", uuid="6f1c1a52-7d55-4bd5-9c61-0e3b2f6b9a10", vcpus=1, memory_mib=64,
                                 disks=("/dev/etherd/e1.0",), hypervisor="qemu", kernel="/boot/k", cdrom="/dev/sr")
    with pytest.raises(DriverError, match="exclude each other"):
        hypervisor.domain_xml(spec)


def test_eject_is_refused_for_an_empty_drive_and_for_whoever_may_not_use_the_console(cluster):
    _ready_iso()
    create_vm(VmRequest(name="vm1", vcpus=1, memory_mib=128, disk_mib=256, iso="installer"))
    create_vm(VmRequest(name="vm2", vcpus=1, memory_mib=128, disk_mib=256, image="none"))
    VirtualMachine.objects.update(state="running")
    Job.objects.update(state="succeeded")  # the creates are over
    with pytest.raises(ValidationError, match="CD drive is empty"):
        eject_cd("vm2")
    job = eject_cd("vm1")
    assert (job.kind, job.params) == ("vm.eject", {"iso": "installer"})
