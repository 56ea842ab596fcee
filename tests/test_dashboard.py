"""The dashboard: servers' used / free numbers as placement counts them, the N+1 reserve as placement
decides it, running jobs and open incidents, each part also served alone for live updates."""
from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from ha.choices import IncidentKind, IncidentState
from ha.models import Incident
from hosts.capacity import cluster_capacity, mib_text, part_text
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.choices import JobState
from jobs.models import Job
from storage.models import AoEExport, Mirror
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.placement import Cluster, PlacementError, choose_cpu_server, cpu_candidates, n_plus_one_shortfalls

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def op_client(client):
    client.force_login(User.objects.create_user("op", password="op-password-1", is_staff=True))
    return client


def cpu(name: str, memory_mib: int, vcpus: int, state: str = HostState.UP) -> CpuServer:
    return CpuServer.objects.create(name=name, address=f"{name}.example", libvirt_uri="test:///default",
                                    memory_mib=memory_mib, vcpus=vcpus, state=state)


def disk(name: str, shelf: int, capacity_mib: int) -> DiskServer:
    return DiskServer.objects.create(name=name, address=f"{name}.example", aoe_shelf=shelf, capacity_mib=capacity_mib)


def vm(name: str, server: CpuServer | None, memory_mib: int, vcpus: int = 1, disks: tuple = (), disk_mib: int = 0,
       state: str = VmState.RUNNING) -> VirtualMachine:
    machine = VirtualMachine.objects.create(name=name, cpu_server=server, memory_mib=memory_mib, vcpus=vcpus,
                                            disk_mib=disk_mib or 64, state=state)
    if disks:
        mirror = Mirror.objects.create(vm=machine)
        slot = VirtualMachine.objects.count()
        for leg, server_ in enumerate(disks):
            AoEExport.objects.create(disk_server=server_, mirror=mirror, leg=leg, shelf=server_.aoe_shelf, slot=slot,
                                     backing_path=f"/v/{name}-{leg}.img", size_mib=disk_mib)
    return machine


@pytest.fixture
def cluster():
    """Two CPU servers up, one dead (its guest still recorded there), two disk servers."""
    cpu1, cpu2, cpu3 = cpu("cpu1", 8192, 4), cpu("cpu2", 8192, 8), cpu("cpu3", 4096, 4, HostState.DEAD)
    disk1, disk2 = disk("disk1", 1, 10240), disk("disk2", 2, 512)
    vm("alpha", cpu1, 2048, 2, (disk1,), 2048)
    vm("bravo", cpu1, 1024, 1, (disk1,), 1024, state=VmState.STOPPED)  # stopped: its memory stays reserved
    vm("charlie", cpu2, 4096, 4)
    vm("delta", cpu3, 1024, 2)
    return {"cpu1": cpu1, "cpu2": cpu2, "cpu3": cpu3, "disk1": disk1, "disk2": disk2}


def server_block(html: str, attr: str, name: str) -> str:
    """The HTML of one server's block: from its marker to the next server's or the section's end."""
    start = html.index(f'{attr}="{name}"')
    ends = [i for i in (html.find(f"{attr}=", start + 1), html.find("</section>", start)) if i != -1]
    return html[start:min(ends)]


def data(block: str, key: str) -> int:
    return int(re.search(rf'data-{key}="(-?\d+)"', block).group(1))


def test_cpu_numbers_match_placement(cluster, op_client):
    html = op_client.get("/").content.decode()
    for candidate in cpu_candidates():
        block = server_block(html, "data-cpu-server", candidate.server.name)
        assert data(block, "used-mib") == candidate.used_mib
        assert data(block, "free-mib") == candidate.free_mib
    # By hand: cpu1 carries alpha and bravo (the stopped one counts), cpu2 charlie.
    cpu1 = server_block(html, "data-cpu-server", "cpu1")
    assert (data(cpu1, "used-mib"), data(cpu1, "free-mib"), data(cpu1, "vcpus-used")) == (3072, 5120, 3)
    assert "3.0 of 8.0 GiB used" in cpu1 and "3 of 4 vCPUs allocated to guests, 1 unallocated" in cpu1
    # The dead server is shown with what it carries, and as not taking guests.
    cpu3 = server_block(html, "data-cpu-server", "cpu3")
    assert data(cpu3, "used-mib") == 1024 and data(cpu3, "reserve-mib") == 0
    assert "not taking guests (dead)" in cpu3 and 'data-host-state="cpu3" data-host-kind="cpu">Dead' in cpu3


