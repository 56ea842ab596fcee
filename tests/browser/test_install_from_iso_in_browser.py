"""An operator installs a VM from an ISO in the browser: the wizard offers the lab's installer ISO
under "Install from an ISO", the job creates the VM with an empty disk and the ISO in its CD drive,
the VM's page says so, the screen (noVNC) shows the installer, and "Eject and boot from the disk"
ends the installation: the drive is empty and the VM's page no longer shows it."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_console_in_browser import _log_in, _wait_for_screen
from tests.integration.on_the_hosts import clear_domain, succeeded
from vms.models import VirtualMachine
from vms.services import delete_vm

pytestmark = [pytest.mark.lab, pytest.mark.browser]
VM = "inst2"


def test_the_wizard_installs_from_an_iso_and_the_vm_page_ejects_it(page, operator, installer_image, tmp_path):
    _log_in(page, "op", "op-password-1")
    page.goto("/vms/new/")
    image = page.get_by_label("Operating system")
    expect(image.locator("optgroup")).to_have_count(2)
    image.select_option(f"iso:{installer_image.name}")
    page.get_by_label("Name").fill(VM)
    page.get_by_label("Memory (MiB)").fill("384")
    page.get_by_label("Disk (MiB)").fill("256")
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/jobs/*/")
    try:
        page.locator("#job-progress-bar").filter(has_text="100 %").wait_for(timeout=240_000)
        assert page.locator("#job-state").inner_text() == "Succeeded"
        expect(page.locator("#job-log")).to_contain_text(re.compile(r"lab-installer \(CD\) is /dev/etherd/e\d+\.254"))

        page.goto(f"/vms/{VM}/")
        expect(page.locator("#vm-cd")).to_contain_text("lab-installer")
        page.locator("#vm-vnc-link").click()
        page.wait_for_url(f"**/vms/{VM}/console/vnc/")
        expect(page.locator("#vnc")).to_have_attribute("data-vnc-state", "connected", timeout=30_000)
        print(f"\nthe installer's screen: {_wait_for_screen(page, timeout=120)} pixels lit")
        page.screenshot(path=str(tmp_path / "installer.png"))

        page.goto(f"/vms/{VM}/")
        page.get_by_role("button", name="Eject and boot from the disk").click()
        page.wait_for_url("**/jobs/*/")
        page.locator("#job-progress-bar").filter(has_text="100 %").wait_for(timeout=120_000)
        assert page.locator("#job-state").inner_text() == "Succeeded"
        expect(page.locator("#job-log")).to_contain_text("boots from its disk")
        page.goto(f"/vms/{VM}/")
        expect(page.locator("#vm-cd")).to_have_count(0)
        assert VirtualMachine.objects.get(name=VM).iso is None
    finally:
        succeeded(delete_vm(VM))
        clear_domain(f"xa-{VM}")
