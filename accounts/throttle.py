"""Login throttling with django-axes: who is the client, and what a locked-out person reads.

Axes counts failed logins (the site's form and /admin/login/ alike, both go through Django's
authenticate) per username and per client address, and refuses further tries for a cool-off
time once either count reaches PATCHWISE_LOGIN_FAILURE_LIMIT. `manage.py unlock_login` lifts
a lock at once.
"""

from __future__ import annotations

import math

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.http import HttpRequest
from django.shortcuts import render


def client_ip(request: HttpRequest) -> str | None:
    """The address the request came from, as far as the proxies we trust can tell.

    With PATCHWISE_TRUSTED_PROXIES = N reverse proxies in front of the app, each appends the
    address it saw to X-Forwarded-For, so the N-th entry from the right is the one the outermost
    proxy saw; entries further left were written by the client and may be forged. Without
    trusted proxies, X-Forwarded-For is ignored and REMOTE_ADDR is the client.
    """
    trusted = settings.PATCHWISE_TRUSTED_PROXIES
    remote = request.META.get("REMOTE_ADDR") or None
    if trusted <= 0:
        return remote
    forwarded = [
        hop.strip()
        for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        if hop.strip()
    ]
    if len(forwarded) >= trusted:
        return forwarded[-trusted]
    return forwarded[0] if forwarded else remote


class LoginThrottleBackend(AxesStandaloneBackend):
    """Axes' check before the password check. A caller without a request (a script calling
    authenticate(), Django's test client's login()) is no web login and is not throttled;
    axes itself would raise there."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def lockout_response(request: HttpRequest, original_response=None, credentials=None):
    """The page a locked-out login gets (429): why, for how long, and how to be unlocked."""
    from axes.helpers import get_client_username

    cooloff = settings.AXES_COOLOFF_TIME
    context = {
        "username": get_client_username(request, credentials) or "",
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cooloff_minutes": max(1, math.ceil(cooloff.total_seconds() / 60)),
    }
    return render(request, "registration/locked_out.html", context, status=429)
