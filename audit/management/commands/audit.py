"""`manage.py audit archive|restore`: the audit log's retention, apart from the job history's
(docs/operations.md, "Audit log"). An operator's archive is recorded as theirs (`AuditedCommand`)."""
from __future__ import annotations

import datetime
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from audit.actors import AuditedCommand
from audit.retention import archive_audit_events, is_job_archive, restore_audit_archive
from xenaoe_panel.archives import add_archive_commands


class Command(AuditedCommand):
    help = "Archive old audit events to a gzip'd JSON Lines file, or restore one."

    def add_arguments(self, parser: ArgumentParser) -> None:
        add_archive_commands(parser, archive_help="move audit events older than N days into an archive file",
                             days_setting="AUDIT_RETENTION_DAYS",
                             restore_help="put the events of an audit archive file back (existing ones are skipped)")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"do_{options['action']}")(options)

    def do_archive(self, options: dict) -> None:
        days = options["older_than_days"] or settings.AUDIT_RETENTION_DAYS
        if not days:
            self.stdout.write("AUDIT_RETENTION_DAYS is 0: audit events are kept for ever; pass --older-than-days "
                              "to archive")
            return
        archive_dir = options["archive_dir"] or settings.JOB_ARCHIVE_DIR
        result = archive_audit_events(datetime.timedelta(days=days), archive_dir, dry_run=options["dry_run"])
        cutoff = result.cutoff.strftime("%Y-%m-%d %H:%M %Z")
        if options["dry_run"]:
            self.stdout.write(f"would archive {result.events} audit events from before {cutoff}")
        elif result.path is None:
            self.stdout.write(f"no audit event older than {cutoff}")
        else:
            self.stdout.write(f"archived {result.events} audit events from before {cutoff} to {result.path}")

    def do_restore(self, options: dict) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            if is_job_archive(path):
                raise CommandError(f"{path} holds jobs: manage.py jobs restore reads it")
            result = restore_audit_archive(path)
        except (OSError, ValueError, KeyError) as exc:
            raise CommandError(f"{path}: not an archive this panel can read: {exc}") from exc
        self.stdout.write(f"restored {result.restored} audit events from {path}; {result.skipped} were already "
                          "there")
