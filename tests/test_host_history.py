"""A CPU server's history: samples from the panel's records written by the monitor's hook at most once
per interval, retention, buckets computed by the database, and the SVG drawn from them."""
from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from ha.monitor import Monitor
from ha.verdicts import CheckResult, SanResult
from hosts import history
from hosts.choices import HostState
from hosts.models import CpuServer, HostSample
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.placement import cpu_candidates

pytestmark = pytest.mark.django_db
UTC = datetime.UTC
T0 = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)  # 1_700_000_000 s since 1970
assert T0.timestamp() == 1_700_000_000


def cpu(name: str, memory_mib: int = 8192, state: str = HostState.UP) -> CpuServer:
    return CpuServer.objects.create(name=name, address=f"{name}.example", libvirt_uri="test:///default",
                                    memory_mib=memory_mib, vcpus=4, state=state)


def vm(name: str, server: CpuServer, memory_mib: int, state: str = VmState.RUNNING) -> VirtualMachine:
    return VirtualMachine.objects.create(name=name, cpu_server=server, memory_mib=memory_mib, vcpus=1, disk_mib=64,
                                         state=state)


def sample(server: CpuServer, time: datetime.datetime, used: int, guests: int, memory: int = 8192) -> HostSample:
    return HostSample.objects.create(cpu_server=server, time=time, memory_used_mib=used, memory_mib=memory,
                                     guests=guests)


@pytest.fixture
def op_client(client):
    client.force_login(get_user_model().objects.create_user("op", is_staff=True))
    return client


# --- recording -----------------------------------------------------------------------------------

def test_a_sample_is_what_placement_counts_on_each_server():
    cpu1, _cpu2, cpu3 = cpu("cpu1"), cpu("cpu2", 4096), cpu("cpu3", 2048, HostState.DEAD)
    vm("alpha", cpu1, 2048)
    vm("bravo", cpu1, 1024, VmState.STOPPED)  # placed there: its memory is held for it
    vm("charlie", cpu3, 512)
    assert history.record_samples(T0, interval_s=60) == 3
    samples = {s.cpu_server.name: s for s in HostSample.objects.select_related("cpu_server")}
    placement = {c.server.name: c.used_mib for c in cpu_candidates()}
    assert samples["cpu1"].memory_used_mib == placement["cpu1"] == 3072 and samples["cpu1"].guests == 2
    assert samples["cpu2"].memory_used_mib == placement["cpu2"] == 0 and samples["cpu2"].guests == 0
    # A dead server is still sampled: its history shows what it carried when it went.
    assert (samples["cpu3"].memory_used_mib, samples["cpu3"].guests, samples["cpu3"].memory_mib) == (512, 1, 2048)
    assert {s.time for s in samples.values()} == {T0}


def test_at_most_one_sample_per_interval():
    cpu("cpu1")
    assert history.record_samples(T0, interval_s=60) == 1
    assert history.record_samples(T0 + datetime.timedelta(seconds=2), interval_s=60) == 0
    assert history.record_samples(T0 + datetime.timedelta(seconds=58), interval_s=60) == 0
    # The monitor's cycles jitter: a sample due in a few milliseconds is taken now.
    assert history.record_samples(T0 + datetime.timedelta(seconds=59, milliseconds=700), interval_s=60) == 1
    assert history.record_samples(T0 + datetime.timedelta(seconds=120), interval_s=60) == 1
    assert HostSample.objects.count() == 3


def test_the_monitor_cycle_records_through_its_hook(settings):
    """The checks faked (where traffic would leave the program); the hook writes to the database."""
    settings.HOST_HISTORY_INTERVAL_S = 3600
    cpu1 = cpu("cpu1")
    vm("alpha", cpu1, 1024)
    monitor = Monitor(check=lambda host, timeout: CheckResult(True), san_probe=lambda host, listen: SanResult(),
                      interval=1, dead_after=3, timeout=0.5, san_listen=0.05)
    try:
        monitor.cycle()
        monitor.cycle()  # within the interval: no second sample
    finally:
        monitor.close()
    assert list(HostSample.objects.values_list("cpu_server__name", "memory_used_mib", "guests")) == [("cpu1", 1024, 1)]


