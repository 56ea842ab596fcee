"""Two monitors, one leader (ha/leadership.py), against the real PostgreSQL: each monitor's lock
session is a connection of its own, as on two panel machines. The checks are faked (the one point
where traffic leaves the program, tests/test_monitor_unit.py's FakeCluster); the lock, the host rows,
the incidents and the failover jobs are real.

- only one leads, the other stands by and never checks or writes a host;
- the leader's session ending (its process or machine gone) makes the other lead on its next cycle;
- a monitor taking over mid-incident resumes the decision and never takes it twice.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.db import connection
from django.utils import timezone

from ha import failover
from ha.choices import IncidentKind, IncidentState
from ha.incidents import open_incident
from ha.leadership import AdvisoryLockLeadership, Keepalive, monitor_sessions
from ha.models import Incident
from ha.monitor import Monitor
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from storage.choices import MirrorState
from storage.models import Mirror
from tests.test_monitor_unit import DEAD_AFTER, FakeCluster, cluster, fake  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def monitors(fake) -> Iterator[dict[str, Monitor]]:  # noqa: F811
    """Two monitors as on two panel machines, each electing through its own PostgreSQL session."""
    made = {name: Monitor(check=fake.check, san_probe=fake.san, interval=1, dead_after=DEAD_AFTER, timeout=0.5,
                          san_listen=0.1, evacuate=True, leadership=AdvisoryLockLeadership(interval=1, node=name))
            for name in ("panel1", "panel2")}
    yield made
    for monitor in made.values():
        monitor.close()  # ends the lock sessions: the test database can be dropped


def _host(name: str) -> tuple[str, int, object]:
    host = CpuServer.objects.get(name=name)
    return host.state, host.missed_checks, host.last_seen_at


def _kill_session(monitor: Monitor) -> None:
    """What PostgreSQL sees when the monitor's process dies, or its keepalives give up on its machine:
    the session ends, and with it the lock (once its backend has exited, a moment after the close)."""
    conn = monitor.leadership._conn  # the session the lock lives on
    assert conn is not None
    pid = conn.info.backend_pid
    conn.close()
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE pid = %s", [pid])
            if not cursor.fetchone()[0]:
                return
            assert time.monotonic() < deadline, "the closed session kept its locks"
            time.sleep(0.02)


def test_one_monitor_leads_and_the_other_stands_by_without_checking_or_writing(cluster, fake, monitors):  # noqa: F811
    panel1, panel2 = monitors["panel1"], monitors["panel2"]
    first = panel1.cycle()
    assert first.leading and "panel1: leading the monitors" in first.changes
    second = panel2.cycle()
    assert not second.leading and second.changes == ["panel2: standing by; panel1 leads"]
    assert second.states == {}

    fake.silent = {"cpu2"}
    checks, before = fake.checks, _host("cpu2")
    for _ in range(DEAD_AFTER + 2):
        assert panel2.cycle().changes == []  # said once, not every cycle
    assert fake.checks == checks and _host("cpu2") == before  # never checked, never written
    assert not Incident.objects.exists()

    for _ in range(DEAD_AFTER):
        panel1.cycle()
    assert _host("cpu2")[:2] == (HostState.DEAD, DEAD_AFTER)
    assert Incident.objects.count() == 1


def test_when_the_leaders_session_ends_the_other_leads_on_its_next_cycle(cluster, fake, monitors):  # noqa: F811
    panel1, panel2 = monitors["panel1"], monitors["panel2"]
    panel1.cycle()
    panel2.cycle()
    _kill_session(panel1)

    taken = panel2.cycle()
    assert taken.leading and "panel2: leading the monitors" in taken.changes
    assert taken.states["cpu1"] == HostState.UP  # it checked, and wrote

    lost = panel1.cycle()
    assert not lost.leading
    assert lost.changes == ["panel1: no longer leading; standing by", "panel1: standing by; panel2 leads"]
    fake.silent = {"cpu2"}
    panel1.cycle()
    assert _host("cpu2")[:2] == (HostState.UP, 0)  # the old leader writes nothing any more
    panel2.cycle()
    assert _host("cpu2")[:2] == (HostState.SUSPECT, 1)


def test_a_leader_that_closes_hands_over_at_once(cluster, fake, monitors):  # noqa: F811
    monitors["panel1"].cycle()
    monitors["panel1"].close()  # SIGTERM: the command closes its monitor
    assert monitors["panel2"].cycle().leading


def test_the_lock_session_gives_up_on_a_silent_peer_within_about_one_interval(cluster, monitors):  # noqa: F811
    leadership = AdvisoryLockLeadership(interval=3, node="panel3")
    try:
        leadership.refresh()
        conn = leadership._conn
        assert conn is not None
        shown = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in (
            "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")}
        assert shown == {"tcp_keepalives_idle": "1", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "2",
                         "tcp_user_timeout": "3000"}
    finally:
        leadership.close()
    keepalive = Keepalive.for_interval(2)
    assert keepalive.idle_s + keepalive.probe_interval_s * keepalive.probes <= 2


def test_a_hung_leader_loses_the_lead_once_it_stops_asking_for_it(cluster, monitors):  # noqa: F811
    # Alive but stopped (SIGSTOP, a deadlock): its socket still answers keepalives, its session idles.
    hung = AdvisoryLockLeadership(interval=1, node="panel3", hung_after_s=1)
    standby = monitors["panel2"].leadership
    try:
        assert hung.refresh() == "gained" and standby.refresh() == "" and not standby.is_leader
        time.sleep(1.6)  # no refresh: the server ends the idle session
        assert standby.refresh() == "gained"
        assert hung.refresh() == "lost" and not hung.is_leader  # woken up: it knows, and acts no more
        assert hung.refresh() == "" and not hung.is_leader and hung.leader == "panel2"
    finally:
        hung.close()


# --- taking over mid-incident: resume, never twice -----------------------------------------------

def _lead_then_die(monitors: dict[str, Monitor]) -> Monitor:
    """panel1 leads and dies; panel2 is the one that takes over."""
    monitors["panel1"].cycle()
    monitors["panel2"].cycle()
    _kill_session(monitors["panel1"])
    return monitors["panel2"]


def test_a_new_leader_does_not_open_a_second_incident_nor_a_second_failover(cluster, fake, monitors):  # noqa: F811
    panel1 = monitors["panel1"]
    panel1.cycle()
    fake.silent = {"cpu2"}
    for _ in range(DEAD_AFTER):
        panel1.cycle()  # declared dead, incident opened, failover job queued (no worker here: it stays queued)
    (incident,) = Incident.objects.all()
    assert failover.failover_jobs(incident).count() == 1

    panel2 = _lead_then_die(monitors)
    for _ in range(3):
        panel2.cycle()
    assert Incident.objects.count() == 1 and failover.failover_jobs(incident).count() == 1
    assert Job.objects.filter(kind=failover.JOB_KIND).count() == 1


def test_a_host_left_dead_without_its_incident_gets_it_and_one_failover(cluster, fake, monitors):  # noqa: F811
    earlier, _created = open_incident(cluster["cpu2"], IncidentKind.CPU_SERVER_FAILED, "cpu2 failed last month")
    Incident.objects.filter(pk=earlier.pk).update(state=IncidentState.CLOSED)
    panel2 = _lead_then_die(monitors)
    # panel1 set cpu2 dead (its compare-and-set) and died before opening the incident.
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD, missed_checks=DEAD_AFTER,
                                                 state_changed_at=timezone.now(),
                                                 last_check_error="cpu2: SSH failed: no answer")
    fake.silent = {"cpu2"}
    report = panel2.cycle()
    incident = Incident.objects.exclude(pk=earlier.pk).get()
    assert incident.kind == IncidentKind.CPU_SERVER_FAILED and incident.is_open
    assert "the monitor that led stopped before acting on it" in incident.summary
    assert failover.failover_jobs(incident).count() == 1
    assert f"cpu2: incident #{incident.pk} opened, starting failover" in report.changes
    for _ in range(3):
        panel2.cycle()
    assert Incident.objects.count() == 2 and failover.failover_jobs(incident).count() == 1


def test_an_incident_left_without_its_failover_gets_one(cluster, fake, monitors):  # noqa: F811
    panel2 = _lead_then_die(monitors)
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD, missed_checks=DEAD_AFTER)
    incident, _created = open_incident(cluster["cpu2"], IncidentKind.CPU_SERVER_FAILED, "cpu2 missed 3 checks")
    fake.silent = {"cpu2"}
    report = panel2.cycle()
    (job,) = failover.failover_jobs(incident)
    assert f"cpu2: incident #{incident.pk} resumed, failover job #{job.pk}" in report.changes
    for _ in range(3):
        panel2.cycle()
    assert failover.failover_jobs(incident).count() == 1 and Incident.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_failover_job_whose_message_the_dead_leader_never_sent_is_sent_again(cluster, fake, monitors,  # noqa: F811
                                                                               monkeypatch):
    """The leader committed the failover job and died before its on-commit message left: the new
    leader sends it again at once (the periodic re-send of lost messages would come minutes later)."""
    from jobs import queues

    panel2 = _lead_then_die(monitors)
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD, missed_checks=DEAD_AFTER)
    incident, _created = open_incident(cluster["cpu2"], IncidentKind.CPU_SERVER_FAILED, "cpu2 missed 3 checks")
    monkeypatch.setattr(queues.transaction, "on_commit", lambda _send: None)  # the message that never left
    job = failover.start_failover(incident)
    monkeypatch.undo()
    sent: list[tuple] = []
    monkeypatch.setattr(queues.current_app, "send_task", lambda name, args, **kw: sent.append((args, kw["queue"])))
    fake.silent = {"cpu2"}
    report = panel2.cycle()
    assert sent == [((job.pk,), queues.queue_for(job))]
    assert f"failover job #{job.pk}: message sent again" in report.changes
    assert Job.objects.get(pk=job.pk).state == "queued" and failover.failover_jobs(incident).count() == 1


def test_a_closed_incident_of_a_host_still_dead_is_not_reopened(cluster, fake, monitors):  # noqa: F811
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD, missed_checks=DEAD_AFTER,
                                                 state_changed_at=timezone.now())
    incident, _created = open_incident(cluster["cpu2"], IncidentKind.CPU_SERVER_FAILED, "cpu2 missed 3 checks")
    Incident.objects.filter(pk=incident.pk).update(state=IncidentState.CLOSED)  # failed over, host not back yet
    fake.silent = {"cpu2"}
    panel2 = _lead_then_die(monitors)
    panel2.cycle()
    assert Incident.objects.count() == 1 and not failover.failover_jobs(incident).exists()


def test_a_disk_server_left_before_its_mirrors_were_marked_gets_them_marked(cluster, fake, monitors):  # noqa: F811
    panel2 = _lead_then_die(monitors)
    DiskServer.objects.filter(name="disk2").update(state=HostState.DEAD, missed_checks=DEAD_AFTER)
    open_incident(cluster["disk2"], IncidentKind.DISK_SERVER_FAILED, "disk2 missed 3 checks")  # then died
    fake.silent = {"disk2"}
    panel2.cycle()
    (incident,) = Incident.objects.all()
    assert incident.state == IncidentState.DEGRADED and Mirror.objects.get().state == MirrorState.DEGRADED


# --- who leads, on the dashboard -----------------------------------------------------------------

def test_the_dashboard_says_which_panel_machine_leads(cluster, monitors, admin_client):  # noqa: F811
    page = admin_client.get("/").content.decode()
    assert "No monitor leads" in page
    monitors["panel1"].cycle()
    monitors["panel2"].cycle()
    sessions = monitor_sessions()
    assert sessions is not None and [(s.name, s.leads) for s in sessions] == [("panel1", True), ("panel2", False)]
    page = admin_client.get("/").content.decode()
    assert 'data-monitor-leader="panel1"' in page and "standing by: panel2" in page
