"""Typed job parameters (jobs/params.py): every kind declares its parameters once; they go to the job's
row as the JSON the panel always wrote and come back equal; bad ones are refused with a message that
names the field, before anything is written; and the hosts they declare are the job's hosts, for the
history's host filter and for the redaction of a tenant's logs."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from ha.job_params import EvacuateParams, FailoverParams, ReturnParams
from hosts.job_params import FixParams
from hosts.models import CpuServer, DiskServer
from images.job_params import ImageCopyParams, ImageImportParams, ImageRemoveParams
from jobs.kinds import all_kinds
from jobs.models import Job
from jobs.params import JobParams, NoParams
from jobs.redaction import redactor_for
from jobs.services import start_job
from storage.models import AoEExport, Mirror
from tenants.services import add_user, create_tenant
from vms.job_params import (
    NicParams,
    VmCreateParams,
    VmDeleteParams,
    VmEjectParams,
    VmMigrateParams,
    VmPowerParams,
)
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db

CREATE = VmCreateParams(vcpus=2, memory_mib=512, disk_mib=1024, cpu_server="cpu1", requested_cpu_server="automatic",
                        tenant="acme", image="debian-12", nics=[NicParams("lab", "02:00:5e:00:00:01", "10.0.0.5"),
                                                                NicParams("dmz", "02:00:5e:00:00:02", None)],
                        n_plus_one_override=["cpu2 failing would leave web without room"])
# One job's parameters for each kind the panel registers (the tests' own kinds aside).
SAMPLES: dict[str, JobParams] = {
    "vm.create": CREATE,
    "vm.delete": VmDeleteParams(state_before="running"),
    "vm.start": VmPowerParams(timeout_s=120),
    "vm.shutdown": VmPowerParams(timeout_s=0),
    "vm.reboot": VmPowerParams(timeout_s=3600),
    "vm.force_off": VmPowerParams(),
    "vm.eject": VmEjectParams(iso="installer"),
    "vm.migrate": VmMigrateParams(source="cpu1", target="cpu2", requested_target="automatic", max_mib_per_s=40),
    "host.evacuate": EvacuateParams(host="cpu1", reason="maintenance by op", trigger="maintenance"),
    "host.return": ReturnParams(host="cpu1"),
    "host.failover": FailoverParams(incident=7, host="cpu1"),
    "image.copy": ImageCopyParams(image="debian-12", disk_servers=["disk1", "disk2"]),
    "image.remove": ImageRemoveParams(image="installer", copies=[["disk1", "/srv/images/installer.iso", 1, 250],
                                                                 ["disk2", "/srv/images/installer.iso"]]),
    "image.import": ImageImportParams(upload="/srv/store/uploads/ab12.upload", image="alpine", login_user="alpine",
                                      os="Alpine", filename="alpine.qcow2", sha256="0" * 64),
    "cluster.verify": NoParams(),
    "cluster.fix": FixParams(fix="start-export", args={"disk_server": "disk2", "shelf": 2, "slot": 0},
                             label="start-export e2.0 on disk2", source={"job": 3, "serial": 9}, disk_server="disk2"),
}


def _panel_kinds() -> dict[str, type[JobParams]]:
    return {name: kind.params for name, kind in all_kinds().items() if not kind.plan.__module__.startswith("tests.")}


def test_every_kind_of_the_panel_declares_its_parameters():
    assert {name: type(params) for name, params in SAMPLES.items()} == _panel_kinds()


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_kinds_parameters_go_to_the_job_row_as_json_and_come_back_equal(kind):
    params = SAMPLES[kind]
    job = start_job(kind, target_name="x", params=params)
    stored = Job.objects.get(pk=job.pk)
    assert type(params).of(stored) == params
    assert stored.params == params.to_json()  # plain JSON: what the API shows and old code read


def test_rows_written_before_the_parameters_were_typed_still_read():
    # As vms/services.py and hosts/fixes.py wrote them: no "iso" key without an ISO, the fix's
    # host only under the key its arguments use.
    create = {"vcpus": 1, "memory_mib": 256, "disk_mib": 100, "cpu_server": "cpu1", "requested_cpu_server": "cpu1",
              "tenant": None, "image": "debian-12", "nics": [{"network": "lab", "mac": "02:00:5e:00:00:01",
                                                              "ip": "10.0.0.5"}], "n_plus_one_override": []}
    fix = {"fix": "start-export", "args": {"disk_server": "disk2", "shelf": 2, "slot": 0}, "label": "start-export",
           "source": {}, "disk_server": "disk2"}
    assert VmCreateParams.from_json(create).nics == [NicParams("lab", "02:00:5e:00:00:01", "10.0.0.5")]
    assert VmCreateParams.from_json(create).iso is None
    assert FixParams.from_json(fix).hosts() == ["disk2"]
    assert VmPowerParams.from_json({}).timeout_s == 60  # a lifecycle job written without a timeout


@pytest.mark.parametrize(("kind", "make", "message"), [
    ("vm.migrate", lambda: VmMigrateParams(source="cpu1", target=3, requested_target="automatic"),
     "VmMigrateParams: target must be str, not 3"),
    ("vm.migrate", lambda: VmMigrateParams(source="cpu1", target="cpu2", requested_target="cpu2", max_mib_per_s="9"),
     "VmMigrateParams: max_mib_per_s must be int or null, not '9'"),
    ("vm.shutdown", lambda: VmPowerParams(timeout_s=True), "VmPowerParams: timeout_s must be int, not True"),
    ("host.failover", lambda: FailoverParams(incident=1, host="cpu1 cpu2"),
     "FailoverParams: 'cpu1 cpu2' is not a host's name"),
    ("image.remove", lambda: ImageRemoveParams(image="x", copies=[[5, "/srv/x"]]),
     "ImageRemoveParams: 5 is not a host's name"),
    ("host.return", lambda: None, "ReturnParams: missing host"),
    ("vm.create", lambda: VmCreateParams.from_json(CREATE.to_json() | {"colour": "blue"}),
     "VmCreateParams: unknown parameter colour"),
    ("vm.create", lambda: VmCreateParams.from_json(CREATE.to_json() | {"nics": [{"network": "lab"}]}),
     "NicParams: missing mac, ip"),
    ("no.such.kind", lambda: None, "no job kind 'no.such.kind'"),
])
def test_bad_parameters_are_refused_with_a_message_naming_them_and_nothing_is_written(kind, make, message):
    with pytest.raises(ValidationError) as refused:
        start_job(kind, target_name="x", params=make())
    assert message in refused.value.messages[0]
    assert not Job.objects.exists()


def test_parameters_of_another_kind_are_refused_and_nothing_is_written():
    with pytest.raises(TypeError, match="vm.migrate takes VmMigrateParams, not VmDeleteParams"):
        start_job("vm.migrate", target_name="x", params=VmDeleteParams())
    assert not Job.objects.exists()


@pytest.fixture
def placed_vm() -> VirtualMachine:
    cpu = CpuServer.objects.create(name="cpu3", address="10.0.0.3", libvirt_uri="test:///default",
                                   memory_mib=4096, vcpus=4)
    disks = [DiskServer.objects.create(name=f"disk{n}", address=f"10.0.1.{n}", aoe_shelf=n, capacity_mib=10**6)
             for n in (1, 2)]
    vm = VirtualMachine.objects.create(name="web5", vcpus=1, memory_mib=64, disk_mib=32, cpu_server=cpu)
    mirror = Mirror.objects.create(vm=vm)
    for leg, disk in enumerate(disks):
        AoEExport.objects.create(disk_server=disk, mirror=mirror, leg=leg, shelf=disk.aoe_shelf, slot=5,
                                 backing_path=f"/v/web5-{leg}.img", size_mib=32)
    return vm


def test_a_job_records_the_hosts_its_parameters_declare_and_where_its_vm_is(placed_vm):
    # vm.delete names no host: its VM says where it is.
    assert start_job("vm.delete", vm=placed_vm, params=VmDeleteParams()).host_names == ["cpu3", "disk1", "disk2"]
    migrate = start_job("vm.migrate", params=VmMigrateParams(source="cpu3", target="cpu4", requested_target="cpu4"))
    assert migrate.hosts == " cpu3 cpu4 "
    assert start_job("vm.create", params=CREATE).host_names == ["cpu1"]  # not "automatic", which it was asked
    assert start_job("cluster.fix", params=SAMPLES["cluster.fix"]).host_names == ["disk2"]
    assert start_job("cluster.verify", target_name="cluster").hosts == ""


def test_the_history_finds_an_image_removal_by_the_disk_servers_it_cleans(client):
    # Its hosts sit inside "copies", a key the old list of host keys did not have: such jobs had none.
    removal = start_job("image.remove", target_name="image installer", params=SAMPLES["image.remove"])
    copy = start_job("image.copy", target_name="image debian-12", params=ImageCopyParams("debian-12", ["disk2"]))
    client.force_login(get_user_model().objects.create_user("op", is_staff=True))
    for host, expected in (("disk1", {removal.pk}), ("disk2", {removal.pk, copy.pk})):
        response = client.get(f"/jobs/?host={host}")
        assert {job.pk for job in response.context["page_obj"].object_list} == expected, host


def test_a_tenant_reads_a_host_named_under_a_declared_host_key_as_a_host_even_once_it_is_gone():
    CpuServer.objects.create(name="cpu1", address="10.0.0.1", libvirt_uri="test:///default", memory_mib=4096, vcpus=4)
    alice = add_user(create_tenant("acme"), "alice")
    redact = redactor_for(alice)
    # cpu9 has left the inventory; "target" is where vm.migrate's parameters name a host.
    moved = redact({"message": "web1 -> cpu9 (job #4)", "data": {"vm": "web1", "target": "cpu9"}})
    assert moved["message"] == "web1 -> a host (job #4)"
    assert redact({"message": "on cpu1", "data": {}})["message"] == "on a CPU server"
