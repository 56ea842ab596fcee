"""Read a file inside a running guest through the QEMU guest agent (libvirt's qemuAgentCommand).

The panel's guests carry their RAID1 themselves (md over vda+vdb, docs/storage.md), so the only
place that knows whether the array is whole, and how far a resync is, is the guest's own
/proc/mdstat. The agent runs in the guest on the `org.qemu.guest_agent.0` virtio-serial channel
that drivers/hypervisor.py gives the domains of every flavour with a guest agent (KVM and QEMU,
drivers/hypervisors/); libvirt talks to it, so the panel needs no path into the guest's network.

Two ways to read a file, because guest agents are often configured to refuse one of them (RHEL's
default policy blocks guest-exec, some block guest-file-*): `guest-file-open/read/close` first
(no process is started in the guest), `guest-exec` of `cat` when the agent says that is disabled.

Errors: `AgentUnavailable` (a DriverError) when there is no agent to ask — no channel, agent not
running, a Xen domain — so that the caller can say "no guest agent" rather than guess; any other
failure is a plain DriverError. Every call has an explicit timeout: the whole read, and each agent
command within it.

The agent is the tenant's (it runs in their guest), so its answers are hostile input: each reply is
bounded in size before it is parsed, checked for the types qemu-ga sends, and the file for its
size (MAX_BYTES) and the number of reads it takes; anything else is a permanent DriverError.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import time
from typing import Any

import libvirt
import libvirt_qemu

from drivers.errors import DriverError
from drivers.libvirt_calls import lookup_or_fail, with_connection
from drivers.mdstat import MdStat, parse_mdstat

MDSTAT = "/proc/mdstat"
MAX_BYTES = 64 * 1024  # far more than any mdstat (drivers/mdstat.py: MAX_TEXT); a larger file is refused
READ_CHUNK = 16 * 1024
MAX_READS = MAX_BYTES // READ_CHUNK + 8  # an agent that never says "eof" is given up on
# A reply carries at most one read's data, base64 (4/3) and its JSON around it.
MAX_REPLY_CHARS = 4 * MAX_BYTES // 3 + 4096
# libvirt's codes for "nobody is listening on the agent channel".
NO_AGENT_ERRORS = frozenset({
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
    libvirt.VIR_ERR_NO_SUPPORT,  # a hypervisor driver without agent commands (Xen)
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
})
DISABLED_MARKERS = ("has been disabled", "not found", "CommandNotFound")


class AgentUnavailable(DriverError):
    """No guest agent answers for this domain (none installed or running, no channel, or a
    hypervisor without one). Trying again later may help (the guest may still be booting)."""


def read_mdstat(uri: str, domain: str, *, timeout: float = 10) -> MdStat:
    """The guest's /proc/mdstat, parsed (drivers/mdstat.py)."""
    text = read_file(uri, domain, MDSTAT, timeout=timeout)
    try:
        return parse_mdstat(text)
    except ValueError as exc:
        raise DriverError(f"{domain}: {MDSTAT} from the guest agent does not parse: {exc}", permanent=True) from exc


def read_file(uri: str, domain: str, path: str, *, timeout: float = 10) -> str:
    """The text of `path` inside the running `domain`, through its guest agent."""
    deadline = time.monotonic() + timeout

    def call(conn: libvirt.virConnect) -> str:
        dom = lookup_or_fail(conn, uri, domain)
        if not dom.isActive():
            raise DriverError(f"{uri}: {domain} is not running", permanent=True)
        try:
            return _read_with_file_commands(dom, path, deadline)
        except _Disabled:
            return _read_with_exec(dom, path, deadline)

    try:
        return with_connection(uri, f"read {path} in {domain!r} through the guest agent", timeout, call)
    except DriverError as exc:
        cause = exc.__cause__
        if isinstance(cause, libvirt.libvirtError) and cause.get_error_code() in NO_AGENT_ERRORS:
            raise AgentUnavailable(f"{domain}: no guest agent answers ({cause.get_error_message()})",
                                   permanent=cause.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT) from cause
        raise


class _Disabled(Exception):
    """The agent refuses a command by policy or does not know it: try the other way."""


