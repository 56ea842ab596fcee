"""What a host's address fields may hold. They end up on command lines run on the panel's machine
(ssh, ipmitool, libvirt's own ssh), so anything but an IP address or a DNS host name is refused:
above all a value starting with "-", which a program would read as an option."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_URI_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")

# A POSIX user name (useradd's rule), never an option.
ssh_user_validator = RegexValidator(r"^[a-z_][a-z0-9_.-]{0,31}\Z", "Not a user name (lower-case letters, digits, "
                                                                   "'_', '.', '-'; not starting with '-').")


def is_host_address(value: str) -> bool:
    """An IPv4 or IPv6 address, or a DNS host name (RFC 1123 labels; not all digits at the end)."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    if len(value) > 253 or not _DNS_NAME.fullmatch(value):
        return False
    return not value.rsplit(".", 1)[-1].isdigit()  # 256.1.1.1 is a bad IP address, not a name


def host_address_validator(value: str) -> None:
    if not is_host_address(value):
        raise ValidationError(f"{value!r} is not an IP address or a DNS host name", code="invalid")


def libvirt_uri_validator(value: str) -> None:
    """A libvirt URI whose host part, if any, is an address and whose user is a user name."""
    problem = _libvirt_uri_problem(value)
    if problem:
        raise ValidationError(f"{value!r} is not a libvirt URI: {problem}", code="invalid")


def _libvirt_uri_problem(value: str) -> str:
    if not value.isprintable() or any(c.isspace() for c in value):
        return "spaces or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if not _URI_SCHEME.fullmatch(parts.scheme):
        return "no scheme (qemu+ssh://, xen+ssh://, qemu:///system)"
    if parts.scheme.endswith("+libssh"):
        # Measured with Debian 12's libvirt 9.0: a reply over ~10 KB (a domain's XML, the host's
        # capabilities, guests' stats) waits 5-10 s for the keepalive to wake the client; reported
        # freezing outright elsewhere (docs/lab.md).
        return ("libvirt's libssh transport holds large replies for seconds: use "
                f"{parts.scheme}2:// (the same parameters) or {parts.scheme.removesuffix('+libssh')}+ssh://")
    if not parts.netloc:
        return ""  # a local URI: qemu:///system, test:///default
    if parts.username is not None:
        try:
            ssh_user_validator(parts.username)
        except ValidationError:
            return f"bad user {parts.username!r}"
    if parts.password is not None:
        return "a password in the URI"
    if not parts.hostname or not is_host_address(parts.hostname):
        return f"bad host {parts.hostname or ''!r}"
    if port is not None and not 1 <= port <= 65535:
        return f"bad port {port}"
    return ""
