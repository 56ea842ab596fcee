"""The serial console's websocket without the lab: who may open it (close codes), bytes both ways,
following the VM to another server, a console another session holds, and the sessions that end
(logout, the permission withdrawn, a move to another tenant), each recorded on the VM page.

libvirt's test driver has no consoles, so these tests put a stand-in where the bytes leave the
program (drivers.console.SerialConsole, as vms/console.py uses it); the lab test
(tests/integration/test_console.py) runs the real one against a Debian guest."""
from __future__ import annotations

import json
import threading

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from api.tokens import issue_token
from audit.choices import Action
from audit.models import AuditEvent
from drivers.console import ConsoleBusy
from hosts.models import CpuServer
from tenants.services import add_user, create_tenant, move_user, set_permissions
from vms import console as console_service
from vms.choices import VmState
from vms.models import ConsoleSession, VirtualMachine
from xenaoe_panel.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


class FakeConsole:
    """Stands in for drivers.console.SerialConsole: echoes what is typed, upper-cased, and records
    every console opened (its URI and whether it took the console over)."""

    opened: list[tuple[str, bool]] = []
    busy = False
    current: FakeConsole | None = None

    def __init__(self, uri, domain, on_output, on_end) -> None:
        self.uri, self.on_output, self.on_end = uri, on_output, on_end
        self._ended = threading.Event()
        self.end_reason = ""

    def open(self, *, force: bool = False, timeout: float = 20) -> None:
        if FakeConsole.busy and not force:
            raise ConsoleBusy("another session holds the console")
        FakeConsole.opened.append((self.uri, force))
        FakeConsole.current = self

    def write(self, data: bytes) -> None:
        self.on_output(data.upper())

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def hang_up(self, reason: str = "the console closed") -> None:
        self.end_reason = reason
        self._ended.set()

    def close(self) -> None:
        self._ended.set()


@pytest.fixture(autouse=True)
def fake_console(monkeypatch):
    FakeConsole.opened, FakeConsole.busy, FakeConsole.current = [], False, None
    monkeypatch.setattr(console_service, "SerialConsole", FakeConsole)
    monkeypatch.setattr(console_service, "SETTLE_S", 3.0)
    return FakeConsole


@pytest_asyncio.fixture(autouse=True)
async def _layer_settles():
    yield
    await get_channel_layer().wait_received()
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)


def _world() -> dict:
    cpus = [CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri=f"test:///default#{i}",
                                     memory_mib=4096, vcpus=4) for i in (1, 2)]
    acme = create_tenant("acme", allowed_actions=["start", "console"])
    globex = create_tenant("globex", allowed_actions=["start", "console"])
    initech = create_tenant("initech", allowed_actions=["start"])
    vms = {name: VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=128, disk_mib=64, cpu_server=cpus[0],
                                               tenant=tenant, state=VmState.RUNNING)
           for name, tenant in (("a1", acme), ("b1", globex), ("i1", initech))}
    return {"cpus": cpus, "vms": vms, "acme": acme, "globex": globex,
            "alice": add_user(acme, "alice"), "bob": add_user(globex, "bob"), "ian": add_user(initech, "ian")}


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def _open(path: str, user=None, client: Client | None = None) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if user is not None or client is not None:
        client = client or await sync_to_async(_client)(user)
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    communicator.scope["client"] = ("127.0.0.1", 50000)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def _until(communicator: WebsocketCommunicator, predicate, timeout: float = 8) -> list[dict]:
    """Messages (as {"bytes": ...} / {"status": ...} / {"close": code}) until predicate(messages)."""
    import asyncio

    seen: list[dict] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate(seen):
        assert loop.time() < deadline, f"not seen within {timeout} s: {seen}"
        message = await communicator.receive_output(timeout=deadline - loop.time())
        if message["type"] == "websocket.close":
            seen.append({"close": message.get("code")})
        elif message.get("bytes") is not None:
            seen.append({"bytes": message["bytes"]})
        else:
            seen.append({"status": json.loads(message["text"])["state"]})
    return seen


def _connected(seen: list[dict]) -> bool:
    return {"status": "connected"} in seen


def _output(seen: list[dict]) -> bytes:
    return b"".join(m.get("bytes", b"") for m in seen)


CONSOLE = "/ws/vms/{}/console/serial/"


