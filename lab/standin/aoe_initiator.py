"""A user-space AoE initiator (ATA over Ethernet, spec r11) for the lab's stand-in: one export,
ATA READ / WRITE SECTORS EXT (LBA48) and FLUSH CACHE EXT over an AF_PACKET socket, stdlib only.

Why it exists: the lab kernel has no `aoe` driver. lab/standin/aoe_fuse.py serves each export as a
FUSE file through this client, a loop device over that file becomes /dev/etherd/eS.L, and so a
guest's I/O really travels the SAN to vblade: a dead disk server fails the I/O of its leg.

Behaviour that matters to a RAID1 above it:
- every request is split into ATA commands of at most `max_sectors` (what the target's Query Config
  answer allows, and what our MTU allows), with at most `bufcnt` of them in flight (the target's
  buffer count);
- an unanswered command is sent again after RETRANSMIT seconds (doubling up to MAX_RETRANSMIT);
- a request not complete after DEADLINE seconds fails with EIO, never hangs (md then fails the
  leg instead of stalling the guest), and the target is marked down;
- while down, each request first asks the SAN for the export (a Query Config for its shelf.slot)
  and fails with EIO after PROBE_WINDOW seconds of silence; when the export answers again (vblade
  restarted, possibly from another MAC) I/O resumes on the same device.

Frame layouts and the socket come from drivers/aoe_probe.py (the panel's probe), reused as is.
"""
from __future__ import annotations

import ctypes
import errno
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from drivers.aoe_probe import (
    _ATA,
    ATA_IDENTIFY,
    ATA_STATUS_ERR,
    BROADCAST,
    CMD_ATA,
    CMD_CONFIG,
    FLAG_RESPONSE,
    HEADER_LEN,
    ConfigAnswer,
    Frame,
    ProbeError,
    TagSource,
    build_identify,
    build_query_config,
    describe_error,
    frame_header,
    identify_sectors,
    mac_to_str,
    open_socket,
    pad_frame,
    parse_ata_answer,
    parse_config_answer,
    parse_frame,
)

SECTOR = 512
ATA_READ_SECTORS_EXT = 0x24
ATA_WRITE_SECTORS_EXT = 0x34
ATA_FLUSH_CACHE = 0xE7
ATA_ABORTED = 0x04  # the ATA error register's ABRT bit: the command is not supported
AFLAG_EXTENDED = 0x40  # LBA48: all six LBA bytes count
AFLAG_WRITE = 0x01  # the frame carries data to write
MAX_LBA = (1 << 48) - 1
MAX_COUNT_FIELD = 255  # the AoE ATA header's sector count is one byte
# What an ATA command costs in the Ethernet payload (MTU): the AoE header after the Ethernet
# header, plus the ATA header. vblade computes its own limit the same way.
ATA_OVERHEAD = HEADER_LEN - 14 + _ATA.size

DEADLINE = 5.0  # seconds for a whole request before it fails with EIO
RETRANSMIT = 0.2  # first retransmit timeout of one command
MAX_RETRANSMIT = 1.0
PROBE_WINDOW = 0.5  # seconds a Query Config waits for the export to answer

SOL_PACKET = getattr(socket, "SOL_PACKET", 263)
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: our own frames are not looped back to us
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


