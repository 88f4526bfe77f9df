from django.urls import path

from rounds import views

app_name = "rounds"

urlpatterns = [
    path("project/<slug:slug>/", views.project_rounds, name="project_rounds"),
    path("project/<slug:slug>/generate/", views.generation_launch, name="generation_launch"),
    path("project/<slug:slug>/next/", views.round_next, name="round_next"),
    path("generations/<int:generation_id>/", views.generation_detail, name="generation_detail"),
    path(
        "generations/<int:generation_id>/cancel", views.generation_cancel, name="generation_cancel"
    ),
    path("<int:round_id>/", views.round_detail, name="round_detail"),
    path("<int:round_id>/requeue", views.round_requeue, name="round_requeue"),
]
