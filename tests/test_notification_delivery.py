"""Notifications end to end through a real Celery worker: a change commits, its deliveries are
queued on the default queue, the worker sends them to a real SMTP server and a real webhook
receiver, and a failing receiver is tried again after real, growing delays (Celery's retry with a
countdown). The worker is this module's own, on a queue of its own, with a one-second backoff base.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.test import Client

from ha.choices import IncidentKind
from ha.incidents import open_incident
from hosts.models import CpuServer
from notifications import services
from notifications.choices import DeliveryState, Severity
from notifications.models import Delivery, Target
from tests.notify_receivers import SmtpSink, wait_until
from tests.test_notifications import email_target, people, receiver, smtp_sink, webhook_target  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)  # the worker reads what the test committed
REPO = Path(__file__).resolve().parent.parent
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def notify_worker(django_db_setup, smtp_sink: SmtpSink, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    """`celery worker` on the test database and a queue of its own, mailing through the sink; yields the queue."""
    from django.conf import settings

    from xenaoe_panel.celery import app

    queue = f"xenaoe-notify-test-{os.getpid()}"
    node = f"notify-{os.getpid()}@{socket.gethostname()}"
    database = settings.DATABASES["default"]["NAME"]
    env = dict(os.environ) | {
        "DATABASE_URL": os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + database,
        "DJANGO_SETTINGS_MODULE": "xenaoe_panel.settings_lab", "CELERY_QUEUE": queue,
        "EMAIL_BACKEND": "smtp", "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp_sink.port),
        "XENAOE_NOTIFY_RETRY_BASE_S": "1", "XENAOE_NOTIFY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    }
    log = tmp_path_factory.mktemp("notify-worker") / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "xenaoe_panel", "worker", "-P", "threads",
                                 "-c", "4", "--loglevel=INFO", "-n", node, "-Q", queue],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def answers() -> bool:
        assert proc.poll() is None, f"the worker exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        return bool(app.control.ping(destination=[node], timeout=0.5))

    wait_until(answers, 60, "the notification worker's first answer")
    yield queue
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)


@pytest.fixture
def worker(notify_worker: str, settings, smtp_sink: SmtpSink) -> str:  # noqa: F811
    """This test's deliveries go to the worker's queue (unit tests otherwise queue where nobody listens)."""
    settings.CELERY_TASK_DEFAULT_QUEUE = notify_worker
    smtp_sink.messages.clear()
    return notify_worker


def _state(delivery: Delivery, *states: str) -> Delivery | None:
    delivery.refresh_from_db()
    return delivery if delivery.state in states else None


def test_an_incident_reaches_the_operators_mailbox_through_the_worker(people, worker, smtp_sink):  # noqa: F811
    email_target(people.operator, "oncall@example.org")
    cpu1 = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default",
                                    memory_mib=4096, vcpus=4)

    open_incident(cpu1, IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")

    [message] = wait_until(lambda: smtp_sink.to("oncall@example.org"), 30, "the incident's email")
    assert message["Subject"] == "[XenAoE critical] CPU server failed: cpu1"
    sent = Delivery.objects.get()
    wait_until(lambda: _state(sent, DeliveryState.SENT), 10, "the delivery recorded as sent")
    assert sent.attempts == 1 and sent.sent_at is not None


def test_a_failing_receiver_is_retried_with_growing_delays_until_it_answers(people, worker, receiver):  # noqa: F811
    target, secret = webhook_target(people.operator, receiver.url())
    receiver.answers = [503, 503]
    client = Client()
    client.force_login(people.operator)

    client.post(f"/notifications/{target.pk}/test/")  # the "Send a test" button

    sent = wait_until(lambda: _state(Delivery.objects.get(target=target), DeliveryState.SENT), 30,
                      "the delivery after two refusals")
    assert (sent.attempts, sent.response_code, sent.last_error) == (3, 200, "")
    first, second, third = receiver.received
    assert [r.answered for r in receiver.received] == [503, 503, 200]
    # Backoff from a one-second base: about 1 s, then about 2 s (Celery's countdown).
    assert 0.9 <= second.at - first.at < 5 and 1.9 <= third.at - second.at < 8
    assert all(r.signed_with(secret) for r in receiver.received)
    assert len({r.headers["X-XenAoE-Delivery"] for r in receiver.received}) == 1
    assert first.headers["X-XenAoE-Timestamp"] != third.headers["X-XenAoE-Timestamp"]  # signed afresh each time
    page = client.get(target.get_absolute_url()).content.decode()
    assert f'data-delivery="{sent.pk}" data-state="sent"' in page


def test_a_receiver_that_never_recovers_is_given_up_after_the_last_attempt(people, worker, receiver):  # noqa: F811
    target, _ = webhook_target(people.operator, receiver.url(), min_severity=Severity.INFO)
    receiver.answers = [503] * 10

    delivery = services.test_target(target)

    failed = wait_until(lambda: _state(delivery, DeliveryState.FAILED), 30, "the delivery given up")
    assert (failed.attempts, failed.response_code) == (MAX_ATTEMPTS, 503)
    assert failed.last_error.startswith("HTTP 503") and len(receiver.received) == MAX_ATTEMPTS


def test_the_test_button_sends_an_email_through_the_worker(people, worker, smtp_sink):  # noqa: F811
    target = email_target(people.alice, "alice@example.org")
    client = Client()
    client.force_login(people.alice)

    client.post(f"/notifications/{target.pk}/test/")

    [message] = wait_until(lambda: smtp_sink.to("alice@example.org"), 30, "the test email")
    assert message["Subject"] == "[XenAoE info] Test notification for alice@example.org"
    assert message["X-XenAoE-Event"] == "test"
    assert Target.objects.get(pk=target.pk).deliveries.get().state == DeliveryState.SENT
