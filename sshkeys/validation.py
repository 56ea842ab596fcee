"""OpenSSH public keys as users paste them: checked by parsing the key itself, never trusted as text
(a key line ends up in a guest's authorized_keys, so options or a second line must not get in)."""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from django.core.exceptions import ValidationError

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
MIN_RSA_BITS = 2048
MAX_LINE = 16384


@dataclass(frozen=True)
class PublicKey:
    line: str  # normalised: "type base64 comment"
    comment: str
    fingerprint: str  # "SHA256:...", as ssh-keygen -l prints it


def parse_key(text: str) -> PublicKey:
    """One key line; ValidationError saying what is wrong with it."""
    line = text.strip()
    if not line:
        raise ValidationError("empty SSH key")
    if len(line) > MAX_LINE or any(c in line for c in "\r\n\0"):
        raise ValidationError("an SSH key is one line of an OpenSSH public key")
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise ValidationError(f"not an OpenSSH public key (it starts with one of {', '.join(KEY_TYPES)})")
    kind, blob_text = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if not comment.isprintable():
        raise ValidationError("the key's comment has control characters")
    try:
        blob = base64.b64decode(blob_text, validate=True)
        key = load_ssh_public_key(f"{kind} {blob_text}".encode())
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"malformed {kind} key: {exc}") from exc
    size = getattr(key, "key_size", None)
    if kind == "ssh-rsa" and size is not None and size < MIN_RSA_BITS:
        raise ValidationError(f"an RSA key of {size} bits is too weak (at least {MIN_RSA_BITS})")
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    normal = f"{kind} {blob_text}" + (f" {comment}" if comment else "")
    return PublicKey(normal, comment, f"SHA256:{digest}")


def parse_keys(text: str) -> list[PublicKey]:
    """Several keys, one per line (blank lines and # comments skipped)."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(parse_key(line))
        except ValidationError as exc:
            raise ValidationError(f"line {number}: {exc.messages[0]}") from exc
    return keys
