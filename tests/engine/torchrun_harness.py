"""Started by tests/engine/test_distributed.py under torchrun: ``train()`` on every rank, with
the twist the test asks for in SPEC.json (a cancel on rank 0, a rank that fails or hangs).

    torchrun --standalone --nproc-per-node 2 tests/engine/torchrun_harness.py SPEC.json

Exit codes as the engine CLI's: 0 done, 130 cancelled, 1 failed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from training.engine import Cancelled, TrainConfig, distributed, trainer


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    ranks = distributed.init_from_environment()
    steps = 0

    def on_progress(event: dict) -> None:
        nonlocal steps
        if event["phase"] == "train" and "loss" in event.get("metrics", {}):
            steps = event["step"]
            print(f"step {steps}", flush=True)

    def should_cancel() -> bool:
        return spec.get("cancel_at_step") is not None and steps >= spec["cancel_at_step"]

    twist = spec.get("twist")
    if twist and ranks.rank == spec["rank"]:
        real_pair_logps, calls = trainer.pair_logps, []

        def pair_logps(model, pairs, **kwargs):
            if not torch_inference_mode():  # a training forward, not the reference pass
                calls.append(1)
                if len(calls) == spec["at_step"]:
                    if twist == "fail":
                        raise RuntimeError(f"rank {ranks.rank} broke on purpose")
                    time.sleep(3600)  # "hang": a rank stuck outside any collective
            return real_pair_logps(model, pairs, **kwargs)

        trainer.pair_logps = pair_logps
    try:
        trainer.train(
            TrainConfig(**spec["config"]),
            pairs=spec["pairs"],
            eval_items=spec.get("eval"),
            out_dir=Path(spec["out"]),
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
    except Cancelled as cancelled:
        print(f"rank {ranks.rank} cancelled: {cancelled}", flush=True)
        return 130
    finally:
        distributed.shutdown()
    return 0


def torch_inference_mode() -> bool:
    import torch

    return torch.is_inference_mode_enabled()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
