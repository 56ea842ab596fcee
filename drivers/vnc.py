"""A guest's VNC display, reached through SSH: `ssh -W ADDRESS:PORT` to the CPU server (the panel's
usual options: verified host keys, the ControlMaster connection reused), whose stdin and stdout are
the display's TCP stream. The display listens on the server's loopback only
(drivers/hypervisor.py), so nothing but SSH is opened on the network.

`open_tunnel` returns once the display has greeted ("RFB 003.00x"), or raises DriverError after an
explicit timeout; the caller reads and writes the process's pipes and kills it when done.
"""
from __future__ import annotations

import asyncio
import contextlib
import re

from drivers.errors import DriverError
from drivers.hypervisor import VncDisplay
from drivers.ssh import _HOST, _USER, SSHTarget, ssh_options

OPEN_TIMEOUT_S = 20.0
_RFB_GREETING = re.compile(rb"RFB \d{3}\.\d{3}\n")
_ADDRESS = re.compile(r"[0-9A-Za-z.:-]{1,64}")


def forward_command(target: SSHTarget, display: VncDisplay) -> list[str]:
    if not _HOST.fullmatch(target.host) or not _USER.fullmatch(target.user):
        raise DriverError(f"{target.label}: bad SSH destination", permanent=True)
    if not _ADDRESS.fullmatch(display.address) or not 0 < display.port < 65536:
        raise DriverError(f"bad VNC display {display}", permanent=True)
    address = f"[{display.address}]" if ":" in display.address else display.address
    return ["ssh", *ssh_options(target), "-W", f"{address}:{display.port}", "--", target.host]


class Tunnel:
    def __init__(self, process: asyncio.subprocess.Process, greeting: bytes) -> None:
        self.process, self.greeting = process, greeting

    async def read(self) -> bytes:
        """Some bytes from the display; b"" when it has gone (the guest stopped or moved)."""
        assert self.process.stdout is not None
        return await self.process.stdout.read(65536)

    async def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5)


async def open_tunnel(target: SSHTarget, display: VncDisplay, *, timeout: float = OPEN_TIMEOUT_S) -> Tunnel:
    process = await asyncio.create_subprocess_exec(
        *forward_command(target, display), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    tunnel = Tunnel(process, b"")
    try:
        assert process.stdout is not None
        greeting = await asyncio.wait_for(process.stdout.readexactly(12), timeout)
    except (TimeoutError, asyncio.IncompleteReadError) as exc:
        await tunnel.close()
        stderr = b""
        if process.stderr is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                stderr = await asyncio.wait_for(process.stderr.read(2000), 1)
        raise DriverError(f"{target.label}: no VNC display at {display.address}:{display.port}"
                          f" ({stderr.decode(errors='replace').strip() or type(exc).__name__})") from exc
    if not _RFB_GREETING.fullmatch(greeting):
        await tunnel.close()
        raise DriverError(f"{target.label}: {display.address}:{display.port} is not a VNC display", permanent=True)
    tunnel.greeting = greeting
    return tunnel
