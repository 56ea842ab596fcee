"""A job whose worker died is ended, and its VM freed; a live job is left alone."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import recovery, runner
from jobs.choices import JobState
from jobs.models import Job
from jobs.services import start_job
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


def _running(vm=None, *, heartbeat_age: timedelta, worker: str = "celery@a") -> Job:
    job = Job.objects.create(kind="vm.start", vm=vm, target_name=vm.name if vm else "x")
    beat = timezone.now() - heartbeat_age
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING, started_at=beat, heartbeat_at=beat, worker=worker)
    return Job.objects.get(pk=job.pk)


def test_a_silent_job_is_ended_errored_with_advice_and_its_vm_is_free_again():
    vm = VirtualMachine.objects.create(name="held", vcpus=1, memory_mib=64, disk_mib=32)
    stale = _running(vm, heartbeat_age=timedelta(minutes=30))
    alive = _running(heartbeat_age=timedelta(seconds=5))
    ended = recovery.expire_stale_jobs(timedelta(minutes=10))
    assert [job.pk for job in ended] == [stale.pk]
    stale.refresh_from_db()
    alive.refresh_from_db()
    assert stale.state == JobState.ERRORED and "cluster verify" in stale.message
    assert "celery@a showed no sign of life" in stale.message
    assert stale.log.last().message.startswith("Job errored:")
    assert alive.state == JobState.RUNNING
    assert start_job("vm.start", vm=vm).state == JobState.QUEUED  # no longer busy


def test_logging_is_a_heartbeat():
    job = _running(heartbeat_age=timedelta(minutes=30))
    runner.append_log(job, "still migrating")
    assert recovery.expire_stale_jobs(timedelta(minutes=10)) == []


def test_a_restarted_worker_ends_the_jobs_its_previous_life_left_running():
    mine = _running(heartbeat_age=timedelta(seconds=1), worker="celery@node1")
    other = _running(heartbeat_age=timedelta(seconds=1), worker="celery@node2")
    assert [job.pk for job in recovery.expire_jobs_of_worker("celery@node1")] == [mine.pk]
    other.refresh_from_db()
    assert other.state == JobState.RUNNING
    assert recovery.expire_jobs_of_worker("") == []


def test_the_runner_records_its_worker_and_heartbeat():
    job = Job.objects.create(kind="no.such.kind")
    runner.run_job(job.pk, worker="celery@here")
    job.refresh_from_db()
    assert job.worker == "celery@here" and job.heartbeat_at is not None
