"""A VM's whole life on the lab: stop (ACPI, then forced), start, reboot, force off, delete; one
operation at a time; and its state following the hypervisor live, without anyone pressing refresh."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from io import StringIO

import libvirt
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client

from jobs.follow import follow
from jobs.models import Job
from jobs.services import request_cancel
from tests.integration.on_the_hosts import domain_state, succeeded
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm, vm_action

pytestmark = pytest.mark.lab


@pytest.fixture
def running_vm(lab_hosts, celery_worker_process):
    succeeded(create_vm(VmRequest(name="life", vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1")))
    vm = VirtualMachine.objects.select_related("cpu_server").get(name="life")
    yield vm
    if VirtualMachine.objects.filter(name="life").exists():
        busy = Job.objects.filter(vm__name="life", state__in=["queued", "running"]).first()
        if busy:
            request_cancel(busy)
            follow(busy.pk, lambda _line: None)
        succeeded(delete_vm("life"))


def test_the_whole_lifecycle_of_one_vm(running_vm):
    uri, name = running_vm.cpu_server.libvirt_uri, running_vm.domain_name
    out = StringIO()
    # The lab's guests have no OS to answer ACPI: the panel must force them off after the timeout.
    call_command("vm", "stop", "life", "--timeout", "2", "--wait", stdout=out)
    assert "did not shut down within 2 s: forced off" in out.getvalue()
    assert domain_state(uri, name) == libvirt.VIR_DOMAIN_SHUTOFF
    assert VirtualMachine.objects.get(name="life").state == "stopped"

    with pytest.raises(ValidationError, match="life is stopped: cannot shut it down"):
        vm_action("life", "shutdown")

    call_command("vm", "start", "life", "--wait", stdout=StringIO())
    assert domain_state(uri, name) == libvirt.VIR_DOMAIN_RUNNING
    assert VirtualMachine.objects.get(name="life").state == "running"

    conn = libvirt.open(uri)
    first_boot = conn.lookupByName(name).ID()
    conn.close()
    call_command("vm", "reboot", "life", "--timeout", "1", "--wait", stdout=StringIO())
    conn = libvirt.open(uri)
    dom = conn.lookupByName(name)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and dom.ID() != first_boot  # a new QEMU
    conn.close()

    call_command("vm", "force-off", "life", "--wait", stdout=StringIO())
    assert domain_state(uri, name) == libvirt.VIR_DOMAIN_SHUTOFF
    assert VirtualMachine.objects.get(name="life").state == "stopped"
    conn = libvirt.open(uri)
    assert conn.lookupByName(name).isPersistent()  # off, not gone
    conn.close()


def test_a_second_operation_on_a_busy_vm_is_refused_and_a_cancelled_shutdown_leaves_it_running(running_vm):
    job = vm_action("life", "shutdown", shutdown_timeout_s=60)
    deadline = time.monotonic() + 20
    while not Job.objects.get(pk=job.pk).log.filter(message__startswith="waiting for the guest").exists():
        assert time.monotonic() < deadline, "the shutdown job never started waiting"
        time.sleep(0.2)
    with pytest.raises(ValidationError, match=rf"life is busy with job #{job.pk} \(vm.shutdown, running\)"):
        vm_action("life", "force_off")
    with pytest.raises(ValidationError, match=rf"busy with job #{job.pk}"):
        delete_vm("life")
    assert request_cancel(job)
    job = follow(job.pk, lambda _line: None)
    assert job.state == "cancelled"
    assert domain_state(running_vm.cpu_server.libvirt_uri, running_vm.domain_name) == libvirt.VIR_DOMAIN_RUNNING
    assert VirtualMachine.objects.get(name="life").state == "running"


@pytest.fixture
def domain_watcher(lab_hosts, tmp_path):
    from django.conf import settings

    from tests.conftest import REPO, _child_env

    log = tmp_path / "watch.log"
    env = _child_env(settings.DATABASES["default"]["NAME"])
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "manage.py", "watch_domains", "--interval", "2"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while log.read_text().count("events connected") < len(lab_hosts["cpu"]):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield log
    proc.terminate()
    proc.wait(timeout=15)


def test_vm_state_follows_the_hypervisor_live_and_reaches_open_pages(running_vm, domain_watcher, operator):
    from xenaoe_panel.asgi import application

    client = Client()
    client.force_login(operator)
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
               (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]

    async def watch_page() -> dict:
        communicator = WebsocketCommunicator(application, "/ws/vms/", headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        # Behind the panel's back: power the guest off directly on the hypervisor.
        await sync_to_async(_destroy_directly)(running_vm.cpu_server.libvirt_uri, running_vm.domain_name)
        event = await communicator.receive_json_from(timeout=15)
        await communicator.disconnect()
        return event

    event = asyncio.run(watch_page())
    assert event["name"] == "life" and event["state"] == "stopped"
    assert VirtualMachine.objects.get(name="life").state == "stopped"
    # The watcher says what it did once it has done it: the page may hear of it first.
    deadline = time.monotonic() + 10
    while "life" not in domain_watcher.read_text():
        assert time.monotonic() < deadline, domain_watcher.read_text()
        time.sleep(0.2)


def _destroy_directly(uri: str, name: str) -> None:
    conn = libvirt.open(uri)
    conn.lookupByName(name).destroy()
    conn.close()
