"""A VM's serial console, followed wherever the VM runs, for the browser's websocket
(vms/console_consumer.py) and `manage.py vm console` alike.

`ConsoleFollower.run` (a thread of its own: it blocks) opens the console on the CPU server the
inventory records (drivers/console.py), hands its bytes on, and when the stream ends looks again:
the VM recorded on another server (a live migration's switch-over, a failover restart) means
"migrated to another server, reconnecting" and the console opens there; the same server means the
guest stopped or another session took the console over. It never gives up on a guest that is only
stopped: a console left open shows the next boot.

Every opening and closing is recorded (`ConsoleSession`: who, when, from where, why it ended),
written before the console is opened, so that a crash leaves a trace.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.choices import Action
from audit.services import record
from drivers.console import ConsoleBusy, SerialConsole
from drivers.errors import DriverError
from vms.choices import VmState
from vms.models import ConsoleSession, VirtualMachine

log = logging.getLogger(__name__)

MIGRATED = "migrated to another server, reconnecting"
TAKEN_OVER = "taken over by another console session"
BUSY = "another console session is open on this VM"
GONE = "the VM was deleted"
POLL_S = 0.5
# After the stream ends, how long the inventory may take to record the VM on its new server before
# the end counts as a stop on this one (a migration job switches the inventory in its next step).
SETTLE_S = 10.0
RETRY_S = 3.0

# kind of a notice: "connected", "migrated", "waiting" (the guest is not running), "closed" (the
# stream ended, the VM did not move), "retrying" (the console could not be opened)
Notice = Callable[[str, str], None]


@dataclass(frozen=True)
class ConsoleTarget:
    uri: str
    domain: str
    server_id: int | None
    running: bool


def console_target(vm_pk: int) -> ConsoleTarget | None:
    """Where the VM's console is now, from the inventory; None: the VM is gone."""
    vm = VirtualMachine.objects.filter(pk=vm_pk).select_related("cpu_server").first()
    if vm is None:
        return None
    server = vm.cpu_server
    return ConsoleTarget(server.libvirt_uri if server else "", vm.domain_name, vm.cpu_server_id,
                         vm.state == VmState.RUNNING and server is not None)


def record_open(vm: VirtualMachine, user, via: str, client: str, username: str = "",
                kind: str = "serial") -> ConsoleSession:
    """The session's row and its audit event, together. A browser's or a token's `client` is its
    address; the command line's is its host's name (and its actor the command's, audit/actors.py)."""
    with transaction.atomic():
        session = ConsoleSession.objects.create(vm=vm, user=user if user is not None and user.pk else None,
                                                username=(username or getattr(user, "username", "") or "")[:150],
                                                via=via, client=client[:255], kind=kind)
        actor = Actor.of_user(user, via_token=via == "token", ip=client) if session.user is not None else None
        record(Action.CONSOLE_OPENED, "vm", vm.name, tenant_id=vm.tenant_id, actor=actor,
               details={"console": kind, "session": session.pk})
    return session


def record_close(session_pk: int, reason: str) -> None:
    ConsoleSession.objects.filter(pk=session_pk, closed_at__isnull=True).update(
        closed_at=timezone.now(), end_reason=reason[:255])


def recent_sessions(vm: VirtualMachine, limit: int = 10) -> list[ConsoleSession]:
    return list(vm.console_sessions.select_related("user")[:limit])


class ConsoleFollower:
    """The console of one VM for one client. `run` until `stop` is set or the console cannot be
    had (another session holds it, the VM was deleted); `write` from any thread."""

    def __init__(self, vm_pk: int, on_output: Callable[[bytes], None], on_notice: Notice, *,
                 force: bool = False, opener: type[SerialConsole] | None = None) -> None:
        self.vm_pk = vm_pk
        self.on_output, self.on_notice = on_output, on_notice
        self.force = force
        self.opener = opener or SerialConsole
        self._console: SerialConsole | None = None
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            console = self._console
        if console is not None:
            console.write(data)

    def run(self, stop: threading.Event) -> str:
        """Blocks; returns why it ended."""
        try:
            return self._run(stop)
        finally:
            self._swap(None)
            connection.close()  # this thread's own: it ends now

    def _swap(self, console: SerialConsole | None) -> None:
        with self._lock:
            old, self._console = self._console, console
        if old is not None:
            old.close()

    def _run(self, stop: threading.Event) -> str:
        had_console = False
        server_id: int | None = None
        next_try = 0.0
        said_waiting = said_retrying = False
        while not stop.is_set():
            target = console_target(self.vm_pk)
            if target is None:
                return GONE
            if had_console and target.server_id not in (None, server_id):
                self.on_notice("migrated", MIGRATED)
                server_id, next_try = target.server_id, 0.0
            if not target.running:
                if not said_waiting:
                    self.on_notice("waiting", "the guest is not running; the console opens when it starts")
                    said_waiting = True
                stop.wait(POLL_S)
                continue
            if time.monotonic() < next_try:
                stop.wait(POLL_S)
                continue
            console = self.opener(target.uri, target.domain, self.on_output, lambda _reason: None)
            try:
                # Taking over is for the first opening only: following a move must not take the
                # console from a session that opened it on the new server meanwhile.
                console.open(force=self.force and not had_console)
            except ConsoleBusy:
                return TAKEN_OVER if had_console else BUSY
            except DriverError as exc:
                log.info("console of VM %s: %s", self.vm_pk, exc)
                if not said_retrying:  # once until it opens: the terminal is no log
                    self.on_notice("retrying", "the console could not be opened; trying again")
                    said_retrying = True
                next_try = time.monotonic() + RETRY_S
                continue
            self._swap(console)
            had_console, server_id, said_waiting, said_retrying = True, target.server_id, False, False
            self.on_notice("connected", "")
            while not stop.is_set() and not console.wait(POLL_S):
                pass
            self._swap(None)
            if stop.is_set():
                break
            reason = console.end_reason
            if self._moved_within(SETTLE_S, server_id, stop):
                continue  # the next round says "migrated" and opens it there
            self.on_notice("closed", f"{reason}; reconnecting when the guest runs")
            next_try = time.monotonic() + RETRY_S
        return "closed"

    def _moved_within(self, seconds: float, server_id: int | None, stop: threading.Event) -> bool:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            target = console_target(self.vm_pk)
            if target is None or target.server_id not in (None, server_id):
                return True
            if not target.running:
                return False  # shut off here: nothing moved
            stop.wait(POLL_S)
        return False
