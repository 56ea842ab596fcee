"""The lab's BMCs (ipmi_sim per CPU host, chassis power that really stops and boots the host; power
supply and fan sensors failed and restored by `lab bmc HOST DRILL`) and network partitions.
Needs root; each destructive test brings the lab back (`cluster.up()` boots
stopped hosts, restarts dead BMCs and heals partitions) in a finally."""
from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.errors import DriverError
from drivers.ipmi import OK, power_off, power_on, power_status, read_sensors
from drivers.ssh import SSHTarget, run, ssh_options
from lab import bmc, cluster
from lab.hostproc import host_pids, ssh_target
from lab.system import pid_alive, read_pid
from lab.topology import BMC_USER, host, panel_identity, panel_known_hosts

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


def _board(name: str):
    board = host(name).bmc
    assert board is not None
    return board


@pytest.fixture
def restore_lab(lab_cluster) -> Iterator[None]:
    yield
    cluster.up(out=lambda line: None)


def _ssh_answers(name: str, timeout: float = 60) -> float:
    """Seconds until `hostname` over SSH answers as the host (the panel's way in)."""
    started = time.monotonic()
    while True:
        try:
            if run(ssh_target(host(name)), ["hostname"], timeout=10).stdout.strip() == name:
                return time.monotonic() - started
        except DriverError:
            if time.monotonic() - started > timeout:
                raise
        time.sleep(0.2)


def test_ipmitool_reports_a_running_host_on(lab_cluster):
    board = _board("cpu1")
    assert board.address == "10.213.0.121" and _board("cpu2").address == "10.213.0.122"
    assert stat.S_IMODE(board.password_file.stat().st_mode) == 0o600
    argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", board.address, "-p", "623", "-U", BMC_USER,
            "-f", str(board.password_file), "chassis", "power", "status"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert (proc.returncode, proc.stdout) == (0, "Chassis Power is on\n"), proc.stderr
    assert power_status(bmc.target(_board("cpu2"))) == "on"


def test_power_off_stops_every_process_and_power_on_boots_the_host(lab_cluster, restore_lab):
    cpu2 = host("cpu2")
    target = bmc.target(_board("cpu2"))
    before = host_pids(cpu2.netns, cpu2)
    assert len(before) >= 3  # anchor, sshd, libvirtd, virtlogd
    started = time.monotonic()
    power_off(target, confirm_timeout=30)
    confirmed = time.monotonic() - started
    assert [pid for pid in before if pid_alive(pid)] == []
    assert host_pids(cpu2.netns, cpu2) == []
    assert "cpu2" not in {h.name for h in cluster.status().hosts}
    assert power_status(target) == "off"
    assert confirmed < 5

    started = time.monotonic()
    power_on(target)
    acknowledged = time.monotonic() - started
    answered = _ssh_answers("cpu2")
    assert power_status(target) == "on"
    assert "cpu2" in {h.name for h in cluster.status().hosts}
    print(f"\npower off confirmed in {confirmed:.2f} s; power on acknowledged in {acknowledged:.2f} s, "
          f"sshd answered {answered:.2f} s later")


def test_a_host_killed_with_its_bmc_cannot_be_fenced_by_ipmi(lab_cluster, restore_lab):
    target = bmc.target(_board("cpu2"), timeout=4)
    cluster.kill_host("cpu2", with_bmc=True)
    started = time.monotonic()
    with pytest.raises(DriverError) as info:
        power_status(target)
    assert not info.value.permanent, "a dead BMC may come back: not a permanent error"
    with pytest.raises(DriverError):
        power_off(target, confirm_timeout=2)
    print(f"\nstatus of a dead BMC failed after {time.monotonic() - started:.1f} s: {info.value}")
    cluster.up(out=lambda line: None)
    assert power_status(bmc.target(_board("cpu2"))) == "on"


@pytest.fixture
def fresh_target() -> Iterator[Callable[[str], SSHTarget]]:
    """Targets with their own ControlMaster directory: a master opened before the partition would
    only hang, these fail the way a new connection does. Masters and directory go afterwards."""
    control = Path(tempfile.mkdtemp(prefix="xa-bmc-ctl-"))  # unix socket paths are short
    made: list[SSHTarget] = []

    def make(name: str) -> SSHTarget:
        made.append(SSHTarget(host(name).address, panel_identity(), panel_known_hosts(), control,
                              connect_timeout=3))
        return made[-1]

    yield make
    for target in made:
        subprocess.run(["ssh", *ssh_options(target), "-O", "exit", target.host], capture_output=True, timeout=10)
    shutil.rmtree(control, ignore_errors=True)


def test_a_partitioned_cpu_host_keeps_running_on_the_san(lab_cluster, vblade, restore_lab, fresh_target):
    cpu1 = host("cpu1")
    vblade("disk1", 1, 12)
    target = fresh_target("cpu1")
    anchor = read_pid(cpu1.state_dir / "anchor.pid")
    before = host_pids(cpu1.netns, cpu1)
    cluster.partition_host("cpu1")
    try:
        assert cluster.status().host("cpu1").partitioned
        listed = subprocess.run([sys.executable, "manage.py", "lab", "status", "--json"], cwd=REPO,
                                capture_output=True, text=True, timeout=60, check=True)
        flags = {h["name"]: h["partitioned"] for h in json.loads(listed.stdout)["hosts"]}
        assert flags == {"disk1": False, "disk2": False, "cpu1": True, "cpu2": False, "client": False}
        started = time.monotonic()
        with pytest.raises(DriverError):
            run(target, ["hostname"], timeout=10)
        refused = time.monotonic() - started
        assert [pid for pid in before if not pid_alive(pid)] == []
        # On the SAN it is still a live initiator: a Query Config from cpu1's san0 finds the export.
        inside = ["nsenter", "-t", str(anchor), "-m", "-n"]
        subprocess.run([*inside, "/usr/sbin/aoe-discover"], check=True, timeout=20)
        assert subprocess.run([*inside, "test", "-b", "/dev/etherd/e1.12"], timeout=10).returncode == 0
        assert power_status(bmc.target(_board("cpu1"))) == "on", "the BMC is on its own port"
    finally:
        cluster.heal_host("cpu1")
    assert not cluster.status().host("cpu1").partitioned
    assert run(target, ["hostname"], timeout=15).stdout.strip() == "cpu1"
    subprocess.run([*inside, "/usr/sbin/aoe-flush", "e1.12"], check=True, timeout=20)
    run(target, ["true"], timeout=10)
    print(f"\nSSH to the partitioned host failed after {refused:.1f} s")


