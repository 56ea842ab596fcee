"""Cluster verify's network checks, compared from what the hosts said (no hosts needed)."""
from __future__ import annotations

import pytest

from hosts.models import CpuServer
from hosts.verify import CODES
from hosts.verify_networks import NetworkReality, compare
from networks.models import Network, Nic
from vms.choices import VmState
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    servers = [CpuServer.objects.create(name=n, address=f"192.0.2.{i}", libvirt_uri="test:///default",
                                        memory_mib=4096, vcpus=4) for i, n in ((1, "cpu1"), (2, "cpu2"))]
    lab = Network.objects.create(name="lab", bridge="br-guest", cidr="10.214.0.0/24", pool_start="10.214.0.100",
                                 pool_end="10.214.0.199")
    vm = VirtualMachine.objects.create(name="web1", vcpus=1, memory_mib=128, disk_mib=64, cpu_server=servers[0],
                                       state=VmState.RUNNING)
    nic = Nic.objects.create(vm=vm, network=lab, mac="02:a0:e0:00:00:01", ip="10.214.0.100")
    return servers, [nic]


def _clean() -> NetworkReality:
    return NetworkReality(bridges={"cpu1": {"br-guest": "bridge"}, "cpu2": {"br-guest": "bridge"}},
                          macs={"cpu1": {"xa-web1": ("02:a0:e0:00:00:01",)}, "cpu2": {}},
                          guest_addresses={"web1": {"02:a0:e0:00:00:01": {"10.214.0.100", "fe80::1"}}})


def test_a_cluster_as_the_panel_made_it_has_no_network_finding(world):
    servers, nics = world
    assert compare(_clean(), servers, nics) == []


def test_a_missing_bridge_a_mac_worn_twice_and_a_guest_off_its_address_are_each_a_finding(world):
    servers, nics = world
    real = _clean()
    real.bridges["cpu2"] = {}
    real.macs["cpu2"] = {"handmade": ("02:a0:e0:00:00:01",)}
    real.guest_addresses["web1"] = {"02:a0:e0:00:00:01": {"10.214.0.7"}}
    findings = {f.code: f for f in compare(real, servers, nics)}
    assert set(findings) == {"bridge-missing", "mac-used-twice", "guest-address-mismatch"}
    assert findings["bridge-missing"].message == "cpu2 has no bridge br-guest (network lab)"
    assert "handmade on cpu2" in findings["mac-used-twice"].message and "xa-web1 on cpu1" in findings[
        "mac-used-twice"].message
    assert findings["guest-address-mismatch"].message == (
        "web1's eth0 (02:a0:e0:00:00:01) has 10.214.0.7, the panel gave it 10.214.0.100")
    assert all(f.code in CODES for f in findings.values())


def test_a_host_that_did_not_answer_is_not_blamed_for_a_missing_bridge(world):
    servers, nics = world
    real = _clean()
    del real.bridges["cpu2"]
    real.unreachable.add("cpu2")
    assert compare(real, servers, nics) == []


def test_a_guest_being_migrated_may_wear_its_mac_on_two_hosts(world):
    servers, nics = world
    real = _clean()
    real.macs["cpu2"] = {"xa-web1": ("02:a0:e0:00:00:01",)}  # the target's copy, paused until switch-over
    assert [f.code for f in compare(real, servers, nics)] == ["mac-used-twice"]
    assert compare(real, servers, nics, busy=frozenset({"web1"})) == []
