"""`{{ text|redacted:redact }}`: what this page's user may read of a job's text (jobs/redaction.py)."""
from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def redacted(value: Any, redact: Any) -> Any:
    # Fails loudly rather than showing operators' text to whoever: every page's context has
    # `redact` (jobs.context_processors.redaction).
    if not callable(redact):
        raise TypeError("the redacted filter needs the page's `redact`")
    return redact(value)
