"""Who may see what. Operators (staff) see everything; tenants arrive with a later issue."""
from __future__ import annotations

from jobs.models import Job


def is_operator(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def can_view_job(user, job: Job) -> bool:
    return is_operator(user)
