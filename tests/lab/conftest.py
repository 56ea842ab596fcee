"""Helpers for the lab's own tests. The session fixture `lab_cluster` (lab up once, down at the end
if this run brought it up) lives in tests/conftest.py."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.ssh import CommandResult, SSHTarget, run, ssh_options

Shell = Callable[..., CommandResult]


@pytest.fixture(scope="session")
def on_host(lab_cluster) -> Shell:
    """on_host("cpu1", "ls /dev/etherd") runs a shell command on a lab host through drivers.ssh."""
    from lab.hostproc import ssh_target
    from lab.topology import host

    def shell(name: str, command: str, *, check: bool = True, timeout: float = 30) -> CommandResult:
        return run(ssh_target(host(name)), ["sh", "-c", command], timeout=timeout, check=check)

    return shell


@pytest.fixture
def vblade(on_host: Shell) -> Iterator[Callable[..., str]]:
    """Start `vblade [opts] SHELF SLOT san0 FILE` on a disk host over SSH, the way the panel does
    (detached, stdio redirected, pid file); every export started is stopped after the test."""
    started: list[tuple[str, str]] = []

    def start(disk: str, shelf: int, slot: int, *, options: str = "", size: str = "16M") -> str:
        name = f"e{shelf}.{slot}"
        volume = f"/srv/xenaoe/volumes/test-{name}.img"
        pid_file = f"/run/xenaoe/vblade/{name}.pid"
        on_host(disk, f"""
            mkdir -p /run/xenaoe/vblade /var/log/xenaoe
            truncate -s {size} {volume}
            setsid nohup vblade {options} {shelf} {slot} san0 {volume} \
                </dev/null >>/var/log/xenaoe/vblade-{name}.log 2>&1 &
            echo $! > {pid_file}
        """)
        started.append((disk, name))
        return volume

    yield start
    for disk, name in started:
        pid_file = f"/run/xenaoe/vblade/{name}.pid"
        on_host(disk, f"kill $(cat {pid_file}); rm -f {pid_file} /srv/xenaoe/volumes/test-{name}.img", check=False)


@pytest.fixture
def strict_target(tmp_path: Path) -> Iterator[Callable[[str, str], SSHTarget]]:
    """An SSHTarget for a lab host with the given known_hosts text and a fresh ControlMaster
    directory (a live master would skip host-key checking); masters are closed afterwards."""
    from lab.topology import host, panel_identity

    control_dir = Path(tempfile.mkdtemp(prefix="xa-ctl-"))  # unix socket paths are short
    targets: list[SSHTarget] = []

    def make(name: str, known_hosts: str) -> SSHTarget:
        known = tmp_path / f"known_hosts-{name}-{len(targets)}"
        known.write_text(known_hosts)
        target = SSHTarget(host=host(name).address, identity_file=panel_identity(), known_hosts_file=known,
                           control_dir=control_dir, connect_timeout=3)
        targets.append(target)
        return target

    yield make
    for target in targets:
        subprocess.run(["ssh", *ssh_options(target), "-O", "exit", target.host], capture_output=True, timeout=10)
    shutil.rmtree(control_dir, ignore_errors=True)
