"""A guest's serial console through libvirt (`virDomainOpenConsole` on a `virStream`), the same for
KVM/QEMU and Xen, over whatever URI the panel reaches the CPU server with (`qemu+ssh://...`).

One `SerialConsole` is one open console: its own connection (keepalive on, so a dead host ends it
within about KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT + 1) seconds), a non-blocking stream whose
bytes libvirt's event loop thread (drivers/domain_events.ensure_event_loop) hands to `on_output`,
and a writer thread that sends what `write()` queued, so that no caller ever blocks on the network.
When the stream ends (the guest's QEMU went away: shut off, migrated, host lost; another session
took the console over) `on_end(reason)` is called once, from whichever thread saw it.

Opening has an explicit timeout; a console already held by another session raises ConsoleBusy
unless `force` takes it over (the other session then ends).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import libvirt

from drivers import guard
from drivers.domain_events import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL_S, ensure_event_loop
from drivers.errors import DriverError
from drivers.libvirt_calls import PERMANENT_ERRORS

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 20.0
# A write the stream has not taken after this long means the connection is gone.
WRITE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
READ_CHUNK = 64 * 1024
MAX_WRITE_QUEUE = 1024  # chunks of keyboard input waiting to be sent: beyond, input is dropped
# What libvirt says when another client holds the console (virChrdevOpen).
_BUSY_WORDS = "active console session exists"


class ConsoleBusy(DriverError):
    """Another session holds the console (a browser tab, `virsh console`, `manage.py vm console`)."""


class SerialConsole:
    def __init__(self, uri: str, domain: str, on_output: Callable[[bytes], None],
                 on_end: Callable[[str], None]) -> None:
        self.uri, self.domain = uri, domain
        self._on_output, self._on_end = on_output, on_end
        self._conn: libvirt.virConnect | None = None
        self._stream: libvirt.virStream | None = None
        self._writes: queue.Queue[bytes | None] = queue.Queue(MAX_WRITE_QUEUE)
        self._ended = threading.Event()
        self._end_lock = threading.Lock()
        self._closed = False
        self.end_reason = ""

    # --- opening -----------------------------------------------------------------------------

    def open(self, *, force: bool = False, timeout: float = OPEN_TIMEOUT_S) -> None:
        """Connect and attach to the domain's first serial console; DriverError (ConsoleBusy when
        another session holds it) after at most `timeout` seconds."""
        guard.before_host_call()
        ensure_event_loop()  # before the connection: its keepalive and the stream's events need it
        outcome: dict[str, BaseException] = {}
        abandoned = threading.Event()

        def work() -> None:
            conn = stream = None
            try:
                conn = libvirt.open(self.uri)
                conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
                dom = conn.lookupByName(self.domain)
                stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
                dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else 0)
                stream.eventAddCallback(libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                                        | libvirt.VIR_STREAM_EVENT_HANGUP, self._on_event, None)
                conn.registerCloseCallback(lambda _c, _reason, _o: self._end("the connection to the server closed"),
                                           None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = exc
                _quietly(stream.abort if stream is not None else None)
                _quietly(conn.close if conn is not None else None)
                return
            if abandoned.is_set():  # the caller gave up meanwhile: nobody will close these
                _quietly(stream.eventRemoveCallback)
                _quietly(stream.abort)
                _quietly(conn.close)
                return
            self._conn, self._stream = conn, stream

        worker = threading.Thread(target=work, name=f"console open {self.domain}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            abandoned.set()
            raise DriverError(f"{self.uri}: opening the console of {self.domain!r} timed out after {timeout:g} s")
        error = outcome.get("error")
        if isinstance(error, libvirt.libvirtError):
            message = error.get_error_message() or str(error)
            if _BUSY_WORDS in message.lower():
                raise ConsoleBusy(f"{self.domain}: another session holds the console")
            raise DriverError(f"{self.uri}: console of {self.domain!r}: {message}",
                              permanent=error.get_error_code() in PERMANENT_ERRORS) from error
        if error is not None:
            raise error
        threading.Thread(target=self._writer, name=f"console write {self.domain}", daemon=True).start()

    # --- while open --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue keyboard input; returns at once. Dropped once the console has ended."""
        if data and not self._ended.is_set():
            try:
                self._writes.put_nowait(bytes(data))
            except queue.Full:
                log.warning("console of %s: input dropped, the stream does not take it", self.domain)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        """libvirt's event loop thread: read all there is, then see whether the stream ended."""
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while not self._ended.is_set():
                try:
                    data = stream.recv(READ_CHUNK)
                except libvirt.libvirtError as exc:
                    self._end(f"the console stream failed: {exc.get_error_message() or exc}")
                    return
                if data == -2:  # nothing more for now
                    break
                if not data:
                    self._end("the console closed")
                    return
                try:
                    self._on_output(data)
                except Exception:  # the caller's problem must not stop libvirt's event loop
                    log.exception("console of %s: handing output on failed", self.domain)
        if events & libvirt.VIR_STREAM_EVENT_HANGUP:
            self._end("the console closed")
        elif events & libvirt.VIR_STREAM_EVENT_ERROR:
            self._end("the console stream failed")

    def _writer(self) -> None:
        while True:
            data = self._writes.get()
            if data is None or self._ended.is_set():
                return
            deadline = time.monotonic() + WRITE_TIMEOUT_S
            while data:
                stream = self._stream
                if stream is None or self._ended.is_set():
                    return
                try:
                    sent = stream.send(data)
                except libvirt.libvirtError as exc:
                    self._end(f"writing to the console failed: {exc.get_error_message() or exc}")
                    return
                if sent == -2:
                    if time.monotonic() > deadline:
                        self._end(f"the console took no input for {WRITE_TIMEOUT_S:g} s")
                        return
                    time.sleep(0.01)
                    continue
                data = data[sent:]

    def _end(self, reason: str) -> None:
        with self._end_lock:
            if self._ended.is_set():
                return
            self.end_reason = reason
            self._ended.set()
        _quietly(lambda: self._writes.put_nowait(None))
        try:
            self._on_end(reason)
        except Exception:
            log.exception("console of %s: the end handler failed", self.domain)

    # --- closing -----------------------------------------------------------------------------

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Detach from the console (the guest notices nothing) and close the connection. Safe to
        call more than once and after the stream ended by itself; gives up after `timeout`."""
        with self._end_lock:
            if self._closed:
                return
            self._closed = True
            if not self._ended.is_set():
                self.end_reason = "closed"
                self._ended.set()
        _quietly(lambda: self._writes.put_nowait(None))
        stream, conn, self._stream, self._conn = self._stream, self._conn, None, None

        def work() -> None:
            if stream is not None:
                _quietly(stream.eventRemoveCallback)
                _quietly(stream.abort)
            if conn is not None:
                _quietly(conn.unregisterCloseCallback)
                _quietly(conn.close)

        closer = threading.Thread(target=work, name=f"console close {self.domain}", daemon=True)
        closer.start()
        closer.join(timeout)


def _quietly(fn: Callable[[], object] | None) -> None:
    if fn is None:
        return
    try:
        fn()
    except (libvirt.libvirtError, queue.Full):
        pass
