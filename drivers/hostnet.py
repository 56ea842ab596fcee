"""What a CPU server offers guests on the network: its bridges."""
from __future__ import annotations

import re

from drivers import ssh
from drivers.errors import DriverError
from drivers.ssh import SSHTarget

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
# For each name: "NAME bridge" (a Linux bridge), "NAME link" (another interface: an Open vSwitch
# bridge's own port), or nothing (absent).
BRIDGES = r"""for b; do
  if [ -d "/sys/class/net/$b/bridge" ]; then echo "$b bridge"
  elif [ -e "/sys/class/net/$b" ]; then echo "$b link"; fi
done; exit 0"""


def interfaces(target: SSHTarget, names: list[str], *, timeout: float = 15) -> dict[str, str]:
    """{name: "bridge" | "link"} for those of `names` the host has."""
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad:
        raise DriverError(f"not interface names: {', '.join(map(repr, bad))}", permanent=True)
    if not names:
        return {}
    result = ssh.run(target, ["sh", "-c", BRIDGES, "sh", *sorted(set(names))], timeout=timeout)
    found = {}
    for line in result.stdout.splitlines():
        name, _, kind = line.partition(" ")
        found[name] = kind
    return found
