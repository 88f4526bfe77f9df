"""One training job on a worker: the engine with a progress callback, a cancel check and a
heartbeat, then the artifacts. ``training.tasks.run_job`` calls ``run_claimed_job``.

Writes to the job row are throttled (progress at most about once a second, the cancel flag read
at most twice a second; training.lifecycle): a tiny model can take hundreds of steps a second
and the database should not feel them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from training import artifacts, lifecycle, model_cache, services
from training.models import TrainingJob
from training.multi_gpu import train_under_torchrun

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
SERIES_KEYS = (
    "loss",
    "rewards/margins",
    "rewards/accuracies",
    "rewards/chosen",
    "rewards/rejected",
)

# The engine's per-epoch figures (count, out of) that the job page charts as shares.
EPOCH_SHARES = {
    "eval/flagged_fixed": ("flagged_fixed", "flagged"),
    "eval/preferring": ("preferring", "with_pair"),
    "eval/within_tolerance": ("within_tolerance", "regression"),
}


def epoch_point(figures: dict[str, Any]) -> dict[str, Any]:
    """One chart row of an epoch's figures: {"step", "eval/...": share} for those measured."""
    point: dict[str, Any] = {"step": figures.get("step"), "epoch": figures.get("epoch")}
    for key, (count, total) in EPOCH_SHARES.items():
        if figures.get(total):
            point[key] = figures.get(count, 0) / figures[total]
    return point


# Where each engine phase sits on the job's progress bar (start, end), in percent.
PHASE_SPAN = {
    "plan": (0, 1),
    "loading": (0, 5),
    "reference": (5, 10),
    "eval_before": (10, 20),
    "train": (20, 85),
    "eval_after": (85, 98),
    "saving": (98, 100),
}
PHASE_LABEL = {
    "plan": "planning memory",
    "loading": "loading the model",
    "reference": "reference log-probs",
    "eval_before": "answers before training",
    "train": "training",
    "eval_after": "answers after training",
    "saving": "saving the adapter",
}


