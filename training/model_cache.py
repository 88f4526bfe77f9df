"""The gpu worker's base model, kept in memory between the rows it runs.

Public to both kinds of worker row: training jobs (training.runner) and generation requests
(rounds.runner) load their base through ``get_base``, so one reuses what the other loaded.

Loading a model costs seconds (minutes for a real one); most jobs in a row patch the same model.
The worker keeps the last ``LoadedBase`` and hands it to the next job when the folder is the same
path with the same file times; the engine leaves a passed-in base as it found it (the patch is
removed without merging). One model at a time: a GPU worker has room for one.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.engine import LoadedBase

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_cached: tuple[tuple[str, int, str | None], LoadedBase] | None = None


def folder_key(path: str | Path) -> tuple[str, int]:
    """The folder's resolved path and the newest modification time of its files."""
    folder = Path(path).expanduser().resolve()
    newest = max((entry.stat().st_mtime_ns for entry in folder.iterdir()), default=0)
    return str(folder), newest


def get_base(path: str | Path, *, quantize: str | None = None) -> tuple[LoadedBase, bool]:
    """(the loaded base for ``path``, whether it came from memory). EngineError if unreadable.

    A 4-bit base (``quantize="4bit"``) is another model in memory than the full one."""
    global _cached
    from training.engine import load_base

    with _lock:
        try:
            key = (*folder_key(path), quantize)
        except OSError:
            key = None  # load_base names the problem
        if key is not None and _cached is not None and _cached[0] == key:
            return _cached[1], True
        _cached = None  # free the old model before loading the next one
        loaded = load_base(path, quantize=quantize)
        _cached = ((*folder_key(path), quantize), loaded)
        logger.info("loaded base model %s into memory", key[0] if key else path)
        return loaded, False


def clear() -> None:
    """Drop the kept model and give its GPU memory back (a multi-GPU job needs every GPU)."""
    global _cached
    with _lock:
        if _cached is None:
            return
        _cached = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
