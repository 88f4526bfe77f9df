"""Every change of a training job's state, each with its audit row.

queued -> running -> succeeded | failed | cancelled, through training.lifecycle, the one life
of a worker row that generation requests (rounds) share: a worker claims a job with a filtered
update, so the Celery task can be delivered twice without running twice, heartbeats while it
trains, and a reaper fails a job whose heartbeat went stale (the curator can launch again with
one click).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.roles import require_curator
from accounts.services import audit_record
from core.text import storable
from training import lifecycle
from training.engine.errors import EngineError
from training.liveness import job_stopped_error
from training.memory_plan import launch_plan
from training.models import JobStatus, TrainingJob
from training.paths import PathRefused, check_allowed_path, check_path_text

# The config keys a launch may set: the engine CLI's flags, underscored (DESIGN.md). Anything
# else (cache folders, target modules) stays the engine's business.
LAUNCH_KEYS = (
    "model",
    "adapter",
    "beta",
    "loss",
    "label_smoothing",
    "sft_weight",
    "sft_warmup_epochs",
    "retain_weight",
    "lr",
    "epochs",
    "batch_size",
    "lora_r",
    "seed",
    "micro_batch_size",
    "gradient_checkpointing",
    "quantize",
    "max_memory",
    "shard_base",
    "drift_tolerance",
)
# Config keys that are the worker's business, not the engine's: how many GPUs (one process
# each, under torchrun) the job trains on. At most PATCHWISE_WORKER_GPUS.
WORKER_KEYS = ("gpus",)


RUN_JOB_TASK = "training.run_job"  # training.tasks.run_job


class JobRefused(Exception):
    """A launch or cancel that cannot happen, with the reason a user can act on."""


# ---------------------------------------------------------------------------------- launching


def snapshot_canonical_json(
    *, pairs: list[dict[str, Any]], eval_items: list[dict[str, Any]]
) -> str:
    """What the engine trains and evaluates on, as canonical JSON (the adapter zip ships it).

    Only the fields the engine reads count (ids and timestamps do not), so the same labels give
    the same text in any project or database.
    """
    canonical = {
        "pairs": [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs],
        "eval": [
            {k: e.get(k) for k in ("prompt", "expected", "kind", "topic")}
            # added later: present only where set, so an older snapshot keeps its hash
            | {k: e[k] for k in ("rejected", "must_include", "must_not_include") if e.get(k)}
            for e in eval_items
        ],
    }
    return json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def snapshot_hash(*, pairs: list[dict[str, Any]], eval_items: list[dict[str, Any]]) -> str:
    """sha256 of the snapshot's canonical JSON (UTF-8)."""
    text = snapshot_canonical_json(pairs=pairs, eval_items=eval_items)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The launch's config with every default filled in; JobRefused names a bad key or value."""
    from training.engine import EngineError, TrainConfig, validate_config

    given = dict(config or {})
    unknown = sorted(set(given) - set(LAUNCH_KEYS) - set(WORKER_KEYS))
    if unknown:
        raise JobRefused(
            f"config: unknown key '{unknown[0]}'; a launch may set "
            f"{', '.join(LAUNCH_KEYS + WORKER_KEYS)}"
        )
    gpus = given.pop("gpus", 1)
    if not given.get("model"):
        given["model"] = settings.PATCHWISE_BASE_MODEL
    if not given.get("adapter"):
        given["adapter"] = None
    try:
        for key in ("model", "adapter"):
            if given[key] is not None:
                check_path_text(given[key], name=key)
    except PathRefused as error:
        raise JobRefused(f"config: {error}") from None
    try:
        engine_config = TrainConfig.from_dict(given)
        validate_config(engine_config)
    except (EngineError, TypeError) as error:
        raise JobRefused(str(error)) from None
    values = engine_config.to_dict()
    check_gpus(gpus, batch_size=values["batch_size"])
    if values["shard_base"] and gpus < 2:
        raise JobRefused(
            "config: 'shard_base' splits the base across several GPUs; set 'gpus' to 2 or more "
            "(a base that fits one GPU trains without it)"
        )
    return {key: values[key] for key in LAUNCH_KEYS} | {"gpus": gpus}


def worker_gpus() -> int:
    return settings.PATCHWISE_WORKER_GPUS


