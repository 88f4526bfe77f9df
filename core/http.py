"""Requests as django-htmx's middleware hands them to views, and when to answer with a partial.

Typed as django-htmx documents it: ``request.htmx`` is an ``HtmxDetails``.
"""

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def page_or_partial(request: HtmxHttpRequest, template: str, partial: str) -> str:
    """The partial for an htmx swap; the whole page otherwise, and when htmx restores history
    after a cache miss (it then asks with HX-Request too, and needs the full page)."""
    if request.htmx and not request.htmx.history_restore_request:
        return f"{template}#{partial}"
    return template
