"""What /metrics says, read from the panel's records: a prometheus_client Collector, built anew on each
scrape. It reads the database (and the monitor's cycle time from the cache), never a host: a scrape
costs the same ten queries whatever the size of the site, and says what the panel knows, as its
pages do. Every name starts with `xenaoe_`; docs/operations.md lists them.

A state is a gauge per possible value (1 for the current one, 0 for the others), so that a series
never goes stale when the state changes. Jobs are archived (jobs/retention.py), so their durations
are a gauge histogram over the jobs finished in the last hour, not counters that archiving would
lower; incidents stay, so the failover durations are a real histogram.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence

from django.conf import settings
from django.db.models import Count, F, FloatField, OuterRef, Q, Subquery, Sum, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ha.choices import EventKind, IncidentKind, IncidentState
from ha.models import Incident, IncidentEvent
from hosts.choices import HostState
from hosts.models import DiskServer
from jobs.choices import FINISHED_STATES
from jobs.models import Job
from metrics import cycle_time
from storage.choices import MirrorHealth, MirrorState
from storage.models import Mirror
from vms.choices import VmState
from vms.models import VirtualMachine, VmSample
from vms.placement import Cluster
from xenaoe_panel.timecharts import Epoch

MIB = 1024 * 1024
JOB_WINDOW = datetime.timedelta(hours=1)
JOB_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
# The default settings fail a host over in ~12 s (docs/ha.md); a fence waiting for an operator, hours.
FAILOVER_BUCKETS_S = (5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600)
GUEST_FIGURES = (
    ("cpu_vcpus", "xenaoe_vm_cpu_busy_vcpus", "vCPUs the guest kept busy on average (CPU seconds per second)"),
    ("disk_read_bps", "xenaoe_vm_disk_read_bytes_per_second", "Bytes per second read from the guest's disks"),
    ("disk_write_bps", "xenaoe_vm_disk_write_bytes_per_second",
     "Bytes per second written to the guest's disks, both mirror legs counted"),
    ("net_rx_bps", "xenaoe_vm_network_receive_bytes_per_second", "Bytes per second the guest received"),
    ("net_tx_bps", "xenaoe_vm_network_transmit_bytes_per_second", "Bytes per second the guest sent"),
)


def _one_hot(family: GaugeMetricFamily, labels: list[str], values: Sequence[str], current: str) -> None:
    for value in values:
        family.add_metric([*labels, value], 1.0 if value == current else 0.0)


def host_metrics() -> Iterator[Metric]:
    state = GaugeMetricFamily("xenaoe_host_state", "1 for the state the host is in, 0 for the others.",
                              labels=["host", "role", "state"])
    missed = GaugeMetricFamily("xenaoe_host_missed_checks", "Checks the host missed in a row (the monitor's).",
                               labels=["host", "role"])
    seen = GaugeMetricFamily("xenaoe_host_last_seen_timestamp_seconds", "When the host last answered the monitor.",
                             labels=["host", "role"])
    memory = GaugeMetricFamily("xenaoe_cpu_server_memory_bytes", "A CPU server's memory for guests.", labels=["host"])
    allocated = GaugeMetricFamily(
        "xenaoe_cpu_server_memory_allocated_bytes",
        "A CPU server's memory counted as used, as the allocator counts it: its guests, what it holds for jobs "
        "moving guests to it, the domains the panel did not make.", labels=["host", "to"])
    vcpus = GaugeMetricFamily("xenaoe_cpu_server_vcpus", "A CPU server's CPUs for guests.", labels=["host"])
    vcpus_allocated = GaugeMetricFamily("xenaoe_cpu_server_vcpus_allocated",
                                        "vCPUs of the guests placed on a CPU server and of its reservations.",
                                        labels=["host"])
    guests = GaugeMetricFamily("xenaoe_cpu_server_guests", "Guests placed on a CPU server, whatever their state.",
                               labels=["host"])
    disk_capacity = GaugeMetricFamily("xenaoe_disk_server_capacity_bytes", "A disk server's space for volumes.",
                                      labels=["host"])
    disk_used = GaugeMetricFamily("xenaoe_disk_server_used_bytes", "A disk server's space given to exports.",
                                  labels=["host"])
    cluster = Cluster.load()
    for load in cluster.every.values():
        server, name = load.server, load.server.name
        _one_hot(state, [name, "cpu"], HostState.values, server.state)
        memory.add_metric([name], server.memory_mib * MIB)
        for to, mib in (("guests", load.guests_mib), ("reservations", load.reserved_mib),
                        ("foreign", load.foreign_mib)):
            allocated.add_metric([name, to], mib * MIB)
        vcpus.add_metric([name], server.vcpus)
        vcpus_allocated.add_metric([name], load.vcpus_used)
        guests.add_metric([name], load.guests)
        missed.add_metric([name, "cpu"], server.missed_checks)
        if server.last_seen_at is not None:
            seen.add_metric([name, "cpu"], server.last_seen_at.timestamp())
    for name, current, missed_checks, last_seen, capacity_mib, used_mib in DiskServer.objects.annotate(
            used=Sum("exports__size_mib")).values_list("name", "state", "missed_checks", "last_seen_at",
                                                         "capacity_mib", "used"):
        _one_hot(state, [name, "disk"], HostState.values, current)
        missed.add_metric([name, "disk"], missed_checks)
        if last_seen is not None:
            seen.add_metric([name, "disk"], last_seen.timestamp())
        disk_capacity.add_metric([name], capacity_mib * MIB)
        disk_used.add_metric([name], (used_mib or 0) * MIB)
    shortfalls = GaugeMetricFamily(
        "xenaoe_n_plus_one_shortfalls",
        "Up CPU servers whose failure would leave guests without room on the others (0: N+1 holds).",
        value=len(cluster.shortfalls()))
    yield from (state, missed, seen, memory, allocated, vcpus, vcpus_allocated, guests, disk_capacity, disk_used,
                shortfalls)


def vm_metrics(now: datetime.datetime) -> Iterator[Metric]:
    counts = dict(VirtualMachine.objects.order_by().values_list("state").annotate(n=Count("pk")))
    vms = GaugeMetricFamily("xenaoe_vms", "VMs by state.", labels=["state"])
    for value in VmState.values:
        vms.add_metric([value], counts.get(value, 0))
    health = GaugeMetricFamily("xenaoe_mirror_health",
                               "1 for the health of a VM's RAID1 as the guest sees it, 0 for the others.",
                               labels=["vm", "health"])
    wire = GaugeMetricFamily("xenaoe_mirror_state", "1 for the state of a VM's mirror legs on the SAN, 0 for the "
                             "others.", labels=["vm", "state"])
    missing = GaugeMetricFamily("xenaoe_mirror_missing_legs", "Legs of a VM's RAID1 without an in-sync copy.",
                                labels=["vm"])
    resync = GaugeMetricFamily("xenaoe_mirror_resync_percent", "How far a VM's RAID1 has resynced.", labels=["vm"])
    checked = GaugeMetricFamily("xenaoe_mirror_checked_timestamp_seconds", "When the guest was last asked.",
                                labels=["vm"])
    for vm, state, current, legs, percent, at in Mirror.objects.values_list(
            "vm__name", "state", "health", "missing_legs", "resync_percent", "checked_at"):
        _one_hot(health, [vm], MirrorHealth.values, current)
        _one_hot(wire, [vm], MirrorState.values, state)
        missing.add_metric([vm], len(legs) if isinstance(legs, list) else 0)
        if percent is not None:
            resync.add_metric([vm], percent)
        if at is not None:
            checked.add_metric([vm], at.timestamp())
    yield from (vms, health, wire, missing, resync, checked)
    yield from guest_figures(now)


def guest_figures(now: datetime.datetime) -> Iterator[Metric]:
    """Each guest's figures from its newest sample, if the sampler recorded one lately."""
    families = [GaugeMetricFamily(name, f"{text}, over the panel's last sampling interval.", labels=["vm"])
                for _field, name, text in GUEST_FIGURES]
    interval = settings.VM_STATS_INTERVAL_S
    if interval:
        newest = VmSample.objects.order_by().filter(time__gte=now - datetime.timedelta(seconds=3 * interval)).annotate(
            rank=Window(RowNumber(), partition_by=F("vm_id"), order_by=F("time").desc())).filter(rank=1)
        for vm, *values in newest.values_list("vm__name", *(field for field, _name, _text in GUEST_FIGURES)):
            for family, value in zip(families, values, strict=True):
                if value is not None:
                    family.add_metric([vm], value)
    yield from families


