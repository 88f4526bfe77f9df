from django.http import HttpRequest
from ninja import Router, Schema

from accounts.roles import ANNOTATOR, CURATOR, is_curator

router = Router(tags=["accounts"])


class MeOut(Schema):
    username: str
    role: str


@router.get("/me", response=MeOut)
def me(request: HttpRequest):
    """Who the token belongs to: a script's first call to check its setup."""
    return {
        "username": request.user.username,
        "role": CURATOR if is_curator(request.user) else ANNOTATOR,
    }
