"""aoe_probe.py: frame building and parsing on real captured frames, the CLI, and a real probe of a
real vblade across throw-away xat- network namespaces.

The frames below were captured once from vblade (Debian 12's vblade, firmware 0x4019) answering
the requests of this probe, on a veth link between two namespaces (02:00:00:bb:00:02 = probe,
02:00:00:aa:00:01 = vblade serving e7.3 from a 64 MiB sparse file = 131072 sectors).
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from xat_hosts import FakeSAN, is_root

from drivers import aoe_probe as p

PROBE = Path(p.__file__)
PROBE_MAC = p.mac_from_str("02:00:00:bb:00:02")
VBLADE_MAC = "02:00:00:aa:00:01"

# Query Config answer to tag 0x11223344.
CONFIG_ANSWER = bytes.fromhex(
    "020000bb0002020000aa000188a2180000070301112233440010401902100000"
)

# ATA IDENTIFY DEVICE answer to tag 0x11223345 (512 bytes of identify data).
IDENTIFY_ANSWER = bytes.fromhex(
    "020000bb0002020000aa000188a218000007030011223345000000400000000000000000000000000000000000000000"
    "00000000000000002e373a336d76202020202020202020202020202000000000000032562035202020206f4361726469"
    "4520687472657244766920656276616c6564202020202020202020202020202020200080000000020040000000000000"
    "000000000000000000000000000002000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000540040000000140040000000000000000000000b4000000000000000000000000000000200"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000"
)

# Error answer (flag E, error 1) to a request with the unknown command 9.
BAD_COMMAND_ANSWER = bytes.fromhex(
    "020000bb0002020000aa000188a21c010007030911223346000000000010000000000000000000000000000000000000"
    "000000000000000000000000"
)

# Error answer (flag E, error 2) to an IDENTIFY asking for 2 sectors.
BAD_ARGUMENT_ANSWER = bytes.fromhex(
    "020000bb0002020000aa000188a21c020007030011223347000002ec0000000000000000000000000000000000000000"
    "000000000000000000000000"
)

# ATA answer with status DRDY|ERR, error ABRT, to the unsupported ATA command 0x00.
ATA_ABORT_ANSWER = bytes.fromhex(
    "020000bb0002020000aa000188a218000007030011223348000401410000000000000000"
)

# What vblade broadcasts unasked when it starts (e7.4 here): tag 0 and, unlike its answers, version 0.
ANNOUNCEMENT = bytes.fromhex(
    "ffffffffffff020000aa000188a2080000070401000000000010401902100000"
)


def identify_data() -> bytes:
    frame = p.parse_frame(IDENTIFY_ANSWER)
    answer = p.parse_ata_answer(frame)
    return answer.data


def with_words(data: bytes, **words: int) -> bytes:
    """IDENTIFY data with some 16-bit words replaced (w83=..., w100=...)."""
    out = bytearray(data)
    for key, value in words.items():
        struct.pack_into("<H", out, 2 * int(key[1:]), value)
    return bytes(out)


# ---- building ------------------------------------------------------------------------------------


def test_query_config_request_is_a_broadcast_read_with_no_config_string():
    frame = p.build_query_config(PROBE_MAC, 0x11223344)
    assert frame == bytes.fromhex(
        "ffffffffffff" "020000bb0002" "88a2"  # broadcast, from us, AoE
        "10" "00" "ffff" "ff" "01" "11223344"  # version 1 no flags, no error, any shelf, any slot, config
        "0000" "0000" "00" "10" "0000"  # bufcnt, firmware, sectors, version 1 | read, no config string
    ) + bytes(28)  # padded to the 60-byte Ethernet minimum


def test_query_config_request_can_address_one_shelf_and_slot():
    parsed = p.parse_frame(p.build_query_config(PROBE_MAC, 5, shelf=7, slot=3))
    assert (parsed.shelf, parsed.slot, parsed.command, parsed.tag, parsed.response) == (7, 3, 1, 5, False)


def test_identify_request_asks_one_sector_of_ata_command_ec_at_lba_0():
    frame = p.build_identify(PROBE_MAC, p.mac_from_str(VBLADE_MAC), 7, 3, 0x11223345)
    assert frame[:36] == bytes.fromhex(
        "020000aa0001" "020000bb0002" "88a2" "10" "00" "0007" "03" "00" "11223345"
        "00" "00" "01" "ec" "000000000000" "0000"  # aflags, feature, 1 sector, IDENTIFY, lba 0, reserved
    )
    assert len(frame) == 60


def test_addresses_out_of_range_are_refused():
    with pytest.raises(ValueError):
        p.build_query_config(PROBE_MAC, 1, shelf=0x10000)
    with pytest.raises(ValueError):
        p.build_identify(PROBE_MAC, PROBE_MAC, 1, 256, 1)


# ---- parsing captured answers -------------------------------------------------------------------


def test_config_answer_from_vblade():
    frame = p.parse_frame(CONFIG_ANSWER)
    assert frame.response and frame.error is None and frame.tag == 0x11223344
    answer = p.parse_config_answer(frame)
    assert answer == p.ConfigAnswer(shelf=7, slot=3, mac=VBLADE_MAC, tag=0x11223344, bufcnt=16,
                                    firmware=0x4019, max_sectors=2, aoe_version=1, config=b"")


def test_identify_answer_gives_the_size_from_lba48_words():
    answer = p.parse_ata_answer(p.parse_frame(IDENTIFY_ANSWER))
    assert (answer.shelf, answer.slot, answer.mac, answer.tag) == (7, 3, VBLADE_MAC, 0x11223345)
    assert answer.status == 0x40 and answer.ata_error == 0  # DRDY, no error
    assert len(answer.data) == 512
    assert p.identify_sectors(answer.data) == 131072  # 64 MiB / 512


def test_identify_uses_lba28_words_when_lba48_is_not_supported():
    data = with_words(identify_data(), w83=0x4000, w100=0xFFFF)  # valid word 83, LBA48 bit off
    assert p.identify_sectors(data) == 131072  # from words 60-61


def test_identify_above_lba28_reads_all_four_lba48_words():
    # What vblade sends for a 3 TiB file: words 60-61 capped at 0x0fffffff, the size in 100-103.
    sectors = 3 * 2**40 // 512
    data = with_words(identify_data(), w60=0xFFFF, w61=0x0FFF, w100=sectors & 0xFFFF,
                      w101=sectors >> 16 & 0xFFFF, w102=sectors >> 32 & 0xFFFF, w103=0)
    assert p.identify_sectors(data) == sectors


def test_short_or_zero_identify_data_gives_no_size():
    assert p.identify_sectors(identify_data()[:100]) is None
    assert p.identify_sectors(bytes(512)) is None


def test_error_answer_to_an_unknown_command():
    frame = p.parse_frame(BAD_COMMAND_ANSWER)
    assert frame.response and frame.error == 1 and frame.command == 9
    assert p.parse_config_answer(frame) is None and p.parse_ata_answer(frame) is None
    assert p.describe_error(frame) == (
        f"e7.3 ({VBLADE_MAC}): command 9 answered with error 1 (unrecognized command code)")


def test_error_answer_to_a_bad_identify_is_not_an_ata_answer():
    frame = p.parse_frame(BAD_ARGUMENT_ANSWER)
    assert frame.error == 2 and frame.command == p.CMD_ATA
    assert p.parse_ata_answer(frame) is None
    assert "bad argument parameter" in p.describe_error(frame)


def test_ata_error_status_is_visible():
    answer = p.parse_ata_answer(p.parse_frame(ATA_ABORT_ANSWER))
    assert answer.status & p.ATA_STATUS_ERR and answer.ata_error == 0x04  # ABRT
    assert answer.data == b""


def test_identify_outcomes_are_a_size_or_a_reported_error():
    errors: list[str] = []
    assert p._identified_size(p.parse_frame(IDENTIFY_ANSWER), errors) == SECTORS and errors == []
    assert p._identified_size(p.parse_frame(ATA_ABORT_ANSWER), errors) is None
    assert p._identified_size(p.parse_frame(BAD_ARGUMENT_ANSWER), errors) is None
    assert errors == [f"e7.3 ({VBLADE_MAC}): IDENTIFY failed (ATA status 0x41)",
                      f"e7.3 ({VBLADE_MAC}): command 0 answered with error 2 (bad argument parameter)"]


def test_vblade_start_announcement_is_not_taken_for_an_answer():
    # Sent with version 0 and tag 0: never one of ours (TagSource never hands out 0).
    assert p.parse_frame(ANNOUNCEMENT) is None


def test_non_aoe_and_truncated_frames_are_ignored():
    assert p.parse_frame(CONFIG_ANSWER[:20]) is None
    ipv4 = CONFIG_ANSWER[:12] + b"\x08\x00" + CONFIG_ANSWER[14:]
    assert p.parse_frame(ipv4) is None
    assert p.parse_config_answer(p.parse_frame(CONFIG_ANSWER[:26])) is None  # header, half a config


def test_requests_are_not_answers():
    parsed = p.parse_frame(p.build_query_config(PROBE_MAC, 9))
    assert not parsed.response and p.parse_config_answer(parsed) is None


def test_shelf_and_slot_filters():
    assert p.wanted(p.ANY_SHELF, p.ANY_SLOT, 7, 3)
    assert p.wanted(7, p.ANY_SLOT, 7, 3) and not p.wanted(8, p.ANY_SLOT, 7, 3)
    assert p.wanted(7, 3, 7, 3) and not p.wanted(7, 4, 7, 3)


def test_tags_are_never_zero_and_do_not_repeat():
    tags = p.TagSource()
    seen = [tags() for _ in range(1000)]
    assert 0 not in seen and len(set(seen)) == 1000


def test_mac_conversions():
    assert p.mac_to_str(p.mac_from_str("02-00-00-AA-00-01")) == VBLADE_MAC
    with pytest.raises(ValueError):
        p.mac_from_str("02:00:00:aa:00")


# ---- the command line ---------------------------------------------------------------------------


def run_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, str(PROBE), *args], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.skipif(not is_root(), reason="as non-root the probe fails on permission before the interface")
def test_cli_exits_2_for_a_missing_interface():
    result = run_cli("--interface", "xat-missing0", "--timeout", "0.2")
    assert result.returncode == 2
    assert "xat-missing0" in result.stderr and result.stdout == ""


@pytest.mark.skipif(not (is_root() and shutil.which("setpriv")), reason="needs root to drop to nobody")
def test_cli_exits_2_without_permission():
    result = run_cli("--interface", "lo", prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    assert result.returncode == 2
    assert "permission" in result.stderr


def test_cli_rejects_bad_arguments():
    assert run_cli("--interface", "lo", "--shelf", "65536").returncode == 2
    assert run_cli("--interface", "lo", "--timeout", "0").returncode == 2
    assert run_cli("--shelf", "1").returncode == 2


# ---- a real vblade, probed from another namespace -----------------------------------------------

SECTORS = 131072  # 64 MiB sparse file
FOREIGN_MAC = "02:7a:00:00:00:99"


@pytest.fixture(scope="module")
def vblade_san(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSAN]:
    """vblade serving e7.3 (open), e7.5 (ACL: a foreign MAC only) and e7.6 (ACL: the probing host)
    on the disk side of a fresh xat- veth pair. Everything dies with the namespaces."""
    if not is_root():
        pytest.skip("network namespaces need root")
    base = tmp_path_factory.mktemp("probe-san")
    backing = base / "disk.img"
    with backing.open("wb") as f:
        f.truncate(SECTORS * 512)
    with FakeSAN(base / "san") as san:
        logs = []
        for slot, acl in ((3, None), (5, FOREIGN_MAC), (6, san.cpu.mac)):
            log = base / f"vblade-{slot}.log"
            logs.append(log)
            options = ["-m", acl] if acl else []
            with log.open("w") as out:
                subprocess.Popen(["nsenter", "-t", str(san.disk.holder.pid), "-n", "--", "vblade", *options,
                                  "7", str(slot), san.disk.interface, str(backing)],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not all("sectors" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            time.sleep(0.05)
        yield san


def probe_from_cpu(san: FakeSAN, *args: str) -> dict:
    """Run the probe in the CPU namespace exactly as the panel does: the file on stdin."""
    result = san.cpu.run(["python3", "-", "--interface", san.cpu.interface, *args], input=PROBE.read_text(),
                         timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_probe_finds_vblade_with_its_mac_and_size(vblade_san):
    started = time.monotonic()
    answer = probe_from_cpu(vblade_san, "--identify", "--timeout", "1")
    assert time.monotonic() - started < 3
    by_slot = {e["slot"]: e for e in answer["exports"]}
    assert by_slot[3] == {"shelf": 7, "slot": 3, "mac": vblade_san.disk.mac, "bufcnt": 16,
                          "firmware": by_slot[3]["firmware"], "sectors": SECTORS}


def test_probe_sees_through_vblade_acls_like_an_initiator(vblade_san):
    slots = [e["slot"] for e in probe_from_cpu(vblade_san, "--timeout", "0.5")["exports"]]
    assert slots == [3, 6]  # e7.5 only answers FOREIGN_MAC; sorted by shelf, slot


def test_probe_without_identify_reports_no_size(vblade_san):
    exports = probe_from_cpu(vblade_san, "--slot", "3", "--timeout", "0.5")["exports"]
    assert [(e["shelf"], e["slot"], e["sectors"]) for e in exports] == [(7, 3, None)]


def test_probe_filters_by_shelf_and_slot(vblade_san):
    assert probe_from_cpu(vblade_san, "--shelf", "8", "--timeout", "0.3") == {"exports": []}
    assert probe_from_cpu(vblade_san, "--shelf", "7", "--slot", "4", "--timeout", "0.3") == {"exports": []}
    assert [e["slot"] for e in probe_from_cpu(vblade_san, "--shelf", "7", "--slot", "6",
                                              "--timeout", "0.3")["exports"]] == [6]


def test_probe_on_a_silent_link_returns_nothing_and_exits_0(vblade_san):
    result = vblade_san.disk.run(["python3", "-", "--interface", "lo", "--timeout", "0.2"], input=PROBE.read_text())
    assert result.returncode == 0 and json.loads(result.stdout) == {"exports": []}


def test_probe_with_expected_exports_stops_soon_after_they_answered(vblade_san):
    started = time.monotonic()
    exports = probe_from_cpu(vblade_san, "--expect", "7.3,7.6", "--identify", "--timeout", "10")["exports"]
    took = time.monotonic() - started
    assert [(e["slot"], e["sectors"]) for e in exports] == [(3, SECTORS), (6, SECTORS)]
    assert took < 5, f"the probe waited {took:.1f} s: the 10 s window, not the answers"
    # One that never answers: the whole window is waited, what answered is reported.
    started = time.monotonic()
    exports = probe_from_cpu(vblade_san, "--expect", "7.3,7.4", "--timeout", "1")["exports"]
    assert time.monotonic() - started >= 1 and [e["slot"] for e in exports] == [3, 6]


def test_cli_rejects_a_bad_expect_list():
    for bad in ("7", "7.3.1", "x.3", "65535.1", "7.255"):
        assert run_cli("--interface", "lo", "--expect", bad).returncode == 2
