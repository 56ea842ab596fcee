"""A running lab guest's figures, as libvirt's bulk stats give them on a real CPU server (QEMU under
libvirtd, its legs over AoE), and the sampler's process (`manage.py vm_stats`, as make demo and
docker-compose run it) turning two passes into a sample on the VM's page."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from django.test import Client

from drivers.domain_stats import read_counters
from tests.conftest import REPO, _child_env
from tests.integration.on_the_hosts import succeeded
from vms.models import VirtualMachine, VmSample
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = pytest.mark.lab
VM = "figures"


@pytest.fixture
def running_vm(lab_hosts, celery_worker_process):
    from lab import register

    register.register_guest_network()  # a NIC on the guests' segment, to be counted too
    succeeded(create_vm(VmRequest(name=VM, vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1")))
    yield VirtualMachine.objects.select_related("cpu_server").get(name=VM)
    succeeded(delete_vm(VM))


def test_bulk_stats_of_a_running_guest_name_its_legs_and_its_nic(running_vm):
    reading = read_counters(running_vm.cpu_server.libvirt_uri, timeout=10)
    counters = reading.domains[running_vm.domain_name]
    assert counters.cpu_time_ns and counters.cpu_time_ns > 0
    # Both legs, by the names the guest knows them by; SeaBIOS read its boot sector from the first.
    assert {"vda", "vdb"} <= set(counters.disk_read)
    assert counters.disk_read["vda"] > 0
    assert len(counters.net_received) == running_vm.nics.count() >= 1


def test_the_sampler_process_writes_a_sample_shown_on_the_vm_page(running_vm, operator, tmp_path):
    from django.conf import settings

    VmSample.objects.filter(vm=running_vm).delete()
    log = tmp_path / "vm-stats.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "manage.py", "vm_stats", "--interval", "1"], cwd=REPO,
                                env=_child_env(settings.DATABASES["default"]["NAME"]),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not VmSample.objects.filter(vm=running_vm).exists():
            assert proc.poll() is None, f"vm_stats exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no sample within 30 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0, log.read_text()[-3000:]  # SIGTERM ends it cleanly
    assert "sampling the guests' figures every 1 s" in log.read_text()
    sample = VmSample.objects.filter(vm=running_vm).latest("time")
    # A guest with no OS idles halted in its BIOS: its figures are measured (not NULL), and small.
    assert sample.cpu_vcpus is not None and 0 <= sample.cpu_vcpus <= running_vm.vcpus + 0.5
    assert None not in (sample.disk_read_bps, sample.disk_write_bps, sample.net_rx_bps, sample.net_tx_bps)
    client = Client()
    client.force_login(operator)
    page = client.get(f"/vms/{VM}/?range=1h").content.decode()
    for chart in ("vm-cpu", "vm-disk", "vm-network"):
        assert f'data-chart="{chart}"' in page
    assert f"No figures of {VM}" not in page
