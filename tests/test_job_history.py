"""Job history: the filtered, paginated /jobs/ page and retention (archive to a file, restore)."""
from __future__ import annotations

import datetime
import gzip
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import retention
from jobs.choices import JobState, LogLevel
from jobs.filtersets import JobFilterSet
from jobs.models import Job, JobLogEntry, hosts_column
from jobs.tasks import archive_finished_jobs as archive_task
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
NOW = timezone.now()
User = get_user_model()


def make_job(kind: str, state: str = JobState.SUCCEEDED, target: str = "", *, user=None, hosts=(),
             days_ago: float = 0, vm=None, log: int = 0) -> Job:
    """A job as the history holds it: `hosts` as start_job would have recorded them."""
    job = Job.objects.create(kind=kind, state=state, target_name=target, user=user, hosts=hosts_column(hosts), vm=vm)
    created = NOW - datetime.timedelta(days=days_ago)
    finished = created + datetime.timedelta(seconds=30) if state not in (JobState.QUEUED, JobState.RUNNING) else None
    # created_at is auto_now_add: only an update can put a job in the past.
    Job.objects.filter(pk=job.pk).update(created_at=created, finished_at=finished)
    for serial in range(1, log + 1):
        JobLogEntry.objects.create(job=job, serial=serial, message=f"line {serial} of #{job.pk}", step=serial,
                                   total_steps=log, level=LogLevel.WARNING if serial == 2 else LogLevel.INFO,
                                   data={"serial": serial})
    job.refresh_from_db()
    return job


@pytest.fixture
def staff(db):
    return User.objects.create_user("alice", password="pw-alice-1", is_staff=True)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def history(staff):
    bob = User.objects.create_user("bob")
    return {
        "create_web1": make_job("vm.create", target="web1", user=staff, hosts=["cpu1"], days_ago=1),
        "delete_web1": make_job("vm.delete", JobState.FAILED, "web1", user=bob, days_ago=10),
        "migrate_db1": make_job("vm.migrate", JobState.RUNNING, "db1", user=staff, hosts=["cpu1", "cpu2"]),
        "fix": make_job("cluster.fix", JobState.ERRORED, hosts=["disk2"], days_ago=40),
        "create_web10": make_job("vm.create", JobState.CANCELLED, "web10", user=bob, hosts=["cpu2"], days_ago=3),
    }


def _shown(response) -> set[int]:
    return {job.pk for job in response.context["page_obj"].object_list}


def _day(days_ago: int) -> str:
    return timezone.localdate(NOW - datetime.timedelta(days=days_ago)).isoformat()


@pytest.mark.parametrize(("query", "expected"), [
    ("", {"create_web1", "delete_web1", "migrate_db1", "fix", "create_web10"}),
    ("kind=vm.create", {"create_web1", "create_web10"}),
    ("state=running", {"migrate_db1"}),
    ("vm=web1", {"create_web1", "delete_web1"}),
    ("vm=web*", {"create_web1", "delete_web1", "create_web10"}),
    ("host=cpu1", {"create_web1", "migrate_db1"}),
    ("host=cpu2", {"migrate_db1", "create_web10"}),
    ("host=disk2", {"fix"}),
    ("host=cpu", set()),
    ("host=automatic", set()),
    ("user=bob", {"delete_web1", "create_web10"}),
    (lambda: f"date_from={_day(5)}", {"create_web1", "migrate_db1", "create_web10"}),
    (lambda: f"date_to={_day(5)}", {"delete_web1", "fix"}),
    (lambda: f"date_from={_day(3)}&date_to={_day(3)}", {"create_web10"}),
    ("kind=vm.create&user=bob&host=cpu2&vm=web*", {"create_web10"}),
])
def test_each_filter_narrows_the_list_to_the_jobs_it_names(staff_client, history, query, expected):
    query = query() if callable(query) else query
    response = staff_client.get(f"/jobs/?{query}")
    assert response.status_code == 200
    assert _shown(response) == {history[name].pk for name in expected}
    count = len(expected)
    text = f"{count} job{'' if count == 1 else 's'}"
    if query:
        text += f" match{'es' if count == 1 else ''} these filters"
    assert text in response.content.decode()


def test_the_kind_filter_offers_the_kinds_present(staff_client, history):
    choices = dict(staff_client.get("/jobs/").context["form"].fields["kind"].choices)
    assert set(choices) == {"", "cluster.fix", "vm.create", "vm.delete", "vm.migrate"}


@pytest.mark.parametrize(("query", "message"), [
    ("state=sleeping", "“sleeping” is not a job state."),
    ("vm=Bad%20Name!", "A VM name is lower-case letters"),
    ("vm=*", "A VM name is lower-case letters"),
    ("host=-cpu1", "A host name is lower-case letters"),
    ("user=nobody", "There is no user named “nobody”."),
    ("date_from=2024-13-45", "Enter a valid date."),
    ("date_from=2024-05-02&date_to=2024-05-01", "“To” is before “From”."),
])
def test_bad_filter_input_gets_a_message_and_no_list_not_a_server_error(staff_client, history, query, message):
    response = staff_client.get(f"/jobs/?{query}")
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    assert "The filters have a mistake" in html
    assert 'aria-invalid="true"' in html
    assert f'href="/jobs/{history["create_web1"].pk}/"' not in html


