"""Creating and deleting VMs on the lab cluster through the CLI, a real worker, and the hosts.

Each check after a job looks at the hosts themselves (libvirt, vblade, the AoE wire, the disk
servers' files), not at what the panel believes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from io import StringIO

import libvirt
import pytest
from django.core.management import CommandError, call_command

from drivers import aoe, ssh, vblade
from hosts.targets import ssh_target
from jobs.models import Job
from storage.models import AoEExport
from tests.integration.on_the_hosts import domain_state
from vms.models import VirtualMachine

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _file_exists(disk, path: str) -> bool:
    return ssh.run(ssh_target(disk), ["test", "-e", path], timeout=10, check=False).returncode == 0


def test_create_runs_the_guest_on_mirrored_aoe_exports_and_delete_removes_everything(
    lab_hosts, celery_worker_process
):
    cpu2 = next(c for c in lab_hosts["cpu"] if c.name == "cpu2")
    out = StringIO()
    call_command("vm", "create", "itest", "--vcpus", "1", "--memory-mib", "64", "--disk-mib", "32",
                 "--on", "cpu2", "--wait", stdout=out)
    assert "Job succeeded: itest runs on cpu2" in out.getvalue()

    shown = StringIO()
    call_command("vm", "show", "itest", "--json", stdout=shown)
    summary = json.loads(shown.getvalue())
    assert summary["state"] == "running" and summary["cpu_server"] == "cpu2"
    assert sorted((leg["disk_server"], leg["shelf"], leg["slot"]) for leg in summary["legs"]) == [
        ("disk1", 1, 0), ("disk2", 2, 0)]

    vm = VirtualMachine.objects.get(name="itest")
    assert domain_state(cpu2.libvirt_uri, vm.domain_name) == libvirt.VIR_DOMAIN_RUNNING
    assert vm.mirror.state == "healthy"  # both legs answered the job's probe on the SAN
    conn = libvirt.open(cpu2.libvirt_uri)
    xml = conn.lookupByName(vm.domain_name).XMLDesc()
    conn.close()
    assert "/dev/etherd/e1.0" in xml and "/dev/etherd/e2.0" in xml
    for leg in AoEExport.objects.filter(mirror__vm=vm):
        answers = aoe.probe(ssh_target(cpu2), "san0", leg.shelf, leg.slot, identify=True)
        assert [(a.shelf, a.slot, a.sectors) for a in answers] == [(leg.shelf, leg.slot, 32 * 2048)]

    legs = [(leg.disk_server, leg.backing_path, leg.shelf, leg.slot) for leg in AoEExport.objects.filter(mirror__vm=vm)]
    call_command("vm", "delete", "itest", "--wait", stdout=StringIO())
    assert not VirtualMachine.objects.filter(name="itest").exists()
    assert domain_state(cpu2.libvirt_uri, vm.domain_name) is None
    for disk, path, shelf, slot in legs:
        running = vblade.list_exports(ssh_target(disk))
        assert (shelf, slot) not in {(e.shelf, e.slot) for e in running}
        assert not _file_exists(disk, path)
        assert aoe.probe(ssh_target(cpu2), "san0", shelf, slot, identify=False, timeout=10) == []


def test_a_failing_step_undoes_the_steps_before_it(lab_hosts, celery_worker_process):
    disk1, disk2 = lab_hosts["disk"]
    # A file already where disk2's volume would go: creating that volume must fail.
    planted = f"{disk2.volume_dir}/broken-e2.0.img"
    ssh.run(ssh_target(disk2), ["mkdir", "-p", disk2.volume_dir], timeout=10)
    ssh.run(ssh_target(disk2), ["truncate", "-s", "1M", planted], timeout=10)
    try:
        with pytest.raises(CommandError, match="failed"):
            call_command("vm", "create", "broken", "--vcpus", "1", "--memory-mib", "64", "--disk-mib", "32",
                         "--wait", stdout=StringIO())
        job = Job.objects.get(target_name="broken")
        assert job.state == "failed"
        assert "disk2" in job.message or planted in job.message
        messages = list(job.log.values_list("message", flat=True))
        assert any(m.startswith("Undoing: Create the backing volume") for m in messages)
        assert not _file_exists(disk1, f"{disk1.volume_dir}/broken-e1.0.img")
        assert _file_exists(disk2, planted)  # what the panel did not make, it does not remove
        assert not VirtualMachine.objects.filter(name="broken").exists()
        assert not AoEExport.objects.exists()
    finally:
        ssh.run(ssh_target(disk2), ["rm", "-f", planted], timeout=10)


def test_wait_without_a_worker_says_so_within_seconds_and_changes_nothing(lab_hosts):
    env = dict(os.environ, CELERY_BROKER_URL="redis://127.0.0.1:6379/15")
    from django.conf import settings

    env["DATABASE_URL"] = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + settings.DATABASES["default"]["NAME"]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "manage.py", "vm", "create", "lonely", "--vcpus", "1", "--memory-mib", "64",
         "--disk-mib", "32", "--wait"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "no Celery worker answered" in proc.stderr
    assert time.monotonic() - started < 30
    assert not VirtualMachine.objects.filter(name="lonely").exists()
    assert not Job.objects.exists()
