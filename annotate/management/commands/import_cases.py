from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from annotate.importing import ImportRejected
from annotate.management.commands._common import project_or_error
from annotate.services import cases_import


class Command(BaseCommand):
    help = (
        "Import cases from a JSONL or CSV file, all or nothing: on a bad line it prints every "
        "bad line with its reason, imports nothing and exits with status 1."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="the project's slug")
        parser.add_argument("file", type=Path)

    def handle(self, *args, project, file: Path, **options):
        target = project_or_error(project)
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        limit = settings.PATCHWISE_MAX_UPLOAD_BYTES
        if file.stat().st_size > limit:
            # Refused before reading a huge file into memory; the parser says the same.
            raise CommandError(
                f"{file} is {file.stat().st_size:,} bytes; the limit is {limit:,} "
                "(PATCHWISE_MAX_UPLOAD_BYTES): split the file"
            )
        try:
            result = cases_import(project=target, file_name=file.name, data=file.read_bytes())
        except ImportRejected as exc:
            for message in exc.messages():
                self.stderr.write(f"{file}: {message}")
            raise CommandError(
                f"{file} rejected ({len(exc.errors)} problem(s)); nothing was imported"
            ) from exc
        self.stdout.write(f"imported {result} into {target.slug}")
