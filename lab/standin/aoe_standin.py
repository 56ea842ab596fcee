"""Lab stand-in for the AoE initiator's `aoe-discover` and `aoe-flush` (aoetools).

The lab kernel has no `aoe` driver, so /dev/etherd/eS.L never appears by itself. In each CPU host
`lab up` bind-mounts small wrappers calling this file over /usr/sbin/aoe-discover and
/usr/sbin/aoe-flush, and the panel drives exactly the production path over SSH.

discover: a real Query Config broadcast on san0 (drivers/aoe_probe.py, path in $AOE_PROBE). For
every export that answers, the backing file of the vblade process serving it (all lab hosts share
one PID namespace) is attached to a loop device and /dev/etherd/eS.L is made a block node of that
loop device. An export that does not answer this host (stopped, or a vblade `-m` ACL without this
host's MAC) gets no node: discovery stays on the wire. Idempotent.

flush eS.L ... | -a: detach the loop device behind each node and remove the node. Without
arguments, nothing (the real command drops only devices that went down, which never happens here).

Runs with the host's system python3 (stdlib only); called as root inside the host's namespaces.
"""
from __future__ import annotations

import fcntl
import getopt
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

ETHERD = Path("/dev/etherd")
SAN_INTERFACE = "san0"
LOOP_MAJOR = 7
NODE_NAME = re.compile(r"^e(\d+)\.(\d+)$")
VBLADE_OPTIONS = "b:dsrm:o:l:"
PROBE_TIMEOUT = "0.5"
SECTOR = 512
LOCK_FILE = "/run/aoe-standin.lock"  # in the host's private /run


PROG = "aoe-standin"


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def vblade_exports() -> list[dict]:
    """Every running vblade, parsed from its argv: `vblade [opts] SHELF SLOT IFACE FILE`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue
        if not argv or Path(argv[0]).name != "vblade":
            continue
        try:
            # The last four arguments are always SHELF SLOT IFACE FILE. vblade rewrites its -m
            # list in place (commas become NULs), so a list of several MACs shows up as separate
            # words after -m: getopt stops at the first of them, which is fine, -m is not used here.
            shelf, slot, iface, path = argv[-4:]
            opts, _ = getopt.getopt(argv[1:-4], VBLADE_OPTIONS)
            found.append({"pid": int(proc.name), "shelf": int(shelf), "slot": int(slot),
                          "iface": iface, "file": path, "opts": dict(opts)})
        except (getopt.GetoptError, ValueError):
            continue
    return found


def vblade_mac(export: dict) -> str | None:
    """The MAC of the interface the vblade serves on, seen through its own namespaces."""
    try:
        return Path(f"/proc/{export['pid']}/root/sys/class/net/{export['iface']}/address").read_text().strip()
    except OSError:
        return None


def backing_path(export: dict) -> str:
    """The vblade's file as reachable from here: through its root (or cwd) in its mount namespace."""
    base = "root" if export["file"].startswith("/") else "cwd"
    return f"/proc/{export['pid']}/{base}/{export['file'].lstrip('/')}"


def loop_of(node: Path) -> str | None:
    """The /dev/loopN behind a /dev/etherd node, if the node exists and the loop is still attached."""
    try:
        st = node.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISBLK(st.st_mode) or os.major(st.st_rdev) != LOOP_MAJOR:
        return None
    sysfs = Path(f"/sys/dev/block/{LOOP_MAJOR}:{os.minor(st.st_rdev)}")
    if not (sysfs / "loop" / "backing_file").exists():
        return None
    return f"/dev/{sysfs.resolve().name}"


def same_file(loop: str, path: str) -> bool:
    listing = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-MAJ:MIN,BACK-INO", loop],
                             capture_output=True, text=True, check=False, timeout=30).stdout.split()
    try:
        st = os.stat(path)
        major, minor = (int(part) for part in listing[0].split(":"))
        return (os.makedev(major, minor), int(listing[1])) == (st.st_dev, st.st_ino)
    except (OSError, IndexError, ValueError):
        return False


def attach(export: dict) -> None:
    node = ETHERD / f"e{export['shelf']}.{export['slot']}"
    loop = loop_of(node)
    if loop and same_file(loop, backing_path(export)):
        return
    if loop:  # the export is now served from another file: the old device is gone for good
        subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False, timeout=30)
    argv = ["losetup", "--find", "--show", "--direct-io=on"]
    opts = export["opts"]
    if "-r" in opts:
        argv.append("--read-only")
    if "-o" in opts:
        argv += ["--offset", str(int(opts["-o"]) * SECTOR)]
    if "-l" in opts:
        argv += ["--sizelimit", str(int(opts["-l"]) * SECTOR)]
    loop = subprocess.run([*argv, backing_path(export)], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
    major, minor = Path(f"/sys/block/{Path(loop).name}/dev").read_text().strip().split(":")
    node.unlink(missing_ok=True)
    os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(int(major), int(minor)))


def discover() -> int:
    probe = os.environ.get("AOE_PROBE", "")
    if not Path(probe).is_file():
        return fail(f"the AoE probe {probe!r} is missing (lab stand-in, see lab/README.md)")
    proc = subprocess.run(
        [sys.executable, probe, "--interface", SAN_INTERFACE, "--timeout", PROBE_TIMEOUT],
        capture_output=True, text=True, check=False, timeout=30,
    )
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        return fail(f"the AoE probe exited {proc.returncode}")
    answers = json.loads(proc.stdout)["exports"]
    vblades = vblade_exports()
    status = 0
    for answer in answers:
        serving = [v for v in vblades if (v["shelf"], v["slot"]) == (answer["shelf"], answer["slot"])
                   and vblade_mac(v) == answer["mac"].lower()]
        if not serving:
            fail(f"warning: e{answer['shelf']}.{answer['slot']} answered from {answer['mac']} but no lab "
                 "vblade serves it: not attached")
            continue
        try:
            attach(serving[0])
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            status = fail(f"e{answer['shelf']}.{answer['slot']}: attach failed: {detail}")
    return status


def flush(args: list[str]) -> int:
    if args == ["-a"]:
        names = sorted(p.name for p in ETHERD.iterdir() if NODE_NAME.match(p.name)) if ETHERD.is_dir() else []
    else:
        names = args
    status = 0
    for name in names:
        if not NODE_NAME.match(name):
            status = fail(f"{name}: not a device name like e1.0")
            continue
        node = ETHERD / name
        loop = loop_of(node)
        if loop:
            # Detaching an open loop device only marks it for autoclear: it goes when QEMU closes it.
            subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False, timeout=30)
        node.unlink(missing_ok=True)
    return status


def main() -> int:
    global PROG
    if len(sys.argv) < 2 or sys.argv[1] not in ("discover", "flush"):
        return fail("usage: aoe_standin.py discover | flush [-a | eS.L ...]")
    action, args = sys.argv[1], sys.argv[2:]
    PROG = f"aoe-{action} (lab stand-in)"
    # Panel workers may attach and detach on one host at the same time: one change at a time.
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return discover() if action == "discover" else flush(args)


if __name__ == "__main__":
    sys.exit(main())