def test_n_plus_one_reserve_is_placements_own_verdict(cluster, op_client):
    html = op_client.get("/").content.decode()
    expected = {}
    for name in ("cpu1", "cpu2"):
        block = server_block(html, "data-cpu-server", name)
        free, reserve = data(block, "free-mib"), data(block, "reserve-mib")
        largest = free - reserve
        expected[name] = (largest, reserve)
        server = cluster[name]
        # Placement takes a VM of exactly the largest size there and refuses one MiB more for N+1.
        placement = choose_cpu_server(largest, server)
        assert (placement.server, placement.shortfalls) == (server, ())
        with pytest.raises(PlacementError, match=re.escape("breaks N+1")):
            choose_cpu_server(largest + 1, server)
        segments = re.findall(r'data-segment="(\w+)" data-amount="(\d+)"', block)
        assert segments[:2] == [("used", str(data(block, "used-mib"))), ("reserve", str(reserve))]
    # By hand: whichever of cpu1 and cpu2 fails, its guests must fit on the other, so each can take
    # 1 GiB more (cpu1: 3 GiB of guests into cpu2's 4 GiB free; cpu2: 4 GiB into cpu1's 5 GiB free).
    assert expected == {"cpu1": (1024, 4096), "cpu2": (1024, 3072)}
    assert "4.0 GiB kept free for N+1; 1.0 GiB free for new guests" in server_block(html, "data-cpu-server", "cpu1")
    assert 'aria-label="Memory: 3.0 of 8.0 GiB used; 4.0 GiB kept free for N+1; 1.0 GiB free for new guests"' in html


def test_broken_n_plus_one_is_said_and_reserves_everything(op_client):
    lone = cpu("lone", 4096, 2)
    vm("echo", lone, 1024)
    shortfalls = n_plus_one_shortfalls()
    assert shortfalls
    html = op_client.get("/?fragment=capacity").content.decode()
    assert "N+1 does not hold" in html and str(shortfalls[0]) in html
    block = server_block(html, "data-cpu-server", "lone")
    assert data(block, "reserve-mib") == data(block, "free-mib") == 3072
    assert Cluster.load().largest_new_vms() == {lone.pk: 0}  # no other server would restart a new VM


def test_disk_numbers_are_allocated_volumes_against_capacity(cluster, op_client):
    html = op_client.get("/").content.decode()
    disk1 = server_block(html, "data-disk-server", "disk1")
    assert (data(disk1, "used-mib"), data(disk1, "free-mib")) == (3072, 10240 - 3072)
    assert "3.0 of 10.0 GiB allocated to volumes; 7.0 GiB free" in disk1 and "2 exports" in disk1
    disk2 = server_block(html, "data-disk-server", "disk2")
    assert (data(disk2, "used-mib"), data(disk2, "free-mib")) == (0, 512)
    assert "0 of 512 MiB allocated" in disk2


def test_capacity_fragment_is_the_pages_own_part_and_follows_changes(cluster, op_client):
    page = op_client.get("/").content.decode()
    response = op_client.get("/?fragment=capacity")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    fragment = response.content.decode()
    assert "<html" not in fragment and fragment.strip() in page  # one template, one source of truth
    vm("foxtrot", cluster["cpu2"], 512, 2)
    after = server_block(op_client.get("/?fragment=capacity").content.decode(), "data-cpu-server", "cpu2")
    assert (data(after, "used-mib"), data(after, "vcpus-used")) == (4608, 6)


def test_jobs_fragment_shows_active_jobs_with_progress(cluster, op_client):
    running = Job.objects.create(kind="vm.create", state=JobState.RUNNING, target_name="alpha", step=2, total_steps=4)
    queued = Job.objects.create(kind="cluster.verify", state=JobState.QUEUED)
    done = Job.objects.create(kind="vm.delete", state=JobState.SUCCEEDED, target_name="zulu")
    html = op_client.get("/?fragment=jobs").content.decode()
    assert f'data-job-live="{running.pk}"' in html and f'data-job-live="{queued.pk}"' in html
    running_part, finished_part = html.split("Recently finished")
    assert f'data-job-live="{done.pk}"' not in html and "zulu" not in running_part and "zulu" in finished_part
    assert running.percent == 25 and 'aria-valuenow="25"' in running_part and "2 of 4" in running_part
    Job.objects.filter(pk__in=[running.pk, queued.pk]).update(state=JobState.SUCCEEDED)
    html = op_client.get("/?fragment=jobs").content.decode()
    assert "No job is running." in html and "data-job-live" not in html


