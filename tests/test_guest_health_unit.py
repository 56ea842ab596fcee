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
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from drivers import guest_agent
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
        # A guest of its tenant's making: domain name -> (command -> its raw reply), or its own mdstat.
        self.hostile: dict[str, dict[str, str | BaseException]] = {}
        self.mdstat_of: dict[str, str] = {}
        self.calls_of: dict[str, list[str]] = {}

    def __call__(self, dom: libvirt.virDomain, command: str, timeout: int, flags: int) -> str:
        request = json.loads(command)
        name, args = request["execute"], request.get("arguments", {})
        self.calls.append(name)
        self.calls_of.setdefault(dom.name(), []).append(name)
        hostile = self.hostile.get(dom.name(), {}).get(name)
        if isinstance(hostile, BaseException):
            raise hostile
        if hostile is not None:
            return hostile
        assert timeout >= 1, "every agent command has a timeout"
        if not self.connected:
            raise AgentError(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                             "Guest agent is not responding: QEMU guest agent is not connected")
        if name in self.disabled:
            raise AgentError(libvirt.VIR_ERR_INTERNAL_ERROR, f"internal error: unable to execute QEMU agent "
                             f"command '{name}': The command {name} has been disabled for this instance")
        mdstat = self.mdstat_of.get(dom.name(), self.mdstat)
        data = base64.b64encode(mdstat.encode(errors="surrogateescape")).decode()
        if name == "guest-file-open":
            assert args == {"path": "/proc/mdstat", "mode": "r"}
            self.open_handles.add(1000)
            answer: object = 1000
        elif name == "guest-file-read":
            answer = {"count": len(mdstat), "buf-b64": data, "eof": True}
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


@contextmanager
def _running(vm: VirtualMachine) -> Iterator[str]:
    """The VM's domain running on test:///default (kept alive by a connection)."""
    keeper = libvirt.open(URI)
    spec = hv.DomainSpec(vm.domain_name, str(uuid.uuid4()), 1, 64, ("/dev/etherd/e1.5", "/dev/etherd/e2.5"), "kvm")
    dom = keeper.defineXML(hv.domain_xml(spec))
    dom.create()
    try:
        yield vm.domain_name
    finally:
        dom.destroy()
        dom.undefine()
        keeper.close()


@pytest.fixture
def domain(cluster) -> Iterator[str]:  # noqa: F811
    """The VM "web" of the cluster fixture, running."""
    with _running(cluster["vm"]) as name:
        yield name


@pytest.fixture
def hostile_domain(cluster, domain) -> Iterator[str]:  # noqa: F811
    """A second running guest, "db", beside "web": its tenant controls what its agent answers."""
    vm = VirtualMachine.objects.create(name="db", vcpus=1, memory_mib=256, disk_mib=32, cpu_server=cluster["cpu1"],
                                       state=VmState.RUNNING)
    Mirror.objects.create(vm=vm)
    with _running(vm) as name:
        yield name


def _mirror(vm: str = "web") -> Mirror:
    return Mirror.objects.get(vm__name=vm)


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
    assert (_mirror().health, _mirror().health_detail) == (
        MirrorHealth.UNKNOWN, "no guest agent (xen has no QEMU guest agent channel)")
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


# --- a hostile guest: one tenant's guest must not stop the mirror checks of the others ------------

def _reply(answer: object) -> str:
    return json.dumps({"return": answer})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


DISABLED = AgentError(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: unable to execute QEMU agent command "
                      "'guest-file-open': The command guest-file-open has been disabled for this instance")
