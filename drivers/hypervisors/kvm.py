"""KVM and QEMU without acceleration (TCG): libvirt's QEMU driver, virtio devices, the QEMU guest agent."""
from __future__ import annotations

from dataclasses import replace

import libvirt

from drivers.hypervisors.base import MIGRATE_FLAGS, Flavour

KVM = Flavour(
    name="kvm",
    uri_scheme="qemu",
    features=("acpi", "apic"),
    disk_prefix="vd",
    disk_bus="virtio",
    # io=native needs cache=none (O_DIRECT), which the shared AoE disks want anyway.
    block_driver={"name": "qemu", "type": "raw", "cache": "none", "io": "native"},
    file_driver={"name": "qemu", "type": "raw"},
    cdrom_driver={"name": "qemu", "type": "raw"},
    nic_model="virtio",
    video_model="vga",
    guest_agent=True,
    # AUTO_CONVERGE: a guest that dirties memory faster than the link (or the bandwidth cap) copies
    # it would otherwise never finish; QEMU then slows its vCPUs step by step until it converges.
    # ABORT_ON_ERROR: an I/O error on the shared disks during migration aborts it (the guest stays
    # where it was) instead of carrying a failing guest over.
    migrate_flags=MIGRATE_FLAGS | libvirt.VIR_MIGRATE_AUTO_CONVERGE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR,
    migration_bandwidth_cap=True,
)

# The same machine emulated, for hosts without hardware virtualisation (the lab's nested hosts).
QEMU = replace(KVM, name="qemu")
