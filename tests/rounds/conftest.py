"""Fixtures of the rounds tests: a tiny random Llama (built once per session), a project with
flagged cases, API tokens, and a worker whose artifacts land where the test looks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.engine.conftest import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-layer Llama with a BPE tokenizer: it samples varied text in milliseconds."""
    return build_tiny_model(tmp_path_factory.mktemp("rounds-tiny") / "tiny-llama")


@pytest.fixture
def artifact_root(tmp_path, settings) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.ARTIFACT_ROOT = root
    return root


@pytest.fixture
def base_model(settings, tiny_model) -> Path:
    settings.PATCHWISE_BASE_MODEL = str(tiny_model)
    return tiny_model


@pytest.fixture
def gpu_worker(start_worker, artifact_root, base_model, tmp_path):
    """start() -> a worker on both queues sharing the test's artifacts and base model."""

    def start(**env: str):
        return start_worker(
            queues="gpu,default",
            env={
                "ARTIFACT_ROOT": str(artifact_root),
                "PATCHWISE_CACHE_DIR": str(tmp_path / "refcache"),
                "PATCHWISE_BASE_MODEL": str(base_model),
                **env,
            },
        )

    return start


def token_for(user) -> str:
    from accounts.services import token_create

    return token_create(user=user, name="test")


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def make_flagged_project(*, slug: str = "shop", flagged: int = 4, heldout: int = 2, overlap=1):
    """Flagged training cases (each with the deployed model's bad answer) and held-out cases."""
    from annotate.services import case_create, project_create

    project = project_create(name=f"Shop {slug}", slug=slug, overlap=overlap)
    for index in range(flagged):
        case_create(
            project=project,
            prompt=f"how long is the refund window for order {index}?",
            response=f"the refund window is seven days for order {index}",
            split="train",
            source="test",
        )
    for index in range(heldout):
        case_create(
            project=project,
            prompt=f"how long does shipping take for parcel {index}?",
            response=f"shipping takes nine weeks for parcel {index}",
            split="heldout",
            source="test",
        )
    return project


def wait_for(predicate, *, timeout: float = 240, every: float = 0.25, what: str = "condition"):
    """Poll until predicate() is truthy (its value is returned); fail naming what never came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")
