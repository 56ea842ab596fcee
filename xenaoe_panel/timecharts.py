"""Time series drawn on the server as inline SVG: a CPU server's history (hosts/history.py) and a VM's
CPU, disk and network figures (vms/stats_chart.py).

The database groups the samples into buckets aligned on multiples of their width (`bucket_rows`:
the same buckets from one reload to the next, at most MAX_POINTS of them, however many samples);
`Frame` turns the buckets into SVG points in a fixed frame. A series is an area, a line, a step line
or a dashed line; a stretch of samples is broken where samples are missing (the recorder stopped)
instead of bridging the gap. One template draws every chart (templates/includes/time_chart.html)
and the chart's summary sentence is its text equivalent. Nothing here touches the network.
"""
from __future__ import annotations

import datetime
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Avg, Count, F, FloatField, Func, QuerySet, Value
from django.db.models.functions import Floor
from django.utils import timezone

MAX_POINTS = 300
WIDTH, HEIGHT = 720, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 64, 44, 12, 26
_TICK_STEPS = [60 * m for m in (5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880)]
# Series styles (the template draws each its way).
AREA, LINE, STEP, DASHED = "area", "line", "step", "dashed"


class Epoch(Func):
    """Seconds since 1970 of a datetime column, as a float, on PostgreSQL and on SQLite (the demo)."""
    output_field = FloatField()

    def as_postgresql(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::float8", **extra)

    def as_sqlite(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        # Django stores UTC text there. Whole seconds exactly, then the milliseconds (julianday's float
        # is off by microseconds, enough to put a sample on a bucket boundary in the bucket before).
        # '%%%%': one level for this template, one for the SQLite backend's own % formatting. The
        # expression is written three times: its parameters (a subquery's) are needed three times.
        sql, params = self.as_sql(compiler, connection, template=(
            "(CAST(strftime('%%%%s', %(expressions)s) AS INTEGER)"
            " + CAST(strftime('%%%%f', %(expressions)s) AS REAL) - CAST(strftime('%%%%S', %(expressions)s) AS INTEGER))"
        ), **extra)
        return sql, (*params, *params, *params)


def bucket_seconds(span: datetime.timedelta, max_points: int = MAX_POINTS) -> int:
    """Bucket width so that the span holds at most `max_points` buckets, even unaligned at both ends."""
    return max(1, math.ceil(span.total_seconds() / max(1, max_points - 1)))


def bucket_rows(samples: QuerySet[Any], start: datetime.datetime, end: datetime.datetime,
                max_points: int = MAX_POINTS, **aggregates: Any) -> tuple[int, list[dict[str, Any]]]:
    """The samples (rows with a `time` column) with start <= time < end, grouped by the database in
    buckets aligned on multiples of the bucket width; returns (width s, rows in time order). Each row
    holds `bucket` (its start is bucket * width seconds since 1970), `time` (the mean time of its
    samples: where it is drawn), `samples` (how many) and the `aggregates` asked for."""
    width = bucket_seconds(end - start, max_points)
    rows = (
        samples.filter(time__gte=start, time__lt=end)
        .annotate(epoch=Epoch("time"))
        .annotate(bucket=Floor(F("epoch") / Value(float(width))))
        .values("bucket")
        .annotate(mean_epoch=Avg("epoch"), samples=Count("pk"), **aggregates)
        .order_by("bucket")
    )
    found = []
    for row in rows:
        row["bucket"] = int(row["bucket"])
        row["time"] = datetime.datetime.fromtimestamp(row.pop("mean_epoch"), tz=datetime.UTC)
        found.append(row)
    return width, found


# --- drawing -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Stretch:
    """A run of buckets without a gap: one polyline, and for an area the polygon under it."""
    points: str
    area: str = ""

    @property
    def point_count(self) -> int:
        return len(self.points.split())

    @property
    def dot(self) -> tuple[str, str] | None:
        """A lone sample has no line to draw: it is drawn as a dot."""
        return tuple(self.points.split(",")) if self.point_count == 1 else None  # type: ignore[return-value]


@dataclass(frozen=True)
class Series:
    key: str  # data-series in the SVG
    label: str  # its legend
    colour: str
    style: str  # AREA, LINE, STEP or DASHED
    stretches: tuple[Stretch, ...]
    dots: bool = True  # a lone sample drawn as a dot (not for a step line: its neighbours draw it)


@dataclass(frozen=True)
class Chart:
    key: str  # unique on its page: the SVG's ids
    title: str
    range_key: str
    start: datetime.datetime
    end: datetime.datetime
    bucket_s: int
    samples: int  # how many samples its buckets hold
    series: tuple[Series, ...]
    ticks: tuple[Tick, ...]
    summary: str  # the text equivalent
    empty_text: str  # said instead when there is no sample
    left_top: str  # the left axis's top value, as text
    left_colour: str = "#6c757d"
    right_top: str = ""  # "": no right axis
    right_colour: str = "#6c757d"
    width: int = WIDTH
    height: int = HEIGHT
    # The plot's frame, for the template.
    left: int = PAD_LEFT
    right: int = WIDTH - PAD_RIGHT
    top: int = PAD_TOP
    bottom: int = HEIGHT - PAD_BOTTOM

    @property
    def empty(self) -> bool:
        return not self.samples

    @property
    def bucket_text(self) -> str:
        return bucket_text(self.bucket_s)

    def series_named(self, key: str) -> Series:
        return next(s for s in self.series if s.key == key)


def bucket_text(seconds: int) -> str:
    return f"{seconds} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{_fmt(px)},{_fmt(py)}" for px, py in points)


Point = tuple[datetime.datetime, float | None]


class Frame:
    """Where a time and a value go in the plot between `start` and `end`. Points further apart than
    `gap_s` (or a missing value) break a series into stretches."""

    def __init__(self, start: datetime.datetime, end: datetime.datetime, gap_s: float) -> None:
        self.start, self.end, self.gap_s = start, end, gap_s
        self.span = max((end - start).total_seconds(), 1e-9)
        self.base = HEIGHT - PAD_BOTTOM
        self.plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(self, moment: datetime.datetime) -> float:
        return PAD_LEFT + (WIDTH - PAD_LEFT - PAD_RIGHT) * (moment - self.start).total_seconds() / self.span

    def y(self, value: float, top: float) -> float:
        return self.base - self.plot_h * value / (top or 1)

    def runs(self, points: Sequence[Point]) -> list[list[tuple[datetime.datetime, float]]]:
        runs: list[list[tuple[datetime.datetime, float]]] = []
        broken = True
        for moment, value in points:
            if value is None:
                broken = True
                continue
            if broken or (moment - runs[-1][-1][0]).total_seconds() > self.gap_s:
                runs.append([])
            runs[-1].append((moment, value))
            broken = False
        return runs

    def area(self, key: str, label: str, colour: str, points: Sequence[Point], top: float) -> Series:
        stretches = []
        for run in self.runs(points):
            tops = [(self.x(t), self.y(v, top)) for t, v in run]
            down_to_axis = [(tops[0][0], self.base), *tops, (tops[-1][0], self.base)]
            stretches.append(Stretch(_points(tops), _points(down_to_axis)))
        return Series(key, label, colour, AREA, tuple(stretches))

    def line(self, key: str, label: str, colour: str, points: Sequence[Point], top: float) -> Series:
        return Series(key, label, colour, LINE, tuple(
            Stretch(_points([(self.x(t), self.y(v, top)) for t, v in run])) for run in self.runs(points)))

    def step(self, key: str, label: str, colour: str, points: Sequence[Point], top: float) -> Series:
        """A count: flat until the next sample, then straight up or down."""
        stretches = []
        for run in self.runs(points):
            steps = [(self.x(run[0][0]), self.y(run[0][1], top))]
            for (_, before), (moment, value) in itertools.pairwise(run):
                steps += [(self.x(moment), self.y(before, top)), (self.x(moment), self.y(value, top))]
            stretches.append(Stretch(_points(steps)))
        return Series(key, label, colour, STEP, tuple(stretches), dots=False)

    def dashed(self, key: str, label: str, colour: str, points: Sequence[Point], top: float) -> Series:
        """A limit (what the machine has): one line across the samples, gaps or not."""
        drawn = [(self.x(t), self.y(v, top)) for t, v in points if v is not None]
        return Series(key, label, colour, DASHED, (Stretch(_points(drawn)),) if drawn else (), dots=False)

    def ticks(self) -> tuple[Tick, ...]:
        return _ticks(self.start, self.end, self.x)


def _ticks(start: datetime.datetime, end: datetime.datetime,
           x: Callable[[datetime.datetime], float]) -> tuple[Tick, ...]:
    span = (end - start).total_seconds()
    step = next((s for s in _TICK_STEPS if span / s <= 7), _TICK_STEPS[-1])
    first = math.ceil(start.timestamp() / step) * step
    label = "%a %d" if step >= 86400 else "%H:%M"
    ticks = []
    for epoch in range(int(first), int(end.timestamp()) + 1, step):
        moment = timezone.localtime(datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC))
        ticks.append(Tick(x(moment), moment.strftime(label)))
    return tuple(ticks)
