from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate.management.commands._common import project_or_error
from annotate.services import project_add_member


class Command(BaseCommand):
    help = (
        "Add USERNAME to the members of project SLUG (a restricted project is visible only "
        "to its members and staff)."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("username")

    def handle(self, *args, slug, username, **options):
        project = project_or_error(slug)
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}; create it with create_user")
        changed = project_add_member(project=project, user=user)
        if changed:
            self.stdout.write(f"added {username} to project {slug}")
        else:
            self.stdout.write(f"{username} is already a member of project {slug}")
