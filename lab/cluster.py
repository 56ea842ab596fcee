"""Bring the lab cluster up and down, and say what is running. The public API of the lab:

    up() -> LabStatus      idempotent; keeps healthy hosts, rebuilds the others
    down() -> None         removes every namespace, link, process and mount the lab made
    status() -> LabStatus  the hosts that are running (no root needed, but less thorough without)

A host is a network namespace `xa-NAME` whose first process runs lab/hostinit.sh in its own mount
and UTS namespaces; see lab/README.md for the whole picture.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab import bmc, hostconfig, mountpoints, network
from lab.hostproc import close_control_masters, detach_lab_loops, host_pids, kill_hosts, ssh_target
from lab.system import SYSTEM_PATH, LabError, kill_and_wait, netns_names, pid_alive, read_pid, same_netns, sh, wait_for
from lab.topology import (
    CLIENT,
    GUEST_CIDR,
    GUEST_SEGMENT,
    HOSTS,
    LAB_CODE_DIR,
    MGMT_BRIDGE,
    NETNS_PREFIX,
    PRIVATE_DIRS,
    REPO_DIR,
    ROOT_NETNS,
    SAN_BRIDGE,
    LabHost,
    bmcs,
    host,
    lab_dir,
)

ROOT_REQUIRED = (
    "the lab needs root: it creates network namespaces, bridges, veth links and mounts "
    "(run it as root, e.g. with sudo)"
)
START_TIMEOUT = 30.0
LOCK_TIMEOUT = 120.0
Output = Callable[[str], None]


class NotRoot(LabError):
    pass


@dataclass(frozen=True)
class HostStatus:
    name: str
    role: str
    address: str
    netns: str
    libvirt_uri: str | None = None
    # The management link is cut (`lab partition`): the host runs but the panel cannot reach it.
    partitioned: bool = False
    # Its SAN link is cut (`lab partition HOST --san`): it runs and answers, but reaches no disk.
    san_partitioned: bool = False

    def as_dict(self) -> dict[str, str | bool]:
        data: dict[str, str | bool] = {"name": self.name, "role": self.role, "address": self.address,
                                       "netns": self.netns}
        if self.libvirt_uri is not None:
            data["libvirt_uri"] = self.libvirt_uri
        data["partitioned"] = self.partitioned
        data["san_partitioned"] = self.san_partitioned
        return data


@dataclass(frozen=True)
class LabStatus:
    hosts: list[HostStatus]

    def as_dict(self) -> dict[str, list[dict[str, str | bool]]]:
        return {"hosts": [h.as_dict() for h in self.hosts]}

    @property
    def complete(self) -> bool:
        return {h.name for h in HOSTS} <= {h.name for h in self.hosts}

    def host(self, name: str) -> HostStatus:
        for candidate in self.hosts:
            if candidate.name == name:
                return candidate
        raise KeyError(f"lab host {name!r} is not running")


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRoot(ROOT_REQUIRED)


# --- status ---------------------------------------------------------------------------------

def _anchor(lab_host: LabHost) -> int | None:
    pid = read_pid(lab_host.state_dir / "anchor.pid")
    return pid if pid is not None and pid_alive(pid) else None


def host_running(lab_host: LabHost) -> bool:
    """The host's anchor, network and daemons are alive (without root: anchor and links only)."""
    anchor = _anchor(lab_host)
    if anchor is None or not (lab_host.state_dir / "ready").exists():
        return False
    if not network.host_network_ok(lab_host):
        return False
    if os.geteuid() != 0:
        return True
    if not same_netns(anchor, lab_host.netns):
        return False
    daemons = ["sshd.pid"] + (["libvirtd.pid", "virtlogd.pid"] if lab_host.role == "cpu" else [])
    for pid_file in daemons:
        pid = read_pid(Path(f"/proc/{anchor}/root/run/{pid_file}"))
        if pid is None or not pid_alive(pid):
            return False
    return True


def _host_status(lab_host: LabHost) -> HostStatus:
    return HostStatus(lab_host.name, lab_host.role, lab_host.address, lab_host.netns, lab_host.libvirt_uri,
                      network.is_partitioned(lab_host), network.is_partitioned(lab_host, "san"))


def status() -> LabStatus:
    hosts = [_host_status(h) for h in HOSTS if host_running(h)]
    if network.client_network_ok():
        hosts.append(HostStatus(CLIENT.name, CLIENT.role, CLIENT.address, CLIENT.netns))
    return LabStatus(hosts)


# --- up ---------------------------------------------------------------------------------------

def up(*, out: Output = print) -> LabStatus:
    """Bring every host up; hosts already running and healthy are kept as they are. Recording them
    in the database is lab.register's job (`manage.py lab up` does both)."""
    require_root()
    hostconfig.check_tools()
    with _exclusive():
        return _up(out)


