"""Failover on the lab cluster: a killed, a partitioned and an unfenceable CPU server, with a real
worker. Each check looks at the hosts themselves (libvirt on both CPU servers, the disk servers'
vblade ACLs), not only at what the panel believes.

The lab is shared: run these under `flock /tmp/xenaoe-lab.lock`. Every test brings the lab back
(`lab.cluster.up()`), deletes its VMs and restores the ACLs of exports it did not make.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import libvirt
import pytest

from drivers import hypervisor, vblade
from drivers.errors import DriverError
from ha import fencing
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.failover import confirm_fenced_manually, start_failover
from ha.incidents import open_incident
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.targets import ssh_target
from jobs.follow import follow
from jobs.models import Job
from lab import cluster
from vms.affinity import create_group, set_vm_groups
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = pytest.mark.lab
TIMINGS: list[str] = []


def _ipmi_works(cpu: CpuServer) -> bool:
    """The BMC work is there and this host's BMC answers: then the tests fence with ipmi first."""
    if not cpu.bmc_address:
        return False
    try:
        from drivers import ipmi

        target = ipmi.BmcTarget(cpu.bmc_address, cpu.bmc_port, cpu.bmc_user, cpu.bmc_password_file, 10)
        return ipmi.power_status(target) == "on"
    except (ImportError, DriverError, TypeError):
        return False


def _running(uri: str, name: str) -> bool:
    conn = libvirt.open(uri)
    try:
        return conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def _acls() -> dict[tuple[str, int, int], tuple[str, ...] | None]:
    found = {}
    for disk in DiskServer.objects.all():
        for export in vblade.list_exports(ssh_target(disk)):
            found[(disk.name, export.shelf, export.slot)] = export.macs
    return found


@pytest.fixture
def lab(lab_hosts, celery_worker_process) -> Iterator[dict]:
    for cpu in CpuServer.objects.all():
        if not cpu.san_mac:  # the lab's SAN MACs are fixed (lab/network.py)
            cpu.san_mac = f"02:0a:d5:01:00:{int(cpu.address.rsplit('.', 1)[1]):02x}"
            cpu.save(update_fields=["san_mac"])
    before = _acls()
    made: list[str] = []
    yield {"made": made, "ipmi": _ipmi_works(CpuServer.objects.get(name="cpu2"))}
    try:
        cluster.heal_host("cpu2")
    except Exception:  # noqa: BLE001 - not partitioned, or already rebuilt
        pass
    cluster.up(out=lambda _line: None)
    servers = list(CpuServer.objects.all())

    for vm in VirtualMachine.objects.filter(name__in=made).select_related("cpu_server"):
        for server in servers:  # the stale copy on the old host: destroy and undefine it
            if server.pk != vm.cpu_server_id:
                hypervisor.destroy(server.libvirt_uri, vm.domain_name)
                hypervisor.undefine(server.libvirt_uri, vm.domain_name)
        CpuServer.objects.filter(pk=vm.cpu_server_id).update(state=HostState.UP)
        follow(delete_vm(vm.name).pk, lambda _line: None)
    # Exports of other people's VMs were fenced too: give them back the ACL they had.
    for disk in DiskServer.objects.all():
        for export in vblade.list_exports(ssh_target(disk)):
            old = before.get((disk.name, export.shelf, export.slot), export.macs)
            if tuple(old) != tuple(export.macs):
                spec = vblade.ExportSpec(export.shelf, export.slot, export.interface, export.path)
                vblade.start_export(ssh_target(disk), spec, allowed_macs=list(old) or None)


def _create_guests(made: list[str], names: list[str], on: str = "cpu2") -> None:
    # One after the other, as an operator would: the AoE stand-in's discovery on cpu2 is not
    # meant for two attaches racing each other.
    for name in names:
        job = create_vm(VmRequest(name=name, vcpus=1, memory_mib=64, disk_mib=32, cpu_server=on,
                                  allow_n_plus_one_break=True))
        made.append(name)
        done = follow(job.pk, lambda _line: None)
        assert done.state == "succeeded", done.message


def _declare_dead(methods: str):
    """What the monitor does when cpu2 stops answering: state dead, an incident."""
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD, fence_methods=methods)
    incident, created = open_incident(CpuServer.objects.get(name="cpu2"), IncidentKind.CPU_SERVER_FAILED,
                                      "cpu2 missed 3 checks (test)")
    assert created
    return incident


def _fail_over(incident, what: str) -> tuple[Job, float]:
    started = time.monotonic()
    job = follow(start_failover(incident).pk, print, poll_seconds=0.05)
    seconds = time.monotonic() - started
    TIMINGS.append(f"{what}: start_failover -> job {job.state} in {seconds:.1f} s")
    print(TIMINGS[-1])
    return job, seconds


def _kinds(incident) -> list[str]:
    return list(incident.events.order_by("time", "id").values_list("kind", flat=True))


def _on_cpu1_only(names: list[str]) -> None:

    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    for vm in VirtualMachine.objects.filter(name__in=names).select_related("cpu_server"):
        assert vm.cpu_server.name == "cpu1" and vm.state == "running"
        assert _running(cpu1.libvirt_uri, vm.domain_name)
        assert not _running(cpu2.libvirt_uri, vm.domain_name), f"{vm.name} runs on both CPU servers"


