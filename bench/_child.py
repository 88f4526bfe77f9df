"""Run a bench's set-up function in a process of its own.

A bench that measures its children's peak RSS with ``wait4`` must never hold a model itself:
Linux carries the starting process's high-water mark over into the child at ``exec``, so a
child that only runs ``pass`` reports the peak its parent ever had (1 GiB after the parent
touched 1 GiB and freed it). Building the model in a child of its own keeps the bench at the
few MiB of a Python process without torch.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def call_in_child(function: str, **kwargs: Any) -> Any:
    """``module:name(**kwargs)`` in a fresh Python; arguments and result go through JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "bench._child", function, json.dumps(kwargs)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"{function} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


if __name__ == "__main__":
    module, name = sys.argv[1].split(":")
    result = getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))
    print(json.dumps(result))
