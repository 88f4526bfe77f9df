"""Load a Hugging Face causal-LM folder once, on the best device, with a stable identity.

A worker keeps the last ``LoadedBase`` in memory between jobs, so loading is separate from
training: ``train(..., base=loaded)`` reuses it and leaves it as it found it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from training.engine.errors import EngineError, first_line
from training.engine.folders import check_model_folder

# Files whose bytes define what the model computes; hashed (sampled) into the identity.
_IDENTITY_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SAMPLE_BYTES = 1 << 16
_SAMPLES = 33  # the first and last bytes, and 31 places between


@dataclass
class LoadedBase:
    """A base model and its tokenizer, ready to receive LoRA adapters."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    identity: str  # content hash of the folder: same weights -> same identity on any machine
    path: Path


def context_length(model: torch.nn.Module) -> int | None:
    """The most tokens the model takes at once (its position table), when its config says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def pick_device() -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU that supports it, fp32 everywhere else (fp16 training needs loss scaling)."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.device("cuda", torch.cuda.current_device()), dtype
    return torch.device("cpu"), torch.float32


def model_identity(path: Path) -> str:
    """A stable hash of a model folder's config, tokenizer and (sampled) weight bytes.

    Hashing whole multi-GB weight files would cost seconds per job; the size plus 64 KiB at 33
    evenly spread places in each file change whenever the weights do in practice (a LoRA merged
    into the base rewrites every linear layer, and those fill most of the file; the first,
    middle and last MiB alone missed that).
    """
    digest = hashlib.sha256()
    for name in _IDENTITY_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    for file in sorted(p for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
        digest.update(_sampled_file_digest(file).encode())
    return digest.hexdigest()[:16]


def _sampled_file_digest(file: Path) -> str:
    size = file.stat().st_size
    digest = hashlib.sha256(f"{file.name}:{size}".encode())
    last = max(0, size - _SAMPLE_BYTES)
    with file.open("rb") as handle:
        for index in range(_SAMPLES):
            handle.seek(last * index // (_SAMPLES - 1))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def load_base(path: str | Path) -> LoadedBase:
    """Load model + tokenizer from ``path``; EngineError (one line) if the folder is unusable."""
    folder = check_model_folder(path)

    device, dtype = pick_device()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            device_map={"": device.index} if device.type == "cuda" else None,
        )
    except Exception as error:  # noqa: BLE001 (truncated weights, shapes unlike config.json...)
        raise EngineError(f"cannot load the model in {folder}: {first_line(error)}") from None
    if tokenizer.eos_token_id is None:
        raise EngineError(f"the tokenizer in {folder} has no eos token; answers need one to end")
    vocabulary = model.get_input_embeddings().num_embeddings
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= vocabulary:
        # Batches are padded; padded positions are masked out, so any id the model has works
        # (a [PAD] added to the tokenizer without resizing the model does not). eos is customary.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.requires_grad_(False)
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        device=device,
        identity=model_identity(folder),
        path=folder,
    )
