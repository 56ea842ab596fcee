"""A fleet of light hosts, for benches at a site's scale: N network namespaces that run only sshd.

    up(cpus, disks) -> hosts   rebuilds the whole fleet (what an earlier run left is removed first)
    down()                     removes every namespace, link, process and mount the fleet made
    kill(host) / boot(host)    pull a host's plug (silence, not refusal) / start it again
    running() -> hosts         the fleet's hosts whose anchor runs and whose links are there
    recorded() -> hosts        the hosts the last `up` made

Everything is the fleet's own, apart from the main lab (lab/cluster.py) which may run beside it:
namespaces, bridges and veths named `xf-*` (the lab's are `xa-*`, and `lab up` removes `xa-*`
strays only), addresses in 10.215.0.0/16 (the lab's are 10.213/10.214), state under
LAB_DIR/fleet, its own known_hosts file. It shares with the lab only the panel's key (read) and
the panel's ControlMaster directory (one socket per address).

A light host is what the monitor needs of a host: sshd with a host key the panel verifies, and on
CPU hosts libvirt through qemu+libssh2://. One libvirtd, in a namespace of its own, serves every CPU
host: its /run/libvirt is a directory of the fleet's that each CPU host also mounts at /run/libvirt
(a unix socket is reached by path, whatever the network namespace), so a libvirt connection to a CPU
host goes panel -> that host's sshd -> virt-ssh-helper -> the shared libvirtd. Every host also has a
SAN link (`san0`, on the fleet's own layer-2 bridge, where no disk server exports anything), so that
the monitor's AoE probe runs and answers as on a CPU server that has no exports to see. Not modelled:
guests, vblade and exports, BMCs (see docs/lab.md, "The fleet").
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.conf import settings

from drivers.ssh import SSHTarget
from lab import hostconfig
from lab.hostproc import close_control_masters, pids_in_namespaces
from lab.mountpoints import is_mountpoint, load_state, save_state
from lab.system import SYSTEM_PATH, LabError, ip_batch, kill_and_wait, link_exists, netns_names, pid_alive, read_pid, sh
from lab.topology import LAB_CODE_DIR, lab_dir, panel_identity

PREFIX = "xf-"
MGMT_BRIDGE = f"{PREFIX}mgmt"
SAN_BRIDGE = f"{PREFIX}san"
GATEWAY = "10.215.0.1"
NET_PREFIX = 16
MAX_PER_ROLE = 250  # CPU hosts 10.215.1.N, disk hosts 10.215.2.N
START_TIMEOUT = 60.0
Output = Callable[[str], None]


@dataclass(frozen=True)
class FleetHost:
    name: str  # fc001 (CPU), fd001 (disk), libvirtd (the shared libvirtd)
    role: Literal["cpu", "disk", "libvirt"]
    address: str = ""

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def mgmt_veth(self) -> str:
        return f"{PREFIX}{self.name}-m"

    @property
    def san_veth(self) -> str:
        return f"{PREFIX}{self.name}-s"

    @property
    def state_dir(self) -> Path:
        return fleet_dir() / "hosts" / self.name

    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def libvirt_uri(self) -> str:
        """As the lab's CPU hosts' (lab/topology.py), verified against the fleet's known_hosts."""
        return (f"qemu+libssh2://root@{self.address}/system?keyfile={panel_identity()}"
                f"&known_hosts={known_hosts()}&known_hosts_verify=normal&sshauth=privkey")

    def mac(self, network: int) -> str:
        """02:0a:d7:NN:RR:HH - 0a:d7 is 10.215; NN the network (0 management, 1 SAN), RR.HH the address."""
        third, fourth = (int(part) for part in self.address.split(".")[2:])
        return f"02:0a:d7:{network:02x}:{third:02x}:{fourth:02x}"


LIBVIRTD = FleetHost("libvirtd", "libvirt")


def fleet_hosts(cpus: int, disks: int) -> list[FleetHost]:
    if not (0 <= cpus <= MAX_PER_ROLE and 0 <= disks <= MAX_PER_ROLE):
        raise LabError(f"a fleet holds 0 to {MAX_PER_ROLE} CPU hosts and as many disk hosts")
    return ([FleetHost(f"fc{n:03d}", "cpu", f"10.215.1.{n}") for n in range(1, cpus + 1)]
            + [FleetHost(f"fd{n:03d}", "disk", f"10.215.2.{n}") for n in range(1, disks + 1)])


def fleet_dir() -> Path:
    return lab_dir() / "fleet"


def known_hosts() -> Path:
    """The fleet's hosts' keys by address: the panel's SSH_KNOWN_HOSTS_FILE while it talks to them."""
    return fleet_dir() / "known_hosts"


def ssh_target(host: FleetHost) -> SSHTarget:
    return SSHTarget(host=host.address, name=host.name, identity_file=panel_identity(),
                     known_hosts_file=known_hosts(), control_dir=Path(settings.SSH_CONTROL_DIR))


# --- up -----------------------------------------------------------------------------------------

