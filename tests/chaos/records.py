"""Proof by data: what the records guest acknowledged, read back from its two legs afterwards.

The guest (lab/guests/mirror_guest.py) writes numbered, checksummed records ("xarec N BOOT SUM")
onto its md RAID1 and names the last one synced in /run/records; its boot id and first number are
in /run/boot. `Acks` polls both through the guest agent, on whichever CPU server the panel says the
VM runs, for as long as a case lasts. Afterwards `read_legs` scans each leg's volume on its disk
server (a script shipped over SSH, as the panel's drivers do) and `judge` counts:

- lost: an acknowledged record missing, or failing its checksum, on a leg the array holds in sync;
- double: a record written by an older boot after a newer boot of the same disks began (numbers
  come from the clock, so such a record has a number past the newer boot's first): two copies of
  the guest ran at once. The copies seen running at once by polling every CPU server count too.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from drivers import guest_agent, hypervisor, ssh
from drivers.errors import DriverError
from hosts.models import CpuServer
from hosts.targets import ssh_target
from storage.models import AoEExport
from vms.models import VirtualMachine

SCAN = r"""
import hashlib, json, sys
found = []
with open(sys.argv[1], "rb") as volume:
    offset = 0
    while True:
        block = volume.read(1 << 20)
        if not block:
            break
        for at in range(0, len(block), 512):
            if block[at:at + 6] == b"xarec ":
                line = block[at:at + 200].split(b"\n", 1)[0].decode("ascii", "replace")
                parts = line.split(" ")
                ok = len(parts) == 4 and hashlib.md5(" ".join(parts[:3]).encode()).hexdigest()[:8] == parts[3]
                found.append([parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else "", ok])
        offset += len(block)
print(json.dumps(found))
"""


@dataclass
class Boot:
    boot_id: str
    first: int
    last_acked: int


@dataclass
class Acks:
    """The records a guest acknowledged, per boot, polled in the background."""

    vm_name: str
    interval: float = 1.0
    boots: dict[str, Boot] = field(default_factory=dict)
    copies_at_once: int = 1  # the most CPU servers seen running the guest at one time
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Acks:
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"acks-{self.vm_name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def acked(self) -> int:
        return sum(b.last_acked - b.first + 1 for b in self.boots.values() if b.last_acked >= b.first)

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.vm_name}: {self.acked} records acknowledged, not {count}, "
                                     f"in {timeout:g} s")
            time.sleep(0.5)

    def _loop(self) -> None:
        from django.db import DatabaseError, connection

        try:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                except DatabaseError:  # PostgreSQL restarted under the case: a new connection next time
                    self.errors += 1
                    connection.close()
                self._stop.wait(self.interval)
        finally:
            connection.close()

    def poll_once(self) -> None:
        vm = VirtualMachine.objects.filter(name=self.vm_name).select_related("cpu_server").first()
        if vm is None or vm.cpu_server is None:
            return
        running = running_copies(vm.domain_name)
        if len(running) > 1:
            # The hosts are asked one after the other: across a migration's switch-over the source
            # may answer "running" just before the target does. Two copies at once must still be
            # two when asked again.
            running = [host for host in running_copies(vm.domain_name) if host in running]
        self.copies_at_once = max(self.copies_at_once, len(running))
        try:
            uri = vm.cpu_server.libvirt_uri
            boot_id, first = guest_agent.read_file(uri, vm.domain_name, "/run/boot", timeout=5).split()
            last = int(guest_agent.read_file(uri, vm.domain_name, "/run/records", timeout=5).strip())
        except (DriverError, ValueError):
            self.errors += 1  # the guest moving, booting or gone: its next answer counts
            return
        boot = self.boots.setdefault(boot_id, Boot(boot_id, int(first), int(first) - 1))
        boot.last_acked = max(boot.last_acked, last)


def running_copies(domain: str) -> list[str]:
    """The CPU servers on which the domain runs now, asked directly (not the panel's view), through
    the driver: its calls time out and abandon a connection to a host that went silent, where a bare
    libvirt object would hang whichever thread frees it."""
    hosts = []
    for cpu in CpuServer.objects.all():
        try:  # running, not paused: a migration's incoming copy waits paused until the switch-over
            info = hypervisor.domain_info(cpu.libvirt_uri, domain, timeout=5)
        except DriverError:
            continue  # a dead or partitioned host: whether it still runs it shows in the data
        if info is not None and info.state == "running":
            hosts.append(cpu.name)
    return hosts


def read_legs(vm_name: str) -> dict[str, list[tuple[int, str, bool]]]:
    """{leg name: [(number, boot id, checksum ok)]} read from each leg's volume on its disk server, in
    leg order (the guest's vda, then vdb)."""
    legs = {}
    for leg in AoEExport.objects.filter(mirror__vm__name=vm_name).select_related("disk_server").order_by("leg"):
        result = ssh.run(ssh_target(leg.disk_server), ["python3", "-", leg.backing_path], stdin=SCAN, timeout=120)
        legs[leg.name] = [(int(n), boot, ok) for n, boot, ok in json.loads(result.stdout) if n.isdigit()]
    return legs


@dataclass(frozen=True)
class Verdict:
    written: int
    acked: int
    read_back: int
    lost: int
    double: int

    def line(self) -> str:
        return (f"records written={self.written} acked={self.acked} read={self.read_back} "
                f"lost={self.lost} double={self.double}")


def judge(acks: Acks, legs: dict[str, list[tuple[int, str, bool]]], in_sync: list[str]) -> Verdict:
    """`in_sync`: the legs the guest's array holds as current (both, once it is healthy again)."""
    good = {leg: {(n, boot) for n, boot, ok in records if ok} for leg, records in legs.items()}
    written = set().union(*good.values()) if good else set()
    lost = read_back = 0
    for boot in acks.boots.values():
        for n in range(boot.first, boot.last_acked + 1):
            everywhere = all((n, boot.boot_id) in good[leg] for leg in in_sync)
            read_back += everywhere
            lost += not everywhere
    # Every boot found on the disks, acknowledged or not (a copy the poller never reached).
    spans: dict[str, list[int]] = {}
    for n, boot in written:
        span = spans.setdefault(boot, [n, n])
        span[0], span[1] = min(span[0], n), max(span[1], n)
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    double = 0
    for (older, _span), (_newer, (newer_first, _last)) in zip(ordered, ordered[1:], strict=False):
        double += sum(1 for n, boot in written if boot == older and n >= newer_first)
    double += acks.copies_at_once - 1
    return Verdict(len(written), acks.acked, read_back, lost, double)
