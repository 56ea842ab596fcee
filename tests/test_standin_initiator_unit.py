"""The lab's user-space AoE initiator (lab/standin/aoe_initiator.py) without the lab: frames it
builds and answers it accepts, and its behaviour on the wire against a small target at the other
end of a socket pair (the one point where its traffic leaves the program): requests split by the
target's limits, lost frames sent again, silence turned into EIO within the deadline, and I/O
resuming when the target answers again. The real vblade is the lab test's job
(tests/lab/test_standin_initiator.py)."""
from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from drivers import aoe_probe
from lab.standin import aoe_initiator as ini

INITIATOR_MAC = bytes.fromhex("020ad5010015")
TARGET_MAC = bytes.fromhex("020ad501000b")
SHELF, SLOT = 1, 20


def _response(src: bytes, dst: bytes, shelf: int, slot: int, command: int, tag: int, payload: bytes,
              error: int | None = None) -> bytes:
    verflags = (aoe_probe.AOE_VERSION << 4) | aoe_probe.FLAG_RESPONSE | (aoe_probe.FLAG_ERROR if error else 0)
    return (struct.pack("!6s6sH", dst, src, aoe_probe.ETH_P_AOE)
            + struct.pack("!BBHBBI", verflags, error or 0, shelf, slot, command, tag) + payload)


class FakeTarget:
    """What vblade does, reduced to the protocol: Query Config, IDENTIFY, READ/WRITE SECTORS EXT
    on a bytearray. `drop_first` loses the first copy of every ATA command (the retransmit must
    bring it); `silent` answers nothing (a dead disk server)."""

    def __init__(self, sock: socket.socket, sectors: int = 256, bufcnt: int = 4, max_sectors: int = 3) -> None:
        self.sock = sock
        self.disk = bytearray(sectors * 512)
        self.bufcnt = bufcnt
        self.max_sectors = max_sectors
        self.silent = False
        self.drop_first = False
        self.read_only = False
        self.seen: set[int] = set()
        self.commands: list[tuple[int, int, int]] = []  # (ATA command, lba, count) answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.02)
            if not ready:
                continue
            frame = aoe_probe.parse_frame(self.sock.recv(65536))
            if frame is None or frame.response or self.silent:
                continue
            if frame.command == aoe_probe.CMD_CONFIG:
                body = struct.pack("!HHBBH", self.bufcnt, 0x4019, self.max_sectors, 0x10, 0)
                self.sock.send(_response(TARGET_MAC, frame.src, SHELF, SLOT, frame.command, frame.tag, body))
                continue
            if self.drop_first and frame.tag not in self.seen:
                self.seen.add(frame.tag)
                continue
            self._ata(frame)

    def _ata(self, frame: aoe_probe.Frame) -> None:
        aflags, _feature, count, command, lba_bytes = struct.unpack_from("!BBBB6s2x", frame.payload)
        lba = int.from_bytes(lba_bytes, "little")
        data = b""
        status = 0x40
        if command == aoe_probe.ATA_IDENTIFY:
            words = [0] * 256
            words[83] = 0x4400
            sectors = len(self.disk) // 512
            words[100], words[101] = sectors & 0xFFFF, sectors >> 16
            data = struct.pack("<256H", *words)
        elif command == ini.ATA_READ_SECTORS_EXT:
            data = bytes(self.disk[lba * 512:(lba + count) * 512])
        elif command == ini.ATA_WRITE_SECTORS_EXT and aflags & ini.AFLAG_WRITE and not self.read_only:
            self.disk[lba * 512:(lba + count) * 512] = frame.payload[12:12 + count * 512]
        else:
            status = 0x41  # DRDY | ERR: aborted, as vblade answers a command it does not know
        self.commands.append((command, lba, count))
        ata = struct.pack("!BBBB6s2x", aflags, 0x04 if status & 1 else 0, count, status, lba_bytes)
        self.sock.send(_response(TARGET_MAC, frame.src, SHELF, SLOT, frame.command, frame.tag, ata + data))


