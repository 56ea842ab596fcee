"""Guests' CPU, disk and network figures: their hosts' counters, read by the leading sampler process
(`manage.py vm_stats`), turned into rates and kept for a day (`VmSample`).

Every XENAOE_VM_STATS_INTERVAL_S seconds a pass asks each CPU server the monitor expects to answer
for its running guests' counters (drivers/domain_stats.py: libvirt's bulk stats, one call per
server, in a pool thread, within READ_TIMEOUT_S). The process's next ticks harvest the readings
that came back and record, for every guest the panel places on that server, its rates since the
server's previous reading. A rate needs two readings of one server by this process no more than
GAP_INTERVALS intervals apart: the first reading after a start, a move to another server or a gap
records nothing for that guest, and a counter that went backwards (the guest restarted, a disk
replaced) gives no rate for that disk or interface rather than a negative one.

The pool threads only wait on libvirt; the database stays in the caller's thread. Samples older
than XENAOE_VM_STATS_RETENTION_HOURS are deleted as each pass starts.
"""
from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass, fields

from django.conf import settings
from django.utils import timezone

from drivers.domain_stats import CountersReading, DomainCounters, read_counters
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.models import CpuServer
from vms.models import VirtualMachine, VmSample
from xenaoe_panel.names import DOMAIN_PREFIX

logger = logging.getLogger(__name__)
READ_TIMEOUT_S = 10.0
GAP_INTERVALS = 3
MAX_PARALLEL = 8
# Hosts the monitor expects not to answer are not asked (as for its own checks, ha/monitor.py).
NOT_ASKED = (HostState.DEAD, HostState.FENCED)

ReadFn = Callable[..., CountersReading]


@dataclass(frozen=True)
class Rates:
    """A guest's use over one interval; None: not measured (no counter in both readings)."""
    cpu_vcpus: float | None = None  # CPU seconds per second: vCPUs busy on average
    disk_read_bps: float | None = None  # bytes per second, every disk (both mirror legs) together
    disk_write_bps: float | None = None
    net_rx_bps: float | None = None  # as the guest sees it: what it received
    net_tx_bps: float | None = None

    @property
    def measured(self) -> bool:
        return any(value is not None for value in astuple(self))


def _devices_rate(before: Mapping[str, int], after: Mapping[str, int], seconds: float) -> float | None:
    """Bytes per second over the devices of both readings whose counters did not go backwards."""
    deltas = [after[name] - before[name] for name in after.keys() & before.keys() if after[name] >= before[name]]
    return sum(deltas) / seconds if deltas else None


def rates(before: DomainCounters, after: DomainCounters, seconds: float) -> Rates:
    """One guest's rates between two readings `seconds` apart."""
    if seconds <= 0:
        return Rates()
    cpu = None
    if before.cpu_time_ns is not None and after.cpu_time_ns is not None and after.cpu_time_ns >= before.cpu_time_ns:
        cpu = (after.cpu_time_ns - before.cpu_time_ns) / 1e9 / seconds
    return Rates(cpu, _devices_rate(before.disk_read, after.disk_read, seconds),
                 _devices_rate(before.disk_written, after.disk_written, seconds),
                 _devices_rate(before.net_received, after.net_received, seconds),
                 _devices_rate(before.net_sent, after.net_sent, seconds))


def guest_rates(before: CountersReading | None, after: CountersReading, max_gap_s: float) -> dict[str, Rates]:
    """Every domain's rates between two readings of one server, by domain name: none without an
    earlier reading, or when it is more than `max_gap_s` older."""
    if before is None:
        return {}
    seconds = after.taken_at - before.taken_at
    if not 0 < seconds <= max_gap_s:
        return {}
    return {name: rates(before.domains[name], counters, seconds)
            for name, counters in after.domains.items() if name in before.domains}