def test_record_cycle_prunes_and_never_raises(settings, monkeypatch):
    settings.HOST_HISTORY_INTERVAL_S = 60
    settings.HOST_HISTORY_RETENTION_DAYS = 7
    cpu1 = cpu("cpu1")
    old = sample(cpu1, T0 - datetime.timedelta(days=8), 100, 1)
    history.record_cycle(T0)
    assert not HostSample.objects.filter(pk=old.pk).exists() and HostSample.objects.filter(time=T0).count() == 1

    def broken(*args, **kwargs):
        raise RuntimeError("database away")

    monkeypatch.setattr(history, "record_samples", broken)
    history.record_cycle(T0 + datetime.timedelta(minutes=5))  # logged, not raised: the monitor goes on


def test_retention_deletes_old_samples_only():
    cpu1 = cpu("cpu1")
    cutoff = T0 - datetime.timedelta(days=30)
    older = sample(cpu1, cutoff - datetime.timedelta(seconds=1), 1, 1)
    at_cutoff = sample(cpu1, cutoff, 2, 1)
    recent = sample(cpu1, T0 - datetime.timedelta(hours=1), 3, 1)
    assert history.prune_samples(T0, days=30) == 1
    assert set(HostSample.objects.values_list("pk", flat=True)) == {at_cutoff.pk, recent.pk}
    assert not HostSample.objects.filter(pk=older.pk).exists()
    assert history.prune_samples(T0, days=0) == 0 and HostSample.objects.count() == 2  # 0: keep for ever


# --- buckets -------------------------------------------------------------------------------------

def test_buckets_are_aligned_half_open_and_aggregated_in_sql():
    cpu1, cpu2 = cpu("cpu1"), cpu("cpu2")
    at = lambda seconds: T0 + datetime.timedelta(seconds=seconds)  # noqa: E731
    sample(cpu1, at(-1), 999, 9)  # before the window
    sample(cpu1, at(0), 100, 1)
    sample(cpu1, at(9.5), 300, 3)  # same bucket as 0: [0, 10)
    sample(cpu1, at(10), 200, 2)  # the next bucket starts exactly here
    sample(cpu1, at(25), 400, 4)
    sample(cpu1, at(99), 500, 5)
    sample(cpu1, at(100), 999, 9)  # the window's end is excluded
    sample(cpu2, at(5), 777, 7)  # another server
    width, buckets = history.downsample(cpu1, at(0), at(100), max_points=11)
    assert width == 10
    assert [b.index for b in buckets] == [170_000_000, 170_000_001, 170_000_002, 170_000_009]
    first = buckets[0]
    assert (first.samples, first.memory_used_min, first.memory_used_max, first.memory_used_avg) == (2, 100, 300, 200)
    assert (first.guests_min, first.guests_max) == (1, 3)
    assert first.time == at(4.75)  # the mean time of its samples: where it is drawn
    assert [(b.samples, b.memory_used_max, b.time) for b in buckets[1:]] == [
        (1, 200, at(10)), (1, 400, at(25)), (1, 500, at(99))]


def test_a_week_of_samples_is_at_most_300_points():
    cpu1 = cpu("cpu1")
    end = T0
    HostSample.objects.bulk_create(
        HostSample(cpu_server=cpu1, time=end - datetime.timedelta(minutes=m), memory_used_mib=m % 4096,
                   memory_mib=8192, guests=m % 7)
        for m in range(1, 7 * 24 * 60 + 120)  # a week of minutes, and two hours more before it
    )
    width, buckets = history.downsample(cpu1, end - history.RANGES["7d"], end)
    assert width == 2023  # ceil(604800 / 299)
    assert len(buckets) <= history.MAX_POINTS
    assert sum(b.samples for b in buckets) == 7 * 24 * 60  # every minute of the week, none before
    assert max(b.memory_used_max for b in buckets) == 4095 and min(b.memory_used_min for b in buckets) == 0


# --- the drawing ---------------------------------------------------------------------------------

def svg_of(html: str) -> ET.Element:
    match = re.search(r"<svg .*?</svg>", html, re.S)
    assert match, "no chart on the page"
    return ET.fromstring(match.group(0))


