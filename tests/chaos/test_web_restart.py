"""The web process restarted (killed, started again) while a browser follows a job: the page
reconnects its websocket by itself and resumes the log after the last entry it shows, without a
reload, without a gap and without a line twice."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.chaos.conftest import Outcome, check
from tests.chaos.test_cpu_faults import wait_for_progress
from vms.migration import migrate_vm

pytestmark = [pytest.mark.lab, pytest.mark.chaos, pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


class Web:
    def __init__(self, port: int, log) -> None:
        self.port, self.log, self.proc = port, log, None

    def start(self) -> None:
        from tests.conftest import REPO, _child_env

        env = _child_env(settings.DATABASES["default"]["NAME"])
        with self.log.open("a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                                          "xenaoe_panel.asgi:application"], cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def web(tmp_path) -> Iterator[Web]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Web(port, tmp_path / "web.log")
    server.start()
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(timeout=10)


def test_the_web_process_restarted_while_a_browser_follows_a_job(records_vm, web, operator, monkeypatch):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    name = "ch-web-restart"
    vm, acks = records_vm(name, "cpu1")
    job = migrate_vm(name, "cpu2", max_mib_per_s=3)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(base_url=f"http://127.0.0.1:{web.port}").new_page()
        page.goto(f"/jobs/{job.pk}/")
        page.get_by_label("User name").fill("op")
        page.get_by_label("Password").fill("op-password-1")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"**/jobs/{job.pk}/")
        wait_for_progress(job)
        page.wait_for_function("document.querySelectorAll('#job-log tr').length > 5")
        before = page.locator("#job-log tr").count()
        page.evaluate("window.sameDocument = true")  # gone if the page were reloaded
        web.kill()
        time.sleep(2)
        web.start()
        page.locator("#job-state").filter(has_text="Succeeded").wait_for(timeout=240_000)
        serials = [int(s) for s in page.locator("#job-log tr").evaluate_all("rows => rows.map(r => r.dataset.serial)")]
        expected = list(job.log.order_by("serial").values_list("serial", flat=True))
        same_document = page.evaluate("window.sameDocument === true")
        browser.close()
    assert same_document, "the page was reloaded"
    assert serials == expected, "the page's log has a gap or a line twice"
    check(Outcome("web-restarted", f"daphne killed and restarted while a browser followed the migration of {name}",
                  f"the page resumed by itself: {before} lines before, {len(serials)} after, none twice, "
                  "no reload"), name, acks)
