"""Run commands on hosts over OpenSSH.

Why OpenSSH and not a Python library: a shared ControlMaster socket per host makes a command cost
~14 ms after the first, across worker processes, and host-key checking is OpenSSH's own
(`StrictHostKeyChecking=yes` against the panel's known_hosts file: an unknown or changed key is
refused, never accepted). Every remote command is given as argv and quoted here with shlex.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from drivers import guard, ssh_mux
from drivers.errors import DriverError

# ssh exits 255 when it could not connect or authenticate; anything else is the remote command's.
SSH_CONNECTION_FAILED = 255
# An IP address or a DNS name, and a user name: never an option ("-oProxyCommand=..." would run a
# command on the panel's machine). The inventory validates both (hosts/validators.py); this is the
# last line, for a row that skipped it.
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:%-]*")
_USER = re.compile(r"[a-z_][a-z0-9_.-]*")


@dataclass(frozen=True)
class SSHTarget:
    host: str
    identity_file: Path
    known_hosts_file: Path
    control_dir: Path
    user: str = "root"
    port: int = 22
    connect_timeout: int = 5
    # The host's name in the inventory, for messages an operator reads.
    name: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.host})" if self.name else self.host


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str = field(repr=False)


def ssh_options(target: SSHTarget) -> list[str]:
    """The ssh(1) options the panel always uses: verified host keys, key-only auth, reuse."""
    target.control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return [
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={target.known_hosts_file}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-i", str(target.identity_file),
        "-o", f"ConnectTimeout={target.connect_timeout}",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3",
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={target.control_dir}/%C",
        "-o", "ControlPersist=120",
        "-p", str(target.port),
        "-l", target.user,
    ]


def command(target: SSHTarget, argv: list[str]) -> list[str]:
    """The ssh(1) command line running `argv` on the host; the destination comes after "--", so
    that nothing in it is read as an option."""
    if not _HOST.fullmatch(target.host):
        raise DriverError(f"{target.label}: not a host address: {target.host!r}", permanent=True)
    if not _USER.fullmatch(target.user):
        raise DriverError(f"{target.label}: not a user name: {target.user!r}", permanent=True)
    return ["ssh", *ssh_options(target), "--", target.host, shlex.join(argv)]


def run(
    target: SSHTarget,
    argv: list[str],
    *,
    timeout: float,
    stdin: str | None = None,
    check: bool = True,
) -> CommandResult:
    """Run `argv` on the host. Raises DriverError on connection failure, timeout or (with check) a
    non-zero exit; the message carries the host, the command and what it printed on stderr."""
    guard.before_host_call()
    cmd = command(target, argv)
    remote = cmd[-1]
    try:
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DriverError(f"{target.label}: `{remote}` timed out after {timeout:g} s") from exc
    _check_exit(target, remote, proc.returncode, proc.stderr, check)
    return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)


def _check_exit(target: SSHTarget, remote: str, returncode: int, stderr: str, check: bool) -> None:
    if returncode == SSH_CONNECTION_FAILED:
        raise DriverError(f"{target.label}: SSH failed: {stderr.strip() or 'no answer'}")
    if returncode < 0:  # our ssh client was killed (a signal): the command's fate is unknown
        raise DriverError(f"{target.label}: `{remote}`: the SSH connection was lost (signal {-returncode})")
    if check and returncode != 0:
        raise DriverError(f"{target.label}: `{remote}` exited {returncode}: {stderr.strip()}", permanent=True)


def ping(target: SSHTarget, *, timeout: float) -> None:
    """`true` on the host in a new session: the host answers (the monitor's check of every host,
    each cycle; one ping per host at a time). Through the host's ControlMaster directly when one
    takes the session (drivers/ssh_mux.py: no `ssh` process), else through an `ssh` that starts a
    master. Raises DriverError as `run` does."""
    guard.before_host_call()
    argv = command(target, ["true"])  # the same checks of the host and the user as `run`
    remote = argv[-1]
    deadline = time.monotonic() + timeout
    try:
        status = ssh_mux.run(ssh_mux.control_path(target.control_dir, target.host, target.port, target.user),
                             remote, timeout)
    except ssh_mux.NoSession:
        _ping_opening_a_master(target, argv, deadline, timeout)
        return
    except TimeoutError as exc:
        raise DriverError(f"{target.label}: `{remote}` timed out after {timeout:g} s") from exc
    except ssh_mux.SessionLost as exc:
        raise DriverError(f"{target.label}: `{remote}`: the SSH connection was lost ({exc})") from exc
    _check_exit(target, remote, status, "", check=True)


# The `ssh` processes ping() started to open a host's master, by host: each is left to finish its
# handshake whatever the check's timeout (one cut short would start over at every check, and with
# hundreds of hosts on a busy machine might never end), and the next ping waits for it.
_opening: dict[tuple[str, int, str], subprocess.Popen] = {}
_opening_lock = threading.Lock()


def _ping_opening_a_master(target: SSHTarget, argv: list[str], deadline: float, timeout: float) -> None:
    key = (target.host, target.port, target.user)
    with _opening_lock:
        proc = _opening.get(key)
        if proc is None or proc.poll() is not None:  # none, or one whose answer came too late to count
            if proc is not None:
                proc.communicate()  # its pipes closed, the process reaped
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
            _opening[key] = proc
    try:
        _, stderr = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise DriverError(f"{target.label}: `{argv[-1]}` timed out after {timeout:g} s") from exc
    with _opening_lock:
        if _opening.get(key) is proc:
            del _opening[key]
    _check_exit(target, argv[-1], proc.returncode, stderr, check=True)


def send(
    target: SSHTarget,
    argv: list[str],
    chunks: Iterable[bytes],
    *,
    timeout: float,
) -> CommandResult:
    """Run `argv` on the host with `chunks` streamed to its stdin (files too big to hold in
    memory: an image). `timeout` bounds the whole transfer; stdout and stderr are kept (small)."""
    guard.before_host_call()
    cmd = command(target, argv)
    remote = cmd[-1]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err)
        assert proc.stdin is not None
        try:
            try:
                for chunk in chunks:
                    if time.monotonic() > deadline:
                        raise DriverError(f"{target.label}: `{remote}` timed out after {timeout:g} s")
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass  # the remote side gave up: its exit status and stderr say why
            finally:
                proc.stdin.close()
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except (subprocess.TimeoutExpired, DriverError) as exc:
            proc.kill()
            proc.wait()
            raise DriverError(f"{target.label}: `{remote}` timed out after {timeout:g} s") from exc
        out.seek(0)
        err.seek(0)
        result = CommandResult(argv, proc.returncode, out.read().decode(errors="replace"),
                               err.read().decode(errors="replace"))
    if proc.returncode == SSH_CONNECTION_FAILED:
        raise DriverError(f"{target.label}: SSH failed: {result.stderr.strip() or 'no answer'}")
    return result
