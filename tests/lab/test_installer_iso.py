"""The lab's installer ISO (lab/guests/installer_iso.py) under real QEMU (TCG), the way the panel
attaches it: an IDE CD-ROM on the secondary master (libvirt's `hdc`) of the i440fx `pc` machine,
two virtio-blk disks with the serials of the VM's legs, CD first (SeaBIOS), serial console and VGA.

No lab cluster is needed: QEMU runs here, as a plain process, on raw files. The ISO is cached
under LAB_DIR/guests (as the mirror guest is), so only the first run builds it.
"""
from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.guests import installer_iso

MIB = 1024 * 1024
BOOT_TIMEOUT = 180.0  # seconds; TCG on a 2-core machine: a boot takes 15-35 s here
SHELL_TIMEOUT = 30.0
DISK_SIZE = 64 * MIB
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is missing")


class Guest:
    """One QEMU process: its serial console on stdin/stdout (kept in `output`), HMP on a socket."""

    def __init__(self, directory: Path, *, disks: list[Path], cdrom: Path | bool | None = None,
                 disk_boot_order: list[int] | None = None) -> None:
        """`cdrom`: an ISO in the drive, True for an empty drive, None for no CD drive at all.
        Boot order: CD then the first disk (`-boot order=dc`, libvirt's `<os><boot dev=.../>`), or
        with `disk_boot_order` per device (bootindex, libvirt's `<boot order=.../>`): the CD, then
        the disks in that order (SeaBIOS boots only the first one: its BIOS drive 0x80)."""
        self.monitor_path = directory / f"monitor-{secrets.token_hex(4)}.sock"
        argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-nodefaults",
                "-vga", "std", "-display", "none", "-serial", "stdio",
                "-monitor", f"unix:{self.monitor_path},server=on,wait=off"]
        if disk_boot_order is None:
            argv += ["-boot", "order=dc"]
        if cdrom is not None:
            medium = f",file={cdrom},format=raw,readonly=on" if isinstance(cdrom, Path) else ""
            if disk_boot_order is None:  # the secondary master: libvirt's target hdc
                argv += ["-drive", f"if=ide,index=2,media=cdrom,id=cd{medium}"]
            else:
                argv += ["-drive", f"if=none,media=cdrom,id=cd{medium}",
                         "-device", "ide-cd,bus=ide.1,unit=0,drive=cd,bootindex=0"]
        for index, disk in enumerate(disks):
            boot = f",bootindex={1 + disk_boot_order[index]}" if disk_boot_order else ""
            argv += ["-drive", f"if=none,id=leg{index},file={disk},format=raw",
                     "-device", f"virtio-blk-pci,drive=leg{index},serial=xenaoe-leg{index}{boot}"]
        self.started = time.monotonic()
        self.output = bytearray()
        self.lock = threading.Lock()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := self.process.stdout.read1(65536):
            with self.lock:
                self.output += chunk

    def text(self) -> str:
        """The serial output so far, without terminal escapes and carriage returns. Positions in
        it (mark(), a match's end()) are where to start waiting for what comes next."""
        with self.lock:
            data = bytes(self.output)
        return ANSI.sub("", data.decode(errors="replace"))

    def mark(self) -> int:
        return len(self.text())

    def tail(self, start: int = 0) -> str:
        return self.text()[start:][-3000:]

    def wait_for(self, pattern: str, timeout: float, *, start: int = 0, what: str = "") -> re.Match:
        """The first match of `pattern` (multi-line) at or after position `start` of text()."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text(), start)
            if match:
                return match
            if self.process.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.process.returncode}) before {what or pattern!r}; "
                                     f"serial output:\n{self.tail(start)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what or pattern!r} within {timeout:g} s; serial output:\n{self.tail(start)}")
            time.sleep(0.2)

    def send(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def type(self, line: str) -> None:
        self.send(line.encode() + b"\r")

    def shell(self, command: str, expect: str, *, timeout: float = SHELL_TIMEOUT) -> re.Match:
        """Type `command` at the serial console's prompt and wait for a whole output line `expect`."""
        start = self.mark()
        self.type(command)
        return self.wait_for(rf"^{re.escape(expect)}$", timeout, start=start, what=f"output {expect!r} of {command!r}")

    def monitor(self, command: str) -> str:
        """Run an HMP command; its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.monitor_path))
            received = b""
            while not received.endswith(b"(qemu) "):
                received += sock.recv(4096)
            sock.sendall(command.encode() + b"\n")
            received = b""
            while b"\n" not in received or not received.endswith(b"(qemu) "):
                received += sock.recv(4096)
        return ANSI.sub("", received.decode(errors="replace")).rsplit("\n", 1)[0].split("\n", 1)[-1]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.reader.join(timeout=5)
        self.process.stdin.close()
        self.process.stdout.close()
        self.monitor_path.unlink(missing_ok=True)


@pytest.fixture
def guests(tmp_path: Path) -> Iterator:
    """start(disks=..., cdrom=...) -> Guest; every QEMU started is killed at the end of the test."""
    started: list[Guest] = []

    def start(**kwargs) -> Guest:
        guest = Guest(tmp_path, **kwargs)
        started.append(guest)
        return guest

    try:
        yield start
    finally:
        for guest in started:
            guest.close()


@pytest.fixture(scope="session")
def iso() -> Path:
    from django.conf import settings

    return installer_iso.build(Path(settings.LAB_DIR) / "guests")


def blank_disks(directory: Path, count: int = 2) -> list[Path]:
    disks = [directory / f"disk{index}.raw" for index in range(count)]
    for disk in disks:
        with disk.open("wb") as out:
            out.truncate(DISK_SIZE)
    return disks


def lit_fraction(ppm: Path) -> tuple[int, int, float]:
    """Width, height and the fraction of non-black pixels of a binary PPM (QEMU's screendump)."""
    data = ppm.read_bytes()
    magic, size, _maxval, pixels = data.split(b"\n", 3)
    assert magic == b"P6"
    width, height = (int(n) for n in size.split())
    lit = sum(1 for i in range(0, width * height * 3, 3) if pixels[i:i + 3] != b"\0\0\0")
    return width, height, lit / (width * height)


def test_the_iso_is_a_small_cached_hybrid_image(iso: Path, tmp_path: Path):
    data = iso.read_bytes()
    assert len(data) < 32 * MIB, f"{iso} is {len(data) / MIB:.1f} MiB"
    assert data[510:512] == b"\x55\xaa", "no MBR boot signature: not bootable from a hard disk"
    assert data[0x8001:0x8006] == b"CD001", "no ISO9660 volume descriptor"
    assert installer_iso.VOLUME_ID.encode() in data[0x8000:0x8800]
    begun = time.monotonic()
    assert installer_iso.build(iso.parent) == iso
    assert time.monotonic() - begun < 2, "the second build was not taken from the cache"
    # Another directory: a build of its own, of the same inputs.
    rebuilt = installer_iso.build(tmp_path / "cache")
    assert rebuilt.name == iso.name and rebuilt.stat().st_size > 0


@pytest.mark.slow  # an install and two boots of an emulated PC: `make slow`
def test_install_from_the_cd_then_eject_and_boot_from_disk(iso: Path, tmp_path: Path, guests):
    disks = blank_disks(tmp_path)
    guest = guests(disks=disks, cdrom=iso)
    guest.wait_for(re.escape(installer_iso.INSTALLING), BOOT_TIMEOUT, what="INSTALLING")
    installed = guest.wait_for(rf"{re.escape(installer_iso.INSTALLED)} onto (.*); eject the CD and reboot$",
                               BOOT_TIMEOUT, what="INSTALLED")
    print(f"INSTALLED {time.monotonic() - guest.started:.1f} s after QEMU started")
    assert installed.group(1).split() == ["vda", "vdb"], guest.tail()

    guest.wait_for(re.escape(installer_iso.PROMPT), SHELL_TIMEOUT, start=installed.end(), what="the shell's prompt")
    token = secrets.token_hex(6)
    guest.shell(f"echo hello-{token}", f"hello-{token}")

    # The VGA screen (what VNC shows) has text on it, not a blank canvas.
    screen = tmp_path / "screen.ppm"
    guest.monitor(f"screendump {screen}")
    width, height, lit = lit_fraction(screen)
    assert (width, height) == (720, 400), "not VGA text mode"
    assert lit > 0.02, f"the VGA screen is blank ({lit:.1%} lit)"

    # Both disks now hold the ISO's bytes (the guest synced them: conv=fsync).
    image = iso.read_bytes()
    for disk in disks:
        with disk.open("rb") as source:
            assert source.read(len(image)) == image, f"{disk.name} does not start with the ISO"

    # Eject live (the panel empties the drive), then a warm reboot from the shell: SeaBIOS finds no
    # bootable CD and boots the first disk; the system says so.
    answer = guest.monitor("eject -f cd")
    assert "error" not in answer.lower(), answer
    assert "not inserted" in guest.monitor("info block cd"), "the CD is still in the drive"
    start, rebooted = guest.mark(), time.monotonic()
    guest.type("reboot")
    booted = guest.wait_for(rf"{re.escape(installer_iso.BOOTED_FROM_DISK)} (.*); no CD media", BOOT_TIMEOUT,
                            start=start, what="BOOTED_FROM_DISK after the reboot")
    print(f"BOOTED_FROM_DISK {time.monotonic() - rebooted:.1f} s after `reboot` was typed")
    assert booted.group(1).startswith("vda (serial xenaoe-leg0, BIOS hd0)"), booted.group(0)
    assert installer_iso.INSTALLING not in guest.text()[start:]
    guest.wait_for(re.escape(installer_iso.PROMPT), SHELL_TIMEOUT, start=booted.end(), what="the shell's prompt")
    guest.shell(f"echo again-{token}", f"again-{token}")
    guest.close()

    # A cold boot with no CD drive at all (what the VM's next definition has).
    cold = guests(disks=disks)
    booted = cold.wait_for(rf"{re.escape(installer_iso.BOOTED_FROM_DISK)} (.*); no CD media", BOOT_TIMEOUT,
                           what="BOOTED_FROM_DISK")
    print(f"BOOTED_FROM_DISK {time.monotonic() - cold.started:.1f} s after QEMU started")
    assert booted.group(1).startswith("vda (serial xenaoe-leg0, BIOS hd0)"), booted.group(0)
    cold.wait_for(re.escape(installer_iso.PROMPT), SHELL_TIMEOUT, start=booted.end(), what="the shell's prompt")
    cold.shell(f"echo cold-{token}", f"cold-{token}")


def test_an_empty_cd_drive_then_the_iso_written_raw_on_a_disk(iso: Path, tmp_path: Path, guests):
    """An empty CD drive is no installer: the machine boots the disk that holds the ISO written raw
    (hybrid image). Here leg1 (vdb) is first in the boot order and leg0 is blank: the system names
    the disk the BIOS booted (its EDD data), not merely the first one."""
    disks = blank_disks(tmp_path)
    with disks[1].open("r+b") as out:
        out.write(iso.read_bytes())
    guest = guests(disks=disks, cdrom=True, disk_boot_order=[1, 0])
    # Bytes on the serial line while GRUB counts down (a console client connecting) do not stop it.
    guest.wait_for("automatically in", BOOT_TIMEOUT, what="GRUB's countdown")
    for _ in range(10):
        guest.send(b" ")
        time.sleep(0.1)
    booted = guest.wait_for(rf"{re.escape(installer_iso.BOOTED_FROM_DISK)} (.*); no CD media", BOOT_TIMEOUT,
                            what="BOOTED_FROM_DISK")
    assert booted.group(1).startswith("vdb (serial xenaoe-leg1, BIOS hd0)"), booted.group(0)
    assert installer_iso.INSTALLING not in guest.text()
    guest.wait_for(re.escape(installer_iso.PROMPT), SHELL_TIMEOUT, start=booted.end(), what="the shell's prompt")
    guest.shell("cat /sys/block/sr0/removable", "1")
    # The shell is respawned when it exits; `poweroff` powers the machine off.
    start = guest.mark()
    guest.type("exit")
    guest.wait_for(re.escape(installer_iso.PROMPT), SHELL_TIMEOUT, start=start + 1, what="the respawned shell's prompt")
    guest.shell("echo respawned", "respawned")
    guest.type("poweroff")
    try:
        assert guest.process.wait(timeout=60) == 0, guest.tail()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running 60 s after poweroff; serial output:\n{guest.tail()}") from None
