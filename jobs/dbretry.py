"""A running job's own bookkeeping rides out a database restart.

PostgreSQL restarted (an upgrade, a failover to its replica) closes every connection: the next
query of a job's run fails, and without care the run dies in the middle of its step while the
hosts go on (a live migration finishes by itself). The runner's and the lease's reads and writes
of the job's row and log go through `retrying`: on a lost connection it closes it and tries
again on a new one for up to RETRY_FOR_S seconds, well inside the lease's margin
(jobs/lease.py). Never inside a transaction: there the work so far is gone with the connection.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_FOR_S = 30.0


def retrying(call: Callable[[], T]) -> T:
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.2
    while True:
        try:
            return call()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning("database connection lost (%s): trying again in %.1f s", exc, delay)
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
