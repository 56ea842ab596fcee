#!/usr/bin/env python3
"""A user-space ATA over Ethernet probe (AoE spec r11), stdlib only.

Broadcasts a Query Config on one interface, collects every answer for `--timeout` seconds and, with
`--identify`, asks each answering target (by its MAC) for ATA IDENTIFY DEVICE to learn its size.

Why it exists: a CPU server needs no AoE initiator for the panel to see what is exported on the
SAN, and the same check works in the lab where the kernel has no `aoe` driver. The panel sends this
very file over SSH on stdin (`python3 - --interface san0 ...`), so it must stay one file that needs
nothing but python3 (3.7+). It is also imported by the panel's tests: frame building and parsing are
pure functions, separate from the socket I/O.

CLI: aoe_probe.py --interface IFACE [--shelf S] [--slot N] [--identify] [--timeout SECONDS]
[--expect S.L,...] (stop collecting shortly after these answered)
prints {"exports": [{"shelf", "slot", "mac", "bufcnt", "firmware", "sectors"}, ...]} sorted by
shelf, slot; exit 0 even when nothing answered, 2 for a bad interface or missing permission. Error
answers from targets are reported on stderr, one line each, and never abort the probe.
Runtime is at most 2 x timeout with --identify (one window to collect answers, then at most one
more for IDENTIFY, which ends as soon as every target has answered).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

ETH_P_AOE = 0x88A2
AOE_VERSION = 1
BROADCAST = b"\xff" * 6
ANY_SHELF = 0xFFFF
ANY_SLOT = 0xFF
# After every expected export answered: how long a duplicate still has to answer the broadcast.
EXPECT_GRACE = 0.2
MIN_FRAME = 60  # Ethernet minimum without FCS; short frames may be dropped by NICs or switches

CMD_ATA = 0
CMD_CONFIG = 1
FLAG_RESPONSE = 0x08
FLAG_ERROR = 0x04
CCMD_READ = 0

ATA_IDENTIFY = 0xEC
ATA_STATUS_ERR = 0x01
# IDENTIFY word 83: bits 15:14 == 01 mark the word valid, bit 10 says LBA48 is supported.
WORD83_VALID_MASK = 0xC000
WORD83_VALID = 0x4000
WORD83_LBA48 = 0x0400

AOE_ERRORS = {1: "unrecognized command code", 2: "bad argument parameter", 3: "device unavailable",
              4: "config string present", 5: "unsupported version", 6: "target is reserved"}

_ETH = struct.Struct("!6s6sH")
_AOE = struct.Struct("!BBHBBI")  # ver|flags, error, major, minor, command, tag
_CFG = struct.Struct("!HHBBH")  # bufcnt, firmware, max sectors per command, ver|ccmd, config length
_ATA = struct.Struct("!BBBB6s2x")  # aflags, err/feature, sector count, cmd/status, lba0-5
HEADER_LEN = _ETH.size + _AOE.size
PACKET_OUTGOING = getattr(socket, "PACKET_OUTGOING", 4)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# Every export answers the broadcast at once: a SAN with a few hundred exports overflows the
# default socket buffer (~200 KiB, each frame costs ~1 KiB of it) and answers would be lost.
RECEIVE_BUFFER = 4 * 1024 * 1024


class Frame(NamedTuple):
    dst: bytes
    src: bytes
    shelf: int
    slot: int
    command: int
    tag: int
    response: bool
    error: int | None  # the AoE error code when the error flag is set
    payload: bytes


class ConfigAnswer(NamedTuple):
    shelf: int
    slot: int
    mac: str
    tag: int
    bufcnt: int
    firmware: int
    max_sectors: int  # sectors per ATA command the target accepts (from its MTU)
    aoe_version: int
    config: bytes


class AtaAnswer(NamedTuple):
    shelf: int
    slot: int
    mac: str
    tag: int
    status: int
    ata_error: int
    data: bytes


class Export(NamedTuple):
    shelf: int
    slot: int
    mac: str
    bufcnt: int
    firmware: int
    sectors: int | None


class ProbeResult(NamedTuple):
    exports: list  # of Export, sorted by shelf, slot, mac
    errors: list  # of str: error answers, failed IDENTIFYs


class ProbeError(Exception):
    """The probe itself cannot run (no such interface, no permission)."""


# ---- pure frame building and parsing ------------------------------------------------------------


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def pad_frame(frame: bytes) -> bytes:
    return frame + b"\0" * (MIN_FRAME - len(frame)) if len(frame) < MIN_FRAME else frame


def frame_header(dst: bytes, src: bytes, shelf: int, slot: int, command: int, tag: int) -> bytes:
    if not 0 <= shelf <= ANY_SHELF or not 0 <= slot <= ANY_SLOT:
        raise ValueError(f"shelf {shelf} / slot {slot} out of range")
    return _ETH.pack(dst, src, ETH_P_AOE) + _AOE.pack(AOE_VERSION << 4, 0, shelf, slot, command, tag)


def build_query_config(src: bytes, tag: int, shelf: int = ANY_SHELF, slot: int = ANY_SLOT,
                       dst: bytes = BROADCAST) -> bytes:
    """A Query Config request (command 1, config command 0 = read) with no config string."""
    body = _CFG.pack(0, 0, 0, (AOE_VERSION << 4) | CCMD_READ, 0)
    return pad_frame(frame_header(dst, src, shelf, slot, CMD_CONFIG, tag) + body)


def build_identify(src: bytes, dst: bytes, shelf: int, slot: int, tag: int) -> bytes:
    """An ATA IDENTIFY DEVICE (0xEC) for one sector, addressed to one target's MAC."""
    body = _ATA.pack(0, 0, 1, ATA_IDENTIFY, b"\0" * 6)
    return pad_frame(frame_header(dst, src, shelf, slot, CMD_ATA, tag) + body)


