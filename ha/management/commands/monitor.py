"""`manage.py monitor`: check every host, declare the dead ones, start what follows (docs/ha.md).

Runs in the foreground (make demo and docker-compose start it). One process per installation is
the normal case; a second one is harmless (every transition is a compare-and-set on the host row).
"""
from __future__ import annotations

import signal
import threading
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from ha.monitor import Monitor
from storage.guest_health import GuestHealthWatch


class Command(BaseCommand):
    help = "Check every host on an interval; declare dead hosts, open incidents, start failovers."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--interval", type=float, default=float(settings.MONITOR_INTERVAL_S),
                            help="seconds between cycles (XENAOE_MONITOR_INTERVAL_S)")
        parser.add_argument("--once", action="store_true", help="run one cycle, print every host's state")

    def handle(self, *args: Any, **options: Any) -> None:
        interval = options["interval"]
        timeout = min(settings.MONITOR_CHECK_TIMEOUT_MS / 1000, interval * 0.75)
        monitor = Monitor(interval=interval, timeout=timeout,
                          guest_health=None if options["once"] else GuestHealthWatch())
        try:
            if options["once"]:
                report = monitor.cycle()
                for line in report.changes:
                    self.stdout.write(line)
                for name, state in sorted(report.states.items()):
                    self.stdout.write(f"{name}: {state}")
                self.stdout.write(f"cycle took {report.duration_s * 1000:.0f} ms")
                return
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            self._say(f"monitoring every {interval:g} s, dead after {monitor.dead_after} missed checks, "
                              f"check timeout {timeout:g} s")
            started = time.monotonic()
            monitor.run(stop, out=lambda line: self._say(f"{time.monotonic() - started:9.1f} {line}"))
        finally:
            monitor.close()

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # the demo's log is a file: show each transition as it happens
