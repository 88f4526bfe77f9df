from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("project/<slug:slug>/", views.project_jobs, name="project_jobs"),
    path("<int:job_id>/", views.job_detail, name="job_detail"),
    path("<int:job_id>/cancel", views.job_cancel, name="job_cancel"),
    path("<int:job_id>/adapter.zip", views.job_download, name="job_download"),
]