def parse_frame(frame: bytes) -> Frame | None:
    """The AoE header of an Ethernet frame, or None if it is not an AoE version 1 frame."""
    if len(frame) < HEADER_LEN:
        return None
    dst, src, ethertype = _ETH.unpack_from(frame, 0)
    if ethertype != ETH_P_AOE:
        return None
    verflags, error, shelf, slot, command, tag = _AOE.unpack_from(frame, _ETH.size)
    if verflags >> 4 != AOE_VERSION:
        return None
    return Frame(dst, src, shelf, slot, command, tag, bool(verflags & FLAG_RESPONSE),
                 error if verflags & FLAG_ERROR else None, frame[HEADER_LEN:])


def parse_config_answer(frame: Frame) -> ConfigAnswer | None:
    if not frame.response or frame.command != CMD_CONFIG or frame.error is not None:
        return None
    if len(frame.payload) < _CFG.size:
        return None
    bufcnt, firmware, max_sectors, vercmd, length = _CFG.unpack_from(frame.payload, 0)
    config = frame.payload[_CFG.size:_CFG.size + length]
    return ConfigAnswer(frame.shelf, frame.slot, mac_to_str(frame.src), frame.tag, bufcnt, firmware,
                        max_sectors, vercmd >> 4, config)


def parse_ata_answer(frame: Frame) -> AtaAnswer | None:
    if not frame.response or frame.command != CMD_ATA or frame.error is not None:
        return None
    if len(frame.payload) < _ATA.size:
        return None
    _aflags, ata_error, _count, status, _lba = _ATA.unpack_from(frame.payload, 0)
    return AtaAnswer(frame.shelf, frame.slot, mac_to_str(frame.src), frame.tag, status, ata_error,
                     frame.payload[_ATA.size:])


def identify_sectors(data: bytes) -> int | None:
    """The device size in sectors from IDENTIFY DEVICE data: words 100-103 when LBA48 is supported,
    else words 60-61; None if the data is short or says zero."""
    if len(data) < 512:
        return None
    words = struct.unpack_from("<256H", data)
    w83 = words[83]
    if w83 & WORD83_VALID_MASK == WORD83_VALID and w83 & WORD83_LBA48:
        sectors = words[100] | words[101] << 16 | words[102] << 32 | words[103] << 48
    else:
        sectors = words[60] | words[61] << 16
    return sectors or None


