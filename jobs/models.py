"""Jobs: every long operation, with numbered steps and a log persisted entry by entry."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from jobs.choices import ACTIVE_STATES, FINISHED_STATES, JOB_STATE_COLOURS, JobState, LogLevel
from xenaoe_panel.colours import StateColourMixin


class Job(StateColourMixin, models.Model):
    STATE_COLOURS = JOB_STATE_COLOURS
    kind = models.CharField(max_length=32, db_index=True)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED, db_index=True)
    vm = models.ForeignKey("vms.VirtualMachine", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs")
    # The VM's name stays readable after the VM is gone (a failed create, a delete).
    target_name = models.CharField(max_length=63, blank=True, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    step = models.PositiveSmallIntegerField(default=0)
    total_steps = models.PositiveSmallIntegerField(default=0)
    message = models.TextField(blank=True)
    # Set by an operator's Cancel; the runner (between steps) and long steps (while they wait)
    # look at it and stop, undoing what was done.
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
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
