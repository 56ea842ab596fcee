"""The Celery app: `celery -A xenaoe_panel worker` runs every job."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xenaoe_panel.settings")

app = Celery("xenaoe_panel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
