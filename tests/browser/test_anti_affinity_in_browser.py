"""An operator makes an anti-affinity group on its page and creates two of its members in the wizard:
the wizard's table shows which server runs the first member and that "automatic" takes the other,
and the two VMs run on different CPU servers (asked of libvirt). Then the VM page shows the group."""
from __future__ import annotations

import re
from io import StringIO

import libvirt
import pytest
from django.core.management import call_command
from playwright.sync_api import Page, expect

from hosts.models import CpuServer
from tests.integration.on_the_hosts import domain_state
from vms.models import VirtualMachine

pytestmark = [pytest.mark.lab, pytest.mark.browser]
NAMES = ("bw-web1", "bw-web2")


def _create_in_wizard(page: Page, name: str) -> None:
    page.goto("/vms/new/")
    page.get_by_label("Name").fill(name)
    page.get_by_label("vCPUs").fill("1")
    page.get_by_label("Memory (MiB)").fill("64")
    page.get_by_label("Disk (MiB)").fill("32")
    page.get_by_label("Anti-affinity groups").select_option(label="bw-web")
    page.get_by_label("Place it even if").check()  # the lab's other guests are not this test's business


def test_the_wizard_places_a_groups_members_on_different_servers(page, operator, lab_hosts, celery_worker_process):
    page.goto("/anti-affinity/")
    page.get_by_label("User name").fill("op")
    page.get_by_label("Password").fill("op-password-1")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/anti-affinity/")
    page.get_by_label("Name").fill("bw-web")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#anti-affinity-groups tr[data-group='bw-web']")).to_be_visible()

    _create_in_wizard(page, NAMES[0])
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/jobs/*/")
    page.locator("#job-progress-bar").filter(has_text="100 %").wait_for(timeout=120_000)
    first = VirtualMachine.objects.get(name=NAMES[0]).cpu_server.name

    _create_in_wizard(page, NAMES[1])
    table = page.locator("#capacity")
    expect(table.locator(f"tr[data-server='{first}'] .apart")).to_have_text(f"{NAMES[0]} (bw-web)")
    other = next(cpu.name for cpu in CpuServer.objects.order_by("name") if cpu.name != first)
    expect(table.locator(f"tr[data-server='{other}'] .after")).to_have_text(re.compile("←"))
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/jobs/*/")
    page.locator("#job-progress-bar").filter(has_text="100 %").wait_for(timeout=120_000)
    assert page.locator("#job-state").inner_text() == "Succeeded"

    servers = {name: VirtualMachine.objects.get(name=name).cpu_server for name in NAMES}
    assert servers[NAMES[1]].name == other
    for name, server in servers.items():
        assert domain_state(server.libvirt_uri, f"xa-{name}") == libvirt.VIR_DOMAIN_RUNNING

    page.goto(f"/vms/{NAMES[1]}/")
    expect(page.locator("#vm-groups [data-group='bw-web']")).to_be_visible()
    expect(page.locator("#vm-groups [data-shared]")).to_have_count(0)

    for name in NAMES:
        call_command("vm", "delete", name, "--wait", stdout=StringIO())
