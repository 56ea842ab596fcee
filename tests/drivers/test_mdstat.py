"""drivers.mdstat on /proc/mdstat captured from the lab's mirror guest (lab/guests/mirror_guest.py,
Debian 6.1 kernel, md RAID1 over vda+vdb with an internal bitmap), in tests/drivers/mdstat/:

- healthy: both legs in sync;
- degraded-leg-detached: vdb hot-unplugged (libvirt/QEMU device_del) and removed from the array;
- degraded-leg-faulty: vdb marked faulty, still listed with (F);
- recovery: vdb back (re-added), being rebuilt from vda;
- resync: both legs present, a resync (md's `repair`) under way;
- check: a scrub, which reads but does not rebuild anything.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from drivers.mdstat import DEGRADED, HEALTHY, RESYNCING, MdStatError, Member, Sync, parse_mdstat

SAMPLES = Path(__file__).parent / "mdstat"


def sample(name: str) -> str:
    return (SAMPLES / f"{name}.txt").read_text()


def test_a_healthy_mirror_with_a_bitmap():
    mdstat = parse_mdstat(sample("healthy"))
    assert mdstat.personalities == ("raid1",)
    (array,) = mdstat.arrays
    assert (array.name, array.active, array.level) == ("md0", True, "raid1")
    assert array.members == (Member("vdb", 1), Member("vda", 0))
    assert (array.slots, array.working, array.slot_map) == (2, 2, "UU")
    assert array.sync is None and array.bitmap == "1/1 pages [4KB], 65536KB chunk"
    assert array.health == HEALTHY and array.missing_slots == ()


def test_a_detached_leg_is_degraded_and_names_its_slot():
    (array,) = parse_mdstat(sample("degraded-leg-detached")).arrays
    assert array.members == (Member("vda", 0),)
    assert (array.slots, array.working, array.slot_map) == (2, 1, "U_")
    assert array.health == DEGRADED and array.missing_slots == (1,)


def test_a_faulty_leg_is_degraded_and_flagged():
    (array,) = parse_mdstat(sample("degraded-leg-faulty")).arrays
    assert array.members == (Member("vdb", 1, faulty=True), Member("vda", 0))
    assert array.health == DEGRADED and array.missing_slots == (1,)


def test_a_recovering_leg_is_resyncing_with_percent_eta_and_speed():
    (array,) = parse_mdstat(sample("recovery")).arrays
    assert array.sync == Sync("recovery", 25.3, pytest.approx(12.0), 1386)
    # The leg being rebuilt is not a copy yet: still the missing slot.
    assert array.health == RESYNCING and array.missing_slots == (1,)


def test_a_resync_of_a_whole_array_is_resyncing():
    (array,) = parse_mdstat(sample("resync")).arrays
    assert array.sync == Sync("resync", 4.7, pytest.approx(18.0), 1536)
    assert array.health == RESYNCING and array.missing_slots == ()


def test_a_check_is_a_scrub_not_a_rebuild():
    (array,) = parse_mdstat(sample("check")).arrays
    assert array.sync is not None and array.sync.action == "check" and array.sync.percent == 19.0
    assert array.health == HEALTHY


def test_the_array_on_the_guests_disks_is_found_among_others():
    text = sample("healthy").replace(
        "\nunused devices", "\nmd1 : active raid1 sdb1[1] sda1[0]\n      1024 blocks super 1.2 [2/2] [UU]\n"
        "\nunused devices")
    mdstat = parse_mdstat(text)
    assert [a.name for a in mdstat.arrays] == ["md0", "md1"]
    assert mdstat.array_on(("sda",)).name == "md1"
    assert mdstat.array_on(("vda", "vdb")).name == "md0"
    assert mdstat.array_on(("xvda",)) is None  # two arrays, none on these disks: no guess


def test_no_array_at_all():
    mdstat = parse_mdstat("Personalities : \nunused devices: <none>\n")
    assert mdstat.arrays == () and mdstat.array_on(("vda",)) is None


def test_something_else_is_refused():
    with pytest.raises(MdStatError):
        parse_mdstat("cat: /proc/mdstat: No such file or directory\n")
