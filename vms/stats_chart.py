"""A VM's CPU, disk and network figures on its page: the last hour or day of its samples (vms/stats.py),
bucketed by the database in one query and drawn by the panel's one plotter (xenaoe_panel/timecharts.py).

Each bucket is drawn at the mean of its samples' rates (a rate averaged over equal intervals is the
rate over the bucket); the summary also gives the peak. Rendering reads the database only.
"""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Avg, Max
from django.utils import timezone

from vms.models import VirtualMachine, VmSample
from xenaoe_panel.timecharts import Chart, Frame, Series, bucket_rows, bucket_text

RANGES: dict[str, datetime.timedelta] = {"1h": datetime.timedelta(hours=1), "24h": datetime.timedelta(hours=24)}
DEFAULT_RANGE = "1h"
BLUE, ORANGE, GREY = "#0d6efd", "#fd7e14", "#6c757d"
FIGURES = ("cpu_vcpus", "disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps")
_RATE_UNITS = ("B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s")
MIN_RATE_TOP = 1024.0  # an idle guest's flat line sits on the axis of a readable scale


@dataclass(frozen=True)
class Figure:
    """One figure over the buckets: each bucket's mean (None: not measured then) and its peak."""
    means: tuple[float | None, ...]
    peaks: tuple[float | None, ...]

    def peak(self) -> tuple[int, float] | None:
        """(bucket index, value) of the highest peak."""
        found = [(i, p) for i, p in enumerate(self.peaks) if p is not None]
        return max(found, key=lambda item: item[1]) if found else None

    def latest(self) -> float | None:
        return next((m for m in reversed(self.means) if m is not None), None)


def _in_unit(bytes_per_s: float) -> tuple[float, str]:
    exponent = 0
    while bytes_per_s >= 1024 and exponent < len(_RATE_UNITS) - 1:
        bytes_per_s /= 1024
        exponent += 1
    return bytes_per_s, _RATE_UNITS[exponent]


def rate_text(bytes_per_s: float) -> str:
    """"0 B/s", "512 B/s", "1.5 KiB/s", "12.0 MiB/s"."""
    value, unit = _in_unit(bytes_per_s)
    return f"{value:.0f} {unit}" if unit == _RATE_UNITS[0] else f"{value:.1f} {unit}"


def rate_top(peak: float) -> float:
    """The axis's top for rates up to `peak`: 1, 2 or 5 times a power of ten of the unit it is shown in
    (1000 KiB/s rounds up to 1 MiB/s)."""
    scaled, unit = _in_unit(max(peak, MIN_RATE_TOP))
    size = 1024 ** _RATE_UNITS.index(unit)
    power = 10 ** math.floor(math.log10(scaled))
    top = next(step * power for step in (1, 2, 5, 10) if step * power >= scaled)
    return 1024 * size if top >= 1000 and unit != _RATE_UNITS[-1] else top * size


def rate_axis_text(bytes_per_s: float) -> str:
    """An axis's top, short enough for its margin: "5 MiB/s", "500 KiB/s"."""
    value, unit = _in_unit(bytes_per_s)
    return f"{value:g} {unit}"


def charts(vm: VirtualMachine, range_key: str, now: datetime.datetime | None = None,
           interval_s: int | None = None) -> list[Chart]:
    """The VM's CPU, disk and network charts over 1h or 24h, up to now."""
    if range_key not in RANGES:
        range_key = DEFAULT_RANGE
    end = now or timezone.now()
    start = end - RANGES[range_key]
    aggregates = {f"{name}_mean": Avg(name) for name in FIGURES} | {f"{name}_peak": Max(name) for name in FIGURES}
    width, rows = bucket_rows(VmSample.objects.filter(vm=vm), start, end, **aggregates)
    interval = settings.VM_STATS_INTERVAL_S if interval_s is None else interval_s
    drawing = _Drawing(vm, range_key, Frame(start, end, gap_s=3 * max(width, interval)), width,
                       [row["time"] for row in rows], sum(row["samples"] for row in rows), interval)
    figures = {name: Figure(tuple(row[f"{name}_mean"] for row in rows), tuple(row[f"{name}_peak"] for row in rows))
               for name in FIGURES}
    return [
        drawing.cpu(figures["cpu_vcpus"]),
        drawing.rates("vm-disk", "Disk", ("disk-read", "read", figures["disk_read_bps"]),
                      ("disk-write", "written", figures["disk_write_bps"])),
        drawing.rates("vm-network", "Network", ("net-rx", "received", figures["net_rx_bps"]),
                      ("net-tx", "sent", figures["net_tx_bps"])),
    ]


