"""The audit log's retention, apart from the job history's: events older than AUDIT_RETENTION_DAYS
move into their own file (the daily task `audit.archive_events`, `manage.py audit archive`) while
jobs follow JOB_RETENTION_DAYS, 0 keeps every event, a restore puts them back, and the append-only
trigger lets the archive delete nothing younger than the cutoff it declares."""
from __future__ import annotations

import datetime
import gzip
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit import retention
from audit.actors import Actor
from audit.choices import Action, ActorKind
from audit.models import AuditEvent
from audit.services import record
from audit.tasks import archive_events as audit_task
from jobs.models import Job
from jobs.tasks import archive_finished_jobs as jobs_task
from tenants.services import add_user, create_tenant
from tests.test_job_history import make_job

pytestmark = pytest.mark.django_db

AGES = (500, 100, 10)  # days: past both defaults' cutoffs, past the jobs' only, recent


@pytest.fixture
def alice():
    return add_user(create_tenant("acme"), "alice", password="a-long-enough-secret-1")


def _aged(alice, days: int, action: str = Action.LOGIN) -> AuditEvent:
    return AuditEvent.objects.create(time=timezone.now() - datetime.timedelta(days=days), actor=alice,
                                     actor_name="alice", actor_kind=ActorKind.TOKEN, action=action,
                                     target_kind="user", target_name="alice", tenant=alice.membership.tenant,
                                     details={"page": "panel"}, source_ip="198.51.100.9")


def _left(events: dict[int, AuditEvent]) -> set[int]:
    """The ages whose event is still in the database."""
    present = set(AuditEvent.objects.filter(pk__in=[e.pk for e in events.values()]).values_list("pk", flat=True))
    return {age for age, event in events.items() if event.pk in present}


@pytest.mark.parametrize(("job_days", "audit_days"), [(90, 400), (400, 30)])
def test_events_and_jobs_each_go_after_their_own_retention(alice, tmp_path, settings, job_days, audit_days):
    settings.JOB_ARCHIVE_DIR, settings.JOB_RETENTION_DAYS, settings.AUDIT_RETENTION_DAYS = (
        tmp_path, job_days, audit_days)
    events = {age: _aged(alice, age) for age in AGES}
    jobs = {age: make_job("vm.create", target=f"vm{age}", days_ago=age) for age in AGES}
    jobs_task()
    audit_task()
    assert _left(events) == {age for age in AGES if age < audit_days}
    assert set(Job.objects.values_list("pk", flat=True)) == {jobs[age].pk for age in AGES if age < job_days}
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["audit", "jobs"]
    moved = AuditEvent.objects.get(action=Action.AUDIT_ARCHIVED)
    before = datetime.datetime.fromisoformat(moved.details["before"])
    assert abs(before - (timezone.now() - datetime.timedelta(days=audit_days))) < datetime.timedelta(minutes=5)
    assert moved.details["events"] == sum(age > audit_days for age in AGES)
    assert settings.CELERY_BEAT_SCHEDULE["archive-audit-events"]["task"] == audit_task.name


def test_zero_keeps_every_event_for_ever_while_jobs_still_go(alice, tmp_path, settings):
    settings.JOB_ARCHIVE_DIR, settings.JOB_RETENTION_DAYS, settings.AUDIT_RETENTION_DAYS = tmp_path, 90, 0
    events = {age: _aged(alice, age) for age in (5000, *AGES)}
    job = make_job("vm.create", target="old", days_ago=100)
    jobs_task()
    audit_task()
    out = io.StringIO()
    call_command("audit", "archive", stdout=out)
    assert "AUDIT_RETENTION_DAYS is 0: audit events are kept for ever" in out.getvalue()
    assert _left(events) == set(events)
    assert not Job.objects.filter(pk=job.pk).exists()
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["jobs"]
    call_command("audit", "archive", "--older-than-days", "4000", stdout=out)  # an operator's own cutoff
    assert _left(events) == set(AGES)


