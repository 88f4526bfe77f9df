"""Fixtures of the job tests: the demo model (built once, cached across runs), a project
holding the demo scenario, and a worker whose artifacts land where the test looks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import (
    cached_demo_model,
    wait_for,  # noqa: F401 (re-exported to the tests here)
)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return cached_demo_model()


def scenario_rows(model_dir: Path) -> list[dict]:
    lines = (model_dir / "scenario" / "cases.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def judge_all(project, annotator) -> None:
    """The annotator prefers the human (better) answer in every comparison of the project."""
    from annotate.models import Comparison
    from annotate.services import judgment_submit

    for comparison in Comparison.objects.filter(project=project).select_related("response_a"):
        choice = "a" if comparison.response_a.origin == "human" else "b"
        judgment_submit(comparison=comparison, annotator=annotator, choice=choice)


def make_project(model_dir: Path, *, judge, slug: str = "shop", flagged: int | None = 2,
                 heldout: int = 2, regression: int = 4):  # fmt: skip
    """A project with a few of the demo's flagged, held-out and regression cases (few, so the
    job stays fast), built through annotate's services and judged by ``judge``."""
    from annotate.services import case_create, project_create

    project = project_create(name=f"Shop {slug}", slug=slug)
    limits = {"train": flagged, "heldout": heldout, "regression": regression}
    taken = {"train": 0, "heldout": 0, "regression": 0}
    for row in scenario_rows(model_dir):
        split = row.get("split", "train")
        if limits[split] is not None and taken[split] >= limits[split]:
            continue
        taken[split] += 1
        case_create(
            project=project,
            prompt=row["prompt"],
            response=row.get("response"),
            better_response=row.get("better_response"),
            split=split,
            topic=row.get("topic") or "",
            source="demo",
        )
    judge_all(project, judge)
    return project


@pytest.fixture
def artifact_root(tmp_path, settings) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.ARTIFACT_ROOT = root
    return root


@pytest.fixture
def gpu_worker(start_worker, artifact_root, demo_model, tmp_path, settings):
    """A worker on both queues sharing the test's artifact folder and reference cache; the
    demo model is the default model to patch."""
    settings.PATCHWISE_BASE_MODEL = str(demo_model)

    def start(**env: str):
        return start_worker(
            queues="gpu,default",
            env={
                "ARTIFACT_ROOT": str(artifact_root),
                "PATCHWISE_CACHE_DIR": str(tmp_path / "refcache"),
                "PATCHWISE_BASE_MODEL": str(demo_model),
                # One torch thread: on a shared 2-core machine (CI, parallel tests) OpenMP
                # threads that spin-wait for busy cores make a tiny model's job 10x slower.
                "OMP_NUM_THREADS": "1",
                **env,
            },
        )

    return start


@pytest.fixture
def model_folder(tmp_path, settings):
    """A folder that passes the launch checks (a config.json), set as the default base model."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    settings.PATCHWISE_BASE_MODEL = str(folder)
    return folder