@pytest.mark.parametrize("page", ["abc", "0", "-1", "99999", "last"])
def test_a_page_number_out_of_range_or_not_a_number_shows_a_page_not_an_error(staff_client, history, page):
    response = staff_client.get(f"/jobs/?page={page}")
    assert response.status_code == 200
    assert _shown(response) == {job.pk for job in history.values()}


def test_pagination_links_keep_the_filters(staff_client, staff):
    for n in range(60):
        make_job("vm.create", target=f"web{n}", user=staff, days_ago=n / 100)
    make_job("vm.delete", target="web1")
    response = staff_client.get("/jobs/?kind=vm.create&user=alice")
    html = response.content.decode()
    assert "60 jobs match these filters" in html
    assert "?kind=vm.create&amp;user=alice&amp;page=2" in html
    second = staff_client.get("/jobs/?kind=vm.create&user=alice&page=2")
    assert len(second.context["page_obj"].object_list) == 10
    assert {job.kind for job in second.context["page_obj"].object_list} == {"vm.create"}
    assert "?kind=vm.create&amp;user=alice&amp;page=1" in second.content.decode()


def test_every_page_together_is_the_whole_list_in_order_once(staff_client):
    # 175 jobs: pages 3 and 4 lie past the middle and are read from the other end.
    Job.objects.bulk_create(Job(kind="vm.start", target_name=f"vm{n}") for n in range(175))
    pages = [staff_client.get(f"/jobs/?page={n}").context["page_obj"].object_list for n in (1, 2, 3, 4)]
    assert [len(page) for page in pages] == [50, 50, 50, 25]
    assert [job.pk for page in pages for job in page] == list(Job.objects.values_list("pk", flat=True))


def test_the_number_of_queries_does_not_grow_with_the_number_of_jobs(
    staff_client, staff, django_assert_max_num_queries
):
    users = [staff, *(User.objects.create_user(f"user{n}") for n in range(5))]

    def queries() -> int:
        with django_assert_max_num_queries(10), CaptureQueriesContext(connection) as captured:
            assert staff_client.get("/jobs/?page=2").status_code == 200
        return len(captured)

    for n in range(55):
        make_job("vm.create", target=f"a{n}", user=users[n % 2])
    few = queries()
    for n in range(300):
        make_job(f"vm.kind{n % 7}", target=f"b{n}", user=users[n % len(users)], hosts=[f"cpu{n}"])
    assert queries() == few


def test_the_host_filter_can_be_answered_from_the_trigram_index_not_a_scan_of_every_job(rf, staff):
    """Migration 0008's index serves the filter's own SQL (`hosts::text LIKE '% cpu2 %'`). A table this
    small is cheaper to scan, so the planner is told not to, to see that it could use the index."""
    make_job("vm.create", hosts=["cpu2"])
    make_job("vm.create", hosts=["cpu20"])
    request = rf.get("/jobs/")
    request.user = staff
    jobs = JobFilterSet({"host": "cpu2"}, Job.objects.all(), request=request).qs
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    assert "job_hosts_trgm" in jobs.explain()
    assert jobs.count() == 1


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/jobs/?vm=web1")
    assert response.status_code == 302
    assert response.url.startswith("/login/")


def test_users_of_no_tenant_see_no_jobs(client, history):
    client.force_login(User.objects.create_user("nobody"))
    response = client.get("/jobs/")
    assert response.status_code == 200
    assert "No jobs yet" in response.content.decode()
    assert client.get(f"/jobs/{history['create_web1'].pk}/").status_code == 404


def test_the_job_table_still_renders_on_the_dashboard_and_links_a_target_to_its_history(staff_client, history):
    html = staff_client.get("/").content.decode()
    assert f'href="/jobs/{history["create_web1"].pk}/"' in html
    assert 'href="/jobs/?vm=web1"' in html


# Retention ---------------------------------------------------------------------------------------

@pytest.fixture
def aged(staff):
    vm = VirtualMachine.objects.create(name="keeper", vcpus=1, memory_mib=64, disk_mib=32)
    return {
        "old_succeeded": make_job("vm.create", target="old1", user=staff, hosts=["cpu1"],
                                  days_ago=120, log=3),
        "old_failed": make_job("vm.delete", JobState.FAILED, "keeper", vm=vm, days_ago=100, log=2),
        "old_cancelled": make_job("vm.stop", JobState.CANCELLED, "old3", days_ago=95),
        "old_running": make_job("vm.migrate", JobState.RUNNING, "old4", days_ago=200, log=1),
        "old_queued": make_job("vm.start", JobState.QUEUED, "old5", days_ago=150),
        "recent": make_job("vm.create", target="new1", days_ago=10, log=2),
    }


