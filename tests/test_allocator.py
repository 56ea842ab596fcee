"""The allocator (vms/placement.py): every placement goes through it and what it hands out stays held
until the job ends. A migration holds its target (and keeps its source) until it ends, so creates
cannot take that memory, not even racing it; failover restarts and evacuation plans choose around
what others hold and hold what they chose; domains the panel did not make count as used."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection

from drivers import hypervisor
from drivers.hypervisor import DomainInfo
from hosts.capacity import cluster_capacity
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs import runner
from jobs.choices import JobState
from jobs.models import Job
from tenants.services import create_tenant
from vms.choices import VmState
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.placement import Cluster, cpu_candidates, n_plus_one_shortfalls, server_loads
from vms.services import VmRequest, create_vm
from vms.watch import reconcile


def _cluster() -> dict[str, CpuServer]:
    for i in (1, 2):
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=10**6)
    return {name: CpuServer.objects.create(name=name, address=f"192.0.2.{20 + i}", libvirt_uri=f"fake:///{name}",
                                           memory_mib=1024, vcpus=4)
            for i, name in enumerate(["cpu1", "cpu2", "cpu3"], start=1)}


def _guest(name: str, server: CpuServer, memory_mib: int, **fields) -> VirtualMachine:
    return VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=32, cpu_server=server,
                                         state=VmState.RUNNING, **fields)


def _used() -> dict[str, int]:
    return {c.server.name: c.used_mib for c in cpu_candidates()}


def _create_on(server: str, name: str, memory_mib: int, tenant: str | None = None) -> Job:
    return create_vm(VmRequest(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=32, cpu_server=server,
                               allow_n_plus_one_break=True, tenant=tenant))


# --- migration --------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_migration_holds_its_target_so_a_create_cannot_take_that_memory():
    cpus = _cluster()
    _guest("web", cpus["cpu1"], 512)
    migrate_vm("web", "cpu2")
    with pytest.raises(ValidationError, match="cpu2 has 512 MiB free, the new VM needs 768 MiB"):
        _create_on("cpu2", "late", 768)
    assert not VirtualMachine.objects.filter(name="late").exists()
    # Automatic placement counts it too: cpu3 has the most room now, not cpu2.
    assert VirtualMachine.objects.get(pk=_create_on(None, "auto", 256).vm_id).cpu_server.name == "cpu3"


@pytest.mark.django_db
def test_a_migrating_vm_counts_on_both_ends_until_its_job_ends():
    cpus = _cluster()
    web = _guest("web", cpus["cpu1"], 512)
    job = migrate_vm("web", "cpu2")
    assert _used() == {"cpu1": 512, "cpu2": 512, "cpu3": 0}
    VirtualMachine.objects.filter(pk=web.pk).update(cpu_server=cpus["cpu2"])  # the job's switch-over
    assert _used() == {"cpu1": 512, "cpu2": 512, "cpu3": 0}
    # However the job ends (the runner, or recovery ending a job whose worker died), the hold ends.
    Job.objects.filter(pk=job.pk).update(state=JobState.ERRORED)
    assert _used() == {"cpu1": 0, "cpu2": 512, "cpu3": 0}
    capacity = {c.server.name: c for c in cluster_capacity().cpu}
    assert capacity["cpu1"].free_mib == 1024 and capacity["cpu2"].used_mib == 512


@pytest.mark.django_db
def test_the_dashboard_and_the_api_show_what_a_migration_holds(admin_client):
    cpus = _cluster()
    _guest("web", cpus["cpu1"], 512)
    migrate_vm("web", "cpu2")
    capacity = {c.server.name: c for c in cluster_capacity().cpu}
    assert (capacity["cpu2"].used_mib, capacity["cpu2"].vcpus_used) == (512, 1)
    assert "512 MiB held for moves under way" in capacity["cpu2"].memory_text
    servers = {s["name"]: s for s in admin_client.get("/api/cpu-servers/").json()["results"]}
    assert (servers["cpu2"]["used_memory_mib"], servers["cpu2"]["free_memory_mib"]) == (512, 512)


@pytest.mark.django_db
def test_loads_added_up_by_the_database_are_those_the_allocator_counts_from_its_guests(admin_client):
    """server_loads (the API, the host history) has the database add up each server's guests; the
    allocator reads every guest, to pack them: the same numbers, holds and foreign domains included."""
    cpus = _cluster()
    _guest("web", cpus["cpu1"], 512)
    _guest("db", cpus["cpu1"], 256)
    CpuServer.objects.filter(pk=cpus["cpu3"].pk).update(foreign_memory_mib=128)
    migrate_vm("web", "cpu2")
    summed = server_loads()
    assert summed == Cluster.load().every
    assert [(load.guests_mib, load.reserved_mib, load.foreign_mib, load.guests, load.vcpus_used)
            for load in summed.values()] == [(768, 0, 0, 2, 2), (0, 512, 0, 0, 1), (0, 0, 128, 0, 0)]
    servers = {s["name"]: s for s in admin_client.get("/api/cpu-servers/").json()["results"]}
    assert [(s["guests"], s["used_memory_mib"]) for s in servers.values()] == [(2, 768), (0, 512), (0, 128)]


@runner.job_kind("test.holds")
def _plan_holds(ctx: runner.JobContext) -> list[runner.Step]:
    return [runner.Step("hold", lambda ctx: None)]


@pytest.mark.django_db
def test_the_runner_gives_back_what_a_job_held_when_it_ends():
    from vms.models import Reservation
    from vms.placement import server_load

    cpus = _cluster()
    web = _guest("web", cpus["cpu1"], 512)
    job = Job.objects.create(kind="test.holds")
    Reservation.objects.create(job=job, vm=web, cpu_server=cpus["cpu3"], memory_mib=512, vcpus=1)
    assert server_load(cpus["cpu3"]).reserved_mib == 512
    runner.run_job(job.pk)
    assert not Reservation.objects.exists() and server_load(cpus["cpu3"]).free_mib == 1024


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_and_a_migration_to_the_same_host_never_overcommit_it():
    """One migration and many creates of the same tenant race for cpu2 from separate connections.
    Each takes the tenant's row, then the server rows, so none deadlocks and the memory handed out
    on cpu2 never exceeds it."""
    cpus = _cluster()
    _guest("web", cpus["cpu1"], 512, tenant=create_tenant("acme"))
    creates = 6
    barrier = threading.Barrier(creates + 1)

    def attempt(n: int) -> str:
        try:
            barrier.wait(timeout=30)
            if n == creates:
                migrate_vm("web", "cpu2")
            else:
                _create_on("cpu2", f"race{n}", 512, tenant="acme")
            return "ok"
        except ValidationError:
            return "refused"
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=creates + 1) as pool:
        outcomes = list(pool.map(attempt, range(creates + 1)))

    assert sorted(outcomes) == ["ok", "ok"] + ["refused"] * (creates - 1), outcomes
    assert _used()["cpu2"] == 1024


# --- domains the panel did not make --------------------------------------------------------------

@pytest.mark.django_db
def test_a_domain_the_panel_did_not_make_is_counted_as_used_and_never_handed_out(monkeypatch, admin_client):
    cpus = _cluster()
    listings: dict[str, list[DomainInfo]] = {}
    monkeypatch.setattr(hypervisor, "list_domains", lambda uri, *, timeout=30: listings.get(uri, []))
    listings["fake:///cpu2"] = [
        DomainInfo("handmade", "u1", "running", True, 768),  # started by hand with virsh
        DomainInfo("spare", "u2", "shutoff", True, 512),  # defined, holds nothing
        DomainInfo("Domain-0", "u0", "running", True, 4096),  # Xen's own: outside memory_mib already
    ]
    reconcile()  # the domain watcher's periodic pass lists every domain anyway
    assert _used() == {"cpu1": 0, "cpu2": 768, "cpu3": 0}
    cpu2 = CpuServer.objects.get(name="cpu2")
    assert [(d["name"], d["memory_mib"]) for d in cpu2.foreign_domains] == [("handmade", 768), ("spare", 512)]
    with pytest.raises(ValidationError, match="cpu2 has 256 MiB free, the new VM needs 512 MiB"):
        _create_on("cpu2", "late", 512)
    capacity = {c.server.name: c for c in cluster_capacity().cpu}
    assert "768 MiB by domains the panel did not make" in capacity["cpu2"].memory_text
    servers = {s["name"]: s for s in admin_client.get("/api/cpu-servers/").json()["results"]}
    assert servers["cpu2"]["free_memory_mib"] == 256
    assert "handmade (running, 768 MiB), spare (shutoff, 512 MiB)" in admin_client.get(
        cpu2.get_absolute_url()).content.decode()
    out = StringIO()
    call_command("host", "show", "cpu2", "--json", stdout=out)
    shown = json.loads(out.getvalue())
    assert (shown["free_memory_mib"], shown["foreign_memory_mib"], len(shown["foreign_domains"])) == (256, 768, 2)
    # N+1 sees it too: with cpu3 out, nothing but cpu2's 256 MiB could take cpu1's guest.
    CpuServer.objects.filter(name="cpu3").update(state=HostState.MAINTENANCE)
    _guest("web", cpus["cpu1"], 600)
    assert [str(s) for s in n_plus_one_shortfalls()] == [
        "if cpu1 fails, no surviving CPU server has room for web (600 MiB)"]
    # Stopped by hand: the next pass gives the memory back.
    listings["fake:///cpu2"] = []
    reconcile()
    assert _used()["cpu2"] == 0 and not n_plus_one_shortfalls()


def _shortfalls_by_packing_every_server(cluster, move=None) -> list:
    """The N+1 check without its shortcut: every failed server's guests packed first-fit."""
    from vms.placement import Shortfall

    free, guests = dict(cluster.free), {pk: list(g) for pk, g in cluster.guests.items()}
    if move is not None and move.target in free:
        free[move.target] -= move.memory_mib
        guests[move.target].append((move.name, move.memory_mib))
        if move.source in free:
            free[move.source] += move.memory_mib
            guests[move.source] = [g for g in guests[move.source] if g[0] != move.name]
    found = []
    for failed, load in cluster.loads.items():
        room = sorted((mib for pk, mib in free.items() if pk != failed), reverse=True)
        homeless = []
        for name, memory in sorted(guests[failed], key=lambda g: (-g[1], g[0])):
            fit = next((i for i, mib in enumerate(room) if mib >= memory), None)
            if fit is None:
                homeless.append((name, memory))
            else:
                room[fit] -= memory
        if homeless:
            found.append(Shortfall(load.server.name, tuple(homeless)))
    return found


