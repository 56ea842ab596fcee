"""Calling libvirt with a timeout, over connections kept open per host.

A libvirt call on a dead host can block for minutes, and the panel's workers must not: every call
runs in a worker thread and the caller gives up after an explicit timeout (the thread is a daemon,
left to finish on its own).

Opening a connection to a remote host (`qemu+ssh://`, `qemu+libssh://`, `xen+ssh://`, ...) costs
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
the pool and libvirt-python closes it when its last user lets go of it.
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
    """One connection's life across the caller and its worker thread: whoever is last closes it,
    exactly once (closing twice would hand libvirt a freed pointer). For connections of one's own
    (a migration's, a console's), not the pool's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._abandoned = False

    def adopt(self, conn: libvirt.virConnect) -> bool:
        with self._lock:
            if self._abandoned:
                conn.close()
                return False
            self._conn = conn
            return True

    def close(self, abandon: bool = False) -> None:
        with self._lock:
            self._abandoned = self._abandoned or abandon
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def abandon(self) -> None:
        """The caller stopped waiting: the worker closes the connection when its call returns.
        Never closed from here while a call may run on it: libvirt frees a closed connection at
        once, and the call still running would use freed memory."""
        with self._lock:
            self._abandoned = True


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


_pool = _Pool()


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def with_connection(uri: str, what: str, timeout: float, fn: Callable[[libvirt.virConnect], T]) -> T:
    """fn(conn) on a connection to `uri`, in a worker thread; DriverError after `timeout`, or
    for libvirt's error (permanent when the request itself is wrong)."""
    guard.before_host_call()
    outcome: dict[str, object] = {}
    pooled = is_remote(uri)
    holder = Connection()

    def on_pooled() -> T:
        conn, kept = _pool.get(uri)
        outcome["conn"] = conn
        try:
            return fn(conn)
        except libvirt.libvirtError:
            if not kept or _alive(conn):
                raise
        # The kept connection had been closed under us (host or libvirtd restarted): a new one.
        _pool.drop(uri, conn)
        conn, _kept = _pool.get(uri)
        outcome["conn"] = conn
        return fn(conn)

    def on_own() -> T:
        conn = libvirt.open(uri)
        if not holder.adopt(conn):
            raise DriverError(f"{uri}: {what}: connection given up")
        return fn(conn)

    def work() -> None:
        try:
            outcome["result"] = on_pooled() if pooled else on_own()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc
        finally:
            if not pooled:
                holder.close()

    worker = threading.Thread(target=work, name=f"libvirt {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        if pooled and (conn := outcome.get("conn")) is not None:
            _pool.drop(uri, conn)  # type: ignore[arg-type]
        elif not pooled:
            holder.abandon()
        raise DriverError(f"{uri}: {what} timed out after {timeout:g} s")
    error = outcome.get("error")
    if isinstance(error, libvirt.libvirtError):
        if pooled and (conn := outcome.get("conn")) is not None and not _alive(conn):  # type: ignore[arg-type]
            _pool.drop(uri, conn)  # type: ignore[arg-type]
        code = error.get_error_code()
        raise DriverError(f"{uri}: {what}: {error.get_error_message() or error}",
                          permanent=code in PERMANENT_ERRORS) from error
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
