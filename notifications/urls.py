from django.urls import path

from notifications import views

urlpatterns = [
    path("", views.TargetListView.as_view(), name="notification-targets"),
    path("new/", views.TargetCreateView.as_view(), name="notification-target-create"),
    path("<int:pk>/", views.TargetDetailView.as_view(), name="notification-target-detail"),
    path("<int:pk>/edit/", views.TargetEditView.as_view(), name="notification-target-edit"),
    path("<int:pk>/test/", views.TargetTestView.as_view(), name="notification-target-test"),
    path("<int:pk>/secret/", views.TargetRotateSecretView.as_view(), name="notification-target-rotate-secret"),
    path("<int:pk>/delete/", views.TargetDeleteView.as_view(), name="notification-target-delete"),
]
