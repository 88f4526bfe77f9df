"""build_demo_model, run as a user runs it and as seed_demo runs it."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotate.models import Project


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_build_demo_model_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(CommandError, match=f"{tmp_path / 'model'} already exists"):
        run("build_demo_model", "--out", str(tmp_path / "model"))
    (tmp_path / "file").write_text("")
    with pytest.raises(CommandError, match="already exists; pass a new folder"):
        run("build_demo_model", "--out", str(tmp_path / "file"))


@pytest.mark.slow
def test_seed_demo_builds_the_missing_model_and_imports_its_scenario(db, settings, tmp_path):
    """seed_demo reaches training's build through the command, then imports the scenario."""
    settings.PATCHWISE_BASE_MODEL = str(tmp_path / "demo-model")
    out = run("seed_demo")
    assert "building the demo model in" in out
    assert "demo model ready in" in out
    assert (tmp_path / "demo-model" / "config.json").is_file()
    project = Project.objects.get(slug="demo")
    splits = set(project.cases.values_list("split", flat=True))
    assert splits == {"train", "heldout", "regression"}