def check_gpus(gpus: Any, *, batch_size: int) -> None:
    """Refuse a ``gpus`` the gpu workers cannot give, or one that would leave a GPU idle."""
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise JobRefused(f"config: 'gpus' must be a whole number, 1 or more (got {gpus!r})")
    if gpus > worker_gpus():
        raise JobRefused(
            f"config: 'gpus' is {gpus} but a gpu worker has {worker_gpus()} "
            f"(PATCHWISE_WORKER_GPUS={worker_gpus()}): ask for at most {worker_gpus()}, or run "
            "the gpu worker on a node with more GPUs and raise PATCHWISE_WORKER_GPUS"
        )
    if batch_size < gpus:
        raise JobRefused(
            f"config: 'batch_size' ({batch_size}) is below 'gpus' ({gpus}): every GPU takes a "
            f"share of each step's pairs, so use a batch_size of at least {gpus}"
        )


def missing_base_model_message(path: str) -> str:
    """What to do when the configured base model is not there (a fresh docker compose)."""
    return (
        f"the base model folder {path} (PATCHWISE_BASE_MODEL) does not exist: set "
        "PATCHWISE_BASE_MODEL to your HF-format model's folder (under docker compose, put it in "
        "./models and use /models/NAME), or build the demo model there with "
        f"`python -m training.engine demo --out {path}`"
    )


def check_folders(*, model: str, adapter: str | None, project: Any) -> None:
    """Refuse a model or adapter path outside PATCHWISE_MODEL_ROOTS or of another project's
    jobs (training/paths.py), or one the worker could not load (the engine's own checks: plain
    file checks, no torch on the web host)."""
    from training.engine import EngineError
    from training.engine.folders import check_adapter_folder, check_model_folder

    try:
        check_allowed_path(model, name="model", project=project)
        if adapter:
            check_allowed_path(adapter, name="adapter", project=project)
    except PathRefused as error:
        raise JobRefused(str(error)) from None
    if model == settings.PATCHWISE_BASE_MODEL and not Path(model).expanduser().is_dir():
        raise JobRefused(missing_base_model_message(model))
    try:
        check_model_folder(model)
        if adapter:
            check_adapter_folder(adapter)
    except EngineError as error:
        raise JobRefused(str(error)) from None


def job_enqueue(
    *, project: Any, actor: AbstractBaseUser, config: dict[str, Any] | None = None
) -> TrainingJob:
    """Snapshot the project's pairs and eval prompts, store a queued job, and send it to a GPU
    worker once the transaction commits."""
    from annotate.selectors import eval_prompts, preference_pairs

    require_curator(actor)
    resolved = resolve_config(config)
    check_folders(model=resolved["model"], adapter=resolved["adapter"], project=project)

    pairs = [dict(pair) for pair in preference_pairs(project=project)]
    if not pairs:
        raise JobRefused(
            f"project {project.slug} has no preference pairs yet: judge some comparisons "
            "(or flag a case with a better answer) before patching"
        )
    eval_items = [dict(item) for item in eval_prompts(project=project)]
    try:
        plan = launch_plan(config=resolved, pairs=pairs, eval_items=eval_items)
    except EngineError as error:  # not even micro-batch 1 with checkpointing fits the worker
        raise JobRefused(str(error)) from None

    with transaction.atomic():
        job = TrainingJob(
            project=project,
            created_by=actor,
            config=resolved,
            base_model=resolved["model"],
            adapter=resolved["adapter"] or "",
            data_snapshot={"pairs": pairs, "eval": eval_items},
            data_sha256=snapshot_hash(pairs=pairs, eval_items=eval_items),
            pair_count=len(pairs),
            eval_count=len(eval_items),
            progress={"phase": "queued", "step": 0, "total": 0, "eta_seconds": None}
            | ({"memory_plan": plan.to_dict()} if plan else {}),
        )
        job.full_clean()
        job.save()
        audit_record(
            actor=actor,
            action="job.enqueue",
            target=job,
            new_value={"status": job.status, "data_sha256": job.data_sha256, "pairs": len(pairs)},
        )
        transaction.on_commit(lambda: _send_to_worker(job.pk))
    return job


def _send_to_worker(job_id: int) -> None:
    lifecycle.send_to_worker(JOBS, job_id)


# ---------------------------------------------------------------------------------- running


