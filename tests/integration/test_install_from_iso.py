"""Installing a VM from an ISO on the lab, end to end: the lab's installer ISO (built from Debian
packages: grub-mkrescue around Debian's kernel and a busybox initramfs, lab/guests/installer_iso.py)
imported into the image library, copied to both disk servers and served read-only there; a VM created
with an empty mirrored disk and the ISO in its CD drive boots the installer (seen on its serial console
through the panel's websocket, and drawn on its VGA screen), is live-migrated with the CD in, installs
onto both legs, the CD is ejected, and the next cold boot starts the installed system from its disk."""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from api.tokens import issue_token
from drivers import hypervisor, vblade
from hosts.targets import ssh_target
from lab.guests import installer_iso
from storage.models import AoEExport
from tenants.services import add_user, create_tenant
from tests.console_guest import expect
from tests.integration.on_the_hosts import clear_domain, clear_exports, succeeded
from tests.integration.test_console import Socket
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm, eject_cd, vm_action

pytestmark = [pytest.mark.lab, pytest.mark.slow]  # an install and two boots: `make slow`
VM = "inst1"
BOOT_S = 240


def _screen_is_drawn(uri: str, name: str) -> int:
    """How many different colours the guest's VGA screen shows (libvirt's screenshot)."""
    with tempfile.NamedTemporaryFile(suffix=".ppm") as shot:
        subprocess.run(["virsh", "-c", uri, "screenshot", name, shot.name], check=True, capture_output=True,
                       timeout=60)
        data = Path(shot.name).read_bytes()
    # P6 header: magic, width, height, maxval, then RGB triples.
    parts = data.split(maxsplit=4)
    pixels = parts[4]
    return len({pixels[i:i + 3] for i in range(0, min(len(pixels), 3 * 640 * 400), 3)})


def test_a_vm_installs_from_an_iso_then_boots_its_disk(installer_image):
    iso = installer_image
    assert (iso.kind, iso.state, iso.is_default, iso.kernel_version) == ("iso", "ready", False, "")
    exports = list(AoEExport.objects.filter(image_copy__image=iso).select_related("disk_server"))
    assert len(exports) == 2 and all(e.slot == 254 for e in exports)  # from the top of each shelf
    for export in exports:
        [running] = [e for e in vblade.list_exports(ssh_target(export.disk_server)) if e.slot == export.slot]
        assert running.read_only and running.path == export.image_copy.path

    acme = create_tenant("acme", allowed_actions=["start", "shutdown", "reboot", "console"])
    alice = add_user(acme, "alice", password="alice-password-1")
    clear_domain(f"xa-{VM}")
    clear_exports(VM)
    created = succeeded(create_vm(VmRequest(name=VM, vcpus=1, memory_mib=384, disk_mib=256, cpu_server="cpu2",
                                            allow_n_plus_one_break=True, tenant="acme", iso=iso.name)))
    try:
        vm = VirtualMachine.objects.get(name=VM)
        assert vm.iso == iso and vm.image is None, created.message
        uri = vm.cpu_server.libvirt_uri
        sources = hypervisor.disk_sources(uri, vm.domain_name)
        assert any(e.device_path in sources for e in exports), sources

        console = Socket(f"/ws/vms/{VM}/console/serial/", issue_token(alice))
        try:
            assert console.connect()[0]
            started = time.monotonic()
            expect(console.text, installer_iso.INSTALLED, BOOT_S, "the installer's end")
            print(f"\ninstaller done {time.monotonic() - started:.1f} s after the console opened")
            assert _screen_is_drawn(uri, vm.domain_name) > 1, "the VGA screen is blank"

            # Live migration with the ISO in the drive: the target attaches the same copy.
            succeeded(migrate_vm(VM, "cpu1"))
            vm.refresh_from_db()
            assert vm.cpu_server.name == "cpu1"
            expect(lambda: (console.pump(), str(console.statuses[-1:]))[1], "connected", 60, "the console on cpu1")
            console.type("\recho after-$((40+2))-move\r")
            expect(console.text, r"after-42-move\r?\n", 30, "the shell after the migration")
        finally:
            console.close()

        # The end of the installation: eject, then a cold boot starts the installed system.
        succeeded(eject_cd(VM, user=alice))
        vm.refresh_from_db()
        assert vm.iso is None
        assert not any(e.device_path in hypervisor.disk_sources(vm.cpu_server.libvirt_uri, vm.domain_name)
                       for e in exports), "the drive still holds the ISO"
        succeeded(vm_action(VM, "force_off"))
        succeeded(vm_action(VM, "start"))
        console = Socket(f"/ws/vms/{VM}/console/serial/", issue_token(alice))
        try:
            assert console.connect()[0]
            started = time.monotonic()
            # Its own line, or (if it came before the console connected) what GRUB told the kernel:
            # it was loaded from a hard disk.
            booted = rf"{installer_iso.BOOTED_FROM_DISK}|xenaoe\.boot=\(hd\d"
            while time.monotonic() - started < BOOT_S:
                try:
                    expect(console.text, booted, 15, "the installed system's boot")
                    break
                except AssertionError:
                    console.type("\rcat /proc/cmdline\r")
            expect(console.text, booted, 1, "the installed system's boot")
            print(f"booted from its disk {time.monotonic() - started:.1f} s after the console opened")
        finally:
            console.close()
        xml = subprocess.run(["virsh", "-c", vm.cpu_server.libvirt_uri, "dumpxml", vm.domain_name],
                             capture_output=True, text=True, check=True).stdout
        assert "cdrom" not in xml
    finally:
        succeeded(delete_vm(VM))
        clear_domain(f"xa-{VM}")

    from images.services import delete_image

    delete_image(iso.name)
    assert not AoEExport.objects.filter(image_copy__image__name=iso.name).exists()
