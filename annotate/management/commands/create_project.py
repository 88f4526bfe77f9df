from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotate.services import project_create
from core.messages import validation_message


class Command(BaseCommand):
    help = "Create an annotation project: create_project SLUG [--name NAME] [--overlap N]."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", help="shown in the UI (default: the slug)")
        parser.add_argument(
            "--overlap", type=int, default=1, help="distinct annotators per comparison (default 1)"
        )
        parser.add_argument(
            "--restricted",
            action="store_true",
            help="visible only to its members and staff (add them with add_member)",
        )

    def handle(self, *args, slug, name, overlap, restricted, **options):
        try:
            project = project_create(
                name=name or slug, slug=slug, overlap=overlap, restricted=restricted
            )
        except ValidationError as exc:
            raise CommandError(validation_message(exc)) from exc
        self.stdout.write(f"created project {project.slug} (overlap {project.overlap})")