@pytest.mark.asyncio
async def test_who_may_open_a_console():
    world = await sync_to_async(_world)()
    assert (await _open(CONSOLE.format("a1")))[1:] == (False, 4401)
    assert (await _open(CONSOLE.format("a1"), world["bob"]))[1:] == (False, 4404)  # another tenant's
    assert (await _open(CONSOLE.format("nope"), world["bob"]))[1:] == (False, 4404)
    assert (await _open(CONSOLE.format("i1"), world["ian"]))[1:] == (False, 4403)  # own, not allowed
    assert not await sync_to_async(ConsoleSession.objects.exists)()
    communicator, connected, _ = await _open(CONSOLE.format("a1"), world["alice"])
    assert connected
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_bytes_go_both_ways_and_the_session_is_recorded():
    world = await sync_to_async(_world)()
    communicator, connected, _ = await _open(CONSOLE.format("a1"), world["alice"])
    assert connected
    await _until(communicator, _connected)
    await communicator.send_to(bytes_data=b"\x00ls -l\r\xff")
    await communicator.send_to(text_data=json.dumps({"type": "resize", "cols": 100, "rows": 30}))
    seen = await _until(communicator, lambda s: b"LS -L" in _output(s))
    assert _output(seen) == b"\x00LS -L\r\xff"
    session = await sync_to_async(ConsoleSession.objects.get)()
    assert (session.username, session.via, session.client, session.closed_at) == ("alice", "browser", "127.0.0.1",
                                                                                    None)
    await communicator.disconnect()
    session = await sync_to_async(ConsoleSession.objects.get)()
    assert session.closed_at is not None and session.end_reason == "client closed (1000)"


def _console_events() -> list[tuple]:
    return list(AuditEvent.objects.filter(action=Action.CONSOLE_OPENED).order_by("pk").values_list(
        "actor_name", "actor_kind", "target_kind", "target_name", "tenant__slug", "source_ip", "details"))


@pytest.mark.asyncio
async def test_opening_a_console_is_an_audit_event_by_session_or_by_token_and_a_refused_one_is_none():
    world = await sync_to_async(_world)()
    communicator, _, _ = await _open(CONSOLE.format("a1"), world["alice"])
    await _until(communicator, _connected)
    await communicator.disconnect()
    key = await sync_to_async(issue_token)(world["alice"])
    communicator = WebsocketCommunicator(application, CONSOLE.format("a1"), headers=[
        (b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"authorization", f"Token {key}".encode())])
    communicator.scope["client"] = ("198.51.100.40", 50001)
    assert (await communicator.connect(timeout=5))[0]
    await _until(communicator, _connected)
    await communicator.disconnect()
    _, _, code = await _open(CONSOLE.format("i1"), world["ian"])  # his tenant has no console
    assert code == 4403
    sessions = await sync_to_async(lambda: list(ConsoleSession.objects.order_by("pk").values_list("pk", flat=True)))()
    assert await sync_to_async(_console_events)() == [
        ("alice", "user", "vm", "a1", "acme", "127.0.0.1", {"console": "serial", "session": sessions[0]}),
        ("alice", "token", "vm", "a1", "acme", "198.51.100.40", {"console": "serial", "session": sessions[1]}),
    ]


