from django.http import HttpRequest

from accounts.roles import is_curator


def patchwise(request: HttpRequest) -> dict:
    """The CSP nonce under the name django-htmx's {% htmx_script %} reads, and the user's role."""
    user = getattr(request, "user", None)
    return {
        "csp_nonce": getattr(request, "csp_nonce", ""),
        "user_is_curator": bool(user and user.is_authenticated and is_curator(user)),
    }
