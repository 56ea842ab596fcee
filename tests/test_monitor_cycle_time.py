"""The leading monitor's cycle time for /metrics (metrics/cycle_time.py): a histogram counted since it
took the lead, written to the cache (Redis, this run's own prefix) after every cycle its loop leads."""
from __future__ import annotations

import math
import threading
import time

import pytest
from django.core.cache import cache

from ha.monitor import CheckResult, Monitor, SanResult
from metrics import cycle_time
from metrics.cycle_time import BUCKETS_S, CycleTimeRecorder, CycleTimes


@pytest.fixture(autouse=True)
def no_cycle_times():
    cache.delete(cycle_time.CACHE_KEY)
    yield
    cache.delete(cycle_time.CACHE_KEY)


def test_cycles_are_counted_in_cumulative_buckets():
    recorder = CycleTimeRecorder()
    for duration in (0.01, 0.3, 0.3, 7.0, 30.0):
        recorder.after_cycle(duration, leading=True)
    times = cycle_time.read()
    assert times is not None and times.count == 5 and times.sum_s == pytest.approx(37.61)
    assert dict(zip(BUCKETS_S, times.buckets, strict=True)) == {
        0.05: 1, 0.1: 1, 0.25: 1, 0.5: 3, 1.0: 3, 2.0: 3, 5.0: 3, 10.0: 4, math.inf: 5}
    assert times.last_s == 30.0 and times.last_at > 0


def test_a_monitor_standing_by_writes_nothing_and_starts_afresh_when_it_leads():
    recorder = CycleTimeRecorder()
    recorder.after_cycle(0.2, leading=True)
    recorder.after_cycle(0.2, leading=True)
    recorder.after_cycle(0.001, leading=False)
    assert cycle_time.read().count == 2  # what the leader wrote stays for the next leader to replace
    recorder.after_cycle(0.4, leading=True)
    times = cycle_time.read()
    assert (times.count, times.sum_s, times.last_s) == (1, 0.4, 0.4)  # a counter reset, not a jump


def test_what_the_cache_holds_is_read_only_if_whole():
    assert cycle_time.read() is None  # nothing recorded yet
    cache.set(cycle_time.CACHE_KEY, {"count": 3, "sum_s": 1.0})  # buckets missing: another version's
    assert cycle_time.read() is None
    cache.set(cycle_time.CACHE_KEY, {"count": 3, "sum_s": 1.0, "buckets": [0] * len(BUCKETS_S),
                                     "last_s": 0.1, "last_at": 1.0})  # +Inf must count every cycle
    assert cycle_time.read() is None
    cache.set(cycle_time.CACHE_KEY, {"nonsense": 1})
    assert cycle_time.read() is None
    whole = CycleTimes()
    whole.observe(0.1, 5.0)
    cache.set(cycle_time.CACHE_KEY, {"count": 1, "sum_s": 0.1, "buckets": whole.buckets, "last_s": 0.1,
                                     "last_at": 5.0})
    assert cycle_time.read() == whole


def test_a_cache_that_does_not_answer_never_stops_the_monitor(monkeypatch, caplog):
    def away(*args, **kwargs):
        raise ConnectionError("Redis away")

    monkeypatch.setattr(cycle_time.cache, "set", away)
    monkeypatch.setattr(cycle_time.cache, "get", away)
    recorder = CycleTimeRecorder()
    for _ in range(3):
        recorder.after_cycle(0.1, leading=True)
    assert recorder.times.count == 3
    assert sum("could not record" in r.getMessage() for r in caplog.records) == 1  # said once
    assert cycle_time.read() is None


@pytest.mark.django_db(transaction=True)
def test_the_monitors_loop_records_its_cycles(settings):
    """The monitor's own loop (Monitor.run), its checks faked where traffic would leave the program."""
    settings.VM_STATS_INTERVAL_S = 0
    monitor = Monitor(check=lambda host, timeout: CheckResult(True), san_probe=lambda host, listen: SanResult(),
                      interval=0.05, dead_after=3, timeout=0.04, san_listen=0.01, bmc_interval=0)
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop, lambda line: None), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while (cycle_time.read() or CycleTimes()).count < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(5)
        monitor.close()
    times = cycle_time.read()
    assert times is not None and times.count >= 3 and 0 < times.last_s < 1
