"""A deleted VM's seed (its login user's password hash and SSH keys) leaves every CPU server that
answers, not only the last one it ran on. SSH is the one point where traffic leaves: recorded here;
the real removal on the lab's hosts is `drivers.images.remove_file` (tests/drivers)."""
from __future__ import annotations

import pytest

from drivers import ssh
from drivers.errors import DriverError
from hosts.choices import HostState
from jobs.models import Job
from jobs.runner import JobContext
from tests.test_vm_stats import cpu, vm
from vms.guest_setup import seed_path
from vms.steps import plan_delete, remove_seeds

pytestmark = pytest.mark.django_db


def test_the_seed_is_removed_from_every_cpu_server_that_answers(monkeypatch):
    here, before, gone, silent = cpu("cpu1"), cpu("cpu2"), cpu("cpu3", HostState.DEAD), cpu("cpu4")
    web = vm("web", here)
    asked: list[tuple[str, list[str]]] = []

    def run(target, argv, *, timeout):  # noqa: ANN001, ANN202 - drivers.ssh.run's shape
        asked.append((target.host, argv))
        if target.host == silent.address:
            raise DriverError(f"{target.host}: ssh: connect to host: No route to host")
        return ""

    monkeypatch.setattr(ssh, "run", run)
    job = Job.objects.create(kind="vm.delete", vm=web, target_name="web")
    remove_seeds(JobContext(job))
    path = seed_path(web)
    assert sorted(host for host, _ in asked) == [here.address, before.address, silent.address]  # not the dead one
    assert all(argv[:3] == ["rm", "-f", "--"] and path in argv for _, argv in asked)
    warnings = [e.message for e in job.log.all() if e.level == "warning"]
    assert warnings == [f"cpu4 keeps {path}: {silent.address}: ssh: connect to host: No route to host"]
    assert gone.state == HostState.DEAD


def test_the_delete_removes_the_seed_before_it_forgets_the_vm():
    web = vm("web", cpu("cpu1"))
    titles = [step.title for step in plan_delete(JobContext(Job.objects.create(kind="vm.delete", vm=web)))]
    assert titles.index("Remove its seed from the CPU servers") == titles.index("Forget the VM") - 1
