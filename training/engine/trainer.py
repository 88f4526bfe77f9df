"""Train a LoRA DPO patch — the whole run, top to bottom.

    python -m training.engine train --model DIR --pairs pairs.jsonl --out OUT --eval eval.jsonl

In order: data (tokenize, truncate), the memory plan (micro-batch, checkpointing: memory.py,
before the model loads), model (attach the patch to the one model in memory),
reference log-probs (once, cached on disk), greedy answers before training, the loop (DPO loss
+ SFT term + retain term, a check of the flagged prompts after every epoch), answers after,
and saving (adapter, metrics.json, report.json — complete files only). What report.json says is
built in report.py from what this module measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.engine import distributed
from training.engine.config import COMBINED, TrainConfig, validate_config
from training.engine.data import (
    EncodedPair,
    EvalItem,
    encode_pairs,
    encode_prompt,
    parse_eval_items,
)
from training.engine.distributed import Ranks
from training.engine.errors import Cancelled, EngineError
from training.engine.evaluate import fit_to_context, generate_greedy, generate_greedy_ids
from training.engine.logprobs import completion_logps_concat, pair_logps
from training.engine.lora import Patch
from training.engine.losses import preference_losses, reward_metrics
from training.engine.memory import (
    GENERATION_BATCH,
    GIB,
    MemoryPlan,
    ModelShape,
    Workload,
    available_memory,
    plan_memory,
)
from training.engine.modeling import (
    LoadedBase,
    config_context_length,
    context_length,
    gradient_checkpointing,
    load_base,
    load_tokenizer,
    pick_device,
    return_large_frees_to_the_os,
    weight_bytes,
)
from training.engine.refcache import RefLogpCache
from training.engine.report import build_report
from training.engine.verify import Verification, prepare

ProgressCallback = Callable[[dict[str, Any]], None]
# The per-epoch figures metrics.json keeps (as "eval/<name>", one value an epoch).
EPOCH_SERIES = (
    "epoch",
    "step",
    "flagged_fixed",
    "flagged",
    "preferring",
    "with_pair",
    "within_tolerance",
    "regression",
)
OUTPUT_FILES = ("adapter_config.json", "adapter_model.safetensors", "metrics.json", "report.json")


@dataclass
class TrainResult:
    out_dir: Path
    adapter_files: list[Path]  # adapter_config.json, adapter_model.safetensors
    metrics_path: Path
    report_path: Path
    metrics: dict[str, list[float]]  # per-step series, TRL names
    report: dict[str, Any]
    stopped_reason: str  # "all_flagged_fixed" | "epochs_done"
    stopped_epoch: int  # the last epoch that ran
    files: list[Path] = field(default_factory=list)


@dataclass
class LoopResult:
    """What the DPO loop hands to the report: its series and why it stopped."""

    metrics: dict[str, list[float]]  # per-step series, TRL names
    epoch_checks: list[dict[str, Any]]  # the eval figures after each epoch (verify.py)
    steps: int
    stopped_reason: str  # "all_flagged_fixed" | "epochs_done"
    stopped_epoch: int


class ProgressHooks:
    """The caller's progress callback and cancel check, both run by ``tick`` at every step of
    every phase (a cancel raises Cancelled there, so no phase runs long past one).

    Under torchrun, rank 0 alone reports, and its cancel decision reaches every rank: every
    rank calls ``tick`` at the same points, so all of them stop at the same step.
    """

    def __init__(
        self,
        on_progress: ProgressCallback | None,
        should_cancel: Callable[[], bool] | None,
        ranks: Ranks = distributed.SINGLE,
    ) -> None:
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.ranks = ranks

    def tick(self, phase: str, step: int, total: int, **extra: Any) -> None:
        cancel = self.ranks.is_main and self.should_cancel is not None and self.should_cancel()
        if distributed.any_rank(cancel, self.ranks):
            raise Cancelled(f"cancelled during {phase}")
        if self.on_progress is not None and self.ranks.is_main:
            self.on_progress({"phase": phase, "step": step, "total": total, **extra})


def train(
    config: TrainConfig,
    *,
    pairs: list[dict],
    out_dir: Path,
    eval_items: list[dict] | None = None,
    base: LoadedBase | None = None,
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a patch on ``pairs`` and write it to ``out_dir``.

    ``base``, when given, is reused and left exactly as it was (the patch is removed without
    merging, also on error or cancel). Raises EngineError for bad input, Cancelled on cancel.

    Under torchrun (torch.distributed initialised, see training.engine.distributed) every rank
    calls this with the same arguments; the work is split across them, rank 0 alone reports
    progress and writes ``out_dir``, and the other ranks return an empty report.
    """
    validate_config(config)
    ranks = _sharding(config, distributed.current(), base)
    if config.batch_size < ranks.world:
        raise EngineError(
            f"--batch-size {config.batch_size} is below the {ranks.world} processes: each one "
            f"takes a share of every step's pairs, so use at least {ranks.world}"
        )
    check_out_dir(Path(out_dir), adapter=config.adapter)
    items = parse_eval_items(eval_items) if eval_items else []
    hooks = ProgressHooks(on_progress, should_cancel, ranks)
    if base is not None and base.quantize != config.quantize:
        raise EngineError(
            f"the base model in memory is {base.precision}, but the job asks for "
            f"quantize={config.quantize}; load it with load_base(..., quantize=...)"
        )
    _seed_everything(config.seed)
    tokenizer = base.tokenizer if base is not None else load_tokenizer(config.model)
    limits = _sequence_limits(config, base)
    encoded = encode_pairs(tokenizer, pairs, **limits)
    plan = plan_job(config, encoded, items, tokenizer, base=base, processes=ranks.world)
    hooks.tick("plan", 0, 0, memory_plan=plan.to_dict())
    if base is None:
        base = load_base(config.model, quantize=config.quantize, tokenizer=tokenizer)
    return_large_frees_to_the_os(base.model)
    patch = Patch(base, config)
    sharding = None
    if ranks.sharded:  # after the patch is attached: its LoRA weights are sharded with the blocks
        blocks = distributed.shard_base(patch.model, ranks)
        parameters = list(patch.model.parameters())
        sharding = {
            "blocks": blocks,
            "parameters": sum(p.numel() for p in parameters),
            "parameters_on_rank_0": sum(distributed.local_part(p).numel() for p in parameters),
        }
    try:
        return _train_patch(
            config,
            plan,
            patch,
            encoded,
            items,
            Path(out_dir),
            hooks,
            raw_pairs=pairs,
            limits=limits,
            sharding=sharding,
        )
    finally:
        if not ranks.sharded:  # a sharded base belongs to this process, which ends with the job
            patch.detach()


