from django.urls import path

from jobs import views

urlpatterns = [
    path("", views.JobListView.as_view(), name="job-list"),
    path("<int:pk>/", views.JobDetailView.as_view(), name="job-detail"),
    path("<int:pk>/cancel/", views.JobCancelView.as_view(), name="job-cancel"),
    path("<int:pk>/log.json", views.JobLogView.as_view(), name="job-log"),
]
