"""Linux md's /proc/mdstat, parsed: what a guest's RAID1 says about itself.

Pure functions over the text (tests feed them captured output); drivers/guest_agent.py fetches it.
The format is the kernel's (drivers/md/md.c: md_seq_show, status_resync):

    md0 : active raid1 vdb[1](F) vda[0]
          31744 blocks super 1.2 [2/1] [U_]
          [=====>...............]  recovery = 25.3% (8320/31744) finish=0.2min speed=1386K/sec
          bitmap: 1/1 pages [4KB], 65536KB chunk

`[U_]` has one character per slot (role) of the array, in role order: `U` in sync, `_` missing
or being rebuilt. For an array created as `vda vdb` (the panel's guests), slot N is the panel's
leg N.

The text comes from inside a tenant's guest, so it is hostile input: the guest can write anything
into what its agent calls /proc/mdstat. Every field comes out bounded (names to the kernel's 32
characters of ASCII, percent 0..100, an ETA and a speed finite and capped) or absent when it does
not parse; text that cannot be md's at all (too large, NUL bytes, an array line with a name no
kernel gives) is refused with MdStatError, and nothing else is ever raised.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

HEALTHY, DEGRADED, RESYNCING = "healthy", "degraded", "resyncing"
# Rebuilding redundancy, as opposed to a scrub ("check") that reads a whole array.
REBUILDS = frozenset({"recovery", "resync", "reshape"})
# A guest's mdstat is a few hundred bytes; a server with dozens of arrays a few KB.
MAX_TEXT = 64 * 1024
MAX_NAME = 32  # the kernel's DISK_NAME_LEN, for arrays and members alike
MAX_PERSONALITIES = 32
MAX_SLOTS = 256  # far more devices than any array has (the panel's have two)
# md's finish= is remaining / current speed: a stalled resync shows years. Past a month it is no ETA.
MAX_ETA_S = 30 * 86400
MAX_SPEED_KIB_S = 100 << 20  # 100 GiB/s
_NUMBER_CHARS = 24  # longer digit strings are not md's numbers (and float() would make them inf)

# re.ASCII: \d, \w and \s as md prints them (Python's \d also takes "٢", and int() reads it).
_ARRAY = re.compile(r"^(?P<name>md[A-Za-z0-9_]{0,30})[ \t]*:[ \t]*(?P<rest>.*)$", re.ASCII)
_ARRAY_LIKE = re.compile(r"^md\S*[ \t]*:", re.ASCII)  # looks like an array line, name or not
_DEVICE = r"[A-Za-z0-9_.:!+-]{1,32}"
_MEMBER = re.compile(rf"^(?P<device>{_DEVICE})\[(?P<number>[0-9]{{1,4}})\](?P<flags>(?:\([A-Z]\)){{0,8}})$",
                     re.ASCII)
_LEVEL = re.compile(r"^[a-z0-9]{1,32}$", re.ASCII)
_SLOTS = re.compile(r"\[(?P<total>[0-9]{1,4})/(?P<working>[0-9]{1,4})\][ \t]*\[(?P<map>[U_]{1,256})\]", re.ASCII)
_PROGRESS = re.compile(
    r"(?P<action>recovery|resync|check|reshape|repair)[ \t]*=[ \t]*(?P<percent>[0-9.]+)%"
    r"(?:[ \t]*\((?P<done>[0-9]+)/(?P<total>[0-9]+)\))?"
    r"(?:[ \t]*finish=(?P<finish>[0-9.]+)min)?"
    r"(?:[ \t]*speed=(?P<speed>[0-9]+)K/sec)?",
    re.ASCII,
)
_WAITING = re.compile(r"(?P<action>recovery|resync|reshape|check)[ \t]*=[ \t]*(?P<why>DELAYED|PENDING)", re.ASCII)
_BITMAP = re.compile(r"^bitmap:[ \t]*(?P<text>[ -~]{0,128})$", re.ASCII)
_PERSONALITY = re.compile(r"\[([A-Za-z0-9_]{1,32})\]", re.ASCII)


@dataclass(frozen=True)
class Member:
    device: str  # "vdb"
    number: int  # the [N] after the name: its descriptor number (its role, for the original members)
    faulty: bool = False  # (F)
    spare: bool = False  # (S)
    write_mostly: bool = False  # (W)
    replacement: bool = False  # (R)


@dataclass(frozen=True)
class Sync:
    action: str  # recovery, resync, check, reshape, repair
    percent: float | None = None  # None while DELAYED / PENDING
    eta_s: float | None = None  # finish=0.2min
    speed_kib_s: int | None = None
    waiting: str = ""  # "DELAYED" or "PENDING": queued behind another array on the same disks


@dataclass(frozen=True)
class Array:
    name: str  # "md0"
    active: bool
    read_only: bool
    level: str  # "raid1" ("" for an inactive array)
    members: tuple[Member, ...]
    slots: int | None = None  # [2/1]: 2 slots ...
    working: int | None = None  # ... 1 working
    slot_map: str = ""  # "U_"
    sync: Sync | None = None
    bitmap: str = ""  # "1/1 pages [4KB], 65536KB chunk"

    @property
    def missing_slots(self) -> tuple[int, ...]:
        """The slots (roles) that do not hold an in-sync copy: a lost leg, or one being rebuilt."""
        return tuple(index for index, mark in enumerate(self.slot_map) if mark == "_")

    @property
    def health(self) -> str:
        """healthy, degraded (a slot missing, nothing rebuilding it) or resyncing (a rebuild under
        way or queued). An inactive array is degraded: it serves nothing until assembled."""
        if self.sync is not None and self.sync.action in REBUILDS:
            return RESYNCING
        if not self.active or self.missing_slots or any(m.faulty for m in self.members):
            return DEGRADED
        return HEALTHY


@dataclass(frozen=True)
class MdStat:
    personalities: tuple[str, ...]
    arrays: tuple[Array, ...]

    def array_on(self, devices: tuple[str, ...]) -> Array | None:
        """The array with a member on any of `devices` (whole disks; partitions like vda1 count
        for vda), or the only array if there is just one; None if there is none."""
        for array in self.arrays:
            if any(_whole_disk(m.device) in devices for m in array.members):
                return array
        return self.arrays[0] if len(self.arrays) == 1 else None


def _whole_disk(device: str) -> str:
    return re.sub(r"p?\d+$", "", device) if re.search(r"\d$", device) and not device.startswith("md") else device


class MdStatError(ValueError):
    """The text is not /proc/mdstat (or not one this parser trusts)."""


def parse_mdstat(text: str) -> MdStat:
    """The arrays in `text`. Raises MdStatError, and nothing else, for text that is not md's."""
    if len(text) > MAX_TEXT:
        raise MdStatError(f"{len(text)} characters: larger than any /proc/mdstat ({MAX_TEXT})")
    if "\x00" in text:
        raise MdStatError("NUL bytes: not /proc/mdstat")
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Personalities"):
        raise MdStatError(f"not /proc/mdstat: {_shown(text)}")
    personalities = tuple(_PERSONALITY.findall(lines[0])[:MAX_PERSONALITIES])
    arrays: list[Array] = []
    block: list[str] = []
    for line in lines[1:]:
        if line[:1].isspace() or not line:
            # An array's indented detail line, or the blank line after it.
            if not line.strip() and block:
                arrays.append(_parse_array(block))
                block = []
            elif line.strip() and block:
                block.append(line.strip())
            continue
        # At the margin: a new array, or something that ends the one before ("unused devices").
        if block:
            arrays.append(_parse_array(block))
            block = []
        if _ARRAY.match(line):
            block = [line]
        elif _ARRAY_LIKE.match(line):
            raise MdStatError(f"an array name no kernel gives: {_shown(line)}")
    if block:
        arrays.append(_parse_array(block))
    return MdStat(personalities, tuple(arrays))


