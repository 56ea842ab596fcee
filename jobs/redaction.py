"""Job logs for users who are not told the cluster's hosts.

A job's log is the operators' record and names the hosts it acted on. A tenant's user who may not
see which CPU server runs their VM (tenants.access.shows_cpu_server) gets the same log with every
host name replaced by its role, in messages and in the structured data alike.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hosts.models import CpuServer, DiskServer
from tenants.access import shows_cpu_server

Redact = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def redactor_for(user: Any) -> Redact:
    """A function that hides host names from this user; the identity for those who may see them."""
    if shows_cpu_server(user):
        return _identity
    roles = {name: "a CPU server" for name in CpuServer.objects.values_list("name", flat=True)}
    roles |= {name: "a disk server" for name in DiskServer.objects.values_list("name", flat=True)}
    if not roles:
        return _identity
    # A host name as a whole word: not inside a longer name (cpu1 in cpu10, or in xa-cpu1-old).
    names = "|".join(re.escape(n) for n in sorted(roles, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w-])({names})(?![\w-])")

    def redact(value: Any) -> Any:
        if isinstance(value, str):
            return pattern.sub(lambda m: roles[m.group(1)], value)
        if isinstance(value, dict):
            return {key: redact(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [redact(item) for item in value]
        return value

    return redact
