"""An operator creates a VM in the browser and watches it reach 100 %; then the hosts are asked."""
from __future__ import annotations

import os
import re
from io import StringIO

import libvirt
import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from drivers import aoe
from hosts.targets import ssh_target
from storage.models import AoEExport
from vms.models import VirtualMachine

pytestmark = [pytest.mark.lab, pytest.mark.browser]


def test_operator_creates_a_vm_and_watches_it_to_100_percent(page, operator, lab_hosts, celery_worker_process,
                                                                 tmp_path):
    page.goto("/vms/new/")
    assert "/login/" in page.url
    page.get_by_label("User name").fill("op")
    page.get_by_label("Password").fill("op-password-1")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/vms/new/")

    page.get_by_label("Name").fill("browser1")
    page.get_by_label("vCPUs").fill("1")
    page.get_by_label("Memory (MiB)").fill("64")
    page.get_by_label("Disk (MiB)").fill("32")
    page.get_by_label("CPU server", exact=True).select_option("cpu1")
    expect(page.locator("#capacity tr[data-server='cpu1'] .after")).to_have_text(re.compile(r"^4032 MiB"))
    expect(page.locator("#capacity tr[data-server='cpu1'] .nplus1")).to_have_text("kept")
    page.get_by_role("button", name="Create").click()

    page.wait_for_url("**/jobs/*/")
    bar = page.locator("#job-progress-bar")
    bar.filter(has_text="100 %").wait_for(timeout=120_000)
    assert page.locator("#job-state").inner_text() == "Succeeded"
    assert page.locator("#job-log tr").count() >= 10
    out = os.environ.get("XENAOE_SCREENSHOT_DIR")
    if out:
        page.wait_for_timeout(1000)  # let the progress bar's CSS transition finish
        page.screenshot(path=os.path.join(out, "job.png"), full_page=True)

    # A reload shows the same log once, not twice.
    page.reload()
    serials = page.locator("#job-log tr").evaluate_all("rows => rows.map(r => r.dataset.serial)")
    assert len(serials) == len(set(serials))

    vm = VirtualMachine.objects.get(name="browser1")
    cpu1 = vm.cpu_server
    assert cpu1.name == "cpu1" and vm.state == "running"
    conn = libvirt.open(cpu1.libvirt_uri)
    try:
        assert conn.lookupByName(vm.domain_name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()
    for leg in AoEExport.objects.filter(mirror__vm=vm):
        answers = aoe.probe(ssh_target(cpu1), cpu1.san_interface, leg.shelf, leg.slot, identify=True)
        assert [(a.shelf, a.slot) for a in answers] == [(leg.shelf, leg.slot)]
    if out:
        page.goto("/")
        page.screenshot(path=os.path.join(out, "dashboard.png"), full_page=True)
        page.goto("/vms/new/")
        page.screenshot(path=os.path.join(out, "wizard.png"), full_page=True)

    call_command("vm", "delete", "browser1", "--wait", stdout=StringIO())
    assert not VirtualMachine.objects.filter(name="browser1").exists()
