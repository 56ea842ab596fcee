"""A job's run rides out a database restart (found by the fault suite: PostgreSQL restarted during a
live migration killed the run while libvirt finished the migration by itself). The restart is a
real one as far as this connection knows: PostgreSQL terminates its backend."""
from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, connection, transaction

from jobs import dbretry
from jobs.models import Job
from jobs.runner import append_log

pytestmark = pytest.mark.django_db(transaction=True)


def _terminate_my_backend() -> None:
    pid = connection.cursor().connection.info.backend_pid
    settings = connection.settings_dict
    with psycopg.connect(host=settings["HOST"] or "127.0.0.1", port=settings["PORT"] or 5432,
                         user=settings["USER"], dbname=settings["NAME"], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_log_line_written_after_the_connection_was_closed_by_the_server_arrives():
    job = Job.objects.create(kind="test.db")
    append_log(job, "before")
    _terminate_my_backend()
    append_log(job, "after")
    assert list(job.log.order_by("serial").values_list("serial", "message")) == [(1, "before"), (2, "after")]


def test_inside_a_transaction_it_is_not_retried(monkeypatch):
    monkeypatch.setattr(dbretry, "RETRY_FOR_S", 5.0)
    job = Job.objects.create(kind="test.db")
    with pytest.raises(OperationalError), transaction.atomic():
        _terminate_my_backend()
        append_log(job, "lost with its transaction")
    connection.close()
    assert not job.log.exists()
