"""Kept libvirt connections (drivers/libvirt_calls.py): one per remote host, reused, replaced when
found closed or when a call on it times out; local URIs get one per call. libvirt.open is the one
point where traffic would leave the program: it is replaced by a fake that counts connections."""
from __future__ import annotations

import threading
import time

import libvirt
import pytest

from drivers import libvirt_calls
from drivers.errors import DriverError

REMOTE = "qemu+libssh2://root@cpu9.example/system?keyfile=/k"


class FakeConnection:
    def __init__(self, uri: str) -> None:
        self.uri, self.alive, self.closed = uri, True, False

    def isAlive(self) -> int:  # noqa: N802 - libvirt's name
        return int(self.alive)

    def close(self) -> int:
        self.closed = True
        return 0


@pytest.fixture
def opened(monkeypatch) -> list[FakeConnection]:
    made: list[FakeConnection] = []

    def fake_open(uri: str) -> FakeConnection:
        made.append(FakeConnection(uri))
        return made[-1]

    monkeypatch.setattr(libvirt_calls.libvirt, "open", fake_open)
    monkeypatch.setattr(libvirt_calls, "_pools", {})
    return made


def test_remote_calls_share_one_kept_connection(opened):
    seen = [libvirt_calls.with_connection(REMOTE, "look", 5, lambda conn: conn) for _ in range(3)]
    assert len(opened) == 1 and seen == [opened[0]] * 3 and not opened[0].closed


def test_a_purpose_of_its_own_keeps_a_connection_of_its_own(opened):
    checks = [libvirt_calls.with_connection(REMOTE, "look", 5, lambda conn: conn) for _ in range(2)]
    figures = [libvirt_calls.with_connection(REMOTE, "stats", 5, lambda conn: conn, purpose="domain stats")
               for _ in range(2)]
    assert len(opened) == 2 and checks == [opened[0]] * 2 and figures == [opened[1]] * 2


def test_local_uris_get_a_connection_per_call_closed_after_it(opened):
    for _ in range(2):
        libvirt_calls.with_connection("test:///default", "look", 5, lambda conn: None)
    assert len(opened) == 2 and all(conn.closed for conn in opened)


def test_a_kept_connection_found_closed_is_replaced_and_the_call_made_again(opened):
    libvirt_calls.with_connection(REMOTE, "look", 5, lambda conn: None)
    opened[0].alive = False  # the host's libvirtd restarted meanwhile
    calls = []

    def fn(conn: FakeConnection) -> str:
        calls.append(conn)
        if not conn.alive:
            raise libvirt.libvirtError("client socket is closed")
        return "answered"

    assert libvirt_calls.with_connection(REMOTE, "look", 5, fn) == "answered"
    assert calls == opened[:2] and len(opened) == 2
    assert libvirt_calls.with_connection(REMOTE, "look", 5, lambda conn: conn) is opened[1]


def test_an_error_on_a_live_connection_is_the_callers_and_keeps_the_connection(opened):
    def refuse(conn: FakeConnection) -> None:
        raise libvirt.libvirtError("no domain")

    libvirt_calls.with_connection(REMOTE, "look", 5, lambda conn: None)
    with pytest.raises(DriverError, match="look: no domain"):
        libvirt_calls.with_connection(REMOTE, "look", 5, refuse)
    assert len(opened) == 1
    assert libvirt_calls.with_connection(REMOTE, "look", 5, lambda conn: conn) is opened[0]


def test_a_call_that_times_out_gives_its_connection_up(opened):
    release = threading.Event()
    with pytest.raises(DriverError, match="timed out after 0.2 s"):
        libvirt_calls.with_connection(REMOTE, "hang", 0.2, lambda conn: release.wait(5))
    release.set()
    assert libvirt_calls.with_connection(REMOTE, "look", 5, lambda conn: conn) is opened[1]
    assert not opened[0].closed  # never closed under the thread still using it


def test_a_local_call_that_times_out_closes_its_connection_once_the_call_returns(opened):
    release, returned = threading.Event(), threading.Event()
    closed_while_running = []

    def hang(conn: FakeConnection) -> None:
        release.wait(5)
        closed_while_running.append(conn.closed)
        returned.set()

    with pytest.raises(DriverError, match="timed out after 0.2 s"):
        libvirt_calls.with_connection("test:///default", "hang", 0.2, hang)
    assert not opened[0].closed  # the call still runs on it
    release.set()
    assert returned.wait(5)
    deadline = time.monotonic() + 5
    while not opened[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert opened[0].closed and closed_while_running == [False]


def test_is_remote():
    assert libvirt_calls.is_remote("qemu+ssh://h/system") and libvirt_calls.is_remote("xen+libssh://u@h/")
    assert not libvirt_calls.is_remote("test:///default") and not libvirt_calls.is_remote("qemu:///system")
    assert not libvirt_calls.is_remote("qemu+unix:///system")
