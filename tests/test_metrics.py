"""GET /metrics (metrics/): the token, what a site's records say in Prometheus' text format, what a
scrape costs, and Prometheus' own checker (`promtool check metrics`, Debian's prometheus package) on it."""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from ha.choices import EventKind, IncidentKind, IncidentState
from ha.models import Incident, IncidentEvent
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from metrics import cycle_time
from metrics.cycle_time import CycleTimeRecorder
from storage.choices import MirrorHealth, MirrorState
from storage.models import AoEExport, Mirror
from tenants.services import add_user, create_tenant
from vms.choices import VmState
from vms.models import VirtualMachine, VmSample

pytestmark = pytest.mark.django_db
TOKEN = "k3Xv9-metrics-token-for-the-tests-only-0123456789"
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.VM_STATS_INTERVAL_S = 60
    cache.delete(cycle_time.CACHE_KEY)
    yield
    cache.delete(cycle_time.CACHE_KEY)


def scrape(token: str | None = TOKEN, client: Client | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return (client or Client()).get("/metrics", **headers)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its labels): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


# --- who may scrape ------------------------------------------------------------------------------

def test_the_token_and_nothing_else_opens_it(settings):
    anonymous = scrape(None)
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert scrape("wrong-" + TOKEN).status_code == 403
    assert scrape(TOKEN[:-1]).status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Token {TOKEN}").status_code == 401  # the API's scheme
    # A session opens nothing here: not a tenant's, not an operator's.
    tenant_user = add_user(create_tenant("acme"), "alice", password="alice-password-1")
    operator = get_user_model().objects.create_user("op", is_staff=True, is_superuser=True)
    for user in (tenant_user, operator):
        client = Client()
        client.force_login(user)
        assert scrape(None, client).status_code == 401
        assert b"xenaoe_" not in scrape(None, client).content
    allowed = scrape()
    assert allowed.status_code == 200 and allowed["Content-Type"].startswith("text/plain; version=0.0.4")
    assert allowed["Cache-Control"] == "no-store"
    assert Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    settings.METRICS_TOKEN = ""
    assert scrape().status_code == 404  # off: as if it did not exist


# --- what it says --------------------------------------------------------------------------------

def site(now: datetime.datetime, vms: int = 2, jobs: int = 3, incidents: int = 1) -> None:
    """A small site: two CPU servers (one dead), two disk servers, guests with mirrors, an incident whose
    failover restarted two guests, jobs, guests' figures and the monitor's cycle times."""
    cpu1 = CpuServer.objects.create(name="cpu1", address="cpu1.example", libvirt_uri="test:///default",
                                    memory_mib=8192, vcpus=8, last_seen_at=now)
    cpu2 = CpuServer.objects.create(name="cpu2", address="cpu2.example", libvirt_uri="test:///default",
                                    memory_mib=4096, vcpus=4, state=HostState.DEAD, missed_checks=5,
                                    foreign_memory_mib=256)
    disks = [DiskServer.objects.create(name=f"disk{i}", address=f"disk{i}.example", aoe_shelf=i,
                                       capacity_mib=100_000) for i in (1, 2)]
    for i in range(vms):
        vm = VirtualMachine.objects.create(name=f"vm{i}", cpu_server=cpu1, vcpus=2, memory_mib=1024, disk_mib=2048,
                                           state=VmState.RUNNING if i == 0 else VmState.STOPPED)
        mirror = Mirror.objects.create(
            vm=vm, state=MirrorState.DEGRADED if i == 0 else MirrorState.HEALTHY,
            health=MirrorHealth.RESYNCING if i == 0 else MirrorHealth.HEALTHY,
            missing_legs=[1] if i == 0 else [], resync_percent=42.5 if i == 0 else None,
            checked_at=now if i == 0 else None)
        for leg, disk in enumerate(disks):
            AoEExport.objects.create(disk_server=disk, mirror=mirror, leg=leg, shelf=disk.aoe_shelf, slot=i,
                                     backing_path=f"/srv/{vm.name}", size_mib=2048)
        VmSample.objects.create(vm=vm, time=now - datetime.timedelta(seconds=90), cpu_vcpus=0.5, disk_read_bps=10.0)
        VmSample.objects.create(vm=vm, time=now - datetime.timedelta(seconds=30), cpu_vcpus=1.25,
                                disk_read_bps=4096.0, disk_write_bps=2048.0, net_rx_bps=100.0, net_tx_bps=None)
    for i in range(incidents):
        incident = Incident.objects.create(kind=IncidentKind.CPU_SERVER_FAILED, host_name=f"cpu2-{i}",
                                           cpu_server=cpu2, state=IncidentState.CLOSED)
        Incident.objects.filter(pk=incident.pk).update(opened_at=now - datetime.timedelta(minutes=10))
        for seconds in (12, 20):
            event = IncidentEvent.objects.create(incident=incident, kind=EventKind.RESTARTED, message="restarted")
            IncidentEvent.objects.filter(pk=event.pk).update(
                time=now - datetime.timedelta(minutes=10) + datetime.timedelta(seconds=seconds))
    Incident.objects.create(kind=IncidentKind.DISK_SERVER_FAILED, host_name="disk9")  # open, nothing restarted
    for i in range(jobs):
        started = now - datetime.timedelta(minutes=5)
        kind, state, took = [("vm.create", "succeeded", 40), ("vm.create", "failed", 3), ("host.failover", "running",
                                                                                          None)][i % 3]
        Job.objects.create(kind=kind, state=state, started_at=started,
                           finished_at=None if took is None else started + datetime.timedelta(seconds=took))
    Job.objects.create(kind="vm.create", state="succeeded", started_at=now - datetime.timedelta(hours=3),
                       finished_at=now - datetime.timedelta(hours=2))  # counted, but not in the last hour
    recorder = CycleTimeRecorder()
    for duration in (0.03, 0.2, 0.2, 3.0):
        recorder.after_cycle(duration, leading=True)


