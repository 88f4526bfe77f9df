"""The JSON API under /api/v1/ (OpenAPI schema at /api/v1/openapi.json).

Each app contributes a router; every endpoint authenticates with `Authorization: Bearer TOKEN`
(tokens from `manage.py create_token`) or the browser session. Errors are `{"detail": ...}`.
"""

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest
from ninja import NinjaAPI
from ninja.errors import AuthenticationError

from accounts.api import router as accounts_router
from accounts.api_auth import BearerToken, BrowserSession
from annotate.api import router as annotate_router
from rounds.api import router as rounds_router
from training.api import router as training_router

api = NinjaAPI(
    title="Patchwise API",
    version="1",
    urls_namespace="api",
    auth=[BearerToken(), BrowserSession()],
    docs_url="/docs",
)


@api.exception_handler(AuthenticationError)
def unauthorized(request: HttpRequest, exc: AuthenticationError):
    detail = (
        "The API token is unknown or revoked, or its user is inactive."
        if "authorization" in request.headers
        else "Send 'Authorization: Bearer TOKEN' (python manage.py create_token USERNAME)."
    )
    return api.create_response(request, {"detail": detail}, status=401)


@api.exception_handler(PermissionDenied)
def permission_denied(request: HttpRequest, exc: PermissionDenied):
    return api.create_response(request, {"detail": str(exc) or "Permission denied."}, status=403)


@api.exception_handler(RequestDataTooBig)
def body_too_big(request: HttpRequest, exc: RequestDataTooBig):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return api.create_response(
        request,
        {
            "detail": f"The request body is larger than the API takes ({limit} bytes); send "
            "fewer cases per call, or import a large file with manage.py import_cases"
        },
        status=413,
    )


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404):
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


# Routers live next to the models they serve.
api.add_router("", accounts_router)
api.add_router("", annotate_router)
api.add_router("", training_router)
api.add_router("", rounds_router)
