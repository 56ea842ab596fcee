from django.db import models


class ExportState(models.TextChoices):
    PLANNED = "planned", "Planned"
    EXPORTED = "exported", "Exported"
    STOPPED = "stopped", "Stopped"


class MirrorState(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    RESYNCING = "resyncing", "Resyncing"


class MirrorHealth(models.TextChoices):
    """The RAID1 as the guest itself sees it (/proc/mdstat through the guest agent)."""
    UNKNOWN = "unknown", "Unknown"
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    RESYNCING = "resyncing", "Resyncing"


EXPORT_STATE_COLOURS = {
    ExportState.PLANNED: "secondary",
    ExportState.EXPORTED: "success",
    ExportState.STOPPED: "warning",
}
MIRROR_STATE_COLOURS = {
    MirrorState.UNKNOWN: "secondary",
    MirrorState.HEALTHY: "success",
    MirrorState.DEGRADED: "danger",
    MirrorState.RESYNCING: "warning",
}
MIRROR_HEALTH_COLOURS = {
    MirrorHealth.UNKNOWN: "secondary",
    MirrorHealth.HEALTHY: "success",
    MirrorHealth.DEGRADED: "danger",
    MirrorHealth.RESYNCING: "warning",
}
