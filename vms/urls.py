from django.urls import path

from vms import views

urlpatterns = [
    path("", views.VmListView.as_view(), name="vm-list"),
    path("new/", views.VmCreateView.as_view(), name="vm-create"),
    path("placement.json", views.PlacementView.as_view(), name="vm-placement"),
    path("quota.json", views.QuotaView.as_view(), name="vm-quota"),
    path("<str:name>/", views.VmDetailView.as_view(), name="vm-detail"),
    path("<str:name>/action/", views.VmActionView.as_view(), name="vm-action"),
    path("<str:name>/eject/", views.VmEjectView.as_view(), name="vm-eject"),
    path("<str:name>/migrate/", views.VmMigrateView.as_view(), name="vm-migrate"),
    path("<str:name>/groups/", views.VmGroupsView.as_view(), name="vm-groups"),
    path("<str:name>/delete/", views.VmDeleteView.as_view(), name="vm-delete"),
    path("<str:name>/console/", views.VmConsoleView.as_view(), name="vm-console"),
    path("<str:name>/console/vnc/", views.VmConsoleView.as_view(graphical=True), name="vm-console-vnc"),
]
