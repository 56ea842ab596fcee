"""Live migration between hypervisors, with progress, cancel and the downtime libvirt measured.

The migration runs peer-to-peer on its own connection in a thread; a second connection polls the
domain's job statistics for progress and aborts the job on request or on timeout, so a migration
is never left running unwatched. Its flags, and whether it takes a bandwidth cap, are the
hypervisor flavour's (drivers/hypervisors/).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

import libvirt

from drivers import guard, hypervisors
from drivers.errors import DriverError
from drivers.libvirt_calls import PERMANENT_ERRORS, Connection, bounded, lookup, lookup_or_fail, with_connection

T = TypeVar("T")

# After abortJob, QEMU stops the migration within a poll or two; wait this long before giving up.
ABORT_GRACE_SECONDS = 30.0


class MigrationAborted(DriverError):
    """The migration was aborted on request (should_cancel): the guest stays on the source."""


@dataclass(frozen=True)
class MigrationProgress:
    """One look at a running migration. Memory figures are bytes. `memory_processed` only grows
    and exceeds `memory_total` when dirtied pages are sent again; `memory_remaining` grows back
    at the start of each pass by what the guest dirtied meanwhile."""

    # starting, copying (first pass), iterating (later passes), switchover (guest paused for the
    # last pages), finishing (copied; libvirt moves the guest and its definition), cancelling,
    # completed
    phase: str
    elapsed_seconds: float
    memory_total: int
    memory_processed: int
    memory_remaining: int
    bytes_per_second: int
    dirty_bytes_per_second: int
    iteration: int  # pass over guest memory, 1 = the first full copy
    eta_seconds: float | None  # None: no estimate yet, or not converging at this rate
    expected_downtime_ms: int | None = None  # libvirt's estimate of the final pause
    throttle_percent: int | None = None  # vCPU slowdown by auto-converge
    downtime_ms: int | None = None  # only when completed: the pause libvirt measured

    @property
    def percent(self) -> float:
        """How much of the guest's memory is on the target now (it can fall back in a new pass)."""
        if self.memory_total <= 0:
            return 100.0 if self.phase == "completed" else 0.0
        return round(100.0 * (self.memory_total - self.memory_remaining) / self.memory_total, 1)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "percent": self.percent}


@dataclass(frozen=True)
class MigrationResult:
    total_seconds: float  # as the caller saw it, from the call to the guest running on the target
    migration_ms: int | None  # libvirt's time for the migration job itself
    downtime_ms: int | None  # how long the guest was paused for the switch-over
    memory_total: int
    memory_processed: int  # sent, including pages sent again
    bytes_per_second: int
    iterations: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def progress_from_stats(stats: dict, state: tuple[int, int] | None, elapsed: float) -> MigrationProgress:
    """A MigrationProgress from libvirt's virDomainGetJobStats fields (see libvirt-domain.h)."""
    completed = stats.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED
    total = int(stats.get("memory_total", 0))
    remaining = 0 if completed else int(stats.get("memory_remaining", 0))
    bps = int(stats.get("memory_bps", 0))
    dirty = int(stats.get("memory_dirty_rate", 0)) * int(stats.get("memory_page_size", 4096))
    iteration = int(stats.get("memory_iteration", 0))
    if completed:
        phase = "completed"
    elif not total:
        phase = "starting"
    elif state == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION):
        phase = "switchover"
    else:
        phase = "copying" if iteration <= 1 else "iterating"
    # What is left shrinks at the copy rate less the rate the guest dirties pages again; until
    # QEMU has measured both (after its first second), there is no honest estimate.
    net = bps - dirty
    eta = 0.0 if completed else (round(remaining / net, 1) if bps and net > 0 else None)
    throttle = stats.get("auto_converge_throttle")
    return MigrationProgress(
        phase=phase, elapsed_seconds=round(elapsed, 2), memory_total=total,
        memory_processed=int(stats.get("memory_processed", 0)), memory_remaining=remaining,
        bytes_per_second=bps, dirty_bytes_per_second=0 if completed else dirty, iteration=iteration,
        eta_seconds=eta,
        expected_downtime_ms=None if completed or "downtime" not in stats else int(stats["downtime"]),
        throttle_percent=None if throttle is None else int(throttle),
        downtime_ms=int(stats["downtime"]) if completed and "downtime" in stats else None,
    )