def up(cpus: int, disks: int, *, out: Output = print) -> list[FleetHost]:
    _require_root()
    started = time.monotonic()
    down(out=lambda line: None)
    hosts = fleet_hosts(cpus, disks)
    _prepare(hosts)
    _save_state({"hosts": [[h.name, h.role, h.address] for h in hosts],
                 "made_run_netns": not is_mountpoint("/run/netns"),
                 "made_run_netns_dir": not Path("/run/netns").exists()})
    _create_bridges()
    _create_networks(hosts)
    if cpus:
        sh(["ip", "netns", "add", LIBVIRTD.netns])  # no links: reached through its socket only
        _launch(LIBVIRTD)
        _wait_ready([LIBVIRTD])
    for host in hosts:
        _launch(host)
    _wait_ready(hosts)
    out(f"fleet of {cpus} CPU and {disks} disk hosts up in {time.monotonic() - started:.1f} s "
        f"(10.215.1.1-{cpus}, 10.215.2.1-{disks}; known_hosts {known_hosts()})")
    return hosts


def _prepare(hosts: list[FleetHost]) -> None:
    """Keys (kept across runs, like a real host's), sshd configurations, the shared libvirtd's files."""
    base = fleet_dir()
    for sub in ("hosts", "libvirt"):
        (base / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    (base / "empty").write_text("")
    hostconfig.ensure_key(panel_identity(), "xenaoe-panel")
    (base / "authorized_keys").write_text(hostconfig.public_key(panel_identity()) + "\n")
    for host in hosts:
        host.state_dir.mkdir(exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda h: hostconfig.ensure_key(h.host_key, f"root@{h.name}"), hosts))
    for host in hosts:
        (host.state_dir / "sshd_config").write_text(hostconfig.sshd_config(
            host.name, host.address, host.host_key, base / "authorized_keys", "/run/sshd.pid"))
    known_hosts().write_text("".join(
        f"{h.address} {' '.join(hostconfig.public_key(h.host_key).split()[:2])}\n" for h in hosts))
    libvirt = base / "libvirt"
    shutil.rmtree(libvirt / "run", ignore_errors=True)  # a killed libvirtd's socket and state
    for sub in ("etc", "lib", "log", "cache", "run"):
        (libvirt / sub).mkdir(exist_ok=True)
    hostconfig.copy_etc_libvirt(libvirt / "etc")
    # One libvirtd stands for every CPU host's: room for all of them connecting at once.
    hostconfig.write_libvirt_config(
        libvirt / "etc", str(uuid.uuid5(hostconfig.LAB_UUID_NAMESPACE, "fleet-libvirtd")),
        "max_clients = 5000\nmax_anonymous_clients = 1000\nmax_queued_clients = 1000\n"
        "min_workers = 8\nmax_workers = 64\nmax_client_requests = 10\n")
    LIBVIRTD.state_dir.mkdir(exist_ok=True)


def _create_bridges() -> None:
    ip_batch([
        f"link add {MGMT_BRIDGE} type bridge forward_delay 0",
        f"link add {SAN_BRIDGE} type bridge forward_delay 0",
        f"addr add {GATEWAY}/{NET_PREFIX} dev {MGMT_BRIDGE}",
        f"link set {MGMT_BRIDGE} up",
        f"link set {SAN_BRIDGE} addrgenmode none",
        f"link set {SAN_BRIDGE} up",
    ])


def _create_networks(hosts: list[FleetHost]) -> None:
    """Namespaces and veths in one `ip -batch`; each host's own side in one more per host."""
    commands = []
    for host in hosts:
        commands += [
            f"netns add {host.netns}",
            f"link add {host.mgmt_veth} type veth peer name mgmt0 netns {host.netns} address {host.mac(0)}",
            f"link add {host.san_veth} type veth peer name san0 netns {host.netns} address {host.mac(1)}",
            f"link set {host.mgmt_veth} addrgenmode none master {MGMT_BRIDGE} up",
            f"link set {host.san_veth} addrgenmode none master {SAN_BRIDGE} up",
        ]
    ip_batch(commands)
    for host in hosts:
        ip_batch(["link set lo up", "link set mgmt0 addrgenmode none", "link set san0 addrgenmode none",
                  f"addr add {host.address}/{NET_PREFIX} dev mgmt0", "link set mgmt0 up", "link set san0 up"],
                 netns=host.netns)


def _launch(host: FleetHost) -> None:
    for name in ("anchor.pid", "ready"):
        (host.state_dir / name).unlink(missing_ok=True)
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/root", "FLEET_HOST": host.name,
           "FLEET_ROLE": host.role, "FLEET_STATE": str(host.state_dir), "FLEET_EMPTY": str(fleet_dir() / "empty"),
           "FLEET_LIBVIRT": str(fleet_dir() / "libvirt")}
    with (host.state_dir / "init.log").open("ab") as log:
        subprocess.run(["setsid", "--fork", "ip", "netns", "exec", host.netns,
                        "unshare", "--mount", "--uts", "--propagation", "private",
                        "/bin/sh", str(LAB_CODE_DIR / "fleetinit.sh")],
                       env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=10)