@pytest.mark.parametrize("seed", range(40))
def test_the_n_plus_one_shortcut_gives_the_answers_of_packing_every_server(seed):
    """The check skips packing a failed server whose guests all fit on the roomiest other one (first
    fit would put them all there); on random clusters, tight and roomy, with moves in and out, its
    answers are those of packing every server."""
    import random

    from vms.placement import Cluster, Load, Move

    rng = random.Random(seed)
    servers = [CpuServer(pk=n, name=f"cpu{n}", memory_mib=rng.choice([2048, 4096, 8192]), state=HostState.UP)
               for n in range(1, rng.randint(1, 7) + 1)]
    guests = {s.pk: [(f"vm{s.pk}-{i}", rng.choice([256, 512, 1024, 2048])) for i in range(rng.randint(0, 6))]
              for s in servers}
    loads = {s.pk: Load(s, guests_mib=sum(m for _n, m in guests[s.pk]), guests=len(guests[s.pk])) for s in servers}
    cluster = Cluster(loads, guests)
    moves = [None] + [Move("new", rng.choice([256, 1024, 4096]), rng.choice(servers).pk) for _ in range(3)]
    moves += [Move(g[0], g[1], rng.choice(servers).pk, pk) for pk, gs in guests.items() for g in gs[:1]]
    for move in moves:
        assert cluster.shortfalls(move) == _shortfalls_by_packing_every_server(cluster, move), move
