"""The hypervisor flavours behind one interface (`Flavour`, drivers/hypervisors/base.py), one module
each: `kvm.py` (KVM, and QEMU without acceleration), `xen.py` (Xen through libxl).

Whatever differs between them is asked of `flavour(name)`, with the name a CPU server records
(CpuServer.hypervisor) or a domain's XML carries (its type): no module outside this package
branches on a flavour's name.
"""
from __future__ import annotations

from drivers.errors import DriverError
from drivers.hypervisors.base import Flavour
from drivers.hypervisors.kvm import KVM, QEMU
from drivers.hypervisors.xen import XEN

FLAVOURS: dict[str, Flavour] = {f.name: f for f in (KVM, QEMU, XEN)}
NAMES = tuple(FLAVOURS)
# A domain of one of these names is a hypervisor's own, whichever flavour lists it.
CONTROL_DOMAINS = frozenset(name for f in FLAVOURS.values() for name in f.control_domains)


def flavour(name: str) -> Flavour:
    """The flavour called `name`; a permanent DriverError for any other name."""
    found = FLAVOURS.get(name) if isinstance(name, str) else None
    if found is None:
        raise DriverError(f"hypervisor must be one of {', '.join(NAMES)}, not {name!r}", permanent=True)
    return found
