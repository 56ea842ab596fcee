"""Fixtures of the driver tests: where the SSH-driven drivers run.

`site` runs each such test twice: on throw-away xat- hosts made here ("local", needs root) and on
the lab cluster's disk1 and cpu1 ("lab", skipped unless `python manage.py lab up` has been run;
these tests never bring the lab up or down). No Django needed: paths follow settings_lab.py's defaults
and can be overridden the same way (XENAOE_LAB_DIR, XENAOE_SSH_IDENTITY, XENAOE_SSH_KNOWN_HOSTS).
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from xat_hosts import FakeSAN, is_root

from drivers import ssh
from drivers.errors import DriverError
from drivers.ssh import SSHTarget

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("XENAOE_LAB_DIR", REPO / ".lab"))
LAB_IDENTITY = Path(os.environ.get("XENAOE_SSH_IDENTITY", LAB_DIR / "ssh" / "id_ed25519"))
LAB_KNOWN_HOSTS = Path(os.environ.get("XENAOE_SSH_KNOWN_HOSTS", LAB_DIR / "ssh" / "known_hosts"))
LAB_DISK = ("xa-disk1", "10.213.0.11")
LAB_CPU = ("xa-cpu1", "10.213.0.21")
LAB_SAN_INTERFACE = "san0"  # the lab's name for every host's SAN interface (lab/topology.py)
# Test exports use a shelf no lab disk server uses (they use 1 and 2), so that they can never be
# mistaken for the panel's own.
TEST_SHELF = 4000
TEST_SLOTS = range(8)  # tests use only these slots: the lab finalizer stops them all


@dataclass
class Site:
    """Where a driver test runs: a disk server and a CPU server sharing a SAN."""

    kind: str  # "local" or "lab"
    disk: SSHTarget
    cpu: SSHTarget
    disk_interface: str
    cpu_interface: str
    disk_mac: str
    cpu_mac: str
    volume_dir: str  # a fresh directory on the disk server for this test's backing files
    shelf: int
    fake: FakeSAN | None = None

    def disk_run(self, argv: list[str], timeout: float = 10) -> ssh.CommandResult:
        return ssh.run(self.disk, argv, timeout=timeout, check=False)


def lab_is_up() -> str | None:
    """None if the lab's disk1 and cpu1 can be used, else why not."""
    if not is_root():
        return "the lab needs root"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    missing = [ns for ns, _ in (LAB_DISK, LAB_CPU) if ns not in names]
    if missing:
        return f"lab cluster not up ({', '.join(missing)} missing; `python manage.py lab up`)"
    for path in (LAB_IDENTITY, LAB_KNOWN_HOSTS):
        if not path.exists():
            return f"lab cluster has no {path}"
    return None


@pytest.fixture(scope="session")
def ssh_control_dir() -> Iterator[Path]:
    """ssh's ControlMaster sockets: a short path (a Unix socket path has at most 107 bytes, and
    pytest's tmp_path is long). Masters are ended when the session ends."""
    path = Path(tempfile.mkdtemp(prefix="xat-ssh-"))
    yield path
    for _, address in (LAB_DISK, LAB_CPU):
        target = SSHTarget(address, LAB_IDENTITY, LAB_KNOWN_HOSTS, path)
        subprocess.run(["ssh", *ssh.ssh_options(target), "-O", "exit", address], capture_output=True, timeout=10)
    shutil.rmtree(path, ignore_errors=True)


# The "lab" site is marked `lab`: `-m "not lab"` must never reach lab_cluster, whose `up()` from
# another checkout (its own LAB_DIR, so its own lock) takes over the machine's one lab, and whose
# session end takes it down.
@pytest.fixture(params=["local", pytest.param("lab", marks=pytest.mark.lab)])
def site(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         ssh_control_dir: Path) -> Iterator[Site]:
    if request.param == "local":
        if not is_root():
            pytest.skip("throw-away xat- hosts need root (network and mount namespaces)")
        with FakeSAN(tmp_path / "san") as san:
            monkeypatch.setenv("PATH", san.env_path())
            monkeypatch.setenv("XAT_HOSTS_DIR", str(san.hosts_dir))
            control = ssh_control_dir
            yield Site("local", san.disk.target(control), san.cpu.target(control), san.disk.interface,
                       san.cpu.interface, san.disk.mac, san.cpu.mac, str(san.disk.state / "volumes"),
                       TEST_SHELF, san)
        return
    request.getfixturevalue("lab_cluster")  # brings the lab up (once a session), or skips without root
    control = ssh_control_dir
    disk = SSHTarget(LAB_DISK[1], LAB_IDENTITY, LAB_KNOWN_HOSTS, control)
    cpu = SSHTarget(LAB_CPU[1], LAB_IDENTITY, LAB_KNOWN_HOSTS, control)
    try:  # the namespaces exist a moment before sshd answers in them (lab up in progress)
        macs = [ssh.run(t, ["cat", f"/sys/class/net/{LAB_SAN_INTERFACE}/address"], timeout=20).stdout.strip()
                for t in (disk, cpu)]
    except DriverError as exc:
        pytest.skip(f"lab cluster not reachable: {exc}")
    volume_dir = f"/srv/xenaoe/volumes/xat-test-{secrets.token_hex(4)}"
    try:
        yield Site("lab", disk, cpu, LAB_SAN_INTERFACE, LAB_SAN_INTERFACE, macs[0], macs[1], volume_dir, TEST_SHELF)
    finally:
        try:
            _stop_test_exports(disk)
            ssh.run(disk, ["rm", "-rf", "--", volume_dir], timeout=20, check=False)
        except DriverError:
            if lab_is_up() is None:
                raise
            # The lab went down meanwhile (its owner cycles it): `lab down` ended our vblades too.


def _stop_test_exports(disk: SSHTarget) -> None:
    from drivers import vblade

    for slot in TEST_SLOTS:
        vblade.stop_export(disk, TEST_SHELF, slot)
