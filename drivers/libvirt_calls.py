"""Calling libvirt with a timeout, over connections kept open per host.

A libvirt call on a dead host can block for minutes, and the panel's workers must not: every call
runs in a worker thread and the caller gives up after an explicit timeout (the thread is a daemon,
left to finish on its own).

Opening a connection to a remote host (`qemu+ssh://`, `qemu+libssh2://`, `xen+ssh://`, ...) costs
an SSH handshake: ~0.13 s on the lab, paid by every define, start and confirmation of a VM and by
every check of every CPU server each monitor cycle. So remote connections are kept open, one per
URI and process, and shared by its threads (libvirt's remote driver multiplexes concurrent calls
on one connection). A kept connection is given up when a call on it times out (the host may be
dead: the next call opens a new one) and when it is found closed (its host or libvirtd restarted):
then the call is made once more on a new connection. Every call here is idempotent (already
running, already gone are decided by the callers), so the second try is safe even if the host saw
the first. Local URIs (`test:///default`, `qemu:///system`) get a connection per call: nothing to
save, and the test driver's state lives as long as a connection to it.

A pooled connection is never closed explicitly: another thread may be using it. It is dropped from
the pool and libvirt-python closes it when its last user lets go of it. A connection of one's own
(`Connection`: a local URI's, a migration's polls) is closed by whoever uses it last: never while a
call runs on it, whose caller may have stopped waiting.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import libvirt

from drivers import guard
from drivers.errors import DriverError

T = TypeVar("T")

# Errors that say the request itself is wrong: retrying the same call cannot help. Everything
# else (connection, RPC, system errors, a hypervisor that failed to start a guest) may pass.
PERMANENT_ERRORS = frozenset({
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_INVALID_DOMAIN,
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_XML_INVALID_SCHEMA,
    libvirt.VIR_ERR_OS_TYPE,
    libvirt.VIR_ERR_NO_KERNEL,
    libvirt.VIR_ERR_NO_ROOT,
    libvirt.VIR_ERR_NO_SOURCE,
    libvirt.VIR_ERR_NO_TARGET,
    libvirt.VIR_ERR_NO_NAME,
    libvirt.VIR_ERR_NO_OS,
    libvirt.VIR_ERR_NO_DEVICE,
    libvirt.VIR_ERR_INVALID_MAC,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    libvirt.VIR_ERR_ACCESS_DENIED,
    libvirt.VIR_ERR_CPU_INCOMPATIBLE,
    libvirt.VIR_ERR_INVALID_ARG,
    libvirt.VIR_ERR_OPERATION_INVALID,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_OPERATION_DENIED,
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_DOM_EXIST,
})


def _ignore_libvirt_error(_userdata: object, _error: object) -> None:
    """libvirt prints every error on stderr unless a handler is set; ours are raised instead."""


libvirt.registerErrorHandler(_ignore_libvirt_error, None)


class Connection:
    """One connection's life across its owner and the worker threads that call on it: whoever is
    last closes it, exactly once (closing twice would hand libvirt a freed pointer), and never
    while a call runs on it (libvirt frees a closed connection at once: the running call would use
    freed memory). For connections of one's own (a migration's, a local URI's), not the pool's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._abandoned = False
        self._calls = 0  # running on it now

    def adopt(self, conn: libvirt.virConnect) -> bool:
        with self._lock:
            if self._abandoned:
                conn.close()
                return False
            self._conn = conn
            return True

    def call(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        """fn(conn) on the adopted connection, in a worker thread; if its owner abandons the
        connection meanwhile, it is closed as soon as fn returns."""
        with self._lock:
            conn = None if self._abandoned else self._conn
            if conn is not None:
                self._calls += 1
        if conn is None:
            raise DriverError("libvirt connection given up")
        try:
            return fn(conn)
        finally:
            with self._lock:
                self._calls -= 1
                last = self._abandoned and not self._calls
            if last:
                self.close()

    def close(self) -> None:
        """Close it now: for a worker whose call on it has returned."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def abandon(self) -> None:
        """Its owner stopped waiting, or is done with it: closed now if no call runs on it, else
        when the last one returns. A connection still being opened is closed when it arrives."""
        with self._lock:
            self._abandoned = True
            idle = not self._calls
        if idle:
            self.close()


def is_remote(uri: str) -> bool:
    """A URI whose connection crosses the network (`driver+transport://host/...`)."""
    scheme, _, rest = uri.partition("://")
    return "+" in scheme and not rest.startswith("/")


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, libvirt.virConnect] = {}

    def get(self, uri: str) -> tuple[libvirt.virConnect, bool]:
        """A connection to `uri` and whether it was kept from an earlier call."""
        with self._lock:
            conn = self._open.get(uri)
        if conn is not None:
            return conn, True
        conn = libvirt.open(uri)
        with self._lock:
            self._open.setdefault(uri, conn)
        return conn, False

    def drop(self, uri: str, conn: libvirt.virConnect) -> None:
        """Forget `conn` (if it is still the one kept for `uri`)."""
        with self._lock:
            if self._open.get(uri) is conn:
                del self._open[uri]


# The kept connections, by what they serve: the monitor's checks and the jobs share "" (one per host);
# a background reader that must never disturb them (the guests' figures, vms/stats.py) names its own.
_pools: dict[str, _Pool] = {}
_pools_lock = threading.Lock()


def _pool_for(purpose: str) -> _Pool:
    with _pools_lock:
        return _pools.setdefault(purpose, _Pool())


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def with_connection(uri: str, what: str, timeout: float, fn: Callable[[libvirt.virConnect], T], *,
                    purpose: str = "") -> T:
    """fn(conn) on a connection to `uri`, in a worker thread; DriverError after `timeout`, or
    for libvirt's error (permanent when the request itself is wrong). A remote host's connection is
    kept for the next call of the same `purpose`."""
    guard.before_host_call()
    if is_remote(uri):
        return _on_pooled(_pool_for(purpose), uri, what, timeout, fn)
    holder = Connection()

    def on_own() -> T:
        try:
            if not holder.adopt(libvirt.open(uri)):
                raise DriverError(f"{uri}: {what}: connection given up")
            return holder.call(fn)
        finally:
            holder.close()

    return bounded(uri, what, timeout, on_own, holder.abandon)


def _on_pooled(pool: _Pool, uri: str, what: str, timeout: float, fn: Callable[[libvirt.virConnect], T]) -> T:
    used: list[libvirt.virConnect] = []  # the connection the call runs on last

    def attempt(conn: libvirt.virConnect) -> T:
        used.append(conn)
        try:
            return fn(conn)
        except libvirt.libvirtError:
            if not _alive(conn):
                pool.drop(uri, conn)  # closed under us: its host or libvirtd restarted
            raise

    def work() -> T:
        conn, kept = pool.get(uri)
        try:
            return attempt(conn)
        except libvirt.libvirtError:
            if not kept or _alive(conn):
                raise
        return attempt(pool.get(uri)[0])  # the kept one had been closed: once more on a new one

    def give_up() -> None:
        if used:
            pool.drop(uri, used[-1])  # the host may be dead: the next call opens a new one

    return bounded(uri, what, timeout, work, give_up)


def bounded(uri: str, what: str, timeout: float, work: Callable[[], T], give_up: Callable[[], None]) -> T:
    """work() in a worker thread (a daemon, left to finish on its own if it hangs). After `timeout`:
    give_up(), the caller's way to let go of the connection the call may still be running on
    (`Connection.abandon`, dropping it from the pool: never closing it), then a DriverError.
    libvirt's errors become DriverErrors, permanent when the request itself is wrong."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"libvirt {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        give_up()
        raise DriverError(f"{uri}: {what} timed out after {timeout:g} s")
    error = outcome.get("error")
    if isinstance(error, libvirt.libvirtError):
        raise DriverError(f"{uri}: {what}: {error.get_error_message() or error}",
                          permanent=error.get_error_code() in PERMANENT_ERRORS) from error
    if isinstance(error, BaseException):
        raise error
    return outcome["result"]  # type: ignore[return-value]


def lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def lookup_or_fail(conn: libvirt.virConnect, uri: str, name: str) -> libvirt.virDomain:
    dom = lookup(conn, name)
    if dom is None:
        raise DriverError(f"{uri}: no domain named {name!r}", permanent=True)
    return dom
