"""Django settings for the XenAoE panel, all from the environment (see docs/configuration.md)."""
import os
import socket
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from xenaoe_panel.env import env_bool, env_int, env_list, env_optional_int, env_path, env_str, read_secret_file

BASE_DIR = Path(__file__).resolve().parent.parent

# What the panel keeps on its own machine (the image store, archived jobs, a generated secret key,
# beat's schedule): a site's directory outside the code, which survives a new release or container
# (docker-compose.yml mounts a volume there). settings_lab.py points it into the checkout's .run/.
DATA_DIR = env_path("XENAOE_DATA_DIR", Path("/var/lib/xenaoe-panel"))
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
SECRET_KEY_FILE = env_str("SECRET_KEY_FILE", "")
if SECRET_KEY_FILE:
    # Production: the key lives in a file only the panel's user reads (docs/security.md).
    if SECRET_KEY:
        raise ImproperlyConfigured("SECRET_KEY and SECRET_KEY_FILE are both set; keep the file")
    SECRET_KEY = read_secret_file("SECRET_KEY_FILE", SECRET_KEY_FILE, min_length=50)
if not SECRET_KEY:
    # A fixed key in git would let anyone forge sessions: without one given, make one for this
    # installation and keep it beside its other data (mode 0600), never in the code's tree.
    key_file = DATA_DIR / "secret_key"
    try:
        if not key_file.exists():
            import secrets

            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_urlsafe(50))
        SECRET_KEY = key_file.read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"no SECRET_KEY_FILE given, and {key_file} cannot be made or read ({exc}): "
                                   "set SECRET_KEY_FILE, or XENAOE_DATA_DIR to a directory this user owns") from exc
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "hosts",
    "storage",
    "vms",
    "jobs",
    "ha",
    "tenants",
    "audit",
    "images",
    "networks",
    "sshkeys",
    "notifications",
    "metrics",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit.actors.AuditContextMiddleware",  # what a request's code does is its user's (the audit log)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "xenaoe_panel.security_headers.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "xenaoe_panel.urls"
# Messages live in the (database) session, never in a cookie: a new VM's password is one.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.access",
                "jobs.context_processors.redaction",
            ],
        },
    },
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "xenaoe_panel.asgi.application"

# The REST API (api/, docs/api.md): a token (`manage.py api token USER`) or the browser's session,
# with CSRF checked for sessions; the permissions are the pages' (tenants.access).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.PagePagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "api.schema.PanelAutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
# How long an API token lasts (api/tokens.py); `manage.py api token USER --rotate` makes a new one.
API_TOKEN_DAYS = env_int("XENAOE_API_TOKEN_DAYS", 90, minimum=1, maximum=3650)
# Job log long polls waiting at once in one web process (jobs/long_poll.py); beyond, a poll answers at once.
API_MAX_LONG_POLLS = env_int("XENAOE_API_MAX_LONG_POLLS", 100, minimum=0)
SPECTACULAR_SETTINGS = {
    "TITLE": "XenAoE Panel API",
    "DESCRIPTION": "VMs, jobs, incidents, hosts, tenants and users of the cluster. See docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Offline: Swagger UI and Redoc come from drf-spectacular-sidecar's static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "VmStateEnum": "vms.choices.VmState", "JobStateEnum": "jobs.choices.JobState",
        "LogLevelEnum": "jobs.choices.LogLevel", "HostStateEnum": "hosts.choices.HostState",
        "IncidentStateEnum": "ha.choices.IncidentState", "IncidentKindEnum": "ha.choices.IncidentKind",
        "IncidentEventKindEnum": "ha.choices.EventKind",
        "NotificationTargetKindEnum": "notifications.choices.TargetKind",
        "NotificationEventKindEnum": "notifications.choices.EventKind",
        "NotificationSeverityEnum": "notifications.choices.SEVERITY_NAMES",
        "DeliveryStateEnum": "notifications.choices.DeliveryState",
    },
}

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The demo's SQLite is shared by web and worker: wait for the write lock instead of failing,
    # and take it at the start of a transaction so that reservations are serialised.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # The layer waits on Redis with 5 s blocking pops; redis-py's default socket timeout is
        # also 5 s, and whichever fires first ended an idle consumer with a TimeoutError.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                   "prefix": env_str("CHANNELS_PREFIX", "xenaoe")},
    }
}
# The cache holds the failed-login counts (xenaoe_panel/login_limit.py), shared by every web process.
# Never cache.clear() it: that empties the whole Redis database, broker queues included.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env_str("CACHE_URL", REDIS_URL),
        "KEY_PREFIX": env_str("CACHE_PREFIX", "xenaoe"),
    }
}
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# Redis behind Sentinel (docs/ha.md): the broker, the channel layer and the cache ask these sentinels
# (host:port, comma-separated) for the current primary of the master named below; REDIS_URL is then
# not used (CELERY_BROKER_URL and CACHE_URL, if set, still win for their part).
REDIS_SENTINELS = env_list("XENAOE_REDIS_SENTINELS", [])
REDIS_SENTINEL_MASTER = env_str("XENAOE_REDIS_SENTINEL_MASTER", "xenaoe")
if REDIS_SENTINELS:
    from xenaoe_panel import redis_ha

    _sentinels = redis_ha.parse_sentinels(REDIS_SENTINELS)
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = redis_ha.channel_layer_hosts(_sentinels, REDIS_SENTINEL_MASTER)
    if "CACHE_URL" not in os.environ:
        CACHES["default"] = redis_ha.cache(_sentinels, REDIS_SENTINEL_MASTER, CACHES["default"]["KEY_PREFIX"])
    if "CELERY_BROKER_URL" not in os.environ:
        CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = redis_ha.celery_broker(_sentinels,
                                                                                    REDIS_SENTINEL_MASTER)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "xenaoe")
