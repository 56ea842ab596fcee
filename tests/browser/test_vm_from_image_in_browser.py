"""An operator adds their SSH key, creates a VM from the default image on the lab's network in the
wizard, follows the job through the boot, and finds the VM's address and login command on its page."""
from __future__ import annotations

import re
from io import StringIO

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.core.management import call_command
from playwright.sync_api import expect

from networks.models import Nic
from vms.models import VirtualMachine

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.slow]  # a full Debian boot: `make slow`


def test_the_wizard_offers_images_and_networks_and_the_vm_page_shows_its_address(page, operator, default_image):
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " op@browser"
    page.goto("/account/keys/")
    page.get_by_label("User name").fill("op")
    page.get_by_label("Password").fill("op-password-1")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/account/keys/")
    page.get_by_label("Public key").fill(public)
    page.get_by_role("button", name="Add").click()
    expect(page.locator("#ssh-keys")).to_contain_text("op@browser")

    page.goto("/vms/new/")
    image = page.get_by_label("Operating system")
    expect(image).to_have_value("debian-12")  # the site's default, preselected
    expect(image.locator("option")).to_contain_text([re.compile(r"debian-12: Debian 12"), "None: an empty disk"])
    network = page.get_by_label("Network", exact=True)
    expect(network).to_have_value("lab")
    page.get_by_label("Name").fill("browser2")
    page.get_by_label("Memory (MiB)").fill("512")
    page.get_by_label("Disk (MiB)").fill("1024")
    page.get_by_label("Also give the login user a password").check()
    page.get_by_role("button", name="Create").click()

    page.wait_for_url("**/jobs/*/")
    expect(page.locator(".alert")).to_contain_text(re.compile(r"The password of browser2's login user is \S+"))
    page.locator("#job-progress-bar").filter(has_text="100 %").wait_for(timeout=240_000)
    assert page.locator("#job-state").inner_text() == "Succeeded"
    expect(page.locator("#job-log")).to_contain_text(re.compile(r"booted in \d+ s: root array md0 \[UU\]"))

    address = Nic.objects.get(vm__name="browser2").ip
    page.goto("/vms/browser2/")
    expect(page.locator(".vm-address")).to_have_text(address)
    expect(page.locator("#ssh-command")).to_have_text(f"ssh debian@{address}")
    expect(page.get_by_text("Debian 12 (bookworm) (image")).to_be_visible()
    vm = VirtualMachine.objects.get(name="browser2")
    assert vm.ssh_key_list == [public] and vm.password_hash.startswith("$6$")

    call_command("vm", "delete", "browser2", "--wait", stdout=StringIO())
    assert not Nic.objects.filter(ip=address).exists()  # the address is back in the pool
