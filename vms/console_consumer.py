"""The consoles over websockets: the serial console at `ws/vms/<name>/console/serial/[?force=1]`, the
graphical one (VNC, for noVNC) at `ws/vms/<name>/console/vnc/` (VncConsoleConsumer, below).

Binary frames carry the console's raw bytes both ways (keystrokes in, the guest's output out).
Text frames are JSON: the server sends {"type": "status", "state": ..., "message": ...} when the
console connects, follows the VM to another server, waits for the guest; the client may send
{"type": "resize", "cols": N, "rows": N} (a serial line has no window size: accepted and ignored).
What the panel itself says also goes into the terminal as a bracketed line.

Authenticate (session or `Authorization: Token`), authorise (the VM visible to the user, else
4404 like every object; the tenant allowed `console`, else 4403), record the session, then hand
the work to vms/console.py in a thread of its own. Close codes: 4401 not signed in, 4404 no such
VM for this user, 4403 not allowed (or the user's access changed while open: xenaoe_panel/ws_guard.py
ends the socket on logout, tenant move, deactivation, the permission withdrawn), 4409 another
session holds the console (reconnect with ?force=1 to take it over), 4410 the VM was deleted.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from drivers.errors import DriverError
from jobs.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from tenants.access import may_run
from vms import console as console_service
from vms import graphics
from vms.models import VirtualMachine

CLOSE_FORBIDDEN = 4403
CLOSE_BUSY = 4409
CLOSE_GONE = 4410
CLOSE_UNAVAILABLE = 4503  # the VNC display cannot be reached now (not running, host down): try again
DETACH_WAIT_S = 10.0
MAX_PENDING_OUTPUT = 4 * 1024 * 1024  # bytes not yet sent to a slow client before output is dropped
NOTICE_CLOSE_CODES = {console_service.BUSY: CLOSE_BUSY, console_service.TAKEN_OVER: CLOSE_BUSY,
                      console_service.GONE: CLOSE_GONE}


def _authorise(consumer: AsyncWebsocketConsumer, user, name: str, kind: str) -> int | bool | None:
    """The VM's pk if this user may open its console (the session recorded); None: no such VM for
    them (4404); False: not allowed (4403)."""
    vm = VirtualMachine.objects.visible_to(user).filter(name=name).first()
    if vm is None:
        return None
    if not may_run(user, "console"):
        return False
    via = "token" if consumer.scope.get("token_auth") else "browser"
    client = consumer.scope.get("client") or ("", 0)
    consumer.session_pk = console_service.record_open(vm, user, via, str(client[0] or ""), kind=kind).pk
    return vm.pk


class SerialConsoleConsumer(AsyncWebsocketConsumer):
    session_pk: int | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        name = self.scope["url_route"]["kwargs"]["name"]
        found = await database_sync_to_async(self._authorise)(user, name)
        if found is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if found is False:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.vm_pk = found
        query = parse_qs(self.scope.get("query_string", b"").decode())
        force = query.get("force", [""])[0] in ("1", "true", "yes")
        await self.accept()
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.pending = 0
        self.stop = threading.Event()
        self.follower = console_service.ConsoleFollower(self.vm_pk, self._output_from_thread,
                                                        self._notice_from_thread, force=force)
        self.sender = asyncio.ensure_future(self._send_loop())
        self.runner = asyncio.ensure_future(self._run())

    def _authorise(self, user, name: str) -> int | bool | None:
        return _authorise(self, user, name, "serial")

    async def _run(self) -> None:
        thread_done = asyncio.Event()
        outcome: dict[str, str] = {}

        def work() -> None:
            try:
                outcome["reason"] = self.follower.run(self.stop)
            except Exception as exc:  # noqa: BLE001 - reported to the client, logged
                console_service.log.exception("console of VM %s failed", self.vm_pk)
                outcome["reason"] = f"error: {type(exc).__name__}"
            finally:
                self._from_thread(thread_done.set)

        threading.Thread(target=work, name=f"console vm {self.vm_pk}", daemon=True).start()
        await thread_done.wait()
        reason = outcome.get("reason", "closed")
        if self.stop.is_set():
            return  # the client went: disconnect() records it
        await database_sync_to_async(console_service.record_close)(self.session_pk, reason)
        await self.outbox.put(("line", reason))
        await self.outbox.put(("status", ("ended", reason)))
        await self.outbox.put(("close", NOTICE_CLOSE_CODES.get(reason, 1000)))

    # --- from the follower's threads ---------------------------------------------------------

    def _from_thread(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is gone (the server is stopping): nobody to tell
            pass

    def _output_from_thread(self, data: bytes) -> None:
        self._from_thread(self._queue_output, data)

    def _notice_from_thread(self, kind: str, message: str) -> None:
        self._from_thread(self._queue_notice, kind, message)

    def _queue_output(self, data: bytes) -> None:
        if self.pending > MAX_PENDING_OUTPUT:
            return  # a client that does not read: drop rather than grow without bound
        self.pending += len(data)
        self.outbox.put_nowait(("bytes", data))

    def _queue_notice(self, kind: str, message: str) -> None:
        if message:
            self.outbox.put_nowait(("line", message))
        self.outbox.put_nowait(("status", (kind, message)))

    async def _send_loop(self) -> None:
        while True:
            kind, value = await self.outbox.get()
            if kind == "bytes":
                self.pending -= len(value)
                await self.send(bytes_data=value)
            elif kind == "line":
                await self.send(bytes_data=f"\r\n[{value}]\r\n".encode())
            elif kind == "status":
                state, message = value
                await self.send(text_data=json.dumps({"type": "status", "state": state, "message": message}))
            elif kind == "close":
                await self.close(code=value)
                return

    # --- from the client ---------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data:
            self.follower.write(bytes_data)
        # JSON control frames (resize) need nothing from a serial line.

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "stop"):
            return
        self.stop.set()
        self.sender.cancel()
        if self.session_pk is not None:
            await database_sync_to_async(console_service.record_close)(self.session_pk, f"client closed ({code})")
        # The follower detaches from the console within its close timeout; wait for it, so that
        # nothing of this socket outlives it.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.runner), DETACH_WAIT_S)


class VncConsoleConsumer(AsyncWebsocketConsumer):
    """`ws/vms/<name>/console/vnc/`: the VM's VNC display for noVNC, bytes both ways (RFB over binary
    frames). Same authorisation and close codes as the serial console; when the display's stream
    ends (the guest stopped or moved) the socket closes with 1000 and the page reconnects, finding
    the VM wherever it runs then (vms/graphics.py)."""

    session_pk: int | None = None
    tunnel = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        found = await database_sync_to_async(_authorise)(self, user, self.scope["url_route"]["kwargs"]["name"], "vnc")
        if found is None or found is False:
            await self.close(code=CLOSE_NOT_FOUND if found is None else CLOSE_FORBIDDEN)
            return
        await self.accept()  # first: a browser learns the close code only of an accepted socket
        self.pump = asyncio.ensure_future(self._pump(found))

    async def _pump(self, vm_pk: int) -> None:
        try:
            self.tunnel = await graphics.open_display(vm_pk)
        except DriverError as exc:
            console_service.log.info("VNC of VM %s: %s", vm_pk, exc)
            await database_sync_to_async(console_service.record_close)(self.session_pk, "the display is not reachable")
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        await self.send(bytes_data=self.tunnel.greeting)
        while data := await self.tunnel.read():
            await self.send(bytes_data=data)
        await database_sync_to_async(console_service.record_close)(self.session_pk, "the display closed")
        await self.close(code=1000)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data and self.tunnel is not None:
            try:
                await self.tunnel.write(bytes_data)
            except (ConnectionError, RuntimeError):
                pass  # the display went: the pump ends the socket

    async def disconnect(self, code: int) -> None:
        if getattr(self, "pump", None) is not None:
            self.pump.cancel()
        if self.tunnel is not None:
            await self.tunnel.close()
        if self.session_pk is not None:
            await database_sync_to_async(console_service.record_close)(self.session_pk, f"client closed ({code})")
