"""A VM's optional password: generated once, shown once, kept only as a SHA-512 crypt hash (the
`$6$` form /etc/shadow and cloud-init take). Written out here because Python's `crypt` module is
deprecated (gone in 3.13); checked against `openssl passwd -6` in the tests."""
from __future__ import annotations

import hashlib
import secrets

ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS = 5000  # the default: no "rounds=" in the hash
# The order in which the 64 digest bytes are taken, three at a time (Drepper's SHA-crypt spec).
_ORDER = ((0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
          (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
          (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41))
WORDS = ("amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "iris", "juniper", "kelp",
         "lumen", "maple", "nectar", "onyx", "pearl", "quartz", "raven", "sage", "tundra", "umber", "violet",
         "willow", "xenon", "yarrow", "zephyr")


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _b64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(ITOA64[value & 0x3F])
        value >>= 6
    return "".join(out)


def sha512_crypt(password: str, salt: str) -> str:
    pw, s = password.encode(), salt[:16].encode()
    b = hashlib.sha512(pw + s + pw).digest()
    a = hashlib.sha512(pw + s)
    a.update(_repeat(b, len(pw)))
    length = len(pw)
    while length:
        a.update(b if length & 1 else pw)
        length >>= 1
    digest = a.digest()
    p = _repeat(hashlib.sha512(pw * len(pw)).digest(), len(pw))
    s_bytes = _repeat(hashlib.sha512(s * (16 + digest[0])).digest(), len(s))
    c = digest
    for r in range(ROUNDS):
        h = hashlib.sha512(p if r & 1 else c)
        if r % 3:
            h.update(s_bytes)
        if r % 7:
            h.update(p)
        h.update(c if r & 1 else p)
        c = h.digest()
    encoded = "".join(_b64((c[x] << 16) | (c[y] << 8) | c[z], 4) for x, y, z in _ORDER) + _b64(c[63], 2)
    return f"$6${salt[:16]}${encoded}"


def hash_password(password: str) -> str:
    salt = "".join(secrets.choice(ITOA64) for _ in range(16))
    return sha512_crypt(password, salt)


def generate_password() -> str:
    """Four words and a number: easy to read off a screen and type at a console, ~45 bits."""
    return "-".join(secrets.choice(WORDS) for _ in range(4)) + f"-{secrets.randbelow(1000):03d}"
