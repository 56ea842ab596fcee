from django.urls import path

from sshkeys import views

urlpatterns = [
    path("", views.SshKeysView.as_view(), name="ssh-keys"),
    path("<int:pk>/delete/", views.SshKeyDeleteView.as_view(), name="ssh-key-delete"),
]
