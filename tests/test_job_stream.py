"""The job websocket over the real Redis channel layer: authentication, backlog, live events."""
from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from jobs import runner
from jobs.models import Job
from xenaoe_panel.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _headers(client: Client | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if client is not None:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return headers


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def _connect(path: str, client: Client | None):
    communicator = WebsocketCommunicator(application, path, headers=_headers(client))
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def test_anonymous_connection_is_closed_unauthenticated():
    job = await Job.objects.acreate(kind="test.ok")
    communicator, connected, code = await _connect(f"/ws/jobs/{job.pk}/", None)
    assert not connected and code == 4401


async def test_non_operator_and_missing_job_are_not_found(django_user_model):
    tenant = await django_user_model.objects.acreate(username="tenant")
    job = await Job.objects.acreate(kind="test.ok")
    client = await sync_to_async(_logged_in)(tenant)
    _, connected, code = await _connect(f"/ws/jobs/{job.pk}/", client)
    assert not connected and code == 4404
    op = await django_user_model.objects.acreate(username="op", is_staff=True)
    client = await sync_to_async(_logged_in)(op)
    _, connected, code = await _connect(f"/ws/jobs/{job.pk + 1000}/", client)
    assert not connected and code == 4404


async def test_foreign_origin_is_refused(django_user_model):
    op = await django_user_model.objects.acreate(username="op", is_staff=True)
    job = await Job.objects.acreate(kind="test.ok")
    client = await sync_to_async(_logged_in)(op)
    headers = [h for h in _headers(client) if h[0] != b"origin"] + [(b"origin", b"http://evil.example")]
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


async def test_backlog_resumes_after_the_last_serial_then_live_entries_follow(django_user_model):
    op = await django_user_model.objects.acreate(username="op", is_staff=True)
    job = await Job.objects.acreate(kind="test.ok", total_steps=3)
    for text in ("one", "two", "three"):
        await sync_to_async(runner.append_log)(job, text)
    client = await sync_to_async(_logged_in)(op)
    communicator, connected, _ = await _connect(f"/ws/jobs/{job.pk}/?after=1", client)
    assert connected
    backlog = [await communicator.receive_json_from(timeout=5) for _ in range(2)]
    assert [e["entry"]["message"] for e in backlog] == ["two", "three"]
    assert [e["entry"]["serial"] for e in backlog] == [2, 3]
    await sync_to_async(runner.append_log)(job, "four")
    live = await communicator.receive_json_from(timeout=5)
    assert live["entry"]["serial"] == 4 and live["entry"]["message"] == "four"
    assert live["job"]["id"] == job.pk
    await communicator.disconnect()
