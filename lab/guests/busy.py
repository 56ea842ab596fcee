"""A guest that keeps writing to its RAM: something for a live migration to chase.

A Multiboot v1 kernel of ~700 bytes, hand-assembled here so that no assembler is needed. QEMU's
direct kernel boot (`<os><kernel>`) loads it with the a.out kludge (header flag 0x10000: load
and entry addresses in the header, no ELF) and enters it in 32-bit protected mode. It then:

1. loads its own GDT and IDT (the loader's are undefined by the Multiboot spec);
2. reads the RAM size from the Multiboot information (`mem_upper`);
3. writes 1 into every page (4 KiB) from 2 MiB up to 1 MiB below the top of RAM, at full speed;
4. programs the PIC (IRQ0 only) and the PIT at `hz`, and on every timer tick writes the pass
   number (2, 3, ...) into the next `pages_per_tick` pages of that range, then halts until the
   next tick.

Pacing by the timer, not by a delay loop, keeps the dirty rate the same whatever the emulation
speed (TCG on a busy 2-core machine varies a lot) and leaves the host CPU idle between ticks.
Every page holds a non-zero value, so QEMU cannot skip it as a zero page: a migration really
copies the whole RAM, and again whatever the guest dirtied meanwhile.

Two counters at fixed physical addresses let a test see that the guest runs (after a migration,
on the target): `TICKS_ADDRESS` (timer ticks handled) and `PASS_ADDRESS` (passes over RAM).
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

LOAD_ADDRESS = 0x100000  # 1 MiB, where Multiboot kernels conventionally load
MULTIBOOT_MAGIC = 0x1BADB002
# bit 1: the loader must pass the memory size; bit 16: the a.out kludge (addresses in the header)
MULTIBOOT_FLAGS = 0x00010002
DIRTY_START = 0x200000  # leave the kernel, its stack and the Multiboot information alone
PAGE = 4096
PIT_HZ = 1193182
FALLBACK_RAM_END = 0x01000000  # 16 MiB, should the loader not report the memory size
MAX_HZ = 2000  # more timer interrupts than this cost TCG more than the writes themselves

# Layout of the image (offsets from LOAD_ADDRESS)
GDT, GDTR, IDTR = 0x20, 0x38, 0x40
TICKS, PASS = 0x48, 0x4C
ENTRY, IDT, IRQ_HANDLER, FAULT_HANDLER = 0x80, 0x200, 0x310, 0x330
IMAGE_END, STACK_TOP = 0x340, 0x1000
VECTORS = 0x21  # exceptions 0-31 and IRQ0 remapped to 0x20
CODE_SELECTOR, DATA_SELECTOR = 0x08, 0x10

TICKS_ADDRESS = LOAD_ADDRESS + TICKS
PASS_ADDRESS = LOAD_ADDRESS + PASS


def pacing(dirty_mib_per_s: float) -> tuple[int, int]:
    """(timer Hz, pages per tick) closest to the wanted dirty rate."""
    if not 0.05 <= dirty_mib_per_s <= 1024:
        raise ValueError(f"dirty rate must be between 0.05 and 1024 MiB/s, not {dirty_mib_per_s}")
    pages_per_second = dirty_mib_per_s * (1 << 20) / PAGE
    pages_per_tick = max(1, math.ceil(pages_per_second / MAX_HZ))
    hz = max(20, round(pages_per_second / pages_per_tick))  # the PIT's divisor must fit 16 bits
    return hz, pages_per_tick


def _u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


class _Code:
    """Just enough of an assembler: bytes, labels and 8-bit relative jumps resolved at the end."""

    def __init__(self, origin: int) -> None:
        self.origin = origin
        self.out = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []

    def emit(self, *chunks: bytes | int) -> None:
        for chunk in chunks:
            self.out += bytes([chunk]) if isinstance(chunk, int) else chunk

    def label(self, name: str) -> None:
        self.labels[name] = len(self.out)

    def jump8(self, opcode: int, target: str) -> None:
        self.emit(opcode, 0)
        self.fixups.append((len(self.out) - 1, target))

    def address(self, name: str) -> int:
        return self.origin + self.labels[name]

    def assemble(self) -> bytes:
        for at, target in self.fixups:
            distance = self.labels[target] - (at + 1)
            if not -128 <= distance <= 127:
                raise ValueError(f"jump to {target} is out of 8-bit range")
            self.out[at] = distance & 0xFF
        return bytes(self.out)


def _out(port: int, value: int) -> bytes:
    return bytes([0xB0, value, 0xE6, port])  # mov al, value ; out port, al


def _main_code(hz: int, pages_per_tick: int) -> bytes:
    base = LOAD_ADDRESS
    divisor = round(PIT_HZ / hz)
    code = _Code(base + ENTRY)
    code.emit(0xFA)  # cli
    code.emit(0x0F, 0x01, 0x15, _u32(base + GDTR))  # lgdt [GDTR]
    far_jump_at = len(code.out)
    code.emit(0xEA, _u32(0), struct.pack("<H", CODE_SELECTOR))  # jmp CODE:reload (patched below)
    code.label("reload")
    code.out[far_jump_at + 1:far_jump_at + 5] = _u32(code.address("reload"))
    code.emit(0x66, 0xB8, struct.pack("<H", DATA_SELECTOR))  # mov ax, DATA
    code.emit(0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0)  # mov ds, ax ; mov es, ax ; mov ss, ax
    code.emit(0xBC, _u32(base + STACK_TOP))  # mov esp, STACK_TOP
    code.emit(0x0F, 0x01, 0x1D, _u32(base + IDTR))  # lidt [IDTR]
    # RAM end: mem_upper (KiB above 1 MiB) * 1024 = top of RAM less 1 MiB, which keeps clear of
    # whatever firmware tables sit right at the top.
    code.emit(0xBE, _u32(FALLBACK_RAM_END))  # mov esi, FALLBACK
    code.emit(0xF6, 0x03, 0x01)  # test byte [ebx], 1  (Multiboot info: mem_* valid)
    code.jump8(0x74, "have_end")  # jz have_end
    code.emit(0x8B, 0x73, 0x08)  # mov esi, [ebx+8]  (mem_upper)
    code.emit(0xC1, 0xE6, 0x0A)  # shl esi, 10
    code.label("have_end")
    # Pass 1, unpaced: every page non-zero from the start, so that a migration copies all of RAM
    # (QEMU sends a zero page as a flag, not as 4 KiB), however soon after boot it begins.
    code.emit(0x31, 0xD2, 0x42)  # xor edx, edx ; inc edx
    code.emit(0xBF, _u32(DIRTY_START))  # mov edi, DIRTY_START
    code.label("fill")
    code.emit(0x89, 0x17)  # mov [edi], edx
    code.emit(0x81, 0xC7, _u32(PAGE))  # add edi, PAGE
    code.emit(0x39, 0xF7)  # cmp edi, esi
    code.jump8(0x72, "fill")  # jb fill
    # PIC: remap IRQ0-7 to 0x20-0x27 and IRQ8-15 to 0x28-0x2f, mask all but the timer.
    code.emit(_out(0x20, 0x11), bytes([0xE6, 0xA0]))
    code.emit(_out(0x21, 0x20), _out(0xA1, 0x28), _out(0x21, 0x04), _out(0xA1, 0x02))
    code.emit(_out(0x21, 0x01), bytes([0xE6, 0xA1]), _out(0x21, 0xFE), _out(0xA1, 0xFF))
    # PIT channel 0: lobyte/hibyte, mode 2 (rate generator)
    code.emit(_out(0x43, 0x34), _out(0x40, divisor & 0xFF), _out(0x40, divisor >> 8))
    code.label("pass")
    code.emit(0x42)  # inc edx
    code.emit(0x89, 0x15, _u32(base + PASS))  # mov [PASS], edx
    code.emit(0xBF, _u32(DIRTY_START))  # mov edi, DIRTY_START
    code.label("tick")
    code.emit(0xB9, _u32(pages_per_tick))  # mov ecx, pages_per_tick
    code.label("page")
    code.emit(0x89, 0x17)  # mov [edi], edx
    code.emit(0x81, 0xC7, _u32(PAGE))  # add edi, PAGE
    code.emit(0x39, 0xF7)  # cmp edi, esi
    code.jump8(0x73, "pass")  # jae pass  (past the end of RAM: next pass)
    code.jump8(0xE2, "page")  # loop page
    code.emit(0xFB, 0xF4, 0xFA)  # sti ; hlt ; cli  (sti's shadow: no tick lost before hlt)
    code.jump8(0xEB, "tick")  # jmp tick
    return code.assemble()


def _gate(handler: int) -> bytes:
    # 32-bit interrupt gate, present, ring 0
    return struct.pack("<HHBBH", handler & 0xFFFF, CODE_SELECTOR, 0, 0x8E, handler >> 16)


def _put(image: bytearray, offset: int, data: bytes) -> None:
    """Overwrite in place: a slice assignment of another length would shift everything after it."""
    if offset + len(data) > len(image):
        raise AssertionError(f"{len(data)} bytes at {offset:#x} do not fit the image")
    image[offset:offset + len(data)] = data


def build_busy_kernel(dirty_mib_per_s: float = 8.0) -> bytes:
    """The kernel image, dirtying about `dirty_mib_per_s` MiB of RAM per second of guest time."""
    hz, pages_per_tick = pacing(dirty_mib_per_s)
    base = LOAD_ADDRESS
    image = bytearray(IMAGE_END)
    checksum = -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)
    # header_addr, load_addr, load_end_addr, bss_end_addr (zeroed up to the stack top), entry_addr
    _put(image, 0, b"".join(_u32(v) for v in (
        MULTIBOOT_MAGIC, MULTIBOOT_FLAGS, checksum, base, base, base + IMAGE_END, base + STACK_TOP, base + ENTRY)))
    # GDT: null, flat 4 GiB code (0x08), flat 4 GiB data (0x10)
    _put(image, GDT, struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    _put(image, GDTR, struct.pack("<HI", 23, base + GDT))
    _put(image, IDTR, struct.pack("<HI", VECTORS * 8 - 1, base + IDT))
    main = _main_code(hz, pages_per_tick)
    if ENTRY + len(main) > IDT:
        raise AssertionError("the kernel's code outgrew its slot")
    _put(image, ENTRY, main)
    # Exceptions park the CPU (the tick counter then stops: a test sees it); IRQ0 counts ticks.
    for vector in range(VECTORS):
        handler = IRQ_HANDLER if vector == 0x20 else FAULT_HANDLER
        _put(image, IDT + 8 * vector, _gate(base + handler))
    _put(image, IRQ_HANDLER, (
        bytes([0x50, 0xFF, 0x05]) + _u32(base + TICKS)  # push eax ; inc dword [TICKS]
        + _out(0x20, 0x20) + bytes([0x58, 0xCF])  # EOI to the master PIC ; pop eax ; iret
    ))
    _put(image, FAULT_HANDLER, bytes([0xFA, 0xF4, 0xEB, 0xFC]))  # cli ; hlt ; jmp back
    return bytes(image)


def install_busy_kernel(directory: Path, dirty_mib_per_s: float = 8.0) -> Path:
    """Write the kernel under `directory` (which must be at the same absolute path on every CPU
    server: lab hosts share the machine's file system) and return its absolute path."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"busy-{dirty_mib_per_s:g}mibs.bin"
    image = build_busy_kernel(dirty_mib_per_s)
    if not path.exists() or path.read_bytes() != image:
        partial = path.with_suffix(".tmp")
        partial.write_bytes(image)
        partial.replace(path)  # QEMU on another host may be reading the old one
    path.chmod(0o644)
    return path
