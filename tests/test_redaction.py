"""What a tenant's user learns of the hosts: nothing, unless the tenant is shown them, and then only
their names. No address, URI, backing path, AoE address or traceback reaches a tenant, on any page,
in log.json, over the API or the websocket. Operators see everything."""
from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from rest_framework.test import APIClient

from hosts.fixes import apply_fix
from hosts.models import CpuServer, DiskServer
from jobs import runner
from jobs.choices import JobState
from jobs.models import Job
from jobs.runner import Step
from jobs.services import start_job
from tenants.services import add_user, create_tenant
from vms.services import VmRequest, create_vm
from xenaoe_panel.asgi import application

ADDRESS_CPU1, ADDRESS_CPU2 = "192.0.2.21", "cpu2.mgmt.example.org"
BMC_CPU1 = "2001:db8::21"
URI_CPU1 = f"qemu+ssh://root@{ADDRESS_CPU1}/system"
VOLUME_DIR = "/srv/xenaoe/volumes"
MIGRATION_URI = f"tcp://{ADDRESS_CPU2}:49152"
LIBVIRT_HOSTNAME = "hv-rack3-07"
# Everything a tenant not shown the hosts may never read, whatever the page.
SECRETS = ["cpu1", "cpu2", "disk1", "disk2", ADDRESS_CPU1, ADDRESS_CPU2, BMC_CPU1, "2001:db8::", URI_CPU1,
           "qemu+ssh", VOLUME_DIR, "/dev/etherd", "e1.0", "e2.0", "02:00:00:00:21:01", "Traceback",
           "KeyError", LIBVIRT_HOSTNAME, "tcp://"]
# What a tenant shown the hosts still may not read: where they are, and the panel's insides.
ADDRESSES = [s for s in SECRETS if s not in ("cpu1", "cpu2", "disk1", "disk2")]


@pytest.fixture
def world(django_user_model):
    CpuServer.objects.create(name="cpu1", address=ADDRESS_CPU1, libvirt_uri=URI_CPU1, bmc_address=BMC_CPU1,
                             san_mac="02:00:00:00:21:01", memory_mib=8192, vcpus=8)
    CpuServer.objects.create(name="cpu2", address=ADDRESS_CPU2, libvirt_uri=f"qemu+ssh://root@{ADDRESS_CPU2}/system",
                             memory_mib=8192, vcpus=8)
    for i in (1, 2):
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000,
                                  volume_dir=VOLUME_DIR)
    acme = create_tenant("acme")
    alice = add_user(acme, "alice")
    operator = django_user_model.objects.create_user("op", is_staff=True)
    job = create_vm(VmRequest(name="a1", vcpus=1, memory_mib=256, disk_mib=100, cpu_server="cpu1", tenant="acme"),
                    user=operator)
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)  # the VM takes other jobs now
    job.refresh_from_db()
    return {"acme": acme, "alice": alice, "operator": operator, "create": job}


def _log_everything(job: Job) -> None:
    """Entries as the job kinds write them (vms/steps.py, vms/migration.py, the runner's ERRORED)."""
    legs = list(job.vm.mirror.legs.order_by("leg"))
    runner.append_log(job, f"a1: 1 vCPU, 256 MiB on cpu1 ({ADDRESS_CPU1})", data={"cpu_server": "cpu1"})
    for leg in legs:
        runner.append_log(job, f"leg {leg.leg}: {leg.name} on {leg.disk_server.name}, 100 MiB at {leg.backing_path}")
    runner.append_log(job, "e1.0 is /dev/etherd/e1.0 on cpu1")
    runner.append_log(job, "e1.0 answers from cpu1: MAC 02:00:00:00:21:01, 204800 sectors")
    runner.append_log(job, f"cpu2: libvirt answers (kvm, host {LIBVIRT_HOSTNAME}), 8192 MiB free",
                      data={"hostname": LIBVIRT_HOSTNAME})
    runner.append_log(job, f"cpu1 -> cpu2 over {MIGRATION_URI}, no bandwidth cap",
                      data={"migration_uri": MIGRATION_URI})
    runner.append_log(job, f"fencing cpu1: BMC {BMC_CPU1} did not answer; libvirt {URI_CPU1} neither")


@runner.job_kind("test.redaction-boom")
def _boom(ctx: runner.JobContext) -> list[Step]:
    def create_volumes(ctx: runner.JobContext) -> None:
        raise KeyError(f"{VOLUME_DIR}/a1-e1.0.img on disk1 ({ADDRESS_CPU1})")

    return [Step("Create volumes", create_volumes)]


