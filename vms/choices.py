from django.db import models


class VmState(models.TextChoices):
    CREATING = "creating", "Creating"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    DELETING = "deleting", "Deleting"
    UNKNOWN = "unknown", "Unknown"
    # A create that failed and could not undo everything: its volumes or exports may remain on the
    # disk servers. The row keeps the slot taken and shows the VM to verify; deleting it cleans up.
    FAILED = "failed", "Failed"


VM_STATE_COLOURS = {
    VmState.CREATING: "info",
    VmState.RUNNING: "success",
    VmState.STOPPED: "secondary",
    VmState.DELETING: "warning",
    VmState.UNKNOWN: "dark",
    VmState.FAILED: "danger",
}
