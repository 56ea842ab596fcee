from django.urls import path

from vms import group_views

urlpatterns = [
    path("", group_views.GroupListView.as_view(), name="vm-group-list"),
    path("<int:pk>/delete/", group_views.GroupDeleteView.as_view(), name="vm-group-delete"),
]
