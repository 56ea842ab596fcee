"""`ssh.ping` (the monitor's check) against a real sshd on the loopback: through the host's
ControlMaster without an `ssh` process (drivers/ssh_mux.py), and through `ssh` when no master takes
the session. Needs root (sshd logs in as root, in a mount and PID namespace of its own).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from drivers import ssh, ssh_mux
from drivers.errors import DriverError
from drivers.ssh import SSHTarget

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("sshd", path="/usr/sbin:/usr/bin") is None,
                                reason="needs root and sshd")

SSHD_CONFIG = """ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/client_key.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxSessions 64
"""


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sshd() -> Iterator[tuple[Path, int, subprocess.Popen]]:
    """sshd on 127.0.0.1 in its own mount namespace (its /run/sshd on a tmpfs) and PID namespace
    (ending the namespace's first process ends every session); its directory and port."""
    directory = Path(tempfile.mkdtemp(prefix="xa-sshd-"))
    _keygen(directory / "host_key")
    _keygen(directory / "client_key")
    port = _free_port()
    (directory / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=directory))
    proc = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "sh", "-c",
         # root's ~/.bashrc (bash reads it for an SSH command) hidden as in the lab's hosts: this
         # machine's runs `pyenv init`, which can wait a minute on a lock another process left.
         "mount -t tmpfs tmpfs /run && mkdir /run/sshd"
         " && { [ ! -f ~/.bashrc ] || mount --bind /dev/null ~/.bashrc; }"
         f" && exec /usr/sbin/sshd -D -e -f {directory}/sshd_config"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("sshd did not start")
        time.sleep(0.05)
    yield directory, port, proc
    proc.kill()  # unshare ignores SIGTERM while it waits; --kill-child takes the namespace down with it
    proc.wait(10)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def target(sshd) -> Iterator[SSHTarget]:
    """A target with the server's key known and a fresh ControlMaster directory (short: a unix
    socket path); its master is ended afterwards."""
    directory, port, _proc = sshd
    key = (directory / "host_key.pub").read_text().split()
    known = directory / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {key[0]} {key[1]}\n")
    control_dir = Path(tempfile.mkdtemp(prefix="xa-ctl-"))
    made = SSHTarget(host="127.0.0.1", port=port, identity_file=directory / "client_key", known_hosts_file=known,
                     control_dir=control_dir, connect_timeout=3)
    yield made
    subprocess.run(["ssh", *ssh.ssh_options(made), "-O", "exit", made.host], capture_output=True, timeout=10)
    shutil.rmtree(control_dir, ignore_errors=True)


def _master(target: SSHTarget) -> Path:
    return ssh_mux.control_path(target.control_dir, target.host, target.port, target.user)


def test_ping_opens_a_master_then_goes_through_it_without_an_ssh_process(target, monkeypatch):
    ssh.ping(target, timeout=10)
    assert _master(target).is_socket()  # where OpenSSH put it: our %C is OpenSSH's

    def no_process(*args, **kwargs):
        raise AssertionError("an ssh process was started")

    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "Popen", no_process)
        patched.setattr(subprocess, "run", no_process)
        started = time.monotonic()
        ssh.ping(target, timeout=5)
    assert time.monotonic() - started < 1


def test_a_command_through_the_master_gives_its_exit_status(target):
    ssh.ping(target, timeout=10)
    assert ssh_mux.run(_master(target), "exit 3", 5) == 3
    assert ssh_mux.run(_master(target), "true", 5) == 0


def test_a_stale_master_socket_falls_back_to_ssh(target):
    path = _master(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # a socket file nobody listens on: a master that was killed
    with pytest.raises(ssh_mux.NoSession):
        ssh_mux.run(path, "true", 5)
    ssh.ping(target, timeout=10)
    assert ssh_mux.run(path, "true", 5) == 0  # ssh replaced it with a live master


def test_a_host_key_not_known_is_refused(target, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DriverError, match="Host key verification failed"):
        ssh.ping(replace(target, known_hosts_file=empty), timeout=10)
    assert not _master(target).exists()


def test_nothing_listening_is_an_ssh_failure_at_once(target):
    started = time.monotonic()
    with pytest.raises(DriverError, match="SSH failed") as caught:
        ssh.ping(replace(target, port=_free_port()), timeout=10)
    assert not caught.value.permanent and time.monotonic() - started < 5


def test_a_host_that_falls_silent_under_its_master_times_out(target, sshd):
    ssh.ping(target, timeout=10)
    stopped = _sshd_processes(sshd[2])
    assert stopped
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)  # the server's processes freeze: no answer, no refusal
    try:
        started = time.monotonic()
        with pytest.raises(DriverError, match="timed out after 0.5 s"):
            ssh.ping(target, timeout=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    ssh.ping(target, timeout=10)


def _sshd_processes(unshare: subprocess.Popen) -> list[int]:
    """Every process in the PID namespace the fixture's `unshare` made (sshd and its sessions)."""
    child = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()[0]
    namespace = os.readlink(f"/proc/{child}/ns/pid")
    found = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and os.readlink(f"/proc/{entry.name}/ns/pid") == namespace:
                found.append(int(entry.name))
        except OSError:
            continue
    return found
