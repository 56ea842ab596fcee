"""Read a file inside a running guest through the QEMU guest agent (libvirt's qemuAgentCommand).

The panel's guests carry their RAID1 themselves (md over vda+vdb, docs/storage.md), so the only
place that knows whether the array is whole, and how far a resync is, is the guest's own
/proc/mdstat. The agent runs in the guest on the `org.qemu.guest_agent.0` virtio-serial channel
that drivers/hypervisor.py gives every KVM/QEMU domain; libvirt talks to it, so the panel needs no
path into the guest's network.

Two ways to read a file, because guest agents are often configured to refuse one of them (RHEL's
default policy blocks guest-exec, some block guest-file-*): `guest-file-open/read/close` first
(no process is started in the guest), `guest-exec` of `cat` when the agent says that is disabled.

Errors: `AgentUnavailable` (a DriverError) when there is no agent to ask — no channel, agent not
running, a Xen domain — so that the caller can say "no guest agent" rather than guess; any other
failure is a plain DriverError. Every call has an explicit timeout: the whole read, and each agent
command within it.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
from typing import Any

import libvirt
import libvirt_qemu

from drivers.errors import DriverError
from drivers.hypervisor import _call, _lookup_or_fail
from drivers.mdstat import MdStat, parse_mdstat

MDSTAT = "/proc/mdstat"
MAX_BYTES = 1 << 20  # far more than any mdstat; a file that keeps growing must not hold us
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
        dom = _lookup_or_fail(conn, uri, domain)
        if not dom.isActive():
            raise DriverError(f"{uri}: {domain} is not running", permanent=True)
        try:
            return _read_with_file_commands(dom, path, deadline)
        except _Disabled:
            return _read_with_exec(dom, path, deadline)

    try:
        return _call(uri, f"read {path} in {domain!r} through the guest agent", timeout, call)
    except DriverError as exc:
        cause = exc.__cause__
        if isinstance(cause, libvirt.libvirtError) and cause.get_error_code() in NO_AGENT_ERRORS:
            raise AgentUnavailable(f"{domain}: no guest agent answers ({cause.get_error_message()})",
                                   permanent=cause.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT) from cause
        raise


class _Disabled(Exception):
    """The agent refuses a command by policy or does not know it: try the other way."""


def _agent(dom: libvirt.virDomain, command: str, arguments: dict[str, Any], deadline: float) -> Any:
    # libvirt's agent timeout is whole seconds; at least 1, never past the caller's deadline.
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
    try:
        return json.loads(reply)["return"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"guest agent answered {command} with {reply[:200]!r}", permanent=True) from exc


def _read_with_file_commands(dom: libvirt.virDomain, path: str, deadline: float) -> str:
    handle = _agent(dom, "guest-file-open", {"path": path, "mode": "r"}, deadline)
    try:
        chunks: list[bytes] = []
        while sum(map(len, chunks)) < MAX_BYTES:
            part = _agent(dom, "guest-file-read", {"handle": handle, "count": 65536}, deadline)
            chunks.append(base64.b64decode(part.get("buf-b64", "")))
            if part.get("eof") or not part.get("count"):
                break
    finally:
        try:
            _agent(dom, "guest-file-close", {"handle": handle}, deadline)
        except (libvirt.libvirtError, DriverError, _Disabled):
            pass  # the agent drops its handles when it restarts; nothing else to do
    return b"".join(chunks).decode(errors="replace")


def _read_with_exec(dom: libvirt.virDomain, path: str, deadline: float) -> str:
    try:
        pid = _agent(dom, "guest-exec", {"path": "cat", "arg": [path], "capture-output": True}, deadline)["pid"]
    except _Disabled as exc:
        raise DriverError(f"the guest agent allows neither guest-file-read nor guest-exec: {exc}",
                          permanent=True) from exc
    while True:
        status = _agent(dom, "guest-exec-status", {"pid": pid}, deadline)
        if status.get("exited"):
            break
        if time.monotonic() > deadline:
            raise DriverError(f"cat {path} in the guest did not finish in time")
        time.sleep(0.1)
    if status.get("exitcode", 0) != 0:
        err = base64.b64decode(status.get("err-data", "")).decode(errors="replace").strip()
        raise DriverError(f"cat {path} in the guest exited {status.get('exitcode')}: {err}", permanent=True)
    return base64.b64decode(status.get("out-data", "")).decode(errors="replace")


_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
MAX_INTERFACES = 64  # a guest's answer is the guest's: bounded, and parsed with suspicion
MAX_ADDRESSES = 64


def addresses(uri: str, domain: str, *, timeout: float = 10) -> dict[str, set[str]]:
    """{MAC: the IP addresses the guest has on that interface} (guest-network-get-interfaces);
    entries that are not a MAC or an IP address are dropped, not trusted."""
    deadline = time.monotonic() + timeout

    def call(conn: libvirt.virConnect) -> dict[str, set[str]]:
        dom = _lookup_or_fail(conn, uri, domain)
        reply = _agent(dom, "guest-network-get-interfaces", {}, deadline)
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
        return _call(uri, f"network interfaces of {domain!r} through the guest agent", timeout, call)
    except DriverError as exc:
        cause = exc.__cause__
        if isinstance(cause, libvirt.libvirtError) and cause.get_error_code() in NO_AGENT_ERRORS:
            raise AgentUnavailable(f"{domain}: no guest agent answers ({cause.get_error_message()})") from cause
        raise
