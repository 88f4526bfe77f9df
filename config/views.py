import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu import Connection


def _check_database() -> str | None:
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means "not answering"; the message says which
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_broker() -> str | None:
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    try:
        with Connection(
            settings.CELERY_BROKER_URL, connect_timeout=2, transport_options=options
        ) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _may_see_details(request: HttpRequest) -> bool:
    """Staff, or a probe with `Authorization: Bearer $PATCHWISE_HEALTHZ_TOKEN`, may read why a
    part is down; the error text names hosts, ports and drivers, which is no one else's business."""
    if getattr(request, "user", None) is not None and request.user.is_staff:
        return True
    token = settings.PATCHWISE_HEALTHZ_TOKEN
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the broker answer; 503 naming the one that does not (and,
    for staff or the health token, why)."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    failing = {name: error for name, error in checks.items() if error}
    body = {
        "status": "ok" if not failing else "unavailable",
        "database": "ok" if not checks["database"] else "down",
        "broker": "ok" if not checks["broker"] else "down",
    }
    if failing and _may_see_details(request):
        body["errors"] = failing
    return JsonResponse(body, status=503 if failing else 200)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404s: JSON under /api/ (a script reads {"detail"}), the HTML page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": f"No API endpoint at {request.path}."}, status=404)
    return defaults.page_not_found(request, exception)
