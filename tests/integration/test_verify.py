"""Cluster verify against the lab: what changed behind the panel's back is found, and the fixes it
proposes, applied through a real worker, put the hosts back so that verify is clean again.

Changes "behind the panel's back" are made directly with libvirt-python and the drivers, never
through the panel's services. `cluster verify` itself runs as `manage.py` in a subprocess, so the
exit status tested is the one cron sees.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import libvirt
import pytest
from django.conf import settings

from drivers import aoe, vblade
from hosts.capacity import cluster_capacity
from hosts.fixes import apply_fix
from hosts.targets import ssh_target
from hosts.verify import Finding, start_verify, verify
from hosts.views_verify import findings_of
from jobs.follow import follow
from jobs.models import Job
from storage.models import AoEExport
from vms.models import VirtualMachine
from vms.placement import server_load
from vms.services import VmRequest, create_vm, delete_vm
from vms.watch import reconcile

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GHOST_XML = """<domain type='qemu'>
  <name>xa-ghost</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""
# A guest an operator starts by hand, beside the panel: not named xa-*, so never the panel's.
HANDMADE_XML = """<domain type='qemu'>
  <name>handmade</name>
  <memory unit='MiB'>48</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


def _wait(job: Job) -> Job:
    job = follow(job.pk, print, start_timeout=30)
    assert job.state == "succeeded", f"job #{job.pk} {job.kind}: {job.state}: {job.message}"
    return job


def _create(name: str, cpu: str) -> VirtualMachine:
    _wait(create_vm(VmRequest(name=name, vcpus=1, memory_mib=64, disk_mib=32, cpu_server=cpu,
                              allow_n_plus_one_break=True)))
    return VirtualMachine.objects.select_related("cpu_server").get(name=name)


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`manage.py cluster verify ARGS` on the test database, and how long it took."""
    env = dict(os.environ)
    env["DATABASE_URL"] = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + settings.DATABASES["default"]["NAME"]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "manage.py", "cluster", "verify", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def _assert_clean() -> None:
    proc, seconds = _cli()
    assert (proc.returncode, proc.stdout.strip()) == (0, "cluster verify: no differences"), proc.stdout + proc.stderr
    print(f"clean cluster verify (manage.py, {VirtualMachine.objects.count()} VMs): {seconds:.2f} s")


def _findings(*args: str) -> list[dict]:
    proc, _ = _cli("--json", *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return json.loads(proc.stdout)["findings"]


def _apply(finding: dict) -> Job:
    fix = Finding.from_dict(finding).fix
    assert fix is not None, finding
    return _wait(apply_fix(fix.code, fix.args, label=fix.label))


class BehindTheBack:
    """What a test did directly on the hosts, undone at the end whatever happened."""

    def __init__(self, cpu2) -> None:
        self.cpu2 = cpu2
        self.domains: list[str] = []
        self.attached: list[tuple[int, int]] = []

    def define_on_cpu2(self, xml: str, name: str) -> libvirt.virDomain:
        self.domains.append(name)
        conn = libvirt.open(self.cpu2.libvirt_uri)
        try:
            dom = conn.defineXML(xml)
            dom.create()
            return dom
        finally:
            conn.close()

    def undo(self) -> None:
        conn = libvirt.open(self.cpu2.libvirt_uri)
        try:
            for name in self.domains:
                try:
                    dom = conn.lookupByName(name)
                except libvirt.libvirtError:
                    continue
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        finally:
            conn.close()
        for shelf, slot in self.attached:
            aoe.detach(ssh_target(self.cpu2), shelf, slot)


@pytest.fixture
def behind(lab_hosts, celery_worker_process) -> Iterator[BehindTheBack]:
    cpu2 = next(c for c in lab_hosts["cpu"] if c.name == "cpu2")
    changes = BehindTheBack(cpu2)
    try:
        yield changes
    finally:
        changes.undo()
        for vm in VirtualMachine.objects.all():
            follow(delete_vm(vm.name).pk, print, start_timeout=30)


def test_a_domain_started_behind_the_panels_back_is_reported_and_its_fixes_clean_up(behind):
    for name, cpu in (("vfy-a", "cpu1"), ("vfy-b", "cpu2"), ("vfy-c", "cpu1")):
        _create(name, cpu)
    _assert_clean()
    started = time.monotonic()
    assert verify().findings == []
    print(f"clean verify in process, 3 VMs: {time.monotonic() - started:.2f} s")

    behind.define_on_cpu2(GHOST_XML, "xa-ghost")
    proc, _ = _cli()
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "ERROR unknown-domain xa-ghost: xa-ghost runs on cpu2, but the panel has no VM of that name "
        "-> Force off the stray domain xa-ghost on cpu2"]
    [ghost] = _findings()
    assert (ghost["code"], ghost["severity"], ghost["fix"]["code"]) == ("unknown-domain", "error", "destroy-domain")
    assert ghost["fix"]["args"] == {"cpu_server": "cpu2", "domain": "xa-ghost"}

    assert _apply(ghost).message == "xa-ghost forced off on cpu2"
    [leftover] = _findings()  # forced off, still defined: a second, milder finding
    assert (leftover["severity"], leftover["fix"]["code"]) == ("warning", "undefine-domain")
    assert _apply(leftover).message == "xa-ghost undefined on cpu2"
    _assert_clean()


