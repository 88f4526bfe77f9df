from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired
from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import reverse


class LoginRequiredMiddleware(DjangoLoginRequired):
    """Every page needs a login, except those marked @login_not_required.

    The JSON API is left to its own authentication, which answers 401 in JSON instead of
    redirecting a script to the login page.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


SESSION_KEY = "patchwise_must_change_password"


def remember_password_to_change(sender, request, user, **kwargs) -> None:
    """At login, note in the session whether the password is a one-time one (no query on every
    later request)."""
    from accounts.services import must_change_password

    if must_change_password(user):
        request.session[SESSION_KEY] = True


class PasswordChangeRequiredMiddleware:
    """Someone logged in with a one-time password (an account a curator made on the Team page)
    is sent to the password change page until they have chosen their own."""

    allowed = ("/accounts/password/", "/accounts/logout/", "/static/", "/favicon")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if (
            request.session.get(SESSION_KEY)
            and request.user.is_authenticated
            and not request.path_info.startswith(self.allowed)
        ):
            if request.path_info.startswith("/api/"):
                return JsonResponse(
                    {"detail": "Choose your own password first, at /accounts/password/."},
                    status=403,
                )
            return redirect(reverse("password_change"))
        return self.get_response(request)
