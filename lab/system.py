"""Small wrappers over the Linux tools the lab drives (ip, kill, /proc)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

# The lab's tools and daemons come from the system, whatever PATH the caller has (a venv, pyenv).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(Exception):
    """Building or tearing down the lab failed; the message says what and where."""


def sh(argv: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip_batch(commands: list[str], netns: str | None = None) -> None:
    """Run many `ip` commands in one process (each is a few ms otherwise), in `netns` if given."""
    if not commands:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.run(
        argv, input="\n".join(commands) + "\n",
        capture_output=True, text=True, timeout=30, check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_names() -> list[str]:
    proc = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def same_netns(pid: int, netns: str) -> bool:
    """Whether `pid` lives in the named network namespace (needs root to read other processes)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return False


def kill_and_wait(pids: list[int], timeout: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL whatever is left after `timeout` (at once if 0); returns the pids still
    alive at the end."""
    pids = [p for p in pids if p != os.getpid()]
    stages = [(signal.SIGTERM, timeout)] if timeout > 0 else []
    for sig, wait in [*stages, (signal.SIGKILL, 2.0)]:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            _reap(pids)
            pids = [p for p in pids if pid_alive(p)]
            if pids:
                time.sleep(0.02)
        if not pids:
            return []
    return pids


def _reap(pids: list[int]) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