def _sharding(config: TrainConfig, ranks: Ranks, base: LoadedBase | None) -> Ranks:
    """``ranks``, marked sharded when the job asks for ``shard_base``; refuses where it cannot."""
    if not config.shard_base:
        return ranks
    if not ranks.distributed:
        raise EngineError(
            "--shard-base splits the base across several processes: start the engine with "
            "torchrun --nproc-per-node N (N GPUs), or drop --shard-base"
        )
    if base is not None:
        raise EngineError("--shard-base loads its own base on every rank; do not pass one")
    return dataclasses.replace(ranks, sharded=True)


def _sequence_limits(config: TrainConfig, base: LoadedBase | None) -> dict[str, int | None]:
    """max_length and max_prompt_length within the model's context (a small model: half of
    it for the prompt)."""
    max_length, max_prompt_length = config.max_length, config.max_prompt_length
    if base is not None:
        context = context_length(base.model)
    else:
        values = json.loads((Path(config.model).expanduser() / "config.json").read_text())
        context = config_context_length(values)
    if context is not None and context < max_length:
        max_length = context
        max_prompt_length = context // 2 if max_prompt_length is not None else None
    return {"max_length": max_length, "max_prompt_length": max_prompt_length}


def plan_job(
    config: TrainConfig,
    pairs: list[EncodedPair],
    items: list[EvalItem],
    tokenizer: Any,
    *,
    base: LoadedBase | None = None,
    processes: int = 1,
) -> MemoryPlan:
    """The memory plan for this job (for each process, which takes its share of every step):
    its longest prompt and answer, the model's shape from config.json, and the memory there is
    (``max_memory``, else the device's free memory plus what an already loaded ``base`` holds).
    """
    eval_prompts = [len(encode_prompt(tokenizer, item.prompt)) for item in items]
    answers = [max(len(pair.chosen_ids), len(pair.rejected_ids)) for pair in pairs]
    _, dtype = pick_device()
    workload = Workload(
        batch_size=math.ceil(config.batch_size / processes),
        prompt_tokens=max([len(pair.prompt_ids) for pair in pairs] + eval_prompts),
        answer_tokens=max(answers + ([config.max_new_tokens] if items else [])),
        lora_r=config.lora_r,
        dtype_bytes=torch.empty(0, dtype=dtype).element_size(),
        quantize=config.quantize,
        prefix_sharing=config.prefix_sharing,
        generation_prompts=len(items),
        max_new_tokens=config.max_new_tokens,
        shards=processes if config.shard_base else 1,
    )
    if config.max_memory is not None:
        available, source = int(config.max_memory * GIB), "--max-memory"
    else:
        available, source = available_memory()
        if available is not None and base is not None:  # its weights count as the job's
            available += weight_bytes(base.model)
    try:
        shape = ModelShape.from_folder(config.model)
    except EngineError as error:  # an architecture whose config.json names things otherwise
        return MemoryPlan.without_estimate(
            str(error), workload, config.micro_batch_size, config.gradient_checkpointing
        )
    return plan_memory(
        shape,
        workload,
        micro_batch_size=config.micro_batch_size,
        gradient_checkpointing=config.gradient_checkpointing,
        available_bytes=available,
        available_source=source,
    )


