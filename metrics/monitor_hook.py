"""What the leading monitor records for metrics after each cycle: `Monitor.run` calls `after_cycle`.

Its cycle's duration (metrics/cycle_time.py, read by /metrics) and a tick of the guests' CPU, disk and
network figures (vms/stats.py: a pass at most once per XENAOE_VM_STATS_INTERVAL_S, in the background).
A monitor standing by records neither and forgets what it measured. Only the monitor's own loop calls
it (not `manage.py monitor --once`, nor tests driving single cycles): one sampler per process. Nothing
here stops the monitor: a failure is logged, and the next cycle tries again.
"""
from __future__ import annotations

import functools
import logging

from metrics.cycle_time import CycleTimeRecorder
from vms.stats import VmStatsSampler

logger = logging.getLogger(__name__)
_cycle_times = CycleTimeRecorder()


@functools.cache
def _sampler() -> VmStatsSampler:
    return VmStatsSampler()


def after_cycle(duration_s: float, leading: bool) -> None:
    _cycle_times.after_cycle(duration_s, leading)
    try:
        if leading:
            _sampler().tick()
        else:
            _sampler().forget()
    except Exception:
        logger.exception("sampling the guests' figures failed")