def test_a_site_in_numbers():
    now = timezone.now()
    site(now)
    found = samples(scrape().content.decode())
    # Hosts: every state of each, 1 for the current one.
    assert value(found, "xenaoe_host_state", host="cpu1", role="cpu", state="up") == 1
    assert value(found, "xenaoe_host_state", host="cpu2", role="cpu", state="up") == 0
    assert value(found, "xenaoe_host_state", host="cpu2", role="cpu", state="dead") == 1
    assert value(found, "xenaoe_host_state", host="disk1", role="disk", state="up") == 1
    assert value(found, "xenaoe_host_missed_checks", host="cpu2", role="cpu") == 5
    assert value(found, "xenaoe_host_last_seen_timestamp_seconds", host="cpu1", role="cpu") == pytest.approx(
        now.timestamp())
    assert ("xenaoe_host_last_seen_timestamp_seconds", frozenset({("host", "cpu2"), ("role", "cpu")})) not in found
    # Allocation, as the allocator counts it.
    assert value(found, "xenaoe_cpu_server_memory_bytes", host="cpu1") == 8192 * MIB
    assert value(found, "xenaoe_cpu_server_memory_allocated_bytes", host="cpu1", to="guests") == 2048 * MIB
    assert value(found, "xenaoe_cpu_server_memory_allocated_bytes", host="cpu2", to="foreign") == 256 * MIB
    assert value(found, "xenaoe_cpu_server_vcpus_allocated", host="cpu1") == 4
    assert value(found, "xenaoe_cpu_server_guests", host="cpu1") == 2
    assert value(found, "xenaoe_disk_server_used_bytes", host="disk2") == 2 * 2048 * MIB
    assert value(found, "xenaoe_disk_server_capacity_bytes", host="disk2") == 100_000 * MIB
    assert value(found, "xenaoe_n_plus_one_shortfalls") == 1  # cpu1's guests have nowhere to go: cpu2 is dead
    # VMs and their mirrors.
    assert value(found, "xenaoe_vms", state="running") == 1 and value(found, "xenaoe_vms", state="failed") == 0
    assert value(found, "xenaoe_mirror_health", vm="vm0", health="resyncing") == 1
    assert value(found, "xenaoe_mirror_health", vm="vm0", health="healthy") == 0
    assert value(found, "xenaoe_mirror_state", vm="vm0", state="degraded") == 1
    assert value(found, "xenaoe_mirror_missing_legs", vm="vm0") == 1
    assert value(found, "xenaoe_mirror_resync_percent", vm="vm0") == 42.5
    assert ("xenaoe_mirror_resync_percent", frozenset({("vm", "vm1")})) not in found
    # The guests' newest figures; what the host did not report is left out.
    assert value(found, "xenaoe_vm_cpu_busy_vcpus", vm="vm0") == 1.25
    assert value(found, "xenaoe_vm_disk_write_bytes_per_second", vm="vm1") == 2048
    assert ("xenaoe_vm_network_transmit_bytes_per_second", frozenset({("vm", "vm0")})) not in found
    # Incidents, and the failover's duration: declared dead to the last guest restarted, 20 s.
    assert value(found, "xenaoe_incidents", kind="cpu-server-failed", state="closed") == 1
    assert value(found, "xenaoe_incidents", kind="disk-server-failed", state="open") == 1
    assert value(found, "xenaoe_failover_duration_seconds_count") == 1
    assert value(found, "xenaoe_failover_duration_seconds_sum") == pytest.approx(20)
    assert value(found, "xenaoe_failover_duration_seconds_bucket", le="15.0") == 0
    assert value(found, "xenaoe_failover_duration_seconds_bucket", le="20.0") == 1
    # Jobs: every one in the database; the durations of those finished in the last hour.
    assert value(found, "xenaoe_jobs", kind="vm.create", state="succeeded") == 2
    assert value(found, "xenaoe_jobs", kind="host.failover", state="running") == 1
    assert value(found, "xenaoe_job_duration_seconds_gcount", kind="vm.create", state="succeeded") == 1
    assert value(found, "xenaoe_job_duration_seconds_gsum", kind="vm.create", state="succeeded") == pytest.approx(40)
    assert value(found, "xenaoe_job_duration_seconds_bucket", kind="vm.create", state="succeeded", le="30.0") == 0
    assert value(found, "xenaoe_job_duration_seconds_bucket", kind="vm.create", state="succeeded", le="60.0") == 1
    assert value(found, "xenaoe_job_duration_seconds_bucket", kind="vm.create", state="failed", le="5.0") == 1
    assert ("xenaoe_job_duration_seconds_gcount", frozenset({("kind", "host.failover"), ("state", "running")})
            ) not in found
    # The leading monitor's cycles.
    assert value(found, "xenaoe_monitor_cycle_seconds_count") == 4
    assert value(found, "xenaoe_monitor_cycle_seconds_bucket", le="0.25") == 3
    assert value(found, "xenaoe_monitor_cycle_seconds_sum") == pytest.approx(3.43)
    assert value(found, "xenaoe_monitor_last_cycle_seconds") == 3.0
    assert value(found, "xenaoe_monitor_last_cycle_timestamp_seconds") == pytest.approx(now.timestamp(), abs=60)


