"""Throw-away hosts for the driver tests, for when the lab cluster is not up.

A "host" is a network namespace named xat-* (never xa-*, the lab's) plus a long-lived holder process
whose private mount namespace gives the host its own /run (bind mount) and its own /etc, /var/log
and /dev (overlays on the machine's, writes land in the host's state directory): the same shape as
a lab host, so the vblade scripts run with their real paths. Hosts are joined by one veth pair, the
"SAN". Processes are in the machine's PID namespace, as in the lab.

The panel reaches a host through drivers.ssh.run unchanged: an `ssh` stand-in put first on PATH
takes the host name ssh would connect to and runs the quoted remote command with `sh -c` inside that
host (nsenter), as sshd would. Only the transport is replaced; the argv quoting, the scripts and
everything they do are real.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from drivers.ssh import SSHTarget

PREFIX = "xat-"

FAKE_SSH = """#!/bin/sh
# ssh(1) stand-in for driver tests: `ssh [options] -- HOST COMMAND` runs COMMAND in the xat- host.
host= remote=
while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then host=$2 remote=$3; break; fi
    shift
done
dir=$XAT_HOSTS_DIR/$host
[ -f "$dir/pid" ] || { echo "ssh: Could not resolve hostname $host" >&2; exit 255; }
PATH=$dir/bin:$PATH exec nsenter -t "$(cat "$dir/pid")" -m -n -- sh -c "$remote"
"""

# Runs inside the new mount namespace; $1 = the host's state directory.
HOLDER_SETUP = """
set -e
mount --bind "$1/run" /run
for dir in etc var/log dev; do
    key=$(echo "$dir" | tr / -)
    mkdir -p "$1/overlay/$key/upper" "$1/overlay/$key/work"
    mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$1/overlay/$key/upper,workdir=$1/overlay/$key/work" "/$dir"
done
echo ready
exec sleep 86400
"""


def is_root() -> bool:
    return os.geteuid() == 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class FakeHost:
    name: str  # the network namespace, also the "host name" given to ssh
    state: Path
    interface: str
    mac: str
    holder: subprocess.Popen | None = None

    def target(self, control_dir: Path) -> SSHTarget:
        return SSHTarget(host=self.name, identity_file=Path("/dev/null"), known_hosts_file=Path("/dev/null"),
                         control_dir=control_dir)

    def run(self, argv: list[str], timeout: float = 10, **kwargs) -> subprocess.CompletedProcess:
        """Run argv inside the host (for test set-up and assertions)."""
        assert self.holder is not None
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, **kwargs)

    def netns_inode(self) -> int:
        return os.stat(f"/run/netns/{self.name}").st_ino


@dataclass
class FakeSAN:
    """A disk host and a CPU host on one veth link. Use as a context manager: close() kills every
    process left in the namespaces and deletes them, whatever happened."""

    base: Path
    hosts_dir: Path = field(init=False)
    bin_dir: Path = field(init=False)
    disk: FakeHost = field(init=False)
    cpu: FakeHost = field(init=False)

    def __post_init__(self) -> None:
        tag = secrets.token_hex(3)
        self.hosts_dir = self.base / "hosts"
        self.bin_dir = self.base / "bin"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        (self.bin_dir / "ssh").write_text(FAKE_SSH)
        (self.bin_dir / "ssh").chmod(0o755)
        self.disk = FakeHost(f"{PREFIX}{tag}-d", self.hosts_dir / f"{PREFIX}{tag}-d", f"xat{tag}d", "02:7a:00:00:00:0d")
        self.cpu = FakeHost(f"{PREFIX}{tag}-c", self.hosts_dir / f"{PREFIX}{tag}-c", f"xat{tag}c", "02:7a:00:00:00:0c")

    def __enter__(self) -> FakeSAN:
        try:
            for host in (self.disk, self.cpu):
                _ip("netns", "add", host.name)
            _ip("link", "add", self.disk.interface, "netns", self.disk.name, "type", "veth",
                "peer", "name", self.cpu.interface, "netns", self.cpu.name)
            for host in (self.disk, self.cpu):
                _ip("-n", host.name, "link", "set", host.interface, "address", host.mac, "up")
                _ip("-n", host.name, "link", "set", "lo", "up")
                self._start_holder(host)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env_path(self) -> str:
        return f"{self.bin_dir}:{os.environ['PATH']}"

    def _start_holder(self, host: FakeHost) -> None:
        (host.state / "run").mkdir(parents=True, exist_ok=True)
        (host.state / "bin").mkdir(exist_ok=True)
        host.holder = subprocess.Popen(
            ["ip", "netns", "exec", host.name, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", HOLDER_SETUP, "holder", str(host.state)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = host.holder.stdout.readline().strip() if host.holder.stdout else ""
        if line != "ready":
            detail = host.holder.stderr.read() if host.holder.stderr else ""
            raise RuntimeError(f"{host.name}: holder did not start: {detail}")
        (host.state / "pid").write_text(str(host.holder.pid))

    def close(self) -> None:
        for host in (self.disk, self.cpu):
            _kill_namespace_processes(host)
            if host.holder is not None:
                host.holder.kill()
                host.holder.communicate(timeout=10)
            subprocess.run(["ip", "netns", "delete", host.name], capture_output=True, timeout=10)


def _kill_namespace_processes(host: FakeHost) -> None:
    """Kill whatever runs in this host's network namespace (vblade above all). Looking at every
    process is fine here: only those inside our own xat- namespace are touched."""
    try:
        inode = host.netns_inode()
    except FileNotFoundError:
        return
    holder = host.holder.pid if host.holder else None
    for _ in range(50):
        victims = [pid for pid in _pids_in_netns(inode) if pid != holder]
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _pids_in_netns(inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids
