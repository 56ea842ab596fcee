"""For the console's lab and browser tests: a Debian guest of tenant acme (which may use the
console) with a password for its login user, and a terminal session driven by expectations."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tenants.services import add_user, create_tenant
from tests.integration.on_the_hosts import clear_domain, clear_exports, succeeded
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

PASSWORD = "Console-test-pw-7"
ACTIONS = ["start", "shutdown", "reboot", "console"]
BOOT_TIMEOUT_S = 240


@contextmanager
def console_guest(name: str, cpu_server: str = "cpu2") -> Iterator[dict]:
    """The VM (created and booted: its create job waits for the OS), alice of acme, bob of globex."""
    acme = create_tenant("acme", allowed_actions=ACTIONS)
    globex = create_tenant("globex", allowed_actions=ACTIONS)
    alice = add_user(acme, "alice", password="alice-password-1")
    bob = add_user(globex, "bob", password="bob-password-1")
    clear_domain(f"xa-{name}")
    clear_exports(name)
    job = create_vm(VmRequest(name=name, vcpus=2, memory_mib=512, disk_mib=1024, cpu_server=cpu_server,
                              allow_n_plus_one_break=True, tenant="acme", password=PASSWORD))
    try:
        succeeded(job)
        yield {"vm": VirtualMachine.objects.get(name=name), "alice": alice, "bob": bob}
    finally:
        try:
            succeeded(delete_vm(name))
        finally:
            clear_domain(f"xa-{name}")


def expect(read: Callable[[], str], pattern: str, timeout: float, what: str = "") -> re.Match:
    """Wait until `read()` (everything seen so far) matches `pattern`."""
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        match = re.search(pattern, text)
        if match:
            return match
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or pattern!r} not seen within {timeout:g} s; the last output:\n{text[-1500:]}")
        time.sleep(0.2)
