"""What cluster verify reports: findings, each with an optional whitelisted fix (hosts/fixes.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Fix:
    code: str  # one of hosts.fixes.FIXES
    args: dict[str, Any] = field(hash=False)
    label: str = ""


@dataclass(frozen=True)
class Finding:
    code: str  # stable: scripts and monitoring match on it
    severity: str  # critical | error | warning
    subject: str  # the VM, host or export it is about
    message: str  # what was found
    meaning: str  # what it means for the guest / the operator
    fix: Fix | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        fix = data.get("fix")
        return cls(**{**data, "fix": Fix(**fix) if fix else None})

    def line(self) -> str:
        text = f"{self.severity.upper()} {self.code} {self.subject}: {self.message}"
        return f"{text} -> {self.fix.label}" if self.fix else text