def test_a_partitioned_disk_host_keeps_serving_aoe(lab_cluster, on_host, vblade, restore_lab, fresh_target):
    vblade("disk2", 2, 12)
    target = fresh_target("disk2")
    cluster.partition_host("disk2")
    try:
        with pytest.raises(DriverError):
            run(target, ["true"], timeout=10)
        on_host("cpu2", "aoe-discover && test -b /dev/etherd/e2.12 && aoe-flush e2.12")
    finally:
        cluster.heal_host("disk2")
    assert run(target, ["hostname"], timeout=15).stdout.strip() == "disk2"


def test_a_cpu_host_cut_from_the_san_answers_but_finds_no_export(lab_cluster, on_host, vblade, restore_lab):
    vblade("disk1", 1, 13)
    cluster.partition_host("cpu2", "san")
    try:
        status = cluster.status().host("cpu2")
        assert status.san_partitioned and not status.partitioned
        assert on_host("cpu2", "hostname").stdout.strip() == "cpu2"  # the management link works
        found = on_host("cpu2", "aoe-discover; test -b /dev/etherd/e1.13 && echo found || echo missing")
        assert found.stdout.strip().endswith("missing")
    finally:
        cluster.heal_host("cpu2")
    assert not cluster.status().host("cpu2").san_partitioned
    on_host("cpu2", "aoe-discover && test -b /dev/etherd/e1.13 && aoe-flush e1.13")


def test_up_heals_a_partition(lab_cluster):
    cluster.partition_host("disk1")
    try:
        result = cluster.up(out=lambda line: None)
    finally:
        cluster.heal_host("disk1")
    assert not result.host("disk1").partitioned


def test_registration_records_bmc_san_mac_and_fence_methods(lab_cluster, lab_hosts):
    from hosts.models import CpuServer
    from lab.register import register_hosts

    before = {s.name: s.pk for s in lab_hosts["cpu"]}
    register_hosts(lab_cluster)  # idempotent: same rows, same values
    assert {s.name: s.pk for s in CpuServer.objects.all()} == before
    for cpu in CpuServer.objects.all():
        board = _board(cpu.name)
        assert (cpu.bmc_address, cpu.bmc_port, cpu.bmc_user, cpu.bmc_password_file) == (
            board.address, 623, BMC_USER, str(board.password_file))
        assert cpu.san_mac == host(cpu.name).san_mac
        assert cpu.fence_method_list == ["ipmi", "storage"]
        password = board.password_file.read_text().strip()
        assert password and password not in {str(v) for v in cpu.__dict__.values()}, "a path, never the secret"
    live_mac = run(ssh_target(host("cpu1")), ["cat", "/sys/class/net/san0/address"], timeout=15).stdout.strip()
    assert CpuServer.objects.get(name="cpu1").san_mac == live_mac == "02:0a:d5:01:00:15"


@pytest.fixture
def well_sensors(lab_cluster) -> Iterator[None]:
    yield
    for drill in ("psu-ok", "fan-ok"):
        bmc.drill(_board("cpu1"), drill)


def _lab_bmc(*args: str) -> str:
    """`manage.py lab bmc ...` as an operator runs it."""
    proc = subprocess.run([sys.executable, "manage.py", "lab", "bmc", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_bmc_drills_fail_and_restore_sensors_read_over_lanplus(lab_cluster, well_sensors):
    target = bmc.target(_board("cpu1"))
    started = time.monotonic()
    sensors = read_sensors(target)
    took = time.monotonic() - started
    assert [(s.kind, s.name, s.status) for s in sensors] == [("power supply", "PS1 Status", OK),
                                                             ("power supply", "PS2 Status", OK),
                                                             ("fan", "Fan1", OK), ("fan", "Fan2", OK)]

    assert _lab_bmc("cpu1", "psu-fail") == "cpu1: BMC psu-fail"
    assert [s.describe() for s in read_sensors(target) if s.failing] == [
        "power supply PS1 Status failed (Presence detected, Failure detected)"]
    assert not any(s.failing for s in read_sensors(bmc.target(_board("cpu2")))), "the other host's BMC is its own"
    _lab_bmc("cpu1", "fan-fail")
    assert [s.describe() for s in read_sensors(target) if s.failing] == [
        "power supply PS1 Status failed (Presence detected, Failure detected)", "fan Fan1 failed (lnr, 0 RPM)"]
    _lab_bmc("cpu1", "psu-ok")
    _lab_bmc("cpu1", "fan-ok")
    assert [s for s in read_sensors(target) if s.status != OK] == []
    # The console is on the BMC's own loopback: nothing on the management network answers it.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((_board("cpu1").address, bmc.CONSOLE_PORT), timeout=3).close()
    print(f"\nsensors of cpu1's BMC read in {took * 1000:.0f} ms (two ipmitool calls)")
