"""Cluster verify without the lab: compare() on built inventories and realities, fix validation,
the findings page and the command's exit status (against hosts that refuse connections at once)."""
from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse

from drivers.aoe import AoEAnswer
from drivers.hypervisor import DomainInfo
from drivers.vblade import RunningExport
from hosts.choices import HostState
from hosts.fixes import FIXES, apply_fix, validate_fix
from hosts.models import CpuServer, DiskServer
from hosts.verify import (
    CODES,
    Finding,
    Fix,
    compare,
    result_text,
    start_verify,
)
from hosts.verify_collect import (
    HostRecord,
    Inventory,
    LegRecord,
    Reality,
    Unreachable,
    VmRecord,
    load_inventory,
    settle,
)
from jobs.models import Job
from vms.models import VirtualMachine
from vms.placement import Shortfall, server_load
from vms.services import VmRequest, create_vm

UUID = "6f1c1d52-6a0e-4a8e-9a53-0d6c3f1f2b10"
PATH1, PATH2 = "/srv/xenaoe/volumes/web-e1.0.img", "/srv/xenaoe/volumes/web-e2.0.img"
MAC1, MAC2 = "02:0a:d5:01:00:0b", "02:0a:d5:01:00:0c"
SECTORS = 32 * 2048
LEGS = (LegRecord("disk1", 1, 0, PATH1, 32), LegRecord("disk2", 2, 0, PATH2, 32))


def vm(name: str = "web", state: str = "running", cpu: str | None = "cpu1", busy: bool = False) -> VmRecord:
    return VmRecord(name, state, cpu, UUID, LEGS if name == "web" else (), busy)


def inventory(*vms: VmRecord, shortfalls: tuple[Shortfall, ...] = (), cpu2_state: str = HostState.UP) -> Inventory:
    return Inventory(
        cpu_servers=(HostRecord("cpu1"), HostRecord("cpu2", cpu2_state)),
        disk_servers=(HostRecord("disk1"), HostRecord("disk2")),
        vms=vms or (vm(),), reserved=frozenset({("disk1", 1, 0), ("disk2", 2, 0)}), shortfalls=shortfalls,
    )


def dom(name: str = "xa-web", state: str = "running", uuid: str = UUID, persistent: bool = True) -> DomainInfo:
    return DomainInfo(name, uuid, state, persistent)


def answer(shelf: int, slot: int, mac: str, sectors: int | None = SECTORS) -> AoEAnswer:
    return AoEAnswer(shelf, slot, mac, 16, 0x4019, sectors)


def clean() -> Reality:
    """The hosts exactly as the default inventory says."""
    san = [answer(1, 0, MAC1), answer(2, 0, MAC2)]
    return Reality(
        # Xen's control domain is listed like a guest; it is the host's own, not a foreign domain.
        domains={"cpu1": [dom(), dom("Domain-0", uuid="00000000-0000-0000-0000-000000000000")], "cpu2": []},
        exports={"disk1": [RunningExport(1, 0, "san0", PATH1, 101, ())],
                 "disk2": [RunningExport(2, 0, "san0", PATH2, 102, ())]},
        missing_volumes={"disk1": set(), "disk2": set()},
        san={"cpu1": list(san), "cpu2": list(san)},
    )


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def test_a_cluster_that_matches_the_database_has_no_findings():
    assert compare(inventory(), clean()) == []
    assert result_text([]) == "no differences"


def test_a_domain_on_two_hosts_is_critical_listed_first_and_only_the_unexpected_copy_is_forced_off():
    real = clean()
    real.domains["cpu2"] = [dom(), dom("xa-ghost")]
    real.exports["disk1"].append(RunningExport(1, 9, "san0", "/srv/x.img", 103, ()))
    findings = compare(inventory(shortfalls=(Shortfall("cpu1", (("web", 64),)),)), real)
    first = findings[0]
    assert (first.code, first.severity, first.subject) == ("domain-on-two-hosts", "critical", "web")
    assert "cpu1 (where the panel expects it) and on cpu2" in first.message
    assert first.fix == Fix("destroy-domain", {"cpu_server": "cpu2", "domain": "xa-web"}, first.fix.label)
    assert "keep the one on cpu1" in first.fix.label
    assert codes(findings).count("domain-on-two-hosts") == 1  # never both copies
    assert set(codes(findings[1:])) >= {"unknown-domain", "unknown-export", "n-plus-one"}
    assert [f.severity for f in findings] == sorted((f.severity for f in findings),
                                                    key=["critical", "error", "warning"].index)
    assert result_text(findings).endswith("(1 critical, 1 error, 2 warning)")