def test_guests_of_a_killed_cpu_server_run_on_the_survivor_after_the_fence(lab):
    names = ["fo-a", "fo-b"]
    _create_guests(lab["made"], names)
    methods = "ipmi,storage" if lab["ipmi"] else "storage"
    cluster.kill_host("cpu2")
    incident = _declare_dead(methods)
    job, seconds = _fail_over(incident, f"killed cpu2, 2 guests, fence_methods={methods}")

    assert job.state == "succeeded", job.message
    incident.refresh_from_db()
    assert incident.state == IncidentState.CLOSED
    assert incident.fenced_by == methods.split(",")[0]
    assert CpuServer.objects.get(name="cpu2").state == HostState.FENCED
    kinds = _kinds(incident)
    assert kinds.index(EventKind.FENCED) < kinds.index(EventKind.RESTARTED)
    assert kinds.count(EventKind.RESTARTED) == 2
    # Both guests go to cpu1: one SAN discovery there first, which must have worked.
    assert not job.log.filter(message__startswith="SAN discovery").exists()
    assert seconds < 30
    if incident.fenced_by == fencing.STORAGE:
        cpu2_mac = CpuServer.objects.get(name="cpu2").san_mac
        assert all(macs and cpu2_mac not in macs for macs in _acls().values())
    cluster.up(out=lambda _line: None)  # cpu2 boots again: its old definitions are there, not running
    _on_cpu1_only(names)


def test_a_failover_that_must_put_a_groups_members_together_says_so(lab):
    """Two CPU servers: the members of a group run one on each; when cpu2 dies, its member can only
    restart beside the other, and the incident says which group that broke."""
    create_group("fo-web")
    _create_guests(lab["made"], ["fo-w1"], on="cpu1")
    _create_guests(lab["made"], ["fo-w2"])
    for name in ("fo-w1", "fo-w2"):
        assert set_vm_groups(name, ["fo-web"]) == []
    methods = "ipmi,storage" if lab["ipmi"] else "storage"
    cluster.kill_host("cpu2")
    incident = _declare_dead(methods)
    job, _ = _fail_over(incident, f"killed cpu2, a group's member restarted beside the other, {methods}")

    assert job.state == "succeeded", job.message
    broken = ("broke anti-affinity group fo-web: fo-w1 and fo-w2 both on cpu1 (no surviving CPU server without a "
              "member of the group had room)")
    assert list(incident.events.filter(kind=EventKind.ANTI_AFFINITY).values_list("message", flat=True)) == [broken]
    assert _kinds(incident).index(EventKind.RESTARTED) < _kinds(incident).index(EventKind.ANTI_AFFINITY)
    cluster.up(out=lambda _line: None)
    _on_cpu1_only(["fo-w1", "fo-w2"])


def test_a_host_killed_with_its_bmc_is_fenced_through_storage(lab):
    """The known trap: the plug takes the BMC with it, ipmi cannot confirm, storage fencing can."""
    if not lab["ipmi"]:
        pytest.skip("the lab's BMCs are not there")
    names = ["fo-s"]
    _create_guests(lab["made"], names)
    cluster.kill_host("cpu2", with_bmc=True)
    incident = _declare_dead("ipmi,storage")
    job, seconds = _fail_over(incident, "killed cpu2 with its BMC, 1 guest, fence_methods=ipmi,storage")

    assert job.state == "succeeded", job.message
    incident.refresh_from_db()
    assert incident.fenced_by == fencing.STORAGE and incident.state == IncidentState.CLOSED
    attempts = incident.events.filter(kind=EventKind.FENCE_ATTEMPT).order_by("id")
    assert [(e.data["method"], e.data["result"]) for e in attempts] == [("ipmi", "failed"), ("storage", "confirmed")]
    cpu1_mac, cpu2_mac = (CpuServer.objects.get(name=n).san_mac for n in ("cpu1", "cpu2"))
    acls = _acls()
    assert acls and all(macs == (cpu1_mac,) for macs in acls.values()), acls
    assert cpu2_mac not in str(acls)
    cluster.up(out=lambda _line: None)
    _on_cpu1_only(names)


def test_a_partitioned_cpu_server_is_fenced_before_any_restart(lab):
    names = ["fo-p"]
    _create_guests(lab["made"], names)
    methods = "ipmi,storage" if lab["ipmi"] else "storage"
    cluster.partition_host("cpu2")
    incident = _declare_dead(methods)
    job, _ = _fail_over(incident, f"partitioned cpu2, 1 guest, fence_methods={methods}")

    assert job.state == "succeeded", job.message
    kinds = _kinds(incident)
    assert EventKind.RESTARTED in kinds
    assert kinds.index(EventKind.FENCED) < kinds.index(EventKind.RESTARTED)
    cpu2_mac = CpuServer.objects.get(name="cpu2").san_mac
    incident.refresh_from_db()
    cluster.heal_host("cpu2")
    if incident.fenced_by == fencing.IPMI:
        cluster.up(out=lambda _line: None)
        _on_cpu1_only(names)
    else:
        # Storage fencing does not stop the old copy's CPU (docs/fencing.md): what it guarantees is
        # that no export lets cpu2 in any more.
        assert all(macs and cpu2_mac not in macs for macs in _acls().values())


