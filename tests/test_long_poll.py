"""The job log's long poll (GET /api/jobs/ID/log/?wait=S) against the real PostgreSQL and Redis:
while it waits it holds no database connection, and an entry still comes back at once."""
from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import override_settings

from jobs.choices import JobState
from jobs.models import Job
from jobs.runner import append_log
from tests.test_api import token_client

pytestmark = pytest.mark.django_db(transaction=True)


def _connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def _poll_in_background(client, url: str) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def poll() -> None:
        started = time.monotonic()
        try:
            answer["response"] = client.get(url)
        finally:
            answer["seconds"] = time.monotonic() - started
            connection.close()

    thread = threading.Thread(target=poll)
    thread.start()
    return thread, answer


def test_waiting_polls_hold_no_database_connection_and_wake_on_an_entry():
    op = get_user_model().objects.create_user("op", is_staff=True)
    job = Job.objects.create(kind="test.ok", state=JobState.RUNNING)
    client = token_client(op)
    client.get("/api/me/")  # the token checked once, outside the measure
    before = _connections()
    polls = [_poll_in_background(client, f"/api/jobs/{job.pk}/log/?after=0&wait=20") for _ in range(5)]
    time.sleep(1.5)
    waiting = _connections()
    append_log(job, "the entry they wait for")
    for thread, _ in polls:
        thread.join(timeout=25)
    assert waiting == before, f"{waiting - before} connection(s) held by 5 waiting polls"
    for _, answer in polls:
        assert answer["response"].status_code == 200 and answer["seconds"] < 5
        assert [e["message"] for e in answer["response"].json()["entries"]] == ["the entry they wait for"]


@override_settings(API_MAX_LONG_POLLS=1)
def test_polls_beyond_the_cap_answer_at_once():
    op = get_user_model().objects.create_user("op", is_staff=True)
    job = Job.objects.create(kind="test.ok", state=JobState.RUNNING)
    client = token_client(op)
    first, answer = _poll_in_background(client, f"/api/jobs/{job.pk}/log/?after=0&wait=4")
    time.sleep(0.5)
    started = time.monotonic()
    body = client.get(f"/api/jobs/{job.pk}/log/?after=0&wait=4").json()
    assert body["entries"] == [] and time.monotonic() - started < 2  # not the 4 s it asked for
    first.join(timeout=10)
    assert answer["seconds"] >= 3.5  # the one within the cap waited
