"""Image files on hosts: an image's disk on the disk servers (received once, checksum verified,
then written onto a new VM's legs locally), and small files on CPU servers (an image's kernel and
initramfs, a VM's seed), put there only when their checksum differs.

The transfer to a disk server is gzip-compressed on the wire (an image is mostly empty space) and
lands in a `.partial` file renamed only once its SHA-256 matches: a cut connection never leaves a
file that passes for the image.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from drivers import ssh
from drivers.errors import DriverError
from drivers.paths import check_path
from drivers.ssh import SSHTarget

CHUNK = 1 << 20
EXIT_CHECKSUM = 3
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Positional arguments: PATH SIZE_BYTES SHA256. gzip data on stdin.
RECEIVE = r"""set -eu
p=$1 size=$2 sum=$3
mkdir -p "$(dirname "$p")"
tmp="$p.partial"
rm -f "$tmp"
gzip -dc | dd of="$tmp" bs=1M conv=sparse status=none
truncate -s "$size" "$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$sum" ]; then
  rm -f "$tmp"
  echo "checksum mismatch: received $got, expected $sum" >&2
  exit 3
fi
mv "$tmp" "$p"
"""

# PATH SHA256: exit 0 if the file is there with that checksum, 3 if it differs, 4 if absent.
VERIFY = r"""p=$1 sum=$2
[ -f "$p" ] || exit 4
got=$(sha256sum "$p" | cut -d' ' -f1)
[ "$got" = "$sum" ] || { echo "$p has checksum $got, expected $sum" >&2; exit 3; }
"""

# IMAGE VOLUME: the image onto the start of an existing (new, all-zero) volume, holes kept.
WRITE = r"""set -eu
[ -f "$1" ] || { echo "image $1 is not on this disk server" >&2; exit 4; }
[ -f "$2" ] || { echo "volume $2 does not exist" >&2; exit 4; }
isize=$(stat -c %s "$1") vsize=$(stat -c %s "$2")
[ "$isize" -le "$vsize" ] || { echo "image ($isize bytes) is larger than the volume ($vsize bytes)" >&2; exit 3; }
dd if="$1" of="$2" bs=4M conv=notrunc,sparse,fsync status=none
"""

# PATH...: print the SHA-256 and path of each file that exists.
SUMS = r"""for p in "$@"; do [ -f "$p" ] && sha256sum "$p"; done; exit 0"""

# PATH SHA256 MODE: stdin to PATH, atomically, if its checksum matches.
PUT = r"""set -eu
p=$1 sum=$2 mode=$3
mkdir -p "$(dirname "$p")"
tmp="$p.partial"
cat > "$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
[ "$got" = "$sum" ] || { rm -f "$tmp"; echo "checksum mismatch: $got" >&2; exit 3; }
chmod "$mode" "$tmp"
mv "$tmp" "$p"
"""


def _sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def _check_sha(sha256: str) -> None:
    if not _SHA256.fullmatch(sha256):
        raise DriverError(f"not a SHA-256 in hex: {sha256!r}", permanent=True)


def _compressed(source: Path, on_progress: Callable[[int, int], None] | None) -> Iterator[bytes]:
    total = source.stat().st_size
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: the gzip container
    done = 0
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            done += len(chunk)
            data = packer.compress(chunk)
            if data:
                yield data
            if on_progress is not None:
                on_progress(done, total)
    yield packer.flush()


def receive_image(target: SSHTarget, source: Path, path: str, sha256: str, *, timeout: float,
                  on_progress: Callable[[int, int], None] | None = None) -> None:
    """Copy the local file `source` to `path` on the host and check it there against `sha256`.
    `on_progress(bytes_done, bytes_total)` is called as it goes."""
    check_path(path, "image path")
    _check_sha(sha256)
    size = source.stat().st_size
    result = ssh.send(target, _sh(RECEIVE, path, str(size), sha256), _compressed(source, on_progress),
                      timeout=timeout)
    if result.returncode != 0:
        raise DriverError(f"{target.label}: receiving {path}: {result.stderr.strip() or result.returncode}",
                          permanent=result.returncode == EXIT_CHECKSUM)


def verify_image(target: SSHTarget, path: str, sha256: str, *, timeout: float = 300) -> str | None:
    """None if `path` is on the host with checksum `sha256`; otherwise what is wrong."""
    check_path(path, "image path")
    _check_sha(sha256)
    result = ssh.run(target, _sh(VERIFY, path, sha256), timeout=timeout, check=False)
    if result.returncode == 0:
        return None
    if result.returncode == 4:
        return f"{path} is missing"
    return result.stderr.strip() or f"exit status {result.returncode}"


def write_image(target: SSHTarget, image_path: str, volume_path: str, *, timeout: float = 900) -> None:
    """Write the image at the start of a new volume, both on the same disk server: the image's
    bytes never cross the network for a new VM."""
    check_path(image_path, "image path")
    check_path(volume_path)
    result = ssh.run(target, _sh(WRITE, image_path, volume_path), timeout=timeout, check=False)
    if result.returncode != 0:
        raise DriverError(f"{target.label}: writing {image_path} onto {volume_path}: {result.stderr.strip()}",
                          permanent=result.returncode in (3, 4))


def remove_file(target: SSHTarget, path: str, *, timeout: float = 60) -> None:
    """Remove a file the panel put on a host; absent is fine."""
    check_path(path, "path")
    ssh.run(target, ["rm", "-f", "--", path, f"{path}.partial"], timeout=timeout)


def checksums(target: SSHTarget, paths: list[str], *, timeout: float = 60) -> dict[str, str]:
    """{path: sha256} of those `paths` that exist on the host (one command for all)."""
    for path in paths:
        check_path(path, "path")
    if not paths:
        return {}
    result = ssh.run(target, _sh(SUMS, *paths), timeout=timeout)
    found = {}
    for line in result.stdout.splitlines():
        digest, _, path = line.partition("  ")
        found[path] = digest
    return found


def put_files(target: SSHTarget, files: dict[str, bytes], *, mode: str = "0644", timeout: float = 120) -> list[str]:
    """Make each path hold its bytes, sending only those whose checksum differs on the host;
    returns the paths it sent."""
    wanted = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    there = checksums(target, sorted(wanted), timeout=timeout)
    sent = []
    for path, digest in sorted(wanted.items()):
        if there.get(path) == digest:
            continue
        data = files[path]
        result = ssh.send(target, _sh(PUT, path, digest, mode),
                          (data[i:i + CHUNK] for i in range(0, len(data), CHUNK)), timeout=timeout)
        if result.returncode != 0:
            raise DriverError(f"{target.label}: putting {path}: {result.stderr.strip() or result.returncode}")
        sent.append(path)
    return sent
