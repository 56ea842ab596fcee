"""An operator creates a VM for a tenant in the browser; the tenant's user logs in, sees it and its
state live, stops and starts it, and cannot reach another tenant's VM by URL."""
from __future__ import annotations

import os
from io import StringIO

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from jobs.models import Job
from tenants.services import add_user, create_tenant
from vms.choices import VmState
from vms.models import VirtualMachine

pytestmark = [pytest.mark.lab, pytest.mark.browser]


def _log_in(page, username: str, password: str) -> None:
    page.goto("/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def _log_out(page) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login/**")


def _wait_for_job(page) -> None:
    page.wait_for_url("**/jobs/*/")
    page.locator("#job-progress-bar").filter(has_text="100 %").wait_for(timeout=120_000)
    assert page.locator("#job-state").inner_text() == "Succeeded"


def test_operator_creates_for_a_tenant_who_runs_it_and_sees_nothing_else(page, operator, lab_hosts,
                                                                          celery_worker_process):
    acme = create_tenant("acme", "Acme Ltd", quota_vms=3, quota_memory_mib=512)
    add_user(acme, "alice", password="alice-password-1")
    globex = create_tenant("globex", "Globex")
    secret = VirtualMachine.objects.create(name="globex-db", vcpus=1, memory_mib=64, disk_mib=32, tenant=globex,
                                           cpu_server=lab_hosts["cpu"][1], state=VmState.STOPPED)
    secret_job = Job.objects.create(kind="vm.start", vm=secret, target_name=secret.name, tenant=globex,
                                    state="succeeded")

    _log_in(page, "op", "op-password-1")
    page.goto("/vms/new/")
    page.get_by_label("Tenant").select_option("acme")
    expect(page.locator("#quota-panel")).to_be_visible()
    page.get_by_label("Name").fill("acme1")
    page.get_by_label("vCPUs").fill("1")
    page.get_by_label("Memory (MiB)").fill("64")
    page.get_by_label("Disk (MiB)").fill("32")
    expect(page.locator("#quota-table tr[data-resource='memory_mib'] .after")).to_have_text("448 MiB")
    page.get_by_role("button", name="Create").click()
    _wait_for_job(page)
    _log_out(page)

    _log_in(page, "alice", "alice-password-1")
    page.wait_for_url("**/vms/")
    expect(page.get_by_role("link", name="acme1")).to_be_visible()
    expect(page.locator("[data-vm-state='acme1']")).to_have_text("Running")
    assert page.get_by_text("globex-db").count() == 0
    expect(page.get_by_label("memory: 64 of 512 MiB used, 448 left")).to_be_visible()
    out = os.environ.get("XENAOE_SCREENSHOT_DIR")
    if out:
        page.screenshot(path=os.path.join(out, "tenant-vms.png"), full_page=True)

    page.get_by_role("link", name="acme1").click()
    assert page.get_by_text("Live-migrate").count() == 0 and page.get_by_text("CPU server").count() == 0
    page.get_by_label("Seconds before forcing off").first.fill("0")
    page.get_by_role("button", name="Shut down").click()
    _wait_for_job(page)
    page.goto("/vms/acme1/")
    expect(page.locator("[data-vm-state='acme1']")).to_have_text("Stopped")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/jobs/*/")
    # Back on the VM's page while the job runs: the badge turns Running by itself, no reload.
    page.goto("/vms/acme1/")
    expect(page.locator("[data-vm-state='acme1']")).to_have_text("Running", timeout=120_000)
    expect(page.get_by_role("button", name="Shut down")).to_be_visible()  # the buttons follow the state
    if out:
        page.screenshot(path=os.path.join(out, "tenant-vm.png"), full_page=True)

    for url in ("/vms/globex-db/", f"/jobs/{secret_job.pk}/", "/hosts/", "/vms/globex-db/delete/"):
        response = page.goto(url)
        assert response.status == 404, url
    assert VirtualMachine.objects.get(name="globex-db").state == VmState.STOPPED
    assert VirtualMachine.objects.get(name="acme1").tenant == acme

    call_command("vm", "delete", "acme1", "--wait", stdout=StringIO())
    assert not VirtualMachine.objects.filter(name="acme1").exists()
