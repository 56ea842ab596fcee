"""Mirror health read from inside a real guest on the lab cluster.

The guest is lab/guests/mirror_guest.py: Debian's kernel, md RAID1 over its two AoE legs (vda, vdb)
and qemu-ga on the agent channel the panel's domain XML provides. The panel's side is the code the
monitor runs (storage.guest_health.check_mirrors: the agent through libvirt over SSH, /proc/mdstat
parsed) and the VM page that shows it. What the guest's md really does is checked through the
panel's reading only; the leg is taken away from outside the guest, never by mdadm inside it:

- detached: the leg's disk is hot-unplugged with libvirt (what a vanished AoE device looks like to
  the guest), then plugged back; the guest re-adds it and md rebuilds it (its resync speed capped
  on the kernel command line so that the progress can be watched);
- a killed disk server: only when the lab's AoE stand-in carries the data over the SAN through
  vblade (`lab.standin.data_path() == "wire"`; otherwise a dead disk server does not fail the
  guest's I/O; docs/lab.md). The monitor's cycle (ha/monitor.py) declares it dead and degrades the
  mirror on the wire; the guest's md fails the leg; the disk server boots again, its exports come
  back, the guest re-adds the leg, and the incident closes once the guest says the array is whole.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from django.conf import settings

from drivers import guest_agent
from ha import storage_health
from ha.choices import IncidentKind, IncidentState
from ha.models import Incident
from ha.monitor import Monitor
from hosts.choices import HostState
from lab import cluster, standin
from lab.guests import mirror_guest
from storage import guest_health
from storage.choices import MirrorHealth, MirrorState
from storage.models import AoEExport, Mirror
from tests.integration.on_the_hosts import clear_domain, clear_exports, domain_state, succeeded
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = [pytest.mark.lab, pytest.mark.slow]  # a guest booting its RAID1: `make slow`

VM_NAME = "mirrortest"
DISK_MIB = 32
RESYNC_KBPS = 1000  # md rebuilds the 32 MiB leg in ~30 s: long enough to see it between reads
BOOT_TIMEOUT_S = 120  # ~12 s under TCG on an idle machine; far more on a busy 2-core one
READ_TIMEOUT_S = 8


def _snapshot() -> tuple[str, str, float | None, list[int], str]:
    mirror = Mirror.objects.get(vm__name=VM_NAME)
    return mirror.health, mirror.health_detail, mirror.resync_percent, mirror.missing_legs, mirror.state


def _watch(until: Callable[[tuple], bool], timeout: float, seen: list[tuple], step: Callable[[], None] = lambda: None,
           poll: float = 1.0) -> tuple:
    """Read the guest through the panel until `until(snapshot)`; every snapshot goes to `seen`."""
    deadline = time.monotonic() + timeout
    while True:
        step()
        guest_health.check_mirrors(timeout=READ_TIMEOUT_S)
        snapshot = _snapshot()
        if not seen or seen[-1] != snapshot:
            seen.append(snapshot)
            print(f"{time.monotonic():.1f} {snapshot}")
        if until(snapshot):
            return snapshot
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g} s; seen: {seen}")
        time.sleep(poll)


@pytest.fixture
def mirror_vm(lab_hosts, celery_worker_process) -> Iterator[VirtualMachine]:
    clear_domain(f"xa-{VM_NAME}")  # left by an interrupted earlier run
    clear_exports(VM_NAME)
    guest = mirror_guest.install_mirror_guest(Path(settings.LAB_DIR) / "guests")
    job = create_vm(VmRequest(
        name=VM_NAME, vcpus=1, memory_mib=128, disk_mib=DISK_MIB, cpu_server="cpu1",
        kernel_path=str(guest.kernel), initrd_path=str(guest.initrd),
        kernel_cmdline=f"{guest.cmdline} mirror.resync_kbps={RESYNC_KBPS}", allow_n_plus_one_break=True))
    try:
        succeeded(job)
        vm = VirtualMachine.objects.select_related("cpu_server").get(name=VM_NAME)
        seen: list[tuple] = []
        started = time.monotonic()
        _watch(lambda s: s[0] == MirrorHealth.HEALTHY, BOOT_TIMEOUT_S, seen, poll=2)
        print(f"\nguest agent answered, array healthy {time.monotonic() - started:.1f} s after the VM was started")
        # Until the guest's agent runs, the panel says so instead of guessing.
        assert seen[0][0] == MirrorHealth.HEALTHY or (seen[0][0], seen[0][1]) == (MirrorHealth.UNKNOWN,
                                                                                  guest_health.NO_AGENT)
        yield vm
    finally:  # also when the guest never came up: no TCG guest left burning the lab's CPU
        try:
            succeeded(delete_vm(VM_NAME))
        finally:
            clear_domain(f"xa-{VM_NAME}")


def test_a_running_guest_shows_a_healthy_mirror_on_its_page(mirror_vm, client, operator):
    health, detail, percent, missing, _state = _snapshot()
    assert (health, detail, percent, missing) == (MirrorHealth.HEALTHY, "md0 [UU]", None, [])
    client.force_login(operator)
    page = client.get(f"/vms/{VM_NAME}/").content.decode()
    assert 'data-mirror-health="healthy"' in page and "md0 [UU]" in page


def _disk_xml(uri: str, domain: str, target: str) -> str:
    conn = libvirt.open(uri)
    try:
        root = ET.fromstring(conn.lookupByName(domain).XMLDesc(0))
    finally:
        conn.close()
    for disk in root.findall("devices/disk"):
        if disk.find("target").get("dev") == target:
            for volatile in ("address", "alias"):  # libvirt assigns these again on attach
                for element in disk.findall(volatile):
                    disk.remove(element)
            return ET.tostring(disk, encoding="unicode")
    raise AssertionError(f"{domain} has no disk {target}")


def _hotplug(uri: str, domain: str, xml: str, attach: bool) -> None:
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(domain)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.attachDeviceFlags(xml, flags) if attach else dom.detachDeviceFlags(xml, flags)
    finally:
        conn.close()


def test_a_detached_leg_degrades_the_mirror_and_its_return_resyncs_with_progress(mirror_vm):
    uri, domain = mirror_vm.cpu_server.libvirt_uri, mirror_vm.domain_name
    vdb = _disk_xml(uri, domain, "vdb")
    seen: list[tuple] = []

    _hotplug(uri, domain, vdb, attach=False)
    _watch(lambda s: s[0] == MirrorHealth.DEGRADED, 60, seen)
    assert seen[-1][3] == [1]  # leg 1 (vdb) is the one missing
    exposed = [g for g in guest_health_exposed() if g.vm == VM_NAME]
    assert exposed and exposed[0].health == MirrorHealth.DEGRADED
    # Both exports still answer: only the guest knows. (The wire view stays as it was, "unknown" for
    # a new VM: it is set only by a disk server's failure and return, ha/storage_health.py.)
    assert seen[-1][4] not in (MirrorState.DEGRADED, MirrorState.RESYNCING)

    _hotplug(uri, domain, vdb, attach=True)
    _watch(lambda s: s[0] == MirrorHealth.HEALTHY, 180, seen)
    progress = [s[2] for s in seen if s[0] == MirrorHealth.RESYNCING]
    print(f"resync progress seen: {progress}")
    assert progress, "the rebuild was never seen"
    assert any(0 < p < 100 for p in progress)
    assert progress == sorted(progress), "resync progress went backwards"
    assert all(s[3] == [1] for s in seen if s[0] == MirrorHealth.RESYNCING)
    assert seen[-1][:4] == (MirrorHealth.HEALTHY, "md0 [UU]", None, [])


def guest_health_exposed() -> list[storage_health.ExposedGuest]:
    return storage_health.exposed_guests()


def _records(vm: VirtualMachine) -> int:
    """How many records the guest's /init has written to its array (its /run/records)."""
    return int(guest_agent.read_file(vm.cpu_server.libvirt_uri, vm.domain_name, "/run/records",
                                     timeout=READ_TIMEOUT_S))


