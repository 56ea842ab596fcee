"""What runs for a lab host outside its own files: its processes, the panel's SSH connections to
it, and the loop devices the AoE stand-in attached for it."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from django.conf import settings

from drivers.ssh import SSHTarget, ssh_options
from lab.standin.aoe_standin import FUSE_FILE_PREFIX
from lab.system import LabError, kill_and_wait, sh
from lab.topology import LabHost, lab_dir, panel_identity, panel_known_hosts


def ssh_target(lab_host: LabHost) -> SSHTarget:
    """How the panel reaches a lab host (the same files `hosts.targets.ssh_target` uses by default)."""
    return SSHTarget(
        host=lab_host.address,
        identity_file=panel_identity(),
        known_hosts_file=panel_known_hosts(),
        control_dir=Path(settings.SSH_CONTROL_DIR),
    )


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _processes_by_netns() -> dict[int, list[int]]:
    by_inode: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            inode = _netns_inode(f"/proc/{entry.name}/ns/net")
            if inode is not None:
                by_inode.setdefault(inode, []).append(int(entry.name))
    return by_inode


def _anchor_netns(lab_host: LabHost) -> int | None:
    """The network namespace of the host's anchor, even if its /run/netns name is gone (a crashed
    run, a deleted mount); the environment check guards against a recycled pid."""
    try:
        pid = int((lab_host.state_dir / "anchor.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if f"LAB_HOST={lab_host.name}".encode() not in environ:
        return None
    return _netns_inode(f"/proc/{pid}/ns/net")


def host_pids(netns: str, lab_host: LabHost | None = None) -> list[int]:
    """Every process in the named namespace (and in the namespace of the host's anchor)."""
    inodes = {_netns_inode(f"/run/netns/{netns}")}
    if lab_host is not None:
        inodes.add(_anchor_netns(lab_host))
    inodes.discard(None)
    inodes.discard(_netns_inode("/proc/self/ns/net"))  # never the root namespace
    by_inode = _processes_by_netns()
    return sorted(pid for inode in inodes for pid in by_inode.get(inode, []))


def pids_in_namespaces(netns_names: list[str]) -> list[int]:
    """Every process in any of the named namespaces, from one pass over /proc (a fleet has hundreds)."""
    inodes = {_netns_inode(f"/run/netns/{name}") for name in netns_names}
    inodes.discard(None)
    inodes.discard(_netns_inode("/proc/self/ns/net"))  # never the root namespace
    by_inode = _processes_by_netns()
    return sorted(pid for inode in inodes for pid in by_inode.get(inode, []))


def kill_hosts(hosts: list[LabHost], grace: float) -> None:
    pids = [pid for lab_host in hosts for pid in host_pids(lab_host.netns, lab_host)]
    left = kill_and_wait(pids, timeout=grace)
    if left:
        raise LabError(f"processes survived SIGKILL: {left}")


def close_control_masters(addresses: list[str]) -> None:
    """End the panel's ssh ControlMaster processes for the hosts at these addresses (they would
    linger up to ControlPersist seconds after the host is gone)."""
    control_dir = Path(settings.SSH_CONTROL_DIR)
    if not control_dir.is_dir() or not any(control_dir.iterdir()):
        return
    options = ssh_options(SSHTarget(host="", identity_file=panel_identity(), known_hosts_file=panel_known_hosts(),
                                    control_dir=control_dir))
    procs = [
        subprocess.Popen(["ssh", *options, "-O", "exit", address],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for address in addresses
    ]
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def detach_lab_loops() -> None:
    """Detach every loop device the AoE stand-in attached: over one of its FUSE files (by name), or
    over one of the lab hosts' files (its file data path). A host killed without `aoe-flush`
    leaves them behind."""
    listing = sh(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"], check=False).stdout
    for loop in json.loads(listing or '{"loopdevices": []}')["loopdevices"]:
        back_file = (loop.get("back-file") or "").removesuffix(" (deleted)")
        if os.path.basename(back_file).startswith(FUSE_FILE_PREFIX):
            sh(["losetup", "--detach", loop["name"]], check=False)
    lab_files = set()
    for root, _dirs, files in os.walk(lab_dir() / "hosts"):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name), follow_symlinks=False)
            except OSError:
                continue
            lab_files.add((st.st_dev, st.st_ino))
    if not lab_files:
        return
    listing = sh(["losetup", "--list", "--json", "-O", "NAME,BACK-INO,BACK-MAJ:MIN"], check=False).stdout
    for loop in json.loads(listing or '{"loopdevices": []}')["loopdevices"]:
        try:
            major, minor = (int(part) for part in loop["back-maj:min"].strip().split(":"))
            key = (os.makedev(major, minor), int(loop["back-ino"]))
        except (KeyError, TypeError, ValueError):
            continue
        if key in lab_files:
            sh(["losetup", "--detach", loop["name"]], check=False)