@pytest.mark.asyncio
async def test_the_console_follows_the_vm_to_another_server():
    world = await sync_to_async(_world)()
    communicator, _, _ = await _open(CONSOLE.format("a1"), world["alice"])
    await _until(communicator, _connected)
    first = FakeConsole.current
    # The migration's switch-over: the inventory says cpu2 shortly after the stream ends.
    first.hang_up()
    await sync_to_async(VirtualMachine.objects.filter(name="a1").update)(cpu_server=world["cpus"][1])
    seen = await _until(communicator, lambda s: s.count({"status": "connected"}) == 1)
    assert b"[migrated to another server, reconnecting]" in _output(seen)
    assert seen[:2] == [{"bytes": b"\r\n[migrated to another server, reconnecting]\r\n"}, {"status": "migrated"}]
    assert [uri for uri, _ in FakeConsole.opened] == ["test:///default#1", "test:///default#2"]
    await communicator.send_to(bytes_data=b"still here")
    assert b"STILL HERE" in _output(await _until(communicator, lambda s: b"STILL HERE" in _output(s)))
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_a_stopped_guest_is_waited_for_on_the_same_server():
    world = await sync_to_async(_world)()
    communicator, _, _ = await _open(CONSOLE.format("a1"), world["alice"])
    await _until(communicator, _connected)
    await sync_to_async(VirtualMachine.objects.filter(name="a1").update)(state=VmState.STOPPED)
    FakeConsole.current.hang_up("the console closed")
    seen = await _until(communicator, lambda s: {"status": "waiting"} in s)
    assert b"migrated" not in _output(seen) and b"not running" in _output(seen)
    await sync_to_async(VirtualMachine.objects.filter(name="a1").update)(state=VmState.RUNNING)
    await _until(communicator, _connected)
    assert [uri for uri, _ in FakeConsole.opened] == ["test:///default#1"] * 2
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_a_console_another_session_holds_is_taken_over_only_on_request():
    world = await sync_to_async(_world)()
    FakeConsole.busy = True
    communicator, connected, _ = await _open(CONSOLE.format("a1"), world["alice"])
    assert connected
    seen = await _until(communicator, lambda s: any("close" in m for m in s))
    assert seen[-1] == {"close": 4409} and b"another console session is open" in _output(seen)
    communicator, _, _ = await _open(CONSOLE.format("a1") + "?force=1", world["alice"])
    await _until(communicator, _connected)
    assert FakeConsole.opened == [("test:///default#1", True)]
    await communicator.disconnect()
    reasons = await sync_to_async(lambda: sorted(ConsoleSession.objects.values_list("end_reason", flat=True)))()
    assert reasons == ["another console session is open on this VM", "client closed (1000)"]


@pytest.mark.asyncio
@pytest.mark.parametrize("change", ["logout", "permission", "move", "admin-permission", "admin-move"])
async def test_a_console_ends_when_its_user_logs_out_loses_the_permission_or_moves(change):
    world = await sync_to_async(_world)()
    client = await sync_to_async(_client)(world["alice"])
    communicator, _, _ = await _open(CONSOLE.format("a1"), client=client)
    await _until(communicator, _connected)
    # Another session of the same user (another browser) is not logged out with the first.
    elsewhere, _, _ = await _open(CONSOLE.format("a1") + "?force=1", world["alice"])
    await _until(elsewhere, _connected)

    def act() -> None:
        if change == "logout":
            assert client.post("/logout/").status_code == 302
        elif change == "permission":
            set_permissions(world["acme"], allowed_actions=["start"])
        elif change == "admin-permission":
            _admin_save_acme(allowed_actions='["start"]')
        elif change == "admin-move":
            _admin_save_acme(remove_member=world["alice"])
        else:
            move_user(world["alice"], world["globex"])

    await sync_to_async(act)()
    seen = await _until(communicator, lambda s: any("close" in m for m in s))
    assert seen[-1] == {"close": 4403}
    if change == "logout":
        assert await elsewhere.receive_nothing(timeout=0.5)
        await elsewhere.disconnect()
    else:
        assert (await _until(elsewhere, lambda s: any("close" in m for m in s)))[-1] == {"close": 4403}
    await communicator.wait(timeout=5)
    # Opened again from scratch: refused now (except after a logout: signed out).
    again = await _open(CONSOLE.format("a1"), client=None if change == "logout" else client)
    assert again[1:] == {"logout": (False, 4401), "permission": (False, 4403), "move": (False, 4404),
                         "admin-permission": (False, 4403), "admin-move": (False, 4404)}[change]


