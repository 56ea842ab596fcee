"""CPU servers' history: samples recorded by the monitor, thinned out in SQL, drawn as an inline SVG
(xenaoe_panel/timecharts.py).

A sample is what the panel's own records say a CPU server carries (counted as the allocator counts
it: the VMs placed on it, what it holds for moves under way, foreign domains last seen), never a
question to the host: rendering the page touches no network and the history stays meaningful while
a host is down. The monitor calls `record_cycle` every cycle; it writes at most once per
HOST_HISTORY_INTERVAL_S (the newest sample in the table decides, so a restarted monitor does not
write a burst) and deletes what is older than HOST_HISTORY_RETENTION_DAYS.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Avg, Max, Min
from django.utils import timezone

from hosts.capacity import mib_text
from hosts.models import CpuServer, HostSample
from vms.placement import server_loads
from xenaoe_panel.timecharts import MAX_POINTS, Chart, Frame, bucket_rows, bucket_text

logger = logging.getLogger(__name__)
BLUE, ORANGE, ORANGE_TEXT, GREY = "#0d6efd", "#fd7e14", "#b35900", "#6c757d"
RANGES: dict[str, datetime.timedelta] = {
    "1h": datetime.timedelta(hours=1),
    "24h": datetime.timedelta(hours=24),
    "7d": datetime.timedelta(days=7),
}
DEFAULT_RANGE = "24h"
# How early a sample may come and still count as the next one: the monitor's cycles jitter.
_EARLY = datetime.timedelta(milliseconds=500)


# --- recording -----------------------------------------------------------------------------------

def record_samples(now: datetime.datetime | None = None, interval_s: int | None = None) -> int:
    """One sample per CPU server, unless the newest sample is younger than the interval.
    Returns how many were written."""
    now = now or timezone.now()
    interval = datetime.timedelta(seconds=settings.HOST_HISTORY_INTERVAL_S if interval_s is None else interval_s)
    newest = HostSample.objects.aggregate(newest=Max("time"))["newest"]
    if newest is not None and newest <= now < newest + interval - _EARLY:
        return 0
    samples = [HostSample(cpu_server_id=pk, time=now, memory_used_mib=load.used_mib, memory_mib=load.server.memory_mib,
                          guests=load.guests) for pk, load in server_loads().items()]
    HostSample.objects.bulk_create(samples)
    return len(samples)


def prune_samples(now: datetime.datetime | None = None, days: int | None = None) -> int:
    """Delete samples older than `days` (HOST_HISTORY_RETENTION_DAYS; 0 keeps them all)."""
    days = settings.HOST_HISTORY_RETENTION_DAYS if days is None else days
    if not days:
        return 0
    cutoff = (now or timezone.now()) - datetime.timedelta(days=days)
    return HostSample.objects.filter(time__lt=cutoff).delete()[0]


def record_cycle(now: datetime.datetime | None = None) -> None:
    """The monitor's hook. The history is a nicety: a failure here is logged and never stops the
    monitor from watching hosts."""
    try:
        if record_samples(now):
            prune_samples(now)
    except Exception:
        logger.exception("could not record the CPU servers' history")


# --- reading: buckets computed by the database ---------------------------------------------------

@dataclass(frozen=True)
class Bucket:
    """The samples of one time bucket, aggregated by the database."""
    index: int  # the bucket's start is index * seconds since 1970
    time: datetime.datetime  # the mean time of its samples: where it is drawn
    samples: int
    memory_used_max: int
    memory_used_min: int
    memory_used_avg: float
    memory_mib: int  # the most the server had for guests in the bucket
    guests_max: int
    guests_min: int


def downsample(server: CpuServer | int, start: datetime.datetime, end: datetime.datetime,
               max_points: int = MAX_POINTS) -> tuple[int, list[Bucket]]:
    """Samples with start <= time < end in buckets aligned on multiples of the bucket width (the same
    buckets from one reload to the next), at most `max_points` of them; returns (width s, buckets)."""
    server_pk = server.pk if isinstance(server, CpuServer) else server
    width, rows = bucket_rows(
        HostSample.objects.filter(cpu_server_id=server_pk), start, end, max_points,
        memory_used_max=Max("memory_used_mib"), memory_used_min=Min("memory_used_mib"),
        memory_used_avg=Avg("memory_used_mib"), memory_mib=Max("memory_mib"),
        guests_max=Max("guests"), guests_min=Min("guests"),
    )
    return width, [
        Bucket(row["bucket"], row["time"], row["samples"], row["memory_used_max"], row["memory_used_min"],
               float(row["memory_used_avg"]), row["memory_mib"], row["guests_max"], row["guests_min"])
        for row in rows
    ]


# --- drawing -------------------------------------------------------------------------------------

def chart(server: CpuServer, range_key: str, now: datetime.datetime | None = None,
          interval_s: int | None = None) -> Chart:
    """The history of one CPU server over 1h, 24h or 7d, up to now: memory used (the peak of each
    bucket) as an area under the memory for guests (dashed), guests as a step line on the right."""
    if range_key not in RANGES:
        range_key = DEFAULT_RANGE
    end = now or timezone.now()
    start = end - RANGES[range_key]
    width, buckets = downsample(server, start, end)
    # A gap longer than a few samples (the monitor stopped) breaks the lines instead of bridging it.
    interval = settings.HOST_HISTORY_INTERVAL_S if interval_s is None else interval_s
    frame = Frame(start, end, gap_s=3 * max(width, interval))
    memory_top = max(1, server.memory_mib, *(b.memory_mib for b in buckets), *(b.memory_used_max for b in buckets))
    guests_top = max([0, *(b.guests_max for b in buckets)]) + 1  # headroom: the line never hides under the frame
    series = (
        frame.dashed("capacity", "memory for guests", GREY, [(b.time, b.memory_mib) for b in buckets], memory_top),
        frame.area("memory", f"memory used (the peak of every {bucket_text(width)}, left axis)", BLUE,
                   [(b.time, b.memory_used_max) for b in buckets], memory_top),
        frame.step("guests", "guests (right axis)", ORANGE, [(b.time, b.guests_max) for b in buckets], guests_top),
    )
    return Chart(
        "history", f"Memory used and guests on {server.name}, last {range_key}", range_key, start, end, width,
        sum(b.samples for b in buckets), series, frame.ticks(), _summary(server, range_key, buckets),
        f"No samples in the last {range_key} yet: the monitor (python manage.py monitor) records one "
        f"every {interval} s.",
        mib_text(memory_top), BLUE, str(guests_top), ORANGE_TEXT,
    )


def _summary(server: CpuServer, range_key: str, buckets: list[Bucket]) -> str:
    if not buckets:
        return f"No samples of {server.name} in the last {range_key}."
    last = buckets[-1]
    peak = max(buckets, key=lambda b: b.memory_used_max)
    return (f"{server.name}, last {range_key}: memory used peaked at {mib_text(peak.memory_used_max)} of "
            f"{mib_text(peak.memory_mib)} ({timezone.localtime(peak.time):%Y-%m-%d %H:%M}); latest "
            f"{mib_text(last.memory_used_max)}, {last.guests_max} guest{'s' if last.guests_max != 1 else ''}; "
            f"guests between {min(b.guests_min for b in buckets)} and {max(b.guests_max for b in buckets)}.")
