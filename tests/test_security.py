"""Security: failed-login limits, password reset and change, CSRF, response headers, and the production
settings passing `manage.py check --deploy` (docs/security.md)."""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core import mail
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from xenaoe_panel import login_limit

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "right-password-71"
_addresses = itertools.count(1)


@pytest.fixture(scope="module", autouse=True)
def _forget_this_runs_counts() -> Iterator[None]:
    """The counts live in Redis under this run's cache prefix; drop them at the end (never
    cache.clear(): that would empty the whole database, broker queues included)."""
    yield
    import redis

    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def address() -> str:
    """An address of this test's own, so that tests in one run never share counts."""
    n = (os.getpid() * 1000 + next(_addresses)) % (1 << 24)
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


@pytest.fixture
def browser(address: str) -> Client:
    return Client(REMOTE_ADDR=address)


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", email="alice@example.com", password=PASSWORD)


def log_in(client: Client, username: str, password: str, **extra: str):
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


class RecordingBackend(ModelBackend):
    """Django's backend, noting every password it is asked to check."""

    calls: list[str] = []

    def authenticate(self, request, username=None, password=None, **kwargs):
        RecordingBackend.calls.append(username)
        return super().authenticate(request, username=username, password=password, **kwargs)


# --- failed-login limits ------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_account_from_that_address_with_429(browser, alice):
    for _ in range(4):
        response = log_in(browser, "alice", "wrong")
        assert response.status_code == 200
        assert b"Wrong user name or password." in response.content
    response = log_in(browser, "alice", "wrong")
    assert response.status_code == 429
    assert "Too many failed logins for this account from your address; try again in 15 minutes." in (
        response.content.decode())
    assert response["Retry-After"] == "900"

    response = log_in(browser, "alice", PASSWORD)
    assert response.status_code == 429
    assert b"Too many failed logins for this account" in response.content
    assert not logged_in(browser)


@override_settings(AUTHENTICATION_BACKENDS=["tests.test_security.RecordingBackend"])
def test_a_locked_login_never_checks_the_password(browser, alice):
    RecordingBackend.calls.clear()
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        log_in(browser, "alice", "wrong")
    assert len(RecordingBackend.calls) == settings.LOGIN_FAILURES_PER_ACCOUNT

    RecordingBackend.calls.clear()
    for password in (PASSWORD, "wrong"):
        assert log_in(browser, "alice", password).status_code == 429
    assert RecordingBackend.calls == []
    assert not logged_in(browser)


def test_the_lock_holds_for_that_account_and_address_only(alice, address):
    get_user_model().objects.create_user("bob", password=PASSWORD)
    guesser = Client(REMOTE_ADDR=address)
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        log_in(guesser, "alice", "wrong")
    assert log_in(guesser, "alice", PASSWORD).status_code == 429

    elsewhere = Client(REMOTE_ADDR="192.0.2.200")
    assert log_in(elsewhere, "alice", PASSWORD).status_code == 302
    assert logged_in(elsewhere)
    assert log_in(guesser, "bob", PASSWORD).status_code == 302


def test_a_successful_login_resets_the_count(browser, alice):
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT - 1):
        assert log_in(browser, "alice", "wrong").status_code == 200
    response = log_in(browser, "alice", PASSWORD)
    assert response.status_code == 302 and response.url == reverse("dashboard")
    browser.post(reverse("logout"))

    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT - 1):
        assert log_in(browser, "alice", "wrong").status_code == 200
    assert log_in(browser, "alice", "wrong").status_code == 429


@override_settings(LOGIN_FAILURES_PER_ADDRESS=4)
def test_wrong_passwords_for_many_accounts_lock_the_address(browser, alice):
    for name in ("carol", "dave", "erin"):
        assert log_in(browser, name, "password1").status_code == 200
    response = log_in(browser, "frank", "password1")
    assert response.status_code == 429
    assert "Too many failed logins from your address; try again in 15 minutes." in response.content.decode()

    # Every account from that address, even with its right password; other addresses are not touched.
    assert log_in(browser, "alice", PASSWORD).status_code == 429
    assert not logged_in(browser)
    assert log_in(Client(REMOTE_ADDR="192.0.2.201"), "alice", PASSWORD).status_code == 302


