"""Retention: finished jobs older than a cutoff move, with their whole log, into a gzip'd JSON
Lines file, and can be read back (`manage.py jobs archive|restore`, a daily Celery beat task). The
audit log has a retention of its own (audit/retention.py), its files beside these.

One line per job: {"v": 1, "job": {column: value}, "username": ..., "log": [{column: value}]}.
The file is on disk before any row is deleted (xenaoe_panel/archives.py), so a crash at any point
loses nothing (restore skips jobs that exist).
"""
from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.utils import timezone

from jobs.choices import FINISHED_STATES
from jobs.models import Job, JobLogEntry
from xenaoe_panel.archives import batched, from_json, read_archive, reset_sequences, write_archive

FORMAT_VERSION = 1
_JOB_FIELDS = list(Job._meta.concrete_fields)
_ENTRY_FIELDS = [f for f in JobLogEntry._meta.concrete_fields if f.name not in ("id", "job")]


@dataclass(frozen=True)
class ArchiveResult:
    cutoff: datetime.datetime
    jobs: int
    entries: int
    path: Path | None  # None: a dry run, or nothing was old enough
    dry_run: bool = False


@dataclass(frozen=True)
class RestoreResult:
    restored: int
    skipped: int  # already in the database
    entries: int


def archivable_jobs(cutoff: datetime.datetime) -> models.QuerySet[Job]:
    """Finished jobs that ended before the cutoff; never a queued or running one."""
    ended_before = models.Q(finished_at__lt=cutoff) | models.Q(finished_at__isnull=True, created_at__lt=cutoff)
    return Job.objects.filter(ended_before, state__in=FINISHED_STATES)


def archive_finished_jobs(
    older_than: datetime.timedelta, archive_dir: Path, batch: int = 1000, dry_run: bool = False,
) -> ArchiveResult:
    cutoff = timezone.now() - older_than
    jobs, entries, path = _archive_jobs(cutoff, archive_dir, batch, dry_run)
    return ArchiveResult(cutoff, jobs, entries, path, dry_run=dry_run)


def _archive_jobs(cutoff: datetime.datetime, archive_dir: Path, batch: int,
                  dry_run: bool) -> tuple[int, int, Path | None]:
    candidates = archivable_jobs(cutoff)
    if dry_run:
        return candidates.count(), JobLogEntry.objects.filter(job__in=candidates).count(), None
    ids = list(candidates.order_by("pk").values_list("pk", flat=True))
    if not ids:
        return 0, 0, None
    entries = 0

    def lines() -> Iterator[dict[str, Any]]:
        nonlocal entries
        for chunk in batched(ids, batch):
            for line in _job_lines(chunk):
                entries += len(line["log"])
                yield line

    path = write_archive(archive_dir, "jobs", lines())
    deleted = 0
    for chunk in batched(ids, batch):
        with transaction.atomic():
            # The state condition again: only what was archived as finished may go.
            deleted += Job.objects.filter(pk__in=chunk, state__in=FINISHED_STATES).delete()[1].get(
                Job._meta.label, 0
            )
    return deleted, entries, path


def _job_lines(ids: list[int]) -> Iterator[dict[str, Any]]:
    jobs = Job.objects.filter(pk__in=ids).order_by("pk").values(*(f.attname for f in _JOB_FIELDS), "user__username")
    log: dict[int, list[dict[str, Any]]] = {}
    for entry in JobLogEntry.objects.filter(job_id__in=ids).order_by("job_id", "serial").values(
        "job_id", *(f.attname for f in _ENTRY_FIELDS)
    ):
        log.setdefault(entry.pop("job_id"), []).append(entry)
    for job in jobs:
        username = job.pop("user__username")
        yield {"v": FORMAT_VERSION, "job": job, "username": username, "log": log.get(job["id"], [])}


def restore_archive(path: Path, batch: int = 1000) -> RestoreResult:
    """Put an archive's jobs back with their ids and logs. Jobs already present are skipped, so a
    restore can be repeated. The VM and the user are linked again only if they still exist."""
    total = RestoreResult(0, 0, 0)
    for chunk in batched(read_archive(path, FORMAT_VERSION), batch):
        with transaction.atomic(), _keeping_archived_times():
            done = _restore_chunk(chunk)
        total = RestoreResult(
            total.restored + done.restored, total.skipped + done.skipped, total.entries + done.entries
        )
    if total.restored:
        reset_sequences([Job, JobLogEntry])
    return total


def _restore_chunk(lines: list[dict[str, Any]]) -> RestoreResult:
    ids = [line["job"]["id"] for line in lines]
    present = set(Job.objects.filter(pk__in=ids).values_list("pk", flat=True))
    lines = [line for line in lines if line["job"]["id"] not in present]
    users = dict(
        get_user_model().objects.filter(username__in={line["username"] for line in lines if line["username"]})
        .values_list("username", "pk")
    )
    existing = _existing_targets(lines)
    jobs, log = [], []
    for line in lines:
        values = {}
        for field in _JOB_FIELDS:
            if field.attname not in line["job"]:
                continue  # a column added after the archive was written keeps its default
            value = from_json(field, line["job"][field.attname])
            if field.attname in existing and value is not None and value not in existing[field.attname]:
                value = None
            values[field.attname] = value
        # By name: user ids differ between the database archived from and the one restored into.
        values["user_id"] = users.get(line["username"])
        jobs.append(Job(**values))
        for archived in line["log"]:
            fields = {f.attname: from_json(f, archived[f.attname]) for f in _ENTRY_FIELDS if f.attname in archived}
            log.append(JobLogEntry(job_id=values["id"], **fields))
    Job.objects.bulk_create(jobs, batch_size=500)
    JobLogEntry.objects.bulk_create(log, batch_size=2000)
    return RestoreResult(len(jobs), len(present), len(log))


def _existing_targets(lines: list[dict[str, Any]]) -> dict[str, set[Any]]:
    """For each foreign key of Job (the VM, ...), which archived targets still exist: a link to a
    row that has gone is restored empty, as deleting the row would have left it."""
    existing: dict[str, set[Any]] = {}
    for field in _JOB_FIELDS:
        if field.is_relation and field.name != "user":
            wanted = {line["job"].get(field.attname) for line in lines} - {None}
            existing[field.attname] = set(
                field.related_model.objects.filter(pk__in=wanted).values_list("pk", flat=True)
            ) if wanted else set()
    return existing


@contextmanager
def _keeping_archived_times() -> Iterator[None]:
    """bulk_create stamps auto_now_add fields with now; a restored job keeps the times it had.
    Restores run in a management command's own process, so flipping the flag touches no request."""
    fields = [f for f in (*_JOB_FIELDS, *_ENTRY_FIELDS) if getattr(f, "auto_now_add", False)]
    for field in fields:
        field.auto_now_add = False
    try:
        yield
    finally:
        for field in fields:
            field.auto_now_add = True