@dataclass(frozen=True)
class _Drawing:
    """What the three charts of one VM share: its buckets' times, the frame, the texts."""
    vm: VirtualMachine
    range_key: str
    frame: Frame
    bucket_s: int
    times: list[datetime.datetime]
    samples: int
    interval_s: int

    def chart(self, key: str, title: str, series: tuple[Series, ...], summary: str, left_top: str,
              left_colour: str) -> Chart:
        if self.interval_s:
            # Said to tenants too: no word of the hosts behind the guest (docs/tenants.md).
            empty = (f"No figures of {self.vm.name} in the last {self.range_key}: the panel reads a running "
                     f"guest's figures every {self.interval_s} s, and draws them from the second reading on.")
        else:
            empty = "No figures are collected here (XENAOE_VM_STATS_INTERVAL_S=0)."
        return Chart(key, f"{title} of {self.vm.name}, last {self.range_key}", self.range_key, self.frame.start,
                     self.frame.end, self.bucket_s, self.samples, series, self.frame.ticks(), summary, empty,
                     left_top, left_colour)

    def when(self, index: int) -> str:
        return f"{timezone.localtime(self.times[index]):%H:%M}"

    def cpu(self, cpu: Figure) -> Chart:
        vcpus = self.vm.vcpus
        top = max([float(vcpus), *(m for m in cpu.means if m is not None)])
        series = (
            self.frame.dashed("vcpus", f"its {vcpus} vCPU{'s' if vcpus != 1 else ''}", GREY,
                              [(t, vcpus) for t in self.times], top),
            self.frame.area("cpu", f"vCPUs busy (the mean of every {bucket_text(self.bucket_s)})", BLUE,
                            list(zip(self.times, cpu.means, strict=True)), top),
        )
        peak = cpu.peak()
        summary = f"CPU of {self.vm.name}, last {self.range_key}: " + (
            f"at most {peak[1]:.2f} of its {vcpus} vCPUs busy ({self.when(peak[0])}), latest {cpu.latest():.2f}."
            if peak is not None else "not measured.")
        return self.chart("vm-cpu", "CPU", series, summary, f"{top:g} vCPU{'s' if top != 1 else ''}", BLUE)

    def rates(self, key: str, title: str, first: tuple[str, str, Figure], second: tuple[str, str, Figure]) -> Chart:
        """Two rates in bytes per second on one axis (read and written, received and sent)."""
        means = [m for _key, _verb, figure in (first, second) for m in figure.means if m is not None]
        top = rate_top(max([0.0, *means]))
        every = bucket_text(self.bucket_s)
        series = tuple(
            self.frame.line(series_key, f"{verb} (the mean of every {every})" if colour == BLUE else verb, colour,
                            list(zip(self.times, figure.means, strict=True)), top)
            for (series_key, verb, figure), colour in ((first, BLUE), (second, ORANGE)))
        parts = []
        for _key, verb, figure in (first, second):
            peak = figure.peak()
            if peak is not None:
                parts.append(f"{verb} at most {rate_text(peak[1])} ({self.when(peak[0])}), "
                             f"latest {rate_text(figure.latest() or 0.0)}")
        summary = f"{title} of {self.vm.name}, last {self.range_key}: {'; '.join(parts) or 'not measured'}."
        return self.chart(key, title, series, summary, rate_axis_text(top), GREY)
