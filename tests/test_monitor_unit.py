"""The host monitor's state machine with the checks faked (the one point where traffic leaves the
program): one miss never declares a host dead, N do, an answer resets, a dead host that answers goes
to maintenance, maintenance is never declared dead, the failover starts exactly once, a SAN-blind CPU
server is evacuated once, and a disk server's failure and return move its mirrors and incident."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from drivers.errors import DriverError
from ha import monitor as monitor_module
from ha import storage_health
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.incidents import open_incident
from ha.models import Incident
from ha.monitor import Monitor
from ha.verdicts import (
    BMC_SUSPECT,
    DECLARE_DEAD,
    RETURNED,
    SAN_SUSPECT,
    STRANDED,
    WELL_AFTER_EVACUATION,
    CheckResult,
    Decision,
    SanResult,
    decide,
    decide_bmc,
    decide_san,
    decide_stranded,
    decide_well_again,
)
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from storage.choices import ExportState, MirrorState
from storage.models import AoEExport, Mirror
from vms.choices import VmState
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
DEAD_AFTER = 3


@dataclass
class FakeCluster:
    """Which hosts answer, and what the SAN shows: every exported leg of a disk server that answers."""
    silent: set[str] = field(default_factory=set)
    san_blind: set[str] = field(default_factory=set)  # CPU servers that see nothing on the SAN
    exports_down: set[str] = field(default_factory=set)  # disk servers answering SSH, vblade gone
    # Read in the test's thread: the fakes run in the monitor's threads, outside the test's transaction.
    legs: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    checks: int = 0

    def check(self, host, timeout: float) -> CheckResult:
        self.checks += 1
        if host.name in self.silent:
            return CheckResult(False, f"{host.name}: SSH failed: no answer")
        return CheckResult(True)

    def san(self, host, listen: float) -> SanResult:
        if host.name in self.silent:
            return SanResult(error=f"{host.name}: SSH failed")
        if host.name in self.san_blind:
            return SanResult(frozenset())
        gone = self.silent | self.exports_down
        return SanResult(frozenset(a for disk, legs in self.legs.items() if disk not in gone for a in legs))


@pytest.fixture
def fake(cluster) -> FakeCluster:
    legs: dict[str, set[tuple[int, int]]] = {}
    for disk, shelf, slot in AoEExport.objects.values_list("disk_server__name", "shelf", "slot"):
        legs.setdefault(disk, set()).add((shelf, slot))
    return FakeCluster(legs=legs)


@pytest.fixture
def calls(monkeypatch) -> dict[str, list]:
    """ha.failover / ha.maintenance as seen by the monitor: record the calls, start nothing."""
    import ha.failover
    import ha.maintenance

    seen: dict[str, list] = {"failover": [], "evacuate": [], "restore": []}
    monkeypatch.setattr(ha.failover, "start_failover", lambda incident: seen["failover"].append(incident.pk))
    monkeypatch.setattr(ha.maintenance, "evacuate_suspect",
                        lambda host, reason: seen["evacuate"].append((host.name, reason)))
    monkeypatch.setattr(storage_health.vblade, "restore_exports",
                        lambda target, timeout: seen["restore"].append(target.name) or [])
    # The restored exports' MAC lists are brought in line with the fences (none here): nothing running to change.
    monkeypatch.setattr(storage_health.vblade, "list_exports", lambda target, timeout: [])
    return seen


@pytest.fixture
def cluster() -> dict[str, object]:
    cpus = {n: CpuServer.objects.create(name=n, address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                        memory_mib=4096, vcpus=4) for i, n in enumerate(["cpu1", "cpu2"], 1)}
    disks = {n: DiskServer.objects.create(name=n, address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=10240)
             for i, n in enumerate(["disk1", "disk2"], 1)}
    vm = VirtualMachine.objects.create(name="web", vcpus=1, memory_mib=256, disk_mib=32, cpu_server=cpus["cpu1"],
                                       state=VmState.RUNNING)
    mirror = Mirror.objects.create(vm=vm, state=MirrorState.HEALTHY)
    for leg, disk in enumerate(disks.values()):
        AoEExport.objects.create(disk_server=disk, mirror=mirror, leg=leg, shelf=disk.aoe_shelf, slot=5,
                                 backing_path=f"/srv/web-{leg}.img", size_mib=32, state=ExportState.EXPORTED)
    return {**cpus, **disks, "vm": vm, "mirror": mirror}


def _monitor(fake: FakeCluster, **kwargs) -> Monitor:
    return Monitor(check=fake.check, san_probe=fake.san, interval=1, dead_after=DEAD_AFTER, timeout=0.5,
                   san_listen=0.1, evacuate=True, **kwargs)


def _cycles(monitor: Monitor, n: int) -> None:
    for _ in range(n):
        monitor.cycle()


def _state(model, name: str) -> tuple[str, int]:
    host = model.objects.get(name=name)
    return host.state, host.missed_checks


# --- pure transitions ----------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "missed", "answered", "expected"), [
    (HostState.UP, 0, False, Decision(HostState.SUSPECT, 1)),
    (HostState.SUSPECT, 1, False, Decision(HostState.SUSPECT, 2)),
    (HostState.SUSPECT, 2, False, Decision(HostState.DEAD, 3, DECLARE_DEAD)),
    (HostState.SUSPECT, 2, True, Decision(HostState.UP, 0)),
    (HostState.DEAD, 7, False, Decision(HostState.DEAD, 8)),
    (HostState.DEAD, 7, True, Decision(HostState.MAINTENANCE, 0, RETURNED)),
    (HostState.FENCED, 9, True, Decision(HostState.MAINTENANCE, 0, RETURNED)),
    (HostState.MAINTENANCE, 99, False, Decision(HostState.MAINTENANCE, 100)),
    (HostState.MAINTENANCE, 5, True, Decision(HostState.MAINTENANCE, 0)),
])
def test_decide(state, missed, answered, expected):
    assert decide(state, missed, answered, DEAD_AFTER) == expected


def test_decide_san_suspects_once_after_n_blind_checks_and_forgives_on_sight():
    up = Decision(HostState.UP, 0)
    assert decide_san(up, 0, False, DEAD_AFTER) == (up, 1)
    assert decide_san(up, 2, False, DEAD_AFTER) == (Decision(HostState.SUSPECT, 0, SAN_SUSPECT), 3)
    assert decide_san(up, 3, False, DEAD_AFTER) == (Decision(HostState.SUSPECT, 0), 4)  # no second evacuation
    assert decide_san(up, 3, None, DEAD_AFTER) == (Decision(HostState.SUSPECT, 0), 3)
    assert decide_san(up, 4, True, DEAD_AFTER) == (up, 0)
    silent = Decision(HostState.SUSPECT, 1)
    assert decide_san(silent, 2, False, DEAD_AFTER) == (silent, 2)  # management silent: its path decides


# --- the cycle against the database --------------------------------------------------------------

def test_one_miss_never_declares_a_host_dead(cluster, fake, calls):
    monitor = _monitor(fake)
    fake.silent = {"cpu2"}
    monitor.cycle()
    fake.silent = set()
    monitor.cycle()
    fake.silent = {"cpu2"}
    _cycles(monitor, DEAD_AFTER - 1)
    assert _state(CpuServer, "cpu2") == (HostState.SUSPECT, DEAD_AFTER - 1)
    assert not Incident.objects.exists() and calls["failover"] == []
    assert CpuServer.objects.get(name="cpu2").last_check_error == "cpu2: SSH failed: no answer"


def test_n_misses_declare_a_cpu_server_dead_and_start_the_failover_exactly_once(cluster, fake, calls):
    monitor = _monitor(fake)
    monitor.cycle()
    fake.silent = {"cpu2"}
    _cycles(monitor, DEAD_AFTER)
    assert _state(CpuServer, "cpu2") == (HostState.DEAD, DEAD_AFTER)
    incident = Incident.objects.get()
    assert incident.kind == IncidentKind.CPU_SERVER_FAILED and incident.cpu_server == cluster["cpu2"]
    assert incident.summary == "cpu2 missed 3 checks: cpu2: SSH failed: no answer"
    assert calls["failover"] == [incident.pk]
    _cycles(monitor, 3)
    assert calls["failover"] == [incident.pk] and _state(CpuServer, "cpu2") == (HostState.DEAD, DEAD_AFTER + 3)
    assert _state(CpuServer, "cpu1") == (HostState.UP, 0)


def test_two_monitors_racing_on_the_same_transition_act_once(cluster, fake, calls):
    CpuServer.objects.filter(name="cpu2").update(state=HostState.SUSPECT, missed_checks=DEAD_AFTER - 1)
    a, b = _monitor(fake), _monitor(fake)
    stale_a, stale_b = CpuServer.objects.get(name="cpu2"), CpuServer.objects.get(name="cpu2")
    decision = decide(stale_a.state, stale_a.missed_checks, False, DEAD_AFTER)
    for monitor, host in ((a, stale_a), (b, stale_b)):
        monitor._apply(host, decision, False, "no answer", monitor_module.CycleReport())
    assert len(calls["failover"]) == 1 and Incident.objects.count() == 1


def test_an_answer_resets_the_count(cluster, fake, calls):
    monitor = _monitor(fake)
    fake.silent = {"cpu2"}
    _cycles(monitor, DEAD_AFTER - 1)
    fake.silent = set()
    monitor.cycle()
    host = CpuServer.objects.get(name="cpu2")
    assert (host.state, host.missed_checks, host.last_check_error) == (HostState.UP, 0, "")
    assert host.last_seen_at is not None


def test_a_dead_host_that_answers_goes_to_maintenance_never_up(cluster, fake, calls):
    monitor = _monitor(fake)
    fake.silent = {"cpu2"}
    _cycles(monitor, DEAD_AFTER)
    CpuServer.objects.filter(name="cpu2").update(state=HostState.FENCED)  # what the fencing does
    fake.silent = set()
    _cycles(monitor, 3)
    assert _state(CpuServer, "cpu2") == (HostState.MAINTENANCE, 0)
    incident = Incident.objects.get()
    assert incident.events.filter(kind=EventKind.RETURNED).count() == 1
    assert calls["failover"] == [incident.pk]


def test_a_host_in_maintenance_is_checked_but_never_declared_dead(cluster, fake, calls):
    CpuServer.objects.filter(name="cpu2").update(state=HostState.MAINTENANCE)
    monitor = _monitor(fake)
    fake.silent = {"cpu2"}
    _cycles(monitor, DEAD_AFTER * 3)
    assert _state(CpuServer, "cpu2") == (HostState.MAINTENANCE, DEAD_AFTER * 3)
    assert not Incident.objects.exists() and calls["failover"] == []


def test_a_cpu_server_blind_on_the_san_is_suspect_and_evacuated_once(cluster, fake, calls):
    monitor = _monitor(fake)
    fake.san_blind = {"cpu1"}
    _cycles(monitor, DEAD_AFTER - 1)
    assert _state(CpuServer, "cpu1") == (HostState.UP, 0)
    _cycles(monitor, 3)
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0)
    assert [name for name, _reason in calls["evacuate"]] == ["cpu1"]
    assert "not on the SAN" in calls["evacuate"][0][1]
    assert CpuServer.objects.get(name="cpu1").last_check_error.startswith("SAN:")
    assert _state(CpuServer, "cpu2") == (HostState.UP, 0) and not Incident.objects.exists()
    fake.san_blind = set()
    monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.UP, 0)


def test_decide_stranded_only_when_cut_from_the_san_its_evacuation_failed_and_guests_remain():
    suspect = Decision(HostState.SUSPECT, 0)
    assert decide_stranded(suspect, True, True, True) == Decision(HostState.DEAD, 0, STRANDED)
    for args in [(False, True, True), (True, False, True), (True, True, False)]:
        assert decide_stranded(suspect, *args) == suspect
    silent = Decision(HostState.SUSPECT, 1)
    assert decide_stranded(silent, True, True, True) == silent  # management silent: its path decides


def test_a_cpu_server_cut_from_the_san_whose_evacuation_failed_is_declared_dead(cluster, fake, calls):
    """Found by the fault suite: live migration cannot move a guest whose disk I/O hangs, and the
    host stayed suspect for good with the guest serving nothing."""
    monitor = _monitor(fake)
    fake.san_blind = {"cpu1"}
    _cycles(monitor, DEAD_AFTER)
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0) and calls["evacuate"]
    monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0) and calls["failover"] == []  # no evacuation ended
    cpu1 = CpuServer.objects.get(name="cpu1")
    Job.objects.create(kind="host.evacuate", target_name="cpu1", params={"host": "cpu1"}, state="failed",
                       message="0 of 1 guests moved")
    monitor.cycle()
    assert CpuServer.objects.get(pk=cpu1.pk).state == HostState.DEAD
    incident = Incident.objects.get(kind=IncidentKind.CPU_SERVER_FAILED)
    assert "cut from the SAN" in incident.summary and calls["failover"] == [incident.pk]


def test_a_dead_disk_server_degrades_mirrors_and_its_return_heals_them(cluster, fake, calls):
    monitor = _monitor(fake)
    monitor.cycle()
    fake.silent = {"disk2"}
    _cycles(monitor, DEAD_AFTER)
    assert _state(DiskServer, "disk2") == (HostState.DEAD, DEAD_AFTER)
    assert Mirror.objects.get().state == MirrorState.DEGRADED
    assert VirtualMachine.objects.get().state == VmState.RUNNING  # nothing is stopped
    incident = Incident.objects.get(kind=IncidentKind.DISK_SERVER_FAILED)
    assert incident.state == IncidentState.DEGRADED and "Exposed: web" in incident.summary
    assert incident.events.filter(data__exposed=["web"]).exists()
    exposed = storage_health.exposed_guests()
    assert [(g.vm, g.missing, g.left) for g in exposed] == [("web", ("e2.5 on disk2 (dead)",), ("e1.5 on disk1",))]
    assert calls["failover"] == []

    fake.silent = set()
    monitor.cycle()  # answers SSH: maintenance, exports restored, mirror resyncing
    assert _state(DiskServer, "disk2") == (HostState.MAINTENANCE, 0)
    assert calls["restore"] == ["disk2"] and Mirror.objects.get().state == MirrorState.RESYNCING
    monitor.cycle()  # both legs on the wire
    assert Mirror.objects.get().state == MirrorState.HEALTHY
    incident.refresh_from_db()
    assert incident.state == IncidentState.CLOSED
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds[0] == EventKind.DETECTED and kinds[-1] == EventKind.CLOSED and EventKind.RETURNED in kinds
    assert storage_health.exposed_guests() == []
    storage_health.return_to_service(DiskServer.objects.get(name="disk2"))
    assert _state(DiskServer, "disk2") == (HostState.UP, 0)


def test_a_disk_server_whose_exports_are_silent_on_the_san_counts_as_missing(cluster, fake, calls):
    monitor = _monitor(fake)
    fake.exports_down = {"disk2"}
    _cycles(monitor, DEAD_AFTER)
    host = DiskServer.objects.get(name="disk2")
    assert host.state == HostState.DEAD and "exports answers on the SAN" in host.last_check_error
    assert _state(DiskServer, "disk1") == (HostState.UP, 0)


def test_an_export_started_while_a_probe_listened_is_not_a_silent_one(cluster, fake, calls):
    """A probe answers for the exports expected when it was sent: a new VM's leg exported meanwhile
    (its vblade not heard yet) must not make its disk server suspect (seen in the failover bench,
    a create's second leg then found no disk server)."""
    import threading

    disk3 = DiskServer.objects.create(name="disk3", address="192.0.2.13", aoe_shelf=3, capacity_mib=10240)
    listening = threading.Event()

    def slow_san(host, listen):
        listening.wait(5)
        return fake.san(host, listen)

    monitor = Monitor(check=fake.check, san_probe=slow_san, interval=1, dead_after=DEAD_AFTER, timeout=0.3,
                      san_listen=0.1, evacuate=True)
    monitor.cycle()  # the probes are sent, and still listening when the cycle ends
    AoEExport.objects.create(disk_server=disk3, mirror=cluster["mirror"], leg=2, shelf=3, slot=7,
                             backing_path="/srv/new.img", size_mib=32, state=ExportState.EXPORTED)
    listening.set()
    monitor.cycle()  # their answers, which cannot have heard e3.7
    assert _state(DiskServer, "disk3") == (HostState.UP, 0)
    fake.legs["disk3"] = {(3, 7)}  # its vblade announces itself: the next probes hear it
    monitor.cycle()
    monitor.cycle()
    assert _state(DiskServer, "disk3") == (HostState.UP, 0)
    fake.exports_down = {"disk3"}  # and an export expected throughout that stays silent still counts
    _cycles(monitor, DEAD_AFTER)
    assert DiskServer.objects.get(name="disk3").state == HostState.DEAD


def test_a_disk_server_stays_degraded_until_its_legs_answer(cluster, fake, calls):
    monitor = _monitor(fake)
    fake.silent = {"disk2"}
    _cycles(monitor, DEAD_AFTER)
    fake.silent, fake.exports_down = set(), {"disk2"}
    _cycles(monitor, 3)
    assert Mirror.objects.get().state == MirrorState.RESYNCING
    assert Incident.objects.get().is_open
    fake.exports_down = set()
    monitor.cycle()
    assert Mirror.objects.get().state == MirrorState.HEALTHY and not Incident.objects.get().is_open


def test_a_hung_check_is_a_miss_and_never_piles_up(cluster, calls):
    import threading

    release = threading.Event()
    started: list[str] = []

    def hanging(host, timeout):
        if host.name == "cpu2":
            started.append(host.name)
            release.wait(5)
        return CheckResult(True)

    monitor = Monitor(check=hanging, san_probe=lambda h, listen: SanResult(), interval=1, dead_after=DEAD_AFTER,
                      timeout=0.1, san_listen=0.1, evacuate=False)
    try:
        _cycles(monitor, DEAD_AFTER)
        assert _state(CpuServer, "cpu2") == (HostState.DEAD, DEAD_AFTER) and started == ["cpu2"]
    finally:
        release.set()
        monitor.close()


def test_the_first_cycle_it_leads_waits_first_timeout_for_connections_to_open(cluster, calls):
    """Opening every host's master and libvirt connection takes longer than a check: the first
    cycle a monitor leads gives its checks `first_timeout`; the cycles after, `timeout`."""
    import time

    given: list[float] = []

    def slow(host, timeout):
        given.append(timeout)
        time.sleep(0.6)
        return CheckResult(True)

    monitor = Monitor(check=slow, san_probe=lambda h, listen: SanResult(), interval=1, dead_after=DEAD_AFTER,
                      timeout=0.1, first_timeout=2, san_listen=0.1, evacuate=False)
    try:
        monitor.cycle()
        assert set(given) == {2} and {_state(CpuServer, n) for n in ("cpu1", "cpu2")} == {(HostState.UP, 0)}
        given.clear()
        monitor.cycle()
        assert set(given) == {0.1} and _state(CpuServer, "cpu1") == (HostState.SUSPECT, 1)
    finally:
        monitor.close()


# --- pages and websockets ------------------------------------------------------------------------

@pytest.fixture
def op_client(django_user_model):
    from django.test import Client

    client = Client()
    client.force_login(django_user_model.objects.create_user("op", is_staff=True))
    return client


def test_incident_pages_list_open_first_and_the_fence_button_confirms(cluster, op_client, monkeypatch):
    import ha.failover
    from ha.incidents import close, open_incident

    old, _ = open_incident(cluster["disk1"], IncidentKind.DISK_SERVER_FAILED, "disk1 missed 3 checks")
    close(old, "back")
    incident, _ = open_incident(cluster["cpu2"], IncidentKind.CPU_SERVER_FAILED, "cpu2 missed 3 checks: gone")
    page = op_client.get("/incidents/").content.decode()
    assert page.index(f"#{incident.pk}<") < page.index(f"#{old.pk}<")
    # The failover has not given up yet (the incident is open) and cpu2 is up: no button, and why.
    detail = op_client.get(f"/incidents/{incident.pk}/").content.decode()
    assert "I confirm" not in detail and "cpu2 missed 3 checks: gone" in detail
    assert "No confirmation by hand now: cpu2 is up, not dead: the panel never saw it answer." in detail
    assert "I confirm" not in op_client.get(f"/incidents/{old.pk}/").content.decode()

    # Declared dead, no method fenced it: the button, beside what the panel last saw of the host.
    seen = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD, missed_checks=3, last_seen_at=seen,
                                                 last_check_error="cpu2: SSH failed: no route to host")
    Incident.objects.filter(pk=incident.pk).update(state=IncidentState.UNFENCED)
    detail = op_client.get(f"/incidents/{incident.pk}/").content.decode()
    assert "I confirm cpu2 is powered off" in detail
    box = detail[detail.index('id="confirm-fence"'):detail.index("I confirm cpu2")]
    assert "2026-05-04 03:02:01 UTC" in box and ">3</span> missed in a row" in box
    assert "cpu2: SSH failed: no route to host" in box and 'data-host-state="cpu2"' in box

    confirmed = []
    job = Job.objects.create(kind="ha.failover")
    monkeypatch.setattr(ha.failover, "confirm_fenced_manually",
                        lambda inc, user: confirmed.append((inc.pk, user.username)) or job)
    response = op_client.post(f"/incidents/{incident.pk}/confirm-fenced/")
    assert response.status_code == 302 and confirmed == [(incident.pk, "op")]
    op_client.post(f"/incidents/{old.pk}/confirm-fenced/")
    assert confirmed == [(incident.pk, "op")]  # a closed incident waits for no fence
    CpuServer.objects.filter(name="cpu2").update(state=HostState.MAINTENANCE)  # it answered meanwhile
    op_client.post(f"/incidents/{incident.pk}/confirm-fenced/")
    assert confirmed == [(incident.pk, "op")]


