"""Django settings for the XenAoE panel, all from the environment (see docs/configuration.md)."""
import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab

from xenaoe_panel.env import env_bool, env_int, env_list, env_path, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    # A fixed key in git would let anyone forge sessions; an unset key is only tolerable for a
    # throw-away demo, so derive a per-checkout one and keep it out of git.
    key_file = BASE_DIR / ".run" / "secret_key"
    if not key_file.exists():
        import secrets

        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()
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
    "lab",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "xenaoe_panel.urls"
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
            ],
        },
    },
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "xenaoe_panel.asgi.application"

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
        "CONFIG": {"hosts": [REDIS_URL], "prefix": env_str("CHANNELS_PREFIX", "xenaoe")},
    }
}
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "xenaoe")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Reaching the hosts. Secrets are files, never values: the defaults point at what `lab up` writes.
LAB_DIR = env_path("XENAOE_LAB_DIR", BASE_DIR / ".lab")
SSH_IDENTITY_FILE = env_path("XENAOE_SSH_IDENTITY", LAB_DIR / "ssh" / "id_ed25519")
SSH_KNOWN_HOSTS_FILE = env_path("XENAOE_SSH_KNOWN_HOSTS", LAB_DIR / "ssh" / "known_hosts")
# ControlMaster sockets: a root-only directory, short enough for a unix socket path.
SSH_CONTROL_DIR = env_path(
    "XENAOE_SSH_CONTROL_DIR",
    Path("/run/xenaoe-ssh") if os.geteuid() == 0 else Path.home() / ".cache" / "xenaoe-ssh",
)
SSH_CONNECT_TIMEOUT = env_int("XENAOE_SSH_CONNECT_TIMEOUT", 5, minimum=1)
SSH_COMMAND_TIMEOUT = env_int("XENAOE_SSH_COMMAND_TIMEOUT", 60, minimum=1)

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
VM_MAX_DISK_MIB = env_int("XENAOE_VM_MAX_DISK_MIB", 16 * 1024 * 1024, minimum=1)
# How long a guest gets to power off after an ACPI shutdown before it is forced off.
VM_SHUTDOWN_TIMEOUT_S = env_int("XENAOE_VM_SHUTDOWN_TIMEOUT_S", 60, minimum=0)

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
JOB_ARCHIVE_DIR = env_path("XENAOE_JOB_ARCHIVE_DIR", BASE_DIR / ".run" / "job-archive")

# Run by `celery -A xenaoe_panel beat` (one beat process per installation, beside the workers).
CELERY_BEAT_SCHEDULE = {
    # At night, when nobody waits on the job history's pages.
    "archive-finished-jobs": {"task": "jobs.archive_finished_jobs", "schedule": crontab(hour=3, minute=30)},
    "expire-stale-jobs": {"task": "jobs.expire_stale_jobs", "schedule": 60.0},
}
# A running job that has logged nothing for this long lost its worker (every driver call has a
# shorter timeout, and long waits log as they go): it is ended ERRORED and its VM freed.
JOB_STALE_AFTER_S = env_int("XENAOE_JOB_STALE_AFTER_S", 600, minimum=60)
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / ".run" / "celerybeat-schedule")

# Host monitor (`manage.py monitor`, docs/ha.md). Every host is checked every interval; a host is
# declared dead only after DEAD_AFTER consecutive missed checks, so one slow answer never acts.
# Each check has a timeout shorter than the interval so that a cycle never overruns the next.
MONITOR_INTERVAL_S = env_int("XENAOE_MONITOR_INTERVAL_S", 2, minimum=1)
MONITOR_DEAD_AFTER = env_int("XENAOE_MONITOR_DEAD_AFTER", 3, minimum=1)
MONITOR_CHECK_TIMEOUT_MS = env_int("XENAOE_MONITOR_CHECK_TIMEOUT_MS", MONITOR_INTERVAL_S * 750, minimum=100)
if MONITOR_CHECK_TIMEOUT_MS >= MONITOR_INTERVAL_S * 1000:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("XENAOE_MONITOR_CHECK_TIMEOUT_MS must be shorter than XENAOE_MONITOR_INTERVAL_S")
# How long each CPU server's AoE probe listens for Query Config answers (its SAN check).
MONITOR_SAN_LISTEN_MS = env_int("XENAOE_MONITOR_SAN_LISTEN_MS", 300, minimum=50)
# A CPU server whose management link answers but whose SAN check fails DEAD_AFTER times in a row is
# marked suspect; with this on, its guests are also moved away (ha.maintenance.evacuate_suspect).
EVACUATE_ON_SAN_LOSS = env_bool("XENAOE_EVACUATE_ON_SAN_LOSS", True)
# How many guests an evacuation migrates at once (they share the migration link).
EVACUATE_PARALLEL = env_int("XENAOE_EVACUATE_PARALLEL", 2, minimum=1)
# Fencing (docs/fencing.md): how long one ipmitool call may take, and how long a power off has to
# read "off"; how long restarting every export with a new MAC list may take.
FENCE_IPMI_TIMEOUT_S = env_int("XENAOE_FENCE_IPMI_TIMEOUT_S", 10, minimum=1)
FENCE_IPMI_CONFIRM_TIMEOUT_S = env_int("XENAOE_FENCE_IPMI_CONFIRM_TIMEOUT_S", 30, minimum=1)
FENCE_STORAGE_TIMEOUT_S = env_int("XENAOE_FENCE_STORAGE_TIMEOUT_S", 20, minimum=1)
