from django.urls import path

from jobs.consumers import JobConsumer
from vms.consumers import VmStateConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/vms/", VmStateConsumer.as_asgi()),
]
