"""`python -m bench.vm_list`: the VM list with 10,000 VMs in 40 tenants on 8 CPU servers.

Fills a throw-away PostgreSQL database, then times /vms/ through Django's test client (routing,
session, access rules, filters, queries and the template) for an operator and for a tenant's user,
with the searches and filters people use. Prints the median of BENCH_ROUNDS requests each.
BENCH_VMS changes the size. Runs in a process of its own: it points Django at its database first.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time

from bench import database
from bench.pages import time_page

DB_NAME = "xenaoe_bench_vms"
VMS = int(os.environ.get("BENCH_VMS", "10000"))
TENANTS = 40
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))




def fill() -> None:
    from django.db import connection

    from hosts.models import CpuServer
    from tenants.models import Membership, Tenant
    from vms.choices import VmState
    from vms.models import VirtualMachine

    rng = random.Random(7)
    cpus = [CpuServer.objects.create(name=f"cpu{n}", address=f"cpu{n}", libvirt_uri="test:///default",
                                     memory_mib=1 << 20, vcpus=256) for n in range(1, 9)]
    tenants = Tenant.objects.bulk_create(
        [Tenant(slug=f"tenant{n:02d}", name=f"Tenant {n}", quota_vms=VMS) for n in range(TENANTS)])
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("bench-tenant")
    Membership.objects.create(user=user, tenant=tenants[3])
    get_user_model().objects.create_user("bench-operator", is_staff=True)
    states = [VmState.RUNNING] * 8 + [VmState.STOPPED] * 2
    started = time.perf_counter()
    VirtualMachine.objects.bulk_create(
        [VirtualMachine(name=f"vm{n:05d}", vcpus=rng.choice([1, 2, 4]), memory_mib=rng.choice([512, 1024, 2048]),
                        disk_mib=10240, cpu_server=rng.choice(cpus), tenant=rng.choice(tenants),
                        state=rng.choice(states)) for n in range(VMS)],
        batch_size=2000,
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE vms_virtualmachine")
    print(f"filled {VMS:,} VMs in {TENANTS} tenants in {time.perf_counter() - started:.1f} s")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def time_pages() -> list[float]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    logging.getLogger("django.request").setLevel(logging.ERROR)
    medians = []
    for who, pages in (
        ("bench-operator", [("first page", ""), ("middle page", f"?page={max(1, VMS // 100)}"),
                            ("last page", "?page=last"),
                            ("search 'vm0999'", "?q=vm0999"), ("search '77' (many)", "?q=77"),
                            ("tenant filter", "?tenant=tenant07"), ("state stopped", "?state=stopped"),
                            ("CPU server", "?host=cpu3"),
                            ("everything", "?tenant=tenant07&state=running&host=cpu3&q=1")]),
        ("bench-tenant", [("first page", ""), ("last page", "?page=last"), ("search '12'", "?q=12"),
                          ("state stopped", "?state=stopped")]),
    ):
        client = Client(SERVER_NAME="localhost")
        client.force_login(get_user_model().objects.get(username=who))
        print(f"\n/vms/ as {who}, {VMS:,} VMs, median of {ROUNDS} requests\n")
        for title, query in pages:
            timing = time_page(client, f"/vms/{query}", ROUNDS)
            assert timing.response.status_code == 200, (query, timing.response.status_code)
            medians.append(timing.median)
            print(f"{title:<28} median {_ms(timing.median)}  max {_ms(max(timing.samples))}  "
                  f"{timing.queries:2d} queries")
    return medians


def main() -> int:
    database.set_up(DB_NAME)
    try:
        fill()
        medians = time_pages()
        print(f"\nslowest page: {_ms(max(medians))}")
    finally:
        database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
