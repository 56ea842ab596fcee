"""An operator adds a webhook in the browser, copies its secret from the one page that shows it, and
presses "Send a test": the delivery log on the target's page says it was sent, and the receiver got
it signed with that secret."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from notifications.models import Target
from tests.notify_receivers import WebhookReceiver

pytestmark = pytest.mark.browser


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


def test_an_operator_adds_a_webhook_and_sends_it_a_test(page, operator, celery_worker_process, receiver):
    page.goto("/login/")
    page.get_by_label("User name").fill("op")
    page.get_by_label("Password").fill("op-password-1")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()

    page.get_by_role("link", name="Notifications").click()
    page.get_by_role("link", name="New target").click()
    page.get_by_label("Name").fill("chat")
    page.get_by_label("Send by").select_option("webhook")
    page.get_by_label("Webhook URL").fill(receiver.url())
    page.get_by_label("Job failed").check()
    page.get_by_role("button", name="Save").click()

    shown = page.get_by_role("alert").filter(has_text="signing secret of chat")
    expect(shown).to_be_visible()
    secret = re.search(r"signing secret of chat is (\S+) ", shown.inner_text()).group(1)
    target = Target.objects.get(name="chat")
    assert page.url.endswith(target.get_absolute_url())

    page.get_by_role("button", name="Send a test").click()
    row = page.locator("#deliveries tbody tr").first
    for _ in range(30):  # the page does not refresh by itself: look again, as a person would
        if row.get_attribute("data-state") == "sent":
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(row.locator(".delivery-state")).to_have_text("Sent")
    expect(row).to_contain_text("Test notification for chat")

    [request] = receiver.received
    assert request.signed_with(secret) and request.json["kind"] == "test"
    assert secret not in page.content()  # shown once, on the page after it was made