def _admin_save_acme(*, allowed_actions: str | None = None, remove_member=None) -> None:
    """Save tenant acme's change form in Django's admin, as an operator would: every field as the
    page shows it, with one change."""
    from django.contrib.auth import get_user_model

    from tenants.models import Membership, Tenant

    operator = get_user_model().objects.create_superuser("root-admin", password="admin-password-1")
    admin = _client(operator)
    tenant = Tenant.objects.get(slug="acme")
    url = f"/admin/tenants/tenant/{tenant.pk}/change/"
    form = admin.get(url).context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {name: ("on" if value is True else "" if value in (False, None) else value) for name, value in data.items()}
    data = {name: value for name, value in data.items() if value != ""}
    members = list(Membership.objects.filter(tenant=tenant).order_by("pk"))
    prefix = "memberships"
    data.update({f"{prefix}-TOTAL_FORMS": len(members), f"{prefix}-INITIAL_FORMS": len(members),
                 f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": 1000})
    for i, member in enumerate(members):
        data.update({f"{prefix}-{i}-id": member.pk, f"{prefix}-{i}-tenant": tenant.pk,
                     f"{prefix}-{i}-user": member.user_id})
        if remove_member is not None and member.user_id == remove_member.pk:
            data[f"{prefix}-{i}-DELETE"] = "on"
    if allowed_actions is not None:
        data["allowed_actions"] = allowed_actions
    response = admin.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response


def test_the_console_page_and_the_sessions_on_the_vm_page(django_user_model):
    world = _world()
    alice, ian = _client(world["alice"]), _client(world["ian"])
    page = alice.get("/vms/a1/console/")
    assert page.status_code == 200
    assert "style-src-elem 'self' 'unsafe-inline'" in page["Content-Security-Policy"]
    assert 'data-console-path="/ws/vms/a1/console/serial/"' in page.content.decode()
    assert alice.get("/vms/b1/console/").status_code == 404
    assert ian.get("/vms/i1/console/").status_code == 403
    assert "vm-console-link" not in ian.get("/vms/i1/").content.decode()
    # Other pages keep the strict policy.
    assert "style-src-elem 'self';" in alice.get("/vms/a1/").headers["Content-Security-Policy"]

    operator = django_user_model.objects.create_user("op", password="op-password-1", is_staff=True)
    vm = world["vms"]["a1"]
    console_service.record_open(vm, world["alice"], "browser", "198.51.100.7")
    mine = console_service.record_open(vm, operator, "browser", "203.0.113.9")
    console_service.record_close(mine.pk, "client closed (1000)")
    detail = alice.get("/vms/a1/").content.decode()
    assert "vm-console-link" in detail and "198.51.100.7" in detail and "an operator" in detail
    assert "203.0.113.9" not in detail and ">op<" not in detail
    assert "203.0.113.9" in _client(operator).get("/vms/a1/").content.decode()
    # The API tells a script where the console is, if it may use it.
    assert alice.get("/api/vms/a1/").json()["console_url"] == "ws://testserver/ws/vms/a1/console/serial/"
    assert ian.get("/api/vms/i1/").json()["console_url"] is None


VNC = "/ws/vms/{}/console/vnc/"


@pytest.mark.asyncio
async def test_the_graphical_console_who_may_and_bytes_both_ways(monkeypatch):
    """The VNC socket: the same close codes; 4503 when the display cannot be reached (libvirt's test
    driver has none); with a stand-in for the SSH tunnel (a local process that greets like a VNC
    server and echoes), the greeting first, then bytes both ways, and the session recorded."""
    import asyncio
    import sys

    from drivers import vnc
    from vms import graphics

    world = await sync_to_async(_world)()
    assert (await _open(VNC.format("a1")))[1:] == (False, 4401)
    assert (await _open(VNC.format("a1"), world["bob"]))[1:] == (False, 4404)
    assert (await _open(VNC.format("i1"), world["ian"]))[1:] == (False, 4403)
    communicator, connected, _ = await _open(VNC.format("a1"), world["alice"])
    assert connected
    assert await communicator.receive_output(timeout=10) == {"type": "websocket.close", "code": 4503}

    async def fake_display(vm_pk: int) -> vnc.Tunnel:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'RFB 003.008\\n'); sys.stdout.flush(); "
            "[sys.stdout.buffer.write(l.upper()) or sys.stdout.flush() for l in sys.stdin.buffer]",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return vnc.Tunnel(process, await process.stdout.readexactly(12))

    monkeypatch.setattr(graphics, "open_display", fake_display)
    communicator, connected, _ = await _open(VNC.format("a1"), world["alice"])
    assert connected
    assert (await communicator.receive_output(timeout=10))["bytes"] == b"RFB 003.008\n"
    await communicator.send_to(bytes_data=b"rfb 003.008\n")
    assert (await communicator.receive_output(timeout=10))["bytes"] == b"RFB 003.008\n"
    await communicator.disconnect()
    kinds = await sync_to_async(lambda: sorted(ConsoleSession.objects.values_list("kind", "end_reason")))()
    assert kinds == [("vnc", "client closed (1000)"), ("vnc", "the display is not reachable")]
