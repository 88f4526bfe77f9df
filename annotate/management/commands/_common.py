"""Helpers shared by the annotation commands."""

from django.core.management.base import CommandError

from annotate.models import Project


def project_or_error(slug: str) -> Project:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        known = ", ".join(Project.objects.values_list("slug", flat=True)) or "none yet"
        raise CommandError(
            f"no project {slug!r} (projects: {known}); create one with create_project {slug}"
        )
    return project
