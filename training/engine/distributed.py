"""Several processes training one patch: torch.distributed on one node, as torchrun starts it.

    torchrun --nproc-per-node 2 -m training.engine train --model DIR --pairs pairs.jsonl --out OUT

Every rank holds the whole frozen base and the same LoRA patch (same seed, same init). Each
optimizer step's global batch (``--batch-size`` pairs) is split across the ranks; the LoRA
gradients are summed across ranks before the step (data parallelism over the trainable weights,
what DDP does for them), so every rank takes the same step and the patch stays identical
everywhere. The losses are scaled by the GLOBAL batch's counts, so the sum over ranks is the
one-process loss: the same seed and global batch give the same adapter to float tolerance.

Work that is not training is split too and gathered, not repeated: reference log-probs, the
greedy answers before and after, the early-stop check of the flagged prompts, the retain term
and the per-pair log-probs of the report. Rank 0 alone reads and writes the reference cache,
reports progress, and writes the output folder; the other ranks wait for it at the end.

With ``--shard-base`` (FSDP2, ``fully_shard``) the base does not have to fit one device: each
repeated decoder block's weights (and the patch's LoRA weights in it) are split across the
ranks and gathered block by block for each forward and backward pass, and FSDP sums the LoRA
gradients with a reduce-scatter (so ``sum_gradients`` does nothing). Every forward pass is then
a collective: all ranks must run the same passes in the same order, so a rank whose share of
some work is shorter runs stand-ins (``lockstep_share``) whose results it drops.

One process (no torchrun, or ``--nproc-per-node 1``) never touches torch.distributed: every
helper here is then a no-op returning its input.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from training.engine.errors import EngineError

T = TypeVar("T")

# Seconds a collective waits for the slowest rank before the job fails (a rank that died or
# hangs must not hold the others forever). Rank 0 saving a big adapter is the longest wait.
DEFAULT_TIMEOUT_S = 1800
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ranks:
    """Where this process sits: its rank among ``world`` processes (0 is the one that writes)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharded: bool = False  # the base's blocks are split across the ranks (FSDP2)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment() -> Ranks:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); one process without torchrun stays SINGLE.

    NCCL and one GPU per rank (LOCAL_RANK) where CUDA is present; gloo on the CPU.
    """
    if dist.is_initialized():
        return current()
    if not launched_by_torchrun():
        return SINGLE
    die_with_parent()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise EngineError(
                f"rank {os.environ.get('RANK')} wants GPU {local_rank} but this node has "
                f"{torch.cuda.device_count()}: lower --nproc-per-node"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = float(os.environ.get("PATCHWISE_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    return current()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Ranks:
    """This process's place in the running process group (SINGLE when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Ranks(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
    )


