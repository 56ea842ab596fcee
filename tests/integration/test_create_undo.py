"""A create whose vblade export started on the disk server, then whose call timed out: the undo
stops that export and removes both volumes, on the lab's real disk servers (issue 10, finding 5).

The job runs in this process (jobs.runner.run_job), so that the one call can be made to act and
then time out: the real vblade.start_export runs, then the double at the driver boundary raises the
timeout the panel would have seen. Its message goes to a queue no worker consumes.
"""
from __future__ import annotations

import pytest

from drivers import vblade
from drivers.errors import DriverError
from hosts.targets import ssh_target
from jobs.runner import run_job
from storage.models import AoEExport
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm

pytestmark = pytest.mark.lab


def test_an_export_that_started_before_its_call_timed_out_is_stopped_and_nothing_is_left(
        lab_hosts, no_worker_takes_jobs, monkeypatch):
    disk2 = next(d for d in lab_hosts["disk"] if d.name == "disk2")
    real_start = vblade.start_export

    def starts_then_times_out(target, spec, **kwargs):
        running = real_start(target, spec, **kwargs)
        if target.host == disk2.address:
            raise DriverError(f"{target.label}: `sh -s -- {spec.shelf} {spec.slot} ...` timed out after 30 s")
        return running

    monkeypatch.setattr(vblade, "start_export", starts_then_times_out)
    job = create_vm(VmRequest(name="undone", vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1"))
    legs = [(leg.disk_server, leg.shelf, leg.slot, leg.backing_path)
            for leg in AoEExport.objects.filter(mirror__vm=job.vm).select_related("disk_server")]
    run_job(job.pk)
    job.refresh_from_db()
    assert job.state == "failed" and "timed out" in job.message and "undo incomplete" not in job.message
    for disk, shelf, slot, path in legs:  # on the disk servers themselves
        target = ssh_target(disk)
        assert (shelf, slot) not in {(e.shelf, e.slot) for e in vblade.list_exports(target)}, disk.name
        assert vblade.missing_volumes(target, [path]) == {path}, disk.name
    assert not VirtualMachine.objects.filter(name="undone").exists()
