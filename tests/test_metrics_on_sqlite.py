"""The demo runs on SQLite (`make demo` sets no DATABASE_URL): /metrics must work there too, with a
failover and jobs recorded. The suite's database is PostgreSQL, so this asks a fresh process with
a SQLite file of its own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRAPE = """
import datetime, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.utils import timezone
from prometheus_client import generate_latest
from ha.choices import EventKind, IncidentKind
from ha.incidents import open_incident, record
from hosts.models import CpuServer
from jobs.models import Job
from metrics.collector import registry
cpu = CpuServer.objects.create(name="cpu1", address="192.0.2.1", libvirt_uri="qemu+ssh://root@192.0.2.1/system",
                               memory_mib=4096, vcpus=4)
incident, _ = open_incident(cpu, IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")
record(incident, EventKind.RESTARTED, "web restarted on cpu2")
now = timezone.now()
Job.objects.create(kind="vm.create", state="succeeded", started_at=now - datetime.timedelta(seconds=3),
                   finished_at=now)
print(generate_latest(registry()).decode())
"""


def test_a_scrape_on_sqlite_counts_the_failover_and_the_job(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
           "DJANGO_SETTINGS_MODULE": "xenaoe_panel.settings_lab"}
    proc = subprocess.run([sys.executable, "-c", SCRAPE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "xenaoe_failover_duration_seconds_count 1.0" in lines
    assert any(line.startswith('xenaoe_jobs{kind="vm.create",state="succeeded"} 1.0') for line in lines)
