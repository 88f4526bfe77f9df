"""Which model and adapter folders a launch may name: the one rule for jobs and generations.

A path a user types travels to a GPU worker, which loads whatever is there. So before anything
looks at the disk, the path must lie under PATCHWISE_MODEL_ROOTS (default: the base model's
folder and ARTIFACT_ROOT), and, under ARTIFACT_ROOT's jobs/, belong to a job of the same
project. A path outside gets one message whether it exists or not: error messages must not tell
which server folders exist. Symlinks are resolved first, so a link cannot lead out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings

# The job's base_model and adapter columns hold this many characters; file systems refuse a
# name (one path component) longer than 255 bytes.
MAX_PATH_CHARS = 1000
MAX_NAME_BYTES = 255


class PathRefused(Exception):
    """A model or adapter path a launch may not use, with the reason a user can act on."""


def model_roots() -> list[Path]:
    """PATCHWISE_MODEL_ROOTS, or the base model's folder and ARTIFACT_ROOT as they are now."""
    roots = settings.PATCHWISE_MODEL_ROOTS or [
        Path(settings.PATCHWISE_BASE_MODEL),
        Path(settings.ARTIFACT_ROOT),
    ]
    return [Path(os.path.realpath(Path(root).expanduser())) for root in roots]


def check_path_text(value: Any, *, name: str) -> str:
    """The path as text a file system can hold; PathRefused names what is wrong with it."""
    if not isinstance(value, str):
        raise PathRefused(f"'{name}' must be a folder path (a string), not {value!r}")
    if "\x00" in value:
        raise PathRefused(f"'{name}' must not contain a NUL character")
    if len(value) > MAX_PATH_CHARS:
        raise PathRefused(
            f"'{name}' is {len(value)} characters long; a path may have at most {MAX_PATH_CHARS}"
        )
    for part in Path(value).parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise PathRefused(
                f"'{name}' has a folder name longer than {MAX_NAME_BYTES} bytes "
                f"({part[:40]}…), which no file system holds"
            )
    return value


def check_allowed_path(value: Any, *, name: str, project: Any) -> Path:
    """``value`` resolved, if a launch in ``project`` may use it (PathRefused otherwise)."""
    check_path_text(value, name=name)
    resolved = Path(os.path.realpath(Path(value).expanduser()))
    roots = model_roots()
    if not any(resolved.is_relative_to(root) for root in roots):
        listed = os.pathsep.join(str(root) for root in roots)
        raise PathRefused(
            f"'{name}' {value} is not under the folders models and adapters are loaded from "
            f"(PATCHWISE_MODEL_ROOTS={listed}); put it there, or add its folder to "
            "PATCHWISE_MODEL_ROOTS"
        )
    jobs_root = Path(os.path.realpath(Path(settings.ARTIFACT_ROOT).expanduser())) / "jobs"
    if resolved.is_relative_to(jobs_root) and resolved != jobs_root:
        job_id = resolved.relative_to(jobs_root).parts[0]
        if not _is_job_of(job_id, project):
            raise PathRefused(
                f"'{name}' {value} is in the artifacts of a job that is not of project "
                f"{project.slug}; use the adapter of one of this project's jobs"
            )
    elif resolved == jobs_root:
        raise PathRefused(f"'{name}' {value} is the folder of all jobs, not one model or adapter")
    return resolved


def _is_job_of(job_id: str, project: Any) -> bool:
    from training.models import TrainingJob

    if not job_id.isascii() or not job_id.isdigit() or len(job_id) > 18:
        return False
    return TrainingJob.objects.filter(pk=int(job_id), project_id=project.pk).exists()
