"""Mirror health read inside the guests (storage/guest_health.py) and how the disk-server recovery
uses it (ha/storage_health.py), on PostgreSQL.

The one fake is where traffic leaves the program: libvirt_qemu.qemuAgentCommand, the guest agent's
channel. Everything else is real: libvirt's in-process test driver (test:///default) runs the
guest's domain, drivers/guest_agent.py opens, reads and closes /proc/mdstat through the fake agent
(or falls back to guest-exec when the agent refuses file commands), and the mdstat it answers is
captured from the lab's mirror guest (tests/drivers/mdstat/).
"""
from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from drivers import hypervisor as hv
from ha import storage_health
from storage import guest_health
from storage.choices import MirrorHealth, MirrorState
from storage.models import Mirror
from tests.test_monitor_unit import FakeCluster, _cycles, _monitor, calls, cluster, fake  # noqa: F401
from vms.choices import VmState
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
URI = "test:///default"
SAMPLES = Path(__file__).parent / "drivers" / "mdstat"


def sample(name: str) -> str:
    return (SAMPLES / f"{name}.txt").read_text()


class AgentError(libvirt.libvirtError):
    """A libvirt error as libvirt raises it for agent commands (code and message), made by hand."""

    def __init__(self, code: int, message: str) -> None:
        Exception.__init__(self, message)
        self.code, self.message = code, message

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


class FakeAgent:
    """The guest agent inside the guest: guest-file-* and guest-exec on a /proc/mdstat."""

    def __init__(self) -> None:
        self.mdstat = sample("healthy")
        self.connected = True
        self.disabled: set[str] = set()
        self.calls: list[str] = []
        self.open_handles: set[int] = set()

    def __call__(self, dom: libvirt.virDomain, command: str, timeout: int, flags: int) -> str:
        request = json.loads(command)
        name, args = request["execute"], request.get("arguments", {})
        self.calls.append(name)
        assert timeout >= 1, "every agent command has a timeout"
        if not self.connected:
            raise AgentError(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                             "Guest agent is not responding: QEMU guest agent is not connected")
        if name in self.disabled:
            raise AgentError(libvirt.VIR_ERR_INTERNAL_ERROR, f"internal error: unable to execute QEMU agent "
                             f"command '{name}': The command {name} has been disabled for this instance")
        data = base64.b64encode(self.mdstat.encode()).decode()
        if name == "guest-file-open":
            assert args == {"path": "/proc/mdstat", "mode": "r"}
            self.open_handles.add(1000)
            answer: object = 1000
        elif name == "guest-file-read":
            answer = {"count": len(self.mdstat), "buf-b64": data, "eof": True}
        elif name == "guest-file-close":
            self.open_handles.discard(args["handle"])
            answer = {}
        elif name == "guest-exec":
            assert args == {"path": "cat", "arg": ["/proc/mdstat"], "capture-output": True}
            answer = {"pid": 77}
        elif name == "guest-exec-status":
            answer = {"exited": True, "exitcode": 0, "out-data": data}
        else:
            raise AssertionError(f"unexpected agent command {name}")
        return json.dumps({"return": answer})


@pytest.fixture
def agent(monkeypatch) -> FakeAgent:
    fake_agent = FakeAgent()
    monkeypatch.setattr(libvirt_qemu, "qemuAgentCommand", fake_agent)
    return fake_agent


@pytest.fixture
def domain(cluster) -> Iterator[str]:  # noqa: F811
    """The VM "web" of the cluster fixture, running on test:///default (kept alive by a connection)."""
    vm = cluster["vm"]
    keeper = libvirt.open(URI)
    spec = hv.DomainSpec(vm.domain_name, str(uuid.uuid4()), 1, 64, ("/dev/etherd/e1.5", "/dev/etherd/e2.5"), "kvm")
    dom = keeper.defineXML(hv.domain_xml(spec))
    dom.create()
    yield vm.domain_name
    dom.destroy()
    dom.undefine()
    keeper.close()


def _mirror() -> Mirror:
    return Mirror.objects.get()


def test_a_healthy_guest_array_makes_the_mirror_healthy(domain, agent):
    changes = guest_health.check_mirrors(timeout=5)
    mirror = _mirror()
    assert (mirror.health, mirror.health_detail, mirror.missing_legs) == (MirrorHealth.HEALTHY, "md0 [UU]", [])
    assert mirror.resync_percent is None and mirror.checked_at is not None
    assert changes == ["web: mirror healthy (md0 [UU])"]
    assert agent.calls == ["guest-file-open", "guest-file-read", "guest-file-close"] and not agent.open_handles
    checked = mirror.checked_at
    assert guest_health.check_mirrors(timeout=5) == []  # nothing new to say ...
    assert _mirror().checked_at > checked  # ... but it was asked again


def test_a_lost_leg_then_its_recovery_is_seen_with_progress(domain, agent):
    agent.mdstat = sample("degraded-leg-detached")
    guest_health.check_mirrors(timeout=5)
    mirror = _mirror()
    assert (mirror.health, mirror.missing_legs, mirror.missing_leg_names) == (MirrorHealth.DEGRADED, [1], "leg 1")
    (exposed,) = storage_health.exposed_guests()  # the disk servers are up: only the guest knows
    assert exposed.health == MirrorHealth.DEGRADED and exposed.mirror_state == MirrorState.HEALTHY
    assert exposed.missing == ("e2.5 on disk2 (leg 1, not in sync in the guest)",)
    assert exposed.left == ("e1.5 on disk1",)

    agent.mdstat = sample("recovery")
    assert guest_health.check_mirrors(timeout=5) == ["web: mirror resyncing 25.3% (md0 [U_], recovery)"]
    mirror = _mirror()
    assert (mirror.health, mirror.resync_percent, mirror.resync_eta_s) == (MirrorHealth.RESYNCING, 25.3, 12)
    assert storage_health.exposed_guests()[0].resync_percent == 25.3

    agent.mdstat = sample("healthy")
    guest_health.check_mirrors(timeout=5)
    assert (_mirror().health, _mirror().resync_percent, _mirror().missing_legs) == (MirrorHealth.HEALTHY, None, [])
    assert storage_health.exposed_guests() == []


