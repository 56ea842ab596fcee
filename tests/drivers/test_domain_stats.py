"""Bulk domain stats (drivers/domain_stats.py): a record read into counters per disk and interface,
and the call itself, against libvirt's test driver and, for a remote host, through a fake connection
at libvirt.open (the point where traffic would leave the program)."""
from __future__ import annotations

import libvirt
import pytest

from drivers import domain_stats, libvirt_calls
from drivers.domain_stats import DomainCounters, counters_from_stats, read_counters
from drivers.errors import DriverError

# One guest as QEMU's driver reports it (`virsh domstats --cpu-total --block --interface`): its two
# mirror legs, an empty CD drive (a name and no figures), one interface.
QEMU_RECORD = {
    "cpu.time": 48_213_000_000, "cpu.user": 30_110_000_000, "cpu.system": 12_400_000_000,
    "net.count": 1, "net.0.name": "vnet3", "net.0.rx.bytes": 7_340_032, "net.0.rx.pkts": 5120,
    "net.0.rx.errs": 0, "net.0.rx.drop": 0, "net.0.tx.bytes": 1_048_576, "net.0.tx.pkts": 900,
    "net.0.tx.errs": 0, "net.0.tx.drop": 0,
    "block.count": 3,
    "block.0.name": "vda", "block.0.path": "/dev/etherd/e1.3", "block.0.rd.reqs": 1200,
    "block.0.rd.bytes": 52_428_800, "block.0.rd.times": 912_000_000, "block.0.wr.reqs": 300,
    "block.0.wr.bytes": 10_485_760, "block.0.wr.times": 88_000_000, "block.0.fl.reqs": 40,
    "block.0.allocation": 0, "block.0.capacity": 1_073_741_824, "block.0.physical": 1_073_741_824,
    "block.1.name": "vdb", "block.1.path": "/dev/etherd/e2.3", "block.1.rd.reqs": 1100,
    "block.1.rd.bytes": 50_331_648, "block.1.wr.reqs": 300, "block.1.wr.bytes": 10_485_760,
    "block.2.name": "sda",
}


def test_a_qemu_record_reads_as_counters_per_disk_and_interface():
    counters = counters_from_stats(QEMU_RECORD)
    assert counters == DomainCounters(
        cpu_time_ns=48_213_000_000,
        disk_read={"vda": 52_428_800, "vdb": 50_331_648}, disk_written={"vda": 10_485_760, "vdb": 10_485_760},
        net_received={"vnet3": 7_340_032}, net_sent={"vnet3": 1_048_576},
    )


def test_what_libvirt_left_out_is_missing_not_zero():
    # NOWAIT on a busy guest: the CPU time, the devices' names, no figures.
    busy = {"cpu.time": 5, "block.count": 2, "block.0.name": "vda", "block.1.name": "vdb", "net.count": 0}
    assert counters_from_stats(busy) == DomainCounters(cpu_time_ns=5)
    assert counters_from_stats({}) == DomainCounters()


def test_values_that_are_not_counters_are_dropped():
    odd = {"cpu.time": -1, "block.count": 10**9, "block.0.name": "vda", "block.0.rd.bytes": True,
           "block.0.wr.bytes": 7, "block.1.name": 3, "block.1.rd.bytes": 9, "net.count": "1"}
    counters = counters_from_stats(odd)
    assert counters == DomainCounters(disk_written={"vda": 7})


def test_the_test_driver_answers_the_bulk_call():
    """Real libvirt (its test driver): the flags are accepted and its running domain is listed, with
    the figures that driver has (none)."""
    reading = read_counters("test:///default", timeout=10)
    assert reading.domains == {"test": DomainCounters()}
    assert reading.taken_at > 0


class FakeDomain:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class FakeConnection:
    RECORDS = {"xa-web1": QEMU_RECORD, "xa-db1": {"cpu.time": 1}}

    def __init__(self) -> None:
        self.listed: list[int] = []
        self.asked: list[tuple[list[str], int, int]] = []

    def listAllDomains(self, flags: int):  # noqa: N802 - libvirt's name
        self.listed.append(flags)
        return [FakeDomain(name) for name in [*self.RECORDS, "xa-gone"]]

    def domainListGetStats(self, domains, stats: int, flags: int):  # noqa: N802
        self.asked.append(([d.name() for d in domains], stats, flags))
        if domains[0].name() == "xa-gone":  # stopped between the listing and its call
            error = libvirt.libvirtError("Domain not found")
            error.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "Domain not found", 0, "", None, None, 0, 0)
            raise error
        return [(domain, self.RECORDS[domain.name()]) for domain in domains]

    def isAlive(self) -> int:  # noqa: N802
        return 1


def test_a_remote_host_is_read_one_running_guest_at_a_time_over_the_kept_connection(monkeypatch):
    opened: list[FakeConnection] = []

    def fake_open(uri: str) -> FakeConnection:
        opened.append(FakeConnection())
        return opened[-1]

    monkeypatch.setattr(libvirt_calls.libvirt, "open", fake_open)
    monkeypatch.setattr(libvirt_calls, "_pools", {})
    uri = "qemu+ssh://root@cpu7.example/system"
    first = read_counters(uri, timeout=5)
    second = read_counters(uri, timeout=5)
    assert len(opened) == 1  # kept: no SSH handshake per reading
    assert opened[0].listed == [libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING] * 2
    # One guest per call (libvirt's call naming several took ~0.8 s per disk), without waiting on a busy one.
    assert [names for names, _, _ in opened[0].asked] == [["xa-web1"], ["xa-db1"], ["xa-gone"]] * 2
    assert {(stats, flags) for _, stats, flags in opened[0].asked} == {(domain_stats.STATS, domain_stats.FLAGS)}
    assert domain_stats.FLAGS & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    assert set(first.domains) == {"xa-web1", "xa-db1"}  # the one gone meanwhile left out
    assert first.domains["xa-web1"].disk_read == {"vda": 52_428_800, "vdb": 50_331_648}
    assert second.taken_at >= first.taken_at


def test_libvirt_refusing_the_connection_is_a_driver_error():
    with pytest.raises(DriverError, match="domain stats"):
        read_counters("test:///no-such-file.xml", timeout=5)
