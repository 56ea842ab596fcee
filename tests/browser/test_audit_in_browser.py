"""The audit log in the browser, served by Daphne: a wrong password and a login are there for the
operator, who filters them with the page's form; the tenant's user sees her tenant's events and
not the operator's."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tenants.services import add_user, create_tenant

pytestmark = [pytest.mark.browser]


def _log_in(page, username: str, password: str) -> None:
    page.goto("/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def test_the_operator_finds_a_failed_login_and_the_tenant_sees_only_its_own(page, operator):
    add_user(create_tenant("acme", "Acme Ltd"), "alice", password="alice-password-1")

    _log_in(page, "alice", "not-her-password")
    expect(page.get_by_text("Wrong user name or password.")).to_be_visible()
    _log_in(page, "op", "op-password-1")
    page.get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/audit/")
    rows = page.locator("#audit-events tbody tr")
    expect(rows.filter(has_text="login.failed").filter(has_text="alice")).to_have_count(1)
    expect(rows.filter(has_text="127.0.0.1").first).to_be_visible()  # Daphne's client address

    page.get_by_label("Action").select_option("login.failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit/?*action=login.failed*")
    expect(rows).to_have_count(1)
    expect(page.locator("#event-count")).to_have_text("1 event matches these filters")

    page.get_by_role("button", name="Log out").click()
    _log_in(page, "alice", "alice-password-1")
    page.goto("/audit/")
    expect(rows.filter(has_text="login.failed")).to_have_count(1)
    # The operator's login is not hers to see.
    expect(page.locator("#audit-events").get_by_role("link", name="op", exact=True)).to_have_count(0)
    assert page.get_by_label("Tenant").count() == 0