def die_with_parent() -> None:
    """Ask Linux to end this rank when torchrun (its parent) ends, however it ends: a torchrun
    killed by SIGKILL cannot stop its ranks, and an orphan rank would hold its GPU forever."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: torchrun's own shutdown is all there is
        return
    # The parent died before the request took hold (not "the parent is PID 1": in a container
    # the worker may well be PID 1 itself).
    if os.getppid() != parent:
        os._exit(1)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------- splitting the work


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """This rank's share of ``items``: every world-th one from its rank (strided, so a short
    list still gives every rank something to do before any rank gets two)."""
    return list(items[ranks.rank :: ranks.world])


def lockstep_share(items: Sequence[T], ranks: Ranks) -> tuple[list[T], int]:
    """This rank's ``shard`` of ``items`` and how many of it are real.

    With a sharded base every rank must run as many forward passes as the others (each one
    gathers the blocks' weights from all ranks), so a share shorter than the longest is
    padded with copies of ``items[0]``: their results are dropped and their losses weighted 0.
    Otherwise the share is as ``shard`` gives it.
    """
    mine = shard(items, ranks)
    if not ranks.sharded or not items:
        return mine, len(mine)
    longest = -(-len(items) // ranks.world)
    return mine + [items[0]] * (longest - len(mine)), len(mine)


def gather_shards(local: list[T], total: int, ranks: Ranks) -> list[T]:
    """The whole list again, in the original order, from every rank's ``shard`` of it."""
    if not ranks.distributed:
        return list(local)
    pieces: list[list[T] | None] = [None] * ranks.world
    dist.all_gather_object(pieces, local)
    whole: list[T] = [None] * total  # type: ignore[list-item]
    for rank, piece in enumerate(pieces):
        whole[rank :: ranks.world] = piece  # type: ignore[index]
    return whole


def sum_across(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (a new tensor, on the input's device).

    Used to assemble per-item results: each rank fills its own items' rows and leaves zeros
    elsewhere, so the sum is the whole table on every rank.
    """
    if not ranks.distributed:
        return tensor
    summed = tensor.detach().to(_collective_device(), dtype=torch.float64, copy=True)
    dist.all_reduce(summed)
    return summed.to(tensor.device, dtype=tensor.dtype)


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when ``flag`` is true on at least one (for a stop every rank takes)."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value: T, ranks: Ranks) -> T:
    """Rank 0's ``value``, on every rank."""
    if not ranks.distributed:
        return value
    holder = [value if ranks.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]  # type: ignore[return-value]


def sum_gradients(parameters: Sequence[torch.nn.Parameter], ranks: Ranks) -> None:
    """Sum the trainable parameters' gradients over the ranks, in one flat all-reduce (one DDP
    bucket: LoRA weights are small). A rank that had nothing to do this step adds zeros."""
    if not ranks.distributed or ranks.sharded:  # FSDP has reduce-scattered them already
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat)
    offset = 0
    for param, grad in zip(parameters, grads, strict=True):
        count = grad.numel()
        param.grad = flat[offset : offset + count].view_as(param).clone()
        offset += count


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


# ------------------------------------------------------------------- a sharded base (FSDP2)


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated decoder blocks of ``model`` (``model.layers`` in Llama, ``transformer.h`` in
    GPT-2): the list of modules holding the most weights."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    if not lists:
        raise EngineError("--shard-base: this model has no repeated decoder blocks to shard")
    return max(lists, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))


def shard_base(model: torch.nn.Module, ranks: Ranks) -> int:
    """Split every decoder block of ``model`` (the patch already attached) across the ranks with
    FSDP2, then the decoder around them (its embeddings and last norm); returns how many blocks.
    The output head stays whole on every rank (the log-probs call it on its own, a chunk of
    tokens at a time; no patch on it), and so do embeddings tied to it.

    Gradients are summed, not averaged: the losses are already divided by the whole step's
    counts (as in the data-parallel path). Plain SUM rather than NCCL's pre-multiplied sum,
    which gloo lacks. From here on the engine's no-gradient passes run under ``torch.no_grad``,
    not inference mode: FSDP keeps the weights it gathered for the decoder between passes,
    and an inference tensor could not be used by a training pass after it.
    """
    from torch.distributed.fsdp import fully_shard

    global _SHARDED
    blocks = decoder_blocks(model)
    decoder = next(m for m in model.modules() if any(c is blocks for c in m.children()))
    # a head tied to the input embeddings keeps that one tensor whole (the head runs unsharded)
    head = model.get_output_embeddings()
    kept_whole = set(head.parameters()) if head is not None else set()
    for module in [*blocks, decoder]:
        fully_shard(module, ignored_params=kept_whole if module is decoder else None)
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    _SHARDED = True
    return len(blocks)


_SHARDED = False  # this process's base is sharded (shard_base ran)


def no_grad() -> contextlib.AbstractContextManager:
    """The context for passes that need no gradients: inference mode (the fastest), or plain
    no_grad once the base is sharded (see ``shard_base``)."""
    return torch.no_grad() if _SHARDED else torch.inference_mode()


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a sharded tensor (a DTensor), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full_state(model: torch.nn.Module, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors of ``model``'s state dict whose names ``keep`` accepts, whole (a collective
    for sharded ones: every rank must call this)."""
    return {
        name: tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        for name, tensor in model.state_dict().items()
        if keep(name)
    }