def _wait_ready(hosts: list[FleetHost]) -> None:
    """Each host wrote `ready` (its daemon started) and, unless it is the libvirtd, sshd accepts."""
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(hosts)
    while pending:
        pending = [h for h in pending if not ((h.state_dir / "ready").exists() and _listening(h))]
        for host in pending:
            anchor = read_pid(host.state_dir / "anchor.pid")
            if anchor is not None and not pid_alive(anchor):
                log = (host.state_dir / "init.log").read_text(errors="replace")[-2000:]
                raise LabError(f"fleet host {host.name} failed to start:\n{log}")
        if pending and time.monotonic() > deadline:
            raise LabError(f"{len(pending)} fleet hosts did not start in {START_TIMEOUT:g} s "
                           f"(first: {pending[0].name})")
        if pending:
            time.sleep(0.05)


def _listening(host: FleetHost) -> bool:
    if not host.address:
        return True
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host.address, 22)) == 0


# --- the state of one host ----------------------------------------------------------------------

def running() -> list[FleetHost]:
    """The recorded fleet's hosts whose anchor lives and whose links are up."""
    found = []
    for host in recorded():
        anchor = read_pid(host.state_dir / "anchor.pid")
        if (anchor is not None and pid_alive(anchor) and (host.state_dir / "ready").exists()
                and Path("/run/netns", host.netns).exists() and link_exists(host.mgmt_veth)):
            found.append(host)
    return found


def kill(host: FleetHost) -> None:
    """Pull the host's plug: its own ends of its links go down first (a machine without power
    answers no ARP and sends no RST, so the panel sees silence, not a refused connection), then
    every process in it is SIGKILLed. The namespace and both veths stay, as the lab's `lab kill`."""
    _require_root()
    ip_batch(["link set mgmt0 down", "link set san0 down"], netns=host.netns)
    left = kill_and_wait(pids_in_namespaces([host.netns]), timeout=0)
    if left:
        raise LabError(f"processes of {host.name} survived SIGKILL: {left}")


def boot(host: FleetHost) -> None:
    """Start a killed host again: links up, its daemon started, sshd accepting."""
    _require_root()
    kill_and_wait(pids_in_namespaces([host.netns]), timeout=0)
    ip_batch(["link set mgmt0 up", "link set san0 up"], netns=host.netns)
    _launch(host)
    _wait_ready([host])


# --- down ---------------------------------------------------------------------------------------

def down(*, out: Output = print) -> None:
    """Remove everything `up` made; harmless when nothing is up. Found by name (`xf-*`), so a run
    that crashed before recording its state is cleaned up too."""
    _require_root()
    started = time.monotonic()
    state = _load_state()
    made = recorded()
    namespaces = [ns for ns in netns_names() if ns.startswith(PREFIX)]
    close_control_masters([h.address for h in made if h.address])
    left = kill_and_wait(pids_in_namespaces(namespaces), timeout=1.0)
    if left:
        raise LabError(f"fleet processes survived SIGKILL: {left}")
    # Namespaces first: the kernel then removes their veths in batches (~0.1 s for hundreds), where
    # one `link del` per veth waits for the network's grace period each (~20 ms: 8 s for a fleet).
    ip_batch([f"netns del {ns}" for ns in namespaces])
    deadline = time.monotonic() + 30
    while _veths() and time.monotonic() < deadline:
        time.sleep(0.05)
    ip_batch([f"link del {link}" for link in [*_veths(), MGMT_BRIDGE, SAN_BRIDGE] if link_exists(link)])
    for host in [*made, LIBVIRTD]:
        for name in ("anchor.pid", "ready"):
            (host.state_dir / name).unlink(missing_ok=True)
    if state.get("made_run_netns") and not netns_names():  # else the lab's, or someone else's
        if is_mountpoint("/run/netns"):
            sh(["umount", "/run/netns"])
        if state.get("made_run_netns_dir"):
            Path("/run/netns").rmdir()
    _save_state({})
    if made or namespaces:
        out(f"fleet down in {time.monotonic() - started:.1f} s ({len(namespaces)} namespaces removed)")


# --- helpers -------------------------------------------------------------------------------------

def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the fleet needs root: it creates network namespaces, bridges and veth links")


def _veths() -> list[str]:
    return [link for link in os.listdir("/sys/class/net")
            if link.startswith(PREFIX) and link not in (MGMT_BRIDGE, SAN_BRIDGE)]


def _state_file() -> Path:
    return fleet_dir() / "state.json"


def _load_state() -> dict:
    return load_state(_state_file())


def _save_state(state: dict) -> None:
    save_state(_state_file(), state)


def recorded() -> list[FleetHost]:
    """The hosts the last `up` made (running or not)."""
    return [FleetHost(name, role, address) for name, role, address in _load_state().get("hosts", [])]
