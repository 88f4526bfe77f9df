"""The annotation queue: leasing the next comparison an annotator should judge.

The queue's guarantees come from the database. A lease locks a candidate row with
SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL; SQLite serialises writers and is for one person),
re-counts the live leases in a fresh statement while holding that lock, and only then writes the
lease. The statements are in queue_sql.
"""

import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.utils import timezone

from annotate import selectors
from annotate.models import Comparison, Lease, Project, Side
from annotate.services import queue_sql
from annotate.services.projects import require_project_access

# An annotator who walks away gives the comparison back after this long.
LEASE_DURATION = timedelta(seconds=settings.PATCHWISE_LEASE_SECONDS)


def lease_next_comparison(
    *, project: Project, annotator: AbstractBaseUser
) -> tuple[Comparison, Lease, str] | None:
    """Hand the annotator a comparison that still needs them, under a lease that expires.

    Returns (comparison, lease, shown_left) or None when nothing is left for them; `lease` is
    an unsaved copy of the row written (its comparison, annotator, expires_at, shown_left). An
    annotator holds one lease per project: asking again (a reload) renews and returns it.
    """
    require_project_access(project=project, user=annotator)
    params = _lease_params(annotator) | {"project": project.pk, "overlap": project.overlap}
    return queue_sql.lease(params, annotator)


def _lease_params(annotator: AbstractBaseUser) -> dict:
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value  # SQLite stores its own text format
    return {
        "user": annotator.pk,
        "now": adapt(now),
        "expires": adapt(now + LEASE_DURATION),
        "expires_at": now + LEASE_DURATION,
        "side": secrets.choice((Side.A, Side.B)),  # the side shown on the left, if new
        # Alone in its transaction, a lease commits without waiting for the disk (see 0004).
        "async_commit": not connection.in_atomic_block,
    }


def lease_next_in_project(
    *, slug: str, annotator: AbstractBaseUser
) -> tuple[Comparison, Lease, str] | None:
    """lease_next_comparison for the project with this slug (Http404 when there is none).

    On PostgreSQL the project, the access check and the lease are one statement: the API leases
    by slug on every call, and each round trip cost more CPU than the lease itself.
    """
    if connection.vendor != "postgresql" or not selectors.is_slug(slug):
        return lease_next_comparison(project=selectors.project_by_slug(slug), annotator=annotator)
    params = _lease_params(annotator) | {
        "slug": slug,
        "privileged": selectors.sees_every_project(annotator),
    }
    leased = queue_sql.lease_by_slug(params, annotator)
    if leased is None:
        # Nothing leased: say why when it is not an empty queue (404, 403).
        project = selectors.project_by_slug(slug)
        require_project_access(project=project, user=annotator)
    return leased
