"""torchrun, tied to the process that starts it: ``python -m training.engine.launch ARGS`` takes
torchrun's own arguments (``--standalone --nproc-per-node N -m training.engine train ...``).

The gpu worker starts multi-GPU jobs through this. If the worker dies (killed by the kernel, its
machine lost), Linux sends torchrun SIGTERM, torchrun stops its ranks, and each rank also ends
with torchrun (see ``distributed.die_with_parent``): no orphan process keeps a GPU.
"""

from __future__ import annotations

import sys

from training.engine.distributed import die_with_parent


def main(argv: list[str] | None = None) -> None:
    die_with_parent()
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
