"""What a finished job ships: a zip with the PEFT files and a model card, and its sha256.

Files are written under a temporary name and renamed into place when complete, so a download
never sees half a zip; the sha256 stored on the job is checked again before every download, so a
file changed on disk after training is refused rather than shipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings

from annotate.models import kind_label
from training.engine.config import COMBINED, vllm_max_lora_rank

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
REPORT_FILES = ("report.json", "metrics.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


DATA_FILE = "data-snapshot.json"
# Every entry readable by whoever unzips it (rw-r--r--), whatever the umask of the worker was.
ENTRY_MODE = 0o100644 << 16


class ArtifactError(Exception):
    """The adapter file is missing or does not match its recorded sha256."""


def job_dir(job_id: int) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "jobs" / str(job_id)


def patch_name(job: Any) -> str:
    """The patch's name in the model card and in serving commands: ``<project>-job<id>``."""
    return f"{job.project.slug}-job{job.pk}"


def download_name(job: Any) -> str:
    return f"{patch_name(job)}-adapter.zip"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def changed_tokenizer_files(adapter_dir: Path, base_dir: Path) -> list[Path]:
    """Tokenizer files the training wrote that differ from the base model's (usually none)."""
    changed = []
    for name in TOKENIZER_FILES:
        written, original = adapter_dir / name, base_dir / name
        if written.is_file() and (
            not original.is_file() or written.read_bytes() != original.read_bytes()
        ):
            changed.append(written)
    return changed


def adapter_file_hashes(adapter_dir: Path) -> dict[str, str]:
    """sha256 of each adapter weights file (the patch, and ``combined/`` when there is one),
    keyed by its path in the zip: what a server loads, checkable after unzipping."""
    names = ["adapter_model.safetensors", f"{COMBINED}/adapter_model.safetensors"]
    return {
        name: sha256_file(adapter_dir / name) for name in names if (adapter_dir / name).is_file()
    }


def data_snapshot_bytes(job: Any) -> bytes:
    """The job's data snapshot in the canonical form its sha256 is taken of (so that
    ``sha256sum data-snapshot.json`` prints the job's data sha256)."""
    from training.services import snapshot_canonical_json

    snapshot = job.data_snapshot or {}
    text = snapshot_canonical_json(
        pairs=snapshot.get("pairs") or [], eval_items=snapshot.get("eval") or []
    )
    return text.encode()


def _zip_entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
    entry.external_attr = ENTRY_MODE
    entry.compress_type = zipfile.ZIP_DEFLATED
    return entry


def write_adapter_zip(
    *,
    job: Any,
    adapter_dir: Path,
    report: dict[str, Any] | None,
    metrics: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Zip the adapter with its model card and data snapshot into the job's folder; (path under
    ARTIFACT_ROOT, sha256). ``metrics`` are the last step's (the job row has none yet while the
    worker writes this). The zip appears under its final name only once it is complete."""
    folder = job_dir(job.pk)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / "adapter.zip"
    partial = folder / "adapter.zip.part"
    report = dict(report or {})
    report.setdefault("files_sha256", adapter_file_hashes(adapter_dir))
    card = model_card(job=job, report=report, metrics=metrics)
    files = [adapter_dir / name for name in ADAPTER_FILES + REPORT_FILES]
    files += changed_tokenizer_files(adapter_dir, Path(job.base_model))
    files += [adapter_dir / COMBINED / name for name in ADAPTER_FILES]  # on a deployed adapter
    with zipfile.ZipFile(partial, "w") as archive:
        for file in files:
            if file.is_file():
                entry = _zip_entry(file.relative_to(adapter_dir).as_posix())
                with file.open("rb") as source, archive.open(entry, "w") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
        archive.writestr(_zip_entry(DATA_FILE), data_snapshot_bytes(job))
        archive.writestr(_zip_entry("README.md"), card)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)
    return str(final.relative_to(settings.ARTIFACT_ROOT)), sha256_file(final)


def keep_adapter_folder(*, job_id: int, staging: Path) -> Path:
    """Move the engine's output folder to the job's ``adapter/`` (for serving from disk)."""
    target = job_dir(job_id) / "adapter"
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def verified_artifact(job: Any) -> Path:
    """The job's zip, after checking it is there and its bytes are the ones training wrote."""
    if not job.artifact_path or not job.artifact_sha256:
        raise ArtifactError(f"job {job.pk} has no adapter to download (status: {job.status})")
    path = Path(settings.ARTIFACT_ROOT) / job.artifact_path
    if not path.is_file():
        raise ArtifactError(f"the adapter file of job {job.pk} is missing from the artifact store")
    if sha256_file(path) != job.artifact_sha256:
        raise ArtifactError(
            f"the adapter file of job {job.pk} does not match the sha256 recorded when it was "
            "trained (it was changed or damaged on disk); it will not be served. Launch the "
            "job again or restore the file from a backup."
        )
    return path


