"""The job runner: steps in order, log entries numbered, failures undone in reverse."""
from __future__ import annotations

import pytest

from drivers.errors import DriverError
from jobs import runner
from jobs.choices import JobState
from jobs.models import Job

pytestmark = pytest.mark.django_db

calls: list[str] = []


def _record(name: str):
    def step(ctx: runner.JobContext) -> None:
        calls.append(name)
    return step


def _raise(exc: Exception):
    def step(ctx: runner.JobContext) -> None:
        calls.append("boom")
        raise exc
    return step


@runner.job_kind("test.ok")
def _plan_ok(ctx):
    return [runner.Step("first", _record("first"), _record("undo first")),
            runner.Step("second", _record("second"))]


@runner.job_kind("test.driver_failure")
def _plan_driver_failure(ctx):
    return [runner.Step("first", _record("first"), _record("undo first")),
            runner.Step("second", _record("second"), _record("undo second")),
            runner.Step("third", _raise(DriverError("disk2: no space left")), _record("undo third"))]


@runner.job_kind("test.bug")
def _plan_bug(ctx):
    return [runner.Step("first", _record("first"), _raise(RuntimeError("undo broke"))),
            runner.Step("second", _raise(KeyError("oops")))]


@pytest.fixture(autouse=True)
def _clear_calls():
    calls.clear()


def _messages(job: Job) -> list[str]:
    return list(job.log.order_by("serial").values_list("message", flat=True))


def test_successful_job_runs_every_step_and_ends_at_100_percent():
    job = Job.objects.create(kind="test.ok")
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert calls == ["first", "second"]
    assert job.state == JobState.SUCCEEDED
    assert (job.step, job.total_steps, job.percent) == (2, 2, 100)
    assert list(job.log.values_list("serial", flat=True)) == list(range(1, job.log.count() + 1))
    assert _messages(job)[:2] == ["Step 1/2: first", "Step 2/2: second"]


def test_driver_error_fails_the_job_and_undoes_the_failed_step_and_those_before_it_in_reverse():
    job = Job.objects.create(kind="test.driver_failure")
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert calls == ["first", "second", "boom", "undo third", "undo second", "undo first"]
    assert job.state == JobState.FAILED
    assert "third failed: disk2: no space left" in job.message
    assert job.finished_at is not None


def test_unexpected_exception_errors_the_job_with_traceback_and_reports_a_failed_undo():
    job = Job.objects.create(kind="test.bug")
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.ERRORED
    assert "undo incomplete" in job.message
    entry = job.log.filter(data__has_key="traceback").get()
    assert "KeyError" in entry.data["traceback"]
    assert any("clean up by hand: undo broke" in m for m in _messages(job))


def test_a_job_runs_at_most_once_even_if_delivered_twice():
    job = Job.objects.create(kind="test.ok")
    runner.run_job(job.pk)
    runner.run_job(job.pk)
    assert calls == ["first", "second"]


def test_unknown_kind_errors():
    job = Job.objects.create(kind="no.such.kind")
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.ERRORED
    assert "unknown job kind" in job.message


def _cancel_during(ctx: runner.JobContext) -> None:
    calls.append("second")
    Job.objects.filter(pk=ctx.job.pk).update(cancel_requested=True)


@runner.job_kind("test.cancel_between_steps")
def _plan_cancel(ctx):
    return [runner.Step("first", _record("first"), _record("undo first")),
            runner.Step("second", _cancel_during, _record("undo second")),
            runner.Step("third", _record("third"))]


@runner.job_kind("test.cancel_inside_step")
def _plan_cancel_inside(ctx):
    def waits(ctx):
        calls.append("waiting")
        Job.objects.filter(pk=ctx.job.pk).update(cancel_requested=True)
        ctx.check_cancel()
        calls.append("never")
    return [runner.Step("first", _record("first"), _record("undo first")),
            runner.Step("wait", waits, _record("undo wait"))]


def test_cancel_stops_before_the_next_step_and_undoes_what_was_done():
    job = Job.objects.create(kind="test.cancel_between_steps")
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert calls == ["first", "second", "undo second", "undo first"]
    assert job.state == JobState.CANCELLED
    assert "cancelled by an operator before third" in job.message


def test_a_step_that_waits_can_be_cancelled_and_its_own_undo_runs():
    job = Job.objects.create(kind="test.cancel_inside_step")
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert calls == ["first", "waiting", "undo wait", "undo first"]
    assert job.state == JobState.CANCELLED


def test_one_active_job_per_vm_is_kept_by_the_database():
    from django.core.exceptions import ValidationError

    from jobs.services import start_job
    from vms.models import VirtualMachine

    vm = VirtualMachine.objects.create(name="busy", vcpus=1, memory_mib=64, disk_mib=32)
    first = start_job("test.ok", vm=vm)
    with pytest.raises(ValidationError, match=rf"busy is busy with job #{first.pk} \(test.ok, queued\)"):
        start_job("test.ok", vm=vm)
    Job.objects.filter(pk=first.pk).update(state=JobState.SUCCEEDED)
    assert start_job("test.ok", vm=vm).pk != first.pk
