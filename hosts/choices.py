from django.db import models


class HostState(models.TextChoices):
    UP = "up", "Up"
    SUSPECT = "suspect", "Suspect"
    DEAD = "dead", "Dead"
    FENCED = "fenced", "Fenced"
    MAINTENANCE = "maintenance", "Maintenance"


HOST_STATE_COLOURS = {
    HostState.UP: "success",
    HostState.SUSPECT: "warning",
    HostState.DEAD: "danger",
    HostState.FENCED: "dark",
    HostState.MAINTENANCE: "secondary",
}


class Hypervisor(models.TextChoices):
    """One per hypervisor flavour of the drivers, by its name (drivers/hypervisors/)."""

    KVM = "kvm", "KVM"
    QEMU = "qemu", "QEMU (TCG, no acceleration)"
    XEN = "xen", "Xen (libxl)"
