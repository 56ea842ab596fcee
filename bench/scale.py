"""`python -m bench.scale`: the pages and the API at the scale of a real site.

One throw-away PostgreSQL database filled twice: first with a hundredth of the site (2 CPU servers,
2 disk servers, 100 VMs, 1,000 jobs), when the SQL queries of each page are counted; then with the
rest (200 CPU servers, 20 disk servers, 10,000 VMs in 40 tenants, 100,000 jobs, 1,000,000 log
entries), when each page is timed against the login page (the framework's floor) in the same run,
and counted again: a page whose query count grows with the rows fails the bench. The target is a
p95 under 100 ms. Figures go to .bench/scale.json and docs/benchmarks.md (bench/report.py).

A limit found on the way: one shelf per disk server holds 255 exports, and a VM's two legs share a
slot number on two shelves, so 20 disk servers hold at most 2,550 mirrored VMs; the other VMs here
have no legs (the pages count exports, they do not list them all).
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time

from bench import database, job_history, report

DB_NAME = "xenaoe_bench_scale"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
KEEP_DB = os.environ.get("BENCH_KEEP_DB") == "1"  # keep the filled database (for a profiler), reuse it next time
TARGET_P95_S = 0.100
SECTION = "Pages and API at scale (10,000 VMs, 200 CPU servers, 20 disk servers, 100,000 jobs, 1,000,000 log entries)"
FULL = {"cpus": 200, "disks": 20, "vms": 10_000, "jobs": 100_000}
SMALL = {key: max(2, value // 100) for key, value in FULL.items()}
SLOTS = 255
TENANTS = 40

# (who, title, url): the pages operators and tenants open, and the API's list endpoints.
PAGES = [
    ("bench-operator", "dashboard", "/"),
    ("bench-operator", "VM list", "/vms/"),
    ("bench-operator", "VM list, last page", "/vms/?page=last"),
    ("bench-operator", "hosts", "/hosts/"),
    ("bench-operator", "job history", "/jobs/"),
    ("bench-operator", "job history, one host", "/jobs/?host=cpu2"),
    ("bench-operator", "API: VMs", "/api/vms/"),
    ("bench-operator", "API: jobs", "/api/jobs/"),
    ("bench-operator", "API: CPU servers", "/api/cpu-servers/"),
    ("bench-operator", "API: disk servers", "/api/disk-servers/"),
    ("bench-tenant", "tenant: VM list", "/vms/"),
    ("bench-tenant", "tenant: API VMs", "/api/vms/"),
]


def fill(have: dict[str, int], want: dict[str, int]) -> None:
    """Add rows so that the database holds `want` of each (it holds `have`)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from hosts.models import CpuServer, DiskServer
    from storage.models import AoEExport, Mirror
    from tenants.models import Membership, Tenant
    from vms.choices import VmState
    from vms.models import VirtualMachine

    started = time.perf_counter()
    rng = random.Random(have["vms"])
    users = get_user_model().objects
    if not have["vms"]:
        for name in job_history.USERS:
            users.create_user(name)
        users.create_user("bench-operator", is_staff=True)
        tenants = Tenant.objects.bulk_create(
            [Tenant(slug=f"tenant{n:02d}", name=f"Tenant {n}", quota_vms=FULL["vms"]) for n in range(TENANTS)])
        Membership.objects.create(user=users.create_user("bench-tenant"), tenant=tenants[3])
    tenants = list(Tenant.objects.all())
    CpuServer.objects.bulk_create([
        CpuServer(name=f"cpu{n}", address=f"cpu{n}", libvirt_uri="test:///default", memory_mib=512 * 1024, vcpus=64)
        for n in range(have["cpus"] + 1, want["cpus"] + 1)])
    DiskServer.objects.bulk_create([
        DiskServer(name=f"disk{n}", address=f"disk{n}", aoe_shelf=n, capacity_mib=64 << 20)
        for n in range(have["disks"] + 1, want["disks"] + 1)])
    cpus, disks = list(CpuServer.objects.order_by("pk")), list(DiskServer.objects.order_by("pk"))
    states = [VmState.RUNNING] * 8 + [VmState.STOPPED] * 2
    vms = VirtualMachine.objects.bulk_create(
        [VirtualMachine(name=f"vm{n:05d}", vcpus=rng.choice([1, 2, 4]), memory_mib=rng.choice([512, 1024, 2048]),
                        disk_mib=10240, cpu_server=cpus[n % len(cpus)], tenant=rng.choice(tenants),
                        state=rng.choice(states)) for n in range(have["vms"], want["vms"])], batch_size=2000)
    mirrors = Mirror.objects.bulk_create([Mirror(vm=vm) for vm in vms], batch_size=2000)
    # Legs where the SAN has room: pairs of shelves, the same slot on both.
    taken = set(AoEExport.objects.values_list("shelf", "slot"))
    pairs = [(disks[i], disks[i + 1]) for i in range(0, len(disks) - 1, 2)]
    free = ((a, b, slot) for slot in range(SLOTS) for a, b in pairs
            if (a.aoe_shelf, slot) not in taken and (b.aoe_shelf, slot) not in taken)
    legs = []
    for mirror, place in zip(mirrors, free, strict=False):
        a, b, slot = place
        legs += [AoEExport(disk_server=d, mirror=mirror, leg=i, shelf=d.aoe_shelf, slot=slot, size_mib=10240,
                           backing_path=f"/srv/xenaoe/volumes/{mirror.vm.name}.img", state="exported")
                 for i, d in enumerate((a, b))]
    AoEExport.objects.bulk_create(legs, batch_size=2000)
    user_ids = list(users.filter(username__in=job_history.USERS).values_list("pk", flat=True))
    job_history.JOBS = want["jobs"]
    jobs = list(job_history.jobs_to_fill(timezone.now(), user_ids))[have["jobs"]:]
    job_history.copy_jobs(jobs)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"filled to {want['cpus']} CPU servers, {want['disks']} disk servers, {want['vms']:,} VMs "
          f"({AoEExport.objects.count():,} legs), {want['jobs']:,} jobs in {time.perf_counter() - started:.1f} s")


