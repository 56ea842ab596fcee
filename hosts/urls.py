from django.urls import path

from hosts import views

urlpatterns = [
    path("", views.HostListView.as_view(), name="host-list"),
    path("cpu/<int:pk>/", views.CpuServerDetailView.as_view(), name="cpuserver-detail"),
    path("disk/<int:pk>/", views.DiskServerDetailView.as_view(), name="diskserver-detail"),
]
