"""What the panel's notifications reach in the tests: a real SMTP server (aiosmtpd) and a real HTTP
server taking webhooks, both on this machine's loopback, on free ports, each in a thread of its own.
The webhook receiver can be told to fail first (answer 503 a few times) and checks each signature
the way a receiver should (notifications/signing.py)."""
from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from notifications.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout:g} s")


class _MailHandler:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refused: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd's name)
        if address in self.refused:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 Message accepted"


class SmtpSink:
    """An SMTP server keeping every message it accepts; addresses in `refused` are refused."""

    def __init__(self) -> None:
        self.port = free_port()
        self._handler = _MailHandler()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[EmailMessage]:
        return self._handler.messages

    @property
    def refused(self) -> set[str]:
        return self._handler.refused

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in m["X-Envelope-To"]]

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        return verify(secret, self.headers.get(TIMESTAMP_HEADER, ""), self.body, self.headers.get(SIGNATURE_HEADER, ""))


class WebhookReceiver:
    """An HTTP server recording every POST; it answers the codes in `answers` first, in order, then 200.
    On 127.0.0.1 and a free port unless told (another loopback address, a given port), over TLS with
    `tls` (a server's SSLContext)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[Received] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                code = receiver.answers.pop(0) if receiver.answers else 200
                receiver.received.append(Received(time.monotonic(), self.path, dict(self.headers.items()), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in the tests' output
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver")

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        """Its URL, by its address or by the name given (which a test's resolver must answer)."""
        return f"{self.scheme}://{host or self._server.server_address[0]}:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