def describe_error(frame: Frame) -> str:
    code = frame.error if frame.error is not None else 0
    what = "Query Config" if frame.command == CMD_CONFIG else f"command {frame.command}"
    return (f"e{frame.shelf}.{frame.slot} ({mac_to_str(frame.src)}): {what} answered with error {code} "
            f"({AOE_ERRORS.get(code, 'unknown')})")


def wanted(shelf_filter: int, slot_filter: int, shelf: int, slot: int) -> bool:
    return shelf_filter in (ANY_SHELF, shelf) and slot_filter in (ANY_SLOT, slot)


# ---- socket I/O ---------------------------------------------------------------------------------


class TagSource:
    """Request tags: random start so that two probes (or a kernel initiator on the same MAC) do not
    mistake each other's answers; never 0, which vblade uses for its unsolicited announcement."""

    def __init__(self) -> None:
        self._next = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF or 1

    def __call__(self) -> int:
        tag = self._next
        self._next = (self._next + 1) & 0x7FFFFFFF or 1
        return tag


def open_socket(interface: str) -> tuple[socket.socket, bytes]:
    """A raw AoE socket bound to `interface` and the interface's own MAC."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_AOE))
    except PermissionError as exc:
        raise ProbeError(f"no permission to open a raw socket (need root or CAP_NET_RAW): {exc}") from exc
    except OSError as exc:
        raise ProbeError(f"cannot open a raw AoE socket: {exc}") from exc
    try:
        sock.bind((interface, ETH_P_AOE))
    except OSError as exc:
        sock.close()
        raise ProbeError(f"cannot use interface {interface!r}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)  # root may exceed rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    mac = sock.getsockname()[4]
    if len(mac) != 6:
        sock.close()
        raise ProbeError(f"interface {interface!r} is not an Ethernet interface")
    return sock, mac


def _send(sock: socket.socket, frame: bytes, interface: str) -> None:
    try:
        sock.send(frame)
    except OSError as exc:
        raise ProbeError(f"cannot send on {interface!r}: {exc.strerror or exc}") from exc


def _frames_until(sock: socket.socket, deadline: Callable[[], float]) -> Iterator[Frame]:
    """AoE answers received before `deadline()` (asked again after each frame); our own outgoing
    frames are skipped."""
    while True:
        remaining = deadline() - time.monotonic()
        if remaining <= 0:
            return
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            return
        data, address = sock.recvfrom(65536)
        if address[2] == PACKET_OUTGOING:
            continue
        frame = parse_frame(data)
        if frame is not None and frame.response:
            yield frame


def _collect_config(sock: socket.socket, mac: bytes, interface: str, shelf: int, slot: int,
                    timeout: float, tags: TagSource, errors: list, expect: frozenset = frozenset(),
                    grace: float = EXPECT_GRACE) -> dict:
    """Every Query Config answer within `timeout`. The broadcast goes out twice (at the start and
    half-way) so that one lost frame does not hide an export; answers are de-duplicated. With
    `expect` ((shelf, slot) pairs), collecting ends `grace` seconds after the last of them
    answered: time enough for a second target claiming one of them (a misconfigured SAN) to
    answer the same broadcast, without waiting out the whole window."""
    answers: dict = {}
    sent: set = set()
    start = time.monotonic()
    settled = float("inf")  # when collecting may end
    for round_end in (start + timeout / 2, start + timeout):
        if time.monotonic() >= settled:
            break
        tag = tags()
        sent.add(tag)
        _send(sock, build_query_config(mac, tag, shelf, slot), interface)
        for frame in _frames_until(sock, lambda end=round_end: min(end, settled)):  # noqa: B023 - the latest
            if frame.tag not in sent or frame.command != CMD_CONFIG:
                continue
            if frame.error is not None:
                errors.append(describe_error(frame))
                continue
            answer = parse_config_answer(frame)
            if answer is not None and wanted(shelf, slot, answer.shelf, answer.slot):
                answers[(answer.shelf, answer.slot, answer.mac)] = answer
                if expect and settled == float("inf") and expect <= {(s, n) for s, n, _mac in answers}:
                    settled = time.monotonic() + grace
    return answers


def _identify_all(sock: socket.socket, mac: bytes, interface: str, answers: dict, timeout: float,
                  tags: TagSource, errors: list) -> dict:
    """Sector counts by (shelf, slot, mac). Unanswered requests are re-sent once half-way."""
    sectors: dict = {}
    pending = set(answers)
    by_tag: dict = {}  # every tag sent, so that a late answer to the first round still counts
    start = time.monotonic()
    for round_end in (start + timeout / 2, start + timeout):
        if not pending:
            break
        for key in sorted(pending):
            shelf, slot, target = key
            tag = tags()
            by_tag[tag] = key
            _send(sock, build_identify(mac, mac_from_str(target), shelf, slot, tag), interface)
        for frame in _frames_until(sock, lambda end=round_end: end):
            key = by_tag.get(frame.tag)
            if key is None or key not in pending or mac_to_str(frame.src) != key[2]:
                continue
            pending.discard(key)
            sectors[key] = _identified_size(frame, errors)
            if not pending:
                break
    for shelf, slot, target in sorted(pending):
        errors.append(f"e{shelf}.{slot} ({target}): no answer to IDENTIFY within {timeout:g} s")
    return sectors


def _identified_size(frame: Frame, errors: list) -> int | None:
    if frame.error is not None:
        errors.append(describe_error(frame))
        return None
    answer = parse_ata_answer(frame)
    size = identify_sectors(answer.data) if answer and not answer.status & ATA_STATUS_ERR else None
    if size is None:
        status = f"{answer.status:#04x}" if answer else "unreadable"
        errors.append(f"e{frame.shelf}.{frame.slot} ({mac_to_str(frame.src)}): IDENTIFY failed (ATA status {status})")
    return size


def probe(interface: str, shelf: int = ANY_SHELF, slot: int = ANY_SLOT, identify: bool = False,
          timeout: float = 2.0, expect: frozenset = frozenset()) -> ProbeResult:
    """Probe the SAN on `interface`. Raises ProbeError when the probe cannot run at all."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    sock, mac = open_socket(interface)
    errors: list = []
    tags = TagSource()
    try:
        answers = _collect_config(sock, mac, interface, shelf, slot, timeout, tags, errors, expect)
        sectors = _identify_all(sock, mac, interface, answers, timeout, tags, errors) if identify else {}
    finally:
        sock.close()
    exports = [
        Export(a.shelf, a.slot, a.mac, a.bufcnt, a.firmware, sectors.get(key))
        for key, a in sorted(answers.items())
    ]
    return ProbeResult(exports, errors)


