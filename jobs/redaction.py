"""Job logs for users who are not operators.

A job's log is the operators' record: it names the hosts, their addresses, libvirt and migration
URIs, backing paths, AoE addresses, and the traceback of an unexpected error. A tenant's user gets
the same log without any of that: every non-operator loses addresses, URIs, paths, MACs, AoE
addresses and tracebacks; one whose tenant is not shown the CPU server
(tenants.access.shows_cpu_server) also gets every host name replaced by its role.

Two passes: structural first (what an entry's data says is a host, an address or a path is hidden,
and the same value is scrubbed from its message), then patterns over every string (the inventory's
host names and addresses, URIs, absolute paths, IP and MAC addresses, eS.L).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from hosts.models import CpuServer, DiskServer
from jobs.kinds import host_keys
from tenants.access import is_operator, shows_cpu_server

INTERNAL_ERROR = "internal error, reported to the operators"

# Keys of an entry's data that hold where things are on the hosts: hidden from every tenant.
HIDDEN_KEYS = {
    "address": "an address", "bmc_address": "an address", "hostname": "a host", "uri": "a host URI",
    "libvirt_uri": "a host URI", "migration_uri": "a host URI", "backing_path": "a path", "path": "a path",
    "device": "a device", "mac": "a MAC address", "macs": "MAC addresses", "san_mac": "a MAC address",
}
DROPPED_KEYS = {"traceback"}

# The runner's words for an unexpected error (jobs/runner.py): "<step> raised <Type>: <text>" in the
# entry that carries the traceback, "<step>: unexpected <Type>: <text>" in the job's message.
_RAISED = re.compile(r" raised [A-Za-z_][\w.]*: .*", re.S)
_UNEXPECTED = re.compile(r"\bunexpected [A-Za-z_][\w.]*: .*", re.S)
_URI = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s,;()<>'\"]*")
# An absolute path (not "1/3" nor "MiB/s": nothing word-like right before the slash).
_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w+@-]|\.(?=[\w+@/-])|/(?=[\w.+@-]))+")
_MAC = re.compile(r"(?<![\w:])[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}(?![\w:])")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?\]?(?![\w:])")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?!\w|\.\d)")
_AOE = re.compile(r"(?<![\w./-])e\d{1,5}\.\d{1,3}(?!\w|\.\d)")


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        ipaddress.IPv6Address(text.strip("[]").split("%")[0])
    except ValueError:
        return text  # a time of day (12:34:56) or anything else with colons
    return "an address"


def _path(match: re.Match[str]) -> str:
    return "a device" if match.group(0).startswith("/dev/") else "a path"


class Redactor:
    """Called on a string, a job's summary or a log entry (as dicts), or lists of them. Templates get
    it as `redact` (jobs.context_processors) and use it through the `redacted` filter."""

    do_not_call_in_templates = True

    def __init__(self, *, hide: bool, roles: dict[str, str] | None = None,
                 literals: dict[str, str] | None = None, host_keys: frozenset[str] = frozenset()) -> None:
        self.hide = hide
        self.roles = roles or {}  # host name -> role, when names are hidden
        self.literals = literals or {}  # the inventory's addresses -> what a tenant reads instead
        # Keys of an entry's data that name a host (those the job kinds declare as their hosts): a
        # name there that the inventory no longer has is hidden too, when names are.
        self.host_keys = host_keys
        self._names = _word_pattern(self.roles)

    def __call__(self, value: Any) -> Any:
        return self._walk(value, {}) if self.hide else value

    def _walk(self, value: Any, found: dict[str, str]) -> Any:
        if isinstance(value, str):
            return self._scrub(value, found)
        if isinstance(value, dict):
            return self._dict(value, found)
        if isinstance(value, list | tuple):
            return [self._walk(item, found) for item in value]
        return value

    def _dict(self, value: dict[str, Any], found: dict[str, str]) -> dict[str, Any]:
        data = value.get("data")
        if isinstance(data, dict):  # a log entry: what its data says hides the same words in its message
            found = found | self._structural(data)
        found = found | self._structural(value)
        result = {}
        for key, item in value.items():
            if key in DROPPED_KEYS:
                continue
            if key == "message" and isinstance(item, str) and isinstance(data, dict) and "traceback" in data:
                result[key] = _RAISED.sub(f": {INTERNAL_ERROR}", item)
                continue
            if key in HIDDEN_KEYS and isinstance(item, str | list):
                result[key] = HIDDEN_KEYS[key]
                continue
            result[key] = self._walk(item, found)
        return result

    def _structural(self, data: dict[str, Any]) -> dict[str, str]:
        found = {}
        for key, item in data.items():
            values = [item] if isinstance(item, str) else item if isinstance(item, list) else []
            for text in values:
                if not isinstance(text, str) or len(text) < 2:
                    continue
                if key in HIDDEN_KEYS:
                    found[text] = HIDDEN_KEYS[key]
                elif key in self.host_keys and self.roles and text not in self.roles:
                    found[text] = "a host"
        return found

    def _scrub(self, text: str, found: dict[str, str]) -> str:
        text = _UNEXPECTED.sub(INTERNAL_ERROR, text)
        literals = self.literals | found
        if literals:
            text = _word_pattern(literals).sub(lambda m: literals[m.group(1)], text)
        text = _URI.sub("a host URI", text)
        text = _PATH.sub(_path, text)
        text = _MAC.sub("a MAC address", text)
        text = _IPV6_CANDIDATE.sub(_ipv6, text)
        text = _IPV4.sub("an address", text)
        text = _AOE.sub("a disk export", text)
        if self._names is not None:
            text = self._names.sub(lambda m: self.roles[m.group(1)], text)
        return text


def _word_pattern(words: dict[str, str]) -> re.Pattern[str] | None:
    """Any of `words` as a whole word: not inside a longer name (cpu1 in cpu10, or in xa-cpu1-old)."""
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alternatives})(?![\w-])")


OPERATOR_VIEW = Redactor(hide=False)


def redactor_for(user: Any) -> Redactor:
    """What this user may read of a job: everything for operators; for a tenant's user, no
    address, URI, path or traceback, and no host name unless the tenant is shown them."""
    if is_operator(user):
        return OPERATOR_VIEW
    names = {name: "a CPU server" for name in CpuServer.objects.values_list("name", flat=True)}
    names |= {name: "a disk server" for name in DiskServer.objects.values_list("name", flat=True)}
    literals: dict[str, str] = {}
    for address, bmc in CpuServer.objects.values_list("address", "bmc_address"):
        literals |= {a: "an address" for a in (address, bmc) if a}
    literals |= {a: "an address" for a in DiskServer.objects.values_list("address", flat=True) if a}
    for name in names:  # a host whose address is its name: the name rule decides
        literals.pop(name, None)
    return Redactor(hide=True, roles={} if shows_cpu_server(user) else names, literals=literals,
                    host_keys=host_keys())
