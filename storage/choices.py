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
