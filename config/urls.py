from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from config.api import api
from config.views import healthz

handler404 = "config.views.page_not_found"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # Pages name the icon in <head>; this answers browsers (and the admin) that ask the root.
    path(
        "favicon.ico",
        login_not_required(RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    ),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("api/v1/", api.urls),
    path("jobs/", include("training.urls")),
    path("rounds/", include("rounds.urls")),
    path("", include("annotate.urls")),
]
