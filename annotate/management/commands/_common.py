"""Helpers shared by the annotation commands."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project


def project_or_error(slug: str) -> Project:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        known = ", ".join(Project.objects.values_list("slug", flat=True)) or "none yet"
        raise CommandError(
            f"no project {slug!r} (projects: {known}); create one with create_project {slug}"
        )
    return project


class MembershipCommand(BaseCommand):
    """add_member and remove_member: the same arguments and lookups, another change."""

    def change(self, *, project: Project, user) -> bool:
        raise NotImplementedError

    done_message = "{username}: project {slug} changed"
    unchanged_message = "{username}: project {slug} unchanged"

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("username")

    def handle(self, *args, slug, username, **options):
        project = project_or_error(slug)
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}; create it with create_user")
        changed = self.change(project=project, user=user)
        message = self.done_message if changed else self.unchanged_message
        self.stdout.write(message.format(username=username, slug=slug))
