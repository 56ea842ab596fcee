"""Every websocket route, over the real Redis channel layer: a frame that is not JSON is ignored (the
socket goes on), and a user moved to another tenant or deactivated loses their open sockets at once."""
from __future__ import annotations

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client

from hosts.models import CpuServer
from jobs.services import start_job
from tenants.services import add_user, create_tenant, move_user, set_active
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.states import set_vm_state
from xenaoe_panel.asgi import application
from xenaoe_panel.ws_guard import CLOSE_ACCESS_CHANGED

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def _layer_settles():
    """A consumer that ends while receiving leaves the layer a cleanup task: let it run in this test's
    event loop, which closes with the test (Daphne's one loop runs it in its own time)."""
    yield
    await get_channel_layer().wait_received()
    # The layer's asyncio locks belong to this test's event loop, which closes now: the next test
    # gets a layer of its own.
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)


def _setup() -> dict:
    cpu = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default", memory_mib=4096,
                                   vcpus=4)
    acme, globex = create_tenant("acme"), create_tenant("globex")
    vms = {name: VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=128, disk_mib=64, cpu_server=cpu,
                                               tenant=tenant, state=VmState.STOPPED)
           for name, tenant in (("a1", acme), ("b1", globex))}
    job = start_job("vm.start", vm=vms["a1"])
    return {"vms": vms, "job": job, "globex": globex,
            "alice": add_user(acme, "alice"), "bob": add_user(globex, "bob")}


def _cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _connect(path: str, user) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
               (b"cookie", await sync_to_async(_cookie)(user))]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    assert connected, code
    return communicator


async def _drain(communicator: WebsocketCommunicator, seconds: float = 0.5) -> list[dict]:
    messages = []
    while not await communicator.receive_nothing(timeout=seconds):
        messages.append(await communicator.receive_json_from())
    return messages


def _routes(world: dict) -> list[str]:
    return ["/ws/vms/", "/ws/incidents/", f"/ws/jobs/{world['job'].pk}/?after=0"]


async def test_frames_that_are_not_json_are_ignored_on_every_route():
    world = await sync_to_async(_setup)()
    for path in _routes(world):
        communicator = await _connect(path, world["alice"])
        await _drain(communicator)
        for frame in ("not json", "{", " "):
            await communicator.send_to(text_data=frame)
        await communicator.send_to(bytes_data=b"\x00\xff")
        await communicator.send_json_to({"hello": "a valid frame is ignored too"})
        assert await communicator.receive_nothing(timeout=0.5)  # no answer, and no crash
        if path == "/ws/vms/":  # still streaming
            await sync_to_async(set_vm_state)(world["vms"]["a1"].pk, VmState.RUNNING, booted=True)
            assert [m["name"] for m in await _drain(communicator)] == ["a1"]
        await communicator.disconnect()


@pytest.mark.parametrize("change", ["move", "deactivate"])
async def test_a_users_sockets_end_when_their_access_changes(change):
    world = await sync_to_async(_setup)()
    sockets = [await _connect(path, world["alice"]) for path in _routes(world)]
    bobs = await _connect("/ws/vms/", world["bob"])
    for communicator in [*sockets, bobs]:
        await _drain(communicator)

    def change_access() -> None:
        with transaction.atomic():
            if change == "move":
                move_user(world["alice"], world["globex"])
            else:
                set_active(world["alice"], False)

    await sync_to_async(change_access)()
    for communicator in sockets:
        assert await communicator.receive_output(timeout=5) == {"type": "websocket.close",
                                                                "code": CLOSE_ACCESS_CHANGED}
    # The other tenant's user still streams.
    await sync_to_async(set_vm_state)(world["vms"]["b1"].pk, VmState.RUNNING, booted=True)
    assert [m["name"] for m in await _drain(bobs)] == ["b1"]
    await bobs.disconnect()
    for communicator in sockets:
        await communicator.wait(timeout=5)  # the consumers have ended, nothing raised


async def test_moving_a_user_to_the_tenant_they_are_in_keeps_their_sockets():
    world = await sync_to_async(_setup)()
    communicator = await _connect("/ws/vms/", world["bob"])
    await sync_to_async(move_user)(world["bob"], world["globex"])
    await sync_to_async(set_vm_state)(world["vms"]["b1"].pk, VmState.RUNNING, booted=True)
    assert [m["name"] for m in await _drain(communicator)] == ["b1"]
    await communicator.disconnect()
