import json

from django.core.management.base import BaseCommand

from annotate.management.commands._common import project_or_error
from annotate.selectors import preference_pairs


class Command(BaseCommand):
    help = (
        "Stream the project's preference pairs to stdout as JSONL (rules: docs/export-rules.md). "
        "--format trl keeps only prompt, chosen, rejected."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="the project's slug")
        parser.add_argument(
            "--format",
            choices=("jsonl", "trl"),
            default="jsonl",
            help="jsonl (default) adds comparison_id and case_id to each line",
        )

    def handle(self, *args, project, format, **options):
        target = project_or_error(project)
        count = 0
        for pair in preference_pairs(project=target, trl=format == "trl"):
            self.stdout.write(json.dumps(pair, ensure_ascii=False))
            count += 1
        self.stderr.write(f"{count} pairs from project {target.slug}")
