"""The serial console of a running Debian guest on the lab, through the panel's websocket with an API
token, as a script would use it: log in on ttyS0 with the password set at creation, run a command,
live-migrate the VM, type again after the console followed it; another tenant's user gets 4404;
`manage.py vm console` on a pseudo-terminal; the VNC display's greeting through its websocket.
The whole ASGI stack (origin check, token middleware, the stream guard, the consumer) runs in this
process against the real Redis channel layer; the console itself is libvirt's, over qemu+ssh."""
from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import sys
import threading
import time

import pytest
from channels.testing import WebsocketCommunicator

from api.tokens import issue_token
from tests.conftest import REPO, _child_env
from tests.console_guest import PASSWORD, console_guest, expect
from tests.integration.on_the_hosts import succeeded
from vms.console import MIGRATED
from vms.migration import migrate_vm
from vms.models import ConsoleSession, VirtualMachine

pytestmark = [pytest.mark.lab, pytest.mark.slow]  # a full Debian boot: `make slow`
VM = "con1"


class Socket:
    """A websocket to the ASGI app on an event loop of its own, driven from this (sync) test."""

    def __init__(self, path: str, token: str) -> None:
        from xenaoe_panel.asgi import application

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
                   (b"authorization", f"Token {token}".encode())]
        self.communicator = self._run(self._make(application, path, headers))
        self.output = bytearray()
        self.statuses: list[dict] = []
        self.closed: int | None = None

    @staticmethod
    async def _make(application, path, headers) -> WebsocketCommunicator:
        return WebsocketCommunicator(application, path, headers=headers)

    def _run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def connect(self) -> tuple[bool, int | None]:
        return self._run(self.communicator.connect(timeout=10))

    def pump(self, seconds: float = 0.3) -> None:
        """Take everything the server sent within `seconds`."""
        async def take() -> None:
            import json

            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and self.closed is None:
                if await self.communicator.receive_nothing(timeout=0.05):
                    continue
                message = await self.communicator.receive_output(timeout=1)
                if message["type"] == "websocket.close":
                    self.closed = message.get("code")
                elif message.get("bytes") is not None:
                    self.output += message["bytes"]
                elif message.get("text") is not None:
                    self.statuses.append(json.loads(message["text"]))
        self._run(take())

    def text(self) -> str:
        self.pump()
        return self.output.decode(errors="replace")

    def type(self, text: str) -> None:
        self._run(self.communicator.send_to(bytes_data=text.encode()))

    def close(self) -> None:
        try:
            self._run(self.communicator.disconnect(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _log_in(console: Socket) -> None:
    console.type("\r")
    expect(console.text, r"login: $", 180, "the getty's login prompt")
    console.type("debian\r")
    expect(console.text, r"Password: $", 30, "the password prompt")
    console.type(PASSWORD + "\r")
    expect(console.text, r"debian@con1:~\$ $", 60, "a shell prompt")


def test_serial_console_through_the_websocket_follows_a_live_migration(lab_hosts, default_image):
    with console_guest(VM) as world:
        token = issue_token(world["alice"])
        console = Socket(f"/ws/vms/{VM}/console/serial/", token)
        try:
            assert console.connect()[0]
            expect(lambda: (console.pump(), str(console.statuses))[1], "connected", 30, "the console connected")
            started = time.monotonic()
            _log_in(console)
            print(f"\nlogged in on ttyS0 {time.monotonic() - started:.1f} s after the console opened")
            console.type("echo console-$((6*7))-ok; hostname\r")
            expect(console.text, r"console-42-ok\r\ncon1\r\n", 30, "the command's output")

            migrated = succeeded(migrate_vm(VM, "cpu1"))
            assert VirtualMachine.objects.get(name=VM).cpu_server.name == "cpu1", migrated.message
            moved = time.monotonic()
            expect(console.text, rf"\[{MIGRATED}\]", 60, "the migration notice")
            expect(lambda: (console.pump(), str(console.statuses[-1:]))[1], "connected", 60,
                   "the console reopened on cpu1")
            print(f"console reopened {time.monotonic() - moved:.1f} s after the migration job ended")
            console.type("\recho after-$((40+2))-move\r")
            expect(console.text, r"after-42-move\r\n", 30, "the command's output after the migration")
            assert console.closed is None
        finally:
            console.close()

        # Another tenant's user: the VM does not exist for them.
        other = Socket(f"/ws/vms/{VM}/console/serial/", issue_token(world["bob"]))
        try:
            assert other.connect() == (False, 4404)
        finally:
            other.close()

        session = ConsoleSession.objects.get(vm__name=VM)
        assert (session.username, session.via) == ("alice", "token")
        assert session.closed_at is not None and session.end_reason.startswith("client closed")

        # The same shell from the panel machine's command line, on the VM's new server; Ctrl-] ends it.
        output = _cli_console(["echo cli-$((2+3))-ok\r"], r"cli-5-ok\r\n")
        assert "Connected to the serial console of con1" in output and "[console closed: escape character]" in output
        cli = ConsoleSession.objects.filter(vm__name=VM, via="cli").get()
        assert cli.closed_at is not None and cli.end_reason == "escape character"

        # The graphical console from a script: the guest's VNC display greets through the panel
        # (ssh -W to the loopback of cpu1, where the guest runs now).
        screen = Socket(f"/ws/vms/{VM}/console/vnc/", token)
        try:
            assert screen.connect()[0]
            expect(lambda: (screen.pump(), bytes(screen.output[:12]).decode(errors="replace"))[1],
                   r"^RFB 003\.00\d\n$", 30, "the VNC display's greeting")
            screen.type("RFB 003.008\n")  # the client's version: the server offers its security types
            expect(lambda: (screen.pump(), str(len(screen.output)))[1], r"^(1[3-9]|[2-9]\d)$", 10,
                   "the security types")
        finally:
            screen.close()


def _cli_console(lines: list[str], wanted: str) -> str:
    """`manage.py vm console con1` on a pseudo-terminal: type `lines`, wait for `wanted`, then Ctrl-]."""
    from django.conf import settings

    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "manage.py", "vm", "console", VM], cwd=REPO, stdin=child, stdout=child,
                            stderr=child, env=_child_env(settings.DATABASES["default"]["NAME"]))
    os.close(child)
    seen = bytearray()

    def read() -> str:
        while select.select([main], [], [], 0.1)[0]:
            try:
                seen.extend(os.read(main, 4096))
            except OSError:
                break
        return seen.decode(errors="replace")

    try:
        expect(read, r"Connected to the serial console", 30, "the CLI's greeting")
        for attempt in range(6):  # what is typed before the console has opened is not kept
            for line in lines:
                os.write(main, line.encode())
            try:
                expect(read, wanted, 5, "the output in the CLI")
                break
            except AssertionError:
                if attempt == 5:
                    raise
        os.write(main, b"\x1d")
        assert proc.wait(timeout=20) == 0, read()
        return read()
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
