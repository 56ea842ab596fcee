"""Waiting for a job's next log entry without holding a database connection (the API's long poll).

A waiting request used to keep its PostgreSQL connection for up to 30 s, re-reading the log every
0.25 s: a hundred scripts following jobs took a hundred connections. Now the request subscribes to
the job's channel group (`job.<id>`, where jobs/events.py announces every entry on commit), reads
the database only when something arrives (and every RECHECK_S, in case an event was lost), and
closes its connection before each wait. Without the channel layer (Redis down) it re-reads every
FALLBACK_POLL_S, still closing the connection in between.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from jobs.events import job_group

logger = logging.getLogger(__name__)
T = TypeVar("T")
RECHECK_S = 5.0
FALLBACK_POLL_S = 1.0

_lock = threading.Lock()
_waiting = 0


@contextlib.contextmanager
def waiting_slot() -> Iterator[bool]:
    """True if this process has fewer than XENAOE_API_MAX_LONG_POLLS polls waiting (it then counts
    as one until the block ends); False when the caller should answer at once instead."""
    global _waiting
    with _lock:
        admitted = _waiting < settings.API_MAX_LONG_POLLS
        if admitted:
            _waiting += 1
    try:
        yield admitted
    finally:
        if admitted:
            with _lock:
                _waiting -= 1


def _checked(ready: Callable[[], T | None]) -> T | None:
    """`ready()`, then the connection closed: nothing is held while the caller waits. (Not inside
    a transaction: closing would break it. A request has none; a test may.)"""
    try:
        return ready()
    finally:
        if not connection.in_atomic_block:
            connection.close()


def wait_for_job(job_id: int, seconds: float, ready: Callable[[], T | None]) -> T | None:
    """Call `ready` (which reads the database) until it returns something or `seconds` pass, waking
    on the job's events. Returns its last answer."""
    deadline = time.monotonic() + seconds
    layer = get_channel_layer()
    if layer is not None:
        try:
            return async_to_sync(_wait_on_layer)(layer, job_id, deadline, ready)
        except Exception:  # noqa: BLE001 - Redis away: poll the database instead
            logger.warning("long poll of job %s: the channel layer failed; polling", job_id, exc_info=True)
    while True:
        result = _checked(ready)
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(min(FALLBACK_POLL_S, max(deadline - time.monotonic(), 0)))


async def _wait_on_layer(layer, job_id: int, deadline: float, ready: Callable[[], T | None]) -> T | None:
    channel = await layer.new_channel()
    # Joined before the first read: an entry committed after that read wakes this wait.
    await layer.group_add(job_group(job_id), channel)
    try:
        while True:
            # Back in the request's own thread, where its database connection lives.
            result = await sync_to_async(_checked)(ready)
            remaining = deadline - time.monotonic()
            if result is not None or remaining <= 0:
                return result
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(layer.receive(channel), timeout=min(RECHECK_S, remaining))
    finally:
        await layer.group_discard(job_group(job_id), channel)
        # A receive cut short leaves the layer a cleanup task: run it in this event loop, which may
        # be one made for this call alone.
        await layer.wait_received()
