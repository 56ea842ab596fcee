"""Xen through libvirt's libxl driver: HVM guests on the Xen bus, no guest agent channel.

The migration flags and parameters are the ones libxl accepts (LIBXL_MIGRATION_FLAGS and
LIBXL_MIGRATION_PARAMETERS in libvirt's src/libxl/libxl_migration.h): anything else, QEMU's
auto-converge, abort-on-error or a bandwidth cap, makes it refuse the migration outright.
"""
from __future__ import annotations

from drivers.hypervisors.base import MIGRATE_FLAGS, Flavour

XEN = Flavour(
    name="xen",
    uri_scheme="xen",
    features=("acpi", "apic", "pae"),
    disk_prefix="xvd",
    disk_bus="xen",
    block_driver={"name": "phy"},
    file_driver={"name": "file"},
    cdrom_driver={"name": "phy"},
    nic_model="",
    video_model="cirrus",
    guest_agent=False,
    migrate_flags=MIGRATE_FLAGS,
    migration_bandwidth_cap=False,
    # Xen lists its control domain as a domain; its memory is not the guests' to begin with.
    control_domains=frozenset({"Domain-0"}),
)
