"""AoE exports on a disk server: backing files and the vblade processes serving them, over SSH.

All remote logic lives in the POSIX sh scripts of drivers/remote/ (sent on stdin, nothing installed
on the host): vblade-lib.sh holds the conventions (config in /etc/xenaoe/exports/eS.L.conf, pid
files in /run/xenaoe/vblade/, logs in /var/log/xenaoe/) and each call prepends it to one script.
The same scripts run at boot (restore-exports.sh, see deploy/systemd/), so what the panel starts and
what a rebooted disk server restores cannot drift apart.

Backing stores are sparse files for now; production LVM volumes are not handled yet.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from drivers import ssh
from drivers.errors import DriverError
from drivers.paths import check_path
from drivers.ssh import SSHTarget

REMOTE_DIR = Path(__file__).resolve().parent / "remote"
EXIT_REFUSED = 3
EXIT_TEMPORARY = 4
MAX_SHELF = 65534  # 65535 is the broadcast shelf
MAX_SLOT = 254  # 255 is the broadcast slot
MAX_MACS = 32  # vblade's ACL holds 32 entries and does not check the bound
# The largest volume volume.sh creates (1 PiB; the same number is in the script). The panel's
# largest disk (XENAOE_VM_MAX_DISK_MIB) may not exceed it.
MAX_VOLUME_MIB = 1 << 30
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@][A-Za-z0-9_.:@-]{0,14}")  # never a leading "-": vblade uses getopt
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class ExportSpec:
    shelf: int
    slot: int
    interface: str
    path: str
    # Writes refused on the wire (vblade -r): an ISO that many guests read at once.
    read_only: bool = False


@dataclass(frozen=True)
class RunningExport:
    shelf: int
    slot: int
    interface: str
    path: str
    pid: int
    macs: tuple[str, ...]  # the vblade ACL; empty means every initiator may use the export
    read_only: bool = False

    @property
    def spec(self) -> ExportSpec:
        """What restarts it as it is (with another ACL: how a fence changes who may use it)."""
        return ExportSpec(self.shelf, self.slot, self.interface, self.path, self.read_only)

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"


def create_volume(target: SSHTarget, path: str, size_mib: int, *, timeout: float = 30) -> None:
    """Create a sparse backing file of `size_mib` MiB (and its directory). Refuses (permanent
    DriverError) if anything exists at `path`: an existing disk is never overwritten."""
    check_path(path)
    if not isinstance(size_mib, int) or not 0 < size_mib <= MAX_VOLUME_MIB:
        raise DriverError(f"volume size must be a positive number of MiB, at most {MAX_VOLUME_MIB}, "
                          f"not {size_mib!r}", permanent=True)
    _run(target, "volume.sh", ["create", path, str(size_mib)], timeout)


def remove_volume(target: SSHTarget, path: str, *, timeout: float = 30) -> None:
    """Delete a backing file; absent is fine. Refuses while an export serves or is configured to
    serve it, and for anything that is not a regular file."""
    check_path(path)
    _run(target, "volume.sh", ["remove", path], timeout)


def start_export(
    target: SSHTarget, spec: ExportSpec, *, allowed_macs: list[str] | None = None, timeout: float = 30
) -> RunningExport:
    """Serve `spec.path` as eS.L on `spec.interface` and persist it so that it survives a restart.

    Idempotent for the same spec and ACL. The same spec with another ACL restarts vblade with the
    new list (fencing a host through storage). `allowed_macs=None` lets every initiator in; an empty
    list is refused because vblade would read it as "no ACL" and let everyone in. Refused
    (permanent): shelf.slot already serves or is configured for another file, or the file is
    already exported under another shelf.slot."""
    _check_spec(spec)
    args = ["-r"] if spec.read_only else []
    args += [str(spec.shelf), str(spec.slot), spec.interface, spec.path]
    if allowed_macs is not None:
        args.append(",".join(_normalise_macs(allowed_macs)))
    lines = _parse_lines(target, _run(target, "vblade-export.sh", args, timeout))
    if len(lines) != 1:
        raise DriverError(f"{target.host}: vblade-export.sh printed {len(lines)} exports, expected one")
    return lines[0]


def stop_export(target: SSHTarget, shelf: int, slot: int, *, timeout: float = 30) -> None:
    """Stop serving eS.L and remove its persisted config; idempotent. The backing file stays."""
    check_address(shelf, slot)
    _run(target, "vblade-stop.sh", [str(shelf), str(slot)], timeout)


def list_exports(target: SSHTarget, *, timeout: float = 30) -> list[RunningExport]:
    """The exports running on the host, from the panel's own pid files, sorted by shelf, slot."""
    return sorted(_parse_lines(target, _run(target, "vblade-list.sh", [], timeout)),
                  key=lambda e: (e.shelf, e.slot))