def test_two_copies_neither_where_the_panel_expects_get_no_fix():
    real = clean()
    real.domains = {"cpu1": [], "cpu2": [dom()], "cpu3": [dom("xa-web", "paused")]}
    findings = compare(inventory(), real)
    assert codes(findings) == ["domain-on-two-hosts"]
    assert findings[0].fix is None and "decide by hand" in findings[0].meaning


def test_a_stray_panel_domain_is_reported_with_a_fix():
    real = clean()
    real.domains["cpu2"] = [dom("xa-ghost", uuid="x"), dom("xa-old", "shutoff", uuid="y")]
    findings = {f.subject: f for f in compare(inventory(), real)}
    assert set(findings) == {"xa-ghost", "xa-old"}
    assert findings["xa-ghost"].severity == "error"
    assert findings["xa-ghost"].fix.code == "destroy-domain"
    assert findings["xa-ghost"].fix.label == "Force off the stray domain xa-ghost on cpu2"
    assert (findings["xa-old"].severity, findings["xa-old"].fix.code) == ("warning", "undefine-domain")


def test_a_domain_the_panel_did_not_make_is_a_warning_with_no_fix():
    real = clean()
    real.domains["cpu2"] = [DomainInfo("handmade", "h", "running", True, 512),
                            DomainInfo("spare", "s", "shutoff", True, 256)]
    findings = compare(inventory(), real)
    assert [(f.code, f.severity, f.subject, f.fix) for f in findings] == [
        ("foreign-domain", "warning", "handmade", None), ("foreign-domain", "warning", "spare", None)]
    assert findings[0].message == "handmade is running on cpu2 and holds 512 MiB, but the panel did not make it"
    assert "counts as used on cpu2" in findings[0].meaning
    assert findings[1].message == "spare is defined (shutoff) on cpu2, but the panel did not make it"
    assert result_text(findings) == "2 differences (2 warning)"  # cluster verify exits 1 on these


def test_domain_state_against_the_vm_state():
    real = clean()
    real.domains["cpu1"] = [dom(state="shutoff")]
    [down] = compare(inventory(), real)
    assert (down.code, down.fix.code, down.fix.args) == ("domain-not-running", "start-domain", {"vm": "web"})
    assert compare(inventory(vm(state="stopped")), real) == []
    real.domains["cpu1"] = [dom(state="running")]
    [up] = compare(inventory(vm(state="stopped")), real)
    assert (up.code, up.fix.code) == ("domain-not-stopped", "mark-vm-running")
    real.domains["cpu1"] = [dom(state="paused", persistent=False)]
    assert codes(compare(inventory(), real)) == ["domain-state", "domain-transient"]
    real.domains["cpu1"] = [dom(uuid="00000000-0000-0000-0000-000000000001")]
    assert codes(compare(inventory(), real)) == ["domain-uuid-mismatch"]


def test_missing_domain_and_a_stale_definition_elsewhere():
    real = clean()
    real.domains = {"cpu1": [], "cpu2": [dom(state="shutoff")]}
    findings = compare(inventory(), real)
    assert codes(findings) == ["domain-missing", "domain-defined-elsewhere"]
    assert findings[1].fix.args == {"cpu_server": "cpu2", "domain": "xa-web"}


def test_a_guest_running_elsewhere_is_recorded_there_only_when_every_cpu_server_answered():
    real = clean()
    real.domains = {"cpu1": [], "cpu2": [dom()]}
    [moved] = compare(inventory(), real)
    assert (moved.code, moved.fix.code, moved.fix.args) == ("vm-on-wrong-host", "record-vm-host",
                                                            {"vm": "web", "cpu_server": "cpu2"})
    del real.domains["cpu1"]
    real.unreachable.append(Unreachable("cpu1", "libvirt", "connection refused"))
    findings = compare(inventory(), real)
    assert codes(findings) == ["host-unreachable", "vm-on-wrong-host"]
    assert findings[1].fix is None and "two copies" in findings[1].meaning


