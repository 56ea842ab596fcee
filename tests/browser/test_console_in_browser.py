"""A tenant's user opens the serial console of a running Debian guest from its page, logs in on ttyS0
with the VM's password, runs a command and reads its output in the terminal; the operator
live-migrates the guest with the console open, and the page follows it without a reload: the line
"migrated to another server, reconnecting", then a command typed again answers. Then the graphical
console shows the guest's screen (not blank), and again after a live migration back, reconnected
without a reload. The VM's page lists the sessions."""
from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect as expect_ui

from tests.console_guest import PASSWORD, console_guest, expect
from tests.integration.on_the_hosts import succeeded
from vms.console import MIGRATED
from vms.migration import migrate_vm
from vms.models import VirtualMachine

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.slow]  # a full Debian boot: `make slow`
VM = "con2"


def _log_in(page, username: str, password: str) -> None:
    page.goto("/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def _screen(page) -> str:
    """Everything in the terminal's buffer, scrollback included, one line per row."""
    return page.evaluate("""() => {
        const buffer = window.xenaoeConsole.buffer.active, lines = [];
        for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
        return lines.join("\\n").trimEnd();
    }""")


def test_serial_console_in_the_browser_follows_a_live_migration(page, lab_hosts, default_image,
                                                               celery_worker_process, tmp_path):
    with console_guest(VM) as _world:
        _log_in(page, "alice", "alice-password-1")
        page.goto(f"/vms/{VM}/")
        page.get_by_role("link", name="Console").click()
        page.wait_for_url(f"**/vms/{VM}/console/")
        expect_ui(page.locator("#console-status")).to_have_text("connected", timeout=30_000)
        terminal = page.locator("#console .xterm-helper-textarea")
        terminal.focus()
        started = time.monotonic()
        for _attempt in range(30):  # the getty answers once the guest has booted far enough
            page.keyboard.press("Enter")
            try:
                expect(lambda: _screen(page), r"login: *$", 6, "the login prompt")
                break
            except AssertionError:
                continue
        expect(lambda: _screen(page), r"login: *$", 1, "the login prompt")
        page.keyboard.type("debian\n")
        expect(lambda: _screen(page), r"Password: *$", 30, "the password prompt")
        page.keyboard.type(PASSWORD + "\n")
        expect(lambda: _screen(page), r"debian@con2:~\$ *$", 60, "a shell prompt")
        print(f"\nlogged in through the browser {time.monotonic() - started:.1f} s after the page connected")
        page.keyboard.type("echo browser-$((6*7))-ok\n")
        expect(lambda: _screen(page), r"\nbrowser-42-ok\n", 30, "the command's output")

        succeeded(migrate_vm(VM, "cpu1"))
        assert VirtualMachine.objects.get(name=VM).cpu_server.name == "cpu1"
        expect(lambda: _screen(page), rf"\[{MIGRATED}\]", 60, "the migration notice in the terminal")
        expect_ui(page.locator("#console-status")).to_have_text("connected", timeout=60_000)
        page.keyboard.type("\necho moved-$((40+2))-ok\n")
        expect(lambda: _screen(page), r"\nmoved-42-ok\n", 30, "the command's output after the migration")
        assert page.url.endswith(f"/vms/{VM}/console/")  # never reloaded
        page.screenshot(path=str(tmp_path / "serial.png"))

        # The graphical console: the guest's screen (its VGA text console), through the panel.
        page.goto(f"/vms/{VM}/")
        page.get_by_role("link", name="Screen").click()
        page.wait_for_url(f"**/vms/{VM}/console/vnc/")
        expect_ui(page.locator("#vnc")).to_have_attribute("data-vnc-state", "connected", timeout=30_000)
        lit = _wait_for_screen(page)
        print(f"VNC: {lit} pixels lit on cpu1")
        page.screenshot(path=str(tmp_path / "vnc-cpu1.png"))
        page.get_by_role("button", name="Send Ctrl-Alt-Del").click()  # the guest reboots: still a screen
        # Live-migrated back with the screen open: the page reconnects on its own (a second connection).
        assert page.locator("#vnc").get_attribute("data-vnc-connections") == "1"
        succeeded(migrate_vm(VM, "cpu2"))
        expect_ui(page.locator("#vnc")).to_have_attribute("data-vnc-connections", "2", timeout=60_000)
        expect_ui(page.locator("#vnc")).to_have_attribute("data-vnc-state", "connected")
        print(f"VNC after the migration: {_wait_for_screen(page)} pixels lit on cpu2")
        page.screenshot(path=str(tmp_path / "vnc-cpu2.png"))
        print(f"screenshots in {tmp_path}")

        page.goto(f"/vms/{VM}/")
        sessions = page.locator("#console-sessions")
        expect_ui(sessions).to_contain_text("alice")
        expect_ui(sessions).to_contain_text("browser")
        expect_ui(sessions).to_contain_text("graphical (VNC)")


def _lit_pixels(page) -> int:
    return page.evaluate("""() => {
        const canvas = document.querySelector("#vnc canvas");
        if (!canvas || !canvas.width) return 0;
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let lit = 0;
        for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 60) lit++;
        return lit;
    }""")


def _wait_for_screen(page, timeout: float = 60) -> int:
    """The canvas shows something (text on the guest's screen), not a blank or black rectangle."""
    deadline = time.monotonic() + timeout
    while (lit := _lit_pixels(page)) < 200:
        assert time.monotonic() < deadline, f"the screen stays blank ({lit} pixels lit)"
        time.sleep(0.5)
    return lit