def test_stale_figures_and_no_monitor_are_left_out():
    now = timezone.now()
    cpu1 = CpuServer.objects.create(name="cpu1", address="cpu1.example", libvirt_uri="test:///default",
                                    memory_mib=8192, vcpus=8)
    vm = VirtualMachine.objects.create(name="web", cpu_server=cpu1, vcpus=1, memory_mib=256, disk_mib=64)
    VmSample.objects.create(vm=vm, time=now - datetime.timedelta(minutes=10), cpu_vcpus=0.5)  # sampler stopped
    text = scrape().content.decode()
    assert "xenaoe_vm_cpu_busy_vcpus{" not in text
    assert "xenaoe_monitor_cycle_seconds" not in text  # no monitor recorded a cycle: absent, not 0
    assert value(samples(text), "xenaoe_failover_duration_seconds_count") == 0


def test_a_scrape_costs_the_same_queries_for_a_few_rows_and_many():
    now = timezone.now()
    site(now)
    with CaptureQueriesContext(connection) as few:
        small = scrape()
    Job.objects.all().delete()
    IncidentEvent.objects.all().delete()
    Incident.objects.all().delete()
    VirtualMachine.objects.all().delete()
    CpuServer.objects.all().delete()
    AoEExport.objects.all().delete()
    DiskServer.objects.all().delete()
    site(now, vms=120, jobs=300, incidents=25)
    with CaptureQueriesContext(connection) as many:
        large = scrape()
    assert len(large.content) > 5 * len(small.content)
    assert len(few) == len(many) == 10


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed")
def test_prometheus_accepts_the_output():
    site(timezone.now())
    text = scrape().content
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stderr.decode() + checked.stdout.decode()
    assert not checked.stdout.strip() and not checked.stderr.strip()  # no lint complaint either


# --- the token's file ----------------------------------------------------------------------------

def _token_setting(path: Path) -> subprocess.CompletedProcess:
    show = "import django; django.setup(); from django.conf import settings; print(settings.METRICS_TOKEN)"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "xenaoe_panel.settings", "XENAOE_METRICS_TOKEN_FILE": str(path)}
    return subprocess.run([sys.executable, "-c", show], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_the_token_is_read_from_a_private_file_at_start(tmp_path):
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    read = _token_setting(token_file)
    assert read.returncode == 0 and read.stdout.strip() == TOKEN, read.stderr
    token_file.chmod(0o644)
    refused = _token_setting(token_file)
    assert refused.returncode != 0 and "readable by every user" in refused.stderr
    token_file.write_text("short")
    token_file.chmod(0o600)
    refused = _token_setting(token_file)
    assert refused.returncode != 0 and "at least 32 needed" in refused.stderr
