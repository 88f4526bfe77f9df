"""The training options, as data: one dataclass whose defaults say what they mean.

Defaults are tuned on the demo model (see docs/benchmarks.md): DPO alone lowers both answers'
likelihoods and fixes little, so an SFT term on the chosen answer is on by default, the learning
rate is LoRA-high, and ``epochs`` is a budget that early stopping rarely spends.
This module imports nothing heavy, so a web process can validate a job's config cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.engine.checks import DEFAULT_DRIFT_TOLERANCE
from training.engine.errors import EngineError

LOSSES = ("sigmoid", "ipo", "hinge", "robust")
QUANTIZE = ("4bit",)

# Linear layers of a Llama/Qwen/Mistral-style decoder block: what vLLM serves LoRA on.
DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

# vLLM serves LoRA on the decoder's linear layers; embeddings and the LM head need extra
# vocabulary support, and anything saved whole (modules_to_save) is not loaded at all.
VLLM_UNSUPPORTED_TARGETS = ("lm_head", "embed_tokens", "wte", "wpe", "norm", "ln_f")
# The values vLLM's --max-lora-rank takes (its default is 16); an adapter of rank r needs the
# smallest of them that is >= r.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_MAX_LORA_RANK = VLLM_MAX_LORA_RANKS[-1]
# Where train writes the patch combined with the deployed adapter, as one LoRA (a subfolder of
# its output folder).
COMBINED = "combined"
# Seeds of training and sampling alike: what numpy's and torch's generators all accept.
MAX_SEED = 2**32 - 1
SEED_RULE = f"'seed' must be a whole number from 0 to {MAX_SEED}"


def vllm_max_lora_rank(rank: int) -> int:
    """The --max-lora-rank value that lets vLLM load an adapter of this rank."""
    return next(value for value in VLLM_MAX_LORA_RANKS if value >= rank)


@dataclass
class TrainConfig:
    # --- what to patch
    model: str = ""  # HF folder of the base model (the app passes PATCHWISE_BASE_MODEL)
    adapter: str | None = None  # the deployed adapter: frozen, the patch stacks on it, and the
    # reference becomes base + adapter (never the bare base, which would skew the loss)

    # --- preference loss (formulas as TRL's DPOTrainer)
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo | hinge | robust
    beta: float = 0.1  # strength of the pull towards the reference; 0.05-0.5 is usual
    label_smoothing: float = 0.0  # sigmoid: cDPO's assumed label noise; robust: must be < 0.5
    sft_weight: float = 1.0  # token-mean NLL on the chosen answer; keeps the good answer likely
    # (DPO alone often lowers both answers). 0 turns it off.
    retain_weight: float = 1.0  # token-mean NLL on the model's own pre-patch answers to the
    # regression prompts (needs --eval with regression prompts); keeps unrelated answers stable
    retain_per_step: int = 8  # regression answers in each step's retain term; on the demo,
    # 30 epochs without early stop kept 40/40 answers with 8 and lost some with 1
    # (docs/benchmarks.md)

    # --- optimisation
    lr: float = 1e-3  # LoRA tolerates high rates; 1e-4..2e-3 works on small pair sets
    sft_warmup_epochs: int = 0  # epochs of plain SFT on the chosen answers before DPO starts
    # (the other common mitigation for DPO lowering the good answer; 0: none, 1-3 is usual)
    epochs: int = 30  # a budget: with --eval, training stops once every flagged prompt is fixed
    batch_size: int = 8  # pairs per step
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    weight_decay: float = 0.0
    seed: int = 0  # same seed, same data, same machine -> same adapter

    # --- LoRA (vLLM-servable by construction: no modules_to_save, no DoRA, bias none)
    lora_r: int = 16  # vLLM's default --max-lora-rank is 16; higher ranks need that flag raised
    lora_alpha: int | None = None  # scale = alpha / r; None: 2 * lora_r (scale 2 at any rank)
    lora_dropout: float = 0.0  # 0 keeps the policy equal to the reference at step 0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    # --- sequences
    max_length: int = 1024  # prompt + answer tokens; answers past it lose their end
    max_prompt_length: int | None = 512  # longer prompts keep their END; None: only max_length
    max_new_tokens: int = 64  # greedy answer length for the before/after evaluation

    # --- memory (memory.py plans what is left to it before anything loads)
    micro_batch_size: int | str = "auto"  # pairs per forward pass; gradients accumulate over
    # the batch, so results do not change. "auto": the largest the memory plan fits
    gradient_checkpointing: bool | None = None  # recompute each block in the backward pass
    # (a third more compute, a fraction of the activations); None: only when the plan needs it
    quantize: str | None = None  # "4bit": the base as NF4 (QLoRA; needs the [qlora] extra);
    # the patch is still served on the full-precision base
    max_memory: float | None = None  # GiB the job may use; None: the device's free memory
    shard_base: bool = False  # under torchrun: split the base's blocks across the GPUs (FSDP),
    # so a base that does not fit one GPU fits N of them; False: every GPU holds all of it

    # --- machinery
    prefix_sharing: bool = True  # run each prompt once for both answers (same maths, faster)
    early_stop: bool = True  # stop at the end of the epoch where every flagged prompt is fixed
    drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE  # nats per token (0.1): a regression
    # prompt whose answer differs (and has no checks) counts as changed once the mean per-token
    # log-prob of its pre-patch answer moved by more than this. On the demo, broken answers
    # moved 0.09-0.61 and identical ones up to 0.19 (docs/benchmarks.md, bench/drift_bench.py)
    ref_cache_dir: str | None = None  # None: $PATCHWISE_CACHE_DIR or ~/.cache/patchwise

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a job's JSON config, naming any unknown key (API users mistype keys)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EngineError(f"config: unknown key '{unknown[0]}'; known keys: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values

    def cache_dir(self) -> Path:
        if self.ref_cache_dir:
            return Path(self.ref_cache_dir).expanduser()
        env = os.environ.get("PATCHWISE_CACHE_DIR")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "patchwise"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise EngineError(f"config: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_config(config: TrainConfig) -> None:
    """Raise EngineError with a user-readable reason if ``config`` cannot train or be served."""
    _require(isinstance(config.model, str) and bool(config.model), "'model' must name a folder")
    _require(config.loss in LOSSES, f"'loss' must be one of {', '.join(LOSSES)}")
    for name in (
        "beta",
        "label_smoothing",
        "sft_weight",
        "retain_weight",
        "lr",
        "max_grad_norm",
        "drift_tolerance",
    ):
        _require(_is_number(getattr(config, name)), f"'{name}' must be a finite number")
    _require(config.beta > 0, "'beta' must be above 0")
    _require(config.lr > 0, "'lr' must be above 0")
    _require(config.sft_weight >= 0 and config.retain_weight >= 0, "weights must be 0 or more")
    _require(config.drift_tolerance >= 0, "'drift_tolerance' must be 0 or more")
    _require(0 <= config.label_smoothing < 0.5, "'label_smoothing' must lie in [0, 0.5)")
    _require(
        not config.label_smoothing or config.loss in ("sigmoid", "robust"),
        f"'label_smoothing' applies to the sigmoid and robust losses, not to {config.loss}",
    )
    for name in (
        "epochs",
        "batch_size",
        "retain_per_step",
        "lora_r",
        "max_length",
        "max_new_tokens",
    ):
        value = getattr(config, name)
        _require(isinstance(value, int) and not isinstance(value, bool), f"'{name}' must be int")
        _require(value >= 1, f"'{name}' must be at least 1")
    _require(
        isinstance(config.sft_warmup_epochs, int)
        and not isinstance(config.sft_warmup_epochs, bool)
        and config.sft_warmup_epochs >= 0,
        "'sft_warmup_epochs' must be an integer, 0 or more",
    )
    _require(
        isinstance(config.seed, int)
        and not isinstance(config.seed, bool)
        and 0 <= config.seed <= MAX_SEED,
        SEED_RULE,
    )
    _require(isinstance(config.shard_base, bool), "'shard_base' must be true or false")
    _require(
        not (config.shard_base and config.quantize),
        "'shard_base' with 'quantize' 4bit is not supported: FSDP shards floating-point weights "
        "and the 4-bit base is stored as uint8; shard the bf16 base instead",
    )
    if config.lora_alpha is not None:
        _require(
            isinstance(config.lora_alpha, int | float) and config.lora_alpha > 0,
            "'lora_alpha' must be a number above 0",
        )
    if config.max_prompt_length is not None:
        _require(
            isinstance(config.max_prompt_length, int)
            and 1 <= config.max_prompt_length < config.max_length,
            "'max_prompt_length' must be at least 1 and below 'max_length'",
        )
    _require(0 <= config.lora_dropout < 1, "'lora_dropout' must lie in [0, 1)")
    micro = config.micro_batch_size
    _require(
        micro == "auto" or (isinstance(micro, int) and not isinstance(micro, bool) and micro >= 1),
        "'micro_batch_size' must be 'auto' or a whole number of pairs, at least 1",
    )
    _require(
        config.gradient_checkpointing in (None, True, False),
        "'gradient_checkpointing' must be true, false or null (the plan decides)",
    )
    _require(
        config.quantize is None or config.quantize in QUANTIZE,
        f"'quantize' must be one of {', '.join(QUANTIZE)} or null",
    )
    _require(
        config.max_memory is None or (_is_number(config.max_memory) and config.max_memory > 0),
        "'max_memory' must be a number of GiB above 0",
    )
    check_vllm_servable(
        {
            "r": config.lora_r,
            "target_modules": list(config.target_modules),
            "use_dora": False,
            "modules_to_save": None,
            "bias": "none",
        }
    )


def check_vllm_servable(adapter_config: dict[str, Any]) -> None:
    """Refuse LoRA settings vLLM cannot load, saying which setting and why."""
    rank = adapter_config.get("r")
    _require(
        isinstance(rank, int) and 1 <= rank <= VLLM_MAX_LORA_RANK,
        f"LoRA rank {rank} cannot be served by vLLM (it accepts ranks 1 to {VLLM_MAX_LORA_RANK})",
    )
    _require(not adapter_config.get("use_dora"), "DoRA adapters cannot be served by vLLM")
    _require(
        not adapter_config.get("modules_to_save"),
        "modules_to_save cannot be served by vLLM (it loads only LoRA weights)",
    )
    _require(
        adapter_config.get("bias", "none") == "none",
        "LoRA bias must be 'none' for vLLM",
    )
    targets = adapter_config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    _require(bool(targets), "'target_modules' must name at least one layer")
    for target in targets:
        _require(
            isinstance(target, str) and target.split(".")[-1] not in VLLM_UNSUPPORTED_TARGETS,
            f"LoRA on '{target}' cannot be served by vLLM; target the decoder's linear layers "
            f"({', '.join(DEFAULT_TARGET_MODULES)})",
        )
