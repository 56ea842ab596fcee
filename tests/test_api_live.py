"""The API against the real database from several connections at once: the long-poll sees an entry
another connection commits while it waits, concurrent creates cannot exceed a tenant's quota, and a
script's token opens the job websocket."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.test import APIClient

from api.tokens import issue_token
from jobs.choices import JobState
from jobs.models import Job
from jobs.runner import append_log
from storage.models import AoEExport
from tenants.quotas import usage
from tenants.services import add_user, create_tenant, set_quotas
from tests.test_api import make_cluster, token_client
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db(transaction=True)
User = get_user_model()


def test_the_long_poll_returns_the_entry_written_while_it_waits():
    op = User.objects.create_user("op", is_staff=True)
    job = Job.objects.create(kind="test.ok", state=JobState.RUNNING)
    append_log(job, "first")

    def write_later() -> None:
        try:
            time.sleep(0.5)
            append_log(Job.objects.get(pk=job.pk), "second, written while the client waits")
        finally:
            connection.close()

    writer = threading.Thread(target=write_later)
    writer.start()
    try:
        response = token_client(op).get(f"/api/jobs/{job.pk}/log/?after=1&wait=20")
    finally:
        writer.join()
    assert response.status_code == 200
    body = response.json()
    assert [e["message"] for e in body["entries"]] == ["second, written while the client waits"]
    assert body["entries"][0]["serial"] == 2 and body["next_after"] == 2


def test_the_long_poll_does_not_wait_for_a_finished_job():
    op = User.objects.create_user("op", is_staff=True)
    job = Job.objects.create(kind="test.ok", state=JobState.SUCCEEDED)
    started = time.monotonic()
    body = token_client(op).get(f"/api/jobs/{job.pk}/log/?after=0&wait=30").json()
    assert body["entries"] == [] and body["job"]["finished"] is True
    assert time.monotonic() - started < 20  # not the 30 s it was allowed


def test_concurrent_creates_never_exceed_the_quota():
    make_cluster()
    acme = create_tenant("acme")
    set_quotas(acme, quota_vms=5)
    users = [add_user(acme, f"user{n}") for n in range(4)]
    keys = [issue_token(user) for user in users]
    tries = 20
    barrier = threading.Barrier(tries)

    def create(n: int) -> tuple[int, dict]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {keys[n % len(keys)]}")
        try:
            barrier.wait(timeout=30)
            response = client.post("/api/vms/", {"name": f"vm{n}", "vcpus": 1, "memory_mib": 64, "disk_mib": 16},
                                   format="json")
            return response.status_code, response.json()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=tries) as pool:
        results = list(pool.map(create, range(tries)))

    statuses = sorted(status for status, _ in results)
    assert statuses == [202] * 5 + [400] * 15, results
    for status, body in results:
        if status == 400:
            assert "acme's VMs quota is 5: 5 in use, 0 left" in " ".join(body["non_field_errors"])
    assert VirtualMachine.objects.filter(tenant=acme).count() == 5
    assert AoEExport.objects.count() == 10 and Job.objects.filter(kind="vm.create").count() == 5
    assert next(u for u in usage(acme) if u.resource.field == "vms").used == 5


@pytest.mark.asyncio
async def test_a_token_header_opens_the_job_websocket():
    from channels.db import database_sync_to_async

    from xenaoe_panel.asgi import application

    def setup() -> tuple[str, str, int]:
        acme, globex = create_tenant("acme"), create_tenant("globex")
        alice, bob = add_user(acme, "alice"), add_user(globex, "bob")
        job = Job.objects.create(kind="test.ok", state=JobState.RUNNING, tenant=acme)
        append_log(job, "hello")
        return issue_token(alice), issue_token(bob), job.pk

    alice_key, bob_key, job_id = await database_sync_to_async(setup)()

    async def connect(key: str) -> tuple[WebsocketCommunicator, bool, int | None]:
        headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
                   (b"authorization", f"Token {key}".encode())]
        communicator = WebsocketCommunicator(application, f"/ws/jobs/{job_id}/?after=0", headers=headers)
        connected, code = await communicator.connect(timeout=5)
        return communicator, connected, code

    _, connected, code = await connect("wrong")
    assert not connected and code == 4401
    _, connected, code = await connect(bob_key)  # another tenant's job
    assert not connected and code == 4404
    communicator, connected, _ = await connect(alice_key)
    assert connected
    event = await communicator.receive_json_from(timeout=5)
    assert event["entry"]["message"] == "hello" and event["job"]["id"] == job_id
    await communicator.disconnect()
