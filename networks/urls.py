from django.urls import path

from networks import views

urlpatterns = [
    path("", views.NetworkListView.as_view(), name="network-list"),
    path("new/", views.NetworkCreateView.as_view(), name="network-create"),
]
