"""Sending one message to one target: email through Django's mail backend (SMTP settings from the
environment), a webhook as signed JSON over HTTP. One error type, `TransportError(permanent=...)`:
a permanent one (an address refused, a 4xx answer) is not tried again."""
from __future__ import annotations

import ipaddress
import json
import smtplib
import socket
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.mail import EmailMessage

from jobs.redaction import redactor_for
from notifications import pinned_http
from notifications.choices import Severity, TargetKind
from notifications.models import Delivery, Target
from notifications.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from notifications.webhook_secrets import SecretUnreadable, reveal
from tenants.access import is_operator

# Answers worth trying again: the receiver is overloaded, restarting or timing out.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
ERROR_TEXT_MAX = 500


class TransportError(Exception):
    def __init__(self, message: str, *, permanent: bool = False, response_code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.response_code = response_code


@dataclass(frozen=True)
class Message:
    """What a target's owner is told: for a tenant's user, without hosts, addresses or paths
    (jobs/redaction.py, as their job logs)."""

    delivery: int
    event: int
    kind: str
    severity: str
    subject: str
    details: str
    vm: str | None
    tenant: str | None
    time: str
    url: str

    @classmethod
    def of(cls, delivery: Delivery) -> Message:
        event, redact = delivery.event, redactor_for(delivery.target.owner)
        link = f"{settings.PANEL_URL.rstrip('/')}{event.path}" if settings.PANEL_URL and event.path else event.path
        return cls(delivery.pk, event.pk, event.kind, Severity(event.severity).label, redact(event.subject),
                   redact(event.details), event.vm_name or None, event.tenant_slug or None,
                   event.created_at.isoformat(), link)


def send(delivery: Delivery) -> int | None:
    """Send `delivery` once; the HTTP status of a webhook's answer, None for an email."""
    message = Message.of(delivery)
    if delivery.target.kind == TargetKind.EMAIL:
        send_email(delivery.target, message)
        return None
    return send_webhook(delivery.target, message)


def send_email(target: Target, message: Message) -> None:
    lines = [message.subject, "", message.details]
    if message.vm:
        lines += ["", f"VM: {message.vm}"]
    if message.url:
        lines += ["", message.url]
    lines += ["", f"{message.kind}, {message.severity}, {message.time}",
              f"You get this because of the notification target \"{target.name}\" in the XenAoE panel."]
    email = EmailMessage(f"[XenAoE {message.severity}] {message.subject}", "\n".join(lines), to=[target.email],
                         headers={"X-XenAoE-Event": message.kind, "X-XenAoE-Delivery": str(message.delivery)})
    try:
        email.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise TransportError(f"the mail server refused {target.email}: {exc.recipients}", permanent=True) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise TransportError(f"sending the email failed: {type(exc).__name__}: {exc}") from exc


def send_webhook(target: Target, message: Message) -> int:
    try:
        secret = reveal(target.secret_encrypted)
    except SecretUnreadable as exc:
        raise TransportError(str(exc), permanent=True) from exc
    # A tenant's webhook goes to the public addresses checked here and nowhere else (pinned_http.py);
    # an operator's, or any with NOTIFY_TENANT_WEBHOOKS_PRIVATE, wherever its name leads.
    pinned = None
    if not settings.NOTIFY_TENANT_WEBHOOKS_PRIVATE and not is_operator(target.owner):
        pinned = public_addresses(target.url)
    body = json.dumps(asdict(message), separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "xenaoe-panel",
               "X-XenAoE-Event": message.kind, "X-XenAoE-Delivery": str(message.delivery),
               TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}
    # No redirects: a receiver must not bounce the panel's request somewhere else.
    request = {"data": body, "headers": headers, "allow_redirects": False}
    timeout = settings.NOTIFY_WEBHOOK_TIMEOUT_S
    try:
        if pinned is None:
            response = requests.post(target.url, timeout=timeout, **request)
        else:
            response = pinned_http.post(target.url, pinned, timeout=timeout, **request)
    except requests.RequestException as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]) from exc
    code = response.status_code
    if 200 <= code < 300:
        return code
    text = f"HTTP {code} {response.reason}: {response.text[:200]}".strip()
    raise TransportError(text[:ERROR_TEXT_MAX], permanent=code not in TRANSIENT_HTTP, response_code=code)


def public_addresses(url: str) -> list[str]:
    """The addresses of the URL's host name, resolved once, each a public one. A tenant's webhook
    may not reach the panel's own networks (the hosts' management addresses, their BMCs, the panel
    machine itself): one address that is not global refuses it all."""
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise TransportError(f"cannot resolve {parts.hostname}: {exc}") from exc
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise TransportError(f"{parts.hostname} resolves to {address}, not a public address: a tenant's "
                                 "webhook may not reach the panel's own networks", permanent=True)
        addresses.append(str(address))
    if not addresses:
        raise TransportError(f"{parts.hostname} has no address")
    return list(dict.fromkeys(addresses))
