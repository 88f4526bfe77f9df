"""Is this folder a model, or an adapter, the engine can load? Checked before loading anything.

The one place these rules live: the engine's CLI and loaders call them, and so do the web
processes (a launch, a generation request) before they queue work, so a bad path is refused at
once with the same message. Plain file checks: importing this module loads neither torch nor
transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.engine.errors import EngineError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_model_folder(path: str | Path) -> Path:
    """EngineError (one line) unless ``path`` looks like an HF model folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EngineError(f"model folder {folder} does not exist; pass a folder in HF format")
    if not (folder / "config.json").is_file():
        raise EngineError(f"model folder {folder} has no config.json; is it a Hugging Face model?")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot read {folder / 'config.json'}: {error}") from None
    if not isinstance(config, dict):
        raise EngineError(f"{folder / 'config.json'} is not a JSON object; is it a model config?")
    return folder


def check_adapter_folder(path: str | Path) -> Path:
    """EngineError (one line) unless ``path`` holds a PEFT LoRA adapter's two files."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EngineError(f"adapter folder {folder} does not exist")
    for name in ADAPTER_FILES:
        if not (folder / name).is_file():
            raise EngineError(f"adapter folder {folder} has no {name}; is it a PEFT LoRA adapter?")
    return folder