# High availability's own queue (failover, evacuation and its migrations: jobs/queues.py), served by
# workers of its own so that a failover never waits behind tenant work; job recovery runs there too.
CELERY_HA_QUEUE = env_str("CELERY_HA_QUEUE", f"{CELERY_TASK_DEFAULT_QUEUE}-ha")
CELERY_TASK_ROUTES = {"jobs.recover_jobs": {"queue": CELERY_HA_QUEUE}}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Failed logins (docs/security.md): N wrong passwords for one account from one address, or M from one
# address whatever the account, within the window lock that pair (or address) for LOCKOUT_S.
LOGIN_FAILURES_PER_ACCOUNT = env_int("XENAOE_LOGIN_FAILURES_PER_ACCOUNT", 5, minimum=1)
LOGIN_FAILURES_PER_ADDRESS = env_int("XENAOE_LOGIN_FAILURES_PER_ADDRESS", 50, minimum=1)
LOGIN_FAILURE_WINDOW_S = env_int("XENAOE_LOGIN_FAILURE_WINDOW_S", 900, minimum=1)
LOGIN_LOCKOUT_S = env_int("XENAOE_LOGIN_LOCKOUT_S", 900, minimum=1)
PASSWORD_RESET_EMAILS_PER_HOUR = env_int("XENAOE_PASSWORD_RESET_EMAILS_PER_HOUR", 5, minimum=1)
# How many reverse proxies of ours stand in front of the panel: their X-Forwarded-For entries (and,
# with HTTPS, X-Forwarded-Proto) are believed. 0: the client connects directly; both headers ignored.
TRUSTED_PROXIES = env_int("XENAOE_TRUSTED_PROXIES", 0, minimum=0)

