"""`python -m bench.job_history`: the job history page with 100,000 jobs and a million log lines.

Fills a throw-away PostgreSQL database (COPY, a few seconds), then times /jobs/ through Django's
test client (routing, session, filters, queries and the template, not the network) for the
filters operators use, and one retention run. Prints the median of BENCH_ROUNDS requests each.
BENCH_JOBS changes the size; BENCH_KEEP_DB=1 keeps the database, and reuses it on the next run
(and skips retention, which empties it); BENCH_RESTORE=1 also times restoring the archive (minutes).
Runs in a process of its own: it points Django at its database before setting Django up.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import database
from bench.pages import time_page

DB_NAME = "xenaoe_bench_jobs"
JOBS = int(os.environ.get("BENCH_JOBS", "100000"))
LOG_PER_JOB = 10
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
KEEP_DB = os.environ.get("BENCH_KEEP_DB") == "1"
RESTORE = os.environ.get("BENCH_RESTORE") == "1"
RARE_KIND, RARE_COUNT = "cluster.fix", 40
KINDS = {"vm.create": 30, "vm.delete": 25, "vm.start": 15, "vm.stop": 15, "vm.reboot": 8, "vm.force-off": 4,
         "vm.migrate": 3}
STATES = {"succeeded": 85, "failed": 8, "errored": 2, "cancelled": 5}
USERS = ["alice", "bob", "carol", "dave", "erin"]
CPUS = [f"cpu{n}" for n in range(1, 5)]
DISKS = [f"disk{n}" for n in range(1, 5)]
SPAN = datetime.timedelta(days=730)




def jobs_to_fill(now: datetime.datetime, user_ids: list[int]) -> Iterator[dict[str, Any]]:
    """Jobs oldest first: ids follow time, as they do for real."""
    rng = random.Random(42)
    rare = set(rng.sample(range(JOBS), RARE_COUNT))
    kinds, kind_weights = list(KINDS), list(KINDS.values())
    states, state_weights = list(STATES), list(STATES.values())
    start = now - SPAN
    for n in range(JOBS):
        created = start + SPAN * (n / JOBS)
        kind = RARE_KIND if n in rare else rng.choices(kinds, kind_weights)[0]
        state = "running" if n >= JOBS - 3 else rng.choices(states, state_weights)[0]
        cpu, disks = rng.choice(CPUS), rng.sample(DISKS, 2)
        if kind == "vm.migrate":
            params: dict[str, Any] = {"source": cpu, "target": rng.choice([c for c in CPUS if c != cpu])}
        elif kind == RARE_KIND:
            params = {"disk_server": disks[0]}
        else:
            params = {"cpu_server": cpu} if kind == "vm.create" else {}
        hosts = set(params.values()) if kind in ("vm.migrate", RARE_KIND) else {cpu, *disks}
        yield {
            "id": n + 1, "kind": kind, "state": state, "target_name": f"vm{rng.randrange(2000):04d}",
            "params": json.dumps(params), "user_id": rng.choice(user_ids) if rng.random() < 0.9 else None,
            "step": LOG_PER_JOB, "total_steps": LOG_PER_JOB, "message": "done" if state == "succeeded" else state,
            "created_at": created, "started_at": created,
            "finished_at": None if state == "running" else created + datetime.timedelta(seconds=20),
            "hosts": f" {' '.join(sorted(hosts))} ",
        }


def _log(jobs: list[dict[str, Any]]) -> Iterator[tuple]:
    for job in jobs:
        for serial in range(1, LOG_PER_JOB + 1):
            yield (job["id"], serial, job["created_at"] + datetime.timedelta(seconds=2 * serial), "info",
                   f"Step {serial}/{LOG_PER_JOB}: {job['kind']} {job['target_name']}", serial, LOG_PER_JOB, "{}")


def fill() -> None:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from hosts.models import CpuServer, DiskServer

    user_model = get_user_model()
    user_ids = [user_model.objects.create_user(name).pk for name in USERS]
    for name in CPUS:
        CpuServer.objects.create(name=name, address=name, libvirt_uri="test:///default", memory_mib=65536, vcpus=16)
    for n, name in enumerate(DISKS):
        DiskServer.objects.create(name=name, address=name, aoe_shelf=n + 1, capacity_mib=1 << 20)
    started = time.perf_counter()
    copy_jobs(list(jobs_to_fill(timezone.now(), user_ids)))
    print(f"filled {JOBS:,} jobs and {JOBS * LOG_PER_JOB:,} log entries in {time.perf_counter() - started:.1f} s")


def copy_jobs(jobs: list[dict[str, Any]]) -> None:
    """Jobs (from _jobs) and LOG_PER_JOB log entries each into the database, with COPY."""
    from django.db import connection

    from jobs.models import Job

    # Columns added to Job after this bench was written get their model default.
    fields = list(Job._meta.concrete_fields)
    defaults = {f.attname: f.get_default() for f in fields}
    defaults = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in defaults.items()}
    columns = ", ".join(f.column for f in fields)
    connection.ensure_connection()
    # COPY, not bulk_create: a million rows in seconds rather than minutes.
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY jobs_job ({columns}) FROM STDIN") as copy:
            for job in jobs:
                copy.write_row([job.get(f.attname, defaults[f.attname]) for f in fields])
        with cursor.copy("COPY jobs_joblogentry (job_id, serial, time, level, message, step, total_steps, data)"
                         " FROM STDIN") as copy:
            for entry in _log(jobs):
                copy.write_row(entry)
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('jobs_job', 'id'), (SELECT MAX(id) FROM jobs_job))")
        cursor.execute("VACUUM ANALYZE jobs_job")
        cursor.execute("VACUUM ANALYZE jobs_joblogentry")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def time_pages(now: datetime.datetime) -> list[float]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    operator = get_user_model().objects.filter(username="bench-operator").first() or \
        get_user_model().objects.create_user("bench-operator", is_staff=True)
    # The bad-input page answers 400, which Django logs as a warning on every request.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    client = Client(SERVER_NAME="localhost")
    client.force_login(operator)
    month_ago = (now - datetime.timedelta(days=30)).date()
    year_ago = (now - datetime.timedelta(days=365)).date()
    pages = [
        ("first page, no filter", ""),
        ("page 500", "?page=500"),
        ("page 1000, the middle: dearest", "?page=1000"),
        ("last page", "?page=last"),
        (f"rare kind ({RARE_KIND}, {RARE_COUNT} jobs)", f"?kind={RARE_KIND}"),
        ("one VM (vm0042)", "?vm=vm0042"),
        ("one VM, page 2", "?vm=vm0042&page=2"),
        ("VM prefix (vm004*)", "?vm=vm004*"),
        ("host (disk3)", "?host=disk3"),
        ("host, page 200", "?host=disk3&page=200"),
        ("state failed + kind vm.create", "?state=failed&kind=vm.create"),
        ("state running (3 jobs)", "?state=running"),
        ("user (carol)", "?user=carol"),
        ("last 30 days", f"?date_from={month_ago}"),
        ("one day a year ago", f"?date_from={year_ago}&date_to={year_ago}"),
        ("everything combined", f"?kind=vm.create&state=succeeded&host=cpu2&user=alice&date_from={year_ago}"),
        ("bad input (400)", "?state=nonsense&date_from=yesterday"),
    ]
    medians = []
    print(f"\n/jobs/ with {JOBS:,} jobs, median of {ROUNDS} requests\n")
    for title, query in pages:
        timing = time_page(client, f"/jobs/{query}", ROUNDS)
        assert timing.response.status_code in (200, 400), (query, timing.response.status_code)
        shown = re.search(r'id="job-count"[^>]*>([^<]*)<', timing.response.content.decode())
        count = shown.group(1) if shown else "?"
        medians.append(timing.median)
        print(f"{title:<34} median {_ms(timing.median)}  max {_ms(max(timing.samples))}  {timing.queries:2d} queries  "
              f"{count}")
    return medians


def time_archive() -> None:
    from django.conf import settings

    from jobs.models import Job
    from jobs.retention import archive_finished_jobs, restore_archive

    days = settings.JOB_RETENTION_DAYS or 90
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        dry = archive_finished_jobs(datetime.timedelta(days=days), Path(directory), dry_run=True)
        dry_s = time.perf_counter() - started
        started = time.perf_counter()
        result = archive_finished_jobs(datetime.timedelta(days=days), Path(directory))
        seconds = time.perf_counter() - started
        size = result.path.stat().st_size if result.path else 0
        left = Job.objects.count()
        started = time.perf_counter()
        restored = restore_archive(result.path) if result.path and RESTORE else None
        restore_s = time.perf_counter() - started
    print(f"\nretention ({days} days): dry run {_ms(dry_s)} ({dry.jobs:,} jobs)\n"
          f"archive: {result.jobs:,} jobs and {result.entries:,} log entries in {seconds:.1f} s "
          f"({result.jobs / max(seconds, 1e-9):,.0f} jobs/s), {size / 1e6:.1f} MB gzip'd; {left:,} jobs left")
    if restored:
        print(f"restore: {restored.restored:,} jobs and {restored.entries:,} log entries in {restore_s:.1f} s; "
              f"{Job.objects.count():,} jobs in the database again")


def main() -> int:
    reuse = KEEP_DB and database.exists(DB_NAME)
    database.set_up(DB_NAME, reuse=reuse)
    from django.utils import timezone

    try:
        if not reuse:
            fill()
        medians = time_pages(timezone.now())
        print(f"\nslowest page: {_ms(max(medians))}")
        if not KEEP_DB:
            time_archive()
    finally:
        if not KEEP_DB:
            database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
