"""Two roles, kept as Django groups: annotators label, curators also import, launch and ship.

Every curator action calls `require_curator` (or the decorator) on the server; hiding a button
is never the check.
"""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied

ANNOTATOR = "annotator"
CURATOR = "curator"
ROLES = (ANNOTATOR, CURATOR)


def is_curator(user: AbstractBaseUser | AnonymousUser) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    cached = getattr(user, "_patchwise_is_curator", None)
    if cached is None:
        cached = user.groups.filter(name=CURATOR).exists()
        user._patchwise_is_curator = cached
    return cached


def remember_role(user: AbstractBaseUser, *, curator: bool) -> None:
    """Record a role already read with the user (token authentication), for is_curator."""
    user._patchwise_is_curator = curator


def require_curator(user: AbstractBaseUser | AnonymousUser) -> None:
    if not is_curator(user):
        raise PermissionDenied("Only curators may do this.")


def curator_required(view: Callable) -> Callable:
    """View decorator: 403 for anyone who is not a curator."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        require_curator(request.user)
        return view(request, *args, **kwargs)

    return wrapper
