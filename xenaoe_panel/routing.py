from django.urls import path

from ha.consumers import HostStateConsumer, IncidentConsumer, IncidentListConsumer
from jobs.consumers import JobConsumer
from vms.console_consumer import SerialConsoleConsumer, VncConsoleConsumer
from vms.consumers import VmStateConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/vms/", VmStateConsumer.as_asgi()),
    path("ws/vms/<str:name>/console/serial/", SerialConsoleConsumer.as_asgi()),
    path("ws/vms/<str:name>/console/vnc/", VncConsoleConsumer.as_asgi()),
    path("ws/hosts/", HostStateConsumer.as_asgi()),
    path("ws/incidents/", IncidentListConsumer.as_asgi()),
    path("ws/incidents/<int:incident_id>/", IncidentConsumer.as_asgi()),
]
