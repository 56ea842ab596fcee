"""`manage.py monitor`: check every host, declare the dead ones, start what follows (docs/ha.md).

Runs in the foreground (make demo and docker-compose start it). Run one on each panel machine: on
PostgreSQL they elect a leader (ha/leadership.py), which alone checks and acts; the others stand by
and one takes over within an interval of the leader's death. Its log says which it is.
"""
from __future__ import annotations

import signal
import threading
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings

from audit.actors import MONITOR, AuditedCommand
from ha.leadership import leadership_for
from ha.monitor import Monitor
from storage.guest_health import GuestHealthWatch


class Command(AuditedCommand):
    help = "Check every host on an interval; declare dead hosts, open incidents, start failovers."
    actor = MONITOR

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--interval", type=float, default=float(settings.MONITOR_INTERVAL_S),
                            help="seconds between cycles (XENAOE_MONITOR_INTERVAL_S)")
        parser.add_argument("--once", action="store_true", help="run one cycle, print every host's state")

    def handle(self, *args: Any, **options: Any) -> None:
        interval = options["interval"]
        timeout = min(settings.MONITOR_CHECK_TIMEOUT_MS / 1000, interval * 0.75)
        # The first cycle it leads opens a connection to every host: as long as ssh allows one.
        monitor = Monitor(interval=interval, timeout=timeout, leadership=leadership_for(interval),
                          guest_health=None if options["once"] else GuestHealthWatch(),
                          first_timeout=float(settings.SSH_CONNECT_TIMEOUT))
        try:
            if options["once"]:
                report = monitor.cycle()
                for line in report.changes:
                    self.stdout.write(line)
                if not report.leading:
                    self.stdout.write("another monitor leads: nothing checked")
                for name, state in sorted(report.states.items()):
                    self.stdout.write(f"{name}: {state}")
                self.stdout.write(f"cycle took {report.duration_s * 1000:.0f} ms")
                return
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            self._say(f"{monitor.leadership.node}: monitoring every {interval:g} s, dead after "
                      f"{monitor.dead_after} missed checks, check timeout {timeout:g} s; "
                      f"leadership: {monitor.leadership.kind}")
            started = time.monotonic()
            monitor.run(stop, out=lambda line: self._say(f"{time.monotonic() - started:9.1f} {line}"))
        finally:
            monitor.close()

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # the demo's log is a file: show each transition as it happens
