from django.http import HttpRequest
from ninja.security import HttpBearer

from accounts.services import token_authenticate


class BearerToken(HttpBearer):
    """`Authorization: Bearer TOKEN`, the token made by `manage.py create_token USERNAME`."""

    def authenticate(self, request: HttpRequest, token: str):
        user = token_authenticate(raw_token=token)
        if user is None:
            return None
        request.user = user
        return user
