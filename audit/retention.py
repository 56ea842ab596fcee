"""The audit log's retention, apart from the job history's: events older than
AUDIT_RETENTION_DAYS (XENAOE_AUDIT_RETENTION_DAYS) move into a file of their own,
`audit-<time>.jsonl.gz`, in JOB_ARCHIVE_DIR beside the jobs' (`manage.py audit archive|restore`,
the daily Celery beat task `audit.archive_events`).

One line per event: {"v": 1, "event": {column: value}, "actor": username or null, "tenant": slug
or null}; user and tenant by name, since their ids differ in the database an archive is restored
into. The file is on disk before any event is deleted (xenaoe_panel/archives.py). Deleting is the
one path that the database's append-only trigger lets through (audit/migrations/0002): it tells
the trigger, inside its own transaction, the cutoff it archived up to.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from audit.choices import Action
from audit.models import AuditEvent
from audit.services import record
from tenants.models import Tenant
from xenaoe_panel.archives import batched, first_line, from_json, read_archive, reset_sequences, write_archive

FORMAT_VERSION = 1
PREFIX = "audit"
_FIELDS = list(AuditEvent._meta.concrete_fields)
# The trigger lets no cutoff younger than this through: the last day's events stay whatever is asked.
MIN_AGE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class AuditArchive:
    cutoff: datetime.datetime
    events: int
    path: Path | None  # None: a dry run, or nothing was old enough


@dataclass(frozen=True)
class AuditRestore:
    restored: int
    skipped: int  # already in the database


def archive_audit_events(older_than: datetime.timedelta, archive_dir: Path, *, batch: int = 1000,
                         dry_run: bool = False) -> AuditArchive:
    """Move the events older than `older_than` into a new file in `archive_dir`."""
    if older_than < MIN_AGE:
        # Asked of the trigger, it would refuse the deletes after the file was written.
        raise ValueError(f"audit events younger than {MIN_AGE.days} day are never archived")
    cutoff = timezone.now() - older_than
    old = AuditEvent.objects.filter(time__lt=cutoff)
    if dry_run:
        return AuditArchive(cutoff, old.count(), None)
    ids = list(old.order_by("pk").values_list("pk", flat=True))
    if not ids:
        return AuditArchive(cutoff, 0, None)
    path = write_archive(archive_dir, PREFIX, (line for chunk in batched(ids, batch) for line in _lines(chunk)))
    # Said before the events go (and kept: it is a day too young for any archive): the log's own
    # record that a stretch of it moved, and where to.
    record(Action.AUDIT_ARCHIVED, details={"events": len(ids), "before": cutoff.isoformat(), "file": path.name})
    deleted = 0
    for chunk in batched(ids, batch):
        with transaction.atomic():
            _allow_deleting_before(cutoff)
            # The base manager: the default one refuses to delete (audit/models.py). The time
            # condition again: only what was archived may go.
            deleted += AuditEvent._base_manager.filter(pk__in=chunk, time__lt=cutoff).delete()[0]
    return AuditArchive(cutoff, deleted, path)


def _allow_deleting_before(cutoff: datetime.datetime) -> None:
    """Tell the append-only trigger, for this transaction only, which events were archived."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('xenaoe.audit_archived_before', %s, true)", [cutoff.isoformat()])


def _lines(ids: list[int]) -> Iterator[dict[str, Any]]:
    events = AuditEvent._base_manager.filter(pk__in=ids).order_by("pk").values(
        *(f.attname for f in _FIELDS), "actor__username", "tenant__slug")
    for event in events:
        actor, tenant = event.pop("actor__username"), event.pop("tenant__slug")
        yield {"v": FORMAT_VERSION, "event": event, "actor": actor, "tenant": tenant}


def is_audit_archive(path: Path) -> bool:
    """Whether an archive file holds audit events (else jobs, or nothing): by its first line."""
    return "event" in first_line(path)


def is_job_archive(path: Path) -> bool:
    """Whether an archive file holds jobs: an audit restore refuses it rather than read nothing."""
    return "job" in first_line(path)


def restore_audit_archive(path: Path, batch: int = 1000) -> AuditRestore:
    """Put an archive's events back with their ids and times; those present are skipped, so a restore
    can be repeated. The user and the tenant are linked again only if they still exist (by name)."""
    restored = skipped = 0
    for lines in batched(read_archive(path, FORMAT_VERSION), batch):
        with transaction.atomic():
            done = _restore_chunk(lines)
        restored, skipped = restored + done, skipped + len(lines) - done
    if restored:
        reset_sequences([AuditEvent])
    return AuditRestore(restored, skipped)


def _restore_chunk(lines: list[dict[str, Any]]) -> int:
    present = set(AuditEvent._base_manager.filter(pk__in=[line["event"]["id"] for line in lines])
                  .values_list("pk", flat=True))
    lines = [line for line in lines if line["event"]["id"] not in present]
    users = dict(get_user_model()._default_manager.filter(username__in={line["actor"] for line in lines})
                 .values_list("username", "pk"))
    tenants = dict(Tenant.objects.filter(slug__in={line["tenant"] for line in lines}).values_list("slug", "pk"))
    events = []
    for line in lines:
        # A column added after the archive was written keeps its default.
        values = {f.attname: from_json(f, line["event"][f.attname]) for f in _FIELDS if f.attname in line["event"]}
        values["actor_id"], values["tenant_id"] = users.get(line["actor"]), tenants.get(line["tenant"])
        events.append(AuditEvent(**values))
    AuditEvent.objects.bulk_create(events, batch_size=1000)
    return len(events)
