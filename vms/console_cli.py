"""`manage.py vm console NAME`: the serial console on this terminal, through the same path as the
browser's (vms/console.py -> drivers/console.py -> libvirt on the VM's CPU server), like
`virsh console`: raw mode, Ctrl-] ends it, the VM followed to another server."""
from __future__ import annotations

import contextlib
import getpass
import os
import select
import socket
import termios
import threading
import tty

from vms import console as console_service
from vms.models import VirtualMachine

ESCAPE = b"\x1d"  # Ctrl-]


def attach(vm: VirtualMachine, *, force: bool = False, stdin: int = 0, stdout: int = 1) -> str:
    """Blocks until Ctrl-], the end of stdin, or the console cannot be had; returns why it ended."""

    def write(data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(stdout, data)

    def notice(_kind: str, message: str) -> None:
        if message:
            write(f"\r\n[{message}]\r\n".encode())

    session = console_service.record_open(vm, None, "cli", socket.gethostname(), username=getpass.getuser())
    follower = console_service.ConsoleFollower(vm.pk, write, notice, force=force)
    stop = threading.Event()
    outcome: dict[str, str] = {}
    thread = threading.Thread(target=lambda: outcome.update(reason=follower.run(stop)), name="console", daemon=True)
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    write(f"Connected to the serial console of {vm.name} (escape character is ^])\r\n".encode())
    reason = "escape character"
    try:
        if saved is not None:
            tty.setraw(stdin)
        thread.start()
        while thread.is_alive():
            readable, _, _ = select.select([stdin], [], [], 0.2)
            if not readable:
                continue
            data = os.read(stdin, 4096)
            if not data:
                reason = "end of input"
                break
            if ESCAPE in data:
                follower.write(data.split(ESCAPE, 1)[0])
                break
            follower.write(data)
        else:
            reason = outcome.get("reason", "closed")
    finally:
        stop.set()
        thread.join(10)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        console_service.record_close(session.pk, reason)
    write(f"\r\n[console closed: {reason}]\r\n".encode())
    return reason
