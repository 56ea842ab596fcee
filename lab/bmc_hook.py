"""ipmi_sim's chassis_control hook for a lab BMC (see lab/bmc.py), run as

    python -m lab.bmc_hook HOST get power|boot ...      prints "power:1" / "power:0", "boot:default"
    python -m lab.bmc_hook HOST set power 0|1 ...       prints nothing on success
    python -m lab.bmc_hook HOST boot                    (internal) boot the host, in the root netns
    python -m lab.bmc_hook HOST console PORT CMD ...    emulation commands to ipmi_sim's console on
                                                        127.0.0.1:PORT (run in the BMC's netns)

ipmi_sim runs it in the BMC's network namespace and waits for it, so everything here is quick:
power off kills synchronously (milliseconds, like a real power cut); power on only starts a
detached boot in the root namespace and returns, as a real BMC acknowledges before the host runs.
Errors go to stderr (the BMC's log/power.log) with a non-zero exit, which ipmi_sim reports as a
failed command.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from lab.topology import REPO_DIR, ROOT_NETNS, LabHost, host


def _powered(lab_host: LabHost) -> bool:
    """On while any process of the host lives: for fencing, "off" must mean nothing runs."""
    from lab.hostproc import host_pids

    return bool(host_pids(lab_host.netns, lab_host))


def _power_off(lab_host: LabHost) -> None:
    from lab.hostproc import kill_hosts

    kill_hosts([lab_host], grace=0)


def _power_on(lab_host: LabHost) -> None:
    if _powered(lab_host):
        return
    log = lab_host.bmc.state_dir / "log" / "boot.log" if lab_host.bmc else None
    with open(log or os.devnull, "ab") as out:
        subprocess.run(
            ["setsid", "--fork", "nsenter", f"--net=/run/netns/{ROOT_NETNS}",
             sys.executable, "-m", "lab.bmc_hook", lab_host.name, "boot"],
            cwd=REPO_DIR, env=dict(os.environ), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            check=True, timeout=10,
        )


def _boot(lab_host: LabHost) -> None:
    from lab import cluster

    cluster.boot_host(lab_host.name, out=lambda line: print(line, flush=True))


CONSOLE_PROMPT = b"> "


def send_console(address: str, port: int, commands: list[str], timeout: float = 5.0) -> None:
    """Each command to ipmi_sim's console (a telnet-style line interface): it echoes the command,
    prints "**message" for a command it refuses, then its prompt. Raises RuntimeError on a refusal
    or a timeout; never sends `quit` (which would stop the simulator)."""
    deadline = time.monotonic() + timeout

    def until_prompt(sock: socket.socket) -> bytes:
        seen = b""
        while not seen.endswith(CONSOLE_PROMPT):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"the console closed the connection after {seen!r}")
            seen += chunk
        return seen

    with socket.create_connection((address, port), timeout=timeout) as sock:
        until_prompt(sock)  # telnet option negotiation, then the first prompt
        for command in commands:
            if command.split()[:1] == ["quit"]:
                raise RuntimeError("`quit` would stop the simulator")
            sock.sendall(command.encode() + b"\n")
            answer = until_prompt(sock).decode(errors="replace")
            if "**" in answer:
                refusal = answer.split("**", 1)[1].splitlines()[0].strip()
                raise RuntimeError(f"ipmi_sim refused {command!r}: {refusal}")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m lab.bmc_hook HOST get|set|boot ...", file=sys.stderr)
        return 2
    lab_host = host(argv[0])
    op, args = argv[1], argv[2:]
    if op == "get":
        for parm in args:
            if parm == "power":
                print(f"power:{int(_powered(lab_host))}")
            elif parm == "boot":
                print("boot:default")
            else:
                print(f"unsupported parameter {parm!r}", file=sys.stderr)
                return 1
        return 0
    if op == "set":
        if len(args) % 2:
            print(f"set needs parameter/value pairs: {args}", file=sys.stderr)
            return 1
        for parm, value in zip(args[::2], args[1::2], strict=True):
            if parm == "power" and value in ("0", "1"):
                print(f"{lab_host.name}: power {'on' if value == '1' else 'off'}", file=sys.stderr)
                (_power_on if value == "1" else _power_off)(lab_host)
            elif parm not in ("reset", "boot", "identify"):  # accepted, nothing to do in the lab
                print(f"unsupported: set {parm} {value}", file=sys.stderr)
                return 1
        return 0
    if op == "boot":
        _boot(lab_host)
        return 0
    if op == "console" and args:
        try:
            send_console("127.0.0.1", int(args[0]), args[1:])
        except (OSError, RuntimeError, ValueError) as exc:
            print(f"{lab_host.name}'s BMC console: {exc}", file=sys.stderr)
            return 1
        return 0
    print(f"unknown operation {op!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
