"""A host's state: every change is a compare-and-set on its row, then told to the open pages.

Who changes a host's state decides why (the monitor from its checks, a fence, maintenance, an
operator returning a host); this module is how, the same for every one of them. The row is written
only if it is still in the state the caller read: two writers never both act on one transition, and
a state set meanwhile by someone else is never overwritten (the caller re-reads and decides again).
Each change goes to the "hosts" group (`ws/hosts/`: every page with a host badge) once the
transaction that made it commits.
"""
from __future__ import annotations

from typing import Any

from django.utils import timezone

from hosts.models import CpuServer, DiskServer
from xenaoe_panel.broadcast import send_on_commit

HOSTS_GROUP = "hosts"
Host = CpuServer | DiskServer


def host_event(host: Host) -> dict[str, Any]:
    return {"type": "host.state", "host": {
        "kind": "cpu" if isinstance(host, CpuServer) else "disk", "id": host.pk, "name": host.name,
        "state": host.state, "state_display": host.get_state_display(), "colour": host.state_colour,
        "missed_checks": host.missed_checks, "last_check_error": host.last_check_error,
        "last_seen_at": host.last_seen_at.isoformat() if host.last_seen_at else None,
    }}


def publish_host(host: Host) -> None:
    """Push what `host` holds (state, missed checks, last error) to the pages after the transaction commits."""
    send_on_commit([HOSTS_GROUP], host_event(host), f"the state of {host.name}")


def change_state(host: Host, state: str, *, expected: str | None = None, publish: bool = True,
                 **fields: Any) -> bool:
    """Set the row of `host` to `state`, with `fields` beside it (the monitor's check results), if
    it is still in `expected` (default: the state read into `host`); `state_changed_at` is stamped
    when the state changes. On success `host` holds what was written and, unless `publish` is
    False, the pages hear of it; False when the row had moved on, and nothing was written."""
    expected = host.state if expected is None else expected
    values = dict(fields)
    if state != expected:
        values.update(state=state, state_changed_at=timezone.now())
    row = type(host).objects.filter(pk=host.pk, state=expected)
    if not (row.update(**values) if values else row.exists()):
        return False
    host.state = expected
    for name, value in values.items():
        setattr(host, name, value)
    if publish:
        publish_host(host)
    return True