def test_an_unreachable_host_is_a_finding_and_its_part_is_not_guessed():
    real = clean()
    del real.domains["cpu1"], real.exports["disk1"], real.missing_volumes["disk1"]
    real.unreachable += [Unreachable("cpu1", "libvirt", "timed out"), Unreachable("disk1", "exports", "SSH failed")]
    findings = compare(inventory(), real)
    assert codes(findings) == ["host-unreachable", "host-unreachable"]
    assert findings[0].message.startswith("cpu1 unreachable (libvirt): timed out")


def test_a_host_the_database_calls_dead_may_be_silent():
    real = clean()
    del real.domains["cpu2"], real.san["cpu2"]
    real.unreachable.append(Unreachable("cpu2", "libvirt", "no route to host"))
    assert compare(inventory(cpu2_state=HostState.DEAD), real) == []
    assert codes(compare(inventory(), real)) == ["host-unreachable"]


def test_a_stopped_export_proposes_starting_it_unless_its_volume_is_gone():
    real = clean()
    real.exports["disk1"] = []
    real.san = {cpu: [answer(2, 0, MAC2)] for cpu in ("cpu1", "cpu2")}
    [stopped] = compare(inventory(), real)
    assert stopped.code == "export-not-running" and stopped.severity == "error"
    assert stopped.fix == Fix("start-export", {"disk_server": "disk1", "shelf": 1, "slot": 0},
                              "Start export e1.0 on disk1 again")
    real.missing_volumes["disk1"] = {PATH1}
    findings = compare(inventory(), real)
    assert codes(findings) == ["volume-missing", "export-not-running"]
    assert findings[1].fix is None


def test_exports_the_panel_does_not_know_and_exports_serving_another_file():
    real = clean()
    real.exports["disk2"] = [RunningExport(2, 0, "san0", "/elsewhere.img", 102, ()),
                             RunningExport(2, 7, "san0", "/srv/xenaoe/volumes/old.img", 104, ())]
    real.san["cpu1"].append(answer(2, 7, MAC2))
    findings = compare(inventory(), real)
    assert codes(findings) == ["export-mismatch", "unknown-export"]
    assert findings[1].fix == Fix("stop-export", {"disk_server": "disk2", "shelf": 2, "slot": 7},
                                  "Stop the stray export e2.7 on disk2 (its file stays)")


def test_the_san_view_silence_sizes_duplicates_and_strangers():
    real = clean()
    real.san["cpu2"] = [answer(1, 0, MAC1)]  # e2.0 silent from cpu2 only: a warning
    [silent] = compare(inventory(), real)
    assert (silent.code, silent.severity) == ("export-not-answering", "warning")
    real.san["cpu1"] = [answer(1, 0, MAC1)]  # now from the guest's own CPU server too: an error
    [silent] = compare(inventory(), real)
    assert silent.severity == "error" and "cpu1, cpu2" in silent.message
    real = clean()
    real.san["cpu1"] = [answer(1, 0, MAC1), answer(1, 0, "02:0a:d5:01:00:99", 2048), answer(2, 0, MAC2),
                        answer(9, 3, "02:0a:d5:01:00:77")]
    findings = compare(inventory(), real)
    assert codes(findings) == ["export-answered-twice", "export-size-mismatch", "unknown-san-target"]
    assert findings[0].severity == "critical"


def test_vms_a_job_owns_are_not_checked_but_their_domains_are_not_strays():
    real = clean()
    real.domains["cpu2"] = [dom()]
    real.exports["disk1"] = []
    assert compare(inventory(vm(busy=True)), real) == []
    assert compare(inventory(vm(state="creating")), real) == []


def test_a_vm_whose_create_could_not_undo_is_a_finding_and_what_it_left_is_not_a_stray():
    real = clean()
    real.domains["cpu1"] = []  # the create failed before the domain was defined
    findings = compare(inventory(vm(state="failed")), real)
    assert codes(findings) == ["vm-failed"]
    assert "e1.0 on disk1, e2.0 on disk2" in findings[0].message and "Delete the VM" in findings[0].meaning


def test_settle_marks_vms_that_changed_while_verify_ran_busy():
    before = inventory(vm(), vm("gone"))
    after = inventory(vm(cpu="cpu2"), vm("new", state="creating"))
    settled = {v.name: v.busy for v in settle(before, after).vms}
    assert settled == {"web": True, "new": True, "gone": True}
    assert {v.busy for v in settle(before, before).vms} == {False}


