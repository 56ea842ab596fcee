"""drivers.migration.migrate against a stand-in for libvirt at the one point where the driver leaves
the program (libvirt.open): what it asks libvirt for each hypervisor flavour, and what becomes of a
polling connection whose call hangs past its timeout. libvirt frees a connection as soon as it is
closed, so closing one while a call still runs on it (in the thread that gave up waiting for it)
can crash the worker: the stand-in records every close and the calls running at that moment."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import libvirt
import pytest
from test_driver_migration import COMPLETED, FIRST_PASS, RUNNING

from drivers import migration as mg
from drivers.errors import DriverError

SOURCE = "qemu+ssh://root@192.0.2.21/system"
TARGET = "test:///target"  # read once for the finished job's statistics, on a connection of its own
MIGRATION_URI = "qemu+ssh://root@192.0.2.22/system"
# What libvirt's libxl driver accepts (LIBXL_MIGRATION_FLAGS, src/libxl/libxl_migration.h); it
# refuses a migration asking for anything else.
LIBXL_MIGRATION_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_TUNNELLED
                         | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                         | libvirt.VIR_MIGRATE_PAUSED)


class Hypervisor:
    """The source host as libvirt shows it: every connection opened, the migrations asked for."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.migrations: list[tuple[str, dict, int]] = []
        self.hang_next_poll = False
        self.hung_poll_may_return = threading.Event()
        self.migration_may_end = threading.Event()

    def open(self, uri: str) -> Connection:
        conn = Connection(self, uri)
        self.connections.append(conn)
        return conn

    def polling(self) -> list[Connection]:
        """The source's connections that polled the job, in the order they were opened."""
        return [c for c in self.connections if c.uri == SOURCE and not c.migrating]


class Connection:
    def __init__(self, host: Hypervisor, uri: str) -> None:
        self.host, self.uri = host, uri
        self.running = 0  # calls in flight on it now
        self.closes: list[int] = []  # the calls in flight at each close
        self.migrating = False

    def lookupByName(self, name: str) -> Domain:  # noqa: N802 - libvirt's name
        return Domain(self)

    def isAlive(self) -> int:  # noqa: N802 - libvirt's name
        return 1

    def close(self) -> int:
        self.closes.append(self.running)
        return 0

    def in_flight(self, fn: Callable[[], object]) -> object:
        self.running += 1
        try:
            return fn()
        finally:
            self.running -= 1


class Domain:
    def __init__(self, conn: Connection) -> None:
        self.conn, self.host = conn, conn.host

    def jobStats(self, flags: int = 0) -> dict:  # noqa: N802 - libvirt's name
        if flags == libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
            return COMPLETED
        if self.host.hang_next_poll:
            self.host.hang_next_poll = False
            return self.conn.in_flight(lambda: self.host.hung_poll_may_return.wait(10) and FIRST_PASS)
        return FIRST_PASS

    def state(self) -> list[int]:
        return list(RUNNING)

    def migrateToURI3(self, uri: str, params: dict, flags: int) -> int:  # noqa: N802 - libvirt's name
        self.conn.migrating = True
        self.host.migrations.append((uri, params, flags))
        self.host.migration_may_end.wait(10)
        return 0


@pytest.fixture
def host(monkeypatch) -> Hypervisor:
    host = Hypervisor()
    monkeypatch.setattr(libvirt, "open", host.open)
    return host


def eventually(check: Callable[[], bool], within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_poll_that_hangs_past_its_timeout_keeps_its_connection_open_until_the_call_returns(host):
    host.hang_next_poll = True
    seen = []

    def on_progress(progress: mg.MigrationProgress) -> None:
        seen.append(progress)
        if len(seen) == 1:  # a later poll answered on a new connection: let the hung one and the migration end
            host.hung_poll_may_return.set()
            host.migration_may_end.set()

    result = mg.migrate(SOURCE, TARGET, "xa-web", migration_uri=MIGRATION_URI, hypervisor="kvm",
                        on_progress=on_progress, poll_interval=0.05, call_timeout=0.3)
    assert result.downtime_ms == 13 and seen[0].phase == "copying" and seen[-1].phase == "completed"
    hung, after = host.polling()
    assert eventually(lambda: hung.closes != [])
    assert hung.closes == [0]  # closed once, by the thread whose call had returned: never under it
    assert after.closes == [0]
    assert all(conn.closes == [0] for conn in host.connections)


@pytest.mark.parametrize(("hypervisor", "flags"), [
    ("kvm", libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
     | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_AUTO_CONVERGE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR),
    ("qemu", libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
     | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_AUTO_CONVERGE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR),
    ("xen", libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
     | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE),
])
def test_each_flavour_migrates_with_its_own_flags(host, hypervisor, flags):
    host.migration_may_end.set()
    mg.migrate(SOURCE, TARGET, "xa-web", migration_uri=MIGRATION_URI, hypervisor=hypervisor, poll_interval=0.05)
    assert host.migrations == [(MIGRATION_URI, {}, flags)]


def test_xen_is_asked_only_for_what_libxl_takes_and_never_for_a_bandwidth_cap(host):
    host.migration_may_end.set()
    mg.migrate(SOURCE, TARGET, "xa-web", migration_uri=MIGRATION_URI, hypervisor="xen", poll_interval=0.05)
    [(_uri, params, flags)] = host.migrations
    assert params == {} and flags & ~LIBXL_MIGRATION_FLAGS == 0
    with pytest.raises(DriverError, match="a xen migration takes no bandwidth cap") as err:
        mg.migrate(SOURCE, TARGET, "xa-web", migration_uri=MIGRATION_URI, hypervisor="xen", max_bandwidth_mib=64)
    assert err.value.permanent and len(host.migrations) == 1


def test_a_kvm_migration_is_capped_for_itself_only(host):
    host.migration_may_end.set()
    mg.migrate(SOURCE, TARGET, "xa-web", migration_uri=MIGRATION_URI, hypervisor="kvm", max_bandwidth_mib=64,
               poll_interval=0.05)
    assert host.migrations[0][1] == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 64}


def test_an_unknown_hypervisor_is_refused_before_anything_is_opened(host):
    with pytest.raises(DriverError, match="hypervisor must be one of kvm, qemu, xen, not 'vmware'") as err:
        mg.migrate(SOURCE, TARGET, "xa-web", migration_uri=MIGRATION_URI, hypervisor="vmware")
    assert err.value.permanent and host.connections == []