JOBS = lifecycle.Kind(
    model=TrainingJob,
    action="job",
    related=("project",),
    claimed_progress={"phase": "starting", "step": 0, "total": 0, "eta_seconds": None},
    label="Job",
    task=RUN_JOB_TASK,
    stopped_error=job_stopped_error,
    unexpected_error=lambda error: (
        f"Training stopped on an unexpected error ({type(error).__name__}: {error}). "
        "The worker's log has the details; launching again with the same data will "
        "likely fail the same way."
    ),
)


def job_claim(*, job_id: int, worker_name: str) -> TrainingJob | None:
    """queued -> running for this worker; None when another worker has it or it was cancelled."""
    return lifecycle.claim(JOBS, pk=job_id, worker_name=worker_name)


def job_heartbeat(*, job_id: int) -> bool:
    """Tell the reaper this job's worker is alive; False when the job is no longer running."""
    return lifecycle.heartbeat(JOBS, pk=job_id)


def job_record_progress(
    *,
    job_id: int,
    progress: dict[str, Any],
    latest_metrics: dict[str, Any] | None = None,
    metrics_series: list[dict[str, Any]] | None = None,
) -> bool:
    """Store step/total/phase/ETA (and metrics) of a running job; also a heartbeat.

    Not a state change, so no audit row. Callers throttle it (training.runner writes at most
    about once a second).
    """
    fields: dict[str, Any] = {}
    if latest_metrics is not None:
        fields["latest_metrics"] = latest_metrics
    if metrics_series is not None:
        fields["metrics_series"] = metrics_series
    return lifecycle.record_progress(JOBS, pk=job_id, progress=progress, **fields)


def job_cancel_requested(*, job_id: int) -> bool:
    return lifecycle.cancel_requested(JOBS, pk=job_id)


def job_succeed(
    *,
    job_id: int,
    report: dict[str, Any] | None,
    metrics_series: list[dict[str, Any]],
    latest_metrics: dict[str, Any],
    artifact_path: str,
    artifact_sha256: str,
) -> TrainingJob | None:
    def fields(job: TrainingJob) -> dict[str, Any]:
        progress = {**job.progress, "phase": "done", "percent": 100, "eta_seconds": 0}
        if progress.get("total"):
            progress["step"] = progress["total"]
        return {
            "report": storable(report),
            "metrics_series": storable(metrics_series),
            "latest_metrics": storable(latest_metrics),
            "artifact_path": artifact_path,
            "artifact_sha256": artifact_sha256,
            "finished_at": timezone.now(),
            "heartbeat_at": timezone.now(),
            "progress": progress,
        }

    return lifecycle.transition(
        model=TrainingJob,
        pk=job_id,
        from_statuses=(JobStatus.RUNNING,),
        to_status=JobStatus.SUCCEEDED,
        action="job.succeed",
        fields=fields,
        audit_extra={"artifact_sha256": artifact_sha256},
    )


def job_fail(
    *, job_id: int, error: str, actor: AbstractBaseUser | None = None, still: Q | None = None
) -> TrainingJob | None:
    return lifecycle.fail(JOBS, pk=job_id, error=error, actor=actor, still=still)


def job_cancel(*, job: TrainingJob, actor: AbstractBaseUser) -> TrainingJob:
    """A curator's cancel: a queued job ends at once; a running one is asked to stop, and its
    worker ends it within a step (``job_mark_cancelled``)."""
    require_curator(actor)
    if job.is_finished:
        raise JobRefused(f"job {job.pk} has already {job.status}; there is nothing to cancel")
    return lifecycle.cancel(JOBS, row=job, actor=actor)


def job_mark_cancelled(*, job_id: int) -> TrainingJob | None:
    """The worker saw the cancel request and stopped: running -> cancelled."""
    return lifecycle.mark_cancelled(JOBS, pk=job_id)


def job_reap_stale(
    *, older_than_seconds: float | None = None, worker_name: str | None = None
) -> list[int]:
    """Fail running jobs whose worker stopped sending heartbeats (or, given ``worker_name``, the
    jobs that worker left running before it restarted). Returns the ids it failed."""
    return lifecycle.reap_stale(
        JOBS,
        older_than_seconds=older_than_seconds,
        worker_name=worker_name,
    )