def incident_metrics() -> Iterator[Metric]:
    counts = {(kind, state): n for kind, state, n in
              Incident.objects.order_by().values_list("kind", "state").annotate(n=Count("pk"))}
    incidents = GaugeMetricFamily("xenaoe_incidents", "Incidents by kind and state (closed ones included).",
                                  labels=["kind", "state"])
    for kind in IncidentKind.values:
        for state in IncidentState.values:
            incidents.add_metric([kind, state], counts.get((kind, state), 0))
    last_restart = IncidentEvent.objects.filter(incident=OuterRef("pk"), kind=EventKind.RESTARTED).order_by("-time")
    # NULL seconds: no guest restarted (yet), not a failover to count.
    failovers = Incident.objects.filter(kind=IncidentKind.CPU_SERVER_FAILED).annotate(
        seconds=Epoch(Subquery(last_restart.values("time")[:1])) - Epoch("opened_at"))
    found = failovers.aggregate(count=Count("seconds"), sum=Sum("seconds", output_field=FloatField()),
                                **{f"le{i}": Count("pk", filter=Q(seconds__lte=bound))
                                   for i, bound in enumerate(FAILOVER_BUCKETS_S)})
    histogram = HistogramMetricFamily(
        "xenaoe_failover_duration_seconds",
        "From a CPU server declared dead to the last of its guests restarted elsewhere, per failover.")
    histogram.add_metric([], [(floatToGoString(bound), found[f"le{i}"]) for i, bound in enumerate(FAILOVER_BUCKETS_S)]
                         + [("+Inf", found["count"])], sum_value=found["sum"] or 0.0)
    yield from (incidents, histogram)


