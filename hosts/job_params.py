"""The parameters of the cluster job kinds (jobs/params.py); cluster.verify takes none."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.params import JobParams


@dataclass(frozen=True)
class FixParams(JobParams):
    """cluster.fix: a whitelisted fix and its arguments (hosts/fixes.py checks them against the
    fix's own), the line the job shows, and the verify finding it answers (`{"job", "serial"}`)."""

    host_fields = ("cpu_server", "disk_server")
    fix: str
    args: dict[str, Any]
    label: str
    source: dict[str, int] = field(default_factory=dict)
    # The host the fix acts on, as its arguments name it: the job's host.
    cpu_server: str | None = None
    disk_server: str | None = None
