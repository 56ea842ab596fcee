"""Lab stand-in for the AoE initiator's `aoe-discover` and `aoe-flush` (aoetools).

The lab kernel has no `aoe` driver, so /dev/etherd/eS.L never appears by itself. In each CPU host
`lab up` bind-mounts small wrappers calling this file over /usr/sbin/aoe-discover and
/usr/sbin/aoe-flush, and the panel drives exactly the production path over SSH.

discover: a real Query Config broadcast on san0 (drivers/aoe_probe.py, path in $AOE_PROBE), with
ATA IDENTIFY for the sizes. Every export that answers gets a user-space AoE initiator: a FUSE
daemon (lab/standin/aoe_fuse.py, started detached with the lab's Python, log in
/var/log/xenaoe/aoe-standin-eS.L.log) serving the export as one file under /run/aoe-standin/eS.L/,
whose reads and writes are ATA commands on the SAN to the vblade. A loop device is attached to
that file (`losetup --direct-io=on`) and /dev/etherd/eS.L is made a block node of the loop device.
So the data goes through vblade: a dead disk server fails I/O on its legs with EIO within a few
seconds (the initiator's deadline), and I/O works again on the same node when the export is back.
An export that does not answer this host (stopped, or a vblade `-m` ACL without this host's MAC)
gets no node: discovery stays on the wire. Idempotent; a device whose initiator died, or whose
export changed size, is set up again.

With AOE_STANDIN_DATA=file (from XENAOE_LAB_AOE_DATA=file at `lab up`) the older, faster stand-in
is used instead: the loop device is attached directly to the backing file of the vblade serving
the export (all lab hosts share one PID namespace), so data bypasses vblade and the SAN.

flush eS.L ... | -a: detach the loop device behind each node (lazily, if QEMU still has it open),
remove the node and unmount the FUSE file system lazily; its daemon exits once nothing holds the
file. Without arguments, nothing (the real command drops only devices that went down).

Runs as root inside the host's namespaces, with the lab's Python (the FUSE daemon needs mfusepy;
this file itself needs only the standard library).
"""
from __future__ import annotations

import fcntl
import getopt
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

ETHERD = Path("/dev/etherd")
SAN_INTERFACE = "san0"
LOOP_MAJOR = 7
NODE_NAME = re.compile(r"^e(\d+)\.(\d+)$")
VBLADE_OPTIONS = "b:dsrm:o:l:"
PROBE_TIMEOUT = "0.5"
SECTOR = 512
LOCK_FILE = "/run/aoe-standin.lock"  # in the host's private /run
REPO_DIR = Path(__file__).resolve().parents[2]
RUN_DIR = Path("/run/aoe-standin")  # FUSE mountpoints and daemon pid files, host-private
LOG_DIR = Path("/var/log/xenaoe")
# The name of each export's FUSE file: lab/hostproc.py recognises the lab's loop devices by it.
FUSE_FILE_PREFIX = "xenaoe-aoe-standin-"
DAEMON_MODULE = "lab.standin.aoe_fuse"
DAEMON_START_TIMEOUT = 10.0
DAEMON_EXIT_TIMEOUT = 3.0


PROG = "aoe-standin"
# Which data path the stand-in uses: `lab up` writes XENAOE_LAB_AOE_DATA into the wrappers as
# AOE_STANDIN_DATA (lab/hostconfig.py). "wire": through vblade over the SAN (the default);
# "file": a loop over the vblade's backing file (no I/O through vblade).
WIRE, FILE = "wire", "file"
DATA_PATHS = (WIRE, FILE)
LAB_SETTING = "XENAOE_LAB_AOE_DATA"
WRAPPER_SETTING = "AOE_STANDIN_DATA"
_WRAPPER_LINE = re.compile(rf"\b{WRAPPER_SETTING}=(\S+)")


def data_path_of(value: str | None) -> str:
    """The data path a setting's value selects: "file" only when asked for, "wire" otherwise."""
    return FILE if (value or "").strip("'\"") == FILE else WIRE


