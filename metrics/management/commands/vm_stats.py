"""`manage.py vm_stats`: the guests' CPU, disk and network figures (vms/stats.py), in a process of its own.

Runs in the foreground (make demo and docker-compose start it, like `monitor` and `watch_domains`).
Every XENAOE_VM_STATS_INTERVAL_S it asks each CPU server for its running guests' counters and writes
their rates, which the VM pages draw and /metrics exports. One sampler leads per site, elected like
the monitors on a PostgreSQL advisory lock of its own (ha/leadership.py `VM_STATS`): a second panel
machine's sampler stands by and takes over within a few seconds of the leader's end.

It used to run inside the leading monitor. It is kept out of that process on purpose: the monitor
is what notices a dead host, and nothing that is only nice to have may share its process. The one
unexplained stop of a monitor (a GLib-CRITICAL from libvirt's client at a sampler pass, seen once in
the failover benchmark, docs/benchmarks.md) can at worst stop the figures now.
"""
from __future__ import annotations

import logging
import signal
import threading
from argparse import ArgumentParser
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from ha.leadership import GAINED, LOST, VM_STATS, Leadership, leadership_for
from vms.stats import VmStatsSampler

logger = logging.getLogger(__name__)
# How often the loop harvests readings and asks about its lock: well under any interval, so that a
# reading is recorded within this long of its host's answer (its time is the answer's, not the tick's).
TICK_S = 2.0


def sample_while(stop: threading.Event, leadership: Leadership, sampler: VmStatsSampler,
                 say: Callable[[str], None], tick_s: float = TICK_S) -> None:
    """Tick the sampler while this process leads; stand by (forgetting its readings) while another does."""
    while not stop.is_set():
        try:
            change = leadership.refresh()
            if change == GAINED:
                say(f"{leadership.node}: sampling the guests' figures every {sampler.interval:g} s")
            elif change == LOST:
                say(f"{leadership.node}: no longer leads{': ' + leadership.error if leadership.error else ''}")
            if leadership.is_leader:
                sampler.tick()
            else:
                sampler.forget()
        except Exception:  # the database away for a moment: try again next tick
            logger.exception("sampling the guests' figures failed")
        finally:
            close_old_connections()
        stop.wait(tick_s)


class Command(BaseCommand):
    help = "Sample the guests' CPU, disk and network figures on every CPU server (one sampler leads per site)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--interval", type=float, default=float(settings.VM_STATS_INTERVAL_S),
                            help="seconds between passes (XENAOE_VM_STATS_INTERVAL_S; 0: sample nothing)")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        interval = options["interval"]
        if interval <= 0:
            # Stay up rather than exit: a supervisor would only start it again.
            self._say("XENAOE_VM_STATS_INTERVAL_S is 0: no guests' figures are sampled")
            stop.wait()
            return
        leadership = leadership_for(TICK_S, role=VM_STATS)
        sampler = VmStatsSampler(interval=interval)
        self._say(f"{leadership.node}: guests' figures every {interval:g} s; leadership: {leadership.kind}")
        try:
            sample_while(stop, leadership, sampler, self._say)
        finally:
            sampler.close()
            leadership.close()

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # the demo's log is a file: show each change as it happens
