from django.db import models


class VmState(models.TextChoices):
    CREATING = "creating", "Creating"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    DELETING = "deleting", "Deleting"
    UNKNOWN = "unknown", "Unknown"


VM_STATE_COLOURS = {
    VmState.CREATING: "info",
    VmState.RUNNING: "success",
    VmState.STOPPED: "secondary",
    VmState.DELETING: "warning",
    VmState.UNKNOWN: "dark",
}