def _number(maximum: int):
    def parse(text: str) -> int:
        value = int(text, 0)
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text} is not in 0..{maximum}")
        return value
    return parse


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _addresses(text: str) -> frozenset:
    try:
        pairs = [part.split(".") for part in text.split(",") if part]
        found = frozenset((_number(ANY_SHELF - 1)(s), _number(ANY_SLOT - 1)(n)) for s, n in pairs)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of SHELF.SLOT") from exc
    return found


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aoe_probe", description="Probe AoE exports on one interface.")
    parser.add_argument("--interface", required=True)
    parser.add_argument("--shelf", type=_number(ANY_SHELF), default=ANY_SHELF, help="65535 = all")
    parser.add_argument("--slot", type=_number(ANY_SLOT), default=ANY_SLOT, help="255 = all")
    parser.add_argument("--identify", action="store_true", help="also read each export's size")
    parser.add_argument("--timeout", type=_positive, default=2.0, help="seconds to collect answers")
    parser.add_argument("--expect", type=_addresses, default=frozenset(),
                        help=f"S.L,S.L...: stop {EXPECT_GRACE:g} s after all of these answered")
    args = parser.parse_args(argv)
    try:
        result = probe(args.interface, args.shelf, args.slot, args.identify, args.timeout, args.expect)
    except ProbeError as exc:
        print(f"aoe_probe: {exc}", file=sys.stderr)
        return 2
    for error in result.errors:
        print(f"aoe_probe: warning: {error}", file=sys.stderr)
    json.dump({"exports": [dict(e._asdict()) for e in result.exports]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
