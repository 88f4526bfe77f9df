"""`manage.py build_demo_model [--out DIR]`: the demo model and its scenario, for `seed_demo`.

The build itself lives in `training/demo.py` (plain torch, no Django, also run as
`python -m training.engine demo`); this command is how the Django apps reach it, so `seed_demo`
asks for a model without importing training's code.
"""

import importlib.util
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Build the demo model (a tiny support bot with planted bad answers) and its scenario."

    def add_arguments(self, parser):
        parser.add_argument(
            "--out", type=Path, help="folder to build in (default: PATCHWISE_BASE_MODEL)"
        )
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, out: Path | None, seed: int, **options):
        model_dir = Path(out or settings.PATCHWISE_BASE_MODEL).expanduser()
        if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
            raise CommandError(f"{model_dir} already exists; pass a new folder with --out")
        if importlib.util.find_spec("torch") is None:
            raise CommandError(
                "torch is not installed, so the demo model cannot be built: "
                "pip install -e '.[train]' and run this again"
            )
        from training.demo import DemoBuildError, build_demo_model  # needs torch

        self.stdout.write(
            f"building the demo model in {model_dir} (a minute or two on an idle machine)..."
        )
        started = time.perf_counter()
        try:
            build_demo_model(model_dir, seed=seed)
        except DemoBuildError as exc:
            raise CommandError(f"the demo model could not be built: {exc}") from exc
        except OSError as exc:
            raise CommandError(f"cannot write the demo model to {model_dir}: {exc}") from exc
        self.stdout.write(f"demo model ready in {time.perf_counter() - started:.0f}s")