def _agent(dom: libvirt.virDomain, command: str, arguments: dict[str, Any], deadline: float, *,
           max_reply: int = MAX_REPLY_CHARS) -> Any:
    # libvirt's agent timeout is whole seconds; at least 1, never past the caller's deadline.
    if time.monotonic() > deadline:
        raise DriverError(f"guest agent: out of time before {command}")
    seconds = max(1, int(deadline - time.monotonic()))
    try:
        reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": command, "arguments": arguments}),
                                              seconds, 0)
    except libvirt.libvirtError as exc:
        if any(marker in (exc.get_error_message() or "") for marker in DISABLED_MARKERS):
            raise _Disabled(exc.get_error_message()) from exc
        raise
    if reply is None:
        raise DriverError(f"guest agent gave no answer to {command}")
    if len(reply) > max_reply:
        raise DriverError(f"guest agent answered {command} with {len(reply)} characters: larger than any "
                          f"reply to it ({max_reply})", permanent=True)
    try:
        return json.loads(reply)["return"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise DriverError(f"guest agent answered {command} with {reply[:100]!r}", permanent=True) from exc


_REQUIRED = object()


def _typed(value: Any, kind: type, command: str, what: str) -> Any:
    """`value` if it is what qemu-ga sends (a bool is not an int here), else a permanent DriverError."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DriverError(f"guest agent answered {command} with a malformed reply ({what} is not {kind.__name__})",
                          permanent=True)
    return value


def _field(reply: Any, command: str, name: str, kind: type, default: Any = _REQUIRED) -> Any:
    """reply[name], checked; `default` when it is absent, if one is given."""
    if not isinstance(reply, dict):
        raise DriverError(f"guest agent answered {command} with a malformed reply (not an object)", permanent=True)
    if name not in reply and default is not _REQUIRED:
        return default
    return _typed(reply.get(name), kind, command, repr(name))


def _decode(data: str, command: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DriverError(f"guest agent answered {command} with data that is not base64", permanent=True) from exc


def _too_large(path: str) -> DriverError:
    return DriverError(f"{path} in the guest is larger than {MAX_BYTES} bytes: refused", permanent=True)


def _read_with_file_commands(dom: libvirt.virDomain, path: str, deadline: float) -> str:
    handle = _typed(_agent(dom, "guest-file-open", {"path": path, "mode": "r"}, deadline), int,
                    "guest-file-open", "the handle")
    try:
        data = bytearray()
        for _ in range(MAX_READS):
            part = _agent(dom, "guest-file-read", {"handle": handle, "count": READ_CHUNK}, deadline)
            data += _decode(_field(part, "guest-file-read", "buf-b64", str), "guest-file-read")
            if len(data) > MAX_BYTES:
                raise _too_large(path)
            if _field(part, "guest-file-read", "eof", bool, False) or not _field(part, "guest-file-read", "count", int):
                break
        else:
            raise DriverError(f"guest agent: no end of file after {MAX_READS} reads of {path}", permanent=True)
    finally:
        try:
            _agent(dom, "guest-file-close", {"handle": handle}, deadline)
        except (libvirt.libvirtError, DriverError, _Disabled):
            pass  # the agent drops its handles when it restarts; nothing else to do
    return data.decode(errors="replace")


def _read_with_exec(dom: libvirt.virDomain, path: str, deadline: float) -> str:
    try:
        started = _agent(dom, "guest-exec", {"path": "cat", "arg": [path], "capture-output": True}, deadline)
    except _Disabled as exc:
        raise DriverError(f"the guest agent allows neither guest-file-read nor guest-exec: {exc}",
                          permanent=True) from exc
    pid = _field(started, "guest-exec", "pid", int)
    while True:
        status = _agent(dom, "guest-exec-status", {"pid": pid}, deadline)
        if _field(status, "guest-exec-status", "exited", bool):
            break
        if time.monotonic() > deadline:
            raise DriverError(f"cat {path} in the guest did not finish in time")
        time.sleep(0.1)
    exitcode = _field(status, "guest-exec-status", "exitcode", int, 0)
    if exitcode != 0:
        err = _decode(_field(status, "guest-exec-status", "err-data", str, ""), "guest-exec-status")
        raise DriverError(f"cat {path} in the guest exited {exitcode}: {err[:200].decode(errors='replace').strip()}",
                          permanent=True)
    out = _decode(_field(status, "guest-exec-status", "out-data", str, ""), "guest-exec-status")
    if len(out) > MAX_BYTES:
        raise _too_large(path)
    return out.decode(errors="replace")


_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
MAX_INTERFACES = 64  # a guest's answer is the guest's: bounded, and parsed with suspicion
MAX_ADDRESSES = 64
MAX_INTERFACES_REPLY_CHARS = 1 << 20  # MAX_INTERFACES of MAX_ADDRESSES each, with their statistics


def addresses(uri: str, domain: str, *, timeout: float = 10) -> dict[str, set[str]]:
    """{MAC: the IP addresses the guest has on that interface} (guest-network-get-interfaces);
    entries that are not a MAC or an IP address are dropped, not trusted."""
    deadline = time.monotonic() + timeout

    def call(conn: libvirt.virConnect) -> dict[str, set[str]]:
        dom = lookup_or_fail(conn, uri, domain)
        reply = _agent(dom, "guest-network-get-interfaces", {}, deadline, max_reply=MAX_INTERFACES_REPLY_CHARS)
        found: dict[str, set[str]] = {}
        for interface in reply[:MAX_INTERFACES] if isinstance(reply, list) else []:
            mac = str(interface.get("hardware-address", "")).lower() if isinstance(interface, dict) else ""
            if not _MAC.fullmatch(mac):
                continue
            ips = found.setdefault(mac, set())
            for entry in (interface.get("ip-addresses") or [])[:MAX_ADDRESSES]:
                try:
                    ips.add(str(ipaddress.ip_address(str(entry.get("ip-address", ""))[:64])))
                except (ValueError, AttributeError):
                    continue
        return found

    try:
        return with_connection(uri, f"network interfaces of {domain!r} through the guest agent", timeout, call)
    except DriverError as exc:
        cause = exc.__cause__
        if isinstance(cause, libvirt.libvirtError) and cause.get_error_code() in NO_AGENT_ERRORS:
            raise AgentUnavailable(f"{domain}: no guest agent answers ({cause.get_error_message()})") from cause
        raise
