from django.db import models


class IncidentKind(models.TextChoices):
    CPU_SERVER_FAILED = "cpu-server-failed", "CPU server failed"
    DISK_SERVER_FAILED = "disk-server-failed", "Disk server failed"


class IncidentState(models.TextChoices):
    OPEN = "open", "Open"
    FENCING = "fencing", "Fencing"
    UNFENCED = "unfenced", "Not fenced: nothing restarted"
    RESTARTING = "restarting", "Restarting guests"
    DEGRADED = "degraded", "Mirrors degraded"
    CLOSED = "closed", "Closed"


INCIDENT_STATE_COLOURS = {
    IncidentState.OPEN: "danger",
    IncidentState.FENCING: "warning",
    IncidentState.UNFENCED: "danger",
    IncidentState.RESTARTING: "warning",
    IncidentState.DEGRADED: "warning",
    IncidentState.CLOSED: "secondary",
}


class EventKind(models.TextChoices):
    DETECTED = "detected", "Detected"
    FENCE_ATTEMPT = "fence-attempt", "Fence attempt"
    FENCED = "fenced", "Fenced"
    FENCE_FAILED = "fence-failed", "No fence confirmed"
    RESTARTED = "restarted", "Guest restarted"
    NOT_RESTARTED = "not-restarted", "Guest not restarted"
    ANTI_AFFINITY = "anti-affinity", "Anti-affinity broken"
    RETURNED = "returned", "Host returned"
    STALE_COPY = "stale-copy", "Stale copy destroyed"
    NOTE = "note", "Note"
    CLOSED = "closed", "Closed"
