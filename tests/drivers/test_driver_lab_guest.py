"""All drivers together in the lab: a QEMU guest on cpu1 whose disk is an AoE export of disk1.

Lab only (skipped unless the lab is up): it needs the lab's libvirtd and its initiator stand-in.
"""
from __future__ import annotations

import uuid

import pytest
from conftest import LAB_IDENTITY, LAB_KNOWN_HOSTS, Site

from drivers import aoe, vblade
from drivers import hypervisor as hv
from drivers.vblade import ExportSpec

SLOT = 7


@pytest.mark.lab  # indirect parametrisation replaces the fixture's params, and with them its marks
@pytest.mark.parametrize("site", ["lab"], indirect=True)
def test_a_guest_runs_on_an_aoe_export_and_everything_is_undone(site: Site):
    uri = (f"qemu+libssh2://root@{site.cpu.host}/system?keyfile={LAB_IDENTITY}&known_hosts={LAB_KNOWN_HOSTS}"
           "&known_hosts_verify=normal&sshauth=privkey")
    path = f"{site.volume_dir}/guest.img"
    name = f"xat-guest-{uuid.uuid4().hex[:6]}"
    vblade.create_volume(site.disk, path, 16)
    vblade.start_export(site.disk, ExportSpec(site.shelf, SLOT, site.disk_interface, path))
    try:
        device = aoe.attach(site.cpu, site.shelf, SLOT)
        spec = hv.DomainSpec(name, str(uuid.uuid4()), 1, 64, (device,), "qemu")
        assert hv.define(uri, hv.domain_xml(spec)).state == "shutoff"
        assert hv.start(uri, name).state == "running"
        assert hv.DomainInfo(name, spec.uuid, "running", True) in hv.list_domains(uri)
    finally:
        hv.destroy(uri, name)
        hv.undefine(uri, name)
        aoe.detach(site.cpu, site.shelf, SLOT)
        vblade.stop_export(site.disk, site.shelf, SLOT)
        vblade.remove_volume(site.disk, path)
    assert hv.domain_info(uri, name) is None
