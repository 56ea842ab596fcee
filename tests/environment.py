"""Loaded as a pytest plugin (`-p tests.environment`), before Django reads its settings: this run's
database, queue, channel and cache prefixes, so that a demo running beside the tests never takes their jobs."""
import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/xenaoe")
os.environ.setdefault("CELERY_QUEUE", f"xenaoe-test-{os.getpid()}")
os.environ.setdefault("CHANNELS_PREFIX", f"xenaoe-test-{os.getpid()}")
os.environ.setdefault("CACHE_PREFIX", f"xenaoe-test-{os.getpid()}")
# Connections opened by Channels' worker threads close after each use, so that the test database
# can be dropped at the end.
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "0")