def test_host_buttons_are_for_operators_only_and_others_see_no_incident_of_no_vm_of_theirs(cluster, django_user_model):
    from django.test import Client

    incident, _ = open_incident(cluster["cpu1"], IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")
    client = Client()
    client.force_login(django_user_model.objects.create_user("nobody"))
    assert "No incidents" in client.get("/incidents/").content.decode()
    assert client.get(incident.get_absolute_url()).status_code == 404
    assert client.post(f"/incidents/hosts/cpu/{cluster['cpu1'].pk}/enter-maintenance/").status_code == 404
    assert CpuServer.objects.get(name="cpu1").state == HostState.UP


def test_host_pages_show_checks_and_the_maintenance_buttons(cluster, op_client, monkeypatch):
    import ha.maintenance

    CpuServer.objects.filter(name="cpu2").update(missed_checks=2, state=HostState.SUSPECT,
                                                 last_check_error="cpu2: SSH failed: no answer")
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    page = op_client.get(cpu2.get_absolute_url()).content.decode()
    assert "cpu2: SSH failed: no answer" in page and 'data-host-state="cpu2"' in page
    assert "Enter maintenance" not in page and "Return to service" not in page
    assert "Enter maintenance" in op_client.get(cpu1.get_absolute_url()).content.decode()
    job = Job.objects.create(kind="ha.evacuate")
    monkeypatch.setattr(ha.maintenance, "enter_maintenance", lambda host, user: job)
    response = op_client.post(f"/incidents/hosts/cpu/{cpu1.pk}/enter-maintenance/")
    assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"

    left = []
    CpuServer.objects.filter(name="cpu1").update(state=HostState.MAINTENANCE)
    monkeypatch.setattr(ha.maintenance, "leave_maintenance", lambda host, user: left.append(host.name) or job)
    assert "Return to service" in op_client.get(cpu1.get_absolute_url()).content.decode()
    response = op_client.post(f"/incidents/hosts/cpu/{cpu1.pk}/return-to-service/")
    assert left == ["cpu1"] and response.status_code == 302 and response.url == f"/jobs/{job.pk}/"

    dashboard = op_client.get("/").content.decode()
    assert 'data-host-state="disk2" data-host-kind="disk"' in dashboard and "Exposed guests" in dashboard


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_incident_websocket_sends_the_backlog_then_live_events(django_user_model):
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from ha.incidents import open_incident, record
    from hosts.states import publish_host
    from xenaoe_panel.asgi import application

    def setup():
        cpu = CpuServer.objects.create(name="cpu9", address="192.0.2.9", libvirt_uri="test:///default",
                                       memory_mib=1024, vcpus=1)
        incident, _ = open_incident(cpu, IncidentKind.CPU_SERVER_FAILED, "cpu9 missed 3 checks")
        client = Client()
        client.force_login(django_user_model.objects.create_user("op", is_staff=True))
        return cpu, incident, client.cookies["sessionid"].value

    cpu, incident, session = await sync_to_async(setup)()
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", f"sessionid={session}".encode())]
    timeline = WebsocketCommunicator(application, f"/ws/incidents/{incident.pk}/?after=0", headers=headers)
    hosts = WebsocketCommunicator(application, "/ws/hosts/", headers=headers)
    assert (await timeline.connect(timeout=5))[0] and (await hosts.connect(timeout=5))[0]
    backlog = await timeline.receive_json_from(timeout=5)
    assert backlog["event"]["kind"] == "detected" and backlog["incident"]["host"] == "cpu9"
    await sync_to_async(record)(incident, EventKind.NOTE, "fencing cpu9 through IPMI")
    live = await timeline.receive_json_from(timeout=5)
    assert live["event"]["message"] == "fencing cpu9 through IPMI"
    cpu.state = HostState.DEAD
    await sync_to_async(publish_host)(cpu)
    state = await hosts.receive_json_from(timeout=5)
    assert (state["name"], state["kind"], state["state"], state["colour"]) == ("cpu9", "cpu", "dead", "danger")
    await timeline.disconnect()
    await hosts.disconnect()
    anonymous = WebsocketCommunicator(application, "/ws/hosts/", headers=headers[:2])
    assert (await anonymous.connect(timeout=5)) == (False, 4401)


# --- the BMC policy: a failing power supply or fan -----------------------------------------------
# Faked at the driver's edge: ipmitool's answers (captured from ipmitool 1.8.19 against the lab's
# ipmi_sim), so that the monitor's own reading and parsing run as in production.

PSU_WELL = ("PS1 Status       | 60h | ok  | 10.1 | Presence detected\n"
            "PS2 Status       | 61h | ok  | 10.2 | Presence detected\n")
PSU1_FAILED = ("PS1 Status       | 60h | ok  | 10.1 | Presence detected, Failure detected\n"
               "PS2 Status       | 61h | ok  | 10.2 | Presence detected\n")
FANS_WELL = "Fan1             | 70h | ok  | 29.1 | 5400 RPM\nFan2             | 71h | ok  | 29.2 | 5400 RPM\n"
FAN1_FAILED = "Fan1             | 70h | lnr | 29.1 | 0 RPM\nFan2             | 71h | ok  | 29.2 | 5400 RPM\n"


@dataclass
class FakeBmcs:
    """ipmitool as the BMCs answer it, by BMC address: well, a part failed, or silent."""
    psu: dict[str, str] = field(default_factory=dict)
    fans: dict[str, str] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def ipmitool(self, target, command: list[str]) -> str:
        self.calls.append((target.address, tuple(command)))
        if target.address in self.silent:
            raise DriverError(f"BMC {target.address}:623: `ipmitool {' '.join(command)}` timed out after 2 s")
        if command == ["sdr", "type", "Power Supply"]:
            return self.psu.get(target.address, PSU_WELL)
        if command == ["sdr", "type", "Fan"]:
            return self.fans.get(target.address, FANS_WELL)
        raise AssertionError(f"the monitor asked the BMC for {command}")


@pytest.fixture
def bmcs(cluster, monkeypatch) -> FakeBmcs:
    from drivers import ipmi

    fake = FakeBmcs()
    monkeypatch.setattr(ipmi, "_ipmitool", fake.ipmitool)
    for i, name in enumerate(["cpu1", "cpu2"], 1):
        CpuServer.objects.filter(name=name).update(bmc_address=f"192.0.2.{120 + i}", bmc_user="admin",
                                                   bmc_password_file="/etc/xenaoe/bmc.password")
    return fake


CPU1_BMC = "192.0.2.121"


def _bmc_monitor(fake: FakeCluster, **kwargs) -> Monitor:
    kwargs.setdefault("bmc_interval", 0.001)  # every cycle
    return _monitor(fake, **kwargs)


@pytest.mark.parametrize(("decision", "failing", "was_failing", "expected"), [
    (Decision(HostState.UP, 0), False, False, Decision(HostState.UP, 0)),
    (Decision(HostState.UP, 0), True, False, Decision(HostState.SUSPECT, 0, BMC_SUSPECT)),
    (Decision(HostState.UP, 0), True, True, Decision(HostState.SUSPECT, 0)),  # no second evacuation
    (Decision(HostState.SUSPECT, 0), True, True, Decision(HostState.SUSPECT, 0)),
    (Decision(HostState.SUSPECT, 0, SAN_SUSPECT), True, False, Decision(HostState.SUSPECT, 0, SAN_SUSPECT)),
    (Decision(HostState.SUSPECT, 1), True, False, Decision(HostState.SUSPECT, 1)),  # management silent decides
    (Decision(HostState.DEAD, 3, DECLARE_DEAD), True, False, Decision(HostState.DEAD, 3, DECLARE_DEAD)),
    (Decision(HostState.MAINTENANCE, 0), True, False, Decision(HostState.MAINTENANCE, 0)),
])
def test_decide_bmc(decision, failing, was_failing, expected):
    assert decide_bmc(decision, failing, was_failing) == expected


def test_decide_well_again_sends_an_evacuated_host_to_maintenance_only():
    up = Decision(HostState.UP, 0)
    assert decide_well_again(HostState.SUSPECT, up, True) == Decision(HostState.MAINTENANCE, 0, WELL_AFTER_EVACUATION)
    assert decide_well_again(HostState.SUSPECT, up, False) == up
    assert decide_well_again(HostState.UP, up, True) == up
    suspect = Decision(HostState.SUSPECT, 0)
    assert decide_well_again(HostState.SUSPECT, suspect, True) == suspect


def test_a_failing_power_supply_makes_the_host_suspect_and_evacuates_it_once(cluster, fake, calls, bmcs):
    monitor = _bmc_monitor(fake)
    monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.UP, 0) and calls["evacuate"] == []
    assert {command for _address, command in bmcs.calls} == {("sdr", "type", "Power Supply"), ("sdr", "type", "Fan")}
    bmcs.psu[CPU1_BMC] = PSU1_FAILED
    report = monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0)
    failure = "BMC: power supply PS1 Status failed (Presence detected, Failure detected)"
    assert CpuServer.objects.get(name="cpu1").last_check_error == failure
    assert calls["evacuate"] == [("cpu1", f"cpu1: {failure}")]
    assert "cpu1: up -> suspect" in report.changes[0] and f"cpu1: {failure}" in report.changes
    _cycles(monitor, 3)
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0) and len(calls["evacuate"]) == 1
    assert _state(CpuServer, "cpu2") == (HostState.UP, 0) and not Incident.objects.exists()


