"""The fleet of light hosts (lab/fleet.py): reached as the panel reaches hosts, a pulled plug that is
silence, and `down` leaving nothing. It runs beside the lab cluster and never touches it (no
`lab_cluster` here); `lab` because it needs root and builds namespaces."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import hypervisor, ssh, ssh_mux
from drivers.errors import DriverError
from lab import fleet
from lab.hostproc import close_control_masters, pids_in_namespaces
from lab.system import netns_names, pid_alive

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root")]


@pytest.fixture
def small_fleet() -> Iterator[list[fleet.FleetHost]]:
    hosts = fleet.up(2, 1, out=lambda line: None)
    yield hosts
    fleet.down(out=lambda line: None)


def test_fleet_hosts_answer_ssh_and_libvirt_as_the_panel_reaches_hosts(small_fleet):
    cpu, _, disk = small_fleet
    target = fleet.ssh_target(cpu)
    assert ssh.run(target, ["hostname"], timeout=15).stdout.strip() == "fc001"
    ssh.ping(target, timeout=10)  # through the master the run above opened
    assert hypervisor.host_info(cpu.libvirt_uri, timeout=15).hypervisor == "QEMU"  # the shared libvirtd
    links = ssh.run(fleet.ssh_target(disk), ["ip", "-o", "link"], timeout=15).stdout
    assert " mgmt0@" in links and " san0@" in links


def test_a_killed_fleet_host_is_silent_not_refusing_then_boots_again(small_fleet):
    victim = small_fleet[1]
    target = fleet.ssh_target(victim)
    ssh.ping(target, timeout=10)
    fleet.kill(victim)
    assert victim not in fleet.running()
    started = time.monotonic()
    with pytest.raises(DriverError, match="timed out"):
        ssh.ping(target, timeout=1.0)
    assert time.monotonic() - started >= 0.9  # nothing answered, not even a refusal
    fleet.boot(victim)
    close_control_masters([victim.address])  # the master still waits on its dead connection
    ssh.ping(target, timeout=10)
    assert victim in fleet.running()


def test_down_leaves_no_namespace_link_process_mount_or_master():
    run_netns_mounted_before = _mounted("/run/netns")
    hosts = fleet.up(2, 1, out=lambda line: None)
    for host in hosts:
        ssh.ping(fleet.ssh_target(host), timeout=15)
    namespaces = [ns for ns in netns_names() if ns.startswith(fleet.PREFIX)]
    assert len(namespaces) == 4  # three hosts and the shared libvirtd
    pids = pids_in_namespaces(namespaces)
    assert len(pids) >= 3 * 2 + 2  # an anchor and sshd per host, the libvirtd's anchor and libvirtd
    fleet.down(out=lambda line: None)
    assert not [ns for ns in netns_names() if ns.startswith(fleet.PREFIX)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {fleet.PREFIX}" not in links
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert str(fleet.fleet_dir()) not in Path("/proc/mounts").read_text()
    if not run_netns_mounted_before and not netns_names():
        assert not _mounted("/run/netns")
    from django.conf import settings

    masters = [ssh_mux.control_path(Path(settings.SSH_CONTROL_DIR), h.address, 22, "root") for h in hosts]
    assert [m for m in masters if m.exists()] == []
    assert fleet.running() == [] and fleet.recorded() == []


def _mounted(path: str) -> bool:
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())
