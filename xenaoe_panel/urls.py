from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from hosts.views import DashboardView

urlpatterns = [
    path("", DashboardView.as_view(), name="dashboard"),
    path("hosts/", include("hosts.urls")),
    path("vms/", include("vms.urls")),
    path("jobs/", include("jobs.urls")),
    path("incidents/", include("ha.urls")),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
