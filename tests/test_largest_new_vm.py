"""The largest new VM a CPU server can take and keep N+1 (vms/packing.py, `Cluster.largest_new_vms`):
computed in one pass with the size left open, it must be exactly what asking the allocator's own
check about every size gives, and what the binary search it replaced gave wherever that search was
sound (the check's answer never turning back from "breaks" to "keeps" as the size grows).

The clusters are built in memory (no database): the check only reads `Cluster`'s numbers."""
from __future__ import annotations

import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hosts.choices import HostState
from hosts.models import CpuServer
from vms.placement import NEW_VM, Cluster, Load, Move


def cluster_of(servers: list[tuple[int, list[int]]], *, down: int = 0) -> Cluster:
    """Up servers of (free MiB, guests' MiB), then `down` servers that are not up (their guests do not count)."""
    every, guests = {}, {}
    for pk, (free, sizes) in enumerate(servers, start=1):
        guests[pk] = [(f"vm{pk}-{i}", size) for i, size in enumerate(sizes)]
        server = CpuServer(pk=pk, name=f"cpu{pk}", memory_mib=free + sum(sizes), state=HostState.UP)
        every[pk] = Load(server, guests_mib=sum(sizes), guests=len(sizes))
    for pk in range(len(servers) + 1, len(servers) + 1 + down):
        every[pk] = Load(CpuServer(pk=pk, name=f"cpu{pk}", memory_mib=4096, state=HostState.DEAD), guests_mib=1024)
        guests[pk] = [(f"vm{pk}", 1024)]
    return Cluster(every, guests)


def breaks(cluster: Cluster, pk: int, mib: int) -> bool:
    return bool(cluster.shortfalls(Move(NEW_VM, mib, pk)))


def verdicts(cluster: Cluster, pk: int) -> list[bool]:
    """Does a new VM of 1, 2, ... MiB up to all the server's free memory break N+1?"""
    return [breaks(cluster, pk, mib) for mib in range(1, cluster.free[pk] + 1)]


def by_every_size(broken: list[bool]) -> int:
    """The definition: the largest size such that it and every smaller one keep N+1."""
    return broken.index(True) if True in broken else len(broken)


def by_binary_search(cluster: Cluster, pk: int) -> int:
    """What hosts/capacity.py computed before: a binary search over the check, which assumes that a
    size that keeps N+1 means every smaller one does too."""
    free_mib = max(cluster.free[pk], 0)
    if free_mib <= 0 or not breaks(cluster, pk, free_mib):
        return free_mib
    low, high = 0, free_mib - 1
    while low < high:
        middle = (low + high + 1) // 2
        if breaks(cluster, pk, middle):
            high = middle - 1
        else:
            low = middle
    return low


def check_against_references(cluster: Cluster) -> None:
    largest = cluster.largest_new_vms()
    assert set(largest) == set(cluster.loads)
    for pk in cluster.loads:
        broken = verdicts(cluster, pk)
        assert largest[pk] == by_every_size(broken), (pk, largest[pk], by_every_size(broken))
        if broken == sorted(broken):  # keeps up to some size, breaks above it: the search was sound
            assert largest[pk] == by_binary_search(cluster, pk)


servers = st.lists(st.tuples(st.integers(-8, 48), st.lists(st.integers(1, 24), max_size=7)), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(servers, st.integers(0, 1))
def test_the_largest_new_vm_is_what_asking_the_check_about_every_size_gives(servers, down):
    cluster = cluster_of(servers, down=down)
    assume(not cluster.shortfalls())  # the dashboard asks only while N+1 holds
    check_against_references(cluster)


def test_the_same_on_many_random_clusters_of_every_shape():
    """Seeded, beside hypothesis's search: tight and roomy clusters of up to 9 servers, guests of few
    sizes (as on a real site) and of many; roughly half of them hold N+1."""
    rng = random.Random(20261206)
    checked = 0
    for _ in range(600):
        sizes = rng.choice([[4, 8, 16], list(range(1, 30))])
        shape = [(rng.randint(-4, 60), [rng.choice(sizes) for _ in range(rng.randint(0, 8))])
                 for _ in range(rng.randint(1, 9))]
        cluster = cluster_of(shape)
        if not cluster.shortfalls():
            check_against_references(cluster)
            checked += 1
    assert checked > 200


def test_a_size_above_one_that_breaks_n_plus_one_is_not_offered():
    """First fit is not monotonic: here a new VM of 18 keeps N+1 while 13 to 17 break it (its own
    server's guests then land so that one no longer fits). The binary search could answer 18; the
    answer is 12, the largest size below which every size keeps N+1 too."""
    guests = [7, 11, 5, 5, 9, 9, 1, 8, 10, 5, 17]
    cluster = cluster_of([(36, guests), (33, []), (5, []), (19, []), (34, []), (15, [])])
    assert not cluster.shortfalls()
    assert [mib for mib in range(1, 37) if not breaks(cluster, 1, mib)] == [*range(1, 13), 18]
    assert by_binary_search(cluster, 1) == 18
    assert cluster.largest_new_vms()[1] == 12


def test_a_server_with_nothing_free_or_alone_takes_no_new_vm():
    assert cluster_of([(0, [4]), (40, [4])]).largest_new_vms()[1] == 0
    assert cluster_of([(-3, []), (40, [4])]).largest_new_vms()[1] == 0
    assert cluster_of([(40, [])]).largest_new_vms() == {1: 0}  # no other server would take it


def test_a_site_of_200_roomy_servers_is_answered_without_a_check_per_size():
    """Each server can take what the roomiest other one could restart: the sizes of the bench's site."""
    rng = random.Random(7)
    shape = [(rng.randint(400, 460) * 1024, [rng.choice([512, 1024, 2048]) for _ in range(50)]) for _ in range(200)]
    cluster = cluster_of(shape)
    largest = cluster.largest_new_vms()
    for pk in (1, 2, 100, 200):
        assert largest[pk] == by_binary_search(cluster, pk)
        assert not breaks(cluster, pk, largest[pk])
        assert largest[pk] == cluster.free[pk] or breaks(cluster, pk, largest[pk] + 1)


def test_a_tight_site_where_every_servers_guests_need_two_others_is_answered_too():
    """200 servers whose guests fit on no single other one: every failure packs, so a new VM on a
    server may be felt by any server whose packing reaches its room (the found-at-68-s case of this
    pass: each pair of servers packed once per range of sizes; now only the pairs that can feel it)."""
    rng = random.Random(3)
    shape = [(40 * 1024 + rng.randint(-2048, 2048), [rng.choice([1024, 2048]) for _ in range(40)]) for _ in range(200)]
    cluster = cluster_of(shape)
    assert not cluster.shortfalls()
    assert all(cluster.carried[pk] > max(cluster.free.values()) for pk in cluster.loads)
    largest = cluster.largest_new_vms()
    for pk in (1, 2, 100, 200):
        assert largest[pk] == by_binary_search(cluster, pk)
        assert not breaks(cluster, pk, largest[pk])
        assert largest[pk] == cluster.free[pk] or breaks(cluster, pk, largest[pk] + 1)
    assert any(largest[pk] < cluster.free[pk] for pk in cluster.loads)  # N+1 does bound some of them
