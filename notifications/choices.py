"""What the panel tells people about, how loudly, and where each delivery stands."""
from django.db import models


class EventKind(models.TextChoices):
    INCIDENT_OPENED = "incident.opened", "Incident opened"
    HOST_UNFENCED = "host.unfenced", "Host could not be fenced"
    MIRROR_DEGRADED = "mirror.degraded", "Mirror degraded"
    MIRROR_RESYNCED = "mirror.resynced", "Mirror resynced"
    N_PLUS_ONE_LOST = "capacity.n-plus-one-lost", "N+1 lost"
    N_PLUS_ONE_RESTORED = "capacity.n-plus-one-restored", "N+1 restored"
    JOB_FAILED = "job.failed", "Job failed"
    TEST = "test", "Test"


# About one VM (its tenant's users may subscribe to them); every other kind is about a host or the
# whole cluster, which only operators hear of.
VM_KINDS = frozenset({EventKind.MIRROR_DEGRADED, EventKind.MIRROR_RESYNCED, EventKind.JOB_FAILED})
# Chosen in a target's filter (a test is sent only to the target it was asked for).
SUBSCRIBABLE_KINDS = [kind for kind in EventKind if kind != EventKind.TEST]


class Severity(models.IntegerChoices):
    """Ordered, so that a target's "at least" filter is a comparison."""
    INFO = 10, "info"
    WARNING = 20, "warning"
    ERROR = 30, "error"
    CRITICAL = 40, "critical"


# How the API and the webhooks' bodies name them.
SEVERITY_NAMES = [severity.label for severity in Severity]
SEVERITY_COLOURS = {Severity.INFO: "info", Severity.WARNING: "warning", Severity.ERROR: "danger",
                    Severity.CRITICAL: "danger"}


class TargetKind(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    RETRYING = "retrying", "Waiting to retry"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


# Waiting for a worker to try (again): what a delivery message may claim.
WAITING_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
DELIVERY_STATE_COLOURS = {
    DeliveryState.PENDING: "secondary",
    DeliveryState.SENDING: "info",
    DeliveryState.RETRYING: "warning",
    DeliveryState.SENT: "success",
    DeliveryState.FAILED: "danger",
}
