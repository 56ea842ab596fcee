"""`redact` on every page: what its user may read of a job's text (jobs/redaction.py)."""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from jobs.redaction import Redactor, redactor_for


class LazyRedactor:
    """The user's Redactor, built on first use: most pages show no job and need no host query."""

    do_not_call_in_templates = True

    def __init__(self, user: Any) -> None:
        self._user = user
        self._redactor: Redactor | None = None

    def __call__(self, value: Any) -> Any:
        if self._redactor is None:
            self._redactor = redactor_for(self._user)
        return self._redactor(value)


def redaction(request: HttpRequest) -> dict[str, Any]:
    return {"redact": LazyRedactor(getattr(request, "user", None))}
