"""Websockets for a tenant's users over the real Redis channel layer: they hear about their own
VMs and incidents only, and never learn another tenant's VM names or (unless told) the hosts."""
from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client

from ha.choices import EventKind, IncidentKind
from ha.incidents import open_incident, record
from hosts.models import CpuServer
from tenants.services import add_user, create_tenant
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.states import set_vm_state
from xenaoe_panel.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _setup() -> dict:
    cpu = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default", memory_mib=4096,
                                   vcpus=4)
    acme, globex = create_tenant("acme"), create_tenant("globex")
    vms = {}
    for name, tenant in (("a1", acme), ("b1", globex), ("ops1", None)):
        vms[name] = VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=128, disk_mib=64, cpu_server=cpu,
                                                  tenant=tenant, state=VmState.STOPPED)
    users = {"alice": add_user(acme, "alice"), "bob": add_user(globex, "bob")}
    return {"cpu": cpu, "vms": vms, "users": users}


def _cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _connect(path: str, user):
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
               (b"cookie", await sync_to_async(_cookie)(user))]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def _all(communicator, seconds: float = 1.0) -> list[dict]:
    # receive_nothing, not a receive that times out: a timed-out receive stops the consumer.
    messages = []
    while not await communicator.receive_nothing(timeout=seconds):
        messages.append(await communicator.receive_json_from())
    return messages


async def test_vm_states_reach_only_the_owning_tenant_without_the_host():
    world = await sync_to_async(_setup)()
    alice, _, _ = await _connect("/ws/vms/", world["users"]["alice"])
    bob, _, _ = await _connect("/ws/vms/", world["users"]["bob"])
    for vm in world["vms"].values():
        await sync_to_async(set_vm_state)(vm.pk, VmState.RUNNING, booted=True)
    heard_alice, heard_bob = await _all(alice), await _all(bob)
    assert [m["name"] for m in heard_alice] == ["a1"] and [m["name"] for m in heard_bob] == ["b1"]
    assert heard_alice[0]["state"] == "running" and "cpu_server" not in heard_alice[0]
    assert heard_alice[0]["running_since"]
    await alice.disconnect()
    await bob.disconnect()


async def test_tenant_streams_of_incidents_carry_only_their_part():
    world = await sync_to_async(_setup)()

    def fail_host():
        with transaction.atomic():
            incident, _ = open_incident(world["cpu"], IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")
        with transaction.atomic():
            record(incident, EventKind.RESTARTED, "b1 restarted on cpu2 in 5.0 s", vm="b1", cpu_server="cpu2")
            record(incident, EventKind.RESTARTED, "a1 restarted on cpu2 in 6.0 s", vm="a1", cpu_server="cpu2")
            record(incident, EventKind.NOTE, "a note naming b1 and a1 and cpu1")
        return incident

    hosts, connected, code = await _connect("/ws/hosts/", world["users"]["alice"])
    assert not connected and code == 4404
    stream, connected, _ = await _connect("/ws/incidents/", world["users"]["alice"])
    assert connected
    incident = await sync_to_async(fail_host)()
    heard = await _all(stream)
    texts = " ".join(str(m) for m in heard)
    assert "b1" not in texts and "cpu1" not in texts and "cpu2" not in texts
    events = [m["event"] for m in heard if m["event"]]
    assert [e["kind"] for e in events] == ["detected", "restarted"]
    assert events[1]["message"] == "a1: guest restarted."
    await stream.disconnect()
    # The incident's own stream replays the same reduced timeline to a late tenant page ...
    detail, connected, _ = await _connect(f"/ws/incidents/{incident.pk}/", world["users"]["alice"])
    backlog = [m["event"] for m in await _all(detail)]
    assert [e["kind"] for e in backlog] == ["detected", "restarted"]
    await detail.disconnect()
    # ... and a tenant it did not touch cannot open it.
    await sync_to_async(VirtualMachine.objects.filter(name="b1").update)(cpu_server=None)
    other = await sync_to_async(add_user)(await sync_to_async(create_tenant)("initech"), "peter")
    _, connected, code = await _connect(f"/ws/incidents/{incident.pk}/", other)
    assert not connected and code == 4404
