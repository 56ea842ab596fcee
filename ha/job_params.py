"""The parameters of high availability's job kinds (jobs/params.py): each names the CPU server it
is about."""
from __future__ import annotations

from dataclasses import dataclass

from jobs.params import JobParams


@dataclass(frozen=True)
class EvacuateParams(JobParams):
    """host.evacuate: the host, why (for its log), who asked ("maintenance" or "suspect": the
    monitor) and each migration's bandwidth cap in MiB/s (None: none)."""

    host_fields = ("host",)
    host: str
    reason: str
    trigger: str
    max_mib_per_s: int | None = None


@dataclass(frozen=True)
class ReturnParams(JobParams):
    """host.return: the host back from maintenance."""

    host_fields = ("host",)
    host: str


@dataclass(frozen=True)
class FailoverParams(JobParams):
    """host.failover: the incident that declared the host dead, and the host."""

    host_fields = ("host",)
    incident: int
    host: str
