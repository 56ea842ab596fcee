"""Failover never waits behind tenant work: HA jobs have their own queue, and long waits hold no worker.

Issue 10, finding 7. A tenant may ask for a 3,600 s ACPI timeout; that wait must not keep a worker
slot busy. The CPU server is a small fake at the driver boundary (drivers.hypervisor's functions).
"""
from __future__ import annotations

import time
import uuid

import pytest
import redis
from django.conf import settings

from drivers import hypervisor
from ha.job_params import EvacuateParams, FailoverParams
from hosts.models import CpuServer
from jobs.choices import JobState
from jobs.models import Job
from jobs.runner import run_job
from jobs.services import start_job
from vms.choices import VmState
from vms.job_params import VmPowerParams
from vms.models import VirtualMachine
from vms.services import vm_action


class FakeCpu:
    """One CPU server's domains; a guest that ignores ACPI stays running until `power_off`."""

    def __init__(self) -> None:
        self.domains: dict[str, str] = {}
        self.destroyed: list[str] = []

    def shutdown(self, uri, name, *, timeout=30):
        return hypervisor.DomainInfo(name, "", self.domains[name], True)

    def domain_info(self, uri, name, *, timeout=30):
        state = self.domains.get(name)
        return None if state is None else hypervisor.DomainInfo(name, "", state, True)

    def destroy(self, uri, name, *, timeout=30):
        self.destroyed.append(name)
        self.domains[name] = "shutoff"


@pytest.fixture
def cpu(monkeypatch) -> FakeCpu:
    fake = FakeCpu()
    for name in ("shutdown", "domain_info", "destroy"):
        monkeypatch.setattr(hypervisor, name, getattr(fake, name))
    return fake


def _guest(fake: FakeCpu) -> VirtualMachine:
    server = CpuServer.objects.create(name="cpu1", address="10.0.0.1", libvirt_uri="fake:///cpu1",
                                      memory_mib=4096, vcpus=4)
    vm = VirtualMachine.objects.create(name="stubborn", vcpus=1, memory_mib=256, disk_mib=64, cpu_server=server,
                                       state=VmState.RUNNING, domain_uuid=uuid.uuid4())
    fake.domains[vm.domain_name] = "running"
    return vm


@pytest.mark.django_db
def test_a_long_shutdown_wait_lets_go_of_its_worker_and_finishes_when_the_guest_is_off(cpu):
    vm = _guest(cpu)
    job = vm_action(vm.name, "shutdown", shutdown_timeout_s=10)
    started = time.monotonic()
    run_job(job.pk, worker="celery@a")
    job.refresh_from_db()
    assert time.monotonic() - started < 5, "the worker was held while the guest took its time"
    assert job.state == JobState.RUNNING and job.owner == "" and job.wake, job.message
    assert cpu.destroyed == []
    cpu.domains[vm.domain_name] = "shutoff"  # the guest powers itself off meanwhile
    run_job(job.pk, worker="celery@b", wake=job.wake)  # the wake-up message, on any worker
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, job.message
    assert cpu.destroyed == [] and VirtualMachine.objects.get(pk=vm.pk).state == VmState.STOPPED
    assert "stubborn shut down by itself (shutoff)" in job.log.values_list("message", flat=True)


@pytest.mark.django_db
def test_a_shutdown_waiting_outside_a_worker_is_forced_off_at_its_deadline_and_can_be_cancelled(cpu, monkeypatch):
    vm = _guest(cpu)
    job = vm_action(vm.name, "shutdown", shutdown_timeout_s=3600)
    run_job(job.pk)
    job.refresh_from_db()
    stale = job.wake
    run_job(job.pk, wake="not-" + stale)  # a stray message: not the one this wait is for
    assert Job.objects.get(pk=job.pk).owner == ""
    now = time.time
    monkeypatch.setattr(time, "time", lambda: now() + 3601)  # an hour later
    run_job(job.pk, wake=stale)
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and cpu.destroyed == [vm.domain_name], job.message
    run_job(job.pk, wake=stale)  # the same message delivered twice: nothing runs again
    assert cpu.destroyed == [vm.domain_name]


@pytest.mark.django_db(transaction=True)
def test_ha_jobs_go_to_their_own_queue_and_tenant_jobs_to_the_default_one():
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    default, ha = settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_HA_QUEUE
    assert default != ha
    broker.delete(default, ha)
    try:
        start_job("host.failover", target_name="cpu9", params=FailoverParams(incident=0, host="cpu9"))
        start_job("host.evacuate", target_name="cpu9",
                  params=EvacuateParams(host="cpu9", reason="test", trigger="suspect"))
        assert (broker.llen(ha), broker.llen(default)) == (2, 0)
        vm = VirtualMachine.objects.create(name="t1", vcpus=1, memory_mib=64, disk_mib=32)
        start_job("vm.shutdown", vm=vm, params=VmPowerParams(timeout_s=3600))
        assert (broker.llen(ha), broker.llen(default)) == (2, 1)
    finally:
        broker.delete(default, ha)
