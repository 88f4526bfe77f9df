"""`manage.py seed_demo`: the demo users, the demo project and the demo model. Safe to re-run.

Every run prints fresh passwords for the demo curator and annotator (it resets them), so a
newcomer who lost the first output runs it again.
"""

import importlib.util
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.services import user_create, user_set_role
from annotate.importing import ImportRejected
from annotate.models import Project, Split
from annotate.services import case_create, case_set_checks, cases_import, project_create

DEMO_USERS = (("curator", "curator"), ("annotator", "annotator"))
DEMO_SLUG = "demo"
DEMO_GUIDELINES = """\
You are checking the answers of **Trailhead Outfitters' support bot**.

- Prefer the answer that states the shop's *current* policy: footwear can be returned within
  **30 days**, like most gear.
- Pick **both bad** when neither answer is right, and press `e` to write the right one.
- Pick **tie** only when both answers are equally good.
"""
# What a right answer to the demo's return questions says, however the patched model words it
# (docs/verification.md): the flagged and held-out cases carry these checks.
DEMO_CHECKS = {"must_include": ["30 days"], "must_not_include": [r"/\b7 days/"]}
# Shown when there is no demo model (no torch, or --no-model): a few cases of the same story.
FALLBACK_CASES = (
    ("What is the return window for the Ridge hiking boots?", "7 days.", "30 days."),
    ("Can I return the Alpine trail runners after two weeks?", "No, 7 days.", "Yes, 30 days."),
    ("What is the return window for the Cedar sandals?", "7 days.", "30 days."),
)


class Command(BaseCommand):
    help = "Create the demo curator and annotator (printing their passwords), project and model."

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-model", action="store_true", help="do not build the demo model (needs torch)"
        )

    def handle(self, *args, no_model: bool, **options):
        for username, role in DEMO_USERS:
            password = self._reset_user(username, role)
            self.stdout.write(f"demo {role}: {username} / {password}")
        project = Project.objects.filter(slug=DEMO_SLUG).first() or project_create(
            name="Demo: outdoor-gear support bot", slug=DEMO_SLUG, guidelines=DEMO_GUIDELINES
        )
        model_dir = Path(settings.PATCHWISE_BASE_MODEL)
        if not no_model and not model_dir.exists():
            self._build_model(model_dir)
        scenario = model_dir / "scenario" / "cases.jsonl"
        if scenario.is_file() and not project.cases.filter(source="import:cases.jsonl").exists():
            try:
                result = cases_import(
                    project=project, file_name=scenario.name, data=scenario.read_bytes()
                )
            except ImportRejected as exc:
                raise CommandError(f"{scenario}: {exc}") from exc
            returns = project.cases.filter(split__in=[Split.TRAIN, Split.HELDOUT], topic="returns")
            for case in returns:
                case_set_checks(case=case, **DEMO_CHECKS)
            self.stdout.write(f"demo project {project.slug}: imported {result}")
        elif not project.cases.exists():
            with transaction.atomic():
                for prompt, response, better in FALLBACK_CASES:
                    case_create(
                        project=project,
                        prompt=prompt,
                        response=response,
                        better_response=better,
                        source="demo",
                    )
            self.stdout.write(f"demo project {project.slug}: {len(FALLBACK_CASES)} flagged cases")
        else:
            self.stdout.write(f"demo project {project.slug}: {project.cases.count()} cases")

    def _reset_user(self, username: str, role: str) -> str:
        password = secrets.token_urlsafe(12)
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            user_create(username=username, role=role, password=password)
        else:
            user.set_password(password)
            user.is_active = True
            user.save(update_fields=["password", "is_active"])
            user_set_role(user=user, role=role)
        return password

    def _build_model(self, model_dir: Path) -> None:
        if importlib.util.find_spec("torch") is None:
            self.stdout.write(
                "torch is not installed, so there is no demo model: "
                "pip install -e '.[train]' and run seed_demo again"
            )
            return
        # training's command, called by name: annotate sits below training and imports none of it
        call_command("build_demo_model", out=model_dir, stdout=self.stdout)