def test_without_a_guest_agent_the_health_is_unknown_and_says_why(domain, agent):
    agent.mdstat = sample("healthy")
    guest_health.check_mirrors(timeout=5)
    agent.connected = False
    guest_health.check_mirrors(timeout=5)
    mirror = _mirror()
    assert (mirror.health, mirror.health_detail) == (MirrorHealth.UNKNOWN, "no guest agent")
    assert mirror.missing_legs == [] and mirror.resync_percent is None


def test_an_agent_that_refuses_file_commands_is_read_through_guest_exec(domain, agent):
    agent.disabled = {"guest-file-open"}
    agent.mdstat = sample("degraded-leg-faulty")
    guest_health.check_mirrors(timeout=5)
    assert (_mirror().health, _mirror().missing_legs) == (MirrorHealth.DEGRADED, [1])
    assert agent.calls == ["guest-file-open", "guest-exec", "guest-exec-status"]


def test_a_guest_that_does_not_run_is_not_asked(domain, agent):
    VirtualMachine.objects.update(state=VmState.STOPPED)
    assert guest_health.check_mirrors(timeout=5) == ["web: mirror health unknown (guest not running)"]
    assert (_mirror().health, _mirror().health_detail) == (MirrorHealth.UNKNOWN, "guest not running")
    assert agent.calls == []


def test_a_xen_guest_has_no_agent_to_ask(cluster, agent):  # noqa: F811
    cluster["cpu1"].__class__.objects.filter(pk=cluster["cpu1"].pk).update(hypervisor="xen")
    guest_health.check_mirrors(timeout=5)
    assert _mirror().health == MirrorHealth.UNKNOWN and "Xen" in _mirror().health_detail
    assert agent.calls == []


def test_a_returned_disk_server_waits_for_the_guests_resync(cluster, fake, calls, domain, agent):  # noqa: F811
    monitor = _monitor(fake)
    fake.silent = {"disk2"}
    _cycles(monitor, 3)
    assert _mirror().state == MirrorState.DEGRADED
    agent.mdstat = sample("degraded-leg-faulty")
    guest_health.check_mirrors(timeout=5)

    fake.silent = set()
    _cycles(monitor, 3)  # back, exports restored, both legs answer on the wire: the guest has not caught up
    agent.mdstat = sample("recovery")
    guest_health.check_mirrors(timeout=5)
    _cycles(monitor, 2)
    assert _mirror().state == MirrorState.RESYNCING
    incident = storage_health.Incident.objects.get()
    assert incident.is_open

    agent.mdstat = sample("healthy")
    guest_health.check_mirrors(timeout=5)
    monitor.cycle()
    assert _mirror().state == MirrorState.HEALTHY and _mirror().health == MirrorHealth.HEALTHY
    incident.refresh_from_db()
    assert not incident.is_open


def test_without_an_agent_the_wire_alone_heals_a_returned_disk_servers_mirror(cluster, fake, calls):  # noqa: F811
    monitor = _monitor(fake)
    fake.silent = {"disk2"}
    _cycles(monitor, 3)
    fake.silent = set()
    _cycles(monitor, 2)
    assert _mirror().health == MirrorHealth.UNKNOWN and _mirror().state == MirrorState.HEALTHY


@pytest.mark.django_db(transaction=True)
def test_the_monitor_reads_the_guests_in_the_background_once_per_interval(domain, agent):
    import time

    watch = guest_health.GuestHealthWatch(interval=60, timeout=5)
    changes: list[str] = []
    try:
        watch.tick(changes)  # starts a pass and returns at once
        deadline = time.monotonic() + 10
        while not changes and time.monotonic() < deadline:
            time.sleep(0.05)
            watch.tick(changes)
        assert changes == ["web: mirror healthy (md0 [UU])"]
        reads = agent.calls.count("guest-file-open")
        for _ in range(5):
            watch.tick(changes)
        time.sleep(0.2)
        assert agent.calls.count("guest-file-open") == reads  # the next pass waits for the interval
    finally:
        watch.close()


def test_the_vm_page_draws_the_resync_as_a_bar(domain, agent, client, django_user_model):
    agent.mdstat = sample("recovery")
    guest_health.check_mirrors(timeout=5)
    client.force_login(django_user_model.objects.create_user("op", password="pw-op-12345", is_staff=True,
                                                             is_superuser=True))
    page = client.get("/vms/web/").content.decode()
    assert 'data-mirror-health="resyncing"' in page and "md0 [U_], recovery" in page
    assert 'aria-valuenow="25.3"' in page and "width: 25.3%" in page and "12 s left" in page
    assert "not in sync: leg 1" in page
    exposed = client.get("/?fragment=incidents").content.decode()  # the dashboard's exposed guests
    assert 'data-exposed-health="resyncing"' in exposed and "width: 25.3%" in exposed