def test_findings_travel_as_plain_data_and_print_one_line_each():
    finding = compare(inventory(), Reality(domains={"cpu1": [], "cpu2": [dom()]}))[0]
    again = Finding.from_dict(json.loads(json.dumps(finding.as_dict())))
    assert again == finding
    assert finding.line() == ("ERROR vm-on-wrong-host web: xa-web runs on cpu2; the panel records it on cpu1 "
                              "-> Record web as running on cpu2")
    assert set(CODES) >= {"domain-on-two-hosts", "n-plus-one"}


# --- with the database ------------------------------------------------------------------------

@pytest.fixture
def cluster(db):
    # Hosts that refuse every connection at once (port 1 on loopback; libvirt's in-process test
    # driver): verify meets unreachable hosts without waiting and without leaving the machine.
    cpus = [CpuServer.objects.create(name=f"cpu{i}", address="127.0.0.1", ssh_port=1, libvirt_uri="test:///default",
                                     memory_mib=1024, vcpus=4) for i in (1, 2)]
    disks = [DiskServer.objects.create(name=f"disk{i}", address="127.0.0.1", ssh_port=1, aoe_shelf=i,
                                       capacity_mib=1000) for i in (1, 2)]
    return cpus, disks


@pytest.mark.django_db
def test_load_inventory_reads_vms_legs_busy_vms_and_n_plus_one(cluster):
    create_vm(VmRequest(name="web", vcpus=1, memory_mib=900, disk_mib=32, cpu_server="cpu1",
                        allow_n_plus_one_break=True))
    create_vm(VmRequest(name="db", vcpus=1, memory_mib=600, disk_mib=32, cpu_server="cpu2",
                        allow_n_plus_one_break=True))
    Job.objects.filter(target_name="db").update(state="succeeded")
    inv = load_inventory()
    web = next(v for v in inv.vms if v.name == "web")
    assert web.busy and web.state == "creating" and web.cpu_server == "cpu1"  # its vm.create job is queued
    assert not next(v for v in inv.vms if v.name == "db").busy
    assert sorted((leg.disk_server, leg.shelf, leg.slot, leg.size_mib) for leg in web.legs) == [
        ("disk1", 1, 0, 32), ("disk2", 2, 0, 32)]
    assert ("disk1", 1, 0) in inv.reserved
    assert {s.failed for s in inv.shortfalls} == {"cpu1", "cpu2"}


@pytest.mark.django_db
@pytest.mark.parametrize(("code", "args", "text"), [
    ("rm-rf", {}, "unknown fix"),
    ("start-export", {"disk_server": "disk1", "shelf": 1}, "takes exactly"),
    ("start-export", {"disk_server": "disk1", "shelf": 1, "slot": "0"}, "slot must be int"),
    ("start-export", {"disk_server": "disk1", "shelf": 1, "slot": True}, "slot must be int"),
    ("start-export", {"disk_server": "disk1", "shelf": 1, "slot": 255}, "slot must be 0-254"),
    ("stop-export", {"disk_server": "disk9", "shelf": 1, "slot": 0}, "no disk server named"),
    ("destroy-domain", {"cpu_server": "cpu1", "domain": "sshd"}, "not the name of a panel domain"),
    ("destroy-domain", {"cpu_server": "cpu9", "domain": "xa-web"}, "no CPU server named"),
    ("start-domain", {"vm": "nope"}, "no VM named"),
    ("start-domain", ["web"], "takes exactly"),
])
def test_fixes_outside_the_whitelist_or_with_bad_arguments_are_refused_and_start_nothing(cluster, code, args, text):
    with pytest.raises(ValidationError, match=text):
        apply_fix(code, args)
    assert not Job.objects.filter(kind="cluster.fix").exists()


