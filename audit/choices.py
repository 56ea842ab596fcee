"""The audit log's fixed vocabulary: what was done (Action) and through what (ActorKind).

Each action is written by one place (docs/operations.md, "Audit log", lists them); a new kind of
event gets a name here first, so that a search by action finds every event of that kind.
"""
from django.db import models


class Action(models.TextChoices):
    LOGIN = "login", "signed in"
    LOGIN_FAILED = "login.failed", "failed to sign in"
    LOGIN_LOCKED = "login.locked", "locked out of signing in"
    LOGOUT = "logout", "signed out"
    USER_CREATED = "user.create", "created a user"
    USER_ADDED = "user.add", "put a user in a tenant"
    USER_REMOVED = "user.remove", "took a user out of a tenant"
    USER_OPERATOR = "user.operator", "changed a user's operator rights"
    USER_ACTIVATED = "user.activate", "activated a user"
    USER_DEACTIVATED = "user.deactivate", "deactivated a user"
    USER_PASSWORD = "user.password", "set a user's password"
    TOKEN_CREATED = "token.create", "made an API token"
    TOKEN_ROTATED = "token.rotate", "replaced an API token"
    TENANT_CREATED = "tenant.create", "created a tenant"
    TENANT_DELETED = "tenant.delete", "deleted a tenant"
    TENANT_QUOTAS = "tenant.quotas", "changed a tenant's quotas"
    TENANT_PERMISSIONS = "tenant.permissions", "changed what a tenant may do"
    FENCE_CONFIRMED = "fence.confirm", "confirmed a host is off"
    MAINTENANCE_ENTERED = "maintenance.enter", "put a host in maintenance"
    MAINTENANCE_LEFT = "maintenance.leave", "returned a host from maintenance"
    CONSOLE_OPENED = "console.open", "opened a console"
    JOB_REQUESTED = "job.request", "requested a job"
    JOB_CANCEL = "job.cancel", "asked a job to stop"
    NOTIFY_TARGET_CREATED = "notify.create", "made a notification target"
    NOTIFY_TARGET_CHANGED = "notify.change", "changed a notification target"
    NOTIFY_TARGET_DELETED = "notify.delete", "removed a notification target"
    NOTIFY_SECRET_ROTATED = "notify.rotate", "replaced a webhook's signing secret"
    NOTIFY_TEST = "notify.test", "sent a test notification"
    AUDIT_ARCHIVED = "audit.archive", "moved old events to an archive file"


class ActorKind(models.TextChoices):
    USER = "user", "signed-in user"  # a browser's session: the pages, the API, websockets
    TOKEN = "token", "API token"  # the user the token belongs to
    ANONYMOUS = "anonymous", "not signed in"  # a failed login, a password reset link
    COMMAND = "command", "manage.py"  # the operating system user who ran it
    MONITOR = "monitor", "monitor"  # manage.py monitor's decisions
    SYSTEM = "system", "system"  # a worker or a periodic task: a job's own steps, the nightly archives