def test_a_failed_fan_counts_and_a_host_without_a_bmc_is_never_asked(cluster, fake, calls, bmcs):
    CpuServer.objects.filter(name="cpu2").update(bmc_address="")
    bmcs.fans[CPU1_BMC] = FAN1_FAILED
    _bmc_monitor(fake).cycle()
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0)
    assert calls["evacuate"] == [("cpu1", "cpu1: BMC: fan Fan1 failed (lnr, 0 RPM)")]
    assert {address for address, _command in bmcs.calls} == {CPU1_BMC}
    assert _state(CpuServer, "cpu2") == (HostState.UP, 0)


def test_a_silent_bmc_is_reported_never_a_failure_nor_a_repair(cluster, fake, calls, bmcs):
    monitor = _bmc_monitor(fake)
    bmcs.silent = {CPU1_BMC}
    report = monitor.cycle()
    host = CpuServer.objects.get(name="cpu1")
    assert (host.state, calls["evacuate"]) == (HostState.UP, [])
    assert host.last_check_error.startswith("BMC sensors not read: BMC 192.0.2.121:623: `ipmitool sdr type")
    assert any(line.startswith("cpu1: BMC sensors not read") for line in report.changes)
    bmcs.silent = set()
    monitor.cycle()
    assert CpuServer.objects.get(name="cpu1").last_check_error == ""
    bmcs.psu[CPU1_BMC] = PSU1_FAILED
    monitor.cycle()
    bmcs.silent = {CPU1_BMC}  # failing, then silent: still failing as far as anyone knows
    _cycles(monitor, 2)
    host = CpuServer.objects.get(name="cpu1")
    assert host.state == HostState.SUSPECT and len(calls["evacuate"]) == 1
    assert "power supply PS1 Status failed" in host.last_check_error and "not read" in host.last_check_error