def _errored_job(world) -> Job:
    job = start_job("test.redaction-boom", vm=world["create"].vm, user=world["operator"])
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.ERRORED
    return job


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _texts_a_user_reads(user, job: Job) -> dict[str, str]:
    """Every page and answer that shows this job or its VM, as text."""
    client, api = _client(user), _api(user)
    responses = {
        "job page": client.get(f"/jobs/{job.pk}/"),
        "log.json": client.get(f"/jobs/{job.pk}/log.json"),
        "job list": client.get("/jobs/"),
        "vm page": client.get("/vms/a1/"),
        "delete page": client.get("/vms/a1/delete/"),
        "api job": api.get(f"/api/jobs/{job.pk}/"),
        "api jobs": api.get("/api/jobs/"),
        "api log": api.get(f"/api/jobs/{job.pk}/log/"),
        "api vm": api.get("/api/vms/a1/"),
    }
    assert {where: r.status_code for where, r in responses.items()} == dict.fromkeys(responses, 200)
    return {where: r.content.decode() for where, r in responses.items()}


def _leaks(texts: dict[str, str], secrets: list[str]) -> list[tuple[str, str]]:
    found = []
    for where, text in texts.items():
        # A random CSRF token could hold "e1.0" by chance? It holds letters and digits only, never ".".
        text = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", text)
        found += [(where, s) for s in secrets if s in text]
    return found


@pytest.mark.django_db
def test_a_tenant_not_shown_hosts_reads_none_of_them_anywhere(world):
    _log_everything(world["create"])
    errored = _errored_job(world)
    for job in (world["create"], errored):
        texts = _texts_a_user_reads(world["alice"], job)
        assert _leaks(texts, SECRETS) == []
    page = _client(world["alice"]).get(f"/jobs/{errored.pk}/").content.decode()
    assert "Create volumes: internal error, reported to the operators" in page


@pytest.mark.django_db
def test_operators_read_everything(world):
    _log_everything(world["create"])
    errored = _errored_job(world)
    texts = _texts_a_user_reads(world["operator"], world["create"])
    for secret in ("cpu1", ADDRESS_CPU1, URI_CPU1, VOLUME_DIR, "/dev/etherd/e1.0", "02:00:00:00:21:01",
                   LIBVIRT_HOSTNAME, MIGRATION_URI, BMC_CPU1):
        assert secret in texts["job page"], secret
    assert f"{VOLUME_DIR}/a1-e1.0.img" in texts["delete page"] and "disk2" in texts["delete page"]
    log = _api(world["operator"]).get(f"/api/jobs/{errored.pk}/log/").json()
    assert any("Traceback" in e["data"].get("traceback", "") for e in log["entries"])


@pytest.mark.django_db
def test_a_tenant_shown_hosts_reads_their_names_but_not_where_they_are(world):
    world["acme"].shows_cpu_server = True
    world["acme"].save()
    _log_everything(world["create"])
    errored = _errored_job(world)
    texts = _texts_a_user_reads(world["alice"], world["create"])
    assert "a1: 1 vCPU, 256 MiB on cpu1" in texts["job page"]
    assert _leaks(texts, ADDRESSES) == []
    assert _leaks(_texts_a_user_reads(world["alice"], errored), ADDRESSES) == []


@pytest.mark.django_db
def test_a_fix_on_a_tenants_export_is_listed_without_its_target(world):
    fix = apply_fix("start-export", {"disk_server": "disk2", "shelf": 2, "slot": 0}, world["operator"])
    assert fix.target_name == "e2.0 on disk2" and fix.tenant == world["acme"]
    texts = _texts_a_user_reads(world["alice"], fix)
    assert f'href="/jobs/{fix.pk}/"' in texts["job list"]
    assert _leaks(texts, SECRETS) == []
    assert "e2.0 on disk2" in _client(world["operator"]).get("/jobs/").content.decode()


def _cookie(user) -> bytes:
    return f"sessionid={_client(user).cookies['sessionid'].value}".encode()


async def _backlog(job_id: int, user) -> str:
    cookie = await sync_to_async(_cookie)(user)
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job_id}/?after=0", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    messages = []
    while not await communicator.receive_nothing(timeout=0.5):
        messages.append(await communicator.receive_from())
    await communicator.disconnect()
    return "\n".join(messages)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_websocket_backlog_is_redacted_like_the_page(world):
    await sync_to_async(_log_everything)(world["create"])
    errored = await sync_to_async(_errored_job)(world)
    for job in (world["create"], errored):
        assert _leaks({"ws": await _backlog(job.pk, world["alice"])}, SECRETS) == []
    assert URI_CPU1 in await _backlog(world["create"].pk, world["operator"])
