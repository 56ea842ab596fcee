"""`manage.py jobs archive|restore`: job retention for operators and cron (see docs/jobs.md). The audit
log has its own (`manage.py audit`); `jobs restore` still takes its files, as it did when they shared one."""
from __future__ import annotations

import datetime
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from audit.retention import is_audit_archive
from jobs.retention import archive_finished_jobs, restore_archive
from xenaoe_panel.archives import add_archive_commands


class Command(BaseCommand):
    help = "Archive old finished jobs (with their logs) to a gzip'd JSON Lines file, or restore one."

    def add_arguments(self, parser: ArgumentParser) -> None:
        add_archive_commands(parser, archive_help="move finished jobs older than N days into an archive file "
                                                  "(audit events: manage.py audit archive)",
                             days_setting="JOB_RETENTION_DAYS",
                             restore_help="put the jobs (or audit events) of an archive file back (existing ones "
                                          "are skipped)")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"do_{options['action']}")(options)

    def do_archive(self, options: dict) -> None:
        days = options["older_than_days"] or settings.JOB_RETENTION_DAYS
        if not days:
            self.stdout.write("JOB_RETENTION_DAYS is 0: jobs are kept for ever; pass --older-than-days to archive")
            return
        archive_dir = options["archive_dir"] or settings.JOB_ARCHIVE_DIR
        result = archive_finished_jobs(datetime.timedelta(days=days), archive_dir, dry_run=options["dry_run"])
        cutoff = result.cutoff.strftime("%Y-%m-%d %H:%M %Z")
        if result.dry_run:
            self.stdout.write(f"would archive {result.jobs} jobs ({result.entries} log entries) finished before "
                              f"{cutoff}")
        elif result.path is None:
            self.stdout.write(f"no finished job older than {cutoff}")
        else:
            self.stdout.write(f"archived {result.jobs} jobs ({result.entries} log entries) finished before {cutoff} "
                              f"to {result.path}")

    def do_restore(self, options: dict) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            if not is_audit_archive(path):
                result = restore_archive(path)
                self.stdout.write(f"restored {result.restored} jobs ({result.entries} log entries) from {path}; "
                                  f"{result.skipped} were already there")
                return
        except (OSError, ValueError, KeyError) as exc:
            raise CommandError(f"{path}: not an archive this panel can read: {exc}") from exc
        # An audit log's file: still read here, as before the log had a command of its own.
        call_command("audit", "restore", str(path), stdout=self.stdout, stderr=self.stderr)
