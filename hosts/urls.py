from django.urls import path

from hosts import views, views_verify

urlpatterns = [
    path("", views.HostListView.as_view(), name="host-list"),
    path("cpu/<int:pk>/", views.CpuServerDetailView.as_view(), name="cpuserver-detail"),
    path("disk/<int:pk>/", views.DiskServerDetailView.as_view(), name="diskserver-detail"),
    path("verify/", views_verify.VerifyView.as_view(), name="cluster-verify"),
    path("verify/run/", views_verify.VerifyRunView.as_view(), name="cluster-verify-run"),
    path("verify/<int:pk>/", views_verify.VerifyView.as_view(), name="cluster-verify-job"),
    path("verify/<int:pk>/fix/<int:serial>/", views_verify.VerifyFixView.as_view(), name="cluster-verify-fix"),
]