def points(element: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in element.get("points").split()]


def series(svg: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in svg.iter() if e.get("data-series") == name]


def test_the_chart_draws_every_sample_inside_its_frame(op_client):
    cpu1 = cpu("cpu1", 4096)
    now = timezone.now()
    for minute in range(30):  # one sample a minute for half an hour, guests stepping up
        sample(cpu1, now - datetime.timedelta(minutes=30 - minute), 1024 + 64 * minute, 1 + minute // 10, 4096)
    html = op_client.get(f"/hosts/cpu/{cpu1.pk}/?range=1h").content.decode()
    svg = svg_of(html)
    chart = history.chart(cpu1, "1h")
    memory, guests, area = series(svg, "memory"), series(svg, "guests"), series(svg, "memory-area")
    assert len(memory) == len(guests) == len(area) == 1  # no gap: one stretch
    assert len(points(memory[0])) == 30
    assert len(points(area[0])) == 32  # down to the axis at both ends
    assert len(points(guests[0])) == 2 * 30 - 1  # a step: across, then up or down
    assert len(points(series(svg, "capacity")[0])) == 30
    for x, y in points(memory[0]) + points(guests[0]) + points(area[0]):
        assert chart.left <= x <= chart.right and chart.top <= y <= chart.bottom
    xs = [x for x, _ in points(memory[0])]
    assert xs == sorted(xs) and xs[0] > chart.left + (chart.right - chart.left) * 0.45  # the last half hour
    # The highest sample (1024 + 64 * 29 MiB of 4096) sits at that fraction of the plot's height.
    top_y = min(y for _, y in points(memory[0]))
    expected = chart.bottom - (chart.bottom - chart.top) * (1024 + 64 * 29) / 4096
    assert abs(top_y - expected) < 0.1
    # Guests: 1, 2, 3 on a right-hand axis topped at 4 (headroom); the step line ends at three quarters.
    assert chart.right_top == "4"
    assert points(guests[0])[-1][1] == pytest.approx(chart.bottom - (chart.bottom - chart.top) * 3 / 4, abs=0.1)
    assert points(guests[0])[0][1] == pytest.approx(chart.bottom - (chart.bottom - chart.top) * 1 / 4, abs=0.1)
    assert "memory used peaked at 2.8 GiB of 4.0 GiB" in html and "3 guests" in html
    assert 'aria-current="page">1h<' in html


def test_the_range_selects_the_samples(op_client):
    cpu1 = cpu("cpu1")
    now = timezone.now()
    sample(cpu1, now - datetime.timedelta(minutes=10), 100, 1)
    sample(cpu1, now - datetime.timedelta(hours=2), 200, 2)
    sample(cpu1, now - datetime.timedelta(days=3), 300, 3)
    counts = {key: history.chart(cpu1, key).samples for key in history.RANGES}
    assert counts == {"1h": 1, "24h": 2, "7d": 3}
    assert history.chart(cpu1, "nonsense").range_key == history.DEFAULT_RANGE
    html = op_client.get(f"/hosts/cpu/{cpu1.pk}/?range=7d").content.decode()
    svg = svg_of(html)
    assert len(series(svg, "memory")) == 3 == len(series(svg, "memory-dot"))  # days apart: lone samples, as dots


def test_a_gap_breaks_the_lines():
    cpu1 = cpu("cpu1")
    now = timezone.now()
    for minutes in (50, 49, 48, 10, 9):  # the monitor stopped for half an hour
        sample(cpu1, now - datetime.timedelta(minutes=minutes), 512, 1)
    chart = history.chart(cpu1, "1h", now=now, interval_s=60)
    assert [s.point_count for s in chart.series_named("memory").stretches] == [3, 2]


def test_no_samples_yet_says_so(op_client):
    cpu1 = cpu("cpu1")
    html = op_client.get(f"/hosts/cpu/{cpu1.pk}/").content.decode()
    assert "No samples in the last 24h yet" in html and "<svg" not in html
    assert 'data-chart-empty="history"' in html and 'aria-current="page">24h<' in html