def check_out_dir(out_dir: Path, *, adapter: str | None = None) -> None:
    """Refuse an output folder that could not be written, before hours of training."""
    out_dir = out_dir.expanduser()
    if adapter and out_dir.resolve() == Path(adapter).expanduser().resolve():
        raise EngineError(
            f"--out {out_dir} is the deployed adapter's folder: writing there would replace it"
        )
    existing = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    if not existing.is_dir():
        raise EngineError(f"cannot write to {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EngineError(f"cannot write to {out_dir}: {existing} is not writable")


def _require_finite(
    patch: Patch, loss: torch.Tensor, step: int, config: TrainConfig, ranks: Ranks
) -> None:
    """A run that diverged must fail, not ship NaN weights as a patch."""
    checks = [torch.isfinite(loss).all()]
    checks += [
        torch.isfinite(distributed.local_part(param)).all()
        for param in patch.trainable_parameters()
    ]
    finite = bool(torch.stack(checks).all())  # one device sync per step, not one per matrix
    if ranks.sharded:  # each rank sees only its piece of the weights; all must stop together
        finite = not distributed.any_rank(not finite, ranks)
    if finite:
        return
    raise EngineError(
        f"training diverged at step {step} (loss {loss.item()}, or weights not finite); "
        f"lower the learning rate (lr {config.lr:g}) or beta ({config.beta:g})"
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _train_patch(
    config: TrainConfig,
    plan: MemoryPlan,
    patch: Patch,
    pairs: list[EncodedPair],
    items: list[EvalItem],
    out_dir: Path,
    hooks: ProgressHooks,
    *,
    raw_pairs: list[dict[str, Any]],
    limits: dict[str, int | None],
    sharding: dict[str, int] | None = None,
) -> TrainResult:
    model, tokenizer = patch.model, patch.base.tokenizer
    pad_id = tokenizer.pad_token_id
    timings: dict[str, float] = {}

    # ---- reference log-probs: once per pair, before training, cached across jobs. The first
    # step's pairs need no reference forward unless a warm-up comes first: the patch starts at
    # zero, so that step's policy log-probs are the reference's (the loop fills them in).
    started = time.perf_counter()
    first_step = [] if config.sft_warmup_epochs else _first_step_pairs(config, pairs)
    ref_chosen, ref_rejected, cache_hits = _reference_logps(
        config, plan, patch, pairs, hooks, from_first_step=first_step
    )
    timings["reference_s"] = time.perf_counter() - started

    # ---- answers before training; the regression answers become the retain targets
    started = time.perf_counter()
    before_ids = _answer_ids(patch, items, config, plan, hooks, phase="eval_before")
    before = [tokenizer.decode(ids, skip_special_tokens=True) for ids in before_ids]
    regression = [
        (index, item, ids)
        for index, (item, ids) in enumerate(zip(items, before_ids, strict=True))
        if item.kind == "regression" and ids
    ]
    retain_prompts, _ = fit_to_context(  # cut as they were for the answers
        patch.model,
        [encode_prompt(tokenizer, item.prompt) for _, item, _ in regression],
        config.max_new_tokens,
    )
    retain = [(prompt, ids) for prompt, (*_, ids) in zip(retain_prompts, regression, strict=True)]
    # what the verdicts compare against: the reference's margins and pre-patch answers
    verification = prepare(
        patch=patch,
        items=items,
        raw_pairs=raw_pairs,
        encoded_pairs=pairs,
        retain={index: kept for (index, *_), kept in zip(regression, retain, strict=True)},
        config=config,
        batch_size=plan.micro_batch_size,
        **limits,
    )
    timings["eval_before_s"] = time.perf_counter() - started

    # ---- the loop (after an optional SFT warm-up on the chosen answers)
    started = time.perf_counter()
    optimizer = torch.optim.AdamW(
        patch.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    warmup_nll = _sft_warmup(config, plan, patch, pairs, optimizer, hooks)
    timings["sft_warmup_s"] = time.perf_counter() - started
    loop = _dpo_loop(
        config, plan, patch, pairs, ref_chosen, ref_rejected, retain, verification, optimizer, hooks
    )
    timings["train_s"] = time.perf_counter() - started

    # ---- the patched model: log-probs per pair and answers after training
    started = time.perf_counter()
    policy_chosen, policy_rejected = _policy_logps(config, plan, model, pairs, pad_id, hooks)
    after_ids = _answer_ids(patch, items, config, plan, hooks, phase="eval_after")
    after = [tokenizer.decode(ids, skip_special_tokens=True) for ids in after_ids]
    eval_rows = verification.rows(
        before, after, verification.margins(model), verification.drifts(model)
    )
    timings["eval_after_s"] = time.perf_counter() - started

    # a sharded patch is gathered whole (a collective: every rank takes part) for rank 0 to save
    patch_state = patch.full_state() if hooks.ranks.sharded else None
    if not hooks.ranks.is_main:  # rank 0 builds the report and writes the files; others wait
        hooks.tick("saving", 0, 1)
        distributed.barrier(hooks.ranks)
        hooks.tick("saving", 1, 1)
        return TrainResult(
            out_dir=out_dir,
            adapter_files=[],
            metrics_path=out_dir / "metrics.json",
            report_path=out_dir / "report.json",
            metrics=loop.metrics,
            report={},
            stopped_reason=loop.stopped_reason,
            stopped_epoch=loop.stopped_epoch,
        )
    report = build_report(
        config=config,
        patch=patch,
        pairs=pairs,
        items=items,
        eval_rows=eval_rows,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        cache_hits=cache_hits,
        retain_examples=len(retain),
        warmup_nll=warmup_nll,
        loop=loop,
        flagged=verification.flagged,
        timings=timings,
        memory_plan=plan,
    )
    report["training"]["processes"] = hooks.ranks.world  # torchrun ranks sharing each step
    # with --shard-base: the base's blocks split across them (what rank 0 holds of the weights)
    report["training"]["sharded_base"] = sharding

    # ---- saving: everything goes to a staging folder, then each file is renamed into place
    hooks.tick("saving", 0, 1)
    files = _save(patch, out_dir, loop.metrics, report, state=patch_state)
    distributed.barrier(hooks.ranks)
    hooks.tick("saving", 1, 1)
    return TrainResult(
        out_dir=out_dir,
        adapter_files=[out_dir / "adapter_config.json", out_dir / "adapter_model.safetensors"],
        metrics_path=out_dir / "metrics.json",
        report_path=out_dir / "report.json",
        metrics=loop.metrics,
        report=report,
        stopped_reason=loop.stopped_reason,
        stopped_epoch=loop.stopped_epoch,
        files=files,
    )


def _dpo_loop(
    config: TrainConfig,
    plan: MemoryPlan,
    patch: Patch,
    pairs: list[EncodedPair],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    retain: list[tuple[list[int], list[int]]],
    verification: Verification,
    optimizer: torch.optim.Optimizer,
    hooks: ProgressHooks,
) -> LoopResult:
    """DPO loss + SFT term + retain term, step by step; after every epoch, the eval figures,
    and a stop once every flagged prompt passes its rule (``epochs`` is a budget)."""
    model, tokenizer = patch.model, patch.base.tokenizer
    pad_id = tokenizer.pad_token_id
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    retain_order = list(range(len(retain)))
    random.Random(config.seed + 2).shuffle(retain_order)  # +1 is the warm-up's
    orders = _pair_orders(config, len(pairs))
    metrics: dict[str, list[float]] = {}
    epoch_checks: list[dict[str, Any]] = []
    stopped_reason, stopped_epoch, step = "epochs_done", config.epochs, 0
    for epoch in range(1, config.epochs + 1):
        order = next(orders)
        for start in range(0, len(order), config.batch_size):
            batch = [pairs[i] for i in order[start : start + config.batch_size]]
            # the next retain_per_step regression answers, cycling through them in order
            picked = [
                retain[retain_order[(step * config.retain_per_step + k) % len(retain)]]
                for k in range(min(config.retain_per_step, len(retain)))
            ] if retain and config.retain_weight else []  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            terms, batch_policy = _step_loss(config, plan, model, batch, picked, ref_chosen,
                                             ref_rejected, pad_id, hooks.ranks)  # fmt: skip
            distributed.sum_gradients(patch.trainable_parameters(), hooks.ranks)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(patch.trainable_parameters(), config.max_grad_norm)
            optimizer.step()
            step += 1
            loss = terms[0]
            _require_finite(patch, loss, step, config, hooks.ranks)
            index = torch.tensor([pair.index for pair in batch])
            _fill_reference_from_first_step(
                config, patch, batch, batch_policy, ref_chosen, ref_rejected, step, hooks.ranks
            )
            step_metrics = {
                "loss": loss.item(),
                **reward_metrics(
                    batch_policy[:, 0],
                    batch_policy[:, 1],
                    ref_chosen[index],
                    ref_rejected[index],
                    beta=config.beta,
                ),
                "dpo_loss": terms[1].item(),
                "nll": terms[2].item(),
                **({"retain_nll": terms[3].item()} if picked else {}),
                "step": step,
                "epoch": epoch,
            }
            for name, value in step_metrics.items():
                metrics.setdefault(name, []).append(value)
            hooks.tick("train", step, total_steps, epoch=epoch, metrics=step_metrics)

        # end of epoch: does every flagged prompt pass yet? (--epochs is a budget)
        if verification.flagged or verification.pairs or verification.retain:
            figures = verification.check_epoch(
                model,
                lambda items: _sharded_greedy(model, tokenizer, items, config, plan, hooks.ranks),
                epoch=epoch,
                step=step,
            )
            epoch_checks.append(figures)
            numbers = {k: v for k, v in figures.items() if k in EPOCH_SERIES}
            for name, value in numbers.items():
                metrics.setdefault(f"eval/{name}", []).append(value)
            hooks.tick("train", step, total_steps, epoch=epoch, metrics=numbers)
            if config.early_stop and figures["all_flagged_pass"]:
                stopped_reason, stopped_epoch = "all_flagged_fixed", epoch
                break
    return LoopResult(
        metrics=metrics,
        epoch_checks=epoch_checks,
        steps=step,
        stopped_reason=stopped_reason,
        stopped_epoch=stopped_epoch,
    )


def _step_loss(
    config: TrainConfig,
    plan: MemoryPlan,
    model: torch.nn.Module,
    batch: list[EncodedPair],
    picked: list[tuple[list[int], list[int]]],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    pad_id: int,
    ranks: Ranks,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one optimizer step on this rank's share of ``batch`` and of the
    retain answers ``picked`` (all of them in one process), ``plan.micro_batch_size`` pairs
    (or twice as many retain answers) per forward, the gradients accumulating.

    Every term is divided by the WHOLE step's count (pairs, chosen tokens, retain tokens), so
    the micro-batches' and the ranks' losses and gradients add up to the one-process, whole
    batch step's. Returns the step's (loss, dpo_loss, nll, retain_nll), summed over the ranks,
    and the policy log-probs of every pair of ``batch`` (a row of chosen, rejected each),
    gathered from the ranks.
    """
    device = next(model.parameters()).device
    # a sharded base: every rank runs as many passes, the stand-ins weighted 0
    mine, real = distributed.lockstep_share(batch, ranks)
    my_picks, real_picks = distributed.lockstep_share(picked, ranks)
    weights = _weights(len(mine), real, device)
    pick_weights = _weights(len(my_picks), real_picks, device)
    micro = plan.micro_batch_size
    chosen_tokens = sum(len(pair.chosen_ids) for pair in batch)
    terms = torch.zeros(4, device=device)  # loss, dpo_loss, nll, retain_nll
    mine_policy = []
    with gradient_checkpointing(model, plan.gradient_checkpointing) as checkpointing:
        for start in range(0, len(mine), micro):
            part, weight = mine[start : start + micro], weights[start : start + micro]
            policy = pair_logps(
                model,
                part,
                pad_id=pad_id,
                prefix_sharing=config.prefix_sharing,
                checkpointing=checkpointing,
            )
            index = torch.tensor([pair.index for pair in part])
            # no reference value yet (the first step's pairs): the policy is still the reference
            part_ref_chosen = ref_chosen[index].to(device)
            part_ref_chosen = part_ref_chosen.where(
                ~part_ref_chosen.isnan(), policy.chosen.detach()
            )
            part_ref_rejected = ref_rejected[index].to(device)
            part_ref_rejected = part_ref_rejected.where(
                ~part_ref_rejected.isnan(), policy.rejected.detach()
            )
            dpo_loss = (
                weight
                * preference_losses(
                    policy.chosen,
                    policy.rejected,
                    part_ref_chosen,
                    part_ref_rejected,
                    loss=config.loss,
                    beta=config.beta,
                    label_smoothing=config.label_smoothing,
                    chosen_tokens=policy.chosen_tokens,
                    rejected_tokens=policy.rejected_tokens,
                )
            ).sum() / len(batch)
            nll = -(weight * policy.chosen).sum() / chosen_tokens
            loss = dpo_loss + config.sft_weight * nll if config.sft_weight else dpo_loss
            loss.backward()
            terms += torch.stack([loss, dpo_loss, nll, torch.zeros_like(nll)]).detach()
            mine_policy.append(torch.stack([policy.chosen, policy.rejected], dim=1).detach())
        mine_policy = [torch.cat(mine_policy)[:real]] if real else []
        retain_tokens = sum(len(answer) for _, answer in picked)
        for start in range(0, len(my_picks), 2 * micro):
            rows = my_picks[start : start + 2 * micro]
            logp, _ = completion_logps_concat(
                model, [p for p, _ in rows], [a for _, a in rows], pad_id=pad_id
            )
            retain_nll = -(pick_weights[start : start + 2 * micro] * logp).sum() / retain_tokens
            (config.retain_weight * retain_nll).backward()
            zero = torch.zeros_like(retain_nll)
            terms += torch.stack(
                [config.retain_weight * retain_nll, zero, zero, retain_nll]
            ).detach()
    batch_policy = torch.zeros(len(batch), 2, device=device)
    if mine_policy:
        batch_policy[ranks.rank :: ranks.world] = torch.cat(mine_policy)
    packed = distributed.sum_across(torch.cat([terms, batch_policy.flatten()]), ranks)
    return packed[:4], packed[4:].view(-1, 2).cpu()


def _pair_orders(config: TrainConfig, count: int) -> Iterator[list[int]]:
    """The order of the pairs in each epoch, the same for every rank."""
    rng = random.Random(config.seed)
    while True:
        order = list(range(count))
        rng.shuffle(order)
        yield order


def _first_step_pairs(config: TrainConfig, pairs: list[EncodedPair]) -> list[EncodedPair]:
    order = next(_pair_orders(config, len(pairs)))
    return [pairs[i] for i in order[: config.batch_size]]


def _reference_cache(config: TrainConfig, patch: Patch) -> RefLogpCache:
    # the precision says dtype and quantization: a 4-bit base gives other reference numbers
    namespace = f"{patch.base.identity}|{patch.deployed_identity}|{patch.base.precision}"
    return RefLogpCache(config.cache_dir(), namespace=namespace)


def _weights(count: int, real: int, device: torch.device) -> torch.Tensor:
    """1 for each of the first ``real`` items of a lockstep share, 0 for its stand-ins."""
    return (torch.arange(count, device=device) < real).float()


def _reference_logps(
    config: TrainConfig,
    plan: MemoryPlan,
    patch: Patch,
    pairs: list[EncodedPair],
    hooks: ProgressHooks,
    *,
    from_first_step: list[EncodedPair],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reference (patch off) log-probs for every pair, from the cache where possible; NaN for
    the pairs ``from_first_step`` that the cache lacks (the first step fills them in).

    Under torchrun, rank 0 alone reads and writes the cache (its view of it is the one every
    rank uses: another job may write to it meanwhile), and the missing pairs are split across
    the ranks and gathered.
    """
    ranks = hooks.ranks
    cache = _reference_cache(config, patch) if ranks.is_main else None
    try:
        cached = distributed.broadcast_object(cache.get_many(pairs) if cache else {}, ranks)
        deferred = {pair.index for pair in from_first_step} - set(cached)
        todo = [pair for pair in pairs if pair.index not in cached and pair.index not in deferred]
        values = torch.zeros(len(pairs), 2, dtype=torch.float32)
        for index, (chosen, rejected) in cached.items():
            values[index] = torch.tensor([chosen, rejected])
        values[sorted(deferred)] = float("nan")
        step = plan.micro_batch_size * ranks.world  # each rank: a micro-batch per forward
        batches = range(0, len(todo), step)
        hooks.tick("reference", 0, len(batches), metrics={"ref_cache_hits": len(cached)})
        computed = torch.zeros(len(pairs), 2, dtype=torch.float32)
        for number, start in enumerate(batches, start=1):
            batch, real = distributed.lockstep_share(todo[start : start + step], ranks)
            if batch:
                with distributed.no_grad(), patch.reference() as reference_model:
                    logps = pair_logps(
                        reference_model,
                        batch,
                        pad_id=patch.base.tokenizer.pad_token_id,
                        prefix_sharing=config.prefix_sharing,
                    )
                index = torch.tensor([pair.index for pair in batch[:real]], dtype=torch.long)
                computed[index, 0] = logps.chosen[:real].float().cpu()
                computed[index, 1] = logps.rejected[:real].float().cpu()
            hooks.tick("reference", number, len(batches), metrics={"ref_cache_hits": len(cached)})
        computed = distributed.sum_across(computed, ranks)
        values += computed
        if cache is not None and todo:
            cache.put_many(
                [(pair, *computed[pair.index].tolist()) for pair in todo]  # written once
            )
    finally:
        if cache is not None:
            cache.close()
    return values[:, 0].clone(), values[:, 1].clone(), len(cached)


def _fill_reference_from_first_step(
    config: TrainConfig,
    patch: Patch,
    batch: list[EncodedPair],
    batch_policy: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    step: int,
    ranks: Ranks,
) -> None:
    """After the first step: its pairs' policy log-probs (patch still zero) are their reference
    log-probs; kept, and cached like the reference pass's."""
    index = torch.tensor([pair.index for pair in batch])
    missing = ref_chosen[index].isnan()
    if not missing.any():
        return
    if step != 1:  # only the first step's policy is the reference
        raise RuntimeError(f"reference log-probs missing at step {step}")
    ref_chosen[index[missing]] = batch_policy[missing, 0]
    ref_rejected[index[missing]] = batch_policy[missing, 1]
    if ranks.is_main:
        cache = _reference_cache(config, patch)
        try:
            cache.put_many(
                [
                    (pair, ref_chosen[pair.index].item(), ref_rejected[pair.index].item())
                    for pair, is_missing in zip(batch, missing.tolist(), strict=True)
                    if is_missing
                ]
            )
        finally:
            cache.close()


def _policy_logps(
    config: TrainConfig,
    plan: MemoryPlan,
    model: torch.nn.Module,
    pairs: list[EncodedPair],
    pad_id: int,
    hooks: ProgressHooks,
) -> tuple[torch.Tensor, torch.Tensor]:
    ranks = hooks.ranks
    values = torch.zeros(len(pairs), 2)
    step = plan.micro_batch_size * ranks.world
    batches = range(0, len(pairs), step)
    for number, start in enumerate(batches, start=1):
        batch, real = distributed.lockstep_share(pairs[start : start + step], ranks)
        if batch:
            with distributed.no_grad():
                logps = pair_logps(
                    model, batch, pad_id=pad_id, prefix_sharing=config.prefix_sharing
                )
            index = torch.tensor([pair.index for pair in batch[:real]], dtype=torch.long)
            values[index, 0] = logps.chosen[:real].float().cpu()
            values[index, 1] = logps.rejected[:real].float().cpu()
        hooks.tick("eval_after", number, len(batches))
    values = distributed.sum_across(values, ranks)
    return values[:, 0].clone(), values[:, 1].clone()


def _generation_batch(plan: MemoryPlan) -> int:
    """Prompts answered at once: a generating row holds far less than a training pair (no
    activations kept, one KV cache), so two per pair of the micro-batch, up to 16."""
    return min(GENERATION_BATCH, 2 * plan.micro_batch_size)


def _answer_ids(
    patch: Patch,
    items: list[EvalItem],
    config: TrainConfig,
    plan: MemoryPlan,
    hooks: ProgressHooks,
    *,
    phase: str,
) -> list[list[int]]:
    """Greedy answers of the policy (the reference before training: the patch is still zero),
    each rank answering its share of every chunk of prompts."""
    ranks = hooks.ranks
    answers: list[list[int]] = []
    chunk = _generation_batch(plan)
    step = chunk * ranks.world
    for start in range(0, len(items), step):
        hooks.tick(phase, start, len(items))
        piece = items[start : start + step]
        share, real = distributed.lockstep_share(piece, ranks)
        mine = generate_greedy_ids(
            patch.model,
            patch.base.tokenizer,
            [item.prompt for item in share],
            config.max_new_tokens,
            batch_size=chunk,
            synced=ranks.sharded,
        )
        answers += distributed.gather_shards(mine[:real], len(piece), ranks)
    hooks.tick(phase, len(items), len(items))
    return answers


def _sharded_greedy(
    model: torch.nn.Module,
    tokenizer: Any,
    items: list[EvalItem],
    config: TrainConfig,
    plan: MemoryPlan,
    ranks: Ranks,
) -> list[str]:
    """Greedy answers to ``items`` as text, each rank answering its share; every rank gets all
    of them (the early-stop decision must be the same everywhere)."""
    share, real = distributed.lockstep_share(items, ranks)
    mine = generate_greedy(
        model,
        tokenizer,
        [item.prompt for item in share],
        config.max_new_tokens,
        batch_size=_generation_batch(plan),
        synced=ranks.sharded,
    )
    return distributed.gather_shards(mine[:real], len(items), ranks)


def _sft_warmup(
    config: TrainConfig,
    plan: MemoryPlan,
    patch: Patch,
    pairs: list[EncodedPair],
    optimizer: torch.optim.Optimizer,
    hooks: ProgressHooks,
) -> list[float]:
    """Plain SFT on the chosen answers (token-mean NLL), before DPO; returns each step's NLL.

    The reference log-probs were computed before this, so DPO still measures the patch against
    the deployed model, not against the warmed-up one.
    """
    pad_id, ranks = patch.base.tokenizer.pad_token_id, hooks.ranks
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total = steps_per_epoch * config.sft_warmup_epochs
    order_rng = random.Random(config.seed + 1)
    losses: list[float] = []
    for epoch in range(1, config.sft_warmup_epochs + 1):
        order = list(range(len(pairs)))
        order_rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            batch = [pairs[i] for i in order[start : start + config.batch_size]]
            # each rank's share, over the whole step's tokens (stand-ins weighted 0)
            mine, real = distributed.lockstep_share(batch, ranks)
            optimizer.zero_grad(set_to_none=True)
            nll = _sft_gradients(patch.model, mine, real, batch, plan, pad_id=pad_id)
            distributed.sum_gradients(patch.trainable_parameters(), ranks)
            nll = distributed.sum_across(nll.detach(), ranks)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(patch.trainable_parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(nll.item())
            _require_finite(patch, nll, len(losses), config, ranks)
            hooks.tick("sft_warmup", len(losses), total, epoch=epoch, metrics={"nll": losses[-1]})
    return losses


def _sft_gradients(
    model: torch.nn.Module,
    mine: list[EncodedPair],
    real: int,
    batch: list[EncodedPair],
    plan: MemoryPlan,
    *,
    pad_id: int,
) -> torch.Tensor:
    """Accumulate the gradients of the token-mean NLL of ``batch``'s chosen answers over this
    rank's share ``mine``, two micro-batches' worth of answers at a time; returns that share."""
    tokens = sum(len(pair.chosen_ids) for pair in batch)
    device = next(model.parameters()).device
    nll, weights = torch.zeros((), device=device), _weights(len(mine), real, device)
    rows = 2 * plan.micro_batch_size
    with gradient_checkpointing(model, plan.gradient_checkpointing):
        for start in range(0, len(mine), rows):
            part = mine[start : start + rows]
            logp, _ = completion_logps_concat(
                model,
                [pair.prompt_ids for pair in part],
                [pair.chosen_ids for pair in part],
                pad_id=pad_id,
            )
            part_nll = -(weights[start : start + rows] * logp).sum() / tokens
            part_nll.backward()
            nll += part_nll.detach()
    return nll


def _save(
    patch: Patch,
    out_dir: Path,
    metrics: dict[str, list[float]],
    report: dict[str, Any],
    *,
    state: dict[str, torch.Tensor] | None = None,
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        combined = patch.save(staging, state=state)
        if combined is not None:
            report["stacked_on_adapter"].update(combined)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (staging / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
        for path in staging.rglob("*"):  # safetensors writes 0600; servers may run as others
            if path.is_file():
                path.chmod(0o644)
        shutil.rmtree(out_dir / COMBINED, ignore_errors=True)  # never one from an earlier run
        if (staging / COMBINED).is_dir():
            os.replace(staging / COMBINED, out_dir / COMBINED)
        for name in OUTPUT_FILES:  # report.json last: its presence means the rest is complete
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in OUTPUT_FILES]
