"""Anti-affinity (vms/affinity.py, the allocator's rule in vms/placement.py): members of a group are
never placed, migrated, evacuated or restarted onto a CPU server that runs another member while a
server without one has room; what is held for jobs under way counts; when the rule has to give (no
room apart, or a server an operator chose) the placement says so; cluster verify reports a group
broken where it need not be. Failover restarts are in tests/test_failover_unit.py."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from ha.maintenance import plan_evacuation
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.verify import compare
from hosts.verify_collect import Reality, load_inventory
from jobs import runner
from jobs.choices import JobState
from jobs.models import Job
from tenants.services import add_user, create_tenant
from vms.affinity import create_group, crowded, delete_group, set_vm_groups, sharing
from vms.choices import VmState
from vms.job_params import VmCreateParams, VmMigrateParams
from vms.migration import migrate_vm
from vms.models import AntiAffinityGroup, VirtualMachine
from vms.services import VmRequest, create_vm
from vms.steps import log_reservation


def _cluster(servers: int = 3, memory_mib: int = 1024) -> dict[str, CpuServer]:
    for i in (1, 2):
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=10**6)
    return {f"cpu{i}": CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}",
                                                libvirt_uri=f"fake:///cpu{i}", memory_mib=memory_mib, vcpus=4)
            for i in range(1, servers + 1)}


def _guest(name: str, server: CpuServer, memory_mib: int, *groups: AntiAffinityGroup, tenant=None) -> VirtualMachine:
    vm = VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=32, cpu_server=server,
                                       state=VmState.RUNNING, tenant=tenant)
    vm.anti_affinity_groups.set(groups)
    return vm


def _create(name: str, memory_mib: int = 128, groups: tuple[str, ...] = ("web",), **fields) -> Job:
    return create_vm(VmRequest(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=32, anti_affinity_groups=groups,
                               **fields))


def _host_of(name: str) -> str:
    return VirtualMachine.objects.get(name=name).cpu_server.name


# --- creates ----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_new_member_goes_where_no_other_member_is_even_where_another_server_has_more_room():
    cpus = _cluster()
    web = create_group("web")
    _guest("web1", cpus["cpu1"], 128, web)
    _guest("busy2", cpus["cpu2"], 512)
    _guest("busy3", cpus["cpu3"], 640)
    # Without a group the new VM would take cpu1, the server with most free memory.
    assert _host_of(create_vm(VmRequest(name="loner", vcpus=1, memory_mib=64, disk_mib=32)).vm.name) == "cpu1"
    job = _create("web2")
    assert _host_of("web2") == "cpu2"  # the roomiest of the servers apart from web1
    params = VmCreateParams.of(job)
    assert params.anti_affinity_groups == ["web"] and params.anti_affinity_broken == []
    assert list(VirtualMachine.objects.get(name="web2").anti_affinity_groups.all()) == [web]
    _create("web3")
    assert _host_of("web3") == "cpu3"


@pytest.mark.django_db
def test_with_no_room_apart_a_create_goes_next_to_a_member_and_its_job_says_so():
    cpus = _cluster()
    web = create_group("web")
    _guest("web1", cpus["cpu1"], 128, web)
    _guest("full2", cpus["cpu2"], 1000)
    _guest("full3", cpus["cpu3"], 1000)
    job = _create("web2", allow_n_plus_one_break=True)  # a cluster this full has no N+1 to keep
    assert _host_of("web2") == "cpu1"
    broken = "broke anti-affinity group web: web1 and web2 both on cpu1"
    assert VmCreateParams.of(job).anti_affinity_broken == [broken]
    log_reservation(runner.JobContext(job))  # the first step writes down what the request was given
    assert job.log.filter(level="warning", message=broken).exists()


@pytest.mark.django_db
def test_the_members_spread_evenly_when_the_group_has_more_members_than_servers():
    cpus = _cluster(servers=2)
    web = create_group("web")
    _guest("web1", cpus["cpu1"], 128, web)
    _guest("web2", cpus["cpu1"], 128, web)
    _guest("web3", cpus["cpu2"], 128, web)
    # Both break the group: cpu1 has more free memory, but cpu2 puts it beside one member, not two.
    _guest("ballast", cpus["cpu2"], 256)
    _create("web4")
    assert _host_of("web4") == "cpu2"


@pytest.mark.django_db
def test_a_create_keeps_n_plus_one_before_anti_affinity_unless_the_operator_overrides():
    """cpu3 carries a 896 MiB guest that only cpu2 could take if cpu3 failed. web2 on cpu2 (apart) would
    take that room: without the override a create may not break N+1, so it goes next to web1 on cpu1,
    warned; with the override, anti-affinity wins and N+1 is broken on purpose, recorded."""
    cpus = _cluster()
    web = create_group("web")
    _guest("web1", cpus["cpu1"], 128, web)
    _guest("small1", cpus["cpu1"], 64)
    _guest("small2", cpus["cpu2"], 64)
    _guest("web3", cpus["cpu3"], 128, web)
    _guest("big", cpus["cpu3"], 896)
    kept = _create("web2")
    assert _host_of("web2") == "cpu1"
    assert VmCreateParams.of(kept).anti_affinity_broken == ["broke anti-affinity group web: web1 and web2 both on cpu1"]
    assert VmCreateParams.of(kept).n_plus_one_override == []
    overridden = _create("web4", allow_n_plus_one_break=True)
    assert _host_of("web4") == "cpu2"
    assert VmCreateParams.of(overridden).anti_affinity_broken == []
    assert VmCreateParams.of(overridden).n_plus_one_override == [
        "if cpu3 fails, no surviving CPU server has room for big (896 MiB)"]


@pytest.mark.django_db
def test_an_operator_may_put_a_member_on_a_chosen_server_next_to_another_and_is_warned():
    cpus = _cluster()
    create_group("web")
    _create("web1", cpu_server="cpu2")
    job = _create("web2", cpu_server="cpu2")
    assert _host_of("web2") == "cpu2"
    assert VmCreateParams.of(job).anti_affinity_broken == ["broke anti-affinity group web: web1 and web2 both on cpu2"]
    assert cpus["cpu2"].vms.count() == 2


@pytest.mark.django_db
def test_a_member_being_migrated_counts_on_both_ends_until_its_job_ends():
    cpus = _cluster()
    web = create_group("web")
    _guest("web1", cpus["cpu1"], 128, web)
    migration = migrate_vm("web1", "cpu2")  # queued: web1 is held on cpu2 and still recorded on cpu1
    _guest("ballast", cpus["cpu3"], 512)  # cpu3 has the least room, and is the only server apart
    _create("web2")
    assert _host_of("web2") == "cpu3"
    Job.objects.filter(pk=migration.pk).update(state=JobState.FAILED)  # its hold on cpu2 ends with it
    _create("web3", memory_mib=64)
    assert _host_of("web3") == "cpu2"


@pytest.mark.django_db(transaction=True)
def test_members_created_at_once_never_land_on_one_server():
    """Creates serialise on the allocator's lock, and each sees the VMs the ones before it wrote: four
    members of one group created at once from separate connections end up on four servers, although
    the most free memory would put every one of them on cpu1."""
    cpus = _cluster(servers=4)
    create_group("web")
    for number, server in ((2, "cpu2"), (3, "cpu3"), (4, "cpu4")):
        _guest(f"ballast{number}", cpus[server], 64 * number)
    barrier = threading.Barrier(4)

    def attempt(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            _create(f"web{n}")
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(attempt, range(1, 5)))
    assert sorted(_host_of(f"web{n}") for n in range(1, 5)) == ["cpu1", "cpu2", "cpu3", "cpu4"]


# --- migrations ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_migration_without_a_target_goes_apart_and_one_to_a_chosen_server_is_allowed_and_warned():
    cpus = _cluster()
    web = create_group("web")
    _guest("web1", cpus["cpu1"], 128, web)
    _guest("web2", cpus["cpu2"], 128, web)
    _guest("ballast", cpus["cpu3"], 700)
    chosen = migrate_vm("web2", "cpu1")
    assert VmMigrateParams.of(chosen).anti_affinity_broken == [
        "broke anti-affinity group web: web1 and web2 both on cpu1"]
    Job.objects.filter(pk=chosen.pk).update(state=JobState.SUCCEEDED)
    automatic = migrate_vm("web2")
    assert VmMigrateParams.of(automatic).target == "cpu3"  # the least free memory, but no member
    assert VmMigrateParams.of(automatic).anti_affinity_broken == []


# --- evacuation ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_evacuation_plan_keeps_members_apart_counting_the_moves_it_planned():
    cpus = _cluster(servers=4)
    web = create_group("web")
    _guest("web1", cpus["cpu2"], 256, web)
    _guest("web2", cpus["cpu2"], 128, web)
    _guest("web3", cpus["cpu4"], 128, web)
    _guest("ballast", cpus["cpu3"], 100)
    plan = plan_evacuation(cpus["cpu2"])
    # web1 (largest first) takes cpu1, the roomiest; web2 then avoids cpu1 (planned) and cpu4 (web3).
    assert [(m.vm, m.target) for m in plan.moves] == [("web1", "cpu1"), ("web2", "cpu3")]
    assert plan.anti_affinity == []


@pytest.mark.django_db
def test_an_evacuation_with_one_server_left_moves_the_members_together_and_says_so():
    cpus = _cluster()
    CpuServer.objects.filter(name="cpu3").update(state=HostState.MAINTENANCE)
    web = create_group("web")
    _guest("web1", cpus["cpu2"], 256, web)
    _guest("web2", cpus["cpu2"], 128, web)
    plan = plan_evacuation(cpus["cpu2"])
    assert [(m.vm, m.target) for m in plan.moves] == [("web1", "cpu1"), ("web2", "cpu1")]
    assert plan.anti_affinity == ["broke anti-affinity group web: web1 and web2 both on cpu1 (no other CPU server "
                                  "without a member of the group has room)"]


# --- memberships, tenants ----------------------------------------------------------------------

@pytest.mark.django_db
def test_group_names_are_a_tenants_own_and_a_tenant_groups_only_its_own_vms(django_user_model):
    cpus = _cluster()
    acme, globex = create_tenant("acme"), create_tenant("globex")
    alice, bob = add_user(acme, "alice"), add_user(globex, "bob")
    mine = create_group("web", user=alice)
    theirs = create_group("web", user=bob, tenant="globex")
    operators = create_group("web")
    assert (mine.tenant, theirs.tenant, operators.tenant) == (acme, globex, None)
    with pytest.raises(ValidationError, match="acme has a group named 'web' already"):
        create_group("web", user=alice)
    with pytest.raises(ValidationError, match="no tenant named 'globex'"):
        create_group("db", user=alice, tenant="globex")
    assert list(AntiAffinityGroup.objects.visible_to(alice)) == [mine]
    _guest("shop", cpus["cpu1"], 128, tenant=acme)
    _guest("rival", cpus["cpu2"], 128, tenant=globex)
    set_vm_groups("shop", ["web"], alice)
    assert list(VirtualMachine.objects.get(name="shop").anti_affinity_groups.all()) == [mine]  # acme's "web"
    with pytest.raises(ValidationError, match="no VM named 'rival'"):
        set_vm_groups("rival", ["web"], alice)
    with pytest.raises(ValidationError, match="acme has no anti-affinity group named 'db'"):
        set_vm_groups("shop", ["db"], alice)
    # An operator's group is the operators': a tenant's VM cannot join it, even through an operator.
    create_group("ops-only")
    with pytest.raises(ValidationError, match="acme has no anti-affinity group named 'ops-only'"):
        set_vm_groups("shop", ["ops-only"])
    # A tenant that may not create VMs may not arrange their placement either.
    acme.may_create_vms = False
    acme.save()
    alice = django_user_model.objects.get(pk=alice.pk)
    with pytest.raises(ValidationError, match="may not manage anti-affinity groups"):
        set_vm_groups("shop", [], alice)
    with pytest.raises(ValidationError, match="may not manage anti-affinity groups"):
        delete_group(mine, alice)


@pytest.mark.django_db
def test_joining_a_group_moves_nothing_and_says_whom_the_vm_shares_its_server_with():
    cpus = _cluster()
    create_group("web")
    create_group("db")
    _guest("web1", cpus["cpu1"], 128)
    _guest("web2", cpus["cpu1"], 128)
    _guest("db1", cpus["cpu2"], 128)
    assert set_vm_groups("web1", ["web"]) == []
    shared = set_vm_groups("web2", ["web", "db"])
    assert [str(b) for b in shared] == ["broke anti-affinity group web: web1 and web2 both on cpu1"]
    assert shared[0].together(server_shown=False) == "web1 and web2 both on one CPU server"
    assert _host_of("web2") == "cpu1"
    assert sharing(VirtualMachine.objects.get(name="db1")) == []
    set_vm_groups("web2", [])
    assert sharing(VirtualMachine.objects.get(name="web1")) == []


@pytest.mark.django_db
def test_removing_a_group_frees_its_members_from_its_rule():
    cpus = _cluster()
    web = create_group("web")
    _guest("web1", cpus["cpu1"], 128, web)
    _guest("web2", cpus["cpu2"], 128, web)
    _guest("ballast", cpus["cpu3"], 512)
    assert VmMigrateParams.of(migrate_vm("web2")).target == "cpu3"
    Job.objects.update(state=JobState.CANCELLED)
    delete_group(web)
    assert not AntiAffinityGroup.objects.exists() and _host_of("web1") == "cpu1"
    assert VmMigrateParams.of(migrate_vm("web2")).target == "cpu1"  # the most free memory, beside web1


# --- cluster verify -----------------------------------------------------------------------------

@pytest.mark.django_db
def test_verify_reports_a_group_broken_while_another_server_has_room_and_nothing_else():
    cpus = _cluster()
    acme = create_tenant("acme")
    web = create_group("web", tenant="acme")
    _guest("web1", cpus["cpu1"], 128, web, tenant=acme)
    _guest("web2", cpus["cpu1"], 256, web, tenant=acme)
    _guest("web3", cpus["cpu2"], 128, web, tenant=acme)
    _guest("ballast", cpus["cpu3"], 800)
    findings = [f for f in compare(load_inventory(), Reality()) if f.code == "anti-affinity"]
    assert [(f.severity, f.subject, f.message) for f in findings] == [(
        "warning", "acme/web", "web1 and web2 of anti-affinity group acme/web both on cpu1; cpu3 runs none of them "
                               "and has room for web1 (128 MiB)")]
    assert "Migrate web1 without a target" in findings[0].meaning
    # No room apart: nothing to do about it, nothing reported.
    VirtualMachine.objects.filter(name="ballast").update(memory_mib=1000)
    assert crowded() == []
    # A member a job is working on may be moving apart: not reported meanwhile.
    VirtualMachine.objects.filter(name="ballast").update(memory_mib=100)
    assert [c.vms for c in crowded()] == [("web1", "web2")]
    assert crowded(busy={"web1"}) == []


@pytest.mark.django_db
def test_verify_says_nothing_when_the_group_has_more_members_than_servers_can_keep_apart():
    cpus = _cluster(servers=2)
    web = create_group("web")
    for name, server in (("web1", "cpu1"), ("web2", "cpu1"), ("web3", "cpu2")):
        _guest(name, cpus[server], 128, web)
    assert crowded() == []
