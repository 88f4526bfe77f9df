from django.http import HttpRequest
from ninja.security import HttpBearer, SessionAuth

from accounts.services import token_authenticate


class BearerToken(HttpBearer):
    """`Authorization: Bearer TOKEN`, the token made by `manage.py create_token USERNAME`."""

    def authenticate(self, request: HttpRequest, token: str):
        user = token_authenticate(raw_token=token)
        if user is None:
            return None
        request.user = user
        return user


class BrowserSession(SessionAuth):
    """The logged-in browser's session, CSRF-checked, for requests that carry its cookie and
    no Authorization header. A script whose token is missing, wrong or revoked is told so
    (401), not that a CSRF check it never meant to take failed (403)."""

    def __call__(self, request: HttpRequest):
        if "authorization" in request.headers or self.param_name not in request.COOKIES:
            return None
        return super().__call__(request)