HOSTILE = {
    # What the guest writes into its own /proc/mdstat (a FUSE file, a patched kernel: it is theirs).
    "endless finish=": ({"mdstat": sample("recovery").replace("finish=0.2min", f"finish={'9' * 400}min")},
                        MirrorHealth.RESYNCING, "md0 [U_], recovery"),
    "300-character array name": ({"mdstat": sample("healthy").replace("md0 :", "md" + "x" * 300 + " :")},
                                 MirrorHealth.UNKNOWN, "array name"),
    "NUL in the array name": ({"mdstat": sample("healthy").replace("md0 :", "md0\x00 :")},
                              MirrorHealth.UNKNOWN, "NUL"),
    "non-UTF-8 array name": ({"mdstat": sample("healthy").replace("md0 :", "md0\udcff\udcfe :")},  # bytes ff fe
                             MirrorHealth.UNKNOWN, "array name"),
    # What its agent answers on the channel.
    "megabytes of text": ({"guest-file-read": _reply({"count": 8 << 20, "eof": True,
                                                      "buf-b64": _b64(sample("healthy") + "x" * (8 << 20))})},
                          MirrorHealth.UNKNOWN, "larger than"),
    "a list for a read": ({"guest-file-read": _reply(["x"])}, MirrorHealth.UNKNOWN, "malformed"),
    "a number for the data": ({"guest-file-read": _reply({"count": 3, "buf-b64": 5, "eof": True})},
                              MirrorHealth.UNKNOWN, "malformed"),
    "data that is not base64": ({"guest-file-read": _reply({"count": 3, "buf-b64": "abc", "eof": True})},
                                MirrorHealth.UNKNOWN, "base64"),
    "a handle that is no number": ({"guest-file-open": _reply({"handle": 1})}, MirrorHealth.UNKNOWN, "malformed"),
    "JSON nested past the recursion limit": ({"guest-file-open": "[" * 100_000}, MirrorHealth.UNKNOWN,
                                             "guest agent answered"),
    "exec: a pid that is a string": ({"guest-file-open": DISABLED, "guest-exec": _reply({"pid": "77"})},
                                     MirrorHealth.UNKNOWN, "malformed"),
    "exec: output that is a number": ({"guest-file-open": DISABLED, "guest-exec-status": _reply(
        {"exited": True, "exitcode": 0, "out-data": 5})}, MirrorHealth.UNKNOWN, "malformed"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_hostile_guest_gets_its_own_verdict_and_the_others_are_still_checked(domain, hostile_domain, agent,
                                                                               case):
    setup, health, says = HOSTILE[case]
    if "mdstat" in setup:
        agent.mdstat_of[hostile_domain] = setup["mdstat"]
    else:
        agent.hostile[hostile_domain] = setup
    guest_health.check_mirrors(timeout=5)
    assert (_mirror("web").health, _mirror("web").health_detail) == (MirrorHealth.HEALTHY, "md0 [UU]")
    hostile = _mirror("db")
    assert hostile.health == health and says in hostile.health_detail, hostile.health_detail
    assert len(hostile.health_detail) <= Mirror._meta.get_field("health_detail").max_length
    assert hostile.health_detail.isprintable() and hostile.checked_at is not None


def test_an_agent_that_never_reaches_the_end_of_the_file_is_given_up_on(domain, hostile_domain, agent):
    agent.hostile[hostile_domain] = {"guest-file-read": _reply({"count": 1, "buf-b64": "", "eof": False})}
    guest_health.check_mirrors(timeout=3)
    assert _mirror("db").health == MirrorHealth.UNKNOWN and "end of file" in _mirror("db").health_detail
    reads = agent.calls_of[hostile_domain].count("guest-file-read")
    assert reads == guest_agent.MAX_READS and agent.calls_of[hostile_domain][-1] == "guest-file-close"
    time.sleep(0.3)
    assert agent.calls_of[hostile_domain].count("guest-file-read") == reads  # nothing left asking it in the background
    assert _mirror("web").health == MirrorHealth.HEALTHY


def test_a_read_that_raises_for_one_guest_is_that_guests_unknown_health(domain, hostile_domain, agent):
    def read(target: guest_health.GuestTarget, timeout: float) -> guest_health.GuestView:
        if target.vm == "db":
            raise RuntimeError("a bug met a guest nobody foresaw")
        return guest_health.read_guest(target, timeout)

    guest_health.check_mirrors(timeout=5, read=read)
    assert _mirror("web").health == MirrorHealth.HEALTHY
    assert (_mirror("db").health, _mirror("db").health_detail) == (
        MirrorHealth.UNKNOWN, "reading the guest failed: RuntimeError: a bug met a guest nobody foresaw")


def test_whatever_a_reading_says_only_bounded_values_reach_the_database(domain, hostile_domain, agent):
    def read(target: guest_health.GuestTarget, timeout: float) -> guest_health.GuestView:
        if target.vm == "db":
            return guest_health.GuestView("x" * 50, "md0\x00\x1b[31m" + "y" * 5000, float("inf"), 10 ** 12,
                                          (0, 1, 2, 500, -1))
        return guest_health.read_guest(target, timeout)

    guest_health.check_mirrors(timeout=5, read=read)
    mirror = _mirror("db")
    assert mirror.health == MirrorHealth.UNKNOWN and mirror.health_detail.startswith("md0??[31myyy")
    assert len(mirror.health_detail) == Mirror._meta.get_field("health_detail").max_length
    assert (mirror.resync_percent, mirror.resync_eta_s, mirror.missing_legs) == (None, None, [0, 1])
    assert _mirror("web").health == MirrorHealth.HEALTHY
