"""A webhook delivery's signature, and checking one (what a receiver does; the tests do it too).

The signed text is `<timestamp>.<raw body>`, the timestamp being the `X-XenAoE-Timestamp` header
(Unix seconds): a signature over the body alone would let whoever saw one delivery replay it for
ever, with any timestamp header. A receiver recomputes the HMAC-SHA256 with the target's secret,
compares it in constant time with `X-XenAoE-Signature: sha256=<hex>`, and refuses a timestamp
older than a few minutes (docs/operations.md shows it in a few lines).
"""
from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-XenAoE-Signature"
TIMESTAMP_HEADER = "X-XenAoE-Timestamp"
MAX_AGE_S = 300


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, given: str, *, max_age_s: int = MAX_AGE_S,
           now: float | None = None) -> bool:
    """Whether `given` signs this body at this timestamp, and the timestamp is recent."""
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    return abs(age) <= max_age_s and hmac.compare_digest(signature(secret, timestamp, body), given)
