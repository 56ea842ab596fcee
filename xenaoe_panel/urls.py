from django.contrib import admin
from django.urls import include, path

from metrics.views import metrics
from xenaoe_panel.accounts import AdminLoginForm
from xenaoe_panel.home import home

# The admin's login page counts failed logins against the same limits as the panel's.
admin.site.login_form = AdminLoginForm

urlpatterns = [
    path("", home, name="dashboard"),
    path("hosts/", include("hosts.urls")),
    path("vms/", include("vms.urls")),
    path("anti-affinity/", include("vms.group_urls")),
    path("jobs/", include("jobs.urls")),
    path("images/", include("images.urls")),
    path("networks/", include("networks.urls")),
    path("account/keys/", include("sshkeys.urls")),
    path("incidents/", include("ha.urls")),
    path("audit/", include("audit.urls")),
    path("notifications/", include("notifications.urls")),
    path("api/", include("api.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics, name="metrics"),  # for Prometheus, with the metrics token (docs/operations.md)
    path("", include("xenaoe_panel.accounts")),  # login, logout, password reset and change
]
