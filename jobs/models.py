"""Jobs: every long operation, with numbered steps and a log persisted entry by entry."""
from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from jobs.choices import ACTIVE_STATES, FINISHED_STATES, JOB_STATE_COLOURS, JobState, LogLevel
from tenants.querysets import TenantScopedQuerySet
from xenaoe_panel.colours import StateColourMixin


def hosts_column(names: Iterable[str]) -> str:
    """Space-delimited with a space at each end, so that `contains=" cpu1 "` matches whole names only,
    on SQLite (the demo) as on PostgreSQL: a list or array column would tie the filter to PostgreSQL."""
    names = sorted(set(names))
    return f" {' '.join(names)} " if names else ""


class Job(StateColourMixin, models.Model):
    STATE_COLOURS = JOB_STATE_COLOURS
    kind = models.CharField(max_length=32, db_index=True)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED, db_index=True)
    vm = models.ForeignKey("vms.VirtualMachine", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs")
    # The VM's name stays readable after the VM is gone (a failed create, a delete).
    target_name = models.CharField(max_length=63, blank=True, db_index=True)
    # Its kind's parameters (jobs/params.py) as JSON; read them through the kind's class.
    params = models.JSONField(default=dict, blank=True)
    # A job made of other jobs (an evacuation and its migrations) is their parent.
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    # The VM's tenant when the job was written: its users keep seeing the job after the VM is gone.
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="jobs")
    step = models.PositiveSmallIntegerField(default=0)
    total_steps = models.PositiveSmallIntegerField(default=0)
    message = models.TextField(blank=True)
    # Set by an operator's Cancel; the runner (between steps) and long steps (while they wait)
    # look at it and stop, undoing what was done.
    cancel_requested = models.BooleanField(default=False)
    # Which worker ran it last, and its lease (jobs/lease.py): the token of the run that holds it
    # (empty while none does: queued, waiting outside a worker, finished) and until when, renewed
    # by that run's heartbeat thread (`heartbeat_at`: the last renewal). A job whose lease runs
    # out is ended (jobs/recovery.py) instead of holding its VM busy for ever.
    worker = models.CharField(max_length=255, blank=True)
    owner = models.CharField(max_length=32, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Its next message (jobs/queues.py): when it is due (queued: when it was sent; waiting outside
    # a worker: when the wait's countdown ends), the token that lets that message resume a waiting
    # job (a stale or duplicate message does not), and when recovery last sent it again.
    due_at = models.DateTimeField(default=timezone.now)
    wake = models.CharField(max_length=32, blank=True, default="")
    resent_at = models.DateTimeField(null=True, blank=True)
    # What its steps shared (ctx.data), kept while it waits outside a worker.
    context = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Every host the job touches, written once when the job is created (jobs.services.start_job:
    # the hosts its parameters declare and where its VM is then): the job history filters on it,
    # and it stays right after the VM has moved or is gone.
    hosts = models.TextField(blank=True, default="", editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # The job history shows the newest first (created_at, then id) after filtering on at most
        # one of these columns: each index ends in the whole ordering, so PostgreSQL reads a page
        # of ids straight off an index, backwards, with neither a sort nor a visit to the table.
        indexes = [
            models.Index(fields=["created_at", "id"], name="job_created_id"),
            models.Index(fields=["state", "created_at", "id"], name="job_state_created_id"),
            models.Index(fields=["kind", "created_at", "id"], name="job_kind_created_id"),
            models.Index(fields=["target_name", "created_at", "id"], name="job_target_created_id"),
            models.Index(fields=["user", "created_at", "id"], name="job_user_created_id"),
            models.Index(fields=["tenant", "created_at", "id"], name="job_tenant_created_id"),
        ]
        constraints = [
            # One operation per VM at a time, kept by the database itself: two requests racing
            # each other cannot both start a job on the same VM.
            models.UniqueConstraint(
                fields=["vm"], condition=models.Q(state__in=ACTIVE_STATES), name="one_active_job_per_vm"
            ),
        ]

    def __str__(self) -> str:
        return f"job #{self.pk} {self.kind} {self.target_name}"

    def get_absolute_url(self) -> str:
        return reverse("job-detail", args=[self.pk])

    @property
    def host_names(self) -> list[str]:
        return self.hosts.split()

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def percent(self) -> int:
        if self.state == JobState.SUCCEEDED:
            return 100
        if not self.total_steps:
            return 0
        done = max(self.step - 1, 0) if self.state == JobState.RUNNING else self.step
        return int(100 * done / self.total_steps)


    def summary(self) -> dict:
        """What a browser needs to draw the job's header and progress bar."""
        return {
            "id": self.pk,
            "kind": self.kind,
            "state": self.state,
            "state_display": self.get_state_display(),
            "colour": self.state_colour,
            "step": self.step,
            "total_steps": self.total_steps,
            "percent": self.percent,
            "message": self.message,
            "finished": self.finished,
            "cancel_requested": self.cancel_requested,
        }


class JobLogEntry(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log")
    serial = models.PositiveIntegerField()
    time = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    message = models.TextField()
    step = models.PositiveSmallIntegerField(default=0)
    total_steps = models.PositiveSmallIntegerField(default=0)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["job", "serial"]
        constraints = [models.UniqueConstraint(fields=["job", "serial"], name="job_log_serial_unique")]

    def as_event(self) -> dict:
        return {
            "serial": self.serial,
            "time": self.time.isoformat(),
            "level": self.level,
            "message": self.message,
            "step": self.step,
            "total_steps": self.total_steps,
            "data": self.data,
        }
