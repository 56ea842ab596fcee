"""A running job's lease: which run of a worker holds the job, and until when.

Liveness comes from the worker, not from the job's log: a step may wait quietly for minutes (a
fence that takes its time, a guest's agent that does not answer) and its job stays alive as long
as its worker process does, because a heartbeat thread renews the lease every quarter of its
length. Recovery (jobs/recovery.py) ends a job only once its lease has run out.

The holder checks its lease before it acts: at every step boundary, in ctx.log, in check_cancel,
and before every driver call (drivers.guard). Once the lease is gone (recovery ended
the job, or the heartbeat could not renew it in time) the run raises LeaseLost and stops without
acting and without writing the job's state: another job may already own the VM.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta

from django.db import DatabaseError, connection
from django.db.models import QuerySet
from django.utils import timezone

from jobs.choices import JobState
from jobs.dbretry import retrying
from jobs.models import Job

logger = logging.getLogger(__name__)


class LeaseLost(BaseException):
    """This run no longer holds its job. A BaseException, like KeyboardInterrupt, so that the broad
    `except Exception` a step keeps around a driver call cannot swallow it and carry on."""


def new_owner() -> str:
    return uuid.uuid4().hex


class Lease:
    """Held by the run that claimed the job (`owner` is its token in the job's row)."""

    def __init__(self, job_id: int, owner: str, seconds: float) -> None:
        self.job_id = job_id
        self.owner = owner
        self.seconds = float(seconds)
        self._lost = threading.Event()
        self._stop = threading.Event()
        # The run stops acting a quarter of a lease before recovery may end the job, so that the
        # two never overlap (given clocks within that margin of each other).
        self._valid_until = time.monotonic() + self.seconds * 0.75
        self._thread: threading.Thread | None = None

    def mine(self) -> QuerySet[Job]:
        return Job.objects.filter(pk=self.job_id, owner=self.owner, state=JobState.RUNNING)

    # --- the heartbeat ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"job {self.job_id} heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Bounded: a renewal stuck on a lock must not keep the worker's slot either.
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.seconds / 4):
                self.renew()
                if self._lost.is_set():
                    return
        finally:
            connection.close()  # this thread's own connection

    def renew(self) -> None:
        started = time.monotonic()
        now = timezone.now()
        try:
            renewed = self.mine().update(lease_until=now + timedelta(seconds=self.seconds), heartbeat_at=now)
        except DatabaseError as exc:  # try again next beat; the run stops by itself if it never works
            logger.warning("job %s: could not renew its lease: %s", self.job_id, exc)
            connection.close()  # a connection the database closed: the next beat opens a new one
            return
        if renewed:
            self._valid_until = started + self.seconds * 0.75
        else:
            self._lost.set()

    # --- the checks ----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise LeaseLost unless this run still holds the job (one indexed read)."""
        if self._lost.is_set() or time.monotonic() > self._valid_until:
            self._lost.set()
            raise LeaseLost(f"job {self.job_id}: lease lost")
        if not retrying(self.mine().exists):
            self._lost.set()
            raise LeaseLost(f"job {self.job_id}: ended or taken over meanwhile")

    def lost(self) -> None:
        """Record that a compare-and-set on the owner found the job gone, and raise."""
        self._lost.set()
        raise LeaseLost(f"job {self.job_id}: ended or taken over meanwhile")