# ---------------------------------------------------------------------------------- model card


def _cell(text: Any, limit: int = 160) -> str:
    if isinstance(text, list):
        text = " / ".join(f"{m.get('role')}: {m.get('content')}" for m in text)
    text = "" if text is None else str(text)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


METRIC_KEYS = (
    "loss",
    "rewards/margins",
    "rewards/accuracies",
    "rewards/chosen",
    "rewards/rejected",
    "logps/chosen",
    "logps/rejected",
    "nll",
)


def _verdict(row: dict[str, Any]) -> str:
    """A regression prompt is judged by whether its answer changed, the others by fixed."""
    if row.get("kind") == "regression":
        if row.get("changed"):
            return "changed"
        return "identical" if row.get("identical", True) else "within tolerance"
    return {True: "fixed", False: "not fixed"}.get(row.get("fixed"), "-")


def _precision_lines(report: dict[str, Any]) -> list[str]:
    """How the base was held in training and in the before/after answers (QLoRA: 4-bit)."""
    precision = report.get("precision")
    if not precision:
        return []
    lines = [
        f"- Base in training: {precision['base_in_training']}",
        f"- Before/after answers computed on: {precision['eval']} base",
    ]
    if precision.get("base_quantized_in_training"):
        lines.append(
            "- Trained on a 4-bit base (QLoRA); serve it on the full-precision base as usual. "
            "Its answers there can differ slightly from the ones below, which came from the "
            "4-bit base."
        )
    return lines


def _rule(row: dict[str, Any]) -> str:
    """The rule the verdict followed, in words (report.json's ``rule``; older reports had
    exact match only)."""
    if row.get("rule"):
        return str(row["rule"])
    if row.get("kind") == "regression":
        return "unchanged: the same answer"
    return "equals the expected answer" if row.get("expected") is not None else "no rule"


