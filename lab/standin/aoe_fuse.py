"""One AoE export as a FUSE file, for the lab's AoE initiator stand-in (see aoe_standin.py).

    python -m lab.standin.aoe_fuse --interface san0 --shelf S --slot L --mountpoint DIR --file-name NAME

finds the export on the SAN (Query Config), reads its size (ATA IDENTIFY), mounts a FUSE file
system on DIR holding one file NAME of that size, and serves it until the file system goes away:
read/write/fsync of the file become ATA READ/WRITE SECTORS EXT and FLUSH CACHE EXT commands to the
vblade (lab/standin/aoe_initiator.py). aoe-discover attaches a loop device to the file
(`losetup --direct-io=on`) and makes /dev/etherd/eS.L a node of it.

A request the SAN does not answer fails with EIO after the initiator's deadline instead of
hanging, so a RAID1 in the guest degrades when a disk server dies, and works again on the same
device when the export answers again. The file is opened with FUSE's direct_io: nothing is cached
here, every read goes to the target.

Lifetime: runs in the foreground (aoe-discover starts it detached, output to a log). It ends when
the file system is unmounted and nothing holds the file any more (aoe-flush: loop detached and a
lazy unmount), on SIGTERM, or with exit 1 if the export does not answer at start.
Single-threaded (libfuse's -s): one request at a time, each pipelining up to the target's buffer
count of commands.
"""
from __future__ import annotations

import argparse
import errno
import logging
import stat
import sys
import time

import mfusepy

from lab.standin.aoe_initiator import DEADLINE, SECTOR, AoEIOError, Initiator

log = logging.getLogger("aoe-fuse")


class ExportFile(mfusepy.Operations):
    """A file system with one file: the export, `sectors` * 512 bytes."""

    use_ns = True

    def __init__(self, initiator: Initiator, sectors: int, file_name: str) -> None:
        self.initiator = initiator
        self.size = sectors * SECTOR
        self.path = "/" + file_name
        self.file_name = file_name
        self.started = time.time_ns()
        self.failing = False  # for logging the first failure and the recovery only

    # -- metadata ------------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        times = {"st_atime": self.started, "st_mtime": self.started, "st_ctime": self.started}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
        if path == self.path:
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": self.size,
                    "st_blocks": self.size // 512, **times}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", self.file_name]

    def open(self, path: str, flags: int) -> int:
        if path != self.path:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if length != self.size:  # an AoE disk has the size its target says
            raise mfusepy.FuseOSError(errno.EPERM)
        return 0

    # -- data ----------------------------------------------------------------------------------

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        if not size:
            return b""
        first, end = offset // SECTOR, -(-(offset + size) // SECTOR)
        data = self._io("read", self.initiator.read, first, end - first)
        skip = offset - first * SECTOR
        return data[skip:skip + size]

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if offset + len(data) > self.size:
            raise mfusepy.FuseOSError(errno.ENOSPC)
        if not data:
            return 0
        first, end = offset // SECTOR, -(-(offset + len(data)) // SECTOR)
        skip = offset - first * SECTOR
        if skip or len(data) % SECTOR:  # the loop device never does this; a plain write() may
            sectors = bytearray(self._io("read", self.initiator.read, first, end - first))
            sectors[skip:skip + len(data)] = data
            data_to_write = bytes(sectors)
        else:
            data_to_write = data
        self._io("write", self.initiator.write, first, data_to_write)
        return len(data)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._io("flush", self.initiator.flush)
        return 0

    def _io(self, what: str, call, *args):
        try:
            result = call(*args)
        except AoEIOError as exc:
            if not self.failing:
                log.warning("%s failed, answering EIO until the export answers again: %s", what, exc.strerror)
            self.failing = True
            raise
        if self.failing:
            target = self.initiator.target
            log.warning("%s: the export answers again%s", self.initiator.name,
                        f" from {target.mac.hex(':')}" if target else "")
            self.failing = False
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aoe_fuse", description="Serve one AoE export as a FUSE file.")
    parser.add_argument("--interface", required=True)
    parser.add_argument("--shelf", type=int, required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("--file-name", required=True)
    parser.add_argument("--deadline", type=float, default=DEADLINE, help="seconds before a request fails")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s aoe-fuse[e{args.shelf}.{args.slot}] %(message)s")
    logging.getLogger("mfusepy").setLevel(logging.ERROR)  # it logs every EIO with a traceback
    try:
        initiator = Initiator(args.interface, args.shelf, args.slot, deadline=args.deadline)
        target = initiator.connect()
        sectors = initiator.identify()
    except (AoEIOError, OSError) as exc:
        log.error("cannot reach the export: %s", exc)
        return 1
    log.info("target %s: %d sectors, %d buffers, %d sectors per command; serving %s/%s", target.mac.hex(":"),
             sectors, target.bufcnt, target.max_sectors, args.mountpoint, args.file_name)
    try:
        mfusepy.FUSE(ExportFile(initiator, sectors, args.file_name), args.mountpoint, foreground=True,
                     nothreads=True, direct_io=True, fsname=f"aoe-standin-e{args.shelf}.{args.slot}")
    except RuntimeError as exc:  # libfuse's fuse_main: 8 = its loop ended by a signal (SIGTERM) or an error
        log.error("the FUSE loop ended by a signal or an error (fuse_main returned %s)", exc)
        return 1
    finally:
        initiator.close()
    log.info("unmounted, exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
