"""The least of a websocket client (RFC 6455) for the benches that talk to Daphne as a browser would."""
from __future__ import annotations

import base64
import os
import select
import socket
import struct
import time


class WebSocket:
    """The least of a websocket client (RFC 6455) for the bench: binary frames out, frames in."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        head, self.buffer = response.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"no websocket: {head[:200]!r}")

    def send(self, data: bytes) -> None:
        mask = os.urandom(4)
        length = len(data)
        size = bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + struct.pack(">H", length)
        header = bytes([0x82]) + size
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _need(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                return False
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the websocket closed")
            self.buffer += chunk
        return True

    def receive(self, timeout: float) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame, or None after `timeout`."""
        if not self._need(2, timeout):
            return None
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        start = 2
        if length == 126:
            self._need(4, 10)
            length, start = struct.unpack(">H", self.buffer[2:4])[0], 4
        elif length == 127:
            self._need(10, 10)
            length, start = struct.unpack(">Q", self.buffer[2:10])[0], 10
        self._need(start + length, 10)
        payload, self.buffer = self.buffer[start:start + length], self.buffer[start + length:]
        if opcode == 8:
            raise RuntimeError(f"closed by the panel: {payload[:2].hex()}")
        return opcode, payload

    def close(self) -> None:
        self.sock.close()
