"""AoE from a CPU server's side: probe the SAN on the wire, attach and detach exports.

probe() runs drivers/aoe_probe.py on the host over SSH (the file is sent on stdin, python3 is all
the host needs): a real Query Config broadcast and ATA IDENTIFY, independent of the kernel's AoE
initiator. attach()/detach() drive the production initiator (aoetools: `aoe-discover`,
`aoe-flush`, devices at /dev/etherd/eS.L); what stands in for it in the lab is not our business.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from drivers import ssh
from drivers.errors import DriverError
from drivers.ssh import SSHTarget
from drivers.vblade import EXIT_TEMPORARY, check_address

log = logging.getLogger(__name__)

PROBE_SCRIPT = Path(__file__).resolve().parent / "aoe_probe.py"
REMOTE_DIR = Path(__file__).resolve().parent / "remote"
ANY_SHELF = 0xFFFF
ANY_SLOT = 0xFF
POLL_INTERVAL = 0.2  # seconds between checks in aoe-attach.sh / aoe-detach.sh
# What one SSH round trip may cost on top of the waiting done on the host (a fresh connection
# with host-key check, remote shell start): the host stops waiting this much before our timeout.
SSH_MARGIN = 3.0


@dataclass(frozen=True)
class AoEAnswer:
    shelf: int
    slot: int
    mac: str  # the target's interface that answered
    bufcnt: int  # requests the target accepts in flight
    firmware: int
    sectors: int | None  # size in 512-byte sectors; None without identify or if IDENTIFY failed

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"


def probe(
    target: SSHTarget,
    interface: str,
    shelf: int | None = None,
    slot: int | None = None,
    *,
    identify: bool = True,
    timeout: float = 10.0,
    listen: float = 1.0,
    expect: Iterable[tuple[int, int]] = (),
) -> list[AoEAnswer]:
    """Every export that answers a Query Config broadcast on `interface` of that host, sorted by
    shelf, slot. None means any shelf / slot. `listen` is how long the probe collects answers on
    the wire (IDENTIFY may take as long again), or until shortly after every (shelf, slot) in
    `expect` answered; `timeout` bounds the whole call. One export may
    appear more than once if it answers from several MACs (or if a shelf.slot is duplicated on
    the SAN, which is worth seeing). Target-side errors are logged, not raised."""
    if shelf is not None:
        check_address(shelf, 0)
    if slot is not None:
        check_address(0, slot)
    wire_time = listen * (2 if identify else 1)
    if listen <= 0 or wire_time + SSH_MARGIN > timeout:
        raise DriverError(f"probe: listening {listen:g} s does not fit in a {timeout:g} s timeout",
                          permanent=True)
    argv = ["python3", "-", "--interface", interface,
            "--shelf", str(ANY_SHELF if shelf is None else shelf),
            "--slot", str(ANY_SLOT if slot is None else slot), "--timeout", f"{listen:g}"]
    if identify:
        argv.append("--identify")
    if expect:
        argv += ["--expect", ",".join(f"{s}.{n}" for s, n in sorted(set(expect)))]
    result = ssh.run(target, argv, timeout=timeout, stdin=PROBE_SCRIPT.read_text(), check=False)
    for line in result.stderr.splitlines():
        if line.startswith("aoe_probe: warning: "):
            log.warning("%s: %s", target.host, line.removeprefix("aoe_probe: warning: "))
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise DriverError(f"{target.host}: AoE probe on {interface}: {detail}", permanent=True)
    try:
        exports = json.loads(result.stdout)["exports"]
        return [AoEAnswer(int(e["shelf"]), int(e["slot"]), str(e["mac"]), int(e["bufcnt"]),
                          int(e["firmware"]), None if e["sectors"] is None else int(e["sectors"]))
                for e in exports]
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"{target.host}: AoE probe printed something unexpected: "
                          f"{result.stdout[:200]!r}") from exc


def attach(target: SSHTarget, shelf: int, slot: int, *, timeout: float = 20.0) -> str:
    """Run `aoe-discover` on the host and wait (on the host, bounded by `timeout`) until
    /dev/etherd/eS.L is a block device; returns that path. DriverError if it never appears
    (temporary: the export may come back) or if discovery itself fails (permanent: the host lacks
    the aoe driver or aoetools)."""
    check_address(shelf, slot)
    return _run(target, "aoe-attach.sh", shelf, slot, timeout).strip()


def discover(target: SSHTarget, *, timeout: float = 10.0) -> None:
    """One `aoe-discover` on the host: every export on the SAN becomes a device there (the kernel
    makes them as the answers arrive). Before several attaches at once, so that each finds its
    device instead of each starting a discovery of its own. DriverError if discovery fails."""
    result = ssh.run(target, ["aoe-discover"], timeout=timeout, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise DriverError(f"{target.host}: aoe-discover: {detail}")


def detach(target: SSHTarget, shelf: int, slot: int, *, timeout: float = 20.0) -> None:
    """`aoe-flush eS.L` and wait until /dev/etherd/eS.L is gone; idempotent (absent is fine)."""
    check_address(shelf, slot)
    _run(target, "aoe-detach.sh", shelf, slot, timeout)


def _run(target: SSHTarget, script: str, shelf: int, slot: int, timeout: float) -> str:
    polls = int(max(timeout - SSH_MARGIN, POLL_INTERVAL) / POLL_INTERVAL)
    result = ssh.run(target, ["sh", "-s", "--", str(shelf), str(slot), str(polls)], timeout=timeout,
                     stdin=(REMOTE_DIR / script).read_text(), check=False)
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise DriverError(f"{target.host}: e{shelf}.{slot}: {detail}",
                          permanent=result.returncode != EXIT_TEMPORARY)
    return result.stdout

