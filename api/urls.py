from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from api import audit, groups, hosts, images, incidents, jobs, notifications, tenants, vms
from api.docs import RedocView, SwaggerView

app_name = "api"

router = SimpleRouter(trailing_slash=True)
router.register("vms", vms.VmViewSet, basename="vm")
router.register("anti-affinity-groups", groups.AntiAffinityGroupViewSet, basename="antiaffinitygroup")
router.register("jobs", jobs.JobViewSet, basename="job")
router.register("incidents", incidents.IncidentViewSet, basename="incident")
router.register("cpu-servers", hosts.CpuServerViewSet, basename="cpuserver")
router.register("disk-servers", hosts.DiskServerViewSet, basename="diskserver")
router.register("tenants", tenants.TenantViewSet, basename="tenant")
router.register("images", images.ImageViewSet, basename="image")
router.register("networks", images.NetworkViewSet, basename="network")
router.register("users", tenants.UserViewSet, basename="user")
router.register("audit", audit.AuditEventViewSet, basename="auditevent")
router.register("notification-targets", notifications.NotificationTargetViewSet, basename="notificationtarget")

urlpatterns = [
    path("", include(router.urls)),
    path("me/", tenants.MeView.as_view(), name="me"),
    path("verify/", hosts.VerifyView.as_view(), name="verify"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", RedocView.as_view(url_name="api:schema"), name="redoc"),
]
