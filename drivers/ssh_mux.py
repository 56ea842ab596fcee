"""A command in a new session on a host, through the host's OpenSSH ControlMaster, without `ssh`.

drivers/ssh.py runs every command through an `ssh` process, which reuses the host's ControlMaster;
that process alone costs ~5 ms of CPU (start, libraries, options), and the monitor asks every host
each cycle: at 200 hosts every 2 s, more than half a core. This module speaks OpenSSH's
multiplexing protocol (PROTOCOL.mux in OpenSSH's sources) to the master itself: hello, a new
session running the command with /dev/null as its stdin, stdout and stderr (passed as descriptors),
then the session's exit message. Host keys, authentication and the connection stay OpenSSH's: the
master made them. When no master takes the session, the caller does what `ssh` itself does then:
it connects on its own (drivers/ssh.py, whose `ssh` also starts a master for the next time).
"""
from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from pathlib import Path

MUX_VERSION = 4
MSG_HELLO = 0x00000001
C_NEW_SESSION = 0x10000002
S_PERMISSION_DENIED = 0x80000002
S_FAILURE = 0x80000003
S_EXIT_MESSAGE = 0x80000004
S_SESSION_OPENED = 0x80000006
NO_ESCAPE_CHAR = 0xFFFFFFFF
REQUEST_ID = 1


class NoSession(Exception):
    """No master took the session (none runs, a stale socket, it refused): nothing ran."""


class SessionLost(Exception):
    """The master went away after the session opened: the command's fate is unknown."""


def control_path(control_dir: Path, host: str, port: int, user: str) -> Path:
    """The socket OpenSSH uses for `ControlPath DIR/%C`: %C is the SHA-1 of the local host name,
    the destination (which ssh lower-cases), the port and the remote user (and a ProxyJump host,
    which the panel never uses: empty)."""
    key = f"{socket.gethostname()}{host.lower()}{port}{user}"
    return control_dir / hashlib.sha1(key.encode()).hexdigest()  # noqa: S324 - OpenSSH's own choice


def run(path: Path, command: str, timeout: float) -> int:
    """Run `command` through the master listening at `path`; its exit status. Raises NoSession,
    SessionLost, or TimeoutError when the session did not end within `timeout` seconds (a master
    whose host fell silent waits for the host's answer to open the session)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            _send(sock, struct.pack(">II", MSG_HELLO, MUX_VERSION))
            if _unpack(_receive(sock, deadline))[0] != MSG_HELLO:
                raise NoSession(f"{path}: not an OpenSSH master")
            _send(sock, struct.pack(">II", C_NEW_SESSION, REQUEST_ID) + _string(b"")
                  # no tty, no X11, no agent, not a subsystem, no escape character; no terminal type
                  + struct.pack(">IIIII", 0, 0, 0, 0, NO_ESCAPE_CHAR) + _string(b"")
                  + _string(command.encode()))
            null = os.open(os.devnull, os.O_RDWR)
            try:
                for _ in ("stdin", "stdout", "stderr"):
                    socket.send_fds(sock, [b"\0"], [null])
            finally:
                os.close(null)
            kind, body = _unpack(_receive(sock, deadline))
        except TimeoutError:
            raise
        except (OSError, EOFError) as exc:  # no socket, a stale one, a master exiting
            raise NoSession(f"{path}: {exc}") from exc
        if kind in (S_FAILURE, S_PERMISSION_DENIED):
            raise NoSession(f"{path}: the master refused the session: {_reason(body)}")
        if kind != S_SESSION_OPENED:
            raise NoSession(f"{path}: unexpected answer {kind:#x} to a new session")
        while True:
            try:
                kind, body = _unpack(_receive(sock, deadline))
            except TimeoutError:
                raise
            except (OSError, EOFError) as exc:
                raise SessionLost(f"{path}: the master closed the session") from exc
            if kind == S_EXIT_MESSAGE:
                return struct.unpack(">II", body[:8])[1]  # session id, exit status


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def _receive(sock: socket.socket, deadline: float) -> bytes:
    (length,) = struct.unpack(">I", _exactly(sock, 4, deadline))
    return _exactly(sock, length, deadline)


def _exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the master closed the connection")
        data += chunk
    return data


def _unpack(message: bytes) -> tuple[int, bytes]:
    return struct.unpack(">I", message[:4])[0], message[4:]


def _reason(body: bytes) -> str:
    """The reason string after the request id in a failure or permission-denied answer."""
    if len(body) < 8:
        return "no reason given"
    (length,) = struct.unpack(">I", body[4:8])
    return body[8:8 + length].decode(errors="replace")
