"""The Celery app: `celery -A xenaoe_panel worker -Q <queue>` runs jobs; one worker (or more) per queue,
the default one and high availability's (jobs/queues.py, docs/jobs.md)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xenaoe_panel.settings")

app = Celery("xenaoe_panel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
