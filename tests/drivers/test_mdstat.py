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

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mdstat import (
    DEGRADED,
    HEALTHY,
    MAX_ETA_S,
    MAX_NAME,
    MAX_PERSONALITIES,
    MAX_SLOTS,
    MAX_SPEED_KIB_S,
    RESYNCING,
    MdStatError,
    Member,
    Sync,
    parse_mdstat,
)

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


# --- hostile input: the guest is the tenant's, and so is its /proc/mdstat -----------------------
# Every field comes out bounded or absent; anything else is MdStatError, never another exception.

def test_an_endless_finish_is_no_eta_and_the_resync_still_counts():
    text = sample("recovery").replace("finish=0.2min", f"finish={'9' * 400}min")
    (array,) = parse_mdstat(text).arrays
    assert array.sync == Sync("recovery", 25.3, None, 1386)
    assert array.health == RESYNCING


@pytest.mark.parametrize("finish", ["1.2.3", "99999999", "0.0.0.0"])
def test_a_finish_that_is_no_number_or_beyond_any_real_resync_is_no_eta(finish):
    (array,) = parse_mdstat(sample("recovery").replace("finish=0.2min", f"finish={finish}min")).arrays
    assert array.sync is not None and array.sync.eta_s is None and array.sync.percent == 25.3


@pytest.mark.parametrize("percent", ["250.0", "9" * 400, "1.2.3"])
def test_a_percent_outside_0_to_100_is_no_percent(percent):
    (array,) = parse_mdstat(sample("recovery").replace("25.3%", f"{percent}%")).arrays
    assert array.sync is not None and array.sync.percent is None and array.health == RESYNCING


def test_an_impossible_speed_is_no_speed():
    (array,) = parse_mdstat(sample("recovery").replace("speed=1386K", f"speed={'9' * 300}K")).arrays
    assert array.sync is not None and array.sync.speed_kib_s is None and array.sync.eta_s == pytest.approx(12.0)


def test_unicode_digits_are_not_numbers():
    # Python's \d and int() take "٢" (Arabic-Indic two); md never prints them.
    (array,) = parse_mdstat(sample("healthy").replace("[2/2]", "[\u0662/\u0662]")).arrays
    assert array.slots is None and array.working is None


def test_a_300_character_array_name_is_refused():
    text = sample("healthy").replace("md0 :", "md" + "x" * 300 + " :")
    with pytest.raises(MdStatError, match="array name"):
        parse_mdstat(text)


def test_a_non_utf8_array_name_is_refused():
    raw = sample("healthy").encode().replace(b"md0 :", b"md0\xff\xfe :")
    with pytest.raises(MdStatError, match="array name"):
        parse_mdstat(raw.decode(errors="replace"))


def test_nul_bytes_are_refused():
    with pytest.raises(MdStatError, match="NUL"):
        parse_mdstat(sample("healthy").replace("md0 :", "md0\x00 :"))


def test_megabytes_of_text_are_refused_before_parsing():
    text = sample("healthy") + "      " + "[UU] " * (1 << 20) + "\n"
    with pytest.raises(MdStatError, match="larger than"):
        parse_mdstat(text)


def test_a_line_at_the_margin_that_is_not_an_array_ends_the_block():
    # An indented line belongs to the array above it; one at the margin never does, so a line that
    # is no array cannot lend its [2/2] [UU] to the array before it.
    text = sample("degraded-leg-detached").replace("\n\nunused", "\nnot-md : active [2/2] [UU]\n\nunused")
    (array,) = parse_mdstat(text).arrays
    assert array.slot_map == "U_" and array.health == DEGRADED


def test_an_endless_slot_map_is_no_slot_map():
    (array,) = parse_mdstat(sample("healthy").replace("[UU]", "[" + "U_" * 5000 + "]")).arrays
    assert array.slot_map == "" and array.missing_slots == ()


def test_member_and_level_words_that_are_no_kernel_names_are_left_out():
    text = sample("healthy").replace("vdb[1]", "v" * 100 + "[1]").replace("raid1 ", "raid1\x7f ")
    (array,) = parse_mdstat(text).arrays
    assert array.members == (Member("vda", 0),) and array.level == ""


# --- the property: whatever the text, MdStatError or bounded fields ------------------------------

_TOKENS = ["Personalities : [raid1] \n", "md0 : active raid1 vdb[1](F) vda[0]\n", "md127 : inactive vda[0](S)\n",
           "      31744 blocks super 1.2 ", "[2/1] ", "[U_]", "[UU]", "\n", " ", "recovery = ", "resync=", "DELAYED",
           "25.3%", "(8320/31744) ", "finish=", "0.2min ", "speed=", "1386K/sec", "bitmap: ", "unused devices: <none>",
           "9" * 40, ".", "[", "]", "(", ")", "/", "md", ":", "\x00", "\ufffd", "\u0662", "inf", "nan", "1e309", "-"]


def _check_bounded(mdstat) -> None:
    assert len(mdstat.personalities) <= MAX_PERSONALITIES
    for array in mdstat.arrays:
        assert array.name.startswith("md") and len(array.name) <= MAX_NAME and array.name.isascii()
        assert len(array.level) <= MAX_NAME and len(array.bitmap) <= MAX_NAME * 4
        assert len(array.slot_map) <= MAX_SLOTS and all(len(m.device) <= MAX_NAME for m in array.members)
        for number in (array.slots, array.working):
            assert number is None or 0 <= number <= MAX_SLOTS
        assert isinstance(array.health, str) and all(0 <= s < MAX_SLOTS for s in array.missing_slots)
        sync = array.sync
        if sync is not None:
            assert sync.percent is None or (math.isfinite(sync.percent) and 0 <= sync.percent <= 100)
            assert sync.eta_s is None or (math.isfinite(sync.eta_s) and 0 <= sync.eta_s <= MAX_ETA_S)
            assert sync.speed_kib_s is None or 0 <= sync.speed_kib_s <= MAX_SPEED_KIB_S


def _parse_or_refuse(text: str) -> None:
    try:
        mdstat = parse_mdstat(text)
    except MdStatError as exc:
        assert len(str(exc)) <= 400
        return
    _check_bounded(mdstat)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=60))
def test_any_mix_of_mdstat_tokens_parses_bounded_or_raises_mdstaterror(tokens):
    _parse_or_refuse("".join(tokens))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["healthy", "recovery", "resync", "check", "degraded-leg-faulty"]),
       st.integers(min_value=0, max_value=400), st.text(max_size=40))
def test_a_captured_mdstat_with_anything_spliced_in_parses_bounded_or_raises_mdstaterror(name, at, junk):
    text = sample(name)
    _parse_or_refuse(text[:at] + junk + text[at:])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_parses_bounded_or_raises_mdstaterror(text):
    _parse_or_refuse("Personalities : \n" + text)
