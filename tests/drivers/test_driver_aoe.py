"""drivers.aoe from a CPU server: the probe over SSH, and attach / detach through the initiator.

Runs on the throw-away xat- hosts ("local") and on the lab's cpu1 + disk1 ("lab", skipped unless
the lab is up). attach/detach drive `aoe-discover` / `aoe-flush`: this kernel has no AoE initiator,
so on the local hosts a small stand-in (below) plays it, doing discovery on the wire with the
probe; in the lab it is the lab's own stand-in. The real aoetools are exercised too: without a
stand-in they fail the way they do on a host without the aoe driver.
"""
from __future__ import annotations

import time

import pytest
from conftest import Site

from drivers import aoe, vblade
from drivers.aoe import PROBE_SCRIPT
from drivers.errors import DriverError
from drivers.vblade import ExportSpec

SIZE_MIB = 32
SECTORS = SIZE_MIB * 1024 * 1024 // 512

# Test stand-ins for aoetools on a local CPU host (its /dev is a private overlay): discovery is a
# real Query Config on the SAN; every answering export gets a block node (of a loop device number
# nobody opens: only its existence and type matter to the driver).
AOE_DISCOVER = """#!/bin/sh
mkdir -p /dev/etherd
python3 {probe} --interface {interface} --timeout 0.3 | python3 -c '
import json, os, stat, sys
for export in json.load(sys.stdin)["exports"]:
    node = "/dev/etherd/e%d.%d" % (export["shelf"], export["slot"])
    if not os.path.exists(node):
        os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(7, 250))
'
"""
AOE_FLUSH = """#!/bin/sh
for device; do rm -f "/dev/etherd/$device"; done
"""


def export(site: Site, slot: int, **kwargs) -> vblade.RunningExport:
    path = f"{site.volume_dir}/aoe-{slot}.img"
    vblade.create_volume(site.disk, path, SIZE_MIB)
    return vblade.start_export(site.disk, ExportSpec(site.shelf, slot, site.disk_interface, path), **kwargs)


@pytest.fixture
def initiator(site: Site) -> Site:
    """A CPU host with an AoE initiator: the stand-in above locally, the lab's own in the lab."""
    if site.fake is not None:
        bin_dir = site.fake.cpu.state / "bin"
        (bin_dir / "aoe-discover").write_text(AOE_DISCOVER.format(probe=PROBE_SCRIPT, interface=site.cpu_interface))
        (bin_dir / "aoe-flush").write_text(AOE_FLUSH)
        for tool in ("aoe-discover", "aoe-flush"):
            (bin_dir / tool).chmod(0o755)
    return site


def cpu_has(site: Site, path: str, test: str = "-b") -> bool:
    import drivers.ssh as ssh

    return ssh.run(site.cpu, ["test", test, path], timeout=10, check=False).returncode == 0


# ---- probe ------------------------------------------------------------------------------------


def test_probe_reports_the_export_with_the_disk_servers_mac_and_size(site):
    export(site, slot=0)
    started = time.monotonic()
    answers = aoe.probe(site.cpu, site.cpu_interface, site.shelf, listen=0.5)
    assert time.monotonic() - started < 3
    assert answers == [aoe.AoEAnswer(site.shelf, 0, site.disk_mac, answers[0].bufcnt, answers[0].firmware, SECTORS)]
    assert answers[0].bufcnt > 0 and answers[0].name == f"e{site.shelf}.0"


def test_probe_filters_and_skips_identify_when_asked(site):
    for slot in (1, 2):
        export(site, slot=slot)
    answers = aoe.probe(site.cpu, site.cpu_interface, site.shelf, 2, identify=False, listen=0.5)
    assert [(a.slot, a.sectors) for a in answers] == [(2, None)]
    assert [a.slot for a in aoe.probe(site.cpu, site.cpu_interface, site.shelf, listen=0.5)] == [1, 2]


def test_probe_of_a_missing_interface_is_a_permanent_error(site):
    with pytest.raises(DriverError) as caught:
        aoe.probe(site.cpu, "xatnosuch0", listen=0.2)
    assert caught.value.permanent and "xatnosuch0" in str(caught.value)


def test_probe_refuses_a_listening_time_that_cannot_fit(site):
    with pytest.raises(DriverError) as caught:
        aoe.probe(site.cpu, site.cpu_interface, timeout=4, listen=2)
    assert caught.value.permanent


# ---- attach / detach --------------------------------------------------------------------------


def test_attach_makes_the_device_appear_and_detach_removes_it(initiator):
    site = initiator
    export(site, slot=3)
    device = f"/dev/etherd/e{site.shelf}.3"
    assert aoe.attach(site.cpu, site.shelf, 3) == device
    assert cpu_has(site, device)
    assert aoe.attach(site.cpu, site.shelf, 3) == device  # already there
    aoe.detach(site.cpu, site.shelf, 3)
    assert not cpu_has(site, device, "-e")
    aoe.detach(site.cpu, site.shelf, 3)  # already gone


def test_one_discovery_makes_every_export_a_device_for_the_attaches_after_it(initiator):
    site = initiator
    for slot in (5, 6):
        export(site, slot=slot)
    aoe.discover(site.cpu)
    devices = [f"/dev/etherd/e{site.shelf}.{slot}" for slot in (5, 6)]
    assert all(cpu_has(site, device) for device in devices)
    for slot in (5, 6):
        aoe.detach(site.cpu, site.shelf, slot)


def test_attach_of_an_export_nobody_serves_gives_up_in_time(initiator):
    site = initiator
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        aoe.attach(site.cpu, site.shelf, 7, timeout=5)
    assert time.monotonic() - started < 6
    assert not caught.value.permanent and "did not appear" in str(caught.value)


def test_attach_through_an_acl_that_excludes_this_host_never_appears(initiator):
    site = initiator
    export(site, slot=4, allowed_macs=["02:7a:00:00:00:99"])
    with pytest.raises(DriverError):
        aoe.attach(site.cpu, site.shelf, 4, timeout=5)


def test_without_an_aoe_driver_attach_fails_for_good(site):
    if site.fake is None:
        pytest.skip("the lab's CPU hosts always have the initiator stand-in")
    # The real aoetools on a kernel without the aoe driver: /dev/etherd/discover is missing.
    with pytest.raises(DriverError) as caught:
        aoe.attach(site.cpu, site.shelf, 0, timeout=5)
    assert caught.value.permanent and "aoe-discover" in str(caught.value)
    aoe.detach(site.cpu, site.shelf, 0)  # nothing attached: nothing to do, no aoe-flush needed
