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
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings

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


class ArtifactError(Exception):
    """The adapter file is missing or does not match its recorded sha256."""


def job_dir(job_id: int) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "jobs" / str(job_id)


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


def write_adapter_zip(
    *, job: Any, adapter_dir: Path, report: dict[str, Any] | None
) -> tuple[str, str]:
    """Zip the adapter with its model card into the job's folder; (path under ARTIFACT_ROOT,
    sha256). The zip appears under its final name only once it is complete."""
    folder = job_dir(job.pk)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / "adapter.zip"
    partial = folder / "adapter.zip.part"
    card = model_card(job=job, report=report)
    files = [adapter_dir / name for name in ADAPTER_FILES + REPORT_FILES]
    files += changed_tokenizer_files(adapter_dir, Path(job.base_model))
    files += [adapter_dir / COMBINED / name for name in ADAPTER_FILES]  # on a deployed adapter
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            if file.is_file():
                archive.write(file, arcname=file.relative_to(adapter_dir).as_posix())
        archive.writestr("README.md", card)
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


def model_card(*, job: Any, report: dict[str, Any] | None) -> str:
    report = report or {}
    name = f"{job.project.slug}-job{job.pk}"
    config = job.config
    summary = report.get("summary", {})
    training = report.get("training", {})
    metrics = job.latest_metrics or {}
    model_identity = report.get("model", {}).get("identity", "")
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
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
        "## Metrics (last step)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "loss",
        "rewards/margins",
        "rewards/accuracies",
        "rewards/chosen",
        "rewards/rejected",
        "nll",
    ):
        if key in metrics:
            lines.append(f"| {key} | {metrics[key]:.4f} |")
    lines += ["", "## Evaluation (greedy answers before and after the patch)", ""]
    for kind, counts in summary.items():
        if kind == "regression":
            lines.append(f"- {kind}: {counts['unchanged']}/{counts['total']} unchanged")
        else:
            lines.append(f"- {kind}: {counts['fixed']}/{counts['total']} fixed")
    lines += ["", "| kind | prompt | before | after | fixed |", "|---|---|---|---|---|"]
    for row in report.get("eval", []):
        fixed = {True: "yes", False: "no", None: "-"}[row.get("fixed")]
        lines.append(
            f"| {row['kind']} | {_cell(row['prompt'])} | {_cell(row['before'])} | "
            f"{_cell(row['after'])} | {fixed} |"
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
        "With vLLM (unzip first; the base model must be the one named above):",
        "",
        "```sh",
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