@pytest.fixture
def wire() -> Iterator[tuple[ini.Initiator, FakeTarget]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    target = FakeTarget(theirs)
    initiator = ini.Initiator("san0", SHELF, SLOT, sock=ours, mac=INITIATOR_MAC, mtu=9000, deadline=1.0,
                              retransmit=0.05, probe_window=0.2)
    yield initiator, target
    target.stop()
    ours.close()
    theirs.close()


# ---- frames ----------------------------------------------------------------------------------------


def test_a_write_frame_carries_lba48_the_write_flag_and_the_data():
    data = bytes(range(256)) * 4
    frame = ini.build_ata(INITIATOR_MAC, TARGET_MAC, 513, 7, 0xDEADBEEF,
                          ini.AtaRequest(ini.ATA_WRITE_SECTORS_EXT, 0x123456789ABC, 2, data))
    parsed = aoe_probe.parse_frame(frame)
    assert (parsed.dst, parsed.src, parsed.shelf, parsed.slot) == (TARGET_MAC, INITIATOR_MAC, 513, 7)
    assert (parsed.command, parsed.tag, parsed.response) == (aoe_probe.CMD_ATA, 0xDEADBEEF, False)
    aflags, feature, count, command, lba = struct.unpack_from("!BBBB6s", parsed.payload)
    assert aflags == 0x41 and feature == 0 and count == 2 and command == 0x34
    assert lba == bytes.fromhex("bc9a78563412"), "LBA bytes go least significant first"
    assert parsed.payload[12:] == data
    assert len(frame) == 14 + 10 + 12 + 1024


def test_a_read_frame_has_no_write_flag_and_is_padded_to_the_ethernet_minimum():
    frame = ini.build_ata(INITIATOR_MAC, TARGET_MAC, 1, 0, 5, ini.AtaRequest(ini.ATA_READ_SECTORS_EXT, 8, 17))
    assert len(frame) == aoe_probe.MIN_FRAME
    aflags, _, count, command, lba = struct.unpack_from("!BBBB6s", aoe_probe.parse_frame(frame).payload)
    assert (aflags, count, command, int.from_bytes(lba, "little")) == (0x40, 17, 0x24, 8)


def test_frames_refuse_what_the_header_cannot_say():
    with pytest.raises(ValueError):
        ini.build_ata(INITIATOR_MAC, TARGET_MAC, 1, 0, 1, ini.AtaRequest(ini.ATA_READ_SECTORS_EXT, 1 << 48, 1))
    with pytest.raises(ValueError):
        ini.build_ata(INITIATOR_MAC, TARGET_MAC, 1, 0, 1, ini.AtaRequest(ini.ATA_READ_SECTORS_EXT, 0, 256))
    with pytest.raises(ValueError):
        ini.build_ata(INITIATOR_MAC, TARGET_MAC, 1, 0, 1, ini.AtaRequest(ini.ATA_WRITE_SECTORS_EXT, 0, 2, b"x" * 512))


def test_a_request_is_split_into_commands_the_target_accepts():
    data = bytes(i % 251 for i in range(40 * 512))
    parts = ini.split_request(ini.ATA_WRITE_SECTORS_EXT, 100, 40, 17, data)
    assert [(p.lba, p.count) for p in parts] == [(100, 17), (117, 17), (134, 6)]
    assert b"".join(p.data for p in parts) == data
    assert [p.count for p in ini.split_request(ini.ATA_READ_SECTORS_EXT, 0, 3, 17)] == [3]


def test_sectors_per_command_follow_the_target_and_our_mtu():
    assert ini.sectors_per_frame(9000, 17) == 17  # vblade on the lab's jumbo-frame SAN
    assert ini.sectors_per_frame(1500, 17) == 2  # our MTU is the limit
    assert ini.sectors_per_frame(9000, 0) == 17  # the target did not say
    assert ini.sectors_per_frame(600, 255) == 1


def test_answers_with_errors_become_eio():
    read = ini.AtaRequest(ini.ATA_READ_SECTORS_EXT, 0, 2)
    aborted = aoe_probe.parse_frame(_response(TARGET_MAC, INITIATOR_MAC, SHELF, SLOT, aoe_probe.CMD_ATA, 1,
                                              struct.pack("!BBBB6s2x", 0x40, 4, 2, 0x41, b"\0" * 6)))
    short = aoe_probe.parse_frame(_response(TARGET_MAC, INITIATOR_MAC, SHELF, SLOT, aoe_probe.CMD_ATA, 1,
                                            struct.pack("!BBBB6s2x", 0x40, 0, 2, 0x40, b"\0" * 6) + b"x" * 512))
    refused = aoe_probe.parse_frame(_response(TARGET_MAC, INITIATOR_MAC, SHELF, SLOT, aoe_probe.CMD_ATA, 1,
                                              b"\0" * 12, error=3))
    for frame, words in ((aborted, "failed"), (short, "short read"), (refused, "device unavailable")):
        with pytest.raises(OSError, match=words) as caught:
            ini.check_ata_answer(frame, read, "e1.20")
        assert caught.value.errno == errno.EIO
    good = aoe_probe.parse_frame(_response(TARGET_MAC, INITIATOR_MAC, SHELF, SLOT, aoe_probe.CMD_ATA, 1,
                                           struct.pack("!BBBB6s2x", 0x40, 0, 2, 0x40, b"\0" * 6) + b"y" * 1024))
    assert ini.check_ata_answer(good, read, "e1.20") == b"y" * 1024


def test_the_kernel_filter_is_a_valid_classic_bpf_program():
    program = ini.response_filter(0x1234, 0x56)
    insns = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert len(insns) == 8
    assert insns[3][3] == 0x1234 and insns[5][3] == 0x56
    for index, (code, jt, jf, _k) in enumerate(insns):
        if code & 0x07 == 0x05:  # a jump: both branches land inside the program
            assert index + 1 + max(jt, jf) < len(insns)
    assert insns[-1] == (0x06, 0, 0, 0) and insns[-2][0] == 0x06


# ---- on the wire ---------------------------------------------------------------------------------


def test_data_round_trips_in_commands_within_the_targets_limits(wire):
    initiator, target = wire
    assert initiator.connect() == ini.Target(TARGET_MAC, 4, 3, 0x4019)
    assert initiator.identify() == 256
    data = bytes(i * 7 % 256 for i in range(10 * 512))
    initiator.write(5, data)
    assert bytes(target.disk[5 * 512:15 * 512]) == data
    assert initiator.read(5, 10) == data
    writes = [(lba, count) for command, lba, count in target.commands if command == ini.ATA_WRITE_SECTORS_EXT]
    assert sorted(writes) == [(5, 3), (8, 3), (11, 3), (14, 1)]


def test_lost_frames_are_sent_again(wire):
    initiator, target = wire
    initiator.connect()
    target.drop_first = True
    data = b"\xa5" * (7 * 512)
    initiator.write(0, data)
    assert initiator.read(0, 7) == data
    assert len(target.seen) == 6, "every command was lost once and then answered"


def test_silence_fails_the_request_with_eio_within_the_deadline_and_io_resumes_when_the_target_answers(wire):
    initiator, target = wire
    initiator.connect()
    initiator.write(0, b"\x11" * 512)
    target.silent = True
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        initiator.read(0, 1)
    took = time.monotonic() - started
    assert caught.value.errno == errno.EIO
    assert initiator.deadline <= took < initiator.deadline + 0.5
    # Once down, each request asks the SAN first and fails after the short probe window.
    started = time.monotonic()
    with pytest.raises(OSError):
        initiator.write(0, b"\x22" * 512)
    assert time.monotonic() - started < initiator.probe_window + 0.3
    target.silent = False
    assert initiator.read(0, 1) == b"\x11" * 512
    initiator.write(0, b"\x33" * 512)
    assert bytes(target.disk[:512]) == b"\x33" * 512


def test_a_command_the_target_aborts_fails_with_eio_without_marking_it_down(wire):
    initiator, target = wire
    initiator.connect()
    target.read_only = True  # vblade -r aborts every write
    with pytest.raises(OSError, match="failed") as caught:
        initiator.write(0, b"\x44" * 512)
    assert caught.value.errno == errno.EIO
    assert not initiator.down
    assert initiator.read(0, 1) == bytes(512)


def test_a_flush_the_target_does_not_know_succeeds(wire):
    initiator, target = wire
    initiator.connect()
    initiator.flush()  # this target, like vblade, aborts FLUSH CACHE: nothing to flush
    assert (ini.ATA_FLUSH_CACHE, 0, 0) in target.commands


def test_the_data_path_is_what_lab_up_wrote_into_the_wrappers(tmp_path, monkeypatch):
    from lab import standin
    from lab.hostconfig import _write_standin_wrappers

    monkeypatch.delenv("XENAOE_LAB_AOE_DATA", raising=False)
    assert standin.data_path(tmp_path) == standin.WIRE  # no lab yet: what the next `lab up` would install
    monkeypatch.setenv("XENAOE_LAB_AOE_DATA", "file")
    assert standin.data_path(tmp_path) == standin.FILE
    _write_standin_wrappers(tmp_path)
    monkeypatch.setenv("XENAOE_LAB_AOE_DATA", "wire")  # changed after `lab up`: the lab keeps what it has
    assert standin.data_path(tmp_path) == standin.FILE
    _write_standin_wrappers(tmp_path)
    assert standin.data_path(tmp_path) == standin.WIRE
    assert "AOE_STANDIN_DATA=wire " in (tmp_path / "aoe-discover").read_text()