def test_an_export_stopped_behind_the_panels_back_is_reported_and_started_again_by_its_fix(behind):
    vm = _create("vfy-exp", "cpu1")
    leg = AoEExport.objects.select_related("disk_server").get(mirror__vm=vm, disk_server__name="disk1")
    vblade.stop_export(ssh_target(leg.disk_server), leg.shelf, leg.slot)

    # This time through the job, as the page runs it.
    job = _wait(start_verify())
    assert job.message == "1 difference (1 error)"
    assert [step for step in job.log.values_list("message", flat=True) if step.startswith("Step ")] == [
        "Step 1/5: Collect from the CPU servers", "Step 2/5: Collect from the disk servers",
        "Step 3/5: Probe the SAN", "Step 4/5: Check the guests' networks", "Step 5/5: Compare"]
    [(serial, finding)] = findings_of(job)
    assert (finding.code, finding.subject) == ("export-not-running", "vfy-exp")
    assert finding.fix.args == {"disk_server": "disk1", "shelf": leg.shelf, "slot": leg.slot}
    [line] = _cli()[0].stdout.splitlines()
    assert line == (f"ERROR export-not-running vfy-exp: {leg.name} on disk1 is not exported (no vblade serves it) "
                    f"-> Start export {leg.name} on disk1 again")

    fix_job = _wait(apply_fix(finding.fix.code, finding.fix.args, label=finding.fix.label,
                              source={"job": job.pk, "serial": serial}))
    assert fix_job.vm == vm and fix_job.message.startswith(f"{leg.name} exported again on disk1")
    assert any(e.shelf == leg.shelf and e.slot == leg.slot for e in vblade.list_exports(ssh_target(leg.disk_server)))
    # Applying it again finds nothing to do: the fix checks before it acts.
    again = _wait(apply_fix(finding.fix.code, finding.fix.args))
    assert again.message.startswith(f"nothing done: {leg.name} already runs on disk1")
    _assert_clean()


def test_the_same_guest_running_on_two_cpu_servers_is_the_first_finding_and_only_the_stray_copy_goes(behind):
    vm = _create("vfy-two", "cpu1")
    conn = libvirt.open(vm.cpu_server.libvirt_uri)
    try:
        xml = conn.lookupByName(vm.domain_name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    for leg in AoEExport.objects.filter(mirror__vm=vm):
        behind.attached.append((leg.shelf, leg.slot))
        aoe.attach(ssh_target(behind.cpu2), leg.shelf, leg.slot)
    try:
        behind.define_on_cpu2(xml, vm.domain_name)
    except libvirt.libvirtError as exc:
        # All lab hosts share one kernel: QEMU's image locking may refuse what separate hosts allow.
        # tests/test_verify_unit.py covers this finding at the compare() level.
        pytest.skip(f"the lab refused a second copy: {exc}")
    # Something else is wrong too, so that "first" means something.
    disk2 = next(leg for leg in AoEExport.objects.select_related("disk_server").filter(mirror__vm=vm)
                 if leg.disk_server.name == "disk2")
    vblade.stop_export(ssh_target(disk2.disk_server), disk2.shelf, disk2.slot)

    findings = _findings()
    first = findings[0]
    assert (first["code"], first["severity"], first["subject"]) == ("domain-on-two-hosts", "critical", "vfy-two")
    assert first["fix"]["args"] == {"cpu_server": "cpu2", "domain": vm.domain_name}
    assert "export-not-running" in {f["code"] for f in findings[1:]}

    assert _apply(first).message == f"{vm.domain_name} forced off on cpu2"
    conn = libvirt.open(vm.cpu_server.libvirt_uri)
    try:
        assert conn.lookupByName(vm.domain_name).isActive()  # the copy the panel expects is untouched
    finally:
        conn.close()
    by_code = {f["code"]: f for f in _findings()}
    assert set(by_code) == {"domain-defined-elsewhere", "export-not-running"}
    _apply(by_code["domain-defined-elsewhere"])
    _apply(by_code["export-not-running"])
    _assert_clean()


def _virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_a_domain_started_by_hand_with_virsh_is_reported_counted_and_never_touched(behind, tmp_path):
    cpu2 = behind.cpu2
    _create("vfy-own", "cpu1")
    _assert_clean()
    free_before = server_load(cpu2).free_mib

    xml = tmp_path / "handmade.xml"
    xml.write_text(HANDMADE_XML)
    behind.domains.append("handmade")  # destroyed and undefined at the end, whatever happens
    _virsh(cpu2.libvirt_uri, "define", str(xml))
    _virsh(cpu2.libvirt_uri, "start", "handmade")

    [finding] = _findings()  # exit 1: a difference
    assert (finding["code"], finding["severity"], finding["subject"], finding["fix"]) == (
        "foreign-domain", "warning", "handmade", None)
    assert finding["message"] == "handmade is running on cpu2 and holds 48 MiB, but the panel did not make it"
    # The verify (another process) recorded it: its memory now counts as used on cpu2.
    cpu2.refresh_from_db()
    assert cpu2.foreign_memory_mib == 48 and [d["name"] for d in cpu2.foreign_domains] == ["handmade"]
    assert server_load(cpu2).free_mib == free_before - 48
    assert "48 MiB by domains the panel did not make" in next(
        c for c in cluster_capacity().cpu if c.server.name == "cpu2").memory_text

    # Stopped by hand: the domain watcher's reconcile pass gives the memory back; the definition
    # stays a (milder) finding, and nothing of the panel's ever touched it.
    _virsh(cpu2.libvirt_uri, "destroy", "handmade")
    reconcile()
    assert server_load(cpu2).free_mib == free_before
    [finding] = _findings()
    assert finding["message"] == "handmade is defined (shutoff) on cpu2, but the panel did not make it"
    assert "handmade" in _virsh(cpu2.libvirt_uri, "list", "--all", "--name").split()