def job_metrics(now: datetime.datetime) -> Iterator[Metric]:
    recent = Q(finished_at__gte=now - JOB_WINDOW, started_at__isnull=False)
    rows = (Job.objects.order_by().annotate(seconds=Epoch("finished_at") - Epoch("started_at"))
            .values("kind", "state")
            .annotate(total=Count("pk"), recent=Count("pk", filter=recent),
                      seconds_sum=Sum("seconds", filter=recent, output_field=FloatField()),
                      **{f"le{i}": Count("pk", filter=recent & Q(seconds__lte=bound))
                         for i, bound in enumerate(JOB_BUCKETS_S)}))
    jobs = GaugeMetricFamily("xenaoe_jobs", "Jobs in the database by kind and state (finished ones until they are "
                             "archived).", labels=["kind", "state"])
    durations = GaugeHistogramMetricFamily(
        "xenaoe_job_duration_seconds", "From started to finished, for the jobs that finished in the last hour.",
        labels=["kind", "state"])
    for row in rows:
        jobs.add_metric([row["kind"], row["state"]], row["total"])
        if row["state"] in FINISHED_STATES:
            buckets = [(floatToGoString(bound), row[f"le{i}"]) for i, bound in enumerate(JOB_BUCKETS_S)]
            durations.add_metric([row["kind"], row["state"]], [*buckets, ("+Inf", row["recent"])],
                                 gsum_value=row["seconds_sum"] or 0.0)
    yield from (jobs, durations)


def monitor_metrics() -> Iterator[Metric]:
    """The leading monitor's cycle time (metrics/cycle_time.py); nothing if none was recorded."""
    times = cycle_time.read()
    if times is None:
        return
    histogram = HistogramMetricFamily("xenaoe_monitor_cycle_seconds",
                                      "How long the leading monitor's cycles take, since it took the lead.")
    buckets = [(floatToGoString(bound), n) for bound, n in zip(cycle_time.BUCKETS_S, times.buckets, strict=True)]
    histogram.add_metric([], buckets, sum_value=times.sum_s)
    yield histogram
    yield GaugeMetricFamily("xenaoe_monitor_last_cycle_seconds", "How long the leading monitor's last cycle took.",
                            value=times.last_s)
    yield GaugeMetricFamily("xenaoe_monitor_last_cycle_timestamp_seconds",
                            "When the leading monitor's last cycle ended: a monitor that stopped leaves it behind.",
                            value=times.last_at)


class PanelCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        yield from host_metrics()
        yield from vm_metrics(now)
        yield from incident_metrics()
        yield from job_metrics(now)
        yield from monitor_metrics()


def registry() -> CollectorRegistry:
    """A registry of the panel's metrics alone (no process or Python metrics of the web worker that
    happens to answer: a site runs several)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(PanelCollector())
    return found
