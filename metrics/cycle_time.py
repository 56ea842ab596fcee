"""The leading monitor's cycle time, for /metrics.

ha/monitor.py measures every cycle. After each cycle it leads (`after_cycle`, from `Monitor.run`
only: not `manage.py monitor --once`, nor tests driving single cycles), the monitor adds the
duration to a histogram it keeps in memory, counted since it took the lead, and writes the
histogram with the last cycle's duration and end to the cache (Redis, which every panel process
shares): one small value per cycle and no database write every two seconds. A monitor standing by
writes nothing and forgets its counts, so that when it leads again it starts from zero, which
Prometheus reads as a counter reset (instead of a jump to counts of an older leadership).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from django.core.cache import cache

logger = logging.getLogger(__name__)
CACHE_KEY = "metrics:monitor-cycle"
# The cycle runs every XENAOE_MONITOR_INTERVAL_S (2 s by default); its checks time out before that.
BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, math.inf)


@dataclass
class CycleTimes:
    count: int = 0
    sum_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_S))  # cumulative, per BUCKETS_S
    last_s: float = 0.0  # the last cycle's duration
    last_at: float = 0.0  # when it ended, seconds since 1970

    def observe(self, duration_s: float, at: float) -> None:
        self.count += 1
        self.sum_s += duration_s
        self.buckets = [n + (duration_s <= bound) for n, bound in zip(self.buckets, BUCKETS_S, strict=True)]
        self.last_s, self.last_at = duration_s, at

    @classmethod
    def from_cache(cls, value: Any) -> CycleTimes | None:
        """What the cache holds, if it is a whole histogram (another version may have written it)."""
        try:
            times = cls(**value)
        except TypeError:
            return None
        if len(times.buckets) != len(BUCKETS_S) or times.buckets[-1] != times.count:
            return None
        return times


class CycleTimeRecorder:
    """Never raises: the monitor goes on watching whatever happens to its figures."""

    def __init__(self) -> None:
        self.times: CycleTimes | None = None
        self._failing = False

    def after_cycle(self, duration_s: float, leading: bool) -> None:
        if not leading:
            self.times = None
            return
        self.times = self.times or CycleTimes()
        self.times.observe(duration_s, time.time())
        try:
            cache.set(CACHE_KEY, asdict(self.times), timeout=None)
        except Exception:  # Redis away: the monitor goes on watching; said once, and when it works again
            if not self._failing:
                logger.exception("could not record the monitor's cycle time")
            self._failing = True
            return
        if self._failing:
            logger.info("the monitor's cycle time is recorded again")
        self._failing = False


def read() -> CycleTimes | None:
    """The leading monitor's cycle times; None if none was recorded or the cache does not answer."""
    try:
        value = cache.get(CACHE_KEY)
    except Exception:
        logger.exception("could not read the monitor's cycle time")
        return None
    return CycleTimes.from_cache(value) if isinstance(value, dict) else None


_recorder = CycleTimeRecorder()


def after_cycle(duration_s: float, leading: bool) -> None:
    """The monitor's process' one recorder (`Monitor.run`)."""
    _recorder.after_cycle(duration_s, leading)
