"""Archive files: gzip'd JSON Lines, one row a line, for the job archive and the audit log's
(jobs/retention.py, audit/retention.py).

A file is written under a `.partial` name, fsync'd, then renamed into place (and its directory
fsync'd), before the caller deletes any row: a crash at any point loses nothing, at worst a
`.partial` file (nothing deleted yet) or rows that are both in a file and still in the database.
"""
from __future__ import annotations

import datetime
import gzip
import json
import os
from argparse import ArgumentParser
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from django.core.management.color import no_style
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models
from django.utils import timezone
from django.utils.dateparse import parse_datetime


def positive_days(raw: str) -> int:
    """`--older-than-days` of the archive commands (`manage.py jobs|audit archive`): 0 would be everything."""
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def add_archive_commands(parser: ArgumentParser, *, archive_help: str, days_setting: str, restore_help: str) -> None:
    """`archive [--older-than-days N] [--archive-dir DIR] [--dry-run]` and `restore FILE`, the
    subcommands of `manage.py jobs` and `manage.py audit` alike."""
    sub = parser.add_subparsers(dest="action", required=True)
    archive = sub.add_parser("archive", help=archive_help)
    archive.add_argument("--older-than-days", type=positive_days, metavar="N",
                         help=f"default: {days_setting} (XENAOE_{days_setting})")
    archive.add_argument("--archive-dir", type=Path, help="default: JOB_ARCHIVE_DIR (XENAOE_JOB_ARCHIVE_DIR)")
    archive.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    sub.add_parser("restore", help=restore_help).add_argument("file", type=Path)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """itertools.batched arrives with Python 3.12; the panel runs on 3.11."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class _Encoder(DjangoJSONEncoder):
    # DjangoJSONEncoder cuts times to milliseconds (the ECMAScript format); an archive keeps them whole.
    def default(self, o: Any) -> Any:
        if isinstance(o, datetime.datetime):
            return o.isoformat()
        return super().default(o)


def write_archive(archive_dir: Path, prefix: str, lines: Iterable[dict[str, Any]]) -> Path:
    """`lines` into a new file `<prefix>-<UTC time>.jsonl.gz` in `archive_dir`, on disk when this returns."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = _new_archive_path(archive_dir, prefix)
    partial = path.with_name(path.name + ".partial")
    with partial.open("xb") as raw:
        with gzip.GzipFile(filename=path.name[: -len(".gz")], fileobj=raw, mode="wb", compresslevel=6) as gz:
            for line in lines:
                gz.write(json.dumps(line, cls=_Encoder, separators=(",", ":")).encode() + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
    partial.rename(path)
    _fsync_dir(archive_dir)
    return path


def read_archive(path: Path, version: int) -> Iterator[dict[str, Any]]:
    """The lines of an archive file, each checked to be of format `version`."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            line = json.loads(text)
            if line.get("v") != version:
                raise ValueError(f"{path}:{number}: archive format {line.get('v')!r}, expected {version}")
            yield line


def first_line(path: Path) -> dict[str, Any]:
    """The first line of an archive file (what kind of rows it holds); {} for an empty file."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for text in lines:
            if text.strip():
                return json.loads(text)
    return {}


def from_json(field: models.Field, value: Any) -> Any:
    """An archived column's value as the field takes it back."""
    if value is not None and isinstance(field, models.DateTimeField):
        return parse_datetime(value)
    return value


def reset_sequences(restored: list[type[models.Model]]) -> None:
    """After rows were inserted with their own ids: PostgreSQL's sequences are left behind when
    restoring into a database that never issued those ids, and the next new row would collide."""
    statements = connection.ops.sequence_reset_sql(no_style(), restored)
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)


def _new_archive_path(archive_dir: Path, prefix: str) -> Path:
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        path = archive_dir / f"{prefix}-{stamp}{f'-{n}' if n else ''}.jsonl.gz"
        if not path.exists() and not path.with_name(path.name + ".partial").exists():
            return path
    raise FileExistsError(f"{archive_dir}: too many archives named {prefix}-{stamp}*")


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory itself is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
