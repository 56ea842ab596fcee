"""The lab cluster: hosts reachable the way the panel reaches real ones, the AoE stand-in, a guest on
an AoE disk, and a clean `lab down`. Needs root; the last test takes the lab down and up again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from drivers.errors import DriverError
from drivers.ssh import run
from lab import cluster
from lab.hostproc import host_pids, kill_hosts
from lab.standin.aoe_standin import FUSE_FILE_PREFIX
from lab.system import pid_alive
from lab.topology import HOSTS, MGMT_BRIDGE, SAN_BRIDGE, host, lab_dir, panel_known_hosts

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
GUEST_XML = """<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/etherd/{device}'/><target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


def _known_hosts_line(name: str) -> str:
    address = host(name).address
    return next(line for line in panel_known_hosts().read_text().splitlines() if line.startswith(address + " "))


def test_status_json_lists_every_host(lab_cluster):
    proc = subprocess.run([sys.executable, "manage.py", "lab", "status", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    data = json.loads(proc.stdout)
    assert list(data) == ["hosts"]
    by_name = {h["name"]: h for h in data["hosts"]}
    assert sorted(by_name) == ["client", "cpu1", "cpu2", "disk1", "disk2"]
    client = by_name["client"]  # somebody on the guests' network, to reach VMs by their address
    assert (client["role"], client["netns"], client["address"]) == ("client", "xa-client", "10.214.0.1")
    for lab_host in HOSTS:
        entry = by_name[lab_host.name]
        expected = {"name", "role", "address", "netns", "partitioned", "san_partitioned"} | (
            {"libvirt_uri"} if lab_host.role == "cpu" else set())
        assert set(entry) == expected
        assert entry["partitioned"] is False and entry["san_partitioned"] is False
        assert (entry["role"], entry["address"], entry["netns"]) == (lab_host.role, lab_host.address,
                                                                     f"xa-{lab_host.name}")
    assert by_name["cpu1"]["libvirt_uri"].startswith("qemu+libssh2://root@10.213.0.21/system?")


@pytest.mark.parametrize("name", [h.name for h in HOSTS])
def test_host_answers_ssh_as_itself_with_a_private_san_link(on_host, name):
    out = on_host(name, "hostname; cat /sys/class/net/san0/mtu; ip -o addr show dev san0; ip -o -4 addr show mgmt0")
    lines = out.stdout.splitlines()
    assert lines[0] == name
    assert lines[1] == "9000"
    assert not any(" inet" in line for line in lines[2:-1]), "san0 must carry no IP address"
    assert f"inet {host(name).address}/24" in lines[-1]


def test_lab_bridges_are_management_with_ip_and_san_without(lab_cluster):
    mgmt = subprocess.run(["ip", "-o", "addr", "show", "dev", MGMT_BRIDGE], capture_output=True, text=True).stdout
    san = subprocess.run(["ip", "-o", "addr", "show", "dev", SAN_BRIDGE], capture_output=True, text=True).stdout
    assert "inet 10.213.0.1/24" in mgmt
    assert "inet" not in san
    assert Path(f"/sys/class/net/{SAN_BRIDGE}/mtu").read_text().strip() == "9000"


def test_ssh_refuses_a_host_whose_key_is_not_known(lab_cluster, strict_target):
    with pytest.raises(DriverError, match="(?i)host key"):
        run(strict_target("disk1", ""), ["true"], timeout=15)
    # disk2's key presented as disk1's: a changed key is refused too.
    impostor = _known_hosts_line("disk2").replace(host("disk2").address, host("disk1").address, 1)
    with pytest.raises(DriverError, match="(?i)host key"):
        run(strict_target("disk1", impostor + "\n"), ["true"], timeout=15)
    assert run(strict_target("disk1", _known_hosts_line("disk1") + "\n"), ["true"], timeout=15).returncode == 0


def test_registration_is_idempotent_and_matches_the_lab(lab_cluster, lab_hosts):
    from hosts.models import CpuServer, DiskServer
    from lab.register import register_hosts

    before = {s.name: s.pk for s in [*lab_hosts["cpu"], *lab_hosts["disk"]]}
    register_hosts(lab_cluster)
    assert {s.name: s.pk for s in [*CpuServer.objects.all(), *DiskServer.objects.all()]} == before
    disk1 = DiskServer.objects.get(name="disk1")
    assert (disk1.address, disk1.aoe_shelf, disk1.san_interface, disk1.volume_dir, disk1.capacity_mib) == (
        "10.213.0.11", 1, "san0", "/srv/xenaoe/volumes", 20480)
    assert DiskServer.objects.get(name="disk2").aoe_shelf == 2
    cpu2 = CpuServer.objects.get(name="cpu2")
    assert (cpu2.address, cpu2.hypervisor, cpu2.memory_mib, cpu2.vcpus) == ("10.213.0.22", "qemu", 4096, 4)
    assert cpu2.libvirt_uri == lab_cluster.host("cpu2").libvirt_uri


def test_libvirt_answers_through_the_registered_uri(lab_hosts):
    for cpu in lab_hosts["cpu"]:
        started = time.monotonic()
        conn = libvirt.open(cpu.libvirt_uri)
        try:
            assert conn.getHostname() == cpu.name
            conn.listAllDomains()
        finally:
            conn.close()
        assert time.monotonic() - started < 5


def test_libvirt_refuses_a_host_whose_key_is_not_known(lab_cluster, tmp_path):
    uri = lab_cluster.host("cpu1").libvirt_uri
    for name, text in {"empty": "", "other": _known_hosts_line("cpu2").replace("10.213.0.22", "10.213.0.21")}.items():
        known = tmp_path / name
        known.write_text(text + "\n")
        with pytest.raises(libvirt.libvirtError):
            libvirt.open(uri.replace(f"known_hosts={panel_known_hosts()}", f"known_hosts={known}"))
        assert known.read_text() == text + "\n", "a refused key must not be added to the file"


def test_guest_starts_on_an_aoe_disk_discovered_over_the_san(lab_cluster, on_host, vblade):
    vblade("disk1", 1, 0)
    on_host("cpu1", "aoe-discover")
    size = on_host("cpu1", "test -b /dev/etherd/e1.0 && blockdev --getsize64 /dev/etherd/e1.0").stdout.strip()
    assert size == str(16 * 1024 * 1024)
    conn = libvirt.open(lab_cluster.host("cpu1").libvirt_uri)
    try:
        dom = conn.createXML(GUEST_XML.format(name="lab-test-guest", device="e1.0"), 0)
        try:
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        finally:
            dom.destroy()
    finally:
        conn.close()
        on_host("cpu1", "aoe-flush e1.0")


def test_aoe_standin_attach_is_idempotent_and_flush_detaches(on_host, vblade):
    volume = vblade("disk2", 2, 3)
    on_host("cpu2", "aoe-discover && aoe-discover")
    listing = on_host("cpu2", "ls /dev/etherd; losetup --list --noheadings -O BACK-FILE").stdout.split()
    assert listing.count("e2.3") == 1
    fuse_file = f"/run/aoe-standin/e2.3/{FUSE_FILE_PREFIX}e2.3"  # the stand-in's initiator serves it
    assert listing.count(fuse_file) == 1, "discovering twice must not attach twice"
    assert "e2.3" not in on_host("cpu1", "ls /dev/etherd").stdout, "each CPU host has its own /dev/etherd"
    on_host("cpu2", "echo written-through-aoe | dd of=/dev/etherd/e2.3 oflag=direct bs=512 conv=sync status=none")
    assert on_host("disk2", f"head -c 20 {volume}").stdout == "written-through-aoe\n"
    on_host("cpu2", "aoe-flush e2.3")
    listing = on_host("cpu2", "ls /dev/etherd; losetup --list --noheadings -O BACK-FILE").stdout.split()
    assert "e2.3" not in listing and fuse_file not in listing


def test_a_vblade_mac_acl_hides_the_export_from_other_hosts(on_host, vblade):
    cpu2_mac = on_host("cpu2", "cat /sys/class/net/san0/address").stdout.strip()
    vblade("disk1", 1, 7, options=f"-m {cpu2_mac}")
    on_host("cpu1", "aoe-discover")
    on_host("cpu2", "aoe-discover")
    assert "e1.7" not in on_host("cpu1", "ls /dev/etherd").stdout
    assert "e1.7" in on_host("cpu2", "ls /dev/etherd").stdout
    on_host("cpu2", "aoe-flush -a")


def test_disk_hosts_see_no_aoe_devices(on_host, vblade):
    vblade("disk1", 1, 5)
    on_host("cpu1", "aoe-discover")
    try:
        for disk in ("disk1", "disk2"):
            assert on_host(disk, "ls -A /dev/etherd 2>/dev/null || true").stdout == ""
    finally:
        on_host("cpu1", "aoe-flush e1.5")


def test_guest_live_migrates_peer_to_peer_between_the_cpu_hosts(lab_cluster, on_host, vblade):
    vblade("disk2", 2, 1)
    for cpu in ("cpu1", "cpu2"):
        on_host(cpu, "aoe-discover")
    # Each CPU host reaches the other with its own key, the peer's host key verified.
    peer = on_host("cpu1", "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes root@10.213.0.22 hostname")
    assert peer.stdout.strip() == "cpu2"
    source = libvirt.open(lab_cluster.host("cpu1").libvirt_uri)
    target = libvirt.open(lab_cluster.host("cpu2").libvirt_uri)
    dom = source.createXML(GUEST_XML.format(name="lab-test-migrate", device="e2.1"), 0)
    try:
        dom.migrateToURI3("qemu+ssh://root@10.213.0.22/system", {},
                          libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER)
        assert target.lookupByName("lab-test-migrate").state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert "lab-test-migrate" not in [d.name() for d in source.listAllDomains()]
    finally:
        for conn in (source, target):
            for running in conn.listAllDomains():
                if running.name() == "lab-test-migrate":
                    running.destroy()
            conn.close()
        for cpu in ("cpu1", "cpu2"):
            on_host(cpu, "aoe-flush e2.1")


def test_a_restarted_disk_host_restores_its_exports(lab_cluster, on_host):
    from drivers import vblade as vblade_driver
    from lab.hostproc import ssh_target

    disk1 = ssh_target(host("disk1"))
    volume = "/srv/xenaoe/volumes/lab-test-restore.img"
    vblade_driver.create_volume(disk1, volume, 8)
    vblade_driver.start_export(disk1, vblade_driver.ExportSpec(1, 4, "san0", volume))
    try:
        cluster.kill_host("disk1")
        cluster.up(out=lambda line: None)
        assert [e.name for e in vblade_driver.list_exports(disk1)] == ["e1.4"]
        on_host("cpu1", "aoe-discover && test -b /dev/etherd/e1.4 && aoe-flush e1.4")
    finally:
        vblade_driver.stop_export(disk1, 1, 4)
        vblade_driver.remove_volume(disk1, volume)


def test_up_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(cluster.NotRoot, match="needs root"):
        cluster.up()
    with pytest.raises(cluster.NotRoot, match="needs root"):
        cluster.down()


def test_up_keeps_healthy_hosts_and_restarts_a_dead_one(lab_cluster):
    anchors = {h.name: (h.state_dir / "anchor.pid").read_text() for h in HOSTS}
    kill_hosts([host("disk2")], grace=0)  # pull disk2's plug: its namespace and links stay behind
    assert "disk2" not in {h.name for h in cluster.status().hosts}
    assert cluster.up(out=lambda line: None).complete
    after = {h.name: (h.state_dir / "anchor.pid").read_text() for h in HOSTS}
    assert {n for n in anchors if anchors[n] == after[n]} == {"disk1", "cpu1", "cpu2"}


def test_down_leaves_no_namespace_link_process_or_mount(lab_cluster, on_host, vblade):
    """Runs last: takes the lab down (with an export, an attached device and a guest running),
    checks, and brings the lab back for the rest of the session."""
    vblade("disk1", 1, 9)
    on_host("cpu1", "aoe-discover")
    conn = libvirt.open(lab_cluster.host("cpu1").libvirt_uri)
    conn.createXML(GUEST_XML.format(name="lab-test-down", device="e1.9"), 0)
    conn.close()
    lab_pids = [pid for h in HOSTS for pid in host_pids(h.netns, h)]
    assert len(lab_pids) > 10
    said: list[str] = []
    cluster.down(out=said.append)
    try:
        assert not [ns for ns in _netns() if ns.startswith("xa-")]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert " xa-" not in links
        mounts = Path("/proc/mounts").read_text()
        assert str(lab_dir()) not in mounts
        left = sorted(p.name for p in Path("/dev/etherd").iterdir()) if Path("/dev/etherd").exists() else None
        assert left is None, f"/dev/etherd kept, holding {left}; lab down said {said}"
        assert [pid for pid in lab_pids if pid_alive(pid)] == []
        loops = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"], capture_output=True,
                               text=True, check=True).stdout
        assert "/srv/xenaoe" not in loops and FUSE_FILE_PREFIX not in loops
        assert cluster.status().hosts == []
    finally:
        cluster.up(out=lambda line: None)


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
