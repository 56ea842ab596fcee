"""A check the caller may set, run before any driver acts on a host.

The job runner sets it for the thread that runs a job: a job that has lost its lease (recovery
ended it; another job may already own its VM) must stop before its next host action, whichever
step or helper makes that call. The drivers call `before_host_call()` at their few choke points
(SSH, libvirt, ipmitool, a live migration); outside a job nothing is set and nothing is checked.
A context variable, so that it stays with the job's thread; threads a step starts on its own
(a pool asking every host at once) are not checked.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_check: ContextVar[Callable[[], None] | None] = ContextVar("driver_guard", default=None)


def before_host_call() -> None:
    """Raise whatever the caller's check raises (the runner's LeaseLost) to stop a host call."""
    check = _check.get()
    if check is not None:
        check()


@contextmanager
def checking(check: Callable[[], None]) -> Iterator[None]:
    """Run `check` before every driver call made in this context."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)