def data_path(standin_dir: Path | None = None) -> str:
    """"wire" or "file": the data path of the lab's stand-in as `lab up` installed it, read from
    the aoe-discover wrapper it generated (LAB_DIR/standin/); if no lab was ever set up there,
    the one the next `lab up` would install (XENAOE_LAB_AOE_DATA). For tests that need the
    guests' I/O to go through vblade (a killed disk server failing it)."""
    if standin_dir is None:
        from lab.topology import lab_dir  # Django settings: not needed when run as the stand-in

        standin_dir = lab_dir() / "standin"
    try:
        match = _WRAPPER_LINE.search((standin_dir / "aoe-discover").read_text())
    except FileNotFoundError:
        match = None
    return data_path_of(match.group(1) if match else os.environ.get(LAB_SETTING))


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


# ---- the wire data path: a FUSE file per export, served by a user-space AoE initiator ----------


def fuse_file(name: str) -> Path:
    return RUN_DIR / name / f"{FUSE_FILE_PREFIX}{name}"


def daemon_pid(name: str) -> int | None:
    """The pid of the export's FUSE daemon if it runs (its argv names the module and the export)."""
    try:
        pid = int((RUN_DIR / f"{name}.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    path = fuse_file(name)
    ours = all(word.encode() in argv for word in (DAEMON_MODULE, str(path.parent), path.name))
    return pid if ours else None


def _is_mountpoint(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


def loop_size(loop: str) -> int | None:
    try:
        return int(Path(f"/sys/block/{Path(loop).name}/size").read_text()) * SECTOR
    except (OSError, ValueError):
        return None


def backing_file(loop: str) -> str | None:
    try:
        return Path(f"/sys/block/{Path(loop).name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def wire_attached(name: str, sectors: int | None) -> bool:
    """The node is a loop over this export's FUSE file, its daemon runs and the size is right."""
    loop = loop_of(ETHERD / name)
    if loop is None or backing_file(loop) != str(fuse_file(name)) or daemon_pid(name) is None:
        return False
    return sectors is None or loop_size(loop) == sectors * SECTOR


def start_daemon(name: str, shelf: int, slot: int) -> subprocess.Popen:
    mountpoint = fuse_file(name).parent
    mountpoint.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(REPO_DIR),
           "LANG": "C.UTF-8"}
    with open(LOG_DIR / f"aoe-standin-{name}.log", "ab") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", DAEMON_MODULE, "--interface", SAN_INTERFACE, "--shelf", str(shelf),
             "--slot", str(slot), "--mountpoint", str(mountpoint), "--file-name", fuse_file(name).name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env, start_new_session=True,
        )
    (RUN_DIR / f"{name}.pid").write_text(f"{daemon.pid}\n")
    return daemon


def wait_for_file(name: str, daemon: subprocess.Popen) -> None:
    """Until the daemon serves its file; OSError with the log's last line if it exits or stalls."""
    path = fuse_file(name)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while True:
        if _is_mountpoint(path.parent) and path.exists():
            return
        if daemon.poll() is not None:
            raise OSError(f"its initiator exited {daemon.returncode}: {_last_log_line(name)}")
        if time.monotonic() > deadline:
            daemon.terminate()
            raise OSError(f"its initiator did not start in {DAEMON_START_TIMEOUT:g} s: {_last_log_line(name)}")
        time.sleep(0.02)


def _last_log_line(name: str) -> str:
    try:
        lines = (LOG_DIR / f"aoe-standin-{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def attach_wire(exports: list[tuple[int, int, int | None]]) -> int:
    """Set up every (shelf, slot, sectors) not already served; daemons start in parallel."""
    starting = []
    for shelf, slot, sectors in exports:
        name = f"e{shelf}.{slot}"
        if not wire_attached(name, sectors):
            release(name)
            starting.append((name, start_daemon(name, shelf, slot)))
    status = 0
    for name, daemon in starting:
        try:
            wait_for_file(name, daemon)
            loop = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(fuse_file(name))],
                                  capture_output=True, text=True, check=True, timeout=30).stdout.strip()
            make_node(ETHERD / name, loop)
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            status = fail(f"{name}: attach failed: {detail}")
            release(name)
    return status


def release(name: str) -> None:
    """Undo whatever the stand-in set up for one export: loop (lazily if open), node, FUSE mount
    (lazily), daemon (it exits by itself once nothing holds its file; stopped if it lingers while
    nothing does)."""
    node = ETHERD / name
    loop = loop_of(node)
    busy = False
    if loop:
        # Detaching an open loop device only marks it for autoclear: it goes when QEMU closes it.
        subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False, timeout=30)
        busy = backing_file(loop) is not None
    node.unlink(missing_ok=True)
    mountpoint = fuse_file(name).parent
    if _is_mountpoint(mountpoint):
        subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True, check=False, timeout=30)
    pid = daemon_pid(name)
    (RUN_DIR / f"{name}.pid").unlink(missing_ok=True)
    if pid is not None and not busy:
        _stop(pid)
    try:
        mountpoint.rmdir()
    except OSError:
        pass