def test_without_any_confirmed_fence_nothing_restarts_until_an_operator_confirms(lab, operator):
    names = ["fo-u"]
    _create_guests(lab["made"], names)
    if lab["ipmi"]:
        cluster.kill_host("cpu2", with_bmc=True)  # the BMC dies with the host: ipmi cannot confirm
    else:
        cluster.kill_host("cpu2")
        CpuServer.objects.filter(name="cpu2").update(bmc_address="")
    incident = _declare_dead("ipmi")
    job, _ = _fail_over(incident, "unfenceable cpu2")

    assert job.state == "failed" and "NO FENCE CONFIRMED" in job.message
    incident.refresh_from_db()
    assert incident.state == IncidentState.UNFENCED
    assert EventKind.RESTARTED not in _kinds(incident)
    cpu1 = CpuServer.objects.get(name="cpu1")

    vm = VirtualMachine.objects.get(name="fo-u")
    assert vm.cpu_server.name == "cpu2"
    assert hypervisor.domain_info(cpu1.libvirt_uri, vm.domain_name) is None  # not even defined

    started = time.monotonic()
    confirmed = follow(confirm_fenced_manually(incident, operator).pk, print, poll_seconds=0.05)
    TIMINGS.append(f"manual confirmation -> job {confirmed.state} in {time.monotonic() - started:.1f} s")
    print(TIMINGS[-1])
    assert confirmed.state == "succeeded", confirmed.message
    incident.refresh_from_db()
    assert incident.fenced_by == "manual" and incident.state == IncidentState.CLOSED
    assert incident.events.get(kind=EventKind.FENCED).user == operator
    cluster.up(out=lambda _line: None)
    _on_cpu1_only(names)


def test_a_storage_fenced_host_stays_out_until_returned_and_its_stale_copy_goes_first(lab, operator):
    """A storage fence leaves the partitioned host's copy running, disks blocked. When the host
    answers again the monitor puts it in maintenance, and it stays out of every export's list
    (another VM's new exports, every list rebuilt) until an operator returns it, which destroys
    the stale copy before cpu2's MAC goes back in."""
    from ha.maintenance import leave_maintenance
    from ha.monitor import Monitor

    names = ["fo-r"]
    _create_guests(lab["made"], names)
    cluster.partition_host("cpu2")  # cpu2 keeps running, on the SAN; the panel loses it
    incident = _declare_dead("storage")
    job, _ = _fail_over(incident, "partitioned cpu2, storage fence only, 1 guest")
    assert job.state == "succeeded", job.message
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    assert cpu2.storage_fenced_at is not None
    vm = VirtualMachine.objects.get(name="fo-r")
    assert vm.cpu_server_id == cpu1.pk and _running(cpu1.libvirt_uri, vm.domain_name)

    cluster.heal_host("cpu2")
    monitor = Monitor(interval=1, timeout=0.75, bmc_interval=0)
    try:
        for _ in range(15):
            monitor.cycle()
            if CpuServer.objects.get(pk=cpu2.pk).state == HostState.MAINTENANCE:
                break
            time.sleep(1)
    finally:
        monitor.close()
    cpu2.refresh_from_db()
    assert cpu2.state == HostState.MAINTENANCE and cpu2.storage_fenced_at is not None
    # The storage fence stopped nothing: the old copy still runs on cpu2, its disks blocked.
    assert _running(cpu2.libvirt_uri, vm.domain_name), "the stale copy is gone already: nothing left to prove"

    def cpu2_out() -> None:
        acls = _acls()
        assert acls and all(macs and cpu2.san_mac not in macs for macs in acls.values()), acls

    cpu2_out()
    # Other events that rebuild or add lists: a new VM's exports, every list brought in line.
    _create_guests(lab["made"], ["fo-n"], on="cpu1")
    cpu2_out()
    fencing.restore_storage_access()
    cpu2_out()

    returned = follow(leave_maintenance(CpuServer.objects.get(pk=cpu2.pk), operator).pk, print)
    assert returned.state == "succeeded", returned.message
    destroyed = list(returned.log.filter(data__destroyed=True).values_list("message", flat=True))
    assert destroyed == ["fo-r: the stale copy on cpu2 was destroyed and undefined (fo-r runs on cpu1)"]
    assert hypervisor.domain_info(cpu2.libvirt_uri, vm.domain_name) is None
    assert _running(cpu1.libvirt_uri, vm.domain_name)
    cpu2.refresh_from_db()
    assert cpu2.state == HostState.UP and cpu2.storage_fenced_at is None
    assert all(not macs or cpu2.san_mac in macs for macs in _acls().values())  # its disks back
    stale = incident.events.get(kind=EventKind.STALE_COPY)
    assert stale.user == operator and stale.data["vm"] == "fo-r"