@pytest.mark.django_db
def test_a_fix_is_a_job_tied_to_its_vm_so_it_waits_for_the_vms_own_jobs(cluster):
    create_vm(VmRequest(name="web", vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1"))
    with pytest.raises(ValidationError, match="busy with job"):
        apply_fix("start-export", {"disk_server": "disk1", "shelf": 1, "slot": 0})
    Job.objects.filter(target_name="web").update(state="succeeded")
    job = apply_fix("start-export", {"disk_server": "disk1", "shelf": 1, "slot": 0}, label="Start export e1.0")
    assert (job.kind, job.vm.name, job.state, job.params["fix"]) == ("cluster.fix", "web", "queued", "start-export")
    assert job.params["disk_server"] == "disk1"  # where the job history looks for hosts
    stray = apply_fix("stop-export", {"disk_server": "disk1", "shelf": 1, "slot": 9})
    assert stray.vm is None and stray.target_name == "e1.9 on disk1"
    assert validate_fix("destroy-domain", {"cpu_server": "cpu2", "domain": "xa-web"}).name == "web"
    assert set(FIXES) == {"destroy-domain", "undefine-domain", "start-domain", "start-export", "stop-export",
                          "record-vm-host", "mark-vm-running"}


@pytest.mark.django_db
def test_start_verify_reuses_a_verify_already_queued(cluster):
    first = start_verify()
    assert start_verify().pk == first.pk and first.kind == "cluster.verify"


@pytest.mark.django_db
def test_the_command_lists_differences_one_per_line_and_exits_1(cluster):
    create_vm(VmRequest(name="web", vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1"))
    Job.objects.update(state="succeeded")
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD)
    VirtualMachine.objects.update(state="running")
    out = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("cluster", "verify", stdout=out, stderr=StringIO())
    assert exit_.value.code == 1
    lines = out.getvalue().splitlines()
    # test:///default runs only its own "test" domain: xa-web is missing on cpu1. Every SSH is refused.
    assert lines[0].startswith("ERROR host-unreachable ")
    assert "ERROR domain-missing web: xa-web is not defined on cpu1" in lines
    # "test" is no domain of the panel's: reported wherever it answers (a dead host's too), never fixed.
    assert ("WARNING foreign-domain test: test is running on cpu1 and holds 2048 MiB, but the panel did not "
            "make it") in lines
    assert not any("cpu2" in line for line in lines if "foreign-domain" not in line)  # dead: silence expected
    # ... and its memory now counts as used on cpu1: placement sees 64 + 2048 MiB of 1024 taken.
    cpu1 = CpuServer.objects.get(name="cpu1")
    assert cpu1.foreign_memory_mib == 2048 and [d["name"] for d in cpu1.foreign_domains] == ["test"]
    assert server_load(cpu1).free_mib == 1024 - 64 - 2048
    out = StringIO()
    with pytest.raises(SystemExit):
        call_command("cluster", "verify", "--json", stdout=out, stderr=StringIO())
    data = json.loads(out.getvalue())
    # cpu2 dead leaves cpu1 alone: if it failed, nothing could take web.
    assert {f["code"] for f in data["findings"]} == {"host-unreachable", "domain-missing", "foreign-domain",
                                                     "n-plus-one"}
    assert data["checked"]["foreign_domains"] == 2
    assert data["checked"]["cpu_servers_answering"] == 2 and data["checked"]["disk_servers_answering"] == 0


@pytest.mark.django_db
def test_the_command_exits_0_when_nothing_differs(db):
    out = StringIO()
    call_command("cluster", "verify", stdout=out)
    assert out.getvalue().strip() == "cluster verify: no differences"


@pytest.mark.django_db
def test_the_findings_page_shows_the_latest_verify_and_applies_a_fix_from_the_stored_finding(cluster, client):
    from django.contrib.auth import get_user_model

    from jobs.runner import append_log

    user = get_user_model().objects.create_user("op", password="pw-1", is_staff=True)
    client.force_login(user)
    job = Job.objects.create(kind="cluster.verify", target_name="cluster", state="succeeded",
                             message="1 difference (1 error)")
    finding = Finding("unknown-export", "warning", "disk1 e1.9", "e1.9 on disk1 serves /x.img", "A leftover.",
                      Fix("stop-export", {"disk_server": "disk1", "shelf": 1, "slot": 9}, "Stop the stray export"))
    entry = append_log(job, finding.line(), "warning", {"finding": finding.as_dict()})
    page = client.get(reverse("cluster-verify"))
    assert page.status_code == 200
    assert b"unknown-export" in page.content and b"Apply fix" in page.content
    response = client.post(reverse("cluster-verify-fix", args=[job.pk, entry.serial]))
    fix_job = Job.objects.get(kind="cluster.fix")
    assert response.status_code == 302 and response.url == fix_job.get_absolute_url()
    assert fix_job.params["source"] == {"job": job.pk, "serial": entry.serial}
    assert f"fix job #{fix_job.pk}".encode() in client.get(reverse("cluster-verify")).content
    run = client.post(reverse("cluster-verify-run"))
    assert run.url == Job.objects.get(kind="cluster.verify", state="queued").get_absolute_url()
    client.logout()
    assert client.get(reverse("cluster-verify")).status_code == 302  # login first