def _up(out: Output) -> LabStatus:
    started = time.monotonic()
    _remove_strays(out)
    running = [h for h in HOSTS if host_running(h)]
    to_start = [h for h in HOSTS if h not in running]
    if to_start:
        if not running:
            stop_hosts(to_start, grace=0)
            detach_lab_loops()  # nothing of the lab runs, so every lab loop device is stale
        _start_hosts(to_start)
    for lab_host in running:
        network.heal(lab_host)  # `lab up` means everything reachable again
    with ThreadPoolExecutor(max_workers=len(HOSTS)) as pool:
        checks = list(pool.map(_check_host, HOSTS))
    for lab_host, detail in zip(HOSTS, checks, strict=True):
        state = "already up" if lab_host in running else "started"
        out(f"{lab_host.name:<6} {lab_host.role:<4} {lab_host.address:<12} {lab_host.netns:<9} {state}: {detail}")
    _up_bmcs(out)
    network.ensure_bridges()
    network.create_client_network()
    out(f"{CLIENT.name:<6} {CLIENT.role:<4} {CLIENT.address:<12} {CLIENT.netns:<9} on the guests' network "
        f"({GUEST_CIDR})")
    result = status()
    if not result.complete:
        missing = sorted({h.name for h in HOSTS} - {h.name for h in result.hosts})
        raise LabError(f"hosts not running after lab up: {', '.join(missing)}")
    out(f"lab up in {time.monotonic() - started:.1f} s (state in {lab_dir()})")
    return result


def _start_hosts(hosts: list[LabHost]) -> None:
    """Boot hosts that do not run, after removing whatever an earlier run left of them."""
    mountpoints.make_mountpoints()
    hostconfig.prepare_all()
    stop_hosts(hosts, grace=0)
    network.ensure_bridges()
    for lab_host in hosts:
        network.create_host_network(lab_host)
        _launch(lab_host)
    _wait_started(hosts)


def boot_host(name: str, *, out: Output = print) -> None:
    """Boot one stopped host, as `up()` would, leaving every other host (running or not) alone:
    what a BMC's power on does (lab/bmc_hook.py)."""
    require_root()
    lab_host = host(name)
    with _exclusive():
        if host_running(lab_host):
            out(f"{name}: already running")
            return
        started = time.monotonic()
        _start_hosts([lab_host])
        out(f"{name}: booted in {time.monotonic() - started:.1f} s: {_check_host(lab_host)}")


def _up_bmcs(out: Output) -> None:
    """Start the BMCs that do not run and check each as the panel does (IPMI over LAN)."""
    from drivers.errors import DriverError
    from drivers.ipmi import power_status

    bmc.ensure_root_netns()
    for board in bmcs():
        state = "already up"
        if not bmc.running(board) or bmc.outdated(board):
            bmc.start(board)
            state = "started"
        t0 = time.monotonic()
        try:
            power = power_status(bmc.target(board))
        except DriverError as exc:
            raise LabError(f"the BMC of {board.host.name} started but does not answer: {exc}") from exc
        out(f"{board.name:<10} {board.address:<13} {state}: ipmi {time.monotonic() - t0:.2f} s (power {power})")


def _launch(lab_host: LabHost) -> None:
    state = lab_host.state_dir
    for name in ("anchor.pid", "ready"):
        (state / name).unlink(missing_ok=True)
    env = {
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "LAB_HOST": lab_host.name,
        "LAB_ROLE": lab_host.role,
        "LAB_STATE": str(state),
        "LAB_EMPTY": str(lab_dir() / "empty"),
        "LAB_ETC_HOSTS": str(lab_dir() / "etc-hosts"),
        "LAB_STANDIN": str(lab_dir() / "standin"),
        "LAB_RESTORE_EXPORTS": str(REPO_DIR / "drivers" / "remote" / "restore-exports.sh"),
        "LAB_PRIVATE_DIRS": "\n".join(f"{target} {sub}" for target, sub in PRIVATE_DIRS.items()),
    }
    with (state / "log" / "hostinit.log").open("ab") as log:
        subprocess.run(
            ["setsid", "--fork", "ip", "netns", "exec", lab_host.netns,
             "unshare", "--mount", "--uts", "--propagation", "private",
             "/bin/sh", str(LAB_CODE_DIR / "hostinit.sh")],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=10,
        )