@pytest.fixture
def wire_data_path(lab_cluster) -> None:
    """Before the VM is made: skip unless the stand-in's data goes through vblade over the SAN."""
    if standin.data_path() != standin.WIRE:
        pytest.skip("the lab's AoE stand-in attaches backing files directly (XENAOE_LAB_AOE_DATA=file): "
                    "a killed disk server does not fail the guest's I/O")


def test_a_killed_disk_server_degrades_the_guests_mirror_and_its_return_resyncs_it(wire_data_path, mirror_vm):
    leg = AoEExport.objects.select_related("disk_server").get(mirror__vm=mirror_vm, leg=1)
    disk = leg.disk_server
    uri, domain = mirror_vm.cpu_server.libvirt_uri, mirror_vm.domain_name
    # No BMC reads: they have nothing to do with a disk server, and cost time on a busy machine.
    monitor = Monitor(interval=2, timeout=1.5, bmc_interval=0)
    seen: list[tuple] = []
    records_before = _records(mirror_vm)
    try:
        killed = time.monotonic()
        cluster.kill_host(disk.name)
        degraded = _watch(lambda s: s[0] == MirrorHealth.DEGRADED and s[4] == MirrorState.DEGRADED, 90, seen,
                          step=monitor.cycle, poll=2)
        print(f"guest's md and the panel both degraded {time.monotonic() - killed:.1f} s after the kill")
        assert degraded[3] == [1]  # the guest lost leg 1, the one on the killed disk server
        assert type(disk).objects.get(pk=disk.pk).state == HostState.DEAD
        incident = Incident.objects.get(disk_server=disk, kind=IncidentKind.DISK_SERVER_FAILED)
        assert incident.state == IncidentState.DEGRADED
        [exposed] = [g for g in guest_health_exposed() if g.vm == VM_NAME]
        assert exposed.missing == (f"{leg.name} on {disk.name} (dead)",) and len(exposed.left) == 1
        # The guest runs on, on its other leg, and keeps writing.
        assert domain_state(uri, domain) == libvirt.VIR_DOMAIN_RUNNING
        records_degraded = _records(mirror_vm)
        assert records_degraded > records_before

        cluster.boot_host(disk.name)
        booted = time.monotonic()
        _watch(lambda s: s[0] == MirrorHealth.HEALTHY and s[4] == MirrorState.HEALTHY, 240, seen,
               step=monitor.cycle, poll=2)
        print(f"mirror healthy again {time.monotonic() - booted:.1f} s after the disk server booted")
    finally:
        monitor.close()
        cluster.up()
    progress = [s[2] for s in seen if s[0] == MirrorHealth.RESYNCING]
    print(f"resync progress seen: {progress}")
    assert progress and any(0 < p < 100 for p in progress) and progress == sorted(progress)
    # The wire alone would have called it healthy as soon as the exports answered: it waited for the guest.
    first_degraded = seen.index(next(s for s in seen if s[4] == MirrorState.DEGRADED))
    assert not any(s[4] == MirrorState.HEALTHY and s[0] == MirrorHealth.RESYNCING for s in seen[first_degraded:])
    incident.refresh_from_db()
    assert incident.state == IncidentState.CLOSED
    assert not [g for g in guest_health_exposed() if g.vm == VM_NAME]
    assert domain_state(uri, domain) == libvirt.VIR_DOMAIN_RUNNING
    assert _records(mirror_vm) > records_degraded
    # The operator returns the disk server to service (refused while its incident was open).
    disk.refresh_from_db()
    assert disk.state == HostState.MAINTENANCE
    storage_health.return_to_service(disk)
    disk.refresh_from_db()
    assert disk.state == HostState.UP
