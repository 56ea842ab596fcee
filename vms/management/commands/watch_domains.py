"""`manage.py watch_domains`: keep VM states in step with the hypervisors, live.

Runs in the foreground (make demo and docker-compose start it): libvirt lifecycle events from
every CPU server as they happen, and a reconcile pass every XENAOE_RECONCILE_INTERVAL_S seconds
that also picks up CPU servers added since it started.
"""
from __future__ import annotations

import signal
import threading
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from drivers.domain_events import DomainEvent, DomainEventWatcher
from hosts.models import CpuServer
from vms.watch import apply_event, reconcile


class Command(BaseCommand):
    help = "Follow libvirt domain events and reconcile VM states."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--interval", type=int, default=settings.RECONCILE_INTERVAL_S,
                            help="seconds between reconcile passes")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            servers = dict(CpuServer.objects.values_list("name", "libvirt_uri"))
            generation = threading.Event()  # restarts the watcher when the set of servers changes
            watcher = DomainEventWatcher(servers, self._on_event, self._on_connection)
            thread = threading.Thread(target=watcher.run, args=(generation,), daemon=True)
            thread.start()
            self.stdout.write(f"watching {', '.join(servers) or 'no CPU servers'}")
            while not stop.is_set():
                changed = reconcile()
                close_old_connections()
                for name, state in changed.items():
                    self.stdout.write(f"reconcile: {name} is {state}")
                if dict(CpuServer.objects.values_list("name", "libvirt_uri")) != servers:
                    break
                stop.wait(options["interval"])
            generation.set()
            thread.join(timeout=10)

    def _on_event(self, event: DomainEvent) -> None:
        try:
            new = apply_event(event)
        finally:
            close_old_connections()
        if new:
            self.stdout.write(f"{event.server}: {event.domain} {event.event} -> {new}")

    def _on_connection(self, server: str, connected: bool, error: str) -> None:
        self.stdout.write(f"{server}: {'events connected' if connected else 'no events: ' + error}")
