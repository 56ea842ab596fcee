"""CPU servers' history: samples recorded by the monitor, thinned out in SQL, drawn as an inline SVG.

A sample is what the panel's own records say a CPU server carries (counted as the allocator counts
it: the VMs placed on it, what it holds for moves under way, foreign domains last seen), never a
question to the host: rendering the page touches no network and the history stays meaningful while
a host is down. The monitor calls `record_cycle` every cycle; it writes at most once per
HOST_HISTORY_INTERVAL_S (the newest sample in the table decides, so a restarted monitor does not
write a burst) and deletes what is older than HOST_HISTORY_RETENTION_DAYS.
"""
from __future__ import annotations

import datetime
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Avg, Count, F, FloatField, Func, Max, Min, Value
from django.db.models.functions import Floor
from django.utils import timezone

from hosts.capacity import mib_text
from hosts.models import CpuServer, HostSample
from vms.placement import server_loads

logger = logging.getLogger(__name__)

MAX_POINTS = 300
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

class Epoch(Func):
    """Seconds since 1970 of a datetime column, as a float, on PostgreSQL and on SQLite (the demo)."""
    output_field = FloatField()

    def as_postgresql(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::float8", **extra)

    def as_sqlite(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        # Django stores UTC text there. Whole seconds exactly, then the milliseconds (julianday's float
        # is off by microseconds, enough to put a sample on a bucket boundary in the bucket before).
        # '%%%%': one level for this template, one for the SQLite backend's own % formatting.
        return self.as_sql(compiler, connection, template=(
            "(CAST(strftime('%%%%s', %(expressions)s) AS INTEGER)"
            " + CAST(strftime('%%%%f', %(expressions)s) AS REAL) - CAST(strftime('%%%%S', %(expressions)s) AS INTEGER))"
        ), **extra)


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


def bucket_seconds(span: datetime.timedelta, max_points: int = MAX_POINTS) -> int:
    """Bucket width so that the span holds at most `max_points` buckets, even unaligned at both ends."""
    return max(1, math.ceil(span.total_seconds() / max(1, max_points - 1)))


def downsample(server: CpuServer | int, start: datetime.datetime, end: datetime.datetime,
               max_points: int = MAX_POINTS) -> tuple[int, list[Bucket]]:
    """Samples with start <= time < end in buckets aligned on multiples of the bucket width (the same
    buckets from one reload to the next), at most `max_points` of them; returns (width s, buckets)."""
    width = bucket_seconds(end - start, max_points)
    server_pk = server.pk if isinstance(server, CpuServer) else server
    rows = (
        HostSample.objects.filter(cpu_server_id=server_pk, time__gte=start, time__lt=end)
        .annotate(epoch=Epoch("time"))
        .annotate(bucket=Floor(F("epoch") / Value(float(width))))
        .values("bucket")
        .annotate(
            mean_epoch=Avg("epoch"), samples=Count("pk"),
            memory_used_max=Max("memory_used_mib"), memory_used_min=Min("memory_used_mib"),
            memory_used_avg=Avg("memory_used_mib"), memory_mib=Max("memory_mib"),
            guests_max=Max("guests"), guests_min=Min("guests"),
        )
        .order_by("bucket")
    )
    return width, [
        Bucket(int(row["bucket"]), datetime.datetime.fromtimestamp(row["mean_epoch"], tz=datetime.UTC),
               row["samples"], row["memory_used_max"], row["memory_used_min"], float(row["memory_used_avg"]),
               row["memory_mib"], row["guests_max"], row["guests_min"])
        for row in rows
    ]


# --- drawing -------------------------------------------------------------------------------------

WIDTH, HEIGHT = 720, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 64, 44, 12, 26
_TICK_STEPS = [60 * m for m in (5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880)]


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Segment:
    """A stretch of samples without a gap: drawn as one area and one step line."""
    area: str  # polygon points: the memory used (peak per bucket) down to the axis
    memory: str  # polyline points: the top edge of the area
    guests: str  # polyline points: the guest count, as steps

    @property
    def point_count(self) -> int:
        return len(self.memory.split())

    @property
    def dot(self) -> tuple[str, str] | None:
        """A lone sample has no line to draw: it is drawn as a dot."""
        return tuple(self.memory.split(",")) if self.point_count == 1 else None  # type: ignore[return-value]


@dataclass(frozen=True)
class Chart:
    range_key: str
    start: datetime.datetime
    end: datetime.datetime
    bucket_s: int
    buckets: list[Bucket]
    segments: list[Segment]
    capacity: str  # polyline points: the memory for guests over time
    ticks: list[Tick]
    memory_top_mib: int
    guests_top: int
    summary: str  # the text equivalent
    interval_s: int  # how often the monitor records a sample
    width: int = WIDTH
    height: int = HEIGHT

    # The plot's frame, for the template.
    left: int = PAD_LEFT
    right: int = WIDTH - PAD_RIGHT
    top: int = PAD_TOP
    bottom: int = HEIGHT - PAD_BOTTOM

    @property
    def empty(self) -> bool:
        return not self.buckets

    @property
    def memory_top_text(self) -> str:
        return mib_text(self.memory_top_mib)

    @property
    def bucket_text(self) -> str:
        if self.bucket_s < 120:
            return f"{self.bucket_s} s"
        return f"{self.bucket_s / 60:.0f} min"


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _ticks(start: datetime.datetime, end: datetime.datetime, x: Callable[[datetime.datetime], float]) -> list[Tick]:
    span = (end - start).total_seconds()
    step = next((s for s in _TICK_STEPS if span / s <= 7), _TICK_STEPS[-1])
    first = math.ceil(start.timestamp() / step) * step
    label = "%a %d" if step >= 86400 else "%H:%M"
    ticks = []
    for epoch in range(int(first), int(end.timestamp()) + 1, step):
        moment = timezone.localtime(datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC))
        ticks.append(Tick(x(moment), moment.strftime(label)))
    return ticks


def chart(server: CpuServer, range_key: str, now: datetime.datetime | None = None,
          interval_s: int | None = None) -> Chart:
    """The history of one CPU server over 1h, 24h or 7d, up to now, as SVG coordinates."""
    if range_key not in RANGES:
        range_key = DEFAULT_RANGE
    end = now or timezone.now()
    start = end - RANGES[range_key]
    width, buckets = downsample(server, start, end)
    span = (end - start).total_seconds()

    def x(moment: datetime.datetime) -> float:
        return PAD_LEFT + (WIDTH - PAD_LEFT - PAD_RIGHT) * (moment - start).total_seconds() / span

    memory_top = max([server.memory_mib, *(b.memory_mib for b in buckets), *(b.memory_used_max for b in buckets)])
    memory_top = max(memory_top, 1)
    guests_top = max([0, *(b.guests_max for b in buckets)]) + 1  # headroom: the line never hides under the frame
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    base = HEIGHT - PAD_BOTTOM

    def y_memory(mib: float) -> float:
        return base - plot_h * mib / memory_top

    def y_guests(count: float) -> float:
        return base - plot_h * count / guests_top

    # A gap longer than a few samples (the monitor stopped) breaks the lines instead of bridging it.
    interval = settings.HOST_HISTORY_INTERVAL_S if interval_s is None else interval_s
    gap = 3 * max(width, interval)
    runs: list[list[Bucket]] = []
    for bucket in buckets:
        if runs and (bucket.time - runs[-1][-1].time).total_seconds() <= gap:
            runs[-1].append(bucket)
        else:
            runs.append([bucket])
    segments = []
    for run in runs:
        tops = [(x(b.time), y_memory(b.memory_used_max)) for b in run]
        area = [(tops[0][0], base), *tops, (tops[-1][0], base)]
        steps = [(x(run[0].time), y_guests(run[0].guests_max))]
        for previous, bucket in itertools.pairwise(run):
            steps += [(x(bucket.time), y_guests(previous.guests_max)), (x(bucket.time), y_guests(bucket.guests_max))]
        segments.append(Segment(_points(area), _points(tops), _points(steps)))
    capacity = _points([(x(b.time), y_memory(b.memory_mib)) for b in buckets])
    return Chart(range_key, start, end, width, buckets, segments, capacity, _ticks(start, end, x),
                 memory_top, guests_top, _summary(server, range_key, buckets), interval)


def _points(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{_fmt(px)},{_fmt(py)}" for px, py in points)


def _summary(server: CpuServer, range_key: str, buckets: list[Bucket]) -> str:
    if not buckets:
        return f"No samples of {server.name} in the last {range_key}."
    last = buckets[-1]
    peak = max(buckets, key=lambda b: b.memory_used_max)
    return (f"{server.name}, last {range_key}: memory used peaked at {mib_text(peak.memory_used_max)} of "
            f"{mib_text(peak.memory_mib)} ({timezone.localtime(peak.time):%Y-%m-%d %H:%M}); latest "
            f"{mib_text(last.memory_used_max)}, {last.guests_max} guest{'s' if last.guests_max != 1 else ''}; "
            f"guests between {min(b.guests_min for b in buckets)} and {max(b.guests_max for b in buckets)}.")