def model_card(
    *, job: Any, report: dict[str, Any] | None, metrics: dict[str, Any] | None = None
) -> str:
    report = report or {}
    name = patch_name(job)
    config = job.config
    summary = report.get("summary", {})
    training = report.get("training", {})
    metrics = metrics if metrics is not None else (job.latest_metrics or {})
    model_identity = report.get("model", {}).get("identity", "")
    hashes = report.get("files_sha256") or {}
    lines = [
        f"# {name}: a Patchwise LoRA patch",
        "",
        f"A LoRA adapter trained with DPO by Patchwise job {job.pk} of project "
        f"`{job.project.slug}`, on the labels snapshotted when the job was launched.",
        "",
        "## Provenance",
        "",
        f"- Base model: `{job.base_model}`"
        + (f" (identity `{model_identity}`)" if model_identity else ""),
        f"- Stacked on adapter: `{job.adapter}`" if job.adapter else "- Stacked on adapter: none",
        f"- Data snapshot sha256: `{job.data_sha256}`",
        f"- Data snapshot size: {job.pair_count} preference pairs, {job.eval_count} eval prompts",
        f"- Trained: {job.started_at:%Y-%m-%d %H:%M} UTC" if job.started_at else "- Trained: -",
        f"- Stopped: {training.get('stopped_because', '-')}",
        f"- Mitigation: {training.get('mitigation', '-')}",
        *_precision_lines(report),
        "",
        "## Checksums",
        "",
    ]
    for file, digest in hashes.items():
        lines.append(f"- `{file}` sha256: `{digest}`")
    lines += [
        "",
        f"`{DATA_FILE}` is the data snapshot the patch was trained and evaluated on, in the "
        "canonical form its hash is taken of (the pairs' prompt, chosen and rejected; the eval "
        "prompts' fields the engine reads; JSON with sorted keys, no spaces, UTF-8), so "
        f"`sha256sum {DATA_FILE}` prints the data snapshot sha256 above.",
        "",
        "The zip's own sha256 cannot be written inside the zip (writing it would change the "
        f"zip). It is on job {job.pk}'s page in Patchwise, in `GET /api/v1/jobs/{job.pk}` as "
        "`artifact_sha256`, and in the download's `X-Checksum-SHA256` header; check it with "
        f"`sha256sum {download_name(job)}`.",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
        "## Metrics (last step)",
        "",
    ]
    recorded = [key for key in METRIC_KEYS if isinstance(metrics.get(key), int | float)]
    if recorded:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {metrics[key]:.4f} |" for key in recorded]
    else:
        lines.append("No training step was recorded.")
    lines += ["", "## Evaluation (greedy answers before and after the patch)", ""]
    for kind, counts in summary.items():
        if kind == "regression":
            total = counts["total"]
            identical = counts.get("identical", counts["unchanged"])
            lines.append(
                f"- {kind}: {identical}/{total} identical, "
                f"{counts['unchanged']}/{total} within tolerance"
            )
        else:
            lines.append(f"- {kind_label(kind)}: {counts['fixed']}/{counts['total']} fixed")
        if counts.get("with_pair"):
            lines.append(
                f"  - prefer the good answer: {counts['preferring']}/{counts['with_pair']} "
                "(log-prob margin chosen − rejected positive and above the deployed model's)"
            )
    tolerance = training.get("drift_tolerance")
    lines += [
        "",
        "How a verdict is decided: a prompt with checks is fixed when its answer contains "
        "every phrase it must include and none it must not (case, Unicode forms and spacing "
        "aside; `/…/` is a regular expression); without checks, when it equals the expected "
        "answer; with neither, when the patch prefers its chosen answer over the rejected one "
        "by a positive margin, larger than the deployed model's. A regression prompt is "
        "changed only when its answer differs and fails its checks, or (without checks) its "
        "pre-patch answer's mean log-prob per token moved by more than "
        + (f"{tolerance:g} nats" if tolerance is not None else "the tolerance")
        + ". Each row's rule is written beside it.",
    ]
    lines += [
        "",
        "| kind | prompt | before | after | verdict | rule |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.get("eval", []):
        lines.append(
            f"| {kind_label(row['kind'])} | {_cell(row['prompt'])} | {_cell(row['before'])} | "
            f"{_cell(row['after'])} | {_verdict(row)} | {_cell(_rule(row))} |"
        )
    stacked = report.get("stacked_on_adapter") or {}
    if stacked.get("combined"):
        # the patch alone would drop the deployed adapter's changes: serve both as one LoRA
        folder, rank = f"{name}/{stacked['combined']}", stacked["combined_rank"]
        lines += [
            "",
            "## Serve it",
            "",
            f"This patch was trained on top of the adapter `{job.adapter}` (frozen) and "
            "evaluated with both applied. `combined/` holds both as one LoRA (rank "
            f"{rank}, exactly their sum): serve it in place of `{job.adapter}`. The files at "
            "the top are the patch alone, for stacking it on that adapter yourself.",
        ]
    else:
        folder, rank = name, config.get("lora_r", 16)
        lines += ["", "## Serve it"]
        if job.adapter:
            refused = stacked.get("combined_refused") or "this job predates combined adapters"
            lines += [
                "",
                f"This patch was trained on top of the adapter `{job.adapter}` (frozen) and "
                "evaluated with both applied; they could not be combined into one LoRA "
                f"({refused}). vLLM applies one LoRA per request, so merge that adapter into "
                "the base first (peft `merge_and_unload`) and serve this patch on the merged "
                "model.",
            ]
    max_rank = vllm_max_lora_rank(rank)
    rank_flag = f" --max-lora-rank {max_rank}" if max_rank > 16 else ""
    lines += [
        "",
        "The zip has no top folder: unzip it into one named after the patch, then serve that "
        "folder with vLLM (the base model must be the one named above):",
        "",
        "```sh",
        f"unzip {download_name(job)} -d {name}",
        f"vllm serve {job.base_model} --enable-lora --lora-modules {name}=./{folder}{rank_flag}",
        "```",
        "",
        f'then ask for `"model": "{name}"` in the OpenAI-compatible API.',
        "",
    ]
    lines += [
        "With transformers and peft:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{job.base_model}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{job.base_model}")',
        f'model = PeftModel.from_pretrained(base, "./{folder}")',
        "```",
        "",
        "`report.json` holds every eval answer and the per-pair log-probs; `metrics.json` the "
        "per-step training metrics.",
        "",
    ]
    return "\n".join(lines)