ARCHIVED = {"old_succeeded", "old_failed", "old_cancelled"}


def _lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as text:
        return [json.loads(line) for line in text]


def test_archive_moves_old_finished_jobs_with_their_logs_to_a_file_and_out_of_the_database(aged, tmp_path):
    result = retention.archive_finished_jobs(datetime.timedelta(days=90), tmp_path, batch=2)
    assert (result.jobs, result.entries) == (3, 5)
    assert result.path.parent == tmp_path and result.path.name.endswith(".jsonl.gz")
    assert list(tmp_path.iterdir()) == [result.path]
    lines = {line["job"]["id"]: line for line in _lines(result.path)}
    assert set(lines) == {aged[name].pk for name in ARCHIVED}
    first = lines[aged["old_succeeded"].pk]
    assert first["username"] == "alice"
    assert first["job"]["hosts"] == " cpu1 "
    assert [(e["serial"], e["message"], e["level"]) for e in first["log"]] == [
        (n, f"line {n} of #{aged['old_succeeded'].pk}", "warning" if n == 2 else "info") for n in (1, 2, 3)
    ]
    remaining = set(Job.objects.values_list("pk", flat=True))
    assert remaining == {aged[name].pk for name in ("old_running", "old_queued", "recent")}
    assert not JobLogEntry.objects.filter(job_id__in=lines).exists()


def test_restore_puts_archived_jobs_back_as_they_were_and_can_be_repeated(aged, tmp_path, capsys):
    before = {
        job.pk: (job.kind, job.state, job.created_at, job.finished_at, job.user_id, job.hosts,
                 list(job.log.values_list("serial", "time", "message", "level", "data")))
        for name, job in aged.items() if name in ARCHIVED
    }
    path = retention.archive_finished_jobs(datetime.timedelta(days=90), tmp_path).path
    VirtualMachine.objects.filter(name="keeper").delete()
    call_command("jobs", "restore", str(path))
    assert "restored 3 jobs (5 log entries)" in capsys.readouterr().out
    after = {
        job.pk: (job.kind, job.state, job.created_at, job.finished_at, job.user_id, job.hosts,
                 list(job.log.values_list("serial", "time", "message", "level", "data")))
        for job in Job.objects.filter(pk__in=before)
    }
    assert after == before
    assert Job.objects.get(pk=aged["old_failed"].pk).vm is None  # the VM has gone since
    call_command("jobs", "restore", str(path))
    assert "restored 0 jobs (0 log entries)" in capsys.readouterr().out
    assert JobLogEntry.objects.filter(job_id__in=before).count() == 5
    assert Job.objects.create(kind="vm.start").pk > max(before)


def test_dry_run_counts_and_changes_nothing(aged, tmp_path, capsys):
    call_command("jobs", "archive", "--older-than-days", "90", "--dry-run", "--archive-dir", str(tmp_path))
    assert "would archive 3 jobs (5 log entries)" in capsys.readouterr().out
    assert Job.objects.count() == len(aged)
    assert list(tmp_path.iterdir()) == []


def test_archive_command_uses_the_retention_settings(aged, tmp_path, settings, capsys):
    settings.JOB_RETENTION_DAYS = 110
    settings.JOB_ARCHIVE_DIR = tmp_path / "archive"
    call_command("jobs", "archive")
    assert "archived 1 jobs (3 log entries)" in capsys.readouterr().out
    assert not Job.objects.filter(pk=aged["old_succeeded"].pk).exists()
    assert len(list((tmp_path / "archive").glob("jobs-*.jsonl.gz"))) == 1


def test_the_daily_task_archives_and_does_nothing_when_retention_is_off(aged, tmp_path, settings):
    settings.JOB_ARCHIVE_DIR = tmp_path
    settings.JOB_RETENTION_DAYS = 0
    archive_task()
    assert Job.objects.count() == len(aged)
    settings.JOB_RETENTION_DAYS = 90
    archive_task()
    assert Job.objects.count() == len(aged) - len(ARCHIVED)
    assert settings.CELERY_BEAT_SCHEDULE["archive-finished-jobs"]["task"] == archive_task.name


def test_a_crash_while_writing_the_archive_deletes_nothing(aged, tmp_path, monkeypatch):
    real = retention._job_lines

    def crash_after_first(ids):
        yield next(real(ids))
        raise OSError("disk full")

    monkeypatch.setattr(retention, "_job_lines", crash_after_first)
    with pytest.raises(OSError, match="disk full"):
        retention.archive_finished_jobs(datetime.timedelta(days=90), tmp_path)
    assert Job.objects.count() == len(aged)
    assert [p.name.endswith(".jsonl.gz.partial") for p in tmp_path.iterdir()] == [True]


def test_nothing_old_enough_writes_no_file(aged, tmp_path):
    result = retention.archive_finished_jobs(datetime.timedelta(days=365), tmp_path)
    assert (result.jobs, result.path) == (0, None)
    assert list(tmp_path.iterdir()) == []
