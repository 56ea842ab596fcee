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
"""
from __future__ import annotations

import re
from dataclasses import dataclass

HEALTHY, DEGRADED, RESYNCING = "healthy", "degraded", "resyncing"
# Rebuilding redundancy, as opposed to a scrub ("check") that reads a whole array.
REBUILDS = frozenset({"recovery", "resync", "reshape"})

_ARRAY = re.compile(r"^(?P<name>md\S*)\s*:\s*(?P<rest>.*)$")
_MEMBER = re.compile(r"^(?P<device>[^\[\s]+)\[(?P<number>\d+)\](?P<flags>(?:\([A-Z]\))*)$")
_SLOTS = re.compile(r"\[(?P<total>\d+)/(?P<working>\d+)\]\s*\[(?P<map>[U_]+)\]")
_PROGRESS = re.compile(
    r"(?P<action>recovery|resync|check|reshape|repair)\s*=\s*(?P<percent>[\d.]+)%"
    r"(?:\s*\((?P<done>\d+)/(?P<total>\d+)\))?"
    r"(?:\s*finish=(?P<finish>[\d.]+)min)?"
    r"(?:\s*speed=(?P<speed>\d+)K/sec)?"
)
_WAITING = re.compile(r"(?P<action>recovery|resync|reshape|check)\s*=\s*(?P<why>DELAYED|PENDING)")
_BITMAP = re.compile(r"^bitmap:\s*(?P<text>.*)$")


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
    """The text is not /proc/mdstat."""


def parse_mdstat(text: str) -> MdStat:
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Personalities"):
        raise MdStatError(f"not /proc/mdstat: {text[:80]!r}")
    personalities = tuple(re.findall(r"\[(\w+)\]", lines[0]))
    arrays: list[Array] = []
    block: list[str] = []
    for line in lines[1:]:
        if _ARRAY.match(line):
            if block:
                arrays.append(_parse_array(block))
            block = [line]
        elif block and line.strip() and not line.startswith("unused devices"):
            block.append(line.strip())
        elif not line.strip() and block:
            arrays.append(_parse_array(block))
            block = []
    if block:
        arrays.append(_parse_array(block))
    return MdStat(personalities, tuple(arrays))


def _parse_array(block: list[str]) -> Array:
    match = _ARRAY.match(block[0])
    assert match is not None  # the caller only starts a block on such a line
    words = match.group("rest").split()
    active = bool(words) and words[0] == "active"
    words = words[1:] if words and words[0] in ("active", "inactive") else words
    read_only = bool(words) and words[0] in ("(read-only)", "(auto-read-only)")
    words = words[1:] if read_only else words
    level = words[0] if words and active and not _MEMBER.match(words[0]) else ""
    members = tuple(_member(word) for word in words[1 if level else 0:] if _MEMBER.match(word))
    fields: dict = {}
    for line in block[1:]:
        if slots := _SLOTS.search(line):
            fields.update(slots=int(slots["total"]), working=int(slots["working"]), slot_map=slots["map"])
        if waiting := _WAITING.search(line):
            fields["sync"] = Sync(waiting["action"], waiting=waiting["why"])
        elif progress := _PROGRESS.search(line):
            fields["sync"] = Sync(
                progress["action"], float(progress["percent"]),
                float(progress["finish"]) * 60 if progress["finish"] else None,
                int(progress["speed"]) if progress["speed"] else None,
            )
        if bitmap := _BITMAP.match(line):
            fields["bitmap"] = bitmap["text"]
    return Array(match.group("name"), active, read_only, level, members, **fields)


def _member(word: str) -> Member:
    match = _MEMBER.match(word)
    assert match is not None
    flags = match.group("flags")
    return Member(match.group("device"), int(match.group("number")), faulty="(F)" in flags,
                  spare="(S)" in flags, write_mostly="(W)" in flags, replacement="(R)" in flags)