def test_with_the_policy_off_a_failing_host_is_suspect_but_not_evacuated(cluster, fake, calls, bmcs):
    bmcs.psu[CPU1_BMC] = PSU1_FAILED
    _cycles(_bmc_monitor(fake, evacuate_on_bmc=False), 2)
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0) and calls["evacuate"] == []


def test_sensors_are_read_every_interval_not_every_cycle(cluster, fake, calls, bmcs):
    monitor = _bmc_monitor(fake, bmc_interval=3600)
    _cycles(monitor, 3)
    assert len(bmcs.calls) == 2 * 2  # both CPU servers once, two sensor types each
    _cycles(_bmc_monitor(fake, bmc_interval=0), 2)  # 0: never
    assert len(bmcs.calls) == 4


def test_well_again_without_an_evacuation_the_host_is_up(cluster, fake, calls, bmcs):
    monitor = _bmc_monitor(fake)
    bmcs.psu[CPU1_BMC] = PSU1_FAILED
    monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0)  # the faked hook started no job
    bmcs.psu[CPU1_BMC] = PSU_WELL
    report = monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.UP, 0)
    assert "cpu1: BMC reports every power supply and fan well again" in report.changes


@pytest.mark.parametrize("policy", ["bmc", "san"])
def test_an_evacuated_host_well_again_goes_to_maintenance_not_up(cluster, fake, bmcs, policy):
    """With the real evacuate_suspect (the job is written, no worker runs it): once the policy has
    moved the guests away, the host's recovery does not put it back into placement by itself."""
    from ha.maintenance import EVACUATE, active_evacuation
    from jobs.choices import JobState

    monitor = _bmc_monitor(fake)
    if policy == "bmc":
        bmcs.psu[CPU1_BMC] = PSU1_FAILED
        monitor.cycle()
    else:
        fake.san_blind = {"cpu1"}
        _cycles(monitor, DEAD_AFTER)
    cpu1 = CpuServer.objects.get(name="cpu1")
    assert cpu1.state == HostState.SUSPECT
    job = active_evacuation(cpu1)
    assert job is not None and job.kind == EVACUATE and job.params["trigger"] == "suspect"
    assert ("power supply PS1 Status failed" if policy == "bmc" else "not on the SAN") in job.params["reason"]
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)  # what the worker would do
    monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.SUSPECT, 0)  # still failing: stays suspect, no new job
    assert Job.objects.filter(kind=EVACUATE).count() == 1
    bmcs.psu, fake.san_blind = {}, set()
    report = monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.MAINTENANCE, 0)
    assert any("well again, but its guests were evacuated" in line for line in report.changes)
    _cycles(monitor, 2)
    assert _state(CpuServer, "cpu1") == (HostState.MAINTENANCE, 0)
    CpuServer.objects.filter(name="cpu1").update(state=HostState.UP)  # an operator: leave_maintenance
    monitor.cycle()
    assert _state(CpuServer, "cpu1") == (HostState.UP, 0)
