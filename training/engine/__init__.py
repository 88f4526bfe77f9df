"""Patchwise's patch engine: LoRA DPO on a causal LM, pure Python (no Django).

    python -m training.engine train --model DIR --pairs PAIRS.jsonl --out DIR [--eval EVAL.jsonl]

The Celery job calls the same thing in-process: ``train(config, pairs=..., out_dir=...)``.
Heavy names (torch, transformers) load on first use, so importing ``TrainConfig`` to check a
job's config from a web process stays cheap.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import TYPE_CHECKING, Any

from training.engine.errors import Cancelled, EngineError

# peft imports bitsandbytes whenever it is installed (the [qlora] extra), and bitsandbytes then
# warns on stderr that an optional CPU kernel package is missing; its plain fallback is what
# we use, so the notice would only break the CLI's one-line errors.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

if TYPE_CHECKING:
    from training.engine.config import TrainConfig, validate_config
    from training.engine.evaluate import generate_greedy
    from training.engine.modeling import LoadedBase, load_base
    from training.engine.trainer import TrainResult, train

__all__ = [
    "Cancelled",
    "EngineError",
    "LoadedBase",
    "TrainConfig",
    "TrainResult",
    "generate_greedy",
    "load_base",
    "train",
    "validate_config",
]

_LAZY = {
    "TrainConfig": "training.engine.config",
    "validate_config": "training.engine.config",
    "LoadedBase": "training.engine.modeling",
    "load_base": "training.engine.modeling",
    "generate_greedy": "training.engine.evaluate",
    "TrainResult": "training.engine.trainer",
    "train": "training.engine.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training.engine' has no attribute {name!r}")
