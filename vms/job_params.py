"""The parameters of the VM job kinds (jobs/params.py): what each verb hands its job. The hosts of
the VM itself are not among them: start_job asks the VM (VirtualMachine.host_names)."""
from __future__ import annotations

from dataclasses import dataclass, field

from jobs.params import JobParams, Record
from vms.choices import VmState


@dataclass(frozen=True)
class NicParams(Record):
    network: str
    mac: str
    ip: str | None  # None: a network without an address pool


@dataclass(frozen=True)
class VmCreateParams(JobParams):
    """vm.create: what was asked and where the VM was placed (the rows hold the rest)."""

    host_fields = ("cpu_server",)
    vcpus: int
    memory_mib: int
    disk_mib: int
    cpu_server: str
    requested_cpu_server: str  # a CPU server's name, or "automatic"
    tenant: str | None  # the tenant's short name; None: the operators' own
    image: str | None
    nics: list[NicParams]
    # What a CPU server's failure would leave without room: the requester overrode the N+1 check.
    n_plus_one_override: list[str] = field(default_factory=list)
    iso: str | None = None  # the installer ISO in its CD drive
    anti_affinity_groups: list[str] = field(default_factory=list)  # its owner's groups it joined
    # Its groups whose members it was placed next to (no server apart had room, or the operator chose).
    anti_affinity_broken: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VmDeleteParams(JobParams):
    """vm.delete: the state a delete cancelled before it began gives the VM back."""

    state_before: str = VmState.UNKNOWN.value


@dataclass(frozen=True)
class VmPowerParams(JobParams):
    """vm.start, vm.shutdown, vm.reboot, vm.force_off: how long a shutdown may take before the guest
    is forced off (the two that shut down read it)."""

    timeout_s: int = 60


@dataclass(frozen=True)
class VmEjectParams(JobParams):
    """vm.eject: the ISO taken out, named in the job's message after the VM has forgotten it."""

    iso: str


@dataclass(frozen=True)
class VmMigrateParams(JobParams):
    """vm.migrate: from where to where, and the bandwidth cap in MiB/s (None: none)."""

    host_fields = ("source", "target")
    source: str
    target: str
    requested_target: str  # the target asked for, or "automatic"
    max_mib_per_s: int | None = None
    # Its groups whose members it goes next to (no server apart had room, or the operator chose).
    anti_affinity_broken: list[str] = field(default_factory=list)
