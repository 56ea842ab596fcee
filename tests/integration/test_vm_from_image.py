"""A VM made from the default image, on the lab: it boots Debian from its RAID1, gets its address,
takes its owner's key, and keeps its data and its address through a live migration, the loss of its
CPU server and the loss of a disk server. Everything is checked from where a user stands: SSH from
the lab's client namespace on the guests' network, and from the panel's own pages of the VM.

One test, because every boot of a full Debian under emulation (TCG) costs ~30 s: the scenario
boots the guest twice (creation, failover restart). `make chaos` has the slower variants.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ha.choices import IncidentKind
from ha.failover import start_failover
from ha.incidents import open_incident
from ha.maintenance import leave_maintenance
from ha.monitor import Monitor
from hosts.choices import HostState
from hosts.models import CpuServer
from lab import cluster
from lab.topology import CLIENT
from storage import guest_health
from storage.choices import MirrorHealth
from storage.models import Mirror
from tests.integration.on_the_hosts import clear_domain, clear_exports, succeeded
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = [pytest.mark.lab, pytest.mark.slow]  # full Debian boots: `make slow`
VM = "os1"
SSH_TIMEOUT_S = 180


@pytest.fixture
def key_pair() -> Iterator[tuple[Path, str]]:
    with tempfile.TemporaryDirectory() as directory:
        private = ed25519.Ed25519PrivateKey.generate()
        path = Path(directory) / "id_ed25519"
        path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
        path.chmod(0o600)
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH).decode()
        yield path, f"{public} tester@client"


class Client:
    """Somebody on the guests' network: commands run in the lab's client namespace."""

    def __init__(self, key: Path, known_hosts: Path) -> None:
        self.key, self.known_hosts = key, known_hosts

    def ssh(self, address: str, command: str, *, strict: bool = True, timeout: float = 60) -> str:
        # The first login learns the guest's host key; every later one insists on the same key: the
        # guest keeps its identity across a migration and a restart elsewhere.
        options = ["-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}",
                   "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "BatchMode=yes",
                   "-o", "ConnectTimeout=5", "-i", str(self.key)]
        result = subprocess.run(["ip", "netns", "exec", CLIENT.netns, "ssh", *options, f"debian@{address}", command],
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(f"ssh debian@{address} {command!r}: {result.returncode} {result.stderr.strip()}")
        return result.stdout

    def wait_for_ssh(self, address: str, *, strict: bool) -> float:
        started = time.monotonic()
        while True:
            try:
                self.ssh(address, "true", strict=strict, timeout=20)
                return time.monotonic() - started
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() - started > SSH_TIMEOUT_S:
                    raise AssertionError(f"no SSH to {address} within {SSH_TIMEOUT_S} s: {exc}") from exc
                time.sleep(2)

    def ping(self, address: str, count: int) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", CLIENT.netns, "ping", "-n", "-i", "0.2", "-W", "1",
                                 "-c", str(count), address], stdout=subprocess.PIPE, text=True)


def _lost(ping: subprocess.Popen) -> tuple[int, int]:
    out, _ = ping.communicate(timeout=120)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, f"ping said: {out!r} (exit {ping.returncode})"
    sent, received = int(match.group(1)), int(match.group(2))
    return sent, sent - received


def _health() -> tuple[str, str]:
    guest_health.check_mirrors(timeout=8)
    mirror = Mirror.objects.get(vm__name=VM)
    return mirror.health, mirror.health_detail


def _wait_health(wanted: str, timeout: float, step=lambda: None) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        step()
        now = _health()
        if not seen or seen[-1] != now:
            seen.append(now)
            print(f"{time.monotonic():.1f} mirror {now}")
        if now[0] == wanted:
            return seen
        assert time.monotonic() < deadline, f"mirror not {wanted} within {timeout:g} s: {seen}"
        time.sleep(2)


@pytest.fixture
def image_vm(default_image, key_pair) -> Iterator[tuple[VirtualMachine, Client]]:
    clear_domain(f"xa-{VM}")
    clear_exports(VM)
    key, public = key_pair
    started = time.monotonic()
    job = create_vm(VmRequest(name=VM, vcpus=2, memory_mib=512, disk_mib=1024, cpu_server="cpu2",
                              allow_n_plus_one_break=True, ssh_keys=(public,)))
    try:
        job = succeeded(job)
        print(f"\ncreate job: {time.monotonic() - started:.1f} s ({job.message})")
        assert any("booted in" in m and "[UU]" in m for m in job.log.values_list("message", flat=True))
        yield VirtualMachine.objects.get(name=VM), Client(key, key.with_name("known_hosts"))
    finally:
        try:
            succeeded(delete_vm(VM))
        finally:
            clear_domain(f"xa-{VM}")


def test_a_vm_from_the_default_image_is_reachable_and_keeps_its_data_through_migration_and_failures(
        image_vm, client, operator):
    vm, user = image_vm
    nic = vm.nics.get()
    address = nic.ip
    first = user.wait_for_ssh(address, strict=False)
    print(f"ssh answered {first:.1f} s after the create job ended")
    assert user.ssh(address, "hostname").strip() == VM
    mdstat = user.ssh(address, "cat /proc/mdstat")
    assert re.search(r"md0 : active raid1 vd[ab]\[\d\] vd[ab]\[\d\]", mdstat), mdstat
    assert "[UU]" in mdstat and "bitmap" in mdstat
    size_mib = int(user.ssh(address, "df -BM --output=size / | tail -1").strip().rstrip("M"))
    assert size_mib > 900, size_mib  # grown on first boot from the image's 640 MiB to the 1 GiB disk
    assert nic.mac in user.ssh(address, "ip -br link")
    assert _health() == (MirrorHealth.HEALTHY, "md0 [UU]")
    client.force_login(operator)
    page = client.get(f"/vms/{VM}/").content.decode()
    assert f"ssh debian@{address}" in page and 'data-mirror-health="healthy"' in page

    user.ssh(address, "head -c 1048576 /dev/urandom > data.bin && sha256sum data.bin > data.sum && sync")
    digest = user.ssh(address, "cat data.sum").split()[0]

    # Live migration while a client pings it: the address moves with the guest.
    ping = user.ping(address, 100)
    time.sleep(2)
    migrated = succeeded(migrate_vm(VM, "cpu1"))
    sent, lost = _lost(ping)
    print(f"live migration cpu2 -> cpu1 ({migrated.message}): {lost} of {sent} pings lost")
    assert lost <= 5, f"{lost} of {sent} pings lost"
    assert user.ssh(address, "hostname").strip() == VM

    # Its CPU server dies: fenced, restarted on the survivor, same address, same host key, same data.
    cluster.kill_host("cpu1")
    CpuServer.objects.filter(name="cpu1").update(state=HostState.DEAD, fence_methods="ipmi,storage")
    incident, _ = open_incident(CpuServer.objects.get(name="cpu1"), IncidentKind.CPU_SERVER_FAILED, "test")
    killed = time.monotonic()
    job = succeeded(start_failover(incident))
    assert VirtualMachine.objects.get(name=VM).cpu_server.name == "cpu2", job.message
    back = user.wait_for_ssh(address, strict=True)
    print(f"after the failover: ssh again {time.monotonic() - killed:.1f} s after the kill (boot {back:.1f} s)")
    assert user.ssh(address, "sha256sum -c data.sum && hostname", strict=True).splitlines() == ["data.bin: OK", VM]
    assert user.ssh(address, "cat data.sum").split()[0] == digest
    cluster.up(out=lambda _line: None)  # cpu1 boots again (into maintenance, for the monitor)

    # A disk server dies: the guest runs on, on one leg.
    cpu1 = CpuServer.objects.get(name="cpu1")
    CpuServer.objects.filter(pk=cpu1.pk).update(state=HostState.MAINTENANCE)  # back from the dead: the
    succeeded(leave_maintenance(CpuServer.objects.get(pk=cpu1.pk)))  # operator returns it (stale copies go first)
    leg_server = vm.mirror.legs.get(leg=1).disk_server
    monitor = Monitor(interval=2, timeout=1.5, bmc_interval=0)
    try:
        _wait_health(MirrorHealth.HEALTHY, 60)
        cluster.kill_host(leg_server.name)
        _wait_health(MirrorHealth.DEGRADED, 120, step=monitor.cycle)
        assert "[U_]" in user.ssh(address, "cat /proc/mdstat && echo more >> data.log && sync")

        # ... and while it is away the guest's CPU server dies too: restarted on the survivor, where
        # its leg on the dead disk server cannot be attached. It boots on the other leg.
        cluster.kill_host("cpu2")
        CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD, fence_methods="ipmi,storage")
        incident, _ = open_incident(CpuServer.objects.get(name="cpu2"), IncidentKind.CPU_SERVER_FAILED, "test")
        job = succeeded(start_failover(incident))
        assert VirtualMachine.objects.get(name=VM).cpu_server.name == "cpu1", job.message
        log = " ".join(job.log.values_list("message", flat=True))
        assert "boots on its other leg, degraded" in log
        degraded_boot = user.wait_for_ssh(address, strict=True)
        print(f"restarted with one leg: ssh after {degraded_boot:.1f} s")
        mdstat = user.ssh(address, "sha256sum -c data.sum >/dev/null && cat /proc/mdstat")
        assert "[2/1]" in mdstat, mdstat

        # The disk server returns: its leg is plugged back into the running guest and resyncs.
        cluster.boot_host(leg_server.name)
        seen = _wait_health(MirrorHealth.HEALTHY, 300, step=monitor.cycle)
        print(f"mirror after the disk server's return: {seen}")
    finally:
        monitor.close()
        cluster.up(out=lambda _line: None)
    assert user.ssh(address, "sha256sum -c data.sum && cat /proc/mdstat").startswith("data.bin: OK")
