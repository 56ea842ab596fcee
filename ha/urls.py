from django.urls import path

from ha import views

urlpatterns = [
    path("", views.IncidentListView.as_view(), name="incident-list"),
    path("<int:pk>/", views.IncidentDetailView.as_view(), name="incident-detail"),
    path("<int:pk>/confirm-fenced/", views.ConfirmFencedView.as_view(), name="incident-confirm-fenced"),
    # Host state changes an operator asks for; here because they belong with HA, not the inventory.
    path("hosts/cpu/<int:pk>/enter-maintenance/", views.EnterMaintenanceView.as_view(),
         name="host-enter-maintenance"),
    path("hosts/<str:kind>/<int:pk>/return-to-service/", views.ReturnToServiceView.as_view(),
         name="host-return-to-service"),
]
