"""Bring the lab cluster up and down, and say what is running. The public API of the lab:

    up() -> LabStatus      idempotent; keeps healthy hosts, rebuilds the others
    down() -> None         removes every namespace, link, process and mount the lab made
    status() -> LabStatus  the hosts that are running (no root needed, but less thorough without)

A host is a network namespace `xa-NAME` whose first process runs lab/hostinit.sh in its own mount
and UTS namespaces; see lab/README.md for the whole picture.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab import hostconfig, network
from lab.hostproc import close_control_masters, detach_lab_loops, host_pids, kill_hosts, ssh_target
from lab.system import SYSTEM_PATH, LabError, kill_and_wait, netns_names, pid_alive, read_pid, same_netns, sh, wait_for
from lab.topology import (
    HOSTS,
    LAB_CODE_DIR,
    MGMT_BRIDGE,
    NETNS_PREFIX,
    PRIVATE_DIRS,
    REPO_DIR,
    SAN_BRIDGE,
    LabHost,
    host,
    lab_dir,
)

ROOT_REQUIRED = (
    "the lab needs root: it creates network namespaces, bridges, veth links and mounts "
    "(run it as root, e.g. with sudo)"
)
ETHERD_DIR = "/dev/etherd"
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

    def as_dict(self) -> dict[str, str]:
        data = {"name": self.name, "role": self.role, "address": self.address, "netns": self.netns}
        if self.libvirt_uri is not None:
            data["libvirt_uri"] = self.libvirt_uri
        return data


@dataclass(frozen=True)
class LabStatus:
    hosts: list[HostStatus]

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        return {"hosts": [h.as_dict() for h in self.hosts]}

    @property
    def complete(self) -> bool:
        return {h.name for h in self.hosts} == {h.name for h in HOSTS}

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
    return HostStatus(lab_host.name, lab_host.role, lab_host.address, lab_host.netns, lab_host.libvirt_uri)


def status() -> LabStatus:
    return LabStatus([_host_status(h) for h in HOSTS if host_running(h)])


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
        _make_mountpoints()
        hostconfig.prepare_all()
        stop_hosts(to_start, grace=0)  # whatever an earlier run left of them
        if not running:
            detach_lab_loops()  # nothing of the lab runs, so every lab loop device is stale
        network.ensure_bridges()
        for lab_host in to_start:
            network.create_host_network(lab_host)
            _launch(lab_host)
        _wait_started(to_start)
    with ThreadPoolExecutor(max_workers=len(HOSTS)) as pool:
        checks = list(pool.map(_check_host, HOSTS))
    for lab_host, detail in zip(HOSTS, checks, strict=True):
        state = "already up" if lab_host in running else "started"
        out(f"{lab_host.name:<6} {lab_host.role:<4} {lab_host.address:<12} {lab_host.netns:<9} {state}: {detail}")
    result = status()
    if not result.complete:
        missing = sorted({h.name for h in HOSTS} - {h.name for h in result.hosts})
        raise LabError(f"hosts not running after lab up: {', '.join(missing)}")
    out(f"lab up in {time.monotonic() - started:.1f} s (state in {lab_dir()})")
    return result


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


def _make_mountpoints() -> None:
    """Create the directories the hosts mount over (and /run/netns's mount via `ip netns add`),
    recording what did not exist so that `down` removes exactly that."""
    state = _load_state()
    made = state.setdefault("made_dirs", [])
    for target in [*PRIVATE_DIRS, ETHERD_DIR]:
        missing = []
        path = Path(target)
        while not path.exists():
            missing.append(str(path))
            path = path.parent
        for directory in reversed(missing):
            os.mkdir(directory, 0o755)
            made.append(directory)
    if not _is_mountpoint("/run/netns") and not state.get("made_run_netns"):
        state["made_run_netns"] = True
        state["made_run_netns_dir"] = not Path("/run/netns").exists()
    _save_state(state)


# --- down ---------------------------------------------------------------------------------------

def down(*, out: Output = print) -> None:
    """Stop every host and remove everything `up` made; harmless when nothing is up."""
    require_root()
    started = time.monotonic()
    with _exclusive():
        _remove_strays(out)
        stop_hosts(list(HOSTS))
        detach_lab_loops()
        network.delete_bridges()
        _remove_mountpoints(out)
    out(f"lab down in {time.monotonic() - started:.1f} s")


def kill_host(name: str) -> None:
    """Pull a host's plug: SIGKILL every process in it, nothing else (its links stay, so the panel
    sees silence, not refused connections). `up()` starts it again, as a reboot would."""
    require_root()
    with _exclusive():
        kill_hosts([host(name)], grace=0)


def stop_hosts(hosts: list[LabHost], *, grace: float = 3.0) -> None:
    """Stop hosts: every process in their namespaces (SIGTERM, SIGKILL after `grace` seconds),
    then their links and namespaces. With grace=0 it is a pulled plug."""
    close_control_masters(hosts)
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
    known = {h.netns for h in HOSTS}
    for ns in netns_names():
        if ns.startswith(NETNS_PREFIX) and ns not in known:
            out(f"removing stray namespace {ns}")
            kill_and_wait(host_pids(ns))
            sh(["ip", "netns", "del", ns], check=False)
    known_links = {MGMT_BRIDGE, SAN_BRIDGE} | {link for h in HOSTS for link in (h.mgmt_veth, h.san_veth)}
    for link in os.listdir("/sys/class/net"):
        if link.startswith(NETNS_PREFIX) and link not in known_links:
            out(f"removing stray link {link}")
            sh(["ip", "link", "del", link], check=False)


def _remove_mountpoints(out: Output) -> None:
    state = _load_state()
    kept = []
    for directory in reversed(state.get("made_dirs", [])):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:  # someone put something there: theirs now, not the lab's to delete
            out(f"warning: keeping {directory}, which lab up created: {exc.strerror}")
            kept.insert(0, directory)
    state["made_dirs"] = kept
    if state.get("made_run_netns") and not netns_names():
        if _is_mountpoint("/run/netns"):
            sh(["umount", "/run/netns"])
        if state.get("made_run_netns_dir"):
            os.rmdir("/run/netns")
        state["made_run_netns"] = state["made_run_netns_dir"] = False
    _save_state(state)


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


def _is_mountpoint(path: str) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == path for line in mountinfo)


def _state_file() -> Path:
    return lab_dir() / "state.json"


def _load_state() -> dict:
    try:
        return json.loads(_state_file().read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    lab_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    _state_file().write_text(json.dumps(state, indent=2) + "\n")
