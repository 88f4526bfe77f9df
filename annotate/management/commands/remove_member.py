from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate.management.commands._common import project_or_error
from annotate.services import project_remove_member


class Command(BaseCommand):
    help = (
        "Remove USERNAME from the members of project SLUG (a restricted project is visible only "
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
        changed = project_remove_member(project=project, user=user)
        if changed:
            self.stdout.write(f"removed {username} from project {slug}")
        else:
            self.stdout.write(f"{username} is not a member of project {slug}")
