from django.urls import path

from annotate import views

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/new/", views.project_create, name="project_create"),
    path("p/<slug:slug>/", views.compare, name="compare"),
    path("p/<slug:slug>/judge/", views.judge, name="judge"),
    path("p/<slug:slug>/undo/", views.undo, name="undo"),
    path("p/<slug:slug>/report/", views.project_report, name="project_report"),
    path("p/<slug:slug>/cases/", views.case_list, name="case_list"),
    path("p/<slug:slug>/cases/<int:case_id>/", views.case_detail, name="case_detail"),
    path(
        "p/<slug:slug>/cases/<int:case_id>/preview/",
        views.case_checks_preview,
        name="case_checks_preview",
    ),
    path("p/<slug:slug>/import/", views.case_upload, name="case_upload"),
    path("p/<slug:slug>/settings/", views.project_settings, name="project_settings"),
    path("p/<slug:slug>/team/", views.project_team, name="project_team"),
]