def test_restore_puts_the_events_back_as_they_were_and_can_be_repeated(alice, tmp_path):
    old, older, recent = _aged(alice, 100), _aged(alice, 200, Action.LOGOUT), _aged(alice, 10)
    before = {e.pk: (e.time, e.actor_id, e.actor_name, e.actor_kind, e.action, e.tenant_id, e.details, e.source_ip)
              for e in (old, older)}
    result = retention.archive_audit_events(datetime.timedelta(days=90), tmp_path)
    assert result.events == 2
    assert result.path.parent == tmp_path and result.path.name.startswith("audit-")
    with gzip.open(result.path, "rt") as text:
        lines = [json.loads(line) for line in text]
    assert [(line["event"]["id"], line["actor"], line["tenant"]) for line in lines] == [
        (old.pk, "alice", "acme"), (older.pk, "alice", "acme")]
    assert set(AuditEvent.objects.filter(pk__in=[old.pk, older.pk, recent.pk]).values_list("pk", flat=True)) == {
        recent.pk}
    moved = AuditEvent.objects.get(action=Action.AUDIT_ARCHIVED)
    assert (moved.actor_kind, moved.tenant, moved.details["events"], moved.details["file"]) == (
        ActorKind.SYSTEM, None, 2, result.path.name)

    out = io.StringIO()
    call_command("audit", "restore", str(result.path), stdout=out)
    assert "restored 2 audit events" in out.getvalue()
    after = {e.pk: (e.time, e.actor_id, e.actor_name, e.actor_kind, e.action, e.tenant_id, e.details, e.source_ip)
             for e in AuditEvent.objects.filter(pk__in=before)}
    assert after == before
    # The invocation from when the two shared one archive still reads an audit file.
    call_command("jobs", "restore", str(result.path), stdout=out)
    assert "restored 0 audit events" in out.getvalue() and "2 were already there" in out.getvalue()
    assert retention.restore_audit_archive(result.path) == retention.AuditRestore(0, 2)
    assert record(Action.LOGOUT, actor=Actor.system()).pk > max(before)  # the sequence moved past them


def test_the_command_archives_by_the_setting_as_its_operator_and_a_dry_run_changes_nothing(alice, tmp_path,
                                                                                             settings):
    settings.JOB_ARCHIVE_DIR, settings.AUDIT_RETENTION_DAYS = tmp_path, 400
    events = {age: _aged(alice, age) for age in AGES}
    out = io.StringIO()
    call_command("audit", "archive", "--dry-run", stdout=out)
    assert "would archive 1 audit events from before" in out.getvalue()
    assert list(tmp_path.iterdir()) == [] and _left(events) == set(AGES)
    # `jobs archive` no longer takes the audit log along, whatever its cutoff.
    call_command("jobs", "archive", "--older-than-days", "1", stdout=out)
    assert _left(events) == set(AGES)
    call_command("audit", "archive", stdout=out)
    assert "archived 1 audit events from before" in out.getvalue()
    assert _left(events) == {100, 10}
    assert [p.name.startswith("audit-") for p in tmp_path.iterdir()] == [True]
    assert AuditEvent.objects.get(action=Action.AUDIT_ARCHIVED).actor_kind == ActorKind.COMMAND
    call_command("audit", "archive", stdout=out)
    assert "no audit event older than" in out.getvalue()


def test_each_restore_command_refuses_what_it_cannot_read(alice, tmp_path):
    jobs = make_job("vm.create", target="old", days_ago=100)
    path = tmp_path / "not-an-archive.jsonl.gz"
    path.write_text("plain text")
    for command in ("audit", "jobs"):
        with pytest.raises(CommandError, match="not an archive this panel can read"):
            call_command(command, "restore", str(path))
    call_command("jobs", "archive", "--older-than-days", "90", "--archive-dir", str(tmp_path), stdout=io.StringIO())
    (job_file,) = tmp_path.glob("jobs-*.jsonl.gz")
    with pytest.raises(CommandError, match="holds jobs: manage.py jobs restore reads it"):
        call_command("audit", "restore", str(job_file))
    assert not Job.objects.filter(pk=jobs.pk).exists()


def _delete_claiming_archived_before(cutoff: datetime.datetime, event: AuditEvent) -> int:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('xenaoe.audit_archived_before', %s, true)", [cutoff.isoformat()])
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
        return cursor.rowcount


def test_the_trigger_lets_an_archive_delete_only_what_is_older_than_its_cutoff(alice, tmp_path):
    events = {age: _aged(alice, age) for age in AGES}
    cutoff = timezone.now() - datetime.timedelta(days=400)
    for age in (100, 10):
        with pytest.raises(IntegrityError, match="append-only"):
            _delete_claiming_archived_before(cutoff, events[age])
    assert _delete_claiming_archived_before(cutoff, events[500]) == 1
    assert _left(events) == {100, 10}
    # Asked for a cutoff the trigger would refuse, the archive says so before writing anything.
    with pytest.raises(ValueError, match="never archived"):
        retention.archive_audit_events(datetime.timedelta(hours=23), tmp_path)
    assert list(tmp_path.iterdir()) == [] and _left(events) == {100, 10}


def test_a_crash_while_writing_the_audit_archive_deletes_nothing(alice, tmp_path, monkeypatch):
    events = [_aged(alice, 100), _aged(alice, 101)]
    real = retention._lines

    def crash_after_first(ids):
        yield next(real(ids))
        raise OSError("disk full")

    monkeypatch.setattr(retention, "_lines", crash_after_first)
    with pytest.raises(OSError, match="disk full"):
        retention.archive_audit_events(datetime.timedelta(days=90), tmp_path)
    assert AuditEvent.objects.filter(pk__in=[e.pk for e in events]).count() == 2
    assert [p.name.endswith(".jsonl.gz.partial") for p in tmp_path.iterdir()] == [True]