def record_rates(found: Mapping[int, tuple[datetime.datetime, Mapping[str, Rates]]]) -> int:
    """One VmSample per guest measured on the server the panel places it on: {server pk: (the pass's
    time, rates by domain name)}. A domain the panel did not make, or a guest recorded elsewhere
    (the source of a migration under way), is left out. Returns how many were written."""
    if not any(by_domain for _when, by_domain in found.values()):
        return 0
    samples = []
    for vm_pk, name, server_pk in VirtualMachine.objects.filter(cpu_server_id__in=list(found)).values_list(
            "pk", "name", "cpu_server_id"):
        when, by_domain = found[server_pk]
        measured = by_domain.get(f"{DOMAIN_PREFIX}{name}")
        if measured is not None and measured.measured:
            samples.append(VmSample(vm_id=vm_pk, time=when, **{f.name: getattr(measured, f.name)
                                                                for f in fields(Rates)}))
    VmSample.objects.bulk_create(samples)
    return len(samples)


def prune_samples(now: datetime.datetime | None = None, hours: int | None = None) -> int:
    """Delete samples older than `hours` (XENAOE_VM_STATS_RETENTION_HOURS)."""
    hours = settings.VM_STATS_RETENTION_HOURS if hours is None else hours
    cutoff = (now or timezone.now()) - datetime.timedelta(hours=hours)
    return VmSample.objects.filter(time__lt=cutoff).delete()[0]


class VmStatsSampler:
    """The passes, for a process with a loop of its own (vms/management/commands/vm_stats.py): `tick`
    records the readings that came back and starts a pass when one is due (the first at once);
    `forget` drops what this process measured (it stopped leading: its readings would be stale when
    it leads again)."""

    def __init__(self, *, interval: float | None = None, timeout: float = READ_TIMEOUT_S,
                 read: ReadFn = read_counters) -> None:
        self.interval = float(settings.VM_STATS_INTERVAL_S) if interval is None else interval
        self.timeout, self.read = timeout, read
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="vm-stats")
        # At most one reading in flight per server: (its pass's time, the server's name, the reading).
        self._reads: dict[int, tuple[datetime.datetime, str, Future[CountersReading]]] = {}
        self._last: dict[int, CountersReading] = {}  # each server's latest reading
        self._silent: set[int] = set()  # servers whose latest read failed: said once, and when they answer
        self._last_pass: float | None = None  # monotonic; None: a pass is due

    def tick(self) -> int:
        """Returns how many samples were written."""
        written = self._harvest()
        due = self._last_pass is None or time.monotonic() - self._last_pass >= self.interval
        if self.interval > 0 and due:
            self._last_pass = time.monotonic()
            self._start_pass()
        return written

    def forget(self) -> None:
        self._reads.clear()  # what is in flight finishes in its thread, unread
        self._last.clear()
        self._silent.clear()
        self._last_pass = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _start_pass(self) -> None:
        when = timezone.now()
        prune_samples(when)
        servers = CpuServer.objects.exclude(state__in=NOT_ASKED).values_list("pk", "name", "libvirt_uri")
        for pk, name, uri in servers:
            if pk not in self._reads:
                self._reads[pk] = (when, name, self._pool.submit(self.read, uri, timeout=self.timeout))

    def _harvest(self) -> int:
        found: dict[int, tuple[datetime.datetime, Mapping[str, Rates]]] = {}
        max_gap = GAP_INTERVALS * max(self.interval, self.timeout)
        for pk, (when, name, future) in list(self._reads.items()):
            if not future.done():
                continue
            del self._reads[pk]
            try:
                reading = future.result()
            except Exception as exc:
                self._last.pop(pk, None)
                if pk not in self._silent:
                    self._silent.add(pk)
                    if isinstance(exc, DriverError):
                        logger.warning("guest figures of %s not read: %s", name, exc)
                    else:
                        logger.exception("reading the guest figures of %s raised", name)
                continue
            if pk in self._silent:
                self._silent.discard(pk)
                logger.info("guest figures of %s read again", name)
            found[pk] = (when, guest_rates(self._last.get(pk), reading, max_gap))
            self._last[pk] = reading
        return record_rates(found)