class AoEIOError(OSError):
    """The request failed on the SAN (no answer in time, an error answer): an EIO for the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class Target(NamedTuple):
    mac: bytes
    bufcnt: int  # commands in flight the target accepts
    max_sectors: int  # sectors per command, already limited by our own MTU
    firmware: int


class AtaRequest(NamedTuple):
    command: int
    lba: int
    count: int
    data: bytes = b""


# ---- pure frame building and parsing ------------------------------------------------------------


def build_ata(src: bytes, dst: bytes, shelf: int, slot: int, tag: int, request: AtaRequest) -> bytes:
    """An AoE ATA command frame: LBA48 (extended flag), the write flag when data rides along."""
    if not 0 <= request.lba <= MAX_LBA or not 0 <= request.count <= MAX_COUNT_FIELD:
        raise ValueError(f"LBA {request.lba} / count {request.count} out of range")
    if request.data and len(request.data) != request.count * SECTOR:
        raise ValueError(f"{len(request.data)} bytes of data for {request.count} sectors")
    aflags = AFLAG_EXTENDED | (AFLAG_WRITE if request.data else 0)
    ata = _ATA.pack(aflags, 0, request.count, request.command, request.lba.to_bytes(6, "little"))
    return pad_frame(frame_header(dst, src, shelf, slot, CMD_ATA, tag) + ata + request.data)


def split_request(command: int, lba: int, count: int, max_sectors: int, data: bytes = b"") -> list[AtaRequest]:
    """One request as ATA commands of at most `max_sectors` sectors each, in LBA order."""
    if max_sectors < 1:
        raise ValueError("max_sectors must be at least 1")
    requests = []
    for start in range(0, count, max_sectors):
        n = min(max_sectors, count - start)
        chunk = data[start * SECTOR:(start + n) * SECTOR] if data else b""
        requests.append(AtaRequest(command, lba + start, n, chunk))
    return requests


def sectors_per_frame(mtu: int, target_max: int) -> int:
    """Sectors per ATA command: what the target announced (0 means it did not say) and what fits
    in our MTU, at least 1."""
    ours = min((mtu - ATA_OVERHEAD) // SECTOR, MAX_COUNT_FIELD)
    return max(1, min(ours, target_max) if target_max else ours)


def target_from_config(answer: ConfigAnswer, mtu: int) -> Target:
    return Target(bytes(int(part, 16) for part in answer.mac.split(":")), max(1, answer.bufcnt),
                  sectors_per_frame(mtu, answer.max_sectors), answer.firmware)


def response_filter(shelf: int, slot: int) -> bytes:
    """A classic BPF program for SO_ATTACH_FILTER: only AoE responses for this shelf.slot reach
    the socket (every export's daemon on a host listens on the same interface)."""
    program = [
        (0x30, 0, 0, 14),  # ldb [14]          version | flags
        (0x45, 0, 5, FLAG_RESPONSE),  # jset #response, else drop
        (0x28, 0, 0, 16),  # ldh [16]          shelf (major)
        (0x15, 0, 3, shelf),  # jeq #shelf, else drop
        (0x30, 0, 0, 18),  # ldb [18]          slot (minor)
        (0x15, 0, 1, slot),  # jeq #slot, else drop
        (0x06, 0, 0, 0x40000),  # ret: accept the whole frame
        (0x06, 0, 0, 0),  # ret: drop
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def check_ata_answer(frame: Frame, request: AtaRequest, name: str) -> bytes:
    """The data of a successful answer (reads: exactly the sectors asked for); AoEIOError else."""
    if frame.error is not None:
        raise AoEIOError(describe_error(frame))
    answer = parse_ata_answer(frame)
    if answer is None:
        raise AoEIOError(f"{name}: unreadable ATA answer")
    if answer.status & ATA_STATUS_ERR:
        raise AoEIOError(f"{name}: ATA command {request.command:#04x} at LBA {request.lba} failed "
                         f"(status {answer.status:#04x}, error {answer.ata_error:#04x})")
    if request.command == ATA_READ_SECTORS_EXT:
        wanted = request.count * SECTOR
        if len(answer.data) < wanted:
            raise AoEIOError(f"{name}: short read at LBA {request.lba}: {len(answer.data)} of {wanted} bytes")
        return answer.data[:wanted]
    return b""


# ---- the initiator --------------------------------------------------------------------------------


@dataclass
class _InFlight:
    index: int
    frame: bytes
    due: float
    interval: float


@dataclass
class Initiator:
    """The client of one export (shelf.slot) on one interface. Thread-safe: one request at a time."""

    interface: str
    shelf: int
    slot: int
    deadline: float = DEADLINE
    retransmit: float = RETRANSMIT
    probe_window: float = PROBE_WINDOW
    sock: socket.socket | None = None  # a ready socket (tests); else an AF_PACKET one on `interface`
    mac: bytes = b""  # our own MAC, required with `sock`
    mtu: int = 0  # of `interface`; read from sysfs when 0
    target: Target | None = None
    down: bool = False  # the last request timed out: ask the SAN before the next one
    _tags: TagSource = field(default_factory=TagSource)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.sock is None:
            try:
                self.sock, self.mac = open_socket(self.interface)
            except ProbeError as exc:
                raise AoEIOError(str(exc)) from exc
            _quiet_socket(self.sock, self.shelf, self.slot)
        if not self.mtu:
            self.mtu = int(Path(f"/sys/class/net/{self.interface}/mtu").read_text())

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    # -- what the FUSE file calls ------------------------------------------------------------

    def connect(self) -> Target:
        """Find the export on the SAN (Query Config for its shelf.slot); AoEIOError if silent."""
        with self._lock:
            return self._connect()

    def identify(self) -> int:
        """The export's size in sectors (ATA IDENTIFY DEVICE)."""
        with self._lock:
            target = self._ready()
            frame = build_identify(self.mac, target.mac, self.shelf, self.slot, 0)
            answer = self._exchange([(frame, AtaRequest(ATA_IDENTIFY, 0, 1))])[0]
            if answer.error is not None:
                raise AoEIOError(describe_error(answer))
            parsed = parse_ata_answer(answer)
            sectors = identify_sectors(parsed.data) if parsed and not parsed.status & ATA_STATUS_ERR else None
            if sectors is None:
                raise AoEIOError(f"{self.name}: IDENTIFY failed")
            return sectors

    def read(self, lba: int, count: int) -> bytes:
        with self._lock:
            target = self._ready()
            requests = split_request(ATA_READ_SECTORS_EXT, lba, count, target.max_sectors)
            return b"".join(self._run(requests))

    def write(self, lba: int, data: bytes) -> None:
        if len(data) % SECTOR:
            raise ValueError("writes are whole sectors")
        with self._lock:
            target = self._ready()
            self._run(split_request(ATA_WRITE_SECTORS_EXT, lba, len(data) // SECTOR, target.max_sectors, data))

    def flush(self) -> None:
        """FLUSH CACHE: written data reaches the target's disk. A target that does not know the
        command (vblade aborts it) has nothing to flush for us: success, as with the kernel's aoe
        driver, which sends no flush at all."""
        with self._lock:
            self._ready()
            request = AtaRequest(ATA_FLUSH_CACHE, 0, 0)
            frame = build_ata(self.mac, self.target.mac, self.shelf, self.slot, 0, request)
            answer = self._exchange([(frame, request)])[0]
            parsed = parse_ata_answer(answer) if answer.error is None else None
            if parsed is not None and parsed.status & ATA_STATUS_ERR and parsed.ata_error & ATA_ABORTED:
                return
            check_ata_answer(answer, request, self.name)

    # -- internals ---------------------------------------------------------------------------

    def _ready(self) -> Target:
        if self.target is None or self.down:
            return self._connect()
        return self.target

    def _connect(self) -> Target:
        tag = self._tags()
        query = build_query_config(self.mac, tag, self.shelf, self.slot, BROADCAST)
        self._send(query)
        start = time.monotonic()
        half, end = start + self.probe_window / 2, start + self.probe_window
        resent = False
        answers: list[ConfigAnswer] = []
        while not answers:
            now = time.monotonic()
            if now >= end:
                break
            if not resent and now >= half:  # one lost frame must not hide the export
                resent = True
                self._send(query)
            for frame in self._receive((end if resent else half) - now):
                if frame.command == CMD_CONFIG and frame.tag == tag and frame.error is None:
                    answer = parse_config_answer(frame)
                    if answer is not None:
                        answers.append(answer)
        if not answers:
            self.down = True
            raise AoEIOError(f"{self.name}: no answer on {self.interface} within {self.probe_window:g} s")
        # The MAC we used before, if it still answers: another answering MAC is a duplicate export.
        current = self.target.mac if self.target else None
        answers.sort(key=lambda a: mac_to_str(current or b"") != a.mac)
        self.target = target_from_config(answers[0], self.mtu)
        self.down = False
        return self.target

    def _run(self, requests: list[AtaRequest]) -> list[bytes]:
        target = self.target
        assert target is not None
        frames = [(build_ata(self.mac, target.mac, self.shelf, self.slot, 0, r), r) for r in requests]
        answers = self._exchange(frames)
        return [check_ata_answer(a, r, self.name) for a, (_frame, r) in zip(answers, frames, strict=True)]

    def _exchange(self, frames: list[tuple[bytes, AtaRequest]]) -> list[Frame]:
        """Send each frame (its tag replaced by a fresh one), at most bufcnt in flight, resend the
        unanswered, and return the answers in order; AoEIOError at the deadline."""
        target = self.target
        assert target is not None
        answers: list[Frame | None] = [None] * len(frames)
        waiting = deque(range(len(frames)))
        in_flight: dict[int, _InFlight] = {}
        start = time.monotonic()
        deadline = start + self.deadline
        left = len(frames)
        while left:
            now = time.monotonic()
            while waiting and len(in_flight) < target.bufcnt:
                index = waiting.popleft()
                tag = self._tags()
                frame = _with_tag(frames[index][0], tag)
                self._send(frame)
                in_flight[tag] = _InFlight(index, frame, now + self.retransmit, self.retransmit)
            for flight in in_flight.values():
                if flight.due <= now:
                    self._send(flight.frame)
                    flight.interval = min(flight.interval * 2, MAX_RETRANSMIT)
                    flight.due = now + flight.interval
            if now >= deadline:
                self.down = True
                raise AoEIOError(f"{self.name}: no answer from {mac_to_str(target.mac)} within "
                                 f"{self.deadline:g} s ({left} of {len(frames)} commands outstanding)")
            wake = min([deadline, *(f.due for f in in_flight.values())])
            for frame in self._receive(wake - now):
                flight = in_flight.get(frame.tag)
                if flight is None or frame.command != CMD_ATA or frame.src != target.mac:
                    continue
                del in_flight[frame.tag]
                answers[flight.index] = frame
                left -= 1
        return [a for a in answers if a is not None]

    def _send(self, frame: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.send(frame)
        except OSError as exc:  # the link is down, the interface gone: the same as silence to md
            if exc.errno not in (errno.ENETDOWN, errno.ENXIO, errno.ENOBUFS, errno.EAGAIN):
                raise AoEIOError(f"{self.name}: cannot send on {self.interface}: {exc.strerror}") from exc

    def _receive(self, timeout: float) -> list[Frame]:
        """The AoE responses for this export that arrive within `timeout` (returns as soon as some
        have arrived; our own outgoing frames are requests and are skipped)."""
        assert self.sock is not None
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        frames = []
        while ready:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            frame = parse_frame(data)
            if frame is not None and frame.response and (frame.shelf, frame.slot) == (self.shelf, self.slot):
                frames.append(frame)
        return frames


def _with_tag(frame: bytes, tag: int) -> bytes:
    offset = HEADER_LEN - 4
    return frame[:offset] + tag.to_bytes(4, "big") + frame[offset + 4:]


def _quiet_socket(sock: socket.socket, shelf: int, slot: int) -> None:
    """Hear only answers for this export: skip our own frames and filter in the kernel (a host runs
    one initiator per export, all on the same interface). Both are optimisations: if the kernel
    refuses, the initiator filters in Python."""
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass
    program = response_filter(shelf, slot)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return
    while True:  # frames queued before the filter was attached
        try:
            sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return