# Served over HTTPS (production): HTTP redirects to HTTPS, cookies only over TLS, HSTS.
HTTPS = env_bool("XENAOE_HTTPS", False)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("XENAOE_HSTS_SECONDS", 31536000, minimum=0) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("XENAOE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("XENAOE_HSTS_PRELOAD", False)
if HTTPS and TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS: list[str] = []
if not SECURE_HSTS_PRELOAD:
    # The preload token lets anyone submit the domain to browsers' built-in HTTPS lists, which takes
    # months to undo: the domain owner's decision, off unless XENAOE_HSTS_PRELOAD says so.
    SILENCED_SYSTEM_CHECKS.append("security.W021")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True  # no script reads it: forms carry the token
CSRF_COOKIE_SAMESITE = "Lax"

# Mail (password reset links). console: printed to the web process's log (the demo); file: one file per
# message in EMAIL_FILE_PATH; smtp: EMAIL_HOST etc., the password read from EMAIL_HOST_PASSWORD_FILE.
EMAIL_BACKENDS = {
    "console": "django.core.mail.backends.console.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
}
_email_backend = env_str("EMAIL_BACKEND", "console")
if _email_backend not in EMAIL_BACKENDS:
    raise ImproperlyConfigured(f"EMAIL_BACKEND={_email_backend!r} is not one of {', '.join(EMAIL_BACKENDS)}")
EMAIL_BACKEND = EMAIL_BACKENDS[_email_backend]
EMAIL_FILE_PATH = env_path("EMAIL_FILE_PATH", DATA_DIR / "mail")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = (
    read_secret_file("EMAIL_HOST_PASSWORD_FILE", os.environ["EMAIL_HOST_PASSWORD_FILE"])
    if os.environ.get("EMAIL_HOST_PASSWORD_FILE") else ""
)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive (STARTTLS on 587, or TLS on 465)")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "xenaoe-panel@localhost")
PASSWORD_RESET_TIMEOUT = env_int("XENAOE_PASSWORD_RESET_TIMEOUT_S", 3600, minimum=60)

# Notifications (docs/operations.md): emails go through the mail settings above; webhooks are signed
# with a secret the panel generates and keeps encrypted under a key derived from this file's content
# (at least 32 characters, not world-readable), or from SECRET_KEY when unset.
NOTIFY_KEY_FILE = env_str("XENAOE_NOTIFY_KEY_FILE", "")
# The panel's address as people reach it (https://panel.example.org): links in messages. Empty: paths only.
PANEL_URL = env_str("XENAOE_PANEL_URL", "")
# A failed delivery is tried again after BASE_S, then twice as long each time (at most MAX_S), up to
# MAX_ATTEMPTS attempts in all; each webhook request within TIMEOUT_S.
NOTIFY_MAX_ATTEMPTS = env_int("XENAOE_NOTIFY_MAX_ATTEMPTS", 6, minimum=1, maximum=20)
NOTIFY_RETRY_BASE_S = env_int("XENAOE_NOTIFY_RETRY_BASE_S", 30, minimum=1)
NOTIFY_RETRY_MAX_S = env_int("XENAOE_NOTIFY_RETRY_MAX_S", 3600, minimum=1)
NOTIFY_WEBHOOK_TIMEOUT_S = env_int("XENAOE_NOTIFY_WEBHOOK_TIMEOUT_S", 10, minimum=1, maximum=120)
# A delivery whose message no worker took for this long is sent again (notifications/housekeeping.py).
NOTIFY_RESEND_AFTER_S = env_int("XENAOE_NOTIFY_RESEND_AFTER_S", 300, minimum=60)
# Events (and their delivery logs) are deleted after this many days; 0 keeps them for ever.
NOTIFY_RETENTION_DAYS = env_int("XENAOE_NOTIFY_RETENTION_DAYS", 30, minimum=0)
# Tenants' webhooks may reach only public addresses, not the panel's own networks; the lab, whose
# receivers are on this machine, turns that off.
NOTIFY_TENANT_WEBHOOKS_PRIVATE = env_bool("XENAOE_NOTIFY_TENANT_WEBHOOKS_PRIVATE", False)

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Prometheus (`/metrics`, docs/operations.md): scraped with "Authorization: Bearer <token>", the token
# read from this file (32 characters or more, not readable by every user). Unset: /metrics is a 404.
METRICS_TOKEN = (
    read_secret_file("XENAOE_METRICS_TOKEN_FILE", os.environ["XENAOE_METRICS_TOKEN_FILE"], min_length=32)
    if os.environ.get("XENAOE_METRICS_TOKEN_FILE") else ""
)

# Reaching the hosts. Secrets are files, never values: the panel's private key and the hosts' public
# keys, in the panel's own configuration directory (the lab's are in settings_lab.py).
SSH_IDENTITY_FILE = env_path("XENAOE_SSH_IDENTITY", Path("/etc/xenaoe-panel/id_ed25519"))
SSH_KNOWN_HOSTS_FILE = env_path("XENAOE_SSH_KNOWN_HOSTS", Path("/etc/xenaoe-panel/known_hosts"))
# ControlMaster sockets: a root-only directory, short enough for a unix socket path.
SSH_CONTROL_DIR = env_path(
    "XENAOE_SSH_CONTROL_DIR",
    Path("/run/xenaoe-ssh") if os.geteuid() == 0 else Path.home() / ".cache" / "xenaoe-ssh",
)
# Each command's own time limit is the operation's (drivers/): an image copy is not a probe.
SSH_CONNECT_TIMEOUT = env_int("XENAOE_SSH_CONNECT_TIMEOUT", 5, minimum=1)

# How often `watch_domains` compares every VM with its hypervisor (events cover the time between).
RECONCILE_INTERVAL_S = env_int("XENAOE_RECONCILE_INTERVAL_S", 30, minimum=1)

# The URI a source CPU server's libvirtd uses to reach the target in a peer-to-peer migration;
# placeholders {address}, {name}, {user}, {port}. Empty: qemu+ssh:// or xen+ssh:// to the target's
# address (docs/migration.md).
MIGRATION_URI_TEMPLATE = env_str("XENAOE_MIGRATION_URI_TEMPLATE", "")

# Bounds an operator may ask for when creating a VM.
VM_MIN_MEMORY_MIB = env_int("XENAOE_VM_MIN_MEMORY_MIB", 32, minimum=1)
VM_MAX_MEMORY_MIB = env_int("XENAOE_VM_MAX_MEMORY_MIB", 262144, minimum=1)
VM_MAX_VCPUS = env_int("XENAOE_VM_MAX_VCPUS", 64, minimum=1)
VM_MIN_DISK_MIB = env_int("XENAOE_VM_MIN_DISK_MIB", 16, minimum=1)
# At most what a disk server's volume.sh creates (1 PiB: drivers.vblade.MAX_VOLUME_MIB).
VM_MAX_DISK_MIB = env_int("XENAOE_VM_MAX_DISK_MIB", 16 * 1024 * 1024, minimum=1, maximum=1 << 30)
# How long a guest gets to power off after an ACPI shutdown before it is forced off.
VM_SHUTDOWN_TIMEOUT_S = env_int("XENAOE_VM_SHUTDOWN_TIMEOUT_S", 60, minimum=0)

# Images (docs/images.md). The panel's own copies of each image's files; where builds are cached
# (outside the checkout: a second clone, a CI run or `make demo` reuses a build); where disk servers
# keep image disks and CPU servers boot files and seeds (the same path on every host of a role).
IMAGE_STORE = env_path("XENAOE_IMAGE_STORE", DATA_DIR / "images")
IMAGE_BUILD_CACHE = env_path("XENAOE_IMAGE_BUILD_CACHE", Path("/var/cache/xenaoe-panel/images"))
DISK_IMAGE_DIR = env_str("XENAOE_DISK_IMAGE_DIR", "/srv/xenaoe/images")
CPU_BOOT_DIR = env_str("XENAOE_CPU_BOOT_DIR", "/srv/xenaoe/boot")
CPU_SEED_DIR = env_str("XENAOE_CPU_SEED_DIR", "/srv/xenaoe/seeds")
IMAGE_UPLOAD_MAX_MIB = env_int("XENAOE_IMAGE_UPLOAD_MAX_MIB", 64 * 1024, minimum=1)
IMAGE_COPY_TIMEOUT_S = env_int("XENAOE_IMAGE_COPY_TIMEOUT_S", 3600, minimum=10)
# How long a new VM's create job waits to see its OS booted (its root array through the guest
# agent); a slower guest is a warning, not a failure. Emulated (TCG) guests take ~30 s.
VM_BOOT_WAIT_S = env_int("XENAOE_VM_BOOT_WAIT_S", 180, minimum=0)
# The login command a VM's page shows ({user}, {address}); the demo's goes through the lab's
# client namespace, the only place on the guests' network.
VM_SSH_COMMAND = env_str("XENAOE_VM_SSH_COMMAND", "ssh {user}@{address}")
# VM NICs get MACs under this locally administered prefix (three octets): the panel owns it.
MAC_PREFIX = env_str("XENAOE_MAC_PREFIX", "02:a0:e0")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Job history retention (docs/jobs.md): finished jobs older than this many days move, with their
# logs, to gzip'd JSON Lines files in JOB_ARCHIVE_DIR (`manage.py jobs restore` reads them back).
# 0 keeps every job in the database for ever.
JOB_RETENTION_DAYS = env_int("XENAOE_JOB_RETENTION_DAYS", 90, minimum=0)
JOB_ARCHIVE_DIR = env_path("XENAOE_JOB_ARCHIVE_DIR", DATA_DIR / "job-archive")
# The audit log's own retention (docs/operations.md): compliance rules ask for a year or more,
# whatever the job history keeps. Its events older than this many days move to their own files
# (`audit-*.jsonl.gz`) in JOB_ARCHIVE_DIR; 0 keeps every event in the database for ever.
AUDIT_RETENTION_DAYS = env_int("XENAOE_AUDIT_RETENTION_DAYS", 400, minimum=0)

# Run by `celery -A xenaoe_panel beat` (one beat process per installation, beside the workers).
CELERY_BEAT_SCHEDULE = {
    # At night, when nobody waits on the job history's pages.
    "archive-finished-jobs": {"task": "jobs.archive_finished_jobs", "schedule": crontab(hour=3, minute=30)},
    # A task of its own, by its own setting: neither archive waits on the other or fails with it.
    "archive-audit-events": {"task": "audit.archive_events", "schedule": crontab(hour=3, minute=45)},
    "recover-jobs": {"task": "jobs.recover_jobs", "schedule": 30.0},
    # Lost deliveries sent again, N+1 looked at, old events pruned (the default queue).
    "notifications-housekeeping": {"task": "notifications.housekeeping", "schedule": 60.0},
}
# Jobs nobody works on (jobs/recovery.py, docs/jobs.md). A running job's worker renews its lease
# every quarter of JOB_LEASE_S, whatever the job logs; once the lease has run out the job is
# ended ERRORED and its VM freed. A job whose message no worker took for JOB_RESEND_AFTER_S gets
# it again (it still runs once); after JOB_UNCLAIMED_AFTER_S (0: never) it is ended.
JOB_LEASE_S = env_int("XENAOE_JOB_LEASE_S", 60, minimum=10)
JOB_RESEND_AFTER_S = env_int("XENAOE_JOB_RESEND_AFTER_S", 120, minimum=30)
JOB_UNCLAIMED_AFTER_S = env_int("XENAOE_JOB_UNCLAIMED_AFTER_S", 3600, minimum=0)
if 0 < JOB_UNCLAIMED_AFTER_S <= JOB_RESEND_AFTER_S:
    raise ImproperlyConfigured("XENAOE_JOB_UNCLAIMED_AFTER_S must be 0 or longer than XENAOE_JOB_RESEND_AFTER_S: "
                               "a lost message is sent again before its job is given up")
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# Host monitor (`manage.py monitor`, docs/ha.md). Every host is checked every interval; a host is
# declared dead only after DEAD_AFTER consecutive missed checks, so one slow answer never acts.
# Each check has a timeout shorter than the interval so that a cycle never overruns the next.
MONITOR_INTERVAL_S = env_int("XENAOE_MONITOR_INTERVAL_S", 2, minimum=1)
MONITOR_DEAD_AFTER = env_int("XENAOE_MONITOR_DEAD_AFTER", 3, minimum=1)
MONITOR_CHECK_TIMEOUT_MS = env_int("XENAOE_MONITOR_CHECK_TIMEOUT_MS", MONITOR_INTERVAL_S * 750, minimum=100)
if MONITOR_CHECK_TIMEOUT_MS >= MONITOR_INTERVAL_S * 1000:
    raise ImproperlyConfigured("XENAOE_MONITOR_CHECK_TIMEOUT_MS must be shorter than XENAOE_MONITOR_INTERVAL_S")
# This panel machine's name in the monitors' leadership (logs, the dashboard, pg_stat_activity):
# set it per machine where the hostname says nothing (a container's).
PANEL_NODE = env_str("XENAOE_PANEL_NODE", socket.gethostname())
# How long each CPU server's AoE probe listens for Query Config answers (its SAN check).
MONITOR_SAN_LISTEN_MS = env_int("XENAOE_MONITOR_SAN_LISTEN_MS", 300, minimum=50)
# CPU servers' history (hosts/history.py): the monitor records memory used and guests at most this
# often, and deletes samples older than RETENTION_DAYS (0: keep them for ever).
HOST_HISTORY_INTERVAL_S = env_int("XENAOE_HISTORY_INTERVAL_S", 60, minimum=1)
HOST_HISTORY_RETENTION_DAYS = env_int("XENAOE_HISTORY_RETENTION_DAYS", 30, minimum=0)
# Guests' CPU, disk and network figures (vms/stats.py): the leading monitor reads every CPU server's
# running guests (libvirt's bulk stats, one call per server) every INTERVAL_S seconds (0: never) and
# keeps the rates for RETENTION_HOURS: the charts on the VM pages, the latest figures in /metrics.
VM_STATS_INTERVAL_S = env_int("XENAOE_VM_STATS_INTERVAL_S", 60, minimum=0)
VM_STATS_RETENTION_HOURS = env_int("XENAOE_VM_STATS_RETENTION_HOURS", 24, minimum=1)
# A CPU server whose management link answers but whose SAN check fails DEAD_AFTER times in a row is
# marked suspect; with this on, its guests are also moved away (ha.maintenance.evacuate_suspect).
EVACUATE_ON_SAN_LOSS = env_bool("XENAOE_EVACUATE_ON_SAN_LOSS", True)
# CPU servers' BMC sensors (power supplies, fans) are read every this many seconds (0: never), each
# ipmitool call within the timeout; a failing one marks the host suspect, and with this on its
# guests are moved away too (docs/ha.md).
MONITOR_BMC_INTERVAL_S = env_int("XENAOE_MONITOR_BMC_INTERVAL_S", 10, minimum=0)
MONITOR_BMC_TIMEOUT_S = env_int("XENAOE_MONITOR_BMC_TIMEOUT_S", 10, minimum=1)
EVACUATE_ON_BMC_FAILURE = env_bool("XENAOE_EVACUATE_ON_BMC_FAILURE", True)
# Mirror health from inside each running guest (/proc/mdstat through the QEMU guest agent), read by
# the monitor in the background every this many seconds (0: never), each read within the timeout.
MIRROR_CHECK_INTERVAL_S = env_int("XENAOE_MIRROR_CHECK_INTERVAL_S", 10, minimum=0)
MIRROR_CHECK_TIMEOUT_S = env_int("XENAOE_MIRROR_CHECK_TIMEOUT_S", 8, minimum=1)
# How many guests an evacuation migrates at once (they share the migration link), and each one's
# bandwidth cap in MiB/s when the evacuation was started without one, as the monitor's always are
# (None: uncapped; at most vms.migration.MAX_BANDWIDTH_MIB).
EVACUATE_PARALLEL = env_int("XENAOE_EVACUATE_PARALLEL", 2, minimum=1)
# A dead CPU server's guests brought up on the survivors at once (ha/failover.py).
FAILOVER_PARALLEL = env_int("XENAOE_FAILOVER_PARALLEL", 8, minimum=1)
EVACUATE_MAX_MIB_PER_S = env_optional_int("XENAOE_EVACUATE_MAX_MIB_PER_S", minimum=1, maximum=100_000)
# Fencing (docs/fencing.md): how long one ipmitool call may take, and how long a power off has to
# read "off" (real BMCs: seconds); how long each SSH call restarting a disk server's exports with a
# new MAC list may take (a dead disk server costs the SSH connect timeout, not this).
FENCE_IPMI_TIMEOUT_S = env_int("XENAOE_FENCE_IPMI_TIMEOUT_S", 10, minimum=1)
FENCE_IPMI_CONFIRM_TIMEOUT_S = env_int("XENAOE_FENCE_IPMI_CONFIRM_TIMEOUT_S", 30, minimum=1)
FENCE_STORAGE_TIMEOUT_S = env_int("XENAOE_FENCE_STORAGE_TIMEOUT_S", 20, minimum=1)
