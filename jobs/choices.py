from django.db import models


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    ERRORED = "errored", "Errored"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATES = {JobState.SUCCEEDED, JobState.FAILED, JobState.ERRORED, JobState.CANCELLED}
ACTIVE_STATES = [JobState.QUEUED, JobState.RUNNING]

JOB_STATE_COLOURS = {
    JobState.QUEUED: "secondary",
    JobState.RUNNING: "primary",
    JobState.SUCCEEDED: "success",
    JobState.FAILED: "danger",
    JobState.ERRORED: "danger",
    JobState.CANCELLED: "warning",
}


class LogLevel(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    ERROR = "error", "Error"