@override_settings(LOGIN_LOCKOUT_S=1)
def test_the_lock_ends_after_the_lockout(browser, alice):
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        log_in(browser, "alice", "wrong")
    response = log_in(browser, "alice", PASSWORD)
    assert response.status_code == 429
    assert "try again in 1 minute." in response.content.decode()
    time.sleep(1.2)
    assert log_in(browser, "alice", PASSWORD).status_code == 302


def test_the_admin_login_counts_against_the_same_limits(browser, db):
    get_user_model().objects.create_user("root", password=PASSWORD, is_staff=True, is_superuser=True)
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        browser.post(reverse("admin:login"), {"username": "root", "password": "wrong"})
    response = browser.post(reverse("admin:login"), {"username": "root", "password": PASSWORD})
    assert b"Too many failed logins for this account from your address" in response.content
    assert not logged_in(browser)
    # ... and the panel's page knows the account is locked from here.
    assert log_in(browser, "root", PASSWORD).status_code == 429


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(address):
    factory = RequestFactory()
    request = factory.get("/", REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert login_limit.client_address(request) == address

    with override_settings(TRUSTED_PROXIES=1):
        # The client wrote the left entry itself; the proxy appended the address it saw.
        request = factory.get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.9")
        assert login_limit.client_address(request) == "203.0.113.9"
    with override_settings(TRUSTED_PROXIES=2):
        request = factory.get("/", REMOTE_ADDR="127.0.0.1",
                              HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.9, 10.0.0.2")
        assert login_limit.client_address(request) == "203.0.113.9"
    with override_settings(TRUSTED_PROXIES=1):
        request = factory.get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="not-an-address")
        assert login_limit.client_address(request) == "127.0.0.1"


def test_an_ipv6_client_is_counted_by_its_slash_64():
    factory = RequestFactory()
    one = login_limit.client_address(factory.get("/", REMOTE_ADDR="2001:db8:1:2::1"))
    other = login_limit.client_address(factory.get("/", REMOTE_ADDR="2001:db8:1:2:ffff::9"))
    assert one == other == "2001:db8:1:2::/64"
    assert login_limit.client_address(factory.get("/", REMOTE_ADDR="::ffff:192.0.2.7")) == "192.0.2.7"


@override_settings(TRUSTED_PROXIES=1)
def test_behind_a_trusted_proxy_each_client_has_its_own_count(alice):
    proxy = Client(REMOTE_ADDR="127.0.0.1")
    guesser = f"203.0.113.{uuid.uuid4().int % 200 + 1}"
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        log_in(proxy, "alice", "wrong", HTTP_X_FORWARDED_FOR=guesser)
    assert log_in(proxy, "alice", PASSWORD, HTTP_X_FORWARDED_FOR=guesser).status_code == 429
    assert log_in(proxy, "alice", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.77").status_code == 302


# --- password reset and change ------------------------------------------------------------------


def test_password_reset_by_email_end_to_end(browser, alice):
    login_page = browser.get(reverse("login")).content.decode()
    assert f'href="{reverse("password_reset")}"' in login_page and "Forgot your password?" in login_page

    assert browser.get(reverse("password_reset")).status_code == 200
    response = browser.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@example.com"]
    link = re.search(r"https?://testserver(/password-reset/\S+/)", message.body)
    assert link, message.body

    confirm = browser.get(link.group(1))
    assert confirm.status_code == 302  # to the same page without the token in the URL
    form = browser.get(confirm.url)
    assert b"Choose a new password" in form.content
    new_password = "a-brand-new-secret-42"
    weak = browser.post(confirm.url, {"new_password1": "short", "new_password2": "short"})
    assert weak.status_code == 200 and b"too short" in weak.content
    done = browser.post(confirm.url, {"new_password1": new_password, "new_password2": new_password})
    assert done.status_code == 302 and done.url == reverse("password_reset_complete")

    other = Client(REMOTE_ADDR="192.0.2.202")
    assert log_in(other, "alice", PASSWORD).status_code == 200
    assert log_in(other, "alice", new_password).status_code == 302
    assert logged_in(other)
    # The link worked once.
    assert b"This link no longer works" in browser.get(link.group(1), follow=True).content


def test_password_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(browser, alice):
    response = browser.post(reverse("password_reset"), {"email": "nobody@example.com"})
    assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert mail.outbox == []


def test_a_logged_in_user_changes_the_password(browser, alice):
    assert log_in(browser, "alice", PASSWORD).status_code == 302
    page = browser.get(reverse("dashboard"), follow=True).content.decode()
    assert f'href="{reverse("password_change")}"' in page

    wrong_old = browser.post(reverse("password_change"), {
        "old_password": "wrong", "new_password1": "another-secret-77", "new_password2": "another-secret-77"})
    assert wrong_old.status_code == 200
    response = browser.post(reverse("password_change"), {
        "old_password": PASSWORD, "new_password1": "another-secret-77", "new_password2": "another-secret-77"})
    assert response.status_code == 302 and response.url == reverse("password_change_done")
    assert logged_in(browser)  # this session survives the change

    other = Client(REMOTE_ADDR="192.0.2.203")
    assert log_in(other, "alice", "another-secret-77").status_code == 302


def test_password_change_needs_a_login(browser, db):
    response = browser.get(reverse("password_change"))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


# --- CSRF and headers ---------------------------------------------------------------------------


def test_the_login_form_carries_a_csrf_token_and_a_post_without_it_is_refused(alice, address):
    strict = Client(enforce_csrf_checks=True, REMOTE_ADDR=address)
    page = strict.get(reverse("login"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token

    refused = strict.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert refused.status_code == 403
    assert not logged_in(strict)

    accepted = strict.post(reverse("login"), {"username": "alice", "password": PASSWORD,
                                              "csrfmiddlewaretoken": token.group(1)})
    assert accepted.status_code == 302 and logged_in(strict)


def test_pages_carry_the_security_headers(browser, db):
    get_user_model().objects.create_user("op", password=PASSWORD, is_staff=True, is_superuser=True)
    response = browser.get(reverse("login"))
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    directives = dict(d.strip().split(" ", 1) for d in response["Content-Security-Policy"].split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src-elem"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert directives["connect-src"] == "'self' ws://testserver"

    log_in(browser, "op", PASSWORD)
    cookie = browser.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    dashboard = browser.get(reverse("dashboard"))
    assert dashboard.status_code == 200
    assert "script-src 'self';" in dashboard["Content-Security-Policy"]


def test_no_template_has_an_inline_script_the_policy_would_block():
    offenders = []
    for template in (REPO / "templates").rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag and 'type="application/json"' not in tag:
                offenders.append(f"{template.relative_to(REPO)}: {tag}")
        offenders += [f"{template.relative_to(REPO)}: {m}" for m in re.findall(r"\son[a-z]+=\"", text)]
        offenders += [f"{template.relative_to(REPO)}: <style>" for _ in re.findall(r"<style\b", text)]
    assert offenders == []


# --- production settings ------------------------------------------------------------------------


def _production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    key_file = tmp_path / "secret_key"
    key_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex + "\n")
    key_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DJANGO_SETTINGS_MODULE")}
    env.update({"DEBUG": "false", "SECRET_KEY_FILE": str(key_file), "ALLOWED_HOSTS": "panel.example.com",
                "XENAOE_HTTPS": "true"})
    env.update(overrides)
    return env


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_production_settings(tmp_path):
    result = _check_deploy(_production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_check_deploy_warns_without_https(tmp_path):
    result = _check_deploy(_production_env(tmp_path, XENAOE_HTTPS="false"))
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


def test_a_world_readable_or_short_secret_key_file_stops_the_panel(tmp_path):
    env = _production_env(tmp_path)
    Path(env["SECRET_KEY_FILE"]).chmod(0o644)
    result = _check_deploy(env)
    assert result.returncode != 0 and "is readable by every user" in result.stderr

    Path(env["SECRET_KEY_FILE"]).write_text("too-short")
    Path(env["SECRET_KEY_FILE"]).chmod(0o600)
    result = _check_deploy(env)
    assert result.returncode != 0 and "at least 50 needed" in result.stderr


def test_password_reset_emails_are_limited_per_hour_and_the_page_says_sent_regardless(browser, address, db):
    email = f"carol-{address}@example.com"  # this test's own counts
    get_user_model().objects.create_user("carol", email=email, password=PASSWORD)
    for _ in range(settings.PASSWORD_RESET_EMAILS_PER_HOUR + 2):
        response = browser.post(reverse("password_reset"), {"email": email})
        assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert len(mail.outbox) == settings.PASSWORD_RESET_EMAILS_PER_HOUR
    # Another address asking for the same mailbox is held back too: the mailbox is what is protected.
    Client(REMOTE_ADDR="192.0.2.200").post(reverse("password_reset"), {"email": email})
    assert len(mail.outbox) == settings.PASSWORD_RESET_EMAILS_PER_HOUR
