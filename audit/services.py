"""Writing audit events: `record`, called by the service that acts, inside its transaction, so that
the event is kept exactly when the change is (and a refused change leaves none)."""
from __future__ import annotations

import ipaddress
from typing import Any

from audit.actors import Actor, current_actor
from audit.choices import Action
from audit.models import AuditEvent
from tenants.models import Membership

NAME_MAX = AuditEvent._meta.get_field("actor_name").max_length
TARGET_MAX = AuditEvent._meta.get_field("target_name").max_length


def record(action: str, target_kind: str = "", target_name: str = "", *, tenant_id: int | None = None,
           details: dict[str, Any] | None = None, user: Any = None, actor: Actor | None = None) -> AuditEvent:
    """One event. The actor is `actor` if given, else `user` (whom the service was told acts), else
    whoever the surroundings say acts (audit/actors.py: the request's user, the command's operator,
    the monitor, the system). `tenant_id`: the tenant whose users may see it (None: operators only).
    `details` must hold no secret: tenants' users read their tenant's events."""
    who = actor if actor is not None else current_actor(user)
    return AuditEvent.objects.create(
        actor=who.user if who.user is not None and who.user.pk else None, actor_name=who.name[:NAME_MAX],
        actor_kind=who.kind, tenant_id=tenant_id, action=action, target_kind=target_kind,
        target_name=target_name[:TARGET_MAX], details=details or {}, source_ip=_address(who.ip),
    )


def _address(ip: str | None) -> str | None:
    """An IP address, or None: a websocket's client may be a unix socket's path, or nothing."""
    try:
        return str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        return None


def change(old: Any, new: Any) -> dict[str, Any]:
    """A value's change, as the details hold it (and the page shows it: old → new)."""
    return {"from": old, "to": new}


def tenant_id_of(user: Any) -> int | None:
    """The tenant a user belongs to now (None: an operator, or nobody's), read afresh: it may have
    changed in this very transaction."""
    if user is None or not user.pk:
        return None
    return Membership.objects.filter(user_id=user.pk).values_list("tenant_id", flat=True).first()


def record_for_user(action: str, user: Any, *, details: dict[str, Any] | None = None,
                    actor: Actor | None = None) -> AuditEvent:
    """An event about a user (their token, their rights, their password), seen by their tenant."""
    return record(action, "user", user.get_username(), tenant_id=tenant_id_of(user), details=details, actor=actor)


def record_job_request(job: Any) -> AuditEvent:
    """`jobs.services.start_job`'s, for every job: who asked for which job on what. A job that a
    job's step starts (an evacuation's migrations) is that job's doing."""
    actor = Actor.system(f"job #{job.parent_id}") if job.parent_id else None
    return record(Action.JOB_REQUESTED, job.kind.partition(".")[0], job.target_name, tenant_id=job.tenant_id,
                  details={"job": job.pk, "kind": job.kind}, user=job.user, actor=actor)


def record_job_cancel(job: Any) -> AuditEvent:
    return record(Action.JOB_CANCEL, job.kind.partition(".")[0], job.target_name, tenant_id=job.tenant_id,
                  details={"job": job.pk, "kind": job.kind})