class Progress:
    """The engine's on_progress and should_cancel, throttled onto the job row."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.series: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}
        self.state: dict[str, Any] = {"phase": "loading", "step": 0, "total": 0}
        self.last_write = 0.0
        self.should_cancel = lifecycle.CancelCheck(services.JOBS, job_id)
        self.train_started: tuple[float, int] | None = None
        self.memory_plan: dict[str, Any] | None = None

    def on_progress(self, event: dict[str, Any]) -> None:
        phase, step, total = event.get("phase", ""), event.get("step", 0), event.get("total", 0)
        metrics = event.get("metrics") or {}
        if "memory_plan" in event:  # the job page shows it while the job runs
            self.memory_plan = event["memory_plan"]
        if phase == "train" and "loss" in metrics:
            point = {key: metrics[key] for key in SERIES_KEYS if key in metrics}
            self.series.append({"step": step, **point})
            self.latest = {**self.latest, **point}
        if phase == "train" and "flagged_fixed" in metrics:
            self.latest = {**self.latest, "flagged_fixed": metrics["flagged_fixed"]}
        if phase == "train" and "within_tolerance" in metrics:  # an epoch's eval figures
            self.series.append(epoch_point(metrics))
        if phase == "train" and self.train_started is None:
            self.train_started = (time.monotonic(), step)
        self.state = {"phase": phase, "step": step, "total": total, "epoch": event.get("epoch")}
        self.write()

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < PROGRESS_EVERY_S:
            return
        self.last_write = now
        plan = {"memory_plan": self.memory_plan} if self.memory_plan else {}
        services.job_record_progress(
            job_id=self.job_id,
            progress={**self.state, **self._overall(), **plan},
            latest_metrics=self.latest,
            metrics_series=self.series,
        )

    def _overall(self) -> dict[str, Any]:
        phase, step, total = self.state["phase"], self.state["step"], self.state["total"]
        start, end = PHASE_SPAN.get(phase, (0, 0))
        fraction = step / total if total else 0.0
        eta = None
        if phase == "train" and self.train_started and total:
            began, first_step = self.train_started
            done = step - first_step
            if done > 0:
                eta = round((time.monotonic() - began) / done * (total - step), 1)
        return {
            "percent": round(start + (end - start) * min(fraction, 1.0), 1),
            "label": PHASE_LABEL.get(phase, phase),
            "eta_seconds": eta,
        }


def run_claimed_job(job: TrainingJob) -> str:
    """Train, save and record one job this worker has claimed; returns its final status."""
    staging = artifacts.job_dir(job.pk) / f".staging-{uuid.uuid4().hex}"
    try:
        return lifecycle.run_to_end(services.JOBS, job.pk, lambda: _train(job, staging))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _train(job: TrainingJob, staging: Path) -> str:
    from training.engine import EngineError, TrainConfig, train

    progress = Progress(job.pk)
    progress.memory_plan = job.progress.get("memory_plan")  # the launch's, until the engine's
    progress.write(force=True)
    # Keys the worker acts on (how many GPUs) are not the engine's.
    engine_config = {k: v for k, v in job.config.items() if k not in services.WORKER_KEYS}
    config = TrainConfig.from_dict(engine_config)
    gpus = job.config.get("gpus", 1)
    if gpus > services.worker_gpus():
        raise EngineError(
            f"this worker has {services.worker_gpus()} GPU(s) (PATCHWISE_WORKER_GPUS) and the "
            f"job asks for {gpus}: launch it with gpus at most {services.worker_gpus()}, or "
            "give it a worker on a bigger node"
        )
    staging.parent.mkdir(parents=True, exist_ok=True)
    if gpus > 1:
        model_cache.clear()  # every GPU of the node goes to the torchrun ranks
        train_under_torchrun(
            job_id=job.pk,
            gpus=gpus,
            config=engine_config,
            pairs=job.data_snapshot["pairs"],
            eval_items=job.data_snapshot.get("eval") or None,
            out_dir=staging,
            on_progress=progress.on_progress,
            should_cancel=progress.should_cancel,
        )
    else:  # in this process, on the base model kept warm from the last job
        base, from_memory = model_cache.get_base(job.base_model, quantize=config.quantize)
        logger.info("job %s: base model %s", job.pk, "from memory" if from_memory else "loaded")
        train(
            config,
            pairs=job.data_snapshot["pairs"],
            eval_items=job.data_snapshot.get("eval") or None,
            out_dir=staging,
            base=base,
            on_progress=progress.on_progress,
            should_cancel=progress.should_cancel,
        )
    progress.write(force=True)
    report = json.loads((staging / "report.json").read_text())
    report["files_sha256"] = artifacts.adapter_file_hashes(staging)
    series = _series_from_metrics_file(staging / "metrics.json") or progress.series
    last_values = {key: values[-1] for key, values in _last_values(series).items()}
    latest = {**progress.latest, **last_values}
    artifact_path, sha256 = artifacts.write_adapter_zip(
        job=job, adapter_dir=staging, report=report, metrics=latest
    )
    artifacts.keep_adapter_folder(job_id=job.pk, staging=staging)
    services.job_succeed(
        job_id=job.pk,
        report=report,
        metrics_series=series,
        latest_metrics=latest,
        artifact_path=artifact_path,
        artifact_sha256=sha256,
    )
    return "succeeded"


def _series_from_metrics_file(path: Path) -> list[dict[str, Any]]:
    """metrics.json holds per-step lists keyed by TRL's names; the charts want one row a step."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    columns = metrics.get("series", metrics) if isinstance(metrics, dict) else {}
    steps = columns.get("step") or list(range(1, len(columns.get("loss", [])) + 1))
    rows = []
    for index, step in enumerate(steps):
        row = {"step": step}
        for key in SERIES_KEYS:
            values = columns.get(key)
            if isinstance(values, list) and index < len(values):
                row[key] = values[index]
        rows.append(row)
    epochs = {  # metrics.json's per-epoch figures ("eval/<name>", one value an epoch)
        key[len("eval/") :]: values
        for key, values in columns.items()
        if key.startswith("eval/") and isinstance(values, list)
    }
    for index in range(len(epochs.get("step", []))):
        rows.append(epoch_point({name: values[index] for name, values in epochs.items()}))
    return rows


def _last_values(series: list[dict[str, Any]]) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    for row in series:
        for key in SERIES_KEYS:
            if key in row:
                columns.setdefault(key, []).append(row[key])
    return columns
