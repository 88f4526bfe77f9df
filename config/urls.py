from django.contrib import admin
from django.urls import include, path

from config.api import api
from config.views import healthz

handler404 = "config.views.page_not_found"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("api/v1/", api.urls),
    path("jobs/", include("training.urls")),
    path("rounds/", include("rounds.urls")),
    path("", include("annotate.urls")),
]