def _wait_started(hosts: list[LabHost]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(hosts)
    while pending:
        for lab_host in list(pending):
            if (lab_host.state_dir / "ready").exists():
                pending.remove(lab_host)
            elif read_pid(lab_host.state_dir / "anchor.pid") is not None and _anchor(lab_host) is None:
                raise LabError(f"{lab_host.name} failed to start:\n{_log_tail(lab_host)}")
        if pending and time.monotonic() > deadline:
            names = ", ".join(h.name for h in pending)
            raise LabError(f"{names} did not start in {START_TIMEOUT:g} s:\n{_log_tail(pending[0])}")
        time.sleep(0.02)


def _log_tail(lab_host: LabHost) -> str:
    log = lab_host.state_dir / "log" / "hostinit.log"
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def _check_host(lab_host: LabHost) -> str:
    """Reach the host the way the panel does: SSH with verified host key, then libvirt."""
    from drivers.ssh import run

    def listening() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((lab_host.address, 22)) == 0

    import libvirt

    from drivers.errors import DriverError

    wait_for(listening, 10, f"sshd on {lab_host.name} ({lab_host.address})")
    try:
        t0 = time.monotonic()
        hostname = run(ssh_target(lab_host), ["hostname"], timeout=15).stdout.strip()
        if hostname != lab_host.name:
            raise LabError(f"{lab_host.address} says it is {hostname!r}, expected {lab_host.name!r}")
        detail = f"ssh {time.monotonic() - t0:.2f} s"
        if lab_host.libvirt_uri:
            t0 = time.monotonic()
            conn = libvirt.open(lab_host.libvirt_uri)
            try:
                domains = len(conn.listAllDomains())
            finally:
                conn.close()
            detail += f", libvirt {time.monotonic() - t0:.2f} s ({domains} domains)"
    except (DriverError, libvirt.libvirtError) as exc:
        raise LabError(f"{lab_host.name} started but does not answer as the panel needs: {exc}") from exc
    return detail


# --- down ---------------------------------------------------------------------------------------

def down(*, out: Output = print) -> None:
    """Stop every host and remove everything `up` made; harmless when nothing is up."""
    require_root()
    started = time.monotonic()
    with _exclusive():
        _remove_strays(out)
        for board in bmcs():  # first, so that no power-on hook boots a host while it goes
            bmc.stop(board)
        bmc.remove_root_netns()
        stop_hosts(list(HOSTS))
        detach_lab_loops()
        network.delete_client_network()
        network.delete_bridges()
        mountpoints.remove_mountpoints(out)
    out(f"lab down in {time.monotonic() - started:.1f} s")


def kill_host(name: str, *, with_bmc: bool = False) -> None:
    """Pull a host's plug: SIGKILL every process in it, nothing else (its links stay, so the panel
    sees silence, not refused connections). `up()` starts it again, as a reboot would. With
    `with_bmc` its BMC loses power too (IPMI fencing then cannot confirm; storage fencing can)."""
    require_root()
    lab_host = host(name)
    if with_bmc and lab_host.bmc is None:
        raise LabError(f"{name} has no BMC (only CPU hosts have one)")
    with _exclusive():
        if with_bmc and lab_host.bmc is not None:
            bmc.pull_plug(lab_host.bmc)
        kill_hosts([lab_host], grace=0)


def partition_host(name: str, link: str = "mgmt") -> None:
    """Cut the host's management link (it keeps running and stays on the SAN), or with
    link="san" its SAN link (it stays reachable). `heal_host` (or `up()`) restores it."""
    require_root()
    lab_host = host(name)
    if not host_running(lab_host):
        raise LabError(f"{name} is not running")
    network.partition(lab_host, link)


def heal_host(name: str) -> None:
    require_root()
    lab_host = host(name)
    if not network.link_exists(lab_host.mgmt_veth):
        raise LabError(f"{name} has no management link (not running? `lab up` boots it)")
    network.heal(lab_host)


def stop_hosts(hosts: list[LabHost], *, grace: float = 3.0) -> None:
    """Stop hosts: every process in their namespaces (SIGTERM, SIGKILL after `grace` seconds),
    then their links and namespaces. With grace=0 it is a pulled plug."""
    close_control_masters([h.address for h in hosts])
    if grace:
        for lab_host in hosts:
            anchor = _anchor(lab_host)
            if lab_host.role == "cpu" and anchor is not None:
                # Drop the stand-in's loop devices while the host's /dev/etherd still exists.
                sh(["nsenter", "-t", str(anchor), "-m", "-n", "/usr/sbin/aoe-flush", "-a"], check=False)
    kill_hosts(hosts, grace)
    for lab_host in hosts:
        network.delete_host_network(lab_host)
        for name in ("anchor.pid", "ready"):
            (lab_host.state_dir / name).unlink(missing_ok=True)


def _remove_strays(out: Output) -> None:
    """Namespaces and links named like the lab's but not in its topology (an older layout)."""
    known = {h.netns for h in HOSTS} | {b.netns for b in bmcs()} | {ROOT_NETNS, CLIENT.netns}
    for ns in netns_names():
        if ns.startswith(NETNS_PREFIX) and ns not in known:
            out(f"removing stray namespace {ns}")
            kill_and_wait(host_pids(ns))
            sh(["ip", "netns", "del", ns], check=False)
    known_links = ({MGMT_BRIDGE, SAN_BRIDGE, GUEST_SEGMENT, CLIENT.veth}
                   | {link for h in HOSTS for link in (h.mgmt_veth, h.san_veth, h.guest_veth)}
                   | {b.mgmt_veth for b in bmcs()})
    for link in os.listdir("/sys/class/net"):
        if link.startswith(NETNS_PREFIX) and link not in known_links:
            out(f"removing stray link {link}")
            sh(["ip", "link", "del", link], check=False)


# --- helpers ------------------------------------------------------------------------------------

@contextmanager
def _exclusive() -> Iterator[None]:
    """One `up` / `down` at a time (a demo and a test run may share the machine)."""
    lab_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(lab_dir() / "lock", "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another lab up/down holds {lock.name} for {LOCK_TIMEOUT:g} s") from None
                time.sleep(0.1)
        yield


