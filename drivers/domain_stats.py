"""Every running guest's CPU, disk and network counters on one host: libvirt's domain stats
(virDomainListGetStats), over the kept connection of drivers/libvirt_calls.py.

One call per running guest, not libvirt's one bulk call for all of them: each reply stays small.
Over libvirt 9.0's libssh transport a reply over ~10 KB waits 5-10 s (docs/lab.md; such URIs are
refused now, rows registered before keep them): the bulk reply of 5 guests with two disks each took
10 s on the lab, every pass past the timeout, while one guest at a time answered in 3 ms each. A
server of dozens of guests makes one bulk reply of tens of KB; a round trip per guest every minute
costs little. A guest that stopped between the listing and its call is left out.

Counters only (CPU nanoseconds, bytes per disk and per interface since the guest started there);
what they mean per second is the caller's (vms/stats.py), from two readings. Disks and interfaces
are kept apart by name: a leg plugged back live, or a CD drive with nothing in it (no figures at
all), must not look like a counter going backwards. A figure libvirt did not report is missing,
never 0: NOWAIT leaves out what a busy guest (a migration under way) cannot answer at once,
instead of waiting for it.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import libvirt

from drivers.libvirt_calls import with_connection

STATS = libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_INTERFACE
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
# A guest has a few disks and interfaces; a record claiming more is not read further.
MAX_DEVICES = 64


@dataclass(frozen=True)
class DomainCounters:
    cpu_time_ns: int | None = None  # CPU time the guest used, all its vCPUs together
    disk_read: Mapping[str, int] = field(default_factory=dict)  # bytes per disk, by its target name (vda)
    disk_written: Mapping[str, int] = field(default_factory=dict)
    net_received: Mapping[str, int] = field(default_factory=dict)  # bytes per interface (vnet3), as the guest sees it
    net_sent: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CountersReading:
    taken_at: float  # time.monotonic() when the host answered
    domains: Mapping[str, DomainCounters]  # the running domains, by name


def _counter(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _per_device(record: Mapping[str, Any], group: str, figure: str) -> dict[str, int]:
    found = {}
    for index in range(min(_counter(record.get(f"{group}.count")) or 0, MAX_DEVICES)):
        name, value = record.get(f"{group}.{index}.name"), _counter(record.get(f"{group}.{index}.{figure}"))
        if isinstance(name, str) and value is not None:
            found[name] = value
    return found


def counters_from_stats(record: Mapping[str, Any]) -> DomainCounters:
    """One domain's record from virConnectGetAllDomainStats ("cpu.time", "block.<n>.rd.bytes",
    "net.<n>.rx.bytes", ...), as counters; what is missing or not a counter is left out."""
    return DomainCounters(
        _counter(record.get("cpu.time")),
        _per_device(record, "block", "rd.bytes"), _per_device(record, "block", "wr.bytes"),
        _per_device(record, "net", "rx.bytes"), _per_device(record, "net", "tx.bytes"),
    )


def read_counters(uri: str, *, timeout: float) -> CountersReading:
    """The counters of every domain running on the host at `uri` (DriverError after `timeout`)."""

    def call(conn: libvirt.virConnect) -> CountersReading:
        found = {}
        for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
            try:
                records = conn.domainListGetStats([domain], STATS, FLAGS)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    continue  # it stopped or went away meanwhile
                raise
            found.update((dom.name(), counters_from_stats(record)) for dom, record in records)
        return CountersReading(time.monotonic(), found)

    # Connections of its own: a slow or dying host's bulk read never shares one with the monitor's checks.
    return with_connection(uri, "domain stats", timeout, call, purpose="domain stats")