def clients() -> dict:
    from django.contrib.auth import get_user_model
    from django.test import Client

    made = {}
    for who in ("bench-operator", "bench-tenant"):
        client = Client(SERVER_NAME="localhost")
        client.force_login(get_user_model().objects.get(username=who))
        made[who] = client
    return made


def count_queries(made: dict) -> dict[str, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = {}
    for who, title, url in PAGES:
        made[who].get(url)
        with CaptureQueriesContext(connection) as queries:
            response = made[who].get(url)
        assert response.status_code == 200, (who, url, response.status_code)
        counts[title] = len(queries)
    return counts


def main() -> int:
    reuse = KEEP_DB and database.exists(DB_NAME)
    database.set_up(DB_NAME, reuse=reuse, as_server=True)
    logging.getLogger("django.request").setLevel(logging.ERROR)
    from django.test import Client

    try:
        if not reuse:
            fill({"cpus": 0, "disks": 0, "vms": 0, "jobs": 0}, SMALL)
        made = clients()
        small = count_queries(made) if not reuse else {}
        if not reuse:
            fill(SMALL, FULL)
        full = count_queries(made)
        small = small or full
        anonymous = Client(SERVER_NAME="localhost")
        figures = []
        for who, title, url in PAGES:
            page, login = report.interleaved(lambda c=made[who], u=url: c.get(u), lambda: anonymous.get("/login/"),
                                             ROUNDS)
            figures.append(report.Figure(
                SECTION, title, "login page", page, login, target_p95_s=TARGET_P95_S,
                notes={"queries": full[title], "with 1/100 of the rows": small[title]}))
        report.save("scale", figures)
        grown = {title: (small[title], full[title]) for title in full if full[title] > small[title]}
        if grown:
            print(f"\nquery counts that grow with the rows: {grown}", file=sys.stderr)
            return 1
    finally:
        if not KEEP_DB:
            database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