def _stop(pid: int) -> None:
    """Wait for a daemon whose file system is gone to exit; SIGTERM, then SIGKILL, if it lingers."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (a daemon started by an earlier aoe-discover is nobody's child)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ---- shared: nodes and loop devices -------------------------------------------------------------


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


def make_node(node: Path, loop: str) -> None:
    major, minor = Path(f"/sys/block/{Path(loop).name}/dev").read_text().strip().split(":")
    node.unlink(missing_ok=True)
    os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(int(major), int(minor)))


# ---- the file data path (AOE_STANDIN_DATA=file): loop over the vblade's backing file ------------


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


def same_file(loop: str, path: str) -> bool:
    listing = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-MAJ:MIN,BACK-INO", loop],
                             capture_output=True, text=True, check=False, timeout=30).stdout.split()
    try:
        st = os.stat(path)
        major, minor = (int(part) for part in listing[0].split(":"))
        return (os.makedev(major, minor), int(listing[1])) == (st.st_dev, st.st_ino)
    except (OSError, IndexError, ValueError):
        return False


def attach_file(export: dict) -> None:
    node = ETHERD / f"e{export['shelf']}.{export['slot']}"
    loop = loop_of(node)
    if loop and same_file(loop, backing_path(export)):
        return
    release(node.name)  # the export is now served from another file: the old device is gone for good
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
    make_node(node, loop)


def attach_files(answers: list[dict]) -> int:
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
            attach_file(serving[0])
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            status = fail(f"e{answer['shelf']}.{answer['slot']}: attach failed: {detail}")
    return status


# ---- the commands ---------------------------------------------------------------------------------


def discover() -> int:
    probe = os.environ.get("AOE_PROBE", "")
    if not Path(probe).is_file():
        return fail(f"the AoE probe {probe!r} is missing (lab stand-in, see docs/lab.md)")
    wire = data_path_of(os.environ.get(WRAPPER_SETTING)) == WIRE
    proc = subprocess.run(
        [sys.executable, probe, "--interface", SAN_INTERFACE, "--timeout", PROBE_TIMEOUT,
         *(["--identify"] if wire else [])],
        capture_output=True, text=True, check=False, timeout=30,
    )
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        return fail(f"the AoE probe exited {proc.returncode}")
    answers = json.loads(proc.stdout)["exports"]
    if not wire:
        return attach_files(answers)
    exports: dict[tuple[int, int], int | None] = {}
    for answer in answers:  # an export answering from two MACs is one device, as with the aoe driver
        exports.setdefault((answer["shelf"], answer["slot"]), answer["sectors"])
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    return attach_wire([(shelf, slot, sectors) for (shelf, slot), sectors in sorted(exports.items())])


def flush(args: list[str]) -> int:
    if args == ["-a"]:
        names = {p.name for p in ETHERD.iterdir() if NODE_NAME.match(p.name)} if ETHERD.is_dir() else set()
        # and exports whose node is gone but whose initiator still runs (a failed attach)
        names |= {p.stem for p in RUN_DIR.glob("e*.pid") if NODE_NAME.match(p.stem)} if RUN_DIR.is_dir() else set()
        args = sorted(names)
    status = 0
    for name in args:
        if not NODE_NAME.match(name):
            status = fail(f"{name}: not a device name like e1.0")
            continue
        release(name)
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