def test_incidents_fragment_shows_open_incidents_only(cluster, op_client):
    opened = Incident.objects.create(kind=IncidentKind.CPU_SERVER_FAILED, host_name="cpu3", cpu_server=cluster["cpu3"],
                                     summary="cpu3 missed 3 checks")
    closed = Incident.objects.create(kind=IncidentKind.CPU_SERVER_FAILED, host_name="cpu2", summary="old",
                                     state=IncidentState.CLOSED)
    html = op_client.get("/?fragment=incidents").content.decode()
    assert f'data-incident-state="{opened.pk}"' in html and f'data-incident-state="{closed.pk}"' not in html
    assert "Exposed guests" in html


def test_fragments_are_for_operators_only(cluster, client):
    assert client.get("/?fragment=capacity").status_code == 302  # to the login page
    client.force_login(User.objects.create_user("tenant-user"))
    for url in ("/?fragment=capacity", "/?fragment=jobs", "/"):
        response = client.get(url)
        assert response.status_code in (302, 404) and b"data-cpu-server" not in response.content


def test_unknown_fragment_is_not_found(op_client):
    assert op_client.get("/?fragment=secrets").status_code == 404


def test_empty_cluster_says_how_to_start(op_client):
    html = op_client.get("/").content.decode()
    assert "No CPU servers yet" in html and "No disk servers yet" in html
    assert "No job is running." in html and "No open incident." in html
    assert "js/dashboard.js" in html and 'data-fragment="capacity"' in html


def test_overcommitted_vcpus_are_said(op_client):
    small = cpu("small", 4096, 2)
    vm("golf", small, 512, 3)
    html = op_client.get("/?fragment=capacity").content.decode()
    assert "3 of 2 vCPUs allocated to guests, overcommitted 150 %" in html


def test_capacity_numbers_match_for_every_server(cluster):
    """The module the page uses, against placement, server by server."""
    capacity = cluster_capacity()
    candidates = {c.server.pk: c for c in cpu_candidates()}
    for c in capacity.cpu:
        if c.server.pk in candidates:
            assert c.used_mib == candidates[c.server.pk].used_mib and c.free_mib == candidates[c.server.pk].free_mib
            assert c.reserve_mib + c.usable_mib == c.free_mib
        else:
            assert not c.takes_guests and c.server.state == HostState.DEAD
    assert {d.server.name: d.used_mib for d in capacity.disk} == {
        s.name: s.used_mib for s in DiskServer.objects.all()}


@pytest.mark.parametrize(("mib", "text"), [(0, "0 MiB"), (512, "512 MiB"), (1536, "1.5 GiB"),
                                            (3 * 1024 * 1024, "3.0 TiB")])
def test_sizes_read_naturally(mib, text):
    assert mib_text(mib) == text


def test_parts_share_the_totals_unit():
    assert part_text(512, 8192) == "0.5 of 8.0 GiB"
    assert part_text(100, 512) == "100 of 512 MiB"


def test_placement_refuses_what_the_dashboard_shows_as_reserve(cluster):
    """What the bar calls reserve is what a creation is refused for (without the operator's override)."""
    c = next(c for c in cluster_capacity().cpu if c.server.name == "cpu2")
    assert c.reserve_mib > 0
    with pytest.raises((PlacementError, ValidationError)):
        choose_cpu_server(c.usable_mib + 1, c.server)
    placement = choose_cpu_server(c.usable_mib + 1, c.server, allow_n_plus_one_break=True)
    assert placement.server == c.server and placement.shortfalls


def test_a_large_sites_dashboard_shows_the_servers_that_need_a_look_and_counts_the_rest(op_client):
    """Past 24 CPU servers the dashboard draws those not up, then the fullest; the rest are counted
    and linked to the Hosts page, which lists every one."""
    servers = [cpu(f"cpu{n:02d}", 4096, 4) for n in range(1, 31)]
    cpu("dead1", 4096, 4, HostState.DEAD)
    full = servers[7]
    VirtualMachine.objects.create(name="big", vcpus=1, memory_mib=3000, disk_mib=64, cpu_server=full,
                                  state=VmState.RUNNING)
    page = op_client.get("/").content.decode()
    shown = re.findall(r'data-cpu-server="([^"]+)"', page)
    assert len(shown) == 24 and "dead1" in shown and full.name in shown
    assert shown == sorted(shown)
    assert re.search(r"7 more CPU servers not shown here", page)
    hosts = op_client.get("/hosts/").content.decode()
    assert all(f">{s.name}<" in hosts for s in servers)