def _shown(text: str) -> str:
    """A bounded excerpt for an error message (repr: control characters stay visible, escaped)."""
    return repr(text[:60])[:120]


def _number(text: str | None, limit: float) -> float | None:
    """A decimal as md prints it, or None when it is absent, malformed ("1.2.3"), or outside 0..limit."""
    if text is None or len(text) > _NUMBER_CHARS:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value <= limit else None


def _sync(progress: re.Match[str]) -> Sync:
    minutes = _number(progress["finish"], MAX_ETA_S / 60)
    speed = _number(progress["speed"], MAX_SPEED_KIB_S)
    return Sync(progress["action"], _number(progress["percent"], 100),
                minutes * 60 if minutes is not None else None, int(speed) if speed is not None else None)


def _parse_array(block: list[str]) -> Array:
    match = _ARRAY.match(block[0])
    assert match is not None  # the caller only starts a block on such a line
    words = match.group("rest").split()
    active = bool(words) and words[0] == "active"
    words = words[1:] if words and words[0] in ("active", "inactive") else words
    read_only = bool(words) and words[0] in ("(read-only)", "(auto-read-only)")
    words = words[1:] if read_only else words
    has_level = bool(words) and active and not _MEMBER.match(words[0])
    level = words[0] if has_level and _LEVEL.match(words[0]) else ""
    members = tuple(_member(word) for word in words[1 if has_level else 0:] if _MEMBER.match(word))
    fields: dict = {}
    for line in block[1:]:
        if slots := _SLOTS.search(line):
            total, working = int(slots["total"]), int(slots["working"])
            if total <= MAX_SLOTS and working <= total and len(slots["map"]) == total:
                fields.update(slots=total, working=working, slot_map=slots["map"])
        if waiting := _WAITING.search(line):
            fields["sync"] = Sync(waiting["action"], waiting=waiting["why"])
        elif progress := _PROGRESS.search(line):
            fields["sync"] = _sync(progress)
        if bitmap := _BITMAP.match(line):
            fields["bitmap"] = bitmap["text"]
    return Array(match.group("name"), active, read_only, level, members, **fields)


def _member(word: str) -> Member:
    match = _MEMBER.match(word)
    assert match is not None
    flags = match.group("flags")
    return Member(match.group("device"), int(match.group("number")), faulty="(F)" in flags,
                  spare="(S)" in flags, write_mostly="(W)" in flags, replacement="(R)" in flags)
