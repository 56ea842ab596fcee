"""`manage.py cluster verify [--json]`: compare the database with the hosts, for operators and cron.

Runs in this process (collect + compare, exactly what the "cluster.verify" job runs), so that it
works while the Celery worker is down. Exit status: 0 no differences, 1 differences (one per line
on stdout, or JSON), 2 verify itself could not run.
"""
from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from audit.actors import AuditedCommand
from hosts.verify import result_text, verify

EXIT_DIFFERENCES = 1
EXIT_BROKEN = 2


class Command(AuditedCommand):
    help = "Compare the database with what runs on the hosts (exit 1 when they differ)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        check = sub.add_parser("verify", help="list every difference between the database and the hosts")
        check.add_argument("--json", action="store_true",
                           help='print {"findings": [...], "checked": {...}} instead of one line per finding')

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"do_{options['action']}")(options)

    def do_verify(self, options: dict) -> None:
        # -v 2 shows what each host said, on stderr: stdout stays one line per finding.
        def note(message: str, _level: str) -> None:
            if options["verbosity"] >= 2:
                self.stderr.write(message)

        try:
            result = verify(note)
        except Exception as exc:  # a bug or a broken database must not read as "differences"
            raise CommandError(f"cluster verify could not run: {type(exc).__name__}: {exc}",
                               returncode=EXIT_BROKEN) from exc
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        elif not result.findings:
            self.stdout.write("cluster verify: no differences")
        else:
            for finding in result.findings:
                self.stdout.write(finding.line())
            self.stderr.write(f"cluster verify: {result_text(result.findings)}")
        if result.findings:
            sys.exit(EXIT_DIFFERENCES)
