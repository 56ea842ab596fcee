from django.urls import path

from images import views

urlpatterns = [
    path("", views.ImageListView.as_view(), name="image-list"),
    path("upload/", views.ImageUploadView.as_view(), name="image-upload"),
    path("<str:name>/", views.ImageDetailView.as_view(), name="image-detail"),
    path("<str:name>/action/", views.ImageActionView.as_view(), name="image-action"),
]