def restore_exports(target: SSHTarget, *, timeout: float = 60) -> list[RunningExport]:
    """Start every persisted export that is not running; returns the ones it started. If some
    cannot start, the others still do and a permanent DriverError names the failures."""
    return _parse_lines(target, _run(target, "restore-exports.sh", [], timeout))


def remote_script(name: str) -> str:
    """The text sent to `sh -s`: the shared library followed by the named script."""
    return (REMOTE_DIR / "vblade-lib.sh").read_text() + "\n" + (REMOTE_DIR / name).read_text()


def _run(target: SSHTarget, script: str, args: list[str], timeout: float) -> str:
    result = ssh.run(target, ["sh", "-s", "--", *args], timeout=timeout, stdin=remote_script(script),
                     check=False)
    if result.returncode == 0:
        return result.stdout
    detail = result.stderr.strip() or f"exit status {result.returncode}"
    raise DriverError(f"{target.host}: {script} {' '.join(args)}: {detail}",
                      permanent=result.returncode != EXIT_TEMPORARY)


def _parse_lines(target: SSHTarget, stdout: str) -> list[RunningExport]:
    exports = []
    for line in stdout.splitlines():
        fields = line.split("\t")
        try:
            shelf, slot, interface, path, pid, macs, read_only = fields
            if read_only not in ("0", "1"):
                raise ValueError(read_only)
            exports.append(RunningExport(int(shelf), int(slot), interface, path, int(pid),
                                         tuple(m for m in macs.split(",") if m), read_only == "1"))
        except ValueError as exc:
            raise DriverError(f"{target.host}: unexpected line from a vblade script: {line!r}") from exc
    return exports


def check_address(shelf: int, slot: int) -> None:
    """DriverError unless shelf.slot is a valid AoE address of one export (not a broadcast)."""
    if not (isinstance(shelf, int) and 0 <= shelf <= MAX_SHELF):
        raise DriverError(f"AoE shelf must be 0-{MAX_SHELF}, not {shelf!r}", permanent=True)
    if not (isinstance(slot, int) and 0 <= slot <= MAX_SLOT):
        raise DriverError(f"AoE slot must be 0-{MAX_SLOT}, not {slot!r}", permanent=True)


def _check_spec(spec: ExportSpec) -> None:
    check_address(spec.shelf, spec.slot)
    if not _INTERFACE.fullmatch(spec.interface):
        raise DriverError(f"not an interface name: {spec.interface!r}", permanent=True)
    check_path(spec.path)


def _normalise_macs(macs: list[str]) -> list[str]:
    if isinstance(macs, str):
        raise DriverError("allowed_macs must be a list of MAC addresses, not a string", permanent=True)
    normalised = sorted({m.strip().lower().replace("-", ":") for m in macs})
    bad = [m for m in normalised if not _MAC.fullmatch(m)]
    if bad:
        raise DriverError(f"not MAC addresses: {', '.join(bad)}", permanent=True)
    if not normalised:
        raise DriverError("an empty MAC list would let every initiator in (vblade ignores it); "
                          "stop the export instead", permanent=True)
    if len(normalised) > MAX_MACS:
        raise DriverError(f"vblade accepts at most {MAX_MACS} MAC addresses, got {len(normalised)}",
                          permanent=True)
    return normalised


# One SSH command checks all the backing paths (sent on stdin, one per line: paths never hold a
# newline, _check_path refuses control characters) and prints the absent ones.
VOLUME_CHECK = 'while IFS= read -r p; do [ -e "$p" ] || printf "%s\\n" "$p"; done; exit 0'


def missing_volumes(target: SSHTarget, paths: Iterable[str], *, timeout: float = 30) -> set[str]:
    """The paths (of those given) that do not exist on the host: one SSH command for all of them."""
    wanted = sorted(set(paths))
    if not wanted:
        return set()
    result = ssh.run(target, ["sh", "-c", VOLUME_CHECK], stdin="\n".join(wanted) + "\n", timeout=timeout)
    return {line for line in result.stdout.splitlines() if line}