def migrate(
    source_uri: str, target_uri: str, name: str, *, migration_uri: str, hypervisor: str,
    max_bandwidth_mib: int | None = None,
    on_progress: Callable[[MigrationProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    poll_interval: float = 0.5, timeout: float = 600, call_timeout: float = 30,
) -> MigrationResult:
    """Live-migrate domain `name` from the host at `source_uri` to the host at `target_uri`.

    `migration_uri` is how the *source* libvirtd reaches the target (peer-to-peer), which need not
    be how the panel reaches it (`target_uri`, used only to read the finished job's statistics).
    `hypervisor` is the hosts' flavour (drivers/hypervisors/): its flags, and whether a cap is taken.
    The migration runs in a thread on its own connection; this thread polls the job's statistics
    every `poll_interval` on a second connection and hands them to `on_progress`, and aborts the
    job (abortJob) when `should_cancel()` says so — MigrationAborted then, with the guest still
    running on the source — or when it runs longer than `timeout` (DriverError). Both callbacks
    run in the calling thread. Other failures: DriverError; libvirt leaves the guest on the source.
    """
    flavour = hypervisors.flavour(hypervisor)
    if max_bandwidth_mib is not None and max_bandwidth_mib < 1:
        raise DriverError(f"bandwidth cap must be >= 1 MiB/s, not {max_bandwidth_mib}", permanent=True)
    if max_bandwidth_mib is not None and not flavour.migration_bandwidth_cap:
        raise DriverError(f"a {flavour.name} migration takes no bandwidth cap", permanent=True)
    guard.before_host_call()
    started = time.monotonic()
    poll = _Session(source_uri, call_timeout)
    try:
        poll.call(f"look up {name!r}", lambda conn: lookup_or_fail(conn, source_uri, name))
        run = _MigrationThread(source_uri, migration_uri, name, flavour.migrate_flags, max_bandwidth_mib)
        abort_reason = _watch(run, poll, name, started, on_progress, should_cancel, poll_interval, timeout)
    finally:
        poll.close()
    error = run.error
    if isinstance(error, libvirt.libvirtError):
        detail = error.get_error_message() or str(error)
        if abort_reason == "cancel":
            raise MigrationAborted(f"migration of {name!r} aborted on request: {detail}") from error
        if abort_reason == "timeout":
            raise DriverError(f"migration of {name!r} did not finish within {timeout:g} s; aborted") from error
        raise DriverError(f"{source_uri}: migrate {name!r} to {migration_uri}: {detail}",
                          permanent=error.get_error_code() in PERMANENT_ERRORS) from error
    if error is not None:
        raise error
    stats = _completed_stats(target_uri, name, call_timeout)
    elapsed = time.monotonic() - started
    final = progress_from_stats(stats or {"type": libvirt.VIR_DOMAIN_JOB_COMPLETED}, None, elapsed)
    if on_progress is not None:
        on_progress(final)
    return MigrationResult(
        total_seconds=round(elapsed, 2),
        migration_ms=int(stats["time_elapsed"]) if "time_elapsed" in stats else None,
        downtime_ms=final.downtime_ms, memory_total=final.memory_total,
        memory_processed=final.memory_processed, bytes_per_second=final.bytes_per_second,
        iterations=final.iteration,
    )


def _watch(run: _MigrationThread, poll: _Session, name: str, started: float,
           on_progress: Callable[[MigrationProgress], None] | None, should_cancel: Callable[[], bool] | None,
           poll_interval: float, timeout: float) -> str | None:
    """Poll until the migration thread ends; returns why it was aborted ("cancel", "timeout")."""
    abort_reason: str | None = None
    aborted_at = 0.0
    last: MigrationProgress | None = None
    run.start()
    try:
        while not run.done.wait(poll_interval):
            elapsed = time.monotonic() - started
            if abort_reason is None:
                if should_cancel is not None and should_cancel():
                    abort_reason = "cancel"
                elif elapsed > timeout:
                    abort_reason = "timeout"
                if abort_reason is not None:
                    aborted_at = elapsed
                    _abort(poll, name)
            elif elapsed - aborted_at > ABORT_GRACE_SECONDS:
                raise DriverError(f"migration of {name!r} still running {ABORT_GRACE_SECONDS:g} s after abortJob")
            progress = _poll_progress(poll, name, elapsed, last)
            if progress is None:
                continue
            if abort_reason is not None:
                if not progress.memory_total:
                    continue  # QEMU has already reset its counters: nothing worth showing
                progress = replace(progress, phase="cancelling", eta_seconds=None)
            last = progress
            if on_progress is not None:
                on_progress(progress)
    except BaseException:
        # A callback failed (or the wait was interrupted): never leave a migration running unwatched.
        if not run.done.is_set():
            _abort(poll, name)
            run.done.wait(ABORT_GRACE_SECONDS)
        raise
    return abort_reason


class _MigrationThread:
    """migrateToURI3 blocks until the migration ends, so it gets a thread and a connection of its own."""

    def __init__(self, source_uri: str, migration_uri: str, name: str, flags: int,
                 max_bandwidth_mib: int | None) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        params: dict[str, object] = {}
        if max_bandwidth_mib is not None:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(max_bandwidth_mib)  # MiB/s

        def work() -> None:
            holder = Connection()
            try:
                conn = libvirt.open(source_uri)
                if holder.adopt(conn):
                    conn.lookupByName(name).migrateToURI3(migration_uri, params, flags)
            except BaseException as exc:  # noqa: BLE001 - handed to the watching thread
                self.error = exc
            finally:
                holder.close()
                self.done.set()

        self._thread = threading.Thread(target=work, name=f"libvirt migrate {name!r}", daemon=True)

    def start(self) -> None:
        self._thread.start()


class _Session:
    """One connection of its own kept for many calls from one thread (polling twice a second cannot
    afford a new SSH connection per call), each call bounded by the timeout. A call that times out
    leaves the connection to the thread still running it (libvirt_calls.Connection.abandon): closed
    when that call returns, never under it; the next call opens a new one."""

    def __init__(self, uri: str, timeout: float) -> None:
        self.uri, self.timeout = uri, timeout
        self._holder: Connection | None = None

    def call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        holder = self._holder
        if holder is None:
            holder = Connection()
            self._bounded("connect", holder, lambda: holder.adopt(libvirt.open(self.uri)))
            self._holder = holder
        return self._bounded(what, holder, lambda: holder.call(fn))

    def _bounded(self, what: str, holder: Connection, work: Callable[[], T]) -> T:
        def give_up() -> None:
            holder.abandon()
            self._holder = None

        return bounded(self.uri, what, self.timeout, work, give_up)

    def close(self) -> None:
        if self._holder is not None:
            self._holder.abandon()
            self._holder = None


def _abort(poll: _Session, name: str) -> None:
    try:
        poll.call(f"abort migration of {name!r}", lambda conn: conn.lookupByName(name).abortJob())
    except DriverError:
        pass  # no job left to abort (it just finished or failed): the migration thread says which


def _poll_progress(poll: _Session, name: str, elapsed: float,
                   last: MigrationProgress | None) -> MigrationProgress | None:
    def call(conn: libvirt.virConnect) -> tuple[dict, tuple[int, int]]:
        dom = conn.lookupByName(name)
        return dom.jobStats(), tuple(dom.state())

    try:
        stats, state = poll.call(f"job stats of {name!r}", call)
    except DriverError as exc:
        # Gone from the source (permanent: no such domain) after copying: UNDEFINE_SOURCE has
        # run. Anything else: skip this poll; the migration thread knows how it ended.
        return _finishing(last, elapsed) if exc.permanent else None
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
        return progress_from_stats(stats, state, elapsed)
    # No job: not started yet, or QEMU has finished copying and libvirt is handing the guest
    # over (resume on the target, persist there, undefine here), which takes a second or two.
    handed_over = state[0] in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF)
    return _finishing(last, elapsed) if handed_over else None


def _finishing(last: MigrationProgress | None, elapsed: float) -> MigrationProgress | None:
    if last is None or not last.memory_total or last.phase == "cancelling":
        return None
    return replace(last, phase="finishing", elapsed_seconds=round(elapsed, 2), memory_remaining=0,
                   dirty_bytes_per_second=0, eta_seconds=None, expected_downtime_ms=None)


def _completed_stats(target_uri: str, name: str, timeout: float) -> dict:
    """The finished job's statistics, downtime included. With UNDEFINE_SOURCE the source forgets
    the domain at once, but the target keeps the completed job's statistics (sent over in the
    migration cookie). Empty if the target cannot say: the migration itself has succeeded."""
    def call(conn: libvirt.virConnect) -> dict:
        return lookup_or_fail(conn, target_uri, name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)

    try:
        return with_connection(target_uri, f"completed job stats of {name!r}", timeout, call)
    except DriverError:
        return {}


def abort_migration_in_flight(uri: str, name: str, *, timeout: float = 60) -> bool:
    """Abort an outgoing migration of `name` still running on this hypervisor (the job that started
    it is gone: its worker died, the libvirt daemon drives a peer-to-peer migration on by itself) and
    wait until it has stopped. True if there was one. A migration that completes meanwhile has
    completed: the caller asks where the guest runs afterwards."""
    deadline = time.monotonic() + timeout

    def job_type(conn: libvirt.virConnect) -> int:
        dom = lookup(conn, name)
        return libvirt.VIR_DOMAIN_JOB_NONE if dom is None else dom.jobInfo()[0]

    if with_connection(uri, f"job of {name}", timeout, job_type) == libvirt.VIR_DOMAIN_JOB_NONE:
        return False
    try:
        with_connection(uri, f"abort the migration of {name}", timeout,
                        lambda conn: lookup_or_fail(conn, uri, name).abortJob())
    except DriverError as exc:
        if exc.permanent is False:
            raise  # not answered: whether it still runs is not known
    while with_connection(uri, f"job of {name}", max(1.0, deadline - time.monotonic()),
                          job_type) != libvirt.VIR_DOMAIN_JOB_NONE:
        if time.monotonic() > deadline:
            raise DriverError(f"{uri}: the migration of {name} still runs {timeout:g} s after it was aborted")
        time.sleep(0.5)
    return True
