"""libvirt domain lifecycle events from many hypervisors, as they happen.

One thread runs libvirt's default event loop; one thread per hypervisor keeps a connection open
(keepalive on, reconnecting with back-off when it drops) with a lifecycle callback registered.
Events are handed to the caller as plain dataclasses from the event-loop thread.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

log = logging.getLogger(__name__)

EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
# The details that change what an event means for the panel.
STARTED_DETAILS = {libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "migrated"}
STOPPED_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
}
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
RECONNECT_MAX_S = 30.0

_loop_lock = threading.Lock()
_loop_started = False


@dataclass(frozen=True)
class DomainEvent:
    server: str  # the name the caller gave the hypervisor
    domain: str
    event: str  # one of EVENTS' values
    detail: str  # "migrated", "destroyed", ... or ""


def ensure_event_loop() -> None:
    """libvirt needs its event loop registered before connections are opened, once a process."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt events", daemon=True).start()
        _loop_started = True


class DomainEventWatcher:
    """Watch `servers` ({name: libvirt URI}) until `stop` is set; call `on_event` for each event
    and `on_connection(name, connected, error)` when a connection comes or goes."""

    def __init__(self, servers: dict[str, str], on_event: Callable[[DomainEvent], None],
                 on_connection: Callable[[str, bool, str], None] | None = None) -> None:
        self.servers = dict(servers)
        self.on_event = on_event
        self.on_connection = on_connection or (lambda name, up, error: None)

    def run(self, stop: threading.Event) -> None:
        ensure_event_loop()
        threads = [
            threading.Thread(target=self._watch, args=(name, uri, stop), name=f"events {name}", daemon=True)
            for name, uri in self.servers.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _watch(self, name: str, uri: str, stop: threading.Event) -> None:
        delay = 1.0
        while not stop.is_set():
            closed = threading.Event()
            try:
                conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                self.on_connection(name, False, str(exc.get_error_message() or exc))
                stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
                conn.registerCloseCallback(lambda _conn, _reason, flag: flag.set(), closed)
                callback_id = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._callback, name
                )
            except libvirt.libvirtError as exc:
                self.on_connection(name, False, str(exc.get_error_message() or exc))
                conn.close()
                stop.wait(delay)
                continue
            delay = 1.0
            self.on_connection(name, True, "")
            while not stop.is_set() and not closed.is_set():
                stop.wait(0.5)
            try:
                if not closed.is_set():
                    conn.domainEventDeregisterAny(callback_id)
                    conn.unregisterCloseCallback()
                conn.close()
            except libvirt.libvirtError:
                pass
            if closed.is_set():
                self.on_connection(name, False, "connection closed")

    def _callback(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int,
                  server: str) -> None:
        kind = EVENTS.get(event, "unknown")
        details = STARTED_DETAILS if kind == "started" else STOPPED_DETAILS if kind == "stopped" else {}
        try:
            self.on_event(DomainEvent(server, dom.name(), kind, details.get(detail, "")))
        except Exception:  # one bad handler call must not stop the event loop
            log.exception("handling an event of %s on %s failed", dom.name(), server)
